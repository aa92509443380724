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

// ---- Operator commands against a running `cloudvpp serve` (issue 12) ----

/// A command's exit code and what it printed.
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `cloudvpp ARGS` as an operator would, against the MDM at `mdm` with the admin key
/// in the environment; stdout and stderr are pipes (not terminals).
fn run_cli(mdm: &str, args: &[&str]) -> Ran {
    let out = Command::new(common::BIN)
        .args(args)
        .env("CLOUDVPP_MDM_URL", mdm)
        .env("CLOUDVPP_API_KEY", KEY)
        .env_remove("CLOUDVPP_DATABASE")
        .output()
        .unwrap();
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// `cloudvpp serve` with a location (added through the CLI) and a client of its admin API.
struct Ops {
    env: Env,
    /// Kept to the end of the test: dropping it stops the server.
    _p: Proc,
    ab: String,
    mdm: String,
    http: reqwest::Client,
    token: String,
}

impl Ops {
    async fn start(extra: &[&str]) -> Ops {
        let env = Env::new();
        let log = env.dir.path().join("serve.log");
        let p = serve(&env, extra, &log);
        let (ab, mdm) = (p.bases[0].clone(), p.bases[1].clone());
        let token = env.org("Acme Schools");
        let ops = Ops {
            env,
            _p: p,
            ab,
            mdm,
            http: reqwest::Client::new(),
            token,
        };
        let r = ops.add_location(&ops.token);
        assert_eq!(r.code, 0, "{}", r.stderr);
        ops
    }

    /// `cloudvpp mdm location add` with `token` in a file.
    fn add_location(&self, token: &str) -> Ran {
        let file = self
            .env
            .dir
            .path()
            .join(format!("{}.vpptoken", uuid::Uuid::new_v4()));
        std::fs::write(&file, token).unwrap();
        run_cli(
            &self.mdm,
            &[
                "mdm",
                "location",
                "add",
                "--json",
                "--stoken-file",
                file.to_str().unwrap(),
                "--appsbooks-url",
                &format!("{}/mdm/v2", self.ab),
            ],
        )
    }

    fn cli(&self, args: &[&str]) -> Ran {
        run_cli(&self.mdm, args)
    }

    async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.mdm))
            .bearer_auth(KEY);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    /// Every invitation, by person.
    async fn invitations(&self) -> std::collections::HashMap<String, Value> {
        let (s, v) = self
            .api(
                reqwest::Method::GET,
                "/api/v1/invitations?limit=100000",
                None,
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v["invitations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| (i["client_user_id"].as_str().unwrap().to_string(), i.clone()))
            .collect()
    }

    async fn count(&self) -> usize {
        self.invitations().await.len()
    }

    /// Enrolled simulated devices.
    async fn devices(&self, n: usize, platform: SimPlatform) -> Vec<SimDevice> {
        let key = Arc::new(cloudvpp_identity::pem::key(pki().device_key_pem.as_bytes()).unwrap());
        let specs = tokio::task::spawn_blocking(move || {
            (0..n)
                .map(|_| pki().new_device(platform).unwrap())
                .collect::<Vec<_>>()
        })
        .await
        .unwrap();
        let mut out = Vec::new();
        for s in specs {
            let d = SimDevice::with_key(s, key.clone(), &self.mdm, self.http.clone()).unwrap();
            d.enroll().await.unwrap();
            out.push(d);
        }
        out
    }

    fn write(&self, name: &str, content: &[u8]) -> String {
        let path = self.env.dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path.to_str().unwrap().to_string()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn location_add_is_idempotent_per_organisation_and_takes_a_renewed_token() {
    let ops = Ops::start(&[]).await;
    let locations = async || {
        let (s, v) = ops
            .api(reqwest::Method::GET, "/api/v1/locations", None)
            .await;
        assert_eq!(s, 200);
        v["locations"].as_array().unwrap().clone()
    };
    assert_eq!(locations().await.len(), 1);
    let first = locations().await[0]["id"].clone();

    // The same sToken again: the location there is reported, nothing is added.
    let again = ops.add_location(&ops.token);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(
        again.stderr.contains("was there already with this sToken"),
        "{}",
        again.stderr
    );
    let shown: Value = serde_json::from_str(&again.stdout).unwrap();
    assert_eq!(shown["id"], first);
    assert_eq!(shown["existing"], true);
    assert_eq!(locations().await.len(), 1);

    // A renewed sToken of the same organisation replaces the old one (which now answers
    // 9625), and the engine works with the new one.
    let renewed = ops
        .env
        .cli(&["appsbooks", "org", "renew", "--org", "Acme Schools"])
        .trim()
        .to_string();
    assert_ne!(renewed, ops.token);
    let r = ops.add_location(&renewed);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("its sToken is replaced"), "{}", r.stderr);
    let shown: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        (&shown["id"], &shown["token_replaced"]),
        (&first, &json!(true))
    );
    assert_eq!(shown["notifications"]["subscribed"], true, "{shown}");
    assert_eq!(locations().await.len(), 1);
    let r = ops.cli(&[
        "invite",
        "--client-user-id",
        "after-renewal",
        "--email",
        "after@example.com",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    until("registered with the renewed token", 60, async || {
        ops.invitations().await["after-renewal"]["state"] == "registered"
    })
    .await;
    // The old token again: it is refused by the service, and nothing changes.
    let old = ops.add_location(&ops.token);
    assert_eq!(old.code, 1);
    assert!(old.stderr.contains("refused the token"), "{}", old.stderr);
    assert_eq!(locations().await.len(), 1);

    // Another organisation added by three operators at once: one location.
    let other = ops.env.org("Other School");
    let runs: Vec<_> = (0..3)
        .map(|_| {
            let (mdm, ab, dir, token) = (
                ops.mdm.clone(),
                ops.ab.clone(),
                ops.env.dir.path().to_path_buf(),
                other.clone(),
            );
            std::thread::spawn(move || {
                let file = dir.join(format!("{}.vpptoken", uuid::Uuid::new_v4()));
                std::fs::write(&file, token).unwrap();
                run_cli(
                    &mdm,
                    &[
                        "mdm",
                        "location",
                        "add",
                        "--json",
                        "--stoken-file",
                        file.to_str().unwrap(),
                        "--appsbooks-url",
                        &format!("{ab}/mdm/v2"),
                    ],
                )
            })
        })
        .collect();
    let ids: std::collections::HashSet<String> = runs
        .into_iter()
        .map(|t| {
            let r = t.join().unwrap();
            assert_eq!(r.code, 0, "{}", r.stderr);
            serde_json::from_str::<Value>(&r.stdout).unwrap()["id"].to_string()
        })
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(locations().await.len(), 2);

    // Without --json: one line for an add, a table for the list (RFC 3339 times).
    let file = ops.env.dir.path().join("other.vpptoken");
    std::fs::write(&file, &other).unwrap();
    let ab = format!("{}/mdm/v2", ops.ab);
    let r = ops.cli(&[
        "mdm",
        "location",
        "add",
        "--stoken-file",
        file.to_str().unwrap(),
        "--appsbooks-url",
        &ab,
    ]);
    assert!(
        r.stdout.starts_with("location ") && r.stdout.contains("already there"),
        "{}",
        r.stdout
    );
    let r = ops.cli(&["mdm", "location", "list"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.starts_with("ID") && r.stdout.contains("TOKEN EXPIRES"),
        "{}",
        r.stdout
    );
    let row = r
        .stdout
        .lines()
        .find(|l| l.ends_with("Other School"))
        .expect("a row");
    let expires = row.split_whitespace().nth(2).unwrap().trim_end_matches('!');
    assert!(
        chrono::DateTime::parse_from_rfc3339(expires).is_ok(),
        "{row}"
    );
    let r = ops.cli(&["mdm", "location", "list", "--json"]);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["locations"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn csv_invitations_are_checked_whole_and_invite_each_person_once() {
    let ops = Ops::start(&[]).await;
    let devices = ops.devices(4, SimPlatform::Ios).await;
    let d = |i: usize| devices[i].spec.id.clone();
    // A spreadsheet's export: a BOM, CRLF line ends, quoted fields; three good rows and
    // one of each mistake.
    let file = format!(
        "\u{feff}client_user_id,email,enrollment_id\r\n\
         p1,p1@example.com,{}\r\n\
         p2,not-an-email,{}\r\n\
         p3,p3@example.com,NO-SUCH-DEVICE\r\n\
         \"p4\",\"p4@example.com\",{}\r\n\
         p1,p1@example.com,{}\r\n\
         ,nobody@example.com,\r\n\
         p5,p5@example.com,\r\n",
        d(0),
        d(1),
        d(2),
        d(0)
    );
    let csv = ops.write("people.csv", file.as_bytes());

    // --strict: one bad row refuses the whole file; nobody is invited.
    let r = ops.cli(&["invite", "--csv", &csv, "--strict"]);
    assert_eq!(r.code, 4, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("nobody invited"), "{}", r.stderr);
    for line in [
        "line 3: rejected (p2): invalid email \"not-an-email\"",
        "line 4: rejected (p3): unknown enrollment NO-SUCH-DEVICE",
        "line 6: rejected (p1): repeats line 2",
        "line 7: rejected: no client_user_id",
    ] {
        assert!(r.stdout.contains(line), "no {line:?} in\n{}", r.stdout);
    }
    assert_eq!(ops.count().await, 0, "--strict invited somebody");

    // An unknown column refuses the file whatever the flags.
    let typo = ops.write(
        "typo.csv",
        format!(
            "client_user_id,email,enrolment_id\np1,p1@example.com,{}\n",
            d(0)
        )
        .as_bytes(),
    );
    let r = ops.cli(&["invite", "--csv", &typo]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("unknown column \"enrolment_id\""),
        "{}",
        r.stderr
    );
    assert_eq!(ops.count().await, 0);

    // Without --strict: the good rows are invited, the others listed; exit status 4.
    let r = ops.cli(&["invite", "--csv", &csv]);
    assert_eq!(r.code, 4, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("3 invited, 0 already in progress, 0 skipped, 4 rejected"),
        "{}",
        r.stdout
    );
    assert!(r
        .stdout
        .contains("line 4: rejected (p3): unknown enrollment"));
    let all = ops.invitations().await;
    let mut people: Vec<&str> = all.keys().map(String::as_str).collect();
    people.sort();
    assert_eq!(people, ["p1", "p4", "p5"]);
    assert_eq!(all["p4"]["enrollment_id"], d(2).as_str());
    assert_eq!(all["p5"]["enrollment_id"], Value::Null);

    // The same file again invites nobody: each person is reported, with the reason.
    let r = ops.cli(&["invite", "--csv", &csv]);
    assert_eq!(r.code, 4, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("0 invited, 3 already in progress, 0 skipped, 4 rejected"),
        "{}",
        r.stdout
    );
    let p1 = all["p1"]["id"].as_str().unwrap();
    let skipped = r
        .stdout
        .lines()
        .find(|l| l.starts_with("line 2: skipped p1: already invited, "))
        .unwrap_or_else(|| panic!("{}", r.stdout));
    assert!(
        skipped.ends_with(&format!("(invitation {p1})")),
        "{skipped}"
    );
    assert_eq!(ops.count().await, 3);
    // The same again with --json: one document, a row per line with its outcome.
    let r = ops.cli(&["invite", "--csv", &csv, "--json"]);
    assert_eq!(r.code, 4, "{}{}", r.stdout, r.stderr);
    let doc: Value =
        serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout));
    assert_eq!(
        doc["summary"],
        json!({"invited": 0, "in_progress": 3, "skipped": 0, "rejected": 4})
    );
    let first = &doc["results"][0];
    assert_eq!(
        (
            first["line"].as_u64(),
            first["client_user_id"].as_str(),
            first["outcome"].as_str()
        ),
        (Some(2), Some("p1"), Some("in_progress"))
    );
    assert_eq!(first["invitation"]["id"], p1);
    assert!(doc["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["line"].as_u64() > Some(1) && r["reason"].is_string()));
    assert_eq!(ops.count().await, 3);

    // A person retired on purpose is not invited again silently...
    let p5 = all["p5"]["id"].as_str().unwrap().to_string();
    until("p5 registered", 60, async || {
        ops.invitations().await["p5"]["state"] == "registered"
    })
    .await;
    let r = ops.cli(&["invitations", "retire", &p5, "--json"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let doc: Value =
        serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout));
    assert_eq!(
        (doc["done"].as_u64(), doc["refused"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(doc["results"][0]["invitation"]["state"], "retired");
    let updated = doc["results"][0]["invitation"]["updated_at"]
        .as_str()
        .unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(updated).is_ok(),
        "{updated}"
    );
    let good = ops.write(
        "good.csv",
        format!(
            "client_user_id,email,enrollment_id\np1,p1@example.com,{}\np5,p5@example.com,\n",
            d(0)
        )
        .as_bytes(),
    );
    let r = ops.cli(&["invite", "--csv", &good]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains(&format!("line 3: skipped p5: retired (invitation {p5})")),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("0 invited, 1 already in progress, 1 skipped, 0 rejected"),
        "{}",
        r.stdout
    );
    // ...and is, on purpose, with --reinvite-retired.
    let r = ops.cli(&["invite", "--csv", &good, "--reinvite-retired"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("1 invited, 1 already in progress, 0 skipped, 0 rejected"),
        "{}",
        r.stdout
    );
    let (_, v) = ops
        .api(
            reqwest::Method::GET,
            "/api/v1/invitations?client_user_id=p5",
            None,
        )
        .await;
    assert_eq!(v["total"], 2, "{v}");
    assert_eq!(v["counts"]["retired"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn invite_wait_counts_states_prints_failures_and_exits_by_outcome() {
    let ops = Ops::start(&[]).await;
    let phone = ops.devices(1, SimPlatform::Ios).await;
    let byod = ops.devices(1, SimPlatform::UserEnrollment).await;

    // Timed out: the phone never checks in, so its invitation stays queued.
    let r = ops.cli(&[
        "invite",
        "--client-user-id",
        "silent",
        "--email",
        "silent@example.com",
        "--enrollment",
        phone[0].spec.id.as_str(),
        "--wait",
        "--timeout",
        "8",
        "--progress-every",
        "1",
    ]);
    assert_eq!(r.code, 3, "{}{}", r.stdout, r.stderr);
    let progress: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| l.contains(" ended: "))
        .collect();
    assert!(progress.len() >= 2, "{}", r.stdout);
    for l in &progress {
        // `2025-01-01T00:00:00.000Z 0/1 ended: registering 1`: a plain line, no bar.
        let (time, rest) = l.split_once(' ').unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(time).is_ok(), "{l}");
        assert!(rest.starts_with("0/1 ended: "), "{l}");
    }
    assert!(
        progress.last().unwrap().ends_with("queued 1"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains('\u{1b}') && !r.stderr.contains('\u{1b}'));
    assert!(r.stdout.contains("timed out after 8s"), "{}", r.stdout);
    assert!(r.stderr.contains("timed out"), "{}", r.stderr);

    // Some failed: a User Enrollment cannot take InviteToProgram; the failure is printed
    // on its own line as it happens, and the email-only person is accepted meanwhile.
    let csv = ops.write(
        "two.csv",
        format!(
            "client_user_id,email,enrollment_id\nbyod,byod@example.com,{}\nlinda,linda@example.com,\n",
            byod[0].spec.id
        )
        .as_bytes(),
    );
    let child = Command::new(common::BIN)
        .args([
            "invite",
            "--csv",
            &csv,
            "--wait",
            "--timeout",
            "120",
            "--progress-every",
            "1",
        ])
        .env("CLOUDVPP_MDM_URL", &ops.mdm)
        .env("CLOUDVPP_API_KEY", KEY)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut link = String::new();
    until("linda's link", 60, async || {
        link = ops
            .invitations()
            .await
            .get("linda")
            .and_then(|i| i["invitation_url"].as_str())
            .unwrap_or("")
            .to_string();
        !link.is_empty()
    })
    .await;
    accept_invitation(&ops.http, &link, "linda@people.example")
        .await
        .unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let byod_id = ops.invitations().await["byod"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let failure = stdout
        .lines()
        .find(|l| l.starts_with("failed: byod"))
        .unwrap_or_else(|| panic!("no failure line in\n{stdout}"));
    assert!(
        failure.starts_with(&format!("failed: byod (invitation {byod_id}): "))
            && failure.contains("User Enrollment"),
        "{failure}"
    );
    assert!(
        stdout.contains("1 associated, 1 failed or retired"),
        "{stdout}"
    );
    let last = stdout.lines().rfind(|l| l.contains(" ended: ")).unwrap();
    assert!(
        last.ends_with(" 2/2 ended: associated 1, failed 1"),
        "{stdout}"
    );

    // All associated: exit status 0.
    let child = Command::new(common::BIN)
        .args([
            "invite",
            "--client-user-id",
            "mo",
            "--email",
            "mo@example.com",
            "--wait",
            "--timeout",
            "120",
        ])
        .env("CLOUDVPP_MDM_URL", &ops.mdm)
        .env("CLOUDVPP_API_KEY", KEY)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut link = String::new();
    until("mo's link", 60, async || {
        link = ops
            .invitations()
            .await
            .get("mo")
            .and_then(|i| i["invitation_url"].as_str())
            .unwrap_or("")
            .to_string();
        !link.is_empty()
    })
    .await;
    accept_invitation(&ops.http, &link, "mo@people.example")
        .await
        .unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("1 associated, 0 failed or retired"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn invitations_are_listed_filtered_resent_with_corrections_and_retired() {
    let ops = Ops::start(&[]).await;
    let phones = ops.devices(1, SimPlatform::Ios).await;
    let byod = ops.devices(1, SimPlatform::UserEnrollment).await;
    // Through the API (whose email check is Apple's, looser than the CLI's): one address
    // Apple refuses (9717), one device that cannot take the invitation, two email links.
    let (s, v) = ops
        .api(
            reqwest::Method::POST,
            "/api/v1/invitations",
            Some(json!({"invitations": [
                {"client_user_id": "typo", "email": "typo@nowhere"},
                {"client_user_id": "byod", "email": "byod@example.com", "enrollment_id": byod[0].spec.id},
                {"client_user_id": "l1", "email": "l1@example.com"},
                {"client_user_id": "l2", "email": "l2@example.com"},
            ]})),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    until("two failed, two registered", 60, async || {
        let all = ops.invitations().await;
        ["typo", "byod"]
            .iter()
            .all(|p| all[*p]["state"] == "failed")
            && ["l1", "l2"]
                .iter()
                .all(|p| all[*p]["state"] == "registered")
    })
    .await;
    let all = ops.invitations().await;

    // The listing: counts per state, the cut said, email and link columns, newest first.
    let r = ops.cli(&["invitations", "--limit", "3"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines[0],
        "registering 0, registered 2, queued 0, delivered 0, associated 0, failed 2, retired 0"
    );
    assert_eq!(
        lines[1],
        "showing 3 of 4, newest first (--limit to see more)"
    );
    assert!(
        lines[2].starts_with("CREATED") && lines[2].contains("EMAIL") && lines[2].contains("LINK")
    );
    assert_eq!(lines.len(), 6, "{}", r.stdout);
    let l1 = lines
        .iter()
        .find(|l| l.contains(" l1 "))
        .map(|l| l.to_string());
    if let Some(l1) = l1 {
        assert!(l1.contains("l1@example.com"), "{l1}");
        assert!(
            l1.contains(all["l1"]["invitation_url"].as_str().unwrap()),
            "{l1}"
        );
    }
    // Filters: the counts and the total are those of the filter.
    let r = ops.cli(&["invitations", "--state", "failed", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        (v["total"].as_i64(), v["shown"].as_i64()),
        (Some(2), Some(2))
    );
    assert_eq!(v["counts"]["failed"], 2);
    assert_eq!(v["counts"]["registered"], 0);
    let created: Vec<String> = v["invitations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["created_at"].as_str().unwrap().to_string())
        .collect();
    for t in &created {
        assert!(chrono::DateTime::parse_from_rfc3339(t).is_ok(), "{t}");
        assert!(t.ends_with('Z'), "{t}");
    }
    assert!(
        created.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {created:?}"
    );
    let r = ops.cli(&["invitations", "--client-user-id", "l1", "--json"]);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        (v["total"].as_i64(), v["counts"]["registered"].as_i64()),
        (Some(1), Some(1))
    );
    // Only the real states parse.
    let r = ops.cli(&["invitations", "--state", "pending"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("possible values: registering, registered"),
        "{}",
        r.stderr
    );
    let (s, _) = ops
        .api(
            reqwest::Method::GET,
            "/api/v1/invitations?state=pending",
            None,
        )
        .await;
    assert_eq!(s, 400);

    // Bulk: every failed invitation is sent again (and fails again, uncorrected).
    let (typo, byod_id) = (
        all["typo"]["id"].as_str().unwrap().to_string(),
        all["byod"]["id"].as_str().unwrap().to_string(),
    );
    let r = ops.cli(&["invitations", "resend", "--state", "failed"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("2 resent, 0 refused"), "{}", r.stdout);
    assert!(
        r.stdout.contains(&format!("{typo}  typo  registering")),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains(&format!("{byod_id}  byod  registered")),
        "{}",
        r.stdout
    );
    until("both failed again", 60, async || {
        let all = ops.invitations().await;
        ["typo", "byod"]
            .iter()
            .all(|p| all[*p]["state"] == "failed")
    })
    .await;

    // Resend with a corrected email: registration starts over with it.
    let r = ops.cli(&[
        "invitations",
        "resend",
        &typo,
        "--email",
        "typo@example.com",
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains(&format!("{typo}  typo  registering")),
        "{}",
        r.stdout
    );
    // Resend with another enrollment: the phone's channel is chosen and it is queued.
    let r = ops.cli(&[
        "invitations",
        "resend",
        &byod_id,
        "--enrollment",
        phones[0].spec.id.as_str(),
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    until("corrections take", 60, async || {
        let all = ops.invitations().await;
        all["typo"]["state"] == "registered" && all["byod"]["state"] == "queued"
    })
    .await;
    let all = ops.invitations().await;
    assert_eq!(all["typo"]["email"], "typo@example.com");
    assert_eq!(all["byod"]["channel"], phones[0].spec.id.as_str());
    // A correction to an unknown enrollment, or for several invitations, is refused.
    let r = ops.cli(&[
        "invitations",
        "resend",
        &byod_id,
        "--enrollment",
        "NO-SUCH-DEVICE",
    ]);
    assert_eq!(r.code, 1);
    assert!(
        r.stdout.contains("unknown enrollment NO-SUCH-DEVICE"),
        "{}",
        r.stdout
    );
    let r = ops.cli(&[
        "invitations",
        "resend",
        &byod_id,
        &typo,
        "--email",
        "x@example.com",
    ]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("exactly one ID"), "{}", r.stderr);
    let r = ops.cli(&["invitations", "resend", "--state", "failed"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("nothing to resend"), "{}", r.stdout);

    // Retire by ID; an unknown ID is refused and changes the exit status.
    let l2 = all["l2"]["id"].as_str().unwrap().to_string();
    let l1 = all["l1"]["id"].as_str().unwrap().to_string();
    let r = ops.cli(&["invitations", "retire", &l1, &l2, "no-such-invitation"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("2 retired, 1 refused"), "{}", r.stdout);
    assert!(
        r.stdout.contains("no-such-invitation  refused: 404"),
        "{}",
        r.stdout
    );
    let r = ops.cli(&["invitations", "--state", "retired", "--json"]);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["total"], 2);
    // Retired ones cannot be resent.
    let r = ops.cli(&["invitations", "resend", &l1]);
    assert_eq!(r.code, 1);
    assert!(
        r.stdout.contains("409: invitation is retired"),
        "{}",
        r.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_invitation_api_refuses_garbage_and_changes_nothing() {
    let ops = Ops::start(&[]).await;
    let (s, v) = ops
        .api(
            reqwest::Method::POST,
            "/api/v1/invitations",
            Some(json!({"client_user_id": "kept", "email": "kept@example.com"})),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let kept = v["invitations"][0].clone();
    let id = kept["id"].as_str().unwrap().to_string();
    let raw = async |method: reqwest::Method, path: &str, body: &str| {
        let r = ops
            .http
            .request(method, format!("{}{path}", ops.mdm))
            .bearer_auth(KEY)
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json::<Value>().await.unwrap_or(Value::Null))
    };
    let resend = format!("/api/v1/invitations/{id}/resend");
    let long = format!("{}@example.com", "a".repeat(300));
    for (path, body) in [
        (resend.as_str(), "{not json".to_string()),
        (resend.as_str(), r#"{"email": 5}"#.to_string()),
        (resend.as_str(), r#"{"emial": "x@example.com"}"#.to_string()),
        (resend.as_str(), format!(r#"{{"email": "{long}"}}"#)),
        (
            resend.as_str(),
            r#"{"email": "two words@example.com"}"#.to_string(),
        ),
        (
            resend.as_str(),
            r#"{"enrollment_id": "NO-SUCH-DEVICE"}"#.to_string(),
        ),
        ("/api/v1/invitations", r#"{"invitations": []}"#.to_string()),
        (
            "/api/v1/invitations",
            r#"{"invitations": [{"client_user_id": "   "}]}"#.to_string(),
        ),
        (
            "/api/v1/invitations",
            format!(r#"{{"client_user_id": "x", "email": "{long}"}}"#),
        ),
        ("/api/v1/locations", r#"{"stoken": ""}"#.to_string()),
        (
            "/api/v1/locations",
            r#"{"stoken": "not a token", "base_url": "http://127.0.0.1:1/mdm/v2"}"#.to_string(),
        ),
    ] {
        let (s, v) = raw(reqwest::Method::POST, path, &body).await;
        assert_eq!(s, 400, "{path} {body}: {v}");
        assert!(v["error"].is_string(), "{path} {body}: {v}");
    }
    // Too many at once.
    let many: Vec<Value> = (0..10_001)
        .map(|i| json!({"client_user_id": format!("p{i}")}))
        .collect();
    let (s, v) = ops
        .api(
            reqwest::Method::POST,
            "/api/v1/invitations",
            Some(json!({"invitations": many})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    for q in [
        "?state=pending",
        "?limit=many",
        "?updated_since=yesterday",
        "?location_id=first",
    ] {
        let (s, v) = ops
            .api(
                reqwest::Method::GET,
                &format!("/api/v1/invitations{q}"),
                None,
            )
            .await;
        assert_eq!(s, 400, "{q}: {v}");
    }
    // A dry run, and an atomic request with one bad entry, store nothing.
    let (s, v) = ops
        .api(
            reqwest::Method::POST,
            "/api/v1/invitations",
            Some(json!({"dry_run": true, "invitations": [{"client_user_id": "dry"}]})),
        )
        .await;
    assert_eq!(
        (s, v["results"][0]["outcome"].as_str()),
        (200, Some("new")),
        "{v}"
    );
    let (s, v) = ops
        .api(
            reqwest::Method::POST,
            "/api/v1/invitations",
            Some(json!({"atomic": true, "invitations": [
                {"client_user_id": "good"},
                {"client_user_id": "bad", "enrollment_id": "NO-SUCH-DEVICE"},
            ]})),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["stored"], false);
    assert_eq!(
        v["results"][1]["reason"],
        "unknown enrollment NO-SUCH-DEVICE"
    );
    // Without atomic the good one is stored, and the answer says which was refused.
    let (s, v) = ops
        .api(
            reqwest::Method::POST,
            "/api/v1/invitations",
            Some(json!({"invitations": [
                {"client_user_id": "good"},
                {"client_user_id": "bad", "enrollment_id": "NO-SUCH-DEVICE"},
            ]})),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(
        v["summary"],
        json!({"new": 1, "in_progress": 0, "skipped": 0, "rejected": 1})
    );
    let all = ops.invitations().await;
    let mut people: Vec<&str> = all.keys().map(String::as_str).collect();
    people.sort();
    assert_eq!(people, ["good", "kept"]);
    // The kept invitation is as it was (save what the engine did on its own).
    assert_eq!(all["kept"]["email"], "kept@example.com");
    assert_eq!(all["kept"]["attempts"], kept["attempts"]);
    let (_, v) = ops
        .api(reqwest::Method::GET, "/api/v1/locations", None)
        .await;
    assert_eq!(v["locations"].as_array().unwrap().len(), 1);

    // A CSV that is not one: no header line, or binary garbage.
    let empty = ops.write("empty.csv", b"");
    let r = ops.cli(&["invite", "--csv", &empty]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("empty"), "{}", r.stderr);
    let junk = ops.write("junk.csv", &[0xff, 0xfe, 0x00, 0x01, b'\n', 0x80]);
    let r = ops.cli(&["invite", "--csv", &junk]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("header"), "{}", r.stderr);
    assert_eq!(ops.count().await, 2);
}
