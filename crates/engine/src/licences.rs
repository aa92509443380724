//! The licence assignment state machine, as pure functions: [`step`] decides from an
//! assignment and what the engine saw of it (the person's record in the mirror, the answer
//! to the associate request it was sent in, its event's status, an ASSET_MANAGEMENT
//! notification, the service's assignments, the licences free) where it goes; [`apply`]
//! writes that into the assignment; [`plan`] groups the assignments to send into associate
//! requests within the service limits. No I/O: `licence_worker.rs` gathers what is seen in
//! batches and stores what changed.
//!
//! `pending → requested → assigned`; Apple's 9709 (not enough licences) → `waiting`, which
//! goes back to `pending` only when licences are free; any other refusal → `failed` with
//! Apple's number and message.

use cloudvpp_abclient::{split_manage_assets, AssetLimits, ClientError};
use cloudvpp_abwire::assets::{
    AssetManagementNotification, AssetRef, ManageAssetsRequest, PricingParam,
};
use cloudvpp_abwire::{ErrorResponse, StatusResponse, UserStatus};
use cloudvpp_store::engine::{AppleFailure, Assignment, AssignmentId, AssignmentState, MirrorUser};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Apple's "not enough licences": the assignment waits for licences.
pub const NOT_ENOUGH_LICENCES: u32 = 9709;
/// Asynchronous errors that say "try again later" (internal error, maintenance): the
/// assignment is sent again, it is not failed.
pub const TRY_AGAIN_LATER: [u32; 2] = [9603, 9644];

/// How long the machine waits before the next look, in ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Between status polls of a running associate event (`--status-poll-ms`).
    pub status_poll: i64,
    /// Between looks at the licences free for waiting assignments (`--licence-recheck-ms`).
    pub recheck: i64,
    /// Before looking again at an assignment whose person cannot receive it yet.
    pub hold: i64,
    /// Before an assignment marked as being sent is looked at again, if the instance
    /// sending it died before recording the answer.
    pub in_flight: i64,
    /// Before a request refused for a passing reason (rate limit, token) is sent again.
    pub retry: i64,
}

/// What was seen of one assignment this round.
#[derive(Debug, Clone, Copy)]
pub enum Seen<'a> {
    /// A pending assignment is due; the mirror's record of its person, if any.
    Due {
        /// The person at Apps and Books.
        person: Option<&'a MirrorUser>,
    },
    /// The answer to the associate request it was sent in: the eventIds.
    Answer(&'a Result<Vec<String>, ClientError>),
    /// Its event's status.
    Event(&'a StatusResponse),
    /// Asking for its event's status failed.
    StatusFailed(&'a ClientError),
    /// An ASSET_MANAGEMENT notification.
    Notification(&'a AssetManagementNotification),
    /// Sent without a known event: whether the service lists the assignment.
    Listed {
        /// The service has it.
        assigned: bool,
    },
    /// Waiting: the licences free now, and its place among the waiting assignments of the
    /// same app (0 = waiting longest).
    Licences {
        /// `availableCount`.
        available: i64,
        /// Its place in the queue.
        rank: usize,
    },
}

/// Where an assignment goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing new.
    Stay,
    /// Pending, but its person cannot receive a licence yet.
    Hold {
        /// Why, in words.
        note: String,
    },
    /// Pending: send it in the next associate request.
    Send,
    /// Marked as being sent, before the request goes (see [`Timing::in_flight`]).
    Sending,
    /// The request was accepted: follow its event.
    Sent {
        /// The eventId.
        event_id: String,
    },
    /// The request may or may not have been applied: the service's assignments will tell.
    Unknown {
        /// Why, in words.
        note: String,
    },
    /// Not sent or not done for a passing reason: pending again, sent later.
    Retry {
        /// Why, in words.
        note: String,
    },
    /// The event runs (or its status could not be read): poll again.
    Poll {
        /// Progress, in words.
        note: String,
    },
    /// The licence is the person's.
    Assigned,
    /// Not enough licences (9709).
    Waiting(AppleFailure),
    /// Refused for good.
    Failed(AppleFailure),
    /// Waiting, and a licence is free for it: pending again, at once.
    Release,
    /// Waiting, and no licence is free for it: look again after [`Timing::recheck`].
    KeepWaiting,
    /// Sent without a known event and not at the service: pending again, at once.
    Resend,
}

fn failure(e: &ErrorResponse) -> AppleFailure {
    AppleFailure {
        number: e.error_number,
        message: e.error_message.clone(),
    }
}

/// What one of Apple's errors does to an assignment it hit.
fn on_error(e: &ErrorResponse) -> Step {
    match e.error_number {
        NOT_ENOUGH_LICENCES => Step::Waiting(failure(e)),
        n if TRY_AGAIN_LATER.contains(&n) => Step::Retry {
            note: format!(
                "Apps and Books answered {n} {}; sending again",
                e.error_message
            ),
        },
        _ => Step::Failed(failure(e)),
    }
}

fn asset_matches(r: &AssetRef, a: &Assignment) -> bool {
    // An asset without pricingParam names the app whatever its quality.
    r.adam_id == a.adam_id && r.pricing_param.is_none_or(|p| p == a.pricing_param)
}

/// Whether `e` names `a` (its users and assets, as far as it says); None when it names
/// nobody (no users, assets or devices).
fn names(e: &ErrorResponse, a: &Assignment) -> Option<bool> {
    let info = e.error_info.as_ref()?;
    let nonempty = |v: &Option<Vec<_>>| v.as_ref().is_some_and(|v: &Vec<_>| !v.is_empty());
    let users = info.client_user_ids.as_ref().filter(|u| !u.is_empty());
    let assets = info.assets.as_ref().filter(|v| !v.is_empty());
    if users.is_none() && assets.is_none() {
        // Devices only: someone else's failure. Nothing at all: it names nobody.
        return nonempty(&info.serial_numbers).then_some(false);
    }
    if users.is_none() && nonempty(&info.serial_numbers) {
        return Some(false);
    }
    Some(
        users.is_none_or(|u| u.contains(&a.client_user_id))
            && assets.is_none_or(|v| v.iter().any(|r| asset_matches(r, a))),
    )
}

/// Where `a` goes given what was `seen`.
///
/// - Only a `pending` assignment is sent, and only once its person is Registered or
///   Associated at Apps and Books (Apple refuses unknown users with 9609).
/// - The answer: one eventId → follow it; refused before processing for a passing reason
///   (429/9646, a 401/403 of the token) → pending, later; refused with a 400 → failed with
///   Apple's number (a batch is split first, see [`split_refused`]); no answer, a 5xx or
///   several events → unknown, the service's assignments tell.
/// - The event: PENDING → poll; ended → the failures that name the assignment (or name
///   nobody: the whole event) decide it: 9709 → waiting, 9603/9644 → pending again,
///   another → failed; none → assigned. A 9708 (unknown event) → unknown.
/// - An ASSET_MANAGEMENT notification of its event: SUCCESS listing it → assigned;
///   FAILURE whose error names it (or, naming nobody, lists it) → as a failure above.
/// - Waiting: released to pending while its place in the queue is below the licences free.
pub fn step(a: &Assignment, seen: Seen<'_>) -> Step {
    use AssignmentState::*;
    match (a.state, seen) {
        (Pending, Seen::Due { person }) => match person.map(|p| p.status) {
            Some(UserStatus::Registered | UserStatus::Associated) => Step::Send,
            Some(UserStatus::Retired | UserStatus::Deleted) => Step::Hold {
                note: "the person is retired at Apps and Books".into(),
            },
            None => Step::Hold {
                note: "waiting for the person to be registered at Apps and Books".into(),
            },
        },
        (Requested, Seen::Answer(answer)) => match answer {
            Ok(events) if events.len() == 1 => Step::Sent {
                event_id: events[0].clone(),
            },
            Ok(events) => Step::Unknown {
                note: format!(
                    "sent as {} requests; reading the service's assignments",
                    events.len()
                ),
            },
            Err(e) => match e {
                ClientError::Apple {
                    status: 400,
                    number,
                    message,
                    ..
                } => Step::Failed(AppleFailure {
                    number: *number,
                    message: message.clone(),
                }),
                e if e.write_not_applied() => Step::Retry {
                    note: format!("associate refused for now: {e}"),
                },
                e => Step::Unknown {
                    note: format!(
                        "no answer to associate ({e}); reading the service's assignments"
                    ),
                },
            },
        },
        (Requested, Seen::Event(status)) if a.event_id.is_some() => {
            match status.event_status.as_str() {
                "COMPLETE" | "FAILED" => {
                    let hit = status.failures.iter().find(|f| names(f, a) != Some(false));
                    match hit {
                        Some(f) => on_error(f),
                        None => Step::Assigned,
                    }
                }
                _ => Step::Poll {
                    note: format!(
                        "associating: {}/{} done",
                        status.num_completed, status.num_requested
                    ),
                },
            }
        }
        (Requested, Seen::StatusFailed(e)) => match e.apple_number() {
            Some(9708) => Step::Unknown {
                note: "the service does not know the event (9708); reading its assignments".into(),
            },
            _ => Step::Poll {
                note: format!("reading the event's status failed ({e}); polling again"),
            },
        },
        (Requested, Seen::Notification(n)) => {
            if a.event_id.as_deref() != Some(n.event_id.as_str()) || n.event_type != "ASSOCIATE" {
                return Step::Stay;
            }
            let listed = n.assignments.iter().any(|x| {
                x.adam_id == a.adam_id && x.client_user_id.as_deref() == Some(&a.client_user_id)
            });
            match (n.result.as_str(), &n.error) {
                ("SUCCESS", _) if listed => Step::Assigned,
                ("FAILURE", Some(e)) => match names(e, a) {
                    Some(true) => on_error(e),
                    None if listed => on_error(e),
                    _ => Step::Stay,
                },
                _ => Step::Stay,
            }
        }
        (Requested, Seen::Listed { assigned }) if a.event_id.is_none() => {
            if assigned {
                Step::Assigned
            } else {
                Step::Resend
            }
        }
        (Waiting, Seen::Licences { available, rank }) => {
            if (rank as i64) < available {
                Step::Release
            } else {
                Step::KeepWaiting
            }
        }
        _ => Step::Stay,
    }
}

/// Writes `step` into `a` at `now`. Returns whether anything changed (what to store).
pub fn apply(a: &mut Assignment, step: &Step, now: i64, t: &Timing) -> bool {
    let later = |ms: i64| now.saturating_add(ms);
    match step {
        Step::Stay | Step::Send => return false,
        Step::Hold { note } => {
            a.note = Some(note.clone());
            a.next_action_at = later(t.hold);
        }
        Step::Sending => {
            a.state = AssignmentState::Requested;
            a.event_id = None;
            a.error = None;
            a.attempts += 1;
            a.note = Some("sending the associate request".into());
            a.next_action_at = later(t.in_flight);
        }
        Step::Sent { event_id } => {
            a.event_id = Some(event_id.clone());
            a.note = Some("associate request accepted; following its event".into());
            // The first status poll comes soon; later ones at the polling interval.
            a.next_action_at = later(t.status_poll.min(500));
        }
        Step::Unknown { note } => {
            a.state = AssignmentState::Requested;
            a.event_id = None;
            a.note = Some(note.clone());
            a.next_action_at = later(t.status_poll);
        }
        Step::Retry { note } => {
            a.state = AssignmentState::Pending;
            a.event_id = None;
            a.note = Some(note.clone());
            a.next_action_at = later(t.retry);
        }
        Step::Poll { note } => {
            a.note = Some(note.clone());
            a.next_action_at = later(t.status_poll);
        }
        Step::Assigned => {
            a.state = AssignmentState::Assigned;
            a.error = None;
            a.note = None;
            a.next_action_at = i64::MAX;
        }
        Step::Waiting(f) => {
            a.state = AssignmentState::Waiting;
            a.error = Some(f.clone());
            a.note = None;
            a.next_action_at = later(t.recheck);
        }
        Step::Failed(f) => {
            a.state = AssignmentState::Failed;
            a.error = Some(f.clone());
            a.note = None;
            a.next_action_at = i64::MAX;
        }
        Step::Release => {
            a.state = AssignmentState::Pending;
            a.error = None;
            a.note = Some("licences are free again: sending".into());
            a.next_action_at = now;
        }
        Step::KeepWaiting => a.next_action_at = later(t.recheck),
        Step::Resend => {
            a.state = AssignmentState::Pending;
            a.note = Some("the service does not have it: sending again".into());
            a.next_action_at = now;
        }
    }
    a.updated_at = now;
    true
}

/// One associate request and the assignments it covers.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// The request.
    pub request: ManageAssetsRequest,
    /// The assignments it covers: exactly its (asset, user) pairs.
    pub ids: Vec<AssignmentId>,
}

/// Groups assignments (of one location) into associate requests within `limits`. A
/// request gives every one of its assets to every one of its users, so people are grouped
/// by the exact set of apps they are to get (usually everyone gets the location's list):
/// no request ever asks for a pair that was not asked for. Order: oldest first.
pub fn plan(assignments: &[&Assignment], limits: &AssetLimits) -> Vec<Batch> {
    // Per person, the assets; then people by identical asset sets.
    /// The apps and books one person is to get.
    type Apps<'a> = BTreeSet<(&'a str, PricingParam)>;
    let mut per_person: BTreeMap<&str, Apps> = BTreeMap::new();
    let mut first_seen: HashMap<&str, (i64, &str)> = HashMap::new();
    let mut ids: HashMap<(&str, &str), &AssignmentId> = HashMap::new();
    for a in assignments {
        per_person
            .entry(&a.client_user_id)
            .or_default()
            .insert((&a.adam_id, a.pricing_param));
        let seen = first_seen
            .entry(&a.client_user_id)
            .or_insert((a.created_at, a.id.as_str()));
        *seen = (*seen).min((a.created_at, a.id.as_str()));
        ids.insert((&a.client_user_id, &a.adam_id), &a.id);
    }
    let mut groups: BTreeMap<Apps, Vec<&str>> = BTreeMap::new();
    for (person, assets) in per_person {
        groups.entry(assets).or_default().push(person);
    }
    let mut ordered: Vec<(Apps, Vec<&str>)> = groups.into_iter().collect();
    for (_, people) in &mut ordered {
        people.sort_by_key(|p| first_seen[p]);
    }
    ordered.sort_by_key(|(_, people)| first_seen[people[0]]);
    let mut out = Vec::new();
    for (assets, people) in ordered {
        let whole = ManageAssetsRequest {
            assets: assets
                .iter()
                .map(|(adam, pricing)| AssetRef {
                    adam_id: adam.to_string(),
                    pricing_param: Some(*pricing),
                })
                .collect(),
            client_user_ids: Some(people.iter().map(|p| p.to_string()).collect()),
            serial_numbers: None,
        };
        for request in split_manage_assets(&whole, limits) {
            let covered = request
                .client_user_ids
                .iter()
                .flatten()
                .flat_map(|u| {
                    request
                        .assets
                        .iter()
                        .map(move |r| (u.as_str(), r.adam_id.as_str()))
                })
                .filter_map(|k| ids.get(&k).map(|id| (*id).clone()))
                .collect();
            out.push(Batch {
                request,
                ids: covered,
            });
        }
    }
    out
}

/// When a whole request was refused synchronously (HTTP 400: one unknown user, 9609, or
/// limits that changed, 9700/9701) and it holds more than one pair, it is split in two
/// (by users while it has several, else by assets) and each half is sent again, so that
/// one bad person fails alone. Returns the two halves, or None when the refusal is the
/// assignment's own answer.
pub fn split_refused(
    request: &ManageAssetsRequest,
    error: &ClientError,
) -> Option<(ManageAssetsRequest, ManageAssetsRequest)> {
    if !matches!(error, ClientError::Apple { status: 400, .. }) {
        return None;
    }
    let users = request.client_user_ids.as_deref().unwrap_or_default();
    if users.len() > 1 {
        let (l, r) = users.split_at(users.len() / 2);
        let half = |u: &[String]| ManageAssetsRequest {
            client_user_ids: Some(u.to_vec()),
            ..request.clone()
        };
        return Some((half(l), half(r)));
    }
    if request.assets.len() > 1 {
        let (l, r) = request.assets.split_at(request.assets.len() / 2);
        let half = |a: &[AssetRef]| ManageAssetsRequest {
            assets: a.to_vec(),
            ..request.clone()
        };
        return Some((half(l), half(r)));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudvpp_abwire::assets::Assignment as Given;
    use cloudvpp_abwire::ErrorInfo;

    const T0: i64 = 1_000_000;
    const T: Timing = Timing {
        status_poll: 30_000,
        recheck: 300_000,
        hold: 60_000,
        in_flight: 10_000,
        retry: 5_000,
    };

    fn asg(person: &str, adam: &str, state: AssignmentState) -> Assignment {
        Assignment {
            id: AssignmentId::new(format!("{person}/{adam}")),
            location_id: cloudvpp_store::engine::LocationId(1),
            client_user_id: person.into(),
            adam_id: adam.into(),
            pricing_param: PricingParam::Stdq,
            state,
            error: None,
            note: None,
            event_id: (state == AssignmentState::Requested).then(|| "EV".to_string()),
            attempts: 0,
            version: 0,
            created_at: T0,
            updated_at: T0,
            next_action_at: T0,
        }
    }

    fn person(status: UserStatus) -> MirrorUser {
        MirrorUser {
            client_user_id: "ann".into(),
            status,
            invite_code: None,
            id_hash: None,
            email: None,
        }
    }

    fn apple(number: u32, status: u16) -> ClientError {
        ClientError::Apple {
            number,
            message: format!("error {number}"),
            status,
            retry_after: None,
        }
    }

    fn err(number: u32, users: Option<&[&str]>, assets: Option<&[&str]>) -> ErrorResponse {
        ErrorResponse {
            error_info: Some(ErrorInfo {
                client_user_ids: users.map(|u| u.iter().map(|s| s.to_string()).collect()),
                assets: assets.map(|a| {
                    a.iter()
                        .map(|id| AssetRef {
                            adam_id: id.to_string(),
                            pricing_param: Some(PricingParam::Stdq),
                        })
                        .collect()
                }),
                serial_numbers: None,
            }),
            error_message: format!("error {number}"),
            error_number: number,
        }
    }

    fn status(s: &str, failures: Vec<ErrorResponse>) -> StatusResponse {
        StatusResponse {
            event_status: s.into(),
            event_type: "ASSOCIATE".into(),
            num_completed: 5,
            num_requested: 7,
            failures,
            meta: Default::default(),
        }
    }

    fn moved(a: &Assignment, s: &Step) -> Assignment {
        let mut a = a.clone();
        apply(&mut a, s, T0 + 1, &T);
        a
    }

    #[test]
    fn pending_assignments_are_sent_once_the_person_is_known() {
        let a = asg("ann", "1", AssignmentState::Pending);
        for st in [UserStatus::Registered, UserStatus::Associated] {
            let p = person(st);
            assert_eq!(step(&a, Seen::Due { person: Some(&p) }), Step::Send);
        }
        let held = step(&a, Seen::Due { person: None });
        assert!(matches!(&held, Step::Hold { note } if note.contains("registered")));
        let after = moved(&a, &held);
        assert_eq!(after.state, AssignmentState::Pending);
        assert_eq!(after.next_action_at, T0 + 1 + T.hold);
        let retired = person(UserStatus::Retired);
        assert!(matches!(
            step(
                &a,
                Seen::Due {
                    person: Some(&retired)
                }
            ),
            Step::Hold { .. }
        ));
        let mut same = a.clone();
        assert!(!apply(&mut same, &Step::Send, T0 + 1, &T));
        assert_eq!(same, a);
    }

    #[test]
    fn the_answer_to_associate_decides_what_follows() {
        let mut a = asg("ann", "1", AssignmentState::Pending);
        assert!(apply(&mut a, &Step::Sending, T0 + 1, &T));
        assert_eq!(
            (a.state, a.event_id.as_deref(), a.attempts),
            (AssignmentState::Requested, None, 1)
        );
        assert_eq!(
            a.next_action_at,
            T0 + 1 + T.in_flight,
            "looked at again if we die"
        );

        let ok = Ok(vec!["E1".to_string()]);
        let s = step(&a, Seen::Answer(&ok));
        assert_eq!(
            s,
            Step::Sent {
                event_id: "E1".into()
            }
        );
        let sent = moved(&a, &s);
        assert_eq!(sent.event_id.as_deref(), Some("E1"));
        assert_eq!(sent.next_action_at, T0 + 1 + 500, "first poll soon");

        let refused = Err(apple(9609, 400));
        let s = step(&a, Seen::Answer(&refused));
        assert_eq!(
            s,
            Step::Failed(AppleFailure {
                number: 9609,
                message: "error 9609".into()
            })
        );
        assert_eq!(moved(&a, &s).next_action_at, i64::MAX);

        for passing in [apple(9646, 429), apple(9621, 401)] {
            let r = Err(passing);
            let s = step(&a, Seen::Answer(&r));
            assert!(matches!(s, Step::Retry { .. }), "{s:?}");
            let back = moved(&a, &s);
            assert_eq!(back.state, AssignmentState::Pending);
            assert_eq!(back.next_action_at, T0 + 1 + T.retry);
        }
        for unknown in [
            Err(ClientError::Transport("reset".into())),
            Err(apple(9603, 500)),
            Ok(vec!["E1".into(), "E2".into()]),
        ] {
            let s = step(&a, Seen::Answer(&unknown));
            assert!(matches!(s, Step::Unknown { .. }), "{s:?}");
            let u = moved(&a, &s);
            assert_eq!(
                (u.state, u.event_id.as_deref()),
                (AssignmentState::Requested, None)
            );
        }
    }

    #[test]
    fn an_ended_event_assigns_or_names_the_failures() {
        let (ann, eve) = (
            asg("ann", "1", AssignmentState::Requested),
            asg("eve", "1", AssignmentState::Requested),
        );
        let st = status("PENDING", vec![]);
        assert!(
            matches!(step(&ann, Seen::Event(&st)), Step::Poll { note } if note.contains("5/7"))
        );
        assert_eq!(
            moved(&ann, &step(&ann, Seen::Event(&st))).next_action_at,
            T0 + 1 + T.status_poll
        );

        let st = status("FAILED", vec![err(9709, Some(&["eve"]), Some(&["1"]))]);
        assert_eq!(step(&ann, Seen::Event(&st)), Step::Assigned);
        let s = step(&eve, Seen::Event(&st));
        assert!(matches!(&s, Step::Waiting(f) if f.number == 9709));
        let w = moved(&eve, &s);
        assert_eq!(w.state, AssignmentState::Waiting);
        assert_eq!(
            w.next_action_at,
            T0 + 1 + T.recheck,
            "never hot: the slow re-check"
        );
        // Another asset's failure leaves this one assigned.
        let other = status("FAILED", vec![err(9709, Some(&["ann"]), Some(&["2"]))]);
        assert_eq!(step(&ann, Seen::Event(&other)), Step::Assigned);
        // A failure naming nobody is the whole event's.
        let mut bare = err(9609, None, None);
        bare.error_info = None;
        let st = status("FAILED", vec![bare]);
        assert!(matches!(step(&ann, Seen::Event(&st)), Step::Failed(f) if f.number == 9609));
        // Try again later: pending again, not failed.
        let st = status("FAILED", vec![err(9644, Some(&["ann"]), None)]);
        assert!(matches!(step(&ann, Seen::Event(&st)), Step::Retry { .. }));
        // A device's failure is not a user's.
        let mut device = err(9609, None, None);
        device.error_info.as_mut().unwrap().serial_numbers = Some(vec!["C02X".into()]);
        assert_eq!(
            step(&ann, Seen::Event(&status("COMPLETE", vec![device]))),
            Step::Assigned
        );
        // The status could not be read: poll again; the service forgot the event: ask.
        assert!(matches!(
            step(
                &ann,
                Seen::StatusFailed(&ClientError::Transport("x".into()))
            ),
            Step::Poll { .. }
        ));
        assert!(matches!(
            step(&ann, Seen::StatusFailed(&apple(9708, 400))),
            Step::Unknown { .. }
        ));
    }

    fn notification(
        result: &str,
        event: &str,
        listed: &[&str],
        error: Option<ErrorResponse>,
    ) -> AssetManagementNotification {
        AssetManagementNotification {
            assignments: listed
                .iter()
                .map(|p| Given {
                    adam_id: "1".into(),
                    pricing_param: PricingParam::Stdq,
                    client_user_id: Some(p.to_string()),
                    serial_number: None,
                    user_status: None,
                    id_hash: None,
                })
                .collect(),
            event_id: event.into(),
            result: result.into(),
            event_type: "ASSOCIATE".into(),
            error,
        }
    }

    #[test]
    fn asset_management_notifications_settle_what_they_name() {
        let ann = asg("ann", "1", AssignmentState::Requested);
        let n = notification("SUCCESS", "EV", &["ann"], None);
        assert_eq!(step(&ann, Seen::Notification(&n)), Step::Assigned);
        // Another event, or a batch that does not list ann: nothing learnt.
        let n = notification("SUCCESS", "OTHER", &["ann"], None);
        assert_eq!(step(&ann, Seen::Notification(&n)), Step::Stay);
        let n = notification("SUCCESS", "EV", &["bob"], None);
        assert_eq!(step(&ann, Seen::Notification(&n)), Step::Stay);
        // Apple's failure example: one error, naming its users.
        let n = notification("FAILURE", "EV", &[], Some(err(9709, Some(&["ann"]), None)));
        assert!(matches!(
            step(&ann, Seen::Notification(&n)),
            Step::Waiting(_)
        ));
        let n = notification("FAILURE", "EV", &[], Some(err(9709, Some(&["bob"]), None)));
        assert_eq!(step(&ann, Seen::Notification(&n)), Step::Stay);
        // An error naming nobody applies to the assignments the notification lists.
        let mut bare = err(9609, None, None);
        bare.error_info = None;
        let n = notification("FAILURE", "EV", &["ann"], Some(bare.clone()));
        assert!(matches!(
            step(&ann, Seen::Notification(&n)),
            Step::Failed(_)
        ));
        let n = notification("FAILURE", "EV", &["bob"], Some(bare));
        assert_eq!(step(&ann, Seen::Notification(&n)), Step::Stay);
        // A settled assignment ignores late news.
        let done = asg("ann", "1", AssignmentState::Assigned);
        let n = notification("FAILURE", "EV", &[], Some(err(9709, Some(&["ann"]), None)));
        assert_eq!(step(&done, Seen::Notification(&n)), Step::Stay);
    }

    #[test]
    fn waiting_assignments_go_back_only_for_free_licences() {
        let eve = asg("eve", "1", AssignmentState::Waiting);
        assert_eq!(
            step(
                &eve,
                Seen::Licences {
                    available: 2,
                    rank: 1
                }
            ),
            Step::Release
        );
        assert_eq!(
            step(
                &eve,
                Seen::Licences {
                    available: 2,
                    rank: 2
                }
            ),
            Step::KeepWaiting
        );
        assert_eq!(
            step(
                &eve,
                Seen::Licences {
                    available: -3,
                    rank: 0
                }
            ),
            Step::KeepWaiting
        );
        let back = moved(&eve, &Step::Release);
        assert_eq!(
            (back.state, back.next_action_at),
            (AssignmentState::Pending, T0 + 1)
        );
        let still = moved(&eve, &Step::KeepWaiting);
        assert_eq!(
            (still.state, still.next_action_at),
            (AssignmentState::Waiting, T0 + 1 + T.recheck)
        );
        // Only a waiting assignment reads licences; only a pending one is sent.
        let ann = asg("ann", "1", AssignmentState::Assigned);
        assert_eq!(
            step(
                &ann,
                Seen::Licences {
                    available: 9,
                    rank: 0
                }
            ),
            Step::Stay
        );
        let p = person(UserStatus::Associated);
        assert_eq!(step(&eve, Seen::Due { person: Some(&p) }), Step::Stay);
    }

    #[test]
    fn unknown_outcomes_are_read_from_the_service() {
        let mut a = asg("ann", "1", AssignmentState::Requested);
        a.event_id = None;
        assert_eq!(step(&a, Seen::Listed { assigned: true }), Step::Assigned);
        assert_eq!(step(&a, Seen::Listed { assigned: false }), Step::Resend);
        let again = moved(&a, &Step::Resend);
        assert_eq!(
            (again.state, again.next_action_at),
            (AssignmentState::Pending, T0 + 1)
        );
        // With an event, the event tells instead.
        let b = asg("bob", "1", AssignmentState::Requested);
        assert_eq!(step(&b, Seen::Listed { assigned: false }), Step::Stay);
    }

    #[test]
    fn plans_cover_exactly_the_pairs_asked_for_within_the_limits() {
        let mut rows = Vec::new();
        for i in 0..5 {
            for app in ["10", "20", "30"] {
                rows.push(asg(&format!("p{i}"), app, AssignmentState::Pending));
            }
        }
        // One person also gets a book; one person only one app.
        rows.push(asg("p0", "40", AssignmentState::Pending));
        rows.push(asg("solo", "10", AssignmentState::Pending));
        let refs: Vec<&Assignment> = rows.iter().collect();
        let limits = AssetLimits {
            assets: 2,
            client_user_ids: 3,
            ..Default::default()
        };
        let batches = plan(&refs, &limits);
        let mut covered: Vec<AssignmentId> = Vec::new();
        for b in &batches {
            assert!(b.request.assets.len() <= 2);
            let users = b.request.client_user_ids.as_ref().unwrap();
            assert!(users.len() <= 3);
            // Every pair of the request is an assignment asked for, and is listed.
            assert_eq!(b.ids.len(), users.len() * b.request.assets.len());
            covered.extend(b.ids.iter().cloned());
        }
        covered.sort();
        let mut all: Vec<AssignmentId> = rows.iter().map(|r| r.id.clone()).collect();
        all.sort();
        assert_eq!(covered, all, "each assignment in exactly one request");
        // p1..p4 share a set: 2 asset chunks × 2 user chunks; p0: 2×1; solo: 1.
        assert_eq!(batches.len(), 4 + 2 + 1);
    }

    #[test]
    fn refused_requests_are_halved_until_one_pair_fails_alone() {
        let req = ManageAssetsRequest {
            assets: vec![
                AssetRef {
                    adam_id: "1".into(),
                    pricing_param: None,
                },
                AssetRef {
                    adam_id: "2".into(),
                    pricing_param: None,
                },
            ],
            client_user_ids: Some(vec!["a".into(), "b".into(), "c".into()]),
            serial_numbers: None,
        };
        let (l, r) = split_refused(&req, &apple(9609, 400)).unwrap();
        assert_eq!(l.client_user_ids.as_deref().unwrap(), ["a"]);
        assert_eq!(r.client_user_ids.as_deref().unwrap(), ["b", "c"]);
        let (l, r) = split_refused(&l, &apple(9700, 400)).unwrap();
        assert_eq!((l.assets.len(), r.assets.len()), (1, 1));
        assert!(split_refused(&l, &apple(9609, 400)).is_none());
        assert!(split_refused(&req, &apple(9646, 429)).is_none());
        assert!(split_refused(&req, &ClientError::Transport("x".into())).is_none());
    }
}
