use anyhow::Context;
use clap::Parser;

use imgbatch::config::{Cli, Command};
use imgbatch::core::Core;
use imgbatch::telemetry;

fn main() -> std::process::ExitCode {
    // Before the runtime starts its threads.
    imgbatch::memory::tune_allocator();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run()),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => serve(cli.serve).await,
        Some(Command::Serve(config)) => serve(*config).await,
        Some(Command::Migrate(db)) => {
            telemetry::init(imgbatch::config::LogFormat::Text);
            migrate(&db.database_url).await
        }
        Some(Command::WebhookSecret(db)) => webhook_secret(cli.serve, &db.database_url).await,
        // The client commands have exit codes of their own (see client::Outcome).
        Some(Command::Submit(args)) => {
            return imgbatch::client::exit_code(imgbatch::client::submit(args).await)
        }
        Some(Command::Download(args)) => {
            return imgbatch::client::exit_code(imgbatch::client::download(args).await)
        }
        Some(Command::Status(args)) => {
            return imgbatch::client::exit_code(imgbatch::client::status(args).await)
        }
        Some(Command::List(args)) => {
            return imgbatch::client::exit_code(imgbatch::client::list(args).await)
        }
        Some(Command::Cancel(args)) => {
            return imgbatch::client::exit_code(imgbatch::client::cancel(args).await)
        }
        Some(Command::Retry(args)) => {
            return imgbatch::client::exit_code(imgbatch::client::retry(args).await)
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "fatal");
            eprintln!("imgbatch: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(config: imgbatch::Config) -> anyhow::Result<()> {
    telemetry::init(config.log_format);
    let server = imgbatch::start(config).await?;
    shutdown_signal().await;
    tracing::info!("shutting down: no new uploads; finishing or releasing in-flight work");
    server.shutdown().await?;
    tracing::info!("stopped");
    Ok(())
}

async fn migrate(url: &str) -> anyhow::Result<()> {
    let core = Core::connect(url).await?;
    core.migrate().await?;
    tracing::info!(backend = core.backend(), "migrations applied");
    Ok(())
}

async fn webhook_secret(config: imgbatch::Config, url: &str) -> anyhow::Result<()> {
    // What it read is said on stderr, so the secret alone is on stdout for scripts.
    if let Some(secret) = config
        .webhook_secret
        .as_deref()
        .filter(|s| !s.trim().is_empty())
    {
        imgbatch::webhook::Signer::from_secret(secret)
            .context("IMGBATCH_WEBHOOK_SECRET is invalid")?;
        eprintln!("imgbatch: the webhook secret set by IMGBATCH_WEBHOOK_SECRET");
        println!("{}", secret.trim());
        return Ok(());
    }
    // Read only: never a new database, never a migration or a new secret in a database that
    // may not be the service's.
    let core = Core::open_existing(url).await?;
    let shown = redacted(url);
    match core.setting(imgbatch::webhook::SECRET_SETTING).await {
        Ok(Some(secret)) => {
            eprintln!("imgbatch: the webhook secret stored in the database at {shown}");
            println!("{secret}");
            Ok(())
        }
        Ok(None) => anyhow::bail!(
            "the database at {shown} holds no webhook secret yet: the service makes one when it \
             first starts with workers (or set IMGBATCH_WEBHOOK_SECRET)"
        ),
        Err(e) => Err(anyhow::anyhow!(
            "cannot read the webhook secret from the database at {shown} (is it the service's \
             database?): {e}"
        )),
    }
}

/// A database URL without its password, to show.
fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
