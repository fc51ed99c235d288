//! Length-delimited frames: a 4-byte big-endian length, then that many bytes.
//!
//! The length is checked against a maximum *before* any buffer is reserved, so
//! a hostile peer that announces a 4 GiB frame costs us nothing but the error.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Default largest frame: 1 MiB of payload, plus room for framing
/// overhead added by the link layer.
pub const DEFAULT_MAX_FRAME: usize = 1024 * 1024 + 64 * 1024;

const HEADER: usize = 4;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("frame i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// A codec for length-delimited frames with a maximum size.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max: usize,
}

impl FrameCodec {
    pub fn new(max: usize) -> FrameCodec {
        FrameCodec { max }
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(DEFAULT_MAX_FRAME)
    }
}

impl Decoder for FrameCodec {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        if src.len() < HEADER {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len > self.max {
            return Err(FrameError::TooLarge {
                size: len,
                max: self.max,
            });
        }
        if src.len() < HEADER + len {
            src.reserve(HEADER + len - src.len());
            return Ok(None);
        }
        src.advance(HEADER);
        Ok(Some(src.split_to(len).freeze()))
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> Result<(), FrameError> {
        if item.len() > self.max {
            return Err(FrameError::TooLarge {
                size: item.len(),
                max: self.max,
            });
        }
        dst.reserve(HEADER + item.len());
        dst.put_u32(item.len() as u32);
        dst.put_slice(&item);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn partial_frames_wait_for_more() {
        let mut codec = FrameCodec::new(100);
        let mut buf = BytesMut::new();
        codec.encode(Bytes::from_static(b"hello"), &mut buf).unwrap();
        let mut part = buf.split_to(6);
        assert!(codec.decode(&mut part).unwrap().is_none());
        part.unsplit(buf);
        assert_eq!(codec.decode(&mut part).unwrap().unwrap(), Bytes::from_static(b"hello"));
        assert!(part.is_empty());
    }

    #[test]
    fn oversized_frames_are_refused_both_ways() {
        let mut codec = FrameCodec::new(8);
        let mut buf = BytesMut::new();
        let err = codec.encode(Bytes::from(vec![0u8; 9]), &mut buf).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { size: 9, max: 8 }));
        // A header announcing 4 GiB is refused without reserving memory.
        let mut hostile = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 1][..]);
        let err = codec.decode(&mut hostile).unwrap_err();
        assert!(err.to_string().contains("exceeds the limit"));
    }

    proptest! {
        #[test]
        fn frames_round_trip(frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..8)) {
            let mut codec = FrameCodec::new(300);
            let mut buf = BytesMut::new();
            for f in &frames {
                codec.encode(Bytes::from(f.clone()), &mut buf).unwrap();
            }
            let mut out = Vec::new();
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                out.push(f.to_vec());
            }
            prop_assert_eq!(out, frames);
        }
    }
}
