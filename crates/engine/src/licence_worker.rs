//! The engine's licence work, each round, for the locations this instance holds: create the
//! assignments of people just associated (and any a crash or a later app left out), lease
//! the due ones, and move them on with [`crate::licences::step`]: read the licences free for
//! waiting ones, follow running associate events, read the service's assignments where an
//! answer was lost, and send the pending ones in associate requests within the service
//! limits. Every assignment worked on is written back once, giving its lease up.

use crate::licences::{self, Seen, Step, Timing};
use crate::Engine;
use cloudvpp_abclient::{AssetsQuery, AssignmentsQuery, Client};
use cloudvpp_abwire::assets::{AssetManagementNotification, ManageAssetsRequest, PricingParam};
use cloudvpp_store::engine::{
    Assignment, AssignmentId, AssignmentState, Location, LocationApp, LocationId,
};
use std::collections::{BTreeMap, HashMap, HashSet};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Assignments leased per round; with more, the next rounds take the rest.
const CLAIM: i64 = 5000;
/// Missing assignments created per reconciliation.
const RECONCILE: i64 = 10_000;

/// What the licence work keeps between rounds.
#[derive(Debug, Default)]
pub(crate) struct LicenceState {
    last_reconcile: Option<i64>,
}

fn ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The machine's timing, from the engine's settings.
pub(crate) fn timing(engine: &Engine) -> Timing {
    let c = &engine.config;
    Timing {
        status_poll: ms(c.status_poll),
        recheck: ms(c.licence_recheck),
        hold: ms(c.sync_interval),
        // A marker left by an instance that died while sending is looked at once its lease
        // has run out and the request it may have sent had time to be processed.
        in_flight: ms(c.status_poll).max(ms(c.lease)),
        retry: 5_000,
    }
}

/// A new pending assignment, due now.
pub(crate) fn new_assignment(
    location_id: LocationId,
    client_user_id: &str,
    adam_id: &str,
    pricing_param: PricingParam,
    now: i64,
) -> Assignment {
    Assignment {
        id: AssignmentId::new(uuid::Uuid::new_v4().to_string()),
        location_id,
        client_user_id: client_user_id.to_string(),
        adam_id: adam_id.to_string(),
        pricing_param,
        state: AssignmentState::Pending,
        error: None,
        note: None,
        event_id: None,
        attempts: 0,
        version: 0,
        created_at: now,
        updated_at: now,
        next_action_at: now,
    }
}

/// Stores new assignments (existing ones for the same person and app are left) and wakes
/// the worker when any was new.
pub(crate) async fn create(engine: &Engine, new: &[Assignment]) -> Result<u64, Error> {
    let created = engine.store.create_assignments(new).await?;
    if created > 0 {
        tracing::info!(created, "licence assignments created");
        metrics::counter!("cloudvpp_assignments_created_total").increment(created);
        engine.wake.notify_one();
    }
    Ok(created)
}

/// Gives the people just associated (location, clientUserId) their location's apps.
pub(crate) async fn give_apps(
    engine: &Engine,
    people: &[(LocationId, String)],
) -> Result<u64, Error> {
    if people.is_empty() {
        return Ok(0);
    }
    let locations: Vec<LocationId> = people
        .iter()
        .map(|(l, _)| *l)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let apps = engine.store.location_apps(&locations).await?;
    let now = engine.now_ms();
    let new: Vec<Assignment> = people
        .iter()
        .flat_map(|(loc, person)| {
            apps.iter()
                .filter(move |a| a.location_id == *loc)
                .map(move |a| new_assignment(*loc, person, &a.adam_id, a.pricing_param, now))
        })
        .collect();
    create(engine, &new).await
}

/// Creates the assignments associated people of these locations lack (an app added after
/// they were associated, or a crash between an association and its assignments).
pub(crate) async fn create_missing(
    engine: &Engine,
    locations: &[LocationId],
) -> Result<u64, Error> {
    let missing = engine
        .store
        .missing_assignments(locations, RECONCILE)
        .await?;
    let now = engine.now_ms();
    let new: Vec<Assignment> = missing
        .iter()
        .map(|(person, app): &(String, LocationApp)| {
            new_assignment(
                app.location_id,
                person,
                &app.adam_id,
                app.pricing_param,
                now,
            )
        })
        .collect();
    create(engine, &new).await
}

/// Logs a change of `a`'s state from `before`, if it changed: one line (WARN when it
/// failed), counted in `cloudvpp_assignment_transitions_total`.
pub(crate) fn log_change(a: &Assignment, before: AssignmentState) {
    if a.state == before {
        return;
    }
    let (from, to) = (before.as_str(), a.state.as_str());
    let error = a.error.as_ref().map(|e| e.to_string()).unwrap_or_default();
    if a.state == AssignmentState::Failed {
        tracing::warn!(assignment = %a.id, person = a.client_user_id, adam_id = a.adam_id, from, to, error, "assignment state changed");
    } else {
        tracing::info!(assignment = %a.id, person = a.client_user_id, adam_id = a.adam_id, from, to, error, "assignment state changed");
    }
    metrics::counter!("cloudvpp_assignment_transitions_total", "from" => from, "to" => to)
        .increment(1);
}

/// Applies `step` to `a` now and logs a change of state; whether anything changed.
fn transition(engine: &Engine, a: &mut Assignment, step: &Step) -> bool {
    let before = a.state;
    let changed = licences::apply(a, step, engine.now_ms(), &timing(engine));
    log_change(a, before);
    changed
}

/// One round over the held locations.
pub(crate) async fn round(
    engine: &Engine,
    held: &[Location],
    state: &mut LicenceState,
) -> Result<(), Error> {
    if held.is_empty() {
        return Ok(());
    }
    let ids: Vec<LocationId> = held.iter().map(|l| l.id).collect();
    let now = engine.now_ms();
    if state
        .last_reconcile
        .is_none_or(|t| now - t >= ms(engine.config.licence_recheck))
    {
        state.last_reconcile = Some(now);
        create_missing(engine, &ids).await?;
    }
    let lease_ms = ms(engine.config.lease);
    let claimed = engine
        .store
        .claim_assignments(&engine.owner, &ids, now, lease_ms, CLAIM)
        .await?;
    if claimed.is_empty() {
        return Ok(());
    }
    let mut per_location: BTreeMap<LocationId, Vec<Assignment>> = BTreeMap::new();
    for a in claimed {
        per_location.entry(a.location_id).or_default().push(a);
    }
    for loc in held {
        let Some(rows) = per_location.remove(&loc.id) else {
            continue;
        };
        let mut done = Vec::with_capacity(rows.len());
        let result = work(engine, loc, rows, &mut done).await;
        // Whatever happened, what was decided is written and the leases are given up.
        let written = engine
            .store
            .save_assignments(&engine.owner, &done, true)
            .await?;
        if (written as usize) < done.len() {
            tracing::warn!(location = %loc.id, lost = done.len() - written as usize, "assignment leases lost; another instance has them");
        }
        if let Err(e) = result {
            tracing::warn!(location = %loc.id, error = %e, "licence work; will retry");
        }
    }
    Ok(())
}

/// Moves one location's leased assignments on; each one worked on ends in `done`.
async fn work(
    engine: &Engine,
    loc: &Location,
    rows: Vec<Assignment>,
    done: &mut Vec<Assignment>,
) -> Result<(), Error> {
    let client = engine.client(loc);
    let mut pending = Vec::new();
    let mut events: BTreeMap<String, Vec<Assignment>> = BTreeMap::new();
    let mut unknown: BTreeMap<(String, PricingParam), Vec<Assignment>> = BTreeMap::new();
    let mut waiting: BTreeMap<(String, PricingParam), Vec<Assignment>> = BTreeMap::new();
    for a in rows {
        match (a.state, a.event_id.clone()) {
            (AssignmentState::Pending, _) => pending.push(a),
            (AssignmentState::Requested, Some(ev)) => events.entry(ev).or_default().push(a),
            (AssignmentState::Requested, None) => unknown
                .entry((a.adam_id.clone(), a.pricing_param))
                .or_default()
                .push(a),
            (AssignmentState::Waiting, _) => waiting
                .entry((a.adam_id.clone(), a.pricing_param))
                .or_default()
                .push(a),
            // Not handed out by the claim; written back as they are.
            _ => done.push(a),
        }
    }
    recheck_waiting(engine, &client, waiting, done).await;
    follow_events(engine, &client, events, done).await;
    read_unknown(engine, &client, unknown, done).await;
    send_pending(engine, loc, &client, pending, done).await
}

/// Waiting assignments, per app: as many as there are licences free go back to pending,
/// the longest waiting first; the others wait for the next look.
async fn recheck_waiting(
    engine: &Engine,
    client: &Client,
    waiting: BTreeMap<(String, PricingParam), Vec<Assignment>>,
    done: &mut Vec<Assignment>,
) {
    let t = timing(engine);
    for ((adam_id, pricing), mut rows) in waiting {
        rows.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        let q = AssetsQuery {
            adam_id: Some(adam_id.clone()),
            pricing_param: Some(pricing),
            ..Default::default()
        };
        match client.get_assets(&q, 0).await {
            Ok(page) => {
                let available: i64 = page
                    .assets
                    .iter()
                    .filter(|a| a.adam_id == adam_id && a.pricing_param == pricing)
                    .map(|a| a.available_count)
                    .sum();
                tracing::debug!(adam_id, available, waiting = rows.len(), "licences free");
                for (rank, mut a) in rows.into_iter().enumerate() {
                    let s = licences::step(&a, Seen::Licences { available, rank });
                    transition(engine, &mut a, &s);
                    done.push(a);
                }
            }
            Err(e) => {
                tracing::warn!(adam_id, error = %e, "reading licences free; will retry");
                for mut a in rows {
                    a.next_action_at = engine.now_ms().saturating_add(t.status_poll);
                    done.push(a);
                }
            }
        }
    }
}

/// Requested assignments with an event: one status read per event.
async fn follow_events(
    engine: &Engine,
    client: &Client,
    events: BTreeMap<String, Vec<Assignment>>,
    done: &mut Vec<Assignment>,
) {
    for (event_id, rows) in events {
        let status = client.event_status(&event_id).await;
        for mut a in rows {
            let seen = match &status {
                Ok(s) => Seen::Event(s),
                Err(e) => Seen::StatusFailed(e),
            };
            let s = licences::step(&a, seen);
            transition(engine, &mut a, &s);
            done.push(a);
        }
    }
}

/// Requested assignments whose request's answer was lost: the service's assignments of
/// that app say whether it was applied.
async fn read_unknown(
    engine: &Engine,
    client: &Client,
    unknown: BTreeMap<(String, PricingParam), Vec<Assignment>>,
    done: &mut Vec<Assignment>,
) {
    let t = timing(engine);
    for ((adam_id, pricing), rows) in unknown {
        let q = AssignmentsQuery {
            adam_id: Some(adam_id.clone()),
            pricing_param: Some(pricing),
            exclude_inactive_users: true,
            ..Default::default()
        };
        match client.all_assignments(&q, 5).await {
            Ok((listed, _)) => {
                let people: HashSet<&str> = listed
                    .iter()
                    .filter(|x| x.adam_id == adam_id)
                    .filter_map(|x| x.client_user_id.as_deref())
                    .collect();
                for mut a in rows {
                    let assigned = people.contains(a.client_user_id.as_str());
                    let s = licences::step(&a, Seen::Listed { assigned });
                    transition(engine, &mut a, &s);
                    done.push(a);
                }
            }
            Err(e) => {
                tracing::warn!(adam_id, error = %e, "reading assignments; will retry");
                for mut a in rows {
                    a.next_action_at = engine.now_ms().saturating_add(t.status_poll);
                    done.push(a);
                }
            }
        }
    }
}

/// Pending assignments: held while their person is not registered, the others sent in
/// associate requests within the service limits.
async fn send_pending(
    engine: &Engine,
    loc: &Location,
    client: &Client,
    pending: Vec<Assignment>,
    done: &mut Vec<Assignment>,
) -> Result<(), Error> {
    if pending.is_empty() {
        return Ok(());
    }
    let people: Vec<String> = pending
        .iter()
        .map(|a| a.client_user_id.clone())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mirror: HashMap<String, _> = engine
        .store
        .mirror_users(loc.id, &people)
        .await?
        .into_iter()
        .map(|m| (m.client_user_id.clone(), m))
        .collect();
    let mut to_send: HashMap<AssignmentId, Assignment> = HashMap::new();
    for mut a in pending {
        let person = mirror.get(&a.client_user_id);
        match licences::step(&a, Seen::Due { person }) {
            Step::Send => {
                to_send.insert(a.id.clone(), a);
            }
            s => {
                transition(engine, &mut a, &s);
                done.push(a);
            }
        }
    }
    if to_send.is_empty() {
        return Ok(());
    }
    let limits = client.asset_limits().await;
    let batches = {
        let mut refs: Vec<&Assignment> = to_send.values().collect();
        refs.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        licences::plan(&refs, &limits)
    };
    for b in batches {
        let rows: Vec<Assignment> = b.ids.iter().filter_map(|id| to_send.remove(id)).collect();
        Box::pin(send(engine, loc, client, b.request, rows, done)).await?;
    }
    Ok(())
}

/// Whether `a` is one of the pairs `req` asks for.
fn covers(req: &ManageAssetsRequest, a: &Assignment) -> bool {
    req.client_user_ids
        .iter()
        .flatten()
        .any(|u| *u == a.client_user_id)
        && req.assets.iter().any(|r| r.adam_id == a.adam_id)
}

/// Sends one associate request for `rows` (exactly its pairs). The rows are first marked
/// as being sent, under this instance's lease: an instance that takes over after a crash
/// finds them requested without an event and reads the service's assignments before
/// sending anything again. A request refused whole with a 400 is halved and sent again.
async fn send(
    engine: &Engine,
    loc: &Location,
    client: &Client,
    request: ManageAssetsRequest,
    mut rows: Vec<Assignment>,
    done: &mut Vec<Assignment>,
) -> Result<(), Error> {
    for a in &mut rows {
        transition(engine, a, &Step::Sending);
    }
    let marked = engine
        .store
        .save_assignments(&engine.owner, &rows, false)
        .await?;
    if (marked as usize) < rows.len() {
        // Some were taken over (our lease ran out): send nothing; the marked ones are read
        // from the service later, as after a crash.
        tracing::warn!(location = %loc.id, "assignment leases lost before sending; not sent");
        done.extend(rows);
        return Ok(());
    }
    let answer = client.associate_assets(&request).await;
    if let Err(e) = &answer {
        if let Some((left, right)) = licences::split_refused(&request, e) {
            tracing::info!(location = %loc.id, error = %e, pairs = rows.len(), "associate refused whole; sending it in halves");
            let (l, r): (Vec<Assignment>, Vec<Assignment>) =
                rows.into_iter().partition(|a| covers(&left, a));
            Box::pin(send(engine, loc, client, left, l, done)).await?;
            return Box::pin(send(engine, loc, client, right, r, done)).await;
        }
        tracing::warn!(location = %loc.id, error = %e, pairs = rows.len(), "assets/associate failed");
    }
    for mut a in rows {
        let s = licences::step(&a, Seen::Answer(&answer));
        transition(engine, &mut a, &s);
        done.push(a);
    }
    Ok(())
}

/// An ASSET_MANAGEMENT notification: settles the assignments of its event that no instance
/// is working on (one that is will learn the same by polling).
pub(crate) async fn on_asset_management(
    engine: &Engine,
    location_id: LocationId,
    n: &AssetManagementNotification,
) -> Result<(), Error> {
    let rows = engine
        .store
        .event_assignments(location_id, &n.event_id)
        .await?;
    let (now, t) = (engine.now_ms(), timing(engine));
    let mut changed = Vec::new();
    for mut a in rows {
        let before = a.state;
        let s = licences::step(&a, Seen::Notification(n));
        if licences::apply(&mut a, &s, now, &t) {
            changed.push((a, before));
        }
    }
    let rows: Vec<Assignment> = changed.iter().map(|(a, _)| a.clone()).collect();
    let written = engine.store.update_idle_assignments(&rows, now).await?;
    if written as usize == rows.len() {
        for (a, before) in &changed {
            log_change(a, *before);
        }
    } else {
        // Leased by a worker that is following the event: it learns the same by polling.
        tracing::debug!(
            event_id = n.event_id,
            skipped = rows.len() - written as usize,
            "notification applied in part"
        );
    }
    Ok(())
}

/// An ASSET_COUNT notification: licences of an app were bought (or transferred in), so
/// the assignments waiting for them are looked at now.
pub(crate) async fn on_asset_count(
    engine: &Engine,
    location_id: LocationId,
    adam_id: &str,
    pricing_param: PricingParam,
    count_delta: i64,
) -> Result<(), Error> {
    if count_delta <= 0 {
        return Ok(());
    }
    let woken = engine
        .store
        .wake_waiting(location_id, adam_id, pricing_param, engine.now_ms())
        .await?;
    if woken > 0 {
        tracing::info!(location = %location_id, adam_id, woken, "licences bought; waiting assignments looked at now");
        engine.wake.notify_one();
    }
    Ok(())
}
