//! The Apps and Books request bodies the services deserialise: users create/update/retire
//! (`ManageUsersRequest`, and its `users` array read from a `serde_json::Value` as
//! `validate_manage_request` does), client config (`ClientConfigRequest`), and the
//! notifications the MDM side receives (`NotificationEnvelope` and its payloads).
#![no_main]

use cloudvpp_abwire::notification::{
    NotificationEnvelope, UserAssociatedNotification, UserManagementNotification,
};
use cloudvpp_abwire::{ClientConfigRequest, ManageUsersRequest, RequestUser};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<ManageUsersRequest>(data) {
        // What the client sends must read back the same.
        let again: ManageUsersRequest =
            serde_json::from_slice(&serde_json::to_vec(&req).unwrap()).unwrap();
        assert_eq!(req, again);
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Some(users) = v.get("users") {
            let _ = serde_json::from_value::<Vec<RequestUser>>(users.clone());
        }
    }
    if let Ok(req) = serde_json::from_slice::<ClientConfigRequest>(data) {
        let again: ClientConfigRequest =
            serde_json::from_slice(&serde_json::to_vec(&req).unwrap()).unwrap();
        assert_eq!(req, again);
    }
    if let Ok(env) = serde_json::from_slice::<NotificationEnvelope>(data) {
        let _ = serde_json::from_value::<UserManagementNotification>(env.notification.clone());
        let _ = serde_json::from_value::<UserAssociatedNotification>(env.notification);
    }
});
