//! An envelope as JSON from a peer, a module or the API.
#![no_main]
use conjoiner::wire::Envelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = Envelope::from_slice(data) {
        // A parsed envelope must serialise and parse back to itself.
        let again = Envelope::from_slice(&envelope.to_vec()).expect("an envelope we wrote parses");
        assert_eq!(again.id, envelope.id);
    }
});
