//! Storage of the invitation engine: Apps and Books locations, a local mirror of each
//! location's users, invitations and their states, seen notification IDs, and licences:
//! each location's list of apps and books for every associated person, and one assignment
//! record per (location, person, adamId) with its state.

use crate::mdm::{string_id, CommandUuid, EnrollmentId};
use crate::Result;
use async_trait::async_trait;
use cloudvpp_abwire::assets::PricingParam;
use cloudvpp_abwire::{ResponseUser, UserStatus};
use serde::{Deserialize, Serialize};

/// A location's database id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LocationId(pub i64);

impl std::fmt::Display for LocationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

string_id!(
    /// An invitation's ID (a UUID).
    InvitationId
);

string_id!(
    /// A licence assignment's ID (a UUID).
    AssignmentId
);

/// An Apps and Books location (one sToken).
#[derive(Clone, PartialEq)]
pub struct Location {
    /// Database id.
    pub id: LocationId,
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
    /// `Registered`, `Associated` or `Retired` (a `Deleted` record is stored `Retired`).
    pub status: UserStatus,
    /// Invite code of the active record.
    pub invite_code: Option<String>,
    /// idHash once associated.
    pub id_hash: Option<String>,
    /// Email.
    pub email: Option<String>,
}

/// Invitation states, in order: `registering → registered → queued → delivered →
/// associated`, or `failed` / `retired`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InvitationState {
    /// Waiting for the user to exist at Apps and Books.
    Registering,
    /// The user exists with an invite code; for email invitations the URL is ready.
    Registered,
    /// InviteToProgram is queued for the device.
    Queued,
    /// The device acknowledged and showed the invitation.
    Delivered,
    /// The person accepted: the user is Associated.
    Associated,
    /// Ended without association; `reason` says why.
    Failed,
    /// The user was retired at Apps and Books.
    Retired,
}

impl InvitationState {
    /// Every state.
    pub const ALL: [InvitationState; 7] = [
        InvitationState::Registering,
        InvitationState::Registered,
        InvitationState::Queued,
        InvitationState::Delivered,
        InvitationState::Associated,
        InvitationState::Failed,
        InvitationState::Retired,
    ];
    /// The spelling stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            InvitationState::Registering => "registering",
            InvitationState::Registered => "registered",
            InvitationState::Queued => "queued",
            InvitationState::Delivered => "delivered",
            InvitationState::Associated => "associated",
            InvitationState::Failed => "failed",
            InvitationState::Retired => "retired",
        }
    }
    /// Parses [`Self::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
    /// States that never change again (`resend` starts a failed one over).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            InvitationState::Associated | InvitationState::Failed | InvitationState::Retired
        )
    }
}

impl std::fmt::Display for InvitationState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One invitation of one person.
#[derive(Debug, Clone, PartialEq)]
pub struct Invitation {
    /// UUID.
    pub id: InvitationId,
    /// Location.
    pub location_id: LocationId,
    /// The person's clientUserId.
    pub client_user_id: String,
    /// Email.
    pub email: Option<String>,
    /// Enrollment to deliver InviteToProgram to (None: email link only).
    pub enrollment_id: Option<EnrollmentId>,
    /// Channel (enrollment) actually used.
    pub channel: Option<EnrollmentId>,
    /// Where it is.
    pub state: InvitationState,
    /// Why it failed, or what it waits for.
    pub reason: Option<String>,
    /// Invite code.
    pub invite_code: Option<String>,
    /// The invitation link.
    pub invitation_url: Option<String>,
    /// users/create event.
    pub event_id: Option<String>,
    /// InviteToProgram CommandUUID.
    pub command_uuid: Option<CommandUuid>,
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
    pub state: Option<InvitationState>,
    /// One location.
    pub location_id: Option<LocationId>,
    /// One person.
    pub client_user_id: Option<String>,
    /// Only those changed at or after this time (Unix ms); the listing is then in order of
    /// change, oldest first, so that a reader can follow changes from where it stopped.
    pub updated_since: Option<i64>,
    /// At most this many (newest first, or oldest change first with `updated_since`).
    pub limit: Option<i64>,
    /// Only people whose clientUserId or email contains this text, ignoring case (ASCII
    /// case on SQLite); `%`, `_` and `\` are plain characters. Scans the invitations.
    pub search: Option<String>,
    /// Skip this many of the listing first (a page of it); counts ignore it.
    pub offset: Option<i64>,
}

/// An app or book a location gives every person once associated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocationApp {
    /// Location.
    pub location_id: LocationId,
    /// The App Store ID.
    pub adam_id: String,
    /// Licence quality.
    pub pricing_param: PricingParam,
    /// Unix ms.
    pub created_at: i64,
}

/// Where one licence assignment stands: `pending → requested → assigned`, or `waiting`
/// (not enough licences, 9709) or `failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AssignmentState {
    /// To be sent in an associate request (held while the person is not registered).
    Pending,
    /// Sent: the associate event is followed (`event_id`); without an event ID the request
    /// may or may not have reached the service, and the service's assignments tell.
    Requested,
    /// The licence is the person's.
    Assigned,
    /// Apple answered 9709, not enough licences: looked at again when licences may have
    /// appeared (ASSET_COUNT, or the slow periodic re-check), never in a loop.
    Waiting,
    /// Refused; `error` holds Apple's number and message.
    Failed,
}

impl AssignmentState {
    /// Every state.
    pub const ALL: [AssignmentState; 5] = [
        AssignmentState::Pending,
        AssignmentState::Requested,
        AssignmentState::Assigned,
        AssignmentState::Waiting,
        AssignmentState::Failed,
    ];
    /// The spelling stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            AssignmentState::Pending => "pending",
            AssignmentState::Requested => "requested",
            AssignmentState::Assigned => "assigned",
            AssignmentState::Waiting => "waiting",
            AssignmentState::Failed => "failed",
        }
    }
    /// Parses [`Self::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
    /// States the engine never moves on by itself (asking again reopens a failed one).
    pub fn is_terminal(self) -> bool {
        matches!(self, AssignmentState::Assigned | AssignmentState::Failed)
    }
}

impl std::fmt::Display for AssignmentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Apple's answer that failed an assignment or holds it waiting: its number and message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppleFailure {
    /// `errorNumber`.
    pub number: u32,
    /// `errorMessage`.
    pub message: String,
}

impl std::fmt::Display for AppleFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.number, self.message)
    }
}

/// One licence of one app or book for one person of a location.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    /// UUID.
    pub id: AssignmentId,
    /// Location.
    pub location_id: LocationId,
    /// The person's clientUserId.
    pub client_user_id: String,
    /// The App Store ID.
    pub adam_id: String,
    /// Licence quality.
    pub pricing_param: PricingParam,
    /// Where it is.
    pub state: AssignmentState,
    /// Apple's refusal (`failed`) or shortage (`waiting`).
    pub error: Option<AppleFailure>,
    /// What a pending or requested assignment waits for, in words.
    pub note: Option<String>,
    /// The associate event it was last sent in.
    pub event_id: Option<String>,
    /// Associate requests sent for it.
    pub attempts: i64,
    /// Bumped by every write; writers that hold no lease write only the version they read.
    pub version: i64,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub updated_at: i64,
    /// When the engine looks at it next, Unix ms.
    pub next_action_at: i64,
}

/// Filter of assignment listings.
#[derive(Debug, Clone, Default)]
pub struct AssignmentFilter {
    /// One state.
    pub state: Option<AssignmentState>,
    /// One location.
    pub location_id: Option<LocationId>,
    /// One app or book.
    pub adam_id: Option<String>,
    /// One person.
    pub client_user_id: Option<String>,
    /// At most this many (newest first).
    pub limit: Option<i64>,
}

/// What a location is made of when it is added or its token renewed.
#[derive(Clone, Copy)]
pub struct NewLocation<'a> {
    /// Display name (the organisation's location name).
    pub name: &'a str,
    /// The sToken, kept as given (the engine's credential at the Apps and Books service).
    pub stoken: &'a str,
    /// Base URL of the service (`.../mdm/v2`).
    pub base_url: &'a str,
    /// The secret notifications must carry; only its digest is stored.
    pub notify_token: &'a str,
    /// Token expiry, Unix seconds.
    pub expires_at: Option<i64>,
}

impl std::fmt::Debug for NewLocation<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewLocation")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field("stoken", &"<redacted>")
            .finish()
    }
}

/// Storage of the invitation engine. It holds the engine's tables only: what the MDM
/// knows (enrollments, command answers) the engine asks the MDM service for.
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
    /// Adds a location for the organisation `uid` (Apple's `uId`) unless one is there
    /// already: a location whose `uid` is `uid`, or whose sToken is `stoken` (one added
    /// before its first sync recorded the `uId`). Returns that location and whether it was
    /// made now. Two callers adding one organisation at once get one location.
    async fn add_location_once(&self, new: &NewLocation<'_>, uid: &str)
        -> Result<(Location, bool)>;
    /// Replaces a location's credentials: a renewed sToken of the same organisation, its
    /// expiry, the service base URL and the notification secret (stored as its digest).
    async fn replace_location_token(&self, id: LocationId, new: &NewLocation<'_>) -> Result<()>;
    /// All locations.
    async fn locations(&self) -> Result<Vec<Location>>;
    /// One location.
    async fn location(&self, id: LocationId) -> Result<Option<Location>>;
    /// Records a sync: the next `versionId`, whether it was full, the `uId` seen.
    async fn location_synced(
        &self,
        id: LocationId,
        version_id: &str,
        full: bool,
        uid: Option<&str>,
        now: i64,
    ) -> Result<()>;
    /// Forgets the sync version (forces a full import).
    async fn reset_location_version(&self, id: LocationId) -> Result<()>;
    /// Records an ownership conflict.
    async fn set_location_conflict(&self, id: LocationId, conflict: bool) -> Result<()>;

    /// Applies users seen in one response or notification: per clientUserId a non-retired
    /// record wins over retired ones; a clientUserId seen only retired becomes retired.
    async fn upsert_mirror(
        &self,
        location_id: LocationId,
        users: &[ResponseUser],
        now: i64,
    ) -> Result<()>;
    /// The mirror's records of some people of a location (those it knows).
    async fn mirror_users(
        &self,
        location_id: LocationId,
        client_user_ids: &[String],
    ) -> Result<Vec<MirrorUser>>;
    /// Number of mirrored people.
    async fn mirror_count(&self, location_id: LocationId) -> Result<i64>;
    /// Records a notification ID; false if it was seen before.
    async fn notification_first_seen(&self, notification_id: &str, now: i64) -> Result<bool>;

    /// Stores new invitations (one transaction).
    async fn create_invitations(&self, invitations: &[Invitation]) -> Result<()>;
    /// One invitation.
    async fn invitation(&self, id: &InvitationId) -> Result<Option<Invitation>>;
    /// Invitations by filter, newest first.
    async fn invitations(&self, filter: &InvitationFilter) -> Result<Vec<Invitation>>;
    /// The non-terminal invitations of these people (location, clientUserId), any order.
    async fn open_invitations(&self, people: &[(LocationId, String)]) -> Result<Vec<Invitation>>;
    /// Every invitation of these people (location, clientUserId), in any state, any order.
    async fn invitations_of(&self, people: &[(LocationId, String)]) -> Result<Vec<Invitation>>;
    /// Counts by state (states with none are left out).
    async fn invitation_counts(&self) -> Result<Vec<(InvitationState, i64)>>;
    /// Counts by state of the invitations `filter` selects, its `limit` aside (states with
    /// none are left out).
    async fn invitation_counts_matching(
        &self,
        filter: &InvitationFilter,
    ) -> Result<Vec<(InvitationState, i64)>>;
    /// Writes an invitation back.
    async fn update_invitation(&self, invitation: &Invitation) -> Result<()>;
    /// Writes invitations back, in one transaction.
    async fn update_invitations(&self, invitations: &[Invitation]) -> Result<()>;
    /// Non-terminal invitations due for a look, oldest action first.
    async fn due_invitations(
        &self,
        location_ids: &[LocationId],
        now: i64,
        limit: i64,
    ) -> Result<Vec<Invitation>>;
    /// Invitations waiting for the device's answer (`queued`), by ID, after `after` (a
    /// page of at most `limit`; the caller pages through them round after round).
    async fn queued_invitations(
        &self,
        location_ids: &[LocationId],
        after: Option<&InvitationId>,
        limit: i64,
    ) -> Result<Vec<Invitation>>;
    /// Non-terminal invitations whose person the mirror shows Associated, with that record.
    async fn associable_invitations(
        &self,
        location_ids: &[LocationId],
        limit: i64,
    ) -> Result<Vec<(Invitation, MirrorUser)>>;
    /// `registering` invitations whose person the mirror already shows Registered with an
    /// invite code (an event of theirs ended, a notification or a sync brought them), with
    /// that record, whenever their next look is due: the engine moves them on at once.
    async fn registered_invitations(
        &self,
        location_ids: &[LocationId],
        limit: i64,
    ) -> Result<Vec<(Invitation, MirrorUser)>>;
    /// The earliest `next_action_at` of the non-terminal invitations of these locations
    /// (when the engine has something to do next), if any.
    async fn next_invitation_due(&self, location_ids: &[LocationId]) -> Result<Option<i64>>;
    /// Takes or renews the leases of locations for `owner` until `now + lease_ms`: the
    /// ones it holds, and those no one holds or whose lease ran out. Returns the locations
    /// it now holds; only their engine work is this owner's to do.
    async fn claim_locations(&self, owner: &str, now: i64, lease_ms: i64) -> Result<Vec<Location>>;
    /// Gives up `owner`'s leases (a clean shutdown), so another instance takes over at once.
    async fn release_locations(&self, owner: &str) -> Result<()>;

    /// Invitations of these people, by clientUserId or by email (in any case), in any
    /// location and state.
    async fn find_invitations(
        &self,
        client_user_ids: &[String],
        emails: &[String],
    ) -> Result<Vec<Invitation>>;

    /// Adds an app or book to its location's list, or changes its quality.
    async fn put_location_app(&self, app: &LocationApp) -> Result<()>;
    /// The lists of these locations, by location and adamId.
    async fn location_apps(&self, location_ids: &[LocationId]) -> Result<Vec<LocationApp>>;
    /// Takes an app or book off its location's list (its assignments stay); false if it
    /// was not on it.
    async fn remove_location_app(&self, location_id: LocationId, adam_id: &str) -> Result<bool>;

    /// Stores new assignments, leaving any (location, person, adamId) that has one already;
    /// returns how many were new.
    async fn create_assignments(&self, assignments: &[Assignment]) -> Result<u64>;
    /// Assignments by filter, newest first.
    async fn assignments(&self, filter: &AssignmentFilter) -> Result<Vec<Assignment>>;
    /// The assignments of these people (location, clientUserId), any order.
    async fn assignments_of(&self, people: &[(LocationId, String)]) -> Result<Vec<Assignment>>;
    /// The requested assignments of one associate event of a location.
    async fn event_assignments(
        &self,
        location_id: LocationId,
        event_id: &str,
    ) -> Result<Vec<Assignment>>;
    /// Counts by state (states with none are left out).
    async fn assignment_counts(&self) -> Result<Vec<(AssignmentState, i64)>>;
    /// People with an associated invitation in these locations who have no assignment of an
    /// app or book on their location's list (at most `limit` pairs): what a crash between an
    /// association and its assignments, or an app added later, leaves to create.
    async fn missing_assignments(
        &self,
        location_ids: &[LocationId],
        limit: i64,
    ) -> Result<Vec<(String, LocationApp)>>;
    /// Leases for `owner`, until `now + lease_ms`, up to `limit` assignments of these
    /// locations that are due (`pending`, `requested` or `waiting`, `next_action_at <= now`)
    /// and that no one else holds; returns them, soonest due first. Two owners never hold
    /// one assignment at once.
    async fn claim_assignments(
        &self,
        owner: &str,
        location_ids: &[LocationId],
        now: i64,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<Assignment>>;
    /// Extends the leases `owner` holds to `now + lease_ms`.
    async fn renew_assignment_leases(&self, owner: &str, now: i64, lease_ms: i64) -> Result<()>;
    /// Writes back assignments `owner` holds (one transaction), bumping their versions,
    /// and gives their leases up when `release`. A row whose lease `owner` lost is left as
    /// it is; returns the rows written.
    async fn save_assignments(
        &self,
        owner: &str,
        assignments: &[Assignment],
        release: bool,
    ) -> Result<u64>;
    /// Writes assignments no one works on (a notification, the admin API): each row only if
    /// its version is still the one read and no live lease holds it; returns the rows written.
    async fn update_idle_assignments(&self, assignments: &[Assignment], now: i64) -> Result<u64>;
    /// Makes the `waiting` assignments of one app or book of a location due now (licences may
    /// have appeared); returns how many.
    async fn wake_waiting(
        &self,
        location_id: LocationId,
        adam_id: &str,
        pricing_param: PricingParam,
        now: i64,
    ) -> Result<u64>;
    /// Gives up `owner`'s assignment leases (a clean shutdown).
    async fn release_assignments(&self, owner: &str) -> Result<()>;
}
