//! The CLI client (`imgbatch submit`, `imgbatch status`) against a live service.

use std::process::Command;

use crate::common::origin::{self, Origin};
use crate::common::{csv, TestApp};
use crate::db_test;

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
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = stdout.lines().next().unwrap().trim().to_string();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{stdout}");
    assert!(
        stdout.contains("completed_with_errors: 1 of 2 images done, 1 failed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("404"),
        "the failure reason is shown: {stdout}"
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
