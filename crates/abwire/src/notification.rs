//! Notifications the Apps and Books service POSTs to an MDM's `notificationUrl`.

use crate::{ErrorResponse, ResponseUser};
use serde::{Deserialize, Serialize};

/// The envelope of every notification.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NotificationEnvelope {
    /// Type-specific payload.
    pub notification: serde_json::Value,
    /// Unique id; receivers de-duplicate on it.
    pub notification_id: String,
    /// `TEST_NOTIFICATION`, `USER_MANAGEMENT`, `USER_ASSOCIATED`, ...
    pub notification_type: String,
    /// Library id.
    pub u_id: String,
}

/// `USER_MANAGEMENT` payload.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UserManagementNotification {
    /// The event this reports on.
    pub event_id: String,
    /// `SUCCESS` or `FAILURE`.
    pub result: String,
    /// `CREATE`, `UPDATE` or `RETIRE`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Users (at most 100).
    #[serde(default)]
    pub users: Vec<ResponseUser>,
    /// On `FAILURE`: the one error, naming the users it hit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorResponse>,
}

/// `USER_ASSOCIATED` payload.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UserAssociatedNotification {
    /// The users who accepted.
    pub associated_users: Vec<ResponseUser>,
}

/// Notification type names.
pub mod types {
    /// Sent when notifications are configured.
    pub const TEST_NOTIFICATION: &str = "TEST_NOTIFICATION";
    /// Result of a create/update/retire event.
    pub const USER_MANAGEMENT: &str = "USER_MANAGEMENT";
    /// A person accepted an invitation.
    pub const USER_ASSOCIATED: &str = "USER_ASSOCIATED";
    /// Licences bought, transferred or refunded.
    pub const ASSET_COUNT: &str = "ASSET_COUNT";
    /// Result of an associate/disassociate/revoke event.
    pub const ASSET_MANAGEMENT: &str = "ASSET_MANAGEMENT";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apple_user_associated_example_parses() {
        let text = r#"{"notification":{"associatedUsers":[{"clientUserId":"client-100","email":"client-100@apple.com","idHash":"leSKk3IaE2vk2KLmv2k3/200D3=","inviteCode":"f551b37da07146628e8dcbe0111f0364","status":"Associated"}]},"notificationId":"90b83144-0000","notificationType":"USER_ASSOCIATED","uId":"2049025000431439"}"#;
        let env: NotificationEnvelope = serde_json::from_str(text).unwrap();
        let payload: UserAssociatedNotification = serde_json::from_value(env.notification).unwrap();
        assert_eq!(payload.associated_users[0].client_user_id, "client-100");
    }
}
