//! Postgres backend: the production database. An upload's rows go in with binary `COPY`, one
//! stream per table however many rows; claims use `FOR UPDATE SKIP LOCKED` so processes never
//! wait on each other's jobs; `LISTEN`/`NOTIFY` wakes the other processes on the database.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions, PgRow};
use sqlx::{Column, PgPool, Postgres, Row, TypeInfo};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::backend::{Backend, Tx};
use super::pg_copy::BinaryCopy;
use super::rows::{self, Columns, REQUEST_COLUMNS};
use super::types::*;
use super::{StoreError, StoreResult, Wakeup, Wakeups};
use crate::domain::{ImageOptions, Owner, RequestId, Status};
use crate::failure::{ErrorCode, Failure};

/// The channel every process LISTENs on; a NOTIFY on it means new work may be there.
const NOTIFY_CHANNEL: &str = "imgbatch_jobs";

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl Columns for PgRow {
    /// Counts and positions are `integer`, ids and sizes `bigint`.
    fn opt_int(&self, col: &str) -> StoreResult<Option<i64>> {
        Ok(match self.try_column(col)?.type_info().name() {
            "INT4" => self.try_get::<Option<i32>, _>(col)?.map(i64::from),
            "INT2" => self.try_get::<Option<i16>, _>(col)?.map(i64::from),
            _ => self.try_get(col)?,
        })
    }

    fn opt_text(&self, col: &str) -> StoreResult<Option<String>> {
        Ok(self.try_get(col)?)
    }

    fn opt_time(&self, col: &str) -> StoreResult<Option<DateTime<Utc>>> {
        Ok(self.try_get(col)?)
    }

    fn uuid(&self, col: &str) -> StoreResult<Uuid> {
        Ok(self.try_get(col)?)
    }
}

impl PgStore {
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let opts: PgConnectOptions = url
            .parse()
            .map_err(|e| StoreError::Other(anyhow::anyhow!("invalid postgres URL: {e}")))?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(opts)
            .await?;
        Ok(Self { pool })
    }

    pub async fn migrate(&self) -> StoreResult<()> {
        sqlx::migrate!("migrations/postgres")
            .run(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Wakes this process's loops whenever another process stores new work, reconnecting
    /// after a lost connection, until `shutdown`. Polling covers the gaps.
    pub async fn listen(&self, wakeups: Wakeups, shutdown: CancellationToken) {
        let retry = || async {
            tokio::select! {
                _ = shutdown.cancelled() => false,
                _ = tokio::time::sleep(Duration::from_secs(5)) => true,
            }
        };
        loop {
            let mut listener = match sqlx::postgres::PgListener::connect_with(&self.pool).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot LISTEN; relying on polling");
                    if retry().await {
                        continue;
                    } else {
                        return;
                    }
                }
            };
            if let Err(e) = listener.listen(NOTIFY_CHANNEL).await {
                tracing::warn!(error = %e, "cannot LISTEN; relying on polling");
                if retry().await {
                    continue;
                } else {
                    return;
                }
            }
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    n = listener.recv() => match n {
                        Ok(_) => [&wakeups.jobs, &wakeups.webhooks].into_iter().for_each(Wakeup::notify),
                        Err(e) => {
                            tracing::warn!(error = %e, "LISTEN connection lost; reconnecting");
                            break;
                        }
                    }
                }
            }
        }
    }
}

/// The request, if it exists and belongs to `owner`; `lock` is `""` or `" FOR UPDATE"`.
async fn request_row(
    c: &mut PgConnection,
    id: RequestId,
    owner: &Owner,
    lock: &str,
) -> StoreResult<Option<RequestRow>> {
    sqlx::query(&format!(
        "SELECT {REQUEST_COLUMNS} FROM requests \
         WHERE id = $1 AND owner = $2 AND deleting_at IS NULL{lock}"
    ))
    .bind(id.as_uuid())
    .bind(owner.as_str())
    .fetch_optional(c)
    .await?
    .map(|r| rows::request(&r))
    .transpose()
}

/// A keyset bound for the `integer` columns `ordinal` and `position`, bound as `int4` so the
/// comparison is a plain range on their unique indexes.
fn key(after: i64) -> i32 {
    after.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
}

/// The SET list of an image put back in the queue by a retry ($2: now).
const REQUEUED_COLUMNS: &str =
    "status = 'pending', attempts = 0, error = NULL, error_code = NULL, \
     next_attempt_at = $2, locked_by = NULL, locked_until = NULL, updated_at = $2";

/// The SET list shared by an image's final result and its duplicates' ($1 to $15).
const RESULT_COLUMNS: &str = "status = $1, output_key = $2, output_url = $3, input_format = $4, \
     codec = $5, bytes_in = $6, bytes_out = $7, width = $8, height = $9, output_format = $10, \
     color_profile = $11, note = $12, error = $13, error_code = $14, updated_at = $15";

fn bind_result<'q>(
    q: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    r: ImageResult<'q>,
    now: DateTime<Utc>,
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    let out = r.output;
    q.bind(r.status.as_str())
        .bind(out.map(|o| o.key.as_str()))
        .bind(out.map(|o| o.url.as_str()))
        .bind(out.map(|o| o.input_format.as_str()))
        .bind(out.map(|o| o.codec.as_str()))
        .bind(out.map(|o| o.bytes_in))
        .bind(out.map(|o| o.bytes_out))
        .bind(out.map(|o| o.width as i32))
        .bind(out.map(|o| o.height as i32))
        .bind(out.map(|o| o.output_format.as_str()))
        .bind(out.and_then(|o| o.color_profile.as_deref()))
        .bind(out.and_then(|o| o.note.as_deref()))
        .bind(r.failure.map(|f| f.message.as_str()))
        .bind(r.failure.map(|f| f.code.as_str()))
        .bind(now)
}

impl Backend for PgStore {
    type Db = Postgres;

    async fn begin(&self) -> StoreResult<Tx<Self>> {
        Ok(self.pool.begin().await?)
    }

    async fn begin_snapshot(&self) -> StoreResult<Tx<Self>> {
        Ok(self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?)
    }

    /// Two concurrent uploads with one key: the second waits here for the first to commit.
    async fn lock_idempotency_key(
        &self,
        c: &mut PgConnection,
        owner: &Owner,
        key: &str,
    ) -> StoreResult<()> {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 0))")
            .bind(owner.as_str())
            .bind(key)
            .execute(c)
            .await?;
        Ok(())
    }

    async fn find_idempotent(
        &self,
        c: &mut PgConnection,
        owner: &Owner,
        key: &str,
    ) -> StoreResult<Option<(RequestId, String)>> {
        sqlx::query(
            "SELECT id, upload_digest FROM requests WHERE owner = $1 AND idempotency_key = $2",
        )
        .bind(owner.as_str())
        .bind(key)
        .fetch_optional(c)
        .await?
        .map(|r| rows::idempotent(&r))
        .transpose()
    }

    async fn insert_request(
        &self,
        c: &mut PgConnection,
        new: &NewRequest,
        total_images: usize,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO requests (id, owner, idempotency_key, upload_digest, webhook_url, \
             total_products, total_images, created_at, updated_at, options, csv) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9, $10)",
        )
        .bind(new.id.as_uuid())
        .bind(new.owner.as_str())
        .bind(&new.idempotency_key)
        .bind(&new.upload_digest)
        .bind(&new.webhook_url)
        .bind(new.products.len() as i32)
        .bind(total_images as i32)
        .bind(now)
        .bind(new.options.to_json())
        .bind(&new.csv)
        .execute(c)
        .await?;
        Ok(())
    }

    async fn load_rows(
        &self,
        c: &mut PgConnection,
        new: &NewRequest,
        images: &[NewImage<'_>],
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        // The rows go in with COPY, much cheaper than INSERT for thousands of rows, but COPY
        // cannot return the ids it assigns, and images need their product's id and a duplicate
        // its original's. So the ids are drawn from the tables' own sequences first, all in one
        // round trip. They need not be consecutive: other uploads draw at the same time.
        let (product_ids, image_ids): (Vec<i64>, Vec<i64>) = sqlx::query_as(
            "SELECT ARRAY(SELECT nextval('products_id_seq') FROM generate_series(1, $1)), \
                    ARRAY(SELECT nextval('images_id_seq') FROM generate_series(1, $2))",
        )
        .bind(new.products.len() as i64)
        .bind(images.len() as i64)
        .fetch_one(&mut *c)
        .await?;
        if product_ids.len() != new.products.len() || image_ids.len() != images.len() {
            return Err(StoreError::Other(anyhow::anyhow!(
                "drew {} product and {} image ids for {} products and {} images",
                product_ids.len(),
                image_ids.len(),
                new.products.len(),
                images.len()
            )));
        }
        let id = new.id.as_uuid();

        let mut copy = BinaryCopy::begin(
            &mut *c,
            "COPY products (id, request_id, position, serial_number, product_name, \
             input_image_urls, total_images, created_at, updated_at) FROM STDIN (FORMAT binary)",
        )
        .await?;
        for (position, (p, &product_id)) in new.products.iter().zip(&product_ids).enumerate() {
            let urls: Vec<&str> = p.input_urls.iter().map(|u| u.as_str()).collect();
            copy.row(9);
            copy.int8(product_id);
            copy.uuid(id);
            copy.int4(position as i32);
            copy.int8(p.serial_number.get());
            copy.text(p.product_name.as_str());
            copy.text(&serde_json::to_string(&urls).unwrap_or_default());
            copy.int4(p.input_urls.len() as i32);
            copy.timestamptz(now);
            copy.timestamptz(now);
            copy.flush_if_full().await?;
        }
        copy.finish().await?;

        // In CSV order, each image with the id drawn for its ordinal.
        let mut copy = BinaryCopy::begin(
            &mut *c,
            "COPY images (id, request_id, product_id, ordinal, position, input_url, duplicate_of, \
             next_attempt_at, created_at, updated_at) FROM STDIN (FORMAT binary)",
        )
        .await?;
        for (image, &image_id) in images.iter().zip(&image_ids) {
            copy.row(10);
            copy.int8(image_id);
            copy.uuid(id);
            copy.int8(product_ids[image.product_position as usize]);
            copy.int4(image.ordinal);
            copy.int4(image.position);
            copy.text(image.url);
            match image.duplicate_of_ordinal {
                Some(first) => copy.int8(image_ids[first as usize]),
                None => copy.null(),
            }
            copy.timestamptz(now);
            copy.timestamptz(now);
            copy.timestamptz(now);
            copy.flush_if_full().await?;
        }
        copy.finish().await?;
        Ok(())
    }

    /// Delivered on commit: wakes the workers of every process on this database.
    async fn notify_others(&self, c: &mut PgConnection) -> StoreResult<()> {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(NOTIFY_CHANNEL)
            .execute(c)
            .await?;
        Ok(())
    }

    async fn request(
        &self,
        c: &mut PgConnection,
        id: RequestId,
        owner: &Owner,
    ) -> StoreResult<Option<RequestRow>> {
        request_row(c, id, owner, "").await
    }

    async fn request_head(&self, id: RequestId, owner: &Owner) -> StoreResult<Option<RequestHead>> {
        sqlx::query(
            "SELECT r.status, r.updated_at, r.total_images, d.updated_at AS d_updated, \
             d.attempts, d.state \
             FROM requests r LEFT JOIN webhook_deliveries d ON d.request_id = r.id \
             WHERE r.id = $1 AND r.owner = $2 AND r.deleting_at IS NULL",
        )
        .bind(id.as_uuid())
        .bind(owner.as_str())
        .fetch_optional(&self.pool)
        .await?
        .map(|r| rows::request_head(&r))
        .transpose()
    }

    async fn webhook(
        &self,
        c: &mut PgConnection,
        id: RequestId,
    ) -> StoreResult<Option<WebhookRow>> {
        sqlx::query(
            "SELECT id, url, state, attempts, last_status_code, last_error, next_attempt_at, \
             delivered_at FROM webhook_deliveries WHERE request_id = $1",
        )
        .bind(id.as_uuid())
        .fetch_optional(c)
        .await?
        .map(|r| rows::webhook(&r))
        .transpose()
    }

    // Keyset pages on `UNIQUE (request_id, ordinal)` and `UNIQUE (request_id, position)`, so
    // every page is one index range scan.
    async fn output_urls(
        &self,
        c: &mut PgConnection,
        id: RequestId,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<(i64, Option<String>)>> {
        sqlx::query(
            "SELECT ordinal, output_url FROM images WHERE request_id = $1 AND ordinal > $2 \
             ORDER BY ordinal LIMIT $3",
        )
        .bind(id.as_uuid())
        .bind(key(after))
        .bind(limit)
        .fetch_all(c)
        .await?
        .iter()
        .map(rows::output_url)
        .collect()
    }

    async fn products(
        &self,
        c: &mut PgConnection,
        id: RequestId,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<ProductRow>> {
        sqlx::query(
            "SELECT id, position, serial_number, product_name, status FROM products \
             WHERE request_id = $1 AND position > $2 ORDER BY position LIMIT $3",
        )
        .bind(id.as_uuid())
        .bind(key(after))
        .bind(limit)
        .fetch_all(c)
        .await?
        .iter()
        .map(rows::product)
        .collect()
    }

    async fn images(
        &self,
        c: &mut PgConnection,
        id: RequestId,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<(i64, ImageRow)>> {
        sqlx::query(
            "SELECT ordinal, product_id, position, input_url, status, output_url, error, \
             error_code, attempts, codec, bytes_in, bytes_out, width, height, output_format, \
             color_profile, note, output_key, input_format FROM images \
             WHERE request_id = $1 AND ordinal > $2 \
             ORDER BY ordinal LIMIT $3",
        )
        .bind(id.as_uuid())
        .bind(key(after))
        .bind(limit)
        .fetch_all(c)
        .await?
        .iter()
        .map(rows::image)
        .collect()
    }

    async fn count_requests(&self) -> StoreResult<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM requests")
            .fetch_one(&self.pool)
            .await?)
    }

    async fn queue_depth(&self) -> StoreResult<(i64, i64)> {
        Ok(sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM images WHERE status = 'pending' AND duplicate_of IS NULL), \
                    (SELECT COUNT(*) FROM images WHERE status = 'processing')",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    async fn next_runnable_at(&self) -> StoreResult<Option<DateTime<Utc>>> {
        Ok(sqlx::query_scalar(
            "SELECT MIN(next_attempt_at) FROM images WHERE status = 'pending' AND duplicate_of IS NULL",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    // Requests: list, cancel, retry (issue 18)

    async fn list_requests(
        &self,
        owner: &Owner,
        status: Option<Status>,
        after: Option<ListAfter>,
        limit: i64,
    ) -> StoreResult<Vec<RequestRow>> {
        // A row-value comparison, so the page is one range of `requests_owner_created`.
        let after = after.unwrap_or(ListAfter::START);
        sqlx::query(&format!(
            "SELECT {REQUEST_COLUMNS} FROM requests WHERE owner = $1 AND deleting_at IS NULL \
             AND (created_at, id) < ($2, $3) AND ($4::text IS NULL OR status = $4) \
             ORDER BY created_at DESC, id DESC LIMIT $5"
        ))
        .bind(owner.as_str())
        .bind(after.created_at)
        .bind(after.id.as_uuid())
        .bind(status.map(Status::as_str))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::request)
        .collect()
    }

    async fn lock_request(
        &self,
        c: &mut PgConnection,
        id: RequestId,
        owner: &Owner,
    ) -> StoreResult<Option<RequestRow>> {
        request_row(c, id, owner, " FOR UPDATE").await
    }

    async fn cancel_pending_duplicates(
        &self,
        c: &mut PgConnection,
        id: RequestId,
        now: DateTime<Utc>,
    ) -> StoreResult<u64> {
        let r = sqlx::query(
            "UPDATE images SET status = 'cancelled', updated_at = $2 \
             WHERE request_id = $1 AND status = 'pending' AND duplicate_of IN \
             (SELECT id FROM images WHERE request_id = $1 AND status = 'pending' \
              AND duplicate_of IS NULL)",
        )
        .bind(id.as_uuid())
        .bind(now)
        .execute(c)
        .await?;
        Ok(r.rows_affected())
    }

    async fn cancel_pending_originals(
        &self,
        c: &mut PgConnection,
        id: RequestId,
        now: DateTime<Utc>,
    ) -> StoreResult<u64> {
        let r = sqlx::query(
            "UPDATE images SET status = 'cancelled', updated_at = $2 \
             WHERE request_id = $1 AND status = 'pending' AND duplicate_of IS NULL",
        )
        .bind(id.as_uuid())
        .bind(now)
        .execute(c)
        .await?;
        Ok(r.rows_affected())
    }

    async fn cancel_products(
        &self,
        c: &mut PgConnection,
        id: RequestId,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE products SET status = 'cancelled', updated_at = $2 \
             WHERE request_id = $1 AND status IN ('pending', 'processing')",
        )
        .bind(id.as_uuid())
        .bind(now)
        .execute(c)
        .await?;
        Ok(())
    }

    async fn cancel_request(
        &self,
        c: &mut PgConnection,
        id: RequestId,
        images: i64,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE requests SET status = 'cancelled', cancelled_images = cancelled_images + $1, \
             updated_at = $2 WHERE id = $3",
        )
        .bind(images as i32)
        .bind(now)
        .bind(id.as_uuid())
        .execute(c)
        .await?;
        Ok(())
    }

    async fn options_of(
        &self,
        c: &mut PgConnection,
        ids: &[RequestId],
    ) -> StoreResult<Vec<(RequestId, Option<ImageOptions>)>> {
        let ids: Vec<Uuid> = ids.iter().map(RequestId::as_uuid).collect();
        sqlx::query("SELECT id, options FROM requests WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_all(c)
            .await?
            .iter()
            .map(|r| Ok((rows::request_id(r, "id")?, rows::options(r, "options")?)))
            .collect()
    }

    async fn request_csv(
        &self,
        id: RequestId,
        owner: &Owner,
    ) -> StoreResult<Option<Option<String>>> {
        let row = sqlx::query(
            "SELECT csv FROM requests WHERE id = $1 AND owner = $2 AND deleting_at IS NULL",
        )
        .bind(id.as_uuid())
        .bind(owner.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| r.opt_text("csv")).transpose()
    }

    async fn cancelled_among(
        &self,
        c: &mut PgConnection,
        ids: &[RequestId],
    ) -> StoreResult<Vec<RequestId>> {
        let ids: Vec<Uuid> = ids.iter().map(RequestId::as_uuid).collect();
        sqlx::query("SELECT id FROM requests WHERE status = 'cancelled' AND id = ANY($1)")
            .bind(&ids)
            .fetch_all(c)
            .await?
            .iter()
            .map(|r| rows::request_id(r, "id"))
            .collect()
    }

    async fn cancel_claimed(
        &self,
        c: &mut PgConnection,
        jobs: &[i64],
        worker: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<u64> {
        let r = sqlx::query(
            "UPDATE images SET status = 'cancelled', attempts = GREATEST(attempts - 1, 0), \
             locked_by = NULL, locked_until = NULL, updated_at = $3 \
             WHERE id = ANY($1) AND status = 'processing' AND locked_by = $2",
        )
        .bind(jobs)
        .bind(worker)
        .bind(now)
        .execute(c)
        .await?;
        Ok(r.rows_affected())
    }

    async fn cancel_duplicates_of(
        &self,
        c: &mut PgConnection,
        originals: &[i64],
        now: DateTime<Utc>,
    ) -> StoreResult<u64> {
        let r = sqlx::query(
            "UPDATE images SET status = 'cancelled', updated_at = $2 \
             WHERE duplicate_of = ANY($1) AND status = 'pending'",
        )
        .bind(originals)
        .bind(now)
        .execute(c)
        .await?;
        Ok(r.rows_affected())
    }

    async fn requeue_failed(
        &self,
        c: &mut PgConnection,
        id: RequestId,
        codes: Option<&[ErrorCode]>,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<i64>> {
        let codes: Option<Vec<&str>> = codes.map(|cs| cs.iter().map(|c| c.as_str()).collect());
        sqlx::query(&format!(
            "UPDATE images SET {REQUEUED_COLUMNS} WHERE request_id = $1 AND status = 'failed' \
             AND ($3::text[] IS NULL OR error_code = ANY($3)) RETURNING product_id"
        ))
        .bind(id.as_uuid())
        .bind(now)
        .bind(codes)
        .fetch_all(c)
        .await?
        .iter()
        .map(|r| r.int("product_id"))
        .collect()
    }

    async fn requeue_cancelled(
        &self,
        c: &mut PgConnection,
        id: RequestId,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<i64>> {
        sqlx::query(&format!(
            "UPDATE images SET {REQUEUED_COLUMNS} WHERE request_id = $1 AND status = 'cancelled' \
             RETURNING product_id"
        ))
        .bind(id.as_uuid())
        .bind(now)
        .fetch_all(c)
        .await?
        .iter()
        .map(|r| r.int("product_id"))
        .collect()
    }

    async fn reopen_products(
        &self,
        c: &mut PgConnection,
        ids: &[i64],
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE products SET status = 'processing', updated_at = $2 WHERE id = ANY($1)",
        )
        .bind(ids)
        .bind(now)
        .execute(c)
        .await?;
        Ok(())
    }

    async fn reopen_request(
        &self,
        c: &mut PgConnection,
        id: RequestId,
        uncancelled: i64,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE requests SET status = 'processing', \
             cancelled_images = cancelled_images - $1, updated_at = $2 WHERE id = $3",
        )
        .bind(uncancelled as i32)
        .bind(now)
        .bind(id.as_uuid())
        .execute(c)
        .await?;
        Ok(())
    }

    /// Its attempts go with it (`ON DELETE CASCADE`).
    async fn delete_delivery(&self, c: &mut PgConnection, id: RequestId) -> StoreResult<()> {
        sqlx::query("DELETE FROM webhook_deliveries WHERE request_id = $1")
            .bind(id.as_uuid())
            .execute(c)
            .await?;
        Ok(())
    }

    async fn claim_images(
        &self,
        c: &mut PgConnection,
        worker: &str,
        limit: i64,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<ImageJob>> {
        sqlx::query(
            "WITH picked AS ( \
                SELECT id FROM images WHERE status = 'pending' AND duplicate_of IS NULL \
                AND next_attempt_at <= $1 ORDER BY ordinal, id LIMIT $2 FOR UPDATE SKIP LOCKED) \
             UPDATE images i SET status = 'processing', attempts = i.attempts + 1, locked_by = $3, \
                claimed_by = $3, locked_until = $4, updated_at = $1 \
             FROM picked WHERE i.id = picked.id \
             RETURNING i.id, i.request_id, i.product_id, i.ordinal, i.position, i.input_url, i.attempts",
        )
        .bind(now)
        .bind(limit)
        .bind(worker)
        .bind(until)
        .fetch_all(c)
        .await?
        .iter()
        .map(rows::image_job)
        .collect()
    }

    async fn start_products(
        &self,
        c: &mut PgConnection,
        ids: &[i64],
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE products SET status = 'processing', updated_at = $2 \
             WHERE id = ANY($1) AND status = 'pending'",
        )
        .bind(ids)
        .bind(now)
        .execute(c)
        .await?;
        Ok(())
    }

    async fn start_requests(
        &self,
        c: &mut PgConnection,
        ids: &[RequestId],
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let ids: Vec<Uuid> = ids.iter().map(RequestId::as_uuid).collect();
        sqlx::query(
            "UPDATE requests SET status = 'processing', updated_at = $2 \
             WHERE id = ANY($1) AND status = 'pending'",
        )
        .bind(&ids)
        .bind(now)
        .execute(c)
        .await?;
        Ok(())
    }

    async fn renew_images(&self, worker: &str, until: DateTime<Utc>) -> StoreResult<u64> {
        let r = sqlx::query(
            "UPDATE images SET locked_until = $1 WHERE locked_by = $2 AND status = 'processing'",
        )
        .bind(until)
        .bind(worker)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    async fn release_images(&self, worker: &str, now: DateTime<Utc>) -> StoreResult<u64> {
        let r = sqlx::query(
            "UPDATE images SET status = 'pending', attempts = GREATEST(attempts - 1, 0), \
             locked_by = NULL, locked_until = NULL, next_attempt_at = $1, updated_at = $1 \
             WHERE locked_by = $2 AND status = 'processing'",
        )
        .bind(now)
        .bind(worker)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    async fn reclaim_images(&self, now: DateTime<Utc>) -> StoreResult<u64> {
        let r = sqlx::query(
            "UPDATE images SET status = 'pending', locked_by = NULL, locked_until = NULL, \
             next_attempt_at = $1, updated_at = $1 \
             WHERE status = 'processing' AND locked_until < $1",
        )
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    async fn requeue_image(
        &self,
        c: &mut PgConnection,
        job: &ImageJob,
        worker: &str,
        failure: &Failure,
        at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let r = sqlx::query(
            "UPDATE images SET status = 'pending', error = $1, error_code = $2, \
             next_attempt_at = $3, locked_by = NULL, locked_until = NULL, updated_at = $4 \
             WHERE id = $5 AND status = 'processing' AND locked_by = $6",
        )
        .bind(&failure.message)
        .bind(failure.code.as_str())
        .bind(at)
        .bind(now)
        .bind(job.id)
        .bind(worker)
        .execute(c)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn finish_image(
        &self,
        c: &mut PgConnection,
        job: &ImageJob,
        worker: &str,
        result: ImageResult<'_>,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let sql = format!(
            "UPDATE images SET {RESULT_COLUMNS}, locked_by = NULL, locked_until = NULL \
             WHERE id = $16 AND status = 'processing' AND locked_by = $17"
        );
        let r = bind_result(sqlx::query(&sql), result, now)
            .bind(job.id)
            .bind(worker)
            .execute(c)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn finish_duplicates(
        &self,
        c: &mut PgConnection,
        original: i64,
        result: ImageResult<'_>,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<i64>> {
        let sql = format!(
            "UPDATE images SET {RESULT_COLUMNS} WHERE duplicate_of = $16 AND status = 'pending' \
             RETURNING product_id"
        );
        let rows = bind_result(sqlx::query(&sql), result, now)
            .bind(original)
            .fetch_all(c)
            .await?;
        rows.iter().map(|r| r.int("product_id")).collect()
    }

    async fn add_to_product(
        &self,
        c: &mut PgConnection,
        pid: i64,
        delta: Delta,
        now: DateTime<Utc>,
    ) -> StoreResult<Counts> {
        let row = sqlx::query(
            "UPDATE products SET completed_images = completed_images + $1, \
             failed_images = failed_images + $2, updated_at = $3 WHERE id = $4 \
             RETURNING total_images, completed_images, failed_images",
        )
        .bind(delta.completed as i32)
        .bind(delta.failed as i32)
        .bind(now)
        .bind(pid)
        .fetch_one(c)
        .await?;
        rows::counts(&row)
    }

    async fn product_outputs(
        &self,
        c: &mut PgConnection,
        pid: i64,
    ) -> StoreResult<Vec<Option<String>>> {
        Ok(sqlx::query_scalar(
            "SELECT output_url FROM images WHERE product_id = $1 ORDER BY position",
        )
        .bind(pid)
        .fetch_all(c)
        .await?)
    }

    async fn finish_product(
        &self,
        c: &mut PgConnection,
        pid: i64,
        status: Status,
        outputs_json: &str,
    ) -> StoreResult<()> {
        sqlx::query("UPDATE products SET status = $1, output_image_urls = $2 WHERE id = $3")
            .bind(status.as_str())
            .bind(outputs_json)
            .bind(pid)
            .execute(c)
            .await?;
        Ok(())
    }

    /// The row lock taken here serialises the last settlements of a request.
    async fn add_to_request(
        &self,
        c: &mut PgConnection,
        id: RequestId,
        delta: Delta,
        now: DateTime<Utc>,
    ) -> StoreResult<Tally> {
        let row = sqlx::query(
            "UPDATE requests SET completed_images = completed_images + $1, \
             failed_images = failed_images + $2, bytes_in = bytes_in + $3, \
             bytes_out = bytes_out + $4, updated_at = $5 WHERE id = $6 \
             RETURNING total_images, completed_images, failed_images, status, webhook_url",
        )
        .bind(delta.completed as i32)
        .bind(delta.failed as i32)
        .bind(delta.bytes_in)
        .bind(delta.bytes_out)
        .bind(now)
        .bind(id.as_uuid())
        .fetch_one(c)
        .await?;
        rows::tally(&row)
    }

    async fn finish_request(
        &self,
        c: &mut PgConnection,
        id: RequestId,
        status: Status,
    ) -> StoreResult<()> {
        sqlx::query("UPDATE requests SET status = $1 WHERE id = $2")
            .bind(status.as_str())
            .bind(id.as_uuid())
            .execute(c)
            .await?;
        Ok(())
    }

    async fn queue_delivery(
        &self,
        c: &mut PgConnection,
        id: RequestId,
        url: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO webhook_deliveries (id, request_id, url, next_attempt_at, event_at, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, $4, $4, $4) \
             ON CONFLICT (request_id) DO NOTHING",
        )
        .bind(Uuid::now_v7())
        .bind(id.as_uuid())
        .bind(url)
        .bind(now)
        .execute(c)
        .await?;
        Ok(())
    }

    async fn claim_deliveries(
        &self,
        worker: &str,
        limit: i64,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<DeliveryJob>> {
        sqlx::query(
            "WITH picked AS ( \
                SELECT id FROM webhook_deliveries WHERE state = 'pending' AND next_attempt_at <= $1 \
                AND (locked_until IS NULL OR locked_until < $1) \
                ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
             UPDATE webhook_deliveries d SET attempts = d.attempts + 1, locked_by = $3, \
                locked_until = $4, updated_at = $1 \
             FROM picked, requests r WHERE d.id = picked.id AND r.id = d.request_id \
             RETURNING d.id, d.request_id, d.url, d.attempts, d.payload, d.event_at, r.owner",
        )
        .bind(now)
        .bind(limit)
        .bind(worker)
        .bind(until)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::delivery_job)
        .collect()
    }

    async fn set_delivery_payload(&self, id: Uuid, payload: &str) -> StoreResult<()> {
        sqlx::query("UPDATE webhook_deliveries SET payload = $1 WHERE id = $2 AND payload IS NULL")
            .bind(payload)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn release_deliveries(&self, worker: &str) -> StoreResult<u64> {
        let r = sqlx::query(
            "UPDATE webhook_deliveries SET attempts = GREATEST(attempts - 1, 0), locked_by = NULL, \
             locked_until = NULL WHERE locked_by = $1 AND state = 'pending'",
        )
        .bind(worker)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    async fn update_delivery(
        &self,
        c: &mut PgConnection,
        job: &DeliveryJob,
        worker: &str,
        attempt: &AttemptRecord,
        u: DeliveryUpdate,
    ) -> StoreResult<bool> {
        let r = sqlx::query(
            "UPDATE webhook_deliveries SET state = $1, next_attempt_at = $2, delivered_at = $3, \
             last_status_code = $4, last_error = $5, locked_by = NULL, locked_until = NULL, \
             updated_at = $6 WHERE id = $7 AND locked_by = $8 AND state = 'pending'",
        )
        .bind(u.state.as_str())
        .bind(u.next_attempt_at)
        .bind(u.delivered_at)
        .bind(attempt.status_code.map(i32::from))
        .bind(&attempt.error)
        .bind(attempt.at)
        .bind(job.id)
        .bind(worker)
        .execute(c)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn insert_attempt(
        &self,
        c: &mut PgConnection,
        id: Uuid,
        attempt: &AttemptRecord,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO webhook_attempts (delivery_id, attempted_at, status_code, error, \
             duration_ms) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(attempt.at)
        .bind(attempt.status_code.map(i32::from))
        .bind(&attempt.error)
        .bind(attempt.duration_ms)
        .execute(c)
        .await?;
        Ok(())
    }

    async fn delivery_state(
        &self,
        c: &mut PgConnection,
        id: RequestId,
    ) -> StoreResult<Option<DeliveryState>> {
        let state: Option<String> = sqlx::query_scalar(
            "SELECT state FROM webhook_deliveries WHERE request_id = $1 FOR UPDATE",
        )
        .bind(id.as_uuid())
        .fetch_optional(c)
        .await?;
        state.as_deref().map(rows::delivery_state).transpose()
    }

    async fn requeue_delivery(
        &self,
        c: &mut PgConnection,
        id: RequestId,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, next_attempt_at = $1, \
             updated_at = $1 WHERE request_id = $2 AND state = 'failed'",
        )
        .bind(now)
        .bind(id.as_uuid())
        .execute(c)
        .await?;
        Ok(())
    }

    async fn webhook_attempts(
        &self,
        id: RequestId,
    ) -> StoreResult<Vec<(Option<i64>, Option<String>)>> {
        sqlx::query(
            "SELECT a.status_code, a.error FROM webhook_attempts a \
             JOIN webhook_deliveries d ON d.id = a.delivery_id WHERE d.request_id = $1 ORDER BY a.id",
        )
        .bind(id.as_uuid())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::attempt)
        .collect()
    }

    async fn insert_setting_if_absent(&self, key: &str, value: &str) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn setting(&self, key: &str) -> StoreResult<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    // Retention and reports (issue 18)

    /// `FOR UPDATE SKIP LOCKED`: two janitors claiming at once take different requests, and
    /// the lease keeps a taken one from the others until it runs out.
    async fn claim_deletions(
        &self,
        c: &mut PgConnection,
        finished: &[Status],
        before: DateTime<Utc>,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
        limit: i64,
    ) -> StoreResult<Vec<RequestId>> {
        let finished: Vec<&str> = finished.iter().map(|s| s.as_str()).collect();
        sqlx::query(
            "UPDATE requests SET deleting_at = COALESCE(deleting_at, $1), janitor_until = $2 \
             WHERE id IN (SELECT id FROM requests \
                 WHERE (deleting_at IS NOT NULL AND janitor_until < $1) \
                    OR (deleting_at IS NULL AND updated_at < $3 AND status = ANY($4)) \
                 ORDER BY updated_at LIMIT $5 FOR UPDATE SKIP LOCKED) \
             RETURNING id",
        )
        .bind(now)
        .bind(until)
        .bind(before)
        .bind(&finished)
        .bind(limit)
        .fetch_all(c)
        .await?
        .iter()
        .map(|r| rows::request_id(r, "id"))
        .collect()
    }

    async fn insert_tombstones(
        &self,
        c: &mut PgConnection,
        ids: &[RequestId],
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let ids: Vec<Uuid> = ids.iter().map(|r| r.as_uuid()).collect();
        sqlx::query(
            "INSERT INTO tombstones (request_id, owner, deleted_at) \
             SELECT id, owner, $1 FROM requests WHERE id = ANY($2) \
             ON CONFLICT (request_id) DO NOTHING",
        )
        .bind(now)
        .bind(&ids)
        .execute(c)
        .await?;
        Ok(())
    }

    async fn delete_request(&self, c: &mut PgConnection, id: RequestId) -> StoreResult<u64> {
        let r = sqlx::query("DELETE FROM requests WHERE id = $1 AND deleting_at IS NOT NULL")
            .bind(id.as_uuid())
            .execute(c)
            .await?;
        Ok(r.rows_affected())
    }

    async fn tombstone(&self, id: RequestId, owner: &Owner) -> StoreResult<Option<DateTime<Utc>>> {
        Ok(sqlx::query_scalar(
            "SELECT deleted_at FROM tombstones WHERE request_id = $1 AND owner = $2",
        )
        .bind(id.as_uuid())
        .bind(owner.as_str())
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn drop_tombstones(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        let r = sqlx::query("DELETE FROM tombstones WHERE deleted_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }
}
