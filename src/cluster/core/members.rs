//! The member table: one entry per name, and the rules that decide which of
//! two records about a member wins.
//!
//! Within one boot of a member, SWIM's rules: a higher incarnation wins; at
//! the same incarnation `dead` beats `suspect` beats `alive`; `left` is final.
//! Between two boots of one name (two processes), see [`judge`]: a newer
//! boot takes over from a dead one or from one at the same address (a
//! restart), but never from a live process elsewhere. Of two live processes
//! claiming one name, the older boot keeps it everywhere, whatever order
//! the news arrives in, so they never flap.
//!
//! The table also keeps a digest: a hash per bucket of the live members'
//! records, updated as entries change, so anti-entropy compares two tables
//! by exchanging a few hundred bytes (it is one of the datasets of
//! [`super::replica`]).

use super::hash::{combine, name_hash};
use super::replica::{bucket_mask, bucket_of, Digest, Replicated};
use crate::cluster::identity::NodeId;
use crate::cluster::protocol::{Items, Record, Status};
use hashbrown::hash_table::{Entry, HashTable};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What this node knows about one member.
///
/// Every node holds one per member, so this stays at 24 bytes: at 10,000
/// members that is 10,000 × 24 bytes per node, and the simulator holds
/// 10,000 nodes' tables at once. (Members' states are held apart, in the
/// state table.)
#[derive(Debug, Clone)]
pub struct Member {
    pub id: Arc<NodeId>,
    pub incarnation: u32,
    pub status: Status,
    /// When `status` last changed here, in milliseconds after the table was
    /// made (see [`MemberTable::since`]); 8 bytes where an `Instant` takes 16.
    since_ms: u64,
    /// Its digest bucket, kept so anti-entropy finds a bucket's members
    /// without hashing every name (at 10,000 members that hashing was most
    /// of the simulator's time). Fits in the padding.
    bucket: u8,
}

impl Member {
    fn new(id: Arc<NodeId>, incarnation: u32, status: Status, since_ms: u64) -> Member {
        let bucket = bucket_of(&id.name) as u8;
        Member {
            id,
            incarnation,
            status,
            since_ms,
            bucket,
        }
    }

    pub fn record(&self) -> Record {
        Record {
            id: self.id.clone(),
            incarnation: self.incarnation,
            status: self.status,
        }
    }

    /// This entry's share of its digest bucket, if it counts (live members only:
    /// dead and left ones are forgotten at different times on different nodes).
    fn contribution(&self) -> Option<(usize, u64)> {
        if !self.status.is_up() {
            return None;
        }
        let h = name_hash(&self.id.name);
        let status = match self.status {
            Status::Alive => 1,
            _ => 2,
        };
        let v = combine(combine(h, self.id.boot), u64::from(self.incarnation) << 2 | status);
        Some((usize::from(self.bucket), v))
    }
}

/// The decision about one incoming record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing new: keep what we have.
    Stale,
    /// Take the record (a new name, or news about the same boot).
    Accept,
    /// Take the record; it is a newer (or the rightful older) boot replacing
    /// the one we hold.
    Replace,
    /// A suspicion at the incarnation we already suspect: another accuser.
    SameSuspicion,
    /// Refused: another live process at another address holds the name.
    Conflict,
}

/// Decides what to do with `record` given what we hold. Pure, so the rules
/// are tested as a table.
pub fn judge(current: Option<&Member>, record: &Record) -> Verdict {
    let Some(cur) = current else { return Verdict::Accept };
    if cur.id.boot != record.id.boot {
        return judge_boots(cur, record);
    }
    let (i, j) = (cur.incarnation, record.incarnation);
    let accept = match (cur.status, record.status) {
        (Status::Left, _) => false,
        (_, Status::Left) => true,
        (_, Status::Alive) => j > i,
        (Status::Alive, Status::Suspect) => j >= i,
        (Status::Suspect, Status::Suspect) if j == i => return Verdict::SameSuspicion,
        (Status::Suspect | Status::Dead, Status::Suspect) => j > i,
        (Status::Alive | Status::Suspect, Status::Dead) => j >= i,
        (Status::Dead, Status::Dead) => j > i,
    };
    if accept {
        Verdict::Accept
    } else {
        Verdict::Stale
    }
}

/// Two processes of one name.
fn judge_boots(cur: &Member, record: &Record) -> Verdict {
    let same_place = cur.id.addr == record.id.addr;
    if record.id.boot > cur.id.boot {
        // A newer process: a restart takes over; a second live process
        // elsewhere does not.
        if !cur.status.is_up() || same_place {
            Verdict::Replace
        } else if record.status.is_up() {
            Verdict::Conflict
        } else {
            Verdict::Stale
        }
    } else if cur.status.is_up() && record.status.is_up() && !same_place {
        // The older of two live processes keeps the name, wherever we heard
        // of the newer one first.
        Verdict::Replace
    } else {
        Verdict::Stale
    }
}

/// What applying a record changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Stale,
    /// A name we did not know.
    Added,
    /// Same boot: status or incarnation moved (`from` is the old status).
    Changed {
        from: Status,
    },
    /// Another boot replaced the one we held.
    Replaced {
        old: Arc<NodeId>,
        from: Status,
    },
    SameSuspicion,
    /// Refused; `holder` keeps the name.
    Conflict {
        holder: Arc<NodeId>,
    },
}

/// The member table's key: the name hash (the table keeps no key copy).
fn table_key(member: &Member) -> u64 {
    name_hash(&member.id.name)
}

/// Every member this node knows, itself included.
pub struct MemberTable {
    me: Arc<str>,
    /// Keyed by `name_hash(id.name)`: a table without a separate key copy,
    /// to keep each entry at the size of a [`Member`].
    members: HashTable<Member>,
    /// What `Member::since_ms` counts from.
    epoch: Instant,
    digest: Digest,
    up: usize,
    /// The heap bytes of every member's identity, kept as entries change so
    /// the table's bound is checked without a walk.
    id_bytes: usize,
}

impl MemberTable {
    /// A table holding only this node, alive.
    pub fn new(me: Arc<NodeId>, now: Instant) -> MemberTable {
        let mut table = MemberTable {
            me: me.name.clone(),
            members: HashTable::new(),
            epoch: now,
            digest: Digest::default(),
            up: 0,
            id_bytes: 0,
        };
        let since_ms = table.millis(now);
        table.insert(Member::new(me, 0, Status::Alive, since_ms));
        table
    }

    fn millis(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// When `member`'s status last changed here.
    pub fn since(&self, member: &Member) -> Instant {
        self.epoch + Duration::from_millis(member.since_ms)
    }

    pub fn get(&self, name: &str) -> Option<&Member> {
        self.members.find(name_hash(name), |m| &*m.id.name == name)
    }

    pub fn me(&self) -> &Member {
        self.get(&self.me).expect("the table always holds this node")
    }

    pub fn iter(&self) -> impl Iterator<Item = &Member> {
        self.members.iter()
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Alive and suspect members, this node included.
    pub fn up_count(&self) -> usize {
        self.up
    }

    /// Runs `change` on the entry for `name`, keeping the digest right.
    fn update(&mut self, name: &str, change: impl FnOnce(&mut Member)) {
        let Some(m) = self.members.find_mut(name_hash(name), |m| &*m.id.name == name) else {
            return;
        };
        let was_up = m.status.is_up();
        if let Some((b, v)) = m.contribution() {
            self.digest.toggle(b, v);
        }
        let id_before = m.id.clone();
        change(m);
        // Most changes are of status or incarnation: the identity is only
        // measured again when it was replaced.
        if !Arc::ptr_eq(&id_before, &m.id) {
            self.id_bytes = self.id_bytes - id_before.heap_bytes() + m.id.heap_bytes();
        }
        if let Some((b, v)) = m.contribution() {
            self.digest.toggle(b, v);
        }
        match (was_up, m.status.is_up()) {
            (true, false) => self.up -= 1,
            (false, true) => self.up += 1,
            _ => {}
        }
    }

    fn insert(&mut self, member: Member) {
        if let Some((b, v)) = member.contribution() {
            self.digest.toggle(b, v);
        }
        if member.status.is_up() {
            self.up += 1;
        }
        self.id_bytes += member.id.heap_bytes();
        let hash = table_key(&member);
        let old = match self.members.entry(hash, |m| m.id.name == member.id.name, table_key) {
            Entry::Occupied(mut entry) => Some(std::mem::replace(entry.get_mut(), member)),
            Entry::Vacant(entry) => {
                entry.insert(member);
                None
            }
        };
        if let Some(old) = old {
            if let Some((b, v)) = old.contribution() {
                self.digest.toggle(b, v);
            }
            if old.status.is_up() {
                self.up -= 1;
            }
            self.id_bytes -= old.id.heap_bytes();
        }
    }

    /// Applies a record about another member (records about this node are
    /// the core's to answer).
    pub fn apply(&mut self, record: &Record, now: Instant) -> Applied {
        let now_ms = self.millis(now);
        let current = self.get(&record.id.name);
        match judge(current, record) {
            Verdict::Stale => Applied::Stale,
            Verdict::SameSuspicion => Applied::SameSuspicion,
            Verdict::Conflict => Applied::Conflict {
                holder: current.expect("a conflict needs a holder").id.clone(),
            },
            Verdict::Accept => match current.map(|c| c.status) {
                None => {
                    self.insert(Member::new(
                        record.id.clone(),
                        record.incarnation,
                        record.status,
                        now_ms,
                    ));
                    Applied::Added
                }
                Some(from) => {
                    self.update(&record.id.name, |m| {
                        if m.status != record.status {
                            m.since_ms = now_ms;
                        }
                        m.status = record.status;
                        if record.incarnation >= m.incarnation && m.id != record.id {
                            // The member's own later word: its tags changed.
                            m.id = record.id.clone();
                        }
                        m.incarnation = m.incarnation.max(record.incarnation);
                    });
                    Applied::Changed { from }
                }
            },
            Verdict::Replace => {
                let old = current.expect("a replacement needs an entry");
                let (old_id, from) = (old.id.clone(), old.status);
                self.insert(Member::new(
                    record.id.clone(),
                    record.incarnation,
                    record.status,
                    now_ms,
                ));
                Applied::Replaced { old: old_id, from }
            }
        }
    }

    /// This node's identity changed (its tags), at a new incarnation.
    pub fn set_me_id(&mut self, id: Arc<NodeId>, incarnation: u32) {
        let me = self.me.clone();
        self.update(&me, |m| {
            m.id = id;
            m.incarnation = incarnation;
        });
    }

    /// Sets this node's own incarnation or status.
    pub fn set_me(&mut self, incarnation: u32, status: Status, now: Instant) {
        let me = self.me.clone();
        let now_ms = self.millis(now);
        self.update(&me, |m| {
            if m.status != status {
                m.since_ms = now_ms;
            }
            m.incarnation = incarnation;
            m.status = status;
        });
    }

    /// Removes dead and left members older than `after`; answers their names.
    pub fn forget(&mut self, now: Instant, after: Duration) -> Vec<Arc<str>> {
        let now_ms = self.millis(now);
        let after_ms = after.as_millis() as u64;
        self.forget_where(|m| now_ms.saturating_sub(m.since_ms) > after_ms)
    }

    /// Removes the `count` dead and left members that went down longest
    /// ago (or all of them, if fewer); answers their names. This is how a
    /// full table makes room for a new member.
    pub fn forget_oldest_down(&mut self, count: usize) -> Vec<Arc<str>> {
        let mut down: Vec<u64> = self
            .members
            .iter()
            .filter(|m| !m.status.is_up())
            .map(|m| m.since_ms)
            .collect();
        if down.is_empty() || count == 0 {
            return Vec::new();
        }
        let count = count.min(down.len());
        // Everything down at or before this moment goes (ties may take a
        // few more than `count`, which only makes more room).
        let (_, &mut cutoff, _) = down.select_nth_unstable(count - 1);
        self.forget_where(|m| m.since_ms <= cutoff)
    }

    /// Removes the dead and left members `old_enough` picks.
    fn forget_where(&mut self, old_enough: impl Fn(&Member) -> bool) -> Vec<Arc<str>> {
        let mut gone: Vec<Arc<str>> = Vec::new();
        let mut freed = 0;
        self.members.retain(|m| {
            let forget = !m.status.is_up() && old_enough(m);
            if forget {
                gone.push(m.id.name.clone());
                freed += m.id.heap_bytes();
            }
            !forget
        });
        self.id_bytes -= freed;
        if self.members.capacity() > 2 * self.members.len() + 64 {
            self.members.shrink_to_fit(table_key);
        }
        gone
    }

    /// Whether one more member of `id_bytes` identity keeps the table within
    /// `max_members` entries and `max_bytes` heap bytes.
    pub fn has_room(&self, id_bytes: usize, max_members: usize, max_bytes: usize) -> bool {
        self.members.len() < max_members && self.heap_bytes() + Self::ENTRY_BYTES + id_bytes <= max_bytes
    }

    /// Whether one more member of any size a valid record may have keeps
    /// the table within its bounds: the check every new record passes
    /// while the table is far from full, with no lookup and no measuring.
    pub fn has_room_for_any(&self, max_members: usize, max_bytes: usize) -> bool {
        self.has_room(crate::cluster::identity::MAX_ID_HEAP_BYTES, max_members, max_bytes)
    }

    /// Dead and left members held.
    pub fn down_count(&self) -> usize {
        self.members.len() - self.up
    }

    pub fn snapshot(&self) -> Vec<Record> {
        self.members.iter().map(Member::record).collect()
    }

    /// What one entry costs besides its identity (its slot and the hash
    /// table's control byte).
    const ENTRY_BYTES: usize = std::mem::size_of::<Member>() + 1;

    /// Roughly the bytes this table holds (for its bound, the simulator and
    /// `debug dump`).
    pub fn heap_bytes(&self) -> usize {
        self.members.len() * Self::ENTRY_BYTES + self.id_bytes
    }
}

impl Replicated for MemberTable {
    fn digest(&self) -> &Digest {
        &self.digest
    }

    fn len(&self) -> usize {
        self.members.len()
    }

    /// Members change all the time; their root would rarely match.
    fn opens_with_buckets(&self) -> bool {
        true
    }

    /// A record is about as small as its version would be.
    fn differs_with_entries(&self) -> bool {
        true
    }

    /// Our records in `buckets`, dead and left members included (the other
    /// side may hold them alive).
    fn items_in(&self, buckets: &[u16]) -> Items {
        let wanted = bucket_mask(buckets);
        Items::Records(
            self.members
                .iter()
                .filter(|m| wanted[usize::from(m.bucket)])
                .map(Member::record)
                .collect(),
        )
    }

    fn versions_in(&self, buckets: &[u16]) -> Vec<(Arc<str>, u64)> {
        let wanted = bucket_mask(buckets);
        self.members
            .iter()
            .filter(|m| wanted[usize::from(m.bucket)])
            .map(|m| (m.id.name.clone(), combine(m.id.boot, u64::from(m.incarnation))))
            .collect()
    }

    fn items_for(&self, keys: &[Arc<str>]) -> Items {
        Items::Records(keys.iter().filter_map(|k| self.get(k)).map(Member::record).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(boot: u64, port: u16) -> Arc<NodeId> {
        Arc::new(NodeId::new(
            "x",
            format!("10.0.0.1:{port}").parse().unwrap(),
            boot,
            Default::default(),
        ))
    }

    fn member(boot: u64, port: u16, incarnation: u32, status: Status) -> Member {
        Member::new(id(boot, port), incarnation, status, 0)
    }

    fn record(boot: u64, port: u16, incarnation: u32, status: Status) -> Record {
        Record {
            id: id(boot, port),
            incarnation,
            status,
        }
    }

    /// The table's running byte count against a walk over its entries.
    fn walked_bytes(table: &MemberTable) -> usize {
        table.iter().map(|m| MemberTable::ENTRY_BYTES + m.id.heap_bytes()).sum()
    }

    fn named(name: &str, tags: usize) -> Arc<NodeId> {
        let tags = (0..tags).map(|i| (format!("k{i}"), "v".repeat(100))).collect();
        Arc::new(NodeId::new(name, "10.0.0.9:1".parse().unwrap(), 1, tags))
    }

    #[test]
    fn a_full_table_forgets_the_members_down_longest_first_and_keeps_its_byte_count() {
        let t0 = Instant::now();
        let mut table = MemberTable::new(named("me", 0), t0);
        let at = |s: u64| t0 + Duration::from_secs(s);
        for (i, name) in ["m0", "m1", "m2", "m3", "m4"].iter().enumerate() {
            let record = Record {
                id: named(name, i),
                incarnation: 0,
                status: Status::Alive,
            };
            assert_eq!(table.apply(&record, at(0)), Applied::Added);
        }
        // They go down at different times: m3 first, then m1, then m4.
        for (s, name, status) in [
            (1, "m3", Status::Dead),
            (2, "m1", Status::Left),
            (3, "m4", Status::Dead),
        ] {
            let id = table.get(name).unwrap().id.clone();
            table.apply(
                &Record {
                    id,
                    incarnation: 0,
                    status,
                },
                at(s),
            );
        }
        // m2's tags change (its own later word).
        table.apply(
            &Record {
                id: named("m2", 9),
                incarnation: 1,
                status: Status::Alive,
            },
            at(4),
        );
        assert_eq!(table.heap_bytes(), walked_bytes(&table));
        assert_eq!(table.down_count(), 3);

        let gone = table.forget_oldest_down(2);
        assert_eq!(gone.len(), 2);
        assert!(
            gone.iter().any(|n| &**n == "m3") && gone.iter().any(|n| &**n == "m1"),
            "{gone:?}"
        );
        assert!(table.get("m4").is_some() && table.get("m0").is_some());
        assert_eq!(table.heap_bytes(), walked_bytes(&table));
        // Live members are never forgotten, this node least of all.
        assert_eq!(table.forget_oldest_down(10).len(), 1);
        assert_eq!(table.forget_oldest_down(10).len(), 0);
        assert_eq!(table.len(), 3, "this node, m0 and m2");
        assert_eq!(table.heap_bytes(), walked_bytes(&table));

        // Room by count and by bytes.
        let bytes = table.heap_bytes();
        assert!(table.has_room(0, 4, usize::MAX));
        assert!(!table.has_room(0, 3, usize::MAX));
        assert!(table.has_room(100, 4, bytes + MemberTable::ENTRY_BYTES + 100));
        assert!(!table.has_room(101, 4, bytes + MemberTable::ENTRY_BYTES + 100));
    }

    #[test]
    fn an_entry_stays_small() {
        // Every node holds one per member; the simulator holds N² of them.
        assert!(std::mem::size_of::<Member>() <= 24, "{}", std::mem::size_of::<Member>());
    }

    #[test]
    fn one_boot_follows_swim_precedence() {
        use Status::*;
        use Verdict::*;
        // (held status, held inc, record status, record inc, verdict)
        let table = [
            (Alive, 1, Alive, 1, Stale),
            (Alive, 1, Alive, 2, Accept),
            (Alive, 1, Suspect, 1, Accept),
            (Alive, 2, Suspect, 1, Stale),
            (Suspect, 1, Suspect, 1, SameSuspicion),
            (Suspect, 1, Suspect, 2, Accept),
            (Suspect, 1, Alive, 1, Stale),
            (Suspect, 1, Alive, 2, Accept),
            (Alive, 1, Dead, 1, Accept),
            (Suspect, 1, Dead, 1, Accept),
            (Dead, 1, Dead, 1, Stale),
            (Dead, 1, Alive, 1, Stale),
            (Dead, 1, Alive, 2, Accept),
            (Dead, 1, Suspect, 1, Stale),
            (Alive, 3, Left, 1, Accept),
            (Left, 1, Alive, 9, Stale),
            (Left, 1, Dead, 9, Stale),
        ];
        for (held, i, status, j, want) in table {
            let got = judge(Some(&member(1, 1, i, held)), &record(1, 1, j, status));
            assert_eq!(got, want, "held {held:?}@{i}, record {status:?}@{j}");
        }
        assert_eq!(judge(None, &record(1, 1, 0, Dead)), Accept);
    }

    #[test]
    fn boots_restart_in_place_and_live_duplicates_never_win() {
        use Status::*;
        use Verdict::*;
        // (held boot, held port, held status, record boot, record port, record status, verdict)
        let table = [
            // A restart at the same address takes over at once.
            (1, 1, Alive, 2, 1, Alive, Replace),
            // A newer boot elsewhere waits until the holder is gone.
            (1, 1, Alive, 2, 2, Alive, Conflict),
            (1, 1, Suspect, 2, 2, Alive, Conflict),
            (1, 1, Dead, 2, 2, Alive, Replace),
            (1, 1, Left, 2, 2, Alive, Replace),
            (1, 1, Alive, 2, 2, Dead, Stale),
            // We took the newer one first: the older live holder wins it back.
            (2, 2, Alive, 1, 1, Alive, Replace),
            // Old news about an older boot changes nothing.
            (2, 1, Alive, 1, 1, Alive, Stale),
            (2, 2, Alive, 1, 1, Dead, Stale),
            (2, 2, Dead, 1, 1, Alive, Stale),
        ];
        for (hb, hp, hs, rb, rp, rs, want) in table {
            let got = judge(Some(&member(hb, hp, 0, hs)), &record(rb, rp, 0, rs));
            assert_eq!(got, want, "held boot {hb}@{hp} {hs:?}, record boot {rb}@{rp} {rs:?}");
        }
    }

    #[test]
    fn the_digest_follows_live_members_whatever_the_order_of_news() {
        let me = Arc::new(NodeId::new("me", "10.0.0.9:1".parse().unwrap(), 1, Default::default()));
        let now = Instant::now();
        let mut a = MemberTable::new(me.clone(), now);
        let mut b = MemberTable::new(me, now);
        let news = [record(1, 1, 0, Status::Alive), record(1, 1, 1, Status::Alive)];
        a.apply(&news[0], now);
        a.apply(&news[1], now);
        b.apply(&news[1], now);
        b.apply(&news[0], now);
        assert_eq!(a.digest(), b.digest());
        assert!(a.digest().differing(b.digest().buckets()).is_empty());
        assert_eq!(a.up_count(), 2);

        a.apply(&record(1, 1, 1, Status::Dead), now);
        assert_eq!(a.up_count(), 1);
        let diff = a.digest().differing(b.digest().buckets());
        assert_eq!(diff.len(), 1, "one bucket differs");
        let Items::Records(records) = a.items_in(&diff) else {
            panic!("members are records")
        };
        assert!(
            records.iter().any(|r| r.status == Status::Dead),
            "dead members are sent in a differing bucket"
        );

        // Once both hold it dead, the digests agree again.
        b.apply(&record(1, 1, 1, Status::Dead), now);
        assert_eq!(a.digest(), b.digest());
    }
}
