//! Reading a module's stdout and stderr line by line, where a line over the
//! limit is one bad line and not the end of the stream.
//!
//! `LinesCodec` alone reports an over-long line as an error, and a framed
//! stream ends after its first error: the node stopped reading the pipe and
//! the module died of SIGPIPE on its next write. Here the over-long line is
//! an item of its own; the codec skips its bytes up to the next newline
//! without keeping them, and the lines after it are read as usual.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, LinesCodec, LinesCodecError};

/// One line from a module, or the news that a line was too long to read.
#[derive(Debug, PartialEq, Eq)]
pub enum ModuleText {
    Line(String),
    /// A line longer than the limit, skipped.
    TooLong,
}

/// Lines of at most `max` bytes; longer ones come out as
/// [`ModuleText::TooLong`].
pub struct ModuleLines(LinesCodec);

impl ModuleLines {
    pub fn new(max: usize) -> Self {
        ModuleLines(LinesCodec::new_with_max_length(max))
    }

    fn text(result: Result<Option<String>, LinesCodecError>) -> std::io::Result<Option<ModuleText>> {
        match result {
            Ok(line) => Ok(line.map(ModuleText::Line)),
            Err(LinesCodecError::MaxLineLengthExceeded) => Ok(Some(ModuleText::TooLong)),
            Err(LinesCodecError::Io(e)) => Err(e),
        }
    }
}

impl Decoder for ModuleLines {
    type Item = ModuleText;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> std::io::Result<Option<ModuleText>> {
        Self::text(self.0.decode(buf))
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> std::io::Result<Option<ModuleText>> {
        Self::text(self.0.decode_eof(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt as _;
    use tokio_util::codec::FramedRead;

    #[tokio::test]
    async fn a_long_line_is_one_item_and_the_lines_after_it_are_read() {
        let mut input = Vec::new();
        input.extend_from_slice(b"first\n");
        input.extend(std::iter::repeat_n(b'x', 10_000));
        input.extend_from_slice(b"\nafter\n");
        input.extend(std::iter::repeat_n(b'y', 50));
        input.extend_from_slice(b"\nno newline");
        let read: Vec<ModuleText> = FramedRead::new(&input[..], ModuleLines::new(16))
            .map(|r| r.expect("no read error"))
            .collect()
            .await;
        assert_eq!(
            read,
            [
                ModuleText::Line("first".into()),
                ModuleText::TooLong,
                ModuleText::Line("after".into()),
                ModuleText::TooLong,
                ModuleText::Line("no newline".into()),
            ]
        );
    }
}
