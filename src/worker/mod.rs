//! The background pipeline: a pool that claims image jobs from the database, runs them, and
//! records what became of them. All state is in the database, so any process can die at any
//! moment and another (or the same, restarted) finishes the work.

pub mod janitor;
mod job;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::core::backoff;
use crate::core::Core;
use crate::fetch::Fetcher;
use crate::memory::MemoryBudget;
use crate::storage::Storage;

/// Everything a job needs.
pub(crate) struct Ctx {
    pub core: Core,
    pub storage: Storage,
    pub fetcher: Fetcher,
    pub config: Arc<Config>,
    /// Bounds CPU-heavy decode/encode to the cores, however many downloads are in flight.
    pub cpu: Arc<Semaphore>,
    /// Bytes of downloaded bodies held (from response headers to the end of the compression).
    pub download_memory: MemoryBudget,
    /// Bytes of decode/encode buffers held (estimated from the image header).
    pub decode_memory: MemoryBudget,
    /// This process's name in `locked_by`.
    pub worker_id: String,
    /// Base of the service's URLs (the links in large requests' webhooks), no trailing slash.
    pub public_url: Arc<str>,
}

pub struct WorkerPool {
    shutdown: CancellationToken,
    dispatcher: tokio::task::JoinHandle<()>,
    /// Lease keeping, webhook delivery and LISTEN: stopped once the dispatcher is done.
    background: JoinSet<()>,
    ctx: Arc<Ctx>,
}

impl WorkerPool {
    pub fn start(
        core: Core,
        storage: Storage,
        fetcher: Fetcher,
        sender: crate::webhook::Sender,
        config: Arc<Config>,
        public_url: Arc<str>,
        shutdown: CancellationToken,
    ) -> Self {
        let worker_id = format!(
            "{}-{}-{}",
            hostname(),
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        tracing::info!(%worker_id, workers = config.workers.workers, cpu = config.workers.cpu_workers(), "workers starting");
        let ctx = Arc::new(Ctx {
            cpu: Arc::new(Semaphore::new(config.workers.cpu_workers())),
            download_memory: MemoryBudget::new(config.workers.memory_budget / 4),
            decode_memory: MemoryBudget::new(
                config.workers.memory_budget - config.workers.memory_budget / 4,
            ),
            core,
            storage,
            fetcher,
            config,
            worker_id,
            public_url,
        });
        let dispatcher = tokio::spawn(dispatch(ctx.clone(), shutdown.clone()));
        let mut background = JoinSet::new();
        background.spawn(keep_leases(ctx.clone(), shutdown.clone()));
        background.spawn(webhooks::deliver(ctx.clone(), sender, shutdown.clone()));
        let (core, until) = (ctx.core.clone(), shutdown.clone());
        background.spawn(async move { core.listen(until).await });
        Self {
            shutdown,
            dispatcher,
            background,
            ctx,
        }
    }

    /// Stops claiming, waits for in-flight jobs up to the shutdown timeout, then hands back
    /// whatever is still held so another process can take it at once.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let deadline = self.ctx.config.workers.shutdown_timeout;
        let abort = self.dispatcher.abort_handle();
        if tokio::time::timeout(deadline, &mut self.dispatcher)
            .await
            .is_err()
        {
            tracing::warn!("in-flight jobs did not finish in time; releasing them");
            // Dropping the dispatcher drops its JoinSet, which aborts the running jobs.
            abort.abort();
            let _ = self.dispatcher.await;
        }
        self.background.abort_all();
        while self.background.join_next().await.is_some() {}
        match self.ctx.core.release(&self.ctx.worker_id).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(released = n, "released unfinished jobs"),
            Err(e) => {
                tracing::warn!(error = %e, "could not release jobs; their leases will expire")
            }
        }
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "imgbatch".into())
}

/// Claims as many jobs as there are free slots, runs each in its own task, and sleeps when the
/// queue is empty until a wake-up, the next scheduled retry, or the poll interval.
async fn dispatch(ctx: Arc<Ctx>, shutdown: CancellationToken) {
    let wakeup = ctx.core.wakeups().jobs.clone();
    let slots = Arc::new(Semaphore::new(ctx.config.workers.workers));
    let mut running = JoinSet::new();
    let poll = ctx.config.workers.poll_interval;
    let mut failures = 0u32;
    loop {
        // Wait for a free slot (or shutdown).
        let first = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let free = slots.available_permits() + 1;
        let jobs = match ctx
            .core
            .claim_images(&ctx.worker_id, free, ctx.config.workers.lease)
            .await
        {
            Ok(jobs) => {
                failures = 0;
                jobs
            }
            Err(e) => {
                failures += 1;
                drop(first);
                let pause = backoff(
                    Duration::from_millis(500),
                    failures,
                    Duration::from_secs(30),
                );
                tracing::warn!(error = %e, retry_in = %humantime::format_duration(pause), "cannot claim jobs");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(pause) => continue,
                }
            }
        };
        let claimed = jobs.len();
        let mut first = Some(first);
        for j in jobs {
            let permit = match first.take() {
                Some(p) => p,
                None => match slots.clone().try_acquire_owned() {
                    Ok(p) => p,
                    // Cannot happen (we claimed no more than the free slots), but never run
                    // unbounded: hand the job back by letting its lease lapse... better, wait.
                    Err(_) => match slots.clone().acquire_owned().await {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                },
            };
            let ctx = ctx.clone();
            running.spawn(async move {
                job::run(&ctx, j).await;
                drop(permit);
            });
        }
        // Reap finished tasks so the set does not grow.
        while running.try_join_next().is_some() {}
        if claimed < free {
            // Queue drained for now: sleep until something may be runnable.
            let until_next = match ctx.core.next_runnable_at().await {
                Ok(Some(t)) => (t - Utc::now())
                    .to_std()
                    .unwrap_or(Duration::ZERO)
                    .min(poll),
                _ => poll,
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = wakeup.wait() => {},
                _ = tokio::time::sleep(until_next.max(Duration::from_millis(20))) => {},
            }
        }
    }
    // Let in-flight jobs finish; the pool's stop() bounds how long.
    while running.join_next().await.is_some() {}
}

/// Renews this process's leases while its jobs run, and returns expired leases of dead
/// processes to the queue.
async fn keep_leases(ctx: Arc<Ctx>, shutdown: CancellationToken) {
    let lease = ctx.config.workers.lease;
    let every = (lease / 3).max(Duration::from_millis(100));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                // Keep renewing until in-flight jobs are done; stop() aborts us after that.
                loop {
                    tokio::time::sleep(every).await;
                    let _ = ctx.core.heartbeat(&ctx.worker_id, lease).await;
                }
            }
            _ = tick.tick() => {}
        }
        if let Err(e) = ctx.core.heartbeat(&ctx.worker_id, lease).await {
            tracing::warn!(error = %e, "lease heartbeat failed");
        }
        match ctx.core.reclaim_expired().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                reclaimed = n,
                "returned jobs of a stopped worker to the queue"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot reclaim expired leases"),
        }
    }
}
