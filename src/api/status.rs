use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::{lookup, status_stream, AppState};
use crate::domain::Owner;
use crate::domain::RequestId;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::report::StatusBody;

/// Status of a request: progress, output URLs in CSV order, each product and image (with the
/// reason of every failure), and the webhook delivery. The body of a request with more than
/// `IMGBATCH_STATUS_STREAM_THRESHOLD` images (2,000 by default) is streamed (chunked transfer
/// encoding, no `Content-Length`); an error part-way cuts the connection before the end.
#[utoipa::path(
    get,
    path = "/api/status/{requestId}",
    tag = "requests",
    params(("requestId" = String, Path, description = "The ID returned by the upload")),
    responses(
        (status = 200, description = "The request", body = StatusBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "Request ID not found (also for a malformed ID)", body = ErrorBody),
        (status = 410, description = "The request was deleted by retention", body = ErrorBody),
        (status = 429, description = "Rate limit", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    ),
    security((), ("api_key" = []))
)]
pub async fn status(
    State(state): State<AppState>,
    owner: Owner,
    Path(raw_id): Path<String>,
) -> ApiResult<Response> {
    // A malformed ID names no request: 404 like any unknown one.
    let id = RequestId::parse(&raw_id).ok_or_else(ApiError::request_not_found)?;
    let Some(head) = state.core.request_head(id, &owner).await? else {
        return Err(lookup::missing(&state.core, id, &owner).await);
    };
    let version = head.version;
    let finished = version.status.is_final();
    let cached = finished
        .then(|| state.status_cache.get(id, &owner, &version))
        .flatten();
    if let Some(body) = cached {
        return Ok(json(body));
    }
    // Large requests are streamed from one snapshot, a page at a time, and not cached: a
    // cached body is the whole body in memory (up to the cache's per-entry cap, 8 MiB), and a
    // few of them would evict every small body, which are the ones polled hard.
    let threshold = i64::try_from(state.config.status_stream_threshold).unwrap_or(i64::MAX);
    if head.total_images > threshold {
        return status_stream::respond(
            state.core.clone(),
            id,
            owner,
            state.config.limits.status_stream_idle_timeout,
        )
        .await;
    }
    let Some(detail) = state.core.request_detail(id, &owner).await? else {
        return Err(lookup::missing(&state.core, id, &owner).await);
    };
    let body = Bytes::from(
        serde_json::to_vec(&StatusBody::build(detail)).map_err(|e| ApiError::Internal(e.into()))?,
    );
    if finished {
        state.status_cache.put(id, &owner, version, body.clone());
    }
    Ok(json(body))
}

fn json(body: Bytes) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}
