//! Stable hashes: every node must compute the same ring positions, digest
//! buckets and update ids, so these never use a per-process random key.

/// FNV-1a over `bytes`.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The splitmix64 finalizer: spreads every input bit over the output.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Combines hashes in order.
pub fn combine(a: u64, b: u64) -> u64 {
    mix(a ^ b.rotate_left(17).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// A fixed-key hasher for the core's and the simulator's maps: their
/// iteration order then depends only on what went in, so a simulated run
/// repeats exactly from its seed (a per-process random key made two runs of
/// one seed differ). Every key comes from this node or an authenticated
/// member, so a fixed key gives an attacker nothing to flood.
pub type Stable = std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>;
pub type StableMap<K, V> = std::collections::HashMap<K, V, Stable>;
pub type StableSet<T> = std::collections::HashSet<T, Stable>;

pub fn name_hash(name: &str) -> u64 {
    mix(fnv1a(name.as_bytes()))
}

/// Where `name` sits on ring `ring`: each ring orders the members by an
/// independent hash.
pub fn ring_position(name_hash: u64, ring: usize) -> u64 {
    combine(name_hash, ring as u64 + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_stable_across_processes() {
        // Fixed values: a change here breaks mixed-version clusters.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(ring_position(name_hash("n1"), 0), ring_position(name_hash("n1"), 1));
    }
}
