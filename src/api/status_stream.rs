//! The status body of a large request, streamed: read from one database snapshot a page at a
//! time and sent as chunks (`Transfer-Encoding: chunked`) as it is read, so answering a
//! 30,000-image request holds a page of rows, not all of them. The product specification wants
//! one body with every output URL and every product, so paging the API itself was not an
//! option.
//!
//! A task of its own owns the snapshot (a read transaction) and feeds the response through a
//! small bounded channel. The handler's future and the response body are dropped whenever the
//! client hangs up; the task is not, so no query is ever cut off half-way (sqlx 0.8 can return
//! such a connection to the pool inside its transaction; see the doc of `crate::core`). It sees
//! the client gone at its next send, and ends the transaction itself.

use std::time::Duration;

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::core::{Core, ImageRow, ProductRow, ReadSnapshot, RequestRow, StoreResult, WebhookRow};
use crate::domain::Owner;
use crate::domain::RequestId;
use crate::error::{ApiError, ApiResult};
use crate::report::{StatusRows, StatusStream};

/// Rows read per query: 500 images are about 125 KB of JSON with 50-byte URLs (2 chunks), and a
/// 30,000-image request takes about 140 queries. 1,000 and 2,000 measured no faster.
pub const PAGE_ROWS: i64 = 500;

/// Bytes of body a chunk: small enough that what waits to be written (in the channel, and
/// in hyper's write buffer, which takes chunks until it holds about 400 KB) stays well under a
/// MB per stream.
pub const CHUNK_BYTES: usize = 64 * 1024;

/// Chunks waiting to be written: enough to keep the socket busy while the next page is read,
/// few enough to keep memory at a few pages.
const CHANNEL_CHUNKS: usize = 2;

/// The longest a streamed body may take whatever the client does, so that a client that reads
/// just often enough to beat the idle timeout still cannot hold a snapshot for long.
const MAX_STREAM_TIME: Duration = Duration::from_secs(600);

/// A body read from one snapshot a page at a time: the status body, report.csv.
pub trait SnapshotBody: Sized + Send + 'static {
    const CONTENT_TYPE: &'static str;

    /// The body of `request` (and its delivery), both read from the snapshot that will give
    /// the rows.
    fn start(request: RequestRow, webhook: Option<WebhookRow>) -> StoreResult<Self>;

    /// The next chunk of the body (about [`CHUNK_BYTES`]), or `None` after the last.
    fn next_chunk(
        &mut self,
        rows: &mut (impl StatusRows + Send),
    ) -> impl std::future::Future<Output = StoreResult<Option<Vec<u8>>>> + Send;
}

impl SnapshotBody for StatusStream {
    const CONTENT_TYPE: &'static str = "application/json";

    fn start(request: RequestRow, webhook: Option<WebhookRow>) -> StoreResult<Self> {
        StatusStream::new(request, webhook, PAGE_ROWS, CHUNK_BYTES)
    }

    async fn next_chunk(
        &mut self,
        rows: &mut (impl StatusRows + Send),
    ) -> StoreResult<Option<Vec<u8>>> {
        StatusStream::next_chunk(self, rows).await
    }
}

/// Answers with the streamed status body of `id`, or an error (404, 503) before anything is
/// sent. `idle` bounds how long the snapshot waits for a client that stops reading.
pub async fn respond(
    core: Core,
    id: RequestId,
    owner: Owner,
    idle: Duration,
) -> ApiResult<Response> {
    respond_with::<StatusStream>(core, id, owner, idle).await
}

/// Answers with body `S` of `id`, streamed from one snapshot, or an error (404, 503) before
/// anything is sent.
pub async fn respond_with<S: SnapshotBody>(
    core: Core,
    id: RequestId,
    owner: Owner,
    idle: Duration,
) -> ApiResult<Response> {
    let (opened_tx, opened) = oneshot::channel();
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    let (asked, asker) = (core.clone(), owner.clone());
    tokio::spawn(produce::<S>(core, id, owner, idle, opened_tx, tx));
    match opened.await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => return Err(super::lookup::missing(&asked, id, &asker).await),
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => {
            return Err(ApiError::Internal(anyhow::anyhow!(
                "status stream task ended before it started"
            )))
        }
    }
    // A body that ends before its last chunk must end with an error, not quietly: then hyper
    // closes the connection without the final empty chunk, and the client sees a cut-off
    // body instead of a short one that looks complete.
    let body = futures::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        match rx.recv().await {
            Some(Msg::Chunk(bytes)) => Some((Ok(bytes), Some(rx))),
            Some(Msg::End) => None,
            None => Some((Err(std::io::Error::other("status body cut short")), None)),
        }
    });
    Ok((
        [(header::CONTENT_TYPE, S::CONTENT_TYPE)],
        Body::from_stream(body),
    )
        .into_response())
}

enum Msg {
    Chunk(Bytes),
    /// The body is complete.
    End,
}

/// How a stream ended.
#[derive(Debug)]
enum Stop {
    /// Before the body started: the handler was told (the request is unknown, or an error).
    Answered,
    /// Every chunk was sent.
    Done,
    /// The client hung up (the response body, or the handler before it, was dropped).
    Gone,
    /// The client stopped reading for `idle`, or the stream passed `MAX_STREAM_TIME`.
    TimedOut,
    /// A read failed part-way; the body ends cut off.
    Failed(crate::core::StoreError),
}

/// The task that owns the snapshot: opens it, streams the body, and always ends the
/// transaction itself, however the stream ended.
async fn produce<S: SnapshotBody>(
    core: Core,
    id: RequestId,
    owner: Owner,
    idle: Duration,
    opened: oneshot::Sender<StoreResult<bool>>,
    tx: mpsc::Sender<Msg>,
) {
    let mut snap = match core.read_snapshot().await {
        Ok(snap) => snap,
        Err(e) => {
            let _ = opened.send(Err(e));
            return;
        }
    };
    let stop = stream::<S>(&mut snap, id, &owner, idle, opened, &tx).await;
    // The snapshot ends before the end of the body waits for the client.
    if let Err(e) = snap.close().await {
        tracing::warn!(request_id = %id, error = %e, "could not end a status snapshot");
    }
    match stop {
        Stop::Answered => {}
        Stop::Done => {
            let _ = tokio::time::timeout(idle, tx.send(Msg::End)).await;
        }
        Stop::Gone => tracing::debug!(request_id = %id, "client left during a streamed status"),
        Stop::TimedOut => tracing::warn!(
            request_id = %id,
            idle_timeout = %humantime::format_duration(idle),
            "streamed status abandoned: the client stopped reading"
        ),
        Stop::Failed(e) => tracing::error!(
            request_id = %id,
            error = %format!("{:#}", anyhow::Error::from(e)),
            "streamed status failed part-way"
        ),
    }
    // Dropping `tx` without `End` makes the body end with an error (see `respond`).
}

async fn stream<S: SnapshotBody>(
    snap: &mut ReadSnapshot,
    id: RequestId,
    owner: &Owner,
    idle: Duration,
    opened: oneshot::Sender<StoreResult<bool>>,
    tx: &mpsc::Sender<Msg>,
) -> Stop {
    let deadline = Instant::now() + MAX_STREAM_TIME;
    let found = match snap.request(id, owner).await {
        Ok(Some(request)) => snap.webhook(id).await.map(|w| Some((request, w))),
        Ok(None) => Ok(None),
        Err(e) => Err(e),
    };
    let (request, webhook) = match found {
        Ok(Some(found)) => found,
        other => {
            let _ = opened.send(other.map(|_| false));
            return Stop::Answered;
        }
    };
    let mut body = match S::start(request, webhook) {
        Ok(body) => body,
        Err(e) => {
            let _ = opened.send(Err(e));
            return Stop::Answered;
        }
    };
    if opened.send(Ok(true)).is_err() {
        return Stop::Gone;
    }
    let mut rows = SnapshotRows { snap, id };
    loop {
        // The deadline is checked between queries, never by cutting one off: a query
        // cancelled half-way is what breaks a connection.
        let now = Instant::now();
        if now >= deadline {
            return Stop::TimedOut;
        }
        let chunk = match body.next_chunk(&mut rows).await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return Stop::Done,
            Err(e) => return Stop::Failed(e),
        };
        // Why a time bound: while the client does not read, this task waits here with the
        // snapshot open. On Postgres an open snapshot holds back VACUUM for the whole database
        // (the image rows that workers keep updating bloat meanwhile); on SQLite it stops WAL
        // checkpoints short of it (the WAL file keeps growing); on both it holds one of a few
        // pooled connections. A stalled client must not be able to do that for long.
        let wait = idle.min(deadline.saturating_duration_since(now));
        match tokio::time::timeout(wait, tx.send(Msg::Chunk(Bytes::from(chunk)))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Stop::Gone,
            Err(_) => return Stop::TimedOut,
        }
    }
}

/// The rows of one request, read from the snapshot.
struct SnapshotRows<'a> {
    snap: &'a mut ReadSnapshot,
    id: RequestId,
}

impl StatusRows for SnapshotRows<'_> {
    async fn output_urls(
        &mut self,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<(i64, Option<String>)>> {
        self.snap.output_urls(self.id, after, limit).await
    }

    async fn products(&mut self, after: i64, limit: i64) -> StoreResult<Vec<ProductRow>> {
        self.snap.products(self.id, after, limit).await
    }

    async fn images(&mut self, after: i64, limit: i64) -> StoreResult<Vec<(i64, ImageRow)>> {
        self.snap.images(self.id, after, limit).await
    }
}
