//! The tuning sections of the config file: `[membership]`, `[deployer]`,
//! `[monitor]` and `[transponder]`. Each key overrides one field of the
//! preset that `profile` picks, and is documented beside that field in
//! its own config type. The tables are generated from one list per
//! section, so a key is parsed, applied and printed from one place.

use super::units::{format_duration, format_size, Dur, Size};
use crate::actors::monitor::MonitorConfig;
use crate::actors::transponder::TransponderConfig;
use crate::cluster::ClusterConfig;
use crate::deploy::install::DeployerConfig;
use std::time::Duration;
use toml::Value;

/// How a value type of the file sets a field, and prints it back.
pub trait Knob<T> {
    fn set(&self, slot: &mut T);
    fn show(slot: &T) -> Value;
}

impl Knob<Duration> for Dur {
    fn set(&self, slot: &mut Duration) {
        *slot = self.0;
    }
    fn show(slot: &Duration) -> Value {
        Value::String(format_duration(*slot))
    }
}

impl Knob<u64> for Size {
    fn set(&self, slot: &mut u64) {
        *slot = self.0;
    }
    fn show(slot: &u64) -> Value {
        Value::String(format_size(*slot))
    }
}

impl Knob<usize> for Size {
    fn set(&self, slot: &mut usize) {
        *slot = usize::try_from(self.0).unwrap_or(usize::MAX);
    }
    fn show(slot: &usize) -> Value {
        Value::String(format_size(*slot as u64))
    }
}

impl Knob<usize> for usize {
    fn set(&self, slot: &mut usize) {
        *slot = *self;
    }
    fn show(slot: &usize) -> Value {
        Value::Integer(i64::try_from(*slot).unwrap_or(i64::MAX))
    }
}

impl Knob<u32> for u32 {
    fn set(&self, slot: &mut u32) {
        *slot = *self;
    }
    fn show(slot: &u32) -> Value {
        Value::Integer(i64::from(*slot))
    }
}

/// Declares a section: its serde table (every key optional, unknown keys
/// refused), how it lays its keys over a preset, and how it prints one.
macro_rules! section {
    ($(#[$doc:meta])* $section:ident for $target:ty {
        $( $key:ident : $kind:ty => $($path:ident).+ ),* $(,)?
    }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $section {
            $( #[serde(default)] pub $key: Option<$kind>, )*
        }

        impl $section {
            /// Lays the keys the file gives over `base` (the preset).
            pub fn apply(&self, base: &mut $target) {
                $( if let Some(v) = &self.$key { Knob::set(v, &mut base.$($path).+); } )*
            }

            /// This layer's keys, and `lower`'s where this one gives none.
            pub fn or(self, lower: $section) -> $section {
                $section { $( $key: self.$key.or(lower.$key), )* }
            }

            /// Every key of the section with its value in `config`.
            pub fn show(config: &$target) -> toml::Table {
                let mut table = toml::Table::new();
                $( table.insert(stringify!($key).into(), <$kind as Knob<_>>::show(&config.$($path).+)); )*
                table
            }
        }
    };
}

section! {
    /// `[membership]`: links, failure detection, the broadcast tree and
    /// anti-entropy (`ClusterConfig`). The hash rings and the frame limit
    /// are not here: every node of a cluster must agree on them.
    ClusterKnobs for ClusterConfig {
        max_links: usize => max_links,
        link_cap: usize => link_cap,
        link_idle: Dur => link_idle,
        hello_timeout: Dur => hello_timeout,
        dial_timeout: Dur => dial_timeout,
        redial_interval: Dur => redial_interval,
        probe_interval: Dur => probe_interval,
        probe_timeout: Dur => probe_timeout,
        indirect_probes: usize => indirect_probes,
        suspicion_min: Dur => suspicion_min,
        suspicion_max: Dur => suspicion_max,
        max_health: u32 => max_health,
        stall_grace: Dur => stall_grace,
        beacon_interval: Dur => beacon_interval,
        switch_grace: Dur => switch_grace,
        graft_timeout: Dur => graft_timeout,
        graft_retry: Dur => graft_retry,
        lazy_interval: Dur => lazy_interval,
        cache_ttl: Dur => cache_ttl,
        cache_bytes: Size => cache_bytes,
        dedup_ttl: Dur => dedup_ttl,
        anti_entropy_interval: Dur => anti_entropy_interval,
        quick_rounds_after_news: u32 => quick_rounds_after_news,
        reconnect_interval: Dur => reconnect_interval,
        remember_dead_for: Dur => remember_dead_for,
        peer_queue_bytes: Size => peer_queue_bytes,
        max_state_bytes: Size => max_state_bytes,
        max_pending_per_dial: usize => max_pending_per_dial,
        new_members_burst: u32 => new_members_burst,
        new_members_per_sec: u32 => new_members_per_sec,
        new_members_grace: Dur => new_members_grace,
        max_members: usize => max_members,
        max_member_bytes: Size => max_member_bytes,
    }
}

section! {
    /// `[deployer]`: the install pipeline (`DeployerConfig`). The package
    /// limit and upload slots are the top-level `max_package` and
    /// `max_uploads`, as their flags are.
    DeployerKnobs for DeployerConfig {
        probation: Dur => probation,
        fetch_timeout: Dur => fetch_timeout,
        chunk_bytes: Size => chunk_bytes,
        chunk_timeout: Dur => chunk_timeout,
        parallel_orders: usize => parallel_orders,
        stall_window: Dur => stall.window,
        stall_min_bytes: Size => stall.min_bytes,
        url_deadline: Dur => url_deadline.base,
        url_min_bytes_per_sec: Size => url_deadline.min_bytes_per_sec,
    }
}

section! {
    /// `[monitor]`: status rounds (`MonitorConfig`); the interval is the
    /// top-level `status_interval`, as its flag is.
    MonitorKnobs for MonitorConfig {
        timeout: Dur => timeout,
    }
}

section! {
    /// `[transponder]`: the node's border (`TransponderConfig`).
    TransponderKnobs for TransponderConfig {
        module_request_timeout: Dur => module_request_timeout,
        dedup_capacity: usize => dedup_capacity,
    }
}

/// Checks the values that a preset always gets right and a file may not:
/// answers the offending key, by its name in the file, and why.
pub fn check_cluster(c: &ClusterConfig) -> Result<(), (&'static str, String)> {
    let min_links = 2 * c.rings + 4;
    if c.max_links < min_links {
        return Err((
            "membership.max_links",
            format!("must be at least {min_links}: room for the overlay's links and a few more"),
        ));
    }
    if c.link_cap <= c.max_links {
        return Err((
            "membership.link_cap",
            format!(
                "must be above max_links ({}), so that idle links are closed before new ones are turned away",
                c.max_links
            ),
        ));
    }
    if c.probe_timeout > c.probe_interval {
        return Err((
            "membership.probe_timeout",
            format!("must be at most probe_interval ({})", format_duration(c.probe_interval)),
        ));
    }
    if c.suspicion_min > c.suspicion_max {
        return Err((
            "membership.suspicion_min",
            format!("must be at most suspicion_max ({})", format_duration(c.suspicion_max)),
        ));
    }
    if c.peer_queue_bytes <= c.max_frame {
        return Err((
            "membership.peer_queue_bytes",
            format!("must be above the largest frame ({})", format_size(c.max_frame as u64)),
        ));
    }
    if c.indirect_probes == 0 || c.max_pending_per_dial == 0 {
        let key = if c.indirect_probes == 0 {
            "membership.indirect_probes"
        } else {
            "membership.max_pending_per_dial"
        };
        return Err((key, "must be at least 1".into()));
    }
    if c.max_members < MIN_MEMBERS {
        return Err(("membership.max_members", format!("must be at least {MIN_MEMBERS}")));
    }
    if c.max_member_bytes < MIN_MEMBER_BYTES {
        return Err((
            "membership.max_member_bytes",
            format!(
                "must be at least {}: room for 64 members with their full share of tags",
                format_size(MIN_MEMBER_BYTES as u64)
            ),
        ));
    }
    Ok(())
}

/// The smallest member table a file may ask for: this node and a few
/// others (a smaller one could not hold even a test cluster).
const MIN_MEMBERS: usize = 16;
/// About 64 records of the largest size a name and tags may take.
const MIN_MEMBER_BYTES: usize = 1024 * 1024;

/// As [`check_cluster`], for the install pipeline.
pub fn check_deployer(d: &DeployerConfig) -> Result<(), (&'static str, String)> {
    let most = crate::deploy::install::MAX_CHUNK_BYTES;
    if d.chunk_bytes > most {
        return Err(("deployer.chunk_bytes", format!("must be at most {}", format_size(most))));
    }
    if d.parallel_orders == 0 {
        return Err(("deployer.parallel_orders", "must be at least 1".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_section_lays_only_its_given_keys_over_the_preset_and_prints_every_key() {
        let knobs: ClusterKnobs = toml::from_str("probe_interval = \"750ms\"\ncache_bytes = \"4M\"").unwrap();
        let mut config = ClusterConfig::lan();
        knobs.apply(&mut config);
        assert_eq!(config.probe_interval, Duration::from_millis(750));
        assert_eq!(config.cache_bytes, 4 << 20);
        assert_eq!(config.suspicion_max, ClusterConfig::lan().suspicion_max, "untouched");
        let shown = ClusterKnobs::show(&config);
        assert_eq!(shown["probe_interval"].as_str(), Some("750ms"));
        assert_eq!(shown["max_links"].as_integer(), Some(24));
        // What is printed reads back as the same config.
        let again: ClusterKnobs = toml::from_str(&toml::to_string(&shown).unwrap()).unwrap();
        let mut from_print = ClusterConfig::wan();
        again.apply(&mut from_print);
        assert_eq!(ClusterKnobs::show(&from_print), shown);
    }

    #[test]
    fn every_preset_passes_the_checks_and_bad_values_name_their_key() {
        for profile in ["lan", "wan", "local"] {
            let p = crate::node::Profile::preset(profile).unwrap();
            assert_eq!(check_cluster(&p.cluster), Ok(()), "{profile}");
            assert_eq!(check_deployer(&p.deployer), Ok(()), "{profile}");
        }
        let cases: [(&str, &str); 7] = [
            ("max_links = 3", "membership.max_links"),
            ("max_members = 15", "membership.max_members"),
            ("max_member_bytes = \"512K\"", "membership.max_member_bytes"),
            ("link_cap = 24", "membership.link_cap"),
            ("probe_timeout = \"2s\"", "membership.probe_timeout"),
            ("suspicion_min = \"10s\"", "membership.suspicion_min"),
            ("peer_queue_bytes = \"1M\"", "membership.peer_queue_bytes"),
        ];
        for (text, key) in cases {
            let knobs: ClusterKnobs = toml::from_str(text).unwrap();
            let mut config = ClusterConfig::lan();
            knobs.apply(&mut config);
            assert_eq!(check_cluster(&config).unwrap_err().0, key, "{text}");
        }
        let mut d = DeployerConfig::default();
        DeployerKnobs {
            chunk_bytes: Some(Size(1 << 20)),
            ..Default::default()
        }
        .apply(&mut d);
        assert_eq!(check_deployer(&d).unwrap_err().0, "deployer.chunk_bytes");
    }
}
