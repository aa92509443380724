//! The pages' templates (`templates/`) and what each shows, as plain values: the handlers
//! compute text and links, the templates lay them out, and askama escapes every value.

use askama::Template;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

/// Renders a page as HTML; a template that fails to render (it should not) is a 500.
pub fn render<T: Template>(page: &T) -> Response {
    match page.render() {
        Ok(html) => ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering an administrator page");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "the page could not be rendered",
            )
                .into_response()
        }
    }
}

/// Unix milliseconds as `2026-05-04 10:00:00 UTC`.
pub fn when_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    )
}

/// Unix seconds as `2026-05-04 UTC`.
pub fn day_secs(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0).map_or_else(
        || secs.to_string(),
        |t| t.format("%Y-%m-%d UTC").to_string(),
    )
}

/// What every page but the login shows around its content: the menu, and the logout form
/// (which carries the session's CSRF token).
pub struct Nav {
    /// The session's CSRF token.
    pub csrf: String,
    /// The menu entry of this page (`overview`, `invitations`, `upload`, or none).
    pub current: &'static str,
}

#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginPage {
    pub error: Option<String>,
    pub off: bool,
}

#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage {
    pub status: u16,
    pub title: String,
    pub message: String,
    pub back: String,
}

pub struct LocationRow {
    pub id: i64,
    pub name: String,
    pub uid: String,
    pub expires: String,
    /// `expired`, `expires soon` or empty.
    pub warning: String,
    pub last_sync: String,
    pub mirrored: i64,
    pub conflict: bool,
}

pub struct StateCount {
    pub state: &'static str,
    pub count: i64,
    pub href: String,
    pub selected: bool,
}

#[derive(Template)]
#[template(path = "overview.html")]
pub struct OverviewPage {
    pub nav: Nav,
    pub locations: Vec<LocationRow>,
    pub counts: Vec<StateCount>,
    pub total: i64,
    pub in_progress: i64,
    /// Invitations are in progress and some changed in the last minutes.
    pub running: bool,
    /// Seconds between refreshes while a batch runs; 0: no refresh.
    pub refresh: u32,
    pub now: String,
}

pub struct InvitationRow {
    pub person: String,
    pub person_href: String,
    pub email: String,
    pub state: &'static str,
    pub reason: String,
    pub device: String,
    pub location: String,
    pub attempts: i64,
    pub updated: String,
}

pub struct Choice {
    pub value: String,
    pub label: String,
    pub selected: bool,
}

#[derive(Template)]
#[template(path = "invitations.html")]
pub struct InvitationsPage {
    pub nav: Nav,
    pub search: String,
    pub states: Vec<Choice>,
    pub locations: Vec<Choice>,
    pub counts: Vec<StateCount>,
    pub rows: Vec<InvitationRow>,
    pub total: i64,
    pub page: u32,
    pub pages: u32,
    pub prev: Option<String>,
    pub next: Option<String>,
    pub max_search: usize,
}

pub struct Step {
    pub at: String,
    pub what: String,
}

pub struct CommandRow {
    pub uuid: String,
    pub attempt: String,
    pub channel: String,
    pub status: String,
    pub invitation_result: String,
    pub not_now: i64,
    pub queued: String,
    pub answered: String,
    pub active: bool,
    pub current: bool,
    /// The device's last report, as it sent it (a plist), cut to a bounded size.
    pub report: Option<String>,
}

pub struct InvitationView {
    pub id: String,
    pub state: &'static str,
    pub reason: String,
    pub email: String,
    pub enrollment: String,
    pub channel: String,
    pub invitation_url: String,
    pub invitation_result: String,
    pub event_id: String,
    pub attempts: i64,
    pub created: String,
    pub updated: String,
    pub steps: Vec<Step>,
    pub commands: Vec<CommandRow>,
    pub can_resend: bool,
    pub can_retire: bool,
    pub resend_action: String,
    pub retire_action: String,
}

#[derive(Template)]
#[template(path = "person.html")]
pub struct PersonPage {
    pub nav: Nav,
    pub person: String,
    pub location: String,
    pub notice: Option<&'static str>,
    /// The Apps and Books record as the engine's mirror has it (status, email), if any.
    pub record: Option<(String, String)>,
    pub invitations: Vec<InvitationView>,
}

#[derive(Template)]
#[template(path = "upload.html")]
pub struct UploadPage {
    pub nav: Nav,
    pub locations: Vec<Choice>,
    pub max_bytes: usize,
    pub max_rows: usize,
}

pub struct ReportRow {
    pub line: u64,
    pub person: String,
    pub person_href: Option<String>,
    pub email: String,
    pub device: String,
    /// `invited`, `already invited`, `skipped`, `rejected`, `not invited`.
    pub outcome: &'static str,
    /// The row's CSS class: the outcome in one word.
    pub class: &'static str,
    pub detail: String,
}

#[derive(Template)]
#[template(path = "report.html")]
pub struct ReportPage {
    pub nav: Nav,
    pub file: String,
    pub rows: Vec<ReportRow>,
    pub invited: usize,
    pub in_progress: usize,
    pub skipped: usize,
    pub rejected: usize,
    pub stored: bool,
    pub strict: bool,
}
