//! Delivers webhooks: claims due deliveries, sends each (signed), and records the attempt and
//! what follows it: delivered, a retry on the schedule, or given up.

use std::sync::Arc;

use chrono::Utc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::Ctx;
use crate::core::{next_after_failure, AttemptNext, AttemptRecord, DeliveryJob};
use crate::domain::Status;
use crate::report::{Links, RequestSummary, StatusBody, WebhookSummary};
use crate::webhook::{SendOutcome, Sender};

/// Deliveries in flight at once, so one slow receiver does not hold up the others.
const CONCURRENT_DELIVERIES: usize = 16;

pub(crate) async fn deliver(ctx: Arc<Ctx>, sender: Sender, shutdown: CancellationToken) {
    let wakeup = ctx.core.wakeups().webhooks.clone();
    let mut running: JoinSet<()> = JoinSet::new();
    let poll = ctx.config.workers.poll_interval;
    loop {
        while running.try_join_next().is_some() {}
        let free = CONCURRENT_DELIVERIES.saturating_sub(running.len());
        let jobs = if free == 0 {
            Vec::new()
        } else {
            // Not renewed by the heartbeat: an attempt is bounded by the webhook timeout, so a
            // lease longer than that lapses by itself if anything goes wrong mid-attempt.
            let lease = ctx.config.limits.webhook_timeout + ctx.config.workers.lease;
            match ctx.core.claim_deliveries(&ctx.worker_id, free, lease).await {
                Ok(jobs) => jobs,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim webhook deliveries");
                    Vec::new()
                }
            }
        };
        let claimed = jobs.len();
        for job in jobs {
            let (ctx, sender) = (ctx.clone(), sender.clone());
            running.spawn(async move { attempt(&ctx, &sender, job).await });
        }
        if claimed == 0 || claimed < free {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = wakeup.wait() => {},
                _ = running.join_next(), if !running.is_empty() => {},
                _ = tokio::time::sleep(poll) => {},
            }
        }
    }
    while running.join_next().await.is_some() {}
}

async fn attempt(ctx: &Ctx, sender: &Sender, job: DeliveryJob) {
    let payload = match &job.payload {
        Some(p) => p.clone(),
        None => match build_payload(ctx, &job).await {
            Ok(p) => p,
            Err(e) => {
                // Leave the lease to lapse; the next claim tries again.
                tracing::warn!(request_id = %job.request_id, error = %e, "cannot build webhook payload");
                return;
            }
        },
    };
    let msg_id = format!("msg_{}", job.id.simple());
    let (outcome, took) = sender.send(&job.url, &msg_id, &payload).await;
    let schedule = &ctx.config.webhook_retry_schedule;
    let now = Utc::now();
    let (status_code, error, next) = match outcome {
        SendOutcome::Delivered { status } => (Some(status), None, AttemptNext::Delivered),
        SendOutcome::Gone => (
            Some(410),
            Some("receiver answered 410 Gone; delivery stopped".to_string()),
            AttemptNext::Failed,
        ),
        // The address will not become public by waiting: do not retry for a day.
        SendOutcome::Refused(error) => (None, Some(error), AttemptNext::Failed),
        SendOutcome::Failed {
            status,
            error,
            retry_after,
        } => (
            status,
            Some(error),
            next_after_failure(schedule, job.attempts, retry_after, now),
        ),
    };
    crate::metrics::METRICS.webhook_attempt(match next {
        AttemptNext::Delivered => "delivered",
        AttemptNext::Retry(_) => "failed_will_retry",
        AttemptNext::Failed if status_code == Some(410) => "gone",
        AttemptNext::Failed => "failed_final",
    });
    let record = AttemptRecord {
        at: now,
        status_code,
        error: error.clone(),
        duration_ms: took.as_millis() as i64,
    };
    match ctx
        .core
        .record_attempt(&job, &ctx.worker_id, &record, next)
        .await
    {
        Ok(true) => tracing::info!(
            request_id = %job.request_id, attempt = job.attempts, status = status_code,
            error = error.as_deref(), next = next.as_str(), retry_at = next.retry_at().map(tracing::field::display),
            "webhook attempt"
        ),
        Ok(false) => {
            tracing::warn!(request_id = %job.request_id, "webhook delivery was no longer ours")
        }
        Err(e) => {
            tracing::warn!(request_id = %job.request_id, error = %e, "cannot record webhook attempt")
        }
    }
}

/// `{"type": "request.completed" (or "request.cancelled"), "timestamp": …, "data": …}`,
/// built once. `data` is the status body, or for a request with more images than
/// `IMGBATCH_WEBHOOK_FULL_BODY_MAX_IMAGES` its summary with links.
async fn build_payload(ctx: &Ctx, job: &DeliveryJob) -> anyhow::Result<String> {
    let gone = || anyhow::anyhow!("request {} is gone", job.request_id);
    let row = ctx
        .core
        .request_row(job.request_id, &job.owner)
        .await?
        .ok_or_else(gone)?;
    let kind = match row.status {
        Status::Cancelled => "request.cancelled",
        _ => "request.completed",
    };
    let max = i64::try_from(ctx.config.webhook_full_body_max_images).unwrap_or(i64::MAX);
    let data = if row.total_images > max {
        serde_json::to_value(WebhookSummary {
            summary: RequestSummary::of(&row),
            links: Links::new(&ctx.public_url, row.id),
        })?
    } else {
        let detail = ctx
            .core
            .request_detail(job.request_id, &job.owner)
            .await?
            .ok_or_else(gone)?;
        serde_json::to_value(StatusBody::build(detail))?
    };
    let body = serde_json::json!({
        "type": kind,
        "timestamp": crate::report::millis::format(&job.event_at),
        "data": data,
    });
    let payload = serde_json::to_string(&body)?;
    ctx.core.set_delivery_payload(job.id, &payload).await?;
    Ok(payload)
}
