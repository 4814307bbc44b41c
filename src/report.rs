//! What clients see of a request: the status body (also the webhook's `data`) and output.csv,
//! both built from one consistent read of the stored rows.

use std::collections::VecDeque;
use std::future::Future;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::core::{
    DeliveryState, ImageRow, ProductRow, RequestDetail, RequestRow, StoreError, StoreResult,
    WebhookRow,
};
use crate::csv_input::{CsvLayout, OUTPUT_COLUMN};
use crate::domain::{ImageOptions, RequestId, Status};
use crate::failure::ErrorCode;

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusBody {
    pub request_id: RequestId,
    pub status: Status,
    pub progress: Progress,
    pub savings: Savings,
    /// The options the images are made with (the upload's, defaults filled in from the
    /// settings); null on requests made before per-upload options.
    pub options: Option<ImageOptions>,
    /// Every output URL in CSV order; `null` where an image has no output (yet, or ever).
    pub output_image_urls: Vec<Option<String>>,
    pub products: Vec<ProductBody>,
    /// The webhook delivery; `null` when the request has no webhook target.
    pub webhook: Option<WebhookBody>,
    #[serde(serialize_with = "millis::serialize")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "millis::serialize")]
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookBody {
    pub url: String,
    /// `pending` until delivered or given up (`failed`); also `pending` while the request runs.
    pub state: DeliveryState,
    pub attempts: i64,
    pub last_status_code: Option<i64>,
    pub last_error: Option<String>,
    #[serde(serialize_with = "millis::serialize_option")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "millis::serialize_option")]
    pub delivered_at: Option<DateTime<Utc>>,
}

impl WebhookBody {
    fn build(target: Option<&str>, row: Option<WebhookRow>) -> Option<Self> {
        match row {
            Some(w) => Some(WebhookBody {
                url: w.url,
                state: w.state,
                attempts: w.attempts,
                last_status_code: w.last_status_code,
                last_error: w.last_error,
                next_attempt_at: w.next_attempt_at,
                delivered_at: w.delivered_at,
            }),
            // The request has a target but has not finished: nothing sent yet.
            None => target.map(|url| WebhookBody {
                url: url.to_string(),
                state: DeliveryState::Pending,
                attempts: 0,
                last_status_code: None,
                last_error: None,
                next_attempt_at: None,
                delivered_at: None,
            }),
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    pub total_products: i64,
    pub total_images: i64,
    pub completed_images: i64,
    pub failed_images: i64,
    /// Images a cancel stopped before they started.
    pub cancelled_images: i64,
    /// The rest: waiting, running, or waiting for a retry.
    pub pending_images: i64,
}

impl Progress {
    pub fn of(r: &RequestRow) -> Self {
        Progress {
            total_products: r.total_products,
            total_images: r.total_images,
            completed_images: r.completed_images,
            failed_images: r.failed_images,
            cancelled_images: r.cancelled_images,
            pending_images: r.total_images
                - r.completed_images
                - r.failed_images
                - r.cancelled_images,
        }
    }
}

/// What compressing a request's completed images saved: sums over those images (a repeated
/// URL counted at each occurrence, as its image shows it).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Savings {
    /// Bytes downloaded.
    pub bytes_in: i64,
    /// Bytes of the outputs.
    pub bytes_out: i64,
    /// `bytesIn - bytesOut`.
    pub saved_bytes: i64,
    /// `savedBytes` as a percentage of `bytesIn`, to one decimal; 0 before any image completes.
    pub saved_percent: f64,
}

impl Savings {
    pub fn of(r: &RequestRow) -> Self {
        let saved = r.bytes_in - r.bytes_out;
        let saved_percent = if r.bytes_in > 0 {
            (saved as f64 * 1000.0 / r.bytes_in as f64).round() / 10.0
        } else {
            0.0
        };
        Savings {
            bytes_in: r.bytes_in,
            bytes_out: r.bytes_out,
            saved_bytes: saved,
            saved_percent,
        }
    }
}

/// A request at a glance, without its products: in the request list, the answers to cancel
/// and retry, live events, and large requests' webhooks.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestSummary {
    pub request_id: RequestId,
    pub status: Status,
    pub progress: Progress,
    pub savings: Savings,
    /// As in the status body.
    pub options: Option<ImageOptions>,
    #[serde(serialize_with = "millis::serialize")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "millis::serialize")]
    pub updated_at: DateTime<Utc>,
}

impl RequestSummary {
    pub fn of(r: &RequestRow) -> Self {
        RequestSummary {
            request_id: r.id,
            status: r.status,
            progress: Progress::of(r),
            savings: Savings::of(r),
            options: r.options,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// Where a request's documents are, as absolute URLs.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Links {
    /// `GET /api/status/{requestId}`: the full status body.
    pub status: String,
    /// `GET /api/requests/{requestId}/output.csv`.
    pub output_csv: String,
    /// `GET /api/requests/{requestId}/report.csv`: one row per image.
    pub report_csv: String,
    /// `GET /api/requests/{requestId}/outputs.zip`: every output and the report.
    pub outputs_zip: String,
}

impl Links {
    /// `base`: the service's public URL, without a trailing slash.
    pub fn new(base: &str, id: RequestId) -> Self {
        let doc = |name: &str| format!("{base}/api/requests/{id}/{name}");
        Links {
            status: format!("{base}/api/status/{id}"),
            output_csv: doc("output.csv"),
            report_csv: doc("report.csv"),
            outputs_zip: doc("outputs.zip"),
        }
    }
}

/// The `data` of the webhook of a request with more images than
/// `IMGBATCH_WEBHOOK_FULL_BODY_MAX_IMAGES`: its summary and where to read the rest.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSummary {
    #[serde(flatten)]
    pub summary: RequestSummary,
    pub links: Links,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProductBody {
    pub serial_number: i64,
    pub product_name: String,
    pub status: Status,
    pub input_image_urls: Vec<String>,
    pub output_image_urls: Vec<Option<String>>,
    pub images: Vec<ImageBody>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageBody {
    pub input_image_url: String,
    pub output_image_url: Option<String>,
    pub status: Status,
    /// Why the image failed (final), or why the last attempt failed (while retrying).
    pub error: Option<String>,
    /// The kind of that failure, a stable machine-readable code (see `ErrorCode`).
    pub error_code: Option<ErrorCode>,
    pub attempts: i64,
    /// How the output was made: `requantized` (JPEG recompressed in the DCT domain, no pixels),
    /// `pixels` (decoded and encoded again), `lossless` (a JPEG input's own coefficients,
    /// re-encoded losslessly) or `original` (the input's bytes, metadata removed): the last two
    /// when recompressing would have made the file larger.
    pub codec: Option<String>,
    /// Bytes downloaded.
    pub bytes_in: Option<i64>,
    /// Bytes of the output; never more than `bytesIn` unless `IMGBATCH_NEVER_LARGER` is off.
    pub bytes_out: Option<i64>,
    /// The output's dimensions (after EXIF orientation).
    pub width: Option<i64>,
    pub height: Option<i64>,
    /// The output's format: `jpeg`, or a kept input's own (`png`, `webp`, `gif`, `bmp`).
    pub format: Option<String>,
    /// What was done about the input's embedded ICC profile: `srgb` (it was sRGB), `converted`
    /// (to sRGB), `ignored` (unusable; the pixels were taken as sRGB), `kept` (a kept input
    /// keeps it); null when the input had none.
    pub color_profile: Option<String>,
    /// What a user should know about this output (a colour conversion, a kept input).
    pub note: Option<String>,
}

impl StatusBody {
    pub fn build(detail: RequestDetail) -> Self {
        let RequestDetail {
            request,
            webhook,
            products,
            images,
        } = detail;
        let mut body = Self::skeleton(request, webhook);
        body.output_image_urls = images.iter().map(|i| i.output_url.clone()).collect();
        body.products = group(products, images)
            .map(|(p, imgs)| ProductBody::build(p, imgs))
            .collect();
        body
    }

    /// Everything but the two lists, which are left empty: the streamed body
    /// ([`StatusStream`]) cuts this one open where they go.
    fn skeleton(request: RequestRow, webhook: Option<WebhookRow>) -> Self {
        StatusBody {
            request_id: request.id,
            status: request.status,
            progress: Progress::of(&request),
            savings: Savings::of(&request),
            options: request.options,
            output_image_urls: Vec::new(),
            products: Vec::new(),
            webhook: WebhookBody::build(request.webhook_url.as_deref(), webhook),
            created_at: request.created_at,
            updated_at: request.updated_at,
        }
    }
}

impl ProductBody {
    /// A product and its images, in CSV order.
    fn build(p: ProductRow, imgs: Vec<ImageRow>) -> Self {
        ProductBody {
            serial_number: p.serial_number,
            product_name: p.product_name,
            status: p.status,
            input_image_urls: imgs.iter().map(|i| i.input_url.clone()).collect(),
            output_image_urls: imgs.iter().map(|i| i.output_url.clone()).collect(),
            images: imgs
                .into_iter()
                .map(|i| ImageBody {
                    input_image_url: i.input_url,
                    output_image_url: i.output_url,
                    status: i.status,
                    error: i.error,
                    error_code: i.error_code,
                    attempts: i.attempts,
                    codec: i.codec,
                    bytes_in: i.bytes_in,
                    bytes_out: i.bytes_out,
                    width: i.width,
                    height: i.height,
                    format: i.output_format,
                    color_profile: i.color_profile,
                    note: i.note,
                })
                .collect(),
        }
    }
}

/// Where a streamed status body reads a request's rows, a page at a time, in CSV order: at
/// most `limit` rows after the key `after` (an ordinal or a product position; `-1` for the
/// first page). In the service, pages of one read snapshot; in tests, a vector.
pub trait StatusRows {
    /// (ordinal, output URL) of the request's images.
    fn output_urls(
        &mut self,
        after: i64,
        limit: i64,
    ) -> impl Future<Output = StoreResult<Vec<(i64, Option<String>)>>> + Send;
    /// The request's products, by position.
    fn products(
        &mut self,
        after: i64,
        limit: i64,
    ) -> impl Future<Output = StoreResult<Vec<ProductRow>>> + Send;
    /// (ordinal, row) of the request's images.
    fn images(
        &mut self,
        after: i64,
        limit: i64,
    ) -> impl Future<Output = StoreResult<Vec<(i64, ImageRow)>>> + Send;
}

/// The status body of a large request, a chunk at a time: the same bytes as
/// `serde_json::to_vec(&StatusBody::build(detail))` on the same rows, but holding only a
/// page of rows (and one product's images) at once.
///
/// The schema stays in one place: the top level is `StatusBody`'s own serialization with
/// both lists empty, cut open where they go, and each element is serialized from
/// `Option<String>` and [`ProductBody`] as the whole body serializes them.
pub struct StatusStream {
    /// Rows asked for a query.
    page: i64,
    /// A chunk ends once it holds this many bytes (or the body ends).
    chunk_bytes: usize,
    phase: Phase,
    /// Whether the list being written has no element yet (no comma before the next).
    first: bool,
    /// `{"requestId":…,"outputImageUrls":[`, until it is sent.
    head: Vec<u8>,
    /// `],"products":[`
    middle: Vec<u8>,
    /// `],"webhook":…}`
    tail: Vec<u8>,
    urls: Paged<(i64, Option<String>)>,
    products: Paged<ProductRow>,
    images: Paged<(i64, ImageRow)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    OutputUrls,
    Products,
    Done,
}

/// Rows read from one keyset-paged query and not written yet.
pub(crate) struct Paged<T> {
    pub(crate) rows: VecDeque<T>,
    /// The key of the last row read (`-1` before the first page).
    pub(crate) after: i64,
    /// A short page was the last.
    done: bool,
}

impl<T> Default for Paged<T> {
    fn default() -> Self {
        Paged {
            rows: VecDeque::new(),
            after: -1,
            done: false,
        }
    }
}

impl<T> Paged<T> {
    /// Takes a page in, if nothing is left of the last one and there may be more.
    pub(crate) fn needs_page(&self) -> bool {
        self.rows.is_empty() && !self.done
    }

    pub(crate) fn add_page(&mut self, page: Vec<T>, limit: i64, key: impl Fn(&T) -> i64) {
        self.done = (page.len() as i64) < limit;
        if let Some(last) = page.last() {
            self.after = key(last);
        }
        self.rows.extend(page);
    }
}

impl StatusStream {
    /// `request` and `webhook` must come from the same snapshot as the rows given to
    /// [`StatusStream::next_chunk`]; `page` rows are asked for a query, and a chunk ends once
    /// it holds `chunk_bytes`.
    pub fn new(
        request: RequestRow,
        webhook: Option<WebhookRow>,
        page: i64,
        chunk_bytes: usize,
    ) -> StoreResult<Self> {
        let json = serde_json::to_vec(&StatusBody::skeleton(request, webhook)).map_err(json_err)?;
        // The quotes inside a JSON string are escaped, so these cannot match inside a value.
        let urls = find(&json, br#""outputImageUrls":[]"#)?;
        let products = find(&json, br#""products":[]"#)?;
        if products < urls {
            return Err(StoreError::Other(anyhow::anyhow!(
                "status body: products must follow outputImageUrls"
            )));
        }
        Ok(StatusStream {
            page: page.max(1),
            chunk_bytes: chunk_bytes.max(1),
            phase: Phase::OutputUrls,
            first: true,
            head: json[..urls - 1].to_vec(),
            middle: json[urls - 1..products - 1].to_vec(),
            tail: json[products - 1..].to_vec(),
            urls: Paged::default(),
            products: Paged::default(),
            images: Paged::default(),
        })
    }

    /// The next chunk of the body, or `None` after the last.
    pub async fn next_chunk(&mut self, rows: &mut impl StatusRows) -> StoreResult<Option<Vec<u8>>> {
        if self.phase == Phase::Done {
            return Ok(None);
        }
        let mut buf = std::mem::take(&mut self.head);
        while buf.len() < self.chunk_bytes {
            match self.phase {
                Phase::OutputUrls => {
                    if self.urls.needs_page() {
                        let page = rows.output_urls(self.urls.after, self.page).await?;
                        self.urls.add_page(page, self.page, |(o, _)| *o);
                    }
                    let Some((_, url)) = self.urls.rows.pop_front() else {
                        buf.extend_from_slice(&self.middle);
                        (self.phase, self.first) = (Phase::Products, true);
                        continue;
                    };
                    self.comma(&mut buf);
                    serde_json::to_writer(&mut buf, &url).map_err(json_err)?;
                }
                Phase::Products => {
                    if self.products.needs_page() {
                        let page = rows.products(self.products.after, self.page).await?;
                        self.products.add_page(page, self.page, |p| p.position);
                    }
                    let Some(p) = self.products.rows.pop_front() else {
                        buf.extend_from_slice(&self.tail);
                        self.phase = Phase::Done;
                        break;
                    };
                    // As `group`: the images that follow, while they are this product's.
                    let mut mine = Vec::new();
                    loop {
                        if self.images.needs_page() {
                            let page = rows.images(self.images.after, self.page).await?;
                            self.images.add_page(page, self.page, |(o, _)| *o);
                        }
                        match self.images.rows.front() {
                            Some((_, i)) if i.product_id == p.id => {
                                mine.extend(self.images.rows.pop_front().map(|(_, i)| i));
                            }
                            _ => break,
                        }
                    }
                    self.comma(&mut buf);
                    serde_json::to_writer(&mut buf, &ProductBody::build(p, mine))
                        .map_err(json_err)?;
                }
                Phase::Done => break,
            }
        }
        Ok(Some(buf))
    }

    fn comma(&mut self, buf: &mut Vec<u8>) {
        if !std::mem::take(&mut self.first) {
            buf.push(b',');
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> StoreResult<usize> {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|at| at + needle.len())
        .ok_or_else(|| {
            StoreError::Other(anyhow::anyhow!(
                "status body has no {}",
                String::from_utf8_lossy(needle)
            ))
        })
}

fn json_err(e: serde_json::Error) -> StoreError {
    StoreError::Other(e.into())
}

/// Pairs each product with its images; both lists are in CSV order, so one pass does it.
fn group(
    products: Vec<ProductRow>,
    images: Vec<ImageRow>,
) -> impl Iterator<Item = (ProductRow, Vec<ImageRow>)> {
    let mut images = images.into_iter().peekable();
    products.into_iter().map(move |p| {
        let mut mine = Vec::new();
        while let Some(img) = images.next_if(|i| i.product_id == p.id) {
            mine.push(img);
        }
        (p, mine)
    })
}

/// The uploaded CSV as it was (its `layout`: header spellings, column order, extra columns,
/// delimiter) with a last column of output URLs, comma-separated in the order of the inputs
/// (the original assignment's format). A request from before the file was kept (no layout)
/// gets the three columns the service reads, as it sees them. Cells that a spreadsheet would
/// run as a formula are defused with a leading quote.
pub fn output_csv(detail: RequestDetail, layout: Option<CsvLayout>) -> Vec<u8> {
    let RequestDetail {
        products, images, ..
    } = detail;
    let products: Vec<_> = group(products, images).collect();
    let layout = layout
        .filter(|l| l.rows.len() == products.len())
        .unwrap_or_else(|| CsvLayout {
            delimiter: b',',
            header: ["S. No.", "Product Name", "Input Image Urls"]
                .map(String::from)
                .to_vec(),
            rows: products
                .iter()
                .map(|(p, imgs)| {
                    let inputs: Vec<&str> = imgs.iter().map(|i| i.input_url.as_str()).collect();
                    vec![
                        p.serial_number.to_string(),
                        p.product_name.clone(),
                        inputs.join(","),
                    ]
                })
                .collect(),
        });
    let mut w = csv::WriterBuilder::new()
        .delimiter(layout.delimiter)
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::new());
    let mut write = |cells: &[String], last: &str| {
        w.write_record(
            cells
                .iter()
                .map(String::as_str)
                .chain([last])
                .map(|c| defuse(c).into_owned()),
        )
    };
    // Writing to a Vec cannot fail; a failure here would be a bug in csv, not an I/O problem.
    let _ = write(&layout.header, OUTPUT_COLUMN);
    for (cells, (_, imgs)) in layout.rows.iter().zip(&products) {
        let outputs: Vec<&str> = imgs
            .iter()
            .map(|i| i.output_url.as_deref().unwrap_or(""))
            .collect();
        let outputs = if outputs.iter().all(|o| o.is_empty()) {
            String::new()
        } else {
            outputs.join(",")
        };
        let _ = write(cells, &outputs);
    }
    w.into_inner().unwrap_or_default()
}

/// Timestamps in answers and webhooks: RFC 3339 in UTC with exactly three fractional digits.
/// chrono's own form drops trailing zero digits (`…:41Z`, `…:41.120Z`, `…:41.120500Z`), so
/// such strings did not sort as the times do; clients compare them as strings (the request
/// list is newest first by `createdAt`).
pub(crate) mod millis {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::Serializer;

    pub(crate) fn format(at: &DateTime<Utc>) -> String {
        at.to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    pub(crate) fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(at))
    }

    pub(crate) fn serialize_option<S: Serializer>(
        at: &Option<DateTime<Utc>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match at {
            Some(at) => serialize(at, s),
            None => s.serialize_none(),
        }
    }
}

/// A cell a spreadsheet would run as a formula, with a leading quote.
pub(crate) fn defuse(cell: &str) -> std::borrow::Cow<'_, str> {
    match cell.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r') => format!("'{cell}").into(),
        _ => cell.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::RequestRow;

    #[test]
    fn timestamps_have_three_fractional_digits_and_sort_as_strings() {
        let micros = [
            1_795_872_705_000_000i64, // a whole second
            1_795_872_705_120_000,    // whole milliseconds ending in zero
            1_795_872_705_120_500,
            1_795_872_705_121_000,
            1_795_872_706_000_001,
        ];
        let texts: Vec<String> = micros
            .iter()
            .map(|&m| millis::format(&DateTime::from_timestamp_micros(m).unwrap()))
            .collect();
        assert_eq!(texts[0], "2026-11-28T13:31:45.000Z");
        assert_eq!(texts[2], "2026-11-28T13:31:45.120Z");
        for pair in texts.windows(2) {
            assert!(pair[0] <= pair[1], "{pair:?}");
        }
        let body = serde_json::to_value(RequestSummary::of(&detail().request)).unwrap();
        let created = body["createdAt"].as_str().unwrap();
        assert_eq!(created.len(), "2026-11-28T13:31:45.000Z".len(), "{created}");
    }

    fn detail() -> RequestDetail {
        let now = Utc::now();
        let img = |pid, pos, url: &str, out: Option<&str>, status| ImageRow {
            product_id: pid,
            position: pos,
            input_url: url.into(),
            status,
            output_url: out.map(Into::into),
            error: None,
            error_code: None,
            attempts: 1,
            codec: None,
            output_key: None,
            input_format: None,
            bytes_in: None,
            bytes_out: None,
            width: None,
            height: None,
            output_format: None,
            color_profile: None,
            note: None,
        };
        RequestDetail {
            webhook: None,
            request: RequestRow {
                id: RequestId::new(),
                status: Status::Processing,
                webhook_url: None,
                options: None,
                total_products: 2,
                total_images: 3,
                completed_images: 1,
                failed_images: 0,
                cancelled_images: 0,
                bytes_in: 0,
                bytes_out: 0,
                created_at: now,
                updated_at: now,
            },
            products: vec![
                ProductRow {
                    id: 10,
                    position: 0,
                    serial_number: 1,
                    product_name: "=SUM(A1)".into(),
                    status: Status::Processing,
                },
                ProductRow {
                    id: 11,
                    position: 1,
                    serial_number: 2,
                    product_name: "Mug".into(),
                    status: Status::Pending,
                },
            ],
            images: vec![
                img(
                    10,
                    0,
                    "http://a/1",
                    Some("http://o/1.jpg"),
                    Status::Completed,
                ),
                img(10, 1, "http://a/2", None, Status::Pending),
                img(11, 0, "http://a/3", None, Status::Pending),
            ],
        }
    }

    #[test]
    fn status_body_keeps_csv_order_and_groups_images() {
        let body = StatusBody::build(detail());
        assert_eq!(
            body.output_image_urls,
            vec![Some("http://o/1.jpg".into()), None, None]
        );
        assert_eq!(body.products.len(), 2);
        assert_eq!(
            body.products[0].input_image_urls,
            vec!["http://a/1", "http://a/2"]
        );
        assert_eq!(body.products[1].input_image_urls, vec!["http://a/3"]);
        assert_eq!(body.progress.pending_images, 2);
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(json["products"][0]["serialNumber"], 1);
        assert_eq!(json["status"], "processing");
        assert!(json["webhook"].is_null());
    }

    /// The rows of a `RequestDetail`, a page at a time, with ordinals in CSV order.
    struct Pages(RequestDetail);

    impl StatusRows for Pages {
        async fn output_urls(
            &mut self,
            after: i64,
            limit: i64,
        ) -> StoreResult<Vec<(i64, Option<String>)>> {
            let imgs = self.images(after, limit).await?;
            Ok(imgs.into_iter().map(|(o, i)| (o, i.output_url)).collect())
        }

        async fn products(&mut self, after: i64, limit: i64) -> StoreResult<Vec<ProductRow>> {
            let page = self.0.products.iter().filter(|p| p.position > after);
            Ok(page.take(limit as usize).cloned().collect())
        }

        async fn images(&mut self, after: i64, limit: i64) -> StoreResult<Vec<(i64, ImageRow)>> {
            let all = self.0.images.iter().cloned().enumerate();
            let page = all.map(|(o, i)| (o as i64, i)).filter(|(o, _)| *o > after);
            Ok(page.take(limit as usize).collect())
        }
    }

    /// Products with 0 to 4 images (none for the last), names and errors that need escaping,
    /// and a webhook delivery.
    fn varied() -> RequestDetail {
        let mut d = detail();
        d.products.clear();
        d.images.clear();
        for p in 0..9i64 {
            d.products.push(ProductRow {
                id: 100 + p,
                position: p,
                serial_number: p * 10,
                product_name: format!("\"P{p}\" \u{e9}\\\n"),
                status: if p % 2 == 0 {
                    Status::Processing
                } else {
                    Status::Completed
                },
            });
            for pos in 0..(if p == 8 { 0 } else { p % 5 }) {
                d.images.push(ImageRow {
                    product_id: 100 + p,
                    position: pos,
                    input_url: format!("http://a/{p}/{pos}"),
                    status: Status::Failed,
                    output_url: (pos % 2 == 0).then(|| format!("http://o/{p}-{pos}.jpg")),
                    error: (pos % 2 == 1).then(|| "HTTP 404 \"Not Found\" \u{2717}".into()),
                    error_code: (pos % 2 == 1).then_some(ErrorCode::NotFound),
                    attempts: pos,
                    codec: (pos % 2 == 0).then(|| "pixels".into()),
                    bytes_in: (pos % 2 == 0).then_some(1000 + pos),
                    bytes_out: (pos % 2 == 0).then_some(400 + pos),
                    width: (pos % 2 == 0).then_some(640),
                    height: (pos % 2 == 0).then_some(480),
                    output_format: (pos % 2 == 0).then(|| "jpeg".into()),
                    color_profile: (pos == 2).then(|| "converted".into()),
                    note: (pos == 2)
                        .then(|| "converted to sRGB from its embedded ICC profile (\"P3\")".into()),
                    output_key: None,
                    input_format: None,
                });
            }
        }
        d.request.total_products = d.products.len() as i64;
        d.request.total_images = d.images.len() as i64;
        d.request.webhook_url = Some("https://hooks.test/x".into());
        d.webhook = Some(WebhookRow {
            id: uuid::Uuid::nil(),
            url: "https://hooks.test/x".into(),
            state: DeliveryState::Failed,
            attempts: 7,
            last_status_code: Some(500),
            last_error: Some("receiver answered \"500\"".into()),
            next_attempt_at: None,
            delivered_at: None,
        });
        d
    }

    async fn streamed(detail: RequestDetail, page: i64, chunk_bytes: usize) -> (Vec<u8>, usize) {
        let mut body = StatusStream::new(
            detail.request.clone(),
            detail.webhook.clone(),
            page,
            chunk_bytes,
        )
        .unwrap();
        let mut rows = Pages(detail);
        let (mut out, mut chunks) = (Vec::new(), 0);
        while let Some(chunk) = body.next_chunk(&mut rows).await.unwrap() {
            out.extend_from_slice(&chunk);
            chunks += 1;
        }
        (out, chunks)
    }

    #[tokio::test]
    async fn streamed_body_is_the_built_body_byte_for_byte() {
        let mut empty = detail();
        empty.products.clear();
        empty.images.clear();
        for d in [detail(), varied(), empty] {
            let built = serde_json::to_vec(&StatusBody::build(d.clone())).unwrap();
            for (page, chunk_bytes) in [(1, 1), (2, 1), (3, 100), (4, 7), (7, 1 << 16), (1000, 1)] {
                let (out, chunks) = streamed(d.clone(), page, chunk_bytes).await;
                assert_eq!(
                    String::from_utf8(out).unwrap(),
                    String::from_utf8(built.clone()).unwrap(),
                    "pages of {page} rows, chunks of {chunk_bytes} bytes"
                );
                if chunk_bytes == 1 {
                    // A chunk an element: the body really comes in pieces.
                    let elements = d.images.len() + d.products.len();
                    assert!(chunks > elements, "{chunks} chunks");
                }
            }
        }
    }

    #[test]
    fn savings_and_progress_come_from_the_request_row() {
        let mut r = detail().request;
        assert_eq!(Savings::of(&r).saved_percent, 0.0);
        (r.bytes_in, r.bytes_out, r.cancelled_images) = (3000, 1001, 1);
        let s = Savings::of(&r);
        assert_eq!((s.saved_bytes, s.saved_percent), (1999, 66.6));
        let p = Progress::of(&r);
        assert_eq!((p.cancelled_images, p.pending_images), (1, 1));
        let json = serde_json::to_value(RequestSummary::of(&r)).unwrap();
        assert_eq!(json["savings"]["savedBytes"], 1999);
        assert_eq!(json["progress"]["cancelledImages"], 1);
        let links = Links::new("https://x.test", r.id);
        assert_eq!(
            links.outputs_zip,
            format!("https://x.test/api/requests/{}/outputs.zip", r.id)
        );
    }

    #[test]
    fn output_csv_has_four_columns_and_defuses_formulas() {
        let text = String::from_utf8(output_csv(detail(), None)).unwrap();
        let lines: Vec<&str> = text.split("\r\n").collect();
        assert_eq!(
            lines[0],
            "S. No.,Product Name,Input Image Urls,Output Image Urls"
        );
        assert_eq!(
            lines[1],
            "1,'=SUM(A1),\"http://a/1,http://a/2\",\"http://o/1.jpg,\""
        );
        assert_eq!(lines[2], "2,Mug,http://a/3,");
    }
}
