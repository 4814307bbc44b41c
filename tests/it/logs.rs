//! What an operator reads: the real binary's stdout, piped as under a log collector. One
//! access line per request with its route, status, request id and client; refusals with their
//! reason; no colour codes off a terminal; plain field values; a request's "finished" line
//! after its images' lines. (Logs do not depend on the database: SQLite only.)

use std::time::Duration;

use crate::common::origin::{self, Origin};
use crate::common::process::{client_for, spawn_binary, wait_ready};
use crate::common::{csv, TestDb};

async fn exercise(format: &str) -> (Vec<String>, String) {
    let db = TestDb::sqlite().await;
    let origin = Origin::start().await;
    let good = origin.put("p.png", "image/png", origin::png(16, 16));
    let (child, base) = spawn_binary(
        &db,
        &[
            ("IMGBATCH_LOG_FORMAT", format),
            ("IMGBATCH_MAX_ATTEMPTS", "1"),
            ("RUST_LOG", "info"),
        ],
    );
    let app = client_for(base);
    wait_ready(&app).await;
    let rows = [
        ("1".to_string(), "A".to_string(), good),
        ("2".to_string(), "B".to_string(), origin.url("/status/404")),
    ];
    let id = app.upload_ok(csv(&rows)).await;
    app.wait_settled(&id, Duration::from_secs(20)).await;
    let (code, _) = app
        .upload("S. No.,Product Name,Input Image Urls\n1,,http://x/\n")
        .await;
    assert_eq!(code, 400);
    let resp = app
        .http
        .get(app.url(&format!("/api/status/{id}")))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["x-request-id"],
        "trace-me-42",
        "the id is echoed"
    );
    let resp = app.http.get(app.url("/api/nowhere")).send().await.unwrap();
    assert!(
        resp.headers().contains_key("x-request-id"),
        "an id is made up"
    );
    let resp = app.http.post(app.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    app.http.get(app.url("/docs/")).send().await.unwrap();
    // The access line is written after the answer: give the last one a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    (child.logs(), id)
}

fn position(logs: &[String], what: &[&str]) -> Option<usize> {
    logs.iter().position(|l| what.iter().all(|w| l.contains(w)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_are_plain_and_complete() {
    let (logs, id) = exercise("text").await;
    let all = logs.join("\n");
    assert!(
        !all.contains('\u{1b}'),
        "colour codes off a terminal:\n{all}"
    );
    assert!(!all.contains("Some(") && !all.contains("None"), "{all}");
    for (what, line) in [
        (
            "upload",
            &[
                "method=POST",
                "route=/api/upload",
                "status=200",
                "request_id=",
                "client=127.0.0.1",
                "duration_ms=",
            ][..],
        ),
        (
            "status",
            &[
                "method=GET",
                "route=/api/status/{request_id}",
                "status=200",
                "request_id=trace-me-42",
            ][..],
        ),
        ("unmatched", &["method=GET", "route=-", "status=404"][..]),
        ("405", &["method=POST", "route=/healthz", "status=405"][..]),
        ("docs", &["method=GET", "route=/docs/", "status=200"][..]),
        (
            "handler in its span",
            &["request_id=", "upload accepted"][..],
        ),
        (
            "refusal",
            &[
                "upload refused",
                "status=400",
                "Invalid CSV format",
                "problems=1",
                "line 2",
            ][..],
        ),
    ] {
        assert!(
            position(&logs, line).is_some(),
            "no {what} line {line:?} in:\n{all}"
        );
    }
    let finished = position(&logs, &["request finished", &id]).expect("a finished line");
    let last_image = logs
        .iter()
        .rposition(|l| l.contains(&id) && l.contains("image "))
        .expect("image lines");
    assert!(
        last_image < finished,
        "finished before its last image:\n{all}"
    );
    assert!(
        logs[finished].contains("completed_with_errors"),
        "{}",
        logs[finished]
    );
    assert!(
        position(&logs, &["image failed", "error_code=not_found"]).is_some(),
        "{all}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_have_plain_values() {
    let (logs, _) = exercise("json").await;
    let mut access = 0;
    for line in &logs {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        for (k, field) in v.as_object().unwrap() {
            let s = field.to_string();
            assert!(!s.contains("Some(") && s != "\"None\"", "{k}: {line}");
        }
        if v["message"] == "request" {
            access += 1;
            assert!(v["status"].is_u64(), "{line}");
            assert!(
                v["route"].is_string() && v["request_id"].is_string(),
                "{line}"
            );
        }
    }
    assert!(access >= 4, "{access} access lines");
}
