//! Members' proofs about themselves: which records about a member this
//! node takes, and the proofs it sends beside the records it passes on.
//!
//! A member whose proof this node holds is *keyed*. For a keyed member:
//! - `alive` and `left` are taken only as its own proof says them, with
//!   the same address, boot, tags and incarnation;
//! - `suspect` and `dead`, which others report, only at an incarnation it
//!   has signed: a claim above that is discarded;
//! - a proof under another key than the one that holds the name is refused
//!   while that member is up. Once it is dead or gone, a new key may take
//!   the name (a rebuilt host).
//!
//! A member of an earlier release has no key and no proof, and its records
//! are judged by the rules of `members` alone; but a node that requires
//! admission takes records only of members whose proof it holds, with an
//! admission it accepts, so no host can invent members there.

use super::{ClusterCore, LinkId, Source};
use crate::cluster::member_proof::MemberProof;
use crate::cluster::protocol::{Items, LinkMsg, Msg, Payload, Record, Status, SyncMsg, TreeMsg};
use std::sync::Arc;
use tracing::{debug, warn};

/// The first link protocol version that carries proofs.
pub const PROOFS_FROM: u32 = 4;

/// What a refused input said about its member, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Claim {
    /// A member record: its status, at an incarnation.
    Record(Status, u32),
    /// A member's proof, at an incarnation.
    Proof(u32),
    /// A status report, at a version.
    Report(u64),
}

impl std::fmt::Display for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Claim::Record(status, incarnation) => write!(f, "{} at incarnation {incarnation}", status.as_str()),
            Claim::Proof(incarnation) => write!(f, "a proof at incarnation {incarnation}"),
            Claim::Report(version) => write!(f, "a status report, version {version}"),
        }
    }
}

/// What a record about a member is worth, given the proof held of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vouch {
    /// The member's proof covers it.
    Proven,
    /// The member has no key here: the rules of boots and incarnations alone.
    Unkeyed,
    /// Older than the proof held: nothing new, whatever it says.
    Stale,
    /// Keyed, and not covered by its proof: refused, for this reason.
    Unproven(&'static str),
}

/// Judges `record` about a member whose latest proof here is `proof`
/// (`required`: this node takes no member without one). Pure, so the rules
/// are tested as a table.
pub fn vouch(proof: Option<&MemberProof>, record: &Record, required: bool) -> Vouch {
    let Some(p) = proof else {
        return if required {
            Vouch::Unproven("no admitted proof of its member is held")
        } else {
            Vouch::Unkeyed
        };
    };
    let (boot, inc) = (record.id.boot, record.incarnation);
    if boot < p.id.boot {
        return Vouch::Stale;
    }
    if boot > p.id.boot {
        return Vouch::Unproven("a boot its member has not signed");
    }
    if inc < p.incarnation {
        return Vouch::Stale;
    }
    match record.status {
        Status::Alive if p.left && inc == p.incarnation => Vouch::Stale,
        Status::Alive | Status::Left if inc > p.incarnation => {
            Vouch::Unproven("an incarnation its member has not signed")
        }
        Status::Left if !p.left => Vouch::Unproven("a leave its member has not signed"),
        Status::Suspect | Status::Dead if inc > p.incarnation => {
            Vouch::Unproven("a suspicion above any incarnation its member has signed")
        }
        _ if *record.id != *p.id => Vouch::Unproven("an address or tags other than its member signed"),
        _ => Vouch::Proven,
    }
}

impl ClusterCore {
    /// Signs this node's current record and holds the proof, to send with
    /// its hellos and beside every record about it.
    pub(super) fn sign_me(&mut self) {
        let Some(key) = &self.signer else { return };
        let left = self.table.me().status == Status::Left;
        let proof = MemberProof::sign(&self.cluster, key, self.me.clone(), self.incarnation, left)
            .with_admission(self.admission.clone());
        self.proofs.insert(self.me.name.clone(), Arc::new(proof));
    }

    /// This node's own proof, for its hello.
    pub(super) fn my_proof(&self) -> Option<Arc<MemberProof>> {
        self.signer.as_ref()?;
        self.proofs.get(&self.me.name).cloned()
    }

    /// Whether this node takes `record` (from `source`): see [`vouch`].
    /// A hello's record is checked against its link instead, and this
    /// node's own decisions follow from records it took.
    pub(super) fn vouched(&mut self, record: &Record, source: Source<'_>) -> bool {
        if matches!(source, Source::Hello | Source::Local { .. }) {
            return true;
        }
        let name = &record.id.name;
        let required = self.admission_rule.is_some();
        match vouch(self.proofs.get(name).map(|p| &**p), record, required) {
            Vouch::Proven | Vouch::Unkeyed => true,
            Vouch::Stale => false,
            Vouch::Unproven(why) => {
                self.unproven(name, Claim::Record(record.status, record.incarnation), why);
                false
            }
        }
    }

    /// Whether a member update that came down the broadcast tree may be
    /// passed on: not when its member's proof refutes it, nor a claim
    /// about this node above its own incarnation. Counted and logged.
    pub(super) fn worth_passing_on(&mut self, record: &Record) -> bool {
        let name = &record.id.name;
        if *name == self.me.name {
            let forged = record.id.boot == self.me.boot
                && record.status != Status::Alive
                && record.incarnation > self.incarnation;
            if forged {
                self.unproven(
                    name,
                    Claim::Record(record.status, record.incarnation),
                    "a claim about this node above its own incarnation",
                );
            }
            return !forged;
        }
        let required = self.admission_rule.is_some();
        match vouch(self.proofs.get(name).map(|p| &**p), record, required) {
            Vouch::Unproven(why) => {
                self.unproven(name, Claim::Record(record.status, record.incarnation), why);
                false
            }
            _ => true,
        }
    }

    /// Proofs from a peer: each newer one that verifies is held, for the
    /// records that follow it.
    pub(super) fn take_proofs(&mut self, link: LinkId, proofs: Vec<Arc<MemberProof>>) {
        for proof in proofs {
            self.take_proof(Some(link), proof, false);
        }
    }

    /// Holds `proof` if it is newer than the one held and verifies. A
    /// proof under another key than the one holding a live member's name
    /// is refused; so is one about this node (only it speaks for itself).
    /// `own_link`: it came in its member's own hello, on a link that
    /// proved the proof's key, so its signature says nothing the link did
    /// not (a member that signs itself badly only hurts itself: others
    /// check what it passes on).
    pub(super) fn take_proof(&mut self, link: Option<LinkId>, proof: Arc<MemberProof>, own_link: bool) -> bool {
        let name = proof.id.name.clone();
        if name == self.me.name {
            return false;
        }
        if let Err(why) = proof.id.check() {
            self.refuse_record(&why);
            return false;
        }
        let held = self.proofs.get(&name);
        if held.is_some_and(|h| !proof.newer_than(h)) {
            return false;
        }
        let up = self.table.get(&name).is_some_and(|m| m.status.is_up());
        if up && self.key_of(&name).is_some_and(|k| k != proof.key) {
            self.unproven(
                &name,
                Claim::Proof(proof.incarnation),
                "a proof under another key than holds the name",
            );
            return false;
        }
        if let Err(why) = self.admits(held.map(|h| &**h), &proof) {
            self.unproven(&name, Claim::Proof(proof.incarnation), "its member is not admitted");
            debug!(?link, member = %name, %why, "refused a member proof");
            return false;
        }
        // A proof of a name this node has never held is taken unchecked: a
        // forged one could bind nothing that a key of the sender's own
        // could not (a name is its first key's here, unless admission is
        // required, and then the admission was checked above). Every later
        // proof of that member is checked. This spares a 200-node start 200
        // signature checks per node.
        let unheard = self.table.get(&name).is_none() && self.admission_rule.is_none();
        if unheard || own_link {
            self.proofs.insert(name, proof);
            return true;
        }
        self.counters.signatures_checked += 1;
        if let Err(why) = proof.verify(&self.cluster) {
            self.unproven(&name, Claim::Proof(proof.incarnation), "its proof does not verify");
            debug!(?link, member = %name, %why, "refused a member proof");
            return false;
        }
        self.proofs.insert(name, proof);
        true
    }

    /// Whether `proof` shows an admission this node accepts, when it
    /// requires one. An admission already accepted with the proof held
    /// (same key, same text) is not checked again.
    fn admits(&self, held: Option<&MemberProof>, proof: &MemberProof) -> Result<(), String> {
        let Some(rule) = &self.admission_rule else {
            return Ok(());
        };
        let Some(text) = &proof.admission else {
            return Err("it shows no admission".into());
        };
        if held.is_some_and(|h| h.key == proof.key && h.admission.as_ref() == Some(text) && h.id.name == proof.id.name)
        {
            return Ok(());
        }
        rule(&proof.id, &proof.key, text)
    }

    /// Counts and logs (once per 10 s) a record or proof refused for want
    /// of its member's signature.
    pub(super) fn unproven(&mut self, name: &Arc<str>, said: Claim, why: &str) {
        self.counters.records_unproven += 1;
        if self.unproven_log.event(self.now).is_some() {
            warn!(member = %name, %said,
                refused_so_far = self.counters.records_unproven, reason = %why,
                "refused a record about a member that its member did not sign");
        }
    }

    /// The proofs for the records `msg` carries, and the seals of its
    /// states (see `seals`), when `version` carries proofs: sent just
    /// before it, in the same frame.
    pub(super) fn proofs_for(&self, msg: &Msg, version: u32) -> Option<Msg> {
        if version < PROOFS_FROM || self.proofs.is_empty() {
            return None;
        }
        let seals = self.seals_for(msg);
        let mut proofs: Vec<Arc<MemberProof>> = Vec::new();
        let mut add = |r: &Record| {
            if let Some(p) = self.proofs.get(&r.id.name) {
                // The records of one message are of distinct members.
                if p.id.boot == r.id.boot {
                    proofs.push(p.clone());
                }
            }
        };
        match msg {
            Msg::Tree(TreeMsg::Gossip {
                payload: Payload::Update { record, .. },
                ..
            }) => add(record),
            Msg::Link(LinkMsg::JoinTable { records })
            | Msg::Sync(SyncMsg::Items {
                items: Items::Records(records),
                ..
            })
            | Msg::Sync(SyncMsg::Differ {
                have: Items::Records(records),
                ..
            }) => records.iter().for_each(&mut add),
            _ => {}
        }
        (!proofs.is_empty() || !seals.is_empty()).then_some(Msg::Sync(SyncMsg::Proofs { proofs, seals }))
    }

    /// Lets go of the proofs and seals of members no longer in the table,
    /// so neither map outgrows it (those of names never taken among them).
    pub(super) fn prune_proofs(&mut self) {
        let table = &self.table;
        if self.proofs.len() > table.len() {
            self.proofs.retain(|name, _| table.get(name).is_some());
        }
        if self.seals.len() > table.len() {
            self.seals.retain(|name, _| table.get(name).is_some());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::identity::NodeId;
    use crate::cluster::node_key::NodeKey;
    use std::collections::BTreeMap;

    fn id(boot: u64, port: u16) -> Arc<NodeId> {
        Arc::new(NodeId::new(
            "n2",
            format!("10.0.0.2:{port}").parse().unwrap(),
            boot,
            BTreeMap::new(),
        ))
    }

    fn record(boot: u64, port: u16, incarnation: u32, status: Status) -> Record {
        Record {
            id: id(boot, port),
            incarnation,
            status,
        }
    }

    #[test]
    fn records_of_a_keyed_member_need_its_proof() {
        use Status::*;
        let key = NodeKey::generate();
        let alive5 = MemberProof::sign("c", &key, id(10, 1), 5, false);
        let left5 = MemberProof::sign("c", &key, id(10, 1), 5, true);
        // (proof, record, expected; `None`: unproven, whatever the reason)
        let cases: Vec<(&MemberProof, Record, Option<Vouch>)> = vec![
            (&alive5, record(10, 1, 5, Alive), Some(Vouch::Proven)),
            (&alive5, record(10, 1, 4, Alive), Some(Vouch::Stale)),
            (&alive5, record(10, 1, 6, Alive), None),
            (&alive5, record(10, 2, 5, Alive), None),
            (&alive5, record(11, 1, 0, Alive), None),
            (&alive5, record(9, 1, 9, Alive), Some(Vouch::Stale)),
            (&alive5, record(10, 1, 5, Left), None),
            (&alive5, record(10, 1, 9, Left), None),
            (&alive5, record(10, 1, 4, Left), Some(Vouch::Stale)),
            (&left5, record(10, 1, 5, Left), Some(Vouch::Proven)),
            (&left5, record(10, 1, 5, Alive), Some(Vouch::Stale)),
            (&alive5, record(10, 1, 5, Suspect), Some(Vouch::Proven)),
            (&alive5, record(10, 1, 5, Dead), Some(Vouch::Proven)),
            (&alive5, record(10, 1, 3, Dead), Some(Vouch::Stale)),
            (&alive5, record(10, 1, 6, Suspect), None),
            (&alive5, record(10, 1, u32::MAX, Dead), None),
            (&alive5, record(10, 9, 5, Dead), None),
        ];
        for (i, (proof, rec, expected)) in cases.into_iter().enumerate() {
            let got = vouch(Some(proof), &rec, false);
            let ok = match expected {
                Some(v) => got == v,
                None => matches!(got, Vouch::Unproven(_)),
            };
            assert!(ok, "case {i}: {:?} at {} gave {got:?}", rec.status, rec.incarnation);
        }
    }

    #[test]
    fn a_member_without_a_key_keeps_the_old_rules_unless_admission_is_required() {
        let rec = record(10, 1, 7, Status::Left);
        assert_eq!(vouch(None, &rec, false), Vouch::Unkeyed);
        assert!(
            matches!(vouch(None, &rec, true), Vouch::Unproven(_)),
            "where admission is required"
        );
    }
}
