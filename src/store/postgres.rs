//! Postgres backend: the production database. An upload's rows go in with binary `COPY`, one
//! stream per table however many rows; claims use `FOR UPDATE SKIP LOCKED` so processes never
//! wait on each other's jobs.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgCopyIn, PgPoolOptions};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::*;
use crate::domain::RequestId;

/// Rows for `COPY … FROM STDIN (FORMAT binary)`: the cheapest way to load many rows, with no
/// statement to plan and no text to parse or escape. The data goes out in pieces of about
/// [`COPY_CHUNK`] bytes, so the server inserts while the rest is encoded, and a large upload is
/// not held in memory twice. Format: "Binary Format" in
/// <https://www.postgresql.org/docs/current/sql-copy.html>.
///
/// End with [`BinaryCopy::finish`]. After any error, return it and let the transaction roll
/// back: the copy is then over.
struct BinaryCopy<'c> {
    /// `None` once aborted.
    copy: Option<PgCopyIn<&'c mut PgConnection>>,
    buf: Vec<u8>,
    /// The length of a text value too long for the format (over 2 GiB; Postgres stores at most
    /// 1 GiB anyway). A NULL stands in for it, and the copy is aborted before anything more is
    /// sent.
    oversized: Option<usize>,
}

const COPY_CHUNK: usize = 64 * 1024;

/// 2000-01-01T00:00:00Z, the epoch of Postgres's binary timestamps, in Unix microseconds.
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

impl<'c> BinaryCopy<'c> {
    async fn begin(conn: &'c mut PgConnection, statement: &str) -> StoreResult<Self> {
        let copy = conn.copy_in_raw(statement).await?;
        let mut buf = Vec::with_capacity(COPY_CHUNK + 4096);
        // Signature, flags (none), length of the header extension (none).
        buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        buf.extend_from_slice(&0i32.to_be_bytes());
        buf.extend_from_slice(&0i32.to_be_bytes());
        Ok(Self {
            copy: Some(copy),
            buf,
            oversized: None,
        })
    }

    /// Starts a row of `fields` values: exactly that many calls of the value methods follow.
    fn row(&mut self, fields: i16) {
        self.buf.extend_from_slice(&fields.to_be_bytes());
    }

    /// One value: its length, then its bytes in the type's binary form.
    fn value(&mut self, bytes: &[u8]) {
        match i32::try_from(bytes.len()) {
            Ok(len) => {
                self.buf.extend_from_slice(&len.to_be_bytes());
                self.buf.extend_from_slice(bytes);
            }
            Err(_) => {
                self.oversized = Some(bytes.len());
                self.null();
            }
        }
    }

    fn null(&mut self) {
        self.buf.extend_from_slice(&(-1i32).to_be_bytes());
    }

    fn int4(&mut self, v: i32) {
        self.value(&v.to_be_bytes());
    }

    fn int8(&mut self, v: i64) {
        self.value(&v.to_be_bytes());
    }

    fn uuid(&mut self, v: Uuid) {
        self.value(v.as_bytes());
    }

    /// UTF-8, as the database's encoding is.
    fn text(&mut self, v: &str) {
        self.value(v.as_bytes());
    }

    /// Microseconds since Postgres's epoch, truncated as sqlx does when it binds a `DateTime`,
    /// so these rows hold the same instant as the `requests` row bound the usual way.
    fn timestamptz(&mut self, v: DateTime<Utc>) {
        self.int8(v.timestamp_micros() - PG_EPOCH_UNIX_MICROS);
    }

    async fn flush_if_full(&mut self) -> StoreResult<()> {
        if self.buf.len() >= COPY_CHUNK {
            self.send().await?;
        }
        Ok(())
    }

    async fn send(&mut self) -> StoreResult<()> {
        if let Some(len) = self.oversized {
            if let Some(copy) = self.copy.take() {
                copy.abort("value too long").await?;
            }
            return Err(StoreError::Other(anyhow::anyhow!(
                "a value of {len} bytes is too long for the database"
            )));
        }
        if let Some(copy) = self.copy.as_mut() {
            copy.send(self.buf.as_slice()).await?;
        }
        self.buf.clear();
        Ok(())
    }

    /// Sends the rest and the end marker. Constraint violations surface here.
    async fn finish(mut self) -> StoreResult<u64> {
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        self.send().await?;
        match self.copy.take() {
            Some(copy) => Ok(copy.finish().await?),
            None => Err(StoreError::Other(anyhow::anyhow!("COPY already aborted"))),
        }
    }
}

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
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

    pub fn pool(&self) -> &PgPool {
        &self.pool
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

    pub async fn create_request(
        &self,
        new: &NewRequest,
        now: DateTime<Utc>,
    ) -> StoreResult<CreateOutcome> {
        let mut tx = self.pool.begin().await?;
        if let Some(key) = &new.idempotency_key {
            // Two concurrent uploads with one key: the second waits here for the first to commit.
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 0))")
                .bind(&new.owner)
                .bind(key)
                .execute(&mut *tx)
                .await?;
            let existing = sqlx::query(
                "SELECT id, upload_digest FROM requests WHERE owner = $1 AND idempotency_key = $2",
            )
            .bind(&new.owner)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = existing {
                let digest: String = row.try_get("upload_digest")?;
                return Ok(if digest == new.upload_digest {
                    CreateOutcome::Replayed(RequestId(row.try_get("id")?))
                } else {
                    CreateOutcome::KeyReused
                });
            }
        }
        let id = new.id.0;
        let images = new.images();
        sqlx::query(
            "INSERT INTO requests (id, owner, idempotency_key, upload_digest, webhook_url, \
             total_products, total_images, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
        )
        .bind(id)
        .bind(&new.owner)
        .bind(&new.idempotency_key)
        .bind(&new.upload_digest)
        .bind(&new.webhook_url)
        .bind(new.products.len() as i32)
        .bind(images.len() as i32)
        .bind(now)
        .execute(&mut *tx)
        .await?;

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
        .fetch_one(&mut *tx)
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

        let mut copy = BinaryCopy::begin(
            &mut tx,
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
            copy.int8(p.serial_number.0);
            copy.text(&p.product_name.0);
            copy.text(&serde_json::to_string(&urls).unwrap_or_default());
            copy.int4(p.input_urls.len() as i32);
            copy.timestamptz(now);
            copy.timestamptz(now);
            copy.flush_if_full().await?;
        }
        copy.finish().await?;

        // In CSV order, each image with the id drawn for its ordinal.
        let mut copy = BinaryCopy::begin(
            &mut tx,
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

        // Delivered on commit: wakes the workers of every process on this database.
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(crate::worker::NOTIFY_CHANNEL)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(CreateOutcome::Created(new.id))
    }

    async fn request_on(
        conn: &mut sqlx::PgConnection,
        id: RequestId,
        owner: &str,
    ) -> StoreResult<Option<RequestRow>> {
        let row = sqlx::query(
            "SELECT id, status, webhook_url, total_products, total_images, completed_images, \
             failed_images, created_at, updated_at FROM requests WHERE id = $1 AND owner = $2",
        )
        .bind(id.0)
        .bind(owner)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(RequestRow {
            id: RequestId(r.try_get::<Uuid, _>("id")?),
            status: parse_status(r.try_get("status")?)?,
            webhook_url: r.try_get("webhook_url")?,
            total_products: r.try_get::<i32, _>("total_products")?.into(),
            total_images: r.try_get::<i32, _>("total_images")?.into(),
            completed_images: r.try_get::<i32, _>("completed_images")?.into(),
            failed_images: r.try_get::<i32, _>("failed_images")?.into(),
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
        }))
    }

    pub async fn request_detail(
        &self,
        id: RequestId,
        owner: &str,
    ) -> StoreResult<Option<RequestDetail>> {
        let mut tx = self.pool.begin().await?;
        // One snapshot for all three reads, so counts, products and images agree.
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let Some(request) = Self::request_on(&mut tx, id, owner).await? else {
            return Ok(None);
        };
        // The same reads as a streamed body's, each in one page.
        let products = Self::snapshot_products(&mut tx, id, -1, i64::MAX).await?;
        let images = Self::snapshot_images(&mut tx, id, -1, i64::MAX)
            .await?
            .into_iter()
            .map(|(_, image)| image)
            .collect();
        let webhook = Self::snapshot_webhook(&mut tx, id).await?;
        tx.commit().await?;
        Ok(Some(RequestDetail {
            request,
            webhook,
            products,
            images,
        }))
    }

    pub async fn claim_images(
        &self,
        worker: &str,
        limit: i64,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<ImageJob>> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "WITH picked AS ( \
                SELECT id FROM images WHERE status = 'pending' AND duplicate_of IS NULL \
                AND next_attempt_at <= $1 ORDER BY ordinal, id LIMIT $2 FOR UPDATE SKIP LOCKED) \
             UPDATE images i SET status = 'processing', attempts = i.attempts + 1, locked_by = $3, claimed_by = $3, \
                locked_until = $4, updated_at = $1 \
             FROM picked WHERE i.id = picked.id \
             RETURNING i.id, i.request_id, i.product_id, i.ordinal, i.position, i.input_url, i.attempts",
        )
        .bind(now)
        .bind(limit)
        .bind(worker)
        .bind(lease_until(now, lease))
        .fetch_all(&mut *tx)
        .await?;
        let mut jobs = Vec::with_capacity(rows.len());
        for r in rows {
            jobs.push(ImageJob {
                id: r.try_get("id")?,
                request_id: RequestId(r.try_get("request_id")?),
                product_id: r.try_get("product_id")?,
                ordinal: r.try_get::<i32, _>("ordinal")?.into(),
                position: r.try_get::<i32, _>("position")?.into(),
                input_url: r.try_get("input_url")?,
                attempts: r.try_get::<i32, _>("attempts")?.into(),
            });
        }
        jobs.sort_by_key(|j| (j.ordinal, j.id));
        if !jobs.is_empty() {
            let products: Vec<i64> = jobs.iter().map(|j| j.product_id).collect();
            let requests: Vec<Uuid> = jobs.iter().map(|j| j.request_id.0).collect();
            sqlx::query(
                "UPDATE products SET status = 'processing', updated_at = $2 \
                 WHERE id = ANY($1) AND status = 'pending'",
            )
            .bind(&products)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE requests SET status = 'processing', updated_at = $2 \
                 WHERE id = ANY($1) AND status = 'pending'",
            )
            .bind(&requests)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(jobs)
    }

    pub async fn heartbeat(
        &self,
        worker: &str,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> StoreResult<u64> {
        let r = sqlx::query(
            "UPDATE images SET locked_until = $1 WHERE locked_by = $2 AND status = 'processing'",
        )
        .bind(lease_until(now, lease))
        .bind(worker)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    pub async fn release(&self, worker: &str, now: DateTime<Utc>) -> StoreResult<u64> {
        let r = sqlx::query(
            "UPDATE images SET status = 'pending', attempts = GREATEST(attempts - 1, 0), \
             locked_by = NULL, locked_until = NULL, next_attempt_at = $1, updated_at = $1 \
             WHERE locked_by = $2 AND status = 'processing'",
        )
        .bind(now)
        .bind(worker)
        .execute(&self.pool)
        .await?;
        sqlx::query(
            "UPDATE webhook_deliveries SET attempts = GREATEST(attempts - 1, 0), locked_by = NULL, \
             locked_until = NULL WHERE locked_by = $1 AND state = 'pending'",
        )
        .bind(worker)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    pub async fn reclaim_expired(&self, now: DateTime<Utc>) -> StoreResult<u64> {
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

    pub async fn claim_deliveries(
        &self,
        worker: &str,
        limit: i64,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<DeliveryJob>> {
        // A lapsed lease (its process died mid-attempt) makes a delivery claimable again.
        let rows = sqlx::query(
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
        .bind(lease_until(now, lease))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(DeliveryJob {
                    id: r.try_get("id")?,
                    request_id: RequestId(r.try_get("request_id")?),
                    owner: r.try_get("owner")?,
                    url: r.try_get("url")?,
                    attempts: r.try_get::<i32, _>("attempts")?.into(),
                    payload: r.try_get("payload")?,
                    event_at: r.try_get("event_at")?,
                })
            })
            .collect()
    }

    pub async fn set_delivery_payload(&self, id: Uuid, payload: &str) -> StoreResult<()> {
        sqlx::query("UPDATE webhook_deliveries SET payload = $1 WHERE id = $2 AND payload IS NULL")
            .bind(payload)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn record_attempt(
        &self,
        job: &DeliveryJob,
        worker: &str,
        attempt: &AttemptRecord,
        next: AttemptNext,
    ) -> StoreResult<bool> {
        let (state, next_at, delivered_at) = match next {
            AttemptNext::Delivered => (DeliveryState::Delivered, attempt.at, Some(attempt.at)),
            AttemptNext::Retry(at) => (DeliveryState::Pending, at, None),
            AttemptNext::Failed => (DeliveryState::Failed, attempt.at, None),
        };
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query(
            "UPDATE webhook_deliveries SET state = $1, next_attempt_at = $2, delivered_at = $3, \
             last_status_code = $4, last_error = $5, locked_by = NULL, locked_until = NULL, \
             updated_at = $6 WHERE id = $7 AND locked_by = $8 AND state = 'pending'",
        )
        .bind(state.as_str())
        .bind(next_at)
        .bind(delivered_at)
        .bind(attempt.status_code.map(i32::from))
        .bind(&attempt.error)
        .bind(attempt.at)
        .bind(job.id)
        .bind(worker)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO webhook_attempts (delivery_id, attempted_at, status_code, error, duration_ms) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(job.id)
        .bind(attempt.at)
        .bind(attempt.status_code.map(i32::from))
        .bind(&attempt.error)
        .bind(attempt.duration_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn retry_webhook(
        &self,
        id: RequestId,
        owner: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<WebhookRetry>> {
        let mut tx = self.pool.begin().await?;
        let exists: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM requests WHERE id = $1 AND owner = $2")
                .bind(id.0)
                .bind(owner)
                .fetch_optional(&mut *tx)
                .await?;
        if exists.is_none() {
            return Ok(None);
        }
        let state: Option<String> = sqlx::query_scalar(
            "SELECT state FROM webhook_deliveries WHERE request_id = $1 FOR UPDATE",
        )
        .bind(id.0)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(state) = state else {
            return Ok(Some(WebhookRetry::NoDelivery));
        };
        let state = DeliveryState::parse(&state)?;
        if state != DeliveryState::Failed {
            return Ok(Some(WebhookRetry::NotFailed(state)));
        }
        sqlx::query(
            "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, next_attempt_at = $1, \
             updated_at = $1 WHERE request_id = $2",
        )
        .bind(now)
        .bind(id.0)
        .execute(&mut *tx)
        .await?;
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(crate::worker::NOTIFY_CHANNEL)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(WebhookRetry::Queued))
    }

    pub async fn webhook_attempts(
        &self,
        id: RequestId,
    ) -> StoreResult<Vec<(Option<i64>, Option<String>)>> {
        let rows = sqlx::query(
            "SELECT a.status_code, a.error FROM webhook_attempts a \
             JOIN webhook_deliveries d ON d.id = a.delivery_id WHERE d.request_id = $1 ORDER BY a.id",
        )
        .bind(id.0)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok((
                    r.try_get::<Option<i32>, _>(0)?.map(i64::from),
                    r.try_get(1)?,
                ))
            })
            .collect()
    }

    pub async fn setting_or_insert(&self, key: &str, default: &str) -> StoreResult<String> {
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
        )
        .bind(key)
        .bind(default)
        .execute(&self.pool)
        .await?;
        Ok(
            sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
                .bind(key)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    pub async fn queue_depth(&self) -> StoreResult<(i64, i64)> {
        let pending: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM images WHERE status = 'pending' AND duplicate_of IS NULL",
        )
        .fetch_one(&self.pool)
        .await?;
        let processing: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM images WHERE status = 'processing'")
                .fetch_one(&self.pool)
                .await?;
        Ok((pending, processing))
    }

    pub async fn count_requests(&self) -> StoreResult<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM requests")
            .fetch_one(&self.pool)
            .await?)
    }

    pub async fn next_runnable_at(&self) -> StoreResult<Option<DateTime<Utc>>> {
        let v: Option<DateTime<Utc>> = sqlx::query_scalar(
            "SELECT MIN(next_attempt_at) FROM images WHERE status = 'pending' AND duplicate_of IS NULL",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(v)
    }

    pub async fn settle_image(
        &self,
        job: &ImageJob,
        worker: &str,
        outcome: &JobOutcome,
        now: DateTime<Utc>,
    ) -> StoreResult<Settled> {
        let mut tx = self.pool.begin().await?;
        let Some((status, delta)) = settled_status(outcome) else {
            let JobOutcome::Retry { error, at } = outcome else {
                unreachable!()
            };
            let r = sqlx::query(
                "UPDATE images SET status = 'pending', error = $1, next_attempt_at = $2, \
                 locked_by = NULL, locked_until = NULL, updated_at = $3 \
                 WHERE id = $4 AND status = 'processing' AND locked_by = $5",
            )
            .bind(error)
            .bind(at)
            .bind(now)
            .bind(job.id)
            .bind(worker)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok(Settled {
                recorded: r.rows_affected() == 1,
                request_finished: None,
            });
        };
        let (out, error) = match outcome {
            JobOutcome::Completed(o) => (Some(o), None),
            JobOutcome::Failed { error } => (None, Some(error.as_str())),
            JobOutcome::Retry { .. } => (None, None),
        };
        let r = sqlx::query(
            "UPDATE images SET status = $1, output_key = $2, output_url = $3, input_format = $4, codec = $13, \
             bytes_in = $5, bytes_out = $6, width = $7, height = $8, error = $9, locked_by = NULL, \
             locked_until = NULL, updated_at = $10 \
             WHERE id = $11 AND status = 'processing' AND locked_by = $12",
        )
        .bind(status.as_str())
        .bind(out.map(|o| &o.key))
        .bind(out.map(|o| &o.url))
        .bind(out.map(|o| &o.input_format))
        .bind(out.map(|o| o.bytes_in))
        .bind(out.map(|o| o.bytes_out))
        .bind(out.map(|o| o.width as i32))
        .bind(out.map(|o| o.height as i32))
        .bind(error)
        .bind(now)
        .bind(job.id)
        .bind(worker)
        .bind(out.map(|o| &o.codec))
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            return Ok(Settled::default());
        }
        let dup_products: Vec<i64> = sqlx::query_scalar(
            "UPDATE images SET status = $1, output_key = $2, output_url = $3, input_format = $4, codec = $12, \
             bytes_in = $5, bytes_out = $6, width = $7, height = $8, error = $9, updated_at = $10 \
             WHERE duplicate_of = $11 AND status = 'pending' RETURNING product_id",
        )
        .bind(status.as_str())
        .bind(out.map(|o| &o.key))
        .bind(out.map(|o| &o.url))
        .bind(out.map(|o| &o.input_format))
        .bind(out.map(|o| o.bytes_in))
        .bind(out.map(|o| o.bytes_out))
        .bind(out.map(|o| o.width as i32))
        .bind(out.map(|o| o.height as i32))
        .bind(error)
        .bind(now)
        .bind(job.id)
        .bind(out.map(|o| &o.codec))
        .fetch_all(&mut *tx)
        .await?;

        let mut per_product: BTreeMap<i64, Delta> = BTreeMap::new();
        for pid in std::iter::once(job.product_id).chain(dup_products) {
            let d = per_product.entry(pid).or_default();
            d.completed += delta.completed;
            d.failed += delta.failed;
        }
        let mut total = Delta::default();
        // Ordered by id (BTreeMap), so concurrent settlements lock products in one order.
        for (pid, d) in &per_product {
            total.completed += d.completed;
            total.failed += d.failed;
            let row = sqlx::query(
                "UPDATE products SET completed_images = completed_images + $1, \
                 failed_images = failed_images + $2, updated_at = $3 WHERE id = $4 \
                 RETURNING total_images, completed_images, failed_images",
            )
            .bind(d.completed as i32)
            .bind(d.failed as i32)
            .bind(now)
            .bind(pid)
            .fetch_one(&mut *tx)
            .await?;
            let st = Status::roll_up(
                row.try_get::<i32, _>(0)?.into(),
                row.try_get::<i32, _>(1)?.into(),
                row.try_get::<i32, _>(2)?.into(),
                true,
            );
            if st.is_final() {
                let outputs: Vec<Option<String>> = sqlx::query_scalar(
                    "SELECT output_url FROM images WHERE product_id = $1 ORDER BY position",
                )
                .bind(pid)
                .fetch_all(&mut *tx)
                .await?;
                sqlx::query(
                    "UPDATE products SET status = $1, output_image_urls = $2 WHERE id = $3",
                )
                .bind(st.as_str())
                .bind(serde_json::to_string(&outputs).unwrap_or_default())
                .bind(pid)
                .execute(&mut *tx)
                .await?;
            }
        }
        // The row lock taken here serialises the last settlements of a request: exactly one of
        // them sees the final counts.
        let row = sqlx::query(
            "UPDATE requests SET completed_images = completed_images + $1, \
             failed_images = failed_images + $2, updated_at = $3 WHERE id = $4 \
             RETURNING total_images, completed_images, failed_images, webhook_url",
        )
        .bind(total.completed as i32)
        .bind(total.failed as i32)
        .bind(now)
        .bind(job.request_id.0)
        .fetch_one(&mut *tx)
        .await?;
        let st = Status::roll_up(
            row.try_get::<i32, _>(0)?.into(),
            row.try_get::<i32, _>(1)?.into(),
            row.try_get::<i32, _>(2)?.into(),
            true,
        );
        let webhook_url: Option<String> = row.try_get(3)?;
        let request_finished = if st.is_final() {
            sqlx::query("UPDATE requests SET status = $1 WHERE id = $2")
                .bind(st.as_str())
                .bind(job.request_id.0)
                .execute(&mut *tx)
                .await?;
            // Queued in the same transaction as the final roll-up: never lost, never doubled.
            if let Some(url) = webhook_url {
                sqlx::query(
                    "INSERT INTO webhook_deliveries (id, request_id, url, next_attempt_at, event_at, \
                     created_at, updated_at) VALUES ($1, $2, $3, $4, $4, $4, $4) \
                     ON CONFLICT (request_id) DO NOTHING",
                )
                .bind(Uuid::now_v7())
                .bind(job.request_id.0)
                .bind(url)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                sqlx::query("SELECT pg_notify($1, '')")
                    .bind(crate::worker::NOTIFY_CHANNEL)
                    .execute(&mut *tx)
                    .await?;
            }
            Some(st)
        } else {
            None
        };
        tx.commit().await?;
        Ok(Settled {
            recorded: true,
            request_finished,
        })
    }
}

/// The status endpoint's reads: its first query, and the paged reads of a large request's
/// body on a snapshot (see [`ReadSnapshot`]). Keyset pages on `UNIQUE (request_id, ordinal)`
/// and `UNIQUE (request_id, position)`, so every page is one index range scan.
impl PgStore {
    pub async fn request_head(
        &self,
        id: RequestId,
        owner: &str,
    ) -> StoreResult<Option<RequestHead>> {
        let row = sqlx::query(
            "SELECT r.status, r.updated_at, r.total_images, d.updated_at AS d_updated, \
             d.attempts, d.state \
             FROM requests r LEFT JOIN webhook_deliveries d ON d.request_id = r.id \
             WHERE r.id = $1 AND r.owner = $2",
        )
        .bind(id.0)
        .bind(owner)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let webhook = match r.try_get::<Option<DateTime<Utc>>, _>("d_updated")? {
            Some(t) => Some((
                t,
                r.try_get::<i32, _>("attempts")?.into(),
                r.try_get("state")?,
            )),
            None => None,
        };
        Ok(Some(RequestHead {
            version: RequestVersion {
                status: parse_status(r.try_get("status")?)?,
                updated_at: r.try_get("updated_at")?,
                webhook,
            },
            total_images: r.try_get::<i32, _>("total_images")?.into(),
        }))
    }

    /// One snapshot for every read of the transaction, and no writes.
    pub(super) async fn begin_snapshot(
        &self,
    ) -> StoreResult<sqlx::Transaction<'static, sqlx::Postgres>> {
        Ok(self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?)
    }

    pub(super) async fn snapshot_request(
        conn: &mut sqlx::PgConnection,
        id: RequestId,
        owner: &str,
    ) -> StoreResult<Option<RequestRow>> {
        Self::request_on(conn, id, owner).await
    }

    pub(super) async fn snapshot_webhook(
        conn: &mut sqlx::PgConnection,
        id: RequestId,
    ) -> StoreResult<Option<WebhookRow>> {
        sqlx::query(
            "SELECT id, url, state, attempts, last_status_code, last_error, next_attempt_at, \
             delivered_at FROM webhook_deliveries WHERE request_id = $1",
        )
        .bind(id.0)
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| -> StoreResult<WebhookRow> {
            let state = DeliveryState::parse(r.try_get("state")?)?;
            Ok(WebhookRow {
                id: r.try_get("id")?,
                url: r.try_get("url")?,
                state,
                attempts: r.try_get::<i32, _>("attempts")?.into(),
                last_status_code: r
                    .try_get::<Option<i32>, _>("last_status_code")?
                    .map(i64::from),
                last_error: r.try_get("last_error")?,
                next_attempt_at: if state == DeliveryState::Pending {
                    Some(r.try_get("next_attempt_at")?)
                } else {
                    None
                },
                delivered_at: r.try_get("delivered_at")?,
            })
        })
        .transpose()
    }

    pub(super) async fn snapshot_output_urls(
        conn: &mut sqlx::PgConnection,
        id: RequestId,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<(i64, Option<String>)>> {
        sqlx::query(
            "SELECT ordinal, output_url FROM images WHERE request_id = $1 AND ordinal > $2 \
             ORDER BY ordinal LIMIT $3",
        )
        .bind(id.0)
        .bind(key(after))
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|r| {
            Ok((
                r.try_get::<i32, _>("ordinal")?.into(),
                r.try_get("output_url")?,
            ))
        })
        .collect()
    }

    pub(super) async fn snapshot_products(
        conn: &mut sqlx::PgConnection,
        id: RequestId,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<ProductRow>> {
        sqlx::query(
            "SELECT id, position, serial_number, product_name, status FROM products \
             WHERE request_id = $1 AND position > $2 ORDER BY position LIMIT $3",
        )
        .bind(id.0)
        .bind(key(after))
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|r| {
            Ok(ProductRow {
                id: r.try_get("id")?,
                position: r.try_get::<i32, _>("position")?.into(),
                serial_number: r.try_get("serial_number")?,
                product_name: r.try_get("product_name")?,
                status: parse_status(r.try_get("status")?)?,
            })
        })
        .collect()
    }

    pub(super) async fn snapshot_images(
        conn: &mut sqlx::PgConnection,
        id: RequestId,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<(i64, ImageRow)>> {
        sqlx::query(
            "SELECT ordinal, product_id, position, input_url, status, output_url, error, \
             attempts, codec FROM images WHERE request_id = $1 AND ordinal > $2 \
             ORDER BY ordinal LIMIT $3",
        )
        .bind(id.0)
        .bind(key(after))
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|r| {
            Ok((
                r.try_get::<i32, _>("ordinal")?.into(),
                ImageRow {
                    product_id: r.try_get("product_id")?,
                    position: r.try_get::<i32, _>("position")?.into(),
                    input_url: r.try_get("input_url")?,
                    status: parse_status(r.try_get("status")?)?,
                    output_url: r.try_get("output_url")?,
                    error: r.try_get("error")?,
                    attempts: r.try_get::<i32, _>("attempts")?.into(),
                    codec: r.try_get("codec")?,
                },
            ))
        })
        .collect()
    }
}

/// A keyset bound for the `integer` columns `ordinal` and `position`, bound as `int4` so the
/// comparison is a plain range on their unique indexes.
fn key(after: i64) -> i32 {
    after.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
}
