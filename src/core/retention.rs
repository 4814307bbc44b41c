//! Retention: which finished requests are deleted, and in what order, so that a crash at any
//! moment leaves neither outputs whose rows are gone nor served rows whose outputs are gone.
//!
//! 1. One transaction takes a small batch (marking each request deleting, with a janitor's
//!    lease) and records their tombstones. From its commit on, the requests answer 410.
//! 2. The janitor deletes the requests' objects (`crate::worker::janitor`).
//! 3. One transaction per request deletes its rows (products, images, deliveries cascade).
//!
//! A crash after 1 leaves requests marked deleting, unserved; once their lease runs out the
//! next claim (any process) takes them up again and repeats 2 (deleting what is already gone
//! is harmless) and 3. Rows always outlive their objects, so no object is ever left without a
//! row that leads the janitor to it.

use chrono::{DateTime, Utc};

use super::commit;
use crate::domain::{RequestId, Status};
use crate::store::backend::Backend;
use crate::store::StoreResult;

/// Takes up to `limit` requests to delete, finished before `before` (or taken before by a
/// janitor whose lease ran out), leased until `until`, with their tombstones.
pub(super) async fn claim<B: Backend>(
    b: &B,
    before: DateTime<Utc>,
    until: DateTime<Utc>,
    now: DateTime<Utc>,
    limit: i64,
) -> StoreResult<Vec<RequestId>> {
    let finished: Vec<Status> = Status::ALL.into_iter().filter(|s| s.is_final()).collect();
    let mut tx = b.begin().await?;
    let ids = b
        .claim_deletions(&mut *tx, &finished, before, until, now, limit)
        .await?;
    b.insert_tombstones(&mut *tx, &ids, now).await?;
    commit::<B>(tx).await?;
    Ok(ids)
}

/// Deletes the rows of a request taken for deletion, whose objects are gone. False if they
/// were gone already.
pub(super) async fn delete_rows<B: Backend>(b: &B, id: RequestId) -> StoreResult<bool> {
    let mut tx = b.begin().await?;
    let n = b.delete_request(&mut *tx, id).await?;
    commit::<B>(tx).await?;
    Ok(n > 0)
}
