//! Storage of the invitation engine: Apps and Books locations, a local mirror of each
//! location's users, invitations and their states, and seen notification IDs.

use crate::Result;
use async_trait::async_trait;
use cloudvpp_abwire::ResponseUser;

/// An Apps and Books location (one sToken).
#[derive(Clone, PartialEq)]
pub struct Location {
    /// Database id.
    pub id: i64,
    /// Display name (the sToken's orgName).
    pub name: String,
    /// The sToken (a credential: never logged).
    pub stoken: String,
    /// Base URL of the service (`.../mdm/v2`).
    pub base_url: String,
    /// Apple's `uId`, once seen.
    pub uid: Option<String>,
    /// Digest ([`crate::secret`]) of the secret expected in notifications' Authorization
    /// header: the engine only compares it, so only its digest is stored.
    pub notify_token_digest: String,
    /// `versionId` to sync from.
    pub version_id: Option<String>,
    /// Token expiry, Unix seconds.
    pub expires_at: Option<i64>,
    /// Another MDM's `mdmInfo` was seen.
    pub conflict: bool,
    /// Last full import, Unix ms.
    pub last_full_sync_at: Option<i64>,
    /// Last sync of any kind, Unix ms.
    pub last_sync_at: Option<i64>,
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Location")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("stoken", &"<redacted>")
            .finish()
    }
}

/// The mirror's view of one clientUserId: its active record, or the fact it is retired.
#[derive(Debug, Clone, PartialEq)]
pub struct MirrorUser {
    /// clientUserId.
    pub client_user_id: String,
    /// `Registered`, `Associated` or `Retired`.
    pub status: String,
    /// Invite code of the active record.
    pub invite_code: Option<String>,
    /// idHash once associated.
    pub id_hash: Option<String>,
    /// Email.
    pub email: Option<String>,
}

/// Invitation states, in order.
pub mod states {
    /// Waiting for the user to exist at Apps and Books.
    pub const REGISTERING: &str = "registering";
    /// The user exists with an invite code; for email invitations the URL is ready.
    pub const REGISTERED: &str = "registered";
    /// InviteToProgram is queued for the device.
    pub const QUEUED: &str = "queued";
    /// The device acknowledged and showed the invitation.
    pub const DELIVERED: &str = "delivered";
    /// The person accepted: the user is Associated.
    pub const ASSOCIATED: &str = "associated";
    /// Ended without association; `reason` says why.
    pub const FAILED: &str = "failed";
    /// The user was retired at Apps and Books.
    pub const RETIRED: &str = "retired";
    /// States that never change again.
    pub const TERMINAL: &[&str] = &[ASSOCIATED, FAILED, RETIRED];
}

/// One invitation of one person.
#[derive(Debug, Clone, PartialEq)]
pub struct Invitation {
    /// UUID.
    pub id: String,
    /// Location.
    pub location_id: i64,
    /// The person's clientUserId.
    pub client_user_id: String,
    /// Email.
    pub email: Option<String>,
    /// Enrollment to deliver InviteToProgram to (None: email link only).
    pub enrollment_id: Option<String>,
    /// Channel actually used.
    pub channel: Option<String>,
    /// See [`states`].
    pub state: String,
    /// Why it failed, or what it waits for.
    pub reason: Option<String>,
    /// Invite code.
    pub invite_code: Option<String>,
    /// The invitation link.
    pub invitation_url: Option<String>,
    /// users/create event.
    pub event_id: Option<String>,
    /// InviteToProgram CommandUUID.
    pub command_uuid: Option<String>,
    /// The device's InvitationResult.
    pub invitation_result: Option<String>,
    /// Times delivered (resends included).
    pub attempts: i64,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub updated_at: i64,
    /// When the engine looks at it next, Unix ms.
    pub next_action_at: i64,
}

/// Filter of invitation listings.
#[derive(Debug, Clone, Default)]
pub struct InvitationFilter {
    /// One state.
    pub state: Option<String>,
    /// One location.
    pub location_id: Option<i64>,
    /// One person.
    pub client_user_id: Option<String>,
    /// At most this many (newest first).
    pub limit: Option<i64>,
}

/// A queued invitation with its command's current state.
#[derive(Debug, Clone)]
pub struct DeliveryState {
    /// The invitation.
    pub invitation: Invitation,
    /// Command status (`NotNow`, `Acknowledged`, ...).
    pub status: Option<String>,
    /// InvitationResult.
    pub invitation_result: Option<String>,
    /// False once a re-enrollment cleared it.
    pub active: bool,
}

/// Storage of the invitation engine.
#[async_trait]
pub trait EngineStore: Send + Sync + 'static {
    /// Adds a location. `stoken` is kept as given (it is the engine's credential at the
    /// Apps and Books service); `notify_token`, only compared, is stored as its digest.
    async fn add_location(
        &self,
        name: &str,
        stoken: &str,
        base_url: &str,
        notify_token: &str,
        expires_at: Option<i64>,
    ) -> Result<Location>;
    /// All locations.
    async fn locations(&self) -> Result<Vec<Location>>;
    /// One location.
    async fn location(&self, id: i64) -> Result<Option<Location>>;
    /// Records a sync: the next `versionId`, whether it was full, the `uId` seen.
    async fn location_synced(
        &self,
        id: i64,
        version_id: &str,
        full: bool,
        uid: Option<&str>,
        now: i64,
    ) -> Result<()>;
    /// Forgets the sync version (forces a full import).
    async fn reset_location_version(&self, id: i64) -> Result<()>;
    /// Records an ownership conflict.
    async fn set_location_conflict(&self, id: i64, conflict: bool) -> Result<()>;

    /// Applies users seen in one response or notification: per clientUserId a non-retired
    /// record wins over retired ones; a clientUserId seen only retired becomes retired.
    async fn upsert_mirror(&self, location_id: i64, users: &[ResponseUser], now: i64)
        -> Result<()>;
    /// The mirror's record of one person.
    async fn mirror_user(
        &self,
        location_id: i64,
        client_user_id: &str,
    ) -> Result<Option<MirrorUser>>;
    /// Number of mirrored people.
    async fn mirror_count(&self, location_id: i64) -> Result<i64>;
    /// Records a notification ID; false if it was seen before.
    async fn notification_first_seen(&self, notification_id: &str, now: i64) -> Result<bool>;

    /// Stores new invitations.
    async fn create_invitations(&self, invitations: &[Invitation]) -> Result<()>;
    /// One invitation.
    async fn invitation(&self, id: &str) -> Result<Option<Invitation>>;
    /// Invitations by filter, newest first.
    async fn invitations(&self, filter: &InvitationFilter) -> Result<Vec<Invitation>>;
    /// Counts by state.
    async fn invitation_counts(&self) -> Result<Vec<(String, i64)>>;
    /// Writes an invitation back.
    async fn update_invitation(&self, invitation: &Invitation) -> Result<()>;
    /// Non-terminal invitations due for a look, oldest action first.
    async fn due_invitations(
        &self,
        location_ids: &[i64],
        now: i64,
        limit: i64,
    ) -> Result<Vec<Invitation>>;
    /// Queued invitations whose command has a report.
    async fn delivery_states(&self, location_ids: &[i64], limit: i64)
        -> Result<Vec<DeliveryState>>;
    /// Takes or renews the leases of locations for `owner` until `now + lease_ms`: the
    /// ones it holds, and those no one holds or whose lease ran out. Returns the locations
    /// it now holds; only their engine work is this owner's to do.
    async fn claim_locations(&self, owner: &str, now: i64, lease_ms: i64) -> Result<Vec<Location>>;
    /// Gives up `owner`'s leases (a clean shutdown), so another instance takes over at once.
    async fn release_locations(&self, owner: &str) -> Result<()>;
    /// Moves every non-terminal invitation whose person the mirror shows Associated to
    /// `associated`; returns how many moved.
    async fn associate_from_mirror(&self, location_id: i64, now: i64) -> Result<u64>;
}
