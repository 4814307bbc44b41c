//! The image queue's rules: claims and what they start, and settling an outcome: the image's
//! fields, its duplicates, the roll-up to products and the request, and the webhook that a
//! finished request queues, all in one transaction.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{commit, lease_until, JobOutcome, Settled};
use crate::domain::Status;
use crate::failure::Failure;
use crate::store::backend::{Backend, Tx};
use crate::store::{Delta, ImageJob, ImageResult, StoreResult};

pub(super) async fn claim<B: Backend>(
    b: &B,
    worker: &str,
    limit: usize,
    lease: Duration,
    now: DateTime<Utc>,
) -> StoreResult<Vec<ImageJob>> {
    let mut tx = b.begin().await?;
    let mut jobs = b
        .claim_images(&mut *tx, worker, limit as i64, lease_until(now, lease), now)
        .await?;
    // In CSV order, whatever order the claim statement returned them in.
    jobs.sort_by_key(|j| (j.ordinal, j.id));
    if !jobs.is_empty() {
        jobs = drop_cancelled(b, &mut tx, jobs, worker, now).await?;
    }
    if !jobs.is_empty() {
        fill_options(b, &mut tx, &mut jobs).await?;
        let mut products: Vec<i64> = jobs.iter().map(|j| j.product_id).collect();
        products.sort_unstable();
        products.dedup();
        let mut requests: Vec<_> = jobs.iter().map(|j| j.request_id).collect();
        requests.sort_unstable_by_key(|r| r.as_uuid());
        requests.dedup();
        b.start_products(&mut *tx, &products, now).await?;
        b.start_requests(&mut *tx, &requests, now).await?;
    }
    commit::<B>(tx).await?;
    Ok(jobs)
}

/// Gives each job its request's options, read once per request.
async fn fill_options<B: Backend>(b: &B, tx: &mut Tx<B>, jobs: &mut [ImageJob]) -> StoreResult<()> {
    let mut requests: Vec<_> = jobs.iter().map(|j| j.request_id).collect();
    requests.sort_unstable_by_key(|r| r.as_uuid());
    requests.dedup();
    let options: BTreeMap<_, _> = b
        .options_of(&mut **tx, &requests)
        .await?
        .into_iter()
        .map(|(id, o)| (id.as_uuid(), o))
        .collect();
    for job in jobs {
        job.options = options.get(&job.request_id.as_uuid()).copied().flatten();
    }
    Ok(())
}

/// The claimed jobs whose request is not cancelled. The others (waiting for a retry when the
/// cancel came, or reclaimed from a process that died while running them) are never run:
/// they are marked `cancelled`, with their pending duplicates, and counted on their request.
async fn drop_cancelled<B: Backend>(
    b: &B,
    tx: &mut Tx<B>,
    jobs: Vec<ImageJob>,
    worker: &str,
    now: DateTime<Utc>,
) -> StoreResult<Vec<ImageJob>> {
    let mut requests: Vec<_> = jobs.iter().map(|j| j.request_id).collect();
    requests.sort_unstable_by_key(|r| r.as_uuid());
    requests.dedup();
    let cancelled = b.cancelled_among(&mut **tx, &requests).await?;
    if cancelled.is_empty() {
        return Ok(jobs);
    }
    let (stopped, kept): (Vec<_>, Vec<_>) = jobs
        .into_iter()
        .partition(|j| cancelled.contains(&j.request_id));
    for request in cancelled {
        let ids: Vec<i64> = stopped
            .iter()
            .filter(|j| j.request_id == request)
            .map(|j| j.id)
            .collect();
        let n = b.cancel_claimed(&mut **tx, &ids, worker, now).await?
            + b.cancel_duplicates_of(&mut **tx, &ids, now).await?;
        b.cancel_request(&mut **tx, request, n as i64, now).await?;
    }
    Ok(kept)
}

/// What a transient failure on attempt `attempts` (of at most `max`) leads to: another attempt
/// after a backoff from `base` (jittered, at most 10 minutes), or, with the attempts used up,
/// a final failure of the same kind.
pub fn after_failure(
    failure: Failure,
    attempts: i64,
    max: i64,
    base: Duration,
    now: DateTime<Utc>,
) -> JobOutcome {
    if attempts >= max {
        return JobOutcome::Failed(Failure::new(
            failure.code,
            format!("{} (gave up after {attempts} attempts)", failure.message),
        ));
    }
    let delay = super::backoff(base, attempts.max(1) as u32, Duration::from_secs(600));
    let at = now + chrono::Duration::from_std(delay).unwrap_or_default();
    JobOutcome::Retry { failure, at }
}

/// The outcome's final fields and what it adds to its groups' counts; `None` for a retry.
fn result_of(outcome: &JobOutcome) -> Option<(ImageResult<'_>, Delta)> {
    match outcome {
        JobOutcome::Completed(output) => Some((
            ImageResult {
                status: Status::Completed,
                output: Some(output),
                failure: None,
            },
            Delta {
                completed: 1,
                failed: 0,
                bytes_in: output.bytes_in,
                bytes_out: output.bytes_out,
            },
        )),
        JobOutcome::Failed(failure) => Some((
            ImageResult {
                status: Status::Failed,
                output: None,
                failure: Some(failure),
            },
            Delta {
                completed: 0,
                failed: 1,
                ..Delta::default()
            },
        )),
        JobOutcome::Retry { .. } => None,
    }
}

/// Settles a job `worker` holds. Also says whether a webhook delivery was queued.
pub(super) async fn settle<B: Backend>(
    b: &B,
    job: &ImageJob,
    worker: &str,
    outcome: &JobOutcome,
    now: DateTime<Utc>,
) -> StoreResult<(Settled, bool)> {
    let mut tx = b.begin().await?;
    let Some((result, delta)) = result_of(outcome) else {
        let JobOutcome::Retry { failure, at } = outcome else {
            unreachable!("result_of is None only for a retry")
        };
        let recorded = b
            .requeue_image(&mut *tx, job, worker, failure, *at, now)
            .await?;
        commit::<B>(tx).await?;
        let settled = Settled {
            recorded,
            request_finished: None,
        };
        return Ok((settled, false));
    };
    if !b.finish_image(&mut *tx, job, worker, result, now).await? {
        // Not ours any more (lease lost and reclaimed, or recorded already): change nothing.
        return Ok((Settled::default(), false));
    }
    // Duplicates wait for their original and take its result.
    let duplicate_products = b.finish_duplicates(&mut *tx, job.id, result, now).await?;

    // Ordered by id (BTreeMap), so concurrent settlements lock products in one order.
    let mut per_product: BTreeMap<i64, Delta> = BTreeMap::new();
    for pid in std::iter::once(job.product_id).chain(duplicate_products) {
        let d = per_product.entry(pid).or_default();
        d.completed += delta.completed;
        d.failed += delta.failed;
        d.bytes_in += delta.bytes_in;
        d.bytes_out += delta.bytes_out;
    }
    let mut total = Delta::default();
    for (&pid, &d) in &per_product {
        total.completed += d.completed;
        total.failed += d.failed;
        total.bytes_in += d.bytes_in;
        total.bytes_out += d.bytes_out;
        let status = b.add_to_product(&mut *tx, pid, d, now).await?.status();
        if status.is_final() {
            let outputs = b.product_outputs(&mut *tx, pid).await?;
            let outputs = serde_json::to_string(&outputs).unwrap_or_default();
            b.finish_product(&mut *tx, pid, status, &outputs).await?;
        }
    }
    let tally = b
        .add_to_request(&mut *tx, job.request_id, total, now)
        .await?;
    // A cancelled request has its final status already: an image that was running when the
    // cancel came is recorded and counted, and changes nothing else.
    let status = match tally.status {
        Status::Cancelled => return commit::<B>(tx).await.map(|()| (recorded(None), false)),
        _ => tally.counts.status(),
    };
    let webhook_url = tally.webhook_url;
    let mut delivery_queued = false;
    if status.is_final() {
        b.finish_request(&mut *tx, job.request_id, status).await?;
        // Queued in the same transaction as the final roll-up: never lost, never doubled.
        if let Some(url) = webhook_url {
            b.queue_delivery(&mut *tx, job.request_id, &url, now)
                .await?;
            b.notify_others(&mut *tx).await?;
            delivery_queued = true;
        }
    }
    commit::<B>(tx).await?;
    Ok((
        recorded(status.is_final().then_some(status)),
        delivery_queued,
    ))
}

fn recorded(request_finished: Option<Status>) -> Settled {
    Settled {
        recorded: true,
        request_finished,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure::ErrorCode;

    #[test]
    fn transient_failures_back_off_then_give_up_with_their_kind() {
        let now = Utc::now();
        let f = || Failure::new(ErrorCode::Timeout, "timed out");
        let base = Duration::from_secs(2);
        let JobOutcome::Retry { failure, at } = after_failure(f(), 1, 3, base, now) else {
            panic!("retried")
        };
        assert_eq!(failure, f());
        let wait = (at - now).num_milliseconds();
        assert!((1000..3000).contains(&wait), "{wait} ms");
        let JobOutcome::Retry { at, .. } = after_failure(f(), 2, 3, base, now) else {
            panic!("retried")
        };
        assert!((at - now).num_milliseconds() >= 2000);
        let JobOutcome::Failed(last) = after_failure(f(), 3, 3, base, now) else {
            panic!("failed")
        };
        assert_eq!(last.code, ErrorCode::Timeout);
        assert_eq!(last.message, "timed out (gave up after 3 attempts)");
    }
}
