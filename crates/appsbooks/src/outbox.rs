//! The notification sender: delivers the durable outbox with bounded attempts, so that no
//! organisation's endpoint can delay another's notifications.
//!
//! Apple delivers "up to three times over 1-5 minutes" on a best-effort basis; here each
//! notification gets `notification_retry_delays.len() + 1` attempts. Rows are leased
//! before sending, so two instances never send the same notification at once, and a
//! notification queued before a crash is sent after the restart (by this instance or
//! another once the lease runs out).
//!
//! Fairness: organisations with due notifications are served in turn (the first one served
//! rotates), each claim taking only what the organisation may still have in flight. Every
//! notification is sent on its own task, under a global limit ([`GLOBAL_IN_FLIGHT`]) and a
//! per-organisation one ([`PER_ORG_IN_FLIGHT`], per instance), and each attempt ends within
//! the per-attempt timeout. An endpoint that never answers thus holds at most
//! [`PER_ORG_IN_FLIGHT`] sends for at most one timeout each; other organisations' sends go
//! on beside it. Its backlog is bounded by `notification_backlog` pending notifications:
//! beyond it the oldest not in flight are dropped (state `dropped`, a warning in the log).

use crate::AppState;
use cloudvpp_store::OutboxItem;
use rand::Rng;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore};

/// Notifications in flight at once, all organisations together (per instance).
pub const GLOBAL_IN_FLIGHT: usize = 64;
/// Notifications of one organisation in flight at once (per instance).
pub const PER_ORG_IN_FLIGHT: usize = 4;
/// How often an organisation's backlog is held to its bound.
const TRIM_EVERY: Duration = Duration::from_secs(5);

/// How long one attempt may take: the configured timeout, but always ending well before
/// the notification's lease does, so no other instance sends it meanwhile.
pub fn attempt_timeout(state: &AppState) -> Duration {
    state
        .config
        .notification_timeout
        .min(state.config.lease * 3 / 4)
        .max(Duration::from_millis(100))
}

/// Runs until `shutdown` turns true.
pub async fn run(state: AppState, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let owner = format!("{}-outbox", state.config.instance_id);
    let lease_ms = state.config.lease.as_millis() as i64;
    let timeout = attempt_timeout(&state);
    let global = Arc::new(Semaphore::new(GLOBAL_IN_FLIGHT));
    let in_flight: Arc<Mutex<HashMap<cloudvpp_store::OrgId, usize>>> = Arc::default();
    let finished = Arc::new(Notify::new());
    let mut sends = tokio::task::JoinSet::new();
    let mut turn = 0usize;
    let mut trimmed: HashMap<cloudvpp_store::OrgId, Instant> = HashMap::new();
    let mut errors = 0u32;
    loop {
        if *shutdown.borrow() {
            break;
        }
        while sends.try_join_next().is_some() {}
        let mut orgs = match state.store.notification_orgs().await {
            Ok(orgs) => {
                errors = 0;
                orgs
            }
            Err(e) => {
                tracing::warn!(error = %e, "listing notifications");
                errors = errors.saturating_add(1);
                let wait = Duration::from_millis(250) * 2u32.pow(errors.min(4));
                tokio::select! {
                    _ = tokio::time::sleep(wait.min(Duration::from_secs(5))) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
        };
        if !orgs.is_empty() {
            let first = turn % orgs.len();
            orgs.rotate_left(first);
            turn = turn.wrapping_add(1);
        }
        // Forget organisations long done with; one still listed is simply trimmed again.
        trimmed.retain(|_, at| at.elapsed() < TRIM_EVERY * 2);
        let mut claimed = false;
        for org in orgs {
            let now = state.config.clock.now_ms();
            if trimmed
                .get(&org)
                .is_none_or(|at| at.elapsed() >= TRIM_EVERY)
            {
                trimmed.insert(org, Instant::now());
                let keep = state.config.notification_backlog;
                match state.store.trim_notifications(org, keep, now).await {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!(
                        %org,
                        dropped = n,
                        keep,
                        "notification backlog full: oldest notifications dropped"
                    ),
                    Err(e) => tracing::warn!(error = %e, %org, "bounding the notification backlog"),
                }
            }
            let busy = in_flight
                .lock()
                .expect("lock")
                .get(&org)
                .copied()
                .unwrap_or(0);
            let room = PER_ORG_IN_FLIGHT
                .saturating_sub(busy)
                .min(global.available_permits());
            if room == 0 {
                continue;
            }
            let items = match state
                .store
                .claim_notifications(&owner, org, now, lease_ms, room as i64)
                .await
            {
                Ok(items) => items,
                Err(e) => {
                    tracing::warn!(error = %e, %org, "claiming notifications");
                    continue;
                }
            };
            for item in items {
                claimed = true;
                // Only this loop takes permits, so the room counted above is still there.
                let Ok(permit) = global.clone().acquire_owned().await else {
                    return;
                };
                *in_flight.lock().expect("lock").entry(org).or_default() += 1;
                let (state, in_flight, finished) =
                    (state.clone(), in_flight.clone(), finished.clone());
                sends.spawn(async move {
                    send_one(&state, item, timeout).await;
                    drop(permit);
                    let mut map = in_flight.lock().expect("lock");
                    if let Some(n) = map.get_mut(&org) {
                        *n -= 1;
                        if *n == 0 {
                            map.remove(&org);
                        }
                    }
                    drop(map);
                    finished.notify_one();
                });
            }
        }
        if !claimed {
            tokio::select! {
                _ = state.outbox_waiting.notified() => {}
                _ = finished.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = shutdown.changed() => {}
            }
        }
    }
    // Sends cut short keep their lease; they are sent again when it runs out.
    sends.abort_all();
}

async fn send_one(state: &AppState, item: OutboxItem, timeout: Duration) {
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
    // The client's timeout covers the request; this one also covers name resolution.
    let result = match tokio::time::timeout(
        timeout + Duration::from_secs(1),
        state.notifier.deliver(url, token, &item.body, timeout),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err("timed out".to_string()),
    };
    let outcome = match result {
        Ok(()) => {
            metrics::counter!("cloudvpp_appsbooks_notifications_total", "result" => "delivered")
                .increment(1);
            store
                .notification_delivered(item.id, state.config.clock.now_ms())
                .await
        }
        Err(why) => {
            let delays = &state.config.notification_retry_delays;
            let retry_at = delays
                .get(item.attempts as usize)
                .map(|d| state.config.clock.now_ms() + d.as_millis() as i64);
            tracing::info!(id = item.id, attempt = item.attempts + 1, %why, gives_up = retry_at.is_none(), "notification not delivered");
            let result = if retry_at.is_none() {
                "given_up"
            } else {
                "failed"
            };
            metrics::counter!("cloudvpp_appsbooks_notifications_total", "result" => result)
                .increment(1);
            store.notification_failed(item.id, retry_at, &why).await
        }
    };
    if let Err(e) = outcome {
        tracing::warn!(error = %e, id = item.id, "recording notification outcome");
    }
}
