//! The PostgreSQL backend, for organisations that run several instances of each service on
//! one database: how cloudvpp connects to and migrates PostgreSQL. The queries live in
//! `cloudvpp-store-sql`, shared with SQLite; on PostgreSQL they lease work with
//! `FOR UPDATE SKIP LOCKED` and order change numbers under the organisation's row lock
//! (invitation acceptances number theirs after their commit: `cloudvpp-store-sql`'s
//! `numbering`).
//!
//! TLS is set in the URL, as libpq does: `sslmode=require` (encrypt), `sslmode=verify-full`
//! with `sslrootcert=PATH` (encrypt and check the server's certificate and name).

use cloudvpp_store::signals::{HeapSlots, QueueSignals};
use cloudvpp_store::{Result, StoreError};
use cloudvpp_store_sql::Dialect;
pub use cloudvpp_store_sql::SqlStore;
use sqlx::any::AnyPoolOptions;
use std::sync::{Arc, Weak};
use std::time::Duration;

fn err(e: impl Into<cloudvpp_store::Source>) -> StoreError {
    StoreError::Other(e.into())
}

/// Why the database at `url` cannot be reached: the pool only says it waited in vain, one
/// plain connection says why (connection refused, no such host, TLS refused, ...).
async fn why_unreachable(url: &str) -> StoreError {
    use sqlx::Connection;
    match tokio::time::timeout(Duration::from_secs(3), sqlx::AnyConnection::connect(url)).await {
        Ok(Err(e)) => cloudvpp_store_sql::err(e),
        Ok(Ok(_)) | Err(_) => cloudvpp_store_sql::err(sqlx::Error::PoolTimedOut),
    }
}

/// Connects to `url` (`postgres://...`) and migrates the database.
pub async fn connect(url: &str) -> Result<SqlStore> {
    sqlx::any::install_default_drivers();
    let pool = AnyPoolOptions::new()
        .max_connections(pool_size())
        // A database that is down is answered within seconds (503 with Retry-After), not
        // after sqlx's 30 s default; connections come back by themselves when it is up.
        .acquire_timeout(Duration::from_secs(3))
        .connect(url)
        .await
        .map_err(|e| (url, e));
    let pool = match pool {
        Ok(pool) => pool,
        Err((url, sqlx::Error::PoolTimedOut)) => return Err(why_unreachable(url).await),
        Err((_, e)) => return Err(cloudvpp_store_sql::err(e)),
    };
    // Migrations take PostgreSQL's advisory lock, so instances starting together run them once.
    sqlx::migrate!("./migrations")
        .run(&pool)
        .await
        .map_err(err)?;
    // Not live until the listener hears other instances: until then no idle check-in
    // trusts a remembered empty queue.
    let signals = Arc::new(QueueSignals::new(Box::new(HeapSlots::default()), false));
    listen(url.to_string(), Arc::downgrade(&signals));
    let store = SqlStore::new(pool.clone(), pool, Dialect::Postgres).with_signals(signals);
    store.digest_stored_secrets().await?;
    Ok(store)
}

/// Connections in the pool: four per thread the machine runs, at least 16, so that the
/// pool is not a fixed ceiling on a larger machine.
fn pool_size() -> u32 {
    let threads = std::thread::available_parallelism().map_or(4, |n| n.get());
    u32::try_from(threads.saturating_mul(4))
        .unwrap_or(u32::MAX)
        .clamp(16, 256)
}

/// Hears the queue signals other instances send (`LISTEN`, [`cloudvpp_store_sql::SIGNALS_CHANNEL`])
/// for as long as the store lives. While the connection is down the signals are not live
/// (every idle check-in reads the database); coming back voids every stamp, since writes
/// may have gone unheard meanwhile.
fn listen(url: String, signals: Weak<QueueSignals>) {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            if signals.strong_count() == 0 {
                return;
            }
            match hear(&url, &signals).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "queue signals: listening to other instances failed; idle check-ins read the database until it is back");
                }
            }
            if let Some(s) = signals.upgrade() {
                s.set_live(false);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    });
}

/// How long a remembered answer is trusted at most: a writer that died between its commit
/// and its NOTIFY is made up for within this.
const RESET: Duration = Duration::from_secs(60);

/// One connection's worth of listening; `Ok` when the store is gone.
async fn hear(url: &str, signals: &Weak<QueueSignals>) -> std::result::Result<(), sqlx::Error> {
    let mut listener = sqlx::postgres::PgListener::connect(url).await?;
    listener.listen(cloudvpp_store_sql::SIGNALS_CHANNEL).await?;
    match signals.upgrade() {
        Some(s) => s.set_live(true),
        None => return Ok(()),
    }
    let mut reset = tokio::time::Instant::now() + RESET;
    // Ticks whatever the traffic: notices a dropped store, and resets on time.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let message = tokio::select! {
            m = listener.try_recv() => m?,
            _ = tick.tick() => {
                let Some(s) = signals.upgrade() else { return Ok(()) };
                if tokio::time::Instant::now() >= reset {
                    s.remote_changed_all();
                    reset += RESET;
                }
                continue;
            }
        };
        let Some(s) = signals.upgrade() else {
            return Ok(());
        };
        match message {
            Some(n) if n.payload() == "*" => s.remote_changed_all(),
            Some(n) => s.remote_changed(n.payload().split(',').filter_map(|p| p.parse().ok())),
            // The connection dropped (sqlx reconnects on the next call): what was sent
            // meanwhile is lost.
            None => {
                s.set_live(false);
                return Err(sqlx::Error::PoolClosed);
            }
        }
    }
}
