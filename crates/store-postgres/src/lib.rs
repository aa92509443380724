//! The PostgreSQL backend, for organisations that run several instances of each service on
//! one database: how cloudvpp connects to and migrates PostgreSQL. The queries live in
//! `cloudvpp-store-sql`, shared with SQLite; on PostgreSQL they lease work with
//! `FOR UPDATE SKIP LOCKED` and order change numbers under the organisation's row lock.
//!
//! TLS is set in the URL, as libpq does: `sslmode=require` (encrypt), `sslmode=verify-full`
//! with `sslrootcert=PATH` (encrypt and check the server's certificate and name).

use cloudvpp_store::{Result, StoreError};
use cloudvpp_store_sql::Dialect;
pub use cloudvpp_store_sql::SqlStore;
use sqlx::any::AnyPoolOptions;
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
        .max_connections(16)
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
    let store = SqlStore::new(pool.clone(), pool, Dialect::Postgres);
    store.digest_stored_secrets().await?;
    Ok(store)
}
