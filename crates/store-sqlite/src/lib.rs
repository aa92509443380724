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

mod signals;

fn err(e: impl Into<cloudvpp_store::Source>) -> StoreError {
    StoreError::Other(e.into())
}

/// `url` with the connection mode SQLite should open the file in (ours wins over one given).
fn with_mode(url: &str, mode: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}mode={mode}")
}

/// The file `url` names, unless it is an in-memory database.
fn db_path(url: &str) -> Option<std::path::PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() || path == ":memory:" || query.split('&').any(|p| p == "mode=memory") {
        return None;
    }
    Some(path.into())
}

/// Creates the database file, if missing, readable by its owner only: it holds every
/// organisation's users and secrets. SQLite gives its `-wal` and `-shm` files the mode of
/// the database file.
fn create_private(path: &std::path::Path) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(err(format!("creating {}: {e}", path.display()))),
    }
}

/// Opens (creating if missing, mode 0600) and migrates the database at `url` (`sqlite://PATH`).
pub async fn connect(url: &str) -> Result<SqlStore> {
    sqlx::any::install_default_drivers();
    if let Some(path) = db_path(url) {
        create_private(&path)?;
    }
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
        .map_err(cloudvpp_store_sql::err)?;
    sqlx::migrate!("./migrations")
        .run(&writer)
        .await
        .map_err(err)?;
    let reader = AnyPoolOptions::new()
        // Readers run side by side (WAL): as many as the machine runs threads, at least 4.
        .max_connections(reader_connections())
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
        .map_err(cloudvpp_store_sql::err)?;
    let mut store = SqlStore::new(writer, reader, Dialect::Sqlite);
    // A file database may be opened by other processes: their writers' signals must be
    // seen here. An in-memory one is this process's alone.
    if let Some(path) = db_path(url) {
        store = store.with_signals(std::sync::Arc::new(signals::open(&path)?));
    }
    store.digest_stored_secrets().await?;
    Ok(store)
}

/// Reader connections: one per thread the machine runs (at least 4), so that reads are
/// not capped by a constant on a larger machine.
fn reader_connections() -> u32 {
    let threads = std::thread::available_parallelism().map_or(4, |n| n.get());
    u32::try_from(threads).unwrap_or(u32::MAX).clamp(4, 64)
}

#[cfg(test)]
mod tests {
    use super::db_path;

    #[test]
    fn database_paths_from_urls() {
        assert_eq!(db_path("sqlite:///tmp/a.db"), Some("/tmp/a.db".into()));
        assert_eq!(db_path("sqlite://a.db?mode=rwc"), Some("a.db".into()));
        assert_eq!(db_path("sqlite:a.db"), Some("a.db".into()));
        assert_eq!(db_path("sqlite::memory:"), None);
        assert_eq!(db_path("sqlite://x?mode=memory"), None);
    }
}
