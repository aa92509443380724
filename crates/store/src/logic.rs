//! Backend-independent decisions that backends apply inside their transactions.

use crate::{EventType, UserOutcome};
use cloudvpp_abwire::notification::{types, NotificationEnvelope, UserManagementNotification};
use cloudvpp_abwire::{AppleError, ErrorInfo, ResponseUser};
use serde::{Deserialize, Serialize};

/// At most this many users in one notification (Apple: "at most 100 elements").
pub const MAX_USERS_PER_NOTIFICATION: usize = 100;

/// Progress of an event between steps, stored with the event.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EventProgress {
    /// Users applied or refused so far.
    pub cursor: usize,
    /// Users applied successfully.
    pub num_completed: i64,
    /// Error number → users, in the order met.
    pub failures: Vec<(u32, Vec<String>)>,
    /// Users applied since the last notification was queued.
    pub unreported: Vec<ResponseUser>,
}

/// What a step leads to.
#[derive(Debug, Default)]
pub struct StepResult {
    /// Notification envelopes to queue (JSON), only when subscribed.
    pub notifications: Vec<String>,
    /// `Some(COMPLETE|FAILED)` when the event is finished.
    pub final_status: Option<&'static str>,
}

/// Folds one step's outcomes into the progress. `total` is the number of users in the
/// event; `notify` whether the organisation subscribes to `USER_MANAGEMENT`.
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
    uid: &str,
    event_id: &str,
    event_type: EventType,
) -> StepResult {
    let mut result = StepResult::default();
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
            } => match progress.failures.iter_mut().find(|(n, _)| n == error) {
                Some((_, ids)) => ids.push(client_user_id.clone()),
                None => progress
                    .failures
                    .push((*error, vec![client_user_id.clone()])),
            },
        }
        if progress.unreported.len() >= MAX_USERS_PER_NOTIFICATION {
            let users = std::mem::take(&mut progress.unreported);
            result
                .notifications
                .push(user_management(uid, event_id, event_type, users, None));
        }
    }
    if progress.cursor >= total {
        if !progress.unreported.is_empty() {
            let users = std::mem::take(&mut progress.unreported);
            result
                .notifications
                .push(user_management(uid, event_id, event_type, users, None));
        }
        if notify {
            for (number, ids) in &progress.failures {
                for chunk in ids.chunks(MAX_USERS_PER_NOTIFICATION) {
                    let error = failure_response(*number, chunk.to_vec());
                    result.notifications.push(user_management(
                        uid,
                        event_id,
                        event_type,
                        Vec::new(),
                        Some(error),
                    ));
                }
            }
        }
        result.final_status = Some(if progress.failures.is_empty() {
            "COMPLETE"
        } else {
            "FAILED"
        });
    }
    result
}

/// An `ErrorResponse` naming the users an asynchronous error hit.
pub fn failure_response(
    number: u32,
    client_user_ids: Vec<String>,
) -> cloudvpp_abwire::ErrorResponse {
    let message = AppleError::by_number(number)
        .map(|e| e.message)
        .unwrap_or("Internal error.");
    cloudvpp_abwire::ErrorResponse {
        error_info: Some(ErrorInfo {
            client_user_ids: Some(client_user_ids),
        }),
        error_message: message.to_string(),
        error_number: number,
    }
}

fn user_management(
    uid: &str,
    event_id: &str,
    event_type: EventType,
    users: Vec<ResponseUser>,
    error: Option<cloudvpp_abwire::ErrorResponse>,
) -> String {
    let payload = UserManagementNotification {
        event_id: event_id.to_string(),
        result: if error.is_some() {
            "FAILURE"
        } else {
            "SUCCESS"
        }
        .to_string(),
        event_type: event_type.as_str().to_string(),
        users,
        error,
    };
    envelope(
        uid,
        types::USER_MANAGEMENT,
        serde_json::to_value(payload).expect("serialisable"),
    )
}

/// A `USER_ASSOCIATED` envelope.
pub fn user_associated(uid: &str, user: ResponseUser) -> String {
    let payload = cloudvpp_abwire::notification::UserAssociatedNotification {
        associated_users: vec![user],
    };
    envelope(
        uid,
        types::USER_ASSOCIATED,
        serde_json::to_value(payload).expect("serialisable"),
    )
}

/// Wraps a payload in Apple's envelope with a fresh `notificationId`.
pub fn envelope(uid: &str, kind: &str, notification: serde_json::Value) -> String {
    let env = NotificationEnvelope {
        notification,
        notification_id: random_uuid(),
        notification_type: kind.to_string(),
        u_id: uid.to_string(),
    };
    serde_json::to_string(&env).expect("serialisable")
}

/// A random UUID string, as Apple's ids look.
pub fn random_uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::UserRecord;
    use cloudvpp_abwire::UserStatus;

    fn done(i: usize) -> UserOutcome {
        UserOutcome::Done(UserRecord {
            ord: i as i64,
            chg: i as i64,
            client_user_id: format!("c{i}"),
            email: None,
            invite_code: Some("x".into()),
            id_hash: None,
            status: UserStatus::Registered,
        })
    }

    #[test]
    fn successes_split_by_hundred_and_failures_group_by_number() {
        let mut p = EventProgress::default();
        let mut outcomes: Vec<UserOutcome> = (0..150).map(done).collect();
        outcomes.push(UserOutcome::Failed {
            client_user_id: "a".into(),
            error: 9716,
        });
        outcomes.push(UserOutcome::Failed {
            client_user_id: "b".into(),
            error: 9641,
        });
        outcomes.push(UserOutcome::Failed {
            client_user_id: "c".into(),
            error: 9716,
        });
        let r = fold_step(
            &mut p,
            &outcomes[..120],
            153,
            true,
            "1",
            "e",
            EventType::Create,
        );
        assert_eq!(r.notifications.len(), 1);
        assert_eq!(r.final_status, None);
        let r = fold_step(
            &mut p,
            &outcomes[120..],
            153,
            true,
            "1",
            "e",
            EventType::Create,
        );
        assert_eq!(r.final_status, Some("FAILED"));
        // 50 remaining successes, then 9716 (a, c) and 9641 (b).
        assert_eq!(r.notifications.len(), 3);
        assert_eq!(p.num_completed, 150);
        assert_eq!(
            p.failures,
            vec![
                (9716, vec!["a".into(), "c".into()]),
                (9641, vec!["b".into()])
            ]
        );
        let last: serde_json::Value = serde_json::from_str(&r.notifications[1]).unwrap();
        assert_eq!(last["notification"]["result"], "FAILURE");
        assert_eq!(
            last["notification"]["error"]["errorInfo"]["clientUserIds"],
            serde_json::json!(["a", "c"])
        );
    }

    #[test]
    fn uuids_are_unique_and_shaped() {
        let a = random_uuid();
        let b = random_uuid();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
    }
}
