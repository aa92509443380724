//! The engine's loop: sync locations, move invitations forward, read device answers.

use crate::machine::{self, Observed, Step};
use crate::Engine;
use cloudvpp_abclient::{ClientError, UsersQuery};
use cloudvpp_abwire::RequestUser;
use cloudvpp_mdm::service::{EnqueueError, PushOutcome};
use cloudvpp_store::engine::{
    Invitation, InvitationId, InvitationState, Location, LocationId, MirrorUser,
};
use cloudvpp_store::mdm::{CommandUuid, EnrollmentId};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

/// Runs until `shutdown`. Each round takes or renews the leases of the locations this
/// instance works on, and renews them while the round runs, so that several instances on
/// one database never work on the same location at once and a crashed instance's
/// locations are taken over when its leases run out.
pub async fn run(engine: Engine, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut last_sync: HashMap<LocationId, i64> = HashMap::new();
    let mut warned: HashMap<LocationId, i64> = HashMap::new();
    let mut cursor: Option<InvitationId> = None;
    let mut licences = crate::licence_worker::LicenceState::default();
    let lease_ms = engine.config.lease.as_millis() as i64;
    loop {
        let mut next_due = None;
        if *shutdown.borrow() {
            if let Err(e) = engine.store.release_locations(&engine.owner).await {
                tracing::warn!(error = %e, "releasing location leases");
            }
            if let Err(e) = engine.store.release_assignments(&engine.owner).await {
                tracing::warn!(error = %e, "releasing assignment leases");
            }
            return;
        }
        match engine
            .store
            .claim_locations(&engine.owner, engine.now_ms(), lease_ms)
            .await
        {
            Ok(held) => {
                warn_expiring(&held, &mut warned, engine.now_ms());
                let renewer = tokio::spawn(renew_while_working(engine.clone()));
                if let Err(e) = tick(&engine, &held, &mut last_sync, &mut cursor).await {
                    tracing::warn!(error = %e, "engine tick");
                }
                if let Err(e) = crate::licence_worker::round(&engine, &held, &mut licences).await {
                    tracing::warn!(error = %e, "licence round");
                }
                renewer.abort();
                let ids: Vec<LocationId> = held.iter().map(|l| l.id).collect();
                match engine.store.next_invitation_due(&ids).await {
                    Ok(due) => next_due = due,
                    Err(e) => tracing::warn!(error = %e, "next invitation due"),
                }
            }
            Err(e) => tracing::warn!(error = %e, "claiming locations"),
        }
        tokio::select! {
            _ = engine.wake.notified() => {}
            _ = tokio::time::sleep(until_next_round(&engine, next_due)) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// The shortest wait between two rounds that are not woken: an invitation still due after
/// a round (a full page) is looked at again this soon, not at once.
const MIN_ROUND_GAP: Duration = Duration::from_millis(20);

/// How long the worker sleeps after a round unless woken: until the next invitation of its
/// locations is due (a status poll, a retry), at most the tick. Invitations are followed
/// at the times they set, not at the next periodic tick.
fn until_next_round(engine: &Engine, next_due: Option<i64>) -> Duration {
    let tick = engine.config.tick;
    match next_due {
        Some(at) => {
            let ms = (at - engine.now_ms()).max(0) as u64;
            Duration::from_millis(ms).clamp(MIN_ROUND_GAP, tick.max(MIN_ROUND_GAP))
        }
        None => tick,
    }
}

/// Renews this instance's leases (locations and the assignments it works on) every third
/// of the lease while a round runs (a round that waits on Apple can outlast a lease).
async fn renew_while_working(engine: Engine) {
    let lease_ms = engine.config.lease.as_millis() as i64;
    loop {
        tokio::time::sleep(engine.config.lease / 3).await;
        if let Err(e) = engine
            .store
            .claim_locations(&engine.owner, engine.now_ms(), lease_ms)
            .await
        {
            tracing::warn!(error = %e, "renewing location leases");
        }
        if let Err(e) = engine
            .store
            .renew_assignment_leases(&engine.owner, engine.now_ms(), lease_ms)
            .await
        {
            tracing::warn!(error = %e, "renewing assignment leases");
        }
    }
}

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Logs, once a day per location, that its sToken expires within 15 days.
fn warn_expiring(locations: &[Location], warned: &mut HashMap<LocationId, i64>, now: i64) {
    for loc in locations {
        let Some(exp) = loc.expires_at else { continue };
        let left = exp - now / 1000;
        if left < 15 * 86_400 && warned.get(&loc.id).is_none_or(|t| now - t > 86_400_000) {
            warned.insert(loc.id, now);
            tracing::warn!(location = %loc.id, name = loc.name, days_left = left / 86_400, "the sToken expires soon: download a new one from Apple Business or School Manager and add it");
        }
    }
}

/// Due invitations looked at per round: rounds stay short, so that a large batch's
/// registrations, status polls and deliveries interleave instead of moving in waves.
const DUE_PAGE: i64 = 2000;

/// Invitations whose person the mirror shows Registered moved on per pass.
const READY_PAGE: i64 = 2000;

/// Deliveries (channel lookup, enqueue, record, push) in flight at once.
const DELIVER_CONCURRENCY: usize = 8;

/// The first status poll of an event comes this soon (or at the polling interval if that is
/// shorter); later ones, while the event is PENDING, at the polling interval.
const FIRST_POLL: Duration = Duration::from_millis(200);

async fn tick(
    engine: &Engine,
    locations: &[Location],
    last_sync: &mut HashMap<LocationId, i64>,
    cursor: &mut Option<InvitationId>,
) -> Result<(), Error> {
    let now = engine.now_ms();
    let dirty = engine.take_dirty();
    let held: Vec<LocationId> = locations.iter().map(|l| l.id).collect();
    for loc in locations {
        let full_due = loc
            .last_full_sync_at
            .is_none_or(|t| now - t > engine.config.full_sync_interval.as_millis() as i64);
        let due = dirty.contains(&loc.id)
            || full_due
            || last_sync
                .get(&loc.id)
                .is_none_or(|t| now - t > engine.config.sync_interval.as_millis() as i64);
        if due {
            last_sync.insert(loc.id, now);
            if let Err(e) = sync(engine, loc, full_due).await {
                tracing::warn!(location = %loc.id, error = %e, "sync failed; will retry");
            }
        }
    }
    observe(engine, &held, cursor).await?;
    let by_id: HashMap<LocationId, &Location> = locations.iter().map(|l| (l.id, l)).collect();
    // Whoever the mirror already shows Registered (a USER_MANAGEMENT notification, a sync)
    // goes on now, whenever their next look was due.
    move_registered(engine, &by_id, &held).await?;
    let due = engine.store.due_invitations(&held, now, DUE_PAGE).await?;
    // The mirror's records of the people still registering: one query per location.
    let mut registering: HashMap<LocationId, Vec<String>> = HashMap::new();
    for inv in due
        .iter()
        .filter(|i| i.state == InvitationState::Registering)
    {
        registering
            .entry(inv.location_id)
            .or_default()
            .push(inv.client_user_id.clone());
    }
    let mut mirror: HashMap<(LocationId, String), MirrorUser> = HashMap::new();
    for (loc, people) in registering {
        for m in engine.store.mirror_users(loc, &people).await? {
            mirror.insert((loc, m.client_user_id.clone()), m);
        }
    }
    let mut to_create: HashMap<LocationId, Vec<Invitation>> = HashMap::new();
    let mut to_check: HashMap<(LocationId, String), Vec<Invitation>> = HashMap::new();
    let mut to_advance = Vec::new();
    for mut inv in due {
        let Some(loc) = by_id.get(&inv.location_id) else {
            continue;
        };
        if inv.state == InvitationState::Registering {
            let person = mirror.get(&(loc.id, inv.client_user_id.clone()));
            let seen = Observed {
                person,
                command: None,
            };
            match machine::step(&inv, seen) {
                Step::Register => {
                    match &inv.event_id {
                        None => to_create.entry(loc.id).or_default().push(inv),
                        Some(ev) => to_check.entry((loc.id, ev.clone())).or_default().push(inv),
                    }
                    continue;
                }
                // An existing Registered user is reused, never duplicated: on at once.
                s @ Step::Registered { .. } => {
                    let before = inv.state;
                    machine::apply(&mut inv, &s, engine.now_ms(), repush_ms(engine));
                    // Stored by `advance`, whichever way it goes on.
                    log_change(&inv, before);
                }
                s => {
                    transition(engine, &mut inv, &s).await?;
                    if inv.state == InvitationState::Associated {
                        let person = [(inv.location_id, inv.client_user_id.clone())];
                        crate::licence_worker::give_apps(engine, &person).await?;
                    }
                    continue;
                }
            }
        }
        to_advance.push(inv);
    }
    advance_all(engine, &by_id, to_advance).await?;
    for (loc_id, invs) in to_create {
        create_users(engine, by_id[&loc_id], invs).await?;
    }
    let mut ended: Vec<LocationId> = Vec::new();
    for ((loc_id, event_id), invs) in to_check {
        if check_event(engine, by_id[&loc_id], &event_id, invs).await? && !ended.contains(&loc_id) {
            ended.push(loc_id);
        }
    }
    // An event ended: its people's invite codes are one `sinceVersionId` sync away. Sync
    // now and deliver in this round, not the next (nor at the next sync interval).
    for loc_id in &ended {
        last_sync.insert(*loc_id, engine.now_ms());
        // Read again: a sync earlier in this round moved its versionId on.
        let Some(loc) = engine.store.location(*loc_id).await? else {
            continue;
        };
        if let Err(e) = sync(engine, &loc, false).await {
            tracing::warn!(location = %loc_id, error = %e, "sync failed; will retry");
            engine.mark_dirty(*loc_id);
        }
    }
    if !ended.is_empty() {
        move_registered(engine, &by_id, &ended).await?;
    }
    Ok(())
}

/// Moves on the `registering` invitations of `held` whose person the mirror shows
/// Registered with an invite code: `registered`, then delivered (or the URL handed out).
async fn move_registered(
    engine: &Engine,
    by_id: &HashMap<LocationId, &Location>,
    held: &[LocationId],
) -> Result<(), Error> {
    let ready = engine
        .store
        .registered_invitations(held, READY_PAGE)
        .await?;
    let mut invs = Vec::with_capacity(ready.len());
    for (mut inv, person) in ready {
        let seen = Observed {
            person: Some(&person),
            command: None,
        };
        let step = machine::step(&inv, seen);
        if matches!(step, Step::Registered { .. }) {
            let before = inv.state;
            machine::apply(&mut inv, &step, engine.now_ms(), repush_ms(engine));
            // Stored by `advance`, whichever way it goes on.
            log_change(&inv, before);
            invs.push(inv);
        }
    }
    advance_all(engine, by_id, invs).await
}

/// [`advance`] for each of `invs`, a few at once.
async fn advance_all(
    engine: &Engine,
    by_id: &HashMap<LocationId, &Location>,
    invs: Vec<Invitation>,
) -> Result<(), Error> {
    use futures::StreamExt;
    let mut done = futures::stream::iter(invs.into_iter().filter_map(|inv| {
        let loc = *by_id.get(&inv.location_id)?;
        Some(advance(engine, loc, inv))
    }))
    .buffer_unordered(DELIVER_CONCURRENCY);
    while let Some(r) = done.next().await {
        r?;
    }
    Ok(())
}

fn repush_ms(engine: &Engine) -> i64 {
    engine.config.repush_after.as_millis() as i64
}

/// Applies `step` to `inv` now, stores it and logs the change of state.
async fn transition(engine: &Engine, inv: &mut Invitation, step: &Step) -> Result<(), Error> {
    let before = inv.state;
    if machine::apply(inv, step, engine.now_ms(), repush_ms(engine)) {
        engine.store.update_invitation(inv).await?;
        log_change(inv, before);
    }
    Ok(())
}

/// Logs a change of `inv`'s state from `before`, if it changed: one line with the
/// invitation, the person, both states and the reason, at INFO (WARN when it failed), and
/// counts it in `cloudvpp_invitation_transitions_total`.
pub(crate) fn log_change(inv: &Invitation, before: InvitationState) {
    if inv.state != before {
        log_transition(inv, before.as_str());
    }
}

/// [`log_change`] from `from` (a state, or "new" for a created invitation).
pub(crate) fn log_transition(inv: &Invitation, from: &'static str) {
    let to = inv.state.as_str();
    let reason = inv.reason.as_deref().unwrap_or("");
    if inv.state == InvitationState::Failed {
        tracing::warn!(invitation = %inv.id, person = inv.client_user_id, from, to, reason, "invitation state changed");
    } else {
        tracing::info!(invitation = %inv.id, person = inv.client_user_id, from, to, reason, "invitation state changed");
    }
    metrics::counter!("cloudvpp_invitation_transitions_total", "from" => from, "to" => to)
        .increment(1);
}

/// Ends `inv` as failed for `reason`.
async fn fail(engine: &Engine, inv: &mut Invitation, reason: String) -> Result<(), Error> {
    let step = Step::Failed {
        reason,
        invitation_result: None,
    };
    transition(engine, inv, &step).await
}

/// Queued invitations looked at per round; with more, `cursor` pages through them.
const OBSERVE_PAGE: i64 = 5000;

/// What the devices answered and who the mirror shows Associated, for the queued (a page of
/// them, from `cursor`) and associable invitations of the held locations, in a few batched
/// reads; the invitations that move are written back in one transaction.
async fn observe(
    engine: &Engine,
    held: &[LocationId],
    cursor: &mut Option<InvitationId>,
) -> Result<(), Error> {
    let mut watch: BTreeMap<InvitationId, (Invitation, Option<MirrorUser>)> = BTreeMap::new();
    let queued = engine
        .store
        .queued_invitations(held, cursor.as_ref(), OBSERVE_PAGE)
        .await?;
    // A short page ends a pass: the next round starts from the first again.
    *cursor = match queued.last() {
        Some(last) if queued.len() as i64 == OBSERVE_PAGE => Some(last.id.clone()),
        _ => None,
    };
    for inv in queued {
        watch.insert(inv.id.clone(), (inv, None));
    }
    for (inv, person) in engine.store.associable_invitations(held, 5000).await? {
        watch.entry(inv.id.clone()).or_insert((inv, None)).1 = Some(person);
    }
    if watch.is_empty() {
        return Ok(());
    }
    let keys: Vec<(EnrollmentId, CommandUuid)> = watch
        .values()
        .filter_map(|(inv, _)| Some((inv.channel.clone()?, inv.command_uuid.clone()?)))
        .collect();
    let answers = engine.mdm.command_states(&keys).await?;
    let now = engine.now_ms();
    let mut changed = Vec::new();
    let mut associated = Vec::new();
    for (mut inv, person) in watch.into_values() {
        let command = match (&inv.channel, &inv.command_uuid) {
            (Some(ch), Some(uuid)) => answers.get(&(ch.clone(), uuid.clone())),
            _ => None,
        };
        let seen = Observed {
            person: person.as_ref(),
            command,
        };
        let step = machine::step(&inv, seen);
        let before = inv.state;
        if machine::apply(&mut inv, &step, now, repush_ms(engine)) {
            log_change(&inv, before);
            if inv.state == InvitationState::Associated {
                associated.push((inv.location_id, inv.client_user_id.clone()));
            }
            changed.push(inv);
        }
    }
    engine.store.update_invitations(&changed).await?;
    // Their location's apps; a crash before this is made good by the licence work's
    // periodic look for missing assignments.
    crate::licence_worker::give_apps(engine, &associated).await?;
    Ok(())
}

fn later(engine: &Engine, d: Duration) -> i64 {
    engine.now_ms() + d.as_millis() as i64
}

/// Full import, or everything since the last `versionId`, into the mirror.
pub(crate) async fn sync(engine: &Engine, loc: &Location, full: bool) -> Result<(), Error> {
    let client = engine.client(loc);
    let since = if full { None } else { loc.version_id.clone() };
    let q = UsersQuery {
        since_version_id: since.clone(),
        ..Default::default()
    };
    let (users, version, meta) = match client.all_users_with_meta(&q, 5).await {
        Err(e) if e.apple_number() == Some(9721) => {
            tracing::warn!(location = %loc.id, "versionId refused (9721); full import");
            client
                .all_users_with_meta(&UsersQuery::default(), 5)
                .await?
        }
        r => r?,
    };
    engine
        .store
        .upsert_mirror(loc.id, &users, engine.now_ms())
        .await?;
    let uid = meta.u_id;
    engine
        .store
        .location_synced(
            loc.id,
            &version,
            since.is_none(),
            uid.as_deref(),
            engine.now_ms(),
        )
        .await?;
    if client.ownership_conflict() && !loc.conflict {
        engine.store.set_location_conflict(loc.id, true).await?;
    }
    tracing::debug!(
        location = %loc.id,
        users = users.len(),
        full = since.is_none(),
        "synced"
    );
    Ok(())
}

/// Registers the people of `invs` in batches of `maxUsers` (the client splits).
async fn create_users(engine: &Engine, loc: &Location, invs: Vec<Invitation>) -> Result<(), Error> {
    let client = engine.client(loc);
    let max = client
        .limit(cloudvpp_abwire::limits::Limit::MaxUsers)
        .await
        .unwrap_or(100)
        .max(1) as usize;
    let mut seen = HashSet::new();
    let people: Vec<RequestUser> = invs
        .iter()
        .filter(|i| seen.insert(i.client_user_id.clone()))
        .map(|i| RequestUser {
            client_user_id: i.client_user_id.clone(),
            email: i.email.clone(),
            managed_apple_id: None,
        })
        .collect();
    for chunk in people.chunks(max) {
        let result = client.create_users(chunk).await;
        let ids: HashSet<&str> = chunk.iter().map(|u| u.client_user_id.as_str()).collect();
        match result {
            Ok(events) => {
                let event = events.into_iter().next().unwrap_or_default();
                let mut sent = Vec::with_capacity(chunk.len());
                for inv in invs
                    .iter()
                    .filter(|i| ids.contains(i.client_user_id.as_str()))
                {
                    let mut inv = inv.clone();
                    inv.event_id = Some(event.clone());
                    inv.reason = None;
                    inv.updated_at = engine.now_ms();
                    // The first status poll comes soon; later ones at the polling interval.
                    inv.next_action_at = later(engine, engine.config.status_poll.min(FIRST_POLL));
                    sent.push(inv);
                }
                // One transaction per request: the event is recorded for all its people.
                engine.store.update_invitations(&sent).await?;
            }
            Err(e)
                if matches!(e.apple_number(), Some(9602 | 9717 | 9714 | 9715))
                    && chunk.len() > 1 =>
            {
                // One bad person fails the whole request synchronously: go one by one.
                for u in chunk {
                    let single: Vec<Invitation> = invs
                        .iter()
                        .filter(|i| i.client_user_id == u.client_user_id)
                        .cloned()
                        .collect();
                    Box::pin(create_users(engine, loc, single)).await?;
                }
            }
            Err(e) if matches!(e, ClientError::Apple { status: 400, .. }) => {
                for inv in invs
                    .iter()
                    .filter(|i| ids.contains(i.client_user_id.as_str()))
                {
                    let mut inv = inv.clone();
                    fail(engine, &mut inv, format!("registration refused: {e}")).await?;
                }
            }
            Err(e) => {
                // Rate limited or unreachable: try again later, nothing was created.
                tracing::warn!(location = %loc.id, error = %e, "users/create; will retry");
                let retry: Vec<Invitation> = invs
                    .iter()
                    .filter(|i| ids.contains(i.client_user_id.as_str()))
                    .map(|inv| {
                        let mut inv = inv.clone();
                        inv.reason = Some(format!("retrying registration: {e}"));
                        inv.next_action_at = later(engine, Duration::from_secs(5));
                        inv
                    })
                    .collect();
                engine.store.update_invitations(&retry).await?;
            }
        }
    }
    Ok(())
}

/// Asks Apps and Books for one person and mirrors what it says. A failed lookup is left to
/// the next sync.
async fn mirror_person(
    engine: &Engine,
    client: &cloudvpp_abclient::Client,
    location_id: LocationId,
    client_user_id: &str,
) -> Result<(), Error> {
    let q = UsersQuery {
        client_user_id: Some(client_user_id.to_string()),
        active_only: true,
        ..Default::default()
    };
    if let Ok(page) = client.get_users(&q, 0).await {
        engine
            .store
            .upsert_mirror(location_id, &page.users, engine.now_ms())
            .await?;
    }
    Ok(())
}

/// Polls one event for the invitations waiting on it. Returns whether it ended with people
/// registered whom the mirror has yet to learn (a sync brings their invite codes).
async fn check_event(
    engine: &Engine,
    loc: &Location,
    event_id: &str,
    invs: Vec<Invitation>,
) -> Result<bool, Error> {
    let client = engine.client(loc);
    let status = match client.event_status(event_id).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(location = %loc.id, event_id, error = %e, "status; will retry");
            let invs: Vec<Invitation> = invs
                .into_iter()
                .map(|mut inv| {
                    inv.next_action_at = later(engine, engine.config.status_poll);
                    inv
                })
                .collect();
            engine.store.update_invitations(&invs).await?;
            return Ok(false);
        }
    };
    if status.event_status == "PENDING" {
        // Apple asks for the polling interval between two looks at a PENDING event.
        let invs: Vec<Invitation> = invs
            .into_iter()
            .map(|mut inv| {
                inv.reason = Some(format!(
                    "registering: {}/{} done",
                    status.num_completed, status.num_requested
                ));
                inv.next_action_at = later(engine, engine.config.status_poll);
                inv
            })
            .collect();
        engine.store.update_invitations(&invs).await?;
        return Ok(false);
    }
    // The event ended: the mirror learns the new users by the next sync (now), or by the
    // USER_MANAGEMENT notification if it arrived.
    let failed: HashMap<&str, &cloudvpp_abwire::ErrorResponse> = status
        .failures
        .iter()
        .flat_map(|f| {
            f.error_info
                .iter()
                .flat_map(|i| i.client_user_ids.iter().flatten())
                .map(move |c| (c.as_str(), f))
        })
        .collect();
    let mut need_sync = false;
    let mut waiting = Vec::new();
    for mut inv in invs {
        match failed.get(inv.client_user_id.as_str()) {
            Some(err) if err.error_number == 9716 => {
                // Already registered (created elsewhere, or a lost answer): reuse that user.
                mirror_person(engine, &client, loc.id, &inv.client_user_id).await?;
                inv.event_id = None;
                inv.next_action_at = engine.now_ms();
                engine.store.update_invitation(&inv).await?;
            }
            Some(err) => {
                let why = format!(
                    "registration failed: {} {}",
                    err.error_number, err.error_message
                );
                fail(engine, &mut inv, why).await?;
            }
            None => {
                need_sync = true;
                let waited = engine.now_ms() - inv.updated_at;
                if waited > 60_000 {
                    // Sync has not shown the user for a minute: ask for this person directly.
                    mirror_person(engine, &client, loc.id, &inv.client_user_id).await?;
                }
                inv.reason =
                    Some("registered at Apps and Books; waiting for the invite code".into());
                // Normally moved on in this round, after the sync; else looked at again soon.
                inv.next_action_at = later(engine, Duration::from_millis(300));
                waiting.push(inv);
            }
        }
    }
    engine.store.update_invitations(&waiting).await?;
    Ok(need_sync)
}

/// Moves a registered (or queued and unanswered) invitation on.
async fn advance(engine: &Engine, loc: &Location, mut inv: Invitation) -> Result<(), Error> {
    let client = engine.client(loc);
    match inv.state {
        InvitationState::Registered => {
            if inv.invitation_url.is_none() {
                let code = inv.invite_code.clone().unwrap_or_default();
                match client.invitation_url(&code).await {
                    Ok(url) => inv.invitation_url = Some(url),
                    Err(e) => {
                        inv.reason = Some(format!("waiting for service config: {e}"));
                        inv.next_action_at = later(engine, Duration::from_secs(5));
                        return Ok(engine.store.update_invitation(&inv).await?);
                    }
                }
            }
            match inv.enrollment_id.clone() {
                None => {
                    // Email link only: the URL is the deliverable; association comes by sync.
                    inv.reason = None;
                    inv.updated_at = engine.now_ms();
                    inv.next_action_at = later(engine, engine.config.repush_after);
                    engine.store.update_invitation(&inv).await?;
                }
                Some(target) => match engine.mdm.invite_channel(&target).await? {
                    Err(refused) => fail(engine, &mut inv, refused.to_string()).await?,
                    Ok(channel) => deliver(engine, &mut inv, channel).await?,
                },
            }
        }
        InvitationState::Queued | InvitationState::Delivered => {
            // Unanswered for a while: push again (APNs keeps only the last push anyway).
            if inv.state == InvitationState::Queued {
                if let Some(ch) = &inv.channel {
                    engine.mdm.push_one(ch).await;
                }
            }
            inv.next_action_at = later(engine, engine.config.repush_after);
            engine.store.update_invitation(&inv).await?;
        }
        _ => {}
    }
    Ok(())
}

/// Queues InviteToProgram on `channel` and pushes it.
pub(crate) async fn deliver(
    engine: &Engine,
    inv: &mut Invitation,
    channel: EnrollmentId,
) -> Result<(), Error> {
    // The UUID follows from the invitation and the attempt: if this instance dies between
    // queueing and recording it, the one that takes over queues the same UUID, finds it
    // there, and the device gets one InviteToProgram, not two.
    let uuid = crate::machine::invite_command_uuid(&inv.id, inv.attempts + 1);
    let url = inv.invitation_url.clone().unwrap_or_default();
    let cmd = cloudvpp_mdm::service::invite_to_program(uuid.clone(), &url);
    let queued = match engine
        .mdm
        .enqueue(std::slice::from_ref(&channel), &cmd)
        .await
    {
        Ok(done) => !done.queued.is_empty(),
        // Queued by an instance that died before recording it.
        Err(EnqueueError::Duplicate(_)) => true,
        Err(EnqueueError::Store(e)) => return Err(e.into()),
    };
    if !queued {
        return fail(engine, inv, format!("enrollment {channel} is unknown")).await;
    }
    let before = inv.state;
    inv.channel = Some(channel.clone());
    inv.command_uuid = Some(uuid);
    inv.invitation_result = None;
    inv.attempts += 1;
    inv.state = InvitationState::Queued;
    inv.reason = None;
    inv.updated_at = engine.now_ms();
    inv.next_action_at = later(engine, engine.config.repush_after);
    engine.store.update_invitation(inv).await?;
    log_change(inv, before);
    if engine.mdm.can_push() {
        if let PushOutcome::Failed(err) = engine.mdm.push_one(&channel).await {
            tracing::info!(
                invitation = %inv.id,
                channel = %channel,
                err = %err,
                "push failed; the device gets the invitation at its next check-in"
            );
        }
    }
    Ok(())
}
