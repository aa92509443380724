//! Content: assets (apps and books an organisation owns licences of) and their
//! assignments, as Apple's v2 API spells them.

use crate::ResponseMeta;
use serde::{Deserialize, Serialize};

/// `pricingParam`: the licence's quality.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PricingParam {
    /// Standard quality.
    #[serde(rename = "STDQ")]
    Stdq,
    /// High quality (books).
    #[serde(rename = "PLUS")]
    Plus,
}

impl PricingParam {
    /// Apple's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PricingParam::Stdq => "STDQ",
            PricingParam::Plus => "PLUS",
        }
    }
    /// Parses Apple's spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "STDQ" => PricingParam::Stdq,
            "PLUS" => PricingParam::Plus,
            _ => return None,
        })
    }
}

/// `productType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ProductType {
    /// An app.
    App,
    /// A book.
    Book,
}

impl ProductType {
    /// Apple's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ProductType::App => "App",
            ProductType::Book => "Book",
        }
    }
    /// Parses Apple's spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "App" => ProductType::App,
            "Book" => ProductType::Book,
            _ => return None,
        })
    }
}

/// The platforms Apple lists in `supportedPlatforms`.
pub const PLATFORMS: &[&str] = &["iOS", "macOS", "tvOS", "watchOS", "visionOS"];

/// `ResponseAsset`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResponseAsset {
    /// The App Store ID.
    pub adam_id: String,
    /// Licences assigned.
    pub assigned_count: i64,
    /// Licences free to assign.
    pub available_count: i64,
    /// Whether it can be assigned to a device serial number.
    pub device_assignable: bool,
    /// Quality.
    pub pricing_param: PricingParam,
    /// App or book.
    pub product_type: ProductType,
    /// Licences of retired users, kept (books are never revoked).
    pub retired_count: i64,
    /// Whether an assignment can be taken back.
    pub revocable: bool,
    /// Licences owned.
    pub total_count: i64,
    /// Platforms it runs on.
    pub supported_platforms: Vec<String>,
}

/// `GetAssetsResponse`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GetAssetsResponse {
    /// The assets of this page.
    #[serde(default)]
    pub assets: Vec<ResponseAsset>,
    /// Zero-based index of this page.
    pub current_page_index: u32,
    /// Next page, absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_index: Option<u32>,
    /// Number of assets on this page.
    pub size: u32,
    /// Number of pages.
    pub total_pages: u32,
    /// Version of the whole data set (Get Assets takes no `sinceVersionId`).
    pub version_id: String,
    /// Common metadata.
    #[serde(flatten)]
    pub meta: ResponseMeta,
}

/// `ASSET_COUNT`: licences bought, transferred or refunded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AssetCountNotification {
    /// The App Store ID.
    pub adam_id: String,
    /// Licences added (negative: taken away).
    pub count_delta: i64,
    /// Quality.
    pub pricing_param: PricingParam,
}

/// `Asset` of a manage request: which app or book. Apple's examples sometimes omit
/// `pricingParam`; the service then takes `STDQ` (docs/appsbooks-behaviour.md).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct AssetRef {
    /// The App Store ID.
    pub adam_id: String,
    /// Quality.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing_param: Option<PricingParam>,
}

/// `ManageAssetsRequest`: the body of `assets/associate` and `assets/disassociate`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ManageAssetsRequest {
    /// The apps and books.
    #[serde(default)]
    pub assets: Vec<AssetRef>,
    /// Users, by the MDM's identifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_user_ids: Option<Vec<String>>,
    /// Devices, by serial number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_numbers: Option<Vec<String>>,
}

/// `RevokeAssetsRequest`: the body of `assets/revoke`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RevokeAssetsRequest {
    /// Users whose revocable assets are taken back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_user_ids: Option<Vec<String>>,
    /// Devices whose revocable assets are taken back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_numbers: Option<Vec<String>>,
}

/// One assignment: an app or book given to a user or a device. With `includeUserState`, a
/// user's assignment also carries the user's `userStatus` and `idHash`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    /// The App Store ID.
    pub adam_id: String,
    /// Quality.
    pub pricing_param: PricingParam,
    /// The user, for a user assignment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_user_id: Option<String>,
    /// The device, for a device assignment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    /// The user's state (`includeUserState`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_status: Option<crate::UserStatus>,
    /// The user's Apple Account hash once associated (`includeUserState`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_hash: Option<String>,
}

/// `GetAssignmentsResponse`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GetAssignmentsResponse {
    /// The assignments of this page.
    #[serde(default)]
    pub assignments: Vec<Assignment>,
    /// Zero-based index of this page.
    pub current_page_index: u32,
    /// Next page, absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_index: Option<u32>,
    /// Number of assignments on this page.
    pub size: u32,
    /// Number of pages.
    pub total_pages: u32,
    /// Version of the whole data set: the next `sinceVersionId`.
    pub version_id: String,
    /// Common metadata.
    #[serde(flatten)]
    pub meta: ResponseMeta,
}

/// `ASSET_MANAGEMENT`: result of an associate, disassociate or revoke event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AssetManagementNotification {
    /// The assignments made or taken back (at most 100).
    #[serde(default)]
    pub assignments: Vec<Assignment>,
    /// The event this reports on.
    pub event_id: String,
    /// `SUCCESS` or `FAILURE`.
    pub result: String,
    /// `ASSOCIATE`, `DISASSOCIATE` or `REVOKE`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// On `FAILURE`: the one error, naming what it hit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<crate::ErrorResponse>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_have_apple_field_names() {
        let a = ResponseAsset {
            adam_id: "408709785".into(),
            assigned_count: 1,
            available_count: 9,
            device_assignable: true,
            pricing_param: PricingParam::Stdq,
            product_type: ProductType::App,
            retired_count: 0,
            revocable: true,
            total_count: 10,
            supported_platforms: vec!["iOS".into()],
        };
        assert_eq!(
            serde_json::to_value(&a).unwrap(),
            serde_json::json!({"adamId": "408709785", "assignedCount": 1, "availableCount": 9,
                "deviceAssignable": true, "pricingParam": "STDQ", "productType": "App",
                "retiredCount": 0, "revocable": true, "totalCount": 10, "supportedPlatforms": ["iOS"]})
        );
        assert_eq!(PricingParam::parse("PLUS"), Some(PricingParam::Plus));
        assert_eq!(ProductType::parse("Movie"), None);
    }

    #[test]
    fn manage_requests_read_apples_examples() {
        // Apple's example: both kinds of target, one asset without pricingParam.
        let r: ManageAssetsRequest = serde_json::from_str(
            r#"{"assets":[{"adamId":"408709785","pricingParam":"STDQ"},{"adamId":"361309726"}],"clientUserIds":["a"],"serialNumbers":["C02X"]}"#,
        )
        .unwrap();
        assert_eq!(r.assets[1].pricing_param, None);
        assert_eq!(r.serial_numbers.as_deref(), Some(&["C02X".to_string()][..]));
        let a = Assignment {
            adam_id: "1".into(),
            pricing_param: PricingParam::Stdq,
            client_user_id: Some("u".into()),
            serial_number: None,
            user_status: None,
            id_hash: None,
        };
        assert_eq!(
            serde_json::to_value(&a).unwrap(),
            serde_json::json!({"adamId": "1", "pricingParam": "STDQ", "clientUserId": "u"})
        );
    }
}
