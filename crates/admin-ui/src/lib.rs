//! The administrator web page of the MDM service, under `/admin`: locations and their
//! tokens, invitations by state with search, filters and pages, one person's history
//! (their invitations, what became of each, the InviteToProgram commands sent and the
//! device's answers), resend and retire, a CSV upload with a report per row, and the counts
//! per state refreshed while invitations are in progress.
//!
//! Server-rendered HTML (askama templates, every value escaped), no JavaScript. Log in with
//! the admin API key (the one `/api/v1` takes, [`cloudvpp_mdm::admin::AdminKey`]), then a
//! session cookie signed with a key derived from the API key ([`session`]: every instance
//! given the same key knows it, nothing is stored); every form that changes something
//! carries the session's CSRF token. What the buttons do is the engine's own code
//! ([`cloudvpp_engine::api::admit_invitations`], `resend_invitation`, `retire_invitation`),
//! called as functions, never through HTTP.

mod pages;
pub mod session;
mod views;

use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, get, post};
use axum::Router;
use cloudvpp_engine::Engine;
use session::{Live, LoginBrake, SessionKeys, Sessions};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

/// Settings of the administrator page.
#[derive(Debug, Clone, Copy, Default)]
pub struct UiConfig {
    /// Mark the session cookie `Secure`: browsers reach the page over HTTPS (the service's
    /// own TLS, or a proxy's in front of it).
    pub secure_cookies: bool,
    /// The keys of session cookies and CSRF tokens: [`SessionKeys::from_api_key`] of the
    /// admin API key, so that every instance with that key knows every session. None: keys
    /// of this process alone (its sessions work nowhere else and end at a restart).
    pub session_keys: Option<SessionKeys>,
}

/// The largest CSV file the upload takes.
pub const MAX_UPLOAD_BYTES: usize = 4 << 20;
/// The largest body of any other form.
const FORM_BODY_LIMIT: usize = 64 << 10;
/// The session cookie's name.
const COOKIE: &str = "cloudvpp_admin";

/// State shared by the page's handlers.
#[derive(Clone)]
struct Ui {
    engine: Engine,
    sessions: Arc<Sessions>,
    brake: Arc<LoginBrake>,
    config: UiConfig,
}

/// The page's routes, to merge into the MDM service's router beside its admin API.
pub fn router(engine: Engine, config: UiConfig) -> Router {
    let ui = Ui {
        engine,
        sessions: Arc::new(Sessions::new(
            config.session_keys.unwrap_or_else(SessionKeys::random),
        )),
        brake: Arc::default(),
        config,
    };
    Router::new()
        .route("/admin", get(pages::overview))
        .route("/admin/login", get(pages::login_form).post(pages::login))
        .route("/admin/logout", post(pages::logout))
        .route("/admin/invitations", get(pages::invitations))
        .route("/admin/person", get(pages::person))
        .route("/admin/invitations/{id}/resend", post(pages::resend))
        .route("/admin/invitations/{id}/retire", post(pages::retire))
        .route(
            "/admin/upload",
            get(pages::upload_form)
                .post(pages::upload)
                // The file and the form's few fields around it.
                .layer(DefaultBodyLimit::max(MAX_UPLOAD_BYTES + FORM_BODY_LIMIT)),
        )
        .route("/admin/admin.css", get(stylesheet))
        .route("/admin/{*rest}", any(not_found))
        .layer(DefaultBodyLimit::max(FORM_BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(
            ui.clone(),
            renew_session,
        ))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(ui)
}

/// Every answer of the page: no framing, no sniffing, no referrer, nothing cached, and a
/// policy that allows only this origin's stylesheet and forms (no script at all).
async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    let set = |h: &mut HeaderMap, name: header::HeaderName, value: &'static str| {
        h.insert(name, HeaderValue::from_static(value));
    };
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
         frame-ancestors 'none'; base-uri 'none'",
    );
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(h, header::CACHE_CONTROL, "no-store");
    res
}

/// A request with a live session whose cookie is older than
/// [`session::REFRESH_AFTER`] gets a renewed cookie (the same session, idle from now), unless
/// the answer sets the cookie itself (login, logout).
async fn renew_session(State(ui): State<Ui>, req: Request, next: Next) -> Response {
    let renewed = session_cookie(req.headers())
        .and_then(|c| ui.sessions.check(&c, ui.engine.now_ms()))
        .and_then(|live| live.renewed);
    let mut res = next.run(req).await;
    if let Some(cookie) = renewed {
        if !res.headers().contains_key(header::SET_COOKIE) {
            res.headers_mut().insert(
                header::SET_COOKIE,
                session_set_cookie(Some(&cookie), ui.config.secure_cookies),
            );
        }
    }
    res
}

async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../static/admin.css"),
    )
        .into_response()
}

async fn not_found() -> Response {
    error_page(StatusCode::NOT_FOUND, "No such page.", None)
}

/// A refusal, answered as an error page: the status, what went wrong in words, and a way
/// back (the overview when none is given).
struct Refused {
    status: StatusCode,
    message: String,
    back: Option<String>,
}

impl Refused {
    fn new(status: StatusCode, message: impl Into<String>, back: Option<String>) -> Self {
        Refused {
            status,
            message: message.into(),
            back,
        }
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let page = views::ErrorPage {
            status: self.status.as_u16(),
            title: self
                .status
                .canonical_reason()
                .unwrap_or("Error")
                .to_string(),
            message: self.message,
            back: self.back.unwrap_or_else(|| "/admin".into()),
        };
        let mut res = views::render(&page);
        *res.status_mut() = self.status;
        res
    }
}

/// An error page (see [`Refused`]).
fn error_page(status: StatusCode, message: &str, back: Option<String>) -> Response {
    Refused::new(status, message, back).into_response()
}

/// A storage failure as a refusal (logged; no database words shown).
fn storage_refusal(e: cloudvpp_store::StoreError) -> Refused {
    let f = cloudvpp_mdm::admin::storage_failure(e);
    Refused::new(f.status(), f.message(), None)
}

/// A storage failure as a page.
fn storage_page(e: cloudvpp_store::StoreError) -> Response {
    storage_refusal(e).into_response()
}

/// The peer's address (from the listener); unspecified when the service was not served
/// with connection info.
struct Peer(IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip()),
        ))
    }
}

/// The session cookie's value, when the request has one that may be well-formed (checked
/// by [`Sessions::check`]).
fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
        .filter(|v| v.len() <= 256 && v.bytes().all(|b| b == b'.' || b.is_ascii_hexdigit()))
}

/// A logged-in administrator: the request came with a live session.
struct Admin {
    session: Live,
    csrf: String,
}

impl FromRequestParts<Ui> for Admin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, ui: &Ui) -> Result<Self, Response> {
        if let Some(cookie) = session_cookie(&parts.headers) {
            if let Some(session) = ui.sessions.check(&cookie, ui.engine.now_ms()) {
                let csrf = session.csrf.clone();
                return Ok(Admin { session, csrf });
            }
        }
        if parts.method == Method::GET || parts.method == Method::HEAD {
            Err(Redirect::to("/admin/login").into_response())
        } else {
            Err(error_page(
                StatusCode::FORBIDDEN,
                "You are not logged in (or your session ended): nothing was changed. Log in and try again.",
                Some("/admin/login".into()),
            ))
        }
    }
}

impl Admin {
    /// Refuses (403, nothing done) a form whose CSRF token is not this session's.
    fn check_csrf(&self, given: &str) -> Result<(), Refused> {
        if cloudvpp_store::secret::equal(given, &self.csrf) {
            Ok(())
        } else {
            Err(Refused::new(
                StatusCode::FORBIDDEN,
                "The form's security token is missing or wrong (an old page, or a form from another site): nothing was changed. Reload the page and try again.",
                None,
            ))
        }
    }
}

/// The `Set-Cookie` value of a session (its cookie value), or of its removal (`None`).
fn session_set_cookie(value: Option<&str>, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let value = match value {
        Some(v) => format!("{COOKIE}={v}; Path=/admin; HttpOnly; SameSite=Strict{secure}"),
        None => format!("{COOKIE}=; Path=/admin; Max-Age=0; HttpOnly; SameSite=Strict{secure}"),
    };
    HeaderValue::from_str(&value).expect("a cookie of digits, hex and dots is a valid header")
}
