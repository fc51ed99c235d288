//! A package's `mod.json`.
#![no_main]
use conjoiner::deploy::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(manifest) = Manifest::parse(data) {
        let _ = manifest.subscriptions();
        let _ = manifest.restart.policy();
    }
});
