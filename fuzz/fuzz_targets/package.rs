//! Package unpacking: any bytes as the package file, and (first byte odd)
//! the same bytes gzip-compressed first, so the fuzzer reaches the tar
//! reader itself instead of stopping at gzip's checks. Nothing may be
//! written outside the staging folder.
#![no_main]
use conjoiner::deploy::package::{unpack, UnpackLimits};
use libfuzzer_sys::fuzz_target;
use std::io::Write;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let package = tmp.path().join("p.tar.gz");
    let bytes = if mode % 2 == 1 {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(rest).unwrap();
        gz.finish().unwrap()
    } else {
        rest.to_vec()
    };
    std::fs::write(&package, bytes).unwrap();
    let limits = UnpackLimits {
        max_unpacked_bytes: 1 << 20,
        max_entries: 64,
    };
    let stage = tmp.path().join("stage");
    let _ = unpack(&package, &stage, limits);
    for entry in std::fs::read_dir(tmp.path()).unwrap().flatten() {
        let name = entry.file_name();
        assert!(name == "p.tar.gz" || name == "stage", "wrote outside the staging folder: {name:?}");
    }
});
