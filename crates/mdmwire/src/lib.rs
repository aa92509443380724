//! Apple MDM protocol messages as plists: check-in messages (`PUT /checkin`), command
//! reports (`PUT /mdm`), commands, and the typed `InviteToProgram`.
//!
//! Bodies arrive as XML or binary plists and are read within [`PlistLimits`] (see
//! [`bounded`]): never `plist::from_bytes` on untrusted bytes. Only the keys the server
//! acts on are typed; the raw bytes are kept by the caller for storage.

use serde::{Deserialize, Serialize};

pub mod bounded;
pub use bounded::{from_bytes_bounded, parse_bounded, PlistLimits};

/// Content type of check-in messages.
pub const CHECKIN_CONTENT_TYPE: &str = "application/x-apple-aspen-mdm-checkin";
/// Content type of command reports.
pub const MDM_CONTENT_TYPE: &str = "application/x-apple-aspen-mdm";
/// The only allowed `ProgramID` of `InviteToProgram`.
pub const CLOUDVPP_PROGRAM_ID: &str = "com.apple.cloudvpp";
/// `UserID` of every Shared iPad user.
pub const SHARED_IPAD_USER_ID: &str = "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF";

/// Decoding failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

/// Declares a message struct that carries the enrollment keys, with a `keys()` accessor.
/// The six keys are written once, here: `#[serde(flatten)]` would say the same, but the
/// plist deserializer cannot feed flattened structs (it fails with `UnexpectedEventType`).
macro_rules! with_enrollment_keys {
    ($(#[$meta:meta])* pub struct $name:ident { $($rest:tt)* }) => {
        $(#[$meta])*
        pub struct $name {
            /// Device UDID (absent on User Enrollment).
            #[serde(rename = "UDID", default, skip_serializing_if = "Option::is_none")]
            pub udid: Option<String>,
            /// User Enrollment device id.
            #[serde(
                rename = "EnrollmentID",
                default,
                skip_serializing_if = "Option::is_none"
            )]
            pub enrollment_id: Option<String>,
            /// User Enrollment user id.
            #[serde(
                rename = "EnrollmentUserID",
                default,
                skip_serializing_if = "Option::is_none"
            )]
            pub enrollment_user_id: Option<String>,
            /// macOS user GUID; all-F on Shared iPad.
            #[serde(rename = "UserID", default, skip_serializing_if = "Option::is_none")]
            pub user_id: Option<String>,
            /// macOS short name; Shared iPad Managed Apple Account.
            #[serde(
                rename = "UserShortName",
                default,
                skip_serializing_if = "Option::is_none"
            )]
            pub user_short_name: Option<String>,
            /// macOS long name.
            #[serde(
                rename = "UserLongName",
                default,
                skip_serializing_if = "Option::is_none"
            )]
            pub user_long_name: Option<String>,
            $($rest)*
        }

        impl $name {
            /// The enrollment keys of the message.
            pub fn keys(&self) -> EnrollmentKeys {
                EnrollmentKeys {
                    udid: self.udid.clone(),
                    enrollment_id: self.enrollment_id.clone(),
                    enrollment_user_id: self.enrollment_user_id.clone(),
                    user_id: self.user_id.clone(),
                    user_short_name: self.user_short_name.clone(),
                    user_long_name: self.user_long_name.clone(),
                }
            }
        }
    };
}

with_enrollment_keys! {
    /// Keys that identify the enrollment a message comes from.
    #[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
    pub struct EnrollmentKeys {}
}

/// Kind of channel an enrollment ID names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EnrollmentType {
    /// Device channel.
    Device,
    /// macOS user channel.
    User,
    /// Shared iPad user channel.
    SharedIpad,
    /// User Enrollment, device channel.
    UserEnrollmentDevice,
    /// User Enrollment, user channel.
    UserEnrollment,
}

impl EnrollmentType {
    /// Stable name for storage and APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            EnrollmentType::Device => "Device",
            EnrollmentType::User => "User",
            EnrollmentType::SharedIpad => "Shared iPad",
            EnrollmentType::UserEnrollmentDevice => "User Enrollment (Device)",
            EnrollmentType::UserEnrollment => "User Enrollment",
        }
    }
    /// Parses [`Self::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "Device" => EnrollmentType::Device,
            "User" => EnrollmentType::User,
            "Shared iPad" => EnrollmentType::SharedIpad,
            "User Enrollment (Device)" => EnrollmentType::UserEnrollmentDevice,
            "User Enrollment" => EnrollmentType::UserEnrollment,
            _ => return None,
        })
    }
    /// Whether this is a user channel.
    pub fn is_user_channel(self) -> bool {
        matches!(
            self,
            EnrollmentType::User | EnrollmentType::SharedIpad | EnrollmentType::UserEnrollment
        )
    }
}

/// A resolved enrollment: the channel's ID and its device's ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedEnrollment {
    /// ID of this channel (queue and push key).
    pub id: String,
    /// ID of the device channel (identity binding key).
    pub device_id: String,
    /// Channel kind.
    pub kind: EnrollmentType,
}

impl EnrollmentKeys {
    /// nanomdm's normalisation: `UDID`, `UDID:UserID`, `UDID:UserShortName` (Shared iPad),
    /// `EnrollmentID`, `EnrollmentID:EnrollmentUserID`.
    pub fn resolve(&self) -> Result<ResolvedEnrollment, DecodeError> {
        let nonempty = |o: &Option<String>| {
            o.as_deref()
                .filter(|s| !s.trim().is_empty())
                .map(str::to_string)
        };
        if let Some(udid) = nonempty(&self.udid) {
            if let Some(uid) = nonempty(&self.user_id) {
                if uid == SHARED_IPAD_USER_ID {
                    let short = nonempty(&self.user_short_name).ok_or_else(|| {
                        DecodeError("Shared iPad user channel without UserShortName".into())
                    })?;
                    return Ok(ResolvedEnrollment {
                        id: format!("{udid}:{short}"),
                        device_id: udid,
                        kind: EnrollmentType::SharedIpad,
                    });
                }
                return Ok(ResolvedEnrollment {
                    id: format!("{udid}:{uid}"),
                    device_id: udid,
                    kind: EnrollmentType::User,
                });
            }
            return Ok(ResolvedEnrollment {
                id: udid.clone(),
                device_id: udid,
                kind: EnrollmentType::Device,
            });
        }
        if let Some(eid) = nonempty(&self.enrollment_id) {
            if let Some(euid) = nonempty(&self.enrollment_user_id) {
                return Ok(ResolvedEnrollment {
                    id: format!("{eid}:{euid}"),
                    device_id: eid,
                    kind: EnrollmentType::UserEnrollment,
                });
            }
            return Ok(ResolvedEnrollment {
                id: eid.clone(),
                device_id: eid,
                kind: EnrollmentType::UserEnrollmentDevice,
            });
        }
        Err(DecodeError("neither UDID nor EnrollmentID".into()))
    }
}

with_enrollment_keys! {
/// A check-in message, decoded by `MessageType`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct CheckinMessage {
    /// `Authenticate`, `TokenUpdate`, `CheckOut`, ...
    #[serde(rename = "MessageType")]
    pub message_type: String,
    /// APNs topic.
    #[serde(rename = "Topic", default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Authenticate: serial number.
    #[serde(
        rename = "SerialNumber",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub serial_number: Option<String>,
    /// Authenticate: product name (`iPhone14,2`, `Mac16,10`).
    #[serde(
        rename = "ProductName",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub product_name: Option<String>,
    /// Authenticate (macOS): model.
    #[serde(rename = "Model", default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Authenticate: OS version.
    #[serde(rename = "OSVersion", default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    /// Authenticate: device name.
    #[serde(
        rename = "DeviceName",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub device_name: Option<String>,
    /// TokenUpdate: APNs device token.
    #[serde(rename = "Token", default, skip_serializing_if = "Option::is_none")]
    pub token: Option<plist::Data>,
    /// TokenUpdate: push magic.
    #[serde(rename = "PushMagic", default, skip_serializing_if = "Option::is_none")]
    pub push_magic: Option<String>,
    /// TokenUpdate: still in Setup Assistant.
    #[serde(
        rename = "AwaitingConfiguration",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub awaiting_configuration: Option<bool>,
}
}

impl CheckinMessage {
    /// Decodes an XML or binary plist.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        from_bytes_bounded(body, &PlistLimits::DEFAULT)
            .map_err(|e| DecodeError(format!("check-in {e}")))
    }
}

/// The platform a device reports, as far as command availability goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Platform {
    /// iPhone, iPad, iPod.
    Ios,
    /// Mac.
    MacOs,
    /// Apple TV.
    TvOs,
    /// Apple Watch.
    WatchOs,
    /// Vision Pro.
    VisionOs,
    /// Could not tell.
    Unknown,
}

impl Platform {
    /// From Authenticate's `ProductName` / `Model`.
    pub fn detect(product_name: Option<&str>, model: Option<&str>) -> Platform {
        let p = product_name.or(model).unwrap_or("");
        if p.starts_with("iPhone") || p.starts_with("iPad") || p.starts_with("iPod") {
            Platform::Ios
        } else if p.contains("Mac") {
            Platform::MacOs
        } else if p.starts_with("AppleTV") {
            Platform::TvOs
        } else if p.starts_with("Watch") {
            Platform::WatchOs
        } else if p.starts_with("RealityDevice") {
            Platform::VisionOs
        } else {
            Platform::Unknown
        }
    }
    /// Stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Ios => "iOS",
            Platform::MacOs => "macOS",
            Platform::TvOs => "tvOS",
            Platform::WatchOs => "watchOS",
            Platform::VisionOs => "visionOS",
            Platform::Unknown => "unknown",
        }
    }
    /// Parses [`Self::as_str`] (`unknown` included); None for anything else.
    pub fn parse(s: &str) -> Option<Platform> {
        Some(match s {
            "iOS" => Platform::Ios,
            "macOS" => Platform::MacOs,
            "tvOS" => Platform::TvOs,
            "watchOS" => Platform::WatchOs,
            "visionOS" => Platform::VisionOs,
            "unknown" => Platform::Unknown,
            _ => return None,
        })
    }
}

/// `Status` of a command report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportStatus {
    /// Give me work.
    Idle,
    /// Done.
    Acknowledged,
    /// Failed; see ErrorChain.
    Error,
    /// Malformed command.
    CommandFormatError,
    /// Cannot now; offer again later.
    NotNow,
}

impl ReportStatus {
    /// Apple's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ReportStatus::Idle => "Idle",
            ReportStatus::Acknowledged => "Acknowledged",
            ReportStatus::Error => "Error",
            ReportStatus::CommandFormatError => "CommandFormatError",
            ReportStatus::NotNow => "NotNow",
        }
    }
    /// Parses Apple's spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "Idle" => ReportStatus::Idle,
            "Acknowledged" => ReportStatus::Acknowledged,
            "Error" => ReportStatus::Error,
            "CommandFormatError" => ReportStatus::CommandFormatError,
            "NotNow" => ReportStatus::NotNow,
            _ => return None,
        })
    }
}

with_enrollment_keys! {
/// A command report (`PUT /mdm`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Report {
    /// `Status`.
    #[serde(rename = "Status")]
    pub status: String,
    /// The command answered (absent on Idle).
    #[serde(
        rename = "CommandUUID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub command_uuid: Option<String>,
    /// `InviteToProgram` answer.
    #[serde(
        rename = "InvitationResult",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub invitation_result: Option<String>,
}
}

impl Report {
    /// Decodes an XML or binary plist, checking `Status`.
    pub fn decode(body: &[u8]) -> Result<(Self, ReportStatus), DecodeError> {
        let r: Report = from_bytes_bounded(body, &PlistLimits::DEFAULT)
            .map_err(|e| DecodeError(format!("report {e}")))?;
        let status = ReportStatus::parse(&r.status)
            .ok_or_else(|| DecodeError(format!("unknown Status {:?}", r.status)))?;
        if status != ReportStatus::Idle && r.command_uuid.as_deref().is_none_or(|u| u.is_empty()) {
            return Err(DecodeError(format!(
                "{} report without CommandUUID",
                r.status
            )));
        }
        Ok((r, status))
    }
}

/// The parts of an enqueued command the server needs.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandInfo {
    /// `CommandUUID`.
    pub command_uuid: String,
    /// `Command.RequestType`.
    pub request_type: String,
}

#[derive(Deserialize)]
struct RawCommand {
    #[serde(rename = "CommandUUID")]
    command_uuid: String,
    #[serde(rename = "Command")]
    command: RawInner,
}

#[derive(Deserialize)]
struct RawInner {
    #[serde(rename = "RequestType")]
    request_type: String,
}

/// Checks a raw command plist: it must carry `CommandUUID` and `Command.RequestType`.
pub fn decode_command(body: &[u8]) -> Result<CommandInfo, DecodeError> {
    let c: RawCommand = from_bytes_bounded(body, &PlistLimits::DEFAULT)
        .map_err(|e| DecodeError(format!("command {e}")))?;
    if c.command_uuid.trim().is_empty() || c.command.request_type.trim().is_empty() {
        return Err(DecodeError("empty CommandUUID or RequestType".into()));
    }
    Ok(CommandInfo {
        command_uuid: c.command_uuid,
        request_type: c.command.request_type,
    })
}

/// `InviteToProgram` as Apple's example: `{Command: {InvitationURL, ProgramID, RequestType}, CommandUUID}`.
pub fn invite_to_program(command_uuid: &str, invitation_url: &str) -> Vec<u8> {
    let mut inner = plist::Dictionary::new();
    inner.insert("InvitationURL".into(), invitation_url.into());
    inner.insert("ProgramID".into(), CLOUDVPP_PROGRAM_ID.into());
    inner.insert("RequestType".into(), "InviteToProgram".into());
    let mut outer = plist::Dictionary::new();
    outer.insert("Command".into(), plist::Value::Dictionary(inner));
    outer.insert("CommandUUID".into(), command_uuid.into());
    let mut out = Vec::new();
    plist::to_writer_xml(&mut out, &plist::Value::Dictionary(outer)).expect("writing to memory");
    out
}

/// `InvitationResult` values.
pub const INVITATION_RESULTS: &[&str] =
    &["Acknowledged", "InvalidProgramID", "InvalidInvitationURL"];

#[cfg(test)]
mod tests {
    use super::*;

    const APPLE_RESPONSE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0"><dict>
<key>CommandUUID</key><string>0001_InviteToProgram</string>
<key>InvitationResult</key><string>Acknowledged</string>
<key>Status</key><string>Acknowledged</string>
<key>UDID</key><string>00008020-000915083C80012E</string>
</dict></plist>"#;

    #[test]
    fn apple_invite_response_decodes() {
        let (r, status) = Report::decode(APPLE_RESPONSE.as_bytes()).unwrap();
        assert_eq!(status, ReportStatus::Acknowledged);
        assert_eq!(r.invitation_result.as_deref(), Some("Acknowledged"));
        assert_eq!(r.keys().resolve().unwrap().id, "00008020-000915083C80012E");
    }

    #[test]
    fn invite_command_matches_apple_example() {
        let url = "https://buy.itunes.apple.com/WebObjects/MZFinance.woa/wa/associateVPPUserWithITSAccount?cc=us&inviteCode=7770596534cf46b58fb0254e7112a5e5&mt=8";
        let xml = invite_to_program("0001_InviteToProgram", url);
        let v: plist::Value = plist::from_bytes(&xml).unwrap();
        let d = v.as_dictionary().unwrap();
        assert_eq!(d["CommandUUID"].as_string(), Some("0001_InviteToProgram"));
        let c = d["Command"].as_dictionary().unwrap();
        assert_eq!(c["RequestType"].as_string(), Some("InviteToProgram"));
        assert_eq!(c["ProgramID"].as_string(), Some("com.apple.cloudvpp"));
        assert_eq!(c["InvitationURL"].as_string(), Some(url));
        assert!(String::from_utf8(xml)
            .unwrap()
            .contains("cc=us&amp;inviteCode"));
        assert_eq!(
            decode_command(&invite_to_program("u", url))
                .unwrap()
                .request_type,
            "InviteToProgram"
        );
    }

    #[test]
    fn enrollment_ids_follow_nanomdm() {
        let k = |udid: Option<&str>,
                 uid: Option<&str>,
                 short: Option<&str>,
                 eid: Option<&str>,
                 euid: Option<&str>| EnrollmentKeys {
            udid: udid.map(Into::into),
            user_id: uid.map(Into::into),
            user_short_name: short.map(Into::into),
            enrollment_id: eid.map(Into::into),
            enrollment_user_id: euid.map(Into::into),
            user_long_name: None,
        };
        assert_eq!(
            k(Some("D"), Some("U"), None, None, None)
                .resolve()
                .unwrap()
                .id,
            "D:U"
        );
        let shared = k(
            Some("D"),
            Some(SHARED_IPAD_USER_ID),
            Some("pat@school.example"),
            None,
            None,
        )
        .resolve()
        .unwrap();
        assert_eq!(
            (shared.id.as_str(), shared.kind),
            ("D:pat@school.example", EnrollmentType::SharedIpad)
        );
        assert_eq!(
            k(None, None, None, Some("E"), Some("F"))
                .resolve()
                .unwrap()
                .kind,
            EnrollmentType::UserEnrollment
        );
        assert!(k(None, None, None, None, None).resolve().is_err());
    }

    #[test]
    fn binary_plists_decode_too() {
        let v: plist::Value = plist::from_bytes(APPLE_RESPONSE.as_bytes()).unwrap();
        let mut bin = Vec::new();
        plist::to_writer_binary(&mut bin, &v).unwrap();
        assert_eq!(Report::decode(&bin).unwrap().1, ReportStatus::Acknowledged);
        assert!(Report::decode(b"garbage").is_err());
        assert!(Report::decode(&bin[..bin.len() / 2]).is_err());
    }
}
