//! Get Assignments, and Associate, Disassociate and Revoke Assets: synchronous checks with
//! Apple's numbers, then a PENDING event the worker applies ([`crate::licences`]).

use crate::assets::valid_adam_id;
use crate::auth::OrgContext;
use crate::error::{ApiError, ApiResult, Body};
use crate::ids::{decode_assignments_version, encode_assignments_version};
use crate::limits::Limit;
use crate::users::{
    page_index, pages_for, parse_bool, require_json, storable, MAX_CLIENT_USER_ID_CHARS,
};
use crate::AppState;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use cloudvpp_abwire::assets::{
    GetAssignmentsResponse, ManageAssetsRequest, PricingParam, RevokeAssetsRequest,
};
use cloudvpp_abwire::errors::{self, AppleError};
use cloudvpp_abwire::{ErrorInfo, EventResponse};
use cloudvpp_store::{AssetKey, AssetOrder, AssignmentFilter, EventId, EventPayload, EventType};
use std::collections::{HashMap, HashSet};

/// Longest serial number, in characters (Apple's are 8 to 14; room for other makers').
pub const MAX_SERIAL_NUMBER_CHARS: usize = 64;

/// `GET /mdm/v2/assignments`.
///
/// The listing is every assignment the filters keep, in the order of their last change;
/// with `sinceVersionId`, those changed after that version. Page `k` holds its assignments
/// `k*size ..< (k+1)*size`. Without an asset or target filter a page is placed by counted
/// blocks, so it costs the same whatever its index (docs/appsbooks-behaviour.md).
pub async fn get_assignments(
    State(state): State<AppState>,
    ctx: OrgContext,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<GetAssignmentsResponse>> {
    let bad = || ApiError::from(errors::INVALID_ARGUMENT);
    let boolean = |k: &str| parse_bool(q.get(k));
    let text = |k: &str, max: usize| -> ApiResult<Option<String>> {
        match q.get(k).filter(|s| !s.is_empty()) {
            Some(v) if !storable(v, max) => Err(bad()),
            other => Ok(other.cloned()),
        }
    };
    let adam_id = match q.get("adamId").filter(|s| !s.is_empty()) {
        Some(a) if !valid_adam_id(a) => return Err(bad()),
        other => other.cloned(),
    };
    let filter = AssignmentFilter {
        adam_id,
        client_user_id: text("clientUserId", MAX_CLIENT_USER_ID_CHARS)?,
        serial_number: text("serialNumber", MAX_SERIAL_NUMBER_CHARS)?,
        pricing_param: q
            .get("pricingParam")
            .filter(|s| !s.is_empty())
            .map(|v| PricingParam::parse(v).ok_or_else(bad))
            .transpose()?,
        exclude_inactive_users: boolean("excludeInactiveUsers")?,
    };
    let include_user_state = boolean("includeUserState")?;
    let page = page_index(&q)?;
    let org = &ctx.org;
    let since = match q
        .get("sinceVersionId")
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
    {
        None => None,
        Some(v) => match decode_assignments_version(&org.secret, v) {
            Some(chg) if (0..=org.assign_chg).contains(&chg) => Some(chg),
            _ => return Err(errors::INVALID_VERSION_ID.into()),
        },
    };
    if page < 0 {
        return Err(errors::PAGE_INDEX_OUT_OF_RANGE.into());
    }
    let size = state.config.page_size.max(1);
    let first = page.checked_mul(size).ok_or_else(bad)?;
    let found = state
        .store
        .list_assignments_page(org.id, since, &filter, first, size)
        .await?;
    let total_pages = pages_for(found.total, size);
    if page >= total_pages {
        return Err(errors::PAGE_INDEX_OUT_OF_RANGE.into());
    }
    let mut assignments: Vec<_> = found.assignments.iter().map(|a| a.to_response()).collect();
    if include_user_state {
        let cuids: Vec<&str> = assignments
            .iter()
            .filter_map(|a| a.client_user_id.as_deref())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let users: HashMap<String, _> = state
            .store
            .latest_users(org.id, &cuids)
            .await?
            .into_iter()
            .map(|u| (u.client_user_id.clone(), u))
            .collect();
        for a in &mut assignments {
            if let Some(u) = a.client_user_id.as_ref().and_then(|c| users.get(c)) {
                a.user_status = Some(u.status);
                a.id_hash = u.id_hash.clone();
            }
        }
    }
    Ok(Json(GetAssignmentsResponse {
        current_page_index: page as u32,
        next_page_index: (page + 1 < total_pages).then_some(page as u32 + 1),
        size: assignments.len() as u32,
        total_pages: total_pages as u32,
        assignments,
        // The version when the page was read: a sync from it misses no later change.
        version_id: encode_assignments_version(&org.secret, org.assign_chg),
        meta: ctx.meta(),
    }))
}

/// The limits one kind of request is checked against.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// `maxAssets`.
    pub assets: i64,
    /// `maxClientUserIds` (`maxRevokeClientUserIds` for a revoke).
    pub client_user_ids: i64,
    /// `maxSerialNumbers` (`maxRevokeSerialNumbers` for a revoke).
    pub serial_numbers: i64,
}

/// Synchronous checks of a ManageAssetsRequest (`assets` given) or a RevokeAssetsRequest
/// (`revoke`), in Apple's order: the shape (9602), assets present (9718), targets present
/// (9719), the limits (9700-9702), duplicates (9703-9705). Returns the event's order; an
/// asset without `pricingParam` is STDQ.
pub fn validate_asset_request(
    body: &[u8],
    revoke: bool,
    limits: RequestLimits,
) -> Result<AssetOrder, AppleError> {
    let (assets, cuids, serials) = if revoke {
        let r: RevokeAssetsRequest =
            serde_json::from_slice(body).map_err(|_| errors::INVALID_ARGUMENT)?;
        (Vec::new(), r.client_user_ids, r.serial_numbers)
    } else {
        let r: ManageAssetsRequest =
            serde_json::from_slice(body).map_err(|_| errors::INVALID_ARGUMENT)?;
        (r.assets, r.client_user_ids, r.serial_numbers)
    };
    let cuids = cuids.unwrap_or_default();
    let serials = serials.unwrap_or_default();
    if assets.iter().any(|a| !valid_adam_id(&a.adam_id))
        || cuids
            .iter()
            .any(|c| c.trim().is_empty() || !storable(c, MAX_CLIENT_USER_ID_CHARS))
        || serials
            .iter()
            .any(|s| s.trim().is_empty() || !storable(s, MAX_SERIAL_NUMBER_CHARS))
    {
        return Err(errors::INVALID_ARGUMENT);
    }
    if !revoke && assets.is_empty() {
        return Err(errors::ASSET_REQUIRED);
    }
    if cuids.is_empty() && serials.is_empty() {
        return Err(errors::USERS_OR_SERIALS_REQUIRED);
    }
    if assets.len() as i64 > limits.assets {
        return Err(errors::TOO_MANY_ASSETS);
    }
    if cuids.len() as i64 > limits.client_user_ids {
        return Err(errors::TOO_MANY_CLIENT_USER_IDS);
    }
    if serials.len() as i64 > limits.serial_numbers {
        return Err(errors::TOO_MANY_SERIAL_NUMBERS);
    }
    let keys: Vec<AssetKey> = assets
        .into_iter()
        .map(|a| AssetKey {
            adam_id: a.adam_id,
            pricing_param: a.pricing_param.unwrap_or(PricingParam::Stdq),
        })
        .collect();
    if !unique(keys.iter()) {
        return Err(errors::DUPLICATE_ASSETS);
    }
    if !unique(cuids.iter()) {
        return Err(errors::DUPLICATE_CLIENT_USER_IDS);
    }
    if !unique(serials.iter()) {
        return Err(errors::DUPLICATE_SERIAL_NUMBERS);
    }
    Ok(AssetOrder {
        assets: keys,
        client_user_ids: cuids,
        serial_numbers: serials,
    })
}

fn unique<T: Eq + std::hash::Hash>(items: impl ExactSizeIterator<Item = T>) -> bool {
    let mut seen = HashSet::with_capacity(items.len());
    items.into_iter().all(|i| seen.insert(i))
}

/// `POST /mdm/v2/assets/associate`.
pub async fn associate(
    state: State<AppState>,
    ctx: OrgContext,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<EventResponse>> {
    manage(state, ctx, headers, body, EventType::Associate).await
}

/// `POST /mdm/v2/assets/disassociate`.
pub async fn disassociate(
    state: State<AppState>,
    ctx: OrgContext,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<EventResponse>> {
    manage(state, ctx, headers, body, EventType::Disassociate).await
}

/// `POST /mdm/v2/assets/revoke`.
pub async fn revoke(
    state: State<AppState>,
    ctx: OrgContext,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<EventResponse>> {
    manage(state, ctx, headers, body, EventType::Revoke).await
}

async fn manage(
    State(state): State<AppState>,
    ctx: OrgContext,
    headers: HeaderMap,
    Body(body): Body,
    event_type: EventType,
) -> ApiResult<Json<EventResponse>> {
    require_json(&headers)?;
    let revoke = event_type == EventType::Revoke;
    let limits = if revoke {
        RequestLimits {
            assets: 0,
            client_user_ids: state.limits.get(Limit::MaxRevokeClientUserIds).await,
            serial_numbers: state.limits.get(Limit::MaxRevokeSerialNumbers).await,
        }
    } else {
        RequestLimits {
            assets: state.limits.get(Limit::MaxAssets).await,
            client_user_ids: state.limits.get(Limit::MaxClientUserIds).await,
            serial_numbers: state.limits.get(Limit::MaxSerialNumbers).await,
        }
    };
    let order = validate_asset_request(&body, revoke, limits)?;
    let org = &ctx.org;
    if !revoke {
        // What the assets are now: 9706 and 9707 are answered at once for assets known
        // (the worker checks again when it applies the event).
        let owned = state.store.list_assets(org.id).await?;
        for key in &order.assets {
            let Some(asset) = owned
                .iter()
                .find(|a| a.adam_id == key.adam_id && a.pricing_param == key.pricing_param)
            else {
                continue;
            };
            if event_type == EventType::Disassociate && !asset.revocable {
                return Err(errors::ASSET_NOT_REVOCABLE.into());
            }
            if event_type == EventType::Associate
                && !order.serial_numbers.is_empty()
                && !asset.device_assignable
            {
                return Err(errors::ASSET_NOT_DEVICE_ASSIGNABLE.into());
            }
        }
    }
    if event_type == EventType::Associate && !order.client_user_ids.is_empty() {
        // A clientUserId never registered is refused at once, as Apple answers it (9609,
        // naming them); one retired by the time the event runs fails there.
        let cuids: Vec<&str> = order.client_user_ids.iter().map(String::as_str).collect();
        let known: HashSet<String> = state
            .store
            .latest_users(org.id, &cuids)
            .await?
            .into_iter()
            .map(|u| u.client_user_id)
            .collect();
        let unknown: Vec<String> = order
            .client_user_ids
            .iter()
            .filter(|c| !known.contains(*c))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            return Err(ApiError {
                info: Some(ErrorInfo {
                    client_user_ids: Some(unknown),
                    ..ErrorInfo::default()
                }),
                ..errors::USER_NOT_FOUND.into()
            });
        }
    }
    let num_requested = if revoke {
        order.targets_len()
    } else {
        order.assets.len() * order.targets_len()
    } as i64;
    let event_id = EventId::new(uuid::Uuid::new_v4().to_string());
    state
        .store
        .insert_event(
            org.id,
            &event_id,
            event_type,
            &EventPayload::Assets(order),
            num_requested,
            state.config.clock.now_ms(),
        )
        .await?;
    state.events_waiting.notify_one();
    tracing::debug!(org = %org.id, %event_id, kind = event_type.as_str(), tasks = num_requested, "event accepted");
    Ok(Json(EventResponse {
        event_id: event_id.into_string(),
        meta: ctx.meta(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: RequestLimits = RequestLimits {
        assets: 2,
        client_user_ids: 2,
        serial_numbers: 2,
    };

    fn n(body: &str, revoke: bool) -> u32 {
        validate_asset_request(body.as_bytes(), revoke, LIMITS)
            .unwrap_err()
            .number
    }

    #[test]
    fn synchronous_checks_follow_apple() {
        assert_eq!(n("[", false), 9602);
        assert_eq!(n(r#"{"clientUserIds":["a"]}"#, false), 9718);
        assert_eq!(n(r#"{"assets":[],"clientUserIds":["a"]}"#, false), 9718);
        assert_eq!(n(r#"{"assets":[{"adamId":"1"}]}"#, false), 9719);
        assert_eq!(
            n(r#"{"assets":[{"adamId":"1"}],"clientUserIds":[]}"#, false),
            9719
        );
        assert_eq!(
            n(
                r#"{"assets":[{"adamId":"x1"}],"clientUserIds":["a"]}"#,
                false
            ),
            9602
        );
        assert_eq!(
            n(
                r#"{"assets":[{"adamId":"1"},{"adamId":"2"},{"adamId":"3"}],"clientUserIds":["a"]}"#,
                false
            ),
            9700
        );
        assert_eq!(
            n(
                r#"{"assets":[{"adamId":"1"}],"clientUserIds":["a","b","c"]}"#,
                false
            ),
            9701
        );
        assert_eq!(
            n(
                r#"{"assets":[{"adamId":"1"}],"serialNumbers":["a","b","c"]}"#,
                false
            ),
            9702
        );
        // No pricingParam is STDQ: the same asset twice.
        assert_eq!(
            n(
                r#"{"assets":[{"adamId":"1"},{"adamId":"1","pricingParam":"STDQ"}],"clientUserIds":["a"]}"#,
                false
            ),
            9703
        );
        assert_eq!(
            n(
                r#"{"assets":[{"adamId":"1"}],"clientUserIds":["a","a"]}"#,
                false
            ),
            9704
        );
        assert_eq!(
            n(
                r#"{"assets":[{"adamId":"1"}],"serialNumbers":["s","s"]}"#,
                false
            ),
            9705
        );
        assert_eq!(
            n(
                r#"{"assets":[{"adamId":"1"}],"clientUserIds":["a\u0000"]}"#,
                false
            ),
            9602
        );
        assert_eq!(n("{}", true), 9719);
        assert_eq!(n(r#"{"clientUserIds":["a","b","c"]}"#, true), 9701);
        let order = validate_asset_request(
            br#"{"assets":[{"adamId":"1","pricingParam":"PLUS"}],"clientUserIds":["a"],"serialNumbers":["s"]}"#,
            false,
            LIMITS,
        )
        .unwrap();
        assert_eq!(order.targets_len(), 2);
        assert_eq!(order.assets[0].pricing_param, PricingParam::Plus);
    }
}
