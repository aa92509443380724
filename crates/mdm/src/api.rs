//! The admin API (`/api/v1/`): HTTP over [`crate::service::MdmService`]. The API key is
//! checked by the layer of [`crate::admin`], before these handlers run.

use crate::admin::{fail, json_body, storage_failure, ApiResult, ErrorBody};
use crate::service::{self, EnqueueError, PushOutcome};
use crate::MdmState;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cloudvpp_mdmwire::decode_command;
use cloudvpp_store::mdm::{
    CommandState, CommandUuid, EnrollmentId, EnrollmentRecord, QueuedCommand,
};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};

/// Path parameter `ids` of the enqueue and push routes.
#[derive(utoipa::IntoParams)]
#[into_params(names("ids"), parameter_in = Path)]
#[allow(dead_code)] // Only describes the parameter; the handlers split the string.
struct IdsParam(
    /// Enrollment IDs, comma-separated.
    String,
);

/// Path parameter `id` of the enrollment routes.
#[derive(utoipa::IntoParams)]
#[into_params(names("id"), parameter_in = Path)]
#[allow(dead_code)] // Only describes the parameter.
struct IdParam(
    /// Enrollment ID (UDID, or EnrollmentID of a user enrollment).
    String,
);

fn split_ids(ids: &str) -> ApiResult<Vec<EnrollmentId>> {
    let ids: Vec<EnrollmentId> = ids
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(EnrollmentId::from)
        .collect();
    if ids.is_empty() {
        return Err(fail(StatusCode::BAD_REQUEST, "no enrollment ID"));
    }
    Ok(ids)
}

/// `{push_result}` or `{push_error}`.
fn push_status(outcome: &PushOutcome) -> schema::PushStatus {
    match outcome {
        PushOutcome::Sent(apns_id) => schema::PushStatus {
            push_result: Some(apns_id.clone()),
            push_error: None,
        },
        PushOutcome::Failed(why) => schema::PushStatus {
            push_result: None,
            push_error: Some(why.to_string()),
        },
    }
}

/// An enrollment the command was not queued for, and why.
fn not_queued(why: impl Into<String>) -> schema::EnqueueStatus {
    schema::EnqueueStatus {
        queued: false,
        error: Some(why.into()),
        push_result: None,
        push_error: None,
    }
}

#[derive(Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PushParam {
    /// Queue without pushing (any value but `0`).
    nopush: Option<String>,
}

/// Queues `cmd` for `ids`, pushes unless `nopush`, and reports per ID.
async fn enqueue_and_push(
    state: &MdmState,
    ids: &[EnrollmentId],
    cmd: QueuedCommand,
    nopush: bool,
    mut status: BTreeMap<String, schema::EnqueueStatus>,
) -> ApiResult<Response> {
    let done = match state.service.enqueue(ids, &cmd).await {
        Ok(done) => done,
        Err(e @ EnqueueError::Duplicate(_)) => {
            return Err(fail(StatusCode::CONFLICT, e.to_string()))
        }
        Err(EnqueueError::Store(e)) => return Err(storage_failure(e)),
    };
    for id in done.unknown {
        status.insert(id.into_string(), not_queued("unknown enrollment"));
    }
    let pushes = if nopush {
        BTreeMap::new()
    } else {
        state.service.push(&done.queued).await
    };
    for id in &done.queued {
        let push = pushes.get(id).map(push_status);
        let (push_result, push_error) =
            push.map_or((None, None), |p| (p.push_result, p.push_error));
        let queued = schema::EnqueueStatus {
            queued: true,
            error: None,
            push_result,
            push_error,
        };
        status.insert(id.to_string(), queued);
    }
    let code = if done.queued.is_empty() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    let body = schema::Enqueued {
        command_uuid: cmd.command_uuid.into_string(),
        request_type: cmd.request_type,
        status,
    };
    Ok((code, Json(body)).into_response())
}

/// `PUT /api/v1/enqueue/{ids}[?nopush=1]` with a raw command plist (nanomdm-compatible).
#[utoipa::path(
    method(put, post),
    path = "/api/v1/enqueue/{ids}",
    tag = "mdm",
    params(IdsParam, PushParam),
    request_body(content = Vec<u8>, content_type = "application/x-apple-aspen-mdm",
        description = "A command plist (Command with RequestType, CommandUUID)"),
    responses(
        (status = 200, description = "Queued for at least one enrollment", body = schema::Enqueued),
        (status = 422, description = "Queued for none (all unknown)", body = schema::Enqueued),
        (status = 400, description = "Not a command plist, or no enrollment ID", body = ErrorBody),
        (status = 409, description = "CommandUUID already queued", body = ErrorBody),
    )
)]
pub async fn enqueue_raw(
    State(state): State<MdmState>,
    Path(ids): Path<String>,
    Query(p): Query<PushParam>,
    body: Bytes,
) -> ApiResult<Response> {
    let ids = split_ids(&ids)?;
    let info = decode_command(&body).map_err(|e| fail(StatusCode::BAD_REQUEST, e.to_string()))?;
    let cmd = QueuedCommand {
        command_uuid: CommandUuid::new(info.command_uuid),
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
#[derive(Deserialize, utoipa::ToSchema)]
pub struct InviteRequest {
    /// Target channels.
    #[schema(value_type = Vec<String>)]
    pub enrollment_ids: Vec<EnrollmentId>,
    /// The Apps and Books invitation URL.
    pub invitation_url: String,
    /// Push after queueing (default true).
    #[serde(default)]
    pub push: Option<bool>,
    /// Optional CommandUUID; a fresh one otherwise.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub command_uuid: Option<CommandUuid>,
}

/// `POST /api/v1/invite-to-program`: the typed command, checked against the channel rules.
#[utoipa::path(
    post,
    path = "/api/v1/invite-to-program",
    tag = "mdm",
    request_body = InviteRequest,
    responses(
        (status = 200, description = "Queued for at least one enrollment", body = schema::Enqueued),
        (status = 422, description = "Queued for none (unknown, or refused by the channel rules)", body = schema::Enqueued),
        (status = 400, description = "Bad body or invitation_url", body = ErrorBody),
        (status = 409, description = "command_uuid already queued", body = ErrorBody),
    )
)]
pub async fn invite_to_program(State(state): State<MdmState>, body: Bytes) -> ApiResult<Response> {
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
        let check = state
            .service
            .check_invite_target(id)
            .await
            .map_err(storage_failure)?;
        match check {
            Ok(()) => allowed.push(id.clone()),
            Err(service::ChannelRefusal::Unknown(_)) => {
                status.insert(id.to_string(), not_queued("unknown enrollment"));
            }
            Err(why) => {
                status.insert(id.to_string(), not_queued(why.to_string()));
            }
        }
    }
    let uuid = req
        .command_uuid
        .clone()
        .unwrap_or_else(|| CommandUuid::new(uuid::Uuid::new_v4().to_string().to_uppercase()));
    let cmd = service::invite_to_program(uuid, &req.invitation_url);
    enqueue_and_push(&state, &allowed, cmd, !req.push.unwrap_or(true), status).await
}

/// `POST /api/v1/push/{ids}`.
#[utoipa::path(
    method(post, get),
    path = "/api/v1/push/{ids}",
    tag = "mdm",
    params(IdsParam),
    responses(
        (status = 200, description = "APNs outcome per enrollment", body = schema::Pushed),
        (status = 400, description = "No enrollment ID", body = ErrorBody),
    )
)]
pub async fn push(
    State(state): State<MdmState>,
    Path(ids): Path<String>,
) -> ApiResult<Json<schema::Pushed>> {
    let ids = split_ids(&ids)?;
    let status = state
        .service
        .push(&ids)
        .await
        .iter()
        .map(|(id, outcome)| (id.to_string(), push_status(outcome)))
        .collect();
    Ok(Json(schema::Pushed { status }))
}

fn enrollment_json(e: &EnrollmentRecord) -> schema::Enrollment {
    schema::Enrollment {
        id: e.id.to_string(),
        device_id: e.device_id.to_string(),
        kind: e.kind.as_str().to_string(),
        platform: e.platform.as_str().to_string(),
        user_short_name: e.user_short_name.clone(),
        topic: e.topic.clone(),
        enabled: e.enabled,
        token_update_tally: e.token_update_tally,
        last_seen_at: e.last_seen_at,
        certificates: None,
    }
}

fn command_json(c: &CommandState) -> schema::Command {
    schema::Command {
        enrollment_id: c.enrollment_id.to_string(),
        command_uuid: c.command_uuid.to_string(),
        request_type: c.request_type.clone(),
        status: c.status.map_or("Queued", |s| s.as_str()).to_string(),
        active: c.active,
        invitation_result: c.invitation_result.clone(),
        not_now_count: c.not_now_tally,
        created_at: c.created_at,
        updated_at: c.updated_at,
        result: c
            .result
            .as_ref()
            .map(|r| String::from_utf8_lossy(r).into_owned()),
    }
}

/// `GET /api/v1/enrollments[?device_id=]`.
#[utoipa::path(
    get,
    path = "/api/v1/enrollments",
    tag = "mdm",
    params(("device_id" = Option<String>, Query, description = "Only this device's enrollments")),
    responses((status = 200, description = "Enrollments", body = schema::Enrollments))
)]
pub async fn list_enrollments(
    State(state): State<MdmState>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<schema::Enrollments>> {
    let list = state
        .store
        .list_enrollments(
            q.get("device_id")
                .map(|d| EnrollmentId::from(d.as_str()))
                .as_ref(),
        )
        .await
        .map_err(storage_failure)?;
    Ok(Json(schema::Enrollments {
        enrollments: list.iter().map(enrollment_json).collect(),
    }))
}

/// `GET /api/v1/enrollments/{id}`.
#[utoipa::path(
    get,
    path = "/api/v1/enrollments/{id}",
    tag = "mdm",
    params(IdParam),
    responses(
        (status = 200, description = "The enrollment with its certificates", body = schema::Enrollment),
        (status = 404, description = "Unknown enrollment", body = ErrorBody),
    )
)]
pub async fn get_enrollment(
    State(state): State<MdmState>,
    Path(id): Path<EnrollmentId>,
) -> ApiResult<Json<schema::Enrollment>> {
    let e = state
        .store
        .enrollment(&id)
        .await
        .map_err(storage_failure)?
        .ok_or_else(|| fail(StatusCode::NOT_FOUND, "unknown enrollment"))?;
    let bindings = state
        .store
        .cert_bindings(&e.device_id)
        .await
        .map_err(storage_failure)?;
    let mut v = enrollment_json(&e);
    // Every certificate the device authenticated with; re-enrollments show as replaced ones.
    v.certificates = Some(
        bindings
            .iter()
            .map(|b| schema::Certificate {
                sha256: b.sha256.clone(),
                subject: b.subject.clone(),
                bound_at: b.bound_at,
                replaced_at: b.replaced_at,
                current: b.replaced_at.is_none(),
            })
            .collect(),
    );
    Ok(Json(v))
}

/// `GET /api/v1/enrollments/{id}/commands[?pending=1]`: the queue and the results.
#[utoipa::path(
    get,
    path = "/api/v1/enrollments/{id}/commands",
    tag = "mdm",
    params(IdParam, ("pending" = Option<String>, Query, description = "Only commands not yet answered (any value but `0` or `false`)")),
    responses((status = 200, description = "Commands, newest first", body = schema::Commands))
)]
pub async fn list_commands(
    State(state): State<MdmState>,
    Path(id): Path<EnrollmentId>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<schema::Commands>> {
    let pending = q.get("pending").is_some_and(|v| v != "0" && v != "false");
    let list = state
        .store
        .list_commands(&id, pending)
        .await
        .map_err(storage_failure)?;
    Ok(Json(schema::Commands {
        commands: list.iter().map(command_json).collect(),
    }))
}

/// `GET /api/v1/enrollments/{id}/commands/{uuid}`.
#[utoipa::path(
    get,
    path = "/api/v1/enrollments/{id}/commands/{uuid}",
    tag = "mdm",
    params(IdParam, ("uuid" = String, Path, description = "CommandUUID")),
    responses(
        (status = 200, description = "The command's state and result", body = schema::Command),
        (status = 404, description = "No such command for this enrollment", body = ErrorBody),
    )
)]
pub async fn get_command(
    State(state): State<MdmState>,
    Path((id, uuid)): Path<(EnrollmentId, CommandUuid)>,
) -> ApiResult<Json<schema::Command>> {
    let c = state
        .store
        .command_state(&id, &uuid)
        .await
        .map_err(storage_failure)?
        .ok_or_else(|| fail(StatusCode::NOT_FOUND, "no such command for this enrollment"))?;
    Ok(Json(command_json(&c)))
}

/// The JSON these handlers answer, for the OpenAPI document and for the handlers, which
/// serialise these types (so the two cannot drift). `deny_unknown_fields` makes the
/// document say `additionalProperties: false`; a field that may be null is `required`
/// when it is always sent, and one sent only sometimes is left out when absent (never
/// null). `tests/openapi_responses.rs` checks real answers against the document.
pub mod schema {
    use serde::Serialize;
    use std::collections::BTreeMap;

    /// What became of one enrollment of an enqueue.
    #[derive(Serialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct EnqueueStatus {
        /// Whether the command was queued for it.
        pub queued: bool,
        /// Why not (`unknown enrollment`, a channel rule).
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        pub error: Option<String>,
        /// The APNs ID of the push.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        pub push_result: Option<String>,
        /// Why the push failed.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        pub push_error: Option<String>,
    }

    /// Answer of an enqueue.
    #[derive(Serialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct Enqueued {
        /// The command's CommandUUID.
        pub command_uuid: String,
        /// Its RequestType.
        pub request_type: String,
        /// Per enrollment ID.
        pub status: BTreeMap<String, EnqueueStatus>,
    }

    /// The push to one enrollment: `push_result` or `push_error`.
    #[derive(Serialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct PushStatus {
        /// The APNs ID of the push.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        pub push_result: Option<String>,
        /// Why the push failed.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        pub push_error: Option<String>,
    }

    /// Answer of a push.
    #[derive(Serialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct Pushed {
        /// Per enrollment ID.
        pub status: BTreeMap<String, PushStatus>,
    }

    /// A certificate a device authenticated with.
    #[derive(Serialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct Certificate {
        /// SHA-256 of the DER, hex.
        pub sha256: String,
        /// Subject.
        #[schema(required = true)]
        pub subject: Option<String>,
        /// Unix ms.
        pub bound_at: i64,
        /// Unix ms; null while current.
        #[schema(required = true)]
        pub replaced_at: Option<i64>,
        /// Whether it is the device's certificate now.
        pub current: bool,
    }

    /// An enrollment (a command channel).
    #[derive(Serialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct Enrollment {
        /// Enrollment ID.
        pub id: String,
        /// The device's ID.
        pub device_id: String,
        /// Kind of channel (`Device`, `User`, ...).
        #[serde(rename = "type")]
        pub kind: String,
        /// Platform.
        pub platform: String,
        /// User short name, for user channels.
        #[schema(required = true)]
        pub user_short_name: Option<String>,
        /// APNs topic.
        pub topic: String,
        /// Whether it is enabled.
        pub enabled: bool,
        /// TokenUpdates received.
        pub token_update_tally: i64,
        /// Unix ms.
        #[schema(required = true)]
        pub last_seen_at: Option<i64>,
        /// Only in `GET /api/v1/enrollments/{id}`: every certificate it authenticated with.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        pub certificates: Option<Vec<Certificate>>,
    }

    /// Answer of `GET /api/v1/enrollments`.
    #[derive(Serialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct Enrollments {
        /// The enrollments.
        pub enrollments: Vec<Enrollment>,
    }

    /// A command and what the device answered.
    #[derive(Serialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct Command {
        /// Enrollment ID.
        pub enrollment_id: String,
        /// CommandUUID.
        pub command_uuid: String,
        /// RequestType.
        pub request_type: String,
        /// `Queued` until answered, then the device's Status (`Acknowledged`, `NotNow`, ...).
        pub status: String,
        /// Whether it is still to be sent.
        pub active: bool,
        /// InviteToProgram's InvitationResult.
        #[schema(required = true)]
        pub invitation_result: Option<String>,
        /// NotNow answers so far.
        pub not_now_count: i64,
        /// Unix ms.
        pub created_at: i64,
        /// Unix ms of the device's last answer; null until it answers.
        #[schema(required = true)]
        pub updated_at: Option<i64>,
        /// The device's answer (plist XML).
        #[schema(required = true)]
        pub result: Option<String>,
    }

    /// Answer of `GET /api/v1/enrollments/{id}/commands`.
    #[derive(Serialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct Commands {
        /// The commands.
        pub commands: Vec<Command>,
    }
}
