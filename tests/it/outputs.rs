//! What each output is (issue 16), over HTTP: colour-managed inputs come back converted and
//! say so, inputs whose JPEG would be larger come back as themselves (without metadata) with
//! their real Content-Type, and every image reports its bytes, size and format.

use std::time::Duration;

use serde_json::Value;

use crate::common::origin::Origin;
use crate::common::{csv, images, TestApp};
use crate::db_test;

fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{path}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

const INPUTS: [(&str, &str); 4] = [
    ("color/prophoto.jpg", "image/jpeg"),
    ("kept/small-q40.webp", "image/webp"),
    ("kept/palette.gif", "image/gif"),
    ("color/untagged.jpg", "image/jpeg"),
];

async fn run(app: &TestApp, origin: &Origin) -> Value {
    let urls: Vec<String> = INPUTS
        .iter()
        .map(|(path, ct)| origin.put(path.rsplit('/').next().unwrap(), ct, fixture(path)))
        .collect();
    let id = app
        .upload_ok(csv(&[("1", "Outputs", &urls.join(","))]))
        .await;
    let status = app.wait_settled(&id, Duration::from_secs(30)).await;
    assert_eq!(status["status"], "completed", "{status}");
    status
}

async fn fetch(app: &TestApp, url: &str) -> (String, Vec<u8>) {
    let resp = app.http.get(url).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{url}");
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    (ct, resp.bytes().await.unwrap().to_vec())
}

db_test!(outputs_report_what_they_are_and_never_grow, |db| {
    let origin = Origin::start().await;
    let app = TestApp::start(db.config()).await;
    let status = run(&app, &origin).await;
    let imgs = images(&status);
    let expect = [
        // (format, codec, colorProfile, extension, Content-Type)
        ("jpeg", "pixels", Some("converted"), "jpg", "image/jpeg"),
        ("webp", "original", None, "webp", "image/webp"),
        ("gif", "original", None, "gif", "image/gif"),
        ("jpeg", "requantized", None, "jpg", "image/jpeg"),
    ];
    for ((img, (path, _)), (format, codec, profile, ext, ct)) in imgs.iter().zip(INPUTS).zip(expect)
    {
        let input = fixture(path);
        assert_eq!(img["format"], format, "{path}: {img}");
        assert_eq!(img["codec"], codec, "{path}: {img}");
        assert_eq!(img["colorProfile"].as_str(), profile, "{path}: {img}");
        assert_eq!(img["bytesIn"], input.len(), "{path}");
        let url = img["outputImageUrl"].as_str().unwrap();
        assert!(url.ends_with(&format!(".{ext}")), "{url}");
        let (got_ct, bytes) = fetch(&app, url).await;
        assert_eq!(got_ct, ct, "{url}");
        assert_eq!(img["bytesOut"], bytes.len(), "{path}");
        assert!(
            bytes.len() <= input.len(),
            "{path}: {} > {}",
            bytes.len(),
            input.len()
        );
        let decoded = image::load_from_memory(&bytes).unwrap();
        assert_eq!(img["width"], decoded.width(), "{path}");
        assert_eq!(img["height"], decoded.height(), "{path}");
        assert!(
            !bytes.windows(6).any(|w| w == b"SECRET"),
            "{path}: metadata"
        );
    }
    assert!(imgs[0]["note"]
        .as_str()
        .unwrap()
        .contains("converted to sRGB"));
    assert!(imgs[1]["note"].as_str().unwrap().starts_with("kept "));
    assert!(imgs[3]["note"].is_null());
});

db_test!(with_never_larger_off_every_output_is_a_jpeg, |db| {
    let origin = Origin::start().await;
    let mut config = db.config();
    config.never_larger = false;
    let app = TestApp::start(config).await;
    let status = run(&app, &origin).await;
    for img in images(&status) {
        assert_eq!(img["format"], "jpeg", "{img}");
        let url = img["outputImageUrl"].as_str().unwrap();
        assert!(url.ends_with(".jpg"), "{url}");
        let (ct, _) = fetch(&app, url).await;
        assert_eq!(ct, "image/jpeg");
    }
    // The small WebP's JPEG is larger than the WebP: reported as it is.
    let webp = images(&status)[1];
    assert!(
        webp["bytesOut"].as_i64() > webp["bytesIn"].as_i64(),
        "{webp}"
    );
});
