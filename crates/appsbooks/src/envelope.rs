//! Apple's notification envelopes and asynchronous error bodies, as the service sends them.

use cloudvpp_abwire::notification::{types, NotificationEnvelope, UserManagementNotification};
use cloudvpp_abwire::{AppleError, ErrorInfo, ErrorResponse, ResponseUser};
use cloudvpp_store::EventType;

/// An `ErrorResponse` naming the users an asynchronous error hit.
pub fn failure_response(error: AppleError, client_user_ids: Vec<String>) -> ErrorResponse {
    ErrorResponse {
        error_info: Some(ErrorInfo {
            client_user_ids: Some(client_user_ids),
            ..ErrorInfo::default()
        }),
        ..error.response()
    }
}

/// A `USER_MANAGEMENT` envelope: users applied (`SUCCESS`), or the users one error hit
/// (`FAILURE`).
pub fn user_management(
    uid: &str,
    event_id: &str,
    event_type: EventType,
    users: Vec<ResponseUser>,
    error: Option<ErrorResponse>,
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
        notification_id: uuid::Uuid::new_v4().to_string(),
        notification_type: kind.to_string(),
        u_id: uid.to_string(),
    };
    serde_json::to_string(&env).expect("serialisable")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_have_apple_field_names_and_fresh_ids() {
        let a: serde_json::Value = serde_json::from_str(&envelope(
            "12",
            types::TEST_NOTIFICATION,
            serde_json::json!({}),
        ))
        .unwrap();
        let b: serde_json::Value = serde_json::from_str(&envelope(
            "12",
            types::TEST_NOTIFICATION,
            serde_json::json!({}),
        ))
        .unwrap();
        assert_eq!(a["uId"], "12");
        assert_eq!(a["notificationType"], "TEST_NOTIFICATION");
        assert_ne!(a["notificationId"], b["notificationId"]);
        assert_eq!(a["notificationId"].as_str().unwrap().len(), 36);
    }

    #[test]
    fn a_failure_names_its_users_with_apples_message() {
        let v = serde_json::to_value(failure_response(
            cloudvpp_abwire::errors::USER_NOT_FOUND,
            vec!["a".into()],
        ))
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"errorInfo": {"clientUserIds": ["a"]}, "errorMessage": "Unable to find the registered user.", "errorNumber": 9609})
        );
    }
}
