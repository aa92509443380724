//! The admin API of licences: each location's list of apps and books for every associated
//! person (`/api/v1/locations/{id}/apps`), and assignments (`/api/v1/assignments`). Routed
//! behind the admin API key with the engine's other admin routes.

use crate::licence_worker;
use crate::Engine;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cloudvpp_abwire::assets::PricingParam;
use cloudvpp_mdm::admin::{fail, json_body, storage_failure, ApiResult, ErrorBody};
use cloudvpp_store::engine::{
    Assignment, AssignmentFilter, AssignmentState, InvitationState, LocationApp, LocationId,
};
use serde::Deserialize;
use std::collections::{BTreeSet, HashMap, HashSet};
use utoipa_axum::{router::OpenApiRouter, routes};

/// People one assignment request may name.
pub const MAX_PEOPLE: usize = 10_000;
/// Longest clientUserId or email accepted.
const MAX_ID_LEN: usize = 256;

/// The licence routes (state: the engine), to put behind the admin key.
pub fn routes() -> OpenApiRouter<Engine> {
    OpenApiRouter::new()
        .routes(routes!(list_apps, add_app, remove_app))
        .routes(routes!(list_assignments, create_assignments))
}

/// Whether `adam_id` can be an App Store ID: digits, at most 20 of them.
pub fn valid_adam_id(adam_id: &str) -> bool {
    !adam_id.is_empty() && adam_id.len() <= 20 && adam_id.bytes().all(|b| b.is_ascii_digit())
}

fn check_adam_id(adam_id: &str) -> ApiResult<()> {
    if valid_adam_id(adam_id) {
        Ok(())
    } else {
        Err(fail(
            StatusCode::BAD_REQUEST,
            "adam_id must be an App Store ID (digits, at most 20)",
        ))
    }
}

fn app_json(a: &LocationApp) -> schema::App {
    schema::App {
        location_id: a.location_id.0,
        adam_id: a.adam_id.clone(),
        pricing_param: a.pricing_param.as_str().to_string(),
        created_at: a.created_at,
        assignments_created: None,
    }
}

/// An assignment as the admin API shows it; `reason` is Apple's answer or what it waits for.
pub fn assignment_json(a: &Assignment) -> schema::Assignment {
    let reason = a
        .error
        .as_ref()
        .map(|e| e.to_string())
        .or_else(|| a.note.clone());
    schema::Assignment {
        id: a.id.to_string(),
        location_id: a.location_id.0,
        client_user_id: a.client_user_id.clone(),
        adam_id: a.adam_id.clone(),
        pricing_param: a.pricing_param.as_str().to_string(),
        state: a.state.as_str().to_string(),
        error_number: a.error.as_ref().map(|e| e.number),
        error_message: a.error.as_ref().map(|e| e.message.clone()),
        reason,
        event_id: a.event_id.clone(),
        attempts: a.attempts,
        created_at: a.created_at,
        updated_at: a.updated_at,
    }
}

/// The location `id` of a path, or 404: an ID that is not a number names no location
/// (axum's own rejection would answer 400 in plain text, not the API's JSON).
async fn path_location(engine: &Engine, id: &str) -> ApiResult<LocationId> {
    let id = id
        .parse()
        .map(LocationId)
        .map_err(|_| fail(StatusCode::NOT_FOUND, format!("no location {id}")))?;
    known_location(engine, id).await?;
    Ok(id)
}

async fn known_location(engine: &Engine, id: LocationId) -> ApiResult<()> {
    match engine.store.location(id).await.map_err(storage_failure)? {
        Some(_) => Ok(()),
        None => Err(fail(StatusCode::NOT_FOUND, format!("no location {id}"))),
    }
}

/// `GET /api/v1/locations/{id}/apps`.
#[utoipa::path(
    get,
    path = "/api/v1/locations/{id}/apps",
    tag = "licences",
    params(("id" = i64, Path, description = "Location ID")),
    responses(
        (status = 200, description = "The location's list", body = schema::Apps),
        (status = 404, description = "No such location", body = ErrorBody),
    )
)]
async fn list_apps(
    State(engine): State<Engine>,
    Path(id): Path<String>,
) -> ApiResult<Json<schema::Apps>> {
    let id = path_location(&engine, &id).await?;
    let apps = engine
        .store
        .location_apps(&[id])
        .await
        .map_err(storage_failure)?;
    Ok(Json(schema::Apps {
        apps: apps.iter().map(app_json).collect(),
    }))
}

/// Body of `POST /api/v1/locations/{id}/apps`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApp {
    /// The App Store ID.
    pub adam_id: String,
    /// `STDQ` (default) or `PLUS`.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "STDQ")]
    pub pricing_param: Option<PricingParam>,
}

/// Adds an app or book to the location's list; people already associated get it too.
#[utoipa::path(
    post,
    path = "/api/v1/locations/{id}/apps",
    tag = "licences",
    params(("id" = i64, Path, description = "Location ID")),
    request_body = NewApp,
    responses(
        (status = 201, description = "Added; `assignments_created` for people associated already", body = schema::App),
        (status = 400, description = "Bad body or adam_id", body = ErrorBody),
        (status = 404, description = "No such location", body = ErrorBody),
    )
)]
async fn add_app(
    State(engine): State<Engine>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: NewApp = json_body(&body)?;
    check_adam_id(&req.adam_id)?;
    let id = path_location(&engine, &id).await?;
    let app = LocationApp {
        location_id: id,
        adam_id: req.adam_id,
        pricing_param: req.pricing_param.unwrap_or(PricingParam::Stdq),
        created_at: engine.now_ms(),
    };
    engine
        .store
        .put_location_app(&app)
        .await
        .map_err(storage_failure)?;
    tracing::info!(location = %id, adam_id = app.adam_id, pricing = app.pricing_param.as_str(), "app added to the location's list");
    let created = licence_worker::create_missing(&engine, &[id])
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "creating assignments");
            fail(StatusCode::INTERNAL_SERVER_ERROR, "storage failure")
        })?;
    let mut v = app_json(&app);
    v.assignments_created = Some(created);
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

/// `DELETE /api/v1/locations/{id}/apps?adam_id=`.
#[utoipa::path(
    delete,
    path = "/api/v1/locations/{id}/apps",
    tag = "licences",
    params(("id" = i64, Path, description = "Location ID"), ("adam_id" = String, Query, description = "The App Store ID to remove")),
    responses(
        (status = 200, description = "Removed", body = schema::AppRemoved),
        (status = 400, description = "No or bad adam_id", body = ErrorBody),
        (status = 404, description = "No such location, or not on its list", body = ErrorBody),
    )
)]
async fn remove_app(
    State(engine): State<Engine>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<schema::AppRemoved>> {
    let adam_id = q
        .get("adam_id")
        .ok_or_else(|| fail(StatusCode::BAD_REQUEST, "give adam_id"))?;
    check_adam_id(adam_id)?;
    let id = path_location(&engine, &id).await?;
    if !engine
        .store
        .remove_location_app(id, adam_id)
        .await
        .map_err(storage_failure)?
    {
        return Err(fail(
            StatusCode::NOT_FOUND,
            format!("{adam_id} is not on location {id}'s list"),
        ));
    }
    tracing::info!(location = %id, adam_id, "app removed from the location's list");
    Ok(Json(schema::AppRemoved {
        location_id: id.0,
        adam_id: adam_id.clone(),
        removed: true,
    }))
}

/// `GET /api/v1/assignments[?state=&location_id=&adam_id=&client_user_id=&limit=]`.
#[utoipa::path(
    get,
    path = "/api/v1/assignments",
    tag = "licences",
    params(
        ("state" = Option<String>, Query, description = "Only this state (an unknown one matches nothing)"),
        ("location_id" = Option<i64>, Query, description = "Only this location (also `location`)"),
        ("adam_id" = Option<String>, Query, description = "Only this app or book (also `adamId`)"),
        ("client_user_id" = Option<String>, Query, description = "Only this person"),
        ("limit" = Option<i64>, Query, description = "At most this many (default 1000)"),
    ),
    responses((status = 200, description = "Assignments and counts by state", body = schema::Assignments))
)]
async fn list_assignments(
    State(engine): State<Engine>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<schema::Assignments>> {
    let limit = q
        .get("limit")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000)
        .clamp(1, 100_000);
    let filter = AssignmentFilter {
        state: q.get("state").and_then(|s| AssignmentState::parse(s)),
        location_id: q
            .get("location_id")
            .or_else(|| q.get("location"))
            .and_then(|s| s.parse().ok())
            .map(LocationId),
        adam_id: q.get("adam_id").or_else(|| q.get("adamId")).cloned(),
        client_user_id: q.get("client_user_id").cloned(),
        limit: Some(limit),
    };
    // A state that does not exist matches no assignment.
    let unknown_state = q.contains_key("state") && filter.state.is_none();
    let list = if unknown_state {
        Vec::new()
    } else {
        engine
            .store
            .assignments(&filter)
            .await
            .map_err(storage_failure)?
    };
    let counts = engine
        .store
        .assignment_counts()
        .await
        .map_err(storage_failure)?
        .into_iter()
        .map(|(k, v)| (k.as_str().to_string(), v))
        .collect();
    Ok(Json(schema::Assignments {
        counts,
        assignments: list.iter().map(assignment_json).collect(),
    }))
}

/// Body of `POST /api/v1/assignments`: one app or book for people already invited, named
/// by clientUserId or by email.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAssignments {
    /// The App Store ID.
    pub adam_id: String,
    /// `STDQ` (default) or `PLUS`.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "STDQ")]
    pub pricing_param: Option<PricingParam>,
    /// Only people invited in this location (needed when one is invited in several).
    #[serde(default)]
    #[schema(value_type = Option<i64>)]
    pub location_id: Option<LocationId>,
    /// People by clientUserId.
    #[serde(default)]
    pub client_user_ids: Vec<String>,
    /// People by the email they were invited with.
    #[serde(default)]
    pub emails: Vec<String>,
}

/// Assigns an app or book to invited people: a new assignment each, sent once the person
/// is registered at Apps and Books; a failed one is asked again, a waiting one looked at
/// now; others are returned as they are. People not invited are refused by name (422).
#[utoipa::path(
    post,
    path = "/api/v1/assignments",
    tag = "licences",
    request_body = NewAssignments,
    responses(
        (status = 202, description = "Every person's assignment", body = schema::AssignmentsCreated),
        (status = 422, description = "Some people refused (not invited, or ambiguous)", body = schema::AssignmentsCreated),
        (status = 400, description = "Bad body, adam_id or person", body = ErrorBody),
        (status = 404, description = "No such location", body = ErrorBody),
    )
)]
async fn create_assignments(State(engine): State<Engine>, body: Bytes) -> ApiResult<Response> {
    let req: NewAssignments = json_body(&body)?;
    check_adam_id(&req.adam_id)?;
    let asked = req.client_user_ids.len() + req.emails.len();
    if asked == 0 || asked > MAX_PEOPLE {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            format!("between 1 and {MAX_PEOPLE} people per request (client_user_ids, emails)"),
        ));
    }
    let keys = |v: &[String]| -> ApiResult<Vec<String>> {
        v.iter()
            .map(|s| s.trim().to_string())
            .map(|s| {
                if s.is_empty() || s.len() > MAX_ID_LEN || s.chars().any(char::is_control) {
                    Err(fail(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "invalid person {:?}",
                            s.chars().take(64).collect::<String>()
                        ),
                    ))
                } else {
                    Ok(s)
                }
            })
            .collect()
    };
    let (cuids, emails) = (keys(&req.client_user_ids)?, keys(&req.emails)?);
    if let Some(loc) = req.location_id {
        known_location(&engine, loc).await?;
    }
    let pricing = req.pricing_param.unwrap_or(PricingParam::Stdq);
    let invitations = engine
        .store
        .find_invitations(&cuids, &emails)
        .await
        .map_err(storage_failure)?;
    // Per person asked for: the (location, clientUserId) pairs they were invited as.
    let mut by_cuid: HashMap<&str, HashSet<(LocationId, &str)>> = HashMap::new();
    let mut by_email: HashMap<String, HashSet<(LocationId, &str)>> = HashMap::new();
    for inv in invitations.iter().filter(|i| {
        i.state != InvitationState::Retired && req.location_id.is_none_or(|l| l == i.location_id)
    }) {
        let who = (inv.location_id, inv.client_user_id.as_str());
        by_cuid.entry(&inv.client_user_id).or_default().insert(who);
        if let Some(e) = &inv.email {
            by_email.entry(e.to_lowercase()).or_default().insert(who);
        }
    }
    let mut refused = Vec::new();
    let mut people: BTreeSet<(LocationId, String)> = BTreeSet::new();
    let asked_people = cuids
        .iter()
        .map(|c| (c.clone(), by_cuid.get(c.as_str())))
        .chain(
            emails
                .iter()
                .map(|e| (e.clone(), by_email.get(&e.to_lowercase()))),
        );
    for (person, found) in asked_people {
        match found.map(|s| s.iter().collect::<Vec<_>>()).as_deref() {
            Some([(loc, cuid)]) => {
                people.insert((*loc, cuid.to_string()));
            }
            Some([_, _, ..]) => refused.push(schema::Refused {
                person,
                error: "invited in several locations (or as several people): give location_id"
                    .into(),
            }),
            _ => refused.push(schema::Refused {
                person,
                error: "not invited (no invitation in the engine)".into(),
            }),
        }
    }
    let pairs: Vec<(LocationId, String)> = people.into_iter().collect();
    let existing: HashMap<(LocationId, String), Assignment> = engine
        .store
        .assignments_of(&pairs)
        .await
        .map_err(storage_failure)?
        .into_iter()
        .filter(|a| a.adam_id == req.adam_id)
        .map(|a| ((a.location_id, a.client_user_id.clone()), a))
        .collect();
    let now = engine.now_ms();
    let mut new = Vec::new();
    let mut reopened = Vec::new();
    let mut out = Vec::with_capacity(pairs.len());
    for (loc, cuid) in pairs {
        match existing.get(&(loc, cuid.clone())) {
            None => {
                let a = licence_worker::new_assignment(loc, &cuid, &req.adam_id, pricing, now);
                out.push(assignment_json(&a));
                new.push(a);
            }
            Some(a) if matches!(a.state, AssignmentState::Failed | AssignmentState::Waiting) => {
                let mut a = a.clone();
                if a.state == AssignmentState::Failed {
                    let before = a.state;
                    a.state = AssignmentState::Pending;
                    a.error = None;
                    a.note = Some("asked again".into());
                    a.pricing_param = pricing;
                    licence_worker::log_change(&a, before);
                }
                a.next_action_at = now;
                a.updated_at = now;
                out.push(assignment_json(&a));
                reopened.push(a);
            }
            Some(a) => out.push(assignment_json(a)),
        }
    }
    licence_worker::create(&engine, &new).await.map_err(|e| {
        tracing::error!(error = %e, "creating assignments");
        fail(StatusCode::INTERNAL_SERVER_ERROR, "storage failure")
    })?;
    // A worker holding one of these decides for itself (the write skips it).
    engine
        .store
        .update_idle_assignments(&reopened, now)
        .await
        .map_err(storage_failure)?;
    engine.wake.notify_one();
    let status = if refused.is_empty() {
        StatusCode::ACCEPTED
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    let body = schema::AssignmentsCreated {
        assignments: out,
        refused,
    };
    Ok((status, Json(body)).into_response())
}

/// The JSON these handlers answer, for the OpenAPI document and for the handlers, which
/// serialise these types (so the two cannot drift). `deny_unknown_fields` makes the
/// document say `additionalProperties: false`; a field that may be null is `required`
/// when it is always sent, and one sent only sometimes is left out when absent (never
/// null). `tests/openapi_responses.rs` checks real answers against the document.
pub mod schema {
    use serde::Serialize;
    use std::collections::BTreeMap;

    /// An app or book on a location's list.
    #[derive(Serialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct App {
        /// Location ID.
        pub location_id: i64,
        /// App Store ID.
        pub adam_id: String,
        /// `STDQ` or `PLUS`.
        pub pricing_param: String,
        /// Unix ms.
        pub created_at: i64,
        /// Only in `POST`: assignments made for people associated already.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        pub assignments_created: Option<u64>,
    }

    /// Answer of `GET /api/v1/locations/{id}/apps`.
    #[derive(Serialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct Apps {
        /// The list.
        pub apps: Vec<App>,
    }

    /// Answer of `DELETE /api/v1/locations/{id}/apps`.
    #[derive(Serialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct AppRemoved {
        /// Location ID.
        pub location_id: i64,
        /// App Store ID.
        pub adam_id: String,
        /// Always true.
        pub removed: bool,
    }

    /// A licence assignment.
    #[derive(Serialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct Assignment {
        /// Assignment ID (a UUID).
        pub id: String,
        /// Location ID.
        pub location_id: i64,
        /// The person's clientUserId.
        pub client_user_id: String,
        /// App Store ID.
        pub adam_id: String,
        /// `STDQ` or `PLUS`.
        pub pricing_param: String,
        /// `pending`, `requested`, `assigned`, `waiting`, `failed`.
        pub state: String,
        /// Apple's error number.
        #[schema(required = true)]
        pub error_number: Option<u32>,
        /// Apple's error message.
        #[schema(required = true)]
        pub error_message: Option<String>,
        /// Apple's answer, or what it waits for.
        #[schema(required = true)]
        pub reason: Option<String>,
        /// Pending Apps and Books event.
        #[schema(required = true)]
        pub event_id: Option<String>,
        /// Requests so far.
        pub attempts: i64,
        /// Unix ms.
        pub created_at: i64,
        /// Unix ms.
        pub updated_at: i64,
    }

    /// Answer of `GET /api/v1/assignments`.
    #[derive(Serialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct Assignments {
        /// Every assignment, per state (states with none left out).
        pub counts: BTreeMap<String, i64>,
        /// The assignments.
        pub assignments: Vec<Assignment>,
    }

    /// A person an assignment request could not be made for.
    #[derive(Serialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct Refused {
        /// The clientUserId or email asked for.
        pub person: String,
        /// Why.
        pub error: String,
    }

    /// Answer of `POST /api/v1/assignments`.
    #[derive(Serialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct AssignmentsCreated {
        /// One per person found.
        pub assignments: Vec<Assignment>,
        /// People refused.
        pub refused: Vec<Refused>,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn adam_ids_are_digits() {
        assert!(super::valid_adam_id("408709785"));
        for bad in ["", "12a", "1 2", "123456789012345678901", "../1"] {
            assert!(!super::valid_adam_id(bad), "{bad:?}");
        }
    }
}
