//! The MDM service: the endpoints Apple devices talk to (`PUT /checkin`, `PUT /mdm`), the
//! device identity checks, the per-channel command queue, APNs push, and an admin API
//! (`/api/v1/`) to enqueue commands such as `InviteToProgram`.
//!
//! Layout follows nanomdm: [`device`] holds the protocol handlers (identity → decode →
//! store), [`api`] the admin API, [`push`] the APNs client. [`service`] is the service's
//! API for code (queue, invitation channels, push, command states; no HTTP), used by the
//! admin API and the invitation engine; [`admin`] the API-key layer and JSON failures every
//! admin router shares. Errors towards devices are
//! [`error::MdmError`]: 400/403/410/500, never 401, because a 401 makes a device remove
//! its MDM profile.

pub mod admin;
pub mod api;
pub mod device;
pub mod error;
pub mod push;
pub mod service;

use axum::routing::{get, put};
use axum::Router;
use cloudvpp_identity::CaPool;
use cloudvpp_store::clock::Clock;
use cloudvpp_store::mdm::{EnrollmentId, MdmStore};
use cloudvpp_store::signals::{QueueSignals, QueueStamp};
use dashmap::DashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use utoipa_axum::{router::OpenApiRouter, routes};

/// Who may set the certificate header: the TLS-terminating proxy, known by its address,
/// a shared secret it adds, or both. Anyone else could name any device's certificate.
#[derive(Debug, Clone)]
pub struct ProxyTrust {
    /// Header carrying the device certificate (RFC 9440 or escaped PEM).
    pub header: String,
    /// Peer addresses allowed to set it; empty means any address (then `secret` is required).
    pub addresses: Vec<ipnet::IpNet>,
    /// Value the proxy sends in [`PROXY_SECRET_HEADER`], when configured.
    pub secret: Option<String>,
}

/// Header in which the proxy proves itself with the shared secret.
pub const PROXY_SECRET_HEADER: &str = "cloudvpp-proxy-secret";

/// Settings of the MDM service.
pub struct Config {
    /// Trusted CAs of device identity certificates.
    pub ca: CaPool,
    /// Read the device certificate from a proxy's header instead of `Mdm-Signature`.
    pub cert_header: Option<ProxyTrust>,
    /// Authenticate only certificates that name the device (UDID, serial number or
    /// EnrollmentID in the subject or subjectAltName): for CAs that attest devices.
    pub require_device_id_in_cert: bool,
    /// Admin API key; without one the admin API is off.
    pub api_key: Option<String>,
    /// APNs client; without one pushes are reported as not configured. [`MdmState::new`]
    /// moves it into the [`service::MdmService`].
    pub pusher: Option<push::Pusher>,
    /// The time check-ins, reports and queued commands are stamped with.
    pub clock: Arc<dyn Clock>,
}

/// How long a certificate binding read from the database is trusted without reading it
/// again, when the store's signals cannot vouch for it (PostgreSQL's listener is down):
/// the longest an instance then accepts a certificate that a re-enrollment elsewhere
/// replaced.
pub const BOUND_TTL: Duration = Duration::from_secs(5);

/// Entries a cache of the check-in path holds at most: beyond, it starts again empty
/// (bounded memory whatever devices claim).
pub const CACHE_ENTRIES: usize = 1_000_000;

/// Why a remembered answer still holds.
#[derive(Debug, Clone, Copy)]
enum Fresh {
    /// The store's signals say nothing changed since this stamp (exact).
    Stamp(QueueStamp),
    /// Read at this instant; trusted for [`BOUND_TTL`].
    Read(Instant),
}

/// Shared state.
#[derive(Clone)]
pub struct MdmState {
    /// Storage.
    pub store: Arc<dyn MdmStore>,
    /// Settings.
    pub config: Arc<Config>,
    /// Queue, channels, push, command states.
    pub service: service::MdmService,
    /// The store's signals (`cloudvpp_store::signals`): what keeps the caches below exact.
    signals: Arc<QueueSignals>,
    /// Device ID → the certificate hash bound to it, and why that is still true. Sharded
    /// maps: check-ins of different devices never wait for one another.
    bound: Arc<DashMap<String, (String, Fresh)>>,
    /// Enrollments whose queue was read empty, with the stamp taken before the read: an
    /// idle check-in answers from here, without the database, while the stamp holds.
    empty: Arc<DashMap<EnrollmentId, QueueStamp>>,
    /// `last_seen_at` waiting to be written in the next batch.
    seen: Arc<DashMap<EnrollmentId, i64>>,
}

impl MdmState {
    /// Builds the state.
    pub fn new(store: Arc<dyn MdmStore>, mut config: Config) -> Self {
        let service =
            service::MdmService::new(store.clone(), config.pusher.take(), config.clock.clone());
        MdmState {
            signals: store.signals(),
            store,
            config: Arc::new(config),
            service,
            bound: Arc::default(),
            empty: Arc::default(),
            seen: Arc::default(),
        }
    }

    /// Why what is read now about `key` (a device's binding) will still hold: the
    /// signals' stamp, or the time of reading when they cannot vouch.
    fn fresh(&self, key: &str) -> Fresh {
        match self.signals.stamp(key) {
            Some(stamp) => Fresh::Stamp(stamp),
            None => Fresh::Read(Instant::now()),
        }
    }

    /// Whether an answer remembered as `fresh` about `key` still holds.
    fn still(&self, key: &str, fresh: Fresh) -> bool {
        match fresh {
            Fresh::Stamp(stamp) => self.signals.unchanged(key, stamp),
            Fresh::Read(at) => at.elapsed() < BOUND_TTL,
        }
    }

    /// Whether `id`'s queue was read empty and nothing was queued for it since.
    fn known_empty(&self, id: &EnrollmentId) -> bool {
        let Some(stamp) = self.empty.get(id).map(|e| *e) else {
            return false;
        };
        if self.signals.unchanged(id.as_str(), stamp) {
            return true;
        }
        self.empty.remove(id);
        false
    }

    /// Remembers that `id`'s queue was read empty after `stamp` was taken.
    fn remember_empty(&self, id: EnrollmentId, stamp: QueueStamp) {
        if self.empty.len() >= CACHE_ENTRIES {
            self.empty.clear();
        }
        self.empty.insert(id, stamp);
    }

    /// Unix milliseconds now, by the service's clock.
    pub fn now_ms(&self) -> i64 {
        self.config.clock.now_ms()
    }

    /// The admin API key check, for every admin router ([`admin::require_api_key`]).
    pub fn admin_key(&self) -> admin::AdminKey {
        admin::AdminKey::new(self.config.api_key.as_deref())
    }
}

/// The admin API's routes with their OpenAPI description: the router and the document
/// come from the same `#[utoipa::path]` annotations, so no route goes undocumented.
pub fn admin_api() -> OpenApiRouter<MdmState> {
    OpenApiRouter::new()
        .routes(routes!(api::enqueue_raw))
        .routes(routes!(api::invite_to_program))
        .routes(routes!(api::push))
        .routes(routes!(api::list_enrollments))
        .routes(routes!(api::get_enrollment))
        .routes(routes!(api::list_commands))
        .routes(routes!(api::get_command))
}

/// Device endpoints and the admin API.
pub fn router(state: MdmState) -> Router {
    let (admin, _) = admin_api().split_for_parts();
    Router::new()
        .route(
            "/checkin",
            put(device::checkin_endpoint).post(device::checkin_endpoint),
        )
        .route("/mdm", put(device::mdm_endpoint).post(device::mdm_endpoint))
        .merge(admin::require_api_key(admin, state.admin_key()))
        .route("/healthz", get(|| async { "ok" }))
        .layer(axum::extract::DefaultBodyLimit::max(device::MAX_BODY))
        .with_state(state)
}

/// Writes batched `last_seen_at` once a second until `shutdown`; one write per batch
/// instead of one per check-in keeps idle check-ins read-only.
pub async fn run_seen_flusher(state: MdmState, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        let stop = tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => false,
            _ = shutdown.changed() => true,
        };
        // Taken entry by entry: check-ins go on adding to the map meanwhile.
        let ids: Vec<EnrollmentId> = state.seen.iter().map(|e| e.key().clone()).collect();
        let batch: Vec<(EnrollmentId, i64)> = ids
            .into_iter()
            .filter_map(|id| state.seen.remove(&id))
            .collect();
        if let Err(e) = state.store.touch(&batch).await {
            tracing::warn!(error = %e, "writing last_seen_at");
        }
        if stop || *shutdown.borrow() {
            return;
        }
    }
}
