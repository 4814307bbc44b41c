//! One log line per HTTP request, at info, after its answer: method, route template, status,
//! duration, request id and client. Routes are logged by template (`/api/status/{request_id}`),
//! so a log can be grouped by endpoint; a request that matched no route logs `route = "-"`.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use super::client_addr::client_of;
use super::AppState;

/// The header carrying the request id: the client's own if it sent one, else a new UUID
/// (set by `SetRequestIdLayer`), echoed on the answer.
pub const REQUEST_ID: &str = "x-request-id";

/// The route template of an answer, carried from the router to [`log`] on the response.
#[derive(Clone)]
struct Route(String);

/// Inside the router: hands the matched route's template to [`log`] on the response.
pub async fn record_route(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let mut response = next.run(req).await;
    if let Some(route) = route {
        response.extensions_mut().insert(Route(route));
    }
    response
}

/// For the output images (a file service, not a route): one template for all of them.
pub async fn image_route(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    response
        .extensions_mut()
        .insert(Route("/images/{file}".into()));
    response
}

pub async fn log(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let client = client_of(peer.ip(), req.headers(), &state.config);
    let request_id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    // Every line the handler writes carries the request id too.
    let span = tracing::info_span!("request", request_id = %request_id);
    let response = next.run(req).instrument(span).await;
    let route = response
        .extensions()
        .get::<Route>()
        .map(|r| r.0.clone())
        .unwrap_or_else(|| "-".into());
    tracing::info!(
        target: "imgbatch::access",
        method = %method,
        route = %route,
        status = response.status().as_u16(),
        // To the hundredth of a millisecond: more digits are noise.
        duration_ms = (started.elapsed().as_secs_f64() * 100_000.0).round() / 100.0,
        request_id = %request_id,
        %client,
        "request"
    );
    response
}
