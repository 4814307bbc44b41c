//! The web page: upload a CSV, follow requests, see outputs and savings, download them.
//!
//! Pages are HTML shells rendered from askama templates; what they show about requests comes
//! from the JSON API, fetched by a little plain JavaScript (`assets/app.js`). That way the page
//! has exactly the API's rules, and with API keys set the key travels as the API wants it (a
//! header, which a browser's own navigation cannot send). Assets are embedded in the binary and
//! the pages' content policy allows scripts and styles from this origin only, never inline.

mod assets;
mod pages;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tower_http::set_header::SetResponseHeaderLayer;

use super::AppState;
use crate::config::Config;
use crate::error::ApiError;

/// What the upload form starts with: the process's own defaults, so an upload that changes
/// nothing is processed as one without options would be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormDefaults {
    pub quality: u8,
    pub max_width: Option<u32>,
    pub max_height: Option<u32>,
    /// `jpeg`, `webp` or `auto`.
    pub format: &'static str,
}

impl FormDefaults {
    pub fn from_config(config: &Config) -> Self {
        let options = config.default_options();
        FormDefaults {
            quality: options.quality(),
            max_width: options.max_width(),
            max_height: options.max_height(),
            format: options.format().as_str(),
        }
    }
}

/// The pages' routes (the caller merges them when it serves the API).
pub fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/", get(pages::home))
        .route("/requests", get(pages::requests))
        .route("/requests/{request_id}", get(pages::request))
        .route("/assets/{name}", get(assets::asset))
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            content_policy(state),
        ))
}

/// The pages' Content-Security-Policy: scripts, styles and connections to this origin only;
/// images from this origin and from wherever outputs are stored (an S3 bucket or CDN has
/// another origin); no inline code, no plugins, no frames, no `<base>`. Trusted Types are
/// required, so no string can reach an HTML sink (the script never builds HTML from text).
fn content_policy(state: &AppState) -> HeaderValue {
    let mut img = String::from("'self'");
    for base in [state.storage.url_base(), &*state.public_url] {
        if let Some(origin) = origin_of(base) {
            if !img.split(' ').any(|o| o == origin) {
                img.push(' ');
                img.push_str(&origin);
            }
        }
    }
    let policy = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src {img}; \
         connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'; \
         require-trusted-types-for 'script'"
    );
    HeaderValue::from_str(&policy).unwrap_or_else(|_| {
        // Only an origin with bytes a header cannot hold gets here: leave it out.
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'; \
             require-trusted-types-for 'script'",
        )
    })
}

/// `https://cdn.example.com` of `https://cdn.example.com/images/…`; None for a URL with no
/// usable origin. Only http(s) origins are named in the policy.
fn origin_of(url: &str) -> Option<String> {
    let url = url::Url::parse(url).ok()?;
    if !matches!(url.scheme(), "http" | "https") {
        return None;
    }
    Some(url.origin().ascii_serialization())
}

/// The answer for a path nothing serves: an HTML page for a browser's navigation, JSON (as the
/// API's errors are) for everything else, such as curl or a script.
pub async fn not_found(State(state): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    if state.config.api && wants_html && !uri.path().starts_with("/api/") {
        let mut page = pages::not_found(&state, "There is no page at this address.");
        page.headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, content_policy(&state));
        return page;
    }
    ApiError::NotFound("no such endpoint".into()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_come_from_the_settings() {
        let mut config = Config::defaults();
        assert_eq!(
            FormDefaults::from_config(&config),
            FormDefaults {
                quality: 50,
                max_width: None,
                max_height: None,
                format: "jpeg"
            }
        );
        config.quality = 82;
        config.max_width = Some(1200);
        config.format = crate::domain::FormatChoice::Webp;
        let d = FormDefaults::from_config(&config);
        assert_eq!((d.quality, d.max_width, d.format), (82, Some(1200), "webp"));
    }

    #[test]
    fn origins_are_scheme_host_and_port() {
        assert_eq!(
            origin_of("https://cdn.example.com/img/x").as_deref(),
            Some("https://cdn.example.com")
        );
        assert_eq!(
            origin_of("http://127.0.0.1:9000/bucket").as_deref(),
            Some("http://127.0.0.1:9000")
        );
        assert_eq!(origin_of("not a url"), None);
        assert_eq!(origin_of("data:text/plain,x"), None);
    }
}
