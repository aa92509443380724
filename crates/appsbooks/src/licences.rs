//! Apple's rules for licences, as pure functions over what the store read: what an
//! associate, disassociate or revoke does to each (asset, user or device) of a step, what a
//! retirement releases, and how a step folds into the event's progress and its
//! `ASSET_MANAGEMENT` notifications. The worker reads a [`LicenceSnapshot`] through the
//! store's [`cloudvpp_store::OrgTx`], calls these, and writes [`LicenceWrites`] back in the
//! same transaction, so counts move with the assignments they count:
//! `assignedCount + availableCount = totalCount`, never negative.

use crate::envelope::envelope;
use crate::events::EventRef;
use cloudvpp_abwire::assets::{AssetManagementNotification, AssetRef, Assignment};
use cloudvpp_abwire::errors::{
    AppleError, ASSET_NOT_DEVICE_ASSIGNABLE, ASSET_NOT_REVOCABLE, NOT_ENOUGH_LICENSES,
    USER_NOT_FOUND,
};
use cloudvpp_abwire::notification::types::ASSET_MANAGEMENT;
use cloudvpp_abwire::{ErrorInfo, ErrorResponse};
use cloudvpp_store::{
    AssetFailure, AssetKey, AssetRecord, AssignmentRecord, EventProgress, EventStatus, EventType,
    Target,
};
use std::collections::{BTreeMap, HashMap, HashSet};

/// At most this many assignments in one notification (Apple: "at most 100 elements").
pub const MAX_ASSIGNMENTS_PER_NOTIFICATION: usize = 100;

/// What a licence decision reads: the assets concerned, the assignments the step's targets
/// hold, which of its users are active, and the assignments' latest change number.
#[derive(Debug, Clone, Default)]
pub struct LicenceSnapshot {
    /// Assets by key (absent: the organisation owns none).
    pub assets: HashMap<AssetKey, AssetRecord>,
    /// Assignments held, by target.
    pub held: HashMap<Target, Vec<AssignmentRecord>>,
    /// clientUserIds with an active (Registered or Associated) record.
    pub active_users: HashSet<String>,
    /// The latest change number of the organisation's assignments.
    pub assign_chg: i64,
}

impl LicenceSnapshot {
    /// A snapshot over what was read.
    pub fn new(
        assets: Vec<AssetRecord>,
        held: Vec<AssignmentRecord>,
        active_users: impl IntoIterator<Item = String>,
        assign_chg: i64,
    ) -> Self {
        let mut by_target: HashMap<Target, Vec<AssignmentRecord>> = HashMap::new();
        for a in held {
            by_target.entry(a.target.clone()).or_default().push(a);
        }
        LicenceSnapshot {
            assets: assets
                .into_iter()
                .map(|a| {
                    (
                        AssetKey {
                            adam_id: a.adam_id.clone(),
                            pricing_param: a.pricing_param,
                        },
                        a,
                    )
                })
                .collect(),
            held: by_target,
            active_users: active_users.into_iter().collect(),
            assign_chg,
        }
    }

    fn next_chg(&mut self) -> i64 {
        self.assign_chg += 1;
        self.assign_chg
    }

    fn take_held(&mut self, target: &Target, asset: &AssetKey) -> Option<AssignmentRecord> {
        let list = self.held.get_mut(target)?;
        let i = list.iter().position(|a| &a.asset == asset)?;
        Some(list.swap_remove(i))
    }
}

/// What a licence decision writes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LicenceWrites {
    /// Assets whose counts changed, as they now are.
    pub assets: BTreeMap<AssetKey, AssetRecord>,
    /// New assignments.
    pub inserts: Vec<AssignmentRecord>,
    /// Assignments taken back (as read).
    pub deletes: Vec<AssignmentRecord>,
    /// Assignments changed: (as read, as they now are).
    pub updates: Vec<(AssignmentRecord, AssignmentRecord)>,
}

impl LicenceWrites {
    /// Whether nothing is to be written.
    pub fn is_empty(&self) -> bool {
        self.assets.is_empty()
            && self.inserts.is_empty()
            && self.deletes.is_empty()
            && self.updates.is_empty()
    }

    fn asset(&mut self, snap: &mut LicenceSnapshot, key: &AssetKey) -> Option<&mut AssetRecord> {
        if !self.assets.contains_key(key) {
            let a = snap.assets.get(key)?.clone();
            self.assets.insert(key.clone(), a);
        }
        self.assets.get_mut(key)
    }
}

/// What became of one task of a step: one (asset, target) of an associate or disassociate,
/// one target of a revoke.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskOutcome {
    /// Done: the assignments it made or took back (none when there was nothing to do).
    Done(Vec<Assignment>),
    /// Refused with an Apple asynchronous error.
    Failed {
        /// Why.
        error: AppleError,
        /// The asset (none for a revoke).
        asset: Option<AssetKey>,
        /// Whom.
        target: Target,
    },
}

/// The tasks of a step over `targets`: for an associate or disassociate, each target with
/// each of `assets`; for a revoke, each target. Applies Apple's rules over `snap`:
///
/// - associate: 9709 when the asset is not owned or has no licence free; 9609 when the
///   user has no active record (unknown or retired); 9707 for a device and an asset that
///   is not device-assignable. An assignment already held is done again without a second
///   licence; one a retired user of the same clientUserId kept (a book) becomes active.
/// - disassociate: 9706 when the asset is not revocable; an assignment held is taken back
///   and its licence freed; none held is done with nothing to do.
/// - revoke: every revocable assignment of the target is taken back.
pub fn decide_licence_step(
    event_type: EventType,
    assets: &[AssetKey],
    targets: &[Target],
    snap: &mut LicenceSnapshot,
) -> (Vec<TaskOutcome>, LicenceWrites) {
    let mut w = LicenceWrites::default();
    let mut out = Vec::new();
    for target in targets {
        if event_type == EventType::Revoke {
            let held = snap.held.remove(target).unwrap_or_default();
            let mut taken = Vec::new();
            for a in held {
                let revocable = snap.assets.get(&a.asset).is_some_and(|x| x.revocable);
                if !revocable {
                    snap.held.entry(target.clone()).or_default().push(a);
                    continue;
                }
                if let Some(asset) = w.asset(snap, &a.asset) {
                    asset.assigned_count -= 1;
                }
                taken.push(a.to_response());
                w.deletes.push(a);
            }
            snap.next_chg_if(!taken.is_empty());
            out.push(TaskOutcome::Done(taken));
            continue;
        }
        for key in assets {
            let fail = |error| TaskOutcome::Failed {
                error,
                asset: Some(key.clone()),
                target: target.clone(),
            };
            let outcome = match event_type {
                EventType::Associate => associate(key, target, snap, &mut w).unwrap_or_else(fail),
                _ => disassociate(key, target, snap, &mut w).unwrap_or_else(fail),
            };
            out.push(outcome);
        }
    }
    (out, w)
}

impl LicenceSnapshot {
    /// A removal changes the data set: its version moves, though no row carries the number.
    fn next_chg_if(&mut self, changed: bool) {
        if changed {
            self.next_chg();
        }
    }
}

fn wire(key: &AssetKey, target: &Target) -> Assignment {
    AssignmentRecord {
        asset: key.clone(),
        target: target.clone(),
        chg: 0,
        user_active: true,
    }
    .to_response()
}

fn associate(
    key: &AssetKey,
    target: &Target,
    snap: &mut LicenceSnapshot,
    w: &mut LicenceWrites,
) -> Result<TaskOutcome, AppleError> {
    let Some(device_assignable) = snap.assets.get(key).map(|a| a.device_assignable) else {
        return Err(NOT_ENOUGH_LICENSES);
    };
    match target {
        Target::User(c) if !snap.active_users.contains(c) => return Err(USER_NOT_FOUND),
        Target::Serial(_) if !device_assignable => return Err(ASSET_NOT_DEVICE_ASSIGNABLE),
        _ => {}
    }
    if let Some(held) = snap.take_held(target, key) {
        let now = if held.user_active {
            held
        } else {
            // A book kept by a retired record of this clientUserId: the new record has it.
            let mut now = held.clone();
            now.chg = snap.next_chg();
            now.user_active = true;
            if let Some(a) = w.asset(snap, key) {
                a.retired_count -= 1;
            }
            w.updates.push((held, now.clone()));
            now
        };
        snap.held.entry(target.clone()).or_default().push(now);
        return Ok(TaskOutcome::Done(vec![wire(key, target)]));
    }
    // Counts as this step left them.
    let free = w
        .assets
        .get(key)
        .or(snap.assets.get(key))
        .map_or(0, AssetRecord::available_count);
    if free <= 0 {
        return Err(NOT_ENOUGH_LICENSES);
    }
    if let Some(a) = w.asset(snap, key) {
        a.assigned_count += 1;
    }
    let rec = AssignmentRecord {
        asset: key.clone(),
        target: target.clone(),
        chg: snap.next_chg(),
        user_active: true,
    };
    snap.held
        .entry(target.clone())
        .or_default()
        .push(rec.clone());
    w.inserts.push(rec);
    Ok(TaskOutcome::Done(vec![wire(key, target)]))
}

fn disassociate(
    key: &AssetKey,
    target: &Target,
    snap: &mut LicenceSnapshot,
    w: &mut LicenceWrites,
) -> Result<TaskOutcome, AppleError> {
    if snap.assets.get(key).is_some_and(|a| !a.revocable) {
        return Err(ASSET_NOT_REVOCABLE);
    }
    let Some(held) = snap.take_held(target, key) else {
        return Ok(TaskOutcome::Done(Vec::new()));
    };
    if let Some(a) = w.asset(snap, key) {
        a.assigned_count -= 1;
    }
    snap.next_chg();
    // An assignment made in this very step is simply not written.
    match w.inserts.iter().position(|i| i.chg == held.chg) {
        Some(i) => {
            w.inserts.swap_remove(i);
        }
        None => w.deletes.push(held),
    }
    Ok(TaskOutcome::Done(vec![wire(key, target)]))
}

/// What retiring the users `retired` does to the assignments they hold (`snap.held`):
/// revocable licences are freed (Apple: retiring "releases" them), the others (books) stay
/// assigned and count as retired, their assignments marked inactive.
pub fn release_retired(retired: &[String], snap: &mut LicenceSnapshot) -> LicenceWrites {
    let mut w = LicenceWrites::default();
    let mut removed = false;
    for cuid in retired {
        let held = snap
            .held
            .remove(&Target::User(cuid.clone()))
            .unwrap_or_default();
        for a in held {
            if !a.user_active {
                continue;
            }
            let revocable = snap.assets.get(&a.asset).is_some_and(|x| x.revocable);
            if revocable {
                if let Some(asset) = w.asset(snap, &a.asset) {
                    asset.assigned_count -= 1;
                }
                w.deletes.push(a);
                removed = true;
            } else {
                if let Some(asset) = w.asset(snap, &a.asset) {
                    asset.retired_count += 1;
                }
                let mut now = a.clone();
                now.chg = snap.next_chg();
                now.user_active = false;
                w.updates.push((a, now));
            }
        }
    }
    snap.next_chg_if(removed);
    w
}

/// Folds one step's outcomes into the event's progress: returns its status after the step
/// and the `ASSET_MANAGEMENT` envelopes to queue (none unless `notify`). `targets` is how
/// many targets the step covered, `total_targets` the event's.
///
/// Done assignments are reported a notification each 100, as the event goes; failures
/// when it ends, one `FAILURE` notification per (error, asset) and 100 targets, each with
/// its one `error` as Apple allows.
pub fn fold_licence_step(
    progress: &mut EventProgress,
    outcomes: &[TaskOutcome],
    targets: usize,
    total_targets: usize,
    notify: bool,
    event: EventRef<'_>,
) -> (EventStatus, Vec<String>) {
    let mut notifications = Vec::new();
    progress.cursor += targets;
    for outcome in outcomes {
        match outcome {
            TaskOutcome::Done(assignments) => {
                progress.num_completed += 1;
                if notify {
                    for a in assignments {
                        progress.unreported_assignments.push(a.clone());
                        if progress.unreported_assignments.len() >= MAX_ASSIGNMENTS_PER_NOTIFICATION
                        {
                            let batch = std::mem::take(&mut progress.unreported_assignments);
                            notifications.push(asset_management(event, batch, None));
                        }
                    }
                }
            }
            TaskOutcome::Failed {
                error,
                asset,
                target,
            } => {
                let i = match progress
                    .asset_failures
                    .iter()
                    .position(|f| f.error == *error && &f.asset == asset)
                {
                    Some(i) => i,
                    None => {
                        progress.asset_failures.push(AssetFailure {
                            error: *error,
                            asset: asset.clone(),
                            client_user_ids: Vec::new(),
                            serial_numbers: Vec::new(),
                        });
                        progress.asset_failures.len() - 1
                    }
                };
                let f = &mut progress.asset_failures[i];
                match target {
                    Target::User(c) => f.client_user_ids.push(c.clone()),
                    Target::Serial(s) => f.serial_numbers.push(s.clone()),
                }
            }
        }
    }
    if progress.cursor < total_targets {
        return (EventStatus::Pending, notifications);
    }
    if !progress.unreported_assignments.is_empty() {
        let batch = std::mem::take(&mut progress.unreported_assignments);
        notifications.push(asset_management(event, batch, None));
    }
    if notify {
        for f in &progress.asset_failures {
            let targets: Vec<Target> = f
                .client_user_ids
                .iter()
                .map(|c| Target::User(c.clone()))
                .chain(f.serial_numbers.iter().map(|s| Target::Serial(s.clone())))
                .collect();
            for chunk in targets.chunks(MAX_ASSIGNMENTS_PER_NOTIFICATION) {
                let part = AssetFailure {
                    error: f.error,
                    asset: f.asset.clone(),
                    client_user_ids: chunk
                        .iter()
                        .filter_map(|t| match t {
                            Target::User(c) => Some(c.clone()),
                            Target::Serial(_) => None,
                        })
                        .collect(),
                    serial_numbers: chunk
                        .iter()
                        .filter_map(|t| match t {
                            Target::Serial(s) => Some(s.clone()),
                            Target::User(_) => None,
                        })
                        .collect(),
                };
                let assignments = match &f.asset {
                    Some(key) => chunk.iter().map(|t| wire(key, t)).collect(),
                    None => Vec::new(),
                };
                notifications.push(asset_management(
                    event,
                    assignments,
                    Some(failure_body(&part)),
                ));
            }
        }
    }
    let status = if progress.asset_failures.is_empty() {
        EventStatus::Complete
    } else {
        EventStatus::Failed
    };
    (status, notifications)
}

/// The `ErrorResponse` of an asset failure: Apple's message, and in `errorInfo` the asset
/// and the users and devices it hit.
pub fn failure_body(f: &AssetFailure) -> ErrorResponse {
    let non_empty = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    ErrorResponse {
        error_info: Some(ErrorInfo {
            assets: f.asset.as_ref().map(|k| {
                vec![AssetRef {
                    adam_id: k.adam_id.clone(),
                    pricing_param: Some(k.pricing_param),
                }]
            }),
            client_user_ids: non_empty(&f.client_user_ids),
            serial_numbers: non_empty(&f.serial_numbers),
        }),
        ..f.error.response()
    }
}

/// An `ASSET_MANAGEMENT` envelope.
fn asset_management(
    event: EventRef<'_>,
    assignments: Vec<Assignment>,
    error: Option<ErrorResponse>,
) -> String {
    let payload = AssetManagementNotification {
        assignments,
        event_id: event.event_id.to_string(),
        result: if error.is_some() {
            "FAILURE"
        } else {
            "SUCCESS"
        }
        .to_string(),
        event_type: event.event_type.as_str().to_string(),
        error,
    };
    envelope(
        event.uid,
        ASSET_MANAGEMENT,
        serde_json::to_value(payload).expect("serialisable"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudvpp_abwire::assets::{PricingParam, ProductType};

    fn key(id: &str) -> AssetKey {
        AssetKey {
            adam_id: id.into(),
            pricing_param: PricingParam::Stdq,
        }
    }

    fn asset(id: &str, total: i64, assigned: i64, app: bool) -> AssetRecord {
        AssetRecord {
            adam_id: id.into(),
            pricing_param: PricingParam::Stdq,
            product_type: if app {
                ProductType::App
            } else {
                ProductType::Book
            },
            supported_platforms: vec!["iOS".into()],
            device_assignable: app,
            revocable: app,
            total_count: total,
            assigned_count: assigned,
            retired_count: 0,
        }
    }

    fn user(c: &str) -> Target {
        Target::User(c.into())
    }

    fn balanced(w: &LicenceWrites) {
        for a in w.assets.values() {
            assert!(a.assigned_count >= 0 && a.available_count() >= 0, "{a:?}");
            assert_eq!(a.assigned_count + a.available_count(), a.total_count);
        }
    }

    #[test]
    fn associate_gives_free_licences_then_refuses_with_9709() {
        let mut snap = LicenceSnapshot::new(
            vec![asset("1", 2, 0, true)],
            vec![],
            ["a", "b", "c"].map(String::from),
            10,
        );
        let (out, w) = decide_licence_step(
            EventType::Associate,
            &[key("1")],
            &[user("a"), user("b"), user("c")],
            &mut snap,
        );
        assert!(matches!(out[0], TaskOutcome::Done(_)));
        assert!(matches!(out[1], TaskOutcome::Done(_)));
        assert_eq!(
            out[2],
            TaskOutcome::Failed {
                error: NOT_ENOUGH_LICENSES,
                asset: Some(key("1")),
                target: user("c")
            }
        );
        assert_eq!(
            w.inserts.iter().map(|i| i.chg).collect::<Vec<_>>(),
            [11, 12]
        );
        assert_eq!(w.assets[&key("1")].assigned_count, 2);
        balanced(&w);
    }

    #[test]
    fn associate_twice_uses_one_licence_and_unknown_things_fail() {
        let held = AssignmentRecord {
            asset: key("1"),
            target: user("a"),
            chg: 3,
            user_active: true,
        };
        let mut snap = LicenceSnapshot::new(
            vec![asset("1", 5, 1, true), asset("2", 5, 0, false)],
            vec![held],
            ["a".to_string()],
            3,
        );
        let (out, w) = decide_licence_step(
            EventType::Associate,
            &[key("1"), key("2"), key("9")],
            &[user("a"), user("ghost"), Target::Serial("S1".into())],
            &mut snap,
        );
        let errors: Vec<Option<u32>> = out
            .iter()
            .map(|o| match o {
                TaskOutcome::Done(_) => None,
                TaskOutcome::Failed { error, .. } => Some(error.number),
            })
            .collect();
        assert_eq!(
            errors,
            [
                None,       // a already has 1
                None,       // a gets the book
                Some(9709), // 9 is not owned
                Some(9609),
                Some(9609),
                Some(9709),
                None,       // a device gets the app
                Some(9707), // a book is not device-assignable
                Some(9709),
            ]
        );
        assert_eq!(w.assets[&key("1")].assigned_count, 2);
        assert_eq!(w.assets[&key("2")].assigned_count, 1);
        balanced(&w);
    }

    #[test]
    fn disassociate_frees_and_refuses_books() {
        let held = |id: &str, chg| AssignmentRecord {
            asset: key(id),
            target: user("a"),
            chg,
            user_active: true,
        };
        let mut snap = LicenceSnapshot::new(
            vec![asset("1", 5, 1, true), asset("2", 5, 1, false)],
            vec![held("1", 1), held("2", 2)],
            ["a".to_string()],
            2,
        );
        let (out, w) = decide_licence_step(
            EventType::Disassociate,
            &[key("1"), key("2")],
            &[user("a"), user("b")],
            &mut snap,
        );
        assert!(matches!(&out[0], TaskOutcome::Done(v) if v.len() == 1));
        assert!(
            matches!(out[1], TaskOutcome::Failed { error, .. } if error == ASSET_NOT_REVOCABLE)
        );
        assert!(matches!(&out[2], TaskOutcome::Done(v) if v.is_empty()));
        assert_eq!(w.deletes, vec![held("1", 1)]);
        assert_eq!(w.assets[&key("1")].assigned_count, 0);
        assert_eq!(snap.assign_chg, 3, "a removal moves the version");
    }

    #[test]
    fn revoke_takes_back_revocable_only_and_retire_releases() {
        let held = |id: &str, chg| AssignmentRecord {
            asset: key(id),
            target: user("a"),
            chg,
            user_active: true,
        };
        let assets = vec![asset("1", 5, 1, true), asset("2", 5, 1, false)];
        let mut snap = LicenceSnapshot::new(
            assets.clone(),
            vec![held("1", 1), held("2", 2)],
            ["a".to_string()],
            2,
        );
        let (out, w) = decide_licence_step(EventType::Revoke, &[], &[user("a")], &mut snap);
        assert!(matches!(&out[0], TaskOutcome::Done(v) if v.len() == 1 && v[0].adam_id == "1"));
        assert_eq!(w.deletes, vec![held("1", 1)]);

        let mut snap = LicenceSnapshot::new(assets, vec![held("1", 1), held("2", 2)], [], 2);
        let w = release_retired(&["a".to_string()], &mut snap);
        assert_eq!(w.deletes, vec![held("1", 1)]);
        assert_eq!(w.updates.len(), 1);
        assert!(!w.updates[0].1.user_active);
        assert_eq!(w.assets[&key("2")].retired_count, 1);
        assert_eq!(
            w.assets[&key("2")].assigned_count,
            1,
            "a book stays assigned"
        );
        assert_eq!(w.assets[&key("1")].assigned_count, 0);
        balanced(&w);
    }

    #[test]
    fn failures_are_reported_once_finished_per_error_and_asset() {
        let mut p = EventProgress::default();
        let ev = EventRef {
            uid: "1",
            event_id: "e",
            event_type: EventType::Associate,
        };
        let fail = |c: &str| TaskOutcome::Failed {
            error: NOT_ENOUGH_LICENSES,
            asset: Some(key("1")),
            target: user(c),
        };
        let (s, n) = fold_licence_step(&mut p, &[fail("a")], 1, 2, true, ev);
        assert_eq!((s, n.len()), (EventStatus::Pending, 0));
        let (s, n) = fold_licence_step(
            &mut p,
            &[
                fail("b"),
                TaskOutcome::Done(vec![wire(&key("2"), &user("b"))]),
            ],
            1,
            2,
            true,
            ev,
        );
        assert_eq!(s, EventStatus::Failed);
        assert_eq!(n.len(), 2);
        let failure: serde_json::Value = serde_json::from_str(&n[1]).unwrap();
        assert_eq!(failure["notificationType"], "ASSET_MANAGEMENT");
        assert_eq!(failure["notification"]["result"], "FAILURE");
        assert_eq!(failure["notification"]["error"]["errorNumber"], 9709);
        assert_eq!(
            failure["notification"]["error"]["errorInfo"],
            serde_json::json!({"assets": [{"adamId": "1", "pricingParam": "STDQ"}], "clientUserIds": ["a", "b"]})
        );
        assert_eq!(p.num_completed, 1);
    }
}
