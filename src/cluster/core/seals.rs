//! Seals of members' states: a status report is taken only as its own node
//! sealed it, once that node's proof (and so its key) is held here.
//!
//! A node seals each state it publishes. Wherever states travel (down the
//! tree, in a table exchange), the seals this node holds for them go just
//! before, in the same frame, in the `proofs` message. A seal counts only
//! for the states of the frame it came in, and is held once a state it
//! covers verifies, to be passed on with that state. A member without a
//! proof (of an earlier release) has its states taken as before.

use super::proofs::Claim;
use super::ClusterCore;
use crate::cluster::member_proof::StateSeal;
use crate::cluster::protocol::{Items, Msg, Payload, StateRecord, SyncMsg, TreeMsg};

impl ClusterCore {
    /// Seals this node's newly published `state`.
    pub(super) fn seal_my_state(&mut self, state: &StateRecord) {
        let Some(key) = &self.signer else { return };
        let seal = StateSeal::seal(
            &self.cluster,
            key,
            state.name.clone(),
            state.boot,
            state.version,
            &state.data,
        );
        self.seals.insert(state.name.clone(), seal);
    }

    /// Seals from a peer, for the states that follow in the same frame.
    pub(super) fn take_seals(&mut self, seals: Vec<StateSeal>) {
        self.frame_seals.extend(seals);
    }

    /// Whether `state` may be taken: its member has no key here, or a seal
    /// from its frame (or the one held) verifies under its key. Refusals
    /// are counted and logged with unproven records.
    pub(super) fn state_sealed(&mut self, state: &StateRecord) -> bool {
        let Some(key) = self.proofs.get(&state.name).map(|p| p.key) else {
            return true;
        };
        let covers = |s: &&StateSeal| s.covers(&state.name, state.boot, state.version);
        let seal = self
            .frame_seals
            .iter()
            .find(covers)
            .or_else(|| self.seals.get(&state.name).filter(|s| covers(s)))
            .cloned();
        let why = match seal {
            None => "a status report its node did not seal",
            Some(seal) => {
                self.counters.signatures_checked += 1;
                match seal.verify(&self.cluster, &key, &state.data) {
                    Ok(()) => {
                        self.seals.insert(state.name.clone(), seal);
                        return true;
                    }
                    Err(_) => "a status report whose seal does not verify",
                }
            }
        };
        let name = state.name.clone();
        self.unproven(&name, Claim::Report(state.version), why);
        false
    }

    /// The seals held for the states `msg` carries.
    pub(super) fn seals_for(&self, msg: &Msg) -> Vec<StateSeal> {
        let held = |s: &StateRecord| {
            self.seals
                .get(&s.name)
                .filter(|seal| seal.covers(&s.name, s.boot, s.version))
                .cloned()
        };
        match msg {
            Msg::Tree(TreeMsg::Gossip {
                payload: Payload::State(state),
                ..
            }) => held(state).into_iter().collect(),
            Msg::Sync(SyncMsg::Items {
                items: Items::States(states),
                ..
            }) => states.iter().filter_map(|s| held(s)).collect(),
            _ => Vec::new(),
        }
    }
}
