//! What clients see of a request: the status body (also the webhook's `data`) and output.csv,
//! both built from one consistent read of the stored rows.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::{RequestId, Status};
use crate::store::{DeliveryState, ImageRow, ProductRow, RequestDetail, WebhookRow};

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusBody {
    pub request_id: RequestId,
    pub status: Status,
    pub progress: Progress,
    /// Every output URL in CSV order; `null` where an image has no output (yet, or ever).
    pub output_image_urls: Vec<Option<String>>,
    pub products: Vec<ProductBody>,
    /// The webhook delivery; `null` when the request has no webhook target.
    pub webhook: Option<WebhookBody>,
    pub created_at: DateTime<Utc>,
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
    pub next_attempt_at: Option<DateTime<Utc>>,
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

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    pub total_products: i64,
    pub total_images: i64,
    pub completed_images: i64,
    pub failed_images: i64,
    pub pending_images: i64,
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
    pub attempts: i64,
    /// How the output was made: `requantized` (JPEG recompressed in the DCT domain, no pixels)
    /// or `pixels` (decoded and encoded again).
    pub codec: Option<String>,
}

impl StatusBody {
    pub fn build(detail: RequestDetail) -> Self {
        let RequestDetail {
            request,
            webhook,
            products,
            images,
        } = detail;
        let webhook = WebhookBody::build(request.webhook_url.as_deref(), webhook);
        let output_image_urls = images.iter().map(|i| i.output_url.clone()).collect();
        let products = group(products, images)
            .map(|(p, imgs)| ProductBody {
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
                        attempts: i.attempts,
                        codec: i.codec,
                    })
                    .collect(),
            })
            .collect();
        StatusBody {
            request_id: request.id,
            status: request.status,
            progress: Progress {
                total_products: request.total_products,
                total_images: request.total_images,
                completed_images: request.completed_images,
                failed_images: request.failed_images,
                pending_images: request.total_images
                    - request.completed_images
                    - request.failed_images,
            },
            output_image_urls,
            products,
            webhook,
            created_at: request.created_at,
            updated_at: request.updated_at,
        }
    }
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

/// The input CSV with a fourth column of output URLs (the original assignment's format).
/// Cells that a spreadsheet would run as a formula are defused with a leading quote.
pub fn output_csv(detail: RequestDetail) -> Vec<u8> {
    let RequestDetail {
        products, images, ..
    } = detail;
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::new());
    let mut write =
        |cells: [String; 4]| w.write_record(cells.iter().map(|c| defuse(c).into_owned()));
    // Writing to a Vec cannot fail; a failure here would be a bug in csv, not an I/O problem.
    let _ = write(
        [
            "S. No.",
            "Product Name",
            "Input Image Urls",
            "Output Image Urls",
        ]
        .map(String::from),
    );
    for (p, imgs) in group(products, images) {
        let inputs: Vec<&str> = imgs.iter().map(|i| i.input_url.as_str()).collect();
        let outputs: Vec<&str> = imgs
            .iter()
            .map(|i| i.output_url.as_deref().unwrap_or(""))
            .collect();
        let outputs = if outputs.iter().all(|o| o.is_empty()) {
            String::new()
        } else {
            outputs.join(",")
        };
        let _ = write([
            p.serial_number.to_string(),
            p.product_name,
            inputs.join(","),
            outputs,
        ]);
    }
    w.into_inner().unwrap_or_default()
}

fn defuse(cell: &str) -> std::borrow::Cow<'_, str> {
    match cell.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r') => format!("'{cell}").into(),
        _ => cell.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RequestRow;

    fn detail() -> RequestDetail {
        let now = Utc::now();
        let img = |pid, pos, url: &str, out: Option<&str>, status| ImageRow {
            product_id: pid,
            position: pos,
            input_url: url.into(),
            status,
            output_url: out.map(Into::into),
            error: None,
            attempts: 1,
            codec: None,
        };
        RequestDetail {
            webhook: None,
            request: RequestRow {
                id: RequestId::new(),
                status: Status::Processing,
                webhook_url: None,
                total_products: 2,
                total_images: 3,
                completed_images: 1,
                failed_images: 0,
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

    #[test]
    fn output_csv_has_four_columns_and_defuses_formulas() {
        let text = String::from_utf8(output_csv(detail())).unwrap();
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
