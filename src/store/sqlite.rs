//! SQLite backend: the embedded default. One writer connection serialises writes in process (SQLite
//! allows one writer anyway, and a single connection never meets SQLITE_BUSY on lock upgrades);
//! readers use their own pool and see WAL snapshots. Times are integer milliseconds, UUIDs text.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};
use uuid::Uuid;

use super::backend::{Backend, Tx};
use super::rows::{self, Columns, REQUEST_COLUMNS};
use super::types::*;
use super::{StoreError, StoreResult};
use crate::domain::{ImageOptions, Owner, RequestId, Status};
use crate::failure::{ErrorCode, Failure};

#[derive(Clone)]
pub struct SqliteStore {
    write: SqlitePool,
    read: SqlitePool,
    /// Checkpoints the WAL after an upload, off the upload's path.
    checkpoint: SqlitePool,
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn id(r: RequestId) -> String {
    r.to_string()
}

impl Columns for SqliteRow {
    fn opt_int(&self, col: &str) -> StoreResult<Option<i64>> {
        Ok(self.try_get(col)?)
    }

    fn opt_text(&self, col: &str) -> StoreResult<Option<String>> {
        Ok(self.try_get(col)?)
    }

    fn opt_time(&self, col: &str) -> StoreResult<Option<DateTime<Utc>>> {
        Ok(self
            .try_get::<Option<i64>, _>(col)?
            .map(|v| DateTime::from_timestamp_millis(v).unwrap_or_default()))
    }

    fn uuid(&self, col: &str) -> StoreResult<Uuid> {
        let s: String = self.try_get(col)?;
        Uuid::parse_str(&s)
            .map_err(|_| StoreError::Other(anyhow::anyhow!("bad uuid {s:?} in database")))
    }
}

impl SqliteStore {
    /// Opens the database, creating the file (and its folder) if `create`; otherwise a
    /// missing file is an error that names it.
    pub async fn connect(url: &str, create: bool) -> StoreResult<Self> {
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Other(anyhow::anyhow!("invalid sqlite URL {url:?}: {e}")))?
            .create_if_missing(create)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let file = opts.get_filename();
        if !create && !file.exists() {
            let shown = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
            return Err(StoreError::Other(anyhow::anyhow!(
                "there is no database at {url:?} (file {}): point DATABASE_URL at the service's \
                 database, or start the service first",
                shown.display()
            )));
        }
        if let Some(dir) = file.parent() {
            if create && !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::Other(anyhow::anyhow!("cannot create {}: {e}", dir.display()))
                })?;
            }
        }
        let pool = |max, timeout, opts| {
            SqlitePoolOptions::new()
                .max_connections(max)
                .acquire_timeout(Duration::from_secs(timeout))
                .connect_with(opts)
        };
        Ok(Self {
            write: pool(1, 30, opts.clone()).await?,
            checkpoint: pool(1, 30, opts.clone()).await?,
            read: pool(8, 10, opts.read_only(true)).await?,
        })
    }

    pub async fn migrate(&self) -> StoreResult<()> {
        sqlx::migrate!("migrations/sqlite").run(&self.write).await?;
        Ok(())
    }

    pub async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.read).await?;
        Ok(())
    }
}

/// `UPDATE <table> SET status = 'processing', updated_at = ? WHERE status = 'pending' AND id IN
/// (…)`, for the products and requests of newly claimed jobs.
async fn start<T>(
    c: &mut SqliteConnection,
    table: &str,
    ids: impl IntoIterator<Item = T>,
    now: DateTime<Utc>,
) -> StoreResult<()>
where
    T: for<'q> sqlx::Encode<'q, Sqlite> + sqlx::Type<Sqlite> + Send,
{
    let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new("UPDATE ");
    qb.push(table)
        .push(" SET status = 'processing', updated_at = ")
        .push_bind(ms(now))
        .push(" WHERE status = 'pending' AND id IN (");
    let mut sep = qb.separated(", ");
    for id in ids {
        sep.push_bind(id);
    }
    qb.push(")");
    qb.build().execute(&mut *c).await?;
    Ok(())
}

/// The SET list of an image put back in the queue by a retry (?2: now).
const REQUEUED_COLUMNS: &str =
    "status = 'pending', attempts = 0, error = NULL, error_code = NULL, \
     next_attempt_at = ?2, locked_by = NULL, locked_until = NULL, updated_at = ?2";

/// A JSON array, for `json_each(?)`: a list bound as one value.
fn json<T: serde::Serialize>(items: &[T]) -> String {
    serde_json::to_string(items).unwrap_or_default()
}

/// The SET list shared by an image's final result and its duplicates'.
const RESULT_COLUMNS: &str = "status = ?, output_key = ?, output_url = ?, input_format = ?, \
     codec = ?, bytes_in = ?, bytes_out = ?, width = ?, height = ?, output_format = ?, \
     color_profile = ?, note = ?, error = ?, error_code = ?, updated_at = ?";

fn bind_result<'q>(
    q: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    r: ImageResult<'q>,
    now: DateTime<Utc>,
) -> sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    let out = r.output;
    q.bind(r.status.as_str())
        .bind(out.map(|o| o.key.as_str()))
        .bind(out.map(|o| o.url.as_str()))
        .bind(out.map(|o| o.input_format.as_str()))
        .bind(out.map(|o| o.codec.as_str()))
        .bind(out.map(|o| o.bytes_in))
        .bind(out.map(|o| o.bytes_out))
        .bind(out.map(|o| o.width))
        .bind(out.map(|o| o.height))
        .bind(out.map(|o| o.output_format.as_str()))
        .bind(out.and_then(|o| o.color_profile.as_deref()))
        .bind(out.and_then(|o| o.note.as_deref()))
        .bind(r.failure.map(|f| f.message.as_str()))
        .bind(r.failure.map(|f| f.code.as_str()))
        .bind(ms(now))
}

impl Backend for SqliteStore {
    type Db = Sqlite;

    async fn begin(&self) -> StoreResult<Tx<Self>> {
        Ok(self.write.begin().await?)
    }

    /// A deferred read transaction on a reader connection: in WAL mode its first `SELECT`
    /// takes a snapshot that lasts until the transaction ends.
    async fn begin_snapshot(&self) -> StoreResult<Tx<Self>> {
        Ok(self.read.begin().await?)
    }

    async fn find_idempotent(
        &self,
        c: &mut SqliteConnection,
        owner: &Owner,
        key: &str,
    ) -> StoreResult<Option<(RequestId, String)>> {
        sqlx::query(
            "SELECT id, upload_digest FROM requests WHERE owner = ? AND idempotency_key = ?",
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
        c: &mut SqliteConnection,
        new: &NewRequest,
        total_images: usize,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO requests (id, owner, idempotency_key, upload_digest, webhook_url, \
             total_products, total_images, created_at, updated_at, options, csv) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?9, ?10)",
        )
        .bind(id(new.id))
        .bind(new.owner.as_str())
        .bind(&new.idempotency_key)
        .bind(&new.upload_digest)
        .bind(&new.webhook_url)
        .bind(new.products.len() as i64)
        .bind(total_images as i64)
        .bind(ms(now))
        .bind(new.options.to_json())
        .bind(&new.csv)
        .execute(c)
        .await?;
        Ok(())
    }

    async fn load_rows(
        &self,
        c: &mut SqliteConnection,
        new: &NewRequest,
        images: &[NewImage<'_>],
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        // One statement a table, its rows in one JSON array bound once: binding eight values a
        // row and returning each row's id cost as much as SQLite's own work for a large upload.
        // The ids are given rather than returned: this transaction holds the write lock (taken
        // by the request's INSERT), so nothing else can take them, and images need their
        // product's.
        let (product_base, image_base): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT COALESCE(MAX(id), 0) + 1 FROM products), \
                    (SELECT COALESCE(MAX(id), 0) + 1 FROM images)",
        )
        .fetch_one(&mut *c)
        .await?;
        sqlx::query(
            "INSERT INTO products (id, request_id, position, serial_number, product_name, \
             input_image_urls, total_images, created_at, updated_at) \
             SELECT ?1 + key, ?2, key, value ->> 0, value ->> 1, value ->> 2, value ->> 3, ?3, ?3 \
             FROM json_each(?4)",
        )
        .bind(product_base)
        .bind(id(new.id))
        .bind(ms(now))
        .bind(products_json(&new.products))
        .execute(&mut *c)
        .await?;
        // A duplicate's original has a lower ordinal, so its id is known the same way.
        sqlx::query(
            "INSERT INTO images (id, request_id, product_id, ordinal, position, input_url, \
             duplicate_of, next_attempt_at, created_at, updated_at) \
             SELECT ?1 + key, ?2, ?3 + (value ->> 0), key, value ->> 1, value ->> 2, \
             ?1 + (value ->> 3), ?4, ?4, ?4 FROM json_each(?5)",
        )
        .bind(image_base)
        .bind(id(new.id))
        .bind(product_base)
        .bind(ms(now))
        .bind(images_json(images))
        .execute(&mut *c)
        .await?;
        // An upload writes thousands of pages to the WAL, so its commit passes the
        // auto-checkpoint threshold, and the checkpoint would run inside the commit, on the
        // client's time: copying every page into the database file and syncing it (tens of
        // milliseconds for a large upload). The commit is durable without it, so it runs on
        // its own connection just after (`after_upload`), while the client has its answer.
        sqlx::query("PRAGMA wal_autocheckpoint = 0")
            .execute(&mut *c)
            .await?;
        Ok(())
    }

    async fn after_upload(&self) {
        // Gives the writer back its automatic checkpoints (SQLite's default threshold), which
        // small writes rely on. The pool's one connection is the one the upload ran on. Not a
        // reason to fail the upload: the checkpoint below, and the next upload's restore, keep
        // the WAL from growing meanwhile.
        if let Err(e) = sqlx::query("PRAGMA wal_autocheckpoint = 1000")
            .execute(&self.write)
            .await
        {
            tracing::warn!(error = %e, "could not restore the WAL auto-checkpoint");
        }
        let checkpoint = self.checkpoint.clone();
        tokio::spawn(async move {
            // PASSIVE: waits for no one; what readers still need is copied by a later one.
            if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(&checkpoint)
                .await
            {
                tracing::warn!(error = %e, "WAL checkpoint after an upload failed");
            }
        });
    }

    async fn request(
        &self,
        c: &mut SqliteConnection,
        rid: RequestId,
        owner: &Owner,
    ) -> StoreResult<Option<RequestRow>> {
        sqlx::query(&format!(
            "SELECT {REQUEST_COLUMNS} FROM requests WHERE id = ? AND owner = ? AND deleting_at IS NULL"
        ))
        .bind(id(rid))
        .bind(owner.as_str())
        .fetch_optional(c)
        .await?
        .map(|r| rows::request(&r))
        .transpose()
    }

    async fn request_head(
        &self,
        rid: RequestId,
        owner: &Owner,
    ) -> StoreResult<Option<RequestHead>> {
        sqlx::query(
            "SELECT r.status, r.updated_at, r.total_images, d.updated_at AS d_updated, \
             d.attempts, d.state \
             FROM requests r LEFT JOIN webhook_deliveries d ON d.request_id = r.id \
             WHERE r.id = ? AND r.owner = ? AND r.deleting_at IS NULL",
        )
        .bind(id(rid))
        .bind(owner.as_str())
        .fetch_optional(&self.read)
        .await?
        .map(|r| rows::request_head(&r))
        .transpose()
    }

    async fn webhook(
        &self,
        c: &mut SqliteConnection,
        rid: RequestId,
    ) -> StoreResult<Option<WebhookRow>> {
        sqlx::query(
            "SELECT id, url, state, attempts, last_status_code, last_error, next_attempt_at, \
             delivered_at FROM webhook_deliveries WHERE request_id = ?",
        )
        .bind(id(rid))
        .fetch_optional(c)
        .await?
        .map(|r| rows::webhook(&r))
        .transpose()
    }

    // Keyset pages on `UNIQUE (request_id, ordinal)` and `UNIQUE (request_id, position)`, so
    // every page is one index range scan.
    async fn output_urls(
        &self,
        c: &mut SqliteConnection,
        rid: RequestId,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<(i64, Option<String>)>> {
        sqlx::query(
            "SELECT ordinal, output_url FROM images WHERE request_id = ? AND ordinal > ? \
             ORDER BY ordinal LIMIT ?",
        )
        .bind(id(rid))
        .bind(after)
        .bind(limit)
        .fetch_all(c)
        .await?
        .iter()
        .map(rows::output_url)
        .collect()
    }

    async fn products(
        &self,
        c: &mut SqliteConnection,
        rid: RequestId,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<ProductRow>> {
        sqlx::query(
            "SELECT id, position, serial_number, product_name, status FROM products \
             WHERE request_id = ? AND position > ? ORDER BY position LIMIT ?",
        )
        .bind(id(rid))
        .bind(after)
        .bind(limit)
        .fetch_all(c)
        .await?
        .iter()
        .map(rows::product)
        .collect()
    }

    async fn images(
        &self,
        c: &mut SqliteConnection,
        rid: RequestId,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<(i64, ImageRow)>> {
        sqlx::query(
            "SELECT ordinal, product_id, position, input_url, status, output_url, error, \
             error_code, attempts, codec, bytes_in, bytes_out, width, height, output_format, \
             color_profile, note, output_key, input_format FROM images \
             WHERE request_id = ? AND ordinal > ? \
             ORDER BY ordinal LIMIT ?",
        )
        .bind(id(rid))
        .bind(after)
        .bind(limit)
        .fetch_all(c)
        .await?
        .iter()
        .map(rows::image)
        .collect()
    }

    async fn count_requests(&self) -> StoreResult<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM requests")
            .fetch_one(&self.read)
            .await?)
    }

    async fn queue_depth(&self) -> StoreResult<(i64, i64)> {
        Ok(sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM images WHERE status = 'pending' AND duplicate_of IS NULL), \
                    (SELECT COUNT(*) FROM images WHERE status = 'processing')",
        )
        .fetch_one(&self.read)
        .await?)
    }

    async fn next_runnable_at(&self) -> StoreResult<Option<DateTime<Utc>>> {
        let row = sqlx::query(
            "SELECT MIN(next_attempt_at) AS t FROM images \
             WHERE status = 'pending' AND duplicate_of IS NULL",
        )
        .fetch_one(&self.read)
        .await?;
        row.opt_time("t")
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
            "SELECT {REQUEST_COLUMNS} FROM requests WHERE owner = ?1 AND deleting_at IS NULL \
             AND (created_at, id) < (?2, ?3) AND (?4 IS NULL OR status = ?4) \
             ORDER BY created_at DESC, id DESC LIMIT ?5"
        ))
        .bind(owner.as_str())
        .bind(ms(after.created_at))
        .bind(id(after.id))
        .bind(status.map(Status::as_str))
        .bind(limit)
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(rows::request)
        .collect()
    }

    /// The one writer connection holds the lock already.
    async fn lock_request(
        &self,
        c: &mut SqliteConnection,
        rid: RequestId,
        owner: &Owner,
    ) -> StoreResult<Option<RequestRow>> {
        self.request(c, rid, owner).await
    }

    async fn cancel_pending_duplicates(
        &self,
        c: &mut SqliteConnection,
        rid: RequestId,
        now: DateTime<Utc>,
    ) -> StoreResult<u64> {
        let r = sqlx::query(
            "UPDATE images SET status = 'cancelled', updated_at = ?2 \
             WHERE request_id = ?1 AND status = 'pending' AND duplicate_of IN \
             (SELECT id FROM images WHERE request_id = ?1 AND status = 'pending' \
              AND duplicate_of IS NULL)",
        )
        .bind(id(rid))
        .bind(ms(now))
        .execute(c)
        .await?;
        Ok(r.rows_affected())
    }

    async fn cancel_pending_originals(
        &self,
        c: &mut SqliteConnection,
        rid: RequestId,
        now: DateTime<Utc>,
    ) -> StoreResult<u64> {
        let r = sqlx::query(
            "UPDATE images SET status = 'cancelled', updated_at = ?2 \
             WHERE request_id = ?1 AND status = 'pending' AND duplicate_of IS NULL",
        )
        .bind(id(rid))
        .bind(ms(now))
        .execute(c)
        .await?;
        Ok(r.rows_affected())
    }

    async fn cancel_products(
        &self,
        c: &mut SqliteConnection,
        rid: RequestId,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE products SET status = 'cancelled', updated_at = ?2 \
             WHERE request_id = ?1 AND status IN ('pending', 'processing')",
        )
        .bind(id(rid))
        .bind(ms(now))
        .execute(c)
        .await?;
        Ok(())
    }

    async fn cancel_request(
        &self,
        c: &mut SqliteConnection,
        rid: RequestId,
        images: i64,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE requests SET status = 'cancelled', cancelled_images = cancelled_images + ?, \
             updated_at = ? WHERE id = ?",
        )
        .bind(images)
        .bind(ms(now))
        .bind(id(rid))
        .execute(c)
        .await?;
        Ok(())
    }

    async fn options_of(
        &self,
        c: &mut SqliteConnection,
        ids: &[RequestId],
    ) -> StoreResult<Vec<(RequestId, Option<ImageOptions>)>> {
        let ids: Vec<String> = ids.iter().map(|r| id(*r)).collect();
        sqlx::query("SELECT id, options FROM requests WHERE id IN (SELECT value FROM json_each(?))")
            .bind(json(&ids))
            .fetch_all(c)
            .await?
            .iter()
            .map(|r| Ok((rows::request_id(r, "id")?, rows::options(r, "options")?)))
            .collect()
    }

    async fn request_csv(
        &self,
        rid: RequestId,
        owner: &Owner,
    ) -> StoreResult<Option<Option<String>>> {
        let row = sqlx::query(
            "SELECT csv FROM requests WHERE id = ? AND owner = ? AND deleting_at IS NULL",
        )
        .bind(id(rid))
        .bind(owner.as_str())
        .fetch_optional(&self.read)
        .await?;
        row.map(|r| r.opt_text("csv")).transpose()
    }

    async fn cancelled_among(
        &self,
        c: &mut SqliteConnection,
        ids: &[RequestId],
    ) -> StoreResult<Vec<RequestId>> {
        let ids: Vec<String> = ids.iter().map(|r| id(*r)).collect();
        sqlx::query(
            "SELECT id FROM requests WHERE status = 'cancelled' \
             AND id IN (SELECT value FROM json_each(?))",
        )
        .bind(json(&ids))
        .fetch_all(c)
        .await?
        .iter()
        .map(|r| rows::request_id(r, "id"))
        .collect()
    }

    async fn cancel_claimed(
        &self,
        c: &mut SqliteConnection,
        jobs: &[i64],
        worker: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<u64> {
        let r = sqlx::query(
            "UPDATE images SET status = 'cancelled', attempts = MAX(attempts - 1, 0), \
             locked_by = NULL, locked_until = NULL, updated_at = ?3 \
             WHERE id IN (SELECT value FROM json_each(?1)) AND status = 'processing' \
             AND locked_by = ?2",
        )
        .bind(json(jobs))
        .bind(worker)
        .bind(ms(now))
        .execute(c)
        .await?;
        Ok(r.rows_affected())
    }

    async fn cancel_duplicates_of(
        &self,
        c: &mut SqliteConnection,
        originals: &[i64],
        now: DateTime<Utc>,
    ) -> StoreResult<u64> {
        let r = sqlx::query(
            "UPDATE images SET status = 'cancelled', updated_at = ?2 \
             WHERE duplicate_of IN (SELECT value FROM json_each(?1)) AND status = 'pending'",
        )
        .bind(json(originals))
        .bind(ms(now))
        .execute(c)
        .await?;
        Ok(r.rows_affected())
    }

    async fn requeue_failed(
        &self,
        c: &mut SqliteConnection,
        rid: RequestId,
        codes: Option<&[ErrorCode]>,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<i64>> {
        let codes = codes.map(|cs| json(&cs.iter().map(|c| c.as_str()).collect::<Vec<_>>()));
        sqlx::query(&format!(
            "UPDATE images SET {REQUEUED_COLUMNS} WHERE request_id = ?1 AND status = 'failed' \
             AND (?3 IS NULL OR error_code IN (SELECT value FROM json_each(?3))) \
             RETURNING product_id"
        ))
        .bind(id(rid))
        .bind(ms(now))
        .bind(codes)
        .fetch_all(c)
        .await?
        .iter()
        .map(|r| r.int("product_id"))
        .collect()
    }

    async fn requeue_cancelled(
        &self,
        c: &mut SqliteConnection,
        rid: RequestId,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<i64>> {
        sqlx::query(&format!(
            "UPDATE images SET {REQUEUED_COLUMNS} WHERE request_id = ?1 AND status = 'cancelled' \
             RETURNING product_id"
        ))
        .bind(id(rid))
        .bind(ms(now))
        .fetch_all(c)
        .await?
        .iter()
        .map(|r| r.int("product_id"))
        .collect()
    }

    async fn reopen_products(
        &self,
        c: &mut SqliteConnection,
        ids: &[i64],
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE products SET status = 'processing', updated_at = ?2 \
             WHERE id IN (SELECT value FROM json_each(?1))",
        )
        .bind(json(ids))
        .bind(ms(now))
        .execute(c)
        .await?;
        Ok(())
    }

    async fn reopen_request(
        &self,
        c: &mut SqliteConnection,
        rid: RequestId,
        uncancelled: i64,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE requests SET status = 'processing', \
             cancelled_images = cancelled_images - ?, updated_at = ? WHERE id = ?",
        )
        .bind(uncancelled)
        .bind(ms(now))
        .bind(id(rid))
        .execute(c)
        .await?;
        Ok(())
    }

    /// Its attempts go with it (`ON DELETE CASCADE`).
    async fn delete_delivery(&self, c: &mut SqliteConnection, rid: RequestId) -> StoreResult<()> {
        sqlx::query("DELETE FROM webhook_deliveries WHERE request_id = ?")
            .bind(id(rid))
            .execute(c)
            .await?;
        Ok(())
    }

    async fn claim_images(
        &self,
        c: &mut SqliteConnection,
        worker: &str,
        limit: i64,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<ImageJob>> {
        sqlx::query(
            "UPDATE images SET status = 'processing', attempts = attempts + 1, locked_by = ?1, \
             claimed_by = ?1, locked_until = ?2, updated_at = ?3 \
             WHERE id IN (SELECT id FROM images WHERE status = 'pending' AND duplicate_of IS NULL \
                          AND next_attempt_at <= ?3 ORDER BY ordinal, id LIMIT ?4) \
             RETURNING id, request_id, product_id, ordinal, position, input_url, attempts",
        )
        .bind(worker)
        .bind(ms(until))
        .bind(ms(now))
        .bind(limit)
        .fetch_all(c)
        .await?
        .iter()
        .map(rows::image_job)
        .collect()
    }

    async fn start_products(
        &self,
        c: &mut SqliteConnection,
        ids: &[i64],
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        start(c, "products", ids.iter().copied(), now).await
    }

    async fn start_requests(
        &self,
        c: &mut SqliteConnection,
        ids: &[RequestId],
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        start(c, "requests", ids.iter().map(|&r| id(r)), now).await
    }

    async fn renew_images(&self, worker: &str, until: DateTime<Utc>) -> StoreResult<u64> {
        let r = sqlx::query(
            "UPDATE images SET locked_until = ? WHERE locked_by = ? AND status = 'processing'",
        )
        .bind(ms(until))
        .bind(worker)
        .execute(&self.write)
        .await?;
        Ok(r.rows_affected())
    }

    async fn release_images(&self, worker: &str, now: DateTime<Utc>) -> StoreResult<u64> {
        let r = sqlx::query(
            "UPDATE images SET status = 'pending', attempts = MAX(attempts - 1, 0), \
             locked_by = NULL, locked_until = NULL, next_attempt_at = ?1, updated_at = ?1 \
             WHERE locked_by = ?2 AND status = 'processing'",
        )
        .bind(ms(now))
        .bind(worker)
        .execute(&self.write)
        .await?;
        Ok(r.rows_affected())
    }

    async fn reclaim_images(&self, now: DateTime<Utc>) -> StoreResult<u64> {
        let r = sqlx::query(
            "UPDATE images SET status = 'pending', locked_by = NULL, locked_until = NULL, \
             next_attempt_at = ?1, updated_at = ?1 \
             WHERE status = 'processing' AND locked_until < ?1",
        )
        .bind(ms(now))
        .execute(&self.write)
        .await?;
        Ok(r.rows_affected())
    }

    async fn requeue_image(
        &self,
        c: &mut SqliteConnection,
        job: &ImageJob,
        worker: &str,
        failure: &Failure,
        at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let r = sqlx::query(
            "UPDATE images SET status = 'pending', error = ?, error_code = ?, next_attempt_at = ?, \
             locked_by = NULL, locked_until = NULL, updated_at = ? \
             WHERE id = ? AND status = 'processing' AND locked_by = ?",
        )
        .bind(&failure.message)
        .bind(failure.code.as_str())
        .bind(ms(at))
        .bind(ms(now))
        .bind(job.id)
        .bind(worker)
        .execute(c)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn finish_image(
        &self,
        c: &mut SqliteConnection,
        job: &ImageJob,
        worker: &str,
        result: ImageResult<'_>,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let sql = format!(
            "UPDATE images SET {RESULT_COLUMNS}, locked_by = NULL, locked_until = NULL \
             WHERE id = ? AND status = 'processing' AND locked_by = ?"
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
        c: &mut SqliteConnection,
        original: i64,
        result: ImageResult<'_>,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<i64>> {
        let sql = format!(
            "UPDATE images SET {RESULT_COLUMNS} WHERE duplicate_of = ? AND status = 'pending' \
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
        c: &mut SqliteConnection,
        pid: i64,
        delta: Delta,
        now: DateTime<Utc>,
    ) -> StoreResult<Counts> {
        let row = sqlx::query(
            "UPDATE products SET completed_images = completed_images + ?, \
             failed_images = failed_images + ?, updated_at = ? WHERE id = ? \
             RETURNING total_images, completed_images, failed_images",
        )
        .bind(delta.completed)
        .bind(delta.failed)
        .bind(ms(now))
        .bind(pid)
        .fetch_one(c)
        .await?;
        rows::counts(&row)
    }

    async fn product_outputs(
        &self,
        c: &mut SqliteConnection,
        pid: i64,
    ) -> StoreResult<Vec<Option<String>>> {
        Ok(sqlx::query_scalar(
            "SELECT output_url FROM images WHERE product_id = ? ORDER BY position",
        )
        .bind(pid)
        .fetch_all(c)
        .await?)
    }

    async fn finish_product(
        &self,
        c: &mut SqliteConnection,
        pid: i64,
        status: Status,
        outputs_json: &str,
    ) -> StoreResult<()> {
        sqlx::query("UPDATE products SET status = ?, output_image_urls = ? WHERE id = ?")
            .bind(status.as_str())
            .bind(outputs_json)
            .bind(pid)
            .execute(c)
            .await?;
        Ok(())
    }

    async fn add_to_request(
        &self,
        c: &mut SqliteConnection,
        rid: RequestId,
        delta: Delta,
        now: DateTime<Utc>,
    ) -> StoreResult<Tally> {
        let row = sqlx::query(
            "UPDATE requests SET completed_images = completed_images + ?, \
             failed_images = failed_images + ?, bytes_in = bytes_in + ?, \
             bytes_out = bytes_out + ?, updated_at = ? WHERE id = ? \
             RETURNING total_images, completed_images, failed_images, status, webhook_url",
        )
        .bind(delta.completed)
        .bind(delta.failed)
        .bind(delta.bytes_in)
        .bind(delta.bytes_out)
        .bind(ms(now))
        .bind(id(rid))
        .fetch_one(c)
        .await?;
        rows::tally(&row)
    }

    async fn finish_request(
        &self,
        c: &mut SqliteConnection,
        rid: RequestId,
        status: Status,
    ) -> StoreResult<()> {
        sqlx::query("UPDATE requests SET status = ? WHERE id = ?")
            .bind(status.as_str())
            .bind(id(rid))
            .execute(c)
            .await?;
        Ok(())
    }

    async fn queue_delivery(
        &self,
        c: &mut SqliteConnection,
        rid: RequestId,
        url: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO webhook_deliveries (id, request_id, url, next_attempt_at, event_at, \
             created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4, ?4, ?4) \
             ON CONFLICT (request_id) DO NOTHING",
        )
        .bind(Uuid::now_v7().to_string())
        .bind(id(rid))
        .bind(url)
        .bind(ms(now))
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
            "UPDATE webhook_deliveries SET attempts = attempts + 1, locked_by = ?1, \
             locked_until = ?2, updated_at = ?3 \
             WHERE id IN (SELECT id FROM webhook_deliveries WHERE state = 'pending' \
                          AND next_attempt_at <= ?3 AND (locked_until IS NULL OR locked_until < ?3) \
                          ORDER BY next_attempt_at LIMIT ?4) \
             RETURNING id, request_id, url, attempts, payload, event_at, \
               (SELECT owner FROM requests WHERE requests.id = webhook_deliveries.request_id) AS owner",
        )
        .bind(worker)
        .bind(ms(until))
        .bind(ms(now))
        .bind(limit)
        .fetch_all(&self.write)
        .await?
        .iter()
        .map(rows::delivery_job)
        .collect()
    }

    async fn set_delivery_payload(&self, did: Uuid, payload: &str) -> StoreResult<()> {
        sqlx::query("UPDATE webhook_deliveries SET payload = ? WHERE id = ? AND payload IS NULL")
            .bind(payload)
            .bind(did.to_string())
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn release_deliveries(&self, worker: &str) -> StoreResult<u64> {
        let r = sqlx::query(
            "UPDATE webhook_deliveries SET attempts = MAX(attempts - 1, 0), locked_by = NULL, \
             locked_until = NULL WHERE locked_by = ? AND state = 'pending'",
        )
        .bind(worker)
        .execute(&self.write)
        .await?;
        Ok(r.rows_affected())
    }

    async fn update_delivery(
        &self,
        c: &mut SqliteConnection,
        job: &DeliveryJob,
        worker: &str,
        attempt: &AttemptRecord,
        u: DeliveryUpdate,
    ) -> StoreResult<bool> {
        let r = sqlx::query(
            "UPDATE webhook_deliveries SET state = ?, next_attempt_at = ?, delivered_at = ?, \
             last_status_code = ?, last_error = ?, locked_by = NULL, locked_until = NULL, \
             updated_at = ? WHERE id = ? AND locked_by = ? AND state = 'pending'",
        )
        .bind(u.state.as_str())
        .bind(ms(u.next_attempt_at))
        .bind(u.delivered_at.map(ms))
        .bind(attempt.status_code.map(i64::from))
        .bind(&attempt.error)
        .bind(ms(attempt.at))
        .bind(job.id.to_string())
        .bind(worker)
        .execute(c)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn insert_attempt(
        &self,
        c: &mut SqliteConnection,
        did: Uuid,
        attempt: &AttemptRecord,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO webhook_attempts (delivery_id, attempted_at, status_code, error, \
             duration_ms) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(did.to_string())
        .bind(ms(attempt.at))
        .bind(attempt.status_code.map(i64::from))
        .bind(&attempt.error)
        .bind(attempt.duration_ms)
        .execute(c)
        .await?;
        Ok(())
    }

    /// The one writer connection holds the lock already.
    async fn delivery_state(
        &self,
        c: &mut SqliteConnection,
        rid: RequestId,
    ) -> StoreResult<Option<DeliveryState>> {
        let state: Option<String> =
            sqlx::query_scalar("SELECT state FROM webhook_deliveries WHERE request_id = ?")
                .bind(id(rid))
                .fetch_optional(c)
                .await?;
        state.as_deref().map(rows::delivery_state).transpose()
    }

    async fn requeue_delivery(
        &self,
        c: &mut SqliteConnection,
        rid: RequestId,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?1, \
             updated_at = ?1 WHERE request_id = ?2 AND state = 'failed'",
        )
        .bind(ms(now))
        .bind(id(rid))
        .execute(c)
        .await?;
        Ok(())
    }

    async fn webhook_attempts(
        &self,
        rid: RequestId,
    ) -> StoreResult<Vec<(Option<i64>, Option<String>)>> {
        sqlx::query(
            "SELECT a.status_code, a.error FROM webhook_attempts a \
             JOIN webhook_deliveries d ON d.id = a.delivery_id WHERE d.request_id = ? ORDER BY a.id",
        )
        .bind(id(rid))
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(rows::attempt)
        .collect()
    }

    async fn insert_setting_if_absent(&self, key: &str, value: &str) -> StoreResult<()> {
        sqlx::query("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING")
            .bind(key)
            .bind(value)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn setting(&self, key: &str) -> StoreResult<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT value FROM settings WHERE key = ?")
                .bind(key)
                .fetch_optional(&self.write)
                .await?,
        )
    }

    // Retention and reports (issue 18)

    /// The one writer connection serialises claims: no two run at once.
    async fn claim_deletions(
        &self,
        c: &mut SqliteConnection,
        finished: &[Status],
        before: DateTime<Utc>,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
        limit: i64,
    ) -> StoreResult<Vec<RequestId>> {
        let finished: Vec<&str> = finished.iter().map(|s| s.as_str()).collect();
        sqlx::query(
            "UPDATE requests SET deleting_at = COALESCE(deleting_at, ?1), janitor_until = ?2 \
             WHERE id IN (SELECT id FROM requests \
                 WHERE (deleting_at IS NOT NULL AND janitor_until < ?1) \
                    OR (deleting_at IS NULL AND updated_at < ?3 \
                        AND status IN (SELECT value FROM json_each(?4))) \
                 ORDER BY updated_at LIMIT ?5) \
             RETURNING id",
        )
        .bind(ms(now))
        .bind(ms(until))
        .bind(ms(before))
        .bind(serde_json::to_string(&finished).unwrap_or_default())
        .bind(limit)
        .fetch_all(c)
        .await?
        .iter()
        .map(|r| rows::request_id(r, "id"))
        .collect()
    }

    async fn insert_tombstones(
        &self,
        c: &mut SqliteConnection,
        ids: &[RequestId],
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let ids: Vec<String> = ids.iter().map(|r| id(*r)).collect();
        sqlx::query(
            "INSERT INTO tombstones (request_id, owner, deleted_at) \
             SELECT id, owner, ?1 FROM requests WHERE id IN (SELECT value FROM json_each(?2)) \
             ON CONFLICT (request_id) DO NOTHING",
        )
        .bind(ms(now))
        .bind(serde_json::to_string(&ids).unwrap_or_default())
        .execute(c)
        .await?;
        Ok(())
    }

    async fn delete_request(&self, c: &mut SqliteConnection, rid: RequestId) -> StoreResult<u64> {
        let r = sqlx::query("DELETE FROM requests WHERE id = ? AND deleting_at IS NOT NULL")
            .bind(id(rid))
            .execute(c)
            .await?;
        Ok(r.rows_affected())
    }

    async fn tombstone(&self, rid: RequestId, owner: &Owner) -> StoreResult<Option<DateTime<Utc>>> {
        let row =
            sqlx::query("SELECT deleted_at FROM tombstones WHERE request_id = ? AND owner = ?")
                .bind(id(rid))
                .bind(owner.as_str())
                .fetch_optional(&self.read)
                .await?;
        row.map(|r| r.time("deleted_at")).transpose()
    }

    async fn drop_tombstones(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        let r = sqlx::query("DELETE FROM tombstones WHERE deleted_at < ?")
            .bind(ms(before))
            .execute(&self.write)
            .await?;
        Ok(r.rows_affected())
    }
}

/// `[[serial, name, input URLs as a JSON array, number of URLs], ...]`, in CSV order.
fn products_json(products: &[crate::csv_input::ParsedProduct]) -> String {
    let rows: Vec<_> = products
        .iter()
        .map(|p| {
            let urls: Vec<&str> = p.input_urls.iter().map(|u| u.as_str()).collect();
            (
                p.serial_number.get(),
                p.product_name.as_str(),
                serde_json::to_string(&urls).unwrap_or_default(),
                p.input_urls.len(),
            )
        })
        .collect();
    serde_json::to_string(&rows).unwrap_or_default()
}

/// `[[product position, position, URL, ordinal of the original or null], ...]`, by ordinal.
fn images_json(images: &[NewImage<'_>]) -> String {
    let rows: Vec<_> = images
        .iter()
        .map(|i| {
            (
                i.product_position,
                i.position,
                i.url,
                i.duplicate_of_ordinal,
            )
        })
        .collect();
    serde_json::to_string(&rows).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::types::tests::request;

    /// An image's request, product position, position and URL; its original's URL and request.
    type LinkedImage = (String, i64, i64, String, Option<String>, Option<String>);

    #[tokio::test]
    async fn bulk_loads_link_their_rows_and_leave_checkpoints_on() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/db.sqlite", dir.path().display());
        let store = SqliteStore::connect(&url, true).await.unwrap();
        store.migrate().await.unwrap();
        for _ in 0..2 {
            let new = request(&[&["http://a/1", "http://a/2"], &["http://a/3", "http://a/1"]]);
            let images = new.images();
            let mut tx = store.begin().await.unwrap();
            store
                .insert_request(&mut *tx, &new, images.len(), Utc::now())
                .await
                .unwrap();
            store
                .load_rows(&mut *tx, &new, &images, Utc::now())
                .await
                .unwrap();
            tx.commit().await.unwrap();
            store.after_upload().await;
        }

        let autocheckpoint: i64 = sqlx::query_scalar("PRAGMA wal_autocheckpoint")
            .fetch_one(&store.write)
            .await
            .unwrap();
        assert_eq!(autocheckpoint, 1000);

        let rows: Vec<LinkedImage> = sqlx::query_as(
            "SELECT i.request_id, p.position, i.position, i.input_url, o.input_url, \
                 o.request_id FROM images i JOIN products p ON p.id = i.product_id \
                 AND p.request_id = i.request_id \
                 LEFT JOIN images o ON o.id = i.duplicate_of ORDER BY i.id",
        )
        .fetch_all(&store.read)
        .await
        .unwrap();
        assert_eq!(rows.len(), 8);
        for (n, (request, product, position, url, original, original_request)) in
            rows.iter().enumerate()
        {
            assert_eq!((*product, *position), ((n % 4 / 2) as i64, (n % 2) as i64));
            assert_eq!(
                url,
                ["http://a/1", "http://a/2", "http://a/3", "http://a/1"][n % 4]
            );
            if n % 4 == 3 {
                assert_eq!(original.as_deref(), Some("http://a/1"));
                assert_eq!(original_request.as_ref(), Some(request));
            } else {
                assert_eq!(original, &None);
            }
        }
        let (name, urls): (String, String) = sqlx::query_as(
            "SELECT product_name, input_image_urls FROM products ORDER BY id LIMIT 1",
        )
        .fetch_one(&store.read)
        .await
        .unwrap();
        assert_eq!(name, "P\"0");
        assert_eq!(urls, r#"["http://a/1","http://a/2"]"#);
    }
}
