//! End-to-end tests of the engine assigning licences: `cloudvpp serve` (both services, one
//! database) on 127.0.0.1, driven through the command line as an operator would: licences
//! bought with `appsbooks assets add`, the location's app list, people invited and
//! accepting their invitation links, assignments followed to their end. SQLite by default,
//! PostgreSQL with `CLOUDVPP_TEST_POSTGRES_URL`.

mod common;

use cloudvpp_simulator::accept_invitation;
use common::Env;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const KEY: &str = "licences-test-key";
const ORG: &str = "Acme Schools";
/// An app of the service's catalogue.
const APP: &str = "408709785";
/// Another app.
const OTHER_APP: &str = "361309726";

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

/// Starts `cloudvpp serve` with fast polling and syncs, then `extra`, on free ports or on
/// `ports` (Apps and Books, MDM); returns the process and both base URLs.
fn spawn(
    env: &Env,
    extra: &[String],
    ports: Option<(&str, &str)>,
) -> (std::process::Child, String, String) {
    use std::io::BufRead;
    let ca = env.dir.path().join("ca.pem");
    let mut child = std::process::Command::new(common::BIN)
        .args(["serve", "--api-key", KEY])
        .args([
            "--appsbooks-listen",
            ports.map_or("127.0.0.1:0", |p| p.0),
            "--mdm-listen",
            ports.map_or("127.0.0.1:0", |p| p.1),
        ])
        .args(["--ca", ca.to_str().unwrap(), "--database", &env.db()])
        .args(["--status-poll-ms", "200", "--sync-interval-ms", "1000"])
        // After kill -9 another instance takes over the dead one's work soon.
        .args(["--lease-ms", "3000"])
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
        let pki = cloudvpp_simulator::Pki::generate().unwrap();
        std::fs::write(env.dir.path().join("ca.pem"), &pki.ca_cert_pem).unwrap();
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

    /// A second MDM service with its engine, on this system's database.
    fn second_mdm(&self) -> common::Server {
        let ca = self.env.dir.path().join("ca.pem");
        let extra = [
            "--status-poll-ms",
            "200",
            "--sync-interval-ms",
            "1000",
            "--engine-lease-ms",
            "3000",
        ];
        self.env
            .spawn(&common::mdm_serve_args(KEY, ca.to_str().unwrap(), &extra))
    }

    /// Runs `cloudvpp ARGS` against this system (database, MDM URL and admin key from the
    /// environment, as an operator sets them); (success, stdout, stderr).
    fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = std::process::Command::new(common::BIN)
            .args(args)
            .env("CLOUDVPP_DATABASE", self.env.db())
            .env("CLOUDVPP_MDM_URL", &self.mdm)
            .env("CLOUDVPP_API_KEY", KEY)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    }

    /// As [`Self::cli`], which must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.cli(args);
        assert!(ok, "{args:?}: {err}");
        out
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

    /// The organisation, added as the engine's location with `mdm location add`; its sToken.
    fn location(&self) -> String {
        let token = self.env.org(ORG);
        let file = self.env.dir.path().join("acme.vpptoken");
        std::fs::write(&file, &token).unwrap();
        let out = self.ok(&[
            "mdm",
            "location",
            "add",
            "--json",
            "--stoken-file",
            file.to_str().unwrap(),
            "--appsbooks-url",
            &format!("{}/mdm/v2", self.ab),
        ]);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["notifications"]["subscribed"], true, "{v}");
        token
    }

    fn buy(&self, adam_id: &str, count: i64) {
        let count = count.to_string();
        self.ok(&[
            "appsbooks",
            "assets",
            "add",
            "--org",
            ORG,
            "--adam-id",
            adam_id,
            "--count",
            &count,
        ]);
    }

    /// Invites `people` by email only (`cloudvpp invite --csv`), and each accepts the link.
    async fn invite_and_accept(&self, people: &[String]) {
        let csv = self.env.dir.path().join("people.csv");
        let mut text = "client_user_id,email\n".to_string();
        for p in people {
            text.push_str(&format!("{p},{p}@example.com\n"));
        }
        std::fs::write(&csv, text).unwrap();
        self.ok(&["invite", "--csv", csv.to_str().unwrap()]);
        let mut links = HashMap::new();
        until("invitation links", 60, async || {
            let (_, v) = self
                .api(
                    reqwest::Method::GET,
                    "/api/v1/invitations?limit=100000",
                    None,
                )
                .await;
            for i in v["invitations"].as_array().unwrap() {
                if let Some(url) = i["invitation_url"].as_str() {
                    links.insert(
                        i["client_user_id"].as_str().unwrap().to_string(),
                        url.to_string(),
                    );
                }
            }
            people.iter().all(|p| links.contains_key(p))
        })
        .await;
        for p in people {
            accept_invitation(&self.http, &links[p], &format!("{p}@people.example"))
                .await
                .unwrap();
        }
        until("everyone associated", 60, async || {
            let (_, v) = self
                .api(
                    reqwest::Method::GET,
                    "/api/v1/invitations?state=associated&limit=100000",
                    None,
                )
                .await;
            let associated = v["invitations"].as_array().unwrap();
            people
                .iter()
                .all(|p| associated.iter().any(|i| i["client_user_id"] == p.as_str()))
        })
        .await;
    }

    /// `cloudvpp assignments --json`: the assignments by person (of one app), and the counts.
    fn assignments(&self, adam_id: &str) -> (HashMap<String, Value>, Value) {
        let v: Value = serde_json::from_str(&self.ok(&[
            "assignments",
            "--adam-id",
            adam_id,
            "--limit",
            "100000",
            "--json",
        ]))
        .unwrap();
        let by_person = v["assignments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| (a["client_user_id"].as_str().unwrap().to_string(), a.clone()))
            .collect();
        (by_person, v["counts"].clone())
    }

    fn states(&self, adam_id: &str) -> HashMap<String, usize> {
        let mut n = HashMap::new();
        for a in self.assignments(adam_id).0.values() {
            *n.entry(a["state"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        n
    }

    /// GET `path` of the Apps and Books service, waiting out 9646 (the engine shares the
    /// organisation's request budget).
    async fn ab_get(&self, token: &str, path: &str) -> Value {
        loop {
            let r = self
                .http
                .get(format!("{}/mdm/v2{path}", self.ab))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            let v = r.json::<Value>().await.unwrap();
            if v["errorNumber"] == 9646 {
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
            assert!(v["errorNumber"].is_null(), "{path}: {v}");
            return v;
        }
    }

    /// The asset as the Apps and Books service counts it.
    async fn asset(&self, token: &str, adam_id: &str) -> Value {
        self.ab_get(token, &format!("/assets?adamId={adam_id}"))
            .await["assets"][0]
            .clone()
    }

    /// The people the Apps and Books service lists as holding `adam_id`.
    async fn holders(&self, token: &str, adam_id: &str) -> Vec<String> {
        let v = self
            .ab_get(token, &format!("/assignments?adamId={adam_id}"))
            .await;
        assert!(v["nextPageIndex"].is_null(), "one page: {v}");
        let mut people: Vec<String> = v["assignments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["clientUserId"].as_str().unwrap().to_string())
            .collect();
        people.sort();
        people
    }
}

async fn until<F: AsyncFnMut() -> bool>(what: &str, secs: u64, mut f: F) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn people(n: usize, prefix: &str) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix}-{i}")).collect()
}

/// Five licences, seven people: five assigned, two waiting with Apple's 9709 (and not
/// retried in a loop); two more licences bought: the ASSET_COUNT notification brings the
/// two waiting ones in at once, long before the slow re-check (10 minutes here).
#[tokio::test(flavor = "multi_thread")]
async fn seven_people_five_licences_then_two_more() {
    let sys = System::start(&["--licence-recheck-ms", "600000"]);
    let token = sys.location();
    sys.buy(APP, 5);
    let out = sys.ok(&["mdm", "location", "apps", "add", "--adam-id", APP]);
    assert!(out.contains(APP), "{out}");
    let list = sys.ok(&["mdm", "location", "apps", "list"]);
    assert!(list.contains(APP) && list.contains("STDQ"), "{list}");

    let staff = people(7, "teacher");
    sys.invite_and_accept(&staff).await;
    until("five assigned and two waiting", 60, async || {
        let n = sys.states(APP);
        n.get("assigned") == Some(&5) && n.get("waiting") == Some(&2)
    })
    .await;
    let (all, counts) = sys.assignments(APP);
    assert_eq!(all.len(), 7, "one assignment per person");
    assert_eq!(counts["assigned"], 5, "{counts}");
    for a in all.values().filter(|a| a["state"] == "waiting") {
        assert_eq!(a["error_number"], 9709, "{a}");
        assert!(
            a["reason"].as_str().unwrap().starts_with("9709 "),
            "Apple's number and message: {a}"
        );
    }
    // The table names them too.
    let table = sys.ok(&["assignments", "--state", "waiting"]);
    assert_eq!(
        table.lines().filter(|l| l.contains("9709")).count(),
        2,
        "{table}"
    );
    assert!(table.starts_with("assigned 5, waiting 2"), "{table}");
    // The service agrees: five holders, no licence free.
    let holders = sys.holders(&token, APP).await;
    assert_eq!(holders.len(), 5);
    let asset = sys.asset(&token, APP).await;
    assert_eq!(
        (
            asset["assignedCount"].as_i64(),
            asset["availableCount"].as_i64()
        ),
        (Some(5), Some(0))
    );
    // Waiting is not a retry loop: nothing is sent again while no licence is bought.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (all, _) = sys.assignments(APP);
    for a in all.values() {
        assert_eq!(a["attempts"], 1, "sent once: {a}");
    }

    sys.buy(APP, 2);
    until("all seven assigned", 30, async || {
        sys.states(APP).get("assigned") == Some(&7)
    })
    .await;
    let (all, _) = sys.assignments(APP);
    for a in all.values() {
        assert!(a["error_number"].is_null(), "{a}");
    }
    let waited: Vec<&Value> = all.values().filter(|a| a["attempts"] == 2).collect();
    assert_eq!(waited.len(), 2, "the two waiting ones were sent once more");
    let mut everyone = staff.clone();
    everyone.sort();
    assert_eq!(sys.holders(&token, APP).await, everyone);
    let asset = sys.asset(&token, APP).await;
    assert_eq!(
        (
            asset["assignedCount"].as_i64(),
            asset["availableCount"].as_i64()
        ),
        (Some(7), Some(0))
    );
}

/// `cloudvpp assign` for one invited person by email, for a CSV, refusals of people never
/// invited; an app added to the list later reaches people already associated; removing it
/// keeps their licences; admin API bounds.
#[tokio::test(flavor = "multi_thread")]
async fn assign_by_hand_and_apps_added_later() {
    let sys = System::start(&[]);
    let token = sys.location();
    sys.buy(APP, 10);
    sys.buy(OTHER_APP, 1);
    let team = people(3, "dev");
    sys.invite_and_accept(&team).await;
    // Nothing on the list yet: no assignment.
    assert!(sys.assignments(APP).0.is_empty());

    // One person, by email, waiting until it is assigned.
    let out = sys.ok(&[
        "assign",
        "--adam-id",
        OTHER_APP,
        "--email",
        "dev-2@example.com",
        "--wait",
    ]);
    assert!(
        out.contains("1 assigned, 0 waiting for licences, 0 failed"),
        "{out}"
    );
    assert_eq!(sys.holders(&token, OTHER_APP).await, ["dev-2"]);
    // Again for someone else: no licence left, so it waits.
    let out = sys.ok(&[
        "assign",
        "--adam-id",
        OTHER_APP,
        "--client-user-id",
        "dev-3",
        "--wait",
    ]);
    assert!(out.contains("0 assigned, 1 waiting for licences"), "{out}");
    // People never invited are refused by name, and the command fails.
    let csv = sys.env.dir.path().join("assign.csv");
    std::fs::write(
        &csv,
        "client_user_id,email\ndev-1,\nstranger,\n,nobody@example.com\n",
    )
    .unwrap();
    let (ok, _, err) = sys.cli(&["assign", "--adam-id", APP, "--csv", csv.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("stranger: not invited"), "{err}");
    assert!(err.contains("nobody@example.com: not invited"), "{err}");
    assert!(err.contains("2 people refused"), "{err}");
    // With --json: the assignments requested and the people refused, as one document.
    let (ok, out, _) = sys.cli(&[
        "assign",
        "--adam-id",
        APP,
        "--csv",
        csv.to_str().unwrap(),
        "--json",
    ]);
    assert!(!ok);
    let doc: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(doc["refused"].as_array().unwrap().len(), 2, "{doc}");
    assert!(
        doc["assignments"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["client_user_id"] == "dev-1"),
        "{doc}"
    );
    until("dev-1 assigned by hand", 30, async || {
        sys.assignments(APP)
            .0
            .get("dev-1")
            .is_some_and(|a| a["state"] == "assigned")
    })
    .await;

    // The app on the location's list: the two others get it, dev-1 keeps the one it has.
    let out = sys.ok(&[
        "mdm",
        "location",
        "apps",
        "add",
        "--location",
        "1",
        "--adam-id",
        APP,
    ]);
    assert!(
        out.contains("2 people already associated get it now"),
        "{out}"
    );
    until("everyone assigned", 30, async || {
        sys.states(APP).get("assigned") == Some(&3)
    })
    .await;
    assert_eq!(sys.holders(&token, APP).await, ["dev-1", "dev-2", "dev-3"]);
    sys.ok(&["mdm", "location", "apps", "remove", "--adam-id", APP]);
    let list = sys.ok(&["mdm", "location", "apps", "list"]);
    assert!(!list.contains(APP), "{list}");
    assert_eq!(sys.states(APP).get("assigned"), Some(&3), "licences stay");
    let (ok, _, err) = sys.cli(&["mdm", "location", "apps", "remove", "--adam-id", APP]);
    assert!(!ok && err.contains("not on location 1's list"), "{err}");

    // Hostile or wrong input is refused before anything is stored.
    for (path, body) in [
        (
            "/api/v1/assignments",
            json!({"adam_id": "12ab", "client_user_ids": ["dev-1"]}),
        ),
        ("/api/v1/assignments", json!({"adam_id": APP})),
        (
            "/api/v1/assignments",
            json!({"adam_id": APP, "client_user_ids": [""]}),
        ),
        (
            "/api/v1/assignments",
            json!({"adam_id": APP, "client_user_ids": ["dev-1"], "extra": 1}),
        ),
        (
            "/api/v1/assignments",
            json!({"adam_id": APP, "client_user_ids": vec!["x"; 10_001]}),
        ),
        ("/api/v1/locations/1/apps", json!({"adam_id": "../1"})),
        (
            "/api/v1/locations/1/apps",
            json!({"adam_id": APP, "pricing_param": "GOLD"}),
        ),
    ] {
        let (status, v) = sys.api(reqwest::Method::POST, path, Some(body)).await;
        assert_eq!(status, 400, "{path}: {v}");
    }
    let (status, _) = sys
        .api(
            reqwest::Method::POST,
            "/api/v1/locations/99/apps",
            Some(json!({"adam_id": APP})),
        )
        .await;
    assert_eq!(status, 404);
    // Without the admin key: nothing.
    let r = sys
        .http
        .get(format!("{}/api/v1/assignments", sys.mdm))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let (status, v) = sys
        .api(
            reqwest::Method::GET,
            "/api/v1/assignments?state=sleeping",
            None,
        )
        .await;
    assert_eq!(
        (status, v["assignments"].as_array().map(Vec::len)),
        (200, Some(0))
    );
}

/// Every notification lost (ASSET_MANAGEMENT, ASSET_COUNT, USER_ASSOCIATED): status
/// polling settles each assignment, and the slow periodic re-check finds the licences
/// bought, without any loop in between.
#[tokio::test(flavor = "multi_thread")]
async fn without_notifications_polling_and_the_periodic_recheck_finish_the_work() {
    let sys = System::start(&[
        "--drop-notifications-percent",
        "100",
        "--licence-recheck-ms",
        "3000",
    ]);
    let token = sys.location();
    sys.buy(APP, 2);
    sys.ok(&["mdm", "location", "apps", "add", "--adam-id", APP]);
    let crew = people(3, "crew");
    sys.invite_and_accept(&crew).await;
    until("two assigned, one waiting", 60, async || {
        let n = sys.states(APP);
        n.get("assigned") == Some(&2) && n.get("waiting") == Some(&1)
    })
    .await;
    // Several re-checks pass with no licence free: it is looked at, not sent again.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let (all, _) = sys.assignments(APP);
    let waiting: Vec<&Value> = all.values().filter(|a| a["state"] == "waiting").collect();
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0]["attempts"], 1, "{}", waiting[0]);
    sys.buy(APP, 1);
    until("the third assigned by the re-check", 30, async || {
        sys.states(APP).get("assigned") == Some(&3)
    })
    .await;
    let mut crew = crew.clone();
    crew.sort();
    assert_eq!(sys.holders(&token, APP).await, crew);
}

/// Two MDM instances run engines on one database; the one holding the location is killed
/// while Apple is still processing the associate request it sent. The other takes the
/// assignments over when their leases run out and follows the same event: one associate
/// request in all, each assignment sent once, every licence assigned once.
#[tokio::test(flavor = "multi_thread")]
async fn two_engines_and_a_kill_send_each_assignment_once() {
    const N: usize = 40;
    // Apps and Books spends 50 ms a target: the associate event is still PENDING at the kill.
    let mut sys = System::start(&["--processing-delay-ms", "50"]);
    let mut second = Some(sys.second_mdm());
    let token = sys.location();
    sys.buy(APP, N as i64);
    let crowd = people(N, "p");
    sys.invite_and_accept(&crowd).await;
    // Everyone is associated: the app added now goes to all of them in one request.
    let out = sys.ok(&["mdm", "location", "apps", "add", "--adam-id", APP]);
    assert!(
        out.contains(&format!("{N} people already associated")),
        "{out}"
    );
    until("the associate request sent", 30, async || {
        sys.env
            .sql_i64("SELECT COUNT(*) FROM engine_assignments WHERE event_id IS NOT NULL")
            .await
            == N as i64
    })
    .await;
    const ASSOCIATES: &str = "SELECT COUNT(*) FROM events WHERE event_type = 'ASSOCIATE'";
    assert_eq!(
        sys.env.sql_i64(ASSOCIATES).await,
        1,
        "one engine sends the batch"
    );
    let holds = |pid: u32| {
        format!("SELECT COUNT(*) FROM engine_locations WHERE lease_owner LIKE 'engine-{pid}-%'")
    };
    let (first_pid, second_pid) = (sys.child.id(), second.as_ref().unwrap().child.id());
    let a_holds = sys.env.sql_i64(&holds(first_pid)).await == 1;
    let b_holds = sys.env.sql_i64(&holds(second_pid)).await == 1;
    assert!(a_holds ^ b_holds, "exactly one instance holds the location");
    if a_holds {
        // It also runs the Apps and Books service: it comes back on the same ports.
        sys.crash_and_restart();
    } else {
        second.take().unwrap().kill9();
    }
    until("all assigned after the kill", 90, async || {
        sys.states(APP).get("assigned") == Some(&N)
    })
    .await;
    assert_eq!(sys.env.sql_i64(ASSOCIATES).await, 1, "nothing sent twice");
    let (all, _) = sys.assignments(APP);
    assert!(all.values().all(|a| a["attempts"] == 1), "each sent once");
    let mut everyone = crowd.clone();
    everyone.sort();
    assert_eq!(sys.holders(&token, APP).await, everyone);
    let asset = sys.asset(&token, APP).await;
    assert_eq!(asset["assignedCount"].as_i64(), Some(N as i64));
    drop(second);
}
