//! Storage of the MDM service: devices, enrollments (channels), identity bindings and the
//! per-channel command queue (nanomdm's contract).

use crate::Result;
use async_trait::async_trait;

/// What an Authenticate stores.
#[derive(Debug, Clone)]
pub struct AuthenticateInfo {
    /// Device-channel ID (UDID or EnrollmentID).
    pub device_id: String,
    /// Channel kind of the device channel (`Device` or `User Enrollment (Device)`).
    pub kind: String,
    /// `iOS`, `macOS`, ...
    pub platform: String,
    /// Serial number, if sent.
    pub serial_number: Option<String>,
    /// APNs topic.
    pub topic: String,
    /// The raw message.
    pub raw: Vec<u8>,
}

/// What a TokenUpdate stores.
#[derive(Debug, Clone)]
pub struct TokenUpdateInfo {
    /// Channel ID.
    pub id: String,
    /// Device-channel ID.
    pub device_id: String,
    /// Channel kind.
    pub kind: String,
    /// User short name / Managed Apple Account, user channels only.
    pub user_short_name: Option<String>,
    /// APNs topic.
    pub topic: String,
    /// Push magic.
    pub push_magic: String,
    /// Hex of the APNs token.
    pub token_hex: String,
    /// Still in Setup Assistant.
    pub awaiting_configuration: bool,
    /// The raw message.
    pub raw: Vec<u8>,
}

/// An enrollment (one channel).
#[derive(Debug, Clone, PartialEq)]
pub struct EnrollmentRecord {
    /// Channel ID.
    pub id: String,
    /// Device-channel ID.
    pub device_id: String,
    /// Channel kind.
    pub kind: String,
    /// Platform of the device.
    pub platform: String,
    /// User short name (user channels).
    pub user_short_name: Option<String>,
    /// Push topic.
    pub topic: String,
    /// Push magic.
    pub push_magic: String,
    /// APNs token, hex.
    pub token_hex: String,
    /// False after Authenticate until TokenUpdate, and after CheckOut.
    pub enabled: bool,
    /// Number of TokenUpdates.
    pub token_update_tally: i64,
    /// Last request, Unix ms.
    pub last_seen_at: Option<i64>,
}

/// A certificate bound to a device; the current one has no `replaced_at`.
#[derive(Debug, Clone, PartialEq)]
pub struct CertBinding {
    /// Hex SHA-256 of the certificate.
    pub sha256: String,
    /// Its subject, when recorded.
    pub subject: Option<String>,
    /// When it was bound, Unix ms.
    pub bound_at: i64,
    /// When a re-enrollment replaced it, Unix ms.
    pub replaced_at: Option<i64>,
}

/// A command as enqueued.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedCommand {
    /// `CommandUUID`.
    pub command_uuid: String,
    /// `RequestType`.
    pub request_type: String,
    /// The raw plist, sent to devices byte for byte.
    pub command: Vec<u8>,
}

/// A command's state for one enrollment.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandState {
    /// Channel ID.
    pub enrollment_id: String,
    /// `CommandUUID`.
    pub command_uuid: String,
    /// `RequestType`.
    pub request_type: String,
    /// None while never answered; `NotNow`, `Acknowledged`, `Error`, `CommandFormatError`.
    pub status: Option<String>,
    /// The full last report, raw plist.
    pub result: Option<Vec<u8>>,
    /// `InvitationResult` of an InviteToProgram answer.
    pub invitation_result: Option<String>,
    /// How many NotNow answers.
    pub not_now_tally: i64,
    /// False once cleared by a re-Authenticate.
    pub active: bool,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms of the last report.
    pub updated_at: Option<i64>,
}

/// Outcome of storing a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportOutcome {
    /// Stored.
    Stored,
    /// The command is not queued for this enrollment.
    NotQueuedHere,
}

/// Storage of the MDM service.
#[async_trait]
pub trait MdmStore: Send + Sync + 'static {
    /// Whether `sha256` is the certificate currently bound to `device_id`.
    async fn cert_associated(&self, device_id: &str, sha256: &str) -> Result<bool>;
    /// Binds a certificate to a device-channel ID, replacing the one bound before (which
    /// then stops working for it, for good). Returns the hash of the replaced certificate,
    /// if any. `Conflict` when the certificate belongs to another device, was replaced
    /// before, or a racing Authenticate won.
    async fn associate_cert(
        &self,
        device_id: &str,
        sha256: &str,
        subject: &str,
        now: i64,
    ) -> Result<Option<String>>;
    /// Every certificate ever bound to a device, newest first.
    async fn cert_bindings(&self, device_id: &str) -> Result<Vec<CertBinding>>;

    /// Authenticate: upserts the device, clears the queues of all its channels and
    /// disables them until the next TokenUpdate.
    async fn authenticate(&self, info: &AuthenticateInfo, now: i64) -> Result<()>;
    /// TokenUpdate: upserts and enables the channel. Fails with `Conflict` when a user
    /// channel names a device that never authenticated.
    async fn token_update(&self, info: &TokenUpdateInfo, now: i64) -> Result<()>;
    /// CheckOut: disables the device and its user channels.
    async fn check_out(&self, device_id: &str, now: i64) -> Result<()>;
    /// One enrollment.
    async fn enrollment(&self, id: &str) -> Result<Option<EnrollmentRecord>>;
    /// Enrollments, all or of one device.
    async fn list_enrollments(&self, device_id: Option<&str>) -> Result<Vec<EnrollmentRecord>>;
    /// Records `last_seen_at` for many enrollments at once (writes are batched).
    async fn touch(&self, seen: &[(String, i64)]) -> Result<()>;

    /// Queues one command for several enrollments. Returns the IDs it was queued for
    /// (existing enrollments only). `Conflict` if the CommandUUID exists.
    async fn enqueue(&self, ids: &[String], cmd: &QueuedCommand, now: i64) -> Result<Vec<String>>;
    /// Stores a report of `status` for `command_uuid`.
    async fn store_report(
        &self,
        id: &str,
        command_uuid: &str,
        status: &str,
        raw: &[u8],
        invitation_result: Option<&str>,
        now: i64,
    ) -> Result<ReportOutcome>;
    /// The oldest active command without a final status; NotNow'd ones are skipped when
    /// `skip_not_now`.
    async fn next_command(&self, id: &str, skip_not_now: bool) -> Result<Option<QueuedCommand>>;
    /// One command's state for one enrollment.
    async fn command_state(&self, id: &str, command_uuid: &str) -> Result<Option<CommandState>>;
    /// Every command of an enrollment, oldest first (`pending_only`: not final and active).
    async fn list_commands(&self, id: &str, pending_only: bool) -> Result<Vec<CommandState>>;
}
