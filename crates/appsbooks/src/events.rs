//! Apple's rules for users events and invitations, as pure functions over what the store
//! read: which users a create, update or retire applies and which it refuses with which
//! error, how a step folds into the event's progress and its notifications, and what an
//! invitation's acceptance leads to. Nothing here touches a database, so every rule is
//! tested on its own (below); the worker and the invitation page read a snapshot through
//! the store's [`cloudvpp_store::OrgTx`], call these, and write the result back in the same
//! transaction.

use crate::envelope::{failure_response, user_management};
use cloudvpp_abwire::errors::{
    AppleError, APPLE_ACCOUNT_ALREADY_ASSOCIATED, APPLE_ACCOUNT_CANNOT_ASSOCIATE,
    USER_ALREADY_EXISTS, USER_NOT_FOUND,
};
use cloudvpp_abwire::{RequestUser, UserStatus};
use cloudvpp_store::{EventProgress, EventStatus, EventType, NewUser, UserRecord, UserUpdate};
use std::collections::{BTreeMap, HashMap};

/// At most this many users in one notification (Apple: "at most 100 elements").
pub const MAX_USERS_PER_NOTIFICATION: usize = 100;

/// One user of a step, with the random and keyed parts already made by the service.
#[derive(Debug, Clone)]
pub struct UserOp {
    /// The request user.
    pub user: RequestUser,
    /// For a create: the invite code a Registered user gets.
    pub new_invite_code: String,
    /// `idHash` of `managedAppleId`, when given.
    pub id_hash: Option<String>,
    /// The `managedAppleId` cannot be associated (the fault setting
    /// `--refuse-apple-accounts`; at Apple, an account outside the organisation).
    pub account_refused: bool,
}

/// What became of one user of a step.
#[derive(Debug, Clone, PartialEq)]
pub enum UserOutcome {
    /// Applied; the record as it now is.
    Done(UserRecord),
    /// Refused with an Apple asynchronous error.
    Failed {
        /// clientUserId.
        client_user_id: String,
        /// Why (9716, 9609, 9641, or 9603 for a step that can never succeed).
        error: AppleError,
    },
}

/// What a step's decision reads: the organisation's counters and the records the step's
/// users and Apple Accounts name, as the step's transaction sees them.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The highest `ord` given out.
    pub user_count: i64,
    /// The latest change number.
    pub chg: i64,
    /// Active (not retired) records by clientUserId.
    pub active: HashMap<String, UserRecord>,
    /// `ord` of the Associated record holding each `idHash`.
    pub associated: HashMap<String, i64>,
}

impl Snapshot {
    /// A snapshot of `active` and `associated` records over the counters.
    pub fn new(
        user_count: i64,
        chg: i64,
        active: Vec<UserRecord>,
        associated: Vec<UserRecord>,
    ) -> Self {
        Snapshot {
            user_count,
            chg,
            active: active
                .into_iter()
                .map(|r| (r.client_user_id.clone(), r))
                .collect(),
            associated: associated
                .into_iter()
                .filter_map(|r| r.id_hash.clone().map(|h| (h, r.ord)))
                .collect(),
        }
    }

    /// Whether `hash` is held by an Associated record other than `ord`'s.
    fn hash_taken(&self, hash: &str, except_ord: Option<i64>) -> bool {
        self.associated
            .get(hash)
            .is_some_and(|holder| Some(*holder) != except_ord)
    }

    /// Records `rec`'s new state in the snapshot, so that the step's later users see it.
    fn observe(&mut self, before: Option<&UserRecord>, rec: &UserRecord) {
        if let Some(h) = before.and_then(|b| b.id_hash.as_ref()) {
            if self.associated.get(h) == Some(&rec.ord) {
                self.associated.remove(h);
            }
        }
        if rec.status == UserStatus::Associated {
            if let Some(h) = &rec.id_hash {
                self.associated.insert(h.clone(), rec.ord);
            }
        }
        if matches!(rec.status, UserStatus::Retired | UserStatus::Deleted) {
            self.active.remove(&rec.client_user_id);
        } else {
            self.active.insert(rec.client_user_id.clone(), rec.clone());
        }
    }
}

/// The records a step adds and changes.
#[derive(Debug, Clone, Default)]
pub struct Writes {
    /// New records, by `ord`.
    pub inserts: BTreeMap<i64, NewUser>,
    /// Changed records that existed before the step, by `ord`.
    pub updates: BTreeMap<i64, UserUpdate>,
}

impl Writes {
    fn insert(&mut self, record: UserRecord, managed_apple_id: Option<String>) {
        self.inserts.insert(
            record.ord,
            NewUser {
                record,
                managed_apple_id,
            },
        );
    }

    fn update(&mut self, record: UserRecord, managed_apple_id: Option<String>) {
        // A user changed twice in one step is written once, as it ends; a step has one
        // event type, so a record it creates is never also one it changes.
        let managed_apple_id = managed_apple_id.or_else(|| {
            self.updates
                .remove(&record.ord)
                .and_then(|u| u.managed_apple_id)
        });
        self.updates.insert(
            record.ord,
            UserUpdate {
                record,
                managed_apple_id,
            },
        );
    }
}

/// The users of a step's `ops` to read before deciding: their clientUserIds and the
/// `idHash`es they name.
pub fn keys(ops: &[UserOp]) -> (Vec<&str>, Vec<&str>) {
    (
        ops.iter().map(|o| o.user.client_user_id.as_str()).collect(),
        ops.iter().filter_map(|o| o.id_hash.as_deref()).collect(),
    )
}

/// Applies Apple's rules to each user of a step, in order, over `snap` (which it advances,
/// counters included): what each user becomes, and what to write.
///
/// - create: 9716 when the clientUserId has an active record; with a `managedAppleId`,
///   9635 when the Apple Account cannot be associated, 9641 when it is associated with
///   another active user, else the user is Associated at once; without, Registered with a
///   new invite code.
/// - update: 9609 without an active record; 9635 and 9641 as for create (the record is left
///   as it was); the email and Apple Account change, and a user given an Apple Account is
///   Associated.
/// - retire: 9609 without an active record; the record turns Retired (its Apple Account is
///   free again).
pub fn decide_step(
    event_type: EventType,
    ops: &[UserOp],
    snap: &mut Snapshot,
) -> (Vec<UserOutcome>, Writes) {
    let mut writes = Writes::default();
    let mut outcomes = Vec::with_capacity(ops.len());
    for op in ops {
        let cuid = op.user.client_user_id.as_str();
        let failed = |error| UserOutcome::Failed {
            client_user_id: cuid.to_string(),
            error,
        };
        let active = snap.active.get(cuid).cloned();
        let outcome = match event_type {
            EventType::Create => {
                if active.is_some() {
                    failed(USER_ALREADY_EXISTS)
                } else if op.id_hash.is_some() && op.account_refused {
                    failed(APPLE_ACCOUNT_CANNOT_ASSOCIATE)
                } else if op
                    .id_hash
                    .as_deref()
                    .is_some_and(|h| snap.hash_taken(h, None))
                {
                    failed(APPLE_ACCOUNT_ALREADY_ASSOCIATED)
                } else {
                    snap.user_count += 1;
                    snap.chg += 1;
                    let rec = UserRecord {
                        ord: snap.user_count,
                        chg: snap.chg,
                        client_user_id: cuid.to_string(),
                        email: op.user.email.clone(),
                        invite_code: match op.id_hash {
                            Some(_) => None,
                            None => Some(op.new_invite_code.clone()),
                        },
                        id_hash: op.id_hash.clone(),
                        status: match op.id_hash {
                            Some(_) => UserStatus::Associated,
                            None => UserStatus::Registered,
                        },
                    };
                    snap.observe(None, &rec);
                    writes.insert(rec.clone(), op.user.managed_apple_id.clone());
                    UserOutcome::Done(rec)
                }
            }
            EventType::Update => match active {
                None => failed(USER_NOT_FOUND),
                Some(before) => {
                    if op.id_hash.is_some() && op.account_refused {
                        failed(APPLE_ACCOUNT_CANNOT_ASSOCIATE)
                    } else if op
                        .id_hash
                        .as_deref()
                        .is_some_and(|h| snap.hash_taken(h, Some(before.ord)))
                    {
                        failed(APPLE_ACCOUNT_ALREADY_ASSOCIATED)
                    } else {
                        snap.chg += 1;
                        let mut rec = before.clone();
                        rec.chg = snap.chg;
                        if op.user.email.is_some() {
                            rec.email = op.user.email.clone();
                        }
                        if let Some(h) = &op.id_hash {
                            rec.id_hash = Some(h.clone());
                            rec.status = UserStatus::Associated;
                        }
                        snap.observe(Some(&before), &rec);
                        writes.update(rec.clone(), op.user.managed_apple_id.clone());
                        UserOutcome::Done(rec)
                    }
                }
            },
            // Asset events are decided by `licences`; a users payload stored with one of
            // their types is a corrupt row, refused user by user rather than guessed at.
            EventType::Associate | EventType::Disassociate | EventType::Revoke => {
                failed(cloudvpp_abwire::errors::INTERNAL_ERROR)
            }
            EventType::Retire => match active {
                None => failed(USER_NOT_FOUND),
                Some(before) => {
                    snap.chg += 1;
                    let mut rec = before.clone();
                    rec.chg = snap.chg;
                    rec.status = UserStatus::Retired;
                    snap.observe(Some(&before), &rec);
                    writes.update(rec.clone(), None);
                    UserOutcome::Done(rec)
                }
            },
        };
        outcomes.push(outcome);
    }
    (outcomes, writes)
}

/// The event an event step belongs to, as its notifications name it.
#[derive(Debug, Clone, Copy)]
pub struct EventRef<'a> {
    /// The organisation's `uId`.
    pub uid: &'a str,
    /// `eventId`.
    pub event_id: &'a str,
    /// Type.
    pub event_type: EventType,
}

/// Folds one step's outcomes into the event's progress: returns its status after the step
/// and the `USER_MANAGEMENT` envelopes to queue (none unless `notify`, the organisation's
/// subscription). `total` is the number of users in the event.
///
/// Successes are reported incrementally, a notification each 100 users, as Apple does
/// ("incremental notifications as it manages users"); failures are reported when the event
/// ends, one `FAILURE` notification per error number and 100 users, since Apple allows one
/// `ErrorResponse` per notification.
pub fn fold_step(
    progress: &mut EventProgress,
    outcomes: &[UserOutcome],
    total: usize,
    notify: bool,
    event: EventRef<'_>,
) -> (EventStatus, Vec<String>) {
    let mut notifications = Vec::new();
    let report = |users| user_management(event.uid, event.event_id, event.event_type, users, None);
    for outcome in outcomes {
        progress.cursor += 1;
        match outcome {
            UserOutcome::Done(user) => {
                progress.num_completed += 1;
                if notify {
                    progress.unreported.push(user.to_response());
                }
            }
            UserOutcome::Failed {
                client_user_id,
                error,
            } => match progress.failures.iter_mut().find(|(e, _)| e == error) {
                Some((_, ids)) => ids.push(client_user_id.clone()),
                None => progress
                    .failures
                    .push((*error, vec![client_user_id.clone()])),
            },
        }
        if progress.unreported.len() >= MAX_USERS_PER_NOTIFICATION {
            notifications.push(report(std::mem::take(&mut progress.unreported)));
        }
    }
    if progress.cursor < total {
        return (EventStatus::Pending, notifications);
    }
    if !progress.unreported.is_empty() {
        notifications.push(report(std::mem::take(&mut progress.unreported)));
    }
    if notify {
        for (error, ids) in &progress.failures {
            for chunk in ids.chunks(MAX_USERS_PER_NOTIFICATION) {
                notifications.push(user_management(
                    event.uid,
                    event.event_id,
                    event.event_type,
                    Vec::new(),
                    Some(failure_response(*error, chunk.to_vec())),
                ));
            }
        }
    }
    let status = if progress.failures.is_empty() {
        EventStatus::Complete
    } else {
        EventStatus::Failed
    };
    (status, notifications)
}

/// What accepting an invitation leads to.
#[derive(Debug, Clone, PartialEq)]
pub enum AcceptOutcome {
    /// The user is now Associated.
    Associated(UserRecord),
    /// No such code.
    Unknown,
    /// The code was already used (the user is Associated).
    AlreadyAccepted,
    /// The user was retired.
    Retired,
    /// The Apple Account is associated with another active user of the organisation.
    AccountInUse,
    /// The Apple Account cannot be associated (9635).
    AccountRefused,
}

impl AcceptOutcome {
    /// The Apple error a refusal stands for, when it is one of Apple's asynchronous errors.
    pub fn apple_error(&self) -> Option<AppleError> {
        match self {
            AcceptOutcome::AccountInUse => Some(APPLE_ACCOUNT_ALREADY_ASSOCIATED),
            AcceptOutcome::AccountRefused => Some(APPLE_ACCOUNT_CANNOT_ASSOCIATE),
            _ => None,
        }
    }
}

/// Accepting the invitation of `user` (the record holding the code, if any) with the Apple
/// Account hashed as `id_hash` (`refused`: one that cannot be associated, 9635), given the
/// Associated record already holding that hash (if any). The change number is left as
/// read: the store numbers the change when it writes it ([`cloudvpp_store::UserTx`]).
pub fn decide_accept(
    user: Option<UserRecord>,
    id_hash: &str,
    refused: bool,
    holder: Option<&UserRecord>,
) -> AcceptOutcome {
    let Some(mut rec) = user else {
        return AcceptOutcome::Unknown;
    };
    match rec.status {
        UserStatus::Registered => {}
        UserStatus::Associated => return AcceptOutcome::AlreadyAccepted,
        UserStatus::Retired | UserStatus::Deleted => return AcceptOutcome::Retired,
    }
    if refused {
        return AcceptOutcome::AccountRefused;
    }
    if holder.is_some_and(|h| h.ord != rec.ord) {
        return AcceptOutcome::AccountInUse;
    }
    rec.status = UserStatus::Associated;
    rec.id_hash = Some(id_hash.to_string());
    AcceptOutcome::Associated(rec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudvpp_abwire::errors::INTERNAL_ERROR;

    fn op(cuid: &str, hash: Option<&str>) -> UserOp {
        UserOp {
            user: RequestUser {
                client_user_id: cuid.into(),
                email: Some(format!("{cuid}@example.com")),
                managed_apple_id: hash.map(|h| format!("{h}@appleid.example")),
            },
            new_invite_code: format!("code-{cuid}"),
            id_hash: hash.map(str::to_string),
            account_refused: false,
        }
    }

    fn rec(ord: i64, cuid: &str, status: UserStatus, hash: Option<&str>) -> UserRecord {
        UserRecord {
            ord,
            chg: ord,
            client_user_id: cuid.into(),
            email: None,
            invite_code: Some(format!("code-{cuid}")),
            id_hash: hash.map(str::to_string),
            status,
        }
    }

    fn errors_of(outcomes: &[UserOutcome]) -> Vec<Option<u32>> {
        outcomes
            .iter()
            .map(|o| match o {
                UserOutcome::Done(_) => None,
                UserOutcome::Failed { error, .. } => Some(error.number),
            })
            .collect()
    }

    #[test]
    fn create_numbers_records_and_refuses_existing_users_and_taken_accounts() {
        let mut snap = Snapshot::new(
            10,
            40,
            vec![rec(3, "old", UserStatus::Registered, None)],
            vec![rec(4, "holder", UserStatus::Associated, Some("h1"))],
        );
        let ops = [
            op("new", None),
            op("old", None),
            op("maid", Some("h2")),
            op("taken", Some("h1")),
            // The same Apple Account twice in one step: the first takes it.
            op("second", Some("h2")),
        ];
        let (outcomes, writes) = decide_step(EventType::Create, &ops, &mut snap);
        assert_eq!(
            errors_of(&outcomes),
            vec![None, Some(9716), None, Some(9641), Some(9641)]
        );
        let UserOutcome::Done(new) = &outcomes[0] else {
            unreachable!()
        };
        assert_eq!(
            (new.ord, new.chg, new.status),
            (11, 41, UserStatus::Registered)
        );
        assert_eq!(new.invite_code.as_deref(), Some("code-new"));
        let UserOutcome::Done(maid) = &outcomes[2] else {
            unreachable!()
        };
        assert_eq!((maid.ord, maid.chg), (12, 42));
        assert_eq!(maid.status, UserStatus::Associated);
        assert_eq!(maid.invite_code, None);
        assert_eq!((snap.user_count, snap.chg), (12, 42));
        assert_eq!(writes.inserts.len(), 2);
        assert!(writes.updates.is_empty());
        assert_eq!(
            writes.inserts[&12].managed_apple_id.as_deref(),
            Some("h2@appleid.example")
        );
    }

    #[test]
    fn update_and_retire_need_an_active_user_and_move_apple_accounts() {
        let mut snap = Snapshot::new(
            5,
            9,
            vec![
                rec(1, "a", UserStatus::Associated, Some("ha")),
                rec(2, "b", UserStatus::Registered, None),
            ],
            vec![rec(1, "a", UserStatus::Associated, Some("ha"))],
        );
        // b takes a's Apple Account: refused; a keeps its own: fine.
        let (outcomes, writes) = decide_step(
            EventType::Update,
            &[op("b", Some("ha")), op("a", Some("ha")), op("ghost", None)],
            &mut snap,
        );
        assert_eq!(errors_of(&outcomes), vec![Some(9641), None, Some(9609)]);
        assert_eq!(writes.updates[&1].record.chg, 10);
        // Retiring a frees its Apple Account for b, within the same event.
        let (outcomes, writes) = decide_step(EventType::Retire, &[op("a", None)], &mut snap);
        assert_eq!(errors_of(&outcomes), vec![None]);
        assert_eq!(writes.updates[&1].record.status, UserStatus::Retired);
        assert!(!snap.active.contains_key("a"));
        let (outcomes, _) = decide_step(EventType::Update, &[op("b", Some("ha"))], &mut snap);
        assert_eq!(errors_of(&outcomes), vec![None]);
        let (outcomes, _) = decide_step(EventType::Retire, &[op("a", None)], &mut snap);
        assert_eq!(errors_of(&outcomes), vec![Some(9609)]);
    }

    #[test]
    fn a_user_changed_twice_in_one_step_is_written_once_as_it_ends() {
        let mut snap = Snapshot::new(
            1,
            1,
            vec![rec(1, "a", UserStatus::Registered, None)],
            vec![],
        );
        let mut by_email = op("a", None);
        by_email.user.email = Some("new@example.com".into());
        let (outcomes, writes) = decide_step(
            EventType::Update,
            &[op("a", Some("h")), by_email],
            &mut snap,
        );
        assert_eq!(errors_of(&outcomes), vec![None, None]);
        assert_eq!(writes.updates.len(), 1);
        let last = &writes.updates[&1];
        assert_eq!(last.record.chg, 3);
        assert_eq!(last.record.email.as_deref(), Some("new@example.com"));
        assert_eq!(last.record.status, UserStatus::Associated);
        assert_eq!(last.managed_apple_id.as_deref(), Some("h@appleid.example"));
    }

    fn done(i: usize) -> UserOutcome {
        UserOutcome::Done(rec(
            i as i64,
            &format!("c{i}"),
            UserStatus::Registered,
            None,
        ))
    }

    fn failed(cuid: &str, error: AppleError) -> UserOutcome {
        UserOutcome::Failed {
            client_user_id: cuid.into(),
            error,
        }
    }

    #[test]
    fn successes_split_by_hundred_and_failures_group_by_number() {
        let event = EventRef {
            uid: "1",
            event_id: "e",
            event_type: EventType::Create,
        };
        let mut p = EventProgress::default();
        let mut outcomes: Vec<UserOutcome> = (0..150).map(done).collect();
        outcomes.push(failed("a", USER_ALREADY_EXISTS));
        outcomes.push(failed("b", APPLE_ACCOUNT_ALREADY_ASSOCIATED));
        outcomes.push(failed("c", USER_ALREADY_EXISTS));
        let (status, notes) = fold_step(&mut p, &outcomes[..120], 153, true, event);
        assert_eq!(notes.len(), 1);
        assert_eq!(status, EventStatus::Pending);
        let (status, notes) = fold_step(&mut p, &outcomes[120..], 153, true, event);
        assert_eq!(status, EventStatus::Failed);
        // 50 remaining successes, then 9716 (a, c) and 9641 (b).
        assert_eq!(notes.len(), 3);
        assert_eq!(p.num_completed, 150);
        assert_eq!(
            p.failures,
            vec![
                (USER_ALREADY_EXISTS, vec!["a".into(), "c".into()]),
                (APPLE_ACCOUNT_ALREADY_ASSOCIATED, vec!["b".into()])
            ]
        );
        let last: serde_json::Value = serde_json::from_str(&notes[1]).unwrap();
        assert_eq!(last["notification"]["result"], "FAILURE");
        assert_eq!(last["notification"]["error"]["errorNumber"], 9716);
        assert_eq!(
            last["notification"]["error"]["errorInfo"]["clientUserIds"],
            serde_json::json!(["a", "c"])
        );
    }

    #[test]
    fn without_a_subscription_nothing_is_queued_but_the_status_is_kept() {
        let event = EventRef {
            uid: "1",
            event_id: "e",
            event_type: EventType::Retire,
        };
        let mut p = EventProgress::default();
        let (status, notes) = fold_step(&mut p, &[done(1), done(2)], 2, false, event);
        assert_eq!((status, notes.len()), (EventStatus::Complete, 0));
        let mut p = EventProgress::default();
        let (status, notes) = fold_step(&mut p, &[failed("x", INTERNAL_ERROR)], 1, false, event);
        assert_eq!((status, notes.len()), (EventStatus::Failed, 0));
        assert_eq!(p.failures, vec![(INTERNAL_ERROR, vec!["x".to_string()])]);
    }

    #[test]
    fn progress_keeps_error_numbers_as_apple_numbers_in_json() {
        let p = EventProgress {
            cursor: 1,
            failures: vec![(USER_NOT_FOUND, vec!["a".into()])],
            ..Default::default()
        };
        let json = serde_json::to_string(&p).unwrap();
        assert!(json.contains("[[9609,[\"a\"]]]"), "{json}");
        assert_eq!(serde_json::from_str::<EventProgress>(&json).unwrap(), p);
    }

    #[test]
    fn acceptance_follows_the_users_state_and_the_accounts_holder() {
        let registered = rec(7, "p", UserStatus::Registered, None);
        let other = rec(8, "q", UserStatus::Associated, Some("h"));
        assert_eq!(
            decide_accept(None, "h", false, None),
            AcceptOutcome::Unknown
        );
        assert_eq!(
            decide_accept(Some(registered.clone()), "h", false, Some(&other)),
            AcceptOutcome::AccountInUse
        );
        let AcceptOutcome::Associated(done) =
            decide_accept(Some(registered.clone()), "h", false, None)
        else {
            panic!("not associated")
        };
        // The change number is the store's to give (`UserTx`): left as read.
        assert_eq!((done.chg, done.status), (7, UserStatus::Associated));
        assert_eq!(done.id_hash.as_deref(), Some("h"));
        assert_eq!(
            decide_accept(
                Some(rec(9, "r", UserStatus::Associated, Some("x"))),
                "h",
                false,
                None
            ),
            AcceptOutcome::AlreadyAccepted
        );
        assert_eq!(
            decide_accept(
                Some(rec(9, "r", UserStatus::Retired, None)),
                "h",
                false,
                None
            ),
            AcceptOutcome::Retired
        );
        // An Apple Account that cannot be associated: 9635, the user left Registered.
        let refused = decide_accept(Some(registered.clone()), "h", true, None);
        assert_eq!(refused, AcceptOutcome::AccountRefused);
        assert_eq!(refused.apple_error().map(|e| e.number), Some(9635));
        assert_eq!(
            decide_accept(Some(registered), "h", false, Some(&other))
                .apple_error()
                .map(|e| e.number),
            Some(9641)
        );
    }

    #[test]
    fn an_apple_account_that_cannot_be_associated_fails_its_user_with_9635() {
        let mut snap = Snapshot::new(
            2,
            2,
            vec![rec(1, "a", UserStatus::Registered, None)],
            vec![],
        );
        let refused = |cuid, hash| UserOp {
            account_refused: true,
            ..op(cuid, hash)
        };
        // Create: an existing user is still 9716; without an Apple Account nothing is refused.
        let (outcomes, writes) = decide_step(
            EventType::Create,
            &[
                refused("new", Some("h")),
                refused("a", Some("h")),
                refused("plain", None),
            ],
            &mut snap,
        );
        assert_eq!(errors_of(&outcomes), vec![Some(9635), Some(9716), None]);
        assert_eq!(writes.inserts.len(), 1);
        // Update: the record is left as it was.
        let (outcomes, writes) =
            decide_step(EventType::Update, &[refused("a", Some("h"))], &mut snap);
        assert_eq!(errors_of(&outcomes), vec![Some(9635)]);
        assert!(writes.updates.is_empty());
        assert_eq!(snap.active["a"].status, UserStatus::Registered);
    }
}
