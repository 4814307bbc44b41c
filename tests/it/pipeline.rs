//! The background pipeline (issue 3): download, compress, store, roll up; retries, failures,
//! duplicates, fairness and graceful shutdown. Crash recovery is in crash.rs.

use std::time::{Duration, Instant};

use crate::common::origin::{self, Origin};
use crate::common::{csv, images, TestApp};
use crate::db_test;

async fn fetch_jpeg(app: &TestApp, url: &str) -> image::DynamicImage {
    let resp = app.http.get(url).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{url}");
    assert_eq!(resp.headers()["content-type"], "image/jpeg", "{url}");
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    let bytes = resp.bytes().await.unwrap();
    assert_eq!(
        image::guess_format(&bytes).unwrap(),
        image::ImageFormat::Jpeg
    );
    image::load_from_memory(&bytes).unwrap()
}

db_test!(every_format_becomes_a_smaller_jpeg_of_the_same_size, |db| {
    let origin = Origin::start().await;
    let jpeg_in = origin::jpeg(320, 240, 95);
    let jpeg_len = jpeg_in.len();
    let urls = [
        origin.put("a.jpg", "image/jpeg", jpeg_in),
        // Content-Type lies: the bytes decide.
        origin.put("b.png", "application/octet-stream", origin::png(200, 100)),
        origin.put("c.png", "image/png", origin::png_rgba(64, 48)),
        origin.put("d.webp", "image/webp", origin::webp(90, 70)),
        origin.put("e.gif", "image/gif", origin::gif(33, 21)),
    ];
    let sizes = [(320, 240), (200, 100), (64, 48), (90, 70), (33, 21)];
    let app = TestApp::start(db.config()).await;
    let body = csv(&[
        ("1", "Jpeg and png", &format!("{},{}", urls[0], urls[1])),
        ("2", "Others", &urls[2..].join(" ")),
    ]);
    let id = app.upload_ok(body).await;
    let status = app.wait_settled(&id, Duration::from_secs(30)).await;
    assert_eq!(status["status"], "completed", "{status}");
    assert_eq!(status["progress"]["completedImages"], 5);
    assert_eq!(status["progress"]["failedImages"], 0);
    let outputs: Vec<&str> = status["outputImageUrls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    assert_eq!(outputs.len(), 5);
    for (url, (w, h)) in outputs.iter().zip(sizes) {
        assert!(url.starts_with(&format!("{}/images/", app.base)), "{url}");
        let img = fetch_jpeg(&app, url).await;
        assert_eq!((img.width(), img.height()), (w, h), "{url}");
    }
    let first = app
        .http
        .get(outputs[0])
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(
        first.len() < jpeg_len,
        "output {} >= input {jpeg_len}",
        first.len()
    );
    // Transparent pixels become white.
    let rgba_out = fetch_jpeg(&app, outputs[2]).await.to_rgb8();
    let p = rgba_out.get_pixel(2, 2);
    assert!(p[0] > 235 && p[1] > 235 && p[2] > 235, "{p:?}");
    for p in status["products"].as_array().unwrap() {
        assert_eq!(p["status"], "completed");
    }
    // The JPEG (4:2:0, no rotation) took the DCT-domain fast path; everything else, pixels.
    let codecs: Vec<&str> = images(&status)
        .iter()
        .map(|i| i["codec"].as_str().unwrap())
        .collect();
    assert_eq!(
        codecs,
        ["requantized", "pixels", "pixels", "pixels", "pixels"]
    );
    // output.csv carries the outputs in CSV order.
    let text = app
        .http
        .get(app.url(&format!("/api/requests/{id}/output.csv")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut rdr = csv::ReaderBuilder::new().from_reader(text.as_bytes());
    let rows: Vec<csv::StringRecord> = rdr.records().map(Result::unwrap).collect();
    assert_eq!(&rows[0][3], outputs[..2].join(",").as_str());
    assert_eq!(&rows[1][3], outputs[2..].join(",").as_str());
});

db_test!(
    failures_carry_reasons_and_only_transient_ones_are_retried,
    |db| {
        let origin = Origin::start().await;
        let good = origin::jpeg(64, 64, 90);
        let mut truncated = good.clone();
        truncated.truncate(good.len() / 2);
        origin.put("good.jpg", "image/jpeg", good);
        origin.put(
            "page.html",
            "image/jpeg",
            b"<!doctype html><html><body>hi</body></html>".to_vec(),
        );
        origin.put("half.jpg", "image/jpeg", truncated);
        origin.put(
            "huge.png",
            "image/png",
            origin::png_claiming(100_000, 100_000),
        );
        origin.put("big.jpg", "image/jpeg", vec![0xff; 300 * 1024]);
        // (path, a word of the reason, its error code); "" for images that complete.
        let cases = [
            ("/status/404", "404", "not_found"),
            ("/flaky/2/good.jpg", "", ""),
            ("/slow/good.jpg", "timed out", "timeout"),
            ("/img/big.jpg", "limit", "too_large"),
            ("/img/page.html", "HTML", "not_an_image"),
            ("/img/half.jpg", "decode", "undecodable"),
            ("/img/huge.png", "pixels", "too_many_pixels"),
            ("/status/500", "500", "http_error"),
            ("/redirect/good.jpg", "", ""),
        ];
        let mut c = db.config();
        c.workers.max_attempts = 3;
        c.workers.retry_base = Duration::from_millis(50);
        c.limits.download_timeout = Duration::from_millis(700);
        c.limits.max_image_bytes = 256 * 1024;
        c.limits.max_image_pixels = 50_000_000;
        let app = TestApp::start(c).await;
        let rows: Vec<(String, String, String)> = cases
            .iter()
            .enumerate()
            .map(|(i, (path, _, _))| ((i + 1).to_string(), format!("P{i}"), origin.url(path)))
            .collect();
        let id = app.upload_ok(csv(&rows)).await;
        let status = app.wait_settled(&id, Duration::from_secs(30)).await;
        assert_eq!(status["status"], "completed_with_errors", "{status}");
        let imgs = images(&status);
        for ((path, reason, code), img) in cases.iter().zip(&imgs) {
            if reason.is_empty() {
                assert_eq!(img["status"], "completed", "{path}: {img}");
                assert!(img["outputImageUrl"].is_string());
                assert!(img["errorCode"].is_null(), "{path}: {img}");
            } else {
                assert_eq!(img["errorCode"], *code, "{path}: {img}");
                assert_eq!(img["status"], "failed", "{path}: {img}");
                assert!(img["outputImageUrl"].is_null());
                let error = img["error"].as_str().unwrap_or_default();
                assert!(
                    error.to_lowercase().contains(&reason.to_lowercase()),
                    "{path}: {error}"
                );
            }
        }
        // Permanent failures: one attempt each. Transient: retried up to the limit.
        for path in [
            "/status/404",
            "/img/big.jpg",
            "/img/page.html",
            "/img/half.jpg",
            "/img/huge.png",
        ] {
            assert_eq!(origin.hits(path), 1, "{path} was retried");
        }
        assert_eq!(origin.hits("/status/500"), 3);
        assert_eq!(origin.hits("/slow/good.jpg"), 3);
        assert_eq!(origin.hits("/flaky/2/good.jpg"), 3);
        assert_eq!(imgs[1]["attempts"], 3);
        assert_eq!(status["progress"]["completedImages"], 2);
        assert_eq!(status["progress"]["failedImages"], 7);
        // Products roll up: all-failed products are failed.
        assert_eq!(status["products"][0]["status"], "failed");
        assert_eq!(status["products"][1]["status"], "completed");
    }
);

db_test!(all_failed_request_is_failed, |db| {
    let origin = Origin::start().await;
    let app = TestApp::start(db.config()).await;
    let id = app
        .upload_ok(csv(&[
            ("1", "A", &origin.url("/status/404")),
            ("2", "B", &origin.url("/status/410")),
        ]))
        .await;
    let status = app.wait_settled(&id, Duration::from_secs(20)).await;
    assert_eq!(status["status"], "failed");
    assert_eq!(status["progress"]["failedImages"], 2);
});

db_test!(the_same_url_twice_is_downloaded_once, |db| {
    let origin = Origin::start().await;
    let url = origin.put("same.png", "image/png", origin::png(40, 30));
    let app = TestApp::start(db.config()).await;
    let id = app
        .upload_ok(csv(&[
            ("1", "A", &format!("{url},{url}")),
            ("2", "B", &url),
        ]))
        .await;
    let status = app.wait_settled(&id, Duration::from_secs(20)).await;
    assert_eq!(status["status"], "completed", "{status}");
    assert_eq!(origin.hits("/img/same.png"), 1);
    let outs = status["outputImageUrls"].as_array().unwrap();
    assert_eq!(outs.len(), 3);
    assert!(outs.iter().all(|o| o == &outs[0] && o.is_string()));
    assert_eq!(status["progress"]["completedImages"], 3);
    assert_eq!(status["products"][1]["status"], "completed");
});

db_test!(a_small_request_is_not_stuck_behind_a_big_one, |db| {
    let origin = Origin::start().await;
    origin.put("p.png", "image/png", origin::png(16, 16));
    let mut c = db.config();
    c.workers.workers = 2;
    let app = TestApp::start(c).await;
    let rows: Vec<(String, String, String)> = (1..=300)
        .map(|i| {
            (
                i.to_string(),
                format!("Big{i}"),
                origin.url(&format!("/delay/100/p.png?{i}")),
            )
        })
        .collect();
    let big = app.upload_ok(csv(&rows)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let small = app
        .upload_ok(csv(&[(
            "1",
            "Small",
            &format!("{0}?a {0}?b {0}?c", origin.url("/img/p.png")),
        )]))
        .await;
    let started = Instant::now();
    let status = app.wait_settled(&small, Duration::from_secs(10)).await;
    assert_eq!(status["status"], "completed");
    let (_, big_status) = app.status(&big).await;
    assert_eq!(
        big_status["status"], "processing",
        "the big request should still be running"
    );
    let done = big_status["progress"]["completedImages"].as_i64().unwrap();
    assert!(done < 300, "{done}");
    eprintln!(
        "small request settled in {:?} with {done}/300 of the big one done",
        started.elapsed()
    );
});

db_test!(graceful_shutdown_leaves_no_lease_held, |db| {
    let origin = Origin::start().await;
    origin.put("p.png", "image/png", origin::png(16, 16));
    let mut c = db.config();
    c.workers.workers = 4;
    c.workers.shutdown_timeout = Duration::from_millis(300);
    let mut app = TestApp::start(c).await;
    // Slow downloads: some are in flight when the shutdown comes, and outlast its deadline.
    let rows: Vec<(String, String, String)> = (1..=20)
        .map(|i| {
            (
                i.to_string(),
                format!("P{i}"),
                origin.url(&format!("/delay/2000/p.png?{i}")),
            )
        })
        .collect();
    let id = app.upload_ok(csv(&rows)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        db.scalar("SELECT COUNT(*) FROM images WHERE status = 'processing'")
            .await
            > 0
    );
    app.stop().await;
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM images WHERE status = 'processing'")
            .await,
        0
    );
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM images WHERE locked_by IS NOT NULL")
            .await,
        0
    );
    // The interrupted attempts do not count.
    assert_eq!(
        db.scalar("SELECT CAST(COALESCE(MAX(attempts), 0) AS BIGINT) FROM images")
            .await,
        0
    );

    // A new process picks the work up and finishes it.
    let mut c = db.config();
    c.workers.workers = 20;
    let app = TestApp::start(c).await;
    let status = app.wait_settled(&id, Duration::from_secs(20)).await;
    assert_eq!(status["status"], "completed");
});
