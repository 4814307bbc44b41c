//! HTTP layer: thin handlers that parse, call the domain core, and shape the answer.

mod access_log;
mod auth;
mod client_addr;
mod events;
mod health;
mod lookup;
pub mod openapi;
mod output_csv;
mod outputs_zip;
mod rate_limit;
mod report_csv;
mod requests;
mod status;
pub mod status_cache;
pub mod status_stream;
mod upload;
mod web;
mod webhook_retry;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderName, HeaderValue};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;

pub use auth::ApiKeys;

use crate::config::Config;
use crate::core::Core;
use crate::error::ApiError;

/// What every handler may use.
#[derive(Clone)]
pub struct AppState {
    pub core: Core,
    pub config: Arc<Config>,
    pub keys: Arc<ApiKeys>,
    /// Base of output image URLs, without a trailing slash.
    pub public_url: Arc<str>,
    pub status_cache: Arc<status_cache::StatusCache>,
    /// Where outputs are read back from (outputs.zip).
    pub storage: crate::storage::Storage,
    /// Cancelled when the service stops: ends live event streams, so shutdown need not wait
    /// for them.
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// The API page is Swagger UI's; its browser tab says whose API it is.
async fn docs_title(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let is_page = matches!(req.uri().path(), "/docs/" | "/docs/index.html");
    let response = next.run(req).await;
    if !is_page || !response.status().is_success() {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // The page is a few KiB; anything larger is not the page we know.
    let Ok(bytes) = axum::body::to_bytes(body, 256 * 1024).await else {
        return ApiError::Internal(anyhow::anyhow!("API page unreadable")).into_response();
    };
    let page = String::from_utf8_lossy(&bytes).replacen(
        "<title>Swagger UI</title>",
        "<title>imgbatch API</title>",
        1,
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    axum::response::Response::from_parts(parts, axum::body::Body::from(page))
}

/// A known path asked with the wrong method: JSON like every other error.
async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!(
        "{method} is not allowed on {}; the API is described at /docs",
        uri.path()
    ))
}

pub fn router(state: AppState) -> Router {
    // The multipart envelope (boundaries, part headers, the webhookUrl part) adds a little to the
    // CSV itself; the CSV's own limit is enforced exactly while its part streams in.
    let body_limit = state
        .config
        .limits
        .max_upload_bytes
        .saturating_add(64 * 1024);
    let api = Router::new()
        .route(
            "/upload",
            post(upload::upload).layer(DefaultBodyLimit::max(body_limit)),
        )
        .route("/status/{request_id}", get(status::status))
        .route("/openapi.json", get(openapi::openapi_json))
        .route(
            "/requests/{request_id}/webhook/retry",
            post(webhook_retry::retry),
        )
        .route(
            "/requests/{request_id}/output.csv",
            get(output_csv::output_csv),
        )
        .route(
            "/requests/{request_id}/report.csv",
            get(report_csv::report_csv),
        )
        .route(
            "/requests/{request_id}/outputs.zip",
            get(outputs_zip::outputs_zip),
        )
        .route("/requests", get(requests::list))
        .route("/requests/{request_id}/cancel", post(requests::cancel))
        .route("/requests/{request_id}/retry", post(requests::retry))
        .route("/requests/{request_id}/events", get(events::events))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(axum::middleware::from_fn(access_log::record_route))
        // Answers about requests change from one second to the next: never cache them.
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ));
    let api = match rate_limit::RateLimit::new(state.config.rate_limit) {
        Some(limit) => api.layer(axum::middleware::from_fn_with_state(
            (limit, state.clone()),
            rate_limit::limit,
        )),
        None => api,
    };
    let mut app = Router::new();
    // A worker-only process answers health and metrics, not the API.
    if state.config.api {
        app = app.nest("/api", api).merge(web::router(&state));
    }
    let mut app = app
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics));
    // Swagger UI is bundled in the binary (no network needed); its page runs scripts, so it
    // carries its own, looser content policy.
    let docs: Router<AppState> = Router::from(
        utoipa_swagger_ui::SwaggerUi::new("/docs")
            .config(utoipa_swagger_ui::Config::new(["/api/openapi.json"])),
    )
    .layer(SetResponseHeaderLayer::overriding(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; \
             script-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
        ),
    ))
    .layer(axum::middleware::from_fn(docs_title));
    if state.config.api {
        app = app.merge(docs);
    }
    // The fallbacks first: the route layer then wraps every route and the 405 answers.
    let mut app = app
        .fallback(web::not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(axum::middleware::from_fn(access_log::record_route));
    if let Some(dir) = state.config.storage_dir() {
        let files = tower_http::services::ServeDir::new(dir)
            .append_index_html_on_directories(false)
            .call_fallback_on_method_not_allowed(true)
            .fallback(axum::handler::HandlerWithoutStateExt::into_service(
                |method: axum::http::Method, uri: axum::http::Uri| async move {
                    if method == axum::http::Method::GET || method == axum::http::Method::HEAD {
                        ApiError::NotFound("no such image".into())
                    } else {
                        method_not_allowed(method, uri).await
                    }
                },
            ));
        app = app.nest_service(
            "/images",
            tower::ServiceBuilder::new()
                .layer(axum::middleware::from_fn(access_log::image_route))
                .service(files),
        );
    }
    app.layer(DefaultBodyLimit::max(64 * 1024))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        // Nothing we serve is a page that runs scripts; a page that needs to (the API docs)
        // sets its own policy first.
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            access_log::log,
        ))
        .layer(PropagateRequestIdLayer::new(HeaderName::from_static(
            access_log::REQUEST_ID,
        )))
        .layer(SetRequestIdLayer::new(
            HeaderName::from_static(access_log::REQUEST_ID),
            MakeRequestUuid,
        ))
        .with_state(state)
}
