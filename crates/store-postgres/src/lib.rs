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
        .map_err(cloudvpp_store_sql::err)?;
    // Migrations take PostgreSQL's advisory lock, so instances starting together run them once.
    sqlx::migrate!("./migrations")
        .run(&pool)
        .await
        .map_err(err)?;
    let store = SqlStore::new(pool.clone(), pool, Dialect::Postgres);
    store.digest_stored_secrets().await?;
    Ok(store)
}
