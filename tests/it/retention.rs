//! Retention (issue 18): the janitor deletes exactly the finished requests older than
//! IMGBATCH_RETENTION, with their rows and outputs; running it again is harmless; deleted
//! requests answer 410 until their tombstone goes; a SIGKILL at any moment of the janitor
//! leaves neither outputs without rows nor served rows without outputs.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::bundle::get;
use crate::common::origin::{self, Origin};
use crate::common::process::{client_for, spawn_binary, wait_ready};
use crate::common::{csv, TestApp, TestDb};
use crate::db_test;

/// Moves a request's last change `hours` into the past.
async fn backdate(db: &TestDb, id: &str, hours: i64) {
    let sql = if db.is_postgres() {
        format!(
            "UPDATE requests SET updated_at = updated_at - interval '{hours} hours' \
             WHERE id = '{id}'"
        )
    } else {
        format!(
            "UPDATE requests SET updated_at = updated_at - {} WHERE id = '{id}'",
            hours * 3_600_000
        )
    };
    db.execute(&sql).await;
}

async fn rows_of(db: &TestDb, id: &str) -> i64 {
    db.scalar(&format!(
        "SELECT (SELECT COUNT(*) FROM requests WHERE id = '{id}') \
              + (SELECT COUNT(*) FROM products WHERE request_id = '{id}') \
              + (SELECT COUNT(*) FROM images WHERE request_id = '{id}') \
              + (SELECT COUNT(*) FROM webhook_deliveries WHERE request_id = '{id}')"
    ))
    .await
}

/// Waits until `path` answers `code`.
async fn wait_for(app: &TestApp, path: &str, code: u16) {
    let start = Instant::now();
    loop {
        let (got, _, _) = get(app, path).await;
        if got == code {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{path}: still {got}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

db_test!(
    retention_deletes_old_finished_requests_and_only_those,
    |db| {
        let origin = Origin::start().await;
        let a = origin.put("a.jpg", "image/jpeg", origin::jpeg(32, 24, 90));
        let receiver = crate::common::receiver::Receiver::start(|_| {
            crate::common::receiver::Answer::Status(200)
        })
        .await;
        let mut config = db.config();
        config.retention = Some(Duration::from_secs(3600));
        config.janitor_interval = Duration::from_millis(100);
        let app = TestApp::start(config).await;
        let (_, old) = app
            .upload_with(csv(&[("1", "Old", &a)]), Some(&receiver.url), &[])
            .await;
        let old = old["requestId"].as_str().unwrap().to_string();
        let young = app.upload_ok(csv(&[("1", "Young", &a)])).await;
        let old_status = app.wait_settled(&old, Duration::from_secs(30)).await;
        app.wait_settled(&young, Duration::from_secs(30)).await;
        // Old but unfinished: its image takes longer than the test to download.
        let slow = origin.url("/delay/30000/a.jpg");
        let running = app.upload_ok(csv(&[("1", "Running", &slow)])).await;
        let output = old_status["outputImageUrls"][0]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(app.http.get(&output).send().await.unwrap().status(), 200);
        assert!(
            rows_of(&db, &old).await >= 3,
            "request, product, image and delivery rows"
        );
        backdate(&db, &old, 2).await;
        backdate(&db, &running, 2).await;

        wait_for(&app, &format!("/api/status/{old}"), 410).await;
        for path in [
            "status/{id}",
            "requests/{id}/output.csv",
            "requests/{id}/report.csv",
            "requests/{id}/outputs.zip",
        ] {
            let path = format!("/api/{}", path.replace("{id}", &old));
            let (code, headers, body) = get(&app, &path).await;
            assert_eq!(code, 410, "{path}");
            assert_eq!(headers["content-type"], "application/json", "{path}");
            let body: Value = serde_json::from_slice(&body).unwrap();
            assert!(
                body["message"]
                    .as_str()
                    .unwrap()
                    .starts_with("Request deleted by retention"),
                "{body}"
            );
        }
        // The endpoints that act on a request say the same.
        for path in [
            "requests/{id}/cancel",
            "requests/{id}/retry",
            "requests/{id}/webhook/retry",
        ] {
            let path = format!("/api/{}", path.replace("{id}", &old));
            let code = app.http.post(app.url(&path)).send().await.unwrap().status();
            assert_eq!(code, 410, "{path}");
        }
        let events = format!("/api/requests/{old}/events");
        assert_eq!(get(&app, &events).await.0, 410, "{events}");
        // Rows and output gone; the tombstone kept.
        assert_eq!(rows_of(&db, &old).await, 0);
        assert!(
            !db.storage_dir().join(&old).exists(),
            "the output folder is gone"
        );
        assert_eq!(app.http.get(&output).send().await.unwrap().status(), 404);
        let tombstones =
            |id: &str| format!("SELECT COUNT(*) FROM tombstones WHERE request_id = '{id}'");
        assert_eq!(db.scalar(&tombstones(&old)).await, 1);

        // Many more sweeps change nothing else: the young and the unfinished stay.
        tokio::time::sleep(Duration::from_millis(600)).await;
        for id in [&young, &running] {
            let (code, body) = app.status(id).await;
            assert_eq!(code, 200, "{body}");
            assert_eq!(db.scalar(&tombstones(id)).await, 0);
        }
        assert!(db.storage_dir().join(&young).exists());
        assert_eq!(db.scalar("SELECT COUNT(*) FROM tombstones").await, 1);

        // A tombstone older than the retention is dropped: then the ID is unknown.
        let sql = if db.is_postgres() {
            "UPDATE tombstones SET deleted_at = deleted_at - interval '2 hours'".to_string()
        } else {
            "UPDATE tombstones SET deleted_at = deleted_at - 7200000".to_string()
        };
        db.execute(&sql).await;
        wait_for(&app, &format!("/api/status/{old}"), 404).await;
    }
);

/// The invariant after a crash: every output of a request still served exists, and every
/// request folder in storage belongs to a request row. Returns (rows, marked deleting).
async fn check_nothing_lost_or_leaked(db: &TestDb) -> (i64, i64) {
    let keys = db
        .texts(
            "SELECT i.output_key FROM images i JOIN requests r ON r.id = i.request_id \
             WHERE r.deleting_at IS NULL AND i.output_key IS NOT NULL",
        )
        .await;
    for key in &keys {
        assert!(
            db.storage_dir().join(key).exists(),
            "a served row lost its output {key}"
        );
    }
    for entry in std::fs::read_dir(db.storage_dir()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().to_string();
        if name.starts_with(".imgbatch-write-check") {
            continue;
        }
        let n = db
            .scalar(&format!(
                "SELECT COUNT(*) FROM requests WHERE id = '{name}'"
            ))
            .await;
        assert_eq!(n, 1, "outputs of {name} outlived its rows");
    }
    let rows = db.scalar("SELECT COUNT(*) FROM requests").await;
    let marked = db
        .scalar("SELECT COUNT(*) FROM requests WHERE deleting_at IS NOT NULL")
        .await;
    (rows, marked)
}

db_test!(sigkill_mid_janitor_loses_and_leaks_nothing, |db| {
    const REQUESTS: usize = 24;
    let origin = Origin::start().await;
    let urls: Vec<String> = (0..3)
        .map(|i| origin.put(&format!("{i}.png"), "image/png", origin::png(8 + i, 8)))
        .collect();
    let (mut svc, base) = spawn_binary(&db, &[]);
    let app = client_for(base);
    wait_ready(&app).await;
    let mut ids = Vec::new();
    for n in 0..REQUESTS {
        ids.push(
            app.upload_ok(csv(&[(
                (n + 1).to_string(),
                "P".to_string(),
                urls.join(","),
            )]))
            .await,
        );
    }
    for id in &ids {
        app.wait_settled(id, Duration::from_secs(30)).await;
    }
    svc.kill().unwrap();
    svc.wait().unwrap();
    for id in &ids {
        backdate(&db, id, 2).await;
    }
    let env = [
        ("IMGBATCH_RETENTION", "1h"),
        ("IMGBATCH_JANITOR_INTERVAL", "10ms"),
        ("IMGBATCH_LEASE", "1s"),
    ];
    // Kill it again and again, at different moments of its sweeps, and check after each.
    let mut hit_mid_deletion = 0;
    let mut round = 0;
    loop {
        let (mut svc, base) = spawn_binary(&db, &env);
        let app = client_for(base);
        wait_ready(&app).await;
        tokio::time::sleep(Duration::from_millis(5 * (round % 8))).await;
        svc.kill().unwrap(); // SIGKILL
        svc.wait().unwrap();
        let (rows, marked) = check_nothing_lost_or_leaked(&db).await;
        eprintln!("round {round}: {rows} requests left, {marked} marked deleting");
        if marked > 0 {
            hit_mid_deletion += 1;
        }
        round += 1;
        if rows == 0 || round == 12 {
            break;
        }
        if marked > 0 {
            // Let the dead janitor's lease run out, so the next one takes its requests up.
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
    }
    eprintln!("{hit_mid_deletion} kills left requests marked deleting");
    // A last run finishes whatever the kills left.
    let (_svc, base) = spawn_binary(&db, &env);
    let app = client_for(base);
    wait_ready(&app).await;
    for id in &ids {
        wait_for(&app, &format!("/api/status/{id}"), 410).await;
    }
    // The 410 begins with the mark; the rows go just after.
    let start = Instant::now();
    while db.scalar("SELECT COUNT(*) FROM requests").await > 0 {
        assert!(start.elapsed() < Duration::from_secs(60), "requests left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(check_nothing_lost_or_leaked(&db).await, (0, 0));
    assert_eq!(db.scalar("SELECT COUNT(*) FROM images").await, 0);
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM tombstones").await,
        REQUESTS as i64
    );
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_outputs_on_s3() {
    let Some((endpoint, bucket)) = crate::scale::s3_bucket().await else {
        return;
    };
    let db = TestDb::sqlite().await;
    let origin = Origin::start().await;
    let a = origin.put("a.jpg", "image/jpeg", origin::jpeg(16, 16, 90));
    let mut env = crate::scale::s3_env(&endpoint, &format!("s3://{bucket}/outputs"));
    env.push(("IMGBATCH_RETENTION", "1h".into()));
    env.push(("IMGBATCH_JANITOR_INTERVAL", "100ms".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (_svc, base) = spawn_binary(&db, &env);
    let app = client_for(base);
    wait_ready(&app).await;
    let old = app.upload_ok(csv(&[("1", "A", &a), ("2", "B", &a)])).await;
    let young = app.upload_ok(csv(&[("1", "A", &a)])).await;
    app.wait_settled(&old, Duration::from_secs(30)).await;
    app.wait_settled(&young, Duration::from_secs(30)).await;
    use futures::TryStreamExt;
    use object_store::ObjectStore;
    let s3 = crate::scale::s3_client(&endpoint, &bucket);
    let count = |id: String| {
        let s3 = &s3;
        async move {
            let prefix = object_store::path::Path::from(format!("outputs/{id}"));
            s3.list(Some(&prefix))
                .try_collect::<Vec<_>>()
                .await
                .unwrap()
                .len()
        }
    };
    assert_eq!(
        count(old.clone()).await,
        1,
        "one output for a duplicated URL"
    );
    backdate(&db, &old, 2).await;
    wait_for(&app, &format!("/api/status/{old}"), 410).await;
    assert_eq!(count(old.clone()).await, 0);
    assert_eq!(count(young.clone()).await, 1);
}
