//! `GET /api/requests/{id}/report.csv`: one row per image, streamed from one snapshot.

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue};
use axum::response::Response;

use super::status_stream::{self, SnapshotBody, CHUNK_BYTES, PAGE_ROWS};
use super::AppState;
use crate::core::{RequestRow, StoreResult, WebhookRow};
use crate::domain::{Owner, RequestId};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::image_report::ReportCsv;
use crate::report::StatusRows;

/// One row per image, in CSV order: serial number, product name, the image's position in its
/// product, input and output URL, status, error code and reason, bytes in and out, pixel
/// sizes, formats and codec (the columns are listed in docs/api.md). Streamed from one
/// consistent read, whatever the size of the request.
#[utoipa::path(
    get,
    path = "/api/requests/{requestId}/report.csv",
    tag = "requests",
    params(("requestId" = String, Path, description = "The ID returned by the upload")),
    responses(
        (status = 200, description = "The report", body = String, content_type = "text/csv"),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "Request ID not found", body = ErrorBody),
        (status = 410, description = "The request was deleted by retention", body = ErrorBody),
        (status = 429, description = "Rate limit", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    ),
    security((), ("api_key" = []))
)]
pub async fn report_csv(
    State(state): State<AppState>,
    owner: Owner,
    Path(raw_id): Path<String>,
) -> ApiResult<Response> {
    let id = RequestId::parse(&raw_id).ok_or_else(ApiError::request_not_found)?;
    let mut response = status_stream::respond_with::<ReportBody>(
        state.core.clone(),
        id,
        owner,
        state.config.limits.status_stream_idle_timeout,
    )
    .await?;
    let disposition = format!("attachment; filename=\"{id}-report.csv\"");
    response.headers_mut().insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&disposition).map_err(|e| ApiError::Internal(e.into()))?,
    );
    Ok(response)
}

struct ReportBody(ReportCsv);

impl SnapshotBody for ReportBody {
    const CONTENT_TYPE: &'static str = "text/csv; charset=utf-8";

    fn start(_: RequestRow, _: Option<WebhookRow>) -> StoreResult<Self> {
        Ok(ReportBody(ReportCsv::new(PAGE_ROWS)))
    }

    async fn next_chunk(
        &mut self,
        rows: &mut (impl StatusRows + Send),
    ) -> StoreResult<Option<Vec<u8>>> {
        self.0.next_chunk(rows, CHUNK_BYTES).await
    }
}
