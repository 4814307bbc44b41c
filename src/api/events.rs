//! `GET /api/requests/{id}/events`: a request's progress as Server-Sent Events, so a client
//! need not poll. A `progress` event (the request's summary) whenever it changes, at most one
//! every [`COALESCE`] and always the latest; then one `status` event with the final summary,
//! and the stream ends.
//!
//! Changes made in this process arrive at once (`Core::changes`); changes made by other
//! processes on the same Postgres database are found by reading the request's row every
//! [`POLL`]. Each read is one primary-key lookup.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{SinkExt, Stream};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{lookup, AppState};
use crate::core::{Core, RequestRow};
use crate::domain::{Owner, RequestId};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::report::RequestSummary;

/// One event of the stream, as the OpenAPI document describes it.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // describes the stream for the OpenAPI document only
pub struct LiveEvent {
    /// `progress` while the request runs, `status` once, at the end.
    #[schema(pattern = "^(progress|status)$")]
    event: String,
    /// The request's summary (`RequestSummary`), as JSON.
    data: String,
}

/// The shortest time between two `progress` events.
const COALESCE: Duration = Duration::from_millis(250);
/// How often the row is read when no change was seen in this process.
const POLL: Duration = Duration::from_secs(1);

/// Live events of a request: `event: progress` with its summary on every change (coalesced:
/// at most one every 250 ms, always the latest), then `event: status` with the final summary,
/// after which the stream ends. The first event comes at once (a `status` event alone for a
/// request that has finished). `404` before any event for an unknown ID or another key's
/// request.
#[utoipa::path(
    get,
    path = "/api/requests/{requestId}/events",
    tag = "requests",
    params(("requestId" = String, Path, description = "The ID returned by the upload")),
    responses(
        (status = 200, description = "Server-Sent Events: `progress` and a final `status`, each with a RequestSummary as data", body = LiveEvent, content_type = "text/event-stream"),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "Request ID not found", body = ErrorBody),
        (status = 410, description = "The request was deleted by retention", body = ErrorBody),
        (status = 429, description = "Rate limit", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    ),
    security((), ("api_key" = []))
)]
pub async fn events(
    State(state): State<AppState>,
    owner: Owner,
    Path(raw_id): Path<String>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let id = RequestId::parse(&raw_id).ok_or_else(ApiError::request_not_found)?;
    let Some(first) = state.core.request_row(id, &owner).await? else {
        return Err(lookup::missing(&state.core, id, &owner).await);
    };
    let (tx, rx) = futures::channel::mpsc::channel(2);
    tokio::spawn(follow(
        state.core.clone(),
        id,
        owner,
        first,
        tx,
        state.shutdown.clone(),
    ));
    Ok(Sse::new(rx).keep_alive(KeepAlive::default()))
}

type Events = futures::channel::mpsc::Sender<Result<Event, Infallible>>;

/// What makes a new `progress` event: the summary's moving parts.
fn version(r: &RequestRow) -> impl PartialEq {
    (
        r.status,
        r.updated_at,
        r.completed_images,
        r.failed_images,
        r.cancelled_images,
    )
}

/// Sends the request's events until it is final, the client goes away, or the service stops.
async fn follow(
    core: Core,
    id: RequestId,
    owner: Owner,
    mut row: RequestRow,
    mut tx: Events,
    shutdown: CancellationToken,
) {
    let mut changes = core.changes();
    let mut sent = None;
    loop {
        if sent.as_ref() != Some(&version(&row)) {
            let last = row.status.is_final();
            let name = if last { "status" } else { "progress" };
            let event = Event::default()
                .event(name)
                .json_data(RequestSummary::of(&row));
            let Ok(event) = event else { return };
            if tx.send(Ok(event)).await.is_err() || last {
                return;
            }
            sent = Some(version(&row));
            tokio::select! {
                _ = tokio::time::sleep(COALESCE) => {}
                _ = shutdown.cancelled() => return,
            }
        } else {
            // A client that went away is noticed here, within a poll.
            if tx.is_closed() {
                return;
            }
            let deadline = Instant::now() + POLL;
            tokio::select! {
                _ = changed(&mut changes, id, deadline) => {}
                _ = shutdown.cancelled() => return,
            }
        }
        row = match core.request_row(id, &owner).await {
            Ok(Some(r)) => r,
            // Gone (deleted): nothing more will happen to it.
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(request_id = %id, error = %e, "live events: cannot read the request");
                continue;
            }
        };
    }
}

/// Returns when this process changes request `id` (or may have: the receiver fell behind),
/// or at `deadline`.
async fn changed(
    changes: &mut tokio::sync::broadcast::Receiver<RequestId>,
    id: RequestId,
    deadline: Instant,
) {
    loop {
        tokio::select! {
            r = changes.recv() => match r {
                Ok(changed) if changed != id => continue,
                Ok(_) | Err(RecvError::Lagged(_)) => return,
                Err(RecvError::Closed) => {
                    tokio::time::sleep_until(deadline).await;
                    return;
                }
            },
            _ = tokio::time::sleep_until(deadline) => return,
        }
    }
}
