//! A request's lifecycle by hand: cancel (its pending images are never started, it ends
//! `cancelled`) and retry (its failed images, and a cancelled request's never-started ones, go
//! back in the queue, and it runs again to a new final status and a new webhook).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::{commit, CancelOutcome, RetryOutcome};
use crate::domain::{Owner, RequestId, Status};
use crate::failure::ErrorCode;
use crate::store::backend::Backend;
use crate::store::{Delta, StoreResult};

/// Cancels a pending or processing request in one transaction: its pending images (and the
/// duplicates waiting for them) become `cancelled`, so no claim takes them; images already
/// running may finish and are recorded, but the request stays `cancelled`. Its webhook
/// (`request.cancelled`) is queued in the same transaction. `None` if the request does not
/// exist or is not `owner`'s. Also says whether a delivery was queued.
pub(super) async fn cancel<B: Backend>(
    b: &B,
    id: RequestId,
    owner: &Owner,
    now: DateTime<Utc>,
) -> StoreResult<Option<(CancelOutcome, bool)>> {
    let mut tx = b.begin().await?;
    let Some(request) = b.lock_request(&mut *tx, id, owner).await? else {
        return Ok(None);
    };
    match request.status {
        // Idempotent: a second cancel changes nothing and queues nothing.
        Status::Cancelled => return Ok(Some((CancelOutcome::Cancelled(request), false))),
        s if s.is_final() => return Ok(Some((CancelOutcome::Finished(s), false))),
        _ => {}
    }
    // Duplicates first, while their originals are still pending.
    let images = b.cancel_pending_duplicates(&mut *tx, id, now).await?
        + b.cancel_pending_originals(&mut *tx, id, now).await?;
    b.cancel_products(&mut *tx, id, now).await?;
    b.cancel_request(&mut *tx, id, images as i64, now).await?;
    let mut queued = false;
    if let Some(url) = &request.webhook_url {
        b.queue_delivery(&mut *tx, id, url, now).await?;
        b.notify_others(&mut *tx).await?;
        queued = true;
    }
    let after = b.request(&mut *tx, id, owner).await?;
    commit::<B>(tx).await?;
    Ok(after.map(|r| (CancelOutcome::Cancelled(r), queued)))
}

/// Puts a request's failed images (only those with one of `codes`, if given) back in the
/// queue, and a cancelled request's never-started images too, in one transaction: attempts
/// reset, errors cleared, the counts of the request and its products taken back, the request
/// and those products `processing` again, and its webhook delivery deleted so the next final
/// status queues a new one. `None` if the request does not exist or is not `owner`'s.
pub(super) async fn retry<B: Backend>(
    b: &B,
    id: RequestId,
    owner: &Owner,
    codes: Option<&[ErrorCode]>,
    now: DateTime<Utc>,
) -> StoreResult<Option<RetryOutcome>> {
    let mut tx = b.begin().await?;
    let Some(request) = b.lock_request(&mut *tx, id, owner).await? else {
        return Ok(None);
    };
    let failed = b.requeue_failed(&mut *tx, id, codes, now).await?;
    let cancelled = match request.status {
        Status::Cancelled => b.requeue_cancelled(&mut *tx, id, now).await?,
        _ => Vec::new(),
    };
    if failed.is_empty() && cancelled.is_empty() {
        // Nothing changed: the transaction ends with nothing to commit.
        return Ok(Some(RetryOutcome::NothingToRetry(request.status)));
    }
    // Failed images taken back from each product, ordered by id (as settlements lock them).
    let mut per_product: BTreeMap<i64, i64> = cancelled.iter().map(|&pid| (pid, 0)).collect();
    for &pid in &failed {
        *per_product.entry(pid).or_default() += 1;
    }
    for (&pid, &n) in per_product.iter().filter(|(_, &n)| n > 0) {
        let back = Delta {
            failed: -n,
            ..Delta::default()
        };
        b.add_to_product(&mut *tx, pid, back, now).await?;
    }
    let products: Vec<i64> = per_product.into_keys().collect();
    b.reopen_products(&mut *tx, &products, now).await?;
    let back = Delta {
        failed: -(failed.len() as i64),
        ..Delta::default()
    };
    b.add_to_request(&mut *tx, id, back, now).await?;
    b.reopen_request(&mut *tx, id, cancelled.len() as i64, now)
        .await?;
    b.delete_delivery(&mut *tx, id).await?;
    b.notify_others(&mut *tx).await?;
    let after = b.request(&mut *tx, id, owner).await?;
    commit::<B>(tx).await?;
    Ok(after.map(|request| RetryOutcome::Requeued {
        request,
        images: (failed.len() + cancelled.len()) as i64,
    }))
}
