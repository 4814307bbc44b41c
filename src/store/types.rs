//! What the store keeps and hands back: plain values, the same for both backends.

use chrono::{DateTime, Utc};

use crate::csv_input::ParsedProduct;
use crate::domain::{ImageOptions, Owner, RequestId, Status};
use crate::failure::{ErrorCode, Failure};

/// An upload, validated, ready to be stored in one transaction.
#[derive(Debug, Clone)]
pub struct NewRequest {
    pub id: RequestId,
    pub owner: Owner,
    pub idempotency_key: Option<String>,
    /// Digest of the upload's content, to tell a true retry from a reused key.
    pub upload_digest: String,
    pub webhook_url: Option<String>,
    pub options: ImageOptions,
    /// The uploaded CSV, kept for output.csv.
    pub csv: String,
    pub products: Vec<ParsedProduct>,
}

impl NewRequest {
    pub fn total_images(&self) -> usize {
        self.products.iter().map(|p| p.input_urls.len()).sum()
    }

    /// For each image in CSV order: its ordinal, product position, position in the product,
    /// URL, and the ordinal of the first image of this request with the same URL, if any.
    pub fn images(&self) -> Vec<NewImage<'_>> {
        let mut first_seen = std::collections::HashMap::new();
        let mut out = Vec::with_capacity(self.total_images());
        for (product_pos, product) in self.products.iter().enumerate() {
            for (pos, url) in product.input_urls.iter().enumerate() {
                let ordinal = out.len() as i32;
                let first = *first_seen.entry(url.as_str()).or_insert(ordinal);
                out.push(NewImage {
                    ordinal,
                    product_position: product_pos as i32,
                    position: pos as i32,
                    url: url.as_str(),
                    duplicate_of_ordinal: (first != ordinal).then_some(first),
                });
            }
        }
        out
    }
}

#[derive(Debug, Clone, Copy)]
pub struct NewImage<'a> {
    pub ordinal: i32,
    pub product_position: i32,
    pub position: i32,
    pub url: &'a str,
    pub duplicate_of_ordinal: Option<i32>,
}

#[derive(Debug, Clone)]
pub struct RequestRow {
    pub id: RequestId,
    pub status: Status,
    pub webhook_url: Option<String>,
    /// None on requests made before per-upload options.
    pub options: Option<ImageOptions>,
    pub total_products: i64,
    pub total_images: i64,
    pub completed_images: i64,
    pub failed_images: i64,
    /// Images a cancel stopped before they started.
    pub cancelled_images: i64,
    /// Sums over the completed images (a repeated URL counted at each occurrence).
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Where a page of the request list starts: after the request created at `created_at` with
/// this ID (the list is newest first, ties broken by ID).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListAfter {
    pub created_at: DateTime<Utc>,
    pub id: RequestId,
}

impl ListAfter {
    /// Before every request: the first page.
    pub const START: ListAfter = ListAfter {
        // 9999-12-31T23:59:59Z: later than any stored time, and within every backend's range.
        created_at: match DateTime::from_timestamp(253_402_300_799, 0) {
            Some(t) => t,
            None => DateTime::<Utc>::MIN_UTC,
        },
        id: RequestId::MAX,
    };
}

#[derive(Debug, Clone)]
pub struct ProductRow {
    pub id: i64,
    pub position: i64,
    pub serial_number: i64,
    pub product_name: String,
    pub status: Status,
}

#[derive(Debug, Clone)]
pub struct ImageRow {
    pub product_id: i64,
    pub position: i64,
    pub input_url: String,
    pub status: Status,
    pub output_url: Option<String>,
    pub error: Option<String>,
    /// The kind of the failure (or of the last transient one, while it is retried).
    pub error_code: Option<ErrorCode>,
    pub attempts: i64,
    pub codec: Option<String>,
    pub bytes_in: Option<i64>,
    pub bytes_out: Option<i64>,
    pub width: Option<i64>,
    pub height: Option<i64>,
    pub output_format: Option<String>,
    pub color_profile: Option<String>,
    pub note: Option<String>,
    /// The output's storage key (its extension names the output's type), once completed.
    pub output_key: Option<String>,
    /// The input's format as sniffed from its bytes (`jpeg`, `png`, …), once completed.
    pub input_format: Option<String>,
}

/// The state of a request's webhook delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    Pending,
    Delivered,
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => DeliveryState::Pending,
            "delivered" => DeliveryState::Delivered,
            "failed" => DeliveryState::Failed,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone)]
pub struct WebhookRow {
    pub id: uuid::Uuid,
    pub url: String,
    pub state: DeliveryState,
    pub attempts: i64,
    pub last_status_code: Option<i64>,
    pub last_error: Option<String>,
    /// Only while the delivery is pending.
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// A claimed webhook delivery.
#[derive(Debug, Clone)]
pub struct DeliveryJob {
    pub id: uuid::Uuid,
    pub request_id: RequestId,
    pub owner: Owner,
    pub url: String,
    /// Attempts so far, this one included.
    pub attempts: i64,
    /// The body, once built; every retry sends the same bytes.
    pub payload: Option<String>,
    pub event_at: DateTime<Utc>,
}

/// One delivery attempt, as recorded.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub at: DateTime<Utc>,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: i64,
}

/// A delivery's new state after an attempt: its state, when it is next due (pending) or
/// settled, and when it was delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryUpdate {
    pub state: DeliveryState,
    pub next_attempt_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// What changes whenever anything the status body shows of a *finished* request changes: the
/// request row (its final roll-up) and its webhook delivery. Cheap to read, so a finished
/// request's status can be served from a cache after one small query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestVersion {
    pub status: Status,
    pub updated_at: DateTime<Utc>,
    pub webhook: Option<(DateTime<Utc>, i64, String)>,
}

/// What the status endpoint reads first, in one small query: the version (for its cache of
/// finished bodies) and the number of images (to choose between building the body in memory
/// and streaming it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub version: RequestVersion,
    pub total_images: i64,
}

/// Everything the status endpoint shows, read in one consistent snapshot.
#[derive(Debug, Clone)]
pub struct RequestDetail {
    pub request: RequestRow,
    /// The delivery, once the request has finished and has a webhook target.
    pub webhook: Option<WebhookRow>,
    /// In CSV order.
    pub products: Vec<ProductRow>,
    /// In CSV order (product, then position).
    pub images: Vec<ImageRow>,
}

/// A claimed image job.
#[derive(Debug, Clone)]
pub struct ImageJob {
    pub id: i64,
    pub request_id: RequestId,
    pub product_id: i64,
    pub ordinal: i64,
    pub position: i64,
    pub input_url: String,
    /// Attempts so far, this one included.
    pub attempts: i64,
    /// Its request's options (filled in by the claim; None on requests made before per-upload
    /// options, which take the process settings).
    pub options: Option<ImageOptions>,
}

#[derive(Debug, Clone)]
pub struct ImageOutput {
    pub key: String,
    pub url: String,
    pub input_format: String,
    /// `requantized`, `pixels`, `lossless` or `original`: how the output was made.
    pub codec: String,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub width: i64,
    pub height: i64,
    /// `jpeg`, or the input's own format when it was kept.
    pub output_format: String,
    /// What was done about the input's colour profile; None without one.
    pub color_profile: Option<String>,
    pub note: Option<String>,
}

/// The final fields of a settled image (and of its duplicates): its status and either its
/// output or its failure.
#[derive(Debug, Clone, Copy)]
pub struct ImageResult<'a> {
    pub status: Status,
    pub output: Option<&'a ImageOutput>,
    pub failure: Option<&'a Failure>,
}

/// A product's or request's image counts after a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub total: i64,
    pub completed: i64,
    pub failed: i64,
}

impl Counts {
    /// The status these counts mean, for a group whose images have started.
    pub fn status(self) -> Status {
        Status::roll_up(self.total, self.completed, self.failed, true)
    }
}

/// A request's counts after a change, its status (as the change left it) and its webhook
/// target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    pub counts: Counts,
    pub status: Status,
    pub webhook_url: Option<String>,
}

/// A change in a product's or request's counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delta {
    pub completed: i64,
    pub failed: i64,
    /// Bytes of the completed images' inputs and outputs (counted on the request only).
    pub bytes_in: i64,
    pub bytes_out: i64,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::csv_input::{parse_csv, CsvLimits};

    /// A request of one product per row, each with the given image URLs.
    pub(crate) fn request(rows: &[&[&str]]) -> NewRequest {
        let mut csv = String::from("S. No.,Product Name,Input Image Urls\n");
        for (i, urls) in rows.iter().enumerate() {
            csv.push_str(&format!("{},\"P\"\"{i}\",\"{}\"\n", i + 1, urls.join(",")));
        }
        let limits = CsvLimits {
            max_rows: 100,
            max_urls_per_product: 10,
            max_url_len: 2048,
        };
        NewRequest {
            id: RequestId::new(),
            owner: Owner::open(),
            idempotency_key: None,
            upload_digest: String::new(),
            webhook_url: None,
            options: crate::domain::ImageOptions::new(
                50,
                None,
                None,
                crate::domain::FormatChoice::Jpeg,
            )
            .unwrap(),
            products: parse_csv(csv.as_bytes(), &limits).unwrap(),
            csv,
        }
    }

    #[test]
    fn images_in_csv_order_with_duplicates_pointing_at_the_first() {
        let req = request(&[&["http://a/1", "http://a/2"], &["http://a/3", "http://a/1"]]);
        let imgs = req.images();
        assert_eq!(imgs.len(), 4);
        assert_eq!(req.total_images(), 4);
        assert_eq!(imgs[3].ordinal, 3);
        assert_eq!(imgs[3].product_position, 1);
        assert_eq!(imgs[3].position, 1);
        assert_eq!(imgs[3].duplicate_of_ordinal, Some(0));
        assert!(imgs[..3].iter().all(|i| i.duplicate_of_ordinal.is_none()));
    }
}
