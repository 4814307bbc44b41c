use axum::extract::{Path, State};
use axum::http::header;
use axum::response::IntoResponse;
use bytes::Bytes;

use super::{AppState, Owner};
use crate::domain::RequestId;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::report::StatusBody;

/// Status of a request: progress, output URLs in CSV order, each product and image (with the
/// reason of every failure), and the webhook delivery.
#[utoipa::path(
    get,
    path = "/api/status/{requestId}",
    tag = "requests",
    params(("requestId" = String, Path, description = "The ID returned by the upload")),
    responses(
        (status = 200, description = "The request", body = StatusBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "Request ID not found (also for a malformed ID)", body = ErrorBody),
        (status = 429, description = "Rate limit", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    ),
    security((), ("api_key" = []))
)]
pub async fn status(
    State(state): State<AppState>,
    owner: Owner,
    Path(raw_id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    // A malformed ID names no request: 404 like any unknown one.
    let id = RequestId::parse(&raw_id).ok_or_else(ApiError::request_not_found)?;
    let version = state
        .store
        .request_version(id, &owner.0)
        .await?
        .ok_or_else(ApiError::request_not_found)?;
    let finished = version.status.is_final();
    let cached = finished
        .then(|| state.status_cache.get(id, &owner.0, &version))
        .flatten();
    let body = match cached {
        Some(body) => body,
        None => {
            let detail = state
                .store
                .request_detail(id, &owner.0)
                .await?
                .ok_or_else(ApiError::request_not_found)?;
            let body = Bytes::from(
                serde_json::to_vec(&StatusBody::build(detail))
                    .map_err(|e| ApiError::Internal(e.into()))?,
            );
            if finished {
                state.status_cache.put(id, &owner.0, version, body.clone());
            }
            body
        }
    };
    Ok(([(header::CONTENT_TYPE, "application/json")], body))
}
