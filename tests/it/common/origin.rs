//! An image origin on 127.0.0.1 that tests fill with generated images and misbehaviours.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use image::{DynamicImage, ImageFormat, RgbImage, RgbaImage};

/// Name → (content type, body).
type Files = HashMap<String, (String, Vec<u8>)>;

#[derive(Clone, Default)]
struct OriginState {
    files: Arc<Mutex<Files>>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

pub struct Origin {
    pub base: String,
    state: OriginState,
}

impl Origin {
    pub async fn start() -> Self {
        let state = OriginState::default();
        let app = Router::new()
            .route("/img/{name}", get(serve_file))
            .route("/status/{code}", get(serve_status))
            .route("/flaky/{fails}/{name}", get(serve_flaky))
            .route("/slow/{name}", get(serve_slow))
            .route("/redirect/{name}", get(redirect))
            .route("/delay/{ms}/{name}", get(serve_delayed))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Origin { base, state }
    }

    /// Serves `bytes` at /img/{name}; returns the full URL.
    pub fn put(&self, name: &str, content_type: &str, bytes: Vec<u8>) -> String {
        self.state
            .files
            .lock()
            .unwrap()
            .insert(name.to_string(), (content_type.to_string(), bytes));
        format!("{}/img/{name}", self.base)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// How many times a path was requested.
    pub fn hits(&self, path: &str) -> usize {
        self.state
            .hits
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

fn hit(state: &OriginState, path: String) -> usize {
    let mut hits = state.hits.lock().unwrap();
    let n = hits.entry(path).or_default();
    *n += 1;
    *n
}

async fn serve_file(State(s): State<OriginState>, Path(name): Path<String>) -> Response {
    hit(&s, format!("/img/{name}"));
    file_response(&s, &name)
}

fn file_response(s: &OriginState, name: &str) -> Response {
    match s.files.lock().unwrap().get(name) {
        Some((ct, bytes)) => ([(header::CONTENT_TYPE, ct.clone())], bytes.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn serve_status(State(s): State<OriginState>, Path(code): Path<u16>) -> Response {
    hit(&s, format!("/status/{code}"));
    StatusCode::from_u16(code).unwrap().into_response()
}

/// Answers 500 to the first `fails` requests, then serves the file.
async fn serve_flaky(
    State(s): State<OriginState>,
    Path((fails, name)): Path<(usize, String)>,
) -> Response {
    let n = hit(&s, format!("/flaky/{fails}/{name}"));
    if n <= fails {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    file_response(&s, &name)
}

/// Sends headers at once, then stalls before the body.
async fn serve_slow(State(s): State<OriginState>, Path(name): Path<String>) -> Response {
    hit(&s, format!("/slow/{name}"));
    let stream = futures::stream::once(async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"late"))
    });
    let _ = name;
    Response::builder()
        .header(header::CONTENT_TYPE, "image/jpeg")
        .body(Body::from_stream(stream))
        .unwrap()
}

/// Serves the file after `ms` milliseconds. Hits are counted with the query string, so tests
/// can tell distinct URLs of one file apart.
async fn serve_delayed(
    State(s): State<OriginState>,
    Path((ms, name)): Path<(u64, String)>,
    uri: axum::http::Uri,
) -> Response {
    hit(
        &s,
        uri.path_and_query()
            .map_or(uri.path(), |p| p.as_str())
            .to_string(),
    );
    tokio::time::sleep(Duration::from_millis(ms)).await;
    file_response(&s, &name)
}

async fn redirect(State(s): State<OriginState>, Path(name): Path<String>) -> Response {
    hit(&s, format!("/redirect/{name}"));
    (
        StatusCode::FOUND,
        [(header::LOCATION, format!("/img/{name}"))],
    )
        .into_response()
}

// ---- fixtures ----

/// A photo-like RGB image: smooth gradients plus deterministic noise, so JPEG has real work.
pub fn photo(w: u32, h: u32) -> RgbImage {
    let mut seed = 0x1234_5678u32;
    RgbImage::from_fn(w, h, |x, y| {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let n = (seed % 24) as i32 - 12;
        let r = ((x * 255 / w.max(1)) as i32 + n).clamp(0, 255) as u8;
        let g = ((y * 255 / h.max(1)) as i32 + n).clamp(0, 255) as u8;
        let b = (((x + y) * 127 / (w + h).max(1)) as i32 + 64 + n).clamp(0, 255) as u8;
        image::Rgb([r, g, b])
    })
}

pub fn encode(img: DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// A baseline 4:2:0 JPEG, as cameras and most sites make them.
pub fn jpeg(w: u32, h: u32, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = jpeg_encoder::Encoder::new(&mut out, quality);
    enc.set_sampling_factor(jpeg_encoder::SamplingFactor::R_4_2_0);
    enc.encode(
        photo(w, h).as_raw(),
        w as u16,
        h as u16,
        jpeg_encoder::ColorType::Rgb,
    )
    .unwrap();
    out
}

pub fn png(w: u32, h: u32) -> Vec<u8> {
    encode(DynamicImage::ImageRgb8(photo(w, h)), ImageFormat::Png)
}

pub fn png_rgba(w: u32, h: u32) -> Vec<u8> {
    let rgb = photo(w, h);
    let rgba = RgbaImage::from_fn(w, h, |x, y| {
        let p = rgb.get_pixel(x, y);
        image::Rgba([p[0], p[1], p[2], if x < w / 2 { 0 } else { 255 }])
    });
    encode(DynamicImage::ImageRgba8(rgba), ImageFormat::Png)
}

pub fn webp(w: u32, h: u32) -> Vec<u8> {
    encode(DynamicImage::ImageRgb8(photo(w, h)), ImageFormat::WebP)
}

pub fn gif(w: u32, h: u32) -> Vec<u8> {
    encode(
        DynamicImage::ImageRgba8(DynamicImage::ImageRgb8(photo(w, h)).to_rgba8()),
        ImageFormat::Gif,
    )
}

/// A real PNG whose header (IHDR, CRC fixed up) claims huge dimensions: a decompression bomb
/// in miniature.
pub fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut out = png(8, 8);
    // Signature (8), IHDR length (4), "IHDR" (4), then width and height.
    out[16..20].copy_from_slice(&w.to_be_bytes());
    out[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&out[12..29]);
    out[29..33].copy_from_slice(&crc.to_be_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

// ---- hostile fixtures and an origin on another loopback address (security tests) ----

impl Origin {
    /// The same origin, bound to `addr` (e.g. "127.0.0.2:0": on Linux all of 127/8 is
    /// loopback, so a test can make 127.0.0.2 an allowed network while 127.0.0.1 stays
    /// refused), plus `/goto?to=<url>`, which answers 302 to any absolute URL.
    pub async fn start_on(addr: &str) -> Self {
        let state = OriginState::default();
        let app = Router::new()
            .route("/img/{name}", get(serve_file))
            .route("/status/{code}", get(serve_status))
            .route("/redirect/{name}", get(redirect))
            .route("/goto", get(goto))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Origin { base, state }
    }

    /// A URL on this origin that redirects to `target`.
    pub fn redirect_to(&self, target: &str) -> String {
        let q: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("to", target)
            .finish();
        format!("{}/goto?{q}", self.base)
    }
}

async fn goto(
    State(s): State<OriginState>,
    axum::extract::RawQuery(q): axum::extract::RawQuery,
) -> Response {
    hit(&s, "/goto".to_string());
    let to = url::form_urlencoded::parse(q.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "to")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    (StatusCode::FOUND, [(header::LOCATION, to)]).into_response()
}

/// A real JPEG whose frame header (SOF0) claims `w`x`h` pixels. JPEG stores sides as 16 bits,
/// so 65535x65535 (4.3 gigapixels) is the largest bomb the format can announce.
pub fn jpeg_claiming(w: u16, h: u16) -> Vec<u8> {
    let mut out = jpeg(8, 8, 90);
    let sof = out
        .windows(2)
        .position(|m| m == [0xFF, 0xC0])
        .expect("a baseline JPEG has an SOF0 marker");
    // FF C0, length (2), precision (1), height (2), width (2).
    out[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    out[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    out
}

/// An animated GIF of `frames` frames of `w`x`h`: the first frame solid red, every later one
/// solid blue, so an output shows which frame was used.
pub fn gif_frames(w: u32, h: u32, frames: usize) -> Vec<u8> {
    use image::codecs::gif::{GifEncoder, Repeat};
    use image::{Delay, Frame, Rgba};
    let mut out = Vec::new();
    {
        let mut enc = GifEncoder::new_with_speed(&mut out, 30);
        enc.set_repeat(Repeat::Infinite).unwrap();
        let red = RgbaImage::from_pixel(w, h, Rgba([255, 0, 0, 255]));
        let blue = RgbaImage::from_pixel(w, h, Rgba([0, 0, 255, 255]));
        for i in 0..frames {
            let img = if i == 0 { red.clone() } else { blue.clone() };
            enc.encode_frame(Frame::from_parts(
                img,
                0,
                0,
                Delay::from_numer_denom_ms(10, 1),
            ))
            .unwrap();
        }
    }
    out
}

/// An SVG image (a format we do not decode: it is XML that can carry scripts).
pub fn svg() -> Vec<u8> {
    br#"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64" onload="alert(1)">
  <rect width="64" height="64" fill="red"/><script>alert(document.domain)</script>
</svg>
"#
    .to_vec()
}

/// HTML first, then a whole JPEG: a page that some sniffers would call an image.
pub fn html_then_jpeg() -> Vec<u8> {
    let mut out = b"<html><body><script>alert(1)</script>".to_vec();
    out.extend(jpeg(16, 16, 90));
    out.extend_from_slice(b"</body></html>");
    out
}

/// A whole JPEG with an HTML page appended after its end-of-image marker.
pub fn jpeg_then_html(w: u32, h: u32) -> Vec<u8> {
    let mut out = jpeg(w, h, 90);
    out.extend_from_slice(b"<html><body><script>alert(1)</script></body></html>");
    out
}
