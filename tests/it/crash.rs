//! Crash recovery and signals, on the real binary: SIGKILL mid-batch then restart; SIGTERM
//! exits cleanly and holds no lease.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::csv;
use crate::common::origin::{self, Origin};
use crate::common::process::{client_for, spawn_binary, wait_ready};
use crate::db_test;

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
        let id = app.upload_ok(csv(&rows)).await;
        // Kill it once some work is done and some is in flight.
        let start = Instant::now();
        loop {
            let (_, s) = app.status(&id).await;
            if s["progress"]["completedImages"].as_i64().unwrap() >= 6 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
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
        // A write the kill cut short may have left its staged copy (`name#N`, never listed
        // or served; retention removes it with the folder): outputs are the other files.
        let files = std::fs::read_dir(db.storage_dir().join(&id))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| !name.contains('#'))
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
