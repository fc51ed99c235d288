//! The length-prefixed frame codec under the Noise layer: any byte stream,
//! decoded frame after frame, must end in frames, a wait for more bytes, or
//! an error, never a panic or an allocation past the frame limit.
#![no_main]
use bytes::BytesMut;
use conjoiner::wire::FrameCodec;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let mut codec = FrameCodec::new(64 * 1024);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = codec.decode(&mut buf) {
        assert!(frame.len() <= codec.max());
    }
});
