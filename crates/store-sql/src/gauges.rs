//! [`GaugeStore`]: backlog counts for `/metrics`, each over a partial index.

use crate::{err, row, SqlStore};
use async_trait::async_trait;
use cloudvpp_store::gauges::{Backlog, GaugeStore};
use cloudvpp_store::Result;

#[async_trait]
impl GaugeStore for SqlStore {
    async fn backlog(&self) -> Result<Backlog> {
        let count = |sql: &'static str| async move {
            let r = sqlx::query(sql)
                .fetch_one(&self.reader)
                .await
                .map_err(err)?;
            row::get::<i64>(&r, "n")
        };
        let mdm_queue = count(
            "SELECT COUNT(*) AS n FROM mdm_queue \
             WHERE active = 1 AND (status IS NULL OR status = 'NotNow')",
        )
        .await?;
        let pending_events =
            count("SELECT COUNT(*) AS n FROM events WHERE status = 'PENDING'").await?;
        let outbox = count("SELECT COUNT(*) AS n FROM outbox WHERE state = 'pending'").await?;
        // Event ids grow with time: the oldest pending is the lowest pending id.
        let oldest = sqlx::query(
            "SELECT created_at AS n FROM events WHERE id = \
             (SELECT MIN(id) FROM events WHERE status = 'PENDING')",
        )
        .fetch_optional(&self.reader)
        .await
        .map_err(err)?;
        let oldest_pending_event_ms = match oldest {
            Some(r) => Some(row::get::<i64>(&r, "n")?),
            None => None,
        };
        Ok(Backlog {
            mdm_queue,
            pending_events,
            oldest_pending_event_ms,
            outbox,
        })
    }
}
