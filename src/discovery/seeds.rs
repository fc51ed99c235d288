//! `--join host:port` seeds: each is dialed until one Hello comes back,
//! with backoff between attempts. After that, membership keeps the node in
//! the cluster (and re-contacts dead members by itself).

use crate::actors::cluster_bridge::JoinSeed;
use actix::Recipient;
use std::time::Duration;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn, Instrument as _};

/// First wait after a failed attempt; it doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(250);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Starts one task per seed.
pub fn spawn_seeds(seeds: &[String], join: Recipient<JoinSeed>, span: tracing::Span) -> Vec<JoinHandle<()>> {
    seeds
        .iter()
        .map(|seed| tokio::spawn(join_seed(seed.clone(), join.clone()).instrument(span.clone())))
        .collect()
}

async fn attempt(seed: &str, join: &Recipient<JoinSeed>) -> Result<String, String> {
    let addr = tokio::net::lookup_host(seed)
        .await
        .map_err(|e| format!("cannot resolve: {e}"))?
        .next()
        .ok_or("resolves to no address")?;
    join.send(JoinSeed(addr))
        .await
        .map_err(|_| "the cluster bridge is gone".to_string())?
}

async fn join_seed(seed: String, join: Recipient<JoinSeed>) {
    let mut backoff = FIRST_BACKOFF;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match attempt(&seed, &join).await {
            Ok(node) => {
                info!(%seed, %node, attempts, "reached join seed");
                return;
            }
            Err(e) if !join.connected() => {
                debug!(%seed, error = %e, "stopping seed attempts: node is shutting down");
                return;
            }
            Err(e) => {
                if attempts == 1 || attempts.is_multiple_of(10) {
                    warn!(%seed, error = %e, attempts, retry_in_ms = backoff.as_millis() as u64,
                        "cannot reach join seed yet; retrying");
                } else {
                    debug!(%seed, error = %e, attempts, "join seed attempt failed");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
