//! SQLite backend: the embedded default. One writer connection serialises writes in process (SQLite
//! allows one writer anyway, and a single connection never meets SQLITE_BUSY on lock upgrades);
//! readers use their own pool and see WAL snapshots.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};

use super::*;
use crate::domain::RequestId;

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

fn from_ms(v: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(v).unwrap_or_default()
}

fn parse_uuid(s: &str) -> Result<uuid::Uuid, StoreError> {
    uuid::Uuid::parse_str(s)
        .map_err(|_| StoreError::Other(anyhow::anyhow!("bad uuid {s:?} in database")))
}

fn parse_id(s: &str) -> Result<RequestId, StoreError> {
    RequestId::parse(s)
        .ok_or_else(|| StoreError::Other(anyhow::anyhow!("bad request id {s:?} in database")))
}

impl SqliteStore {
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Other(anyhow::anyhow!("invalid sqlite URL {url:?}: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        if let Some(dir) = opts.get_filename().parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::Other(anyhow::anyhow!("cannot create {}: {e}", dir.display()))
                })?;
            }
        }
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(opts.clone())
            .await?;
        let checkpoint = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(opts.clone())
            .await?;
        let read = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts.read_only(true))
            .await?;
        Ok(Self {
            write,
            read,
            checkpoint,
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

    pub async fn create_request(
        &self,
        new: &NewRequest,
        now: DateTime<Utc>,
    ) -> StoreResult<CreateOutcome> {
        let mut tx = self.write.begin().await?;
        if let Some(key) = &new.idempotency_key {
            let existing = sqlx::query(
                "SELECT id, upload_digest FROM requests WHERE owner = ? AND idempotency_key = ?",
            )
            .bind(&new.owner)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = existing {
                let digest: String = row.try_get("upload_digest")?;
                return Ok(if digest == new.upload_digest {
                    CreateOutcome::Replayed(parse_id(row.try_get("id")?)?)
                } else {
                    CreateOutcome::KeyReused
                });
            }
        }
        let id = new.id.to_string();
        let now = ms(now);
        let images = new.images();
        sqlx::query(
            "INSERT INTO requests (id, owner, idempotency_key, upload_digest, webhook_url, \
             total_products, total_images, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&id)
        .bind(&new.owner)
        .bind(&new.idempotency_key)
        .bind(&new.upload_digest)
        .bind(&new.webhook_url)
        .bind(new.products.len() as i64)
        .bind(images.len() as i64)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?;

        // One statement a table, its rows in one JSON array bound once: binding eight values a
        // row and returning each row's id cost as much as SQLite's own work for a large upload.
        // The ids are given rather than returned: this transaction holds the write lock (taken
        // by the INSERT above), so nothing else can take them, and images need their product's.
        let (product_base, image_base): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT COALESCE(MAX(id), 0) + 1 FROM products), \
                    (SELECT COALESCE(MAX(id), 0) + 1 FROM images)",
        )
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO products (id, request_id, position, serial_number, product_name, \
             input_image_urls, total_images, created_at, updated_at) \
             SELECT ?1 + key, ?2, key, value ->> 0, value ->> 1, value ->> 2, value ->> 3, ?3, ?3 \
             FROM json_each(?4)",
        )
        .bind(product_base)
        .bind(&id)
        .bind(now)
        .bind(products_json(&new.products))
        .execute(&mut *tx)
        .await?;
        // A duplicate's original has a lower ordinal, so its id is known the same way.
        sqlx::query(
            "INSERT INTO images (id, request_id, product_id, ordinal, position, input_url, \
             duplicate_of, next_attempt_at, created_at, updated_at) \
             SELECT ?1 + key, ?2, ?3 + (value ->> 0), key, value ->> 1, value ->> 2, \
             ?1 + (value ->> 3), ?4, ?4, ?4 FROM json_each(?5)",
        )
        .bind(image_base)
        .bind(&id)
        .bind(product_base)
        .bind(now)
        .bind(images_json(&images))
        .execute(&mut *tx)
        .await?;
        // An upload writes thousands of pages to the WAL, so its commit passes the
        // auto-checkpoint threshold, and the checkpoint would run inside the commit, on the
        // client's time: copying every page into the database file and syncing it (tens of
        // milliseconds for a large upload). The commit is durable without it, so it runs on
        // its own connection just after, while the client already has its answer.
        sqlx::query("PRAGMA wal_autocheckpoint = 0")
            .execute(&mut *tx)
            .await?;
        let committed = tx.commit().await;
        // Not a reason to fail an upload that may have committed: the checkpoint spawned
        // below, and the next upload's restore, keep the WAL from growing meanwhile.
        if let Err(e) = self.restore_autocheckpoint().await {
            tracing::warn!(error = %e, "could not restore the WAL auto-checkpoint");
        }
        committed?;
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
        Ok(CreateOutcome::Created(new.id))
    }

    /// Gives the writer back its automatic checkpoints (SQLite's default threshold), which
    /// small writes rely on. The pool's one connection is the one the upload committed on.
    async fn restore_autocheckpoint(&self) -> StoreResult<()> {
        sqlx::query("PRAGMA wal_autocheckpoint = 1000")
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn request_on(
        conn: &mut sqlx::SqliteConnection,
        id: RequestId,
        owner: &str,
    ) -> StoreResult<Option<RequestRow>> {
        let row = sqlx::query(
            "SELECT id, status, webhook_url, total_products, total_images, completed_images, \
             failed_images, created_at, updated_at FROM requests WHERE id = ? AND owner = ?",
        )
        .bind(id.to_string())
        .bind(owner)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(RequestRow {
            id: parse_id(r.try_get("id")?)?,
            status: parse_status(r.try_get("status")?)?,
            webhook_url: r.try_get("webhook_url")?,
            total_products: r.try_get("total_products")?,
            total_images: r.try_get("total_images")?,
            completed_images: r.try_get("completed_images")?,
            failed_images: r.try_get("failed_images")?,
            created_at: from_ms(r.try_get("created_at")?),
            updated_at: from_ms(r.try_get("updated_at")?),
        }))
    }

    pub async fn request_detail(
        &self,
        id: RequestId,
        owner: &str,
    ) -> StoreResult<Option<RequestDetail>> {
        // One read transaction: a WAL snapshot, so counts, products and images agree.
        let mut tx = self.read.begin().await?;
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
        let mut tx = self.write.begin().await?;
        let rows = sqlx::query(
            "UPDATE images SET status = 'processing', attempts = attempts + 1, locked_by = ?, \
             claimed_by = ?, locked_until = ?, updated_at = ? \
             WHERE id IN (SELECT id FROM images WHERE status = 'pending' AND duplicate_of IS NULL \
                          AND next_attempt_at <= ? ORDER BY ordinal, id LIMIT ?) \
             RETURNING id, request_id, product_id, ordinal, position, input_url, attempts",
        )
        .bind(worker)
        .bind(worker)
        .bind(ms(lease_until(now, lease)))
        .bind(ms(now))
        .bind(ms(now))
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let mut jobs = Vec::with_capacity(rows.len());
        for r in rows {
            jobs.push(ImageJob {
                id: r.try_get("id")?,
                request_id: parse_id(r.try_get("request_id")?)?,
                product_id: r.try_get("product_id")?,
                ordinal: r.try_get("ordinal")?,
                position: r.try_get("position")?,
                input_url: r.try_get("input_url")?,
                attempts: r.try_get("attempts")?,
            });
        }
        jobs.sort_by_key(|j| (j.ordinal, j.id));
        if !jobs.is_empty() {
            let mut qb: QueryBuilder<Sqlite> =
                QueryBuilder::new("UPDATE products SET status = 'processing', updated_at = ");
            qb.push_bind(ms(now))
                .push(" WHERE status = 'pending' AND id IN (");
            let mut sep = qb.separated(", ");
            for j in &jobs {
                sep.push_bind(j.product_id);
            }
            qb.push(")");
            qb.build().execute(&mut *tx).await?;
            let mut qb: QueryBuilder<Sqlite> =
                QueryBuilder::new("UPDATE requests SET status = 'processing', updated_at = ");
            qb.push_bind(ms(now))
                .push(" WHERE status = 'pending' AND id IN (");
            let mut sep = qb.separated(", ");
            for j in &jobs {
                sep.push_bind(j.request_id.to_string());
            }
            qb.push(")");
            qb.build().execute(&mut *tx).await?;
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
            "UPDATE images SET locked_until = ? WHERE locked_by = ? AND status = 'processing'",
        )
        .bind(ms(lease_until(now, lease)))
        .bind(worker)
        .execute(&self.write)
        .await?;
        Ok(r.rows_affected())
    }

    pub async fn release(&self, worker: &str, now: DateTime<Utc>) -> StoreResult<u64> {
        // The interrupted attempt does not count against the image.
        let r = sqlx::query(
            "UPDATE images SET status = 'pending', attempts = MAX(attempts - 1, 0), locked_by = NULL, \
             locked_until = NULL, next_attempt_at = ?, updated_at = ? \
             WHERE locked_by = ? AND status = 'processing'",
        )
        .bind(ms(now))
        .bind(ms(now))
        .bind(worker)
        .execute(&self.write)
        .await?;
        sqlx::query(
            "UPDATE webhook_deliveries SET attempts = MAX(attempts - 1, 0), locked_by = NULL, \
             locked_until = NULL WHERE locked_by = ? AND state = 'pending'",
        )
        .bind(worker)
        .execute(&self.write)
        .await?;
        Ok(r.rows_affected())
    }

    pub async fn reclaim_expired(&self, now: DateTime<Utc>) -> StoreResult<u64> {
        let r = sqlx::query(
            "UPDATE images SET status = 'pending', locked_by = NULL, locked_until = NULL, \
             next_attempt_at = ?, updated_at = ? \
             WHERE status = 'processing' AND locked_until < ?",
        )
        .bind(ms(now))
        .bind(ms(now))
        .bind(ms(now))
        .execute(&self.write)
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
            "UPDATE webhook_deliveries SET attempts = attempts + 1, locked_by = ?, locked_until = ?, \
             updated_at = ? \
             WHERE id IN (SELECT id FROM webhook_deliveries WHERE state = 'pending' \
                          AND next_attempt_at <= ? AND (locked_until IS NULL OR locked_until < ?) \
                          ORDER BY next_attempt_at LIMIT ?) \
             RETURNING id, request_id, url, attempts, payload, event_at, \
               (SELECT owner FROM requests WHERE requests.id = webhook_deliveries.request_id) AS owner",
        )
        .bind(worker)
        .bind(ms(lease_until(now, lease)))
        .bind(ms(now))
        .bind(ms(now))
        .bind(ms(now))
        .bind(limit)
        .fetch_all(&self.write)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(DeliveryJob {
                    id: parse_uuid(r.try_get("id")?)?,
                    request_id: parse_id(r.try_get("request_id")?)?,
                    owner: r.try_get("owner")?,
                    url: r.try_get("url")?,
                    attempts: r.try_get("attempts")?,
                    payload: r.try_get("payload")?,
                    event_at: from_ms(r.try_get("event_at")?),
                })
            })
            .collect()
    }

    pub async fn set_delivery_payload(&self, id: uuid::Uuid, payload: &str) -> StoreResult<()> {
        sqlx::query("UPDATE webhook_deliveries SET payload = ? WHERE id = ? AND payload IS NULL")
            .bind(payload)
            .bind(id.to_string())
            .execute(&self.write)
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
            AttemptNext::Delivered => (DeliveryState::Delivered, attempt.at, Some(ms(attempt.at))),
            AttemptNext::Retry(at) => (DeliveryState::Pending, at, None),
            AttemptNext::Failed => (DeliveryState::Failed, attempt.at, None),
        };
        let mut tx = self.write.begin().await?;
        let r = sqlx::query(
            "UPDATE webhook_deliveries SET state = ?, next_attempt_at = ?, delivered_at = ?, \
             last_status_code = ?, last_error = ?, locked_by = NULL, locked_until = NULL, updated_at = ? \
             WHERE id = ? AND locked_by = ? AND state = 'pending'",
        )
        .bind(state.as_str())
        .bind(ms(next_at))
        .bind(delivered_at)
        .bind(attempt.status_code.map(i64::from))
        .bind(&attempt.error)
        .bind(ms(attempt.at))
        .bind(job.id.to_string())
        .bind(worker)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO webhook_attempts (delivery_id, attempted_at, status_code, error, duration_ms) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(job.id.to_string())
        .bind(ms(attempt.at))
        .bind(attempt.status_code.map(i64::from))
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
        let mut tx = self.write.begin().await?;
        let exists: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM requests WHERE id = ? AND owner = ?")
                .bind(id.to_string())
                .bind(owner)
                .fetch_optional(&mut *tx)
                .await?;
        if exists.is_none() {
            return Ok(None);
        }
        let state: Option<String> =
            sqlx::query_scalar("SELECT state FROM webhook_deliveries WHERE request_id = ?")
                .bind(id.to_string())
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
            "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?, \
             updated_at = ? WHERE request_id = ? AND state = 'failed'",
        )
        .bind(ms(now))
        .bind(ms(now))
        .bind(id.to_string())
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
             JOIN webhook_deliveries d ON d.id = a.delivery_id WHERE d.request_id = ? ORDER BY a.id",
        )
        .bind(id.to_string())
        .fetch_all(&self.read)
        .await?;
        rows.into_iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    pub async fn setting_or_insert(&self, key: &str, default: &str) -> StoreResult<String> {
        sqlx::query("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING")
            .bind(key)
            .bind(default)
            .execute(&self.write)
            .await?;
        Ok(
            sqlx::query_scalar("SELECT value FROM settings WHERE key = ?")
                .bind(key)
                .fetch_one(&self.write)
                .await?,
        )
    }

    pub async fn queue_depth(&self) -> StoreResult<(i64, i64)> {
        let pending: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM images WHERE status = 'pending' AND duplicate_of IS NULL",
        )
        .fetch_one(&self.read)
        .await?;
        let processing: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM images WHERE status = 'processing'")
                .fetch_one(&self.read)
                .await?;
        Ok((pending, processing))
    }

    pub async fn count_requests(&self) -> StoreResult<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM requests")
            .fetch_one(&self.read)
            .await?)
    }

    pub async fn next_runnable_at(&self) -> StoreResult<Option<DateTime<Utc>>> {
        let v: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(next_attempt_at) FROM images WHERE status = 'pending' AND duplicate_of IS NULL",
        )
        .fetch_one(&self.read)
        .await?;
        Ok(v.map(from_ms))
    }

    pub async fn settle_image(
        &self,
        job: &ImageJob,
        worker: &str,
        outcome: &JobOutcome,
        now: DateTime<Utc>,
    ) -> StoreResult<Settled> {
        let mut tx = self.write.begin().await?;
        let Some((status, delta)) = settled_status(outcome) else {
            let JobOutcome::Retry { error, at } = outcome else {
                unreachable!()
            };
            let r = sqlx::query(
                "UPDATE images SET status = 'pending', error = ?, next_attempt_at = ?, locked_by = NULL, \
                 locked_until = NULL, updated_at = ? \
                 WHERE id = ? AND status = 'processing' AND locked_by = ?",
            )
            .bind(error)
            .bind(ms(*at))
            .bind(ms(now))
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
            "UPDATE images SET status = ?, output_key = ?, output_url = ?, input_format = ?, codec = ?, \
             bytes_in = ?, bytes_out = ?, width = ?, height = ?, error = ?, locked_by = NULL, \
             locked_until = NULL, updated_at = ? \
             WHERE id = ? AND status = 'processing' AND locked_by = ?",
        )
        .bind(status.as_str())
        .bind(out.map(|o| &o.key))
        .bind(out.map(|o| &o.url))
        .bind(out.map(|o| &o.input_format))
        .bind(out.map(|o| &o.codec))
        .bind(out.map(|o| o.bytes_in))
        .bind(out.map(|o| o.bytes_out))
        .bind(out.map(|o| o.width))
        .bind(out.map(|o| o.height))
        .bind(error)
        .bind(ms(now))
        .bind(job.id)
        .bind(worker)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            return Ok(Settled::default());
        }
        let dup_products: Vec<i64> = sqlx::query_scalar(
            "UPDATE images SET status = ?, output_key = ?, output_url = ?, input_format = ?, codec = ?, \
             bytes_in = ?, bytes_out = ?, width = ?, height = ?, error = ?, updated_at = ? \
             WHERE duplicate_of = ? AND status = 'pending' RETURNING product_id",
        )
        .bind(status.as_str())
        .bind(out.map(|o| &o.key))
        .bind(out.map(|o| &o.url))
        .bind(out.map(|o| &o.input_format))
        .bind(out.map(|o| &o.codec))
        .bind(out.map(|o| o.bytes_in))
        .bind(out.map(|o| o.bytes_out))
        .bind(out.map(|o| o.width))
        .bind(out.map(|o| o.height))
        .bind(error)
        .bind(ms(now))
        .bind(job.id)
        .fetch_all(&mut *tx)
        .await?;

        let mut per_product: BTreeMap<i64, Delta> = BTreeMap::new();
        for pid in std::iter::once(job.product_id).chain(dup_products) {
            let d = per_product.entry(pid).or_default();
            d.completed += delta.completed;
            d.failed += delta.failed;
        }
        let mut total = Delta::default();
        for (pid, d) in &per_product {
            total.completed += d.completed;
            total.failed += d.failed;
            let row = sqlx::query(
                "UPDATE products SET completed_images = completed_images + ?, \
                 failed_images = failed_images + ?, updated_at = ? WHERE id = ? \
                 RETURNING total_images, completed_images, failed_images",
            )
            .bind(d.completed)
            .bind(d.failed)
            .bind(ms(now))
            .bind(pid)
            .fetch_one(&mut *tx)
            .await?;
            let st = Status::roll_up(row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, true);
            if st.is_final() {
                let outputs: Vec<Option<String>> = sqlx::query_scalar(
                    "SELECT output_url FROM images WHERE product_id = ? ORDER BY position",
                )
                .bind(pid)
                .fetch_all(&mut *tx)
                .await?;
                sqlx::query("UPDATE products SET status = ?, output_image_urls = ? WHERE id = ?")
                    .bind(st.as_str())
                    .bind(serde_json::to_string(&outputs).unwrap_or_default())
                    .bind(pid)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let row = sqlx::query(
            "UPDATE requests SET completed_images = completed_images + ?, \
             failed_images = failed_images + ?, updated_at = ? WHERE id = ? \
             RETURNING total_images, completed_images, failed_images, webhook_url",
        )
        .bind(total.completed)
        .bind(total.failed)
        .bind(ms(now))
        .bind(job.request_id.to_string())
        .fetch_one(&mut *tx)
        .await?;
        let st = Status::roll_up(row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, true);
        let webhook_url: Option<String> = row.try_get(3)?;
        let request_finished = if st.is_final() {
            sqlx::query("UPDATE requests SET status = ? WHERE id = ?")
                .bind(st.as_str())
                .bind(job.request_id.to_string())
                .execute(&mut *tx)
                .await?;
            // Queued in the same transaction as the final roll-up: never lost, never doubled.
            if let Some(url) = webhook_url {
                sqlx::query(
                    "INSERT INTO webhook_deliveries (id, request_id, url, next_attempt_at, event_at, \
                     created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (request_id) DO NOTHING",
                )
                .bind(uuid::Uuid::now_v7().to_string())
                .bind(job.request_id.to_string())
                .bind(url)
                .bind(ms(now))
                .bind(ms(now))
                .bind(ms(now))
                .bind(ms(now))
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
impl SqliteStore {
    pub async fn request_head(
        &self,
        id: RequestId,
        owner: &str,
    ) -> StoreResult<Option<RequestHead>> {
        let row = sqlx::query(
            "SELECT r.status, r.updated_at, r.total_images, d.updated_at AS d_updated, \
             d.attempts, d.state \
             FROM requests r LEFT JOIN webhook_deliveries d ON d.request_id = r.id \
             WHERE r.id = ? AND r.owner = ?",
        )
        .bind(id.to_string())
        .bind(owner)
        .fetch_optional(&self.read)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let webhook = match r.try_get::<Option<i64>, _>("d_updated")? {
            Some(t) => Some((from_ms(t), r.try_get("attempts")?, r.try_get("state")?)),
            None => None,
        };
        Ok(Some(RequestHead {
            version: RequestVersion {
                status: parse_status(r.try_get("status")?)?,
                updated_at: from_ms(r.try_get("updated_at")?),
                webhook,
            },
            total_images: r.try_get("total_images")?,
        }))
    }

    /// A deferred read transaction on a reader connection: in WAL mode its first `SELECT`
    /// takes a snapshot that lasts until the transaction ends.
    pub(super) async fn begin_snapshot(&self) -> StoreResult<sqlx::Transaction<'static, Sqlite>> {
        Ok(self.read.begin().await?)
    }

    pub(super) async fn snapshot_request(
        conn: &mut sqlx::SqliteConnection,
        id: RequestId,
        owner: &str,
    ) -> StoreResult<Option<RequestRow>> {
        Self::request_on(conn, id, owner).await
    }

    pub(super) async fn snapshot_webhook(
        conn: &mut sqlx::SqliteConnection,
        id: RequestId,
    ) -> StoreResult<Option<WebhookRow>> {
        sqlx::query(
            "SELECT id, url, state, attempts, last_status_code, last_error, next_attempt_at, \
             delivered_at FROM webhook_deliveries WHERE request_id = ?",
        )
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| -> StoreResult<WebhookRow> {
            let state = DeliveryState::parse(r.try_get("state")?)?;
            Ok(WebhookRow {
                id: parse_uuid(r.try_get("id")?)?,
                url: r.try_get("url")?,
                state,
                attempts: r.try_get("attempts")?,
                last_status_code: r.try_get("last_status_code")?,
                last_error: r.try_get("last_error")?,
                next_attempt_at: (state == DeliveryState::Pending)
                    .then(|| r.try_get("next_attempt_at").map(from_ms))
                    .transpose()?,
                delivered_at: r.try_get::<Option<i64>, _>("delivered_at")?.map(from_ms),
            })
        })
        .transpose()
    }

    pub(super) async fn snapshot_output_urls(
        conn: &mut sqlx::SqliteConnection,
        id: RequestId,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<(i64, Option<String>)>> {
        sqlx::query(
            "SELECT ordinal, output_url FROM images WHERE request_id = ? AND ordinal > ? \
             ORDER BY ordinal LIMIT ?",
        )
        .bind(id.to_string())
        .bind(after)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|r| Ok((r.try_get("ordinal")?, r.try_get("output_url")?)))
        .collect()
    }

    pub(super) async fn snapshot_products(
        conn: &mut sqlx::SqliteConnection,
        id: RequestId,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<ProductRow>> {
        sqlx::query(
            "SELECT id, position, serial_number, product_name, status FROM products \
             WHERE request_id = ? AND position > ? ORDER BY position LIMIT ?",
        )
        .bind(id.to_string())
        .bind(after)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|r| {
            Ok(ProductRow {
                id: r.try_get("id")?,
                position: r.try_get("position")?,
                serial_number: r.try_get("serial_number")?,
                product_name: r.try_get("product_name")?,
                status: parse_status(r.try_get("status")?)?,
            })
        })
        .collect()
    }

    pub(super) async fn snapshot_images(
        conn: &mut sqlx::SqliteConnection,
        id: RequestId,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<(i64, ImageRow)>> {
        sqlx::query(
            "SELECT ordinal, product_id, position, input_url, status, output_url, error, \
             attempts, codec FROM images WHERE request_id = ? AND ordinal > ? \
             ORDER BY ordinal LIMIT ?",
        )
        .bind(id.to_string())
        .bind(after)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|r| {
            Ok((
                r.try_get("ordinal")?,
                ImageRow {
                    product_id: r.try_get("product_id")?,
                    position: r.try_get("position")?,
                    input_url: r.try_get("input_url")?,
                    status: parse_status(r.try_get("status")?)?,
                    output_url: r.try_get("output_url")?,
                    error: r.try_get("error")?,
                    attempts: r.try_get("attempts")?,
                    codec: r.try_get("codec")?,
                },
            ))
        })
        .collect()
    }
}

/// `[[serial, name, input URLs as a JSON array, number of URLs], ...]`, in CSV order.
fn products_json(products: &[ParsedProduct]) -> String {
    let rows: Vec<_> = products
        .iter()
        .map(|p| {
            let urls: Vec<&str> = p.input_urls.iter().map(|u| u.as_str()).collect();
            (
                p.serial_number.0,
                &p.product_name.0,
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
    use crate::domain::{ImageUrl, ProductName, SerialNumber};

    /// An image's request, product position, position and URL; its original's URL and request.
    type LinkedImage = (String, i64, i64, String, Option<String>, Option<String>);

    fn upload(urls: &[&[&str]]) -> NewRequest {
        NewRequest {
            id: RequestId::new(),
            owner: String::new(),
            idempotency_key: None,
            upload_digest: String::new(),
            webhook_url: None,
            products: urls
                .iter()
                .enumerate()
                .map(|(i, urls)| ParsedProduct {
                    line: i as u64 + 2,
                    serial_number: SerialNumber(i as i64 + 1),
                    product_name: ProductName(format!("P\"{i}")),
                    input_urls: urls.iter().map(|u| ImageUrl(u.to_string())).collect(),
                })
                .collect(),
        }
    }

    #[tokio::test]
    async fn uploads_link_their_rows_and_leave_checkpoints_on() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/db.sqlite", dir.path().display());
        let store = SqliteStore::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        for _ in 0..2 {
            let new = upload(&[&["http://a/1", "http://a/2"], &["http://a/3", "http://a/1"]]);
            store.create_request(&new, Utc::now()).await.unwrap();
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
