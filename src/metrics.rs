//! Prometheus metrics, kept in process-wide atomics (a scrape reads them; the hot path only
//! adds). Queue depth is read from the database at scrape time, so it is true across processes.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use crate::failure::ErrorCode;

/// Upper bounds of the job duration histogram, in seconds.
const BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

pub struct Metrics {
    uploads: AtomicU64,
    uploads_rejected: AtomicU64,
    images_completed: AtomicU64,
    failed_by_reason: Mutex<Vec<(&'static str, u64)>>,
    retries: AtomicU64,
    download_bytes: AtomicU64,
    output_bytes: AtomicU64,
    recorded_bytes_in: AtomicU64,
    recorded_bytes_out: AtomicU64,
    job_buckets: [AtomicU64; BUCKETS.len()],
    job_count: AtomicU64,
    job_sum_micros: AtomicU64,
    webhooks_by_outcome: Mutex<Vec<(&'static str, u64)>>,
}

pub static METRICS: Metrics = Metrics::new();

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// All zero; `const` so the process-wide [`METRICS`] needs no lazy initialisation.
    pub const fn new() -> Self {
        Metrics {
            uploads: AtomicU64::new(0),
            uploads_rejected: AtomicU64::new(0),
            images_completed: AtomicU64::new(0),
            failed_by_reason: Mutex::new(Vec::new()),
            retries: AtomicU64::new(0),
            download_bytes: AtomicU64::new(0),
            output_bytes: AtomicU64::new(0),
            recorded_bytes_in: AtomicU64::new(0),
            recorded_bytes_out: AtomicU64::new(0),
            job_buckets: [const { AtomicU64::new(0) }; BUCKETS.len()],
            job_count: AtomicU64::new(0),
            job_sum_micros: AtomicU64::new(0),
            webhooks_by_outcome: Mutex::new(Vec::new()),
        }
    }
}

fn bump(list: &Mutex<Vec<(&'static str, u64)>>, label: &'static str) {
    let mut list = list.lock().unwrap_or_else(|e| e.into_inner());
    match list.iter_mut().find(|(l, _)| *l == label) {
        Some((_, n)) => *n += 1,
        None => list.push((label, 1)),
    }
}

impl Metrics {
    pub fn upload_accepted(&self) {
        self.uploads.fetch_add(1, Relaxed);
    }

    pub fn upload_rejected(&self) {
        self.uploads_rejected.fetch_add(1, Relaxed);
    }

    pub fn image_completed(&self, bytes_in: u64, bytes_out: u64) {
        self.images_completed.fetch_add(1, Relaxed);
        self.download_bytes.fetch_add(bytes_in, Relaxed);
        self.output_bytes.fetch_add(bytes_out, Relaxed);
    }

    /// A completed image as its request counts it (the settlement was recorded): the bytes
    /// behind the requests' savings.
    pub fn image_recorded(&self, bytes_in: u64, bytes_out: u64) {
        self.recorded_bytes_in.fetch_add(bytes_in, Relaxed);
        self.recorded_bytes_out.fetch_add(bytes_out, Relaxed);
    }

    /// Counted by the failure's kind, a closed set.
    pub fn image_failed(&self, code: ErrorCode) {
        bump(&self.failed_by_reason, code.as_str());
    }

    pub fn image_retry(&self) {
        self.retries.fetch_add(1, Relaxed);
    }

    pub fn job_finished(&self, seconds: f64) {
        for (i, le) in BUCKETS.iter().enumerate() {
            if seconds <= *le {
                self.job_buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.job_count.fetch_add(1, Relaxed);
        self.job_sum_micros
            .fetch_add((seconds * 1e6) as u64, Relaxed);
    }

    pub fn webhook_attempt(&self, outcome: &'static str) {
        bump(&self.webhooks_by_outcome, outcome);
    }

    /// Prometheus text format. `queue` is (pending, processing) image jobs from the database.
    pub fn render(&self, queue: Option<(i64, i64)>) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            &mut out,
            "imgbatch_uploads_total",
            "Uploads accepted.",
            self.uploads.load(Relaxed),
        );
        counter(
            &mut out,
            "imgbatch_uploads_rejected_total",
            "Uploads refused with a 4xx.",
            self.uploads_rejected.load(Relaxed),
        );
        counter(
            &mut out,
            "imgbatch_images_completed_total",
            "Images compressed and stored.",
            self.images_completed.load(Relaxed),
        );
        let _ = writeln!(out, "# HELP imgbatch_images_failed_total Images failed for good, by reason.\n# TYPE imgbatch_images_failed_total counter");
        for (reason, n) in self
            .failed_by_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "imgbatch_images_failed_total{{reason=\"{reason}\"}} {n}"
            );
        }
        counter(
            &mut out,
            "imgbatch_image_retries_total",
            "Transient image failures scheduled for another attempt.",
            self.retries.load(Relaxed),
        );
        counter(
            &mut out,
            "imgbatch_download_bytes_total",
            "Bytes of input images downloaded.",
            self.download_bytes.load(Relaxed),
        );
        counter(
            &mut out,
            "imgbatch_output_bytes_total",
            "Bytes of output JPEGs stored.",
            self.output_bytes.load(Relaxed),
        );
        counter(
            &mut out,
            "imgbatch_image_bytes_in_total",
            "Bytes of the inputs of completed images, as recorded in their requests' savings.",
            self.recorded_bytes_in.load(Relaxed),
        );
        counter(
            &mut out,
            "imgbatch_image_bytes_out_total",
            "Bytes of the outputs of completed images, as recorded in their requests' savings.",
            self.recorded_bytes_out.load(Relaxed),
        );
        let _ = writeln!(out, "# HELP imgbatch_job_duration_seconds Time of one image job attempt, download to record.\n# TYPE imgbatch_job_duration_seconds histogram");
        for (i, le) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "imgbatch_job_duration_seconds_bucket{{le=\"{le}\"}} {}",
                self.job_buckets[i].load(Relaxed)
            );
        }
        let count = self.job_count.load(Relaxed);
        let _ = writeln!(
            out,
            "imgbatch_job_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "imgbatch_job_duration_seconds_sum {}",
            self.job_sum_micros.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "imgbatch_job_duration_seconds_count {count}");
        let _ = writeln!(out, "# HELP imgbatch_webhook_attempts_total Webhook delivery attempts, by outcome.\n# TYPE imgbatch_webhook_attempts_total counter");
        for (outcome, n) in self
            .webhooks_by_outcome
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "imgbatch_webhook_attempts_total{{outcome=\"{outcome}\"}} {n}"
            );
        }
        if let Some((pending, processing)) = queue {
            let _ = writeln!(out, "# HELP imgbatch_queue_depth Image jobs in the database by state (all processes).\n# TYPE imgbatch_queue_depth gauge");
            let _ = writeln!(out, "imgbatch_queue_depth{{state=\"pending\"}} {pending}");
            let _ = writeln!(
                out,
                "imgbatch_queue_depth{{state=\"processing\"}} {processing}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new();
        for _ in 0..3 {
            m.upload_accepted();
        }
        m.image_failed(ErrorCode::NotFound);
        m.image_failed(ErrorCode::NotFound);
        m.job_finished(0.2);
        let text = m.render(Some((5, 2)));
        assert!(text.contains("imgbatch_uploads_total 3"));
        assert!(text.contains("imgbatch_images_failed_total{reason=\"not_found\"} 2"));
        assert!(text.contains("imgbatch_job_duration_seconds_bucket{le=\"0.1\"} 0"));
        assert!(text.contains("imgbatch_job_duration_seconds_bucket{le=\"0.25\"} 1"));
        assert!(text.contains("imgbatch_job_duration_seconds_count 1"));
        assert!(text.contains("imgbatch_queue_depth{state=\"pending\"} 5"));
    }
}
