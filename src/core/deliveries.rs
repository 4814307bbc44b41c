//! The webhook delivery queue's rules: what an attempt's outcome makes of a delivery, and when
//! a delivery may be sent again by hand.

use chrono::{DateTime, Utc};

use super::{commit, AttemptNext, WebhookRetry};
use crate::domain::{Owner, RequestId};
use crate::store::backend::Backend;
use crate::store::{AttemptRecord, DeliveryJob, DeliveryState, DeliveryUpdate, StoreResult};

/// The delivery's state after an attempt at `at` followed by `next`.
fn update_after(next: AttemptNext, at: DateTime<Utc>) -> DeliveryUpdate {
    match next {
        AttemptNext::Delivered => DeliveryUpdate {
            state: DeliveryState::Delivered,
            next_attempt_at: at,
            delivered_at: Some(at),
        },
        AttemptNext::Retry(due) => DeliveryUpdate {
            state: DeliveryState::Pending,
            next_attempt_at: due,
            delivered_at: None,
        },
        AttemptNext::Failed => DeliveryUpdate {
            state: DeliveryState::Failed,
            next_attempt_at: at,
            delivered_at: None,
        },
    }
}

/// Records an attempt on a delivery `worker` holds and what follows it, in one transaction.
/// False (and nothing recorded) if the delivery was no longer ours.
pub(super) async fn record_attempt<B: Backend>(
    b: &B,
    job: &DeliveryJob,
    worker: &str,
    attempt: &AttemptRecord,
    next: AttemptNext,
) -> StoreResult<bool> {
    let mut tx = b.begin().await?;
    let update = update_after(next, attempt.at);
    if !b
        .update_delivery(&mut *tx, job, worker, attempt, update)
        .await?
    {
        return Ok(false);
    }
    b.insert_attempt(&mut *tx, job.id, attempt).await?;
    commit::<B>(tx).await?;
    Ok(true)
}

/// Makes a failed delivery pending again with a fresh schedule. `None` if the request does
/// not exist or is not `owner`'s.
pub(super) async fn retry<B: Backend>(
    b: &B,
    id: RequestId,
    owner: &Owner,
    now: DateTime<Utc>,
) -> StoreResult<Option<WebhookRetry>> {
    let mut tx = b.begin().await?;
    if b.request(&mut *tx, id, owner).await?.is_none() {
        return Ok(None);
    }
    let retry = match b.delivery_state(&mut *tx, id).await? {
        None => WebhookRetry::NoDelivery,
        Some(DeliveryState::Failed) => {
            b.requeue_delivery(&mut *tx, id, now).await?;
            b.notify_others(&mut *tx).await?;
            WebhookRetry::Queued
        }
        Some(state) => WebhookRetry::NotFailed(state),
    };
    commit::<B>(tx).await?;
    Ok(Some(retry))
}
