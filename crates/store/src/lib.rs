//! Storage traits and domain rows of cloudvpp.
//!
//! The SQL backends (`cloudvpp-store-sql`, opened by `cloudvpp-store-sqlite` or
//! `cloudvpp-store-postgres`) implement [`AppsBooksStore`]; the
//! services hold it as `Arc<dyn AppsBooksStore>` and never see SQL. The store decides
//! nothing of Apple's: a service reads what it needs through an [`OrgTx`], decides (the
//! rules live in the service, as pure functions), and writes the result back through the
//! same transaction.
//!
//! Contract shared by all methods: "nothing found" is `Ok(None)` or an empty list, never
//! an error; every write that returns `Ok` is committed durably.

pub mod clock;
pub mod engine;
pub mod gauges;
pub mod mdm;
pub mod secret;
pub mod signals;

use async_trait::async_trait;
use cloudvpp_abwire::assets::{Assignment, PricingParam, ProductType, ResponseAsset};
use cloudvpp_abwire::{AppleError, MdmInfo, RequestUser, ResponseUser, UserStatus};
use serde::{Deserialize, Serialize};

/// The error a backend wraps: kept as the source of a [`StoreError`], so that the chain of
/// causes reaches the log.
pub type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule was violated.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The caller no longer holds the lease it acted under.
    #[error("lease lost")]
    LeaseLost,
    /// The database cannot be reached now (down, refusing connections, no connection free
    /// within the pool's short wait): worth trying again later, unlike [`StoreError::Other`].
    /// The services answer it with Apple's 9603 or a 503 with `Retry-After`.
    #[error("storage unavailable: {0}")]
    Unavailable(#[source] Source),
    /// A stored value that cannot be what its column holds (an unknown state, a number out
    /// of range, JSON that does not parse): the row is reported, never read as a default.
    #[error("corrupt value in {column}: {source}")]
    Corrupt {
        /// `table.column` or the column's name.
        column: &'static str,
        /// What was wrong with it.
        #[source]
        source: Source,
    },
    /// Anything else the backend reports.
    #[error("storage: {0}")]
    Other(#[source] Source),
}

impl StoreError {
    /// A corrupt `column`, for `why`.
    pub fn corrupt(column: &'static str, why: impl Into<Source>) -> Self {
        StoreError::Corrupt {
            column,
            source: why.into(),
        }
    }

    /// Any other failure, described by `why`.
    pub fn other(why: impl Into<Source>) -> Self {
        StoreError::Other(why.into())
    }
}

/// Result alias.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

mdm::string_id!(
    /// An event's `eventId` (a UUID we make; clients send it back to `GET status`).
    EventId
);

/// An organisation's database id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OrgId(pub i64);

impl std::fmt::Display for OrgId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// An organisation (Apple's "location" / organisational unit).
#[derive(Debug, Clone)]
pub struct Org {
    /// Database id.
    pub id: OrgId,
    /// Apple's `uId`: a numeric string.
    pub uid: String,
    /// Organisation / location name.
    pub name: String,
    /// Per-org secret: keys `idHash` and `versionId` checks.
    pub secret: String,
    /// Number of user records ever created (the highest `ord`).
    pub user_count: i64,
    /// The latest change sequence number (the current data-set version).
    pub chg: i64,
    /// The version of the organisation's assets (Get Assets' `versionId`).
    pub asset_chg: i64,
    /// The latest change number of the organisation's assignments (Get Assignments'
    /// `versionId`; each assignment carries the number of its last change).
    pub assign_chg: i64,
    /// Client config.
    pub config: ClientConfig,
    /// `countryISO2ACode` of client config: ISO 3166-1 alpha-2, upper case ("US").
    pub country: String,
    /// `defaultPlatform` of client config: `volumestore` or `enterprisestore`.
    pub default_platform: String,
}

/// What an MDM set with `POST client/config`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientConfig {
    /// `mdmInfo`, once set.
    pub mdm_info: Option<MdmInfo>,
    /// Notification URL.
    pub notification_url: Option<String>,
    /// Notification bearer secret.
    pub notification_auth_token: Option<String>,
    /// Subscribed types.
    pub notification_types: Vec<String>,
}

impl ClientConfig {
    /// Whether notifications of `kind` are to be sent.
    pub fn subscribed(&self, kind: &str) -> bool {
        self.notification_url.is_some() && self.notification_types.iter().any(|t| t == kind)
    }
}

/// An sToken as stored.
#[derive(Debug, Clone)]
pub struct TokenRecord {
    /// Organisation it belongs to.
    pub org_id: OrgId,
    /// Expiry, Unix seconds.
    pub expires_at: i64,
    /// Set when a renewal replaced it.
    pub revoked: bool,
}

/// A user record. One `clientUserId` can have many records (retired ones plus at most
/// one active one).
#[derive(Debug, Clone, PartialEq)]
pub struct UserRecord {
    /// Dense per-org creation ordinal, from 1: pages of unfiltered lists are windows of it.
    pub ord: i64,
    /// Change sequence number of the last change: pages of `sinceVersionId` lists are windows of it.
    pub chg: i64,
    /// The MDM's identifier.
    pub client_user_id: String,
    /// Email.
    pub email: Option<String>,
    /// Invite code (kept after retirement, but no longer shown).
    pub invite_code: Option<String>,
    /// Hash of the associated Apple Account.
    pub id_hash: Option<String>,
    /// State.
    pub status: UserStatus,
}

impl UserRecord {
    /// The user as Apple shows it: a retired user shows no invite code.
    pub fn into_response(self) -> ResponseUser {
        let hidden = matches!(self.status, UserStatus::Retired | UserStatus::Deleted);
        ResponseUser {
            client_user_id: self.client_user_id,
            email: self.email,
            id_hash: self.id_hash,
            invite_code: if hidden { None } else { self.invite_code },
            status: self.status,
        }
    }

    /// [`UserRecord::into_response`] of a copy.
    pub fn to_response(&self) -> ResponseUser {
        self.clone().into_response()
    }
}

/// The order of a Get Users listing, and where it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserOrder {
    /// Every record, in creation order (`ord`).
    Created,
    /// The records changed after change number `since` (a `sinceVersionId`), in change
    /// order (`chg`).
    ChangedSince(i64),
}

/// One page of a listing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserPage {
    /// The page's records, in the listing's order.
    pub users: Vec<UserRecord>,
    /// Records in the whole listing (filter applied), as of the page's snapshot.
    pub total: i64,
}

/// Filters of Get Users.
#[derive(Debug, Clone, Default)]
pub struct UserFilter {
    /// Only non-retired.
    pub active_only: bool,
    /// Only retired.
    pub retired_only: bool,
}

/// `activeOnly` counts Registered and Associated records; `retiredOnly` Retired ones and the
/// legacy `Deleted` (a retired record, in Apple's words), which v2 never produces.
pub fn is_active(status: UserStatus) -> bool {
    matches!(status, UserStatus::Registered | UserStatus::Associated)
}

/// `CREATE`, `UPDATE`, `RETIRE` (users); `ASSOCIATE`, `DISASSOCIATE`, `REVOKE` (assets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    /// users/create
    Create,
    /// users/update
    Update,
    /// users/retire
    Retire,
    /// assets/associate
    Associate,
    /// assets/disassociate
    Disassociate,
    /// assets/revoke
    Revoke,
}

impl EventType {
    /// Apple's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Create => "CREATE",
            EventType::Update => "UPDATE",
            EventType::Retire => "RETIRE",
            EventType::Associate => "ASSOCIATE",
            EventType::Disassociate => "DISASSOCIATE",
            EventType::Revoke => "REVOKE",
        }
    }
    /// Parses Apple's spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "CREATE" => EventType::Create,
            "UPDATE" => EventType::Update,
            "RETIRE" => EventType::Retire,
            "ASSOCIATE" => EventType::Associate,
            "DISASSOCIATE" => EventType::Disassociate,
            "REVOKE" => EventType::Revoke,
            _ => return None,
        })
    }
    /// Whether the event manages assets (its notifications are `ASSET_MANAGEMENT`).
    pub fn is_asset_event(self) -> bool {
        matches!(
            self,
            EventType::Associate | EventType::Disassociate | EventType::Revoke
        )
    }
}

/// An asset's key within an organisation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AssetKey {
    /// The App Store ID.
    pub adam_id: String,
    /// Quality.
    pub pricing_param: PricingParam,
}

/// Who an assignment is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Target {
    /// A user, by clientUserId.
    User(String),
    /// A device, by serial number.
    Serial(String),
}

/// What an asset event is to do: the assets (none for a revoke) and whom to, in request
/// order. Its steps walk the targets, users first.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AssetOrder {
    /// The assets.
    pub assets: Vec<AssetKey>,
    /// Users.
    pub client_user_ids: Vec<String>,
    /// Devices.
    pub serial_numbers: Vec<String>,
}

impl AssetOrder {
    /// The targets, users first.
    pub fn targets(&self) -> impl Iterator<Item = Target> + '_ {
        self.client_user_ids
            .iter()
            .map(|c| Target::User(c.clone()))
            .chain(
                self.serial_numbers
                    .iter()
                    .map(|s| Target::Serial(s.clone())),
            )
    }
    /// How many targets.
    pub fn targets_len(&self) -> usize {
        self.client_user_ids.len() + self.serial_numbers.len()
    }
}

/// What an event carries: a users request's users, or an asset event's order. Stored as
/// JSON (an array for users, as before asset events existed; an object for assets).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EventPayload {
    /// create/update/retire.
    Users(Vec<RequestUser>),
    /// associate/disassociate/revoke.
    Assets(AssetOrder),
}

impl EventPayload {
    /// The units the event's cursor walks: users, or targets.
    pub fn len(&self) -> usize {
        match self {
            EventPayload::Users(u) => u.len(),
            EventPayload::Assets(o) => o.targets_len(),
        }
    }
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One assignment as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignmentRecord {
    /// The asset.
    pub asset: AssetKey,
    /// Whom it is assigned to.
    pub target: Target,
    /// Change number of its last change (the assignments' version sequence).
    pub chg: i64,
    /// False once its user was retired (`excludeInactiveUsers` leaves it out); devices
    /// are always active.
    pub user_active: bool,
}

impl AssignmentRecord {
    /// The assignment as Apple shows it (without user state).
    pub fn to_response(&self) -> Assignment {
        let (client_user_id, serial_number) = match &self.target {
            Target::User(c) => (Some(c.clone()), None),
            Target::Serial(s) => (None, Some(s.clone())),
        };
        Assignment {
            adam_id: self.asset.adam_id.clone(),
            pricing_param: self.asset.pricing_param,
            client_user_id,
            serial_number,
            user_status: None,
            id_hash: None,
        }
    }
}

/// Filters of Get Assignments.
#[derive(Debug, Clone, Default)]
pub struct AssignmentFilter {
    /// Only this adamId.
    pub adam_id: Option<String>,
    /// Only this user.
    pub client_user_id: Option<String>,
    /// Only this device.
    pub serial_number: Option<String>,
    /// Only this quality.
    pub pricing_param: Option<PricingParam>,
    /// Leave out assignments of retired users.
    pub exclude_inactive_users: bool,
}

/// One page of assignments.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AssignmentPage {
    /// The page, in change order.
    pub assignments: Vec<AssignmentRecord>,
    /// Assignments in the whole listing.
    pub total: i64,
}

/// An asynchronous failure of an asset event: one error, the asset it concerns (none for
/// a revoke), and the targets it hit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AssetFailure {
    /// The error.
    pub error: AppleError,
    /// The asset.
    #[serde(default)]
    pub asset: Option<AssetKey>,
    /// Users.
    #[serde(default)]
    pub client_user_ids: Vec<String>,
    /// Devices.
    #[serde(default)]
    pub serial_numbers: Vec<String>,
}

/// One app or book an organisation owns licences of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetRecord {
    /// The App Store ID.
    pub adam_id: String,
    /// Licence quality.
    pub pricing_param: PricingParam,
    /// App or book.
    pub product_type: ProductType,
    /// Apple's platform names.
    pub supported_platforms: Vec<String>,
    /// Whether it can be assigned to a device serial number.
    pub device_assignable: bool,
    /// Whether an assignment can be taken back.
    pub revocable: bool,
    /// Licences owned.
    pub total_count: i64,
    /// Licences assigned.
    pub assigned_count: i64,
    /// Licences kept by retired users.
    pub retired_count: i64,
}

impl AssetRecord {
    /// Licences free to assign.
    pub fn available_count(&self) -> i64 {
        self.total_count - self.assigned_count
    }

    /// The asset as Apple shows it.
    pub fn to_response(&self) -> ResponseAsset {
        ResponseAsset {
            adam_id: self.adam_id.clone(),
            assigned_count: self.assigned_count,
            available_count: self.available_count(),
            device_assignable: self.device_assignable,
            pricing_param: self.pricing_param,
            product_type: self.product_type,
            retired_count: self.retired_count,
            revocable: self.revocable,
            total_count: self.total_count,
            supported_platforms: self.supported_platforms.clone(),
        }
    }
}

/// An event's state as `GET status` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum EventStatus {
    /// Not finished.
    Pending,
    /// Finished, every user applied.
    Complete,
    /// Finished, some users refused.
    Failed,
}

impl EventStatus {
    /// Apple's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EventStatus::Pending => "PENDING",
            EventStatus::Complete => "COMPLETE",
            EventStatus::Failed => "FAILED",
        }
    }
    /// Parses Apple's spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "PENDING" => EventStatus::Pending,
            "COMPLETE" => EventStatus::Complete,
            "FAILED" => EventStatus::Failed,
            _ => return None,
        })
    }
}

/// Progress of an event between steps, stored with the event (as JSON; a new event's is
/// `{}`, every field at its start).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct EventProgress {
    /// Users applied or refused so far.
    pub cursor: usize,
    /// Users applied successfully.
    pub num_completed: i64,
    /// Error → users, in the order met.
    pub failures: Vec<(AppleError, Vec<String>)>,
    /// Users applied since the last notification was queued.
    pub unreported: Vec<ResponseUser>,
    /// Asset events: failures by (error, asset), in the order met.
    pub asset_failures: Vec<AssetFailure>,
    /// Asset events: assignments made or taken back since the last notification.
    pub unreported_assignments: Vec<Assignment>,
}

/// An event as `GET status` reports it.
#[derive(Debug, Clone)]
pub struct EventRecord {
    /// Apple's `eventId`.
    pub event_id: EventId,
    /// Type.
    pub event_type: EventType,
    /// State.
    pub status: EventStatus,
    /// Users requested.
    pub num_requested: i64,
    /// Users done successfully.
    pub num_completed: i64,
    /// Error → clientUserIds it hit, in the order met.
    pub failures: Vec<(AppleError, Vec<String>)>,
    /// Asset events: failures by (error, asset).
    pub asset_failures: Vec<AssetFailure>,
}

/// An event a worker has leased.
#[derive(Debug, Clone)]
pub struct EventClaim {
    /// Database id.
    pub id: i64,
    /// Organisation.
    pub org_id: OrgId,
    /// Apple's `eventId`.
    pub event_id: EventId,
    /// Type.
    pub event_type: EventType,
    /// What the event is to do.
    pub payload: EventPayload,
    /// How many of the payload's units (users, targets) are already applied.
    pub cursor: usize,
    /// The lease owner this claim was made under.
    pub owner: String,
    /// Failed attempts of the step at `cursor` so far (kept across instances and restarts).
    pub step_failures: i64,
}

/// A user record to add, with the `managedAppleId` it was created with (kept, not shown).
#[derive(Debug, Clone)]
pub struct NewUser {
    /// The record.
    pub record: UserRecord,
    /// `managedAppleId` of the request.
    pub managed_apple_id: Option<String>,
}

/// A user record to write back over the organisation's record of the same `ord` (a
/// record's identity: one `clientUserId` has a record per life).
#[derive(Debug, Clone)]
pub struct UserUpdate {
    /// The record as it now is.
    pub record: UserRecord,
    /// A new `managedAppleId`, when the request gave one.
    pub managed_apple_id: Option<String>,
}

/// A write transaction over one organisation's data, its row locked (PostgreSQL) or the
/// database's one writer held (SQLite) from the start: the counters it reads are its own
/// until it commits, so no two writers give out the same change number. Dropped without
/// [`OrgTx::commit`], it writes nothing.
#[async_trait]
pub trait OrgTx: Send {
    /// The organisation as locked.
    fn org(&self) -> &Org;
    /// Locks the claimed event and checks the claim still holds it at its cursor; returns
    /// its progress and the number of users requested. [`StoreError::LeaseLost`] when the
    /// lease or the cursor moved on.
    async fn lock_event(&mut self, claim: &EventClaim) -> Result<(EventProgress, i64)>;
    /// The active (not retired) record of each of `client_user_ids` that has one.
    async fn active_users(&mut self, client_user_ids: &[&str]) -> Result<Vec<UserRecord>>;
    /// The Associated records holding any of `id_hashes`.
    async fn associated_with(&mut self, id_hashes: &[&str]) -> Result<Vec<UserRecord>>;
    /// The record holding `invite_code`, whatever its state.
    async fn user_by_invite_code(&mut self, invite_code: &str) -> Result<Option<UserRecord>>;
    /// Adds records.
    async fn insert_users(&mut self, users: &[NewUser]) -> Result<()>;
    /// Writes records back.
    async fn update_users(&mut self, users: &[UserUpdate]) -> Result<()>;
    /// Stores the organisation's counters: the highest `ord` and the latest change number.
    async fn set_counters(&mut self, user_count: i64, chg: i64) -> Result<()>;
    /// Stores a claimed event's progress and status, renews its lease to `now + lease_ms`
    /// and clears its step failures; a final status also stamps `finished_at`.
    async fn save_event(
        &mut self,
        claim: &EventClaim,
        progress: &EventProgress,
        status: EventStatus,
        now: i64,
        lease_ms: i64,
    ) -> Result<()>;
    /// Queues notifications of one type (whole envelopes, JSON) of this organisation.
    async fn enqueue_notifications(
        &mut self,
        kind: &str,
        bodies: &[String],
        now: i64,
    ) -> Result<()>;
    /// The organisation's assets of these (adamId, pricingParam) keys that exist.
    async fn assets(&mut self, keys: &[(&str, PricingParam)]) -> Result<Vec<AssetRecord>>;
    /// Writes assets (added, or replacing the one of the same key) and moves the assets'
    /// version to `asset_chg`.
    async fn put_assets(&mut self, assets: &[AssetRecord], asset_chg: i64) -> Result<()>;
    /// Every assignment of these targets, whatever the asset.
    async fn assignments_of(&mut self, targets: &[Target]) -> Result<Vec<AssignmentRecord>>;
    /// Adds assignments.
    async fn insert_assignments(&mut self, assignments: &[AssignmentRecord]) -> Result<()>;
    /// Removes assignments (as read: their `chg` and `user_active` are those stored).
    async fn delete_assignments(&mut self, assignments: &[AssignmentRecord]) -> Result<()>;
    /// Writes assignments back: each pair is (as read, as it now is) of the same key.
    async fn update_assignments(
        &mut self,
        changes: &[(AssignmentRecord, AssignmentRecord)],
    ) -> Result<()>;
    /// Stores the assignments' latest change number.
    async fn set_assignment_chg(&mut self, assign_chg: i64) -> Result<()>;
    /// Commits every write.
    async fn commit(self: Box<Self>) -> Result<()>;
    /// Undoes every write and lets the locks go now (a dropped transaction is rolled back
    /// too, but only once its connection is next used).
    async fn rollback(self: Box<Self>) -> Result<()>;
}

/// A write of one user record that takes no change number of its own: an invitation
/// acceptance. Only the record's row and its Apple Account (`id_hash`) are locked
/// (PostgreSQL), not the organisation, so acceptances of one organisation commit side by
/// side instead of queueing behind each other's commits; the change is numbered after the
/// commit, under the organisation's lock, with whatever other changes wait
/// ([`AppsBooksStore::number_changes`]). Until then the record keeps its old change number:
/// a `sinceVersionId` sync sees the change once it is numbered, never skips it. SQLite's one
/// writer numbers it at once. Dropped without [`UserTx::commit`], it writes nothing.
#[async_trait]
pub trait UserTx: Send {
    /// The organisation as read when the transaction began (its counters may move on).
    fn org(&self) -> &Org;
    /// The record holding `invite_code`, whatever its state, locked until the end.
    async fn user_by_invite_code(&mut self, invite_code: &str) -> Result<Option<UserRecord>>;
    /// The Associated records holding the transaction's Apple Account, which stays locked
    /// until the end: no other writer associates it meanwhile.
    async fn associated_with(&mut self) -> Result<Vec<UserRecord>>;
    /// Writes a record back (one read with [`UserTx::user_by_invite_code`]); its `chg` is
    /// not used: the store numbers the change.
    async fn change_user(&mut self, update: &UserUpdate) -> Result<()>;
    /// Queues notifications of one type (whole envelopes, JSON) of this organisation.
    async fn enqueue_notifications(
        &mut self,
        kind: &str,
        bodies: &[String],
        now: i64,
    ) -> Result<()>;
    /// Commits every write, then numbers the change; `Ok` once committed. A crash, or a
    /// failure to number, leaves the change to [`AppsBooksStore::number_changes`].
    async fn commit(self: Box<Self>) -> Result<()>;
    /// Undoes every write and lets the locks go now.
    async fn rollback(self: Box<Self>) -> Result<()>;
}

/// A notification a sender has leased, with where to send it.
#[derive(Debug, Clone)]
pub struct OutboxItem {
    /// Database id.
    pub id: i64,
    /// The envelope, JSON.
    pub body: String,
    /// Attempts made before this one.
    pub attempts: i64,
    /// Current notification URL of the organisation (None: notifications were turned off).
    pub url: Option<String>,
    /// Current bearer secret.
    pub auth_token: Option<String>,
}

/// Storage of the Apps and Books service.
#[async_trait]
pub trait AppsBooksStore: Send + Sync + 'static {
    /// Creates an organisation with its first sToken (stored as its digest, [`secret`]).
    async fn create_org(
        &self,
        uid: &str,
        name: &str,
        secret: &str,
        stoken: &str,
        expires_at: i64,
    ) -> Result<Org>;
    /// Every organisation.
    async fn list_orgs(&self) -> Result<Vec<Org>>;
    /// One organisation by database id.
    async fn get_org(&self, org_id: OrgId) -> Result<Option<Org>>;
    /// One organisation by `uId` or name.
    async fn find_org(&self, uid_or_name: &str) -> Result<Option<Org>>;
    /// Revokes every live token of the organisation and stores `stoken` as the new one.
    async fn renew_token(&self, org_id: OrgId, stoken: &str, expires_at: i64) -> Result<()>;
    /// Looks a whole sToken string up (by its digest: tokens are only compared).
    async fn find_token(&self, stoken: &str) -> Result<Option<TokenRecord>>;
    /// [`AppsBooksStore::find_token`] and the organisation it belongs to, in one read:
    /// what authenticating a request needs (None when the token, or its organisation,
    /// is unknown).
    async fn find_token_with_org(&self, stoken: &str) -> Result<Option<(TokenRecord, Org)>>;
    /// Latest token expiry of an org (for display).
    async fn current_token_expiry(&self, org_id: OrgId) -> Result<Option<i64>>;
    /// Replaces the client config.
    async fn set_client_config(&self, org_id: OrgId, config: &ClientConfig) -> Result<()>;

    /// Sets what client config reports of the organisation: `countryISO2ACode` and
    /// `defaultPlatform` (None keeps the current value).
    async fn set_org_profile(
        &self,
        org_id: OrgId,
        country: Option<&str>,
        default_platform: Option<&str>,
    ) -> Result<()>;

    /// Up to `size` records of a listing, from its `first`-th (zero-based) matching record
    /// on, with the listing's size, read in one snapshot. Pages are full: every record
    /// before `first` is one the listing holds. A page costs the same whatever `first` is
    /// (no scan of what lies before it).
    async fn list_users_page(
        &self,
        org_id: OrgId,
        order: UserOrder,
        filter: &UserFilter,
        first: i64,
        size: i64,
    ) -> Result<UserPage>;
    /// Every record of one clientUserId, oldest first.
    async fn list_users_by_client_id(
        &self,
        org_id: OrgId,
        client_user_id: &str,
        filter: &UserFilter,
    ) -> Result<Vec<UserRecord>>;
    /// Every record whose Apple Account hashes to `id_hash` (associated with it, now or
    /// before being retired), oldest first.
    async fn list_users_by_id_hash(
        &self,
        org_id: OrgId,
        id_hash: &str,
        filter: &UserFilter,
    ) -> Result<Vec<UserRecord>>;

    /// Stores a new PENDING event. All `now` values in this trait are Unix milliseconds.
    async fn insert_event(
        &self,
        org_id: OrgId,
        event_id: &EventId,
        event_type: EventType,
        payload: &EventPayload,
        num_requested: i64,
        now: i64,
    ) -> Result<()>;
    /// One event of one organisation.
    async fn get_event(&self, org_id: OrgId, event_id: &EventId) -> Result<Option<EventRecord>>;
    /// Leases the oldest PENDING event whose organisation has no older PENDING event, and
    /// whose lease is free or expired.
    async fn claim_event(&self, owner: &str, now: i64, lease_ms: i64)
        -> Result<Option<EventClaim>>;
    /// Starts a write transaction over one organisation's data (see [`OrgTx`]).
    async fn begin_org_write(&self, org_id: OrgId) -> Result<Box<dyn OrgTx>>;
    /// Starts a write of one record of an organisation whose change is numbered after
    /// its commit (see [`UserTx`]), for the Apple Account `id_hash`.
    async fn begin_user_write(&self, org_id: OrgId, id_hash: &str) -> Result<Box<dyn UserTx>>;
    /// Numbers every change a [`UserTx`] committed without a number yet, organisation by
    /// organisation, oldest record first; returns how many. A [`UserTx`] numbers its own at
    /// commit: this is for one whose process died in between (the event worker calls it
    /// when idle).
    async fn number_changes(&self) -> Result<u64>;
    /// Records one more failed attempt of the step at the claim's cursor (renewing the
    /// lease) and returns how many there have been since the last step that succeeded.
    /// Fails with [`StoreError::LeaseLost`] if the lease moved on.
    async fn event_step_failed(&self, claim: &EventClaim, now: i64, lease_ms: i64) -> Result<i64>;

    /// The Registered user holding `invite_code`, with its organisation.
    async fn find_invitation(&self, invite_code: &str) -> Result<Option<(OrgId, UserRecord)>>;

    /// Organisations with pending notifications (due or not), in id order.
    async fn notification_orgs(&self) -> Result<Vec<OrgId>>;
    /// Leases up to `limit` due notifications of one organisation, soonest due first.
    async fn claim_notifications(
        &self,
        owner: &str,
        org_id: OrgId,
        now: i64,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<OutboxItem>>;
    /// Bounds an organisation's backlog: of its pending notifications beyond the newest
    /// `keep`, those not leased are dropped (state `dropped`). Returns how many were.
    async fn trim_notifications(&self, org_id: OrgId, keep: i64, now: i64) -> Result<u64>;
    /// Marks one delivered.
    async fn notification_delivered(&self, id: i64, now: i64) -> Result<()>;
    /// Records a failed attempt; `retry_at` None gives up.
    async fn notification_failed(&self, id: i64, retry_at: Option<i64>, error: &str) -> Result<()>;
    /// Counts notifications by state (`pending`, `delivered`, `dead`, `dropped`), for tests
    /// and ops.
    async fn notification_counts(&self, org_id: OrgId) -> Result<Vec<(String, i64)>>;

    /// Service limits overriding Apple's defaults.
    async fn get_limits(&self) -> Result<Vec<(String, i64)>>;
    /// Sets one limit.
    async fn set_limit(&self, name: &str, value: i64) -> Result<()>;

    /// Counts one request of the organisation in the current second of the database's
    /// clock and returns how many it has made in that second, this one included. Every
    /// instance on the database counts into the same window, so `maxRequestPerSecond` is
    /// the organisation's budget whichever instance a request reaches.
    async fn count_request(&self, org_id: OrgId) -> Result<i64>;

    /// Every asset of an organisation, by adamId then pricingParam.
    async fn list_assets(&self, org_id: OrgId) -> Result<Vec<AssetRecord>>;

    /// Up to `size` assignments of a listing, from its `first`-th (zero-based) on, with
    /// the listing's size, in one snapshot. The listing is every assignment the filter
    /// keeps (with `since`, those changed after that change number), in change order.
    async fn list_assignments_page(
        &self,
        org_id: OrgId,
        since: Option<i64>,
        filter: &AssignmentFilter,
        first: i64,
        size: i64,
    ) -> Result<AssignmentPage>;

    /// The latest record of each of `client_user_ids` that has one (its active record, or
    /// else its last retired one).
    async fn latest_users(
        &self,
        org_id: OrgId,
        client_user_ids: &[&str],
    ) -> Result<Vec<UserRecord>>;
}

/// Every store of cloudvpp: what a backend implements and the binary hands out.
pub trait Store: AppsBooksStore + mdm::MdmStore + engine::EngineStore + gauges::GaugeStore {}

impl<T: AppsBooksStore + mdm::MdmStore + engine::EngineStore + gauges::GaugeStore> Store for T {}
