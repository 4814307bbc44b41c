use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::{AppState, Owner};
use crate::domain::RequestId;
use crate::error::{ApiError, ApiResult};
use crate::store::WebhookRetry;

/// Sends a failed webhook delivery again, with a fresh retry schedule.
pub async fn retry(
    State(state): State<AppState>,
    owner: Owner,
    Path(raw_id): Path<String>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let id = RequestId::parse(&raw_id).ok_or_else(ApiError::request_not_found)?;
    match state.store.retry_webhook(id, &owner.0).await? {
        None => Err(ApiError::request_not_found()),
        Some(WebhookRetry::Queued) => {
            state.webhooks_due.notify();
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({"message": "webhook delivery queued"})),
            ))
        }
        Some(WebhookRetry::NoDelivery) => Err(ApiError::Conflict(
            "this request has no webhook delivery (no target, or not finished yet)".into(),
        )),
        Some(WebhookRetry::NotFailed(s)) => Err(ApiError::Conflict(format!(
            "only a failed delivery can be retried; this one is {}",
            s.as_str()
        ))),
    }
}
