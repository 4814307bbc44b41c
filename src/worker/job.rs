//! One image job: download, compress, store, record.

use std::time::{Duration, Instant};

use chrono::Utc;

use super::Ctx;
use crate::compress::{compress_releasing, working_memory, CompressOptions, SizeBox};
use crate::core::{after_failure, backoff, ImageJob, ImageOutput, JobOutcome, Settled};
use crate::failure::{ErrorCode, Failure};
use crate::metrics::METRICS;

pub(crate) async fn run(ctx: &Ctx, job: ImageJob) {
    let started = Instant::now();
    let max = ctx.config.workers.max_attempts as i64;
    let outcome = if job.attempts > max {
        // Claimed again after its process died mid-job, more times than we allow: an input
        // that kills the worker must not be retried forever.
        JobOutcome::Failed(Failure::new(
            ErrorCode::WorkerLost,
            format!("gave up: the worker processing it stopped during each of {max} attempts"),
        ))
    } else {
        attempt(ctx, &job).await
    };
    // The image's line before its settlement: the settlement that finishes the request comes
    // after every other image's (it sees their counts), so its "finished" line comes after
    // every image line of the request, whichever worker wrote them.
    let elapsed = started.elapsed();
    let elapsed_ms = elapsed.as_millis() as u64;
    METRICS.job_finished(elapsed.as_secs_f64());
    match &outcome {
        JobOutcome::Completed(o) => METRICS.image_completed(o.bytes_in as u64, o.bytes_out as u64),
        JobOutcome::Failed(failure) => METRICS.image_failed(failure.code),
        JobOutcome::Retry { .. } => METRICS.image_retry(),
    }
    match &outcome {
        JobOutcome::Completed(o) => {
            tracing::info!(image = job.id, request_id = %job.request_id, bytes_in = o.bytes_in, bytes_out = o.bytes_out, codec = %o.codec, elapsed_ms, "image completed")
        }
        JobOutcome::Failed(f) => {
            tracing::info!(image = job.id, request_id = %job.request_id, error = %f.message, error_code = %f.code, "image failed")
        }
        JobOutcome::Retry { failure: f, at } => {
            tracing::info!(image = job.id, request_id = %job.request_id, error = %f.message, error_code = %f.code, retry_at = %at, "image will be retried")
        }
    }
    let settled = record(ctx, &job, &outcome).await;
    if let (true, JobOutcome::Completed(o)) = (settled.recorded, &outcome) {
        METRICS.image_recorded(o.bytes_in as u64, o.bytes_out as u64);
    }
    if let Some(status) = settled.request_finished {
        tracing::info!(request_id = %job.request_id, %status, "request finished");
    }
}

async fn attempt(ctx: &Ctx, job: &ImageJob) -> JobOutcome {
    let (bytes, body_reservation) = match ctx
        .fetcher
        .fetch(&job.input_url, &ctx.download_memory)
        .await
    {
        Ok(b) => b,
        Err(e) if e.is_transient() => return retry_or_fail(ctx, job, e.into()),
        Err(e) => return JobOutcome::Failed(e.into()),
    };
    let bytes_in = bytes.len() as i64;
    // A request from before per-upload options is made with the settings, as it always was.
    let options = job.options.unwrap_or_else(|| ctx.config.default_options());
    let opts = CompressOptions {
        quality: options.quality(),
        max_pixels: ctx.config.limits.max_image_pixels,
        never_larger: ctx.config.never_larger,
        effort: ctx.config.effort,
        size_box: SizeBox {
            max_width: options.max_width(),
            max_height: options.max_height(),
        },
        format: options.format(),
    };
    // Memory before the core, always in this order: a job holding a core never waits for
    // anything, so the two can never deadlock.
    let Some(buffers) = ctx
        .decode_memory
        .reserve(working_memory(&bytes, &opts))
        .await
    else {
        return retry_or_fail(ctx, job, shutting_down());
    };
    let Ok(permit) = ctx.cpu.clone().acquire_owned().await else {
        return retry_or_fail(ctx, job, shutting_down());
    };
    // The permits live as long as the blocking thread, not this future: a decode that outlives
    // its time limit still holds its core and its memory until it ends, so neither budget is
    // ever overdrawn.
    let work = tokio::task::spawn_blocking(move || {
        // What the encode no longer needs goes back to the budget as soon as it is known.
        let buffers = std::cell::RefCell::new(buffers);
        let result = compress_releasing(&bytes, &opts, &|n| buffers.borrow_mut().shrink_to(n));
        drop(bytes);
        drop((permit, buffers, body_reservation));
        result
    });
    let limit = ctx.config.limits.decode_timeout;
    let c = match tokio::time::timeout(limit, work).await {
        Ok(Ok(Ok(c))) => c,
        Ok(Ok(Err(e))) => return JobOutcome::Failed(e.into()),
        Ok(Err(e)) => {
            return JobOutcome::Failed(Failure::new(
                ErrorCode::Undecodable,
                format!("decoder crashed: {e}"),
            ))
        }
        Err(_) => {
            return JobOutcome::Failed(Failure::new(
                ErrorCode::DecodeTimeout,
                format!(
                    "decoding and encoding took longer than the limit of {}",
                    humantime::format_duration(limit)
                ),
            ))
        }
    };
    let key = ctx
        .storage
        .output_key(job.request_id, job.ordinal, c.format.extension());
    let output = ImageOutput {
        key,
        url: String::new(),
        input_format: c.input_format.as_str().to_string(),
        codec: c.codec.as_str().to_string(),
        bytes_in,
        bytes_out: c.bytes.len() as i64,
        width: c.width.into(),
        height: c.height.into(),
        output_format: c.format.as_str().to_string(),
        color_profile: c.color.as_str().map(str::to_string),
        note: c.note,
    };
    match ctx
        .storage
        .put(&output.key, c.bytes, c.format.content_type())
        .await
    {
        Ok(url) => JobOutcome::Completed(ImageOutput { url, ..output }),
        Err(e) => retry_or_fail(
            ctx,
            job,
            Failure::new(
                ErrorCode::StorageFailed,
                format!("could not store the output: {e}"),
            ),
        ),
    }
}

fn shutting_down() -> Failure {
    Failure::new(ErrorCode::Interrupted, "shutting down")
}

fn retry_or_fail(ctx: &Ctx, job: &ImageJob, failure: Failure) -> JobOutcome {
    let workers = &ctx.config.workers;
    after_failure(
        failure,
        job.attempts,
        workers.max_attempts as i64,
        workers.retry_base,
        Utc::now(),
    )
}

/// Records the outcome, riding out a database outage for as long as it lasts: this process
/// keeps the job's lease alive meanwhile, so giving up here would strand the job. A graceful
/// shutdown aborts the wait and hands the job back; recording it again later is idempotent.
/// What the settlement changed.
async fn record(ctx: &Ctx, job: &ImageJob, outcome: &JobOutcome) -> Settled {
    let mut attempt = 0u32;
    loop {
        attempt = attempt.saturating_add(1);
        match ctx.core.settle_image(job, &ctx.worker_id, outcome).await {
            Ok(s) => {
                if !s.recorded {
                    tracing::warn!(
                        image = job.id,
                        "job was no longer ours (lease lost); outcome dropped"
                    );
                }
                return s;
            }
            Err(e) => {
                tracing::warn!(image = job.id, error = %e, attempt, "cannot record outcome; retrying");
                tokio::time::sleep(backoff(
                    Duration::from_millis(200),
                    attempt,
                    Duration::from_secs(10),
                ))
                .await;
            }
        }
    }
}
