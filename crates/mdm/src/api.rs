//! The admin API (`/api/v1/`), authenticated by the API key (`Authorization: Bearer KEY`,
//! or HTTP Basic with the key as password, as nanomdm's API).

use crate::{now_ms, MdmState};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use cloudvpp_mdmwire::{decode_command, EnrollmentType, Platform};
use cloudvpp_store::mdm::{CommandState, EnrollmentRecord, QueuedCommand};
use cloudvpp_store::StoreError;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};

/// An API failure: JSON `{"error": ...}`.
pub struct ApiFailure(StatusCode, String);

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

/// Result of admin handlers.
pub type ApiResult<T> = Result<T, ApiFailure>;

/// An API failure with a status.
pub fn fail(status: StatusCode, msg: impl Into<String>) -> ApiFailure {
    ApiFailure(status, msg.into())
}

/// Parses a JSON request body; 400 with serde's reason when it is not the expected shape.
pub fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(body)
        .map_err(|e| fail(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")))
}

fn internal(e: StoreError) -> ApiFailure {
    tracing::error!(error = %e, "admin API storage failure");
    match e {
        StoreError::Unavailable(_) => fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage temporarily unavailable",
        ),
        _ => fail(StatusCode::INTERNAL_SERVER_ERROR, "storage failure"),
    }
}

/// Checks the admin API key; shared by the engine's routes.
pub fn authorize(state: &MdmState, headers: &HeaderMap) -> ApiResult<()> {
    let Some(key) = state.config.api_key.as_deref() else {
        return Err(fail(
            StatusCode::FORBIDDEN,
            "the admin API is off: start the service with --api-key",
        ));
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // Compared in constant time (over digests), so timing tells nothing about the key.
    let same = |given: &str| cloudvpp_store::secret::equal(given, key);
    let ok = if let Some(t) = given.strip_prefix("Bearer ") {
        same(t.trim())
    } else if let Some(b) = given.strip_prefix("Basic ") {
        base64::engine::general_purpose::STANDARD
            .decode(b.trim())
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
            .and_then(|s| s.split_once(':').map(|(_, p)| same(p)))
            .unwrap_or(false)
    } else {
        false
    };
    if ok {
        Ok(())
    } else {
        // 403, not 401: nothing on this server answers 401.
        Err(fail(StatusCode::FORBIDDEN, "missing or wrong API key"))
    }
}

fn split_ids(ids: &str) -> ApiResult<Vec<String>> {
    let ids: Vec<String> = ids
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if ids.is_empty() {
        return Err(fail(StatusCode::BAD_REQUEST, "no enrollment ID"));
    }
    Ok(ids)
}

/// Pushes enrollments concurrently; per ID `{push_result}` or `{push_error}`.
pub async fn push_many(state: &MdmState, ids: &[String]) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let mut set = tokio::task::JoinSet::new();
    for id in ids {
        let (state, id) = (state.clone(), id.clone());
        set.spawn(async move {
            let r = match state.store.enrollment(&id).await {
                Ok(Some(e)) if e.enabled => match &state.config.pusher {
                    Some(p) => match p.push(&e).await {
                        Ok(apns_id) => json!({ "push_result": apns_id }),
                        Err(err) => json!({ "push_error": err }),
                    },
                    None => json!({ "push_error": "push is not configured (--apns-url, --push-cert, --push-key)" }),
                },
                Ok(Some(_)) => json!({ "push_error": "enrollment is disabled (checked out or awaiting TokenUpdate)" }),
                Ok(None) => json!({ "push_error": "unknown enrollment" }),
                Err(e) => {
                    tracing::error!(error = %e, enrollment = id, "push: reading the enrollment");
                    json!({ "push_error": "storage failure" })
                }
            };
            (id, r)
        });
    }
    while let Some(Ok((id, r))) = set.join_next().await {
        out.insert(id, r);
    }
    out
}

#[derive(Deserialize, Default)]
pub struct PushParam {
    nopush: Option<String>,
}

/// Queues `cmd` for `ids`, pushes unless `nopush`, and reports per ID.
async fn enqueue_and_push(
    state: &MdmState,
    ids: &[String],
    cmd: QueuedCommand,
    nopush: bool,
    mut status: BTreeMap<String, Value>,
) -> ApiResult<Response> {
    let queued = if ids.is_empty() {
        Vec::new()
    } else {
        match state.store.enqueue(ids, &cmd, now_ms()).await {
            Ok(q) => q,
            Err(StoreError::Conflict(_)) => {
                return Err(fail(
                    StatusCode::CONFLICT,
                    format!("CommandUUID {} already exists", cmd.command_uuid),
                ))
            }
            Err(e) => return Err(internal(e)),
        }
    };
    for id in ids {
        if !queued.contains(id) {
            status.insert(
                id.clone(),
                json!({ "queued": false, "error": "unknown enrollment" }),
            );
        }
    }
    let pushes = if nopush {
        BTreeMap::new()
    } else {
        push_many(state, &queued).await
    };
    for id in &queued {
        let mut v = json!({ "queued": true });
        if let Some(Value::Object(p)) = pushes.get(id) {
            for (k, val) in p {
                v[k] = val.clone();
            }
        }
        status.insert(id.clone(), v);
    }
    let code = if queued.is_empty() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    Ok((code, Json(json!({ "command_uuid": cmd.command_uuid, "request_type": cmd.request_type, "status": status }))).into_response())
}

/// `PUT /api/v1/enqueue/{ids}[?nopush=1]` with a raw command plist (nanomdm-compatible).
pub async fn enqueue_raw(
    State(state): State<MdmState>,
    headers: HeaderMap,
    Path(ids): Path<String>,
    Query(p): Query<PushParam>,
    body: Bytes,
) -> ApiResult<Response> {
    authorize(&state, &headers)?;
    let ids = split_ids(&ids)?;
    let info = decode_command(&body).map_err(|e| fail(StatusCode::BAD_REQUEST, e.to_string()))?;
    let cmd = QueuedCommand {
        command_uuid: info.command_uuid,
        request_type: info.request_type,
        command: body.to_vec(),
    };
    enqueue_and_push(
        &state,
        &ids,
        cmd,
        p.nopush.is_some_and(|v| v != "0"),
        BTreeMap::new(),
    )
    .await
}

/// Body of `POST /api/v1/invite-to-program`.
#[derive(Deserialize)]
pub struct InviteRequest {
    /// Target channels.
    pub enrollment_ids: Vec<String>,
    /// The Apps and Books invitation URL.
    pub invitation_url: String,
    /// Push after queueing (default true).
    #[serde(default)]
    pub push: Option<bool>,
    /// Optional CommandUUID; a fresh one otherwise.
    #[serde(default)]
    pub command_uuid: Option<String>,
}

/// Apple's availability of `InviteToProgram`: device channel on iOS, user channel on
/// macOS and Shared iPad, never on User Enrollment.
pub fn invite_channel_check(
    e: &EnrollmentRecord,
    device_is_shared_ipad: bool,
) -> Result<(), String> {
    let kind = EnrollmentType::parse(&e.kind).unwrap_or(EnrollmentType::Device);
    match (kind, Platform::parse(&e.platform)) {
        (EnrollmentType::UserEnrollment | EnrollmentType::UserEnrollmentDevice, _) => {
            Err("InviteToProgram is not allowed on User Enrollment".into())
        }
        (EnrollmentType::SharedIpad, _) => Ok(()),
        (EnrollmentType::Device, Platform::Ios) if device_is_shared_ipad => {
            Err("on Shared iPad InviteToProgram goes to the user channel (UDID:ManagedAppleID)".into())
        }
        (EnrollmentType::Device, Platform::Ios) => Ok(()),
        (EnrollmentType::User, Platform::MacOs) => Ok(()),
        (EnrollmentType::Device, Platform::MacOs) => {
            Err("on macOS InviteToProgram goes to the user channel (UDID:UserID), not the device channel".into())
        }
        (_, p) => Err(format!("InviteToProgram is not available on this channel ({} {})", p.as_str(), kind.as_str())),
    }
}

/// `POST /api/v1/invite-to-program`: the typed command, checked against the channel rules.
pub async fn invite_to_program(
    State(state): State<MdmState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    authorize(&state, &headers)?;
    let req: InviteRequest = json_body(&body)?;
    let url = reqwest::Url::parse(&req.invitation_url)
        .map_err(|_| fail(StatusCode::BAD_REQUEST, "invitation_url is not a URL"))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "invitation_url must be http(s)",
        ));
    }
    if req.enrollment_ids.is_empty() {
        return Err(fail(StatusCode::BAD_REQUEST, "no enrollment ID"));
    }
    let mut allowed = Vec::new();
    let mut status = BTreeMap::new();
    for id in &req.enrollment_ids {
        let check = match state.store.enrollment(id).await.map_err(internal)? {
            None => Err("unknown enrollment".to_string()),
            Some(e) => {
                let siblings = state
                    .store
                    .list_enrollments(Some(&e.device_id))
                    .await
                    .map_err(internal)?;
                let shared = siblings
                    .iter()
                    .any(|s| s.kind == EnrollmentType::SharedIpad.as_str());
                invite_channel_check(&e, shared)
            }
        };
        match check {
            Ok(()) => allowed.push(id.clone()),
            Err(why) => {
                status.insert(id.clone(), json!({ "queued": false, "error": why }));
            }
        }
    }
    let uuid = req
        .command_uuid
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string().to_uppercase());
    let cmd = QueuedCommand {
        command_uuid: uuid.clone(),
        request_type: "InviteToProgram".into(),
        command: cloudvpp_mdmwire::invite_to_program(&uuid, &req.invitation_url),
    };
    enqueue_and_push(&state, &allowed, cmd, !req.push.unwrap_or(true), status).await
}

/// `POST /api/v1/push/{ids}`.
pub async fn push(
    State(state): State<MdmState>,
    headers: HeaderMap,
    Path(ids): Path<String>,
) -> ApiResult<Json<Value>> {
    authorize(&state, &headers)?;
    let ids = split_ids(&ids)?;
    Ok(Json(json!({ "status": push_many(&state, &ids).await })))
}

fn enrollment_json(e: &EnrollmentRecord) -> Value {
    json!({
        "id": e.id, "device_id": e.device_id, "type": e.kind, "platform": e.platform,
        "user_short_name": e.user_short_name, "topic": e.topic, "enabled": e.enabled,
        "token_update_tally": e.token_update_tally, "last_seen_at": e.last_seen_at,
    })
}

fn command_json(c: &CommandState) -> Value {
    json!({
        "enrollment_id": c.enrollment_id, "command_uuid": c.command_uuid, "request_type": c.request_type,
        "status": c.status.as_deref().unwrap_or("Queued"), "active": c.active,
        "invitation_result": c.invitation_result, "not_now_count": c.not_now_tally,
        "created_at": c.created_at, "updated_at": c.updated_at,
        "result": c.result.as_ref().map(|r| String::from_utf8_lossy(r).into_owned()),
    })
}

/// `GET /api/v1/enrollments[?device_id=]`.
pub async fn list_enrollments(
    State(state): State<MdmState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    authorize(&state, &headers)?;
    let list = state
        .store
        .list_enrollments(q.get("device_id").map(|s| s.as_str()))
        .await
        .map_err(internal)?;
    Ok(Json(
        json!({ "enrollments": list.iter().map(enrollment_json).collect::<Vec<_>>() }),
    ))
}

/// `GET /api/v1/enrollments/{id}`.
pub async fn get_enrollment(
    State(state): State<MdmState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    authorize(&state, &headers)?;
    let e = state
        .store
        .enrollment(&id)
        .await
        .map_err(internal)?
        .ok_or_else(|| fail(StatusCode::NOT_FOUND, "unknown enrollment"))?;
    let bindings = state
        .store
        .cert_bindings(&e.device_id)
        .await
        .map_err(internal)?;
    let mut v = enrollment_json(&e);
    // Every certificate the device authenticated with; re-enrollments show as replaced ones.
    v["certificates"] = bindings
        .iter()
        .map(|b| {
            json!({
                "sha256": b.sha256, "subject": b.subject, "bound_at": b.bound_at,
                "replaced_at": b.replaced_at, "current": b.replaced_at.is_none(),
            })
        })
        .collect();
    Ok(Json(v))
}

/// `GET /api/v1/enrollments/{id}/commands[?pending=1]`: the queue and the results.
pub async fn list_commands(
    State(state): State<MdmState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    authorize(&state, &headers)?;
    let pending = q.get("pending").is_some_and(|v| v != "0" && v != "false");
    let list = state
        .store
        .list_commands(&id, pending)
        .await
        .map_err(internal)?;
    Ok(Json(
        json!({ "commands": list.iter().map(command_json).collect::<Vec<_>>() }),
    ))
}

/// `GET /api/v1/enrollments/{id}/commands/{uuid}`.
pub async fn get_command(
    State(state): State<MdmState>,
    headers: HeaderMap,
    Path((id, uuid)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    authorize(&state, &headers)?;
    let c = state
        .store
        .command_state(&id, &uuid)
        .await
        .map_err(internal)?
        .ok_or_else(|| fail(StatusCode::NOT_FOUND, "no such command for this enrollment"))?;
    Ok(Json(command_json(&c)))
}
