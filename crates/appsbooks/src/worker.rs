//! The event worker: applies PENDING create/update/retire events, durably.
//!
//! An event is leased, then applied in steps; each step commits its users, the event's
//! progress and any notifications in one transaction, so a crash at any point resumes
//! from the last step after a restart (by this or another instance once the lease
//! expires) and no user is applied twice.

use crate::ids::{id_hash, new_invite_code};
use crate::AppState;
use cloudvpp_store::{EventClaim, StoreError, UserOp};
use std::time::Duration;

/// Users per step when there is no processing delay (a notification's worth).
const STEP: usize = 100;

/// Runs until `shutdown` turns true.
pub async fn run(state: AppState, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let owner = format!("{}-events", state.config.instance_id);
    loop {
        if *shutdown.borrow() {
            return;
        }
        match state
            .store
            .claim_event(
                &owner,
                crate::now_ms(),
                state.config.lease.as_millis() as i64,
            )
            .await
        {
            Ok(Some(claim)) => {
                if let Err(e) = process(&state, claim, &mut shutdown).await {
                    tracing::warn!(error = %e, "event step failed; will be retried");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            Ok(None) => {
                tokio::select! {
                    _ = state.events_waiting.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    _ = shutdown.changed() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "claiming events");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

async fn process(
    state: &AppState,
    mut claim: EventClaim,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<(), StoreError> {
    let delay = state.config.processing_delay;
    let step = if delay.is_zero() { STEP } else { 1 };
    let secret = match state.store.get_org(claim.org_id).await? {
        Some(org) => org.secret,
        None => {
            return Err(StoreError::Other(format!(
                "event {} has no organisation",
                claim.event_id
            )))
        }
    };
    while claim.cursor < claim.users.len() {
        if *shutdown.borrow() {
            return Ok(());
        }
        let end = (claim.cursor + step).min(claim.users.len());
        if !delay.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(delay * (end - claim.cursor) as u32) => {}
                _ = shutdown.changed() => return Ok(()),
            }
        }
        let ops: Vec<UserOp> = claim.users[claim.cursor..end]
            .iter()
            .map(|u| UserOp {
                user: u.clone(),
                new_invite_code: new_invite_code(),
                id_hash: u.managed_apple_id.as_deref().map(|m| id_hash(&secret, m)),
            })
            .collect();
        match state
            .store
            .process_event_step(
                &claim,
                &ops,
                crate::now_ms(),
                state.config.lease.as_millis() as i64,
            )
            .await
        {
            Ok(_) => claim.cursor = end,
            Err(StoreError::LeaseLost) => {
                tracing::info!(
                    event_id = claim.event_id,
                    "lease lost; another worker has the event"
                );
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        state.outbox_waiting.notify_one();
    }
    tracing::debug!(event_id = claim.event_id, "event finished");
    Ok(())
}
