//! The administrator web page (`/admin` on the MDM service) of a real `cloudvpp serve`:
//! driven in headless Chromium through chromedriver (log in, the location and the counts, a
//! CSV upload and its report, a person's history, resend, retire, log out), and with plain
//! HTTP requests for what a browser would never send (forged forms, bad inputs, guessing).
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them); without them
//! the browser test fails and says so. Screenshots go to `target/admin-screenshots/`.

mod common;

use cloudvpp_simulator::{accept_invitation, Pki, SimDevice, SimPlatform};
use common::Env;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

const KEY: &str = "admin-ui-test-key-0123456789";

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| Pki::generate().unwrap())
}

/// `cloudvpp serve` with a location, its admin API, and its log in a file.
struct System {
    env: Env,
    child: Child,
    ab: String,
    mdm: String,
    log: PathBuf,
    http: reqwest::Client,
    token: String,
}

impl Drop for System {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl System {
    async fn start() -> System {
        let env = Env::new();
        let ca = env.dir.path().join("ca.pem");
        std::fs::write(&ca, &pki().ca_cert_pem).unwrap();
        let log = env.dir.path().join("serve.log");
        let mut child = Command::new(common::BIN)
            .args(["serve", "--api-key", KEY, "--ca", ca.to_str().unwrap()])
            .args([
                "--appsbooks-listen",
                "127.0.0.1:0",
                "--mdm-listen",
                "127.0.0.1:0",
            ])
            .args(["--database", &env.db()])
            .args(["--status-poll-ms", "200", "--sync-interval-ms", "1000"])
            // Everything the service logs at info, to check that no secret is in it.
            .env("RUST_LOG", "info")
            .env_remove("CLOUDVPP_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let (mut a, mut m) = (String::new(), String::new());
        out.read_line(&mut a).unwrap();
        out.read_line(&mut m).unwrap();
        std::thread::spawn(move || for _ in out.lines() {});
        let url = |l: &str| l.trim().rsplit(' ').next().unwrap().to_string();
        let token = env.org("Acme Schools");
        let sys = System {
            ab: url(&a),
            mdm: url(&m),
            env,
            child,
            log,
            http: reqwest::Client::new(),
            token,
        };
        let (status, v) = sys
            .api(
                reqwest::Method::POST,
                "/api/v1/locations",
                Some(json!({"stoken": sys.token, "base_url": format!("{}/mdm/v2", sys.ab)})),
            )
            .await;
        assert_eq!(status, 201, "{v}");
        sys
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

    /// The engine's invitations of one person (through the admin API).
    async fn invitations_of(&self, person: &str) -> Vec<Value> {
        let (s, v) = self
            .api(
                reqwest::Method::GET,
                &format!("/api/v1/invitations?client_user_id={person}"),
                None,
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v["invitations"].as_array().unwrap().clone()
    }

    async fn total(&self) -> i64 {
        let (_, v) = self
            .api(reqwest::Method::GET, "/api/v1/invitations", None)
            .await;
        v["total"].as_i64().unwrap()
    }

    /// The person's records at the Apps and Books service.
    async fn apps_and_books_users(&self, person: &str) -> Vec<Value> {
        loop {
            let v: Value = self
                .http
                .get(format!("{}/mdm/v2/users?clientUserId={person}", self.ab))
                .bearer_auth(&self.token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            match v["users"].as_array() {
                Some(u) => return u.clone(),
                // The rate limit is shared with the engine: wait it out.
                None if v["errorNumber"] == 9646 => {
                    tokio::time::sleep(Duration::from_millis(300)).await
                }
                None => panic!("{v}"),
            }
        }
    }

    async fn devices(&self, n: usize) -> Vec<Arc<SimDevice>> {
        let key = Arc::new(cloudvpp_identity::pem::key(pki().device_key_pem.as_bytes()).unwrap());
        let specs = tokio::task::spawn_blocking(move || {
            (0..n)
                .map(|_| pki().new_device(SimPlatform::Ios).unwrap())
                .collect::<Vec<_>>()
        })
        .await
        .unwrap();
        let mut out = Vec::new();
        for s in specs {
            let d = SimDevice::with_key(s, key.clone(), &self.mdm, self.http.clone()).unwrap();
            d.enroll().await.unwrap();
            out.push(Arc::new(d));
        }
        out
    }

    fn server_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }
}

async fn until<F: AsyncFnMut() -> bool>(what: &str, secs: u64, mut f: F) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---- The browser ----

/// `name`'s path on PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// chromedriver on a free loopback port. The browser it starts ends with its session
/// ([`with_browser`] closes it whatever the test does); chromedriver itself is stopped by
/// its own process ID.
struct Driver {
    child: Child,
    url: String,
    _profile: tempfile::TempDir,
    chromium: PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `test` with a browser, then closes the browser's session (which ends Chromium)
/// even when `test` panicked, and passes the panic on.
async fn with_browser<F>(driver: &Driver, test: impl FnOnce(Client) -> F)
where
    F: std::future::Future<Output = ()>,
{
    use futures::FutureExt;
    let c = driver.browser().await;
    let outcome = std::panic::AssertUnwindSafe(test(c.clone()))
        .catch_unwind()
        .await;
    let _ = c.close().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

impl Driver {
    async fn start() -> Driver {
        let missing = "Chromium and chromedriver are needed for the administrator page's browser \
                       test: `apt-get install -y chromium chromium-driver` (.ci/run installs them)";
        let driver =
            on_path("chromedriver").unwrap_or_else(|| panic!("no chromedriver on PATH. {missing}"));
        // Debian's /usr/bin/chromium is a wrapper script; chromedriver wants the browser.
        let chromium = [PathBuf::from("/usr/lib/chromium/chromium")]
            .into_iter()
            .find(|p| p.is_file())
            .or_else(|| on_path("chromium"))
            .or_else(|| on_path("chromium-browser"))
            .unwrap_or_else(|| panic!("no chromium on PATH. {missing}"));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let d = Driver {
            child,
            url,
            _profile: tempfile::tempdir().unwrap(),
            chromium,
        };
        let http = reqwest::Client::new();
        until("chromedriver to be ready", 20, async || {
            match http.get(format!("{}/status", d.url)).send().await {
                Ok(r) => r
                    .json::<Value>()
                    .await
                    .is_ok_and(|v| v["value"]["ready"] == true),
                Err(_) => false,
            }
        })
        .await;
        d
    }

    async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": self.chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1400,1000", "--no-first-run",
                    format!("--user-data-dir={}", self._profile.path().display()),
                ],
            }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("starting Chromium through chromedriver")
    }
}

/// The text of the first element `css` selects.
async fn text(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .text()
        .await
        .unwrap()
}

/// Waits until the page at hand has an element `css` whose text contains `want`.
async fn wait_text(c: &Client, css: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(e) = c.find(Locator::Css(css)).await {
            if e.text().await.is_ok_and(|t| t.contains(want)) {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no {css} containing {want:?} on {}:\n{}",
            c.current_url().await.unwrap(),
            c.source().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `target/admin-screenshots/`, beside the binary's target directory.
fn screenshots() -> PathBuf {
    let dir = Path::new(common::BIN)
        .ancestors()
        .nth(2)
        .unwrap()
        .join("admin-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    std::fs::write(screenshots().join(name), png).unwrap();
}

/// The overview's count of `state`, read after a fresh load.
async fn overview_count(c: &Client, base: &str, state: &str) -> i64 {
    c.goto(&format!("{base}/admin?live=0")).await.unwrap();
    text(c, &format!("#counts td[data-state={state}]"))
        .await
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_administrator_uploads_people_follows_one_resends_retires_and_logs_out() {
    let sys = System::start().await;
    let devices = sys.devices(3).await;
    let driver = Driver::start().await;
    with_browser(&driver, async |c| administrate(&sys, &devices, c).await).await;
}

/// What the administrator does in the browser `c`, and what the page and the API show.
async fn administrate(sys: &System, devices: &[Arc<SimDevice>], c: Client) {
    let base = sys.mdm.clone();

    // Not logged in: the login page; a wrong key is refused there.
    c.goto(&format!("{base}/admin/invitations")).await.unwrap();
    assert_eq!(c.current_url().await.unwrap().path(), "/admin/login");
    c.find(Locator::Css("#key"))
        .await
        .unwrap()
        .send_keys("not-the-key")
        .await
        .unwrap();
    c.find(Locator::Css("#login"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&c, "#login-error", "Wrong key").await;
    c.find(Locator::Css("#key"))
        .await
        .unwrap()
        .send_keys(KEY)
        .await
        .unwrap();
    c.find(Locator::Css("#login"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&c, "h1", "Overview").await;
    let cookie = c
        .get_named_cookie("cloudvpp_admin")
        .await
        .expect("a session cookie");
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(format!("{:?}", cookie.same_site()), "Some(Strict)");
    assert_ne!(cookie.value(), KEY);

    // The location with its token's expiry (a year ahead), and the counts (none yet).
    let locations = text(&c, "#locations").await;
    assert!(locations.contains("Acme Schools"), "{locations}");
    let year = chrono::Utc::now().format("%Y").to_string();
    let next_year = (year.parse::<i32>().unwrap() + 1).to_string();
    let expiry = text(&c, "#locations td.expiry").await;
    assert!(expiry.contains(&next_year), "expiry {expiry:?}");
    assert_eq!(text(&c, "#total").await, "0");

    // A CSV with a bad email (line 4), an enrollment the MDM does not know (line 5) and an
    // email-only person (line 6).
    let csv = sys.env.dir.path().join("people.csv");
    std::fs::write(
        &csv,
        format!(
            "client_user_id,email,enrollment_id\n\
             alice,alice@example.com,{}\n\
             bob,bob@example.com,{}\n\
             carol,not-an-email,{}\n\
             dave,dave@example.com,NO-SUCH-DEVICE\n\
             erin,erin@example.com,\n",
            devices[0].spec.id, devices[1].spec.id, devices[2].spec.id
        ),
    )
    .unwrap();
    c.find(Locator::LinkText("Upload CSV"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&c, "h1", "CSV file").await;
    c.find(Locator::Css("#file"))
        .await
        .unwrap()
        .send_keys(csv.to_str().unwrap())
        .await
        .unwrap();
    c.find(Locator::Css("#upload"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&c, "#summary", "3 invited").await;
    let summary = text(&c, "#summary").await;
    assert!(summary.contains("2 rejected"), "{summary}");
    let row = async |line: u32| {
        let outcome = text(
            &c,
            &format!("#report tr[data-line='{line}'] [data-role=outcome]"),
        )
        .await;
        let detail = text(
            &c,
            &format!("#report tr[data-line='{line}'] [data-role=detail]"),
        )
        .await;
        (outcome, detail)
    };
    let (o, d) = row(4).await;
    assert_eq!(o, "rejected");
    assert!(d.contains("invalid email"), "{d}");
    let (o, d) = row(5).await;
    assert_eq!(o, "rejected");
    assert!(d.contains("unknown enrollment NO-SUCH-DEVICE"), "{d}");
    for line in [2, 3, 6] {
        assert_eq!(row(line).await.0, "invited", "line {line}");
    }
    screenshot(&c, "upload-report.png").await;
    // The engine has the three, and only them.
    assert_eq!(sys.total().await, 3);
    for (person, n) in [
        ("alice", 1),
        ("bob", 1),
        ("erin", 1),
        ("carol", 0),
        ("dave", 0),
    ] {
        assert_eq!(sys.invitations_of(person).await.len(), n, "{person}");
    }

    // While the batch runs the overview refreshes itself.
    c.goto(&format!("{base}/admin")).await.unwrap();
    c.find(Locator::Css("meta[http-equiv=refresh]"))
        .await
        .expect("the overview refreshes while invitations are in progress");

    // Alice's device shows the invitation and she accepts; Bob's answers NotNow.
    until("alice and bob queued", 60, async || {
        let a = sys.invitations_of("alice").await;
        let b = sys.invitations_of("bob").await;
        a[0]["state"] == "queued" && b[0]["state"] == "queued"
    })
    .await;
    devices[1].behaviour.not_now.store(1, Ordering::SeqCst);
    for d in &devices[..2] {
        for h in d.poll(false).await.unwrap() {
            if let (Some(url), "Acknowledged") = (&h.invitation_url, h.status.as_str()) {
                accept_invitation(&sys.http, url, "alice@people.example")
                    .await
                    .unwrap();
            }
        }
    }
    until("alice associated in the page's counts", 60, async || {
        overview_count(&c, &base, "associated").await == 1
    })
    .await;
    assert_eq!(overview_count(&c, &base, "queued").await, 1);
    screenshot(&c, "overview.png").await;

    // The invitations: search, filters, pages.
    c.goto(&format!("{base}/admin/invitations")).await.unwrap();
    wait_text(&c, "#page", "page 1 of 1 (3 invitations)").await;
    screenshot(&c, "invitations.png").await;
    c.find(Locator::Css("#search"))
        .await
        .unwrap()
        .send_keys("BOB@example")
        .await
        .unwrap();
    c.find(Locator::Css("#apply"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&c, "#page", "(1 invitations)").await;
    assert!(text(&c, "#invitations").await.contains("bob"));
    c.goto(&format!("{base}/admin/invitations?state=associated"))
        .await
        .unwrap();
    let listed = text(&c, "#invitations").await;
    assert!(
        listed.contains("alice") && !listed.contains("bob"),
        "{listed}"
    );

    // Bob's page: queued after NotNow, the command and the device's answer.
    c.goto(&format!("{base}/admin/invitations?q=bob"))
        .await
        .unwrap();
    c.find(Locator::LinkText("bob"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&c, "#person", "bob").await;
    let inv = sys.invitations_of("bob").await[0].clone();
    let id = inv["id"].as_str().unwrap().to_string();
    let section = format!("section[id='invitation-{id}']");
    assert_eq!(
        text(&c, &format!("{section} [data-role=state]")).await,
        "queued"
    );
    assert!(text(&c, &format!("{section} [data-role=reason]"))
        .await
        .contains("NotNow"));
    let commands = text(&c, &format!("{section} [data-role=commands]")).await;
    assert!(
        commands.contains("attempt 1") && commands.contains("NotNow"),
        "{commands}"
    );
    assert!(text(&c, &format!("{section} table.history"))
        .await
        .contains("device answered NotNow"));
    screenshot(&c, "person.png").await;

    // Resend: a second InviteToProgram, in the page and through the API.
    c.find(Locator::Css(&format!("{section} [data-role=resend]")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&c, "#notice", "Sent again").await;
    assert_eq!(
        text(&c, &format!("{section} [data-role=attempts]")).await,
        "2"
    );
    let commands = text(&c, &format!("{section} [data-role=commands]")).await;
    assert!(commands.contains("attempt 2 (current)"), "{commands}");
    assert_eq!(sys.invitations_of("bob").await[0]["attempts"], 2);

    // Retire: the person is retired at Apps and Books, the invitation ends.
    c.find(Locator::Css(&format!("{section} [data-role=retire]")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&c, "#notice", "Retired").await;
    assert_eq!(
        text(&c, &format!("{section} [data-role=state]")).await,
        "retired"
    );
    assert!(
        c.find(Locator::Css(&format!("{section} [data-role=resend]")))
            .await
            .is_err(),
        "a retired invitation offers no resend"
    );
    assert_eq!(sys.invitations_of("bob").await[0]["state"], "retired");
    until("bob retired at Apps and Books", 30, async || {
        sys.apps_and_books_users("bob")
            .await
            .iter()
            .all(|u| u["status"] == "Retired")
    })
    .await;

    // Log out: back to the login page, and the old session is gone for good.
    let session = c.get_named_cookie("cloudvpp_admin").await.unwrap();
    c.find(Locator::Css("#logout"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&c, "h1", "cloudvpp administration").await;
    assert_eq!(c.current_url().await.unwrap().path(), "/admin/login");
    c.goto(&format!("{base}/admin")).await.unwrap();
    assert_eq!(c.current_url().await.unwrap().path(), "/admin/login");
    let replay = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{base}/admin"))
        .header("cookie", format!("cloudvpp_admin={}", session.value()))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 303);
    assert_eq!(replay.headers()["location"], "/admin/login");
    let log = sys.server_log();
    assert!(
        !log.contains(KEY) && !log.contains(session.value()),
        "a secret in the log"
    );
}

// ---- Plain HTTP: what a browser would not send ----

/// A logged-in session over plain HTTP: its cookie and CSRF token.
struct Session {
    http: reqwest::Client,
    base: String,
    cookie: String,
    csrf: String,
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The value of the first `name="csrf"` field of a page.
fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    html[at..at + 64].to_string()
}

impl Session {
    async fn login(base: &str) -> Session {
        let http = no_redirects();
        let r = http
            .post(format!("{base}/admin/login"))
            .form(&[("key", KEY)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303);
        let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
        for part in ["HttpOnly", "SameSite=Strict", "Path=/admin"] {
            assert!(set.contains(part), "{set}");
        }
        assert!(!set.contains("Secure"), "plain HTTP: no Secure ({set})");
        let cookie = set.split(';').next().unwrap().to_string();
        let mut s = Session {
            http,
            base: base.to_string(),
            cookie,
            csrf: String::new(),
        };
        let (status, html) = s.get("/admin").await;
        assert_eq!(status, 200);
        s.csrf = csrf_of(&html);
        s
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> (u16, String) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .form(form)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn upload(&self, csrf: &str, file: Vec<u8>) -> (u16, String) {
        let form = reqwest::multipart::Form::new()
            .text("csrf", csrf.to_string())
            .part(
                "file",
                reqwest::multipart::Part::bytes(file).file_name("people.csv"),
            );
        let r = self
            .http
            .post(format!("{}/admin/upload", self.base))
            .header("cookie", &self.cookie)
            .multipart(form)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_forms_bad_inputs_and_guessed_keys_change_nothing() {
    let sys = System::start().await;
    let base = sys.mdm.clone();
    let (s, v) = sys
        .api(
            reqwest::Method::POST,
            "/api/v1/invitations",
            Some(json!({"invitations": [
                {"client_user_id": "pat", "email": "pat@example.com"},
                {"client_user_id": "<script>alert(1)</script>", "email": "x@example.com"},
            ]})),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let pat = sys.invitations_of("pat").await[0].clone();
    let id = pat["id"].as_str().unwrap().to_string();

    // Nothing without a session: pages send to the login, forms are refused.
    let anon = no_redirects();
    let r = anon
        .get(format!("{base}/admin/invitations"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/admin/login");

    let me = Session::login(&base).await;
    let r = anon
        .post(format!("{base}/admin/invitations/{id}/retire"))
        .form(&[("csrf", me.csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a token without its session");

    // Every page says what it may load and that it must not be framed, sniffed or kept.
    let r = me
        .http
        .get(format!("{base}/admin/invitations"))
        .header("cookie", &me.cookie)
        .send()
        .await
        .unwrap();
    let h = r.headers();
    assert!(h["content-security-policy"]
        .to_str()
        .unwrap()
        .starts_with("default-src 'none'"));
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert_eq!(h["cache-control"], "no-store");
    // Every value is escaped.
    let html = r.text().await.unwrap();
    assert!(
        html.contains("&#60;script&#62;alert(1)&#60;/script&#62;"),
        "{html}"
    );
    assert!(!html.contains("<script>alert"));

    // Wrong or missing CSRF tokens: 403 and nothing changes.
    let wrong = "0".repeat(64);
    for form in [vec![("csrf", wrong.as_str())], vec![]] {
        let (status, page) = me
            .post(&format!("/admin/invitations/{id}/retire"), &form)
            .await;
        assert_eq!(status, 403, "{page}");
        assert!(page.contains("nothing was changed"), "{page}");
        let mut resend = form.clone();
        resend.push(("email", "new@example.com"));
        let (status, _) = me
            .post(&format!("/admin/invitations/{id}/resend"), &resend)
            .await;
        assert_eq!(status, 403);
        let (status, _) = me.post("/admin/logout", &form).await;
        assert_eq!(status, 403);
    }
    let (status, _) = me
        .upload(
            &wrong,
            b"client_user_id,email\nzed,zed@example.com\n".to_vec(),
        )
        .await;
    assert_eq!(status, 403);
    let now = sys.invitations_of("pat").await[0].clone();
    assert_eq!(now["state"], pat["state"]);
    assert_eq!(now["email"], "pat@example.com");
    assert_eq!(now["attempts"], pat["attempts"]);
    assert!(sys.invitations_of("zed").await.is_empty());
    assert_eq!(
        me.get("/admin").await.0,
        200,
        "the session outlived a forged logout"
    );

    // Bad inputs: a clear page with a 4xx, never a failure of the server.
    let long = "x".repeat(255);
    for (path, status, says) in [
        ("/admin/invitations?page=0", 400, "not a page number"),
        ("/admin/invitations?page=abc", 400, "not a page number"),
        (
            "/admin/invitations?page=99999999999",
            400,
            "not a page number",
        ),
        ("/admin/invitations?state=bogus", 400, "Unknown state"),
        (
            "/admin/invitations?location=x",
            400,
            "not a location number",
        ),
        (
            &format!("/admin/invitations?q={long}"),
            400,
            "at most 254 characters",
        ),
        ("/admin/person?location=1", 400, "clientUserId"),
        ("/admin/person?id=pat", 400, "location number"),
        (
            "/admin/person?location=1&id=nobody",
            404,
            "No invitation of this person",
        ),
        ("/admin/person?location=99&id=pat", 404, "No such location"),
        ("/admin/no-such-page", 404, "No such page"),
    ] {
        let (got, page) = me.get(path).await;
        assert_eq!(got, status, "{path}: {page}");
        assert!(page.contains(says), "{path}: {page}");
    }
    // A page past the last is empty, with a way back.
    let (got, page) = me.get("/admin/invitations?page=7").await;
    assert_eq!(got, 200);
    assert!(
        page.contains("No invitation matches") && page.contains("id=\"prev\""),
        "{page}"
    );
    // Resend of an unknown invitation, with a bad email: the engine's refusals, as pages.
    let (got, page) = me
        .post(
            "/admin/invitations/no-such-id/resend",
            &[("csrf", &me.csrf)],
        )
        .await;
    assert_eq!(got, 404, "{page}");
    let (got, page) = me
        .post(
            &format!("/admin/invitations/{id}/resend"),
            &[("csrf", &me.csrf), ("email", "not an email")],
        )
        .await;
    assert_eq!(got, 400, "{page}");
    assert!(page.contains("invalid email"), "{page}");

    // Uploads: too large, not a CSV, a header without its required column.
    let big = vec![b'a'; cloudvpp_admin_ui::MAX_UPLOAD_BYTES + 1];
    let (got, page) = me.upload(&me.csrf, big).await;
    assert_eq!(got, 413, "{page}");
    assert!(page.contains("larger than 4 MiB"), "{page}");
    let (got, page) = me
        .upload(&me.csrf, b"email\nzed@example.com\n".to_vec())
        .await;
    assert_eq!(got, 400);
    assert!(page.contains("client_user_id column"), "{page}");
    let (got, page) = me
        .upload(&me.csrf, vec![0xff, 0xfe, 0, 1, b'\n', 0x80])
        .await;
    assert_eq!(got, 400);
    assert!(page.contains("header"), "{page}");
    assert_eq!(sys.total().await, 2, "no upload invited anybody");

    // The right token does it (the refusals above were the token's).
    let (got, _) = me
        .post(
            &format!("/admin/invitations/{id}/retire"),
            &[("csrf", &me.csrf)],
        )
        .await;
    assert_eq!(got, 303);
    assert_eq!(sys.invitations_of("pat").await[0]["state"], "retired");

    // Logout ends the session on the server: its cookie is refused afterwards.
    let (got, _) = me.post("/admin/logout", &[("csrf", &me.csrf)]).await;
    assert_eq!(got, 303);
    let (got, _) = me.get("/admin").await;
    assert_eq!(got, 303);

    // Guessing: each wrong key waits, and after 5 the address is held back, right key or not.
    let started = Instant::now();
    for _ in 0..5 {
        let r = anon
            .post(format!("{base}/admin/login"))
            .form(&[("key", "guess")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
    }
    assert!(
        started.elapsed() >= Duration::from_millis(5 * 400),
        "failures are slowed down"
    );
    let r = anon
        .post(format!("{base}/admin/login"))
        .form(&[("key", KEY)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(
        r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    assert!(r.text().await.unwrap().contains("Too many failed logins"));

    let log = sys.server_log();
    assert!(log.contains("failed administrator login"), "{log}");
    let session_id = me.cookie.trim_start_matches("cloudvpp_admin=");
    assert!(
        !log.contains(KEY) && !log.contains(session_id),
        "a secret in the log"
    );
}
