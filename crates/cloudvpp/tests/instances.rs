//! Several instances of a service on one database (issue 5): work is handed out once, a
//! crashed instance's work is finished by the other, and `sinceVersionId` stays exact.
//! Runs on SQLite by default and on PostgreSQL with `CLOUDVPP_TEST_POSTGRES_URL`.

mod common;

use cloudvpp_abclient::{Client, UsersQuery};
use common::{users, Env, Receiver};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

const FLAGS: &[&str] = &[
    "--processing-delay-ms",
    "15",
    "--lease-ms",
    "1500",
    "--notification-retry-ms",
    "300,300",
    "--limit",
    "maxRequestPerSecond=100000",
];

#[tokio::test(flavor = "multi_thread")]
async fn two_appsbooks_instances_share_the_work_and_survive_kill_9() {
    let env = Env::new();
    let token = env.org("Shared");
    let a = env.serve(FLAGS);
    let b = env.serve(FLAGS);
    let rx = Receiver::default();
    let running = rx.start().await;
    let (status, body) = a
        .post(&token, "/mdm/v2/client/config", json!({"notificationUrl": running.url, "notificationAuthToken": "t", "notificationTypes": ["USER_MANAGEMENT"]}))
        .await;
    assert_eq!(status, 200, "{body}");

    // Phase 1, both alive: 10 events of 10 users, accepted by either instance.
    let mut events = Vec::new();
    for e in 0..10 {
        let srv = if e % 2 == 0 { &a } else { &b };
        events.push(
            srv.manage(&token, "create", users(e * 10..e * 10 + 10, "u"))
                .await,
        );
    }
    for ev in &events {
        assert_eq!(b.wait_event(&token, ev).await["numCompleted"], 10);
    }
    let first = rx.wait_for("USER_MANAGEMENT", 10).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let ids: Vec<String> = rx
        .of_type("USER_MANAGEMENT")
        .iter()
        .map(|n| n.body["notificationId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ids.len(),
        10,
        "each notification sent once while both instances run: {}",
        first.len()
    );

    // Phase 2: 10 more events, then instance A dies with work in its hands.
    let mut more = Vec::new();
    for e in 10..20 {
        let srv = if e % 2 == 0 { &a } else { &b };
        more.push(
            srv.manage(&token, "create", users(e * 10..e * 10 + 10, "u"))
                .await,
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.kill9();
    for ev in &more {
        let st = b.wait_event(&token, ev).await;
        assert_eq!(
            (st["eventStatus"].as_str(), st["numCompleted"].as_u64()),
            (Some("COMPLETE"), Some(10)),
            "{st}"
        );
    }
    let (all, _) = b.all_users(&token, "").await;
    let unique: HashSet<&str> = all
        .iter()
        .map(|u| u["clientUserId"].as_str().unwrap())
        .collect();
    assert_eq!((all.len(), unique.len()), (200, 200), "every user once");
    // Every event's notification arrives (a send cut by the crash may arrive twice).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got: HashSet<String> = rx
            .of_type("USER_MANAGEMENT")
            .iter()
            .map(|n| {
                n.body["notification"]["eventId"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        if events.iter().chain(more.iter()).all(|e| got.contains(e)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "notifications lost: {} of 20 events reported",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn since_version_syncs_miss_nothing_while_two_instances_write() {
    let env = Env::new();
    let token = env.org("Racing");
    let flags = [
        "--limit",
        "maxRequestPerSecond=100000",
        "--limit",
        "maxUsers=1000",
    ];
    let (a, b) = (env.serve(&flags), env.serve(&flags));
    let ev = a.manage(&token, "create", users(0..300, "r")).await;
    a.wait_event(&token, &ev).await;
    let (_, first) = a.get(&token, "/mdm/v2/users").await;
    let mut version = first["versionId"].as_str().unwrap().to_string();
    let mut mirror: HashMap<String, Value> = HashMap::new();
    let (all, _) = a.all_users(&token, "").await;
    for u in all {
        mirror.insert(u["clientUserId"].as_str().unwrap().to_string(), u);
    }
    // Writers on both instances: email updates, and people accepting invitations.
    let writers = {
        let (a_url, b_url, token) = (a.base.clone(), b.base.clone(), token.clone());
        let codes: Vec<String> = mirror
            .values()
            .filter_map(|u| u["inviteCode"].as_str().map(str::to_string))
            .take(100)
            .collect();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            for round in 0..10 {
                for (i, base) in [&a_url, &b_url].iter().enumerate() {
                    let users: Vec<Value> = (0..30).map(|k| json!({"clientUserId": format!("r-{}", (round * 30 + k) % 300), "email": format!("round{round}-{i}@example.com")})).collect();
                    let _ = http
                        .post(format!("{base}/mdm/v2/users/update"))
                        .bearer_auth(&token)
                        .json(&json!({"users": users}))
                        .send()
                        .await;
                }
                for (k, code) in codes.iter().enumerate().skip(round * 10).take(10) {
                    let base = if k % 2 == 0 { &a_url } else { &b_url };
                    let _ = http
                        .post(format!("{base}/invite/accept"))
                        .json(&json!({"inviteCode": code, "appleId": format!("p{k}@icloud.com")}))
                        .send()
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        })
    };
    // A client syncing with sinceVersionId the whole time, from either instance.
    let clients = [
        Client::new(&format!("{}/mdm/v2", a.base), &token),
        Client::new(&format!("{}/mdm/v2", b.base), &token),
    ];
    let mut round = 0;
    loop {
        let done = writers.is_finished();
        version = sync_since(&clients[round % 2], version, &mut mirror).await;
        round += 1;
        if done {
            // Let the last events finish, then one final sync below.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sync_since(&clients[0], version, &mut mirror).await;
    assert!(round > 3, "the syncs raced the writers");
    let (truth, _) = b.all_users(&token, "").await;
    assert_eq!(truth.len(), 300);
    let associated = truth.iter().filter(|u| u["status"] == "Associated").count();
    assert_eq!(associated, 100);
    for u in &truth {
        let id = u["clientUserId"].as_str().unwrap();
        assert_eq!(
            &mirror[id], u,
            "the sinceVersionId chain missed a change of {id}"
        );
    }
}

/// Applies every change since `version` to `mirror`, as an MDM does; returns the next version.
async fn sync_since(c: &Client, version: String, mirror: &mut HashMap<String, Value>) -> String {
    let q = UsersQuery {
        since_version_id: Some(version),
        ..Default::default()
    };
    let (changed, next) = c.all_users(&q, 3).await.unwrap();
    for u in changed {
        let u = serde_json::to_value(u).unwrap();
        mirror.insert(u["clientUserId"].as_str().unwrap().to_string(), u);
    }
    next
}

fn pki() -> &'static cloudvpp_simulator::Pki {
    static PKI: std::sync::OnceLock<cloudvpp_simulator::Pki> = std::sync::OnceLock::new();
    PKI.get_or_init(|| cloudvpp_simulator::Pki::generate().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn two_mdm_instances_hand_each_command_out_once_and_survive_kill_9() {
    use cloudvpp_simulator::{SimDevice, SimPlatform};
    let env = Env::new();
    let ca = env.dir.path().join("ca.pem");
    std::fs::write(&ca, &pki().ca_cert_pem).unwrap();
    let args = [
        "mdm",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--api-key",
        "k",
        "--ca",
        ca.to_str().unwrap(),
    ];
    let a = env.spawn(&args);
    let b = env.spawn(&args);
    let http = reqwest::Client::new();
    let specs: Vec<_> = (0..10)
        .map(|_| pki().new_device(SimPlatform::Ios).unwrap())
        .collect();
    let on = |spec: &cloudvpp_simulator::DeviceSpec, base: &str| {
        SimDevice::new(spec.clone(), &pki().device_key_pem, base, http.clone()).unwrap()
    };
    for s in &specs {
        on(s, &a.base).enroll().await.unwrap();
    }
    let ids: Vec<String> = specs.iter().map(|s| s.id.clone()).collect();
    for i in 0..5 {
        let body = format!(
            r#"<?xml version="1.0"?><plist version="1.0"><dict><key>Command</key><dict><key>RequestType</key><string>DeviceInformation</string></dict><key>CommandUUID</key><string>C{i}</string></dict></plist>"#
        );
        let r = http
            .put(format!(
                "{}/api/v1/enqueue/{}?nopush=1",
                b.base,
                ids.join(",")
            ))
            .bearer_auth("k")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // Each device alternates between the instances for every message; halfway A dies.
    let mut received: HashMap<String, Vec<String>> = HashMap::new();
    let mut a = Some(a);
    for (n, spec) in specs.iter().enumerate() {
        if n == 5 {
            a.take().unwrap().kill9();
        }
        let bases: Vec<String> = match &a {
            Some(a) => vec![a.base.clone(), b.base.clone()],
            None => vec![b.base.clone()],
        };
        let mut turn = n;
        let mut next = on(spec, &bases[turn % bases.len()])
            .report(
                false,
                on(spec, &b.base).report_body(false, "Idle", None, &[]),
            )
            .await
            .unwrap();
        while let Some(cmd) = next {
            let uuid = cmd["CommandUUID"].as_string().unwrap().to_string();
            received
                .entry(spec.id.clone())
                .or_default()
                .push(uuid.clone());
            turn += 1;
            let dev = on(spec, &bases[turn % bases.len()]);
            next = dev
                .report(
                    false,
                    dev.report_body(false, "Acknowledged", Some(&uuid), &[]),
                )
                .await
                .unwrap();
        }
    }
    let want: Vec<String> = (0..5).map(|i| format!("C{i}")).collect();
    for id in &ids {
        assert_eq!(received[id], want, "{id}: every command once, in order");
        let v: Value = http
            .get(format!("{}/api/v1/enrollments/{id}/commands", b.base))
            .bearer_auth("k")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(
            v["commands"]
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c["status"] == "Acknowledged"),
            "{v}"
        );
    }
}

/// Idle check-ins of a device whose queue is known empty are answered from memory (issue
/// 13), and the memory stays exact when another instance queues a command: on SQLite the
/// processes share the signals' mapped file, on PostgreSQL they hear each other through
/// LISTEN/NOTIFY (delivered within milliseconds: the device is given up to 2 s there).
#[tokio::test(flavor = "multi_thread")]
async fn idle_answers_from_memory_stay_exact_across_instances() {
    use cloudvpp_simulator::{SimDevice, SimPlatform};
    let env = Env::new();
    let on_postgres = env.postgres_db().is_some();
    let ca = env.dir.path().join("ca.pem");
    std::fs::write(&ca, &pki().ca_cert_pem).unwrap();
    let args = common::mdm_serve_args("k", ca.to_str().unwrap(), &[]);
    let a = env.spawn(&args);
    let b = env.spawn(&args);
    let http = reqwest::Client::new();
    let spec = pki().new_device(SimPlatform::Ios).unwrap();
    let dev = SimDevice::new(spec.clone(), &pki().device_key_pem, &a.base, http.clone()).unwrap();
    dev.enroll().await.unwrap();
    let idle = || async {
        dev.report(false, dev.report_body(false, "Idle", None, &[]))
            .await
            .unwrap()
    };
    let from_memory = || async {
        let text = http
            .get(format!("{}/metrics", a.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find(|l| l.starts_with("cloudvpp_mdm_idle_answers_total{from=\"memory\"}"))
            .map_or(0.0, |l| {
                l.rsplit(' ').next().unwrap().parse::<f64>().unwrap()
            })
    };
    for round in 0..3 {
        // The queue is read once; the next idle check-ins are answered from memory (on
        // PostgreSQL once the listener is up, which may take a moment after start).
        let before = from_memory().await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(idle().await.is_none(), "round {round}: nothing queued yet");
            if from_memory().await >= before + 3.0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: idle answers never came from memory"
            );
        }
        // B queues a command; A, which remembers the queue empty, must hand it out.
        let uuid = format!("C{round}");
        let body = format!(
            r#"<?xml version="1.0"?><plist version="1.0"><dict><key>Command</key><dict><key>RequestType</key><string>DeviceInformation</string></dict><key>CommandUUID</key><string>{uuid}</string></dict></plist>"#
        );
        let r = http
            .put(format!("{}/api/v1/enqueue/{}?nopush=1", b.base, spec.id))
            .bearer_auth("k")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let deadline = Instant::now() + Duration::from_secs(2);
        let cmd = loop {
            if let Some(cmd) = idle().await {
                break cmd;
            }
            assert!(
                on_postgres && Instant::now() < deadline,
                "round {round}: the command queued on the other instance was not handed out"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(cmd["CommandUUID"].as_string(), Some(uuid.as_str()));
        // Not acknowledged yet: still offered, never answered "empty" from memory.
        let again = idle()
            .await
            .expect("an unanswered command is offered again");
        assert_eq!(again["CommandUUID"].as_string(), Some(uuid.as_str()));
        let next = dev
            .report(
                false,
                dev.report_body(false, "Acknowledged", Some(&uuid), &[]),
            )
            .await
            .unwrap();
        assert!(next.is_none());
    }
}

/// `maxRequestPerSecond` is the organisation's budget whichever instance a request reaches:
/// a burst split over two instances within one second gets exactly the budget, not twice it.
#[tokio::test(flavor = "multi_thread")]
async fn two_appsbooks_instances_share_one_request_budget() {
    const BUDGET: usize = 4;
    let env = Env::new();
    let token = env.org("Budget");
    let flags = ["--limit", "maxRequestPerSecond=4"];
    let servers = [env.serve(&flags), env.serve(&flags)];
    let clock = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
    };
    for attempt in 0.. {
        assert!(attempt < 10, "no burst fitted in one second in 10 attempts");
        // Start just after a second begins, so the burst fits in that second.
        let into = clock().subsec_millis() as u64;
        tokio::time::sleep(Duration::from_millis(1000 - into + 20)).await;
        let started = clock().as_secs();
        let mut burst = tokio::task::JoinSet::new();
        for i in 0..16 {
            let srv = &servers[i % 2];
            let req = srv.http.get(srv.url("/mdm/v2/users")).bearer_auth(&token);
            burst.spawn(async move {
                let r = req.send().await.unwrap();
                let status = r.status().as_u16();
                (status, r.json::<Value>().await.unwrap())
            });
        }
        let answers = burst.join_all().await;
        if clock().as_secs() != started {
            continue; // the burst crossed into the next second: its count is split
        }
        let ok = answers.iter().filter(|(s, _)| *s == 200).count();
        for (status, body) in &answers {
            assert!(
                *status == 200 || (*status == 429 && body["errorNumber"] == 9646),
                "{status} {body}"
            );
        }
        assert_eq!(ok, BUDGET, "16 requests over two instances in one second");
        return;
    }
}

/// PostgreSQL over TLS, set in the URL as libpq does: with `sslmode=require` every connection
/// the service holds is encrypted; with `sslmode=verify-full` and a root certificate that did
/// not sign the server's, the service refuses to start and says why.
/// Needs the PostgreSQL run of the suite (`CLOUDVPP_TEST_POSTGRES_URL`); on SQLite it says so.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_connections_use_tls_when_the_url_asks() {
    let env = Env::new();
    let Some(db) = env.postgres_db() else {
        eprintln!("not run: PostgreSQL TLS needs CLOUDVPP_TEST_POSTGRES_URL");
        return;
    };
    assert_eq!(
        env.psql_rows("SHOW ssl"),
        "on",
        "this test needs a PostgreSQL server with ssl = on (Debian's default)"
    );
    let token = env.org("Tls");
    let srv = env.spawn_on(
        &format!("{db}?sslmode=require"),
        &["appsbooks", "serve", "--listen", "127.0.0.1:0"],
    );
    let (status, body) = srv.get(&token, "/mdm/v2/users").await;
    assert_eq!(status, 200, "{body}");
    let others = "a.datname = current_database() AND a.pid <> pg_backend_pid()";
    let counts = env.psql_rows(&format!(
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl)
         FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE {others}"
    ));
    let (tls, plain) = counts.split_once('|').unwrap();
    assert!(
        tls.parse::<u32>().unwrap() >= 1,
        "no TLS connection: {counts}"
    );
    assert_eq!(plain, "0", "a plain connection remains: {counts}");
    drop(srv);

    let ca = rcgen::generate_simple_self_signed(vec!["not-this-server".to_string()]).unwrap();
    let ca_path = env.dir.path().join("wrong-root.pem");
    std::fs::write(&ca_path, ca.cert.pem()).unwrap();
    let out = std::process::Command::new(common::BIN)
        .args([
            "appsbooks",
            "org",
            "create",
            "--name",
            "Refused",
            "--database",
        ])
        .arg(format!(
            "{db}?sslmode=verify-full&sslrootcert={}",
            ca_path.display()
        ))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "connected without a trusted certificate"
    );
    assert!(stderr.contains("certificate"), "unclear error: {stderr}");
    assert_eq!(
        env.psql_rows("SELECT count(*) FROM orgs WHERE name = 'Refused'"),
        "0"
    );
}
