//! End-to-end tests of the MDM service: the real binary on 127.0.0.1 with a real SQLite
//! file, simulated devices signing every message with real CMS signatures, and a fake
//! APNs (HTTP/2 over mutual TLS) on loopback.

mod common;

use cloudvpp_simulator::{DeviceSpec, Pki, SimDevice, SimPlatform};
use common::Env;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex, OnceLock};

const KEY: &str = "test-api-key";

/// RSA key generation is slow: one PKI for the whole test binary.
fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| Pki::generate().unwrap())
}

struct Mdm {
    env: Env,
    srv: common::Server,
    http: reqwest::Client,
}

impl Mdm {
    fn start(extra: &[&str]) -> Mdm {
        let env = Env::new();
        std::fs::write(env.dir.path().join("ca.pem"), &pki().ca_cert_pem).unwrap();
        let srv = Self::spawn(&env, extra);
        Mdm {
            env,
            srv,
            http: reqwest::Client::new(),
        }
    }

    fn spawn(env: &Env, extra: &[&str]) -> common::Server {
        let ca = env.dir.path().join("ca.pem");
        env.spawn(&common::mdm_serve_args(KEY, ca.to_str().unwrap(), extra))
    }

    fn restart(&mut self, extra: &[&str]) {
        self.srv = Self::spawn(&self.env, extra);
    }

    fn device(&self, platform: SimPlatform) -> SimDevice {
        self.device_from(pki(), platform)
    }

    fn device_from(&self, pki: &Pki, platform: SimPlatform) -> SimDevice {
        let spec = pki.new_device(platform).unwrap();
        SimDevice::new(spec, &pki.device_key_pem, &self.srv.base, self.http.clone()).unwrap()
    }

    async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, self.srv.url(path))
            .bearer_auth(KEY);
        if let Some(b) = body {
            req = req.body(b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn enqueue(&self, ids: &[&str], uuid: &str, request_type: &str) -> Value {
        let (status, v) = self
            .api(
                reqwest::Method::PUT,
                &format!("/api/v1/enqueue/{}?nopush=1", ids.join(",")),
                Some(raw_command(uuid, request_type)),
            )
            .await;
        assert_eq!(status, 200, "{v}");
        v
    }

    async fn invite(&self, ids: &[String], url: &str) -> (u16, Value) {
        let body = json!({"enrollment_ids": ids, "invitation_url": url, "push": false});
        self.api(
            reqwest::Method::POST,
            "/api/v1/invite-to-program",
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    async fn command(&self, id: &str, uuid: &str) -> Value {
        let (status, v) = self
            .api(
                reqwest::Method::GET,
                &format!("/api/v1/enrollments/{id}/commands/{uuid}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{v}");
        v
    }

    async fn enrollment(&self, id: &str) -> (u16, Value) {
        self.api(
            reqwest::Method::GET,
            &format!("/api/v1/enrollments/{id}"),
            None,
        )
        .await
    }

    /// Sends raw bytes with a given signature header value and content type.
    async fn raw(
        &self,
        path: &str,
        content_type: &str,
        signature: Option<String>,
        body: Vec<u8>,
    ) -> (u16, String) {
        let mut req = self
            .http
            .put(self.srv.url(path))
            .header("Content-Type", content_type)
            .body(body);
        if let Some(s) = signature {
            req = req.header("Mdm-Signature", s);
        }
        let r = req.send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }
}

fn raw_command(uuid: &str, request_type: &str) -> Vec<u8> {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><plist version="1.0"><dict><key>Command</key><dict><key>RequestType</key><string>{request_type}</string></dict><key>CommandUUID</key><string>{uuid}</string></dict></plist>"#
    )
    .into_bytes()
}

fn uuid_of(cmd: &Option<plist::Dictionary>) -> Option<String> {
    cmd.as_ref()
        .and_then(|d| d.get("CommandUUID"))
        .and_then(|v| v.as_string())
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread")]
async fn check_in_messages_enroll_and_check_out() {
    let m = Mdm::start(&[]);
    let iphone = m.device(SimPlatform::Ios);
    iphone.enroll().await.unwrap();
    let (status, e) = m.enrollment(&iphone.spec.id).await;
    assert_eq!(status, 200, "{e}");
    assert_eq!(
        (
            e["type"].as_str(),
            e["platform"].as_str(),
            e["enabled"].as_bool()
        ),
        (Some("Device"), Some("iOS"), Some(true))
    );
    assert_eq!(e["token_update_tally"], 1);
    assert_eq!(e["topic"], cloudvpp_simulator::TOPIC);

    // A Mac enrolls twice: device channel and user channel.
    let mac = m.device(SimPlatform::Macos);
    mac.enroll().await.unwrap();
    let ids = mac.spec.enrollment_ids();
    let (_, user) = m.enrollment(&ids[1]).await;
    assert_eq!(
        (
            user["type"].as_str(),
            user["platform"].as_str(),
            user["device_id"].as_str()
        ),
        (Some("User"), Some("macOS"), Some(ids[0].as_str()))
    );
    let shared = m.device(SimPlatform::SharedIpad);
    shared.enroll().await.unwrap();
    let (_, s) = m.enrollment(&shared.spec.enrollment_ids()[1]).await;
    assert_eq!(s["type"], "Shared iPad");

    // Binary plists are read as well as XML.
    let v: plist::Value = plist::from_bytes(&iphone.authenticate_body()).unwrap();
    let mut bin = Vec::new();
    plist::to_writer_binary(&mut bin, &v).unwrap();
    let (status, _) = iphone
        .send("/checkin", cloudvpp_mdmwire::CHECKIN_CONTENT_TYPE, bin)
        .await
        .unwrap();
    assert_eq!(status, 200);
    // After a re-Authenticate the enrollment waits for its TokenUpdate.
    assert_eq!(m.enrollment(&iphone.spec.id).await.1["enabled"], false);
    iphone.enroll().await.unwrap();
    assert_eq!(m.enrollment(&iphone.spec.id).await.1["enabled"], true);

    // Other message types get a clear 4xx.
    let mut d = plist::Dictionary::new();
    d.insert("MessageType".into(), "DeclarativeManagement".into());
    d.insert("UDID".into(), iphone.spec.id.clone().into());
    let mut body = Vec::new();
    plist::to_writer_xml(&mut body, &plist::Value::Dictionary(d.clone())).unwrap();
    let (status, text) = iphone
        .send("/checkin", cloudvpp_mdmwire::CHECKIN_CONTENT_TYPE, body)
        .await
        .unwrap();
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&text).contains("DeclarativeManagement"));
    d.insert("MessageType".into(), "UserAuthenticate".into());
    let mut body = Vec::new();
    plist::to_writer_xml(&mut body, &plist::Value::Dictionary(d.clone())).unwrap();
    assert_eq!(
        iphone
            .send("/checkin", cloudvpp_mdmwire::CHECKIN_CONTENT_TYPE, body)
            .await
            .unwrap()
            .0,
        410
    );

    // CheckOut disables the device and its user channels.
    d.insert("MessageType".into(), "CheckOut".into());
    d.insert("UDID".into(), mac.spec.id.clone().into());
    d.insert("Topic".into(), cloudvpp_simulator::TOPIC.into());
    let mut body = Vec::new();
    plist::to_writer_xml(&mut body, &plist::Value::Dictionary(d)).unwrap();
    assert_eq!(
        mac.send("/checkin", cloudvpp_mdmwire::CHECKIN_CONTENT_TYPE, body)
            .await
            .unwrap()
            .0,
        200
    );
    assert_eq!(m.enrollment(&ids[0]).await.1["enabled"], false);
    assert_eq!(m.enrollment(&ids[1]).await.1["enabled"], false);

    // Check-ins also work on /mdm by content type (no CheckInURL).
    let late = m.device(SimPlatform::Ios);
    let (status, _) = late
        .send(
            "/mdm",
            cloudvpp_mdmwire::CHECKIN_CONTENT_TYPE,
            late.authenticate_body(),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
}

/// nanomdm's queue script (test/e2e/queue.go), plus final statuses and re-enrollment.
#[tokio::test(flavor = "multi_thread")]
async fn command_queue_follows_the_nanomdm_contract() {
    let m = Mdm::start(&[]);
    let d = m.device(SimPlatform::Ios);
    d.enroll().await.unwrap();
    let id = d.spec.id.as_str();
    let idle = || d.report_body(false, "Idle", None, &[]);
    let ack = |u: &str| d.report_body(false, "Acknowledged", Some(u), &[]);
    let last_seen = || async { m.enrollment(id).await.1["last_seen_at"].as_i64() };

    let enrolled_seen = last_seen().await.unwrap_or(0);
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    assert_eq!(
        d.report(false, idle()).await.unwrap(),
        None,
        "empty queue: zero-byte 200"
    );
    // An idle check-in moves last_seen_at on, in the next batched write (once a second).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while last_seen().await.unwrap_or(0) <= enrolled_seen {
        assert!(
            std::time::Instant::now() < deadline,
            "last_seen_at not written"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    m.enqueue(&[id], "CMD1", "DeviceInformation").await;
    m.enqueue(&[id], "CMD2", "ProfileList").await;
    assert_eq!(
        uuid_of(&d.report(false, idle()).await.unwrap()).as_deref(),
        Some("CMD1")
    );
    assert_eq!(
        uuid_of(&d.report(false, ack("CMD1")).await.unwrap()).as_deref(),
        Some("CMD2")
    );
    assert_eq!(d.report(false, ack("CMD2")).await.unwrap(), None);

    m.enqueue(&[id], "CMD3", "DeviceInformation").await;
    assert_eq!(
        uuid_of(&d.report(false, idle()).await.unwrap()).as_deref(),
        Some("CMD3")
    );
    let not_now = d.report_body(false, "NotNow", Some("CMD3"), &[]);
    assert_eq!(
        d.report(false, not_now).await.unwrap(),
        None,
        "NotNow'd command skipped in this session"
    );
    assert_eq!(
        uuid_of(&d.report(false, idle()).await.unwrap()).as_deref(),
        Some("CMD3"),
        "offered again on the next Idle"
    );
    assert_eq!(d.report(false, ack("CMD3")).await.unwrap(), None);
    let cmd3 = m.command(id, "CMD3").await;
    assert_eq!(
        (cmd3["status"].as_str(), cmd3["not_now_count"].as_i64()),
        (Some("Acknowledged"), Some(1))
    );

    // Error and CommandFormatError are final and keep the whole report.
    m.enqueue(&[id], "CMD4", "Bogus").await;
    m.enqueue(&[id], "CMD5", "Bogus").await;
    assert!(d
        .poll(false)
        .await
        .unwrap()
        .iter()
        .all(|h| h.status == "Error"));
    let cmd4 = m.command(id, "CMD4").await;
    assert_eq!(cmd4["status"], "Error");
    assert!(cmd4["result"]
        .as_str()
        .unwrap()
        .contains("MCMDMErrorDomain"));
    m.enqueue(&[id], "CMD6", "Bogus").await;
    d.report(false, idle()).await.unwrap();
    assert_eq!(
        d.report(
            false,
            d.report_body(false, "CommandFormatError", Some("CMD6"), &[])
        )
        .await
        .unwrap(),
        None
    );
    assert_eq!(m.command(id, "CMD6").await["status"], "CommandFormatError");
    // A repeated final report is accepted and changes nothing.
    assert_eq!(d.report(false, ack("CMD1")).await.unwrap(), None);

    // A report for a command that is not this device's is refused.
    let other = m.device(SimPlatform::Ios);
    other.enroll().await.unwrap();
    m.enqueue(&[other.spec.id.as_str()], "OTHER", "DeviceInformation")
        .await;
    let err = d.report(false, ack("OTHER")).await.unwrap_err();
    assert!(err.to_string().contains("HTTP 400"), "{err}");
    assert_eq!(m.command(&other.spec.id, "OTHER").await["status"], "Queued");

    // Duplicate CommandUUID.
    let (status, _) = m
        .api(
            reqwest::Method::PUT,
            &format!("/api/v1/enqueue/{id}?nopush=1"),
            Some(raw_command("CMD1", "X")),
        )
        .await;
    assert_eq!(status, 409);
    // Garbage commands.
    let (status, _) = m
        .api(
            reqwest::Method::PUT,
            &format!("/api/v1/enqueue/{id}"),
            Some(b"nope".to_vec()),
        )
        .await;
    assert_eq!(status, 400);

    // Re-Authenticate clears the queue.
    m.enqueue(&[id], "CMD7", "DeviceInformation").await;
    d.enroll().await.unwrap();
    assert_eq!(d.report(false, idle()).await.unwrap(), None);
    assert_eq!(m.command(id, "CMD7").await["active"], false);
    // One command to several enrollments, unknown ones reported.
    let (status, v) = m
        .api(
            reqwest::Method::PUT,
            &format!("/api/v1/enqueue/{id},{},nobody?nopush=1", other.spec.id),
            Some(raw_command("MULTI", "DeviceInformation")),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(v["status"]["nobody"]["queued"], false);
    assert_eq!(
        uuid_of(&d.report(false, idle()).await.unwrap()).as_deref(),
        Some("MULTI")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn invite_to_program_follows_apple() {
    let m = Mdm::start(&[]);
    let iphone = m.device(SimPlatform::Ios);
    let mac = m.device(SimPlatform::Macos);
    let ipad = m.device(SimPlatform::SharedIpad);
    let byod = m.device(SimPlatform::UserEnrollment);
    for d in [&iphone, &mac, &ipad, &byod] {
        d.enroll().await.unwrap();
    }
    let url = "https://vpp.example/invite?cc=us&inviteCode=7770596534cf46b58fb0254e7112a5e5&mt=8";
    // Channel rules.
    let cases = [
        (iphone.spec.id.clone(), true),
        (mac.spec.enrollment_ids()[0].clone(), false),
        (mac.spec.enrollment_ids()[1].clone(), true),
        (ipad.spec.enrollment_ids()[0].clone(), false),
        (ipad.spec.enrollment_ids()[1].clone(), true),
        (byod.spec.id.clone(), false),
        ("unknown".to_string(), false),
    ];
    let ids: Vec<String> = cases.iter().map(|(i, _)| i.clone()).collect();
    let (status, v) = m.invite(&ids, url).await;
    assert_eq!(status, 200, "{v}");
    for (id, ok) in &cases {
        assert_eq!(v["status"][id]["queued"].as_bool(), Some(*ok), "{id}: {v}");
    }
    assert!(v["status"][&byod.spec.id]["error"]
        .as_str()
        .unwrap()
        .contains("User Enrollment"));
    assert!(v["status"][&mac.spec.id]["error"]
        .as_str()
        .unwrap()
        .contains("user channel"));
    let uuid = v["command_uuid"].as_str().unwrap().to_string();
    assert_eq!(v["request_type"], "InviteToProgram");
    // Only refused targets: 422.
    let (status, _) = m.invite(std::slice::from_ref(&byod.spec.id), url).await;
    assert_eq!(status, 422);

    // The plist as Apple's, delivered to the right channels.
    let next = iphone
        .report(false, iphone.report_body(false, "Idle", None, &[]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next["CommandUUID"].as_string(), Some(uuid.as_str()));
    let c = next["Command"].as_dictionary().unwrap();
    assert_eq!(c["RequestType"].as_string(), Some("InviteToProgram"));
    assert_eq!(c["ProgramID"].as_string(), Some("com.apple.cloudvpp"));
    assert_eq!(c["InvitationURL"].as_string(), Some(url));
    assert_eq!(c.len(), 3);
    let ack = iphone.report_body(
        false,
        "Acknowledged",
        Some(&uuid),
        &[("InvitationResult", "Acknowledged")],
    );
    assert_eq!(iphone.report(false, ack).await.unwrap(), None);
    let st = m.command(&iphone.spec.id, &uuid).await;
    assert_eq!(
        (st["status"].as_str(), st["invitation_result"].as_str()),
        (Some("Acknowledged"), Some("Acknowledged"))
    );

    // NotNow (Setup Assistant) leaves it queued until the device can show it.
    let mut mac = mac;
    mac.behaviour.not_now = std::sync::atomic::AtomicU32::new(2);
    mac.behaviour.invitation_result = "InvalidInvitationURL".into();
    assert!(
        mac.poll(false).await.unwrap().is_empty(),
        "nothing on the Mac's device channel"
    );
    let user_id = mac.spec.enrollment_ids()[1].clone();
    for _ in 0..2 {
        let h = mac.poll(true).await.unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].status, "NotNow");
        let st = m.command(&user_id, &uuid).await;
        assert_eq!(st["status"], "NotNow");
    }
    let h = mac.poll(true).await.unwrap();
    assert_eq!(h[0].status, "Acknowledged");
    let st = m.command(&user_id, &uuid).await;
    assert_eq!(
        (
            st["invitation_result"].as_str(),
            st["not_now_count"].as_i64()
        ),
        (Some("InvalidInvitationURL"), Some(2))
    );
    let h = ipad.poll(true).await.unwrap();
    assert_eq!((h.len(), h[0].invitation_url.as_deref()), (1, Some(url)));

    // Bad requests to the typed API.
    let (status, _) = m
        .api(
            reqwest::Method::POST,
            "/api/v1/invite-to-program",
            Some(b"{".to_vec()),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = m
        .invite(std::slice::from_ref(&iphone.spec.id), "not a url")
        .await;
    assert_eq!(status, 400);
    let r = m
        .http
        .post(m.srv.url("/api/v1/invite-to-program"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "no API key");
}

#[tokio::test(flavor = "multi_thread")]
async fn identity_failures_answer_400_and_change_nothing() {
    let m = Mdm::start(&[]);
    let d = m.device(SimPlatform::Ios);
    d.enroll().await.unwrap();
    m.enqueue(&[d.spec.id.as_str()], "KEEP", "DeviceInformation")
        .await;
    let idle = d.report_body(false, "Idle", None, &[]);
    let mdm_ct = cloudvpp_mdmwire::MDM_CONTENT_TYPE;
    let mut statuses = Vec::new();

    // No signature; signature over other bytes; not base64; not CMS.
    statuses.push(m.raw("/mdm", mdm_ct, None, idle.clone()).await);
    let other_sig = d.sign(b"something else").unwrap();
    statuses.push(m.raw("/mdm", mdm_ct, Some(other_sig), idle.clone()).await);
    statuses.push(
        m.raw("/mdm", mdm_ct, Some("%%%".into()), idle.clone())
            .await,
    );
    statuses.push(
        m.raw("/mdm", mdm_ct, Some("aGVsbG8=".into()), idle.clone())
            .await,
    );
    // A certificate from another CA.
    let (other_ca, other_ca_key) = cloudvpp_identity::devpki::new_ca("Rogue CA").unwrap();
    let rogue = Pki {
        ca_cert_pem: other_ca,
        ca_key_pem: other_ca_key,
        device_key_pem: pki().device_key_pem.clone(),
    };
    let mut spec: DeviceSpec = rogue.new_device(SimPlatform::Ios).unwrap();
    spec.id = d.spec.id.clone();
    let impostor =
        SimDevice::new(spec, &rogue.device_key_pem, &m.srv.base, m.http.clone()).unwrap();
    statuses.push(
        m.raw(
            "/mdm",
            mdm_ct,
            Some(impostor.sign(&idle).unwrap()),
            idle.clone(),
        )
        .await,
    );
    // A trusted device speaking for another device's UDID.
    let second = m.device(SimPlatform::Ios);
    second.enroll().await.unwrap();
    statuses.push(
        m.raw(
            "/mdm",
            mdm_ct,
            Some(second.sign(&idle).unwrap()),
            idle.clone(),
        )
        .await,
    );
    // Authenticate with a certificate bound to another device.
    let mut stolen = second.spec.clone();
    stolen.id = "NEW-UDID".into();
    let thief = SimDevice::new(stolen, &pki().device_key_pem, &m.srv.base, m.http.clone()).unwrap();
    let (status, text) = thief
        .send(
            "/checkin",
            cloudvpp_mdmwire::CHECKIN_CONTENT_TYPE,
            thief.authenticate_body(),
        )
        .await
        .unwrap();
    statuses.push((status, String::from_utf8_lossy(&text).into_owned()));
    // Garbage, truncated and unknown-UDID bodies, correctly signed.
    for body in [b"garbage".to_vec(), idle[..idle.len() / 2].to_vec()] {
        statuses.push(
            m.raw("/mdm", mdm_ct, Some(d.sign(&body).unwrap()), body)
                .await,
        );
    }
    let unknown = m.device(SimPlatform::Ios);
    let body = unknown.report_body(false, "Idle", None, &[]);
    statuses.push(
        m.raw("/mdm", mdm_ct, Some(unknown.sign(&body).unwrap()), body)
            .await,
    );
    let bad_status = d.report_body(false, "Maybe", Some("KEEP"), &[]);
    statuses.push(
        m.raw(
            "/mdm",
            mdm_ct,
            Some(d.sign(&bad_status).unwrap()),
            bad_status,
        )
        .await,
    );
    for (status, text) in &statuses {
        assert_eq!(*status, 400, "{text}");
        assert!(!text.trim().is_empty(), "a clear reason");
    }
    // Oversized bodies are refused before anything else (own client: the server closes
    // that connection while the body is still being sent).
    let big = vec![b'x'; 5 * 1024 * 1024];
    let r = reqwest::Client::new()
        .put(m.srv.url("/mdm"))
        .header("Content-Type", mdm_ct)
        .header("Mdm-Signature", "x")
        .body(big)
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status(), 413);
    }

    // Nothing changed: the command is still waiting for the real device, which is still enrolled.
    assert_eq!(m.command(&d.spec.id, "KEEP").await["status"], "Queued");
    assert_eq!(m.enrollment(&d.spec.id).await.1["enabled"], true);
    assert_eq!(m.enrollment("NEW-UDID").await.0, 404);
    assert_eq!(
        uuid_of(&d.report(false, idle).await.unwrap()).as_deref(),
        Some("KEEP")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_certificate_header_replaces_the_signature() {
    let m = Mdm::start(&["--cert-header", "X-Client-Cert"]);
    let d = m.device(SimPlatform::Ios);
    let cert = cloudvpp_identity::pem::cert(d.spec.cert_pem.as_bytes()).unwrap();
    let rfc9440 = format!(
        ":{}:",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            cert.constructed_data()
        )
    );
    let send = |body: Vec<u8>, ct: &'static str, header: Option<String>| {
        let mut req = m
            .http
            .put(m.srv.url("/checkin"))
            .header("Content-Type", ct)
            .body(body);
        if let Some(h) = header {
            req = req.header("X-Client-Cert", h);
        }
        req.send()
    };
    let ct = cloudvpp_mdmwire::CHECKIN_CONTENT_TYPE;
    assert_eq!(
        send(d.authenticate_body(), ct, Some(rfc9440.clone()))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        send(d.authenticate_body(), ct, None)
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        send(d.authenticate_body(), ct, Some(":bm90IGEgY2VydA==:".into()))
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(m.enrollment(&d.spec.id).await.0, 404, "no TokenUpdate yet");
}

/// What the fake APNs received: (HTTP version, path, JSON body, headers).
type PushLog = Arc<Mutex<Vec<(String, String, Value, axum::http::HeaderMap)>>>;

/// A fake APNs: HTTP/2 over TLS that requires a client certificate from the push CA.
struct FakeApns {
    url: String,
    server_ca_pem: String,
    requests: PushLog,
    answers: Arc<Mutex<Vec<u16>>>,
}

async fn fake_apns(push_ca_pem: &str) -> FakeApns {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    let ca_der =
        x509_certificate::CapturedX509Certificate::from_pem(push_ca_pem.as_bytes()).unwrap();
    roots
        .add(rustls::pki_types::CertificateDer::from(
            ca_der.constructed_data().to_vec(),
        ))
        .unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(server.key_pair.serialize_der()).unwrap();
    let mut cfg = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![server.cert.der().clone()], key)
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let requests: PushLog = Arc::default();
    let answers: Arc<Mutex<Vec<u16>>> = Arc::default();
    let (rq, an) = (requests.clone(), answers.clone());
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let (rq, an) = (rq.clone(), an.clone());
        async move {
            let version = format!("{:?}", req.version());
            let path = req.uri().path().to_string();
            let headers = req.headers().clone();
            let body = axum::body::to_bytes(req.into_body(), 1 << 20)
                .await
                .unwrap();
            rq.lock().unwrap().push((
                version,
                path,
                serde_json::from_slice(&body).unwrap_or(Value::Null),
                headers,
            ));
            let code = {
                let mut a = an.lock().unwrap();
                if a.is_empty() {
                    200
                } else {
                    a.remove(0)
                }
            };
            let mut resp = axum::response::Response::new(axum::body::Body::from(if code == 200 {
                String::new()
            } else {
                r#"{"reason":"BadDeviceToken"}"#.to_string()
            }));
            *resp.status_mut() = axum::http::StatusCode::from_u16(code).unwrap();
            resp.headers_mut().insert(
                "apns-id",
                "11111111-2222-3333-4444-555555555555".parse().unwrap(),
            );
            resp
        }
    });
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(cfg));
    tokio::spawn(async move {
        axum_server::from_tcp_rustls(listener, tls)
            .serve(app.into_make_service())
            .await
            .unwrap()
    });
    FakeApns {
        url: format!("https://{addr}"),
        server_ca_pem: server.cert.pem(),
        requests,
        answers,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pushes_go_to_apns_over_http2_with_the_push_certificate() {
    // The push certificate comes from its own CA, which the fake APNs requires.
    let push_ca_key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let push_ca = p.self_signed(&push_ca_key).unwrap();
    let push_key = rcgen::KeyPair::generate().unwrap();
    let mut pp = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    pp.distinguished_name
        .push(rcgen::DnType::CommonName, "APSP:cloudvpp-test");
    let push_cert = pp.signed_by(&push_key, &push_ca, &push_ca_key).unwrap();
    let apns = fake_apns(&push_ca.pem()).await;

    let env_dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = env_dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let (cert, key, apns_ca) = (
        write("push.pem", &push_cert.pem()),
        write("push.key", &push_key.serialize_pem()),
        write("apns-ca.pem", &apns.server_ca_pem),
    );
    let m = Mdm::start(&[
        "--apns-url",
        &apns.url,
        "--push-cert",
        &cert,
        "--push-key",
        &key,
        "--apns-ca",
        &apns_ca,
    ]);
    let d = m.device(SimPlatform::Ios);
    d.enroll().await.unwrap();

    // Enqueue without nopush: the device is pushed.
    let body = json!({"enrollment_ids": [d.spec.id], "invitation_url": "https://vpp.example/i?inviteCode=2"});
    let (status, v) = m
        .api(
            reqwest::Method::POST,
            "/api/v1/invite-to-program",
            Some(body.to_string().into_bytes()),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        v["status"][&d.spec.id]["push_result"], "11111111-2222-3333-4444-555555555555",
        "{v}"
    );
    let reqs = apns.requests.lock().unwrap().clone();
    assert_eq!(reqs.len(), 1);
    let (version, path, body, headers) = &reqs[0];
    assert_eq!(version, "HTTP/2.0");
    let token_hex = path.strip_prefix("/3/device/").unwrap();
    assert_eq!(token_hex.len(), 64);
    assert!(token_hex.chars().all(|c| c.is_ascii_hexdigit()));
    assert!(body["mdm"].as_str().unwrap().starts_with("magic-"));
    assert_eq!(body.as_object().unwrap().len(), 1, "only the mdm key");
    assert_eq!(headers["apns-push-type"], "mdm");
    assert_eq!(headers["apns-topic"], cloudvpp_simulator::TOPIC);

    // A 503 is retried; a 400 is final.
    apns.answers.lock().unwrap().extend([503, 200]);
    let (_, v) = m
        .api(
            reqwest::Method::POST,
            &format!("/api/v1/push/{}", d.spec.id),
            None,
        )
        .await;
    assert!(v["status"][&d.spec.id]["push_result"].is_string(), "{v}");
    assert_eq!(apns.requests.lock().unwrap().len(), 3);
    apns.answers.lock().unwrap().push(400);
    let (_, v) = m
        .api(
            reqwest::Method::POST,
            &format!("/api/v1/push/{}", d.spec.id),
            None,
        )
        .await;
    assert!(
        v["status"][&d.spec.id]["push_error"]
            .as_str()
            .unwrap()
            .contains("BadDeviceToken"),
        "{v}"
    );
    assert_eq!(apns.requests.lock().unwrap().len(), 4);
    let (_, v) = m
        .api(reqwest::Method::POST, "/api/v1/push/nobody", None)
        .await;
    assert_eq!(v["status"]["nobody"]["push_error"], "unknown enrollment");
}

#[tokio::test(flavor = "multi_thread")]
async fn queued_commands_survive_kill_9() {
    let mut m = Mdm::start(&[]);
    let devices: Vec<SimDevice> = (0..3).map(|_| m.device(SimPlatform::Ios)).collect();
    for d in &devices {
        d.enroll().await.unwrap();
    }
    let ids: Vec<&str> = devices.iter().map(|d| d.spec.id.as_str()).collect();
    for i in 0..5 {
        m.enqueue(&ids, &format!("C{i}"), "DeviceInformation").await;
    }
    // One answer in flight before the crash.
    let first = devices[0]
        .report(false, devices[0].report_body(false, "Idle", None, &[]))
        .await
        .unwrap();
    assert_eq!(uuid_of(&first).as_deref(), Some("C0"));
    devices[0]
        .report(
            false,
            devices[0].report_body(false, "Acknowledged", Some("C0"), &[]),
        )
        .await
        .unwrap();
    m.srv.child.kill().unwrap(); // SIGKILL
    m.srv.child.wait().unwrap();
    m.restart(&[]);
    let fleet_base = m.srv.base.clone();
    for (n, d) in devices.into_iter().enumerate() {
        let d = SimDevice::new(d.spec, &pki().device_key_pem, &fleet_base, m.http.clone()).unwrap();
        let handled = d.poll(false).await.unwrap();
        let got: Vec<String> = handled.iter().map(|h| h.command_uuid.clone()).collect();
        let want: Vec<String> = (if n == 0 { 1 } else { 0 }..5)
            .map(|i| format!("C{i}"))
            .collect();
        assert_eq!(got, want, "device {n}");
    }
}

/// The README's CLI flow: pki, serve, enroll, invite, poll, commands, load.
#[tokio::test(flavor = "multi_thread")]
async fn cli_simulator_and_admin_client_work_together() {
    let env = Env::new();
    let dir = env.dir.path();
    let state = dir.join("sim.json");
    let ca = dir.join("ca.pem");
    let run = |args: &[&str], base: &str| {
        let out = std::process::Command::new(common::BIN)
            .args(args)
            .env("CLOUDVPP_MDM_URL", base)
            .env("CLOUDVPP_API_KEY", KEY)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    run(
        &[
            "simulate",
            "pki",
            "--state",
            state.to_str().unwrap(),
            "--ca-out",
            ca.to_str().unwrap(),
        ],
        "",
    );
    let srv = env.spawn(&[
        "mdm",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--api-key",
        KEY,
        "--ca",
        ca.to_str().unwrap(),
    ]);
    let s = state.to_str().unwrap();
    let ios = run(
        &[
            "simulate",
            "enroll",
            "--state",
            s,
            "--server",
            &srv.base,
            "--devices",
            "2",
        ],
        &srv.base,
    );
    let mac = run(
        &[
            "simulate",
            "enroll",
            "--state",
            s,
            "--server",
            &srv.base,
            "--platform",
            "macos",
        ],
        &srv.base,
    );
    let ios_ids: Vec<&str> = ios.lines().collect();
    let mac_user = mac.split_whitespace().nth(1).unwrap();
    assert_eq!(ios_ids.len(), 2);
    let url = "https://vpp.example/invite?inviteCode=abc&mt=8";
    let out: Value = serde_json::from_str(&run(
        &[
            "mdm",
            "invite",
            "--json",
            "--no-push",
            "--url",
            url,
            ios_ids[0],
            mac_user,
        ],
        &srv.base,
    ))
    .unwrap();
    let uuid = out["command_uuid"].as_str().unwrap();
    let polled = run(
        &[
            "simulate",
            "poll",
            "--state",
            s,
            "--server",
            &srv.base,
            "--not-now",
            "1",
        ],
        &srv.base,
    );
    assert_eq!(
        polled.lines().filter(|l| l.contains("NotNow")).count(),
        2,
        "{polled}"
    );
    let polled = run(
        &["simulate", "poll", "--state", s, "--server", &srv.base],
        &srv.base,
    );
    assert_eq!(
        polled
            .lines()
            .filter(|l| l.contains(&format!("InviteToProgram {uuid} Acknowledged {url}")))
            .count(),
        2,
        "{polled}"
    );
    let cmds: Value =
        serde_json::from_str(&run(&["mdm", "commands", "--json", mac_user], &srv.base)).unwrap();
    assert_eq!(cmds["commands"][0]["invitation_result"], "Acknowledged");
    assert_eq!(cmds["commands"][0]["not_now_count"], 1);
    // Without --json: a table, timestamps in RFC 3339.
    let table = run(&["mdm", "commands", mac_user], &srv.base);
    let row = table.lines().nth(1).unwrap_or_default();
    assert!(table.starts_with("CREATED"), "{table}");
    assert!(
        row.contains(uuid) && row.contains("InviteToProgram") && row.contains("Acknowledged"),
        "{table}"
    );
    let created = row.split_whitespace().next().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(created).is_ok(),
        "{row}"
    );
    let table = run(&["mdm", "enrollments"], &srv.base);
    assert!(
        table.starts_with("ID") && table.contains(ios_ids[0]) && table.contains(mac_user),
        "{table}"
    );
    let listed: Value =
        serde_json::from_str(&run(&["mdm", "enrollments", "--json"], &srv.base)).unwrap();
    assert!(
        listed["enrollments"].as_array().unwrap().len() >= 3,
        "{listed}"
    );
    let load = run(
        &[
            "simulate",
            "load",
            "--state",
            s,
            "--server",
            &srv.base,
            "--connections",
            "2",
            "--seconds",
            "1",
        ],
        &srv.base,
    );
    assert!(
        load.contains("check-ins in 1s") && load.contains(" 0 failed"),
        "{load}"
    );
}

/// A database that cannot be reached: devices get 503 with Retry-After within seconds and
/// no database text; the service recovers by itself.
#[tokio::test(flavor = "multi_thread")]
async fn unreachable_database_gets_503_and_the_mdm_recovers() {
    let m = Mdm::start(&[]);
    let Some(name) = m.env.postgres_name() else {
        eprintln!("not run: an unreachable database needs CLOUDVPP_TEST_POSTGRES_URL");
        return;
    };
    let d = m.device(SimPlatform::Ios);
    d.enroll().await.unwrap();
    let idle = d.report_body(false, "Idle", None, &[]);
    m.env
        .pg_admin(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"));
    m.env.pg_admin(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    ));
    // A new device's Authenticate must reach the database (the known one may be cached).
    let newcomer = m.device(SimPlatform::Ios);
    let started = std::time::Instant::now();
    let (status, text) = newcomer
        .send(
            "/checkin",
            cloudvpp_mdmwire::CHECKIN_CONTENT_TYPE,
            newcomer.authenticate_body(),
        )
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&text).to_lowercase();
    assert!(started.elapsed() < std::time::Duration::from_secs(6));
    assert_eq!(status, 503, "{text}");
    for leak in ["sql", "postgres", "pool", "connection", &name] {
        assert!(!text.contains(leak), "{leak:?} in {text}");
    }
    m.env
        .pg_admin(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        if newcomer.enroll().await.is_ok() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the MDM did not recover"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(d.report(false, idle).await.is_ok());
}
