//! A decrypted link frame (hello, messages, membership, tree traffic), as a
//! greeted peer could send any bytes under a valid key.
#![no_main]
use bytes::Bytes;
use conjoiner::cluster::protocol::Frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = Frame::decode(Bytes::copy_from_slice(data)) {
        // What decodes must encode again without a panic.
        let _ = frame.encode();
        let _ = frame.kind();
    }
});
