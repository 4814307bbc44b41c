//! Requests: storing an upload (with its idempotency decision) and reading one back.

use chrono::{DateTime, Utc};

use super::{commit, CreateOutcome};
use crate::domain::{Owner, RequestId};
use crate::store::backend::{Backend, Tx};
use crate::store::{
    Db, ImageRow, NewRequest, ProductRow, RequestDetail, RequestRow, StoreResult, WebhookRow,
};
use crate::store::{PgStore, SqliteStore};

pub(super) async fn create<B: Backend>(
    b: &B,
    new: &NewRequest,
    now: DateTime<Utc>,
) -> StoreResult<CreateOutcome> {
    let mut tx = b.begin().await?;
    if let Some(key) = &new.idempotency_key {
        b.lock_idempotency_key(&mut *tx, &new.owner, key).await?;
        if let Some((id, digest)) = b.find_idempotent(&mut *tx, &new.owner, key).await? {
            return Ok(if digest == new.upload_digest {
                CreateOutcome::Replayed(id)
            } else {
                CreateOutcome::KeyReused
            });
        }
    }
    let images = new.images();
    let stored = async {
        b.insert_request(&mut *tx, new, images.len(), now).await?;
        b.load_rows(&mut *tx, new, &images, now).await?;
        b.notify_others(&mut tx).await?;
        commit::<B>(tx).await
    }
    .await;
    b.after_upload().await;
    stored?;
    Ok(CreateOutcome::Created(new.id))
}

pub(super) async fn detail<B: Backend>(
    b: &B,
    id: RequestId,
    owner: &Owner,
) -> StoreResult<Option<RequestDetail>> {
    // One snapshot for every read, so counts, products and images agree.
    let mut tx = b.begin_snapshot().await?;
    let Some(request) = b.request(&mut *tx, id, owner).await? else {
        return Ok(None);
    };
    // The same reads as a streamed body's, each in one page.
    let products = b.products(&mut *tx, id, -1, i64::MAX).await?;
    let images = b.images(&mut *tx, id, -1, i64::MAX).await?;
    let webhook = b.webhook(&mut *tx, id).await?;
    tx.rollback().await?;
    Ok(Some(RequestDetail {
        request,
        webhook,
        products,
        images: images.into_iter().map(|(_, image)| image).collect(),
    }))
}

/// The request's row, if it exists and belongs to `owner`.
pub(super) async fn row<B: Backend>(
    b: &B,
    id: RequestId,
    owner: &Owner,
) -> StoreResult<Option<RequestRow>> {
    let mut tx = b.begin_snapshot().await?;
    let row = b.request(&mut *tx, id, owner).await?;
    tx.rollback().await?;
    Ok(row)
}

/// A read-only transaction whose reads all see one snapshot of the database (Postgres:
/// `REPEATABLE READ READ ONLY`; SQLite in WAL mode: a deferred read transaction, whose snapshot
/// is taken by its first `SELECT`), for reading a large request a page at a time while its
/// images keep settling: the counters, the output URLs and the products all agree.
///
/// Use it only on a task of its own (`tokio::spawn`) that is never cancelled, and end it with
/// [`ReadSnapshot::close`]: a future dropped in the middle of a query can hand the connection
/// back to the pool with the transaction still open (sqlx 0.8; see the core's doc). Keep it
/// short: while it is open it holds a pooled connection, and an old snapshot holds back
/// Postgres's VACUUM and SQLite's WAL checkpoints.
pub struct ReadSnapshot(Snapshot);

enum Snapshot {
    Sqlite(SqliteStore, Tx<SqliteStore>),
    Postgres(PgStore, Tx<PgStore>),
}

macro_rules! on_snapshot {
    ($s:expr, $b:ident, $tx:ident => $e:expr) => {
        match $s {
            Snapshot::Sqlite($b, $tx) => $e,
            Snapshot::Postgres($b, $tx) => $e,
        }
    };
}

impl ReadSnapshot {
    pub(super) async fn begin(db: &Db) -> StoreResult<Self> {
        Ok(Self(match db {
            Db::Sqlite(b) => Snapshot::Sqlite(b.clone(), b.begin_snapshot().await?),
            Db::Postgres(b) => Snapshot::Postgres(b.clone(), b.begin_snapshot().await?),
        }))
    }

    /// The request, if it exists and belongs to `owner`.
    pub async fn request(
        &mut self,
        id: RequestId,
        owner: &Owner,
    ) -> StoreResult<Option<RequestRow>> {
        on_snapshot!(&mut self.0, b, tx => b.request(tx, id, owner).await)
    }

    /// The request's webhook delivery, once it has one.
    pub async fn webhook(&mut self, id: RequestId) -> StoreResult<Option<WebhookRow>> {
        on_snapshot!(&mut self.0, b, tx => b.webhook(tx, id).await)
    }

    /// Up to `limit` of the request's (ordinal, output URL), in CSV order, after ordinal
    /// `after` (`-1`: from the first).
    pub async fn output_urls(
        &mut self,
        id: RequestId,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<(i64, Option<String>)>> {
        on_snapshot!(&mut self.0, b, tx => b.output_urls(tx, id, after, limit).await)
    }

    /// Up to `limit` of the request's products, in CSV order, after position `after` (`-1`:
    /// from the first).
    pub async fn products(
        &mut self,
        id: RequestId,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<ProductRow>> {
        on_snapshot!(&mut self.0, b, tx => b.products(tx, id, after, limit).await)
    }

    /// Up to `limit` of the request's images with their ordinals, in CSV order, after ordinal
    /// `after` (`-1`: from the first).
    pub async fn images(
        &mut self,
        id: RequestId,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<(i64, ImageRow)>> {
        on_snapshot!(&mut self.0, b, tx => b.images(tx, id, after, limit).await)
    }

    /// Ends the transaction (a rollback: it changed nothing) and hands the connection back.
    pub async fn close(self) -> StoreResult<()> {
        on_snapshot!(self.0, _b, tx => tx.rollback().await?);
        Ok(())
    }
}
