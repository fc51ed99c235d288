//! Pure wire-level code: the envelope, target selectors, frames and the
//! duplicate filter. No actors, no sockets, so all of it is unit-tested alone.

pub mod dedup;
pub mod envelope;
pub mod frame;
pub mod provenance;
pub mod selector;

pub use dedup::SeenIds;
pub use envelope::{
    now_ms, Destination, Envelope, EnvelopeError, MessageType, Source, ENVELOPE_VERSION, MAX_ENVELOPE_BYTES,
};
pub use frame::{FrameCodec, FrameError, DEFAULT_MAX_FRAME};
pub use selector::{glob_match, Selector, SelectorError, Target};
