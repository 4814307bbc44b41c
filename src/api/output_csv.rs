use axum::extract::{Path, State};
use axum::http::header;
use axum::response::IntoResponse;

use super::{lookup, AppState};
use crate::csv_input;
use crate::domain::Owner;
use crate::domain::RequestId;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::report;

/// The uploaded CSV as it was (header spellings, column order, extra columns, delimiter) with a
/// last column, `Output Image Urls` (empty until images are done). Cells that a spreadsheet
/// would run as formulas start with `'`.
#[utoipa::path(
    get,
    path = "/api/requests/{requestId}/output.csv",
    tag = "requests",
    params(("requestId" = String, Path, description = "The ID returned by the upload")),
    responses(
        (status = 200, description = "The CSV", body = String, content_type = "text/csv"),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "Request ID not found", body = ErrorBody),
        (status = 410, description = "The request was deleted by retention", body = ErrorBody),
        (status = 429, description = "Rate limit", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    ),
    security((), ("api_key" = []))
)]
pub async fn output_csv(
    State(state): State<AppState>,
    owner: Owner,
    Path(raw_id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let id = RequestId::parse(&raw_id).ok_or_else(ApiError::request_not_found)?;
    let Some(detail) = state.core.request_detail(id, &owner).await? else {
        return Err(lookup::missing(&state.core, id, &owner).await);
    };
    // The kept file, if any: a request could be deleted between the two reads, and then is
    // served in the service's own layout rather than failed.
    let layout = state
        .core
        .request_csv(id, &owner)
        .await?
        .flatten()
        .and_then(|csv| csv_input::layout(csv.as_bytes()));
    let disposition = format!("attachment; filename=\"{id}.csv\"");
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        report::output_csv(detail, layout),
    ))
}
