use axum::extract::{Path, State};
use axum::Json;

use super::{AppState, Owner};
use crate::domain::RequestId;
use crate::error::{ApiError, ApiResult};
use crate::report::StatusBody;

pub async fn status(
    State(state): State<AppState>,
    owner: Owner,
    Path(raw_id): Path<String>,
) -> ApiResult<Json<StatusBody>> {
    // A malformed ID names no request: 404 like any unknown one.
    let id = RequestId::parse(&raw_id).ok_or_else(ApiError::request_not_found)?;
    let detail = state
        .store
        .request_detail(id, &owner.0)
        .await?
        .ok_or_else(ApiError::request_not_found)?;
    Ok(Json(StatusBody::build(detail)))
}
