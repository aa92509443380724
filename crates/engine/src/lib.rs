//! The invitation engine: registers people with Apps and Books, invites them with
//! `InviteToProgram` (or hands out the email link), and tracks every invitation through
//! `registering → registered → queued → delivered → associated` (or `failed`). Once a
//! person is associated it assigns them their location's apps and books
//! (`pending → requested → assigned`, or `waiting` for licences, or `failed`).
//!
//! It runs inside the MDM service: it shares its store (one database) and enqueues
//! commands and pushes through it. State lives in the store, so a restart resumes every
//! invitation where it was. Apple's notifications are best-effort: every event is also
//! confirmed by polling status, and association by syncing users (`sinceVersionId`).

pub mod api;
pub mod csv_file;
pub mod licence_api;
mod licence_worker;
pub mod licences;
pub mod machine;
mod worker;

use cloudvpp_abclient::Client;
use cloudvpp_abwire::MdmInfo;
use cloudvpp_mdm::admin::AdminKey;
use cloudvpp_mdm::service::MdmService;
use cloudvpp_mdm::MdmState;
use cloudvpp_store::clock::{Clock, SystemClock};
use cloudvpp_store::engine::{EngineStore, Location, LocationId};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

pub use worker::run;

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Public base URL of this MDM service: notifications are sent to
    /// `<public_url>/notifications/appsbooks/<location id>`.
    pub public_url: String,
    /// What this MDM claims locations with.
    pub mdm_info: MdmInfo,
    /// Wait between status polls of a PENDING event (Apple asks for at least 30 s).
    pub status_poll: Duration,
    /// How often assignments waiting for licences (9709) look at the licences free when no
    /// ASSET_COUNT notification says some were bought.
    pub licence_recheck: Duration,
    /// Incremental sync (`sinceVersionId`) at least this often.
    pub sync_interval: Duration,
    /// Full reconciliation this often.
    pub full_sync_interval: Duration,
    /// Re-push an unanswered InviteToProgram after this long.
    pub repush_after: Duration,
    /// Worker tick.
    pub tick: Duration,
    /// Retry policy of the Apps and Books client.
    pub retry: cloudvpp_abclient::RetryPolicy,
    /// How long a location's engine work stays with this instance after it last renewed
    /// its lease; another instance on the database takes the location over after that.
    pub lease: Duration,
    /// The time invitations and leases are reckoned by.
    pub clock: Arc<dyn Clock>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            public_url: "http://127.0.0.1:9000".into(),
            mdm_info: MdmInfo {
                id: Some("cloudvpp".into()),
                name: Some("cloudvpp".into()),
                metadata: Some(env!("CARGO_PKG_VERSION").into()),
            },
            status_poll: Duration::from_secs(30),
            licence_recheck: Duration::from_secs(300),
            sync_interval: Duration::from_secs(60),
            full_sync_interval: Duration::from_secs(6 * 3600),
            repush_after: Duration::from_secs(3600),
            tick: Duration::from_millis(200),
            retry: cloudvpp_abclient::RetryPolicy::default(),
            lease: Duration::from_secs(10),
            clock: Arc::new(SystemClock),
        }
    }
}

/// A location's client with the sToken and base URL it was made with.
type KeptClient = (String, String, Arc<Client>);

/// Shared engine state.
#[derive(Clone)]
pub struct Engine {
    /// Engine storage.
    pub store: Arc<dyn EngineStore>,
    /// The MDM service it delivers through (queue, channels, push, command states).
    pub mdm: MdmService,
    /// The admin API key check its admin routes share with the MDM's.
    pub admin: AdminKey,
    /// Settings.
    pub config: Arc<EngineConfig>,
    /// One client per location, with the sToken and base URL it was made with: a renewed
    /// token (or a moved service) makes a new client.
    clients: Arc<Mutex<HashMap<LocationId, KeptClient>>>,
    /// Locations to sync at the next tick.
    dirty: Arc<Mutex<HashSet<LocationId>>>,
    /// Wakes the worker.
    pub wake: Arc<Notify>,
    /// This instance's name on the location leases it holds.
    pub owner: Arc<str>,
}

impl Engine {
    /// Builds the engine on the MDM service of `mdm`.
    pub fn new(store: Arc<dyn EngineStore>, mdm: MdmState, config: EngineConfig) -> Self {
        Engine {
            store,
            admin: mdm.admin_key(),
            mdm: mdm.service,
            config: Arc::new(config),
            clients: Arc::default(),
            dirty: Arc::default(),
            wake: Arc::new(Notify::new()),
            owner: format!(
                "engine-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            )
            .into(),
        }
    }

    /// The Apps and Books client of a location (one per sToken, so pacing is per token; a
    /// location whose token was replaced gets a new one).
    pub fn client(&self, loc: &Location) -> Arc<Client> {
        let mut clients = self.clients.lock().expect("lock");
        match clients.get(&loc.id) {
            Some((token, base, client)) if *token == loc.stoken && *base == loc.base_url => {
                client.clone()
            }
            _ => {
                let client = Arc::new(
                    Client::new(&loc.base_url, &loc.stoken)
                        .with_retry(self.config.retry.clone())
                        .with_mdm_info(self.config.mdm_info.clone()),
                );
                clients.insert(
                    loc.id,
                    (loc.stoken.clone(), loc.base_url.clone(), client.clone()),
                );
                client
            }
        }
    }

    /// Asks for a sync of `location_id` at the next tick.
    pub fn mark_dirty(&self, location_id: LocationId) {
        self.dirty.lock().expect("lock").insert(location_id);
        self.wake.notify_one();
    }

    fn take_dirty(&self) -> HashSet<LocationId> {
        std::mem::take(&mut *self.dirty.lock().expect("lock"))
    }

    /// The notification URL of a location.
    pub fn notification_url(&self, location_id: LocationId) -> String {
        format!(
            "{}/notifications/appsbooks/{location_id}",
            self.config.public_url.trim_end_matches('/')
        )
    }

    /// Unix milliseconds now, by the engine's clock.
    pub fn now_ms(&self) -> i64 {
        self.config.clock.now_ms()
    }
}
