//! The engine's HTTP surface: the admin API for locations and invitations, and the
//! endpoint Apps and Books notifications are delivered to.

use crate::Engine;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cloudvpp_abclient::Client;
use cloudvpp_abwire::assets::{AssetCountNotification, AssetManagementNotification};
use cloudvpp_abwire::notification::{
    types, NotificationEnvelope, UserAssociatedNotification, UserManagementNotification,
};
use cloudvpp_mdm::admin::{fail, json_body, require_api_key, ApiFailure, ApiResult};
use cloudvpp_store::engine::{
    Invitation, InvitationFilter, InvitationId, InvitationState, Location, LocationId,
};
use cloudvpp_store::mdm::EnrollmentId;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};

/// Routes to merge into the MDM service's router.
pub fn router(engine: Engine) -> Router {
    let admin = Router::new()
        .route("/api/v1/locations", post(add_location).get(list_locations))
        .route(
            "/api/v1/invitations",
            post(create_invitations).get(list_invitations),
        )
        .route("/api/v1/invitations/{id}", get(get_invitation))
        .route("/api/v1/invitations/{id}/resend", post(resend))
        .route("/api/v1/invitations/{id}/retire", post(retire))
        .merge(crate::licence_api::routes());
    Router::new()
        .merge(require_api_key(admin, engine.admin.clone()))
        // Apps and Books authenticates with the location's own secret, checked there.
        .route("/notifications/appsbooks/{location}", post(notification))
        .with_state(engine)
}

fn internal(e: impl std::fmt::Display) -> ApiFailure {
    tracing::error!(error = %e, "engine API failure");
    fail(StatusCode::INTERNAL_SERVER_ERROR, "storage failure")
}

const EXPIRY_WARNING_SECS: i64 = 15 * 24 * 3600;

fn location_json(l: &Location, mirrored: i64, now_ms: i64) -> Value {
    let now = now_ms / 1000;
    json!({
        "id": l.id, "name": l.name, "base_url": l.base_url, "uid": l.uid, "expires_at": l.expires_at,
        "expiry_warning": l.expires_at.is_some_and(|e| e - now < EXPIRY_WARNING_SECS),
        "ownership_conflict": l.conflict, "version_id": l.version_id, "mirrored_users": mirrored,
        "last_sync_at": l.last_sync_at, "last_full_sync_at": l.last_full_sync_at,
    })
}

/// Body of `POST /api/v1/locations`.
#[derive(Deserialize)]
pub struct AddLocation {
    /// The sToken (the `.vpptoken` file content).
    pub stoken: String,
    /// Service base URL; Apple's by default.
    #[serde(default)]
    pub base_url: Option<String>,
}

async fn add_location(State(engine): State<Engine>, body: Bytes) -> ApiResult<Response> {
    let req: AddLocation = json_body(&body)?;
    let base = req
        .base_url
        .unwrap_or_else(|| cloudvpp_abclient::APPLE_BASE_URL.to_string());
    let client = Client::new(&base, &req.stoken);
    // The token must work before it is stored.
    let cfg = client.client_config().await.map_err(|e| {
        fail(
            StatusCode::BAD_REQUEST,
            format!("the Apps and Books service refused the token: {e}"),
        )
    })?;
    let expires = cloudvpp_abclient::stoken_expiry(&req.stoken);
    let notify_token =
        uuid::Uuid::new_v4().simple().to_string() + &uuid::Uuid::new_v4().simple().to_string();
    let loc = engine
        .store
        .add_location(
            &cfg.location_name,
            &req.stoken,
            &base,
            &notify_token,
            expires,
        )
        .await
        .map_err(internal)?;
    if expires.is_some_and(|e| e - engine.now_ms() / 1000 < EXPIRY_WARNING_SECS) {
        tracing::warn!(
            location = %loc.id,
            name = loc.name,
            "the sToken expires within 15 days: renew it in Apple Business or School Manager"
        );
    }
    let client = engine.client(&loc);
    let url = engine.notification_url(loc.id);
    let notifications = match client
        .claim(Some((
            &url,
            &notify_token,
            vec![
                types::USER_MANAGEMENT.into(),
                types::USER_ASSOCIATED.into(),
                // Licences: associate results, and purchases that free waiting assignments.
                types::ASSET_MANAGEMENT.into(),
                types::ASSET_COUNT.into(),
            ],
        )))
        .await
    {
        Ok(_) => json!({ "url": url, "subscribed": true }),
        Err(e) => {
            // Notifications are an optimisation: without them status polling and sync still work.
            tracing::warn!(location = %loc.id, error = %e, "notifications not configured; relying on polling");
            let _ = client.claim(None).await;
            json!({ "url": url, "subscribed": false, "error": e.to_string() })
        }
    };
    if client.ownership_conflict() {
        engine
            .store
            .set_location_conflict(loc.id, true)
            .await
            .map_err(internal)?;
    }
    crate::worker::sync(&engine, &loc, true)
        .await
        .map_err(|e| fail(StatusCode::BAD_GATEWAY, format!("importing users: {e}")))?;
    let loc = engine
        .store
        .location(loc.id)
        .await
        .map_err(internal)?
        .unwrap_or(loc);
    let mirrored = engine.store.mirror_count(loc.id).await.map_err(internal)?;
    let mut v = location_json(&loc, mirrored, engine.now_ms());
    v["notifications"] = notifications;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

async fn list_locations(State(engine): State<Engine>) -> ApiResult<Json<Value>> {
    let mut out = Vec::new();
    for l in engine.store.locations().await.map_err(internal)? {
        let n = engine.store.mirror_count(l.id).await.map_err(internal)?;
        let mut v = location_json(&l, n, engine.now_ms());
        v["rate_limited_answers"] = json!(engine.client(&l).rate_limited());
        out.push(v);
    }
    Ok(Json(json!({ "locations": out })))
}

/// One requested invitation.
#[derive(Deserialize, Clone)]
pub struct NewInvitation {
    /// Location; the only one when omitted.
    #[serde(default)]
    pub location_id: Option<LocationId>,
    /// The person's clientUserId (a stable ID, not an email).
    pub client_user_id: String,
    /// Email address.
    #[serde(default)]
    pub email: Option<String>,
    /// Enrollment to send InviteToProgram to; none for an email link only.
    #[serde(default)]
    pub enrollment_id: Option<EnrollmentId>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum InvitationsBody {
    Many { invitations: Vec<NewInvitation> },
    One(NewInvitation),
}

fn invitation_json(i: &Invitation) -> Value {
    json!({
        "id": i.id, "location_id": i.location_id, "client_user_id": i.client_user_id, "email": i.email,
        "enrollment_id": i.enrollment_id, "channel": i.channel, "state": i.state, "reason": i.reason,
        "invite_code": i.invite_code, "invitation_url": i.invitation_url, "event_id": i.event_id,
        "command_uuid": i.command_uuid, "invitation_result": i.invitation_result, "attempts": i.attempts,
        "created_at": i.created_at, "updated_at": i.updated_at,
    })
}

async fn create_invitations(State(engine): State<Engine>, body: Bytes) -> ApiResult<Response> {
    let req: InvitationsBody = json_body(&body)?;
    let wanted = match req {
        InvitationsBody::Many { invitations } => invitations,
        InvitationsBody::One(one) => vec![one],
    };
    if wanted.is_empty() || wanted.len() > 10_000 {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "between 1 and 10000 invitations per request",
        ));
    }
    let locations = engine.store.locations().await.map_err(internal)?;
    // Every request is checked before anything is read or stored.
    let mut checked: Vec<(LocationId, String, NewInvitation)> = Vec::with_capacity(wanted.len());
    for w in wanted {
        let cuid = w.client_user_id.trim().to_string();
        if cuid.is_empty() {
            return Err(fail(StatusCode::BAD_REQUEST, "client_user_id is required"));
        }
        if let Some(e) = &w.email {
            if !e.contains('@') || e.chars().any(char::is_whitespace) {
                return Err(fail(
                    StatusCode::BAD_REQUEST,
                    format!("invalid email {e:?}"),
                ));
            }
        }
        let location_id = match (w.location_id, locations.as_slice()) {
            (Some(id), _) if locations.iter().any(|l| l.id == id) => id,
            (Some(id), _) => {
                return Err(fail(StatusCode::BAD_REQUEST, format!("no location {id}")))
            }
            (None, [only]) => only.id,
            (None, []) => {
                return Err(fail(
                    StatusCode::CONFLICT,
                    "no location yet: add one with `cloudvpp mdm location add`",
                ))
            }
            (None, _) => {
                return Err(fail(
                    StatusCode::BAD_REQUEST,
                    "several locations: give location_id",
                ))
            }
        };
        checked.push((location_id, cuid, w));
    }
    // Invitations in progress for these people: one read for the whole request.
    let people: Vec<(LocationId, String)> = checked
        .iter()
        .map(|(loc, cuid, _)| (*loc, cuid.clone()))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mut in_progress: HashMap<(LocationId, String, Option<EnrollmentId>), Invitation> =
        HashMap::new();
    for inv in engine
        .store
        .open_invitations(&people)
        .await
        .map_err(internal)?
    {
        let key = (
            inv.location_id,
            inv.client_user_id.clone(),
            inv.enrollment_id.clone(),
        );
        match in_progress.get(&key) {
            Some(newer) if (newer.created_at, &newer.id) >= (inv.created_at, &inv.id) => {}
            _ => {
                in_progress.insert(key, inv);
            }
        }
    }
    let now = engine.now_ms();
    let mut created = Vec::with_capacity(checked.len());
    let mut out = Vec::with_capacity(checked.len());
    let mut seen: HashSet<(LocationId, String, Option<EnrollmentId>)> = HashSet::new();
    for (location_id, cuid, w) in checked {
        // Asking twice for the same person and device returns the invitation in progress.
        let key = (location_id, cuid.clone(), w.enrollment_id.clone());
        if !seen.insert(key.clone()) {
            continue;
        }
        if let Some(e) = in_progress.get(&key) {
            out.push(invitation_json(e));
            continue;
        }
        let inv = Invitation {
            id: InvitationId::new(uuid::Uuid::new_v4().to_string()),
            location_id,
            client_user_id: cuid,
            email: w.email.clone(),
            enrollment_id: w.enrollment_id.clone(),
            channel: None,
            state: InvitationState::Registering,
            reason: None,
            invite_code: None,
            invitation_url: None,
            event_id: None,
            command_uuid: None,
            invitation_result: None,
            attempts: 0,
            created_at: now,
            updated_at: now,
            next_action_at: now,
        };
        out.push(invitation_json(&inv));
        created.push(inv);
    }
    engine
        .store
        .create_invitations(&created)
        .await
        .map_err(internal)?;
    for inv in &created {
        crate::worker::log_transition(inv, "new");
    }
    engine.wake.notify_one();
    Ok((StatusCode::ACCEPTED, Json(json!({ "invitations": out }))).into_response())
}

async fn list_invitations(
    State(engine): State<Engine>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let limit = q
        .get("limit")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000)
        .clamp(1, 100_000);
    let filter = InvitationFilter {
        state: q.get("state").and_then(|s| InvitationState::parse(s)),
        location_id: q
            .get("location_id")
            .and_then(|s| s.parse().ok())
            .map(LocationId),
        client_user_id: q.get("client_user_id").cloned(),
        limit: Some(limit),
    };
    // A state that does not exist matches no invitation.
    let unknown_state = q.contains_key("state") && filter.state.is_none();
    let list = if unknown_state {
        Vec::new()
    } else {
        engine.store.invitations(&filter).await.map_err(internal)?
    };
    let counts: serde_json::Map<String, Value> = engine
        .store
        .invitation_counts()
        .await
        .map_err(internal)?
        .into_iter()
        .map(|(k, v)| (k.as_str().to_string(), json!(v)))
        .collect();
    Ok(Json(
        json!({ "counts": counts, "invitations": list.iter().map(invitation_json).collect::<Vec<_>>() }),
    ))
}

async fn get_invitation(
    State(engine): State<Engine>,
    Path(id): Path<InvitationId>,
) -> ApiResult<Json<Value>> {
    let inv = find_invitation(&engine, &id).await?;
    Ok(Json(invitation_json(&inv)))
}

/// The invitation `id`, or 404.
async fn find_invitation(engine: &Engine, id: &InvitationId) -> ApiResult<Invitation> {
    engine
        .store
        .invitation(id)
        .await
        .map_err(internal)?
        .ok_or_else(|| fail(StatusCode::NOT_FOUND, "no such invitation"))
}

/// Sends the invitation again: a new InviteToProgram on the same channel, or a fresh
/// registration if registration failed.
async fn resend(
    State(engine): State<Engine>,
    Path(id): Path<InvitationId>,
) -> ApiResult<Json<Value>> {
    let mut inv = find_invitation(&engine, &id).await?;
    if matches!(
        inv.state,
        InvitationState::Associated | InvitationState::Retired
    ) {
        return Err(fail(
            StatusCode::CONFLICT,
            format!("invitation is {}", inv.state),
        ));
    }
    match (&inv.invite_code, &inv.channel) {
        (Some(_), Some(channel)) => {
            let channel = channel.clone();
            crate::worker::deliver(&engine, &mut inv, channel)
                .await
                .map_err(internal)?;
        }
        (Some(_), None) => {
            let before = inv.state;
            inv.state = InvitationState::Registered;
            inv.next_action_at = engine.now_ms();
            inv.updated_at = engine.now_ms();
            engine
                .store
                .update_invitation(&inv)
                .await
                .map_err(internal)?;
            crate::worker::log_change(&inv, before);
        }
        (None, _) => {
            let before = inv.state;
            inv.state = InvitationState::Registering;
            inv.event_id = None;
            inv.reason = None;
            inv.next_action_at = engine.now_ms();
            inv.updated_at = engine.now_ms();
            engine
                .store
                .update_invitation(&inv)
                .await
                .map_err(internal)?;
            crate::worker::log_change(&inv, before);
        }
    }
    engine.wake.notify_one();
    Ok(Json(invitation_json(&inv)))
}

/// Retires the person at Apps and Books and ends the invitation.
async fn retire(
    State(engine): State<Engine>,
    Path(id): Path<InvitationId>,
) -> ApiResult<Json<Value>> {
    let mut inv = find_invitation(&engine, &id).await?;
    let loc = engine
        .store
        .location(inv.location_id)
        .await
        .map_err(internal)?
        .ok_or_else(|| fail(StatusCode::NOT_FOUND, "no location"))?;
    let user = cloudvpp_abwire::RequestUser {
        client_user_id: inv.client_user_id.clone(),
        ..Default::default()
    };
    let events = engine
        .client(&loc)
        .retire_users(&[user])
        .await
        .map_err(|e| fail(StatusCode::BAD_GATEWAY, e.to_string()))?;
    let before = inv.state;
    inv.state = InvitationState::Retired;
    inv.reason = Some(format!("retired (event {})", events.join(",")));
    inv.updated_at = engine.now_ms();
    inv.next_action_at = i64::MAX;
    engine
        .store
        .update_invitation(&inv)
        .await
        .map_err(internal)?;
    crate::worker::log_change(&inv, before);
    engine.mark_dirty(loc.id);
    Ok(Json(invitation_json(&inv)))
}

/// `POST /notifications/appsbooks/{location}`: Apps and Books notifications, idempotent by
/// `notificationId`.
async fn notification(
    State(engine): State<Engine>,
    headers: HeaderMap,
    Path(location): Path<LocationId>,
    body: Bytes,
) -> Response {
    let Ok(Some(loc)) = engine.store.location(location).await else {
        return (StatusCode::NOT_FOUND, "unknown location").into_response();
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let token = given
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case("bearer "))
        .map(|_| given[7..].trim())
        .unwrap_or("");
    if !cloudvpp_store::secret::matches_digest(token, &loc.notify_token_digest) {
        return (StatusCode::FORBIDDEN, "wrong notification token").into_response();
    }
    let env: NotificationEnvelope = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => {
            return (StatusCode::BAD_REQUEST, format!("not a notification: {e}")).into_response()
        }
    };
    if let Some(uid) = &loc.uid {
        if uid != &env.u_id {
            return (StatusCode::BAD_REQUEST, "uId of another location").into_response();
        }
    }
    match engine
        .store
        .notification_first_seen(&env.notification_id, engine.now_ms())
        .await
    {
        Ok(false) => return StatusCode::OK.into_response(),
        Ok(true) => {}
        Err(e) => {
            tracing::error!(error = %e, "recording notification");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    }
    let users = match env.notification_type.as_str() {
        types::USER_MANAGEMENT => {
            serde_json::from_value::<UserManagementNotification>(env.notification)
                .map(|n| n.users)
                .unwrap_or_default()
        }
        types::USER_ASSOCIATED => {
            serde_json::from_value::<UserAssociatedNotification>(env.notification)
                .map(|n| n.associated_users)
                .unwrap_or_default()
        }
        types::ASSET_MANAGEMENT => {
            if let Ok(n) = serde_json::from_value::<AssetManagementNotification>(env.notification) {
                if let Err(e) =
                    crate::licence_worker::on_asset_management(&engine, loc.id, &n).await
                {
                    tracing::error!(error = %e, "applying notification");
                    return StatusCode::INTERNAL_SERVER_ERROR.into_response();
                }
            }
            Vec::new()
        }
        types::ASSET_COUNT => {
            if let Ok(n) = serde_json::from_value::<AssetCountNotification>(env.notification) {
                let woken = crate::licence_worker::on_asset_count(
                    &engine,
                    loc.id,
                    &n.adam_id,
                    n.pricing_param,
                    n.count_delta,
                )
                .await;
                if let Err(e) = woken {
                    tracing::error!(error = %e, "applying notification");
                    return StatusCode::INTERNAL_SERVER_ERROR.into_response();
                }
            }
            Vec::new()
        }
        _ => Vec::new(),
    };
    if !users.is_empty() {
        if let Err(e) = engine
            .store
            .upsert_mirror(loc.id, &users, engine.now_ms())
            .await
        {
            tracing::error!(error = %e, "applying notification");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
        engine.wake.notify_one();
    }
    tracing::debug!(
        location = %loc.id,
        kind = env.notification_type,
        users = users.len(),
        "notification"
    );
    StatusCode::OK.into_response()
}
