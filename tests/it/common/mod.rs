//! Test harness: the real service on 127.0.0.1 with a random port, on a fresh database per test
//! (a SQLite file, or a new database on the Postgres server named by TEST_POSTGRES_URL), plus
//! an image origin the tests control.

#![allow(dead_code)]

pub mod origin;
pub mod process;
pub mod receiver;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use imgbatch::Config;
use serde_json::Value;

/// Runs a test body once on SQLite and once on Postgres. Without TEST_POSTGRES_URL the
/// Postgres run is ignored, and `cargo test` lists it so (see build.rs); with it, a server that
/// cannot be reached fails the run.
#[macro_export]
macro_rules! db_test {
    ($name:ident, |$db:ident| $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let $db = $crate::common::TestDb::sqlite().await;
                $body
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[cfg_attr(
                not(postgres_tests),
                ignore = "TEST_POSTGRES_URL is not set: no Postgres run"
            )]
            async fn postgres() {
                let Some($db) = $crate::common::TestDb::postgres().await else {
                    return;
                };
                $body
            }
        }
    };
}

pub enum Backend {
    Sqlite,
    Postgres { admin_url: String, name: String },
}

/// A fresh, empty database, dropped with the value.
pub struct TestDb {
    pub url: String,
    pub backend: Backend,
    pub dir: tempfile::TempDir,
}

impl TestDb {
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/db/imgbatch.db", dir.path().display());
        TestDb {
            url,
            backend: Backend::Sqlite,
            dir,
        }
    }

    /// None (and a note on stderr) when TEST_POSTGRES_URL is unset, so `cargo test` works on a
    /// machine without Postgres; CI sets it, and then an unreachable server fails the test.
    pub async fn postgres() -> Option<Self> {
        let Ok(admin_url) = std::env::var("TEST_POSTGRES_URL") else {
            eprintln!("TEST_POSTGRES_URL is not set: skipping the Postgres run of this test");
            return None;
        };
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| {
                panic!("TEST_POSTGRES_URL={admin_url} is set but unreachable: {e}")
            });
        let name = format!("imgbatch_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let mut url = url::Url::parse(&admin_url).unwrap();
        url.set_path(&format!("/{name}"));
        Some(TestDb {
            url: url.to_string(),
            backend: Backend::Postgres { admin_url, name },
            dir: tempfile::tempdir().unwrap(),
        })
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.backend, Backend::Postgres { .. })
    }

    /// Settings for a service on this database: random port, storage in a temp folder,
    /// loopback origins allowed, fast retries.
    pub fn config(&self) -> Config {
        let mut c = Config::defaults();
        c.db.database_url = self.url.clone();
        c.bind = "127.0.0.1:0".parse().unwrap();
        c.storage = self.storage_dir().display().to_string();
        c.public_url = None;
        c.allow_private_networks = true;
        c.api_keys = vec![];
        c.webhook_url = None;
        // Tests poll hard; the limit has its own test.
        c.rate_limit = 0;
        c.workers.retry_base = Duration::from_millis(100);
        c.workers.poll_interval = Duration::from_millis(200);
        c.workers.lease = Duration::from_secs(5);
        c.limits.download_timeout = Duration::from_secs(5);
        c
    }

    /// Runs a query that returns one integer, on whichever database this is. Used to check
    /// stored state the API does not show (leases, recorded counts).
    pub async fn scalar(&self, sql: &str) -> i64 {
        if self.is_postgres() {
            let pool = sqlx::PgPool::connect(&self.url).await.unwrap();
            let v: i64 = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
            pool.close().await;
            v
        } else {
            let pool = sqlx::SqlitePool::connect(&self.url).await.unwrap();
            let v: i64 = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
            pool.close().await;
            v
        }
    }

    /// Runs a query that returns one text column, on whichever database this is.
    pub async fn texts(&self, sql: &str) -> Vec<String> {
        if self.is_postgres() {
            let pool = sqlx::PgPool::connect(&self.url).await.unwrap();
            let v = sqlx::query_scalar(sql).fetch_all(&pool).await.unwrap();
            pool.close().await;
            v
        } else {
            let pool = sqlx::SqlitePool::connect(&self.url).await.unwrap();
            let v = sqlx::query_scalar(sql).fetch_all(&pool).await.unwrap();
            pool.close().await;
            v
        }
    }

    /// Runs a statement that returns nothing, on whichever database this is. Used to put
    /// stored rows in states a test needs without running the workers.
    pub async fn execute(&self, sql: &str) {
        if self.is_postgres() {
            let pool = sqlx::PgPool::connect(&self.url).await.unwrap();
            sqlx::query(sql).execute(&pool).await.unwrap();
            pool.close().await;
        } else {
            let pool = sqlx::SqlitePool::connect(&self.url).await.unwrap();
            sqlx::query(sql).execute(&pool).await.unwrap();
            pool.close().await;
        }
    }

    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("images")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Backend::Postgres { admin_url, name } = &self.backend {
            let (admin_url, name) = (admin_url.clone(), name.clone());
            // Drop is synchronous; run the cleanup on a runtime of its own.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    use sqlx::Connection;
                    if let Ok(mut c) = sqlx::PgConnection::connect(&admin_url).await {
                        let _ =
                            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                                .execute(&mut c)
                                .await;
                    }
                });
            })
            .join();
        }
    }
}

/// A running service and a client for it.
pub struct TestApp {
    pub server: Option<imgbatch::Server>,
    pub base: String,
    pub http: reqwest::Client,
}

impl TestApp {
    pub async fn start(config: Config) -> Self {
        if std::env::var_os("RUST_LOG").is_some() {
            imgbatch::telemetry::init(imgbatch::config::LogFormat::Text);
        }
        let server = imgbatch::start(config).await.expect("service starts");
        let base = server.base_url();
        TestApp {
            server: Some(server),
            base,
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await.expect("clean shutdown");
        }
    }

    pub fn core(&self) -> &imgbatch::core::Core {
        &self.server.as_ref().unwrap().core
    }

    /// Uploads a CSV; returns status and JSON body.
    pub async fn upload(&self, csv: impl Into<Vec<u8>>) -> (u16, Value) {
        self.upload_with(csv, None, &[]).await
    }

    pub async fn upload_with(
        &self,
        csv: impl Into<Vec<u8>>,
        webhook_url: Option<&str>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let part = reqwest::multipart::Part::bytes(csv.into())
            .file_name("products.csv")
            .mime_str("text/csv")
            .unwrap();
        let mut form = reqwest::multipart::Form::new().part("file", part);
        if let Some(w) = webhook_url {
            form = form.text("webhookUrl", w.to_string());
        }
        let mut req = self.http.post(self.url("/api/upload")).multipart(form);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Uploads a CSV that must be accepted; returns the request ID.
    pub async fn upload_ok(&self, csv: impl Into<Vec<u8>>) -> String {
        let (status, body) = self.upload(csv).await;
        assert_eq!(status, 200, "upload refused: {body}");
        body["requestId"].as_str().unwrap().to_string()
    }

    pub async fn status(&self, id: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(self.url(&format!("/api/status/{id}")))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Polls until the request reaches a final status; panics after `timeout`.
    pub async fn wait_settled(&self, id: &str, timeout: Duration) -> Value {
        let start = Instant::now();
        loop {
            let (code, body) = self.status(id).await;
            assert_eq!(code, 200, "{body}");
            if matches!(
                body["status"].as_str(),
                Some("completed" | "completed_with_errors" | "failed")
            ) {
                return body;
            }
            assert!(
                start.elapsed() < timeout,
                "request {id} did not settle in {timeout:?}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // A test that panicked leaves its server running on its runtime; that runtime is
        // dropped right after, which stops it.
    }
}

/// Every image of a status body, in CSV order.
pub fn images(status: &Value) -> Vec<&Value> {
    status["products"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["images"].as_array().unwrap())
        .collect()
}

/// A CSV with the standard header and the given rows.
pub fn csv<A: AsRef<str>, B: AsRef<str>, C: AsRef<str>>(rows: &[(A, B, C)]) -> String {
    let mut s = String::from("S. No.,Product Name,Input Image Urls\n");
    for (serial, name, urls) in rows {
        let (serial, name, urls) = (serial.as_ref(), name.as_ref(), urls.as_ref());
        s.push_str(&format!("{serial},{name},\"{urls}\"\n"));
    }
    s
}
