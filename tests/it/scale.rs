//! Scale-out (issue 8): S3-compatible storage (moto's server, named by TEST_S3_ENDPOINT), and
//! several processes of the real binary sharing one Postgres database.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::common::origin::{self, Origin};
use crate::common::process::{client_for, spawn_binary, wait_ready};
use crate::common::{csv, TestDb};

/// The S3 endpoint CI starts (moto_server); None skips, like TEST_POSTGRES_URL.
pub(crate) fn s3_endpoint() -> Option<String> {
    match std::env::var("TEST_S3_ENDPOINT") {
        Ok(e) => Some(e),
        Err(_) => {
            eprintln!("TEST_S3_ENDPOINT is not set: skipping the S3 test");
            None
        }
    }
}

pub(crate) fn s3_env(endpoint: &str, storage: &str) -> Vec<(&'static str, String)> {
    vec![
        ("IMGBATCH_STORAGE", storage.to_string()),
        ("AWS_ENDPOINT_URL", endpoint.to_string()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_DEFAULT_REGION", "us-east-1".into()),
    ]
}

/// The endpoint and a new bucket on it, or None (skip) without TEST_S3_ENDPOINT.
pub(crate) async fn s3_bucket() -> Option<(String, String)> {
    let endpoint = s3_endpoint()?;
    let bucket = format!(
        "imgbatch-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let made = reqwest::Client::new()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .expect("S3 server reachable");
    assert!(
        made.status().is_success(),
        "create bucket: {}",
        made.status()
    );
    Some((endpoint, bucket))
}

/// A client of the bucket, with the test credentials.
pub(crate) fn s3_client(endpoint: &str, bucket: &str) -> object_store::aws::AmazonS3 {
    object_store::aws::AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_bucket_name(bucket)
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .with_region("us-east-1")
        .with_allow_http(true)
        .build()
        .unwrap()
}

/// Every output of a status body, read from the bucket by its URL.
pub(crate) async fn s3_outputs(
    endpoint: &str,
    bucket: &str,
    status: &serde_json::Value,
) -> HashMap<String, Vec<u8>> {
    use object_store::ObjectStore;
    let s3 = s3_client(endpoint, bucket);
    let prefix = format!("{endpoint}/{bucket}/");
    let mut out = HashMap::new();
    for url in status["outputImageUrls"].as_array().unwrap() {
        let Some(url) = url.as_str() else { continue };
        let key = object_store::path::Path::from(&url[prefix.len()..]);
        let bytes = s3.get(&key).await.unwrap().bytes().await.unwrap();
        out.insert(url.to_string(), bytes.to_vec());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_go_to_s3_and_every_url_downloads() {
    let Some((endpoint, bucket)) = s3_bucket().await else {
        return;
    };
    let db = TestDb::sqlite().await;

    let origin = Origin::start().await;
    let urls = [
        origin.put("a.jpg", "image/jpeg", origin::jpeg(64, 48, 90)),
        origin.put("b.png", "image/png", origin::png_rgba(40, 30)),
    ];
    let env = s3_env(&endpoint, &format!("s3://{bucket}/outputs"));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (_svc, base) = spawn_binary(&db, &env);
    let app = client_for(base);
    wait_ready(&app).await;
    let id = app.upload_ok(csv(&[("1", "A", &urls.join(","))])).await;
    let status = app.wait_settled(&id, Duration::from_secs(30)).await;
    assert_eq!(status["status"], "completed", "{status}");
    // Objects are read back with credentials: whether anonymous readers may fetch the public
    // URL is the bucket policy's business (moto's server does not evaluate one).
    use object_store::ObjectStore;
    let s3 = s3_client(&endpoint, &bucket);
    let prefix = format!("{endpoint}/{bucket}/");
    for url in status["outputImageUrls"].as_array().unwrap() {
        let url = url.as_str().unwrap();
        assert!(url.starts_with(&format!("{prefix}outputs/{id}/")), "{url}");
        let key = object_store::path::Path::from(&url[prefix.len()..]);
        let got = s3.get(&key).await.unwrap_or_else(|e| panic!("{url}: {e}"));
        let content_type = got
            .attributes
            .get(&object_store::Attribute::ContentType)
            .map(|v| v.to_string());
        assert_eq!(content_type.as_deref(), Some("image/jpeg"), "{url}");
        let bytes = got.bytes().await.unwrap();
        assert_eq!(
            image::guess_format(&bytes).unwrap(),
            image::ImageFormat::Jpeg
        );
    }
    // Nothing went to the local folder.
    assert!(!db.storage_dir().join(&id).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_stops_the_service_at_start() {
    let Some(endpoint) = s3_endpoint() else {
        return;
    };
    let db = TestDb::sqlite().await;
    let env = s3_env(&endpoint, "s3://no-such-bucket-imgbatch/x");
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_imgbatch"));
        cmd.arg("serve")
            .env_clear()
            .env("DATABASE_URL", &db.url)
            .env("IMGBATCH_BIND", "127.0.0.1:0");
        for (k, v) in &env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    })
    .await
    .unwrap();
    assert!(!out.status.success(), "the service must not start");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("storage s3://no-such-bucket-imgbatch/x is not writable"),
        "{stderr}"
    );
}

fn rows(n: usize, origin: &Origin, delay_ms: u64) -> String {
    let rows: Vec<(String, String, String)> = (1..=n)
        .map(|i| {
            (
                i.to_string(),
                format!("P{i}"),
                origin.url(&format!("/delay/{delay_ms}/p.png?{i}")),
            )
        })
        .collect();
    csv(&rows)
}

const FAST: [(&str, &str); 2] = [
    ("IMGBATCH_WORKERS", "3"),
    ("IMGBATCH_POLL_INTERVAL", "200ms"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "TEST_POSTGRES_URL is not set: no Postgres run"
)]
async fn three_processes_share_the_work_exactly_once() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let origin = Origin::start().await;
    origin.put("p.png", "image/png", origin::png(24, 16));
    let services: Vec<_> = (0..3).map(|_| spawn_binary(&db, &FAST)).collect();
    let apps: Vec<_> = services
        .iter()
        .map(|(_, base)| client_for(base.clone()))
        .collect();
    for app in &apps {
        wait_ready(app).await;
    }
    let id = apps[0].upload_ok(rows(60, &origin, 100)).await;
    let status = apps[0].wait_settled(&id, Duration::from_secs(60)).await;
    assert_eq!(status["status"], "completed", "{status}");
    // Every image downloaded once: no job ran in two processes.
    for i in 1..=60 {
        assert_eq!(
            origin.hits(&format!("/delay/100/p.png?{i}")),
            1,
            "image {i}"
        );
    }
    assert_eq!(
        db.scalar("SELECT CAST(completed_images AS BIGINT) FROM requests")
            .await,
        60
    );
    // Spread over all three processes.
    assert_eq!(
        db.scalar("SELECT COUNT(DISTINCT claimed_by) FROM images")
            .await,
        3
    );
    let least = db
        .scalar("SELECT MIN(n) FROM (SELECT COUNT(*) AS n FROM images GROUP BY claimed_by) t")
        .await;
    assert!(
        least >= 5,
        "work is spread: the least busy process did {least} of 60"
    );
    // The same answer from every process.
    let mut bodies = Vec::new();
    for app in &apps {
        let (code, body) = app.status(&id).await;
        assert_eq!(code, 200);
        bodies.push(body);
    }
    assert!(bodies.iter().all(|b| b == &bodies[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "TEST_POSTGRES_URL is not set: no Postgres run"
)]
async fn a_job_uploaded_through_one_process_is_claimed_by_another_at_once() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let origin = Origin::start().await;
    let url = origin.put("p.png", "image/png", origin::png(24, 16));
    // The API-only process never claims; the worker's poll is a minute, so only NOTIFY can wake it.
    let (_api, api_base) = spawn_binary(&db, &[("IMGBATCH_WORKERS", "0")]);
    let (_worker, worker_base) = spawn_binary(
        &db,
        &[("IMGBATCH_POLL_INTERVAL", "60s"), ("IMGBATCH_API", "false")],
    );
    let api = client_for(api_base);
    let worker = client_for(worker_base);
    wait_ready(&api).await;
    wait_ready(&worker).await;
    // The worker-only process does not serve the API.
    let r = worker
        .http
        .get(worker.url("/api/status/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let id = api.upload_ok(csv(&[("1", "A", &url)])).await;
    let status = api.wait_settled(&id, Duration::from_secs(10)).await;
    let took = started.elapsed();
    assert_eq!(status["status"], "completed");
    assert!(
        took < Duration::from_secs(1),
        "claimed and done in {took:?}: NOTIFY, not the poll"
    );
    eprintln!("uploaded through one process, completed by another in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "TEST_POSTGRES_URL is not set: no Postgres run"
)]
async fn when_one_of_three_is_killed_the_others_finish_its_jobs() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let origin = Origin::start().await;
    origin.put("p.png", "image/png", origin::png(24, 16));
    let mut services: Vec<_> = (0..3).map(|_| spawn_binary(&db, &FAST)).collect();
    let apps: Vec<_> = services
        .iter()
        .map(|(_, base)| client_for(base.clone()))
        .collect();
    for app in &apps {
        wait_ready(app).await;
    }
    let id = apps[1].upload_ok(rows(45, &origin, 300)).await;
    // Kill the third process while it holds jobs.
    let start = Instant::now();
    loop {
        let holders = db
            .scalar("SELECT COUNT(DISTINCT locked_by) FROM images WHERE status = 'processing'")
            .await;
        if holders == 3 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut victim, _) = services.remove(2);
    victim.kill().unwrap();
    victim.wait().unwrap();
    let status = apps[0].wait_settled(&id, Duration::from_secs(60)).await;
    assert_eq!(status["status"], "completed", "{status}");
    assert_eq!(
        db.scalar("SELECT CAST(completed_images AS BIGINT) FROM requests")
            .await,
        45
    );
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM images WHERE status = 'completed'")
            .await,
        45
    );
    let mut per_url: HashMap<usize, usize> = HashMap::new();
    for i in 1..=45 {
        per_url.insert(i, origin.hits(&format!("/delay/300/p.png?{i}")));
    }
    // Jobs of the killed process ran again elsewhere (at most twice); all others once.
    assert!(
        per_url.values().all(|&n| (1..=2).contains(&n)),
        "{per_url:?}"
    );
}
