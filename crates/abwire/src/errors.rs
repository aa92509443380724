//! Apple's error numbers, their HTTP status and their message.
//!
//! Messages are the Service Config `errorCodes` strings where Apple lists one there, and
//! the "Handling error responses" text otherwise (`docs/apple-error-messages.md`).

use serde::{Deserialize, Serialize};

/// `ErrorResponse`: a synchronous error body, a `failures[]` entry, or a notification `error`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ErrorResponse {
    /// Request-specific detail, such as the users an asynchronous error hit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_info: Option<ErrorInfo>,
    /// Apple's message.
    pub error_message: String,
    /// Apple's number.
    pub error_number: u32,
}

/// `ResponseErrorInfo`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ErrorInfo {
    /// The assets concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assets: Option<Vec<crate::assets::AssetRef>>,
    /// The users concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_user_ids: Option<Vec<String>>,
    /// The devices concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_numbers: Option<Vec<String>>,
}

/// One of Apple's error numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppleError {
    /// `errorNumber`.
    pub number: u32,
    /// HTTP status when returned synchronously.
    pub http_status: u16,
    /// `errorMessage`.
    pub message: &'static str,
}

impl AppleError {
    /// The body Apple sends for this error.
    pub fn response(&self) -> ErrorResponse {
        ErrorResponse {
            error_info: None,
            error_message: self.message.to_string(),
            error_number: self.number,
        }
    }

    /// Looks an error up by number.
    pub fn by_number(number: u32) -> Option<AppleError> {
        ALL.iter().copied().find(|e| e.number == number)
    }
}

/// Stored and sent as its number; a number this service does not know does not read back.
impl Serialize for AppleError {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.number)
    }
}

impl<'de> Deserialize<'de> for AppleError {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let number = u32::deserialize(d)?;
        AppleError::by_number(number)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown Apple error number {number}")))
    }
}

macro_rules! apple_errors {
    ($($name:ident = $num:literal, $status:literal, $msg:literal;)*) => {
        $(
            #[doc = $msg]
            pub const $name: AppleError = AppleError { number: $num, http_status: $status, message: $msg };
        )*
        /// Every error this service knows, in number order.
        pub const ALL: &[AppleError] = &[$($name),*];
    };
}

apple_errors! {
    LOGIN_REQUIRED = 9601, 401, "Login required.";
    INVALID_ARGUMENT = 9602, 400, "Invalid argument.";
    INTERNAL_ERROR = 9603, 500, "Internal error.";
    USER_NOT_FOUND = 9609, 400, "Unable to find the registered user.";
    TOKEN_EXPIRED = 9621, 401, "The token has expired. You need to generate a new token online using your organization's account at either school.apple.com or business.apple.com.";
    TOKEN_REVOKED = 9625, 401, "The server has revoked the sToken.";
    SERVICE_REMOVED = 9634, 410, "Service removed.";
    APPLE_ACCOUNT_CANNOT_ASSOCIATE = 9635, 400, "Unable to associate the Apple Account with this user.";
    APPLE_ACCOUNT_ALREADY_ASSOCIATED = 9641, 400, "The Apple Account is already associated with another user.";
    MAINTENANCE = 9644, 503, "The service is in maintenance mode. Try again later.";
    TOO_MANY_REQUESTS = 9646, 429, "There are too many recent requests. Try again momentarily.";
    PAGE_INDEX_OUT_OF_RANGE = 9650, 400, "The provided page index must be greater than 0, and less than the total number of pages.";
    TOO_MANY_ASSETS = 9700, 400, "Max assets limit on request has been passed, please stay within given limit.";
    TOO_MANY_CLIENT_USER_IDS = 9701, 400, "Max clientUserIds limit on request has been passed, please stay within given limit.";
    TOO_MANY_SERIAL_NUMBERS = 9702, 400, "Max serialNumbers limit on request has been passed, please stay within given limit.";
    DUPLICATE_ASSETS = 9703, 400, "Duplicate assets found in request, please send unique assets.";
    DUPLICATE_CLIENT_USER_IDS = 9704, 400, "Duplicate clientUserIds found in request, please send unique clients.";
    DUPLICATE_SERIAL_NUMBERS = 9705, 400, "Duplicate serialNumbers found in request, please send unique serials.";
    ASSET_NOT_REVOCABLE = 9706, 400, "Asset in request is not revocable, please send revocable assets.";
    ASSET_NOT_DEVICE_ASSIGNABLE = 9707, 400, "Asset in request is not device assignable, please send device assignable assets.";
    EVENT_NOT_FOUND = 9708, 400, "EventId could not be found.";
    NOT_ENOUGH_LICENSES = 9709, 400, "There are not enough licenses for this app or book available to assign to the selected group.";
    NOTIFICATION_URL_AND_TOKEN_REQUIRED = 9710, 400, "Both the notification URL and the authentication token are necessary.";
    NOTIFICATION_TOO_LONG = 9711, 400, "Either the notification URL or the authentication token exceeds its maximum length. Change the request to stay within the specified limit.";
    NOTIFICATION_URL_NOT_HTTPS = 9712, 400, "The provided notification URL must be a valid URL and use HTTPS as the protocol.";
    MDM_METADATA_TOO_LONG = 9713, 400, "The MDM metadata exceeds the maximum length. Change the request to stay within the specified limit.";
    TOO_MANY_USERS = 9714, 400, "The number of users exceeds the maximum. Change the request to stay within the specified limit.";
    DUPLICATE_USERS = 9715, 400, "This request contains duplicate users. Change the request to send unique users.";
    USER_ALREADY_EXISTS = 9716, 400, "A registered user already exists with the specified clientUserId.";
    INVALID_EMAIL = 9717, 400, "This request contains an invalid email address. Change the request to send valid email addresses.";
    ASSET_REQUIRED = 9718, 400, "This request doesn't contain an asset, which is a required argument. Change the request to provide an asset.";
    USERS_OR_SERIALS_REQUIRED = 9719, 400, "Either clientUserIds or serialNumbers are required arguments. Change the request to provide assignable users and devices.";
    USERS_REQUIRED = 9720, 400, "Users are a required argument. Change the request to provide a user.";
    INVALID_VERSION_ID = 9721, 400, "This request contains an invalid version ID. Change the request to send the version ID from the read APIs.";
    INVALID_AUTHORIZATION_HEADER = 9722, 401, "This request contains an invalid authorization header. Change the request to send an authorization header that matches the format 'Bearer {sToken}'.";
    MDM_INFO_INCOMPLETE = 9723, 400, "You must provide an MDM name, ID, and metadata when setting the MDM information.";
    MDM_ID_TOO_LONG = 9724, 400, "The MDM ID exceeds the maximum length. Change the request to stay within the specified limit.";
    MDM_NAME_TOO_LONG = 9725, 400, "The MDM name exceeds the maximum length. Change the request to stay within the specified limit.";
    UNSUPPORTED_METHOD = 9726, 405, "This request contains an unsupported HTTP method for the requested endpoint.";
    UNSUPPORTED_CONTENT_TYPE = 9727, 415, "This request contains an unsupported Content-Type for the requested endpoint.";
    NOTIFICATION_URL_UNREACHABLE = 9728, 400, "The provided notification URL is unreachable.";
    SERVICE_UNAVAILABLE = 9729, 503, "The service is temporarily unavailable. Try again later.";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_unique_and_sorted() {
        for pair in ALL.windows(2) {
            assert!(pair[0].number < pair[1].number, "{:?}", pair);
        }
        assert_eq!(AppleError::by_number(9646).unwrap().http_status, 429);
        assert_eq!(AppleError::by_number(1), None);
    }

    #[test]
    fn errors_serialise_as_their_number_and_unknown_numbers_do_not_read() {
        assert_eq!(serde_json::to_string(&USER_NOT_FOUND).unwrap(), "9609");
        assert_eq!(
            serde_json::from_str::<AppleError>("9609").unwrap(),
            USER_NOT_FOUND
        );
        assert!(serde_json::from_str::<AppleError>("1234").is_err());
    }

    #[test]
    fn error_body_has_apple_field_names() {
        let v = serde_json::to_value(UNSUPPORTED_METHOD.response()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"errorNumber": 9726, "errorMessage": "This request contains an unsupported HTTP method for the requested endpoint."})
        );
    }
}
