//! End-to-end tests of the invitation engine: `cloudvpp serve` (both services, one SQLite
//! file) on 127.0.0.1, simulated devices and simulated people accepting invitations.

mod common;

use cloudvpp_simulator::{accept_invitation, Pki, SimDevice, SimPlatform};
use common::Env;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

const KEY: &str = "engine-test-key";

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| Pki::generate().unwrap())
}

struct System {
    env: Env,
    child: std::process::Child,
    ab: String,
    mdm: String,
    http: reqwest::Client,
    extra: Vec<String>,
}

impl Drop for System {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(
    env: &Env,
    extra: &[String],
    ports: Option<(&str, &str)>,
) -> (std::process::Child, String, String) {
    use std::io::BufRead;
    let ca = env.dir.path().join("ca.pem");
    std::fs::write(&ca, &pki().ca_cert_pem).unwrap();
    // Fast polling and syncs unless the test sets its own.
    let mut defaults = Vec::new();
    for (flag, value) in [("--status-poll-ms", "200"), ("--sync-interval-ms", "1000")] {
        if !extra.iter().any(|e| e == flag) {
            defaults.extend([flag, value]);
        }
    }
    let mut child = std::process::Command::new(common::BIN)
        .args(["serve", "--api-key", KEY])
        .args([
            "--appsbooks-listen",
            ports.map_or("127.0.0.1:0", |p| p.0),
            "--mdm-listen",
            ports.map_or("127.0.0.1:0", |p| p.1),
        ])
        .args([
            "--ca",
            ca.to_str().unwrap(),
            "--database",
            &env.db(),
            // After kill -9 the restarted process takes over the dead one's events soon.
            "--lease-ms",
            "3000",
        ])
        .args(defaults)
        .args(extra)
        .env("CLOUDVPP_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let (mut a, mut m) = (String::new(), String::new());
    out.read_line(&mut a).unwrap();
    out.read_line(&mut m).unwrap();
    let url = |l: &str| l.trim().rsplit(' ').next().unwrap().to_string();
    // Keep reading stdout so the process never blocks on a full pipe.
    std::thread::spawn(move || for _ in out.lines() {});
    (child, url(&a), url(&m))
}

impl System {
    fn start(extra: &[&str]) -> System {
        let env = Env::new();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (child, ab, mdm) = spawn(&env, &extra, None);
        System {
            env,
            child,
            ab,
            mdm,
            http: reqwest::Client::new(),
            extra,
        }
    }

    /// kill -9, then the same command again on the same ports.
    fn crash_and_restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let (ab, mdm) = (
            self.ab.trim_start_matches("http://").to_string(),
            self.mdm.trim_start_matches("http://").to_string(),
        );
        let (child, ab, mdm) = spawn(&self.env, &self.extra, Some((&ab, &mdm)));
        (self.child, self.ab, self.mdm) = (child, ab, mdm);
    }

    async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.mdm, path))
            .bearer_auth(KEY);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    /// An organisation at the Apps and Books service, added as the engine's location.
    async fn location(&self) -> String {
        let token = self.env.org("Acme Schools");
        let (status, v) = self
            .api(
                reqwest::Method::POST,
                "/api/v1/locations",
                Some(json!({"stoken": token, "base_url": format!("{}/mdm/v2", self.ab)})),
            )
            .await;
        assert_eq!(status, 201, "{v}");
        assert_eq!(v["notifications"]["subscribed"], true, "{v}");
        token
    }

    async fn devices(&self, n: usize, platform: SimPlatform) -> Vec<Arc<SimDevice>> {
        let key = Arc::new(cloudvpp_identity::pem::key(pki().device_key_pem.as_bytes()).unwrap());
        let specs = tokio::task::spawn_blocking(move || {
            (0..n)
                .map(|_| pki().new_device(platform).unwrap())
                .collect::<Vec<_>>()
        })
        .await
        .unwrap();
        let devices: Vec<Arc<SimDevice>> = specs
            .into_iter()
            .map(|s| {
                Arc::new(SimDevice::with_key(s, key.clone(), &self.mdm, self.http.clone()).unwrap())
            })
            .collect();
        for chunk in devices.chunks(32) {
            let joins: Vec<_> = chunk.iter().map(|d| d.enroll()).collect();
            for r in futures_util(joins).await {
                r.unwrap();
            }
        }
        devices
    }

    async fn invitations(&self) -> (HashMap<String, Value>, Value) {
        let (status, v) = self
            .api(
                reqwest::Method::GET,
                "/api/v1/invitations?limit=100000",
                None,
            )
            .await;
        assert_eq!(status, 200, "{v}");
        let by_person = v["invitations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| (i["client_user_id"].as_str().unwrap().to_string(), i.clone()))
            .collect();
        (by_person, v["counts"].clone())
    }

    async fn users_of(&self, token: &str, cuid: &str) -> Vec<Value> {
        loop {
            let r = self
                .http
                .get(format!("{}/mdm/v2/users?clientUserId={cuid}", self.ab))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            let v = r.json::<Value>().await.unwrap();
            match v["users"].as_array() {
                Some(u) => return u.clone(),
                // The rate limit is shared with the engine: wait it out like any client.
                None if v["errorNumber"] == 9646 => {
                    tokio::time::sleep(Duration::from_millis(300)).await
                }
                None => panic!("{v}"),
            }
        }
    }
}

async fn futures_util<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut out = Vec::new();
    let handles: Vec<_> = futs.into_iter().map(Box::pin).collect();
    for h in handles {
        out.push(h.await);
    }
    out
}

/// Devices check in (as after a push) and their people accept what they were shown.
async fn devices_and_people_act(sys: &System, devices: &[Arc<SimDevice>]) {
    let mut set = tokio::task::JoinSet::new();
    for d in devices.iter().cloned() {
        let http = sys.http.clone();
        set.spawn(async move {
            let mut handled = d.poll(false).await?;
            if d.spec.user.is_some() {
                handled.extend(d.poll(true).await?);
            }
            for h in handled.iter().filter(|h| h.status == "Acknowledged") {
                if let Some(url) = &h.invitation_url {
                    if d.behaviour.invitation_result == "Acknowledged" {
                        accept_invitation(
                            &http,
                            url,
                            &format!("{}@people.example", d.spec.id.to_lowercase()),
                        )
                        .await?;
                    }
                }
            }
            anyhow::Ok(())
        });
        if set.len() >= 32 {
            set.join_next().await.unwrap().unwrap().unwrap();
        }
    }
    while let Some(r) = set.join_next().await {
        r.unwrap().unwrap();
    }
}

async fn until<F: AsyncFnMut() -> bool>(what: &str, secs: u64, mut f: F) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_people_reach_associated_with_notifications_dropped() {
    let sys = System::start(&[
        "--drop-notifications-percent",
        "40",
        "--limit",
        "maxRequestPerSecond=1000",
    ]);
    let token = sys.location().await;
    let devices = sys.devices(1000, SimPlatform::Ios).await;
    let people: Vec<Value> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| json!({"client_user_id": format!("person-{i}"), "email": format!("person-{i}@example.com"), "enrollment_id": d.spec.id}))
        .collect();
    let (status, v) = sys
        .api(
            reqwest::Method::POST,
            "/api/v1/invitations",
            Some(json!({"invitations": people})),
        )
        .await;
    assert_eq!(status, 202, "{v}");
    // Asking again returns the same invitations, never new ones.
    let (_, again) = sys
        .api(
            reqwest::Method::POST,
            "/api/v1/invitations",
            Some(json!({"invitations": [people[0].clone()]})),
        )
        .await;
    assert_eq!(again["invitations"][0]["id"], v["invitations"][0]["id"]);

    until("every invitation queued", 120, async || {
        sys.invitations().await.1["queued"].as_i64() == Some(1000)
    })
    .await;
    devices_and_people_act(&sys, &devices).await;
    until("everyone associated", 120, async || {
        sys.invitations().await.1["associated"].as_i64() == Some(1000)
    })
    .await;

    let (all, _) = sys.invitations().await;
    assert_eq!(all.len(), 1000);
    for (person, inv) in &all {
        assert_eq!(inv["invitation_result"], "Acknowledged", "{person}");
        assert_eq!(inv["attempts"], 1, "{person}: delivered once");
    }
    // Nothing duplicated at Apps and Books: one record per person, Associated.
    for i in [0, 499, 999] {
        let users = sys.users_of(&token, &format!("person-{i}")).await;
        assert_eq!(users.len(), 1);
        assert_eq!(users[0]["status"], "Associated");
    }
}

/// One invitation reaches `queued` without waiting for a periodic tick, status poll or
/// sync: with all three a minute apart, the engine reacts to the request, to the end of the
/// registration event (its first, early status poll, or the USER_MANAGEMENT notification)
/// and syncs at once then. With notifications, and with every one of them dropped. The
/// bound is generous on purpose: it only says that nothing waited for a minute.
#[tokio::test(flavor = "multi_thread")]
async fn one_invitation_is_queued_without_waiting_for_a_tick_or_a_poll() {
    for dropped in ["0", "100"] {
        let sys = System::start(&[
            "--status-poll-ms",
            "60000",
            "--sync-interval-ms",
            "60000",
            "--engine-tick-ms",
            "60000",
            "--drop-notifications-percent",
            dropped,
        ]);
        sys.location().await;
        let devices = sys.devices(1, SimPlatform::Ios).await;
        let (status, v) = sys
            .api(
                reqwest::Method::POST,
                "/api/v1/invitations",
                Some(json!({"client_user_id": "alone", "email": "alone@example.com", "enrollment_id": devices[0].spec.id})),
            )
            .await;
        assert_eq!(status, 202, "{v}");
        until("the invitation queued", 20, async || {
            sys.invitations().await.1["queued"].as_i64() == Some(1)
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_notnow_and_reuse_end_in_the_right_state() {
    let sys = System::start(&[]);
    let token = sys.location().await;
    let devices = sys.devices(4, SimPlatform::Ios).await;
    let mac = sys.devices(1, SimPlatform::Macos).await;
    let byod = sys.devices(1, SimPlatform::UserEnrollment).await;
    // Someone registered before the engine knew them: reused, not duplicated.
    let ev = {
        let r = sys
            .http
            .post(format!("{}/mdm/v2/users/create", sys.ab))
            .bearer_auth(&token)
            .json(&json!({"users": [{"clientUserId": "known", "email": "known@example.com"}]}))
            .send()
            .await
            .unwrap();
        r.json::<Value>().await.unwrap()["eventId"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(ev.len(), 36);
    let people = json!({"invitations": [
        {"client_user_id": "bad-email", "email": "nobody@nowhere", "enrollment_id": devices[0].spec.id},
        {"client_user_id": "invalid-url", "email": "a@example.com", "enrollment_id": devices[1].spec.id},
        {"client_user_id": "busy", "email": "b@example.com", "enrollment_id": devices[2].spec.id},
        {"client_user_id": "known", "email": "known@example.com", "enrollment_id": devices[3].spec.id},
        {"client_user_id": "mac-user", "email": "m@example.com", "enrollment_id": mac[0].spec.id},
        {"client_user_id": "byod", "email": "u@example.com", "enrollment_id": byod[0].spec.id},
        {"client_user_id": "link-only", "email": "l@example.com"},
    ]});
    let (status, _) = sys
        .api(reqwest::Method::POST, "/api/v1/invitations", Some(people))
        .await;
    assert_eq!(status, 202);
    until("registrations settled", 60, async || {
        let (all, _) = sys.invitations().await;
        all.values().all(|i| i["state"] != "registering")
    })
    .await;
    let (all, _) = sys.invitations().await;
    assert_eq!(all["bad-email"]["state"], "failed");
    assert!(
        all["bad-email"]["reason"]
            .as_str()
            .unwrap()
            .contains("9717"),
        "{}",
        all["bad-email"]
    );
    assert_eq!(all["byod"]["state"], "failed");
    assert!(all["byod"]["reason"]
        .as_str()
        .unwrap()
        .contains("User Enrollment"));
    assert_eq!(all["link-only"]["state"], "registered");
    let link = all["link-only"]["invitation_url"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        link.starts_with(&format!("{}/invite?inviteCode=", sys.ab)),
        "{link}"
    );
    assert_eq!(
        all["mac-user"]["channel"],
        mac[0].spec.enrollment_ids()[1].as_str(),
        "the Mac's user channel"
    );
    assert_eq!(all["known"]["state"], "queued");
    assert_eq!(
        sys.users_of(&token, "known").await.len(),
        1,
        "the existing user was reused"
    );

    // One device answers InvalidInvitationURL; one says NotNow twice before showing it.
    let invalid = SimDevice::new(
        devices[1].spec.clone(),
        &pki().device_key_pem,
        &sys.mdm,
        sys.http.clone(),
    )
    .unwrap();
    let mut invalid = invalid;
    invalid.behaviour.invitation_result = "InvalidInvitationURL".into();
    let busy = SimDevice::new(
        devices[2].spec.clone(),
        &pki().device_key_pem,
        &sys.mdm,
        sys.http.clone(),
    )
    .unwrap();
    busy.behaviour
        .not_now
        .store(2, std::sync::atomic::Ordering::SeqCst);
    let (invalid, busy) = (Arc::new(invalid), Arc::new(busy));
    let actors = vec![invalid, busy.clone(), devices[3].clone(), mac[0].clone()];
    devices_and_people_act(&sys, &actors).await;
    until("InvalidInvitationURL recorded", 30, async || {
        sys.invitations().await.0["invalid-url"]["state"] == "failed"
    })
    .await;
    let (all, _) = sys.invitations().await;
    assert!(all["invalid-url"]["reason"]
        .as_str()
        .unwrap()
        .contains("InvalidInvitationURL"));
    assert_eq!(
        all["invalid-url"]["invitation_result"],
        "InvalidInvitationURL"
    );
    until("NotNow noted", 30, async || {
        sys.invitations().await.0["busy"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("NotNow"))
    })
    .await;
    assert_eq!(sys.invitations().await.0["busy"]["state"], "queued");
    devices_and_people_act(&sys, std::slice::from_ref(&busy)).await; // second NotNow
    devices_and_people_act(&sys, std::slice::from_ref(&busy)).await; // shown, accepted
                                                                     // The email-only person accepts from the link.
    accept_invitation(&sys.http, &link, "linda@example.com")
        .await
        .unwrap();
    until("associations", 60, async || {
        let (all, _) = sys.invitations().await;
        ["busy", "known", "mac-user", "link-only"]
            .iter()
            .all(|p| all[*p]["state"] == "associated")
    })
    .await;
    assert_eq!(sys.invitations().await.0["busy"]["attempts"], 1);

    // Resend after a failed device answer queues a new command; retire ends it.
    let id = all["invalid-url"]["id"].as_str().unwrap().to_string();
    let (status, v) = sys
        .api(
            reqwest::Method::POST,
            &format!("/api/v1/invitations/{id}/resend"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["state"].as_str(), v["attempts"].as_i64()),
        (Some("queued"), Some(2))
    );
    let (status, v) = sys
        .api(
            reqwest::Method::POST,
            &format!("/api/v1/invitations/{id}/retire"),
            None,
        )
        .await;
    assert_eq!((status, v["state"].as_str()), (200, Some("retired")));
    until("retired at Apps and Books", 30, async || {
        sys.users_of(&token, "invalid-url")
            .await
            .iter()
            .all(|u| u["status"] == "Retired")
    })
    .await;
    // Bad requests.
    let (status, _) = sys
        .api(
            reqwest::Method::POST,
            "/api/v1/invitations",
            Some(json!({"client_user_id": ""})),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = sys
        .api(
            reqwest::Method::POST,
            "/api/v1/invitations",
            Some(json!({"nonsense": true})),
        )
        .await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_storm_and_restart_lose_nothing() {
    let mut sys = System::start(&[]);
    let token = sys.location().await;
    let devices = sys.devices(30, SimPlatform::Ios).await;
    // The engine read maxRequestPerSecond=15; the service now allows 2, and another client
    // of the same organisation keeps using that budget for 4 seconds: a storm of 9646.
    sys.env
        .cli(&["appsbooks", "limits", "set", "maxRequestPerSecond=2"]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let hog = {
        let (http, url, token) = (
            sys.http.clone(),
            format!("{}/mdm/v2/users", sys.ab),
            token.clone(),
        );
        tokio::spawn(async move {
            let end = Instant::now() + Duration::from_secs(4);
            while Instant::now() < end {
                let _ = http.get(&url).bearer_auth(&token).send().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let people: Vec<Value> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| json!({"client_user_id": format!("p{i}"), "email": format!("p{i}@example.com"), "enrollment_id": d.spec.id}))
        .collect();
    let (status, _) = sys
        .api(
            reqwest::Method::POST,
            "/api/v1/invitations",
            Some(json!({"invitations": people})),
        )
        .await;
    assert_eq!(status, 202);
    hog.await.unwrap();
    let (_, locs) = sys
        .api(reqwest::Method::GET, "/api/v1/locations", None)
        .await;
    assert!(
        locs["locations"][0]["rate_limited_answers"]
            .as_u64()
            .unwrap()
            > 0,
        "there was a 9646 storm: {locs}"
    );
    // Crash in the middle, start again on the same database.
    sys.crash_and_restart();
    until(
        "all queued after the restart, still at 2 requests a second",
        120,
        async || sys.invitations().await.1["queued"].as_i64() == Some(30),
    )
    .await;
    sys.env
        .cli(&["appsbooks", "limits", "set", "maxRequestPerSecond=1000"]);
    let devices: Vec<Arc<SimDevice>> = devices
        .iter()
        .map(|d| {
            Arc::new(
                SimDevice::new(
                    d.spec.clone(),
                    &pki().device_key_pem,
                    &sys.mdm,
                    sys.http.clone(),
                )
                .unwrap(),
            )
        })
        .collect();
    devices_and_people_act(&sys, &devices).await;
    until("all associated", 90, async || {
        sys.invitations().await.1["associated"].as_i64() == Some(30)
    })
    .await;
    for i in 0..30 {
        let users = sys.users_of(&token, &format!("p{i}")).await;
        assert_eq!(users.len(), 1, "p{i} registered exactly once");
    }
    let (all, _) = sys.invitations().await;
    assert!(
        all.values().all(|i| i["attempts"] == 1),
        "each delivered once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn locations_warn_of_expiry_and_notifications_are_authenticated() {
    let sys = System::start(&[]);
    let soon = sys.env.cli(&[
        "appsbooks",
        "org",
        "create",
        "--name",
        "Soon",
        "--expires",
        &(chrono_like_in_days(10)),
    ]);
    let (status, v) = sys
        .api(
            reqwest::Method::POST,
            "/api/v1/locations",
            Some(json!({"stoken": soon.trim(), "base_url": format!("{}/mdm/v2", sys.ab)})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["expiry_warning"], true);
    let (status, v) = sys
        .api(
            reqwest::Method::POST,
            "/api/v1/locations",
            Some(json!({"stoken": "bm9wZQ==", "base_url": format!("{}/mdm/v2", sys.ab)})),
        )
        .await;
    assert_eq!(status, 400, "a refused token is not stored: {v}");
    let (_, list) = sys
        .api(reqwest::Method::GET, "/api/v1/locations", None)
        .await;
    assert_eq!(list["locations"].as_array().unwrap().len(), 1);
    assert!(
        !list.to_string().contains(soon.trim()),
        "the sToken is never shown"
    );
    // The notification endpoint wants the location's secret.
    let url = format!("{}/notifications/appsbooks/1", sys.mdm);
    let body = json!({"notification": {}, "notificationId": "n1", "notificationType": "TEST_NOTIFICATION", "uId": "x"});
    let r = sys
        .http
        .post(&url)
        .bearer_auth("wrong")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = sys.http.post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r = sys
        .http
        .post(format!("{}/notifications/appsbooks/99", sys.mdm))
        .bearer_auth("x")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// RFC 3339 for now + `days`, without a date crate in the tests.
fn chrono_like_in_days(days: i64) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + days * 86_400;
    let (d, s) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = d + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s % 3600 / 60,
        s % 60
    )
}

/// `cloudvpp serve` lets the Apps and Books service notify its own MDM's notification
/// endpoint (the location gets subscribed) and no other private address: not another local
/// listener, not the MDM's admin API, not the service itself.
#[tokio::test(flavor = "multi_thread")]
async fn serve_notifies_its_own_mdm_and_no_other_private_address() {
    let sys = System::start(&[]);
    let token = sys.location().await;
    let rx = common::Receiver::default();
    let running = rx.start().await;
    for url in [
        running.url.clone(),
        format!("{}/api/v1/enrollments", sys.mdm),
        format!(
            "{}/notifications/appsbooks/../../api/v1/enrollments",
            sys.mdm
        ),
        format!("{}/mdm/v2/service/config", sys.ab),
    ] {
        let r = sys
            .http
            .post(format!("{}/mdm/v2/client/config", sys.ab))
            .bearer_auth(&token)
            .json(&json!({"notificationUrl": url, "notificationAuthToken": KEY}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{url}");
        assert_eq!(
            r.json::<Value>().await.unwrap()["errorNumber"],
            9728,
            "{url}"
        );
    }
    assert_eq!(*rx.attempts.lock().unwrap(), 0);
}

/// The engine stores only the digest of a location's notification secret (it only compares
/// it) while the Apps and Books service keeps the secret it sends; one stored in plaintext
/// by an older version is digested at start-up and still accepted. The sToken the engine
/// presents to the Apps and Books service is kept as it must be, and stored there as a
/// digest.
#[tokio::test(flavor = "multi_thread")]
async fn notification_secrets_are_stored_as_digests_by_whoever_only_compares_them() {
    let mut sys = System::start(&[]);
    let token = sys.location().await;
    let cfg: Value = sys
        .http
        .get(format!("{}/mdm/v2/client/config", sys.ab))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = cfg["notificationAuthToken"].as_str().unwrap().to_string();
    let digest = cloudvpp_store::secret::digest(&secret);
    let stored = |col: &str, value: &str| {
        format!("SELECT COUNT(*) FROM engine_locations WHERE {col} = '{value}'")
    };
    assert_eq!(sys.env.sql_i64(&stored("notify_token", &digest)).await, 1);
    assert_eq!(sys.env.sql_i64(&stored("notify_token", &secret)).await, 0);
    assert_eq!(sys.env.sql_i64(&stored("stoken", &token)).await, 1);
    let url = format!("{}/notifications/appsbooks/1", sys.mdm);
    let body = json!({"notification": {}, "notificationId": "n-digest", "notificationType": "TEST_NOTIFICATION", "uId": cfg["uId"]});
    let send = |bearer: String| sys.http.post(&url).bearer_auth(bearer).json(&body).send();
    assert_eq!(send(secret.clone()).await.unwrap().status(), 200);
    assert_eq!(send(digest.clone()).await.unwrap().status(), 403);

    // As an older version stored it: plaintext.
    sys.env
        .sql(&format!(
            "UPDATE engine_locations SET notify_token = '{secret}'"
        ))
        .await;
    sys.crash_and_restart();
    assert_eq!(sys.env.sql_i64(&stored("notify_token", &digest)).await, 1);
    let send = |bearer: String| sys.http.post(&url).bearer_auth(bearer).json(&body).send();
    assert_eq!(send(secret).await.unwrap().status(), 200);
}

/// The admin API key (compared in constant time, over digests) is accepted whole, as a
/// bearer token or a Basic password, and nothing like it is.
#[tokio::test(flavor = "multi_thread")]
async fn admin_api_key_must_match_exactly() {
    use base64::Engine;
    let sys = System::start(&[]);
    let url = format!("{}/api/v1/locations", sys.mdm);
    let basic = |s: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(s)
        )
    };
    let with = |auth: String| sys.http.get(&url).header("authorization", auth).send();
    assert_eq!(with(format!("Bearer {KEY}")).await.unwrap().status(), 200);
    assert_eq!(
        with(basic(&format!("admin:{KEY}"))).await.unwrap().status(),
        200
    );
    for wrong in [
        format!("Bearer {}", &KEY[..KEY.len() - 1]),
        format!("Bearer {KEY}x"),
        format!("Bearer {}", KEY.to_uppercase()),
        "Bearer ".to_string(),
        basic("admin:nope"),
        basic(KEY),
        KEY.to_string(),
    ] {
        assert_eq!(with(wrong.clone()).await.unwrap().status(), 403, "{wrong}");
    }
}

/// A second MDM service with its engine, on the system's database.
fn spawn_second_mdm(sys: &System) -> common::Server {
    let ca = sys.env.dir.path().join("ca.pem");
    let extra = [
        "--status-poll-ms",
        "200",
        "--sync-interval-ms",
        "1000",
        "--engine-lease-ms",
        "3000",
    ];
    sys.env
        .spawn(&common::mdm_serve_args(KEY, ca.to_str().unwrap(), &extra))
}

/// Two MDM instances run engines on one database; the one working on the location is
/// killed in the middle of a batch. Each person is registered once and each device gets
/// one InviteToProgram, and everyone ends associated.
#[tokio::test(flavor = "multi_thread")]
async fn two_engines_on_one_database_register_and_deliver_each_invitation_once() {
    const N: usize = 40;
    // Apps and Books spends 50 ms a user: the registration is still PENDING when the kill comes.
    let mut sys = System::start(&["--processing-delay-ms", "50"]);
    let mut second = Some(spawn_second_mdm(&sys));
    let token = sys.location().await;
    let devices = sys.devices(N, SimPlatform::Ios).await;
    let people: Vec<Value> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| json!({"client_user_id": format!("p{i}"), "email": format!("p{i}@example.com"), "enrollment_id": d.spec.id}))
        .collect();
    // Accepted by the second instance: any instance takes invitations.
    let r = sys
        .http
        .post(second.as_ref().unwrap().url("/api/v1/invitations"))
        .bearer_auth(KEY)
        .json(&json!({"invitations": people}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    until("the registration is under way", 30, async || {
        sys.env
            .sql_i64("SELECT COUNT(*) FROM engine_invitations WHERE event_id IS NOT NULL")
            .await
            > 0
    })
    .await;
    // While both run, the lease stays with one of them (both engines claim every 200 ms),
    // and only the holder works on the location: Apps and Books has seen one registration
    // request, not two.
    let holder = async || {
        sys.env
            .sql_text("SELECT lease_owner FROM engine_locations")
            .await
    };
    let first_holder = holder().await;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(
            holder().await,
            first_holder,
            "the lease never changes hands while its holder lives"
        );
    }
    let creates = sys
        .env
        .sql_i64("SELECT COUNT(*) FROM events WHERE event_type = 'CREATE'")
        .await;
    assert_eq!(creates, 1, "one engine registers the batch");
    // Kill whichever instance holds the location.
    let holds = async |pid: u32| {
        sys.env
            .sql_i64(&format!(
                "SELECT COUNT(*) FROM engine_locations WHERE lease_owner LIKE 'engine-{pid}-%'"
            ))
            .await
            == 1
    };
    let first_pid = sys.child.id();
    let second_pid = second.as_ref().unwrap().child.id();
    let (a_holds, b_holds) = (holds(first_pid).await, holds(second_pid).await);
    assert!(a_holds ^ b_holds, "exactly one instance holds the location");
    if a_holds {
        // The first process also serves Apps and Books: it comes back on the same ports,
        // and races the second for the location once the dead lease runs out.
        sys.crash_and_restart();
    } else {
        second.take().unwrap().kill9();
    }
    until("all queued after the kill", 90, async || {
        sys.invitations().await.1["queued"].as_i64() == Some(N as i64)
    })
    .await;
    devices_and_people_act(&sys, &devices).await;
    until("all associated", 90, async || {
        sys.invitations().await.1["associated"].as_i64() == Some(N as i64)
    })
    .await;
    for i in 0..N {
        let users = sys.users_of(&token, &format!("p{i}")).await;
        assert_eq!(users.len(), 1, "p{i} registered exactly once");
    }
    let sent = sys
        .env
        .sql_i64(
            "SELECT COUNT(*) FROM mdm_queue q JOIN mdm_commands c ON c.command_uuid = q.command_uuid
             WHERE c.request_type = 'InviteToProgram'",
        )
        .await;
    assert_eq!(sent, N as i64, "one InviteToProgram per device");
    let (all, _) = sys.invitations().await;
    assert!(
        all.values().all(|i| i["attempts"] == 1),
        "each delivered once"
    );
    drop(second);
}
