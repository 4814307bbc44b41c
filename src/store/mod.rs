//! The store: every durable fact of the service, behind one interface with two backends.
//! Each backend speaks its own SQL (and has its own migrations) so neither is held to the
//! other's lowest common denominator; the contract tests run the same cases on both.

mod postgres;
mod sqlite;

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::csv_input::ParsedProduct;
use crate::domain::{RequestId, Status};

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached right now; callers answer 503 and retry later.
    #[error("database unavailable: {0}")]
    Unavailable(anyhow::Error),
    #[error(transparent)]
    Other(anyhow::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.into()),
            sqlx::Error::Database(ref db) if is_unavailable_code(db.code().as_deref()) => {
                StoreError::Unavailable(e.into())
            }
            other => StoreError::Other(other.into()),
        }
    }
}

/// Postgres says "shutting down", "cannot connect now" and the like with these SQLSTATE classes;
/// SQLite's busy/locked (5, 6) mean another writer held on past the busy timeout.
fn is_unavailable_code(code: Option<&str>) -> bool {
    match code {
        Some(c) => {
            c.starts_with("08")
                || c.starts_with("57P")
                || c == "53300"
                // SQLite's extended codes carry the primary code in their low byte.
                || c.parse::<i32>().is_ok_and(|n| matches!(n & 0xff, 5 | 6))
        }
        None => false,
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Other(e.into())
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// An upload, validated, ready to be stored in one transaction.
#[derive(Debug, Clone)]
pub struct NewRequest {
    pub id: RequestId,
    /// Digest of the API key that created it ("" when the API is open).
    pub owner: String,
    pub idempotency_key: Option<String>,
    /// Digest of the upload's content, to tell a true retry from a reused key.
    pub upload_digest: String,
    pub webhook_url: Option<String>,
    pub products: Vec<ParsedProduct>,
}

impl NewRequest {
    pub fn total_images(&self) -> usize {
        self.products.iter().map(|p| p.input_urls.len()).sum()
    }

    /// For each image in CSV order: its ordinal, product position, position in the product,
    /// URL, and the ordinal of the first image of this request with the same URL, if any.
    pub fn images(&self) -> Vec<NewImage<'_>> {
        let mut first_seen = std::collections::HashMap::new();
        let mut out = Vec::with_capacity(self.total_images());
        for (product_pos, product) in self.products.iter().enumerate() {
            for (pos, url) in product.input_urls.iter().enumerate() {
                let ordinal = out.len() as i32;
                let first = *first_seen.entry(url.as_str()).or_insert(ordinal);
                out.push(NewImage {
                    ordinal,
                    product_position: product_pos as i32,
                    position: pos as i32,
                    url: url.as_str(),
                    duplicate_of_ordinal: (first != ordinal).then_some(first),
                });
            }
        }
        out
    }
}

#[derive(Debug, Clone, Copy)]
pub struct NewImage<'a> {
    pub ordinal: i32,
    pub product_position: i32,
    pub position: i32,
    pub url: &'a str,
    pub duplicate_of_ordinal: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    Created(RequestId),
    /// The idempotency key was seen before with the same upload: the first request's ID.
    Replayed(RequestId),
    /// The idempotency key was seen before with a different upload.
    KeyReused,
}

#[derive(Debug, Clone)]
pub struct RequestRow {
    pub id: RequestId,
    pub status: Status,
    pub webhook_url: Option<String>,
    pub total_products: i64,
    pub total_images: i64,
    pub completed_images: i64,
    pub failed_images: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct ProductRow {
    pub id: i64,
    pub position: i64,
    pub serial_number: i64,
    pub product_name: String,
    pub status: Status,
}

#[derive(Debug, Clone)]
pub struct ImageRow {
    pub product_id: i64,
    pub position: i64,
    pub input_url: String,
    pub status: Status,
    pub output_url: Option<String>,
    pub error: Option<String>,
    pub attempts: i64,
    pub codec: Option<String>,
}

/// The state of a request's webhook delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    Pending,
    Delivered,
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        Ok(match s {
            "pending" => DeliveryState::Pending,
            "delivered" => DeliveryState::Delivered,
            "failed" => DeliveryState::Failed,
            other => {
                return Err(StoreError::Other(anyhow::anyhow!(
                    "unknown delivery state {other:?}"
                )))
            }
        })
    }
}

#[derive(Debug, Clone)]
pub struct WebhookRow {
    pub id: uuid::Uuid,
    pub url: String,
    pub state: DeliveryState,
    pub attempts: i64,
    pub last_status_code: Option<i64>,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// A claimed webhook delivery.
#[derive(Debug, Clone)]
pub struct DeliveryJob {
    pub id: uuid::Uuid,
    pub request_id: RequestId,
    pub owner: String,
    pub url: String,
    /// Attempts so far, this one included.
    pub attempts: i64,
    /// The body, once built; every retry sends the same bytes.
    pub payload: Option<String>,
    pub event_at: DateTime<Utc>,
}

/// One delivery attempt, as recorded.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub at: DateTime<Utc>,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: i64,
}

/// What follows an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptNext {
    Delivered,
    Retry(DateTime<Utc>),
    Failed,
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

/// What changes whenever anything the status body shows of a *finished* request changes: the
/// request row (its final roll-up) and its webhook delivery. Cheap to read, so a finished
/// request's status can be served from a cache after one small query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestVersion {
    pub status: Status,
    pub updated_at: DateTime<Utc>,
    pub webhook: Option<(DateTime<Utc>, i64, String)>,
}

/// What the status endpoint reads first, in one small query: the version (for its cache of
/// finished bodies) and the number of images (to choose between building the body in memory
/// and streaming it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub version: RequestVersion,
    pub total_images: i64,
}

/// Everything the status endpoint shows, read in one consistent snapshot.
#[derive(Debug, Clone)]
pub struct RequestDetail {
    pub request: RequestRow,
    /// The delivery, once the request has finished and has a webhook target.
    pub webhook: Option<WebhookRow>,
    /// In CSV order.
    pub products: Vec<ProductRow>,
    /// In CSV order (product, then position).
    pub images: Vec<ImageRow>,
}

/// A claimed image job.
#[derive(Debug, Clone)]
pub struct ImageJob {
    pub id: i64,
    pub request_id: RequestId,
    pub product_id: i64,
    pub ordinal: i64,
    pub position: i64,
    pub input_url: String,
    /// Attempts so far, this one included.
    pub attempts: i64,
}

/// What became of one attempt at an image.
#[derive(Debug, Clone)]
pub enum JobOutcome {
    Completed(ImageOutput),
    /// Final: not retried.
    Failed {
        error: String,
    },
    /// Transient: tried again at `at`.
    Retry {
        error: String,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone)]
pub struct ImageOutput {
    pub key: String,
    pub url: String,
    pub input_format: String,
    /// `requantized` or `pixels`: which codec path made the output.
    pub codec: String,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub width: i64,
    pub height: i64,
}

/// What settling an image changed, for logs, metrics and wake-ups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settled {
    /// False when the job was no longer ours (lease lost, or recorded already): nothing changed.
    pub recorded: bool,
    /// Set when this settlement finished the whole request.
    pub request_finished: Option<Status>,
}

#[derive(Clone)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Store::Sqlite($s) => $e,
            Store::Postgres($s) => $e,
        }
    };
}

/// Runs a store operation that uses a transaction on a task of its own, so a caller that
/// goes away (a client hanging up drops its handler's future; shutdown aborts a job) cannot
/// cancel it half-way: sqlx 0.8 can hand such a connection back to the pool with the
/// transaction still open (sqlx issues #4385, #4393), breaking whoever gets it next.
macro_rules! detached {
    ($self:ident, $s:ident => $e:expr) => {{
        let this = $self.clone();
        tokio::spawn(async move {
            match &this {
                Store::Sqlite($s) => $e,
                Store::Postgres($s) => $e,
            }
        })
        .await
        .map_err(|e| StoreError::Other(anyhow::anyhow!("store task failed: {e}")))?
    }};
}

impl Store {
    /// Opens the database named by the URL's scheme (and creates a SQLite file and its folder).
    pub async fn connect(url: &str) -> StoreResult<Self> {
        if url.starts_with("sqlite:") {
            Ok(Store::Sqlite(SqliteStore::connect(url).await?))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Store::Postgres(PgStore::connect(url).await?))
        } else {
            Err(StoreError::Other(anyhow::anyhow!(
                "DATABASE_URL must start with sqlite: or postgres:, got {url:?}"
            )))
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    pub async fn migrate(&self) -> StoreResult<()> {
        dispatch!(self, s => s.migrate().await)
    }

    pub async fn ping(&self) -> StoreResult<()> {
        dispatch!(self, s => s.ping().await)
    }

    pub async fn create_request(&self, new: NewRequest) -> StoreResult<CreateOutcome> {
        detached!(self, s => s.create_request(&new, Utc::now()).await)
    }

    pub async fn request_detail(
        &self,
        id: RequestId,
        owner: &str,
    ) -> StoreResult<Option<RequestDetail>> {
        let owner = owner.to_string();
        detached!(self, s => s.request_detail(id, &owner).await)
    }

    /// The version of a request and its number of images (see [`RequestHead`]), if it exists
    /// and belongs to `owner`, in one query.
    pub async fn request_head(
        &self,
        id: RequestId,
        owner: &str,
    ) -> StoreResult<Option<RequestHead>> {
        dispatch!(self, s => s.request_head(id, owner).await)
    }

    /// Opens a read-only snapshot for reading a large request a page at a time (see
    /// [`ReadSnapshot`]).
    pub async fn read_snapshot(&self) -> StoreResult<ReadSnapshot> {
        Ok(ReadSnapshot(match self {
            Store::Sqlite(s) => SnapshotTx::Sqlite(s.begin_snapshot().await?),
            Store::Postgres(s) => SnapshotTx::Postgres(s.begin_snapshot().await?),
        }))
    }

    /// Leases up to `limit` runnable image jobs to `worker` for `lease`.
    pub async fn claim_images(
        &self,
        worker: &str,
        limit: usize,
        lease: Duration,
    ) -> StoreResult<Vec<ImageJob>> {
        let worker = worker.to_string();
        detached!(self, s => s.claim_images(&worker, limit as i64, lease, Utc::now()).await)
    }

    /// Extends the lease of every job `worker` holds.
    pub async fn heartbeat(&self, worker: &str, lease: Duration) -> StoreResult<u64> {
        dispatch!(self, s => s.heartbeat(worker, lease, Utc::now()).await)
    }

    /// Hands back every job `worker` holds, as if never claimed (graceful shutdown).
    pub async fn release(&self, worker: &str) -> StoreResult<u64> {
        dispatch!(self, s => s.release(worker, Utc::now()).await)
    }

    /// Makes jobs whose lease ran out (their process died) claimable again.
    pub async fn reclaim_expired(&self) -> StoreResult<u64> {
        dispatch!(self, s => s.reclaim_expired(Utc::now()).await)
    }

    /// Records the outcome of a job held by `worker`, and rolls it up to its product and
    /// request, in one transaction. Recording the same job twice changes nothing.
    pub async fn settle_image(
        &self,
        job: &ImageJob,
        worker: &str,
        outcome: &JobOutcome,
    ) -> StoreResult<Settled> {
        let (job, worker, outcome) = (job.clone(), worker.to_string(), outcome.clone());
        detached!(self, s => s.settle_image(&job, &worker, &outcome, Utc::now()).await)
    }

    /// Image jobs waiting and running, across all processes: (pending, processing).
    pub async fn queue_depth(&self) -> StoreResult<(i64, i64)> {
        dispatch!(self, s => s.queue_depth().await)
    }

    /// How many requests are stored (all owners).
    pub async fn count_requests(&self) -> StoreResult<i64> {
        dispatch!(self, s => s.count_requests().await)
    }

    /// Leases due webhook deliveries to `worker`.
    pub async fn claim_deliveries(
        &self,
        worker: &str,
        limit: usize,
        lease: Duration,
    ) -> StoreResult<Vec<DeliveryJob>> {
        let worker = worker.to_string();
        detached!(self, s => s.claim_deliveries(&worker, limit as i64, lease, Utc::now()).await)
    }

    /// Keeps the body of a delivery, so retries send the same bytes.
    pub async fn set_delivery_payload(&self, id: uuid::Uuid, payload: &str) -> StoreResult<()> {
        dispatch!(self, s => s.set_delivery_payload(id, payload).await)
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
        detached!(self, s => s.record_attempt(&job, &worker, &attempt, next).await)
    }

    /// Queues a failed delivery again, with a fresh schedule.
    pub async fn retry_webhook(
        &self,
        id: RequestId,
        owner: &str,
    ) -> StoreResult<Option<WebhookRetry>> {
        let owner = owner.to_string();
        detached!(self, s => s.retry_webhook(id, &owner, Utc::now()).await)
    }

    /// The recorded attempts of a request's delivery: (status code, error), oldest first.
    pub async fn webhook_attempts(
        &self,
        id: RequestId,
    ) -> StoreResult<Vec<(Option<i64>, Option<String>)>> {
        dispatch!(self, s => s.webhook_attempts(id).await)
    }

    /// The stored value of a setting, storing `default` first if there is none yet. Used for
    /// the webhook secret: generated once, the same for every process and every restart.
    pub async fn setting_or_insert(&self, key: &str, default: &str) -> StoreResult<String> {
        dispatch!(self, s => s.setting_or_insert(key, default).await)
    }

    /// Earliest time a pending job becomes runnable, to sleep exactly until then.
    pub async fn next_runnable_at(&self) -> StoreResult<Option<DateTime<Utc>>> {
        dispatch!(self, s => s.next_runnable_at().await)
    }
}

/// A read-only transaction whose reads all see one snapshot of the database (Postgres:
/// `REPEATABLE READ READ ONLY`; SQLite in WAL mode: a deferred read transaction, whose snapshot
/// is taken by its first `SELECT`), for reading a large request a page at a time while its
/// images keep settling: the counters, the output URLs and the products all agree.
///
/// Use it only on a task of its own (`tokio::spawn`) that is never cancelled, and end it with
/// [`ReadSnapshot::close`]: a future dropped in the middle of a query can hand the connection
/// back to the pool with the transaction still open (sqlx 0.8; see `detached!`). Keep it short:
/// while it is open it holds a pooled connection, and an old snapshot holds back Postgres's
/// VACUUM and SQLite's WAL checkpoints.
pub struct ReadSnapshot(SnapshotTx);

enum SnapshotTx {
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

impl ReadSnapshot {
    /// The request, if it exists and belongs to `owner`.
    pub async fn request(&mut self, id: RequestId, owner: &str) -> StoreResult<Option<RequestRow>> {
        match &mut self.0 {
            SnapshotTx::Sqlite(tx) => SqliteStore::snapshot_request(tx, id, owner).await,
            SnapshotTx::Postgres(tx) => PgStore::snapshot_request(tx, id, owner).await,
        }
    }

    /// The request's webhook delivery, once it has one.
    pub async fn webhook(&mut self, id: RequestId) -> StoreResult<Option<WebhookRow>> {
        match &mut self.0 {
            SnapshotTx::Sqlite(tx) => SqliteStore::snapshot_webhook(tx, id).await,
            SnapshotTx::Postgres(tx) => PgStore::snapshot_webhook(tx, id).await,
        }
    }

    /// Up to `limit` of the request's (ordinal, output URL), in CSV order, after ordinal
    /// `after` (`-1`: from the first).
    pub async fn output_urls(
        &mut self,
        id: RequestId,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<(i64, Option<String>)>> {
        match &mut self.0 {
            SnapshotTx::Sqlite(tx) => SqliteStore::snapshot_output_urls(tx, id, after, limit).await,
            SnapshotTx::Postgres(tx) => PgStore::snapshot_output_urls(tx, id, after, limit).await,
        }
    }

    /// Up to `limit` of the request's products, in CSV order, after position `after` (`-1`:
    /// from the first).
    pub async fn products(
        &mut self,
        id: RequestId,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<ProductRow>> {
        match &mut self.0 {
            SnapshotTx::Sqlite(tx) => SqliteStore::snapshot_products(tx, id, after, limit).await,
            SnapshotTx::Postgres(tx) => PgStore::snapshot_products(tx, id, after, limit).await,
        }
    }

    /// Up to `limit` of the request's images with their ordinals, in CSV order, after ordinal
    /// `after` (`-1`: from the first).
    pub async fn images(
        &mut self,
        id: RequestId,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<(i64, ImageRow)>> {
        match &mut self.0 {
            SnapshotTx::Sqlite(tx) => SqliteStore::snapshot_images(tx, id, after, limit).await,
            SnapshotTx::Postgres(tx) => PgStore::snapshot_images(tx, id, after, limit).await,
        }
    }

    /// Ends the transaction (a rollback: it changed nothing) and hands the connection back.
    pub async fn close(self) -> StoreResult<()> {
        match self.0 {
            SnapshotTx::Sqlite(tx) => tx.rollback().await?,
            SnapshotTx::Postgres(tx) => tx.rollback().await?,
        }
        Ok(())
    }
}

fn lease_until(now: DateTime<Utc>, lease: Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(60))
}

fn parse_status(s: &str) -> Result<Status, StoreError> {
    Status::parse(s)
        .ok_or_else(|| StoreError::Other(anyhow::anyhow!("unknown status {s:?} in database")))
}

/// Per-product change in counts from one settlement.
#[derive(Debug, Default, Clone, Copy)]
struct Delta {
    completed: i64,
    failed: i64,
}

fn settled_status(outcome: &JobOutcome) -> Option<(Status, Delta)> {
    match outcome {
        JobOutcome::Completed(_) => Some((
            Status::Completed,
            Delta {
                completed: 1,
                failed: 0,
            },
        )),
        JobOutcome::Failed { .. } => Some((
            Status::Failed,
            Delta {
                completed: 0,
                failed: 1,
            },
        )),
        JobOutcome::Retry { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ImageUrl, ProductName, SerialNumber};

    #[test]
    fn images_in_csv_order_with_duplicates_pointing_at_the_first() {
        let p = |n: i64, urls: &[&str]| ParsedProduct {
            line: n as u64 + 1,
            serial_number: SerialNumber(n),
            product_name: ProductName(format!("P{n}")),
            input_urls: urls.iter().map(|u| ImageUrl(u.to_string())).collect(),
        };
        let req = NewRequest {
            id: RequestId::new(),
            owner: String::new(),
            idempotency_key: None,
            upload_digest: String::new(),
            webhook_url: None,
            products: vec![
                p(1, &["http://a/1", "http://a/2"]),
                p(2, &["http://a/3", "http://a/1"]),
            ],
        };
        let imgs = req.images();
        assert_eq!(imgs.len(), 4);
        assert_eq!(imgs[3].ordinal, 3);
        assert_eq!(imgs[3].product_position, 1);
        assert_eq!(imgs[3].position, 1);
        assert_eq!(imgs[3].duplicate_of_ordinal, Some(0));
        assert!(imgs[..3].iter().all(|i| i.duplicate_of_ordinal.is_none()));
    }
}
