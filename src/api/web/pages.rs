//! The pages: thin handlers that fill a template. Nothing here reads another owner's data: a
//! page names a request, and the script asks the API for it with the caller's key.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};

use super::assets::ASSETS;
use super::FormDefaults;
use crate::api::{lookup, AppState};
use crate::domain::{Owner, RequestId, Status};
use crate::error::{human_bytes, ApiError};

/// What every page's frame needs.
struct Layout {
    css: &'static str,
    js: &'static str,
    icon: &'static str,
    /// Which navigation entry is this page (`home`, `requests`, or none).
    page: &'static str,
    /// The service has API keys: the script asks for one before it calls the API.
    auth_required: bool,
}

impl Layout {
    fn new(state: &AppState, page: &'static str) -> Self {
        let assets = &*ASSETS;
        Layout {
            css: &assets.css.href,
            js: &assets.js.href,
            icon: &assets.icon.href,
            page,
            auth_required: !state.keys.is_open(),
        }
    }
}

/// The output formats an upload may ask for, with their labels.
const FORMATS: [(&str, &str); 3] = [
    ("jpeg", "JPEG"),
    ("webp", "WebP"),
    ("auto", "Auto (the smaller of JPEG and WebP)"),
];

#[derive(Template)]
#[template(path = "home.html")]
struct Home {
    layout: Layout,
    defaults: FormDefaults,
    formats: [(&'static str, &'static str); 3],
    max_upload_bytes: usize,
    max_upload_human: String,
    max_rows: String,
}

#[derive(Template)]
#[template(path = "requests.html")]
struct Requests {
    layout: Layout,
    statuses: Vec<(&'static str, &'static str)>,
}

#[derive(Template)]
#[template(path = "request.html")]
struct RequestPage {
    layout: Layout,
    id: String,
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    layout: Layout,
    title: &'static str,
    message: String,
}

/// `GET /`: the upload form (with this process's defaults) and the latest requests.
pub async fn home(State(state): State<AppState>) -> Response {
    let limits = &state.config.limits;
    render(
        StatusCode::OK,
        Home {
            layout: Layout::new(&state, "home"),
            defaults: FormDefaults::from_config(&state.config),
            formats: FORMATS,
            max_upload_bytes: limits.max_upload_bytes,
            max_upload_human: human_bytes(limits.max_upload_bytes),
            max_rows: thousands(limits.max_rows),
        },
    )
}

/// `GET /requests`: the caller's requests, newest first.
pub async fn requests(State(state): State<AppState>) -> Response {
    let statuses = Status::ALL
        .iter()
        .map(|s| (s.as_str(), label(*s)))
        .collect();
    render(
        StatusCode::OK,
        Requests {
            layout: Layout::new(&state, "requests"),
            statuses,
        },
    )
}

/// `GET /requests/{id}`: one request. Without API keys the page knows whether the request
/// exists and answers 404 (or 410) at once; with keys it cannot (a navigation carries no key,
/// and saying which IDs exist to someone without one would leak), so the script asks the API
/// and says "not found" in the page.
pub async fn request(State(state): State<AppState>, Path(raw_id): Path<String>) -> Response {
    let Some(id) = RequestId::parse(&raw_id) else {
        return not_found(&state, "There is no request with this ID.");
    };
    if state.keys.is_open() {
        let owner = Owner::open();
        match state.core.request_head(id, &owner).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                return match lookup::missing(&state.core, id, &owner).await {
                    ApiError::Gone(message) => {
                        error_page(&state, StatusCode::GONE, "Request deleted", message)
                    }
                    ApiError::NotFound(_) => not_found(&state, "There is no request with this ID."),
                    other => failure(&state, other),
                };
            }
            Err(e) => return failure(&state, e.into()),
        }
    }
    render(
        StatusCode::OK,
        RequestPage {
            layout: Layout::new(&state, ""),
            id: id.to_string(),
        },
    )
}

pub fn not_found(state: &AppState, message: &str) -> Response {
    error_page(state, StatusCode::NOT_FOUND, "Not found", message.into())
}

/// A database error while building a page: said in a page, with the API's status (503 while
/// the database is unreachable, so a reload later works).
fn failure(state: &AppState, e: ApiError) -> Response {
    let status = e.status();
    if status.is_server_error() {
        tracing::warn!(error = %e, "page: cannot read the request");
    }
    error_page(state, status, "Something went wrong", e.to_string())
}

fn error_page(
    state: &AppState,
    status: StatusCode,
    title: &'static str,
    message: String,
) -> Response {
    render(
        status,
        ErrorPage {
            layout: Layout::new(state, ""),
            title,
            message,
        },
    )
}

fn render(status: StatusCode, page: impl Template) -> Response {
    match page.render() {
        // Pages name the current assets: always ask again, so a new build is picked up.
        Ok(html) => (
            status,
            [(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"))],
            Html(html),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "page: template failed");
            (StatusCode::INTERNAL_SERVER_ERROR, Html("internal error")).into_response()
        }
    }
}

/// How a status reads in the page (the script has the same labels).
fn label(status: Status) -> &'static str {
    match status {
        Status::Pending => "Pending",
        Status::Processing => "Processing",
        Status::Completed => "Completed",
        Status::CompletedWithErrors => "Completed with errors",
        Status::Failed => "Failed",
        Status::Cancelled => "Cancelled",
    }
}

/// `50,000`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(50_000), "50,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
