use axum::extract::multipart::{Field, MultipartError, MultipartRejection};
use axum::extract::{Multipart, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use serde::Serialize;

use super::AppState;
use crate::csv_input::CsvLimits;
use crate::domain::Owner;
use crate::domain::RequestId;
use crate::error::{ApiError, ApiResult, ErrorBody, InvalidUploadBody};
use crate::intake::{self, Upload};
use crate::metrics::METRICS;

const MAX_IDEMPOTENCY_KEY: usize = 255;
const MAX_TEXT_PART: usize = 8 * 1024;

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UploadResponse {
    pub request_id: RequestId,
}

/// The multipart form of an upload.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // describes the request for the OpenAPI document only
pub struct UploadForm {
    /// The CSV: header `S. No.,Product Name,Input Image Urls`, then one product a row.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    /// Optional webhook target (absolute http/https URL) for this request; empty or left out:
    /// the service's default (`IMGBATCH_WEBHOOK_URL`), if any.
    #[serde(rename = "webhookUrl")]
    #[schema(rename = "webhookUrl", example = "")]
    webhook_url: Option<String>,
}

/// Upload a CSV. Answers at once with the request ID once every row is valid and stored;
/// the images are processed in the background.
#[utoipa::path(
    post,
    path = "/api/upload",
    tag = "requests",
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    params(("Idempotency-Key" = Option<String>, Header,
            description = "Repeat an upload safely: the same key and file return the first request's ID")),
    responses(
        (status = 200, description = "Accepted", body = UploadResponse),
        (status = 400, description = "Invalid CSV (with every error and its line), no file part, or a bad webhookUrl", body = InvalidUploadBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 413, description = "Upload larger than the limit", body = ErrorBody),
        (status = 415, description = "Not multipart/form-data", body = ErrorBody),
        (status = 422, description = "Idempotency-Key reused for a different upload", body = ErrorBody),
        (status = 429, description = "Rate limit", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    ),
    security((), ("api_key" = []))
)]
pub async fn upload(
    State(state): State<AppState>,
    owner: Owner,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult<Json<UploadResponse>> {
    let result = accept(&state, owner, headers, multipart).await;
    match &result {
        Ok(_) => METRICS.upload_accepted(),
        Err(e) if e.status().is_client_error() => {
            METRICS.upload_rejected();
            log_refusal(e);
        }
        Err(_) => {}
    }
    result
}

async fn accept(
    state: &AppState,
    owner: Owner,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult<Json<UploadResponse>> {
    let is_multipart = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/form-data")
        });
    if !is_multipart {
        return Err(ApiError::UnsupportedMediaType(
            "send the CSV as multipart/form-data with a part named \"file\"".into(),
        ));
    }
    let idempotency_key = idempotency_key(&headers)?;
    let mut multipart = multipart.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limits = &state.config.limits;

    let mut csv = None;
    let mut webhook_url = None;
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(multipart_error(limits.max_upload_bytes))?
    {
        match field.name() {
            Some("file") => {
                if csv.is_some() {
                    return Err(ApiError::BadRequest("more than one \"file\" part".into()));
                }
                csv = Some(
                    read_capped(field, limits.max_upload_bytes, limits.max_upload_bytes).await?,
                );
            }
            Some("webhookUrl") => {
                let raw = read_capped(field, MAX_TEXT_PART, limits.max_upload_bytes)
                    .await
                    .map_err(|_| ApiError::BadRequest("webhookUrl is too long".into()))?;
                let raw = String::from_utf8(raw)
                    .map_err(|_| ApiError::BadRequest("webhookUrl is not UTF-8".into()))?;
                if !raw.trim().is_empty() {
                    webhook_url = Some(intake::parse_webhook_url(&raw, limits.max_url_length)?);
                }
            }
            // Unknown parts (Postman adds some) are skipped, not fatal.
            _ => {}
        }
    }
    let csv = csv.ok_or_else(|| {
        ApiError::BadRequest("no \"file\" part: send the CSV as multipart part \"file\"".into())
    })?;
    let csv_limits = CsvLimits {
        max_rows: limits.max_rows,
        max_urls_per_product: limits.max_urls_per_product,
        max_url_len: limits.max_url_length,
    };
    // The target is fixed at upload time, so a later change of the default does not redirect
    // notifications of requests already accepted.
    let webhook_url = webhook_url.or_else(|| {
        state
            .config
            .webhook_url
            .clone()
            .filter(|u| !u.trim().is_empty())
    });
    let upload = Upload {
        owner,
        idempotency_key,
        csv,
        webhook_url,
    };
    let request_id = intake::accept(&state.core, csv_limits, upload).await?;
    tracing::info!(%request_id, "upload accepted");
    Ok(Json(UploadResponse { request_id }))
}

/// Says why an upload was refused, so an operator can answer "why did my upload fail" from
/// the log: the message, and for a refused CSV how many problems and the first one.
fn log_refusal(e: &ApiError) {
    let status = e.status().as_u16();
    match e {
        ApiError::InvalidCsv(errors) => {
            let first = errors
                .first()
                .map(|e| format!("line {}: {}", e.line, e.message));
            tracing::info!(status, reason = %e, problems = errors.len(), first, "upload refused")
        }
        _ => tracing::info!(status, reason = %e, "upload refused"),
    }
}

fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = v
        .to_str()
        .map_err(|_| ApiError::BadRequest("Idempotency-Key must be printable ASCII".into()))?
        .trim();
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
        return Err(ApiError::BadRequest(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters"
        )));
    }
    Ok(Some(key.to_string()))
}

/// Reads one part, refusing it as soon as it passes `limit` bytes, so an oversized upload
/// is never held in memory whole.
/// `csv_limit` names the limit in case the whole body passes its own (a little above it).
async fn read_capped(mut field: Field<'_>, limit: usize, csv_limit: usize) -> ApiResult<Vec<u8>> {
    let mut buf = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(multipart_error(csv_limit))? {
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge {
                limit,
                envelope: false,
            });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

fn multipart_error(csv_limit: usize) -> impl Fn(MultipartError) -> ApiError {
    move |e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            // The whole body passed its limit (the CSV's limit plus room for the envelope).
            ApiError::PayloadTooLarge {
                limit: csv_limit,
                envelope: true,
            }
        } else {
            ApiError::BadRequest(format!("malformed multipart body: {}", e.body_text()))
        }
    }
}
