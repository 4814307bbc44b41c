//! The store: every durable fact of the service, behind a narrow interface of single-purpose
//! operations ([`backend::Backend`]) with two backends. Each backend speaks its own SQL (and has
//! its own migrations) so neither is held to the other's lowest common denominator; the rules
//! that decide what to run live once, above this layer, in `crate::core`. The contract suite
//! (`tests/it/store_contract.rs`) runs the same cases on both.

pub(crate) mod backend;
mod pg_copy;
mod postgres;
pub(crate) mod rows;
mod sqlite;
mod types;

use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub(crate) use postgres::PgStore;
pub(crate) use sqlite::SqliteStore;
pub use types::*;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached right now; callers answer 503 and retry later.
    #[error("database unavailable: {0}")]
    Unavailable(anyhow::Error),
    #[error(transparent)]
    Other(anyhow::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.into()),
            sqlx::Error::Database(ref db) if is_unavailable_code(db.code().as_deref()) => {
                StoreError::Unavailable(e.into())
            }
            other => StoreError::Other(other.into()),
        }
    }
}

/// Postgres says "shutting down", "cannot connect now" and the like with these SQLSTATE classes;
/// SQLite's busy/locked (5, 6) mean another writer held on past the busy timeout.
fn is_unavailable_code(code: Option<&str>) -> bool {
    match code {
        Some(c) => {
            c.starts_with("08")
                || c.starts_with("57P")
                || c == "53300"
                // SQLite's extended codes carry the primary code in their low byte.
                || c.parse::<i32>().is_ok_and(|n| matches!(n & 0xff, 5 | 6))
        }
        None => false,
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Other(e.into())
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Wakes a waiting loop when new work may be there, so nothing waits for the next poll.
#[derive(Clone, Default)]
pub struct Wakeup(Arc<Notify>);

impl Wakeup {
    pub fn notify(&self) {
        // notify_one stores a permit when nobody waits, so a wake-up is never lost.
        self.0.notify_one();
    }

    pub async fn wait(&self) {
        self.0.notified().await
    }
}

/// The two wake-up signals: new image jobs, and webhook deliveries due.
#[derive(Clone, Default)]
pub struct Wakeups {
    pub jobs: Wakeup,
    pub webhooks: Wakeup,
}

/// The database: one of the two backends.
#[derive(Clone)]
pub(crate) enum Db {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl Db {
    /// Opens the database named by the URL's scheme; a SQLite file (and its folder) is created
    /// if `create`, else it must exist.
    pub async fn connect(url: &str, create: bool) -> StoreResult<Self> {
        if url.starts_with("sqlite:") {
            Ok(Db::Sqlite(SqliteStore::connect(url, create).await?))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Db::Postgres(PgStore::connect(url).await?))
        } else {
            Err(StoreError::Other(anyhow::anyhow!(
                "DATABASE_URL must start with sqlite: or postgres:, got {url:?}"
            )))
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    pub async fn migrate(&self) -> StoreResult<()> {
        match self {
            Db::Sqlite(s) => s.migrate().await,
            Db::Postgres(s) => s.migrate().await,
        }
    }

    pub async fn ping(&self) -> StoreResult<()> {
        match self {
            Db::Sqlite(s) => s.ping().await,
            Db::Postgres(s) => s.ping().await,
        }
    }

    /// Wakes `wakeups` when another process on this database stores new work, until
    /// `shutdown`. Nothing to do for a database only this process uses.
    pub async fn listen(&self, wakeups: Wakeups, shutdown: CancellationToken) {
        match self {
            Db::Sqlite(_) => {}
            Db::Postgres(s) => s.listen(wakeups, shutdown).await,
        }
    }
}
