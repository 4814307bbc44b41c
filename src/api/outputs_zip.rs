//! `GET /api/requests/{id}/outputs.zip`: every output and report.csv, streamed as it is read.

use std::future::Future as _;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tokio::sync::oneshot;

use super::{lookup, AppState};
use crate::bundle;
use crate::domain::{Owner, RequestId};
use crate::error::{ApiError, ApiResult, ErrorBody};

/// A ZIP archive, for the OpenAPI document.
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)] // describes the answer for the OpenAPI document only
pub struct ZipArchive(Vec<u8>);

/// Bytes of archive between the task that writes it and the connection.
const PIPE_BYTES: usize = 64 * 1024;

/// Every completed output of the request, byte for byte as stored, named
/// `{serial}_{product name}_{position}.{ext}` (the name made safe for any file system), and
/// `report.csv`. Entries are stored, not compressed. The archive is written as it is sent
/// (chunked, no `Content-Length`), so it starts at once however large the request; an error
/// part-way cuts the connection before the end, so a cut archive never looks complete.
#[utoipa::path(
    get,
    path = "/api/requests/{requestId}/outputs.zip",
    tag = "requests",
    params(("requestId" = String, Path, description = "The ID returned by the upload")),
    responses(
        (status = 200, description = "The archive", body = ZipArchive, content_type = "application/zip"),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "Request ID not found", body = ErrorBody),
        (status = 410, description = "The request was deleted by retention", body = ErrorBody),
        (status = 429, description = "Rate limit", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    ),
    security((), ("api_key" = []))
)]
pub async fn outputs_zip(
    State(state): State<AppState>,
    owner: Owner,
    Path(raw_id): Path<String>,
) -> ApiResult<Response> {
    let id = RequestId::parse(&raw_id).ok_or_else(ApiError::request_not_found)?;
    if state.core.request_head(id, &owner).await?.is_none() {
        return Err(lookup::missing(&state.core, id, &owner).await);
    }
    let (writer, reader) = tokio::io::duplex(PIPE_BYTES);
    let writer = Stalled::new(writer, state.config.limits.status_stream_idle_timeout);
    let (done_tx, done) = oneshot::channel::<()>();
    let (core, storage) = (state.core.clone(), state.storage.clone());
    // A task of its own: the handler's future and the body are dropped when the client hangs
    // up, and reads of the database must never be cut off half-way (see `crate::core`). The
    // task sees the client gone at its next write, and stops.
    tokio::spawn(async move {
        match bundle::write(&core, &storage, id, writer).await {
            Ok(writer) => {
                // Complete: said before the pipe closes, so the body ends cleanly.
                let _ = done_tx.send(());
                drop(writer);
            }
            Err(bundle::BundleError::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                tracing::debug!(request_id = %id, "client left during outputs.zip");
            }
            Err(bundle::BundleError::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                tracing::warn!(request_id = %id, "outputs.zip abandoned: the client stopped reading");
            }
            Err(e) => tracing::error!(request_id = %id, error = %e, "outputs.zip failed part-way"),
        }
    });
    // The pipe's end without the task's word means it stopped part-way: the body then ends
    // with an error, and the connection is cut instead of ending a short archive cleanly.
    let end = futures::stream::once(async move {
        match done.await {
            Ok(()) => None,
            Err(_) => Some(Err(std::io::Error::other("outputs.zip cut short"))),
        }
    })
    .filter_map(std::future::ready);
    let body = tokio_util::io::ReaderStream::new(reader).chain(end);
    let disposition = format!("attachment; filename=\"{id}-outputs.zip\"");
    Ok((
        [
            (header::CONTENT_TYPE, "application/zip".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

/// The pipe's writing end, failing with `TimedOut` once a write has waited `idle` for the
/// client to read: a client that stops reading must not hold the task (and an open object
/// read) forever. The task is never cancelled from outside (its reads of the database must not
/// be cut off); it stops at this error like at any other.
struct Stalled<W> {
    inner: W,
    idle: std::time::Duration,
    /// Set while a write waits.
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<W> Stalled<W> {
    fn new(inner: W, idle: std::time::Duration) -> Self {
        Self {
            inner,
            idle,
            deadline: None,
        }
    }
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Stalled<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::Poll;
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(r) => {
                this.deadline = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let idle = this.idle;
                let deadline = this
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(std::io::ErrorKind::TimedOut.into())),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
