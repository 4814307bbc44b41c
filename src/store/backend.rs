//! The backend interface: single-purpose operations, each one statement or one bulk load. A
//! backend runs queries; the core (`crate::core`) owns every state transition and decides
//! what to run in which transaction. So the rules are written once, and a backend keeps only
//! what differs: its SQL, its bulk loading, its locking and claim statements, its wake-up.
//!
//! Operations that take a connection run inside the caller's transaction (from [`begin`] or
//! [`begin_snapshot`]); the others run on the backend's own pool.
//!
//! [`begin`]: Backend::begin
//! [`begin_snapshot`]: Backend::begin_snapshot

use std::future::Future;

use chrono::{DateTime, Utc};

use super::types::*;
use super::StoreResult;
use crate::domain::{ImageOptions, Owner, RequestId, Status};
use crate::failure::{ErrorCode, Failure};

/// A connection of backend `B`, as a transaction derefs to.
pub(crate) type Conn<B> = <<B as Backend>::Db as sqlx::Database>::Connection;
/// A transaction of backend `B`.
pub(crate) type Tx<B> = sqlx::Transaction<'static, <B as Backend>::Db>;

pub(crate) trait Backend: Clone + Send + Sync + 'static {
    type Db: sqlx::Database;

    /// A transaction that may write.
    fn begin(&self) -> impl Future<Output = StoreResult<Tx<Self>>> + Send;

    /// A read-only transaction whose reads all see one snapshot.
    fn begin_snapshot(&self) -> impl Future<Output = StoreResult<Tx<Self>>> + Send;

    // --- Uploads ---

    /// Makes a second upload with the same owner and key wait for the first to commit. A
    /// backend that serialises all writes anyway need not do anything.
    fn lock_idempotency_key(
        &self,
        _: &mut Conn<Self>,
        _: &Owner,
        _: &str,
    ) -> impl Future<Output = StoreResult<()>> + Send {
        async { Ok(()) }
    }

    /// The request stored with this owner and key, and its upload digest.
    fn find_idempotent(
        &self,
        c: &mut Conn<Self>,
        owner: &Owner,
        key: &str,
    ) -> impl Future<Output = StoreResult<Option<(RequestId, String)>>> + Send;

    fn insert_request(
        &self,
        c: &mut Conn<Self>,
        new: &NewRequest,
        total_images: usize,
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// Every product and image row of a new request, in bulk. A duplicate image points at its
    /// original's row.
    fn load_rows(
        &self,
        c: &mut Conn<Self>,
        new: &NewRequest,
        images: &[NewImage<'_>],
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// Runs after an upload's transaction has ended (committed or not).
    fn after_upload(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Tells the other processes on this database, when the transaction commits, that new
    /// work is there. In-process wake-ups are the core's; a backend with no other processes
    /// does nothing.
    fn notify_others(&self, _: &mut Conn<Self>) -> impl Future<Output = StoreResult<()>> + Send {
        async { Ok(()) }
    }

    // --- Reads ---

    /// The request, if it exists and belongs to `owner`.
    fn request(
        &self,
        c: &mut Conn<Self>,
        id: RequestId,
        owner: &Owner,
    ) -> impl Future<Output = StoreResult<Option<RequestRow>>> + Send;

    fn request_head(
        &self,
        id: RequestId,
        owner: &Owner,
    ) -> impl Future<Output = StoreResult<Option<RequestHead>>> + Send;

    fn webhook(
        &self,
        c: &mut Conn<Self>,
        id: RequestId,
    ) -> impl Future<Output = StoreResult<Option<WebhookRow>>> + Send;

    /// Up to `limit` (ordinal, output URL) after ordinal `after`, in CSV order.
    fn output_urls(
        &self,
        c: &mut Conn<Self>,
        id: RequestId,
        after: i64,
        limit: i64,
    ) -> impl Future<Output = StoreResult<Vec<(i64, Option<String>)>>> + Send;

    /// Up to `limit` products after position `after`, in CSV order.
    fn products(
        &self,
        c: &mut Conn<Self>,
        id: RequestId,
        after: i64,
        limit: i64,
    ) -> impl Future<Output = StoreResult<Vec<ProductRow>>> + Send;

    /// Up to `limit` images with their ordinals after ordinal `after`, in CSV order.
    fn images(
        &self,
        c: &mut Conn<Self>,
        id: RequestId,
        after: i64,
        limit: i64,
    ) -> impl Future<Output = StoreResult<Vec<(i64, ImageRow)>>> + Send;

    fn count_requests(&self) -> impl Future<Output = StoreResult<i64>> + Send;

    /// Image jobs (pending originals, processing).
    fn queue_depth(&self) -> impl Future<Output = StoreResult<(i64, i64)>> + Send;

    /// Earliest `next_attempt_at` of a pending original.
    fn next_runnable_at(&self) -> impl Future<Output = StoreResult<Option<DateTime<Utc>>>> + Send;

    // Requests: list, cancel, retry (issue 18)

    /// Up to `limit` of `owner`'s requests (only those in `status`, if given), newest first
    /// (by `created_at`, then ID, both descending), after `after`.
    fn list_requests(
        &self,
        owner: &Owner,
        status: Option<Status>,
        after: Option<ListAfter>,
        limit: i64,
    ) -> impl Future<Output = StoreResult<Vec<RequestRow>>> + Send;

    /// The request, if it exists and belongs to `owner`, locked for the rest of the
    /// transaction (a row lock, or the one writer), so no settlement changes it meanwhile.
    fn lock_request(
        &self,
        c: &mut Conn<Self>,
        id: RequestId,
        owner: &Owner,
    ) -> impl Future<Output = StoreResult<Option<RequestRow>>> + Send;

    /// Marks `cancelled` the request's pending duplicates whose original is pending too (a
    /// duplicate of a running original waits for its result); how many.
    fn cancel_pending_duplicates(
        &self,
        c: &mut Conn<Self>,
        id: RequestId,
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<u64>> + Send;

    /// Marks `cancelled` the request's pending originals (waiting, or waiting for a retry);
    /// how many.
    fn cancel_pending_originals(
        &self,
        c: &mut Conn<Self>,
        id: RequestId,
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<u64>> + Send;

    /// Marks `cancelled` the request's products that have not finished.
    fn cancel_products(
        &self,
        c: &mut Conn<Self>,
        id: RequestId,
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// Sets the request `cancelled` and adds `images` to its cancelled images.
    fn cancel_request(
        &self,
        c: &mut Conn<Self>,
        id: RequestId,
        images: i64,
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// The stored options of these requests (None for a request made before options).
    fn options_of(
        &self,
        c: &mut Conn<Self>,
        ids: &[RequestId],
    ) -> impl Future<Output = StoreResult<Vec<(RequestId, Option<ImageOptions>)>>> + Send;

    /// The uploaded CSV of the request, if it exists, belongs to `owner` and was stored with
    /// it (`Some(None)`: a request from before the CSV was kept).
    fn request_csv(
        &self,
        id: RequestId,
        owner: &Owner,
    ) -> impl Future<Output = StoreResult<Option<Option<String>>>> + Send;

    /// Those of these requests that are `cancelled`.
    fn cancelled_among(
        &self,
        c: &mut Conn<Self>,
        ids: &[RequestId],
    ) -> impl Future<Output = StoreResult<Vec<RequestId>>> + Send;

    /// Marks `cancelled` these jobs that `worker` holds, never run, their attempt uncounted;
    /// how many.
    fn cancel_claimed(
        &self,
        c: &mut Conn<Self>,
        jobs: &[i64],
        worker: &str,
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<u64>> + Send;

    /// Marks `cancelled` the pending duplicates of these originals; how many.
    fn cancel_duplicates_of(
        &self,
        c: &mut Conn<Self>,
        originals: &[i64],
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<u64>> + Send;

    /// Puts the request's failed images (only those of these kinds, if given) back in the
    /// queue, due now, attempts reset and error cleared; their product ids, one per image.
    fn requeue_failed(
        &self,
        c: &mut Conn<Self>,
        id: RequestId,
        codes: Option<&[ErrorCode]>,
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<Vec<i64>>> + Send;

    /// Puts the request's cancelled images back in the queue, due now, attempts reset; their
    /// product ids, one per image.
    fn requeue_cancelled(
        &self,
        c: &mut Conn<Self>,
        id: RequestId,
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<Vec<i64>>> + Send;

    /// Marks these products `processing`, whatever their status.
    fn reopen_products(
        &self,
        c: &mut Conn<Self>,
        ids: &[i64],
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// Marks the request `processing` and takes `uncancelled` off its cancelled images.
    fn reopen_request(
        &self,
        c: &mut Conn<Self>,
        id: RequestId,
        uncancelled: i64,
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// Deletes the request's webhook delivery and its attempts, so that its next final status
    /// queues a new one.
    fn delete_delivery(
        &self,
        c: &mut Conn<Self>,
        id: RequestId,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    // --- The image queue ---

    /// Leases up to `limit` runnable originals to `worker` until `until`, counting an attempt
    /// each. Never hands one job to two callers.
    fn claim_images(
        &self,
        c: &mut Conn<Self>,
        worker: &str,
        limit: i64,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<Vec<ImageJob>>> + Send;

    /// Marks these products `processing` if they are still `pending`.
    fn start_products(
        &self,
        c: &mut Conn<Self>,
        ids: &[i64],
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// Marks these requests `processing` if they are still `pending`.
    fn start_requests(
        &self,
        c: &mut Conn<Self>,
        ids: &[RequestId],
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// Extends the lease of every image job `worker` holds.
    fn renew_images(
        &self,
        worker: &str,
        until: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<u64>> + Send;

    /// Hands back every image job `worker` holds, the interrupted attempt uncounted.
    fn release_images(
        &self,
        worker: &str,
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<u64>> + Send;

    /// Makes image jobs whose lease ran out before `now` pending again.
    fn reclaim_images(&self, now: DateTime<Utc>) -> impl Future<Output = StoreResult<u64>> + Send;

    /// Puts a job `worker` holds back in the queue, due at `at`. False if it was not held.
    fn requeue_image(
        &self,
        c: &mut Conn<Self>,
        job: &ImageJob,
        worker: &str,
        failure: &Failure,
        at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<bool>> + Send;

    /// Records the final result of a job `worker` holds. False if it was not held.
    fn finish_image(
        &self,
        c: &mut Conn<Self>,
        job: &ImageJob,
        worker: &str,
        result: ImageResult<'_>,
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<bool>> + Send;

    /// Copies the result to the pending duplicates of image `original`; their product ids.
    fn finish_duplicates(
        &self,
        c: &mut Conn<Self>,
        original: i64,
        result: ImageResult<'_>,
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<Vec<i64>>> + Send;

    /// Adds to a product's counts; the counts after.
    fn add_to_product(
        &self,
        c: &mut Conn<Self>,
        id: i64,
        delta: Delta,
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<Counts>> + Send;

    /// The output URLs of a product's images, by position.
    fn product_outputs(
        &self,
        c: &mut Conn<Self>,
        id: i64,
    ) -> impl Future<Output = StoreResult<Vec<Option<String>>>> + Send;

    fn finish_product(
        &self,
        c: &mut Conn<Self>,
        id: i64,
        status: Status,
        outputs_json: &str,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// Adds to a request's counts and savings; the counts after, its status and its webhook
    /// target. Serialises the settlements of one request (a row lock, or the one writer), so
    /// exactly one of them sees the final counts.
    fn add_to_request(
        &self,
        c: &mut Conn<Self>,
        id: RequestId,
        delta: Delta,
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<Tally>> + Send;

    fn finish_request(
        &self,
        c: &mut Conn<Self>,
        id: RequestId,
        status: Status,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    // --- Webhook deliveries ---

    /// Queues the request's delivery, due now, unless it has one.
    fn queue_delivery(
        &self,
        c: &mut Conn<Self>,
        request: RequestId,
        url: &str,
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// Leases up to `limit` due pending deliveries (or ones whose lease lapsed) to `worker`
    /// until `until`, counting an attempt each.
    fn claim_deliveries(
        &self,
        worker: &str,
        limit: i64,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<Vec<DeliveryJob>>> + Send;

    /// Keeps the body of a delivery unless it has one.
    fn set_delivery_payload(
        &self,
        id: uuid::Uuid,
        payload: &str,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// Hands back every pending delivery `worker` holds, the interrupted attempt uncounted.
    fn release_deliveries(&self, worker: &str) -> impl Future<Output = StoreResult<u64>> + Send;

    /// Applies an attempt's outcome to a pending delivery `worker` holds. False if not held.
    fn update_delivery(
        &self,
        c: &mut Conn<Self>,
        job: &DeliveryJob,
        worker: &str,
        attempt: &AttemptRecord,
        update: DeliveryUpdate,
    ) -> impl Future<Output = StoreResult<bool>> + Send;

    fn insert_attempt(
        &self,
        c: &mut Conn<Self>,
        delivery: uuid::Uuid,
        attempt: &AttemptRecord,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// The state of the request's delivery, locked for the rest of the transaction.
    fn delivery_state(
        &self,
        c: &mut Conn<Self>,
        request: RequestId,
    ) -> impl Future<Output = StoreResult<Option<DeliveryState>>> + Send;

    /// Makes a failed delivery pending again, due now, with its attempts reset.
    fn requeue_delivery(
        &self,
        c: &mut Conn<Self>,
        request: RequestId,
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// The recorded attempts of a request's delivery: (status code, error), oldest first.
    fn webhook_attempts(
        &self,
        id: RequestId,
    ) -> impl Future<Output = StoreResult<Vec<(Option<i64>, Option<String>)>>> + Send;

    // --- Settings ---

    fn insert_setting_if_absent(
        &self,
        key: &str,
        value: &str,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    fn setting(&self, key: &str) -> impl Future<Output = StoreResult<Option<String>>> + Send;

    // Retention and reports (issue 18)

    /// Takes up to `limit` requests to delete and leases them to the caller until `until`:
    /// those with a status in `finished` that last changed before `before`, and those taken
    /// before whose lease has run out (their janitor died). Marks them deleting (from then on
    /// they are not served), and never hands one request to two callers at once.
    fn claim_deletions(
        &self,
        c: &mut Conn<Self>,
        finished: &[Status],
        before: DateTime<Utc>,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
        limit: i64,
    ) -> impl Future<Output = StoreResult<Vec<RequestId>>> + Send;

    /// Records a tombstone, with its owner, for each of these requests that has none.
    fn insert_tombstones(
        &self,
        c: &mut Conn<Self>,
        ids: &[RequestId],
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// Deletes a request marked deleting, with its products, images and deliveries. The
    /// number of requests deleted (0 if it was gone already).
    fn delete_request(
        &self,
        c: &mut Conn<Self>,
        id: RequestId,
    ) -> impl Future<Output = StoreResult<u64>> + Send;

    /// When the request was deleted, if `owner`'s request of this id has a tombstone.
    fn tombstone(
        &self,
        id: RequestId,
        owner: &Owner,
    ) -> impl Future<Output = StoreResult<Option<DateTime<Utc>>>> + Send;

    /// Drops the tombstones of deletions before `before`; how many.
    fn drop_tombstones(
        &self,
        before: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<u64>> + Send;
}
