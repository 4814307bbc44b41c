//! Webhooks (issue 4): signed per Standard Webhooks, retried on a schedule, durable across a
//! crash, exactly one successful delivery.

use std::time::Duration;

use serde_json::Value;

use crate::common::origin::{self, Origin};
use crate::common::receiver::{Answer, Receiver};
use crate::common::{csv, TestApp, TestDb};
use crate::db_test;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn config(db: &TestDb, schedule: &str) -> imgbatch::Config {
    let mut c = db.config();
    c.webhook_secret = Some(SECRET.into());
    c.webhook_retry_schedule = imgbatch::config::parse_schedule(schedule).unwrap();
    c
}

async fn one_image(origin: &Origin) -> String {
    let url = origin.put("p.png", "image/png", origin::png(20, 10));
    csv(&[("1", "A", &url)])
}

/// Verifies with the `standardwebhooks` crate, an implementation other than ours.
fn verify(d: &crate::common::receiver::Delivery) -> Value {
    let wh = standardwebhooks::Webhook::new(SECRET).unwrap();
    let mut headers = axum::http::HeaderMap::new();
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        headers.insert(name, d.headers[name].to_str().unwrap().parse().unwrap());
    }
    wh.verify(&d.body, &headers).expect("signature verifies");
    serde_json::from_slice(&d.body).unwrap()
}

async fn wait_webhook_state(app: &TestApp, id: &str, state: &str) -> Value {
    let start = std::time::Instant::now();
    loop {
        let (_, s) = app.status(id).await;
        if s["webhook"]["state"] == state {
            return s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "webhook never reached {state}: {s}"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

db_test!(
    a_signed_delivery_that_an_independent_verifier_accepts,
    |db| {
        let origin = Origin::start().await;
        let receiver = Receiver::start(|_| Answer::Status(204)).await;
        let app = TestApp::start(config(&db, "100ms")).await;
        let (code, body) = app
            .upload_with(one_image(&origin).await, Some(&receiver.url), &[])
            .await;
        assert_eq!(code, 200);
        let id = body["requestId"].as_str().unwrap().to_string();
        let status = wait_webhook_state(&app, &id, "delivered").await;
        let got = receiver.deliveries();
        assert_eq!(got.len(), 1);
        let payload = verify(&got[0]);
        assert_eq!(got[0].headers["content-type"], "application/json");
        assert!(got[0].headers["webhook-id"]
            .to_str()
            .unwrap()
            .starts_with("msg_"));
        assert_eq!(payload["type"], "request.completed");
        assert!(payload["timestamp"].is_string());
        assert_eq!(payload["data"]["requestId"], id);
        assert_eq!(payload["data"]["status"], "completed");
        assert_eq!(
            payload["data"]["outputImageUrls"],
            status["outputImageUrls"]
        );
        assert_eq!(status["webhook"]["url"], receiver.url);
        assert_eq!(status["webhook"]["attempts"], 1);
        assert_eq!(status["webhook"]["lastStatusCode"], 204);
        assert!(status["webhook"]["deliveredAt"].is_string());
        // A tampered body fails verification: the check above could fail.
        let mut tampered = got[0].clone();
        tampered.body = axum::body::Bytes::from(
            String::from_utf8_lossy(&got[0].body).replace("completed", "failed"),
        );
        let wh = standardwebhooks::Webhook::new(SECRET).unwrap();
        let mut headers = axum::http::HeaderMap::new();
        for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
            headers.insert(
                name,
                tampered.headers[name].to_str().unwrap().parse().unwrap(),
            );
        }
        assert!(wh.verify(&tampered.body, &headers).is_err());
    }
);

db_test!(
    a_failing_receiver_gets_exactly_one_delivery_later_with_one_id,
    |db| {
        let origin = Origin::start().await;
        let receiver = Receiver::start(|n| {
            if n < 3 {
                Answer::Status(500)
            } else {
                Answer::Status(200)
            }
        })
        .await;
        let mut c = config(&db, "100ms,100ms,100ms,100ms,100ms");
        // Also: the default target applies when the upload names none.
        c.webhook_url = Some(receiver.url.clone());
        let app = TestApp::start(c).await;
        let id = app.upload_ok(one_image(&origin).await).await;
        let status = wait_webhook_state(&app, &id, "delivered").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let got = receiver.deliveries();
        assert_eq!(
            got.len(),
            4,
            "three failures then one success, and nothing after"
        );
        let ids: Vec<&str> = got
            .iter()
            .map(|d| d.headers["webhook-id"].to_str().unwrap())
            .collect();
        assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
        let bodies: Vec<&[u8]> = got.iter().map(|d| d.body.as_ref()).collect();
        assert!(
            bodies.iter().all(|b| *b == bodies[0]),
            "every retry sends the same body"
        );
        for d in &got {
            verify(d);
        }
        assert_eq!(status["webhook"]["attempts"], 4);
        let attempts = app
            .core()
            .webhook_attempts(imgbatch::domain::RequestId::parse(&id).unwrap())
            .await
            .unwrap();
        let codes: Vec<Option<i64>> = attempts.iter().map(|a| a.0).collect();
        assert_eq!(codes, vec![Some(500), Some(500), Some(500), Some(200)]);
    }
);

db_test!(gone_stops_at_once_and_a_redirect_is_not_followed, |db| {
    let origin = Origin::start().await;
    let gone = Receiver::start(|_| Answer::Status(410)).await;
    let redirecting = Receiver::start(|_| Answer::Redirect("/elsewhere")).await;
    let app = TestApp::start(config(&db, "50ms")).await;
    let csv_body = one_image(&origin).await;
    let (_, a) = app
        .upload_with(csv_body.clone(), Some(&gone.url), &[])
        .await;
    let (_, b) = app.upload_with(csv_body, Some(&redirecting.url), &[]).await;
    let a = a["requestId"].as_str().unwrap().to_string();
    let b = b["requestId"].as_str().unwrap().to_string();

    let s = wait_webhook_state(&app, &a, "failed").await;
    assert_eq!(s["webhook"]["attempts"], 1);
    assert_eq!(s["webhook"]["lastStatusCode"], 410);
    assert_eq!(gone.deliveries().len(), 1);

    let s = wait_webhook_state(&app, &b, "failed").await;
    assert_eq!(
        s["webhook"]["attempts"], 2,
        "one attempt and one retry on a one-step schedule"
    );
    assert!(
        s["webhook"]["lastError"]
            .as_str()
            .unwrap()
            .contains("redirect"),
        "{s}"
    );
    let paths: Vec<String> = redirecting
        .deliveries()
        .iter()
        .map(|d| d.path.clone())
        .collect();
    assert_eq!(
        paths,
        vec!["/hook", "/hook"],
        "the redirect target was never called"
    );
});

db_test!(a_failed_delivery_can_be_sent_again, |db| {
    let origin = Origin::start().await;
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ok = flag.clone();
    let receiver = Receiver::start(move |_| {
        if ok.load(std::sync::atomic::Ordering::SeqCst) {
            Answer::Status(200)
        } else {
            Answer::Status(503)
        }
    })
    .await;
    let app = TestApp::start(config(&db, "50ms")).await;
    let (_, body) = app
        .upload_with(one_image(&origin).await, Some(&receiver.url), &[])
        .await;
    let id = body["requestId"].as_str().unwrap().to_string();
    wait_webhook_state(&app, &id, "failed").await;
    let retry = |id: String| {
        let http = app.http.clone();
        let url = app.url(&format!("/api/requests/{id}/webhook/retry"));
        async move {
            let r = http.post(url).send().await.unwrap();
            let code = r.status().as_u16();
            (code, r.json::<Value>().await.unwrap())
        }
    };
    flag.store(true, std::sync::atomic::Ordering::SeqCst);
    let (code, body) = retry(id.clone()).await;
    assert_eq!(code, 202, "{body}");
    let s = wait_webhook_state(&app, &id, "delivered").await;
    assert_eq!(
        s["webhook"]["attempts"], 1,
        "a manual retry starts a fresh schedule"
    );
    let (code, body) = retry(id.clone()).await;
    assert_eq!(code, 409, "{body}");
    let (code, _) = retry("not-an-id".into()).await;
    assert_eq!(code, 404);
});

db_test!(no_target_means_no_delivery, |db| {
    let origin = Origin::start().await;
    let app = TestApp::start(config(&db, "50ms")).await;
    let id = app.upload_ok(one_image(&origin).await).await;
    let s = app.wait_settled(&id, Duration::from_secs(20)).await;
    assert!(s["webhook"].is_null(), "{s}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM webhook_deliveries").await,
        0
    );
    let r = app
        .http
        .post(app.url(&format!("/api/requests/{id}/webhook/retry")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 409);
});

db_test!(the_generated_secret_is_kept_in_the_database, |db| {
    let mut c = db.config();
    c.webhook_secret = None;
    let mut app = TestApp::start(c).await;
    let first = imgbatch::webhook_secret(app.core(), &db.config())
        .await
        .unwrap();
    assert!(first.starts_with("whsec_"));
    app.stop().await;
    let app = TestApp::start(db.config()).await;
    let second = imgbatch::webhook_secret(app.core(), &db.config())
        .await
        .unwrap();
    assert_eq!(first, second);
    // The CLI prints the same secret.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_imgbatch"))
        .args(["webhook-secret", "--database-url", &db.url])
        .env_remove("IMGBATCH_WEBHOOK_SECRET")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), first);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("webhook secret stored in the database at"),
        "{said}"
    );
    assert!(!said.contains(":imgbatch_test_pw@"),);
});

/// Run from the wrong folder, `webhook-secret` must not make a new, empty database and print
/// a secret nobody uses: it names the database it tried and fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_secret_refuses_a_missing_database() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/nowhere/imgbatch.db", dir.path().display());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_imgbatch"))
        .args(["webhook-secret", "--database-url", &url])
        .env_remove("IMGBATCH_WEBHOOK_SECRET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "no secret printed");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("there is no database at") && said.contains(&url),
        "{said}"
    );
    assert!(!dir.path().join("nowhere").exists(), "nothing was created");
}
