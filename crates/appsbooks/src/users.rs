//! Get Users, Create/Update/Retire Users and Event Status.

use crate::auth::OrgContext;
use crate::envelope::failure_response;
use crate::error::{ApiError, ApiResult, Body};
use crate::ids::{decode_version, encode_version, id_hash};
use crate::AppState;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::Json;
use cloudvpp_abwire::errors::{self, AppleError};
use cloudvpp_abwire::{EventResponse, GetUsersResponse, RequestUser, StatusResponse};
use cloudvpp_store::{
    EventId, EventPayload, EventStatus, EventType, UserFilter, UserOrder, UserRecord,
};
use std::collections::{HashMap, HashSet};

/// Any method an endpoint does not support: 9726 with HTTP 405.
pub async fn method_not_allowed() -> ApiError {
    errors::UNSUPPORTED_METHOD.into()
}

/// A boolean query parameter: absent or empty is false; `true`/`false` in any case, `1`/`0`.
pub(crate) fn parse_bool(v: Option<&String>) -> ApiResult<bool> {
    match v.map(|s| s.as_str()) {
        None | Some("") => Ok(false),
        Some(s) if s.eq_ignore_ascii_case("true") || s == "1" => Ok(true),
        Some(s) if s.eq_ignore_ascii_case("false") || s == "0" => Ok(false),
        Some(_) => Err(errors::INVALID_ARGUMENT.into()),
    }
}

/// `GET /mdm/v2/users`.
///
/// Without `sinceVersionId` the listing is every record (of the filter) in creation order;
/// with it, the records changed after that version in change order. Page `k` holds the
/// listing's records `k*size ..< (k+1)*size`: every page but the last is full, filters
/// included, and `totalPages` counts the filtered listing. The store places a page by
/// counted blocks, so a page costs the same whatever its index: no OFFSET scan
/// (docs/appsbooks-behaviour.md, "Page contents"). `clientUserId` and `managedAppleId`
/// select one person's records, on one page.
pub async fn get_users(
    State(state): State<AppState>,
    ctx: OrgContext,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<JsonBody> {
    let filter = UserFilter {
        active_only: parse_bool(q.get("activeOnly"))?,
        retired_only: parse_bool(q.get("retiredOnly"))?,
    };
    let page = page_index(&q)?;
    let org = &ctx.org;
    let since = match q
        .get("sinceVersionId")
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
    {
        None => None,
        Some(v) => match decode_version(&org.secret, v) {
            Some(chg) if (0..=org.chg).contains(&chg) => Some(chg),
            _ => return Err(errors::INVALID_VERSION_ID.into()),
        },
    };
    let size = state.config.page_size.max(1);
    let cuid = q.get("clientUserId").filter(|s| !s.is_empty());
    let maid = q
        .get("managedAppleId")
        .map(|s| s.trim())
        .filter(|s| !s.is_empty());
    let (users, total_pages) = if cuid.is_some() || maid.is_some() {
        if cuid.is_some_and(|c| !storable(c, MAX_CLIENT_USER_ID_CHARS))
            || maid.is_some_and(|m| !storable(m, MAX_MANAGED_APPLE_ID_CHARS))
        {
            return Err(errors::INVALID_ARGUMENT.into());
        }
        // One person's records: a single page.
        if page != 0 {
            return Err(errors::PAGE_INDEX_OUT_OF_RANGE.into());
        }
        // A managedAppleId is matched as its idHash is made (case aside), so it finds the
        // records associated with that Apple Account, by create, update or invitation.
        let hash = maid.map(|m| id_hash(&org.secret, m));
        let mut users = match (cuid, &hash) {
            (Some(cuid), _) => {
                state
                    .store
                    .list_users_by_client_id(org.id, cuid, &filter)
                    .await?
            }
            (None, Some(hash)) => {
                state
                    .store
                    .list_users_by_id_hash(org.id, hash, &filter)
                    .await?
            }
            (None, None) => Vec::new(),
        };
        if let Some(hash) = &hash {
            users.retain(|u| u.id_hash.as_ref() == Some(hash));
        }
        if let Some(since) = since {
            users.retain(|u| u.chg > since);
        }
        (users, 1)
    } else {
        let order = match since {
            Some(since) => UserOrder::ChangedSince(since),
            None => UserOrder::Created,
        };
        if page < 0 {
            return Err(errors::PAGE_INDEX_OUT_OF_RANGE.into());
        }
        let first = page
            .checked_mul(size)
            .ok_or(ApiError::from(errors::INVALID_ARGUMENT))?;
        let found = state
            .store
            .list_users_page(org.id, order, &filter, first, size)
            .await?;
        let total_pages = pages_for(found.total, size);
        if page >= total_pages {
            return Err(errors::PAGE_INDEX_OUT_OF_RANGE.into());
        }
        (found.users, total_pages)
    };
    users_page_body(&ctx, page, total_pages, users)
}

/// A JSON response body serialised ahead (as `axum::Json` sends it, `application/json`),
/// into a buffer sized by the caller instead of one grown from 128 bytes.
pub struct JsonBody(pub Vec<u8>);

impl JsonBody {
    /// `value` as JSON, in a buffer of `capacity` bytes to start with.
    pub fn of<T: serde::Serialize>(value: &T, capacity: usize) -> ApiResult<JsonBody> {
        let mut buf = Vec::with_capacity(capacity);
        serde_json::to_writer(&mut buf, value).map_err(|e| {
            tracing::error!(error = %e, "serialising a response");
            ApiError::from(errors::INTERNAL_ERROR)
        })?;
        Ok(JsonBody(buf))
    }
}

impl axum::response::IntoResponse for JsonBody {
    fn into_response(self) -> axum::response::Response {
        (
            [(
                header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static("application/json"),
            )],
            self.0,
        )
            .into_response()
    }
}

/// A Get Users page as the response body: the records as Apple shows them
/// (`UserRecord::into_response`), serialised straight into a buffer sized for them.
/// `cloudvpp-bench appsbooks-local` calls it too, to time the same work in-process.
pub fn users_page_body(
    ctx: &OrgContext,
    page: i64,
    total_pages: i64,
    users: Vec<UserRecord>,
) -> ApiResult<JsonBody> {
    let org = &ctx.org;
    let body = GetUsersResponse {
        current_page_index: page as u32,
        next_page_index: (page + 1 < total_pages).then_some(page as u32 + 1),
        size: users.len() as u32,
        total_pages: total_pages as u32,
        users: users.into_iter().map(UserRecord::into_response).collect(),
        version_id: encode_version(&org.secret, org.chg),
        meta: ctx.meta(),
    };
    JsonBody::of(&body, 256 + 160 * body.users.len())
}

/// `pageIndex` of a paged listing. Apple's pageIndex is an int32: a value outside it is not
/// a valid argument (9602). One in it but past the last page (negative included) is 9650,
/// as Apple's message says: the caller checks that against the listing.
pub(crate) fn page_index(q: &HashMap<String, String>) -> ApiResult<i64> {
    match q.get("pageIndex").map(|s| s.trim()) {
        None | Some("") => Ok(0),
        Some(s) => Ok(s
            .parse::<i32>()
            .map_err(|_| ApiError::from(errors::INVALID_ARGUMENT))?
            .into()),
    }
}

/// Pages of `size` a listing of `span` records fills (at least one), rounded up without
/// `span + size - 1`, which could overflow.
pub(crate) fn pages_for(span: i64, size: i64) -> i64 {
    (span / size + i64::from(span % size != 0)).max(1)
}

/// `POST /mdm/v2/users/create`.
pub async fn create_users(
    state: State<AppState>,
    ctx: OrgContext,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<EventResponse>> {
    manage(state, ctx, headers, body, EventType::Create).await
}

/// `POST /mdm/v2/users/update`.
pub async fn update_users(
    state: State<AppState>,
    ctx: OrgContext,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<EventResponse>> {
    manage(state, ctx, headers, body, EventType::Update).await
}

/// `POST /mdm/v2/users/retire`.
pub async fn retire_users(
    state: State<AppState>,
    ctx: OrgContext,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<EventResponse>> {
    manage(state, ctx, headers, body, EventType::Retire).await
}

/// Whether the request declares a JSON body (9727 otherwise).
pub fn require_json(headers: &HeaderMap) -> ApiResult<()> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if mime.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(errors::UNSUPPORTED_CONTENT_TYPE.into())
    }
}

/// Longest `clientUserId`, in characters (Apple states none; docs/appsbooks-behaviour.md).
pub const MAX_CLIENT_USER_ID_CHARS: usize = 256;
/// Longest `email`, in characters: RFC 5321's limit on an address in a mail path.
pub const MAX_EMAIL_CHARS: usize = 254;
/// Longest `managedAppleId`, in characters: an account name is an email-shaped string, and
/// this leaves room over RFC 5321's 254 for the local part and domain at their RFC limits.
pub const MAX_MANAGED_APPLE_ID_CHARS: usize = 320;

/// Text every database can hold and every log line and header can carry: no control
/// character (NUL, which PostgreSQL refuses, included), at most `max_chars` characters.
pub fn storable(s: &str, max_chars: usize) -> bool {
    !s.chars().any(char::is_control) && s.chars().nth(max_chars).is_none()
}

/// A plausible email address: what Apple's 9717 guards against is garbage, not RFC 5322.
pub fn valid_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && storable(s, MAX_EMAIL_CHARS)
        && !s.chars().any(char::is_whitespace)
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
}

/// Synchronous checks of a ManageUsersRequest, in Apple's order of severity. Nothing is
/// stored when one fails.
pub fn validate_manage_request(
    body: &[u8],
    max_users: i64,
) -> Result<Vec<RequestUser>, AppleError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| errors::INVALID_ARGUMENT)?;
    let obj = value.as_object().ok_or(errors::INVALID_ARGUMENT)?;
    let users = match obj.get("users") {
        None | Some(serde_json::Value::Null) => return Err(errors::USERS_REQUIRED),
        Some(serde_json::Value::Array(a)) if a.is_empty() => return Err(errors::USERS_REQUIRED),
        Some(v) => v.clone(),
    };
    let users: Vec<RequestUser> =
        serde_json::from_value(users).map_err(|_| errors::INVALID_ARGUMENT)?;
    if users.iter().any(|u| {
        u.client_user_id.trim().is_empty() || !storable(&u.client_user_id, MAX_CLIENT_USER_ID_CHARS)
    }) {
        return Err(errors::INVALID_ARGUMENT);
    }
    if users.len() as i64 > max_users {
        return Err(errors::TOO_MANY_USERS);
    }
    let mut seen = HashSet::with_capacity(users.len());
    if !users.iter().all(|u| seen.insert(u.client_user_id.as_str())) {
        return Err(errors::DUPLICATE_USERS);
    }
    if users
        .iter()
        .filter_map(|u| u.email.as_deref())
        .any(|e| !valid_email(e))
    {
        return Err(errors::INVALID_EMAIL);
    }
    if users
        .iter()
        .filter_map(|u| u.managed_apple_id.as_deref())
        .any(|m| m.trim().is_empty() || !storable(m, MAX_MANAGED_APPLE_ID_CHARS))
    {
        return Err(errors::INVALID_ARGUMENT);
    }
    Ok(users)
}

async fn manage(
    State(state): State<AppState>,
    ctx: OrgContext,
    headers: HeaderMap,
    Body(body): Body,
    event_type: EventType,
) -> ApiResult<Json<EventResponse>> {
    require_json(&headers)?;
    let max_users = state.limits.get(crate::limits::Limit::MaxUsers).await;
    let users = validate_manage_request(&body, max_users)?;
    let event_id = EventId::new(uuid::Uuid::new_v4().to_string());
    state
        .store
        .insert_event(
            ctx.org.id,
            &event_id,
            event_type,
            &EventPayload::Users(users.clone()),
            users.len() as i64,
            state.config.clock.now_ms(),
        )
        .await?;
    state.events_waiting.notify_one();
    tracing::debug!(
        org = %ctx.org.id,
        %event_id,
        kind = event_type.as_str(),
        users = users.len(),
        "event accepted"
    );
    Ok(Json(EventResponse {
        event_id: event_id.into_string(),
        meta: ctx.meta(),
    }))
}

/// Longest `eventId` looked up.
const MAX_EVENT_ID_CHARS: usize = 128;

/// `GET /mdm/v2/status?eventId=`.
pub async fn event_status(
    State(state): State<AppState>,
    ctx: OrgContext,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<StatusResponse>> {
    let event_id = q
        .get("eventId")
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .ok_or(errors::EVENT_NOT_FOUND)?;
    // Ours are UUIDs; anything that is not plain text of a sane length is not an id.
    if !storable(event_id, MAX_EVENT_ID_CHARS) {
        return Err(errors::INVALID_ARGUMENT.into());
    }
    let ev = state
        .store
        .get_event(ctx.org.id, &EventId::new(event_id))
        .await?
        .ok_or(errors::EVENT_NOT_FOUND)?;
    Ok(Json(StatusResponse {
        event_status: ev.status.as_str().to_string(),
        event_type: ev.event_type.as_str().to_string(),
        num_completed: ev.num_completed as u32,
        num_requested: ev.num_requested as u32,
        // Apple: "When an event finishes with failures, `failures` describes each one": a
        // PENDING event reports none yet, though some of its users were already refused.
        failures: match ev.status {
            EventStatus::Pending => Vec::new(),
            EventStatus::Complete | EventStatus::Failed => ev
                .failures
                .into_iter()
                .map(|(n, ids)| failure_response(n, ids))
                .chain(ev.asset_failures.iter().map(crate::licences::failure_body))
                .collect(),
        },
        meta: ctx.meta(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synchronous_checks_follow_apple() {
        let n = |b: &str| validate_manage_request(b.as_bytes(), 2).unwrap_err().number;
        assert_eq!(n("{"), 9602);
        assert_eq!(n("{}"), 9720);
        assert_eq!(n(r#"{"users":[]}"#), 9720);
        assert_eq!(n(r#"{"users":[{"email":"a@b.c"}]}"#), 9602);
        assert_eq!(
            n(r#"{"users":[{"clientUserId":"a"},{"clientUserId":"b"},{"clientUserId":"c"}]}"#),
            9714
        );
        assert_eq!(
            n(r#"{"users":[{"clientUserId":"a"},{"clientUserId":"a"}]}"#),
            9715
        );
        assert_eq!(
            n(r#"{"users":[{"clientUserId":"a","email":"nope"}]}"#),
            9717
        );
        assert!(validate_manage_request(
            br#"{"users":[{"clientUserId":"a","email":"a@b.co"}]}"#,
            2
        )
        .is_ok());
    }

    #[test]
    fn text_the_database_cannot_hold_is_refused() {
        let one = |u: serde_json::Value| {
            let body = serde_json::json!({ "users": [u] }).to_string();
            validate_manage_request(body.as_bytes(), 100).map(|_| ())
        };
        let n = |u| one(u).unwrap_err().number;
        for cuid in [
            "a\u{0}b",
            "\u{0}",
            "a\nb",
            "a\tb",
            "\u{7f}",
            "a\u{85}",
            "\u{1b}[31m",
        ] {
            let bad = cuid.escape_debug();
            assert_eq!(n(serde_json::json!({"clientUserId": cuid})), 9602, "{bad}");
            assert_eq!(
                n(serde_json::json!({"clientUserId": "a", "email": format!("a{cuid}@b.co")})),
                9717
            );
            assert_eq!(
                n(
                    serde_json::json!({"clientUserId": "a", "managedAppleId": format!("m{cuid}@b.co")})
                ),
                9602
            );
        }
        let long = |n: usize| "é".repeat(n);
        assert!(one(serde_json::json!({"clientUserId": long(256)})).is_ok());
        assert_eq!(n(serde_json::json!({"clientUserId": long(257)})), 9602);
        let email = |n: usize| format!("{}@b.co", "a".repeat(n - 5));
        assert!(one(serde_json::json!({"clientUserId": "a", "email": email(254)})).is_ok());
        assert_eq!(
            n(serde_json::json!({"clientUserId": "a", "email": email(255)})),
            9717
        );
        let maid = |n: usize| format!("{}@b.co", "m".repeat(n - 5));
        assert!(one(serde_json::json!({"clientUserId": "a", "managedAppleId": maid(320)})).is_ok());
        assert_eq!(
            n(serde_json::json!({"clientUserId": "a", "managedAppleId": maid(321)})),
            9602
        );
    }
}
