//! Simulated Apple devices for tests, demos and load.
//!
//! A [`Fleet`] shares one throwaway CA and one RSA key; each [`SimDevice`] gets its own
//! identity certificate (so each has its own certificate hash), signs every message with
//! `Mdm-Signature`, enrolls (Authenticate, TokenUpdate, and a user channel where its
//! platform has one), polls and answers commands: `InviteToProgram` with `Acknowledged`
//! (or NotNow / another `InvitationResult` on request), anything else with `Error`.

use anyhow::{bail, Context, Result};
use cloudvpp_identity::{devpki, pem, sign_detached};
use cloudvpp_mdmwire::{
    parse_bounded, PlistLimits, CHECKIN_CONTENT_TYPE, MDM_CONTENT_TYPE, SHARED_IPAD_USER_ID,
};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use x509_certificate::{CapturedX509Certificate, InMemorySigningKeyPair};

/// What kind of device to simulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SimPlatform {
    /// iPhone: device channel only.
    Ios,
    /// Mac: device channel plus one user channel.
    Macos,
    /// Shared iPad: device channel plus one user channel for a Managed Apple Account.
    SharedIpad,
    /// iPhone in User Enrollment (EnrollmentID, no UDID).
    UserEnrollment,
}

impl std::str::FromStr for SimPlatform {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "ios" => SimPlatform::Ios,
            "macos" => SimPlatform::Macos,
            "shared-ipad" => SimPlatform::SharedIpad,
            "user-enrollment" => SimPlatform::UserEnrollment,
            _ => {
                return Err(format!(
                    "unknown platform {s:?} (ios, macos, shared-ipad, user-enrollment)"
                ))
            }
        })
    }
}

/// Persistent description of a simulated device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceSpec {
    /// UDID, or EnrollmentID for User Enrollment.
    pub id: String,
    /// Platform.
    pub platform: SimPlatform,
    /// Serial number.
    pub serial: String,
    /// Identity certificate, PEM.
    pub cert_pem: String,
    /// macOS user GUID / Shared iPad Managed Apple Account.
    pub user: Option<String>,
}

impl DeviceSpec {
    /// The channel IDs the server will know this device by: device first, then user.
    pub fn enrollment_ids(&self) -> Vec<String> {
        let mut v = vec![self.id.clone()];
        if let Some(u) = &self.user {
            v.push(format!("{}:{}", self.id, u));
        }
        v
    }
    /// The channel `InviteToProgram` belongs on for this platform.
    pub fn invite_channel(&self) -> String {
        match self.platform {
            SimPlatform::Macos | SimPlatform::SharedIpad => self.enrollment_ids()[1].clone(),
            _ => self.id.clone(),
        }
    }
}

/// A CA and a shared device key (PEM), enough to mint device identities.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pki {
    /// CA certificate.
    pub ca_cert_pem: String,
    /// CA key.
    pub ca_key_pem: String,
    /// Key shared by the simulated devices (RSA key generation is slow; certificates differ).
    pub device_key_pem: String,
}

impl Pki {
    /// A new throwaway PKI.
    pub fn generate() -> Result<Self> {
        let (ca_cert_pem, ca_key_pem) = devpki::new_ca("cloudvpp simulator CA")?;
        Ok(Pki {
            ca_cert_pem,
            ca_key_pem,
            device_key_pem: devpki::new_key_pem()?,
        })
    }

    /// A new device of `platform`.
    pub fn new_device(&self, platform: SimPlatform) -> Result<DeviceSpec> {
        let id = uuid::Uuid::new_v4().to_string().to_uppercase();
        let cert_pem = devpki::issue(
            &self.ca_cert_pem,
            &self.ca_key_pem,
            &id,
            &self.device_key_pem,
        )?;
        let user = match platform {
            SimPlatform::Macos => Some(uuid::Uuid::new_v4().to_string().to_uppercase()),
            SimPlatform::SharedIpad => Some(format!(
                "student-{}@school.example",
                &id[..8].to_lowercase()
            )),
            _ => None,
        };
        let serial: String = (0..12)
            .map(|_| {
                char::from(b"ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"[rand::random::<usize>() % 34])
            })
            .collect();
        Ok(DeviceSpec {
            id,
            platform,
            serial,
            cert_pem,
            user,
        })
    }
}

/// How a device answers.
#[derive(Debug)]
pub struct Behaviour {
    /// Answer this many more `InviteToProgram` deliveries with NotNow (as during Setup Assistant).
    pub not_now: AtomicU32,
    /// `InvitationResult` to send with Acknowledged.
    pub invitation_result: String,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            not_now: AtomicU32::new(0),
            invitation_result: "Acknowledged".into(),
        }
    }
}

/// A command the device received and what it answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Handled {
    /// Channel ID it came on.
    pub channel: String,
    /// `CommandUUID`.
    pub command_uuid: String,
    /// `RequestType`.
    pub request_type: String,
    /// Status answered.
    pub status: String,
    /// For InviteToProgram: the URL.
    pub invitation_url: Option<String>,
}

/// A live simulated device.
pub struct SimDevice {
    /// Its description.
    pub spec: DeviceSpec,
    cert: CapturedX509Certificate,
    key: Arc<InMemorySigningKeyPair>,
    /// How it answers.
    pub behaviour: Behaviour,
    http: reqwest::Client,
    base: String,
}

/// Push topic the simulated devices report.
pub const TOPIC: &str = "com.apple.mgmt.External.cloudvpp-simulator";

fn plist_xml(d: plist::Dictionary) -> Vec<u8> {
    let mut out = Vec::new();
    plist::to_writer_xml(&mut out, &plist::Value::Dictionary(d)).expect("in memory");
    out
}

impl SimDevice {
    /// A device talking to the MDM at `base` (e.g. `http://127.0.0.1:9000`).
    pub fn new(
        spec: DeviceSpec,
        device_key_pem: &str,
        base: &str,
        http: reqwest::Client,
    ) -> Result<Self> {
        let key = Arc::new(pem::key(device_key_pem.as_bytes())?);
        Self::with_key(spec, key, base, http)
    }

    /// As [`Self::new`] with an already parsed key.
    pub fn with_key(
        spec: DeviceSpec,
        key: Arc<InMemorySigningKeyPair>,
        base: &str,
        http: reqwest::Client,
    ) -> Result<Self> {
        let cert = pem::cert(spec.cert_pem.as_bytes())?;
        Ok(SimDevice {
            spec,
            cert,
            key,
            behaviour: Behaviour::default(),
            http,
            base: base.trim_end_matches('/').to_string(),
        })
    }

    fn ids(&self, user_channel: bool) -> plist::Dictionary {
        let mut d = plist::Dictionary::new();
        match self.spec.platform {
            SimPlatform::UserEnrollment => {
                d.insert("EnrollmentID".into(), self.spec.id.clone().into());
            }
            _ => {
                d.insert("UDID".into(), self.spec.id.clone().into());
            }
        }
        if user_channel {
            match (self.spec.platform, &self.spec.user) {
                (SimPlatform::Macos, Some(u)) => {
                    d.insert("UserID".into(), u.clone().into());
                    d.insert("UserShortName".into(), "pat".into());
                    d.insert("UserLongName".into(), "Pat Doe".into());
                }
                (SimPlatform::SharedIpad, Some(u)) => {
                    d.insert("UserID".into(), SHARED_IPAD_USER_ID.into());
                    d.insert("UserShortName".into(), u.clone().into());
                }
                _ => {}
            }
        }
        d
    }

    /// Signs `body` for `Mdm-Signature`.
    pub fn sign(&self, body: &[u8]) -> Result<String> {
        Ok(sign_detached(&self.key, &self.cert, body)?)
    }

    /// Sends one signed message; returns (status, body).
    pub async fn send(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Vec<u8>)> {
        let sig = self.sign(&body)?;
        let resp = self
            .http
            .put(format!("{}{}", self.base, path))
            .header("Content-Type", content_type)
            .header("Mdm-Signature", sig)
            .body(body)
            .send()
            .await
            .with_context(|| format!("PUT {path}"))?;
        let status = resp.status().as_u16();
        Ok((status, resp.bytes().await?.to_vec()))
    }

    async fn checkin(&self, d: plist::Dictionary) -> Result<()> {
        let kind = d
            .get("MessageType")
            .and_then(|v| v.as_string())
            .unwrap_or("?")
            .to_string();
        let (status, body) = self
            .send("/checkin", CHECKIN_CONTENT_TYPE, plist_xml(d))
            .await?;
        if status != 200 {
            bail!(
                "{kind}: HTTP {status}: {}",
                String::from_utf8_lossy(&body).trim()
            );
        }
        Ok(())
    }

    /// The Authenticate message body.
    pub fn authenticate_body(&self) -> Vec<u8> {
        let mut d = self.ids(false);
        d.insert("MessageType".into(), "Authenticate".into());
        d.insert("Topic".into(), TOPIC.into());
        d.insert("SerialNumber".into(), self.spec.serial.clone().into());
        match self.spec.platform {
            SimPlatform::Macos => {
                d.insert("ProductName".into(), "Mac16,10".into());
                d.insert("Model".into(), "Mac16,10".into());
                d.insert("ModelName".into(), "Mac mini".into());
                d.insert("DeviceName".into(), "Simulated Mac".into());
                d.insert("OSVersion".into(), "15.4".into());
            }
            SimPlatform::SharedIpad => {
                d.insert("ProductName".into(), "iPad13,18".into());
                d.insert("OSVersion".into(), "18.1".into());
            }
            _ => {
                d.insert("ProductName".into(), "iPhone17,1".into());
                d.insert("OSVersion".into(), "18.1".into());
            }
        }
        plist_xml(d)
    }

    fn token_update(&self, user_channel: bool) -> plist::Dictionary {
        let mut d = self.ids(user_channel);
        d.insert("MessageType".into(), "TokenUpdate".into());
        d.insert("Topic".into(), TOPIC.into());
        let seed = format!("{}{}", self.spec.id, user_channel);
        let token: Vec<u8> = seed
            .bytes()
            .chain(std::iter::repeat_n(0u8, 32))
            .take(32)
            .collect();
        d.insert("Token".into(), plist::Value::Data(token));
        d.insert(
            "PushMagic".into(),
            format!("magic-{}", seed.to_lowercase()).into(),
        );
        d
    }

    /// Authenticate, TokenUpdate, and the user channel's TokenUpdate where there is one.
    pub async fn enroll(&self) -> Result<()> {
        let body = self.authenticate_body();
        let (status, resp) = self.send("/checkin", CHECKIN_CONTENT_TYPE, body).await?;
        if status != 200 {
            bail!(
                "Authenticate: HTTP {status}: {}",
                String::from_utf8_lossy(&resp).trim()
            );
        }
        self.checkin(self.token_update(false)).await?;
        if self.spec.user.is_some() {
            self.checkin(self.token_update(true)).await?;
        }
        Ok(())
    }

    /// A report body for the given channel.
    pub fn report_body(
        &self,
        user_channel: bool,
        status: &str,
        command_uuid: Option<&str>,
        extra: &[(&str, &str)],
    ) -> Vec<u8> {
        let mut d = self.ids(user_channel);
        d.insert("Status".into(), status.into());
        if let Some(u) = command_uuid {
            d.insert("CommandUUID".into(), u.into());
        }
        for (k, v) in extra {
            d.insert((*k).into(), (*v).into());
        }
        plist_xml(d)
    }

    /// Reports on a channel; returns the next command's plist, if any.
    pub async fn report(
        &self,
        user_channel: bool,
        body: Vec<u8>,
    ) -> Result<Option<plist::Dictionary>> {
        let (status, resp) = self.send("/mdm", MDM_CONTENT_TYPE, body).await?;
        if status != 200 {
            bail!(
                "report: HTTP {status}: {}",
                String::from_utf8_lossy(&resp).trim()
            );
        }
        if resp.is_empty() {
            return Ok(None);
        }
        let _ = user_channel;
        // Bounded: the simulator may be pointed at any server.
        let v =
            parse_bounded(&resp, &PlistLimits::DEFAULT).context("command plist from the server")?;
        Ok(v.into_dictionary())
    }

    /// One session on a channel, as after a push: Idle, then answer every command until
    /// the server sends an empty body.
    pub async fn poll(&self, user_channel: bool) -> Result<Vec<Handled>> {
        let channel = if user_channel {
            self.spec
                .enrollment_ids()
                .get(1)
                .cloned()
                .unwrap_or_default()
        } else {
            self.spec.id.clone()
        };
        let mut handled = Vec::new();
        let mut next = self
            .report(
                user_channel,
                self.report_body(user_channel, "Idle", None, &[]),
            )
            .await?;
        let mut guard = 0;
        while let Some(cmd) = next {
            guard += 1;
            if guard > 10_000 {
                bail!("server kept sending commands");
            }
            let uuid = cmd
                .get("CommandUUID")
                .and_then(|v| v.as_string())
                .unwrap_or("")
                .to_string();
            let inner = cmd.get("Command").and_then(|v| v.as_dictionary());
            let request_type = inner
                .and_then(|c| c.get("RequestType"))
                .and_then(|v| v.as_string())
                .unwrap_or("")
                .to_string();
            let (status, extra, url) = if request_type == "InviteToProgram" {
                let url = inner
                    .and_then(|c| c.get("InvitationURL"))
                    .and_then(|v| v.as_string())
                    .map(str::to_string);
                let not_now = self
                    .behaviour
                    .not_now
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if not_now {
                    ("NotNow", vec![], url)
                } else {
                    (
                        "Acknowledged",
                        vec![(
                            "InvitationResult",
                            self.behaviour.invitation_result.as_str(),
                        )],
                        url,
                    )
                }
            } else {
                ("Error", vec![], None)
            };
            let body = if status == "Error" {
                error_report(self.ids(user_channel), &uuid)
            } else {
                self.report_body(user_channel, status, Some(&uuid), &extra)
            };
            handled.push(Handled {
                channel: channel.clone(),
                command_uuid: uuid,
                request_type,
                status: status.into(),
                invitation_url: url,
            });
            next = self.report(user_channel, body).await?;
        }
        Ok(handled)
    }
}

/// An `Error` report with mdmb's "Unknown command" ErrorChain.
fn error_report(mut d: plist::Dictionary, uuid: &str) -> Vec<u8> {
    d.insert("Status".into(), "Error".into());
    d.insert("CommandUUID".into(), uuid.into());
    let mut e = plist::Dictionary::new();
    e.insert("ErrorCode".into(), plist::Value::Integer(12021.into()));
    e.insert("ErrorDomain".into(), "MCMDMErrorDomain".into());
    e.insert("LocalizedDescription".into(), "Unknown command".into());
    e.insert("USEnglishDescription".into(), "Unknown command".into());
    d.insert(
        "ErrorChain".into(),
        plist::Value::Array(vec![plist::Value::Dictionary(e)]),
    );
    plist_xml(d)
}

/// Writes `bytes` to `path` with mode 0600, also when the file already exists with a
/// wider one: for keys and the PKI state.
pub fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    #[cfg(unix)]
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// A simulator state file: the PKI and the devices.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fleet {
    /// PKI.
    pub pki: Pki,
    /// Devices.
    pub devices: Vec<DeviceSpec>,
}

impl Fleet {
    /// Reads a state file.
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(serde_json::from_str(&text)?)
    }
    /// Writes a state file, readable by its owner only (it holds the CA's private key).
    pub fn save(&self, path: &std::path::Path) -> Result<()> {
        write_private(path, &serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", path.display()))
    }
    /// Live devices for these specs, sharing one parsed key.
    pub fn devices(&self, base: &str) -> Result<Vec<SimDevice>> {
        let key = Arc::new(pem::key(self.pki.device_key_pem.as_bytes())?);
        let http = reqwest::Client::new();
        self.devices
            .iter()
            .map(|d| SimDevice::with_key(d.clone(), key.clone(), base, http.clone()))
            .collect()
    }
}

/// What a person does with an invitation link: opens it and accepts with their Apple
/// Account, through the page's JSON form (`POST /invite/accept` on the link's host).
pub async fn accept_invitation(
    http: &reqwest::Client,
    invitation_url: &str,
    apple_account: &str,
) -> Result<()> {
    let url = reqwest::Url::parse(invitation_url).context("invitation URL")?;
    let code = url
        .query_pairs()
        .find(|(k, _)| k == "inviteCode")
        .map(|(_, v)| v.into_owned())
        .context("no inviteCode in the invitation URL")?;
    let mut accept = url.clone();
    accept.set_path("/invite/accept");
    accept.set_query(None);
    let resp = http
        .post(accept)
        .json(&serde_json::json!({ "inviteCode": code, "appleId": apple_account }))
        .send()
        .await
        .context("accepting the invitation")?;
    let status = resp.status();
    if !status.is_success() {
        bail!(
            "accepting: HTTP {}: {}",
            status.as_u16(),
            resp.text().await.unwrap_or_default()
        );
    }
    Ok(())
}
