use axum::extract::multipart::{Field, MultipartError, MultipartRejection};
use axum::extract::{Multipart, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use serde::Serialize;

use super::AppState;
use crate::csv_input::CsvLimits;
use crate::domain::{OptionError, OptionsInput, Owner, RequestId};
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
    /// Quality of the outputs, 1-100 (default: `IMGBATCH_QUALITY`).
    #[schema(value_type = Option<String>, example = "75")]
    quality: Option<u8>,
    /// Outputs fit inside this many pixels of width, aspect ratio kept, never enlarged
    /// (1-65535; default: `IMGBATCH_MAX_WIDTH`, else no limit).
    #[serde(rename = "maxWidth")]
    #[schema(rename = "maxWidth", value_type = Option<String>, example = "2000")]
    max_width: Option<u32>,
    /// Outputs fit inside this many pixels of height (1-65535; default: `IMGBATCH_MAX_HEIGHT`,
    /// else no limit).
    #[serde(rename = "maxHeight")]
    #[schema(rename = "maxHeight", value_type = Option<String>, example = "2000")]
    max_height: Option<u32>,
    /// `jpeg`, `webp`, or `auto` (per image, the smaller of the two at similar visual quality);
    /// default: `IMGBATCH_FORMAT`.
    #[schema(value_type = Option<String>, example = "jpeg")]
    format: Option<String>,
}

/// The options as query parameters, for clients that cannot add form fields.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // describes the request for the OpenAPI document only
pub struct UploadQuery {
    /// As the form field `quality`; a form field given too wins.
    quality: Option<String>,
    /// As the form field `maxWidth`; a form field given too wins.
    #[serde(rename = "maxWidth")]
    #[param(rename = "maxWidth")]
    max_width: Option<String>,
    /// As the form field `maxHeight`; a form field given too wins.
    #[serde(rename = "maxHeight")]
    #[param(rename = "maxHeight")]
    max_height: Option<String>,
    /// As the form field `format`; a form field given too wins.
    format: Option<String>,
}

/// Upload a CSV. Answers at once with the request ID once every row is valid and stored;
/// the images are processed in the background.
#[utoipa::path(
    post,
    path = "/api/upload",
    tag = "requests",
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    params(("Idempotency-Key" = Option<String>, Header,
            description = "Repeat an upload safely: the same key, file and options return the first request's ID"),
           UploadQuery),
    responses(
        (status = 200, description = "Accepted", body = UploadResponse),
        (status = 400, description = "Invalid CSV (with every error and its line), an invalid option (with every error and its field), no file part, or a bad webhookUrl", body = InvalidUploadBody),
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
    RawQuery(query): RawQuery,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult<Json<UploadResponse>> {
    let result = accept(&state, owner, headers, query, multipart).await;
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
    query: Option<String>,
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
    let mut form_options = OptionsInput::default();
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
            Some(name) if form_options.field_mut(name).is_some() => {
                let name = name.to_owned();
                let raw = read_capped(field, MAX_TEXT_PART, limits.max_upload_bytes)
                    .await
                    .map_err(|_| ApiError::BadRequest(format!("{name} is too long")))?;
                let raw = String::from_utf8(raw)
                    .map_err(|_| ApiError::BadRequest(format!("{name} is not UTF-8")))?;
                let slot = form_options.field_mut(&name).expect("a known option");
                if slot.is_some() {
                    return Err(ApiError::BadRequest(format!(
                        "more than one \"{name}\" part"
                    )));
                }
                *slot = Some(raw);
            }
            // Unknown parts (Postman adds some) are skipped, not fatal.
            _ => {}
        }
    }
    // Checked before the CSV is parsed, and so before anything is stored.
    let options = form_options
        .or(query_options(query.as_deref()))
        .resolve(&state.config.default_options())
        .map_err(ApiError::InvalidOptions)?;
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
        options,
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
        ApiError::InvalidOptions(errors) => {
            let first = errors.first().map(OptionError::to_string);
            tracing::info!(status, reason = %e, problems = errors.len(), first, "upload refused")
        }
        _ => tracing::info!(status, reason = %e, "upload refused"),
    }
}

/// The options among the query parameters (others are ignored, as unknown form parts are).
fn query_options(query: Option<&str>) -> OptionsInput {
    let mut options = OptionsInput::default();
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if let Some(slot) = options.field_mut(&name) {
            *slot = Some(value.into_owned());
        }
    }
    options
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
