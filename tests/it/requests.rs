//! Working with requests (issue 18): savings, the request list, cancel, retry, live events and
//! the webhook summary of large requests, over HTTP on both databases.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::origin::{self, Origin};
use crate::common::receiver::{Answer, Receiver};
use crate::common::{csv, images, TestApp, TestDb};
use crate::db_test;

async fn get(app: &TestApp, path: &str) -> (u16, Value) {
    let resp = app.http.get(app.url(path)).send().await.unwrap();
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap_or(Value::Null))
}

async fn post(app: &TestApp, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = app.http.post(app.url(path));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap_or(Value::Null))
}

/// Image jobs still leased to a worker.
async fn leases_held(db: &TestDb) -> i64 {
    db.scalar("SELECT COUNT(*) FROM images WHERE locked_by IS NOT NULL OR status = 'processing'")
        .await
}

/// One product a row, each with its own URL `/delay/{ms}/p.png?n={i}` (distinct URLs, so no
/// duplicates), for `i` in `0..n`.
fn delayed_rows(origin: &Origin, ms: u64, n: usize) -> String {
    let rows: Vec<(String, String, String)> = (0..n)
        .map(|i| {
            let url = origin.url(&format!("/delay/{ms}/p.png?n={i}"));
            ((i + 1).to_string(), format!("P{i}"), url)
        })
        .collect();
    csv(&rows)
}

/// The whole event stream of a request, once it has ended by itself.
async fn events_text(app: &TestApp, id: &str) -> String {
    let resp = app
        .http
        .get(app.url(&format!("/api/requests/{id}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    tokio::time::timeout(Duration::from_secs(30), resp.text())
        .await
        .expect("the stream ends after the final status")
        .unwrap()
}

/// All hits on the origin's delayed paths `/delay/{ms}/p.png?n={i}` for `i` in `0..n`.
fn delayed_hits(origin: &Origin, ms: u64, n: usize) -> usize {
    (0..n)
        .map(|i| origin.hits(&format!("/delay/{ms}/p.png?n={i}")))
        .sum()
}

db_test!(savings_are_the_sums_of_the_stored_outputs, |db| {
    let origin = Origin::start().await;
    let a = origin.put("a.jpg", "image/jpeg", origin::jpeg(96, 64, 95));
    let b = origin.put("b.png", "image/png", origin::png(40, 30));
    let missing = origin.url("/status/404");
    let app = TestApp::start(db.config()).await;
    let id = app
        .upload_ok(csv(&[
            ("1", "A", format!("{a},{b}")),
            // A repeated URL is counted at each occurrence, as its image shows it.
            ("2", "B", format!("{a} {missing}")),
        ]))
        .await;
    let status = app.wait_settled(&id, Duration::from_secs(30)).await;
    assert_eq!(status["status"], "completed_with_errors", "{status}");
    let done: Vec<&Value> = images(&status)
        .into_iter()
        .filter(|i| i["status"] == "completed")
        .collect();
    assert_eq!(done.len(), 3);
    let sum = |field: &str| done.iter().map(|i| i[field].as_i64().unwrap()).sum::<i64>();
    let (bytes_in, bytes_out) = (sum("bytesIn"), sum("bytesOut"));
    let stored_in = db
        .scalar(&format!(
            "SELECT CAST(SUM(bytes_in) AS BIGINT) FROM images WHERE status = 'completed' AND request_id = '{id}'"
        ))
        .await;
    let stored_out = db
        .scalar(&format!(
            "SELECT CAST(SUM(bytes_out) AS BIGINT) FROM images WHERE status = 'completed' AND request_id = '{id}'"
        ))
        .await;
    assert_eq!((bytes_in, bytes_out), (stored_in, stored_out));
    // The input bytes are the origin's files.
    let a_len = origin::jpeg(96, 64, 95).len() as i64;
    let b_len = origin::png(40, 30).len() as i64;
    assert_eq!(bytes_in, 2 * a_len + b_len);
    let savings = &status["savings"];
    assert_eq!(savings["bytesIn"], bytes_in);
    assert_eq!(savings["bytesOut"], bytes_out);
    assert_eq!(savings["savedBytes"], bytes_in - bytes_out);
    let pct = (bytes_in - bytes_out) as f64 * 100.0 / bytes_in as f64;
    assert!(
        (savings["savedPercent"].as_f64().unwrap() - pct).abs() <= 0.05,
        "{savings}"
    );
    let failed = images(&status)
        .into_iter()
        .find(|i| i["status"] == "failed")
        .unwrap();
    assert!(failed["bytesIn"].is_null() && failed["bytesOut"].is_null());

    // The list shows the same figures, and the metrics count the recorded bytes.
    let (code, list) = get(&app, "/api/requests").await;
    assert_eq!(code, 200, "{list}");
    assert_eq!(list["requests"][0]["requestId"], id);
    assert_eq!(list["requests"][0]["savings"], *savings);
    assert_eq!(list["requests"][0]["progress"], status["progress"]);
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let counter = |name: &str| -> i64 {
        let line = metrics.lines().find(|l| l.starts_with(name)).unwrap();
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    // Per process, and tests share one: at least this request's bytes (the original only:
    // duplicates are settled with it).
    assert!(counter("imgbatch_image_bytes_in_total ") >= a_len + b_len);
    assert!(counter("imgbatch_image_bytes_out_total ") > 0);
});

db_test!(list_pages_never_skip_or_repeat_while_uploads_arrive, |db| {
    let mut c = db.config();
    c.workers.workers = 0;
    let app = TestApp::start(c).await;
    let body = csv(&[("1", "A", "http://127.0.0.1:9/a.png")]);
    let mut before = HashSet::new();
    for _ in 0..7 {
        before.insert(app.upload_ok(body.clone()).await);
    }
    // Uploads keep arriving while the pages are read.
    let uploader = {
        let (base, body) = (app.base.clone(), body.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            for _ in 0..6 {
                let part =
                    reqwest::multipart::Part::bytes(body.clone().into_bytes()).file_name("p.csv");
                let form = reqwest::multipart::Form::new().part("file", part);
                let r = http.post(format!("{base}/api/upload")).multipart(form);
                assert_eq!(r.send().await.unwrap().status(), 200);
            }
        })
    };
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut last_created = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/requests?limit=2&cursor={c}"),
            None => "/api/requests?limit=2".to_string(),
        };
        let (code, page) = get(&app, &path).await;
        assert_eq!(code, 200, "{page}");
        for r in page["requests"].as_array().unwrap() {
            let created = r["createdAt"].as_str().unwrap().to_string();
            if let Some(prev) = &last_created {
                assert!(&created <= prev, "newest first");
            }
            last_created = Some(created);
            seen.push(r["requestId"].as_str().unwrap().to_string());
        }
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    uploader.await.unwrap();
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a request repeated: {seen:?}");
    for id in &before {
        assert!(unique.contains(id), "{id} skipped: {seen:?}");
    }
    // Filters and bad input.
    let (_, pending) = get(&app, "/api/requests?status=pending&limit=100").await;
    assert_eq!(pending["requests"].as_array().unwrap().len(), 13);
    let (_, done) = get(&app, "/api/requests?status=completed").await;
    assert_eq!(done["requests"], serde_json::json!([]));
    assert!(done["nextCursor"].is_null());
    for (q, msg) in [
        ("status=nope", "status must be one of"),
        ("limit=0", "limit must be a whole number from 1 to 100"),
        ("limit=abc", "limit must be a whole number"),
        ("cursor=bogus", "cursor is not valid"),
        ("limit=1&limit=2", "limit is given more than once"),
    ] {
        let (code, body) = get(&app, &format!("/api/requests?{q}")).await;
        assert_eq!(code, 400, "{q}: {body}");
        assert!(
            body["message"].as_str().unwrap().starts_with(msg),
            "{q}: {body}"
        );
    }
});

db_test!(another_key_sees_none_of_it, |db| {
    let mut c = db.config();
    c.api_keys = vec!["key-a".into(), "key-b".into()];
    c.workers.workers = 0;
    let app = TestApp::start(c).await;
    let part = reqwest::multipart::Part::bytes(
        csv(&[("1", "A", "http://127.0.0.1:9/a.png")]).into_bytes(),
    )
    .file_name("p.csv");
    let resp = app
        .http
        .post(app.url("/api/upload"))
        .bearer_auth("key-a")
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .unwrap();
    let id = resp.json::<Value>().await.unwrap()["requestId"]
        .as_str()
        .unwrap()
        .to_string();
    let call = |method: reqwest::Method, path: String, key: &'static str| {
        let req = app.http.request(method, app.url(&path)).bearer_auth(key);
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (code, mine) = call(reqwest::Method::GET, "/api/requests".into(), "key-a").await;
    assert_eq!(code, 200);
    assert!(mine.contains(&id));
    let (code, theirs) = call(reqwest::Method::GET, "/api/requests".into(), "key-b").await;
    assert_eq!(
        (code, theirs.as_str()),
        (200, r#"{"requests":[],"nextCursor":null}"#)
    );
    for (method, path) in [
        (reqwest::Method::POST, format!("/api/requests/{id}/cancel")),
        (reqwest::Method::POST, format!("/api/requests/{id}/retry")),
        (reqwest::Method::GET, format!("/api/requests/{id}/events")),
    ] {
        let (code, body) = call(method.clone(), path.clone(), "key-b").await;
        assert_eq!(code, 404, "{method} {path}: {body}");
        assert_eq!(body, r#"{"message":"Request ID not found"}"#);
    }
    let (code, _) = call(reqwest::Method::GET, "/api/requests".into(), "key-c").await;
    assert_eq!(code, 401);
    // The owner can still cancel it: the other key's calls changed nothing.
    let (code, body) = call(
        reqwest::Method::POST,
        format!("/api/requests/{id}/cancel"),
        "key-a",
    )
    .await;
    assert_eq!(code, 200, "{body}");
});

db_test!(
    cancel_mid_batch_starts_nothing_more_then_retry_finishes_it,
    |db| {
        let origin = Origin::start().await;
        origin.put("p.png", "image/png", origin::png(24, 16));
        let receiver = Receiver::start(|_| Answer::Status(204)).await;
        let mut c = db.config();
        c.workers.workers = 1;
        c.webhook_retry_schedule = imgbatch::config::parse_schedule("100ms").unwrap();
        let app = TestApp::start(c).await;
        const N: usize = 6;
        let rows = delayed_rows(&origin, 400, N);
        let (code, body) = app.upload_with(rows, Some(&receiver.url), &[]).await;
        assert_eq!(code, 200, "{body}");
        let id = body["requestId"].as_str().unwrap().to_string();
        // The first image is downloading: cancel now.
        let start = Instant::now();
        while delayed_hits(&origin, 400, N) == 0 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no image started"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (code, cancelled) = post(&app, &format!("/api/requests/{id}/cancel"), None).await;
        let hits_at_cancel = delayed_hits(&origin, 400, N);
        assert_eq!(code, 200, "{cancelled}");
        assert_eq!(cancelled["status"], "cancelled");
        assert_eq!(
            cancelled["progress"]["cancelledImages"],
            (N - hits_at_cancel) as i64
        );

        // The running image finishes and is recorded; the request stays cancelled, and nothing
        // else starts.
        let start = Instant::now();
        loop {
            let (_, s) = app.status(&id).await;
            let p = &s["progress"];
            if p["pendingImages"] == 0 {
                assert_eq!(s["status"], "cancelled", "{s}");
                assert_eq!(p["completedImages"], hits_at_cancel as i64, "{s}");
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "in-flight image never settled: {s}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            delayed_hits(&origin, 400, N),
            hits_at_cancel,
            "an image started after the cancel"
        );
        assert_eq!(leases_held(&db).await, 0);
        let got = receiver.wait_for(1, Duration::from_secs(10)).await;
        let payload: Value = serde_json::from_slice(&got[0].body).unwrap();
        assert_eq!(payload["type"], "request.cancelled");
        assert_eq!(payload["data"]["status"], "cancelled");

        // Idempotent; a finished request cannot be cancelled; unknown IDs are 404.
        let (code, again) = post(&app, &format!("/api/requests/{id}/cancel"), None).await;
        assert_eq!((code, &again["status"]), (200, &Value::from("cancelled")));
        let (code, _) = post(
            &app,
            &format!("/api/requests/{}/cancel", uuid::Uuid::now_v7()),
            None,
        )
        .await;
        assert_eq!(code, 404);
        let (code, _) = post(&app, "/api/requests/not-a-uuid/cancel", None).await;
        assert_eq!(code, 404);

        // Retry on a cancelled request runs the images that never started, each once.
        let (code, retried) = post(&app, &format!("/api/requests/{id}/retry"), None).await;
        assert_eq!(code, 200, "{retried}");
        assert_eq!(retried["status"], "processing");
        assert_eq!(retried["requeuedImages"], (N - hits_at_cancel) as i64);
        assert_eq!(retried["progress"]["cancelledImages"], 0);
        let done = app.wait_settled(&id, Duration::from_secs(30)).await;
        assert_eq!(done["status"], "completed", "{done}");
        for i in 0..N {
            assert_eq!(
                origin.hits(&format!("/delay/400/p.png?n={i}")),
                1,
                "image {i}"
            );
        }
        let got = receiver.wait_for(2, Duration::from_secs(10)).await;
        let second: Value = serde_json::from_slice(&got[1].body).unwrap();
        assert_eq!(second["type"], "request.completed");
        assert_eq!(second["data"]["status"], "completed");
        assert_ne!(got[0].headers["webhook-id"], got[1].headers["webhook-id"]);
        let (code, body) = post(&app, &format!("/api/requests/{id}/cancel"), None).await;
        assert_eq!(code, 409, "{body}");
        assert_eq!(
        body["message"],
        "the request has already finished (completed); only a pending or processing request can be cancelled"
    );
    }
);

db_test!(
    retry_runs_exactly_the_failed_images_once_and_fires_a_new_webhook,
    |db| {
        let origin = Origin::start().await;
        let ok = origin.put("ok.png", "image/png", origin::png(20, 20));
        origin.put("f.png", "image/png", origin::png(22, 18));
        // 500 to its first request (final: one attempt allowed), the image after.
        let flaky = origin.url("/flaky/1/f.png");
        let missing = origin.url("/status/404");
        let receiver = Receiver::start(|_| Answer::Status(200)).await;
        let mut c = db.config();
        c.workers.max_attempts = 1;
        c.webhook_retry_schedule = imgbatch::config::parse_schedule("100ms").unwrap();
        let app = TestApp::start(c).await;
        let (_, body) = app
            .upload_with(
                csv(&[
                    ("1", "A", format!("{ok},{flaky}")),
                    ("2", "B", missing.clone()),
                ]),
                Some(&receiver.url),
                &[],
            )
            .await;
        let id = body["requestId"].as_str().unwrap().to_string();
        let first = app.wait_settled(&id, Duration::from_secs(30)).await;
        assert_eq!(first["status"], "completed_with_errors", "{first}");
        assert_eq!(first["progress"]["failedImages"], 2);
        receiver.wait_for(1, Duration::from_secs(10)).await;

        // Bad input first.
        let path = format!("/api/requests/{id}/retry");
        let (code, body) = post(&app, &format!("{path}?errorCodes=bogus"), None).await;
        assert_eq!(code, 400, "{body}");
        assert!(body["message"]
            .as_str()
            .unwrap()
            .starts_with("unknown error code \"bogus\""));
        let (code, body) = post(
            &app,
            &path,
            Some(serde_json::json!({"errorCodes": ["timeout"]})),
        )
        .await;
        assert_eq!(code, 409, "{body}");
        assert_eq!(
        body["message"],
        "nothing to retry: this request (completed_with_errors) has no failed images with errorCode timeout"
    );

        // Only the http_error one.
        let (code, body) = post(&app, &format!("{path}?errorCodes=http_error"), None).await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["requeuedImages"], 1);
        assert_eq!(body["status"], "processing");
        assert_eq!(body["progress"]["failedImages"], 1);
        assert_eq!(body["progress"]["pendingImages"], 1);
        let second = app.wait_settled(&id, Duration::from_secs(30)).await;
        assert_eq!(second["status"], "completed_with_errors", "{second}");
        assert_eq!(second["progress"]["completedImages"], 2);
        assert_eq!(second["products"][0]["status"], "completed");
        let flaky_image = &second["products"][0]["images"][1];
        assert_eq!(flaky_image["status"], "completed");
        assert_eq!(flaky_image["attempts"], 1);
        assert!(flaky_image["error"].is_null());
        assert_eq!(origin.hits("/flaky/1/f.png"), 2);
        assert_eq!(origin.hits("/img/ok.png"), 1);
        assert_eq!(origin.hits("/status/404"), 1);
        let got = receiver.wait_for(2, Duration::from_secs(10)).await;
        let payload: Value = serde_json::from_slice(&got[1].body).unwrap();
        assert_eq!(payload["type"], "request.completed");
        assert_eq!(payload["data"]["progress"]["completedImages"], 2);
        assert_ne!(got[0].headers["webhook-id"], got[1].headers["webhook-id"]);
        assert_eq!(leases_held(&db).await, 0);
        // Savings grew by the retried image.
        assert!(second["savings"]["bytesIn"].as_i64() > first["savings"]["bytesIn"].as_i64());

        // A completed request has nothing to retry.
        let ok_only = app.upload_ok(csv(&[("1", "A", ok.clone())])).await;
        app.wait_settled(&ok_only, Duration::from_secs(30)).await;
        let (code, body) = post(&app, &format!("/api/requests/{ok_only}/retry"), None).await;
        assert_eq!(code, 409, "{body}");
        assert_eq!(
            body["message"],
            "nothing to retry: this request (completed) has no failed images"
        );
    }
);

db_test!(live_events_follow_a_request_to_its_final_status, |db| {
    let origin = Origin::start().await;
    origin.put("p.png", "image/png", origin::png(20, 12));
    let app = TestApp::start(db.config()).await;
    let rows = delayed_rows(&origin, 150, 3);
    let id = app.upload_ok(rows).await;
    let text = events_text(&app, &id).await;
    let events: Vec<(String, Value)> = text
        .split("\n\n")
        .filter_map(|block| {
            let mut name = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_string());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = Some(serde_json::from_str(d).unwrap());
                }
            }
            Some((name?, data?))
        })
        .collect();
    let (last_name, last) = events.last().unwrap();
    assert_eq!(last_name, "status", "{text}");
    assert_eq!(last["status"], "completed");
    assert_eq!(last["progress"]["completedImages"], 3);
    assert!(events[..events.len() - 1]
        .iter()
        .all(|(n, _)| n == "progress"));
    assert!(events.len() >= 2, "progress before the end: {text}");
    // A finished request: the final status at once.
    let text = events_text(&app, &id).await;
    assert!(text.starts_with("event: status\n"), "{text}");
    let (code, body) = get(
        &app,
        &format!("/api/requests/{}/events", uuid::Uuid::now_v7()),
    )
    .await;
    assert_eq!(
        (code, &body["message"]),
        (404, &Value::from("Request ID not found"))
    );
});

db_test!(large_requests_send_a_summary_webhook_with_links, |db| {
    let origin = Origin::start().await;
    let a = origin.put("a.png", "image/png", origin::png(16, 16));
    let b = origin.put("b.png", "image/png", origin::png(18, 16));
    let receiver = Receiver::start(|_| Answer::Status(200)).await;
    let mut c = db.config();
    c.webhook_full_body_max_images = 1;
    let app = TestApp::start(c).await;
    let (_, body) = app
        .upload_with(
            csv(&[("1", "A", format!("{a},{b}"))]),
            Some(&receiver.url),
            &[],
        )
        .await;
    let id = body["requestId"].as_str().unwrap().to_string();
    let status = app.wait_settled(&id, Duration::from_secs(30)).await;
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    let payload: Value = serde_json::from_slice(&got[0].body).unwrap();
    let data = &payload["data"];
    assert_eq!(payload["type"], "request.completed");
    assert!(
        data["products"].is_null() && data["outputImageUrls"].is_null(),
        "{data}"
    );
    assert_eq!(data["requestId"], id);
    assert_eq!(data["status"], "completed");
    assert_eq!(data["progress"], status["progress"]);
    assert_eq!(data["savings"], status["savings"]);
    let base = &app.base;
    assert_eq!(data["links"]["status"], format!("{base}/api/status/{id}"));
    assert_eq!(
        data["links"]["outputCsv"],
        format!("{base}/api/requests/{id}/output.csv")
    );
    assert_eq!(
        data["links"]["reportCsv"],
        format!("{base}/api/requests/{id}/report.csv")
    );
    assert_eq!(
        data["links"]["outputsZip"],
        format!("{base}/api/requests/{id}/outputs.zip")
    );
});
