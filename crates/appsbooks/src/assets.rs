//! Content an organisation owns: purchases and refunds of licences (recorded by the
//! operator, as Apple Business or School Manager would), `ASSET_COUNT` notifications, and
//! `GET /mdm/v2/assets` with Apple's filters and pages.
//!
//! The rules are pure functions ([`purchase`], [`AssetFilter::matches`]); the handler and
//! [`record_purchase`] read and write through the store's organisation transaction.

use crate::auth::OrgContext;
use crate::envelope::envelope;
use crate::error::{ApiError, ApiResult};
use crate::ids::encode_version;
use crate::AppState;
use axum::extract::{Query, State};
use axum::Json;
use cloudvpp_abwire::assets::{
    AssetCountNotification, GetAssetsResponse, PricingParam, ProductType, PLATFORMS,
};
use cloudvpp_abwire::errors;
use cloudvpp_abwire::notification::types::ASSET_COUNT;
use cloudvpp_store::{AppsBooksStore, AssetRecord, Org, StoreError};
use std::collections::HashMap;

/// A few well-known App Store items, so that demos show real apps: adamId, name, product
/// type, platforms. Any other adamId is accepted as given.
pub const CATALOGUE: &[(&str, &str, ProductType, &[&str])] = &[
    ("361309726", "Pages", ProductType::App, &["iOS", "macOS"]),
    ("361285480", "Keynote", ProductType::App, &["iOS", "macOS"]),
    ("361304891", "Numbers", ProductType::App, &["iOS", "macOS"]),
    ("377298193", "iMovie", ProductType::App, &["iOS", "macOS"]),
    (
        "408709785",
        "GarageBand",
        ProductType::App,
        &["iOS", "macOS"],
    ),
    (
        "908519492",
        "Swift Playgrounds",
        ProductType::App,
        &["iOS", "macOS"],
    ),
    ("586447913", "Microsoft Word", ProductType::App, &["iOS"]),
    ("586683407", "Microsoft Excel", ProductType::App, &["iOS"]),
    (
        "586449534",
        "Microsoft PowerPoint",
        ProductType::App,
        &["iOS"],
    ),
    ("469863705", "Khan Academy", ProductType::App, &["iOS"]),
    ("570060128", "Duolingo", ProductType::App, &["iOS"]),
    (
        "360593530",
        "Notability",
        ProductType::App,
        &["iOS", "macOS"],
    ),
];

/// The catalogue's name of `adam_id`, if it has one.
pub fn catalogue_name(adam_id: &str) -> Option<&'static str> {
    CATALOGUE
        .iter()
        .find(|(id, ..)| *id == adam_id)
        .map(|(_, name, ..)| *name)
}

/// Whether `adam_id` can be an App Store ID: digits, at most 20 of them.
pub fn valid_adam_id(adam_id: &str) -> bool {
    !adam_id.is_empty() && adam_id.len() <= 20 && adam_id.bytes().all(|b| b.is_ascii_digit())
}

/// A purchase (positive count) or refund (negative) of licences, as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct Purchase {
    /// The App Store ID (digits).
    pub adam_id: String,
    /// Licences bought (negative: refunded).
    pub count: i64,
    /// Quality.
    pub pricing_param: PricingParam,
    /// App or book; default: the catalogue's, else App.
    pub product_type: Option<ProductType>,
    /// Platforms; default: the catalogue's, else iOS.
    pub platforms: Option<Vec<String>>,
    /// Default: apps yes, books no (books are never device-assignable).
    pub device_assignable: Option<bool>,
    /// Default: apps yes, books no (book licences are never taken back).
    pub revocable: Option<bool>,
}

/// Why a purchase cannot be recorded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PurchaseError {
    /// The adamId is not an App Store ID.
    #[error("adamId {0:?} is not an App Store ID (digits only)")]
    BadAdamId(String),
    /// Nothing bought.
    #[error("the count must not be zero")]
    ZeroCount,
    /// An unknown platform name.
    #[error("unknown platform {0:?}; Apple's are {known}", known = PLATFORMS.join(", "))]
    BadPlatform(String),
    /// A book made device-assignable or revocable.
    #[error("books are neither device-assignable nor revocable")]
    BookRules,
    /// A refund of licences that are assigned or not owned.
    #[error("only {available} licences are free to refund ({assigned} assigned)")]
    RefundTooLarge {
        /// Free licences.
        available: i64,
        /// Assigned licences.
        assigned: i64,
    },
    /// A refund of an asset never bought.
    #[error("there is nothing to refund: the organisation owns no licence of it")]
    NothingToRefund,
    /// The total would leave the range Apple's 32-bit counts allow.
    #[error("the total would exceed 2147483646 licences")]
    TooMany,
}

/// The asset after `p`, given the organisation's record of it (`None`: first purchase).
/// Properties given with a later purchase replace the stored ones.
pub fn purchase(
    existing: Option<&AssetRecord>,
    p: &Purchase,
) -> Result<AssetRecord, PurchaseError> {
    if !valid_adam_id(&p.adam_id) {
        return Err(PurchaseError::BadAdamId(p.adam_id.clone()));
    }
    if p.count == 0 {
        return Err(PurchaseError::ZeroCount);
    }
    let known = CATALOGUE.iter().find(|(id, ..)| *id == p.adam_id);
    let product_type = p
        .product_type
        .or(existing.map(|e| e.product_type))
        .or(known.map(|k| k.2))
        .unwrap_or(ProductType::App);
    let platforms = match &p.platforms {
        Some(list) => {
            if let Some(bad) = list.iter().find(|x| !PLATFORMS.contains(&x.as_str())) {
                return Err(PurchaseError::BadPlatform(bad.clone()));
            }
            list.clone()
        }
        None => existing
            .map(|e| e.supported_platforms.clone())
            .or(known.map(|k| k.3.iter().map(|s| s.to_string()).collect()))
            .unwrap_or_else(|| vec!["iOS".to_string()]),
    };
    let is_app = product_type == ProductType::App;
    let device_assignable = p
        .device_assignable
        .or(existing.map(|e| e.device_assignable))
        .unwrap_or(is_app);
    let revocable = p
        .revocable
        .or(existing.map(|e| e.revocable))
        .unwrap_or(is_app);
    if !is_app && (device_assignable || revocable) {
        return Err(PurchaseError::BookRules);
    }
    let (total, assigned, retired) = existing
        .map(|e| (e.total_count, e.assigned_count, e.retired_count))
        .unwrap_or((0, 0, 0));
    if p.count < 0 {
        if existing.is_none() {
            return Err(PurchaseError::NothingToRefund);
        }
        if -p.count > total - assigned {
            return Err(PurchaseError::RefundTooLarge {
                available: total - assigned,
                assigned,
            });
        }
    }
    let total_count = total
        .checked_add(p.count)
        .filter(|t| *t < i64::from(i32::MAX))
        .ok_or(PurchaseError::TooMany)?;
    Ok(AssetRecord {
        adam_id: p.adam_id.clone(),
        pricing_param: p.pricing_param,
        product_type,
        supported_platforms: platforms,
        device_assignable,
        revocable,
        total_count,
        assigned_count: assigned,
        retired_count: retired,
    })
}

/// A purchase that could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The purchase breaks a rule.
    #[error(transparent)]
    Refused(#[from] PurchaseError),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Records `p` for `org` in one transaction: the asset, the assets' version and, when the
/// organisation subscribes to it, an `ASSET_COUNT` notification. Returns the asset as it
/// now is.
pub async fn record_purchase(
    store: &dyn AppsBooksStore,
    org: &Org,
    p: &Purchase,
    now: i64,
) -> Result<AssetRecord, RecordError> {
    let mut tx = store.begin_org_write(org.id).await?;
    let existing = tx
        .assets(&[(p.adam_id.as_str(), p.pricing_param)])
        .await?
        .pop();
    let asset = match purchase(existing.as_ref(), p) {
        Ok(a) => a,
        Err(e) => {
            tx.rollback().await?;
            return Err(e.into());
        }
    };
    let version = tx.org().asset_chg + 1;
    tx.put_assets(std::slice::from_ref(&asset), version).await?;
    let locked = tx.org().clone();
    if locked.config.subscribed(ASSET_COUNT) {
        let body = envelope(
            &locked.uid,
            ASSET_COUNT,
            serde_json::to_value(AssetCountNotification {
                adam_id: asset.adam_id.clone(),
                count_delta: p.count,
                pricing_param: asset.pricing_param,
            })
            .expect("serialisable"),
        );
        tx.enqueue_notifications(ASSET_COUNT, &[body], now).await?;
    }
    tx.commit().await?;
    Ok(asset)
}

/// Get Assets' filters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AssetFilter {
    /// `adamId`.
    pub adam_id: Option<String>,
    /// `pricingParam`.
    pub pricing_param: Option<PricingParam>,
    /// `productType`.
    pub product_type: Option<ProductType>,
    /// `revocable`.
    pub revocable: Option<bool>,
    /// `deviceAssignable`.
    pub device_assignable: Option<bool>,
    /// `minAvailableCount`, `maxAvailableCount` (inclusive).
    pub available: (Option<i64>, Option<i64>),
    /// `minAssignedCount`, `maxAssignedCount` (inclusive).
    pub assigned: (Option<i64>, Option<i64>),
    /// `unlimited`.
    pub unlimited: Option<bool>,
}

impl AssetFilter {
    /// The filter of a query string: a value of the wrong shape is 9602, as at Apple.
    pub fn parse(q: &HashMap<String, String>) -> Result<Self, ApiError> {
        let bad = || ApiError::from(errors::INVALID_ARGUMENT);
        let boolean = |k: &str| -> Result<Option<bool>, ApiError> {
            match q.get(k).map(String::as_str) {
                None => Ok(None),
                Some("true" | "1") => Ok(Some(true)),
                Some("false" | "0") => Ok(Some(false)),
                Some(_) => Err(bad()),
            }
        };
        let count = |k: &str| -> Result<Option<i64>, ApiError> {
            q.get(k)
                .map(|v| v.parse::<i32>().map(i64::from).map_err(|_| bad()))
                .transpose()
        };
        let adam_id = match q.get("adamId") {
            Some(a) if !valid_adam_id(a) => return Err(bad()),
            other => other.cloned(),
        };
        Ok(AssetFilter {
            adam_id,
            pricing_param: q
                .get("pricingParam")
                .map(|v| PricingParam::parse(v).ok_or_else(bad))
                .transpose()?,
            product_type: q
                .get("productType")
                .map(|v| ProductType::parse(v).ok_or_else(bad))
                .transpose()?,
            revocable: boolean("revocable")?,
            device_assignable: boolean("deviceAssignable")?,
            available: (count("minAvailableCount")?, count("maxAvailableCount")?),
            assigned: (count("minAssignedCount")?, count("maxAssignedCount")?),
            unlimited: boolean("unlimited")?,
        })
    }

    /// Whether `a` passes. cloudvpp records no unlimited (free, uncounted) assets, so
    /// `unlimited` filters nothing out.
    pub fn matches(&self, a: &AssetRecord) -> bool {
        let within = |v: i64, (lo, hi): (Option<i64>, Option<i64>)| {
            lo.is_none_or(|lo| v >= lo) && hi.is_none_or(|hi| v <= hi)
        };
        self.adam_id.as_ref().is_none_or(|id| *id == a.adam_id)
            && self.pricing_param.is_none_or(|p| p == a.pricing_param)
            && self.product_type.is_none_or(|p| p == a.product_type)
            && self.revocable.is_none_or(|r| r == a.revocable)
            && self
                .device_assignable
                .is_none_or(|d| d == a.device_assignable)
            && within(a.available_count(), self.available)
            && within(a.assigned_count, self.assigned)
    }
}

/// The key under which the assets' `versionId` is checked: not the users' one, so that
/// neither data set's version passes for the other's.
fn assets_version_key(org_secret: &str) -> String {
    format!("{org_secret}:assets")
}

/// `GET /mdm/v2/assets`.
pub async fn get_assets(
    State(state): State<AppState>,
    ctx: OrgContext,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<GetAssetsResponse>> {
    let page: i64 = match q.get("pageIndex") {
        None => 0,
        Some(v) => v.parse().map_err(|_| errors::INVALID_ARGUMENT)?,
    };
    let filter = AssetFilter::parse(&q)?;
    let org = &ctx.org;
    let assets: Vec<AssetRecord> = state
        .store
        .list_assets(org.id)
        .await?
        .into_iter()
        .filter(|a| filter.matches(a))
        .collect();
    let size = state.config.page_size.max(1) as usize;
    let total_pages = assets.len().div_ceil(size).max(1) as i64;
    if page < 0 || page >= total_pages {
        return Err(errors::PAGE_INDEX_OUT_OF_RANGE.into());
    }
    let page_assets: Vec<_> = assets
        .iter()
        .skip(page as usize * size)
        .take(size)
        .map(AssetRecord::to_response)
        .collect();
    Ok(Json(GetAssetsResponse {
        current_page_index: page as u32,
        next_page_index: (page + 1 < total_pages).then_some(page as u32 + 1),
        size: page_assets.len() as u32,
        total_pages: total_pages as u32,
        assets: page_assets,
        version_id: encode_version(&assets_version_key(&org.secret), org.asset_chg),
        meta: ctx.meta(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buy(adam_id: &str, count: i64) -> Purchase {
        Purchase {
            adam_id: adam_id.into(),
            count,
            pricing_param: PricingParam::Stdq,
            product_type: None,
            platforms: None,
            device_assignable: None,
            revocable: None,
        }
    }

    #[test]
    fn purchases_add_up_and_refunds_take_only_free_licences() {
        let a = purchase(None, &buy("408709785", 50)).unwrap();
        assert_eq!((a.total_count, a.available_count()), (50, 50));
        assert_eq!(
            a.supported_platforms,
            ["iOS", "macOS"],
            "from the catalogue"
        );
        assert!(a.device_assignable && a.revocable);
        let mut assigned = purchase(Some(&a), &buy("408709785", 10)).unwrap();
        assert_eq!(assigned.total_count, 60);
        assigned.assigned_count = 55;
        assert_eq!(
            purchase(Some(&assigned), &buy("408709785", -6)),
            Err(PurchaseError::RefundTooLarge {
                available: 5,
                assigned: 55
            })
        );
        assert_eq!(
            purchase(Some(&assigned), &buy("408709785", -5))
                .unwrap()
                .total_count,
            55
        );
        assert_eq!(
            purchase(None, &buy("1", -1)),
            Err(PurchaseError::NothingToRefund)
        );
        assert_eq!(
            purchase(None, &buy("12a", 1)),
            Err(PurchaseError::BadAdamId("12a".into()))
        );
        assert_eq!(purchase(None, &buy("1", 0)), Err(PurchaseError::ZeroCount));
        assert_eq!(
            purchase(Some(&a), &buy("408709785", i64::from(i32::MAX))),
            Err(PurchaseError::TooMany)
        );
    }

    #[test]
    fn books_are_neither_device_assignable_nor_revocable() {
        let mut b = buy("1000000001", 5);
        b.product_type = Some(ProductType::Book);
        let book = purchase(None, &b).unwrap();
        assert!(!book.device_assignable && !book.revocable);
        b.revocable = Some(true);
        assert_eq!(purchase(None, &b), Err(PurchaseError::BookRules));
        let mut p = buy("1000000002", 1);
        p.platforms = Some(vec!["iOS".into(), "Android".into()]);
        assert_eq!(
            purchase(None, &p),
            Err(PurchaseError::BadPlatform("Android".into()))
        );
    }

    #[test]
    fn filters_follow_apples_parameters() {
        let q = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>()
        };
        let mut a = purchase(None, &buy("361309726", 10)).unwrap();
        a.assigned_count = 4;
        let f = AssetFilter::parse(&q(&[("minAvailableCount", "6"), ("maxAssignedCount", "4")]))
            .unwrap();
        assert!(f.matches(&a));
        let f = AssetFilter::parse(&q(&[("minAvailableCount", "7")])).unwrap();
        assert!(!f.matches(&a));
        let f = AssetFilter::parse(&q(&[("productType", "Book")])).unwrap();
        assert!(!f.matches(&a));
        let f = AssetFilter::parse(&q(&[("revocable", "true"), ("pricingParam", "STDQ")])).unwrap();
        assert!(f.matches(&a));
        for bad in [
            ("revocable", "yes"),
            ("productType", "Movie"),
            ("pricingParam", "stdq"),
            ("minAssignedCount", "x"),
            ("adamId", "abc"),
        ] {
            assert_eq!(
                AssetFilter::parse(&q(&[bad])).unwrap_err().error.number,
                9602,
                "{bad:?}"
            );
        }
    }
}
