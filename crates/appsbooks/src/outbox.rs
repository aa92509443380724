//! The notification sender: delivers the durable outbox with bounded attempts.
//!
//! Apple delivers "up to three times over 1-5 minutes" on a best-effort basis; here each
//! notification gets `notification_retry_delays.len() + 1` attempts. Rows are leased
//! before sending, so two instances never send the same notification at once, and a
//! notification queued before a crash is sent after the restart.

use crate::AppState;
use rand::Rng;
use std::time::Duration;

const BATCH: i64 = 64;

/// Runs until `shutdown` turns true.
pub async fn run(state: AppState, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let owner = format!("{}-outbox", state.config.instance_id);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let now = crate::now_ms();
        let items = match state
            .store
            .claim_notifications(&owner, now, state.config.lease.as_millis() as i64, BATCH)
            .await
        {
            Ok(items) => items,
            Err(e) => {
                tracing::warn!(error = %e, "claiming notifications");
                Vec::new()
            }
        };
        if items.is_empty() {
            tokio::select! {
                _ = state.outbox_waiting.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        let sends = items.into_iter().map(|item| {
            let state = state.clone();
            async move { send_one(&state, item).await }
        });
        run_all(sends).await;
    }
}

async fn run_all<F: std::future::Future<Output = ()> + Send + 'static>(
    futs: impl Iterator<Item = F>,
) {
    let mut set = tokio::task::JoinSet::new();
    for f in futs {
        set.spawn(f);
    }
    while set.join_next().await.is_some() {}
}

async fn send_one(state: &AppState, item: cloudvpp_store::OutboxItem) {
    let store = &state.store;
    let (Some(url), Some(token)) = (item.url.as_deref(), item.auth_token.as_deref()) else {
        let _ = store
            .notification_failed(item.id, None, "notifications turned off")
            .await;
        return;
    };
    let drop_share = state.config.drop_notifications_percent;
    if drop_share > 0 && rand::thread_rng().gen_range(0..100u8) < drop_share {
        // Fault injection: the notification is lost, as best-effort delivery allows.
        tracing::debug!(id = item.id, "notification dropped on purpose");
        let _ = store
            .notification_failed(item.id, None, "dropped on purpose (fault setting)")
            .await;
        return;
    }
    let result = state
        .notifier
        .deliver(url, token, &item.body, state.config.notification_timeout)
        .await;
    let outcome = match result {
        Ok(()) => store.notification_delivered(item.id, crate::now_ms()).await,
        Err(why) => {
            let delays = &state.config.notification_retry_delays;
            let retry_at = delays
                .get(item.attempts as usize)
                .map(|d| crate::now_ms() + d.as_millis() as i64);
            tracing::info!(id = item.id, attempt = item.attempts + 1, %why, gives_up = retry_at.is_none(), "notification not delivered");
            store.notification_failed(item.id, retry_at, &why).await
        }
    };
    if let Err(e) = outcome {
        tracing::warn!(error = %e, id = item.id, "recording notification outcome");
    }
}
