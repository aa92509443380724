//! The engine's HTTP surface: the admin API for locations and invitations, and the
//! endpoint Apps and Books notifications are delivered to.

use crate::machine::{admit, Admission};
use crate::Engine;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use cloudvpp_abclient::Client;
use cloudvpp_abwire::assets::{AssetCountNotification, AssetManagementNotification};
use cloudvpp_abwire::notification::{
    types, NotificationEnvelope, UserAssociatedNotification, UserManagementNotification,
};
use cloudvpp_mdm::admin::{fail, json_body, require_api_key, ApiFailure, ApiResult, ErrorBody};
use cloudvpp_store::engine::{
    Invitation, InvitationFilter, InvitationId, InvitationState, Location, LocationId, NewLocation,
};
use cloudvpp_store::mdm::EnrollmentId;
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use utoipa_axum::{router::OpenApiRouter, routes};

/// The engine's admin routes with their OpenAPI description (router and document from the
/// same `#[utoipa::path]` annotations).
pub fn admin_api() -> OpenApiRouter<Engine> {
    OpenApiRouter::new()
        .routes(routes!(add_location, list_locations))
        .routes(routes!(create_invitations, list_invitations))
        .routes(routes!(get_invitation))
        .routes(routes!(resend))
        .routes(routes!(retire))
        .merge(crate::licence_api::routes())
}

/// Routes to merge into the MDM service's router.
pub fn router(engine: Engine) -> Router {
    let (admin, _) = admin_api().split_for_parts();
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

/// A location as the admin API shows it; the fields of one route only are left to it.
fn location_json(l: &Location, mirrored: i64, now_ms: i64) -> schema::Location {
    let now = now_ms / 1000;
    schema::Location {
        id: l.id.0,
        name: l.name.clone(),
        base_url: l.base_url.clone(),
        uid: l.uid.clone(),
        expires_at: l.expires_at,
        expiry_warning: l.expires_at.is_some_and(|e| e - now < EXPIRY_WARNING_SECS),
        ownership_conflict: l.conflict,
        version_id: l.version_id.clone(),
        mirrored_users: mirrored,
        last_sync_at: l.last_sync_at,
        last_full_sync_at: l.last_full_sync_at,
        rate_limited_answers: None,
        notifications: None,
        existing: None,
        token_replaced: None,
    }
}

/// Body of `POST /api/v1/locations`.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct AddLocation {
    /// The sToken (the `.vpptoken` file content).
    pub stoken: String,
    /// Service base URL; Apple's by default.
    #[serde(default)]
    pub base_url: Option<String>,
}

/// `POST /api/v1/locations`: adds a location, once per organisation. The same sToken again
/// answers 200 with the location there (`"existing": true`); a renewed sToken of the same
/// organisation (same `uId`) replaces the stored one (`"token_replaced": true`) and the
/// notification subscription is set again with a fresh secret.
#[utoipa::path(
    post,
    path = "/api/v1/locations",
    tag = "engine",
    request_body = AddLocation,
    responses(
        (status = 201, description = "Location added", body = schema::Location),
        (status = 200, description = "Already there (`existing`), or its token renewed (`token_replaced`)", body = schema::Location),
        (status = 400, description = "Bad body, or the service refused the token", body = ErrorBody),
        (status = 502, description = "Importing the location's users failed", body = ErrorBody),
    )
)]
async fn add_location(State(engine): State<Engine>, body: Bytes) -> ApiResult<Response> {
    let req: AddLocation = json_body(&body)?;
    let stoken = req.stoken.trim();
    if stoken.is_empty() {
        return Err(fail(StatusCode::BAD_REQUEST, "stoken is empty"));
    }
    let base = req
        .base_url
        .unwrap_or_else(|| cloudvpp_abclient::APPLE_BASE_URL.to_string());
    let client = Client::new(&base, stoken);
    // The token must work before it is stored.
    let cfg = client.client_config().await.map_err(|e| {
        fail(
            StatusCode::BAD_REQUEST,
            format!("the Apps and Books service refused the token: {e}"),
        )
    })?;
    let expires = cloudvpp_abclient::stoken_expiry(stoken);
    let notify_token =
        uuid::Uuid::new_v4().simple().to_string() + &uuid::Uuid::new_v4().simple().to_string();
    let new = NewLocation {
        name: &cfg.location_name,
        stoken,
        base_url: &base,
        notify_token: &notify_token,
        expires_at: expires,
    };
    let (loc, created) = match cfg.meta.u_id.as_deref().filter(|u| !u.is_empty()) {
        Some(uid) => engine
            .store
            .add_location_once(&new, uid)
            .await
            .map_err(internal)?,
        // A service that names no organisation: nothing to recognise it by.
        None => (
            engine
                .store
                .add_location(new.name, stoken, &base, &notify_token, expires)
                .await
                .map_err(internal)?,
            true,
        ),
    };
    let mut token_replaced = false;
    if !created {
        if loc.stoken == stoken && loc.base_url == base {
            // The same organisation and token again: report the location there.
            let mirrored = engine.store.mirror_count(loc.id).await.map_err(internal)?;
            let mut v = location_json(&loc, mirrored, engine.now_ms());
            v.existing = Some(true);
            return Ok((StatusCode::OK, Json(v)).into_response());
        }
        // A renewed token (or a moved service) of an organisation already here.
        engine
            .store
            .replace_location_token(loc.id, &new)
            .await
            .map_err(internal)?;
        token_replaced = true;
        tracing::info!(location = %loc.id, name = loc.name, "location's sToken replaced");
    }
    let loc = engine
        .store
        .location(loc.id)
        .await
        .map_err(internal)?
        .ok_or_else(|| fail(StatusCode::NOT_FOUND, "no location"))?;
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
        Ok(_) => schema::Notifications {
            url,
            subscribed: true,
            error: None,
        },
        Err(e) => {
            // Notifications are an optimisation: without them status polling and sync still work.
            tracing::warn!(location = %loc.id, error = %e, "notifications not configured; relying on polling");
            let _ = client.claim(None).await;
            schema::Notifications {
                url,
                subscribed: false,
                error: Some(e.to_string()),
            }
        }
    };
    if client.ownership_conflict() {
        engine
            .store
            .set_location_conflict(loc.id, true)
            .await
            .map_err(internal)?;
    }
    crate::worker::sync(&engine, &loc, created)
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
    v.notifications = Some(notifications);
    v.existing = Some(!created);
    v.token_replaced = Some(token_replaced);
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(v)).into_response())
}

/// `GET /api/v1/locations`.
#[utoipa::path(
    get,
    path = "/api/v1/locations",
    tag = "engine",
    responses((status = 200, description = "Every location", body = schema::Locations))
)]
async fn list_locations(State(engine): State<Engine>) -> ApiResult<Json<schema::Locations>> {
    let mut out = Vec::new();
    for l in engine.store.locations().await.map_err(internal)? {
        let n = engine.store.mirror_count(l.id).await.map_err(internal)?;
        let mut v = location_json(&l, n, engine.now_ms());
        v.rate_limited_answers = Some(engine.client(&l).rate_limited());
        out.push(v);
    }
    Ok(Json(schema::Locations { locations: out }))
}

/// One requested invitation.
#[derive(Deserialize, Clone, utoipa::ToSchema)]
pub struct NewInvitation {
    /// Location; the only one when omitted.
    #[serde(default)]
    #[schema(value_type = Option<i64>)]
    pub location_id: Option<LocationId>,
    /// The person's clientUserId (a stable ID, not an email).
    pub client_user_id: String,
    /// Email address.
    #[serde(default)]
    pub email: Option<String>,
    /// Enrollment to send InviteToProgram to; none for an email link only.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub enrollment_id: Option<EnrollmentId>,
}

/// Body of `POST /api/v1/invitations`: many with options, or one.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
enum InvitationsBody {
    Many {
        invitations: Vec<NewInvitation>,
        /// Check and decide every entry, store nothing.
        #[serde(default)]
        dry_run: bool,
        /// Store nothing if any entry is rejected.
        #[serde(default)]
        atomic: bool,
        /// Invite people who were retired on purpose (otherwise skipped).
        #[serde(default)]
        reinvite_retired: bool,
    },
    One(NewInvitation),
}

fn invitation_json(i: &Invitation) -> schema::Invitation {
    schema::Invitation {
        id: i.id.to_string(),
        location_id: i.location_id.0,
        client_user_id: i.client_user_id.clone(),
        email: i.email.clone(),
        enrollment_id: i.enrollment_id.as_ref().map(ToString::to_string),
        channel: i.channel.as_ref().map(ToString::to_string),
        state: i.state.as_str().to_string(),
        reason: i.reason.clone(),
        invite_code: i.invite_code.clone(),
        invitation_url: i.invitation_url.clone(),
        event_id: i.event_id.clone(),
        command_uuid: i.command_uuid.as_ref().map(ToString::to_string),
        invitation_result: i.invitation_result.clone(),
        attempts: i.attempts,
        created_at: i.created_at,
        updated_at: i.updated_at,
    }
}

/// The most invitations one request may ask for.
pub const MAX_INVITATIONS_PER_REQUEST: usize = 10_000;

/// Whether `email` passes the engine's check (Apple has the last word, with 9717).
pub fn email_acceptable(email: &str) -> bool {
    email.contains('@') && !email.chars().any(char::is_whitespace) && email.len() <= 254
}

/// What became of one entry of a request.
pub enum Outcome {
    /// A new invitation (stored unless a dry run or a refused atomic request).
    New(Invitation),
    /// The person's invitation in progress on that enrollment.
    InProgress(Invitation),
    /// Not invited: `skip` names why in a word (`retired`, `associated`, `failed`,
    /// `repeated`), `reason` in a sentence.
    Skipped {
        /// Why, in a word.
        skip: &'static str,
        /// Why, in a sentence.
        reason: String,
        /// The invitation it is about, if any.
        invitation: Option<Invitation>,
    },
    /// Refused by a check (email, location, enrollment); why.
    Rejected(String),
}

fn result_json(index: usize, cuid: &str, outcome: &Outcome) -> schema::InvitationOutcome {
    let (word, reason, inv) = match outcome {
        Outcome::New(i) => ("new", None, Some(i)),
        Outcome::InProgress(i) => ("in_progress", None, Some(i)),
        Outcome::Skipped {
            reason, invitation, ..
        } => ("skipped", Some(reason.clone()), invitation.as_ref()),
        Outcome::Rejected(r) => ("rejected", Some(r.clone()), None),
    };
    schema::InvitationOutcome {
        index: i64::try_from(index).unwrap_or(i64::MAX),
        client_user_id: cuid.to_string(),
        outcome: word.to_string(),
        reason,
        skip: match outcome {
            Outcome::Skipped { skip, .. } => Some(skip.to_string()),
            _ => None,
        },
        invitation: inv.map(invitation_json),
    }
}

/// How [`admit_invitations`] treats a request.
#[derive(Debug, Clone, Copy, Default)]
pub struct AdmitOptions {
    /// Check and decide every entry, store nothing.
    pub dry_run: bool,
    /// Store nothing if any entry is rejected.
    pub atomic: bool,
    /// Invite people who were retired on purpose (otherwise skipped).
    pub reinvite_retired: bool,
}

/// What [`admit_invitations`] decided, entry by entry in the order asked (with the
/// clientUserId of each), and whether the new invitations were stored.
pub struct Admitted {
    /// Each entry's clientUserId and outcome.
    pub outcomes: Vec<(String, Outcome)>,
    /// The new invitations were stored (not a dry run, nor an atomic request with a
    /// rejected entry).
    pub stored: bool,
}

/// Checks every entry (client_user_id, email, location, enrollment known to the MDM), lets
/// [`admit`] decide each one (new, in progress, skipped or rejected) and stores the new
/// ones unless `opts` says not to: what `POST /api/v1/invitations` does, for code (the
/// administrator web page's CSV upload). At most [`MAX_INVITATIONS_PER_REQUEST`] entries.
pub async fn admit_invitations(
    engine: &Engine,
    wanted: &[NewInvitation],
    opts: AdmitOptions,
) -> ApiResult<Admitted> {
    let AdmitOptions {
        dry_run,
        atomic,
        reinvite_retired,
    } = opts;
    if wanted.is_empty() || wanted.len() > MAX_INVITATIONS_PER_REQUEST {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            format!("between 1 and {MAX_INVITATIONS_PER_REQUEST} invitations per request"),
        ));
    }
    let locations = engine.store.locations().await.map_err(internal)?;
    if locations.is_empty() {
        return Err(fail(
            StatusCode::CONFLICT,
            "no location yet: add one with `cloudvpp mdm location add`",
        ));
    }
    // Every entry is checked before anything is stored; the MDM is asked once per
    // distinct enrollment.
    let mut enrollments: HashMap<EnrollmentId, bool> = HashMap::new();
    for e in wanted.iter().filter_map(|w| w.enrollment_id.as_ref()) {
        if !enrollments.contains_key(e) {
            let known = engine
                .mdm
                .store()
                .enrollment(e)
                .await
                .map_err(internal)?
                .is_some();
            enrollments.insert(e.clone(), known);
        }
    }
    let checked: Vec<Result<(LocationId, String), String>> = wanted
        .iter()
        .map(|w| {
            let cuid = w.client_user_id.trim().to_string();
            if cuid.is_empty() {
                return Err("client_user_id is required".to_string());
            }
            if let Some(e) = &w.email {
                if !email_acceptable(e) {
                    return Err(format!("invalid email {e:?}"));
                }
            }
            if let Some(e) = &w.enrollment_id {
                if enrollments.get(e) != Some(&true) {
                    return Err(format!("unknown enrollment {e}"));
                }
            }
            let location_id = match (w.location_id, locations.as_slice()) {
                (Some(id), _) if locations.iter().any(|l| l.id == id) => id,
                (Some(id), _) => return Err(format!("no location {id}")),
                (None, [only]) => only.id,
                (None, _) => return Err("several locations: give location_id".to_string()),
            };
            Ok((location_id, cuid))
        })
        .collect();
    // Everything the engine has of these people, in any state: one read for the request,
    // and the mirror's view of them, one read per location.
    let people: Vec<(LocationId, String)> = checked
        .iter()
        .flatten()
        .cloned()
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mut of_person: HashMap<(LocationId, String), Vec<Invitation>> = HashMap::new();
    for inv in engine
        .store
        .invitations_of(&people)
        .await
        .map_err(internal)?
    {
        of_person
            .entry((inv.location_id, inv.client_user_id.clone()))
            .or_default()
            .push(inv);
    }
    let mut retired_in_mirror: HashSet<(LocationId, String)> = HashSet::new();
    let mut by_location: HashMap<LocationId, Vec<String>> = HashMap::new();
    for (loc, cuid) in &people {
        by_location.entry(*loc).or_default().push(cuid.clone());
    }
    for (loc, cuids) in by_location {
        for m in engine
            .store
            .mirror_users(loc, &cuids)
            .await
            .map_err(internal)?
        {
            if m.status == cloudvpp_abwire::UserStatus::Retired {
                retired_in_mirror.insert((loc, m.client_user_id));
            }
        }
    }
    let now = engine.now_ms();
    let mut outcomes: Vec<(String, Outcome)> = Vec::with_capacity(wanted.len());
    let mut first_entry: HashMap<(LocationId, String, Option<EnrollmentId>), usize> =
        HashMap::new();
    for (index, (w, check)) in wanted.iter().zip(checked).enumerate() {
        let (location_id, cuid) = match check {
            Ok(ok) => ok,
            Err(why) => {
                outcomes.push((w.client_user_id.clone(), Outcome::Rejected(why)));
                continue;
            }
        };
        let key = (location_id, cuid.clone(), w.enrollment_id.clone());
        if let Some(first) = first_entry.get(&key) {
            outcomes.push((
                cuid,
                Outcome::Skipped {
                    skip: "repeated",
                    reason: format!("repeats entry {first}"),
                    invitation: None,
                },
            ));
            continue;
        }
        first_entry.insert(key, index);
        let person_key = (location_id, cuid.clone());
        let person = of_person.get(&person_key).map_or(&[][..], Vec::as_slice);
        let outcome = match admit(
            person,
            w.enrollment_id.as_ref(),
            retired_in_mirror.contains(&person_key),
            reinvite_retired,
        ) {
            Admission::InProgress(i) => Outcome::InProgress(i.clone()),
            Admission::Skipped(skip, inv) => Outcome::Skipped {
                skip: skip.as_str(),
                reason: match (skip, inv) {
                    (crate::machine::Skip::Retired, Some(i)) => format!(
                        "retired (invitation {}); add reinvite_retired to invite them again",
                        i.id
                    ),
                    (crate::machine::Skip::Retired, None) => "retired at Apps and Books; add reinvite_retired to invite them again".to_string(),
                    (crate::machine::Skip::Associated, Some(i)) => {
                        format!("already associated (invitation {})", i.id)
                    }
                    (crate::machine::Skip::Failed, Some(i)) => format!(
                        "invitation {} failed ({}); resend it, with a corrected email or enrollment if need be",
                        i.id,
                        i.reason.as_deref().unwrap_or("no reason recorded")
                    ),
                    (skip, None) => skip.as_str().to_string(),
                },
                invitation: inv.cloned(),
            },
            Admission::New => Outcome::New(Invitation {
                id: InvitationId::new(uuid::Uuid::new_v4().to_string()),
                location_id,
                client_user_id: cuid.clone(),
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
            }),
        };
        outcomes.push((cuid, outcome));
    }
    let rejected = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Rejected(_)))
        .count();
    let refused = atomic && rejected > 0;
    let store = !(dry_run || refused);
    let created: Vec<Invitation> = outcomes
        .iter()
        .filter_map(|(_, o)| match o {
            Outcome::New(i) => Some(i.clone()),
            _ => None,
        })
        .collect();
    if store && !created.is_empty() {
        engine
            .store
            .create_invitations(&created)
            .await
            .map_err(internal)?;
        for inv in &created {
            crate::worker::log_transition(inv, "new");
        }
        engine.wake.notify_one();
    }
    Ok(Admitted {
        outcomes,
        stored: store,
    })
}

/// `POST /api/v1/invitations`: one invitation, or `{"invitations": [...]}` with the options
/// above. Every entry is checked first (client_user_id, email, location, enrollment known
/// to the MDM) and decided by [`admit`]: new, in progress, skipped or rejected; `results`
/// says which, entry by entry. 202 when none was rejected, 422 when some were (the others
/// are stored unless `atomic`), 400 when all were; `dry_run` stores nothing and answers 200.
#[utoipa::path(
    post,
    path = "/api/v1/invitations",
    tag = "engine",
    request_body = InvitationsBody,
    responses(
        (status = 202, description = "Every entry accepted", body = schema::InvitationsCreated),
        (status = 200, description = "`dry_run`: decided, nothing stored", body = schema::InvitationsCreated),
        (status = 422, description = "Some entries rejected", body = schema::InvitationsCreated),
        (status = 400, description = "Every entry rejected (`error`: the first reason), or not a request (a bad body, no entry or too many: `{\"error\": ...}` alone)", body = schema::InvitationsRefused),
        (status = 409, description = "No location yet", body = ErrorBody),
    )
)]
async fn create_invitations(State(engine): State<Engine>, body: Bytes) -> ApiResult<Response> {
    let req: InvitationsBody = json_body(&body)?;
    let (wanted, opts) = match req {
        InvitationsBody::Many {
            invitations,
            dry_run,
            atomic,
            reinvite_retired,
        } => (
            invitations,
            AdmitOptions {
                dry_run,
                atomic,
                reinvite_retired,
            },
        ),
        InvitationsBody::One(one) => (vec![one], AdmitOptions::default()),
    };
    let dry_run = opts.dry_run;
    let Admitted {
        outcomes,
        stored: store,
    } = admit_invitations(&engine, &wanted, opts).await?;
    let rejected = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Rejected(_)))
        .count();
    let count = |word: &str| -> i64 {
        outcomes
            .iter()
            .filter(|(_, o)| {
                matches!(
                    (word, o),
                    ("new", Outcome::New(_))
                        | ("in_progress", Outcome::InProgress(_))
                        | ("skipped", Outcome::Skipped { .. })
                        | ("rejected", Outcome::Rejected(_))
                )
            })
            .count()
            .try_into()
            .unwrap_or(i64::MAX)
    };
    let invitations = outcomes
        .iter()
        .filter_map(|(_, o)| match o {
            Outcome::New(i) | Outcome::InProgress(i) => Some(invitation_json(i)),
            _ => None,
        })
        .collect();
    let results = outcomes
        .iter()
        .enumerate()
        .map(|(i, (cuid, o))| result_json(i, cuid, o))
        .collect();
    let mut v = schema::InvitationsCreated {
        invitations,
        results,
        summary: schema::OutcomeSummary {
            new: count("new"),
            in_progress: count("in_progress"),
            skipped: count("skipped"),
            rejected: count("rejected"),
        },
        stored: store,
        error: None,
    };
    let status = if rejected == outcomes.len() {
        let first = outcomes.iter().find_map(|(_, o)| match o {
            Outcome::Rejected(r) => Some(r.clone()),
            _ => None,
        });
        v.error = first;
        StatusCode::BAD_REQUEST
    } else if rejected > 0 {
        StatusCode::UNPROCESSABLE_ENTITY
    } else if dry_run {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(v)).into_response())
}

/// The query of `GET /api/v1/invitations`.
fn invitation_filter(q: &HashMap<String, String>) -> ApiResult<InvitationFilter> {
    let number = |name: &str| -> ApiResult<Option<i64>> {
        q.get(name)
            .map(|s| {
                s.parse::<i64>()
                    .map_err(|_| fail(StatusCode::BAD_REQUEST, format!("{name} is not a number")))
            })
            .transpose()
    };
    let state = q
        .get("state")
        .map(|s| {
            InvitationState::parse(s).ok_or_else(|| {
                let all: Vec<&str> = InvitationState::ALL.iter().map(|s| s.as_str()).collect();
                fail(
                    StatusCode::BAD_REQUEST,
                    format!("unknown state {s:?}: one of {}", all.join(", ")),
                )
            })
        })
        .transpose()?;
    Ok(InvitationFilter {
        state,
        location_id: number("location_id")?.map(LocationId),
        client_user_id: q.get("client_user_id").cloned(),
        updated_since: number("updated_since")?,
        limit: Some(number("limit")?.unwrap_or(1000).clamp(1, 100_000)),
        ..Default::default()
    })
}

/// `GET /api/v1/invitations[?state=&location_id=&client_user_id=&updated_since=&limit=]`:
/// newest first (oldest change first with `updated_since`, Unix ms), with the counts by
/// state and the `total` of what the filters select (the limit aside).
#[utoipa::path(
    get,
    path = "/api/v1/invitations",
    tag = "engine",
    params(
        ("state" = Option<String>, Query, description = "Only this state"),
        ("location_id" = Option<i64>, Query, description = "Only this location"),
        ("client_user_id" = Option<String>, Query, description = "Only this person"),
        ("updated_since" = Option<i64>, Query, description = "Changed since (Unix ms); oldest change first"),
        ("limit" = Option<i64>, Query, description = "At most this many (default 1000)"),
    ),
    responses(
        (status = 200, description = "Invitations, counts by state, total", body = schema::Invitations),
        (status = 400, description = "Unknown state, or a number that is not one", body = ErrorBody),
    )
)]
async fn list_invitations(
    State(engine): State<Engine>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<schema::Invitations>> {
    let filter = invitation_filter(&q)?;
    let list = engine.store.invitations(&filter).await.map_err(internal)?;
    let matching = engine
        .store
        .invitation_counts_matching(&filter)
        .await
        .map_err(internal)?;
    let mut counts = std::collections::BTreeMap::new();
    for s in InvitationState::ALL {
        let n = matching
            .iter()
            .find(|(k, _)| *k == s)
            .map_or(0, |(_, n)| *n);
        counts.insert(s.as_str().to_string(), n);
    }
    let total: i64 = matching.iter().map(|(_, n)| n).sum();
    Ok(Json(schema::Invitations {
        counts,
        total,
        invitations: list.iter().map(invitation_json).collect(),
    }))
}

/// `GET /api/v1/invitations/{id}`.
#[utoipa::path(
    get,
    path = "/api/v1/invitations/{id}",
    tag = "engine",
    params(("id" = String, Path, description = "Invitation ID")),
    responses(
        (status = 200, description = "The invitation", body = schema::Invitation),
        (status = 404, description = "No such invitation", body = ErrorBody),
    )
)]
async fn get_invitation(
    State(engine): State<Engine>,
    Path(id): Path<InvitationId>,
) -> ApiResult<Json<schema::Invitation>> {
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

/// Body of `POST /api/v1/invitations/{id}/resend` (optional): corrections to send with.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resend {
    /// A corrected email: registration starts over with it when it had not succeeded;
    /// a registered person's record is updated at Apps and Books.
    #[serde(default)]
    pub email: Option<String>,
    /// Another enrollment to send InviteToProgram to (its channel is chosen again).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub enrollment_id: Option<EnrollmentId>,
}

/// Sends the invitation again: a new InviteToProgram on the same channel, or a fresh
/// registration if registration failed; with a corrected email or enrollment when the body
/// gives one.
#[utoipa::path(
    post,
    path = "/api/v1/invitations/{id}/resend",
    tag = "engine",
    params(("id" = String, Path, description = "Invitation ID")),
    request_body(content = Option<Resend>, description = "Optional corrections"),
    responses(
        (status = 200, description = "The invitation, sent again", body = schema::Invitation),
        (status = 400, description = "Bad email or unknown enrollment", body = ErrorBody),
        (status = 404, description = "No such invitation", body = ErrorBody),
        (status = 409, description = "Associated or retired already", body = ErrorBody),
        (status = 502, description = "Apps and Books failed", body = ErrorBody),
    )
)]
async fn resend(
    State(engine): State<Engine>,
    Path(id): Path<InvitationId>,
    body: Bytes,
) -> ApiResult<Json<schema::Invitation>> {
    let fix: Resend = if body.iter().all(u8::is_ascii_whitespace) {
        Resend::default()
    } else {
        json_body(&body)?
    };
    let inv = resend_invitation(&engine, &id, fix).await?;
    Ok(Json(invitation_json(&inv)))
}

/// Sends the invitation `id` again (what `POST /api/v1/invitations/{id}/resend` does, for
/// code): 404 unknown, 409 associated or retired, 400 a bad correction.
pub async fn resend_invitation(
    engine: &Engine,
    id: &InvitationId,
    fix: Resend,
) -> ApiResult<Invitation> {
    let mut inv = find_invitation(engine, id).await?;
    if matches!(
        inv.state,
        InvitationState::Associated | InvitationState::Retired
    ) {
        return Err(fail(
            StatusCode::CONFLICT,
            format!("invitation is {}", inv.state),
        ));
    }
    if let Some(e) = &fix.email {
        if !email_acceptable(e) {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                format!("invalid email {e:?}"),
            ));
        }
    }
    if let Some(e) = &fix.enrollment_id {
        if engine
            .mdm
            .store()
            .enrollment(e)
            .await
            .map_err(internal)?
            .is_none()
        {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                format!("unknown enrollment {e}"),
            ));
        }
    }
    if let Some(email) = fix.email.filter(|e| inv.email.as_ref() != Some(e)) {
        if inv.invite_code.is_some() {
            // Registered already: the person's record at Apps and Books takes the new email.
            let loc = engine
                .store
                .location(inv.location_id)
                .await
                .map_err(internal)?
                .ok_or_else(|| fail(StatusCode::NOT_FOUND, "no location"))?;
            let user = cloudvpp_abwire::RequestUser {
                client_user_id: inv.client_user_id.clone(),
                email: Some(email.clone()),
                ..Default::default()
            };
            let events = engine
                .client(&loc)
                .update_users(&[user])
                .await
                .map_err(|e| fail(StatusCode::BAD_GATEWAY, e.to_string()))?;
            tracing::info!(invitation = %inv.id, person = inv.client_user_id, events = events.join(","), "email updated at Apps and Books");
        }
        inv.email = Some(email);
    }
    if let Some(e) = fix
        .enrollment_id
        .filter(|e| inv.enrollment_id.as_ref() != Some(e))
    {
        inv.enrollment_id = Some(e);
        // The channel follows from the new enrollment, chosen when it is delivered.
        inv.channel = None;
    }
    match (&inv.invite_code, &inv.channel) {
        (Some(_), Some(channel)) => {
            let channel = channel.clone();
            crate::worker::deliver(engine, &mut inv, channel)
                .await
                .map_err(internal)?;
        }
        (Some(_), None) => {
            let before = inv.state;
            inv.state = InvitationState::Registered;
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
    Ok(inv)
}

/// Retires the person at Apps and Books and ends the invitation.
#[utoipa::path(
    post,
    path = "/api/v1/invitations/{id}/retire",
    tag = "engine",
    params(("id" = String, Path, description = "Invitation ID")),
    responses(
        (status = 200, description = "The retired invitation", body = schema::Invitation),
        (status = 404, description = "No such invitation", body = ErrorBody),
        (status = 502, description = "Apps and Books failed", body = ErrorBody),
    )
)]
async fn retire(
    State(engine): State<Engine>,
    Path(id): Path<InvitationId>,
) -> ApiResult<Json<schema::Invitation>> {
    let inv = retire_invitation(&engine, &id).await?;
    Ok(Json(invitation_json(&inv)))
}

/// Retires the person of invitation `id` at Apps and Books and ends the invitation (what
/// `POST /api/v1/invitations/{id}/retire` does, for code): 404 unknown, 502 when Apps and
/// Books refuses.
pub async fn retire_invitation(engine: &Engine, id: &InvitationId) -> ApiResult<Invitation> {
    let mut inv = find_invitation(engine, id).await?;
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
    Ok(inv)
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

/// The JSON these handlers answer, for the OpenAPI document and for the handlers, which
/// serialise these types (so the two cannot drift). `deny_unknown_fields` makes the
/// document say `additionalProperties: false`; a field that may be null is `required`
/// when it is always sent, and one sent only sometimes is left out when absent (never
/// null). `tests/openapi_responses.rs` checks real answers against the document.
pub mod schema {
    use cloudvpp_mdm::admin::ErrorBody;
    use serde::Serialize;
    use std::collections::BTreeMap;

    /// The notification subscription set when a location is added.
    #[derive(Serialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct Notifications {
        /// Where Apps and Books sends them.
        pub url: String,
        /// Whether the service took the subscription (polling works without).
        pub subscribed: bool,
        /// Why not.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        pub error: Option<String>,
    }

    /// A location (one sToken).
    #[derive(Serialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct Location {
        /// Location ID.
        pub id: i64,
        /// Apple's name of the location.
        pub name: String,
        /// Apps and Books base URL.
        pub base_url: String,
        /// The organisation's uId.
        #[schema(required = true)]
        pub uid: Option<String>,
        /// sToken expiry, Unix seconds.
        #[schema(required = true)]
        pub expires_at: Option<i64>,
        /// The sToken expires within 15 days.
        pub expiry_warning: bool,
        /// Another MDM claims the location.
        pub ownership_conflict: bool,
        /// Last user sync's versionId.
        #[schema(required = true)]
        pub version_id: Option<String>,
        /// Users mirrored from Apps and Books.
        pub mirrored_users: i64,
        /// Unix ms.
        #[schema(required = true)]
        pub last_sync_at: Option<i64>,
        /// Unix ms.
        #[schema(required = true)]
        pub last_full_sync_at: Option<i64>,
        /// In `GET /api/v1/locations`: 429 answers this process got for it.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        pub rate_limited_answers: Option<u64>,
        /// In `POST /api/v1/locations`, but when the location was there already.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        pub notifications: Option<Notifications>,
        /// In `POST /api/v1/locations`: the location was there already.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        pub existing: Option<bool>,
        /// In `POST /api/v1/locations`, but when the location was there already: a renewed
        /// sToken replaced the stored one.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        pub token_replaced: Option<bool>,
    }

    /// Answer of `GET /api/v1/locations`.
    #[derive(Serialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct Locations {
        /// The locations.
        pub locations: Vec<Location>,
    }

    /// An invitation.
    #[derive(Serialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct Invitation {
        /// Invitation ID (a UUID).
        pub id: String,
        /// Location ID.
        pub location_id: i64,
        /// The person's clientUserId.
        pub client_user_id: String,
        /// Email.
        #[schema(required = true)]
        pub email: Option<String>,
        /// Enrollment asked for.
        #[schema(required = true)]
        pub enrollment_id: Option<String>,
        /// Enrollment the InviteToProgram goes to.
        #[schema(required = true)]
        pub channel: Option<String>,
        /// `registering`, `registered`, `queued`, `delivered`, `associated`, `failed`, `retired`.
        pub state: String,
        /// Why it is in that state.
        #[schema(required = true)]
        pub reason: Option<String>,
        /// Apps and Books invite code.
        #[schema(required = true)]
        pub invite_code: Option<String>,
        /// The invitation URL.
        #[schema(required = true)]
        pub invitation_url: Option<String>,
        /// Pending Apps and Books event.
        #[schema(required = true)]
        pub event_id: Option<String>,
        /// The InviteToProgram's CommandUUID.
        #[schema(required = true)]
        pub command_uuid: Option<String>,
        /// The device's InvitationResult.
        #[schema(required = true)]
        pub invitation_result: Option<String>,
        /// Deliveries so far.
        pub attempts: i64,
        /// Unix ms.
        pub created_at: i64,
        /// Unix ms.
        pub updated_at: i64,
    }

    /// Answer of `GET /api/v1/invitations`.
    #[derive(Serialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct Invitations {
        /// Per state (every state), of what the filters select.
        pub counts: BTreeMap<String, i64>,
        /// What the filters select, the limit aside.
        pub total: i64,
        /// The invitations.
        pub invitations: Vec<Invitation>,
    }

    /// The decision on one entry of `POST /api/v1/invitations`.
    #[derive(Serialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct InvitationOutcome {
        /// Position in the request.
        pub index: i64,
        /// The entry's clientUserId.
        pub client_user_id: String,
        /// `new`, `in_progress`, `skipped` or `rejected`.
        pub outcome: String,
        /// Why skipped or rejected; null otherwise.
        #[schema(required = true)]
        pub reason: Option<String>,
        /// For `skipped`: the kind of skip (`retired`, `associated`, `failed`, `repeated`).
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        pub skip: Option<String>,
        /// The invitation concerned, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        pub invitation: Option<Invitation>,
    }

    /// Counts of the outcomes.
    #[derive(Serialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct OutcomeSummary {
        /// New invitations.
        pub new: i64,
        /// Already in progress.
        pub in_progress: i64,
        /// Skipped.
        pub skipped: i64,
        /// Rejected.
        pub rejected: i64,
    }

    /// Answer of `POST /api/v1/invitations`.
    #[derive(Serialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct InvitationsCreated {
        /// New and in-progress invitations.
        pub invitations: Vec<Invitation>,
        /// One per entry, in order.
        pub results: Vec<InvitationOutcome>,
        /// Counts of the outcomes.
        pub summary: OutcomeSummary,
        /// Whether anything was stored.
        pub stored: bool,
        /// Only when every entry was rejected (400): the first reason.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        pub error: Option<String>,
    }

    /// Answer 400 of `POST /api/v1/invitations`: every entry rejected, or a request that
    /// is not one (a bad body, no entry or too many).
    #[derive(Serialize, utoipa::ToSchema)]
    #[serde(untagged)]
    pub enum InvitationsRefused {
        /// Every entry rejected, each with its reason.
        Rejected(InvitationsCreated),
        /// Not a request.
        Bad(ErrorBody),
    }
}
