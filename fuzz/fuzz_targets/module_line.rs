//! One line a process module writes to stdout.
#![no_main]
use conjoiner::modules::module_line::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let line = String::from_utf8_lossy(data);
    let _ = parse(&line);
});
