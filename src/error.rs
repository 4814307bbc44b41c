//! The one error type of the HTTP API: each variant knows its status code, and every response
//! body is JSON with a `message`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::csv_input::CsvError;
use crate::domain::OptionError;
use crate::intake::{IntakeError, WebhookUrlError};

pub type ApiResult<T> = Result<T, ApiError>;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("Invalid CSV format")]
    InvalidCsv(Vec<CsvError>),
    /// Upload options (form fields or query parameters) out of range; every one named.
    #[error("Invalid options: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    InvalidOptions(Vec<OptionError>),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The request existed and was deleted by retention.
    #[error("{0}")]
    Gone(String),
    /// `envelope`: the whole body passed `limit` plus the room left for the multipart envelope.
    #[error("{}", too_large_message(*.limit, *.envelope))]
    PayloadTooLarge { limit: usize, envelope: bool },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("too many requests; retry in {retry_after_secs} s")]
    TooManyRequests { retry_after_secs: u64 },
    /// The database (or another dependency) cannot be reached; the client may retry.
    #[error("service temporarily unavailable, try again shortly")]
    Unavailable(#[source] anyhow::Error),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

fn too_large_message(limit: usize, envelope: bool) -> String {
    let what = if envelope {
        "the upload is larger than the limit for a CSV"
    } else {
        "the CSV is larger than the limit"
    };
    format!(
        "{what} of {limit} bytes ({}); the limit is the setting IMGBATCH_MAX_UPLOAD_BYTES",
        human_bytes(limit)
    )
}

/// `20 MiB`, `512 KiB`, `900 bytes`: sizes as people read them.
pub(crate) fn human_bytes(n: usize) -> String {
    const KIB: usize = 1024;
    match n {
        n if n >= KIB * KIB && n % (KIB * KIB) == 0 => format!("{} MiB", n / (KIB * KIB)),
        n if n >= KIB * KIB => format!("{:.1} MiB", n as f64 / (KIB * KIB) as f64),
        n if n >= KIB && n % KIB == 0 => format!("{} KiB", n / KIB),
        n => format!("{n} bytes"),
    }
}

/// Every error answer: a message, and for a refused CSV every problem found (up to 100).
#[derive(Serialize)]
struct ErrorJson<'a> {
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<ErrorList<'a>>,
}

/// The problems behind a refused upload: the CSV's, each with its line, or the options', each
/// with its field.
#[derive(Serialize)]
#[serde(untagged)]
enum ErrorList<'a> {
    Csv(&'a [CsvError]),
    Options(&'a [OptionError]),
}

/// An error answer.
#[derive(utoipa::ToSchema)]
#[schema(example = json!({"message": "Request ID not found"}))]
#[allow(dead_code)] // describes the answer for the OpenAPI document only
pub struct ErrorBody {
    /// What went wrong, in words for the person who sent the request.
    message: String,
}

/// The answer to a refused upload: a message, and for a refused CSV every problem found (up
/// to 100), each with its line.
#[derive(utoipa::ToSchema)]
#[schema(example = json!({
    "message": "Invalid CSV format",
    "errors": [{
        "line": 3,
        "column": "Input Image Urls",
        "message": "not an absolute URL (it must start with http:// or https://): \"www.example.com/a.jpg\""
    }]
}))]
#[allow(dead_code)] // describes the answer for the OpenAPI document only
pub struct InvalidUploadBody {
    message: String,
    /// Present when the CSV itself was refused (each problem with its line), or an option
    /// (each with its `field`).
    errors: Option<Vec<UploadProblem>>,
}

/// One problem of a refused upload.
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)] // describes the answer for the OpenAPI document only
#[serde(untagged)]
pub enum UploadProblem {
    Csv(CsvError),
    Option(OptionError),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::InvalidCsv(_) | ApiError::InvalidOptions(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn request_not_found() -> Self {
        ApiError::NotFound("Request ID not found".into())
    }

    /// A request deleted by retention at `at`.
    pub fn request_gone(at: chrono::DateTime<chrono::Utc>) -> Self {
        ApiError::Gone(format!(
            "Request deleted by retention at {}; its outputs are gone",
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ))
    }
}

/// The answers to a refused upload; they are part of the API, so each maps to the status and
/// message clients have always seen.
impl From<IntakeError> for ApiError {
    fn from(e: IntakeError) -> Self {
        match e {
            IntakeError::InvalidCsv(errors) => ApiError::InvalidCsv(errors),
            IntakeError::InvalidWebhookUrl(e) => ApiError::BadRequest(e.to_string()),
            e @ IntakeError::KeyReused => ApiError::Unprocessable(e.to_string()),
            IntakeError::Store(e) => e.into(),
            IntakeError::Internal(e) => ApiError::Internal(e),
        }
    }
}

impl From<WebhookUrlError> for ApiError {
    fn from(e: WebhookUrlError) -> Self {
        IntakeError::from(e).into()
    }
}

impl From<crate::core::StoreError> for ApiError {
    fn from(e: crate::core::StoreError) -> Self {
        match e {
            crate::core::StoreError::Unavailable(e) => ApiError::Unavailable(e),
            crate::core::StoreError::Other(e) => ApiError::Internal(e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            ApiError::Unavailable(e) => {
                tracing::warn!(error = %format!("{e:#}"), "dependency unavailable")
            }
            ApiError::Internal(e) => tracing::error!(error = %format!("{e:#}"), "internal error"),
            _ => {}
        }
        let errors = match &self {
            ApiError::InvalidCsv(errors) => Some(ErrorList::Csv(errors)),
            ApiError::InvalidOptions(errors) => Some(ErrorList::Options(errors)),
            _ => None,
        };
        let mut response = (
            status,
            Json(ErrorJson {
                message: self.to_string(),
                errors,
            }),
        )
            .into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("5"),
            );
        }
        if let ApiError::TooManyRequests { retry_after_secs } = &self {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, (*retry_after_secs).into());
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::StoreError;

    #[test]
    fn intake_errors_keep_their_answers() {
        let answer = |e: IntakeError| {
            let e = ApiError::from(e);
            (e.status().as_u16(), e.to_string())
        };
        let csv = vec![CsvError {
            line: 1,
            column: None,
            message: "the file is empty".into(),
        }];
        assert_eq!(
            answer(IntakeError::InvalidCsv(csv.clone())),
            (400, "Invalid CSV format".into())
        );
        assert!(matches!(
            ApiError::from(IntakeError::InvalidCsv(csv.clone())),
            ApiError::InvalidCsv(errors) if errors == csv
        ));
        let webhook = crate::intake::parse_webhook_url("ftp://e.com/", 100).unwrap_err();
        assert_eq!(
            answer(webhook.into()),
            (
                400,
                "webhookUrl must be an absolute http or https URL".into()
            )
        );
        assert_eq!(
            answer(IntakeError::KeyReused),
            (
                422,
                "Idempotency-Key was already used for a different upload".into()
            )
        );
        let down = StoreError::Unavailable(anyhow::anyhow!("connection refused"));
        assert_eq!(answer(down.into()).0, 503);
        let broken = StoreError::Other(anyhow::anyhow!("constraint"));
        assert_eq!(answer(broken.into()), (500, "internal error".into()));
        let internal = IntakeError::Internal(anyhow::anyhow!("parser stopped"));
        assert_eq!(answer(internal), (500, "internal error".into()));
    }
}
