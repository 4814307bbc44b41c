//! The CLI client (`imgbatch submit`, `imgbatch status`) against a live service.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::origin::{self, Origin};
use crate::common::{csv, TestApp};
use crate::db_test;

/// The real binary with these arguments, without the client's environment variables (so the
/// test machine's settings cannot leak in).
fn imgbatch(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_imgbatch"));
    cmd.args(args)
        .env_remove("IMGBATCH_SERVER")
        .env_remove("IMGBATCH_API_KEY");
    cmd
}

/// Runs the binary to its end, off the async runtime.
async fn run(args: &[&str]) -> Output {
    let mut cmd = imgbatch(args);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

db_test!(submit_waits_and_saves_output_csv, |db| {
    let origin = Origin::start().await;
    let good = origin.put("a.png", "image/png", origin::png(30, 20));
    let app = TestApp::start(db.config()).await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.csv");
    let output = dir.path().join("out.csv");
    std::fs::write(
        &input,
        csv(&[("1", "A", &good), ("2", "B", &origin.url("/status/404"))]),
    )
    .unwrap();
    let base = app.base.clone();
    let (input2, output2) = (input.clone(), output.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_imgbatch"))
            .args([
                "submit",
                input2.to_str().unwrap(),
                "--server",
                &base,
                "--wait",
                "--output",
                output2.to_str().unwrap(),
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // One image failed: completed_with_errors, exit code 2.
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let id = stdout.lines().next().unwrap().trim().to_string();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{stdout}");
    assert!(
        stdout.contains("completed_with_errors: 1 of 2 images done, 1 failed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("serial 2: ") && stdout.contains("404"),
        "the failure is shown with its serial and reason: {stdout}"
    );
    let saved = std::fs::read_to_string(&output).unwrap();
    assert!(saved.starts_with("S. No.,Product Name,Input Image Urls,Output Image Urls"));
    assert!(saved.contains(&format!("{}/images/", app.base)));

    let base = app.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_imgbatch"))
            .args(["status", &id, "--server", &base])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 of 2 images done"));

    // A bad CSV: a failing exit and the service's line-numbered errors.
    std::fs::write(
        &input,
        "S. No.,Product Name,Input Image Urls\n1,,ftp://x/y\n",
    )
    .unwrap();
    let base = app.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_imgbatch"))
            .args(["submit", input.to_str().unwrap(), "--server", &base])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Invalid CSV format") && stderr.contains("line 2"),
        "{stderr}"
    );
});

db_test!(submit_wait_exit_code_tells_how_the_request_ended, |db| {
    let origin = Origin::start().await;
    let good = origin.put("a.png", "image/png", origin::png(30, 20));
    let bad = origin.url("/status/404");
    let app = TestApp::start(db.config()).await;
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("completed", Some(0), vec![("1", "A", good.clone())]),
        (
            "completed_with_errors",
            Some(2),
            vec![("1", "A", good.clone()), ("2", "B", bad.clone())],
        ),
        (
            "failed",
            Some(3),
            vec![("1", "A", bad.clone()), ("3", "C", bad.clone())],
        ),
    ];
    for (status, code, rows) in cases {
        let input = dir.path().join(format!("{status}.csv"));
        std::fs::write(&input, csv(&rows)).unwrap();
        let out = run(&[
            "submit",
            input.to_str().unwrap(),
            "--server",
            &app.base,
            "--wait",
        ])
        .await;
        assert_eq!(out.status.code(), code, "{status}: {}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(&format!("{status}: ")), "{}", text(&out));
        if status == "failed" {
            assert!(
                stdout.contains("serial 1: ") && stdout.contains("serial 3: "),
                "{}",
                text(&out)
            );
        }
    }

    // Without --wait, an accepted upload is a success whatever becomes of it.
    let input = dir.path().join("no-wait.csv");
    std::fs::write(&input, csv(&[("1", "A", &bad)])).unwrap();
    let out = run(&["submit", input.to_str().unwrap(), "--server", &app.base]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
});

db_test!(a_401_suggests_the_api_key, |db| {
    let mut c = db.config();
    c.api_keys = vec!["the-key".into()];
    c.workers.workers = 0;
    let app = TestApp::start(c).await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.csv");
    std::fs::write(&input, csv(&[("1", "A", "https://a.test/1.jpg")])).unwrap();
    let path = input.to_str().unwrap();

    let out = run(&["submit", path, "--server", &app.base]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("401")
            && stderr.contains("requires an API key: pass --api-key")
            && stderr.contains("IMGBATCH_API_KEY"),
        "{}",
        text(&out)
    );

    let out = run(&["submit", path, "--server", &app.base, "--api-key", "wrong"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refused this API key: check --api-key"),
        "{}",
        text(&out)
    );

    // The same hint from `status`; and the right key (here from the environment) works.
    let out = run(&[
        "status",
        "0193c1f4-0000-7000-8000-000000000000",
        "--server",
        &app.base,
    ])
    .await;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pass --api-key"),
        "{}",
        text(&out)
    );
    let mut cmd = imgbatch(&["submit", path, "--server", &app.base]);
    cmd.env("IMGBATCH_API_KEY", "the-key");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
});

#[tokio::test]
async fn an_unreachable_server_is_named() {
    // A port that was just free: nothing listens there, so the connection is refused.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.csv");
    std::fs::write(&input, csv(&[("1", "A", "https://a.test/1.jpg")])).unwrap();

    for args in [
        vec![
            "submit",
            input.to_str().unwrap(),
            "--server",
            &base,
            "--wait",
        ],
        vec![
            "status",
            "0193c1f4-0000-7000-8000-000000000000",
            "--server",
            &base,
        ],
    ] {
        let out = run(&args).await;
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("the server is not reachable at {base} "))
                && stderr.contains("--server"),
            "{}",
            text(&out)
        );
    }
}

db_test!(ctrl_c_while_waiting_says_how_to_follow_the_request, |db| {
    // No workers: the request stays pending, so the client waits until interrupted.
    let mut c = db.config();
    c.workers.workers = 0;
    let app = TestApp::start(c).await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.csv");
    std::fs::write(&input, csv(&[("1", "A", "https://a.test/1.jpg")])).unwrap();
    let base = app.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        let mut child = imgbatch(&[
            "submit",
            input.to_str().unwrap(),
            "--server",
            &base,
            "--wait",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
        // The ID is printed once the client listens for Ctrl-C.
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut id = String::new();
        stdout.read_line(&mut id).unwrap();
        let pid = libc::pid_t::try_from(child.id()).unwrap();
        // SAFETY: kill(2) on the child this test spawned and has not reaped yet.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
        let start = Instant::now();
        while child.try_wait().unwrap().is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the client did not stop on SIGINT"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut out = child.wait_with_output().unwrap();
        out.stdout = id.into_bytes();
        out
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("request {id} goes on"))
            && stderr.contains(&format!("imgbatch status {id} --server {}", app.base))
            && stderr.contains(&format!("{}/api/status/{id}", app.base)),
        "{}",
        text(&out)
    );
    // The request was left alone.
    let (code, status) = app.status(&id).await;
    assert_eq!((code, status["status"].as_str()), (200, Some("pending")));
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_saves_the_bundle_or_unpacks_it() {
    let db = crate::common::TestDb::sqlite().await;
    let origin = Origin::start().await;
    let a = origin.put("a.png", "image/png", origin::png(30, 20));
    let b = origin.put("b.png", "image/png", origin::png(20, 30));
    let app = TestApp::start(db.config()).await;
    let id = app
        .upload_ok(csv(&[("1", "Mug", &a), ("2", "a/../b", &b)]))
        .await;
    app.wait_settled(&id, Duration::from_secs(30)).await;
    let dir = tempfile::tempdir().unwrap();
    let zip = dir.path().join("all.zip");
    let out = run(&[
        "download",
        &id,
        "--server",
        &app.base,
        "-o",
        zip.to_str().unwrap(),
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let (_, _, served) = crate::bundle::get(&app, &format!("/api/requests/{id}/outputs.zip")).await;
    let saved = std::fs::read(&zip).unwrap();
    let entries = crate::bundle::unzip(&saved);
    assert_eq!(entries, crate::bundle::unzip(&served));
    assert!(!dir.path().join("all.zip.part").exists());

    let folder = dir.path().join("unpacked");
    let out = run(&[
        "download",
        &id,
        "--server",
        &app.base,
        "-o",
        folder.to_str().unwrap(),
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let mut files: Vec<String> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, entries.keys().cloned().collect::<Vec<_>>());
    for (name, data) in &entries {
        assert_eq!(&std::fs::read(folder.join(name)).unwrap(), data, "{name}");
    }
    let out = run(&[
        "download",
        &uuid::Uuid::now_v7().to_string(),
        "--server",
        &app.base,
    ])
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("404"), "{}", text(&out));
}

db_test!(list_cancel_and_retry_from_the_command_line, |db| {
    let mut c = db.config();
    c.workers.workers = 0;
    let app = TestApp::start(c).await;
    let id = app
        .upload_ok(csv(&[(
            "1",
            "A",
            "https://a.test/1.jpg https://a.test/2.jpg",
        )]))
        .await;
    let base = app.base.as_str();
    let out = run(&["list", "--server", base]).await;
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&id) && stdout.contains("pending"),
        "{stdout}"
    );

    let out = run(&["cancel", &id, "--server", base]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("cancelled"),
        "{}",
        text(&out)
    );

    let out = run(&["retry", &id, "--server", base, "--error-codes", "nope"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown error code"),
        "{}",
        text(&out)
    );
    let out = run(&["retry", &id, "--server", base]).await;
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("2 images queued again") && stdout.contains("processing"),
        "{stdout}"
    );

    let out = run(&["list", "--server", base, "--status", "processing", "--json"]).await;
    let page: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        page["requests"][0]["requestId"],
        id.as_str(),
        "{}",
        text(&out)
    );
});

/// `submit --quality --max-width --max-height --format` reach the service as the upload's
/// options; a bad one comes back as the service's 400 with the field named. (The options
/// themselves are checked on both databases in tests/it/options.rs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_passes_the_options_and_shows_their_errors() {
    let db = crate::common::TestDb::sqlite().await;
    let origin = Origin::start().await;
    let big = origin.put("a.png", "image/png", origin::png(300, 200));
    let app = TestApp::start(db.config()).await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.csv");
    std::fs::write(&input, csv(&[("1", "A", &big)])).unwrap();
    let path = input.to_str().unwrap();

    let out = run(&[
        "submit",
        path,
        "--server",
        &app.base,
        "--wait",
        "--quality",
        "60",
        "--max-width",
        "120",
        "--max-height",
        "100",
        "--format",
        "WebP",
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let id = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap()
        .trim()
        .to_string();
    let out = run(&["status", &id, "--server", &app.base, "--json"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        status["options"],
        serde_json::json!({"quality": 60, "maxWidth": 120, "maxHeight": 100, "format": "webp"})
    );
    let image = &status["products"][0]["images"][0];
    assert_eq!(image["format"], "webp", "{status}");
    assert_eq!(
        (image["width"].as_u64(), image["height"].as_u64()),
        (Some(120), Some(80))
    );

    let out = run(&[
        "submit",
        path,
        "--server",
        &app.base,
        "--quality",
        "0",
        "--format",
        "gif",
    ])
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("400")
            && stderr.contains("Invalid options")
            && stderr.contains("\n  quality: ")
            && stderr.contains("\n  format: ")
            && !stderr.contains("line null"),
        "{}",
        text(&out)
    );
}
