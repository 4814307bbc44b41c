//! The real binary as a child process, for crash, signal and multi-process tests.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{TestApp, TestDb};

/// A child process that is killed when dropped, so a failing test leaves no service behind.
pub struct Service(pub Child, Arc<Mutex<Vec<String>>>);

impl Service {
    /// Every line the process has written to stdout so far (its logs).
    pub fn logs(&self) -> Vec<String> {
        self.1.lock().unwrap().clone()
    }

    pub fn kill(&mut self) -> std::io::Result<()> {
        self.0.kill()
    }

    pub fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.0.wait()
    }

    pub fn id(&self) -> u32 {
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
pub fn spawn_binary(db: &TestDb, extra: &[(&str, &str)]) -> (Service, String) {
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
    // JSON by default here; a test may ask for text, whose fields read `address=…`.
    let address = match serde_json::from_str::<serde_json::Value>(&first) {
        Ok(log) => log["address"].as_str().map(str::to_owned),
        Err(_) => first
            .split_whitespace()
            .find_map(|f| f.strip_prefix("address="))
            .map(str::to_owned),
    }
    .unwrap_or_else(|| panic!("first line names the address: {first}"));
    let logs = Arc::new(Mutex::new(vec![first]));
    // Keep draining the logs so the child never blocks on a full pipe.
    let kept = logs.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            kept.lock().unwrap().push(line);
        }
    });
    (Service(child, logs), format!("http://{address}"))
}

pub fn client_for(base: String) -> TestApp {
    TestApp {
        server: None,
        base,
        http: reqwest::Client::new(),
    }
}

pub async fn wait_ready(app: &TestApp) {
    let start = Instant::now();
    loop {
        if let Ok(r) = app.http.get(app.url("/readyz")).send().await {
            if r.status().is_success() {
                return;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "service did not become ready in {:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
