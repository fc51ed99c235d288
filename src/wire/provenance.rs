//! Who may have sent an envelope that came in from a peer.
//!
//! An envelope names its source node (`src.node`), and the Transponder
//! believes it: a reply counts as that node's answer to a gathered request,
//! a deploy result as that node's result. The link says only who handed
//! the envelope over. So an answer must come straight from the node that
//! gives it (a direct envelope on that node's own link, whose name the
//! hello claimed and, with identity keys, a key holds), and a node state
//! (a status report) must name the node it is the state of. Broadcasts are
//! relayed, so their source cannot be checked this way; an answer is never
//! broadcast.

use super::envelope::{Envelope, MessageType};

/// How an envelope reached this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival<'a> {
    /// On the link of the peer `from`, meant for this node alone.
    Direct { from: &'a str },
    /// Relayed through the cluster to every node its target matches.
    Broadcast,
    /// As the published state of the member `of`.
    State { of: &'a str },
}

/// Whether `envelope` may have come the way it did; if not, why.
pub fn check(envelope: &Envelope, arrival: Arrival<'_>) -> Result<(), String> {
    let source = &envelope.src.node;
    match arrival {
        Arrival::Direct { from } if source != from => Err(format!(
            "a direct envelope from `{from}` claims to come from `{source}`"
        )),
        Arrival::State { of } if source != of => Err(format!("the state of `{of}` claims to come from `{source}`")),
        Arrival::Broadcast if is_answer(envelope) => Err(format!(
            "a {} answering {} was broadcast; an answer comes straight from the node that gives it",
            envelope.kind,
            envelope.reply_to.map_or_else(String::new, |id| id.to_string())
        )),
        _ => Ok(()),
    }
}

/// An answer to a request: it is recorded as its source's answer.
fn is_answer(envelope: &Envelope) -> bool {
    envelope.reply_to.is_some()
        && matches!(
            envelope.kind,
            MessageType::Reply | MessageType::Error | MessageType::DeployResult | MessageType::Status
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope(kind: MessageType, src: &str, answers: bool) -> Envelope {
        let mut e = Envelope::new(
            kind,
            crate::wire::envelope::Source {
                node: src.into(),
                module: "m".into(),
            },
            "mod.x",
            None,
            json!({}),
        );
        e.reply_to = answers.then(uuid::Uuid::now_v7);
        e
    }

    #[test]
    fn answers_come_straight_from_their_source_and_states_name_their_node() {
        use Arrival::*;
        use MessageType::*;
        let cases = [
            // (kind, source, answers a request, how it came, taken)
            (Reply, "n2", true, Direct { from: "n2" }, true),
            (Reply, "n2", true, Direct { from: "evil" }, false),
            (DeployResult, "n2", true, Direct { from: "evil" }, false),
            (Event, "n2", false, Direct { from: "evil" }, false),
            (Reply, "n2", true, Broadcast, false),
            (Error, "n2", true, Broadcast, false),
            (DeployResult, "n2", true, Broadcast, false),
            (Status, "n2", true, Broadcast, false),
            (Status, "n2", false, Broadcast, true),
            (Event, "n2", false, Broadcast, true),
            (Request, "n2", false, Broadcast, true),
            (Status, "n2", false, State { of: "n2" }, true),
            (Status, "n2", false, State { of: "evil" }, false),
        ];
        for (i, (kind, src, answers, arrival, taken)) in cases.into_iter().enumerate() {
            let e = envelope(kind, src, answers);
            assert_eq!(
                check(&e, arrival).is_ok(),
                taken,
                "case {i}: {:?} from {src} via {arrival:?}",
                e.kind
            );
        }
    }
}
