//! The node's metrics, served as Prometheus text at `GET /metrics`.
//!
//! Each node owns its own recorder instead of installing the process-wide
//! one, so several nodes in one process (the in-process tests) keep separate
//! figures. Actors that count events as they happen (the Transponder, the
//! ClusterBridge, the ModBus, the Deployer) get a clone of [`Metrics`];
//! levels (members, peers, queue bytes, module states) are read from the
//! actors at scrape time by the control API, so they are never stale.

use metrics::{Key, Label, Level, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use metrics_util::MetricKindMask;
use std::sync::Arc;
use std::time::Duration;

static METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// Buckets of the latency histograms, in seconds: 1 ms to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Why the cluster side refused or skipped a peer's input: a dataset entry
/// that breaks its rules, one already obsolete, a message kind this node
/// does not know, a dataset it does not hold, entries other than a
/// neighbour's digest claimed, entries it claimed and never sent, member
/// records whose name or tags break their bounds, and hellos whose
/// identity key the link did not prove or another key holds the name of,
/// hellos without an admission this node accepts, member records that
/// their member's own signed proof does not cover, news of new members
/// over its link's budget, and new members a table full of live ones had
/// no room for.
pub const CLUSTER_INPUT_REASONS: [&str; 12] = [
    "entry_invalid",
    "entry_obsolete",
    "message_unknown",
    "dataset_unknown",
    "sync_mismatch",
    "sync_unanswered",
    "record_invalid",
    "identity_refused",
    "not_admitted",
    "record_unproven",
    "news_over_budget",
    "table_full",
];

/// Why an envelope was dropped (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Seen before (by id).
    Duplicate,
    /// Larger than the frame limit.
    Oversize,
    /// Not a valid frame or envelope.
    Malformed,
    /// Nobody on the ModBus handles its address.
    NoHandler,
    /// From a peer that failed the encrypted handshake (wrong cluster
    /// key), a command that no trusted operator key allowed, or a deploy
    /// or undeploy sent as an envelope instead of a table entry.
    Unauthorized,
    /// A target selector that does not parse.
    BadTarget,
    /// The receiving module's queue was full.
    Overloaded,
}

/// The results `conjoiner_deploys_total` counts, each from zero.
pub const DEPLOY_RESULTS: [&str; 5] = ["deployed", "unchanged", "failed", "undeployed", "not_installed"];

impl DropReason {
    pub const ALL: [DropReason; 7] = [
        DropReason::Duplicate,
        DropReason::Oversize,
        DropReason::Malformed,
        DropReason::NoHandler,
        DropReason::Unauthorized,
        DropReason::BadTarget,
        DropReason::Overloaded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Duplicate => "duplicate",
            DropReason::Oversize => "oversize",
            DropReason::Malformed => "malformed",
            DropReason::NoHandler => "no_handler",
            DropReason::Unauthorized => "unauthorized",
            DropReason::BadTarget => "bad_target",
            DropReason::Overloaded => "overloaded",
        }
    }
}

/// One node's metrics. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    let labels: Vec<Label> = labels.iter().map(|(k, v)| Label::new(*k, v.to_string())).collect();
    Key::from_parts(name, labels)
}

impl Metrics {
    pub fn new() -> Metrics {
        let recorder = PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS)
            .expect("the latency buckets are not empty")
            // Levels of peers or modules that are gone disappear once they
            // are no longer set at scrape time.
            .idle_timeout(MetricKindMask::GAUGE, Some(Duration::from_secs(30)))
            .build_recorder();
        let handle = recorder.handle();
        let metrics = Metrics {
            recorder: Arc::new(recorder),
            handle,
        };
        metrics.describe();
        metrics.start_from_zero();
        metrics
    }

    /// Registers every counter a dashboard or alert may name, at zero, so
    /// a series exists before its first event (a rate over a missing
    /// series is no rate at all).
    fn start_from_zero(&self) {
        for reason in DropReason::ALL {
            self.counter("conjoiner_envelopes_dropped_total", &[("reason", reason.as_str())])
                .increment(0);
        }
        self.counter("conjoiner_link_handshake_failures_total", &[])
            .increment(0);
        self.counter("conjoiner_event_streams_dropped_total", &[]).increment(0);
        for result in DEPLOY_RESULTS {
            self.counter("conjoiner_deploys_total", &[("result", result)])
                .increment(0);
        }
        for reason in CLUSTER_INPUT_REASONS {
            self.counter("conjoiner_cluster_input_refused_total", &[("reason", reason)])
                .increment(0);
        }
    }

    fn describe(&self) {
        let r = &self.recorder;
        let text = |s: &'static str| SharedString::from(s);
        r.describe_counter(
            "conjoiner_envelopes_in_total".into(),
            None,
            text("Envelopes received from the cluster, by type."),
        );
        r.describe_counter(
            "conjoiner_envelopes_out_total".into(),
            None,
            text("Envelopes sent to the cluster, by type."),
        );
        r.describe_counter(
            "conjoiner_envelopes_dropped_total".into(),
            None,
            text("Envelopes dropped, by reason."),
        );
        r.describe_counter(
            "conjoiner_link_handshake_failures_total".into(),
            None,
            text("Encrypted link handshakes that failed (often a wrong cluster key)."),
        );
        r.describe_counter(
            "conjoiner_cluster_input_refused_total".into(),
            None,
            text("Peers' cluster input refused or skipped, by reason."),
        );
        r.describe_counter(
            "conjoiner_deploys_total".into(),
            None,
            text("Deploy and undeploy orders this node carried out, by result."),
        );
        r.describe_histogram(
            "conjoiner_request_duration_seconds".into(),
            Some(Unit::Seconds),
            text("Time from sending a gathered cluster request to each node's answer, by envelope type."),
        );
        r.describe_histogram(
            "conjoiner_modbus_request_duration_seconds".into(),
            Some(Unit::Seconds),
            text("Time a module on this node took to answer a request on the ModBus."),
        );
        r.describe_gauge(
            "conjoiner_members".into(),
            None,
            text("Cluster members known to this node, by status."),
        );
        r.describe_gauge(
            "conjoiner_peers".into(),
            None,
            text("Peers with an open encrypted link."),
        );
        r.describe_gauge(
            "conjoiner_peer_queue_bytes".into(),
            None,
            text("Bytes queued for each peer's link."),
        );
        r.describe_gauge(
            "conjoiner_congested".into(),
            None,
            text("1 while a link is backed up and this node holds back what its modules publish."),
        );
        r.describe_counter(
            "conjoiner_congested_episodes_total".into(),
            None,
            text("Times this node began holding its publishers back."),
        );
        r.describe_gauge(
            "conjoiner_modules".into(),
            None,
            text("Modules on this node, by state."),
        );
        r.describe_counter(
            "conjoiner_module_restarts_total".into(),
            None,
            text("Restarts of each module since the node started."),
        );
        r.describe_gauge(
            "conjoiner_module_health".into(),
            None,
            text("1 for the health each module of this node has in its latest report, 0 for the others."),
        );
        r.describe_gauge(
            "conjoiner_event_streams".into(),
            None,
            text("Readers of this node's event stream (`GET /v1/events`, `conjoiner tail`)."),
        );
        r.describe_counter(
            "conjoiner_event_streams_dropped_total".into(),
            None,
            text("Event stream readers dropped because they did not read."),
        );
        r.describe_gauge(
            "conjoiner_build_info".into(),
            None,
            text("Always 1; the labels say which build runs."),
        );

        r.describe_gauge(
            "conjoiner_module_up".into(),
            None,
            text("1 if the module is running, else 0."),
        );
        r.describe_gauge(
            "conjoiner_uptime_seconds".into(),
            Some(Unit::Seconds),
            text("Seconds since this node started."),
        );
    }

    fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> metrics::Counter {
        self.recorder.register_counter(&key(name, labels), &METADATA)
    }

    fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> metrics::Gauge {
        self.recorder.register_gauge(&key(name, labels), &METADATA)
    }

    fn histogram(&self, name: &'static str, labels: &[(&'static str, &str)]) -> metrics::Histogram {
        self.recorder.register_histogram(&key(name, labels), &METADATA)
    }

    /// An envelope of type `kind` arrived from the cluster.
    pub fn envelope_in(&self, kind: &str) {
        self.counter("conjoiner_envelopes_in_total", &[("type", kind)])
            .increment(1);
    }

    /// An envelope of type `kind` left for the cluster.
    pub fn envelope_out(&self, kind: &str) {
        self.counter("conjoiner_envelopes_out_total", &[("type", kind)])
            .increment(1);
    }

    pub fn dropped(&self, reason: DropReason) {
        self.dropped_many(reason, 1);
    }

    pub fn dropped_many(&self, reason: DropReason, n: u64) {
        self.counter("conjoiner_envelopes_dropped_total", &[("reason", reason.as_str())])
            .increment(n);
    }

    pub fn handshake_failed(&self) {
        self.counter("conjoiner_link_handshake_failures_total", &[])
            .increment(1);
    }

    /// This node's Deployer finished an order: `deployed`, `unchanged`, `failed`, `undeployed`, …
    pub fn deploy_result(&self, result: &str) {
        self.counter("conjoiner_deploys_total", &[("result", result)])
            .increment(1);
    }

    /// One node answered a gathered cluster request of type `kind`.
    /// Counts what the cluster side refused or skipped of its peers'
    /// input, by reason (see [`CLUSTER_INPUT_REASONS`]).
    pub fn cluster_input_refused(&self, reason: &'static str, count: u64) {
        self.counter("conjoiner_cluster_input_refused_total", &[("reason", reason)])
            .increment(count);
    }

    pub fn request_answered(&self, kind: &str, elapsed: Duration) {
        self.histogram("conjoiner_request_duration_seconds", &[("type", kind)])
            .record(elapsed.as_secs_f64());
    }

    /// A module answered a request on the ModBus.
    pub fn modbus_request_answered(&self, elapsed: Duration) {
        self.histogram("conjoiner_modbus_request_duration_seconds", &[])
            .record(elapsed.as_secs_f64());
    }

    /// Sets a counter read at scrape time to the total kept elsewhere.
    pub fn set_total(&self, name: &'static str, labels: &[(&'static str, &str)], total: u64) {
        self.counter(name, labels).absolute(total);
    }

    /// Sets a level read at scrape time.
    pub fn set_level(&self, name: &'static str, labels: &[(&'static str, &str)], value: f64) {
        self.gauge(name, labels).set(value);
    }

    /// The Prometheus text exposition of everything recorded.
    pub fn render(&self) -> String {
        self.handle.run_upkeep();
        self.handle.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_histograms_and_levels_render_as_prometheus_text() {
        let m = Metrics::new();
        m.envelope_in("event");
        m.envelope_in("event");
        m.envelope_out("heartbeat");
        m.dropped(DropReason::Duplicate);
        m.request_answered("request", Duration::from_millis(3));
        m.set_level("conjoiner_members", &[("status", "alive")], 3.0);
        let text = m.render();
        assert!(
            text.contains("conjoiner_envelopes_in_total{type=\"event\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("conjoiner_envelopes_out_total{type=\"heartbeat\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("conjoiner_envelopes_dropped_total{reason=\"duplicate\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("conjoiner_request_duration_seconds_bucket{type=\"request\",le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(text.contains("conjoiner_members{status=\"alive\"} 3"), "{text}");
        assert!(text.contains("# HELP conjoiner_envelopes_in_total"), "{text}");
    }

    #[test]
    fn two_nodes_in_one_process_keep_separate_figures() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.envelope_in("event");
        assert!(a.render().contains("conjoiner_envelopes_in_total"));
        assert!(!b.render().contains("conjoiner_envelopes_in_total{"));
    }
}
