//! The core: the rules of the request lifecycle and of both queues (image jobs, webhook
//! deliveries), written once over the store's backend interface. The api and the worker speak
//! to [`Core`], never to a backend; a backend runs the statements the core chooses.
//!
//! Every operation that uses a transaction runs on a task of its own, so a caller that goes
//! away (a client hanging up drops its handler's future; shutdown aborts a job) cannot cancel it
//! half-way: sqlx 0.8 can hand such a connection back to the pool with the transaction still
//! open (sqlx issues #4385, #4393), breaking whoever gets it next.

mod backoff;
mod deliveries;
mod images;
mod lifecycle;
mod requests;
mod retention;

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::domain::{Owner, RequestId, Status};
use crate::failure::Failure;
use crate::store::backend::Backend;
use crate::store::Db;
pub use crate::store::{
    AttemptRecord, DeliveryJob, DeliveryState, ImageJob, ImageOutput, ImageRow, ListAfter,
    NewRequest, ProductRow, RequestDetail, RequestHead, RequestRow, RequestVersion, StoreError,
    StoreResult, Wakeup, Wakeups, WebhookRow,
};
pub use backoff::backoff;
pub use deliveries::next_after_failure;
pub use images::after_failure;
pub use requests::ReadSnapshot;

/// What storing an upload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    Created(RequestId),
    /// The idempotency key was seen before with the same upload: the first request's ID.
    Replayed(RequestId),
    /// The idempotency key was seen before with a different upload.
    KeyReused,
}

/// What became of one attempt at an image.
#[derive(Debug, Clone)]
pub enum JobOutcome {
    Completed(ImageOutput),
    /// Final: not retried.
    Failed(Failure),
    /// Transient: tried again at `at`.
    Retry {
        failure: Failure,
        at: DateTime<Utc>,
    },
}

/// What settling an image changed, for logs, metrics and wake-ups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settled {
    /// False when the job was no longer ours (lease lost, or recorded already): nothing changed.
    pub recorded: bool,
    /// Set when this settlement finished the whole request.
    pub request_finished: Option<Status>,
}

/// What follows a webhook delivery attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptNext {
    Delivered,
    Retry(DateTime<Utc>),
    Failed,
}

impl AttemptNext {
    /// `delivered`, `retry` or `failed`, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptNext::Delivered => "delivered",
            AttemptNext::Retry(_) => "retry",
            AttemptNext::Failed => "failed",
        }
    }

    /// When the next attempt is due, for a retry.
    pub fn retry_at(self) -> Option<DateTime<Utc>> {
        match self {
            AttemptNext::Retry(at) => Some(at),
            _ => None,
        }
    }
}

/// The answer to a manual retry of a webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookRetry {
    Queued,
    /// The request has no webhook target, or has not finished yet.
    NoDelivery,
    /// Only failed deliveries can be sent again.
    NotFailed(DeliveryState),
}

/// The answer to a cancel.
#[derive(Debug, Clone)]
pub enum CancelOutcome {
    /// The request is `cancelled` (now, or it was already): the row after.
    Cancelled(RequestRow),
    /// It had finished with this status: nothing to cancel.
    Finished(Status),
}

/// The answer to a retry of a request's images.
#[derive(Debug, Clone)]
pub enum RetryOutcome {
    /// `images` went back in the queue: the row after.
    Requeued { request: RequestRow, images: i64 },
    /// No image to retry (none failed, or none of the kinds asked for); the request's status.
    NothingToRetry(Status),
}

/// The service's durable state and its rules: one handle, cheap to clone.
#[derive(Clone)]
pub struct Core {
    db: Db,
    wakeups: Wakeups,
    /// The requests that changed in this process (a claim, a settlement, a cancel, a retry),
    /// for live event streams; other processes' changes are found by polling.
    changes: tokio::sync::broadcast::Sender<RequestId>,
}

/// Runs `$e` with `$b` bound to the backend.
macro_rules! on_backend {
    ($db:expr, $b:ident => $e:expr) => {
        match $db {
            Db::Sqlite($b) => $e,
            Db::Postgres($b) => $e,
        }
    };
}

/// Runs `$e` with `$b` bound to the backend, on a task of its own (see the module's doc).
macro_rules! detached {
    ($self:ident, $b:ident => $e:expr) => {{
        let db = $self.db.clone();
        tokio::spawn(async move { on_backend!(&db, $b => $e) })
            .await
            .map_err(|e| StoreError::Other(anyhow::anyhow!("store task failed: {e}")))?
    }};
}

fn lease_until(now: DateTime<Utc>, lease: Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(60))
}

/// `span` before `now`, or the beginning of time for a span longer than that.
fn ago(now: DateTime<Utc>, span: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(span)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

impl Core {
    /// Opens the database named by the URL's scheme (and creates a SQLite file and its folder).
    pub async fn connect(url: &str) -> StoreResult<Self> {
        Self::open(url, true).await
    }

    /// Opens a database that must exist already (a SQLite file is never created): for commands
    /// that read the service's state, where a new empty database would only mislead.
    pub async fn open_existing(url: &str) -> StoreResult<Self> {
        Self::open(url, false).await
    }

    async fn open(url: &str, create: bool) -> StoreResult<Self> {
        Ok(Self {
            db: Db::connect(url, create).await?,
            wakeups: Wakeups::default(),
            changes: tokio::sync::broadcast::channel(1024).0,
        })
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        self.db.name()
    }

    pub async fn migrate(&self) -> StoreResult<()> {
        self.db.migrate().await
    }

    pub async fn ping(&self) -> StoreResult<()> {
        self.db.ping().await
    }

    /// The signals that wake this process's loops: new image jobs (after an upload here, or
    /// in another process on the same database) and webhook deliveries due.
    pub fn wakeups(&self) -> &Wakeups {
        &self.wakeups
    }

    /// The IDs of requests as they change in this process. A receiver that falls behind is
    /// told so (`Lagged`): then anything may have changed.
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<RequestId> {
        self.changes.subscribe()
    }

    fn changed(&self, id: RequestId) {
        // No receiver is no error: nobody is watching.
        let _ = self.changes.send(id);
    }

    /// Relays other processes' wake-ups to [`Core::wakeups`] until `shutdown`.
    pub async fn listen(&self, shutdown: CancellationToken) {
        self.db.listen(self.wakeups.clone(), shutdown).await
    }

    // --- Requests ---

    /// Stores an upload in one transaction (or finds the request its idempotency key made),
    /// and wakes the workers.
    pub async fn create_request(&self, new: NewRequest) -> StoreResult<CreateOutcome> {
        let outcome = detached!(self, b => requests::create(b, &new, Utc::now()).await)?;
        if matches!(outcome, CreateOutcome::Created(_)) {
            self.wakeups.jobs.notify();
        }
        Ok(outcome)
    }

    /// Everything the status body shows, in one snapshot, if the request exists and belongs
    /// to `owner`.
    pub async fn request_detail(
        &self,
        id: RequestId,
        owner: &Owner,
    ) -> StoreResult<Option<RequestDetail>> {
        let owner = owner.clone();
        detached!(self, b => requests::detail(b, id, &owner).await)
    }

    /// The CSV uploaded for a request, if the request exists and belongs to `owner`
    /// (`Some(None)`: a request older than the kept CSV).
    pub async fn request_csv(
        &self,
        id: RequestId,
        owner: &Owner,
    ) -> StoreResult<Option<Option<String>>> {
        on_backend!(&self.db, b => b.request_csv(id, owner).await)
    }

    /// The version of a request and its number of images (see [`RequestHead`]), if it exists
    /// and belongs to `owner`, in one query.
    pub async fn request_head(
        &self,
        id: RequestId,
        owner: &Owner,
    ) -> StoreResult<Option<RequestHead>> {
        on_backend!(&self.db, b => b.request_head(id, owner).await)
    }

    /// Opens a read-only snapshot for reading a large request a page at a time.
    pub async fn read_snapshot(&self) -> StoreResult<ReadSnapshot> {
        ReadSnapshot::begin(&self.db).await
    }

    /// How many requests are stored (all owners).
    pub async fn count_requests(&self) -> StoreResult<i64> {
        on_backend!(&self.db, b => b.count_requests().await)
    }

    // --- Requests: list, cancel, retry (issue 18) ---

    /// The request's row (counts, savings, status), if it exists and belongs to `owner`.
    pub async fn request_row(
        &self,
        id: RequestId,
        owner: &Owner,
    ) -> StoreResult<Option<RequestRow>> {
        let owner = owner.clone();
        detached!(self, b => requests::row(b, id, &owner).await)
    }

    /// Up to `limit` of `owner`'s requests (only those in `status`, if given), newest first,
    /// after `after` (from the newest without).
    pub async fn list_requests(
        &self,
        owner: &Owner,
        status: Option<Status>,
        after: Option<ListAfter>,
        limit: usize,
    ) -> StoreResult<Vec<RequestRow>> {
        on_backend!(&self.db, b => b.list_requests(owner, status, after, limit as i64).await)
    }

    /// Cancels a pending or processing request (see `lifecycle::cancel`). `None` if it does
    /// not exist or is not `owner`'s.
    pub async fn cancel_request(
        &self,
        id: RequestId,
        owner: &Owner,
    ) -> StoreResult<Option<CancelOutcome>> {
        let owner = owner.clone();
        let Some((outcome, queued)) =
            detached!(self, b => lifecycle::cancel(b, id, &owner, Utc::now()).await)?
        else {
            return Ok(None);
        };
        if queued {
            self.wakeups.webhooks.notify();
        }
        self.changed(id);
        Ok(Some(outcome))
    }

    /// Puts a request's failed images (of these kinds, if given) back in the queue, and a
    /// cancelled request's never-started ones (see `lifecycle::retry`). `None` if it does not
    /// exist or is not `owner`'s.
    pub async fn retry_request(
        &self,
        id: RequestId,
        owner: &Owner,
        codes: Option<Vec<crate::failure::ErrorCode>>,
    ) -> StoreResult<Option<RetryOutcome>> {
        let owner = owner.clone();
        let outcome = detached!(self, b => {
            lifecycle::retry(b, id, &owner, codes.as_deref(), Utc::now()).await
        })?;
        if matches!(outcome, Some(RetryOutcome::Requeued { .. })) {
            self.wakeups.jobs.notify();
            self.changed(id);
        }
        Ok(outcome)
    }

    // --- The image queue ---

    /// Leases up to `limit` runnable image jobs to `worker` for `lease`, and marks their
    /// products and requests as started.
    pub async fn claim_images(
        &self,
        worker: &str,
        limit: usize,
        lease: Duration,
    ) -> StoreResult<Vec<ImageJob>> {
        let worker = worker.to_string();
        let jobs = detached!(self, b => images::claim(b, &worker, limit, lease, Utc::now()).await)?;
        let mut started: Vec<RequestId> = jobs.iter().map(|j| j.request_id).collect();
        started.dedup();
        started.into_iter().for_each(|id| self.changed(id));
        Ok(jobs)
    }

    /// Extends the lease of every job `worker` holds.
    pub async fn heartbeat(&self, worker: &str, lease: Duration) -> StoreResult<u64> {
        let until = lease_until(Utc::now(), lease);
        on_backend!(&self.db, b => b.renew_images(worker, until).await)
    }

    /// Hands back every image job and webhook delivery `worker` holds, as if never claimed
    /// (graceful shutdown). The number of image jobs.
    pub async fn release(&self, worker: &str) -> StoreResult<u64> {
        on_backend!(&self.db, b => {
            let n = b.release_images(worker, Utc::now()).await?;
            b.release_deliveries(worker).await?;
            Ok(n)
        })
    }

    /// Makes image jobs whose lease ran out (their process died) claimable again.
    pub async fn reclaim_expired(&self) -> StoreResult<u64> {
        on_backend!(&self.db, b => b.reclaim_images(Utc::now()).await)
    }

    /// Records the outcome of a job held by `worker`, and rolls it up to its product and
    /// request, in one transaction. Recording the same job twice changes nothing. Wakes the
    /// webhook deliverer when this finished a request that has a webhook.
    pub async fn settle_image(
        &self,
        job: &ImageJob,
        worker: &str,
        outcome: &JobOutcome,
    ) -> StoreResult<Settled> {
        let request_id = job.request_id;
        let (job, worker, outcome) = (job.clone(), worker.to_string(), outcome.clone());
        let (settled, delivery_queued) =
            detached!(self, b => images::settle(b, &job, &worker, &outcome, Utc::now()).await)?;
        if delivery_queued {
            self.wakeups.webhooks.notify();
        }
        if settled.recorded {
            self.changed(request_id);
        }
        Ok(settled)
    }

    /// Image jobs waiting and running, across all processes: (pending, processing).
    pub async fn queue_depth(&self) -> StoreResult<(i64, i64)> {
        on_backend!(&self.db, b => b.queue_depth().await)
    }

    /// Earliest time a pending job becomes runnable, to sleep exactly until then.
    pub async fn next_runnable_at(&self) -> StoreResult<Option<DateTime<Utc>>> {
        on_backend!(&self.db, b => b.next_runnable_at().await)
    }

    // --- Webhook deliveries ---

    /// Leases due webhook deliveries to `worker`.
    pub async fn claim_deliveries(
        &self,
        worker: &str,
        limit: usize,
        lease: Duration,
    ) -> StoreResult<Vec<DeliveryJob>> {
        let now = Utc::now();
        on_backend!(&self.db, b => b.claim_deliveries(worker, limit as i64, lease_until(now, lease), now).await)
    }

    /// Keeps the body of a delivery, so retries send the same bytes.
    pub async fn set_delivery_payload(&self, id: uuid::Uuid, payload: &str) -> StoreResult<()> {
        on_backend!(&self.db, b => b.set_delivery_payload(id, payload).await)
    }

    /// Records one attempt and what follows it. False if the delivery was no longer ours.
    pub async fn record_attempt(
        &self,
        job: &DeliveryJob,
        worker: &str,
        attempt: &AttemptRecord,
        next: AttemptNext,
    ) -> StoreResult<bool> {
        let (job, worker, attempt) = (job.clone(), worker.to_string(), attempt.clone());
        detached!(self, b => deliveries::record_attempt(b, &job, &worker, &attempt, next).await)
    }

    /// Queues a failed delivery again, with a fresh schedule. `None` if the request does not
    /// exist or is not `owner`'s.
    pub async fn retry_webhook(
        &self,
        id: RequestId,
        owner: &Owner,
    ) -> StoreResult<Option<WebhookRetry>> {
        let owner = owner.clone();
        let retry = detached!(self, b => deliveries::retry(b, id, &owner, Utc::now()).await)?;
        if retry == Some(WebhookRetry::Queued) {
            self.wakeups.webhooks.notify();
        }
        Ok(retry)
    }

    /// The recorded attempts of a request's delivery: (status code, error), oldest first.
    pub async fn webhook_attempts(
        &self,
        id: RequestId,
    ) -> StoreResult<Vec<(Option<i64>, Option<String>)>> {
        on_backend!(&self.db, b => b.webhook_attempts(id).await)
    }

    // --- Retention ---

    /// Takes up to `limit` finished requests that last changed more than `retention` ago
    /// (and any whose deletion a dead janitor left half-done) for this caller to delete, for
    /// `lease`. From now on they answer 410 (see [`Core::deleted_at`]). Delete their objects,
    /// then call [`Core::delete_request_rows`].
    pub async fn claim_deletions(
        &self,
        retention: Duration,
        lease: Duration,
        limit: usize,
    ) -> StoreResult<Vec<RequestId>> {
        let now = Utc::now();
        let before = ago(now, retention);
        let (until, limit) = (lease_until(now, lease), limit as i64);
        detached!(self, b => retention::claim(b, before, until, now, limit).await)
    }

    /// Deletes the rows of a request taken by [`Core::claim_deletions`], once its objects are
    /// gone. False if they were gone already.
    pub async fn delete_request_rows(&self, id: RequestId) -> StoreResult<bool> {
        detached!(self, b => retention::delete_rows(b, id).await)
    }

    /// When `owner`'s request `id` was deleted by retention, while its tombstone is kept.
    pub async fn deleted_at(
        &self,
        id: RequestId,
        owner: &Owner,
    ) -> StoreResult<Option<DateTime<Utc>>> {
        on_backend!(&self.db, b => b.tombstone(id, owner).await)
    }

    /// Drops the tombstones of requests deleted more than `keep` ago: after that they are
    /// unknown (404) like any other ID. How many.
    pub async fn drop_tombstones(&self, keep: Duration) -> StoreResult<u64> {
        let before = ago(Utc::now(), keep);
        on_backend!(&self.db, b => b.drop_tombstones(before).await)
    }

    // --- Settings ---

    /// The stored value of a setting, storing `default` first if there is none yet. Used for
    /// secrets generated once, the same for every process and every restart.
    pub async fn setting_or_insert(&self, key: &str, default: &str) -> StoreResult<String> {
        on_backend!(&self.db, b => {
            b.insert_setting_if_absent(key, default).await?;
            b.setting(key).await?.ok_or_else(|| {
                StoreError::Other(anyhow::anyhow!("setting {key} vanished after its insert"))
            })
        })
    }

    /// The stored value of a setting, if there is one.
    pub async fn setting(&self, key: &str) -> StoreResult<Option<String>> {
        on_backend!(&self.db, b => b.setting(key).await)
    }
}

/// Commits, or says why not.
async fn commit<B: Backend>(tx: crate::store::backend::Tx<B>) -> StoreResult<()> {
    tx.commit().await?;
    Ok(())
}
