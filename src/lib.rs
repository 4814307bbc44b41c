//! imgbatch: a CSV of products and image URLs in, compressed JPEGs out.
//!
//! [`start`] builds the whole service from a [`Config`]; `main.rs` and the integration tests both
//! use it, so tests run exactly what production runs.

pub mod allocator;
pub mod api;
pub mod bundle;
pub mod client;
pub mod compress;
pub mod config;
pub mod core;
pub mod csv_input;
pub mod domain;
pub mod error;
pub mod failure;
pub mod fetch;
pub mod image_report;
pub mod intake;
pub mod jpeg;
pub mod memory;
pub mod metrics;
pub mod net;
pub mod png;
pub mod report;
pub mod storage;
pub mod store;
pub mod telemetry;
pub mod webhook;
pub mod worker;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::Config;

use crate::api::{ApiKeys, AppState};
use crate::core::Core;
use crate::worker::WorkerPool;

/// Large blocks mapped on their own, with huge pages (see [`allocator`]); set here so that the
/// binary, the unit tests and the integration tests (which start the service in process) all
/// run on it.
#[global_allocator]
static ALLOC: allocator::LargeBlocks = allocator::LargeBlocks;

/// A running service: its HTTP server and its workers.
pub struct Server {
    pub addr: SocketAddr,
    pub core: Core,
    shutdown: CancellationToken,
    http: JoinHandle<std::io::Result<()>>,
    workers: Option<WorkerPool>,
    janitor: Option<JoinHandle<()>>,
}

/// Binds, migrates, and starts serving and working. Returns once the service is ready.
pub async fn start(config: Config) -> anyhow::Result<Server> {
    let listener = TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("cannot listen on {}", config.bind))?;
    let addr = listener.local_addr()?;
    tracing::info!(address = %addr, "listening on http://{addr}");

    let core = Core::connect(&config.db.database_url)
        .await
        .context("cannot open the database")?;
    core.migrate()
        .await
        .context("cannot migrate the database")?;
    tracing::info!(backend = core.backend(), "database ready");

    let public_url: Arc<str> = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"))
        .trim_end_matches('/')
        .into();
    if let Some(url) = config
        .webhook_url
        .as_deref()
        .filter(|u| !u.trim().is_empty())
    {
        intake::parse_webhook_url(url, config.limits.max_url_length)
            .map_err(|e| anyhow::anyhow!("IMGBATCH_WEBHOOK_URL is invalid: {e}"))?;
    }
    let salt = core
        .setting_or_insert(
            "output_key_salt",
            &uuid::Uuid::new_v4().simple().to_string(),
        )
        .await?;
    let storage = storage::Storage::open(
        &config.storage,
        &public_url,
        config.storage_public_url.as_deref(),
    )
    .await?
    .with_key_salt(salt);
    let config = Arc::new(config);
    let shutdown = CancellationToken::new();

    let bundle_storage = storage.clone();
    let janitor = config.retention.map(|keep| {
        let retention = worker::janitor::Retention {
            keep,
            interval: config.janitor_interval,
            lease: config.workers.lease,
        };
        tokio::spawn(worker::janitor::run(
            core.clone(),
            storage.clone(),
            retention,
            shutdown.child_token(),
        ))
    });
    let workers = if config.workers.workers > 0 {
        let fetcher = fetch::Fetcher::new(&config)?;
        let signer = webhook::Signer::from_secret(&webhook_secret(&core, &config).await?)?;
        let sender = webhook::Sender::new(
            signer,
            config.limits.webhook_timeout,
            config.address_policy(),
        )?;
        Some(WorkerPool::start(
            core.clone(),
            storage,
            fetcher,
            sender,
            config.clone(),
            public_url.clone(),
            shutdown.child_token(),
        ))
    } else {
        None
    };

    let state = AppState {
        core: core.clone(),
        keys: Arc::new(ApiKeys::new(&config.api_keys)),
        config,
        public_url,
        status_cache: Arc::new(api::status_cache::StatusCache::new(64 * 1024 * 1024)),
        storage: bundle_storage,
        shutdown: shutdown.clone(),
    };
    let app = api::router(state);
    let http_shutdown = shutdown.clone();
    // TCP_NODELAY: a streamed status body is written in many pieces, and with Nagle's
    // algorithm each small piece after the first waits for the client's (delayed, up to 40 ms)
    // acknowledgement of the one before. Whole bodies go out in one write either way.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let http = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
        .await
    });
    Ok(Server {
        addr,
        core,
        shutdown,
        http,
        workers,
        janitor,
    })
}

/// The webhook signing secret: the setting, else the one generated once and kept in the
/// database (so every process and every restart signs alike).
pub async fn webhook_secret(core: &Core, config: &Config) -> anyhow::Result<String> {
    if let Some(s) = config
        .webhook_secret
        .as_deref()
        .filter(|s| !s.trim().is_empty())
    {
        webhook::Signer::from_secret(s).context("IMGBATCH_WEBHOOK_SECRET is invalid")?;
        return Ok(s.trim().to_string());
    }
    Ok(core
        .setting_or_insert(webhook::SECRET_SETTING, &webhook::Signer::generate_secret())
        .await?)
}

impl Server {
    /// Stops taking requests, lets in-flight jobs finish or hands them back, and waits.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        if let Some(workers) = self.workers {
            workers.stop().await;
        }
        if let Some(janitor) = self.janitor {
            // It stops between two requests; one it had taken is taken up again later.
            janitor.await?;
        }
        self.http.await??;
        Ok(())
    }

    /// `http://` and the bound address.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}
