use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;

use super::{lookup, AppState};
use crate::core::WebhookRetry;
use crate::domain::Owner;
use crate::domain::RequestId;
use crate::error::{ApiError, ApiResult, ErrorBody};

#[derive(Serialize, utoipa::ToSchema)]
pub struct MessageBody {
    pub message: String,
}

/// Sends a failed webhook delivery again, with a fresh retry schedule.
#[utoipa::path(
    post,
    path = "/api/requests/{requestId}/webhook/retry",
    tag = "webhooks",
    params(("requestId" = String, Path, description = "The ID returned by the upload")),
    responses(
        (status = 202, description = "Queued", body = MessageBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "Request ID not found", body = ErrorBody),
        (status = 410, description = "The request was deleted by retention", body = ErrorBody),
        (status = 409, description = "No delivery, or it has not failed", body = ErrorBody),
        (status = 429, description = "Rate limit", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    ),
    security((), ("api_key" = []))
)]
pub async fn retry(
    State(state): State<AppState>,
    owner: Owner,
    Path(raw_id): Path<String>,
) -> ApiResult<(StatusCode, Json<MessageBody>)> {
    let id = RequestId::parse(&raw_id).ok_or_else(ApiError::request_not_found)?;
    match state.core.retry_webhook(id, &owner).await? {
        None => Err(lookup::missing(&state.core, id, &owner).await),
        Some(WebhookRetry::Queued) => Ok((
            StatusCode::ACCEPTED,
            Json(MessageBody {
                message: "webhook delivery queued".into(),
            }),
        )),
        Some(WebhookRetry::NoDelivery) => Err(ApiError::Conflict(
            "this request has no webhook delivery (no target, or not finished yet)".into(),
        )),
        Some(WebhookRetry::NotFailed(s)) => Err(ApiError::Conflict(format!(
            "only a failed delivery can be retried; this one is {}",
            s.as_str()
        ))),
    }
}
