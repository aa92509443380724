//! The invitation page a person opens from the `invitationEmail` link or the
//! `InviteToProgram` command: enter the Apple Account, accept, become `Associated`.
//! `POST /invite/accept` is the same action in JSON, for scripts and simulators.

use crate::events::{self, AcceptOutcome};
use crate::ids::id_hash;
use crate::users::valid_email;
use crate::AppState;
use axum::extract::{Form, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use cloudvpp_abwire::notification::types::USER_ASSOCIATED;
use cloudvpp_abwire::UserStatus;
use cloudvpp_store::{OrgId, StoreError, UserUpdate};
use serde::Deserialize;

/// Query of the page.
#[derive(Debug, Deserialize)]
pub struct PageQuery {
    #[serde(rename = "inviteCode")]
    invite_code: Option<String>,
}

/// The form and the JSON body.
#[derive(Debug, Deserialize)]
pub struct AcceptRequest {
    #[serde(rename = "inviteCode")]
    invite_code: Option<String>,
    #[serde(rename = "appleId")]
    apple_id: Option<String>,
}

/// Headers of every invitation page and answer: it may not be framed (clickjacking the
/// Accept button), runs no script and loads nothing, posts its form only here, and its URL,
/// which carries the invite code, is not passed on as a referrer or kept in caches.
pub async fn security_headers(mut resp: Response) -> Response {
    use axum::http::{header, HeaderValue};
    let h = resp.headers_mut();
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn html_page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
<title>{t}</title><style>body{{font-family:-apple-system,Helvetica,sans-serif;max-width:30em;margin:3em auto;padding:0 1em;color:#1d1d1f}}\
input{{font-size:1em;padding:.4em;width:100%;box-sizing:border-box}}button{{font-size:1em;padding:.5em 1.5em;margin-top:1em}}</style></head>\
<body><h1>{t}</h1>{body}</body></html>",
        t = escape(title)
    );
    (status, Html(html)).into_response()
}

/// Why an invitation cannot be accepted, with the status and words for people and scripts.
fn refusal(outcome: &AcceptOutcome) -> (StatusCode, &'static str, &'static str) {
    match outcome {
        AcceptOutcome::AlreadyAccepted => (
            StatusCode::CONFLICT,
            "already_accepted",
            "This invitation has already been accepted.",
        ),
        AcceptOutcome::Retired => (
            StatusCode::GONE,
            "retired",
            "This invitation is no longer valid: your organisation has withdrawn it.",
        ),
        AcceptOutcome::AccountInUse => (
            StatusCode::CONFLICT,
            "account_in_use",
            "This Apple Account is already associated with another user of this organisation.",
        ),
        AcceptOutcome::AccountRefused => (
            StatusCode::FORBIDDEN,
            "apple_account_cannot_associate",
            "Unable to associate the Apple Account with this user. Use another Apple Account.",
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "unknown",
            "This invitation code is not valid. Check the link you received.",
        ),
    }
}

/// Whether `code` can be an invite code at all (ours are 32 hex digits): anything else is
/// unknown without asking the database, which need not be able to hold it (NUL).
fn plausible_code(code: &str) -> bool {
    code.len() <= 64 && code.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The page for one code.
async fn page_handler(state: &AppState, code: Option<&str>) -> Response {
    let Some(code) = code.map(str::trim).filter(|c| !c.is_empty()) else {
        return html_page(
            StatusCode::BAD_REQUEST,
            "Invitation",
            "<p>The link has no invitation code.</p>",
        );
    };
    let found = if !plausible_code(code) {
        Ok(None)
    } else {
        state.store.find_invitation(code).await
    };
    let found = match found {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(error = %e, "invitation lookup");
            return html_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Invitation",
                "<p>Something went wrong. Try again later.</p>",
            );
        }
    };
    let outcome = match found {
        None => AcceptOutcome::Unknown,
        Some((org_id, user)) => match user.status {
            UserStatus::Registered => {
                let org = state.store.get_org(org_id).await.ok().flatten();
                let org_name = org.map(|o| o.name).unwrap_or_default();
                return html_page(
                    StatusCode::OK,
                    "Join your organisation's Apps and Books",
                    &format!(
                        "<p><b>{org}</b> invites you to receive apps and books it buys for you.</p>\
<form method=\"post\" action=\"/invite\"><input type=\"hidden\" name=\"inviteCode\" value=\"{code}\">\
<label for=\"appleId\">Apple Account</label><input id=\"appleId\" name=\"appleId\" type=\"email\" required placeholder=\"name@example.com\">\
<button type=\"submit\">Accept</button></form>",
                        org = escape(&org_name),
                        code = escape(code)
                    ),
                );
            }
            UserStatus::Associated => AcceptOutcome::AlreadyAccepted,
            _ => AcceptOutcome::Retired,
        },
    };
    let (status, _, text) = refusal(&outcome);
    html_page(status, "Invitation", &format!("<p>{}</p>", escape(text)))
}

/// `GET /invite`.
pub async fn show(State(state): State<AppState>, Query(q): Query<PageQuery>) -> Response {
    page_handler(&state, q.invite_code.as_deref()).await
}

async fn accept(
    state: &AppState,
    req: &AcceptRequest,
) -> Result<AcceptOutcome, (StatusCode, &'static str, String)> {
    let code = req.invite_code.as_deref().map(str::trim).unwrap_or("");
    let apple_id = req.apple_id.as_deref().map(str::trim).unwrap_or("");
    if code.is_empty() {
        return Err((
            StatusCode::BAD_REQUEST,
            "missing_invite_code",
            "The invitation code is missing.".into(),
        ));
    }
    if !valid_email(apple_id) {
        return Err((
            StatusCode::BAD_REQUEST,
            "invalid_apple_id",
            "Enter the Apple Account you use, such as name@example.com.".into(),
        ));
    }
    let internal = |e: cloudvpp_store::StoreError| {
        tracing::error!(error = %e, "accepting invitation");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Something went wrong. Try again later.".to_string(),
        )
    };
    if !plausible_code(code) {
        return Ok(AcceptOutcome::Unknown);
    }
    let Some((org_id, _)) = state.store.find_invitation(code).await.map_err(internal)? else {
        return Ok(AcceptOutcome::Unknown);
    };
    let outcome = associate(state, org_id, code, apple_id)
        .await
        .map_err(internal)?;
    if matches!(outcome, AcceptOutcome::Associated(_)) {
        state.outbox_waiting.notify_one();
    }
    Ok(outcome)
}

/// Accepts the invitation holding `code` in one transaction of its organisation: the
/// record and the Apple Account's current holder are read (both locked, not the whole
/// organisation: acceptances commit side by side), [`events::decide_accept`] decides, and
/// an association is written with `USER_ASSOCIATED`; the store numbers the change
/// ([`cloudvpp_store::UserTx`]).
async fn associate(
    state: &AppState,
    org_id: OrgId,
    code: &str,
    apple_id: &str,
) -> Result<AcceptOutcome, StoreError> {
    let secret = state
        .store
        .get_org(org_id)
        .await?
        .ok_or_else(|| StoreError::other("organisation vanished"))?
        .secret;
    let hash = id_hash(&secret, apple_id);
    let mut tx = state.store.begin_user_write(org_id, &hash).await?;
    let user = tx.user_by_invite_code(code).await?;
    let holder = tx.associated_with().await?.into_iter().next();
    let refused = state.config.refuses_apple_account(apple_id);
    let outcome = events::decide_accept(user, &hash, refused, holder.as_ref());
    if let AcceptOutcome::Associated(rec) = &outcome {
        tx.change_user(&UserUpdate {
            record: rec.clone(),
            managed_apple_id: None,
        })
        .await?;
        let org = tx.org().clone();
        if org.config.subscribed(USER_ASSOCIATED) {
            let body = crate::envelope::user_associated(&org.uid, rec.to_response());
            tx.enqueue_notifications(USER_ASSOCIATED, &[body], state.config.clock.now_ms())
                .await?;
        }
        tx.commit().await?;
    } else {
        tx.rollback().await?;
    }
    Ok(outcome)
}

/// `POST /invite` (the page's form).
pub async fn accept_form(
    State(state): State<AppState>,
    Form(req): Form<AcceptRequest>,
) -> Response {
    match accept(&state, &req).await {
        Ok(AcceptOutcome::Associated(_)) => html_page(
            StatusCode::OK,
            "You're in",
            "<p>Your Apple Account is now associated with your organisation. Apps and books it assigns to you will appear in the App Store and Books under Purchased.</p>",
        ),
        Ok(other) => {
            let (status, _, text) = refusal(&other);
            html_page(status, "Invitation", &format!("<p>{}</p>", escape(text)))
        }
        Err((status, _, text)) => html_page(status, "Invitation", &format!("<p>{}</p>", escape(&text))),
    }
}

/// `POST /invite/accept` with `{"inviteCode","appleId"}`.
pub async fn accept_json(State(state): State<AppState>, body: axum::body::Bytes) -> Response {
    let req: AcceptRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(_) => {
            return (StatusCode::BAD_REQUEST, Json(serde_json::json!({"error": "invalid_json", "message": "The body must be JSON: {\"inviteCode\": ..., \"appleId\": ...}."}))).into_response()
        }
    };
    match accept(&state, &req).await {
        Ok(AcceptOutcome::Associated(user)) => {
            (StatusCode::OK, Json(user.to_response())).into_response()
        }
        Ok(other) => {
            let (status, code, text) = refusal(&other);
            let mut body = serde_json::json!({"error": code, "message": text});
            // Refusals that are Apple's asynchronous errors name them too.
            if let Some(e) = other.apple_error() {
                body["errorNumber"] = e.number.into();
                body["errorMessage"] = e.message.into();
            }
            (status, Json(body)).into_response()
        }
        Err((status, code, text)) => (
            status,
            Json(serde_json::json!({"error": code, "message": text})),
        )
            .into_response(),
    }
}
