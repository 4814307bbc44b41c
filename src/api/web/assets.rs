//! The page's CSS, JavaScript and icon, embedded in the binary so the page works offline and
//! nothing is loaded from another site. Each is served under a name that carries a hash of its
//! bytes (`/assets/app.3f2a…js`): a new build changes the name, so the files can be cached for
//! a year without a stale one ever being used, and pages (never cached) always name the current
//! ones.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

pub struct Asset {
    /// `/assets/<stem>.<hash>.<ext>`.
    pub href: String,
    etag: HeaderValue,
    content_type: &'static str,
    bytes: &'static [u8],
}

impl Asset {
    fn new(stem: &str, ext: &str, content_type: &'static str, bytes: &'static [u8]) -> Self {
        let digest = Sha256::digest(bytes);
        // 64 bits of the digest: plenty to tell builds apart.
        let hash: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        Asset {
            href: format!("/assets/{stem}.{hash}.{ext}"),
            etag: HeaderValue::from_str(&format!("\"{hash}\"")).expect("hex is a valid header"),
            content_type,
            bytes,
        }
    }
}

/// The embedded files.
pub struct Assets {
    pub css: Asset,
    pub js: Asset,
    pub icon: Asset,
}

pub static ASSETS: LazyLock<Assets> = LazyLock::new(|| Assets {
    css: Asset::new(
        "app",
        "css",
        "text/css; charset=utf-8",
        include_bytes!("assets/app.css"),
    ),
    js: Asset::new(
        "app",
        "js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/app.js"),
    ),
    icon: Asset::new(
        "icon",
        "svg",
        "image/svg+xml",
        include_bytes!("assets/icon.svg"),
    ),
});

/// `GET /assets/{name}`: only the current names exist; an old build's name is a 404, as the
/// page that named it is gone too.
pub async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    let assets = &*ASSETS;
    let path = format!("/assets/{name}");
    let Some(asset) = [&assets.css, &assets.js, &assets.icon]
        .into_iter()
        .find(|a| a.href == path)
    else {
        return (StatusCode::NOT_FOUND, "no such asset").into_response();
    };
    let cache = (
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v == asset.etag)
    {
        return (
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, asset.etag.clone()), cache],
        )
            .into_response();
    }
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            ),
            (header::ETAG, asset.etag.clone()),
            cache,
        ],
        asset.bytes,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_hash_of_the_bytes() {
        let a = Asset::new("app", "css", "text/css", b"body{}");
        let b = Asset::new("app", "css", "text/css", b"body{ }");
        assert!(a.href.starts_with("/assets/app.") && a.href.ends_with(".css"));
        assert_eq!(a.href.len(), "/assets/app..css".len() + 16);
        assert_ne!(a.href, b.href);
        assert_eq!(a.etag.to_str().unwrap(), format!("\"{}\"", &a.href[12..28]));
    }
}
