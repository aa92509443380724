//! Backlog readings for `/metrics`: a few cheap counts over partial indexes, read when
//! Prometheus scrapes (never on a request's path).

use crate::Result;
use async_trait::async_trait;

/// What is waiting, across every organisation and device, at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    /// MDM commands still to deliver (active, not yet answered or answered NotNow).
    pub mdm_queue: i64,
    /// Apps and Books events still PENDING.
    pub pending_events: i64,
    /// When the oldest PENDING event was created (ms since the epoch), if any.
    pub oldest_pending_event_ms: Option<i64>,
    /// Notifications waiting in the outbox.
    pub outbox: i64,
}

/// Read-only gauges over the tables of every service.
#[async_trait]
pub trait GaugeStore: Send + Sync + 'static {
    /// The backlog now: one COUNT per partial index (`mdm_queue_pending`,
    /// `events_pending`, `outbox_org_due`) and one primary-key probe.
    async fn backlog(&self) -> Result<Backlog>;
}
