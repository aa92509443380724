//! What operators see: the log (plain in a file, RUST_LOG, --log-format json, one line per
//! invitation state change, one line at shutdown) and `/metrics` on both services. The
//! real binary, with its log written to a file.

mod common;

use cloudvpp_simulator::{accept_invitation, Pki, SimDevice, SimPlatform};
use common::Env;
use serde_json::{json, Value};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEY: &str = "operators-test-key";

/// A running `cloudvpp` whose stderr goes to `log`.
struct Proc {
    child: Option<Child>,
    bases: Vec<String>,
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Proc {
    /// Starts `cloudvpp ARGS --database DB` with `envs` (and no inherited log settings),
    /// its log in `log`; waits for the `lines` "listening on" lines.
    fn start(env: &Env, args: &[&str], envs: &[(&str, &str)], log: &Path, lines: usize) -> Proc {
        let mut cmd = Command::new(common::BIN);
        cmd.args(args)
            .args(["--database", &env.db()])
            .env_remove("CLOUDVPP_LOG")
            .env_remove("RUST_LOG")
            .env_remove("CLOUDVPP_LOG_FORMAT")
            .env_remove("NO_COLOR")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(log).unwrap()));
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut bases = Vec::new();
        for _ in 0..lines {
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            let base = line.trim().rsplit(' ').next().unwrap().to_string();
            assert!(
                base.starts_with("http"),
                "unexpected line {line:?}; log: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            bases.push(base);
        }
        std::thread::spawn(move || for _ in out.lines() {});
        Proc {
            child: Some(child),
            bases,
            log: log.to_path_buf(),
        }
    }

    /// SIGTERM (once the server answers, so that its signal handler is in place), then
    /// waits for the exit; returns the log.
    fn terminate(&mut self) -> String {
        for base in &self.bases {
            healthz(base);
        }
        let mut child = self.child.take().unwrap();
        let ok = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "exit {status}");
                break;
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
        self.read_log()
    }

    fn read_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }
}

/// Waits until `base` answers `GET /healthz` (blocking).
fn healthz(base: &str) {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut answer = String::new();
        if let Ok(mut c) = std::net::TcpStream::connect(addr) {
            let _ = c.write_all(b"GET /healthz HTTP/1.0\r\n\r\n");
            let _ = c.read_to_string(&mut answer);
        }
        if answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200") {
            return;
        }
        assert!(Instant::now() < deadline, "{base}/healthz: {answer:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn appsbooks(env: &Env, envs: &[(&str, &str)], extra: &[&str], log: &Path) -> Proc {
    let mut args = vec!["appsbooks", "serve", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    Proc::start(env, &args, envs, log, 1)
}

fn pki() -> &'static Pki {
    static PKI: std::sync::OnceLock<Pki> = std::sync::OnceLock::new();
    PKI.get_or_init(|| Pki::generate().unwrap())
}

/// `cloudvpp serve` (both services), its log in JSON.
fn serve(env: &Env, extra: &[&str], log: &Path) -> Proc {
    let ca = env.dir.path().join("ca.pem");
    std::fs::write(&ca, &pki().ca_cert_pem).unwrap();
    let mut args = vec![
        "serve",
        "--api-key",
        KEY,
        "--appsbooks-listen",
        "127.0.0.1:0",
        "--mdm-listen",
        "127.0.0.1:0",
        "--ca",
        ca.to_str().unwrap(),
        "--status-poll-ms",
        "200",
        "--sync-interval-ms",
        "1000",
        "--log-format",
        "json",
    ];
    args.extend_from_slice(extra);
    Proc::start(env, &args, &[], log, 2)
}

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The value of the series `name{labels}` whose labels include every one of `labels`, summed
/// over the others; None when no such series is exposed.
fn series(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, rest) = key.split_once('{').unwrap_or((key, ""));
        if metric != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        {
            *found.get_or_insert(0.0) += value.parse::<f64>().unwrap();
        }
    }
    found
}

async fn until<F: AsyncFnMut() -> bool>(what: &str, secs: u64, mut f: F) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_log_file_is_plain_text_filtered_by_rust_log_and_ends_with_the_shutdown_line() {
    let env = Env::new();
    let log = env.dir.path().join("info.log");
    let mut p = appsbooks(&env, &[], &[], &log);
    assert_eq!(get(&format!("{}/healthz", p.bases[0])).await.0, 200);
    let text = p.terminate();
    assert!(!text.contains('\u{1b}'), "ANSI escape in a file: {text:?}");
    assert!(
        text.lines()
            .any(|l| l.contains(" INFO ") && l.contains("appsbooks service started")),
        "{text}"
    );
    let last = text.lines().last().unwrap_or_default();
    assert!(
        last.contains("stopped")
            && last.contains("services=\"appsbooks\"")
            && last.contains("elapsed_ms=")
            && last.contains("shutdown requested"),
        "{text}"
    );
    assert!(
        last.contains("appsbooks-worker") || last.contains("tasks="),
        "{last}"
    );

    // RUST_LOG=warn: no INFO line at all (the default would have several).
    let log = env.dir.path().join("warn.log");
    let mut p = appsbooks(&env, &[("RUST_LOG", "warn")], &[], &log);
    assert_eq!(get(&format!("{}/healthz", p.bases[0])).await.0, 200);
    let text = p.terminate();
    assert!(!text.contains(" INFO "), "{text}");
    assert!(!text.contains("appsbooks service started"), "{text}");

    // CLOUDVPP_LOG stays an alias, and wins over RUST_LOG.
    let log = env.dir.path().join("alias.log");
    let mut p = appsbooks(
        &env,
        &[("RUST_LOG", "warn"), ("CLOUDVPP_LOG", "info")],
        &[],
        &log,
    );
    let text = p.terminate();
    assert!(text.contains("appsbooks service started"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn json_log_lines_parse_with_level_target_and_fields() {
    let env = Env::new();
    for (how, envs, extra) in [
        ("flag", vec![], vec!["--log-format", "json"]),
        ("env", vec![("CLOUDVPP_LOG_FORMAT", "json")], vec![]),
    ] {
        let log = env.dir.path().join(format!("{how}.log"));
        let mut p = appsbooks(&env, &envs, &extra, &log);
        let text = p.terminate();
        assert!(!text.contains('\u{1b}'), "{text:?}");
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{how}: {l:?}: {e}")))
            .collect();
        assert!(lines.len() >= 2, "{how}: {text}");
        for l in &lines {
            assert!(l["level"].is_string(), "{l}");
            assert!(l["target"].is_string(), "{l}");
            assert!(l["fields"]["message"].is_string(), "{l}");
        }
        let started = lines
            .iter()
            .find(|l| l["fields"]["message"] == "appsbooks service started")
            .unwrap_or_else(|| panic!("{how}: {text}"));
        assert_eq!(started["level"], "INFO");
        assert!(started["fields"]["base"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:"));
        let stopped = lines.last().unwrap();
        assert_eq!(stopped["fields"]["message"], "stopped", "{how}: {text}");
        assert_eq!(stopped["fields"]["services"], "appsbooks");
        assert!(stopped["fields"]["elapsed_ms"].is_u64(), "{stopped}");
    }
}

/// The JSON log lines of invitation state changes, as (person, from, to, level).
fn changes(text: &str) -> Vec<(String, String, String, String)> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["fields"]["message"] == "invitation state changed")
        .map(|l| {
            let f = &l["fields"];
            assert!(
                f["invitation"].is_string() && f["reason"].is_string(),
                "{l}"
            );
            let s = |v: &Value| v.as_str().unwrap().to_string();
            (s(&f["person"]), s(&f["from"]), s(&f["to"]), s(&l["level"]))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn invitation_changes_are_logged_and_both_services_expose_metrics() {
    let env = Env::new();
    let log = env.dir.path().join("serve.log");
    let mut p = serve(&env, &[], &log);
    let (ab, mdm) = (p.bases[0].clone(), p.bases[1].clone());
    let http = reqwest::Client::new();
    let api = async |method: reqwest::Method, path: &str, body: Value| {
        let r = http
            .request(method, format!("{mdm}{path}"))
            .bearer_auth(KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json::<Value>().await.unwrap_or(Value::Null))
    };
    let token = env.org("Acme Schools");
    let (s, v) = api(
        reqwest::Method::POST,
        "/api/v1/locations",
        json!({"stoken": token, "base_url": format!("{ab}/mdm/v2")}),
    )
    .await;
    assert_eq!(s, 201, "{v}");

    // One device, enrolled (Authenticate, TokenUpdate), and one person with an email only.
    let key = Arc::new(cloudvpp_identity::pem::key(pki().device_key_pem.as_bytes()).unwrap());
    let spec = tokio::task::spawn_blocking(|| pki().new_device(SimPlatform::Ios).unwrap())
        .await
        .unwrap();
    let device = SimDevice::with_key(spec, key, &mdm, http.clone()).unwrap();
    device.enroll().await.unwrap();
    let (s, v) = api(
        reqwest::Method::POST,
        "/api/v1/invitations",
        json!({"invitations": [
            {"client_user_id": "dev-person", "email": "dev@example.com", "enrollment_id": device.spec.id},
            {"client_user_id": "mail-person", "email": "mail@example.com"},
        ]}),
    )
    .await;
    assert_eq!(s, 202, "{v}");
    let invitations = async || {
        let (_, v) = api(reqwest::Method::GET, "/api/v1/invitations", Value::Null).await;
        v["invitations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| (i["client_user_id"].as_str().unwrap().to_string(), i.clone()))
            .collect::<std::collections::HashMap<_, _>>()
    };
    until(
        "the device's invitation queued and the link ready",
        60,
        async || {
            let all = invitations().await;
            all["dev-person"]["state"] == "queued" && all["mail-person"]["state"] == "registered"
        },
    )
    .await;
    // The device answers; both people accept.
    for h in device.poll(false).await.unwrap() {
        if let Some(url) = &h.invitation_url {
            accept_invitation(&http, url, "dev@people.example")
                .await
                .unwrap();
        }
    }
    let link = invitations().await["mail-person"]["invitation_url"]
        .as_str()
        .unwrap()
        .to_string();
    accept_invitation(&http, &link, "mail@people.example")
        .await
        .unwrap();
    until("both associated", 60, async || {
        let all = invitations().await;
        all.values().all(|i| i["state"] == "associated")
    })
    .await;

    // A refused one: an unknown enrollment fails, at WARN.
    let (s, v) = api(
        reqwest::Method::POST,
        "/api/v1/invitations",
        json!({"invitations": [{"client_user_id": "gone-person", "email": "gone@example.com", "enrollment_id": "NO-SUCH-DEVICE"}]}),
    )
    .await;
    assert!(s == 202 || s == 400 || s == 422, "{s} {v}");
    let failed_created = s == 202;
    if failed_created {
        until("the unknown device's invitation failed", 60, async || {
            invitations().await["gone-person"]["state"] == "failed"
        })
        .await;
    }

    // The log: one line per change, in order, for each person.
    let text = p.read_log();
    let all = changes(&text);
    let path = |who: &str| -> Vec<(String, String)> {
        all.iter()
            .filter(|c| c.0 == who)
            .map(|c| (c.1.clone(), c.2.clone()))
            .collect()
    };
    // Each person's lines chain (each from is the previous to), from creation to the end;
    // a round may see the device's answer and the acceptance at once (queued → associated).
    let chained = |who: &str, must: &[(&str, &str)]| {
        let p = path(who);
        assert_eq!(
            p.first().map(|c| c.0.as_str()),
            Some("new"),
            "{who}: {text}"
        );
        assert_eq!(
            p.last().map(|c| c.1.as_str()),
            Some("associated"),
            "{who}: {text}"
        );
        for w in p.windows(2) {
            assert_eq!(w[0].1, w[1].0, "{who}: {p:?}");
        }
        for (from, to) in must {
            assert!(
                p.iter().any(|c| c.0 == *from && c.1 == *to),
                "{who}: no {from} → {to} in {p:?}"
            );
        }
    };
    chained(
        "dev-person",
        &[
            ("new", "registering"),
            ("registering", "registered"),
            ("registered", "queued"),
        ],
    );
    chained(
        "mail-person",
        &[("new", "registering"), ("registering", "registered")],
    );
    for c in &all {
        let want = if c.2 == "failed" { "WARN" } else { "INFO" };
        assert_eq!(c.3, want, "{c:?}");
    }
    if failed_created {
        assert!(
            all.iter().any(|c| c.0 == "gone-person" && c.2 == "failed"),
            "{text}"
        );
    }

    // /metrics on both services, in Prometheus' text format, with the traffic above.
    for base in [&ab, &mdm] {
        let r = http.get(format!("{base}/metrics")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    }
    let (_, m) = get(&format!("{mdm}/metrics")).await;
    let has = |name: &str, labels: &[(&str, &str)]| {
        series(&m, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?} in\n{m}"))
    };
    assert!(
        has(
            "cloudvpp_mdm_checkins_total",
            &[("message_type", "Authenticate")]
        ) >= 1.0
    );
    assert!(
        has(
            "cloudvpp_mdm_checkins_total",
            &[("message_type", "TokenUpdate")]
        ) >= 1.0
    );
    assert!(has("cloudvpp_mdm_reports_total", &[("status", "Acknowledged")]) >= 1.0);
    assert_eq!(has("cloudvpp_invitations", &[("state", "associated")]), 2.0);
    assert_eq!(
        has("cloudvpp_invitations", &[("state", "registering")]),
        0.0
    );
    assert_eq!(has("cloudvpp_mdm_queue_depth", &[]), 0.0);
    assert!(
        has(
            "cloudvpp_invitation_transitions_total",
            &[("from", "registered"), ("to", "queued")]
        ) >= 1.0
    );
    // Requests by route template (not the raw URI) and status, with latency.
    assert!(
        has(
            "cloudvpp_http_requests_total",
            &[
                ("service", "mdm"),
                ("method", "POST"),
                ("route", "/api/v1/invitations"),
                ("status", "202")
            ]
        ) >= 1.0
    );
    assert!(
        has(
            "cloudvpp_http_requests_total",
            &[("service", "appsbooks"), ("route", "/mdm/v2/users/create")]
        ) >= 1.0
    );
    assert!(!m.contains("NO-SUCH-DEVICE") && !m.contains(&token));
    assert!(
        has(
            "cloudvpp_http_request_duration_seconds_count",
            &[("service", "mdm"), ("route", "/api/v1/invitations")]
        ) >= 1.0
    );
    assert!(m.contains("cloudvpp_http_request_duration_seconds_bucket{"));
    // The engine's Apps and Books client, and the Apps and Books side of the same process.
    assert!(
        has(
            "cloudvpp_abclient_calls_total",
            &[("endpoint", "/users/create"), ("result", "ok")]
        ) >= 1.0
    );
    assert!(
        has(
            "cloudvpp_appsbooks_events_finished_total",
            &[("type", "CREATE"), ("state", "COMPLETE")]
        ) >= 1.0
    );
    assert!(
        has(
            "cloudvpp_appsbooks_notifications_total",
            &[("result", "delivered")]
        ) >= 1.0
    );
    let (_, a) = get(&format!("{ab}/metrics")).await;
    for name in [
        "cloudvpp_appsbooks_events_pending",
        "cloudvpp_appsbooks_oldest_pending_event_age_seconds",
        "cloudvpp_appsbooks_outbox_backlog",
    ] {
        let v = series(&a, name, &[]).unwrap_or_else(|| panic!("no {name} in\n{a}"));
        assert!(v >= 0.0, "{name} {v}");
    }

    let text = p.terminate();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["fields"]["message"], "stopped", "{text}");
    assert_eq!(last["fields"]["services"], "appsbooks,mdm");
    let tasks = last["fields"]["tasks"].as_str().unwrap();
    assert!(tasks.contains("engine"), "{tasks}");
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_9646_to_the_engine_are_counted() {
    let env = Env::new();
    let log = env.dir.path().join("serve.log");
    // One request a second for the organisation, shared by the engine and this test.
    let p = serve(&env, &["--limit", "maxRequestPerSecond=1"], &log);
    let (ab, mdm) = (p.bases[0].clone(), p.bases[1].clone());
    let http = reqwest::Client::new();
    let token = env.org("Busy School");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hammer = {
        let (http, token, ab, stop) = (http.clone(), token.clone(), ab.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = http
                    .get(format!("{ab}/mdm/v2/users"))
                    .bearer_auth(&token)
                    .send()
                    .await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // The engine imports the location's users (and keeps syncing) while the budget is spent.
    let r = http
        .post(format!("{mdm}/api/v1/locations"))
        .bearer_auth(KEY)
        .json(&json!({"stoken": token, "base_url": format!("{ab}/mdm/v2")}))
        .send()
        .await
        .unwrap();
    let _ = r.status();
    let mut text = String::new();
    until("a 9646 counted", 60, async || {
        text = get(&format!("{mdm}/metrics")).await.1;
        series(&text, "cloudvpp_abclient_rate_limited_total", &[]).unwrap_or(0.0) >= 1.0
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    hammer.await.unwrap();
    assert!(
        series(&text, "cloudvpp_abclient_retries_total", &[]).unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    // The service side saw the refusals it answered: status 429 on the users route.
    assert!(
        series(
            &text,
            "cloudvpp_http_requests_total",
            &[
                ("service", "appsbooks"),
                ("route", "/mdm/v2/users"),
                ("status", "429")
            ]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{text}"
    );
}
