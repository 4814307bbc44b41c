//! The janitor: with `IMGBATCH_RETENTION` set, deletes finished requests that last changed
//! longer ago than that, every `IMGBATCH_JANITOR_INTERVAL`, a small batch at a time. Every
//! process may run one: a claim hands each request to one janitor (a lease; on Postgres
//! `FOR UPDATE SKIP LOCKED`), and what a dead janitor left half-done is taken up again once its
//! lease runs out. The order that makes a crash at any moment safe is the core's
//! (`crate::core` retention: mark and tombstone, then objects, then rows).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::core::Core;
use crate::storage::Storage;

/// Requests taken per claim: small, so a batch is quick and a crash leaves little to redo.
pub const BATCH: usize = 10;

/// How the janitor runs.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Finished requests are deleted this long after they last changed; tombstones are kept as
    /// long again after the deletion.
    pub keep: Duration,
    pub interval: Duration,
    /// How long a claim is this janitor's before another may take it up.
    pub lease: Duration,
}

/// Sweeps every `interval` until `shutdown`.
pub async fn run(core: Core, storage: Storage, retention: Retention, shutdown: CancellationToken) {
    tracing::info!(
        retention = %humantime::format_duration(retention.keep),
        interval = %humantime::format_duration(retention.interval),
        "janitor started"
    );
    // An interval of 0 would make `interval` panic: the shortest is a millisecond.
    let mut tick = tokio::time::interval(retention.interval.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = sweep(&core, &storage, retention, &shutdown).await {
            tracing::warn!(error = %format!("{e:#}"), "retention sweep failed; trying again next time");
        }
    }
}

/// Deletes every request due, a batch at a time, then drops old tombstones. The number of
/// requests deleted. Running it again (or in two processes at once) deletes nothing twice.
pub async fn sweep(
    core: &Core,
    storage: &Storage,
    retention: Retention,
    shutdown: &CancellationToken,
) -> anyhow::Result<usize> {
    let mut deleted = 0;
    while !shutdown.is_cancelled() {
        let ids = core
            .claim_deletions(retention.keep, retention.lease, BATCH)
            .await?;
        for &id in &ids {
            // Objects first: until the rows go, the request stays marked, and a janitor that
            // dies here leaves it to be taken up again.
            let objects = storage.delete_request(id).await?;
            if core.delete_request_rows(id).await? {
                deleted += 1;
                tracing::info!(request_id = %id, objects, "request deleted by retention");
            }
        }
        if ids.len() < BATCH {
            break;
        }
    }
    let dropped = core.drop_tombstones(retention.keep).await?;
    if dropped > 0 {
        tracing::info!(tombstones = dropped, "old tombstones dropped");
    }
    Ok(deleted)
}
