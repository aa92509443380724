//! The event worker: applies PENDING users events (create, update, retire) and asset events
//! (associate, disassociate, revoke), durably.
//!
//! An event is leased, then applied in steps; each step commits its users, the event's
//! progress and any notifications in one transaction, so a crash at any point resumes
//! from the last step after a restart (by this or another instance once the lease
//! expires) and no user is applied twice.

use crate::events::{self, EventRef, Snapshot, UserOp, UserOutcome};
use crate::ids::{id_hash, new_invite_code};
use crate::licences::{self, LicenceSnapshot, LicenceWrites, TaskOutcome};
use crate::AppState;
use cloudvpp_abwire::assets::PricingParam;
use cloudvpp_abwire::errors::{AppleError, INTERNAL_ERROR};
use cloudvpp_abwire::notification::types::{ASSET_MANAGEMENT, USER_MANAGEMENT};
use cloudvpp_store::{
    AssetKey, AssetRecord, EventClaim, EventPayload, EventStatus, EventType, OrgTx, StoreError,
    Target,
};
use std::collections::BTreeSet;
use std::time::Duration;

/// Users per step when there is no processing delay (a notification's worth).
const STEP: usize = 100;

/// Failed attempts after which a step is taken as one that can never succeed: a step of
/// several users is then retried one user at a time, and a lone user's step that fails
/// this often fails that user with 9603 (`failures[]`, the FAILURE notification), so one
/// user's data the database refuses cannot hold up the organisation's later events. The
/// count is kept with the event, so it survives restarts and other instances.
pub const MAX_STEP_FAILURES: i64 = 3;

/// Runs until `shutdown` turns true.
pub async fn run(state: AppState, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let owner = format!("{}-events", state.config.instance_id);
    // Consecutive failed claims: a database that is down is probed ever less often.
    let mut claim_errors = 0u32;
    loop {
        if *shutdown.borrow() {
            return;
        }
        match state
            .store
            .claim_event(
                &owner,
                state.config.clock.now_ms(),
                state.config.lease.as_millis() as i64,
            )
            .await
        {
            Ok(Some(claim)) => {
                claim_errors = 0;
                if let Err(e) = process(&state, claim, &mut shutdown).await {
                    // The lease is kept: the event is taken again when it runs out.
                    tracing::warn!(error = %e, "event step failed; will be retried");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            Ok(None) => {
                claim_errors = 0;
                // Changes an acceptance committed but could not number (its process died
                // in between): numbered here, so a sync sees them within a round.
                match state.store.number_changes().await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(changes = n, "numbered changes left by a stopped instance")
                    }
                    Err(e) => tracing::warn!(error = %e, "numbering waiting changes"),
                }
                tokio::select! {
                    _ = state.events_waiting.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    _ = shutdown.changed() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "claiming events");
                claim_errors = claim_errors.saturating_add(1);
                let wait = Duration::from_millis(500) * 2u32.pow(claim_errors.min(4));
                tokio::select! {
                    _ = tokio::time::sleep(wait.min(Duration::from_secs(5))) => {}
                    _ = shutdown.changed() => {}
                }
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
            return Err(StoreError::other(format!(
                "event {} has no organisation",
                claim.event_id
            )))
        }
    };
    // Units (users, targets) before this index go one per step: their batch kept failing.
    let mut isolate_until = 0;
    let len = claim.payload.len();
    while claim.cursor < len {
        if *shutdown.borrow() {
            return Ok(());
        }
        let size = if claim.cursor < isolate_until {
            1
        } else {
            step
        };
        let end = (claim.cursor + size).min(len);
        if !delay.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(delay * (end - claim.cursor) as u32) => {}
                _ = shutdown.changed() => return Ok(()),
            }
        }
        let ops = match &claim.payload {
            EventPayload::Users(users) => Step::Users(
                users[claim.cursor..end]
                    .iter()
                    .map(|u| UserOp {
                        user: u.clone(),
                        new_invite_code: new_invite_code(),
                        id_hash: u.managed_apple_id.as_deref().map(|m| id_hash(&secret, m)),
                        account_refused: u
                            .managed_apple_id
                            .as_deref()
                            .is_some_and(|m| state.config.refuses_apple_account(m)),
                    })
                    .collect(),
            ),
            EventPayload::Assets(order) => Step::Targets(
                order
                    .targets()
                    .skip(claim.cursor)
                    .take(end - claim.cursor)
                    .collect(),
            ),
        };
        match apply_step(state, &claim, &ops, None).await {
            Ok(_) => {
                claim.cursor = end;
                claim.step_failures = 0;
            }
            Err(StoreError::LeaseLost) => {
                tracing::info!(
                    event_id = %claim.event_id,
                    "lease lost; another worker has the event"
                );
                return Ok(());
            }
            // An unreachable database says nothing about the users: retried without count.
            Err(e @ StoreError::Unavailable(_)) => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, event_id = %claim.event_id, units = ops.len(), "event step failed");
                claim.step_failures = match state
                    .store
                    .event_step_failed(
                        &claim,
                        state.config.clock.now_ms(),
                        state.config.lease.as_millis() as i64,
                    )
                    .await
                {
                    Ok(n) => n,
                    Err(StoreError::LeaseLost) => return Ok(()),
                    Err(e) => return Err(e),
                };
                if claim.step_failures < MAX_STEP_FAILURES {
                    let backoff = Duration::from_millis(200) * claim.step_failures as u32;
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => return Ok(()),
                    }
                    continue;
                } else if ops.len() > 1 {
                    // Find the user(s) the database refuses.
                    isolate_until = end;
                    continue;
                } else {
                    tracing::error!(
                        event_id = %claim.event_id,
                        failures = claim.step_failures,
                        "a user or target of the event keeps failing; failing it with 9603"
                    );
                    match apply_step(state, &claim, &ops, Some(INTERNAL_ERROR)).await {
                        Ok(()) => {
                            claim.cursor = end;
                            claim.step_failures = 0;
                        }
                        Err(StoreError::LeaseLost) => return Ok(()),
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        state.outbox_waiting.notify_one();
    }
    tracing::debug!(event_id = %claim.event_id, "event finished");
    Ok(())
}

/// The units of one step.
enum Step {
    /// Users of a create, update or retire, with what the service made for them.
    Users(Vec<UserOp>),
    /// Users and devices of an associate, disassociate or revoke.
    Targets(Vec<Target>),
}

impl Step {
    fn len(&self) -> usize {
        match self {
            Step::Users(u) => u.len(),
            Step::Targets(t) => t.len(),
        }
    }
}

/// Applies one step in one transaction of the event's organisation: reads the records the
/// step names, decides with Apple's rules ([`events`], [`licences`]), writes the records,
/// the counters, the event's progress and its notifications, and commits. With
/// `fail_with`, every unit of the step is refused with that error and no record is touched
/// (a step the database keeps refusing). [`StoreError::LeaseLost`] when the claim no
/// longer holds.
async fn apply_step(
    state: &AppState,
    claim: &EventClaim,
    step: &Step,
    fail_with: Option<AppleError>,
) -> Result<(), StoreError> {
    let now = state.config.clock.now_ms();
    let mut tx = state.store.begin_org_write(claim.org_id).await?;
    let (mut progress, total) = match tx.lock_event(claim).await {
        Ok(locked) => locked,
        Err(e) => {
            // Let the rows go now: another instance may be claiming the event.
            let _ = tx.rollback().await;
            return Err(e);
        }
    };
    let org = tx.org().clone();
    let event = EventRef {
        uid: &org.uid,
        event_id: claim.event_id.as_str(),
        event_type: claim.event_type,
    };
    let (status, kind, notifications) = match (step, &claim.payload) {
        (Step::Users(ops), _) => {
            let outcomes = match fail_with {
                Some(error) => ops
                    .iter()
                    .map(|op| UserOutcome::Failed {
                        client_user_id: op.user.client_user_id.clone(),
                        error,
                    })
                    .collect(),
                None => users_step(tx.as_mut(), claim, ops).await?,
            };
            let (status, notifications) = events::fold_step(
                &mut progress,
                &outcomes,
                total as usize,
                org.config.subscribed(USER_MANAGEMENT),
                event,
            );
            (status, USER_MANAGEMENT, notifications)
        }
        (Step::Targets(targets), EventPayload::Assets(order)) => {
            let outcomes = match fail_with {
                Some(error) => failed_targets(claim.event_type, &order.assets, targets, error),
                None => licence_step(tx.as_mut(), claim.event_type, &order.assets, targets).await?,
            };
            let (status, notifications) = licences::fold_licence_step(
                &mut progress,
                &outcomes,
                targets.len(),
                order.targets_len(),
                org.config.subscribed(ASSET_MANAGEMENT),
                event,
            );
            (status, ASSET_MANAGEMENT, notifications)
        }
        (Step::Targets(_), EventPayload::Users(_)) => {
            let _ = tx.rollback().await;
            return Err(StoreError::other("an asset step of a users event"));
        }
    };
    tx.save_event(
        claim,
        &progress,
        status,
        now,
        state.config.lease.as_millis() as i64,
    )
    .await?;
    tx.enqueue_notifications(kind, &notifications, now).await?;
    tx.commit().await?;
    if status != EventStatus::Pending {
        metrics::counter!(
            "cloudvpp_appsbooks_events_finished_total",
            "type" => claim.event_type.as_str(),
            "state" => status.as_str()
        )
        .increment(1);
    }
    Ok(())
}

/// The users of a create, update or retire step: decided over what `tx` reads, written
/// back. A retirement also releases the retired users' licences ([`licences::release_retired`]).
async fn users_step(
    tx: &mut dyn OrgTx,
    claim: &EventClaim,
    ops: &[UserOp],
) -> Result<Vec<UserOutcome>, StoreError> {
    let (cuids, hashes) = events::keys(ops);
    let active = tx.active_users(&cuids).await?;
    let associated = if hashes.is_empty() {
        Vec::new()
    } else {
        tx.associated_with(&hashes).await?
    };
    let (user_count, chg) = (tx.org().user_count, tx.org().chg);
    let mut snap = Snapshot::new(user_count, chg, active, associated);
    let (outcomes, writes) = events::decide_step(claim.event_type, ops, &mut snap);
    let inserts: Vec<_> = writes.inserts.into_values().collect();
    let updates: Vec<_> = writes.updates.into_values().collect();
    tx.insert_users(&inserts).await?;
    tx.update_users(&updates).await?;
    tx.set_counters(snap.user_count, snap.chg).await?;
    if claim.event_type == EventType::Retire {
        let retired: Vec<String> = outcomes
            .iter()
            .filter_map(|o| match o {
                UserOutcome::Done(r) => Some(r.client_user_id.clone()),
                UserOutcome::Failed { .. } => None,
            })
            .collect();
        if !retired.is_empty() {
            let targets: Vec<Target> = retired.iter().map(|c| Target::User(c.clone())).collect();
            let held = tx.assignments_of(&targets).await?;
            if !held.is_empty() {
                let assets = read_assets(tx, held.iter().map(|a| &a.asset)).await?;
                let assign_chg = tx.org().assign_chg;
                let mut snap = LicenceSnapshot::new(assets, held, [], assign_chg);
                let writes = licences::release_retired(&retired, &mut snap);
                write_licences(tx, writes, snap.assign_chg).await?;
            }
        }
    }
    Ok(outcomes)
}

/// The assets of `keys` the organisation owns (each read once).
async fn read_assets<'a>(
    tx: &mut dyn OrgTx,
    keys: impl Iterator<Item = &'a AssetKey>,
) -> Result<Vec<AssetRecord>, StoreError> {
    let keys: BTreeSet<&AssetKey> = keys.collect();
    let keys: Vec<(&str, PricingParam)> = keys
        .into_iter()
        .map(|k| (k.adam_id.as_str(), k.pricing_param))
        .collect();
    tx.assets(&keys).await
}

/// The targets of an associate, disassociate or revoke step: decided over what `tx`
/// reads, written back.
async fn licence_step(
    tx: &mut dyn OrgTx,
    event_type: EventType,
    assets: &[AssetKey],
    targets: &[Target],
) -> Result<Vec<TaskOutcome>, StoreError> {
    let held = tx.assignments_of(targets).await?;
    let owned = read_assets(tx, assets.iter().chain(held.iter().map(|a| &a.asset))).await?;
    let cuids: Vec<&str> = targets
        .iter()
        .filter_map(|t| match t {
            Target::User(c) => Some(c.as_str()),
            Target::Serial(_) => None,
        })
        .collect();
    let active = if event_type == EventType::Associate && !cuids.is_empty() {
        tx.active_users(&cuids).await?
    } else {
        Vec::new()
    };
    let assign_chg = tx.org().assign_chg;
    let mut snap = LicenceSnapshot::new(
        owned,
        held,
        active.into_iter().map(|u| u.client_user_id),
        assign_chg,
    );
    let (outcomes, writes) = licences::decide_licence_step(event_type, assets, targets, &mut snap);
    write_licences(tx, writes, snap.assign_chg).await?;
    Ok(outcomes)
}

/// Writes a licence decision: assignments, the assets' counts (moving the assets'
/// version) and the assignments' version.
async fn write_licences(
    tx: &mut dyn OrgTx,
    writes: LicenceWrites,
    assign_chg: i64,
) -> Result<(), StoreError> {
    if writes.is_empty() {
        return Ok(());
    }
    tx.delete_assignments(&writes.deletes).await?;
    tx.update_assignments(&writes.updates).await?;
    tx.insert_assignments(&writes.inserts).await?;
    if !writes.assets.is_empty() {
        let assets: Vec<AssetRecord> = writes.assets.into_values().collect();
        let version = tx.org().asset_chg + 1;
        tx.put_assets(&assets, version).await?;
    }
    tx.set_assignment_chg(assign_chg).await
}

/// Every task of a step refused with `error`.
fn failed_targets(
    event_type: EventType,
    assets: &[AssetKey],
    targets: &[Target],
    error: AppleError,
) -> Vec<TaskOutcome> {
    let mut out = Vec::new();
    for t in targets {
        if event_type == EventType::Revoke {
            out.push(TaskOutcome::Failed {
                error,
                asset: None,
                target: t.clone(),
            });
        }
        for a in assets {
            out.push(TaskOutcome::Failed {
                error,
                asset: Some(a.clone()),
                target: t.clone(),
            });
        }
    }
    out
}
