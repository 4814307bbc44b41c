//! The webhook delivery queue's rules: what an attempt's outcome makes of a delivery, and when
//! a delivery may be sent again by hand.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;

use super::{commit, AttemptNext, WebhookRetry};
use crate::config::Schedule;
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

/// After the `attempts`-th failed attempt: when to try again, or give up once the schedule
/// is spent. A receiver's Retry-After wins over the schedule.
pub fn next_after_failure(
    schedule: &Schedule,
    attempts: i64,
    retry_after: Option<Duration>,
    now: DateTime<Utc>,
) -> AttemptNext {
    let Some(delay) = schedule.0.get((attempts.max(1) - 1) as usize) else {
        return AttemptNext::Failed;
    };
    // ±10% jitter, so deliveries that failed together do not retry together.
    let jittered = delay.mul_f64(rand::rng().random_range(0.9..1.1));
    let wait = retry_after.unwrap_or(jittered);
    AttemptNext::Retry(now + chrono::Duration::from_std(wait).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_schedule_then_gives_up() {
        let s = Schedule(vec![Duration::from_secs(5), Duration::from_secs(300)]);
        let now = Utc::now();
        let AttemptNext::Retry(at) = next_after_failure(&s, 1, None, now) else {
            panic!()
        };
        let d = (at - now).num_milliseconds();
        assert!((4500..=5500).contains(&d), "{d}");
        let AttemptNext::Retry(at) = next_after_failure(&s, 2, None, now) else {
            panic!()
        };
        assert!((at - now).num_seconds() >= 270);
        assert_eq!(next_after_failure(&s, 3, None, now), AttemptNext::Failed);
        let AttemptNext::Retry(at) = next_after_failure(&s, 1, Some(Duration::from_secs(60)), now)
        else {
            panic!()
        };
        assert_eq!((at - now).num_seconds(), 60);
    }
}
