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
}
