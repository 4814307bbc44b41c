//! Crash recovery and signals, on the real binary: SIGKILL mid-batch then restart; SIGTERM
//! exits cleanly and holds no lease.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::origin::{self, Origin};
use crate::common::{csv, TestApp, TestDb};
use crate::db_test;

/// A child process that is killed when dropped, so a failing test leaves no service behind.
struct Service(Child);

impl Service {
    fn kill(&mut self) -> std::io::Result<()> {
        self.0.kill()
    }

    fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.0.wait()
    }

    fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The real `imgbatch serve` as a child process; returns it and its base URL (read from the
/// first log line, which names the bound address).
fn spawn_binary(db: &TestDb, extra: &[(&str, &str)]) -> (Service, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_imgbatch"));
    cmd.arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &db.url)
        .env("IMGBATCH_BIND", "127.0.0.1:0")
        .env("IMGBATCH_STORAGE", db.storage_dir())
        .env("IMGBATCH_ALLOW_PRIVATE_NETWORKS", "true")
        .env("IMGBATCH_LOG_FORMAT", "json")
        .env("IMGBATCH_LEASE", "2s")
        .env("IMGBATCH_POLL_INTERVAL", "200ms")
        .env("IMGBATCH_RETRY_BASE", "100ms")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("binary starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("a first log line").unwrap();
    let log: serde_json::Value =
        serde_json::from_str(&first).unwrap_or_else(|_| panic!("JSON log line: {first}"));
    let address = log["address"]
        .as_str()
        .unwrap_or_else(|| panic!("first line names the address: {first}"));
    // Keep draining the logs so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (Service(child), format!("http://{address}"))
}

fn client_for(base: String) -> TestApp {
    TestApp {
        server: None,
        base,
        http: reqwest::Client::new(),
    }
}

async fn wait_ready(app: &TestApp) {
    let start = Instant::now();
    loop {
        if let Ok(r) = app.http.get(app.url("/readyz")).send().await {
            if r.status().is_success() {
                return;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "service did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

db_test!(
    sigkill_mid_batch_then_restart_settles_every_image_once,
    |db| {
        let origin = Origin::start().await;
        origin.put("p.png", "image/png", origin::png(48, 32));
        let (mut child, base) = spawn_binary(&db, &[("IMGBATCH_WORKERS", "4")]);
        let app = client_for(base);
        wait_ready(&app).await;
        let rows: Vec<(String, String, String)> = (1..=30)
            .map(|i| {
                (
                    i.to_string(),
                    format!("P{i}"),
                    format!("{0}?{i}a {0}?{i}b", origin.url("/delay/150/p.png")),
                )
            })
            .collect();
        let rows: Vec<(&str, &str, &str)> = rows
            .iter()
            .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()))
            .collect();
        let id = app.upload_ok(csv(&rows)).await;
        // Kill it once some work is done and some is in flight.
        let start = Instant::now();
        loop {
            let (_, s) = app.status(&id).await;
            if s["progress"]["completedImages"].as_i64().unwrap() >= 6 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no progress: {s}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let leased = db
            .scalar("SELECT COUNT(*) FROM images WHERE status = 'processing'")
            .await;
        let done_before = db
            .scalar("SELECT COUNT(*) FROM images WHERE status = 'completed'")
            .await;
        assert!(
            done_before < 60,
            "the batch finished before the kill; make it slower"
        );
        eprintln!("killed with {done_before}/60 done and {leased} leased");

        let (mut child, base) = spawn_binary(&db, &[("IMGBATCH_WORKERS", "8")]);
        let app = client_for(base);
        wait_ready(&app).await;
        let status = app.wait_settled(&id, Duration::from_secs(60)).await;
        child.kill().unwrap();
        child.wait().unwrap();

        assert_eq!(status["status"], "completed", "{status}");
        assert_eq!(status["progress"]["completedImages"], 60);
        assert_eq!(status["progress"]["failedImages"], 0);
        // Exactly once: counters agree with the rows, and no output is recorded twice.
        assert_eq!(
            db.scalar("SELECT COUNT(*) FROM images WHERE status = 'completed'")
                .await,
            60
        );
        assert_eq!(
            db.scalar("SELECT CAST(SUM(completed_images) AS BIGINT) FROM products")
                .await,
            60
        );
        assert_eq!(
            db.scalar("SELECT CAST(completed_images AS BIGINT) FROM requests")
                .await,
            60
        );
        assert_eq!(
            db.scalar("SELECT COUNT(DISTINCT output_url) FROM images")
                .await,
            60
        );
        assert_eq!(
            db.scalar("SELECT COUNT(*) FROM products WHERE status = 'completed'")
                .await,
            30
        );
        let files = std::fs::read_dir(db.storage_dir().join(&id))
            .unwrap()
            .count();
        assert_eq!(files, 60);
    }
);

db_test!(sigterm_exits_cleanly_and_releases_jobs, |db| {
    let origin = Origin::start().await;
    origin.put("p.png", "image/png", origin::png(16, 16));
    let (mut child, base) = spawn_binary(
        &db,
        &[
            ("IMGBATCH_WORKERS", "4"),
            ("IMGBATCH_SHUTDOWN_TIMEOUT", "500ms"),
        ],
    );
    let app = client_for(base);
    wait_ready(&app).await;
    let rows: Vec<(String, String, String)> = (1..=8)
        .map(|i| {
            (
                i.to_string(),
                format!("P{i}"),
                origin.url(&format!("/delay/3000/p.png?{i}")),
            )
        })
        .collect();
    let rows: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()))
        .collect();
    app.upload_ok(csv(&rows)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        db.scalar("SELECT COUNT(*) FROM images WHERE status = 'processing'")
            .await
            > 0
    );
    let started = Instant::now();
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "exit status {exit:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
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
    // After shutdown, the port no longer answers.
    assert!(app.http.get(app.url("/healthz")).send().await.is_err());
});

db_test!(
    a_delivery_queued_before_a_sigkill_is_sent_after_the_restart,
    |db| {
        use crate::common::receiver::{Answer, Receiver};
        let origin = Origin::start().await;
        let url = origin.put("p.png", "image/png", origin::png(20, 10));
        // The first attempt hangs: the process is killed while it is in flight, after the final
        // roll-up queued the delivery.
        let receiver = Receiver::start(|n| {
            if n == 0 {
                Answer::Hang(Duration::from_secs(60))
            } else {
                Answer::Status(200)
            }
        })
        .await;
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let env = [
            ("IMGBATCH_WEBHOOK_SECRET", secret),
            ("IMGBATCH_WEBHOOK_RETRY_SCHEDULE", "100ms,100ms"),
        ];
        let (mut child, base) = spawn_binary(&db, &env);
        let app = client_for(base);
        wait_ready(&app).await;
        let (code, body) = app
            .upload_with(csv(&[("1", "A", &url)]), Some(&receiver.url), &[])
            .await;
        assert_eq!(code, 200);
        let id = body["requestId"].as_str().unwrap().to_string();
        receiver.wait_for(1, Duration::from_secs(20)).await;
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(
            db.scalar("SELECT COUNT(*) FROM webhook_deliveries WHERE state = 'pending'")
                .await,
            1
        );

        let (mut child, base) = spawn_binary(&db, &env);
        let app = client_for(base);
        wait_ready(&app).await;
        let got = receiver.wait_for(2, Duration::from_secs(20)).await;
        let start = Instant::now();
        let status = loop {
            let (_, s) = app.status(&id).await;
            if s["webhook"]["state"] == "delivered" {
                break s;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "{s}");
            tokio::time::sleep(Duration::from_millis(30)).await;
        };
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(status["status"], "completed");
        assert_eq!(got[0].headers["webhook-id"], got[1].headers["webhook-id"]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            receiver.deliveries().len(),
            2,
            "exactly one delivery after the restart"
        );
    }
);
