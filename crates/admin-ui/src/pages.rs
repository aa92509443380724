//! The handlers: each reads what its page shows (the engine's store, the MDM service),
//! checks its inputs against fixed bounds (a bad one is a 400 page, never a panic) and, for
//! the forms that change something, the session's CSRF token before anything else.

use crate::views::{self, day_secs, when_ms, Choice, Nav};
use crate::{
    error_page, session_set_cookie, storage_page, storage_refusal, Admin, Peer, Refused, Ui,
};
use axum::extract::multipart::{Multipart, MultipartError};
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use cloudvpp_engine::api::{
    admit_invitations, resend_invitation, retire_invitation, AdmitOptions, NewInvitation, Outcome,
    Resend, MAX_INVITATIONS_PER_REQUEST,
};
use cloudvpp_engine::csv_file::{parse_csv, Row};
use cloudvpp_engine::machine::invite_command_uuid;
use cloudvpp_mdm::admin::ApiFailure;
use cloudvpp_store::engine::{
    Invitation, InvitationFilter, InvitationId, InvitationState, Location, LocationId,
};
use cloudvpp_store::mdm::{CommandState, CommandUuid, EnrollmentId};
use serde::Deserialize;
use std::collections::{BTreeSet, HashMap};

/// Invitations per page of the listing.
pub const PAGE_SIZE: i64 = 50;
/// The last page number the listing accepts (a million invitations at [`PAGE_SIZE`]).
pub const MAX_PAGE: u32 = 20_000;
/// The longest search text (an email is at most 254 characters).
pub const MAX_SEARCH: usize = 254;
/// The longest clientUserId, email or enrollment ID a form or link may carry.
const MAX_FIELD: usize = 256;
/// The longest API key the login form considers (longer is simply wrong).
const MAX_KEY: usize = 1024;
/// The most InviteToProgram attempts shown per invitation (the latest ones).
const MAX_ATTEMPTS_SHOWN: i64 = 20;
/// The most bytes of a device's report shown.
const MAX_REPORT_SHOWN: usize = 8 << 10;
/// Seconds between refreshes of the overview while a batch runs.
const REFRESH_SECS: u32 = 5;
/// A batch runs while invitations are in progress and some changed this recently (ms).
const RECENT_MS: i64 = 10 * 60 * 1000;

fn bad_request(message: impl Into<String>) -> Refused {
    Refused::new(StatusCode::BAD_REQUEST, message, None)
}

/// An engine refusal (404, 409, 400, 502...) as a page with its status and words.
fn refused(f: ApiFailure, back: Option<String>) -> Response {
    error_page(f.status(), f.message(), back)
}

/// `/admin/person?location=..&id=..`.
fn person_href(location: LocationId, client_user_id: &str) -> String {
    let query = serde_urlencoded::to_string([
        ("location", location.0.to_string().as_str()),
        ("id", client_user_id),
    ])
    .unwrap_or_default();
    format!("/admin/person?{query}")
}

fn location_name(locations: &[Location], id: LocationId) -> String {
    locations
        .iter()
        .find(|l| l.id == id)
        .map_or_else(|| id.to_string(), |l| l.name.clone())
}

/// A query string's values, or a 400 page when it is not one.
fn query_map(
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<HashMap<String, String>, Refused> {
    q.map(|Query(m)| m)
        .map_err(|e| bad_request(format!("The address's query does not parse: {e}")))
}

// ---- Login and logout ----

pub async fn login_form(State(ui): State<Ui>, headers: axum::http::HeaderMap) -> Response {
    // Already logged in: straight to the overview.
    if crate::session_cookie(&headers)
        .is_some_and(|c| ui.sessions.check(&c, ui.engine.now_ms()).is_some())
    {
        return Redirect::to("/admin").into_response();
    }
    views::render(&views::LoginPage {
        error: None,
        off: !ui.engine.admin.is_on(),
    })
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    key: String,
}

pub async fn login(
    State(ui): State<Ui>,
    Peer(peer): Peer,
    headers: axum::http::HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    let page = |status: StatusCode, error: &str| {
        let mut res = views::render(&views::LoginPage {
            error: Some(error.to_string()),
            off: !ui.engine.admin.is_on(),
        });
        *res.status_mut() = status;
        res
    };
    if !ui.engine.admin.is_on() {
        return page(
            StatusCode::FORBIDDEN,
            "The administrator page is off: start the service with --api-key (or CLOUDVPP_API_KEY).",
        );
    }
    if let Some(wait) = ui.brake.held(peer) {
        let mut res = page(
            StatusCode::TOO_MANY_REQUESTS,
            &format!(
                "Too many failed logins from your address: try again in {} minutes.",
                wait.as_secs().div_ceil(60)
            ),
        );
        res.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(wait.as_secs().max(1)),
        );
        return res;
    }
    let key = match form {
        Ok(Form(f)) => f.key,
        Err(e) => {
            return bad_request(format!("The login form does not parse: {e}")).into_response()
        }
    };
    let key = key.trim();
    if key.len() <= MAX_KEY && ui.engine.admin.matches(key) {
        ui.brake.succeeded(peer);
        // A new session ID at every login; the one the browser held, if any, ends.
        let now = ui.engine.now_ms();
        if let Some(old) = crate::session_cookie(&headers).and_then(|c| ui.sessions.check(&c, now))
        {
            ui.sessions.end(&old, now);
        }
        let session = ui.sessions.create(now);
        tracing::info!(%peer, "administrator logged in to the web page");
        let mut res = Redirect::to("/admin").into_response();
        res.headers_mut().insert(
            header::SET_COOKIE,
            session_set_cookie(Some(&session.cookie), ui.config.secure_cookies),
        );
        return res;
    }
    ui.brake.failed(peer);
    tracing::warn!(%peer, "failed administrator login to the web page");
    // Slows down guessing from any one connection; the brake stops it per address.
    tokio::time::sleep(crate::session::FAILURE_DELAY).await;
    page(StatusCode::FORBIDDEN, "Wrong key.")
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

pub async fn logout(
    State(ui): State<Ui>,
    admin: Admin,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    let given = form.map(|Form(f)| f.csrf).unwrap_or_default();
    if let Err(refused) = admin.check_csrf(&given) {
        return refused.into_response();
    }
    ui.sessions.end(&admin.session, ui.engine.now_ms());
    let mut res = Redirect::to("/admin/login").into_response();
    res.headers_mut().insert(
        header::SET_COOKIE,
        session_set_cookie(None, ui.config.secure_cookies),
    );
    res
}

// ---- Overview ----

/// Counts per state, every state listed (zeros too), with links to the listing.
fn state_counts(
    counts: &[(InvitationState, i64)],
    link: impl Fn(InvitationState) -> String,
    selected: Option<InvitationState>,
) -> Vec<views::StateCount> {
    InvitationState::ALL
        .iter()
        .map(|s| views::StateCount {
            state: s.as_str(),
            count: counts.iter().find(|(k, _)| k == s).map_or(0, |(_, n)| *n),
            href: link(*s),
            selected: selected == Some(*s),
        })
        .collect()
}

const EXPIRY_WARNING_SECS: i64 = 15 * 24 * 3600;

pub async fn overview(
    State(ui): State<Ui>,
    admin: Admin,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let q = match query_map(q) {
        Ok(q) => q,
        Err(page) => return page.into_response(),
    };
    let engine = &ui.engine;
    let locations = match engine.store.locations().await {
        Ok(l) => l,
        Err(e) => return storage_page(e),
    };
    let now_secs = engine.now_ms() / 1000;
    let mut rows = Vec::with_capacity(locations.len());
    for l in &locations {
        let mirrored = match engine.store.mirror_count(l.id).await {
            Ok(n) => n,
            Err(e) => return storage_page(e),
        };
        rows.push(views::LocationRow {
            id: l.id.0,
            name: l.name.clone(),
            uid: l.uid.clone().unwrap_or_default(),
            expires: l
                .expires_at
                .map(day_secs)
                .unwrap_or_else(|| "unknown".into()),
            warning: match l.expires_at {
                Some(e) if e <= now_secs => "expired".into(),
                Some(e) if e - now_secs < EXPIRY_WARNING_SECS => {
                    format!("expires in {} days: renew it", (e - now_secs) / 86_400)
                }
                _ => String::new(),
            },
            last_sync: l
                .last_sync_at
                .map(when_ms)
                .unwrap_or_else(|| "never".into()),
            mirrored,
            conflict: l.conflict,
        });
    }
    let counts = match engine.store.invitation_counts().await {
        Ok(c) => c,
        Err(e) => return storage_page(e),
    };
    let total = counts.iter().map(|(_, n)| n).sum();
    let in_progress = counts
        .iter()
        .filter(|(s, _)| !s.is_terminal())
        .map(|(_, n)| n)
        .sum();
    // Refreshes itself while a batch runs (invitations in progress and some changed
    // lately; an email link can wait for its person for days), unless asked not to.
    let running = in_progress > 0 && {
        let recent = InvitationFilter {
            updated_since: Some(engine.now_ms() - RECENT_MS),
            ..Default::default()
        };
        match engine.store.invitation_counts_matching(&recent).await {
            Ok(c) => c.iter().any(|(_, n)| *n > 0),
            Err(e) => return storage_page(e),
        }
    };
    let live = running && q.get("live").map(String::as_str) != Some("0");
    views::render(&views::OverviewPage {
        nav: Nav {
            csrf: admin.csrf,
            current: "overview",
        },
        locations: rows,
        counts: state_counts(
            &counts,
            |s| format!("/admin/invitations?state={}", s.as_str()),
            None,
        ),
        total,
        in_progress,
        refresh: if live { REFRESH_SECS } else { 0 },
        running,
        now: when_ms(engine.now_ms()),
    })
}

// ---- Invitations ----

/// The listing's filters, read from the query and bounded.
struct Listing {
    search: String,
    state: Option<InvitationState>,
    location: Option<LocationId>,
    page: u32,
}

fn listing(q: &HashMap<String, String>) -> Result<Listing, Refused> {
    let search = q.get("q").map_or("", |s| s.trim()).to_string();
    if search.chars().count() > MAX_SEARCH {
        return Err(bad_request(format!(
            "The search text is at most {MAX_SEARCH} characters."
        )));
    }
    let state = match q.get("state").map(String::as_str) {
        None | Some("") => None,
        Some(s) => Some(InvitationState::parse(s).ok_or_else(|| {
            let all: Vec<&str> = InvitationState::ALL.iter().map(|s| s.as_str()).collect();
            bad_request(format!(
                "Unknown state {s:?}: it is one of {}.",
                all.join(", ")
            ))
        })?),
    };
    let location = match q.get("location").map(String::as_str) {
        None | Some("") => None,
        Some(s) => Some(LocationId(s.parse().map_err(|_| {
            bad_request(format!("The location {s:?} is not a location number."))
        })?)),
    };
    let page = match q.get("page").map(String::as_str) {
        None | Some("") => 1,
        Some(s) => match s.parse::<u32>() {
            Ok(p) if (1..=MAX_PAGE).contains(&p) => p,
            _ => {
                return Err(bad_request(format!(
                    "The page {s:?} is not a page number from 1 to {MAX_PAGE}."
                )))
            }
        },
    };
    Ok(Listing {
        search,
        state,
        location,
        page,
    })
}

/// `/admin/invitations?...` for these filters and page.
fn listing_href(l: &Listing, state: Option<InvitationState>, page: u32) -> String {
    let mut pairs: Vec<(&str, String)> = Vec::new();
    if !l.search.is_empty() {
        pairs.push(("q", l.search.clone()));
    }
    if let Some(s) = state {
        pairs.push(("state", s.as_str().to_string()));
    }
    if let Some(loc) = l.location {
        pairs.push(("location", loc.0.to_string()));
    }
    if page > 1 {
        pairs.push(("page", page.to_string()));
    }
    let query = serde_urlencoded::to_string(&pairs).unwrap_or_default();
    if query.is_empty() {
        "/admin/invitations".into()
    } else {
        format!("/admin/invitations?{query}")
    }
}

pub async fn invitations(
    State(ui): State<Ui>,
    admin: Admin,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let l = match query_map(q).and_then(|q| listing(&q)) {
        Ok(l) => l,
        Err(page) => return page.into_response(),
    };
    let engine = &ui.engine;
    let locations = match engine.store.locations().await {
        Ok(l) => l,
        Err(e) => return storage_page(e),
    };
    let filter = InvitationFilter {
        state: l.state,
        location_id: l.location,
        search: (!l.search.is_empty()).then(|| l.search.clone()),
        limit: Some(PAGE_SIZE),
        offset: Some(i64::from(l.page - 1) * PAGE_SIZE),
        ..Default::default()
    };
    // The counts per state follow the search and the location, not the state chosen, so
    // that every state's count shows beside the one listed.
    let counts = match engine
        .store
        .invitation_counts_matching(&InvitationFilter {
            state: None,
            ..filter.clone()
        })
        .await
    {
        Ok(c) => c,
        Err(e) => return storage_page(e),
    };
    let list = match engine.store.invitations(&filter).await {
        Ok(l) => l,
        Err(e) => return storage_page(e),
    };
    let total: i64 = counts
        .iter()
        .filter(|(s, _)| l.state.is_none_or(|want| want == *s))
        .map(|(_, n)| n)
        .sum();
    let pages = u32::try_from((total + PAGE_SIZE - 1) / PAGE_SIZE)
        .unwrap_or(u32::MAX)
        .max(1);
    let rows = list
        .iter()
        .map(|i| views::InvitationRow {
            person: i.client_user_id.clone(),
            person_href: person_href(i.location_id, &i.client_user_id),
            email: i.email.clone().unwrap_or_default(),
            state: i.state.as_str(),
            reason: i.reason.clone().unwrap_or_default(),
            device: i
                .enrollment_id
                .as_ref()
                .map_or_else(|| "email link".into(), |e| e.to_string()),
            location: location_name(&locations, i.location_id),
            attempts: i.attempts,
            updated: when_ms(i.updated_at),
        })
        .collect();
    let mut states = vec![Choice {
        value: String::new(),
        label: "every state".into(),
        selected: l.state.is_none(),
    }];
    states.extend(InvitationState::ALL.iter().map(|s| Choice {
        value: s.as_str().into(),
        label: s.as_str().into(),
        selected: l.state == Some(*s),
    }));
    let mut location_choices = vec![Choice {
        value: String::new(),
        label: "every location".into(),
        selected: l.location.is_none(),
    }];
    location_choices.extend(locations.iter().map(|loc| Choice {
        value: loc.id.0.to_string(),
        label: format!("{} ({})", loc.name, loc.id),
        selected: l.location == Some(loc.id),
    }));
    views::render(&views::InvitationsPage {
        nav: Nav {
            csrf: admin.csrf,
            current: "invitations",
        },
        search: l.search.clone(),
        states,
        locations: location_choices,
        counts: state_counts(&counts, |s| listing_href(&l, Some(s), 1), l.state),
        rows,
        total,
        page: l.page,
        pages,
        prev: (l.page > 1).then(|| listing_href(&l, l.state, l.page.min(pages + 1) - 1)),
        next: (l.page < pages).then(|| listing_href(&l, l.state, l.page + 1)),
        max_search: MAX_SEARCH,
    })
}

// ---- One person ----

/// What happened to an invitation, in time order, from what is stored: when it was asked
/// for, each InviteToProgram and the device's answer, and its last change.
fn steps(
    inv: &Invitation,
    commands: &[views::CommandRow],
    raw: &[&CommandState],
) -> Vec<views::Step> {
    let mut out: Vec<(i64, String)> = vec![(
        inv.created_at,
        match &inv.enrollment_id {
            Some(e) => format!("asked for, for device {e}: registering"),
            None => "asked for, email link only: registering".into(),
        },
    )];
    // The registration event's time is Apple's; the engine keeps only its ID, so the row
    // has no time of its own (shown empty, placed after the creation).
    let event = inv
        .event_id
        .as_ref()
        .map(|ev| format!("registration event {ev}"));
    for (row, c) in commands.iter().zip(raw) {
        out.push((
            c.created_at,
            format!(
                "InviteToProgram {} queued on {}",
                row.attempt, c.enrollment_id
            ),
        ));
        if let (Some(status), Some(at)) = (c.status, c.updated_at) {
            let result = c
                .invitation_result
                .as_deref()
                .map(|r| format!(", InvitationResult {r}"))
                .unwrap_or_default();
            out.push((at, format!("device answered {}{result}", status.as_str())));
        }
    }
    out.push((
        inv.updated_at,
        format!(
            "last change: now {}{}",
            inv.state,
            inv.reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        ),
    ));
    out.sort_by_key(|(t, _)| *t);
    let mut steps: Vec<views::Step> = out
        .into_iter()
        .map(|(t, what)| views::Step {
            at: when_ms(t),
            what,
        })
        .collect();
    if let Some(what) = event {
        steps.insert(
            1,
            views::Step {
                at: String::new(),
                what,
            },
        );
    }
    steps
}

pub async fn person(
    State(ui): State<Ui>,
    admin: Admin,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let q = match query_map(q) {
        Ok(q) => q,
        Err(page) => return page.into_response(),
    };
    let location = match q.get("location").map(|s| s.parse::<i64>()) {
        Some(Ok(id)) => LocationId(id),
        _ => {
            return bad_request("The address needs a location number (location=...).")
                .into_response()
        }
    };
    let cuid = match q.get("id") {
        Some(id) if !id.is_empty() && id.len() <= MAX_FIELD => id.clone(),
        _ => {
            return bad_request(format!(
                "The address needs the person's clientUserId (id=..., at most {MAX_FIELD} bytes)."
            ))
            .into_response()
        }
    };
    let engine = &ui.engine;
    let loc = match engine.store.location(location).await {
        Ok(Some(l)) => l,
        Ok(None) => return error_page(StatusCode::NOT_FOUND, "No such location.", None),
        Err(e) => return storage_page(e),
    };
    let mut invitations = match engine
        .store
        .invitations_of(&[(location, cuid.clone())])
        .await
    {
        Ok(i) => i,
        Err(e) => return storage_page(e),
    };
    if invitations.is_empty() {
        return error_page(
            StatusCode::NOT_FOUND,
            "No invitation of this person at this location.",
            Some("/admin/invitations".into()),
        );
    }
    invitations.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
    let record = match engine
        .store
        .mirror_users(location, std::slice::from_ref(&cuid))
        .await
    {
        Ok(m) => m
            .into_iter()
            .next()
            .map(|m| (format!("{:?}", m.status), m.email.unwrap_or_default())),
        Err(e) => return storage_page(e),
    };
    // Every command of the channels these invitations used, read once per channel.
    let mut by_channel: HashMap<EnrollmentId, Vec<CommandState>> = HashMap::new();
    let channels: BTreeSet<EnrollmentId> = invitations
        .iter()
        .flat_map(|i| i.channel.iter().chain(i.enrollment_id.iter()).cloned())
        .collect();
    for ch in channels {
        match engine.mdm.store().list_commands(&ch, false).await {
            Ok(c) => {
                by_channel.insert(ch, c);
            }
            Err(e) => return storage_page(e),
        }
    }
    let views = invitations
        .iter()
        .map(|inv| invitation_view(inv, &by_channel))
        .collect();
    let notice = match q.get("done").map(String::as_str) {
        Some("resent") => Some("Sent again."),
        Some("retired") => Some("Retired at Apps and Books."),
        _ => None,
    };
    views::render(&views::PersonPage {
        nav: Nav {
            csrf: admin.csrf,
            current: "",
        },
        person: cuid,
        location: format!("{} ({})", loc.name, loc.id),
        notice,
        record,
        invitations: views,
    })
}

/// One invitation as the person's page shows it, with the InviteToProgram commands sent
/// for it: those whose CommandUUID follows from its attempts (the latest
/// [`MAX_ATTEMPTS_SHOWN`]).
fn invitation_view(
    inv: &Invitation,
    by_channel: &HashMap<EnrollmentId, Vec<CommandState>>,
) -> views::InvitationView {
    let first = (inv.attempts - MAX_ATTEMPTS_SHOWN + 1).max(1);
    let attempts: HashMap<CommandUuid, i64> = (first..=inv.attempts)
        .map(|a| (invite_command_uuid(&inv.id, a), a))
        .collect();
    let mut raw: Vec<&CommandState> = by_channel
        .values()
        .flatten()
        .filter(|c| attempts.contains_key(&c.command_uuid))
        .collect();
    raw.sort_by_key(|c| (c.created_at, attempts[&c.command_uuid]));
    let commands: Vec<views::CommandRow> = raw
        .iter()
        .map(|c| views::CommandRow {
            uuid: c.command_uuid.to_string(),
            attempt: format!("attempt {}", attempts[&c.command_uuid]),
            channel: c.enrollment_id.to_string(),
            status: c
                .status
                .map_or_else(|| "not answered yet".into(), |s| s.as_str().to_string()),
            invitation_result: c.invitation_result.clone().unwrap_or_default(),
            not_now: c.not_now_tally,
            queued: when_ms(c.created_at),
            answered: c.updated_at.map(when_ms).unwrap_or_default(),
            active: c.active,
            current: inv.command_uuid.as_ref() == Some(&c.command_uuid),
            report: c.result.as_ref().map(|r| {
                let text = String::from_utf8_lossy(&r[..r.len().min(MAX_REPORT_SHOWN)]);
                if r.len() > MAX_REPORT_SHOWN {
                    format!("{text}\n… ({} bytes in all)", r.len())
                } else {
                    text.into_owned()
                }
            }),
        })
        .collect();
    let id = inv.id.to_string();
    let escaped = serde_urlencoded::to_string([("", id.as_str())]).unwrap_or_default();
    let path_id = escaped.trim_start_matches('=');
    views::InvitationView {
        steps: steps(inv, &commands, &raw),
        commands,
        id: id.clone(),
        state: inv.state.as_str(),
        reason: inv.reason.clone().unwrap_or_default(),
        email: inv.email.clone().unwrap_or_default(),
        enrollment: inv
            .enrollment_id
            .as_ref()
            .map_or_else(|| "none (email link only)".into(), |e| e.to_string()),
        channel: inv
            .channel
            .as_ref()
            .map(|c| c.to_string())
            .unwrap_or_default(),
        invitation_url: inv.invitation_url.clone().unwrap_or_default(),
        invitation_result: inv.invitation_result.clone().unwrap_or_default(),
        event_id: inv.event_id.clone().unwrap_or_default(),
        attempts: inv.attempts,
        created: when_ms(inv.created_at),
        updated: when_ms(inv.updated_at),
        can_resend: !matches!(
            inv.state,
            InvitationState::Associated | InvitationState::Retired
        ),
        can_retire: inv.state != InvitationState::Retired,
        resend_action: format!("/admin/invitations/{path_id}/resend"),
        retire_action: format!("/admin/invitations/{path_id}/retire"),
    }
}

// ---- Resend and retire ----

#[derive(Deserialize)]
pub struct ResendForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    enrollment_id: String,
}

/// The invitation of a path, bounded; and where its person's page is (to go back to).
async fn target(ui: &Ui, id: &str) -> Result<(InvitationId, Option<String>), Refused> {
    if id.is_empty() || id.len() > MAX_FIELD {
        return Err(bad_request("That is not an invitation ID."));
    }
    let id = InvitationId::new(id);
    let back = match ui.engine.store.invitation(&id).await {
        Ok(i) => i.map(|i| person_href(i.location_id, &i.client_user_id)),
        Err(e) => return Err(storage_refusal(e)),
    };
    Ok((id, back))
}

pub async fn resend(
    State(ui): State<Ui>,
    admin: Admin,
    Path(id): Path<String>,
    form: Result<Form<ResendForm>, FormRejection>,
) -> Response {
    // The token first: a forged request learns nothing and changes nothing.
    // A form that does not parse carries no token that can be checked.
    let form = form.map(|Form(f)| f).unwrap_or(ResendForm {
        csrf: String::new(),
        email: String::new(),
        enrollment_id: String::new(),
    });
    if let Err(refused) = admin.check_csrf(&form.csrf) {
        return refused.into_response();
    }
    let (id, back) = match target(&ui, &id).await {
        Ok(t) => t,
        Err(page) => return page.into_response(),
    };
    let (email, enrollment) = (form.email.trim(), form.enrollment_id.trim());
    if email.len() > MAX_FIELD || enrollment.len() > MAX_FIELD {
        return bad_request(format!(
            "An email or enrollment ID is at most {MAX_FIELD} bytes."
        ))
        .into_response();
    }
    let fix = Resend {
        email: (!email.is_empty()).then(|| email.to_string()),
        enrollment_id: (!enrollment.is_empty()).then(|| EnrollmentId::from(enrollment)),
    };
    match resend_invitation(&ui.engine, &id, fix).await {
        Ok(inv) => done(&inv, "resent"),
        Err(f) => refused(f, back),
    }
}

pub async fn retire(
    State(ui): State<Ui>,
    admin: Admin,
    Path(id): Path<String>,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    let given = form.map(|Form(f)| f.csrf).unwrap_or_default();
    if let Err(refused) = admin.check_csrf(&given) {
        return refused.into_response();
    }
    let (id, back) = match target(&ui, &id).await {
        Ok(t) => t,
        Err(page) => return page.into_response(),
    };
    match retire_invitation(&ui.engine, &id).await {
        Ok(inv) => done(&inv, "retired"),
        Err(f) => refused(f, back),
    }
}

/// Back to the person's page, which says what was done (post, redirect, get: a reload
/// does not do it twice).
fn done(inv: &Invitation, what: &str) -> Response {
    let href = format!(
        "{}&done={what}",
        person_href(inv.location_id, &inv.client_user_id)
    );
    Redirect::to(&href).into_response()
}

// ---- CSV upload ----

fn location_choices(locations: &[Location]) -> Vec<Choice> {
    locations
        .iter()
        .map(|l| Choice {
            value: l.id.0.to_string(),
            label: format!("{} ({})", l.name, l.id),
            selected: false,
        })
        .collect()
}

pub async fn upload_form(State(ui): State<Ui>, admin: Admin) -> Response {
    let locations = match ui.engine.store.locations().await {
        Ok(l) => l,
        Err(e) => return storage_page(e),
    };
    views::render(&views::UploadPage {
        nav: Nav {
            csrf: admin.csrf,
            current: "upload",
        },
        locations: location_choices(&locations),
        max_bytes: crate::MAX_UPLOAD_BYTES,
        max_rows: MAX_INVITATIONS_PER_REQUEST,
    })
}

/// The upload form's fields.
#[derive(Default)]
struct UploadForm {
    csrf: String,
    location: String,
    strict: bool,
    reinvite_retired: bool,
    file_name: String,
    file: Option<Vec<u8>>,
}

fn too_large() -> Refused {
    Refused::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "The file is larger than {} MiB: split it, or use `cloudvpp invite --csv`.",
            crate::MAX_UPLOAD_BYTES >> 20
        ),
        Some("/admin/upload".into()),
    )
}

fn multipart_failure(e: MultipartError) -> Refused {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        too_large()
    } else {
        Refused::new(
            StatusCode::BAD_REQUEST,
            format!("The upload does not parse: {}", e.body_text()),
            Some("/admin/upload".into()),
        )
    }
}

/// Reads the form's fields, each bounded (the body as a whole is bounded by the route).
/// The CSRF token comes first in the form and is checked before the file is read: a forged
/// upload is refused (403) before its file is taken in, whatever else is wrong with it.
async fn read_upload(admin: &Admin, mut mp: Multipart) -> Result<UploadForm, Refused> {
    let mut form = UploadForm::default();
    let mut checked = false;
    // Until the token is checked, any failure is the refusal.
    let fail = |checked: bool, page: Refused| {
        if checked {
            page
        } else {
            admin.check_csrf("").err().unwrap_or(page)
        }
    };
    loop {
        let mut field = match mp.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(fail(checked, multipart_failure(e))),
        };
        let name = field.name().unwrap_or("").to_string();
        if name == "file" {
            admin.check_csrf(&form.csrf)?;
            checked = true;
            form.file_name = field
                .file_name()
                .unwrap_or("")
                .chars()
                .take(MAX_FIELD)
                .collect();
        }
        let limit = if name == "file" {
            crate::MAX_UPLOAD_BYTES
        } else {
            MAX_FIELD
        };
        let mut bytes = Vec::new();
        loop {
            match field.chunk().await {
                Ok(Some(chunk)) if bytes.len() + chunk.len() > limit => {
                    let page = if name == "file" {
                        too_large()
                    } else {
                        bad_request(format!("The field {name:?} is too long."))
                    };
                    return Err(fail(checked, page));
                }
                Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(e) => return Err(fail(checked, multipart_failure(e))),
            }
        }
        let text = || String::from_utf8_lossy(&bytes).trim().to_string();
        match name.as_str() {
            "csrf" => form.csrf = text(),
            "location" => form.location = text(),
            "strict" => form.strict = true,
            "reinvite_retired" => form.reinvite_retired = true,
            "file" => form.file = Some(bytes),
            _ => {}
        }
    }
    admin.check_csrf(&form.csrf)?;
    Ok(form)
}

pub async fn upload(
    State(ui): State<Ui>,
    admin: Admin,
    mp: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Response {
    let form = match mp {
        Ok(mp) => read_upload(&admin, mp).await,
        // Not a multipart body at all: no token can be read from it.
        Err(_) => Err(admin
            .check_csrf("")
            .err()
            .unwrap_or_else(|| bad_request("The upload is not a form with a file."))),
    };
    let form = match form {
        Ok(f) => f,
        Err(page) => return page.into_response(),
    };
    let back = Some("/admin/upload".to_string());
    let location = match form.location.as_str() {
        "" => None,
        s => match s.parse() {
            Ok(id) => Some(LocationId(id)),
            Err(_) => {
                return bad_request(format!("The location {s:?} is not a location number."))
                    .into_response()
            }
        },
    };
    let Some(bytes) = form.file.filter(|b| !b.is_empty()) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "Choose a CSV file to upload.",
            back,
        );
    };
    // The same reader and checks as `cloudvpp invite --csv`.
    let (rows, parse_rejected) = match parse_csv(&bytes) {
        Ok(r) => r,
        Err(e) => {
            return error_page(
                StatusCode::BAD_REQUEST,
                &format!("The file was refused, nobody was invited: {e}."),
                back,
            )
        }
    };
    if rows.len() + parse_rejected.len() > MAX_INVITATIONS_PER_REQUEST {
        return error_page(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "The file has {} rows; at most {MAX_INVITATIONS_PER_REQUEST} per upload: split it, or use `cloudvpp invite --csv`.",
                rows.len() + parse_rejected.len()
            ),
            back,
        );
    }
    if rows.is_empty() && parse_rejected.is_empty() {
        return error_page(
            StatusCode::BAD_REQUEST,
            "The file has a header and no rows.",
            back,
        );
    }
    let entries: Vec<NewInvitation> = rows
        .iter()
        .map(|r| NewInvitation {
            location_id: location,
            client_user_id: r.client_user_id.clone(),
            email: r.email.clone(),
            enrollment_id: r.enrollment_id.as_deref().map(EnrollmentId::from),
        })
        .collect();
    let opts = AdmitOptions {
        dry_run: false,
        atomic: form.strict,
        reinvite_retired: form.reinvite_retired,
    };
    // Strict: the engine judges every row first, and a rejected row (by the file's checks
    // or the engine's) invites nobody, as `invite --csv --strict` does.
    let admitted = if entries.is_empty() {
        None
    } else {
        let dry = form.strict.then_some(AdmitOptions {
            dry_run: true,
            ..opts
        });
        let first = match admit_invitations(&ui.engine, &entries, dry.unwrap_or(opts)).await {
            Ok(a) => a,
            Err(f) => return refused(f, back),
        };
        let any_rejected = !parse_rejected.is_empty()
            || first
                .outcomes
                .iter()
                .any(|(_, o)| matches!(o, Outcome::Rejected(_)));
        if form.strict && !any_rejected {
            match admit_invitations(&ui.engine, &entries, opts).await {
                Ok(a) => Some(a),
                Err(f) => return refused(f, back),
            }
        } else {
            Some(first)
        }
    };
    let stored = admitted.as_ref().is_some_and(|a| a.stored);
    let mut report: Vec<views::ReportRow> = parse_rejected
        .iter()
        .map(|r| views::ReportRow {
            line: r.line,
            person: r.who.clone(),
            person_href: None,
            email: String::new(),
            device: String::new(),
            outcome: "rejected",
            class: "rejected",
            detail: r.reason.clone(),
        })
        .collect();
    if let Some(a) = &admitted {
        for (row, (_, outcome)) in rows.iter().zip(&a.outcomes) {
            report.push(report_row(row, outcome, stored));
        }
    }
    report.sort_by_key(|r| r.line);
    let count = |word: &str| report.iter().filter(|r| r.outcome == word).count();
    tracing::info!(
        rows = report.len(),
        invited = count("invited"),
        rejected = count("rejected"),
        stored,
        "CSV uploaded on the administrator page"
    );
    views::render(&views::ReportPage {
        nav: Nav {
            csrf: admin.csrf,
            current: "upload",
        },
        file: form.file_name,
        invited: count("invited"),
        in_progress: count("already invited"),
        skipped: count("skipped"),
        rejected: count("rejected"),
        stored,
        strict: form.strict,
        rows: report,
    })
}

fn report_row(row: &Row, outcome: &Outcome, stored: bool) -> views::ReportRow {
    let (word, detail, inv) = match outcome {
        Outcome::New(i) if stored => ("invited", "new invitation".to_string(), Some(i)),
        Outcome::New(_) => (
            "not invited",
            "valid, but nobody was invited: a row was rejected (strict)".to_string(),
            None,
        ),
        Outcome::InProgress(i) => (
            "already invited",
            format!("invitation in progress: {}", i.state),
            Some(i),
        ),
        Outcome::Skipped {
            reason, invitation, ..
        } => ("skipped", reason.clone(), invitation.as_ref()),
        Outcome::Rejected(r) => ("rejected", r.clone(), None),
    };
    views::ReportRow {
        line: row.line,
        person: row.client_user_id.clone(),
        person_href: inv.map(|i| person_href(i.location_id, &i.client_user_id)),
        email: row.email.clone().unwrap_or_default(),
        device: row.enrollment_id.clone().unwrap_or_default(),
        outcome: word,
        class: match word {
            "already invited" => "already-invited",
            "not invited" => "not-invited",
            other => other,
        },
        detail,
    }
}
