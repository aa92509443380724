//! Storage of the MDM service: devices, enrollments (channels), identity bindings and the
//! per-channel command queue (nanomdm's contract).
//!
//! IDs are newtypes and states enums: a backend converts them once, at its boundary, and
//! a stored value it cannot read back is [`crate::StoreError::Corrupt`].

use crate::Result;
use async_trait::async_trait;
pub use cloudvpp_mdmwire::{EnrollmentType, Platform};
use serde::{Deserialize, Serialize};

macro_rules! string_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Wraps an ID.
            pub fn new(id: impl Into<String>) -> Self {
                $name(id.into())
            }
            /// The ID as stored and sent.
            pub fn as_str(&self) -> &str {
                &self.0
            }
            /// The ID's text.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                $name(s)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name(s.to_string())
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}
pub(crate) use string_id;

string_id!(
    /// An enrollment (channel) ID: `UDID`, `UDID:UserID`, `EnrollmentID`, ... The device
    /// channel's ID is also the device's.
    EnrollmentId
);
string_id!(
    /// A command's `CommandUUID`.
    CommandUuid
);

/// The status a device reported for a command. `Idle` is not one: it asks for work and is
/// never stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CommandStatus {
    /// Cannot now; offered again later.
    NotNow,
    /// Done.
    Acknowledged,
    /// Failed.
    Error,
    /// Malformed command.
    CommandFormatError,
}

impl CommandStatus {
    /// Apple's spelling, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandStatus::NotNow => "NotNow",
            CommandStatus::Acknowledged => "Acknowledged",
            CommandStatus::Error => "Error",
            CommandStatus::CommandFormatError => "CommandFormatError",
        }
    }
    /// Parses [`Self::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "NotNow" => CommandStatus::NotNow,
            "Acknowledged" => CommandStatus::Acknowledged,
            "Error" => CommandStatus::Error,
            "CommandFormatError" => CommandStatus::CommandFormatError,
            _ => return None,
        })
    }
    /// The stored status of a report; None for `Idle`.
    pub fn from_report(s: cloudvpp_mdmwire::ReportStatus) -> Option<Self> {
        use cloudvpp_mdmwire::ReportStatus as R;
        Some(match s {
            R::Idle => return None,
            R::NotNow => CommandStatus::NotNow,
            R::Acknowledged => CommandStatus::Acknowledged,
            R::Error => CommandStatus::Error,
            R::CommandFormatError => CommandStatus::CommandFormatError,
        })
    }
}

/// What an Authenticate stores.
#[derive(Debug, Clone)]
pub struct AuthenticateInfo {
    /// Device-channel ID (UDID or EnrollmentID).
    pub device_id: EnrollmentId,
    /// Channel kind of the device channel (`Device` or `User Enrollment (Device)`).
    pub kind: EnrollmentType,
    /// The device's platform.
    pub platform: Platform,
    /// Serial number, if sent.
    pub serial_number: Option<String>,
    /// APNs topic.
    pub topic: String,
    /// The raw message.
    pub raw: Vec<u8>,
}

/// What a TokenUpdate stores.
#[derive(Clone)]
pub struct TokenUpdateInfo {
    /// Channel ID.
    pub id: EnrollmentId,
    /// Device-channel ID.
    pub device_id: EnrollmentId,
    /// Channel kind.
    pub kind: EnrollmentType,
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
#[derive(Clone, PartialEq)]
pub struct EnrollmentRecord {
    /// Channel ID.
    pub id: EnrollmentId,
    /// Device-channel ID.
    pub device_id: EnrollmentId,
    /// Channel kind.
    pub kind: EnrollmentType,
    /// Platform of the device (`Unknown` when the device row is missing).
    pub platform: Platform,
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

impl std::fmt::Debug for TokenUpdateInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Push magic and token let anyone wake the device: never logged.
        f.debug_struct("TokenUpdateInfo")
            .field("id", &self.id)
            .field("device_id", &self.device_id)
            .field("kind", &self.kind)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for EnrollmentRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollmentRecord")
            .field("id", &self.id)
            .field("device_id", &self.device_id)
            .field("kind", &self.kind)
            .field("platform", &self.platform)
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
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
    pub command_uuid: CommandUuid,
    /// `RequestType`.
    pub request_type: String,
    /// The raw plist, sent to devices byte for byte.
    pub command: Vec<u8>,
}

/// A command's state for one enrollment.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandState {
    /// Channel ID.
    pub enrollment_id: EnrollmentId,
    /// `CommandUUID`.
    pub command_uuid: CommandUuid,
    /// `RequestType`.
    pub request_type: String,
    /// None while never answered.
    pub status: Option<CommandStatus>,
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
    /// The signals this store's writers keep: whether anything may have been queued for
    /// an enrollment, or a device's certificate binding changed, since a stamp was taken
    /// ([`crate::signals`]). Lets idle check-ins skip the database, exactly.
    fn signals(&self) -> std::sync::Arc<crate::signals::QueueSignals>;
    /// Whether `sha256` is the certificate currently bound to `device_id`.
    async fn cert_associated(&self, device_id: &EnrollmentId, sha256: &str) -> Result<bool>;
    /// Binds a certificate to a device-channel ID, replacing the one bound before (which
    /// then stops working for it, for good). Returns the hash of the replaced certificate,
    /// if any. `Conflict` when the certificate belongs to another device, was replaced
    /// before, or a racing Authenticate won.
    async fn associate_cert(
        &self,
        device_id: &EnrollmentId,
        sha256: &str,
        subject: &str,
        now: i64,
    ) -> Result<Option<String>>;
    /// Every certificate ever bound to a device, newest first.
    async fn cert_bindings(&self, device_id: &EnrollmentId) -> Result<Vec<CertBinding>>;

    /// Authenticate: upserts the device, clears the queues of all its channels and
    /// disables them until the next TokenUpdate.
    async fn authenticate(&self, info: &AuthenticateInfo, now: i64) -> Result<()>;
    /// TokenUpdate: upserts and enables the channel. Fails with `Conflict` when a user
    /// channel names a device that never authenticated.
    async fn token_update(&self, info: &TokenUpdateInfo, now: i64) -> Result<()>;
    /// CheckOut: disables the device and its user channels.
    async fn check_out(&self, device_id: &EnrollmentId, now: i64) -> Result<()>;
    /// One enrollment.
    async fn enrollment(&self, id: &EnrollmentId) -> Result<Option<EnrollmentRecord>>;
    /// Enrollments, all or of one device.
    async fn list_enrollments(
        &self,
        device_id: Option<&EnrollmentId>,
    ) -> Result<Vec<EnrollmentRecord>>;
    /// Records `last_seen_at` for many enrollments at once (writes are batched).
    async fn touch(&self, seen: &[(EnrollmentId, i64)]) -> Result<()>;

    /// Queues one command for several enrollments, in one transaction. Returns the IDs it
    /// was queued for (existing enrollments only, each once, in the order given).
    /// `Conflict` if the CommandUUID exists.
    async fn enqueue(
        &self,
        ids: &[EnrollmentId],
        cmd: &QueuedCommand,
        now: i64,
    ) -> Result<Vec<EnrollmentId>>;
    /// Stores a report of `status` for `command_uuid`.
    async fn store_report(
        &self,
        id: &EnrollmentId,
        command_uuid: &CommandUuid,
        status: CommandStatus,
        raw: &[u8],
        invitation_result: Option<&str>,
        now: i64,
    ) -> Result<ReportOutcome>;
    /// The oldest active command without a final status; NotNow'd ones are skipped when
    /// `skip_not_now`.
    async fn next_command(
        &self,
        id: &EnrollmentId,
        skip_not_now: bool,
    ) -> Result<Option<QueuedCommand>>;
    /// One command's state for one enrollment.
    async fn command_state(
        &self,
        id: &EnrollmentId,
        command_uuid: &CommandUuid,
    ) -> Result<Option<CommandState>>;
    /// The states of many (enrollment, command) pairs at once; pairs not queued are left
    /// out. Without `result` (the raw report is not read).
    async fn command_states(
        &self,
        keys: &[(EnrollmentId, CommandUuid)],
    ) -> Result<Vec<CommandState>>;
    /// Every command of an enrollment, oldest first (`pending_only`: not final and active).
    async fn list_commands(
        &self,
        id: &EnrollmentId,
        pending_only: bool,
    ) -> Result<Vec<CommandState>>;
}
