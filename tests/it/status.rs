//! The status body of a large request is streamed (chunked, read from one snapshot a page at a
//! time): the same bytes as the body built in memory, every product and output URL in CSV
//! order, and a client that hangs up or stops reading part-way costs the pool nothing.

use std::time::{Duration, Instant};

use imgbatch::domain::RequestId;
use imgbatch::report::StatusBody;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{TestApp, TestDb};
use crate::db_test;

/// Every request of these tests has more images than this, so its status is streamed.
const SMALL_THRESHOLD: u64 = 10;

/// An API-only service (stored rows stay as the test sets them) with the given threshold.
async fn api(db: &TestDb, threshold: u64, idle: Duration) -> TestApp {
    let mut c = db.config();
    c.workers.workers = 0;
    c.status_stream_threshold = threshold;
    c.limits.status_stream_idle_timeout = idle;
    TestApp::start(c).await
}

/// A CSV of `n` products with 1 to 4 images each (names with quotes and non-ASCII, one URL
/// repeated across products), and each product's URLs.
fn varied_csv(n: usize) -> (String, Vec<Vec<String>>) {
    let mut csv = String::from("S. No.,Product Name,Input Image Urls\n");
    let mut rows = Vec::new();
    for i in 0..n {
        let urls: Vec<String> = (0..i % 4 + 1)
            .map(|j| {
                if i % 50 == 7 && j == 0 {
                    "https://img.test/shared.jpg".to_string()
                } else {
                    format!("https://img.test/{i}/{j}.jpg")
                }
            })
            .collect();
        csv.push_str(&format!(
            "{},\"Prod \"\"{i}\"\" café\",\"{}\"\n",
            i + 1,
            urls.join(",")
        ));
        rows.push(urls);
    }
    (csv, rows)
}

/// Puts the request part-way: every third image done, some failed (with an error to escape),
/// half the products processing, counters to match, and a webhook delivery waiting for a retry.
async fn settle_some(db: &TestDb, id: &str) {
    db.execute(
        "UPDATE images SET status = 'completed', attempts = 1, codec = 'pixels', \
         output_url = 'https://out.test/' || ordinal || '.jpg' WHERE ordinal % 3 = 0",
    )
    .await;
    db.execute(
        "UPDATE images SET status = 'failed', attempts = 2, \
         error = 'origin answered HTTP 404 \"Not Found\" ✗' \
         WHERE ordinal % 3 <> 0 AND ordinal % 7 = 1",
    )
    .await;
    db.execute("UPDATE products SET status = 'processing' WHERE position % 2 = 0")
        .await;
    db.execute(
        "UPDATE requests SET status = 'processing', \
         completed_images = (SELECT COUNT(*) FROM images WHERE status = 'completed'), \
         failed_images = (SELECT COUNT(*) FROM images WHERE status = 'failed')",
    )
    .await;
    let delivery = "'01936a2e-0000-7000-8000-000000000001'";
    db.execute(&if db.is_postgres() {
        format!(
            "INSERT INTO webhook_deliveries (id, request_id, url, state, attempts, \
             next_attempt_at, event_at, last_status_code, last_error, created_at, updated_at) \
             VALUES ({delivery}, '{id}', 'https://hooks.test/done', 'pending', 2, \
             to_timestamp(1764336726.41), to_timestamp(1764336700), 500, \
             'receiver answered HTTP 500', to_timestamp(1764336700), to_timestamp(1764336726))"
        )
    } else {
        format!(
            "INSERT INTO webhook_deliveries (id, request_id, url, state, attempts, \
             next_attempt_at, event_at, last_status_code, last_error, created_at, updated_at) \
             VALUES ({delivery}, '{id}', 'https://hooks.test/done', 'pending', 2, \
             1764336726410, 1764336700000, 500, 'receiver answered HTTP 500', \
             1764336700000, 1764336726000)"
        )
    })
    .await;
}

db_test!(a_large_status_is_streamed_and_is_the_same_body, |db| {
    let app = api(&db, SMALL_THRESHOLD, Duration::from_secs(30)).await;
    // 700 products, 1,750 images: several pages of products and of images, with products
    // split across image pages.
    let (csv, rows) = varied_csv(700);
    let (code, body) = app
        .upload_with(csv, Some("https://hooks.test/done"), &[])
        .await;
    assert_eq!(code, 200, "{body}");
    let id = body["requestId"].as_str().unwrap().to_string();
    settle_some(&db, &id).await;

    let resp = app
        .http
        .get(app.url(&format!("/api/status/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.headers()["transfer-encoding"], "chunked");
    assert!(resp.headers().get("content-length").is_none());
    let streamed = resp.bytes().await.unwrap();

    // Byte for byte the body built in memory from the same rows...
    let detail = app
        .core()
        .request_detail(
            RequestId::parse(&id).unwrap(),
            &imgbatch::domain::Owner::open(),
        )
        .await
        .unwrap()
        .unwrap();
    let built = serde_json::to_vec(&StatusBody::build(detail)).unwrap();
    assert!(
        streamed[..] == built[..],
        "the streamed body ({} bytes) differs from the built one ({} bytes) at byte {:?}",
        streamed.len(),
        built.len(),
        streamed.iter().zip(&built).position(|(a, b)| a != b)
    );
    // ...and the one a service with a large threshold answers, whole, on the same database.
    let whole = api(&db, u64::MAX, Duration::from_secs(30)).await;
    let resp = whole
        .http
        .get(whole.url(&format!("/api/status/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers().get("content-length").is_some());
    assert!(resp.bytes().await.unwrap() == streamed);

    // What it says: every output URL and every product, in CSV order.
    let v: Value = serde_json::from_slice(&streamed).expect("the streamed body is JSON");
    let total: usize = rows.iter().map(Vec::len).sum();
    assert_eq!(total, 1750);
    assert_eq!(v["requestId"], id.as_str());
    assert_eq!(v["status"], "processing");
    assert_eq!(v["progress"]["totalProducts"], 700);
    assert_eq!(v["progress"]["totalImages"], total);
    assert_eq!(v["progress"]["completedImages"], total.div_ceil(3));
    let outputs = v["outputImageUrls"].as_array().unwrap();
    assert_eq!(outputs.len(), total);
    for (ordinal, out) in outputs.iter().enumerate() {
        if ordinal % 3 == 0 {
            assert_eq!(out, &json!(format!("https://out.test/{ordinal}.jpg")));
        } else {
            assert!(out.is_null(), "{ordinal}: {out}");
        }
    }
    let products = v["products"].as_array().unwrap();
    assert_eq!(products.len(), rows.len());
    let mut ordinal = 0;
    for (i, (p, urls)) in products.iter().zip(&rows).enumerate() {
        assert_eq!(p["serialNumber"], i + 1);
        assert_eq!(p["productName"], format!("Prod \"{i}\" café"));
        assert_eq!(p["inputImageUrls"], json!(urls));
        let images = p["images"].as_array().unwrap();
        assert_eq!(images.len(), urls.len(), "product {i}");
        for (img, url) in images.iter().zip(urls) {
            assert_eq!(img["inputImageUrl"], url.as_str());
            assert_eq!(img["outputImageUrl"], outputs[ordinal]);
            ordinal += 1;
        }
    }
    assert_eq!(v["webhook"]["url"], "https://hooks.test/done");
    assert_eq!(v["webhook"]["attempts"], 2);
    assert_eq!(v["webhook"]["lastStatusCode"], 500);
    assert!(v["webhook"]["nextAttemptAt"].is_string());
});

/// A request whose status body (about 26 MB: 9,000 images with 1,400-byte URLs) is far larger
/// than the socket buffers between the service and a client, so that a client can stop
/// reading, or leave, while most of the body is still to be read from the database.
async fn huge_request(app: &TestApp) -> String {
    let pad = "p".repeat(1400);
    let mut csv = String::from("S. No.,Product Name,Input Image Urls\n");
    for i in 0..3000 {
        let urls: Vec<String> = (0..3)
            .map(|j| format!("https://img.test/{i}/{j}/{pad}.jpg"))
            .collect();
        csv.push_str(&format!("{},P{i},\"{}\"\n", i + 1, urls.join(",")));
    }
    app.upload_ok(csv).await
}

/// Transactions open on this test's database, idle or running a query, but this one
/// (Postgres; SQLite has no such view).
async fn open_transactions(db: &TestDb) -> Option<i64> {
    if !db.is_postgres() {
        return None;
    }
    Some(
        db.scalar(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND pid <> pg_backend_pid() AND xact_start IS NOT NULL",
        )
        .await,
    )
}

/// Waits until `open_transactions` is `want` (Postgres), or panics after `timeout`.
async fn wait_open_transactions(db: &TestDb, want: i64, timeout: Duration) {
    let start = Instant::now();
    while let Some(n) = open_transactions(db).await {
        if n == want {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "{n} transactions open after {timeout:?}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// After streams that ended early, the pools still serve everything: statuses on both paths
/// (more than the pool has connections) and an upload.
async fn still_works(app: &TestApp, big: &str) {
    let small = app
        .upload_ok(crate::common::csv(&[("1", "A", "https://img.test/a.jpg")]))
        .await;
    for _ in 0..20 {
        let (code, body) = app.status(&small).await;
        assert_eq!(code, 200, "{body}");
    }
    let (code, body) = app.status(big).await;
    assert_eq!(code, 200);
    assert_eq!(body["products"].as_array().unwrap().len(), 3000);
    assert_eq!(body["outputImageUrls"].as_array().unwrap().len(), 9000);
}

db_test!(
    a_status_client_that_hangs_up_mid_body_leaves_the_pool_working,
    |db| {
        let app = api(&db, SMALL_THRESHOLD, Duration::from_secs(30)).await;
        let id = huge_request(&app).await;
        // More hang-ups than either pool has connections (SQLite 8 readers, Postgres 16): one
        // connection lost or left in a transaction each time would show.
        for _ in 0..20 {
            let mut resp = app
                .http
                .get(app.url(&format!("/api/status/{id}")))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), 200);
            let first = resp.chunk().await.unwrap().unwrap();
            assert!(first.starts_with(b"{\"requestId\""));
            drop(resp);
        }
        wait_open_transactions(&db, 0, Duration::from_secs(10)).await;
        still_works(&app, &id).await;
        wait_open_transactions(&db, 0, Duration::from_secs(10)).await;
    }
);

db_test!(a_status_client_that_stops_reading_is_cut_off, |db| {
    let idle = Duration::from_secs(2);
    let app = api(&db, SMALL_THRESHOLD, idle).await;
    let id = huge_request(&app).await;

    // A client with a small receive window that reads the start of the body, then nothing.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let addr = app.server.as_ref().unwrap().addr;
    let mut conn = socket.connect(addr).await.unwrap();
    conn.write_all(
        format!("GET /api/status/{id} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while got.len() < 64 * 1024 {
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed early");
        got.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&got[..got.len().min(512)]).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");

    // Postgres shows the snapshot held while the service waits for the client, then given
    // up once the client has not read for `idle`, with the client still connected. The
    // service stalls once the socket buffers are full (a few MB); the margins are for a busy
    // machine, where writing those takes a while in a debug build.
    let stalled = Instant::now();
    wait_open_transactions(&db, 1, Duration::from_secs(30)).await;
    wait_open_transactions(&db, 0, Duration::from_secs(60)).await;
    tokio::time::sleep_until((stalled + idle + Duration::from_secs(13)).into()).await;

    // Reading on: what was already buffered, then the connection closes without the last
    // (empty) chunk, so the client can tell the body is cut off.
    let rest = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(rest.is_ok(), "the service kept the connection open");
    assert!(
        !got.ends_with(b"\r\n0\r\n\r\n"),
        "the body was sent whole ({} bytes) to a client that stopped reading",
        got.len()
    );
    assert!(got.len() < 20_000_000, "{} bytes", got.len());
    drop(conn);
    still_works(&app, &id).await;
    wait_open_transactions(&db, 0, Duration::from_secs(10)).await;
});
