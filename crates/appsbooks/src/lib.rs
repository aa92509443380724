//! The Apps and Books service: a persistent implementation of Apple's App and Book
//! Management API v2 for users (`/mdm/v2/...`), its notifications and its invitation page.
//!
//! [`router`] builds the axum app over an [`AppState`]; [`workers`] are the
//! durable event worker ([`worker`]) and notification sender ([`outbox`]). Handlers are
//! thin: they authenticate ([`auth::OrgContext`]), validate synchronously with Apple's
//! error numbers ([`error::ApiError`]) and hand writes to the store as PENDING events.
//! Apple's asynchronous rules (what a create, update or retire does to each user, which
//! notifications a step sends, what accepting an invitation does) are pure functions in
//! [`events`]; the worker and the invitation page read through the store's
//! [`cloudvpp_store::OrgTx`], decide with them, and write the result back.

pub mod assets;
pub mod assignments;
pub mod auth;
pub mod config;
pub mod envelope;
pub mod error;
pub mod events;
pub mod ids;
pub mod invite;
pub mod licences;
pub mod limits;
pub mod notify;
pub mod outbox;
pub mod users;
pub mod worker;

use axum::routing::{get, post};
use axum::Router;
use cloudvpp_store::clock::{Clock, SystemClock};
use cloudvpp_store::AppsBooksStore;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Service settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Base URL advertised in service config and invitation links (no trailing slash).
    pub public_url: String,
    /// Users per Get Users page.
    pub page_size: i64,
    /// Time spent per user of an event before it is applied, so clients see `PENDING`.
    pub processing_delay: Duration,
    /// Accept `http://` notification URLs (local development only).
    pub allow_http_notifications: bool,
    /// Accept notification URLs on loopback and private addresses (local development
    /// only; see [`notify`]).
    pub allow_private_notification_urls: bool,
    /// Private notification endpoints accepted anyway (`cloudvpp serve`'s own MDM).
    pub notification_exempt: Vec<notify::Exempt>,
    /// Waits between notification attempts; attempts = delays + 1.
    pub notification_retry_delays: Vec<Duration>,
    /// Per-attempt timeout of a notification POST.
    pub notification_timeout: Duration,
    /// Most notifications one organisation may have waiting; beyond it the oldest are
    /// dropped ([`outbox`]).
    pub notification_backlog: i64,
    /// Fault injection: share (0-100) of notifications dropped on purpose, never sent.
    pub drop_notifications_percent: u8,
    /// Fault injection: Apple Accounts (globs, `*` and `?`, any case) that cannot be
    /// associated: a create or update naming one as `managedAppleId` fails that user with
    /// async 9635, and the invitation page refuses it with 9635.
    pub refuse_apple_accounts: Vec<String>,
    /// Name of this instance, used as lease owner.
    pub instance_id: String,
    /// How long an event or a notification batch stays with the instance that took it
    /// (renewed at every step); after a crash another instance takes it over then.
    pub lease: Duration,
    /// The time token expiry, leases and notification retries are reckoned by.
    pub clock: Arc<dyn Clock>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            public_url: "http://127.0.0.1:8080".into(),
            page_size: 1000,
            processing_delay: Duration::ZERO,
            allow_http_notifications: false,
            allow_private_notification_urls: false,
            notification_exempt: Vec::new(),
            notification_retry_delays: vec![Duration::from_secs(30), Duration::from_secs(120)],
            notification_timeout: Duration::from_secs(10),
            notification_backlog: 10_000,
            drop_notifications_percent: 0,
            refuse_apple_accounts: Vec::new(),
            instance_id: format!("appsbooks-{}", uuid::Uuid::new_v4().simple()),
            lease: Duration::from_secs(30),
            clock: Arc::new(SystemClock),
        }
    }
}

impl Config {
    /// Whether the fault setting `refuse_apple_accounts` refuses `account`.
    pub fn refuses_apple_account(&self, account: &str) -> bool {
        let account = account.trim().to_lowercase();
        self.refuse_apple_accounts
            .iter()
            .any(|g| glob_match(&g.to_lowercase(), &account))
    }
}

/// `text` matches `pattern`, where `*` stands for any characters and `?` for one.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // Greedy with one backtrack point: linear in practice, never exponential.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Shared state of the service.
#[derive(Clone)]
pub struct AppState {
    /// Storage.
    pub store: Arc<dyn AppsBooksStore>,
    /// Settings.
    pub config: Arc<Config>,
    /// Limits (Apple defaults overridden by the store), cached.
    pub limits: Arc<limits::Limits>,
    /// Per-organisation request rate limiter, shared by every instance on the database.
    pub rate: Arc<limits::RateLimiter>,
    /// Wakes the event worker when an event is stored.
    pub events_waiting: Arc<Notify>,
    /// Wakes the notification sender when notifications are queued.
    pub outbox_waiting: Arc<Notify>,
    /// Sends notifications where the policy allows.
    pub notifier: Arc<notify::Notifier>,
}

impl AppState {
    /// Builds the state.
    pub fn new(store: Arc<dyn AppsBooksStore>, config: Config) -> Self {
        let notifier = notify::Notifier::new(
            notify::NotificationPolicy {
                allow_http: config.allow_http_notifications,
                allow_private: config.allow_private_notification_urls,
                exempt: config.notification_exempt.clone(),
            },
            config.notification_timeout,
        );
        AppState {
            limits: Arc::new(limits::Limits::new(store.clone())),
            rate: Arc::new(limits::RateLimiter::new(store.clone())),
            store,
            config: Arc::new(config),
            events_waiting: Arc::new(Notify::new()),
            outbox_waiting: Arc::new(Notify::new()),
            notifier: Arc::new(notifier),
        }
    }
}

/// The whole HTTP surface: `/mdm/v2/...` and `/invite`.
pub fn router(state: AppState) -> Router {
    use config::{get_client_config, post_client_config, service_config};
    use users::{create_users, event_status, get_users, retire_users, update_users};
    let wrong = users::method_not_allowed;
    Router::new()
        .route(
            "/mdm/v2/service/config",
            get(service_config).fallback(wrong),
        )
        .route(
            "/mdm/v2/client/config",
            get(get_client_config)
                .post(post_client_config)
                .fallback(wrong),
        )
        .route("/mdm/v2/users", get(get_users).fallback(wrong))
        .route("/mdm/v2/users/create", post(create_users).fallback(wrong))
        .route("/mdm/v2/users/update", post(update_users).fallback(wrong))
        .route("/mdm/v2/users/retire", post(retire_users).fallback(wrong))
        .route("/mdm/v2/status", get(event_status).fallback(wrong))
        .route("/mdm/v2/assets", get(assets::get_assets).fallback(wrong))
        .route(
            "/mdm/v2/assignments",
            get(assignments::get_assignments).fallback(wrong),
        )
        .route(
            "/mdm/v2/assets/associate",
            post(assignments::associate).fallback(wrong),
        )
        .route(
            "/mdm/v2/assets/disassociate",
            post(assignments::disassociate).fallback(wrong),
        )
        .route(
            "/mdm/v2/assets/revoke",
            post(assignments::revoke).fallback(wrong),
        )
        .layer(axum::middleware::from_fn(error::refuse_declared_oversize))
        .merge(
            Router::new()
                .route("/invite", get(invite::show).post(invite::accept_form))
                .route("/invite/accept", post(invite::accept_json))
                .layer(axum::middleware::map_response(invite::security_headers)),
        )
        .route("/healthz", get(|| async { "ok" }))
        // Bodies past this are refused (413, Apple's body on the API) before being read.
        .layer(axum::extract::DefaultBodyLimit::max(error::MAX_BODY_BYTES))
        .with_state(state)
}

/// One background task: each call starts one run, which ends when `shutdown` fires.
pub type Worker =
    Box<dyn FnMut() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send>;

/// The event worker and the notification sender, by name, for the caller to run (under
/// a supervisor that restarts a run that dies); they stop when `shutdown` fires.
pub fn workers(
    state: AppState,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Vec<(&'static str, Worker)> {
    let (s, stop) = (state.clone(), shutdown.clone());
    vec![
        (
            "appsbooks-events",
            Box::new(move || Box::pin(worker::run(s.clone(), stop.clone()))),
        ),
        (
            "appsbooks-outbox",
            Box::new(move || Box::pin(outbox::run(state.clone(), shutdown.clone()))),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_apple_accounts_in_any_case() {
        assert!(glob_match("*@refused.example", "ann@refused.example"));
        assert!(glob_match("a?n@*", "ann@x"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("*@refused.example", "ann@refused.example.org"));
        assert!(!glob_match("a?n", "an"));
        assert!(glob_match("*a*b*c", "xaxxbyyc"));
        let cfg = Config {
            refuse_apple_accounts: vec!["*@Refused.Example".into()],
            ..Config::default()
        };
        assert!(cfg.refuses_apple_account(" Ann@REFUSED.example "));
        assert!(!cfg.refuses_apple_account("ann@ok.example"));
        assert!(!Config::default().refuses_apple_account("ann@refused.example"));
    }
}
