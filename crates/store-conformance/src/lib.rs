//! The contract of the store traits, checked in-process against every backend.
//!
//! Each case is an `async fn(&Backend)` that drives a store through its traits only (and,
//! to plant a corrupt row, through a second raw connection to the same database), so the
//! same case runs on SQLite and on PostgreSQL: `tests/conformance.rs` instantiates every
//! case for both. A case takes milliseconds to seconds; nothing here starts a process or
//! speaks HTTP. PostgreSQL cases run when `CLOUDVPP_TEST_POSTGRES_URL` names a server
//! (`postgres://user@host:port`), each in a database of its own; otherwise they say so
//! and pass without checking anything, as the end-to-end suites do.

pub mod appsbooks;
pub mod engine;
pub mod licences;
pub mod mdm;

use cloudvpp_store::Store;
use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;
use std::sync::Arc;

/// A store under test, with a raw connection to its database.
pub struct Backend {
    /// The store, as the services hold it.
    pub store: Arc<dyn Store>,
    /// A second pool on the same database, to plant rows the store would never write.
    pub raw: AnyPool,
    /// `sqlite` or `postgres`.
    pub name: &'static str,
    cleanup: Cleanup,
}

enum Cleanup {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres { server: String, database: String },
}

impl Backend {
    /// A fresh SQLite database in a temporary directory.
    pub async fn sqlite() -> Backend {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("store.db").display());
        let store = cloudvpp_store_sqlite::connect(&url)
            .await
            .expect("opening SQLite");
        let raw = AnyPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .expect("raw SQLite connection");
        Backend {
            store: Arc::new(store),
            raw,
            name: "sqlite",
            cleanup: Cleanup::Sqlite(dir),
        }
    }

    /// A fresh PostgreSQL database on the server `CLOUDVPP_TEST_POSTGRES_URL` names, or
    /// None (with a line saying so) when it names none.
    pub async fn postgres() -> Option<Backend> {
        let Ok(server) = std::env::var("CLOUDVPP_TEST_POSTGRES_URL") else {
            eprintln!("CLOUDVPP_TEST_POSTGRES_URL is not set: this PostgreSQL case checks nothing");
            return None;
        };
        let server = server.trim_end_matches('/').to_string();
        sqlx::any::install_default_drivers();
        let database = format!("conformance_{}", uuid::Uuid::new_v4().simple());
        admin(&server, &format!("CREATE DATABASE {database}")).await;
        let url = format!("{server}/{database}");
        let store = cloudvpp_store_postgres::connect(&url)
            .await
            .expect("opening PostgreSQL");
        let raw = AnyPoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await
            .expect("raw PostgreSQL connection");
        Some(Backend {
            store: Arc::new(store),
            raw,
            name: "postgres",
            cleanup: Cleanup::Postgres { server, database },
        })
    }

    /// Runs one statement on the raw connection.
    pub async fn exec(&self, sql: &str) {
        sqlx::query(sql)
            .execute(&self.raw)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Closes the connections and drops a PostgreSQL database (a failed case keeps its
    /// database, to be looked at).
    pub async fn finish(self) {
        self.raw.close().await;
        drop(self.store);
        if let Cleanup::Postgres { server, database } = &self.cleanup {
            admin(
                server,
                &format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"),
            )
            .await;
        }
    }
}

async fn admin(server: &str, sql: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::AnyConnection::connect(&format!("{server}/postgres"))
        .await
        .expect("connecting to the PostgreSQL server's postgres database");
    sqlx::query(sql)
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Instantiates every case of the suite as a test on SQLite and one on PostgreSQL.
#[macro_export]
macro_rules! conformance {
    ($($module:ident :: $case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let b = $crate::Backend::sqlite().await;
                    $crate::$module::$case(&b).await;
                    b.finish().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    if let Some(b) = $crate::Backend::postgres().await {
                        $crate::$module::$case(&b).await;
                        b.finish().await;
                    }
                }
            )*
        }
    };
}
