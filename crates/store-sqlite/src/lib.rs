//! The SQLite backend: how cloudvpp opens, tunes and migrates a SQLite database. The
//! queries themselves live in `cloudvpp-store-sql`, shared with PostgreSQL.
//!
//! One writer connection and a small reader pool over one WAL database: SQLite allows a
//! single writer, so funnelling writes through one connection avoids `SQLITE_BUSY` churn,
//! while readers (Get Users pages) run beside it. `synchronous=NORMAL` in WAL mode keeps
//! every committed transaction across a process crash (`kill -9`); only an OS crash or
//! power loss may lose the last commits.

use cloudvpp_store::{Result, StoreError};
use cloudvpp_store_sql::Dialect;
pub use cloudvpp_store_sql::SqlStore;
use sqlx::any::AnyPoolOptions;
use sqlx::Executor;
use std::time::Duration;

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Other(e.to_string())
}

/// `url` with the connection mode SQLite should open the file in (ours wins over one given).
fn with_mode(url: &str, mode: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}mode={mode}")
}

/// Opens (creating if missing) and migrates the database at `url` (`sqlite://PATH`).
pub async fn connect(url: &str) -> Result<SqlStore> {
    sqlx::any::install_default_drivers();
    // Waiting for the single writer is normal under load: only a long wait is worth a log line.
    let writer = AnyPoolOptions::new()
        .acquire_slow_threshold(Duration::from_secs(30))
        .max_connections(1)
        .min_connections(1)
        // Queueing for the one writer is normal under load, but a request that waits longer
        // than this is better answered 503 with Retry-After than left hanging.
        .acquire_timeout(Duration::from_secs(5))
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                     PRAGMA busy_timeout = 10000; PRAGMA cache_size = -65536;",
                )
                .await
                .map(|_| ())
            })
        })
        .connect(&with_mode(url, "rwc"))
        .await
        .map_err(err)?;
    sqlx::migrate!("./migrations")
        .run(&writer)
        .await
        .map_err(err)?;
    let reader = AnyPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(3))
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute("PRAGMA busy_timeout = 10000; PRAGMA cache_size = -65536;")
                    .await
                    .map(|_| ())
            })
        })
        .connect(&with_mode(url, "ro"))
        .await
        .map_err(err)?;
    Ok(SqlStore::new(writer, reader, Dialect::Sqlite))
}
