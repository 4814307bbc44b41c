use axum::extract::{Path, State};
use axum::http::header;
use axum::response::IntoResponse;

use super::{AppState, Owner};
use crate::domain::RequestId;
use crate::error::{ApiError, ApiResult};
use crate::report;

pub async fn output_csv(
    State(state): State<AppState>,
    owner: Owner,
    Path(raw_id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let id = RequestId::parse(&raw_id).ok_or_else(ApiError::request_not_found)?;
    let detail = state
        .store
        .request_detail(id, &owner.0)
        .await?
        .ok_or_else(ApiError::request_not_found)?;
    let disposition = format!("attachment; filename=\"{id}.csv\"");
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        report::output_csv(detail),
    ))
}
