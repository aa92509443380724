//! Wire types of Apple's App and Book Management API v2 (`/mdm/v2`), shared by the
//! cloudvpp Apps and Books service and its client.
//!
//! Field names follow Apple's JSON exactly (`camelCase`), optional fields are omitted
//! when absent, and [`errors`] holds Apple's error numbers with their HTTP status and
//! message, taken from Apple's Service Config example (see `docs/apple-error-messages.md`).

pub mod assets;
pub mod errors;
pub mod limits;
pub mod notification;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub use errors::{AppleError, ErrorInfo, ErrorResponse};

/// The decoded content of an sToken: the `.vpptoken` file is base64 of this JSON.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct STokenContent {
    /// Unique identifier for the organisational unit.
    pub token: String,
    /// Expiry, `2030-11-08T22:33:22+0000` style.
    #[serde(rename = "expDate")]
    pub exp_date: String,
    /// Organisation name.
    #[serde(rename = "orgName")]
    pub org_name: String,
}

/// `MdmInfo`: claims a location for one MDM.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct MdmInfo {
    /// Unique identifier the MDM uses for the organisation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Name of the MDM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Free-form metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<String>,
}

/// Metadata carried by every authenticated response.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ResponseMeta {
    /// Unique library identifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub u_id: Option<String>,
    /// Token expiry, UTC, `+0000` offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_expiration_date: Option<String>,
    /// Present once an MDM set it with client config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mdm_info: Option<MdmInfo>,
}

/// `RequestUser` in a `ManageUsersRequest`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RequestUser {
    /// The MDM's own identifier for the person.
    pub client_user_id: String,
    /// Email address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Managed Apple Account: associates the user at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_apple_id: Option<String>,
}

/// Body of `users/create`, `users/update` and `users/retire`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ManageUsersRequest {
    /// The users to act on.
    pub users: Vec<RequestUser>,
}

/// User states as Apple names them.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub enum UserStatus {
    /// Created, no Apple Account yet; carries an `inviteCode`.
    Registered,
    /// Has an Apple Account; carries an `idHash`.
    Associated,
    /// Retired by the MDM.
    Retired,
    /// Legacy state; never produced by cloudvpp but accepted when read.
    Deleted,
}

impl UserStatus {
    /// Apple's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            UserStatus::Registered => "Registered",
            UserStatus::Associated => "Associated",
            UserStatus::Retired => "Retired",
            UserStatus::Deleted => "Deleted",
        }
    }

    /// Parses Apple's spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "Registered" => UserStatus::Registered,
            "Associated" => UserStatus::Associated,
            "Retired" => UserStatus::Retired,
            "Deleted" => UserStatus::Deleted,
            _ => return None,
        })
    }
}

/// `ResponseUser`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResponseUser {
    /// The MDM's identifier.
    pub client_user_id: String,
    /// Email address, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Hash of the associated Apple Account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_hash: Option<String>,
    /// Invitation code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invite_code: Option<String>,
    /// Current state.
    pub status: UserStatus,
}

/// `GetUsersResponse`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GetUsersResponse {
    /// Zero-based index of this page.
    pub current_page_index: u32,
    /// Next page, absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_index: Option<u32>,
    /// Number of users on this page.
    pub size: u32,
    /// Number of pages.
    pub total_pages: u32,
    /// The users.
    #[serde(default)]
    pub users: Vec<ResponseUser>,
    /// Version of the whole data set, for `sinceVersionId`.
    pub version_id: String,
    /// Common metadata.
    #[serde(flatten)]
    pub meta: ResponseMeta,
}

/// `EventResponse`: answer to an asynchronous write.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EventResponse {
    /// Identifier to poll with `GET status`.
    pub event_id: String,
    /// Common metadata.
    #[serde(flatten)]
    pub meta: ResponseMeta,
}

/// `StatusResponse`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StatusResponse {
    /// `PENDING`, `COMPLETE` or `FAILED`.
    pub event_status: String,
    /// `CREATE`, `UPDATE`, `RETIRE`, ...
    pub event_type: String,
    /// Tasks completed successfully so far.
    pub num_completed: u32,
    /// Tasks requested.
    pub num_requested: u32,
    /// One entry per error number, naming the users it hit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<ErrorResponse>,
    /// Common metadata.
    #[serde(flatten)]
    pub meta: ResponseMeta,
}

/// Apple's `errorCodes` entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResponseErrorCode {
    /// Message.
    pub error_message: String,
    /// Number.
    pub error_number: u32,
}

/// `ServiceConfigResponse`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceConfigResponse {
    /// Error numbers and messages.
    #[serde(default)]
    pub error_codes: Vec<ResponseErrorCode>,
    /// Dynamic limits (`maxUsers`, `maxRequestPerSecond`, ...).
    #[serde(default)]
    pub limits: BTreeMap<String, i64>,
    /// Notification types the service can send.
    #[serde(default)]
    pub notification_types: Vec<String>,
    /// Endpoint URLs by name, including the `invitationEmail` template.
    #[serde(default)]
    pub urls: BTreeMap<String, String>,
}

/// `ClientConfigRequest`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ClientConfigRequest {
    /// Claims the location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mdm_info: Option<MdmInfo>,
    /// HTTPS URL that receives notifications.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification_url: Option<String>,
    /// Bearer secret sent with every notification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification_auth_token: Option<String>,
    /// The complete set of subscribed types (replaces the previous set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification_types: Option<Vec<String>>,
}

/// `ClientConfigResponse`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClientConfigResponse {
    /// Country code of the location.
    #[serde(rename = "countryISO2ACode")]
    pub country_iso2a_code: String,
    /// `volumestore` or `enterprisestore`.
    pub default_platform: String,
    /// Name of the location.
    pub location_name: String,
    /// Current notification secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification_auth_token: Option<String>,
    /// Current notification URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification_url: Option<String>,
    /// Current subscription.
    #[serde(default)]
    pub subscribed_notification_types: Vec<String>,
    /// `https://business.apple.com` or `https://school.apple.com`.
    #[serde(rename = "websiteURL")]
    pub website_url: String,
    /// Common metadata.
    #[serde(flatten)]
    pub meta: ResponseMeta,
}

/// The notification types a client may subscribe to.
pub const SUBSCRIBABLE_NOTIFICATION_TYPES: &[&str] = &[
    "TEST_NOTIFICATION",
    "ASSET_MANAGEMENT",
    "USER_MANAGEMENT",
    "USER_ASSOCIATED",
    "ASSET_COUNT",
    "SUBSCRIPTION_MANAGEMENT",
    "SUBSCRIPTION_COUNT",
    "UNLIMITED_ASSET",
];

/// The placeholder Apple puts in `urls.invitationEmail`.
pub const INVITE_CODE_PLACEHOLDER: &str = "%25inviteCode%25";

/// Fills Apple's invitation template with an invite code. Accepts both the encoded
/// (`%25inviteCode%25`, v2) and the decoded (`%inviteCode%`, v1-era) placeholder.
pub fn invitation_url(template: &str, invite_code: &str) -> Option<String> {
    if template.contains(INVITE_CODE_PLACEHOLDER) {
        Some(template.replace(INVITE_CODE_PLACEHOLDER, invite_code))
    } else if template.contains("%inviteCode%") {
        Some(template.replace("%inviteCode%", invite_code))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Get Users example of the managing-users seed document round-trips.
    #[test]
    fn seed_get_users_example_round_trips() {
        let text = r#"{
            "currentPageIndex": 0, "size": 3, "tokenExpirationDate": "2030-11-08T22:33:22+0000",
            "totalPages": 1, "uId": "2049025000431439",
            "users": [
                {"clientUserId": "client-101", "email": "client-101@apple.com", "inviteCode": "46bc93ea3acd41e0a4919c02db0d7d3a", "status": "Registered"},
                {"clientUserId": "client-102", "email": "client-102@apple.com", "inviteCode": "d2ab1319ff6448f89bb1b0e010cf68e0", "status": "Registered"},
                {"clientUserId": "client-103", "email": "client-1031@apple.com", "status": "Retired"}
            ],
            "versionId": "021f10a0-7035-11eb-9f67-bd1df52e1e13"}"#;
        let parsed: GetUsersResponse = serde_json::from_str(text).unwrap();
        assert_eq!(parsed.users.len(), 3);
        assert_eq!(parsed.users[2].status, UserStatus::Retired);
        assert_eq!(parsed.next_page_index, None);
        assert_eq!(parsed.meta.u_id.as_deref(), Some("2049025000431439"));
        let back: serde_json::Value = serde_json::to_value(&parsed).unwrap();
        let orig: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(back, orig);
    }

    #[test]
    fn status_example_round_trips() {
        let text = r#"{"eventStatus":"PENDING","eventType":"CREATE","numCompleted":1,"numRequested":2,
            "tokenExpirationDate":"2030-11-08T22:33:22+0000","uId":"2049025000431439"}"#;
        let parsed: StatusResponse = serde_json::from_str(text).unwrap();
        let back = serde_json::to_value(&parsed).unwrap();
        assert_eq!(
            back,
            serde_json::from_str::<serde_json::Value>(text).unwrap()
        );
    }

    #[test]
    fn invitation_template_is_filled() {
        let t = "https://buy.itunes.apple.com/WebObjects/MZFinance.woa/wa/associateVPPUserWithITSAccount?inviteCode=%25inviteCode%25&mt=8";
        assert_eq!(
            invitation_url(t, "abc").unwrap(),
            "https://buy.itunes.apple.com/WebObjects/MZFinance.woa/wa/associateVPPUserWithITSAccount?inviteCode=abc&mt=8"
        );
        assert_eq!(invitation_url("x?c=%inviteCode%", "q").unwrap(), "x?c=q");
        assert_eq!(invitation_url("nothing", "q"), None);
    }
}
