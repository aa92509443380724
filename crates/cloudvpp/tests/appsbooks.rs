//! End-to-end tests of the Apps and Books service: the real binary over HTTP on
//! 127.0.0.1, storing in a real SQLite file.

mod common;

use common::{users, Env, Receiver};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::Duration;

fn ids(users: &[Value]) -> Vec<String> {
    users
        .iter()
        .map(|u| u["clientUserId"].as_str().unwrap().to_string())
        .collect()
}

/// The managing-users seed document, end to end.
#[tokio::test(flavor = "multi_thread")]
async fn seed_document_examples_reproduce() {
    let env = Env::new();
    let token = env.org("ORG12345");
    let srv = env.serve(&[]);

    // Service config needs no auth and advertises our URLs and Apple's limits.
    let cfg: Value = srv
        .http
        .get(srv.url("/mdm/v2/service/config"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        cfg["urls"]["invitationEmail"],
        format!("{}/invite?inviteCode=%25inviteCode%25&mt=8", srv.base)
    );
    assert_eq!(
        cfg["urls"]["getUsers"],
        format!("{}/mdm/v2/users", srv.base)
    );
    assert_eq!(cfg["limits"]["maxUsers"], 100);
    assert_eq!(cfg["limits"]["maxRequestPerSecond"], 15);
    assert_eq!(cfg["limits"]["maxMdmIdLength"], 100);
    assert!(cfg["errorCodes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["errorNumber"] == 9722));
    assert!(cfg["notificationTypes"]
        .as_array()
        .unwrap()
        .contains(&json!("USER_ASSOCIATED")));

    // Create client-1 and client-2 as in the seed.
    let (status, created) = srv
        .post(
            &token,
            "/mdm/v2/users/create",
            json!({"users": [
            {"clientUserId": "client-1", "email": "client-1@apple.com"},
            {"clientUserId": "client-2", "email": "client-2@apple.com"}]}),
        )
        .await;
    assert_eq!(status, 200);
    let event_id = created["eventId"].as_str().unwrap();
    assert_eq!(event_id.len(), 36);
    assert_eq!(created["uId"].as_str().unwrap().len(), 16);
    assert!(created["tokenExpirationDate"]
        .as_str()
        .unwrap()
        .ends_with("+0000"));
    let done = srv.wait_event(&token, event_id).await;
    assert_eq!(done["eventStatus"], "COMPLETE");
    assert_eq!(done["eventType"], "CREATE");
    assert_eq!(
        (done["numCompleted"].as_u64(), done["numRequested"].as_u64()),
        (Some(2), Some(2))
    );

    let (status, page) = srv.get(&token, "/mdm/v2/users").await;
    assert_eq!(status, 200);
    assert_eq!(page["currentPageIndex"], 0);
    assert_eq!(page["totalPages"], 1);
    assert_eq!(page["size"], 2);
    assert!(page.get("nextPageIndex").is_none());
    assert!(page["versionId"].as_str().is_some());
    for u in page["users"].as_array().unwrap() {
        assert_eq!(u["status"], "Registered");
        assert_eq!(u["inviteCode"].as_str().unwrap().len(), 32);
        assert!(u.get("idHash").is_none());
    }

    // Update (as the seed's update example) and retire.
    let ev = srv
        .manage(
            &token,
            "update",
            json!([{"clientUserId": "client-1", "email": "client-1-new@apple.com"}]),
        )
        .await;
    assert_eq!(srv.wait_event(&token, &ev).await["eventStatus"], "COMPLETE");
    let ev = srv
        .manage(&token, "retire", json!([{"clientUserId": "client-2"}]))
        .await;
    let st = srv.wait_event(&token, &ev).await;
    assert_eq!(
        (st["eventStatus"].as_str(), st["eventType"].as_str()),
        (Some("COMPLETE"), Some("RETIRE"))
    );

    let (_, one) = srv.get(&token, "/mdm/v2/users?clientUserId=client-1").await;
    assert_eq!(one["users"].as_array().unwrap().len(), 1);
    assert_eq!(one["users"][0]["email"], "client-1-new@apple.com");
    let (_, retired) = srv.get(&token, "/mdm/v2/users?retiredOnly=true").await;
    assert_eq!(ids(retired["users"].as_array().unwrap()), vec!["client-2"]);
    assert!(
        retired["users"][0].get("inviteCode").is_none(),
        "a retired user shows no invite code, as in the seed"
    );
    let (_, active) = srv.get(&token, "/mdm/v2/users?activeOnly=true").await;
    assert_eq!(ids(active["users"].as_array().unwrap()), vec!["client-1"]);

    // Creating a retired clientUserId again adds a second record.
    let ev = srv
        .manage(
            &token,
            "create",
            json!([{"clientUserId": "client-2", "email": "client-2@apple.com"}]),
        )
        .await;
    assert_eq!(srv.wait_event(&token, &ev).await["eventStatus"], "COMPLETE");
    let (_, both) = srv.get(&token, "/mdm/v2/users?clientUserId=client-2").await;
    let statuses: Vec<&str> = both["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, vec!["Retired", "Registered"]);
}

/// The service reckons by its config's clock (here one held still, started in-process):
/// moved past a token's expiry, the same token turns from accepted to 9621 at once, with no
/// waiting and no token made to expire in the past.
#[tokio::test(flavor = "multi_thread")]
async fn token_expiry_follows_the_services_clock() {
    let env = Env::new();
    let in_an_hour = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let token = env.cli(&[
        "appsbooks",
        "org",
        "create",
        "--name",
        "Soon",
        "--expires",
        &in_an_hour,
    ]);
    let (mut config, listeners, base) = common::appsbooks_in_process(&["--database", &env.db()]);
    let clock = std::sync::Arc::new(cloudvpp_store::clock::ManualClock::now());
    config.clock = clock.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(cloudvpp::server::serve_with_listener(
        config,
        listeners,
        async move {
            let _ = stopped.await;
        },
    ));
    let http = reqwest::Client::new();
    let get = |auth: String| {
        http.get(format!("{base}/mdm/v2/client/config"))
            .header("Authorization", auth)
            .send()
    };
    let auth = format!("Bearer {}", token.trim());
    let r = get(auth.clone()).await.unwrap();
    assert_eq!(r.status(), 200);
    clock.advance(Duration::from_secs(3601));
    let r = get(auth).await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["errorNumber"], 9621);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn authentication_errors_are_apples() {
    let env = Env::new();
    let token = env.org("A");
    let expired = env.cli(&[
        "appsbooks",
        "org",
        "create",
        "--name",
        "Old",
        "--expires",
        "2020-01-01T00:00:00Z",
    ]);
    let srv = env.serve(&[]);
    let url = srv.url("/mdm/v2/users");

    let r = srv.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["errorNumber"], 9722);
    let r = srv
        .http
        .get(&url)
        .header("Authorization", format!("Basic {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["errorNumber"], 9722);
    // The decoded inner token is not the credential: only the whole sToken is.
    let (status, body) = srv.get("bm90LWEtdG9rZW4=", "/mdm/v2/users").await;
    assert_eq!((status, body["errorNumber"].as_u64()), (401, Some(9601)));
    let (status, body) = srv.get(expired.trim(), "/mdm/v2/users").await;
    assert_eq!((status, body["errorNumber"].as_u64()), (401, Some(9621)));

    let renewed = env
        .cli(&["appsbooks", "org", "renew", "--org", "A"])
        .trim()
        .to_string();
    let (status, body) = srv.get(&token, "/mdm/v2/users").await;
    assert_eq!((status, body["errorNumber"].as_u64()), (401, Some(9625)));
    assert_eq!(body["errorMessage"], "The server has revoked the sToken.");
    let (status, _) = srv.get(&renewed, "/mdm/v2/users").await;
    assert_eq!(status, 200);
    let listing = env.cli(&["appsbooks", "org", "list"]);
    assert!(
        listing.lines().any(|l| l.ends_with(" A")) && listing.lines().any(|l| l.ends_with(" Old")),
        "{listing}"
    );

    // Organisations are isolated.
    let other = env.org("B");
    let ev = srv.manage(&renewed, "create", users(0..3, "a")).await;
    srv.wait_event(&renewed, &ev).await;
    let (_, b_users) = srv.get(&other, "/mdm/v2/users").await;
    assert_eq!(b_users["size"], 0);
    let (status, body) = srv
        .get(&other, &format!("/mdm/v2/status?eventId={ev}"))
        .await;
    assert_eq!((status, body["errorNumber"].as_u64()), (400, Some(9708)));
    assert_ne!(
        b_users["uId"],
        srv.get(&renewed, "/mdm/v2/users").await.1["uId"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn synchronous_errors_process_nothing() {
    let env = Env::new();
    let token = env.org("O");
    // More than Apple's 15 requests a second go out here: the rate limit is not under test.
    let srv = env.serve(&[
        "--limit",
        "maxUsers=2",
        "--limit",
        "maxRequestPerSecond=100000",
    ]);
    let (_, before) = srv.get(&token, "/mdm/v2/users").await;

    let cases = [
        (
            json!({"users": [{"clientUserId": "a"}, {"clientUserId": "b"}, {"clientUserId": "c"}]}),
            9714,
        ),
        (
            json!({"users": [{"clientUserId": "a"}, {"clientUserId": "a"}]}),
            9715,
        ),
        (
            json!({"users": [{"clientUserId": "a", "email": "not-an-email"}]}),
            9717,
        ),
        (json!({}), 9720),
        (json!({"users": []}), 9720),
        (json!({"users": "x"}), 9602),
        (json!({"users": [{"email": "a@b.com"}]}), 9602),
    ];
    for (body, number) in cases {
        for action in ["create", "update", "retire"] {
            let (status, err) = srv
                .post(&token, &format!("/mdm/v2/users/{action}"), body.clone())
                .await;
            assert_eq!(
                (status, err["errorNumber"].as_u64()),
                (400, Some(number)),
                "{action} {body}"
            );
            assert!(err["errorMessage"].as_str().unwrap().len() > 10);
        }
    }
    let r = srv
        .http
        .post(srv.url("/mdm/v2/users/create"))
        .bearer_auth(&token)
        .body("{not json")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(
        (
            r.status().as_u16(),
            r.json::<Value>().await.unwrap()["errorNumber"].as_u64()
        ),
        (400, Some(9602))
    );
    let r = srv
        .http
        .post(srv.url("/mdm/v2/users/create"))
        .bearer_auth(&token)
        .body(r#"{"users":[{"clientUserId":"a"}]}"#)
        .header("content-type", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(
        (
            r.status().as_u16(),
            r.json::<Value>().await.unwrap()["errorNumber"].as_u64()
        ),
        (415, Some(9727))
    );
    let (status, err) = srv.get(&token, "/mdm/v2/users/create").await;
    assert_eq!((status, err["errorNumber"].as_u64()), (405, Some(9726)));
    let r = srv
        .http
        .put(srv.url("/mdm/v2/status"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let (status, err) = srv.get(&token, "/mdm/v2/status?eventId=nope").await;
    assert_eq!((status, err["errorNumber"].as_u64()), (400, Some(9708)));
    let (status, err) = srv.get(&token, "/mdm/v2/users?pageIndex=1").await;
    assert_eq!((status, err["errorNumber"].as_u64()), (400, Some(9650)));
    let (status, err) = srv.get(&token, "/mdm/v2/users?pageIndex=-1").await;
    assert_eq!((status, err["errorNumber"].as_u64()), (400, Some(9650)));
    let (status, err) = srv
        .get(
            &token,
            "/mdm/v2/users?sinceVersionId=021f10a0-7035-11eb-9f67-bd1df52e1e13",
        )
        .await;
    assert_eq!((status, err["errorNumber"].as_u64()), (400, Some(9721)));
    let (status, err) = srv.get(&token, "/mdm/v2/users?activeOnly=maybe").await;
    assert_eq!((status, err["errorNumber"].as_u64()), (400, Some(9602)));

    // Nothing was processed: same data set, same version.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, after) = srv.get(&token, "/mdm/v2/users").await;
    assert_eq!(after["size"], 0);
    assert_eq!(after["versionId"], before["versionId"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn asynchronous_failures_name_the_users() {
    let env = Env::new();
    let token = env.org("O");
    let srv = env.serve(&[]);
    let ev = srv
        .manage(
            &token,
            "create",
            json!([
        {"clientUserId": "u1", "email": "u1@example.com"},
        {"clientUserId": "m1", "managedAppleId": "m1@corp.example"}]),
        )
        .await;
    assert_eq!(srv.wait_event(&token, &ev).await["eventStatus"], "COMPLETE");
    let (_, m1) = srv.get(&token, "/mdm/v2/users?clientUserId=m1").await;
    assert_eq!(m1["users"][0]["status"], "Associated");
    let hash = m1["users"][0]["idHash"].as_str().unwrap();
    assert_eq!(hash.len(), 28, "base64 of 20 bytes");
    assert!(m1["users"][0].get("inviteCode").is_none());

    // 9716 for the active u1, 9641 for the managed Apple Account in use; u2 succeeds.
    let ev = srv
        .manage(
            &token,
            "create",
            json!([
        {"clientUserId": "u1"}, {"clientUserId": "u2"},
        {"clientUserId": "m2", "managedAppleId": "M1@corp.example"}]),
        )
        .await;
    let st = srv.wait_event(&token, &ev).await;
    assert_eq!(st["eventStatus"], "FAILED");
    assert_eq!(
        (st["numCompleted"].as_u64(), st["numRequested"].as_u64()),
        (Some(1), Some(3))
    );
    let failures = st["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 2);
    assert_eq!(failures[0]["errorNumber"], 9716);
    assert_eq!(failures[0]["errorInfo"]["clientUserIds"], json!(["u1"]));
    assert_eq!(
        failures[0]["errorMessage"],
        "A registered user already exists with the specified clientUserId."
    );
    assert_eq!(failures[1]["errorNumber"], 9641);
    assert_eq!(failures[1]["errorInfo"]["clientUserIds"], json!(["m2"]));

    // Update/retire of unknown users: 9609.
    for action in ["update", "retire"] {
        let ev = srv
            .manage(
                &token,
                action,
                json!([{"clientUserId": "ghost"}, {"clientUserId": "u2"}]),
            )
            .await;
        let st = srv.wait_event(&token, &ev).await;
        assert_eq!(st["eventStatus"], "FAILED", "{action}");
        assert_eq!(st["failures"][0]["errorNumber"], 9609);
        assert_eq!(
            st["failures"][0]["errorInfo"]["clientUserIds"],
            json!(["ghost"])
        );
        assert_eq!(st["numCompleted"], 1);
    }
    // Update with a managed Apple Account associates a Registered user.
    let ev = srv
        .manage(
            &token,
            "update",
            json!([{"clientUserId": "u1", "managedAppleId": "u1@corp.example"}]),
        )
        .await;
    assert_eq!(srv.wait_event(&token, &ev).await["eventStatus"], "COMPLETE");
    let (_, u1) = srv.get(&token, "/mdm/v2/users?clientUserId=u1").await;
    assert_eq!(u1["users"][0]["status"], "Associated");
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_and_versions_are_exact() {
    let env = Env::new();
    let token = env.org("O");
    let srv = env.serve(&["--page-size", "3"]);
    let ev = srv.manage(&token, "create", users(0..10, "p")).await;
    srv.wait_event(&token, &ev).await;

    let (_, first) = srv.get(&token, "/mdm/v2/users").await;
    assert_eq!(
        (
            first["totalPages"].as_u64(),
            first["nextPageIndex"].as_u64(),
            first["size"].as_u64()
        ),
        (Some(4), Some(1), Some(3))
    );
    let (_, last) = srv.get(&token, "/mdm/v2/users?pageIndex=3").await;
    assert_eq!(last["size"], 1);
    assert!(last.get("nextPageIndex").is_none());
    let (all, version) = srv.all_users(&token, "").await;
    assert_eq!(
        ids(&all),
        (0..10).map(|i| format!("p-{i}")).collect::<Vec<_>>()
    );

    // No change since: an empty, valid answer with the same version.
    let (status, none) = srv
        .get(&token, &format!("/mdm/v2/users?sinceVersionId={version}"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        (none["size"].as_u64(), none["totalPages"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(none["versionId"], version.as_str());

    // Exactly the changes since, retirements included.
    let ev = srv
        .manage(
            &token,
            "retire",
            json!([{"clientUserId": "p-1"}, {"clientUserId": "p-8"}]),
        )
        .await;
    srv.wait_event(&token, &ev).await;
    let ev = srv
        .manage(
            &token,
            "update",
            json!([{"clientUserId": "p-4", "email": "new@example.com"}]),
        )
        .await;
    srv.wait_event(&token, &ev).await;
    let ev = srv.manage(&token, "create", users(10..12, "p")).await;
    srv.wait_event(&token, &ev).await;
    let (changed, v2) = srv
        .all_users(&token, &format!("sinceVersionId={version}"))
        .await;
    let got: HashSet<String> = ids(&changed).into_iter().collect();
    let want: HashSet<String> = ["p-1", "p-8", "p-4", "p-10", "p-11"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(got, want);
    assert_eq!(changed.len(), 5, "no record twice");
    let retired: Vec<&Value> = changed
        .iter()
        .filter(|u| u["status"] == "Retired")
        .collect();
    assert_eq!(retired.len(), 2);
    // Filters combine with versions.
    let (active_changes, _) = srv
        .all_users(&token, &format!("sinceVersionId={version}&activeOnly=true"))
        .await;
    assert_eq!(active_changes.len(), 3);
    let (again, _) = srv.all_users(&token, &format!("sinceVersionId={v2}")).await;
    assert!(again.is_empty());
    // A version of another organisation is refused.
    let other = env.org("P");
    let (status, err) = srv
        .get(&other, &format!("/mdm/v2/users?sinceVersionId={version}"))
        .await;
    assert_eq!((status, err["errorNumber"].as_u64()), (400, Some(9721)));
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_answers_9646_with_retry_after() {
    let env = Env::new();
    let token = env.org("O");
    let srv = env.serve(&["--limit", "maxRequestPerSecond=3"]);
    let mut limited = 0;
    for _ in 0..12 {
        let r = srv
            .http
            .get(srv.url("/mdm/v2/users"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            assert_eq!(r.headers()["retry-after"], "1");
            assert_eq!(r.json::<Value>().await.unwrap()["errorNumber"], 9646);
            limited += 1;
        }
    }
    assert!(limited >= 6, "only {limited} of 12 requests were limited");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(srv.get(&token, "/mdm/v2/users").await.0, 200);
    // Limits can change while the service runs, and service config shows the new value.
    env.cli(&["appsbooks", "limits", "set", "maxRequestPerSecond=1000"]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..20 {
        assert_eq!(srv.get(&token, "/mdm/v2/users").await.0, 200);
    }
    let cfg: Value = srv
        .http
        .get(srv.url("/mdm/v2/service/config"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cfg["limits"]["maxRequestPerSecond"], 1000);
}

#[tokio::test(flavor = "multi_thread")]
async fn client_config_validates_and_tests_the_url() {
    let env = Env::new();
    let token = env.org("Location One");
    let rx = Receiver::default();
    let running = rx.start().await;

    // Without the local-development flag, only HTTPS is accepted.
    {
        let mut strict = std::process::Command::new(common::BIN)
            .args([
                "appsbooks",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--database",
                &env.db(),
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(strict.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let base = line.trim().rsplit(' ').next().unwrap().to_string();
        let r: Value = reqwest::Client::new()
            .post(format!("{base}/mdm/v2/client/config"))
            .bearer_auth(&token)
            .json(&json!({"notificationUrl": running.url, "notificationAuthToken": "s3cret"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["errorNumber"], 9712);
        strict.kill().unwrap();
        strict.wait().unwrap();
    }

    let srv = env.serve(&[]);
    let cc = "/mdm/v2/client/config";
    let long = "x".repeat(600);
    let cases = [
        (json!({"notificationUrl": running.url}), 9710),
        (json!({"notificationAuthToken": "t"}), 9710),
        (
            json!({"notificationUrl": running.url, "notificationAuthToken": long}),
            9711,
        ),
        (
            json!({"notificationUrl": "not a url", "notificationAuthToken": "t"}),
            9712,
        ),
        (json!({"mdmInfo": {"id": "x", "name": "y"}}), 9723),
        (
            json!({"mdmInfo": {"id": "x".repeat(101), "name": "y", "metadata": "z"}}),
            9724,
        ),
        (
            json!({"mdmInfo": {"id": "x", "name": "y".repeat(101), "metadata": "z"}}),
            9725,
        ),
        (
            json!({"mdmInfo": {"id": "x", "name": "y", "metadata": "z".repeat(256)}}),
            9713,
        ),
        (json!({"notificationTypes": ["NOPE"]}), 9602),
        (
            json!({"notificationUrl": "http://127.0.0.1:9/unreachable", "notificationAuthToken": "t"}),
            9728,
        ),
    ];
    for (body, number) in cases {
        let (status, err) = srv.post(&token, cc, body.clone()).await;
        assert_eq!(
            (status, err["errorNumber"].as_u64()),
            (400, Some(number)),
            "{body}"
        );
    }
    // A URL that answers 500 to the test notification is refused too, and nothing is stored.
    *rx.fail_next.lock().unwrap() = 1;
    let (_, err) = srv
        .post(
            &token,
            cc,
            json!({"notificationUrl": running.url, "notificationAuthToken": "t"}),
        )
        .await;
    assert_eq!(err["errorNumber"], 9728);
    let (_, current) = srv.get(&token, cc).await;
    assert!(current.get("notificationUrl").is_none());
    assert!(current.get("mdmInfo").is_none());
    assert_eq!(current["locationName"], "Location One");

    let (status, set) = srv
        .post(
            &token,
            cc,
            json!({
            "mdmInfo": {"id": "522d5c43-mdm", "name": "Apple Configurator 2", "metadata": "2.13.3"},
            "notificationAuthToken": "SUp3rS3Cr3t", "notificationUrl": running.url,
            "notificationTypes": ["USER_MANAGEMENT", "USER_ASSOCIATED"]}),
        )
        .await;
    assert_eq!(status, 200, "{set}");
    assert_eq!(
        set["subscribedNotificationTypes"],
        json!(["USER_MANAGEMENT", "USER_ASSOCIATED"])
    );
    assert_eq!(set["notificationAuthToken"], "SUp3rS3Cr3t");
    let test = rx.wait_for("TEST_NOTIFICATION", 1).await;
    assert_eq!(test[0].authorization.as_deref(), Some("Bearer SUp3rS3Cr3t"));
    assert_eq!(test[0].body["notification"], json!({}));
    assert_eq!(test[0].body["uId"], set["uId"]);
    // mdmInfo now rides on every authenticated response.
    let (_, page) = srv.get(&token, "/mdm/v2/users").await;
    assert_eq!(page["mdmInfo"]["id"], "522d5c43-mdm");
    let ev = srv.manage(&token, "create", users(0..1, "x")).await;
    let st = srv.wait_event(&token, &ev).await;
    assert_eq!(st["mdmInfo"]["name"], "Apple Configurator 2");
}

/// Subscribes `token`'s organisation to user notifications at `url` and waits for the test notification.
async fn configured(srv: &common::Server, token: &str, rx: &Receiver, url: &str) {
    let (status, body) = srv
        .post(
            token,
            "/mdm/v2/client/config",
            json!({
            "notificationAuthToken": "tok", "notificationUrl": url,
            "notificationTypes": ["USER_MANAGEMENT", "USER_ASSOCIATED"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    rx.wait_for("TEST_NOTIFICATION", 1).await;
}

/// One organisation on a fresh service started with `extra`, subscribed to user
/// notifications delivered to a running receiver.
struct Subscribed {
    env: Env,
    token: String,
    srv: common::Server,
    rx: Receiver,
    running: common::RunningReceiver,
}

async fn subscribed(extra: &[&str]) -> Subscribed {
    let env = Env::new();
    let token = env.org("O");
    let srv = env.serve(extra);
    let rx = Receiver::default();
    let running = rx.start().await;
    configured(&srv, &token, &rx, &running.url).await;
    Subscribed {
        env,
        token,
        srv,
        rx,
        running,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn user_management_notifications_split_by_hundred() {
    let Subscribed {
        env: _env,
        token,
        srv,
        rx,
        running: _running,
    } = subscribed(&["--limit", "maxUsers=250"]).await;

    let ev = srv.manage(&token, "create", users(0..150, "n")).await;
    srv.wait_event(&token, &ev).await;
    let got = rx.wait_for("USER_MANAGEMENT", 2).await;
    let mut seen = Vec::new();
    for n in &got {
        assert_eq!(n.authorization.as_deref(), Some("Bearer tok"));
        let p = &n.body["notification"];
        assert_eq!(
            (
                p["eventId"].as_str(),
                p["type"].as_str(),
                p["result"].as_str()
            ),
            (Some(ev.as_str()), Some("CREATE"), Some("SUCCESS"))
        );
        let us = p["users"].as_array().unwrap();
        assert!(us.len() <= 100);
        assert!(us
            .iter()
            .all(|u| u["status"] == "Registered" && u["inviteCode"].is_string()));
        seen.extend(ids(us));
    }
    assert_eq!(seen.len(), 150);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 150);

    // A failing event sends FAILURE with the error naming the users.
    let ev = srv
        .manage(&token, "retire", json!([{"clientUserId": "ghost"}]))
        .await;
    srv.wait_event(&token, &ev).await;
    let got = rx.wait_for("USER_MANAGEMENT", 3).await;
    let failure = got
        .iter()
        .find(|n| n.body["notification"]["eventId"] == ev.as_str())
        .unwrap();
    assert_eq!(failure.body["notification"]["result"], "FAILURE");
    assert_eq!(failure.body["notification"]["type"], "RETIRE");
    assert_eq!(failure.body["notification"]["error"]["errorNumber"], 9609);
    assert_eq!(
        failure.body["notification"]["error"]["errorInfo"]["clientUserIds"],
        json!(["ghost"])
    );
    let ids_seen: HashSet<String> = rx
        .received
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.body["notificationId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ids_seen.len(),
        rx.received.lock().unwrap().len(),
        "notificationIds are unique"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn notifications_are_retried_three_times_at_most() {
    let Subscribed {
        env: _env,
        token,
        srv,
        rx,
        running: _running,
    } = subscribed(&["--notification-retry-ms", "100,200"]).await;

    // Two failures, then delivered on the third attempt.
    *rx.attempts.lock().unwrap() = 0;
    *rx.fail_next.lock().unwrap() = 2;
    let ev = srv.manage(&token, "create", users(0..1, "r")).await;
    srv.wait_event(&token, &ev).await;
    rx.wait_for("USER_MANAGEMENT", 1).await;
    assert_eq!(*rx.attempts.lock().unwrap(), 3);

    // Always failing: exactly three attempts, then the service gives up.
    *rx.attempts.lock().unwrap() = 0;
    *rx.fail_always.lock().unwrap() = true;
    let ev = srv.manage(&token, "create", users(1..2, "r")).await;
    srv.wait_event(&token, &ev).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(*rx.attempts.lock().unwrap(), 3);
    assert_eq!(rx.of_type("USER_MANAGEMENT").len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn dropped_notifications_fault_setting_drops_them() {
    let Subscribed {
        env: _env,
        token,
        srv,
        rx,
        running: _running,
    } = subscribed(&["--drop-notifications-percent", "100"]).await;
    let ev = srv.manage(&token, "create", users(0..5, "d")).await;
    assert_eq!(srv.wait_event(&token, &ev).await["eventStatus"], "COMPLETE");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(rx.of_type("USER_MANAGEMENT").is_empty());
    // The event itself is unaffected: status and Get Users still tell the result.
    assert_eq!(srv.get(&token, "/mdm/v2/users").await.1["size"], 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn invitation_page_associates_the_person() {
    let env = Env::new();
    let token = env.org("Acme Schools");
    let other_token = env.org("Other Org");
    let srv = env.serve(&[]);
    let rx = Receiver::default();
    let running = rx.start().await;
    configured(&srv, &token, &rx, &running.url).await;
    let ev = srv.manage(&token, "create", users(0..3, "i")).await;
    srv.wait_event(&token, &ev).await;
    let ev2 = srv.manage(&other_token, "create", users(0..1, "o")).await;
    srv.wait_event(&other_token, &ev2).await;
    let (_, page) = srv.get(&token, "/mdm/v2/users").await;
    let code = |i: usize| page["users"][i]["inviteCode"].as_str().unwrap().to_string();
    let cfg: Value = srv
        .http
        .get(srv.url("/mdm/v2/service/config"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let link = cfg["urls"]["invitationEmail"]
        .as_str()
        .unwrap()
        .replace("%25inviteCode%25", &code(0));

    // The page from the template link shows a form.
    let r = srv.http.get(&link).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    assert!(
        html.contains("Acme Schools")
            && html.contains("name=\"appleId\"")
            && html.contains(&code(0))
    );

    // Accepting through the form.
    let r = srv
        .http
        .post(srv.url("/invite"))
        .form(&[
            ("inviteCode", code(0).as_str()),
            ("appleId", "Pat@icloud.com"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, u) = srv.get(&token, "/mdm/v2/users?clientUserId=i-0").await;
    assert_eq!(u["users"][0]["status"], "Associated");
    let hash = u["users"][0]["idHash"].as_str().unwrap().to_string();
    assert_eq!(hash.len(), 28);
    assert_eq!(
        u["users"][0]["inviteCode"],
        code(0).as_str(),
        "an associated user keeps its invite code"
    );
    let assoc = rx.wait_for("USER_ASSOCIATED", 1).await;
    let au = &assoc[0].body["notification"]["associatedUsers"][0];
    assert_eq!(
        (
            au["clientUserId"].as_str(),
            au["status"].as_str(),
            au["idHash"].as_str()
        ),
        (Some("i-0"), Some("Associated"), Some(hash.as_str()))
    );

    // The same code again: a clear refusal.
    let r = srv
        .http
        .get(srv.url(&format!("/invite?inviteCode={}", code(0))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    assert!(r.text().await.unwrap().contains("already been accepted"));
    // Unknown code.
    let r = srv
        .http
        .get(srv.url("/invite?inviteCode=0000"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // The same Apple Account cannot be two active users of one organisation.
    let accept = |code: String, account: &str| {
        srv.http
            .post(srv.url("/invite/accept"))
            .json(&json!({"inviteCode": code, "appleId": account}))
            .send()
    };
    let r = accept(code(1), "pat@icloud.com").await.unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "account_in_use");
    // JSON form for scripts.
    let r = accept(code(1), "sam@icloud.com").await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "Associated");
    // Bad input.
    let r = accept(code(2), "not an account").await.unwrap();
    assert_eq!(r.status(), 400);
    let r = srv
        .http
        .post(srv.url("/invite/accept"))
        .body("garbage")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // The same account in another organisation gets another idHash.
    let (_, o) = srv.get(&other_token, "/mdm/v2/users").await;
    let r = accept(
        o["users"][0]["inviteCode"].as_str().unwrap().to_string(),
        "pat@icloud.com",
    )
    .await
    .unwrap();
    let other_hash = r.json::<Value>().await.unwrap()["idHash"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(other_hash, hash);
    // A retired user's invitation is withdrawn.
    let ev = srv
        .manage(&token, "retire", json!([{"clientUserId": "i-2"}]))
        .await;
    srv.wait_event(&token, &ev).await;
    let r = srv
        .http
        .get(srv.url(&format!("/invite?inviteCode={}", code(2))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 410);
}

#[tokio::test(flavor = "multi_thread")]
async fn accepted_events_survive_kill_9() {
    let env = Env::new();
    let token = env.org("O");
    // A short lease: the restarted instance takes the dead one's event when it runs out.
    let srv = env.serve(&["--processing-delay-ms", "20", "--lease-ms", "2000"]);
    let ev = srv.manage(&token, "create", users(0..100, "k")).await;
    // Let it get part of the way.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, st) = srv
            .get(&token, &format!("/mdm/v2/status?eventId={ev}"))
            .await;
        let n = st["numCompleted"].as_u64().unwrap();
        if n >= 5 {
            assert_eq!(st["eventStatus"], "PENDING");
            assert!(n < 100);
            break;
        }
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    srv.kill9();

    let srv = env.serve(&["--lease-ms", "2000"]);
    let st = srv.wait_event(&token, &ev).await;
    assert_eq!(st["eventStatus"], "COMPLETE");
    assert_eq!(st["numCompleted"], 100);
    let (all, _) = srv.all_users(&token, "").await;
    assert_eq!(all.len(), 100, "every user once, none twice");
}

#[tokio::test(flavor = "multi_thread")]
async fn undelivered_notifications_are_sent_after_restart() {
    let Subscribed {
        env,
        token,
        srv,
        rx,
        running,
    } = subscribed(&["--notification-retry-ms", "1500,1500", "--lease-ms", "2000"]).await;
    let addr = running.addr;
    *rx.fail_always.lock().unwrap() = true;
    let ev = srv.manage(&token, "create", users(0..2, "z")).await;
    srv.wait_event(&token, &ev).await;
    // First attempt failed; crash before the retry.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while *rx.attempts.lock().unwrap() < 2 {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    srv.kill9();
    drop(running);
    *rx.fail_always.lock().unwrap() = false;
    let _running = rx.start_on(&addr.to_string()).await;
    // The crash may come while an attempt is in flight: that notification stays leased to
    // the dead instance until its lease (2 s here) runs out, then the new one sends it.
    let _srv = env.serve(&["--notification-retry-ms", "1500,1500", "--lease-ms", "2000"]);
    let got = rx.wait_for("USER_MANAGEMENT", 1).await;
    assert_eq!(got[0].body["notification"]["eventId"], ev.as_str());
    assert_eq!(
        got[0].body["notification"]["users"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_https_with_rustls() {
    let env = Env::new();
    let token = env.org("O");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_path = env.dir.path().join("cert.pem");
    let key_path = env.dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let srv = env.serve(&[
        "--tls-cert",
        cert_path.to_str().unwrap(),
        "--tls-key",
        key_path.to_str().unwrap(),
    ]);
    assert!(srv.base.starts_with("https://127.0.0.1:"));
    let port = srv.base.rsplit(':').next().unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .resolve("localhost", format!("127.0.0.1:{port}").parse().unwrap())
        .build()
        .unwrap();
    let r = client
        .get(format!("https://localhost:{port}/mdm/v2/users"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["totalPages"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn public_url_is_what_service_config_advertises() {
    let env = Env::new();
    let srv = env.serve(&["--public-url", "https://vpp.example.test/"]);
    let cfg: Value = srv
        .http
        .get(srv.url("/mdm/v2/service/config"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        cfg["urls"]["createUsers"],
        "https://vpp.example.test/mdm/v2/users/create"
    );
    assert_eq!(
        cfg["urls"]["eventStatus"],
        "https://vpp.example.test/mdm/v2/status"
    );
    assert_eq!(
        cfg["urls"]["invitationEmail"],
        "https://vpp.example.test/invite?inviteCode=%25inviteCode%25&mt=8"
    );
}

/// A database the service cannot reach is answered at once (not after a long pool wait)
/// with Apple's 503 body and `Retry-After`, and no database text; when the database is
/// back the service serves again by itself. PostgreSQL only: the database is closed to
/// connections and the service's connections are ended.
#[tokio::test(flavor = "multi_thread")]
async fn unreachable_database_gets_503_at_once_and_the_service_recovers() {
    let env = Env::new();
    let Some(name) = env.postgres_name() else {
        eprintln!("not run: an unreachable database needs CLOUDVPP_TEST_POSTGRES_URL");
        return;
    };
    let token = env.org("O");
    let srv = env.serve(&[]);
    assert_eq!(srv.get(&token, "/mdm/v2/users").await.0, 200);

    env.pg_admin(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"));
    env.pg_admin(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    ));
    let requests = [
        srv.http.get(srv.url("/mdm/v2/users")),
        srv.http.get(srv.url("/mdm/v2/status?eventId=e")),
        srv.http.get(srv.url("/mdm/v2/client/config")),
        srv.http
            .post(srv.url("/mdm/v2/users/create"))
            .json(&json!({"users": [{"clientUserId": "a"}]})),
    ];
    for req in requests {
        let started = std::time::Instant::now();
        let r = req.bearer_auth(&token).send().await.unwrap();
        let took = started.elapsed();
        assert!(took < Duration::from_secs(5), "answered after {took:?}");
        assert_eq!(r.status(), 503);
        let after: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&after));
        let text = r.text().await.unwrap();
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["errorNumber"], 9729, "{text}");
        assert_eq!(
            body["errorMessage"],
            "The service is temporarily unavailable. Try again later."
        );
        let lower = text.to_lowercase();
        for leak in ["database", "sql", "postgres", "pool", "connection", &name] {
            assert!(!lower.contains(leak), "{leak:?} in {text}");
        }
    }

    env.pg_admin(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"));
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let r = srv
            .http
            .get(srv.url("/mdm/v2/users"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still {}", r.status());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Writes and the event worker are back too.
    let ev = srv.manage(&token, "create", users(0..2, "back")).await;
    assert_eq!(srv.wait_event(&token, &ev).await["eventStatus"], "COMPLETE");
}

/// Text a database cannot hold (NUL: PostgreSQL refuses it) or that is longer than the
/// documented limits is refused when the request arrives, on every write taking it, with
/// Apple's error; nothing is stored. The longest accepted values are stored and read back.
#[tokio::test(flavor = "multi_thread")]
async fn input_the_database_cannot_hold_is_refused_synchronously() {
    let env = Env::new();
    let token = env.org("O");
    let srv = env.serve(&[]);
    let (_, before) = srv.get(&token, "/mdm/v2/users").await;
    let long = |n: usize| "é".repeat(n);
    let email = |n: usize| format!("{}@b.co", "a".repeat(n - 5));
    let mut cases = vec![
        (json!({"clientUserId": long(257)}), 9602),
        (json!({"clientUserId": "a", "email": email(255)}), 9717),
        (
            json!({"clientUserId": "a", "managedAppleId": email(321)}),
            9602,
        ),
    ];
    for bad in ["\u{0}", "\u{1}", "\n", "\u{7f}", "\u{85}", "\u{1b}[0m"] {
        cases.push((json!({"clientUserId": format!("a{bad}b")}), 9602));
        cases.push((
            json!({"clientUserId": "a", "email": format!("a{bad}@b.co")}),
            9717,
        ));
        cases.push((
            json!({"clientUserId": "a", "managedAppleId": format!("m{bad}@b.co")}),
            9602,
        ));
    }
    for (user, number) in &cases {
        for action in ["create", "update", "retire"] {
            let (status, err) = srv
                .post(
                    &token,
                    &format!("/mdm/v2/users/{action}"),
                    json!({"users": [{"clientUserId": "ok"}, user]}),
                )
                .await;
            assert_eq!(
                (status, err["errorNumber"].as_u64()),
                (400, Some(*number)),
                "{action} {user}"
            );
        }
    }
    // Reads and the other writes that take such text refuse it as well.
    let (status, err) = srv.get(&token, "/mdm/v2/users?clientUserId=a%00b").await;
    assert_eq!((status, err["errorNumber"].as_u64()), (400, Some(9602)));
    let (status, err) = srv.get(&token, "/mdm/v2/status?eventId=e%00").await;
    assert_eq!((status, err["errorNumber"].as_u64()), (400, Some(9602)));
    let cc = "/mdm/v2/client/config";
    let (status, err) = srv
        .post(
            &token,
            cc,
            json!({"notificationUrl": "https://example.com/n\u{0}", "notificationAuthToken": "t"}),
        )
        .await;
    assert_eq!((status, err["errorNumber"].as_u64()), (400, Some(9712)));
    let (status, err) = srv
        .post(
            &token,
            cc,
            json!({"notificationUrl": "https://example.com/n", "notificationAuthToken": "t\u{0}"}),
        )
        .await;
    assert_eq!((status, err["errorNumber"].as_u64()), (400, Some(9602)));
    let r = srv
        .http
        .get(srv.url("/invite?inviteCode=ab%00cd"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = srv
        .http
        .post(srv.url("/invite/accept"))
        .json(&json!({"inviteCode": "ab\u{0}cd", "appleId": "pat@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Nothing was stored.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, after) = srv.get(&token, "/mdm/v2/users").await;
    assert_eq!(after["size"], 0);
    assert_eq!(after["versionId"], before["versionId"]);
    let (_, cfg) = srv.get(&token, cc).await;
    assert!(cfg.get("notificationUrl").is_none());

    // The longest accepted values go through on both backends.
    let cuid = long(256);
    let ev = srv
        .manage(
            &token,
            "create",
            json!([{"clientUserId": cuid, "email": email(254)},
                   {"clientUserId": "m", "managedAppleId": email(320)}]),
        )
        .await;
    assert_eq!(srv.wait_event(&token, &ev).await["eventStatus"], "COMPLETE");
    let (status, got) = srv
        .get(&token, &format!("/mdm/v2/users?clientUserId={cuid}"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(got["users"][0]["clientUserId"], cuid.as_str());
    assert_eq!(got["users"][0]["email"], email(254).as_str());
}

/// An event step the database refuses every time (a trigger refusing one user's row here;
/// on PostgreSQL also a NUL accepted by an older version) fails that user with 9603 after a
/// few attempts; the event's other users are applied, and the organisation's later events
/// run. Before, such an event was retried for ever and held up every later event.
#[tokio::test(flavor = "multi_thread")]
async fn a_step_that_keeps_failing_fails_its_user_and_later_events_run() {
    let Subscribed {
        env,
        token,
        srv,
        rx,
        running: _running,
    } = subscribed(&[]).await;
    let poison = if env.postgres_name().is_some() {
        "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.client_user_id = 'poison' THEN RAISE EXCEPTION 'row refused'; END IF;
         RETURN NEW; END $$;
         CREATE TRIGGER poison BEFORE INSERT ON users FOR EACH ROW EXECUTE FUNCTION poison();"
    } else {
        "CREATE TRIGGER poison BEFORE INSERT ON users WHEN NEW.client_user_id = 'poison'
         BEGIN SELECT RAISE(ABORT, 'row refused'); END;"
    };
    env.sql(poison).await;
    if env.postgres_name().is_some() {
        // An event accepted before NUL was refused at the door: its users are JSON text,
        // which holds the escaped NUL, but the users table cannot.
        env.sql(
            r#"INSERT INTO events (org_id, event_id, event_type, status, users, num_requested, created_at)
               SELECT id, 'legacy-nul', 'CREATE', 'PENDING',
                      '[{"clientUserId":"nul\u0000id"},{"clientUserId":"legacy-ok"}]', 2, 0 FROM orgs"#,
        )
        .await;
    }
    let ev = srv
        .manage(
            &token,
            "create",
            json!([{"clientUserId": "a"}, {"clientUserId": "poison"}, {"clientUserId": "b"}]),
        )
        .await;
    let later = srv.manage(&token, "create", users(0..2, "later")).await;

    let st = srv.wait_event(&token, &ev).await;
    assert_eq!(st["eventStatus"], "FAILED", "{st}");
    assert_eq!(
        (st["numCompleted"].as_u64(), st["numRequested"].as_u64()),
        (Some(2), Some(3))
    );
    assert_eq!(st["failures"][0]["errorNumber"], 9603);
    assert_eq!(st["failures"][0]["errorMessage"], "Internal error.");
    assert_eq!(
        st["failures"][0]["errorInfo"]["clientUserIds"],
        json!(["poison"])
    );
    assert_eq!(st["failures"].as_array().unwrap().len(), 1);
    assert_eq!(
        srv.wait_event(&token, &later).await["eventStatus"],
        "COMPLETE"
    );
    let (all, _) = srv.all_users(&token, "").await;
    let mut got = ids(&all);
    got.sort();
    let mut want = vec!["a", "b", "later-0", "later-1"];
    if env.postgres_name().is_some() {
        let legacy = srv.wait_event(&token, "legacy-nul").await;
        assert_eq!(legacy["eventStatus"], "FAILED");
        assert_eq!(legacy["failures"][0]["errorNumber"], 9603);
        assert_eq!(
            legacy["failures"][0]["errorInfo"]["clientUserIds"],
            json!(["nul\u{0}id"])
        );
        want.push("legacy-ok");
        want.sort();
    }
    assert_eq!(got, want);
    // The subscriber hears of the failure too.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let failure = rx.of_type("USER_MANAGEMENT").into_iter().find(|n| {
            n.body["notification"]["eventId"] == ev.as_str()
                && n.body["notification"]["result"] == "FAILURE"
        });
        if let Some(n) = failure {
            assert_eq!(n.body["notification"]["error"]["errorNumber"], 9603);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no FAILURE notification"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Loopback, private, link-local, CGNAT, multicast and broadcast notification URLs are
/// refused in every spelling (decimal, hex, octal, short IPv4 forms, IPv6 and IPv4-mapped
/// IPv6, names resolving to them) with 9728, before anything is sent; the receiver on
/// 127.0.0.1 hears nothing. The same URL passes with `--allow-private-notification-urls`.
#[tokio::test(flavor = "multi_thread")]
async fn private_notification_urls_are_refused_in_every_spelling() {
    let env = Env::new();
    let token = env.org("O");
    let srv = env.serve_guarded(&[]);
    let rx = Receiver::default();
    let running = rx.start().await;
    let port = running.addr.port();
    let hosts = [
        "127.0.0.1",
        "2130706433",
        "0x7f000001",
        "0x7F.0.0.1",
        "0177.0.0.1",
        "017700000001",
        "127.1",
        "127.0.1",
        "0",
        "0.0.0.0",
        "localhost",
        "[::1]",
        "[::]",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "[0:0:0:0:0:ffff:127.0.0.1]",
        "[::ffff:0.0.0.0]",
        "[::127.0.0.1]",
        "[64:ff9b::7f00:1]",
        "10.0.0.1",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "0xa9fea9fe",
        "100.64.0.1",
        "224.0.0.1",
        "255.255.255.255",
        "[fe80::1]",
        "[fc00::1]",
        "[fd00::1]",
        "[ff02::1]",
        "[::ffff:169.254.169.254]",
        "[::ffff:10.0.0.1]",
    ];
    for host in hosts {
        let url = format!("http://{host}:{port}/notify");
        let started = std::time::Instant::now();
        let (status, err) = srv
            .post(
                &token,
                "/mdm/v2/client/config",
                json!({"notificationUrl": url, "notificationAuthToken": "t"}),
            )
            .await;
        assert_eq!(
            (status, err["errorNumber"].as_u64()),
            (400, Some(9728)),
            "{url}"
        );
        // Refused before any attempt, not after a connection timed out.
        assert!(started.elapsed() < Duration::from_secs(3), "{url}");
    }
    assert_eq!(*rx.attempts.lock().unwrap(), 0, "nothing was sent");
    let (_, cfg) = srv.get(&token, "/mdm/v2/client/config").await;
    assert!(cfg.get("notificationUrl").is_none());

    // The refused spellings do reach the receiver when private addresses are allowed.
    drop(srv);
    let open = env.serve(&[]);
    for host in ["127.1", "0x7f000001", "[::ffff:127.0.0.1]"] {
        let url = format!("http://{host}:{port}/notify");
        let (status, body) = open
            .post(
                &token,
                "/mdm/v2/client/config",
                json!({"notificationUrl": url, "notificationAuthToken": "t"}),
            )
            .await;
        assert_eq!(status, 200, "{url}: {body}");
    }
    assert_eq!(rx.wait_for("TEST_NOTIFICATION", 3).await.len(), 3);
}

/// The address is checked again at every send: URLs stored while private addresses were
/// allowed (an IP literal, and a name, which goes through the resolver that keeps public
/// addresses only, as a name re-pointed by DNS rebinding would) are not sent to once they
/// are not; allowed again, sending works.
#[tokio::test(flavor = "multi_thread")]
async fn notification_addresses_are_checked_again_when_sending() {
    let env = Env::new();
    let by_name = env.org("ByName");
    let by_ip = env.org("ByIp");
    let rx = Receiver::default();
    let running = rx.start().await;
    let port = running.addr.port();
    let flags = ["--notification-retry-ms", "100,100"];
    {
        let open = env.serve(&flags);
        configured(
            &open,
            &by_name,
            &rx,
            &format!("http://localhost:{port}/notify"),
        )
        .await;
        configured(&open, &by_ip, &rx, &running.url).await;
    }
    let attempts = *rx.attempts.lock().unwrap();
    assert_eq!(attempts, 2);

    let guarded = env.serve_guarded(&flags);
    for token in [&by_name, &by_ip] {
        let ev = guarded.manage(token, "create", users(0..1, "g")).await;
        guarded.wait_event(token, &ev).await;
    }
    // Every attempt (3, 100 ms apart) has been made and refused by now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(*rx.attempts.lock().unwrap(), attempts, "nothing was sent");
    assert!(rx.of_type("USER_MANAGEMENT").is_empty());
    drop(guarded);

    let open = env.serve(&flags);
    let ev = open.manage(&by_ip, "create", users(1..2, "g")).await;
    open.wait_event(&by_ip, &ev).await;
    let got = rx.wait_for("USER_MANAGEMENT", 1).await;
    assert_eq!(got[0].body["notification"]["eventId"], ev.as_str());
}

/// An organisation whose endpoint accepts connections and never answers holds at most 4
/// sends in flight, and the other organisation's notification arrives at once while those
/// are still hanging (before, a batch waited for its slowest send: 10 s). Its backlog is
/// bounded: beyond `--notification-backlog` the oldest waiting notifications are dropped.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_endpoint_delays_only_its_own_organisation() {
    let env = Env::new();
    let slow = env.org("Slow");
    let fast = env.org("Fast");
    // Sends to the dead endpoint hang for the whole test.
    let srv = env.serve(&[
        "--notification-backlog",
        "3",
        "--notification-timeout-ms",
        "60000",
        "--lease-ms",
        "120000",
    ]);
    let dead = common::Hanging::start().await;
    let (status, body) = srv
        .post(
            &slow,
            "/mdm/v2/client/config",
            json!({"notificationUrl": dead.url, "notificationAuthToken": "t",
                   "notificationTypes": ["USER_MANAGEMENT"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let rx = Receiver::default();
    let running = rx.start().await;
    configured(&srv, &fast, &rx, &running.url).await;

    for i in 0..10 {
        srv.manage(&slow, "create", users(i..i + 1, "s")).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while dead.holding.load(std::sync::atomic::Ordering::SeqCst) < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "the dead endpoint got no sends"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let started = std::time::Instant::now();
    let ev = srv.manage(&fast, "create", users(0..1, "f")).await;
    let got = rx.wait_for("USER_MANAGEMENT", 1).await;
    let took = started.elapsed();
    assert_eq!(got[0].body["notification"]["eventId"], ev.as_str());
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let holding = dead.holding.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(holding, 4, "the dead endpoint still holds its sends");
    assert_eq!(dead.most.load(std::sync::atomic::Ordering::SeqCst), 4);

    // 10 waiting, 4 of them in flight, at most 3 kept: the 6 oldest not in flight go.
    let org_of = |name: &str| format!("(SELECT id FROM orgs WHERE name = '{name}')");
    let count = |state: &str| {
        format!(
            "SELECT COUNT(*) FROM outbox WHERE org_id = {} AND state = '{state}'",
            org_of("Slow")
        )
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (pending, dropped) = (
            env.sql_i64(&count("pending")).await,
            env.sql_i64(&count("dropped")).await,
        );
        if (pending, dropped) == (4, 6) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pending {pending}, dropped {dropped}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let leased = env
        .sql_i64(&format!(
            "SELECT COUNT(*) FROM outbox WHERE org_id = {} AND state = 'pending' AND lease_owner IS NOT NULL",
            org_of("Slow")
        ))
        .await;
    assert_eq!(leased, 4, "the ones in flight are kept");
    // The healthy organisation was not touched by the other's bound.
    assert_eq!(
        env.sql_i64(&count("dropped").replace("Slow", "Fast")).await,
        0
    );
}

/// sTokens are stored as SHA-256 digests (one stored in plaintext by an older version is
/// digested at start-up and still works); the SQLite files and the PKI state and CA
/// written by the binary are readable by their owner only.
#[tokio::test(flavor = "multi_thread")]
async fn secrets_at_rest_are_digests_and_files_are_private() {
    let env = Env::new();
    let token = env.org("O");
    let env = &env;
    let count = |sql: String| async move { env.sql_i64(&sql).await };
    let digest = cloudvpp_store::secret::digest(&token);
    assert!(digest.starts_with("sha256:") && !digest.contains(&token));
    assert_eq!(
        count(format!(
            "SELECT COUNT(*) FROM tokens WHERE stoken = '{token}'"
        ))
        .await,
        0
    );
    assert_eq!(
        count(format!(
            "SELECT COUNT(*) FROM tokens WHERE stoken = '{digest}'"
        ))
        .await,
        1
    );
    // A token row as an older version stored it.
    env.sql(
        "INSERT INTO tokens (org_id, stoken, expires_at_secs, created_at)
         SELECT id, 'bGVnYWN5LXBsYWludGV4dA==', 4102444800, 0 FROM orgs",
    )
    .await;
    let srv = env.serve(&[]);
    for t in [token.as_str(), "bGVnYWN5LXBsYWludGV4dA=="] {
        let (status, body) = srv.get(t, "/mdm/v2/users").await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(
        count("SELECT COUNT(*) FROM tokens WHERE stoken NOT LIKE 'sha256:%'".into()).await,
        0
    );

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let private = |p: &std::path::Path| {
            let mode = std::fs::metadata(p).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{} is {mode:o}", p.display());
        };
        if env.postgres_name().is_none() {
            let ev = srv.manage(&token, "create", users(0..1, "f")).await;
            srv.wait_event(&token, &ev).await;
            for f in ["ab.db", "ab.db-wal", "ab.db-shm"] {
                private(&env.dir.path().join(f));
            }
        }
        let (state, ca) = (
            env.dir.path().join("sim.json"),
            env.dir.path().join("ca.pem"),
        );
        // An existing file with a wide mode is narrowed too.
        std::fs::write(&state, "{}").unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o644)).unwrap();
        env.cli(&[
            "simulate",
            "pki",
            "--state",
            state.to_str().unwrap(),
            "--ca-out",
            ca.to_str().unwrap(),
        ]);
        private(&state);
        private(&ca);
    }
}

/// Extreme query values (page indexes at the ends of i64 and i32, malformed numbers and
/// versions, overlong ids) get Apple's errors, never a panic or a wrapped window; a body
/// over the limit gets 413 with Apple's error body; the service keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn extreme_input_gets_apples_errors_and_the_process_lives_on() {
    let env = Env::new();
    let token = env.org("O");
    let mut srv = env.serve(&["--page-size", "3"]);
    let ev = srv.manage(&token, "create", users(0..4, "x")).await;
    srv.wait_event(&token, &ev).await;
    let (_, first) = srv.get(&token, "/mdm/v2/users").await;
    let v = first["versionId"].as_str().unwrap().to_string();
    let odd = format!("a{}a----", "é".repeat(15));
    let cases: Vec<(String, u64)> = vec![
        ("pageIndex=9223372036854775807".into(), 9602),
        ("pageIndex=-9223372036854775808".into(), 9602),
        ("pageIndex=99999999999999999999999".into(), 9602),
        ("pageIndex=2147483648".into(), 9602),
        ("pageIndex=1e3".into(), 9602),
        ("pageIndex=%FF".into(), 9602),
        ("pageIndex=2147483647".into(), 9650),
        ("pageIndex=-2147483648".into(), 9650),
        (format!("pageIndex=2147483647&sinceVersionId={v}"), 9650),
        (format!("pageIndex=-1&sinceVersionId={v}"), 9650),
        (
            format!("pageIndex=9223372036854775807&sinceVersionId={v}"),
            9602,
        ),
        (format!("sinceVersionId={odd}"), 9721),
        (
            "sinceVersionId=ffffffff-ffff-ffff-0000-000000000000".into(),
            9721,
        ),
        (
            "sinceVersionId=7fffffff-ffff-ffff-0000-000000000000".into(),
            9721,
        ),
        (format!("sinceVersionId={}", "f".repeat(10_000)), 9721),
        (format!("clientUserId={}", "a".repeat(257)), 9602),
        (
            format!("clientUserId=a&pageIndex=2147483647&sinceVersionId={v}"),
            9650,
        ),
    ];
    for (query, number) in &cases {
        let (status, err) = srv.get(&token, &format!("/mdm/v2/users?{query}")).await;
        assert_eq!(
            (status, err["errorNumber"].as_u64()),
            (400, Some(*number)),
            "{query}"
        );
    }
    let (status, err) = srv
        .get(
            &token,
            &format!("/mdm/v2/status?eventId={}", "e".repeat(129)),
        )
        .await;
    assert_eq!((status, err["errorNumber"].as_u64()), (400, Some(9602)));

    // Bodies: over the limit, 413 with Apple's body, answered on the declared length
    // before the body is read (sent raw: a client still uploading may see the connection
    // close before it reads the answer); just under it, read and judged.
    let addr = srv.base.trim_start_matches("http://").to_string();
    for (path, declared) in [
        ("/mdm/v2/users/create", Some(3 << 20)),
        ("/mdm/v2/client/config", Some(3 << 20)),
        // No declared length: cut off once past the limit.
        ("/mdm/v2/users/create", None),
    ] {
        let (status, head, err) = raw_post(&addr, path, &token, declared).await;
        assert_eq!(status, 413, "{path}");
        assert!(head.contains("content-type: application/json"), "{head}");
        assert_eq!(err["errorNumber"], 9602, "{path}");
        assert_eq!(err["errorMessage"], "Invalid argument.");
    }
    let many: Vec<Value> = (0..20_000)
        .map(|i| json!({"clientUserId": format!("user-{i:08}"), "email": format!("user-{i:08}@example.com")}))
        .collect();
    let body = json!({ "users": many }).to_string();
    assert!(body.len() > 1 << 20 && body.len() < 2 << 20);
    let (status, err) = srv
        .post(
            &token,
            "/mdm/v2/users/create",
            serde_json::from_str(&body).unwrap(),
        )
        .await;
    assert_eq!((status, err["errorNumber"].as_u64()), (400, Some(9714)));

    // Still serving, nothing changed.
    assert!(srv.child.try_wait().unwrap().is_none(), "the process died");
    let (status, now) = srv.get(&token, "/mdm/v2/users").await;
    assert_eq!(status, 200);
    assert_eq!(now["versionId"], v.as_str());
}

/// The invitation page cannot be framed and runs nothing but itself.
#[tokio::test(flavor = "multi_thread")]
async fn invitation_page_forbids_framing_and_foreign_content() {
    let env = Env::new();
    let token = env.org("O");
    let srv = env.serve(&[]);
    let ev = srv.manage(&token, "create", users(0..1, "p")).await;
    srv.wait_event(&token, &ev).await;
    let (_, page) = srv.get(&token, "/mdm/v2/users").await;
    let code = page["users"][0]["inviteCode"].as_str().unwrap().to_string();
    let answers = [
        srv.http
            .get(srv.url(&format!("/invite?inviteCode={code}")))
            .send()
            .await
            .unwrap(),
        srv.http
            .get(srv.url("/invite?inviteCode=unknown"))
            .send()
            .await
            .unwrap(),
        srv.http
            .post(srv.url("/invite"))
            .form(&[("inviteCode", code.as_str()), ("appleId", "nope")])
            .send()
            .await
            .unwrap(),
        srv.http
            .post(srv.url("/invite/accept"))
            .json(&json!({"inviteCode": code, "appleId": "pat@example.com"}))
            .send()
            .await
            .unwrap(),
    ];
    let statuses: Vec<u16> = answers.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(statuses, vec![200, 404, 400, 200]);
    for r in &answers {
        let h = r.headers();
        assert_eq!(h["x-frame-options"], "DENY");
        let csp = h["content-security-policy"].to_str().unwrap();
        for directive in [
            "default-src 'none'",
            "frame-ancestors 'none'",
            "form-action 'self'",
        ] {
            assert!(csp.contains(directive), "{csp}");
        }
        assert!(!csp.contains("script-src"));
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["referrer-policy"], "no-referrer");
    }
}

/// POSTs an oversized JSON body: with `Some(n)`, a head declaring `n` bytes and only the
/// first kilobyte of them; with `None`, chunks adding up to one byte past the 2 MiB limit.
/// Returns the status, the lower-cased head and the JSON body of the answer.
async fn raw_post(
    addr: &str,
    path: &str,
    token: &str,
    declared: Option<usize>,
) -> (u16, String, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let length = match declared {
        Some(n) => format!("Content-Length: {n}"),
        None => "Transfer-Encoding: chunked".to_string(),
    };
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\n{length}\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    match declared {
        Some(_) => conn.write_all(&[b' '; 1024]).await.unwrap(),
        None => {
            let mut left = (2 << 20) + 1;
            while left > 0 {
                let n = left.min(64 << 10);
                let chunk = format!("{n:x}\r\n{}\r\n", " ".repeat(n));
                conn.write_all(chunk.as_bytes()).await.unwrap();
                left -= n;
            }
        }
    }
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse().unwrap())
                    .unwrap_or(0);
                if got.len() >= end + 4 + len {
                    let status = head[9..12].parse().unwrap();
                    let body = serde_json::from_slice(&got[end + 4..end + 4 + len]).unwrap();
                    return (status, head, body);
                }
            }
            let n = conn.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "closed before a whole answer: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    answer.expect("no answer to the declared length alone")
}

/// `assets add` records purchases and refunds; `GET assets` shows them with Apple's
/// fields, filters and pages, and a versionId that moves with every change.
#[tokio::test(flavor = "multi_thread")]
async fn assets_are_bought_listed_filtered_and_paged() {
    let env = Env::new();
    let token = env.org("Content");
    let srv = env.serve(&["--page-size", "2"]);
    let add = |args: &[&str]| {
        let mut line = vec!["appsbooks", "assets", "add", "--org", "Content"];
        line.extend_from_slice(args);
        env.cli(&line)
    };
    let out = add(&["--adam-id", "408709785", "--count", "50"]);
    assert!(out.contains("GarageBand"), "the catalogue names it: {out}");
    add(&["--adam-id", "361309726", "--count", "10"]);
    add(&[
        "--adam-id",
        "1000000001",
        "--count",
        "5",
        "--pricing",
        "PLUS",
        "--product-type",
        "Book",
        "--platforms",
        "iOS,macOS",
    ]);

    let (status, page0) = srv.get(&token, "/mdm/v2/assets").await;
    assert_eq!(status, 200, "{page0}");
    assert_eq!(
        (
            page0["totalPages"].as_u64(),
            page0["nextPageIndex"].as_u64()
        ),
        (Some(2), Some(1))
    );
    let (_, page1) = srv.get(&token, "/mdm/v2/assets?pageIndex=1").await;
    assert_eq!(page1.get("nextPageIndex"), None);
    let mut all: Vec<Value> = page0["assets"].as_array().unwrap().clone();
    all.extend(page1["assets"].as_array().unwrap().iter().cloned());
    assert_eq!(all.len(), 3);
    let book = all.iter().find(|a| a["adamId"] == "1000000001").unwrap();
    assert_eq!(
        book,
        &json!({"adamId": "1000000001", "assignedCount": 0, "availableCount": 5,
            "deviceAssignable": false, "pricingParam": "PLUS", "productType": "Book",
            "retiredCount": 0, "revocable": false, "totalCount": 5,
            "supportedPlatforms": ["iOS", "macOS"]})
    );
    assert!(page0["uId"].is_string() && page0["tokenExpirationDate"].is_string());

    let adam_ids = |v: &Value| -> Vec<String> {
        v["assets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["adamId"].as_str().unwrap().to_string())
            .collect()
    };
    for (query, want) in [
        ("productType=Book", vec!["1000000001"]),
        (
            "minAvailableCount=10&maxAvailableCount=10",
            vec!["361309726"],
        ),
        (
            "revocable=true&pricingParam=STDQ",
            vec!["361309726", "408709785"],
        ),
        ("adamId=408709785", vec!["408709785"]),
        ("deviceAssignable=false", vec!["1000000001"]),
        ("maxAssignedCount=0&minAvailableCount=51", vec![]),
    ] {
        let (status, v) = srv.get(&token, &format!("/mdm/v2/assets?{query}")).await;
        assert_eq!(status, 200, "{query}: {v}");
        assert_eq!(adam_ids(&v), want, "{query}");
    }
    for bad in [
        "revocable=yes",
        "productType=Movie",
        "minAvailableCount=x",
        "adamId=abc",
    ] {
        let (status, v) = srv.get(&token, &format!("/mdm/v2/assets?{bad}")).await;
        assert_eq!(
            (status, v["errorNumber"].as_u64()),
            (400, Some(9602)),
            "{bad}"
        );
    }
    let (status, v) = srv.get(&token, "/mdm/v2/assets?pageIndex=2").await;
    assert_eq!((status, v["errorNumber"].as_u64()), (400, Some(9650)));

    // A refund takes free licences only, and moves the version.
    let before = page0["versionId"].clone();
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_cloudvpp"))
        .args([
            "appsbooks",
            "assets",
            "add",
            "--org",
            "Content",
            "--adam-id",
            "361309726",
        ])
        .args(["--count", "-11"])
        .env("CLOUDVPP_DATABASE", env.db())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("only 10 licences are free"));
    add(&["--adam-id", "361309726", "--count", "-4"]);
    let (_, v) = srv.get(&token, "/mdm/v2/assets?adamId=361309726").await;
    assert_eq!(v["assets"][0]["totalCount"], 6);
    assert_ne!(v["versionId"], before);
    let listed = env.cli(&["appsbooks", "assets", "list", "--org", "Content"]);
    assert_eq!(listed.lines().count(), 4, "{listed}");

    // Service config lists the endpoint and Apple's content errors.
    let cfg: Value = srv
        .http
        .get(srv.url("/mdm/v2/service/config"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cfg["urls"]["getAssets"], srv.url("/mdm/v2/assets"));
    let numbers: Vec<u64> = cfg["errorCodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["errorNumber"].as_u64().unwrap())
        .collect();
    for n in [9700, 9703, 9706, 9707, 9709, 9718, 9719] {
        assert!(numbers.contains(&n), "{n}");
    }
}

/// A purchase and a refund each reach a subscribed MDM as `ASSET_COUNT`.
#[tokio::test(flavor = "multi_thread")]
async fn purchases_send_asset_count() {
    let env = Env::new();
    let token = env.org("Counted");
    let srv = env.serve(&[]);
    let rx = Receiver::default();
    let running = rx.start().await;
    let (status, body) = srv
        .post(
            &token,
            "/mdm/v2/client/config",
            json!({"notificationAuthToken": "tok", "notificationUrl": running.url,
                   "notificationTypes": ["ASSET_COUNT"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for count in ["7", "-2"] {
        env.cli(&[
            "appsbooks",
            "assets",
            "add",
            "--org",
            "Counted",
            "--adam-id",
            "361285480",
            "--count",
            count,
        ]);
    }
    let got = rx.wait_for("ASSET_COUNT", 2).await;
    // Notifications of one organisation are sent several at a time: in any order.
    let mut deltas: Vec<(i64, String, String)> = got
        .iter()
        .map(|n| {
            let p = &n.body["notification"];
            (
                p["countDelta"].as_i64().unwrap(),
                p["adamId"].as_str().unwrap().to_string(),
                p["pricingParam"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    deltas.sort();
    assert_eq!(
        deltas,
        vec![
            (-2, "361285480".into(), "STDQ".into()),
            (7, "361285480".into(), "STDQ".into())
        ]
    );
    assert!(got.iter().all(|n| n.body["uId"].is_string()));
}

/// Commands that only read never create a database at a mistyped path, and a database
/// that cannot be reached is named by its cause, never with its password.
#[test]
fn command_line_database_mistakes_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("typo.db");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_cloudvpp"))
            .args(args)
            .env_remove("CLOUDVPP_DATABASE")
            .output()
            .unwrap()
    };
    let url = format!("sqlite://{}", typo.display());
    for args in [
        vec!["appsbooks", "org", "list", "--database", &url],
        vec!["appsbooks", "limits", "show", "--database", &url],
        vec![
            "appsbooks",
            "assets",
            "list",
            "--org",
            "X",
            "--database",
            &url,
        ],
    ] {
        let out = run(&args);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("no database at"),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!typo.exists(), "{args:?} created {}", typo.display());
    }
    // Nothing listens on port 1 of loopback.
    let out = run(&[
        "appsbooks",
        "org",
        "list",
        "--database",
        "postgres://someone:s3cret-pass@127.0.0.1:1/db",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("Connection refused"), "{err}");
    assert!(!err.contains("s3cret-pass"), "{err}");
    assert_eq!(
        err.matches("Connection refused").count(),
        1,
        "each cause once: {err}"
    );
}

/// `cloudvpp serve` on a busy port fails before it makes or names any file.
#[test]
fn serve_on_a_busy_port_fails_before_making_files() {
    let dir = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cloudvpp"))
        .args(["serve", "--appsbooks-listen", &format!("127.0.0.1:{port}")])
        .args(["--mdm-listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env_remove("CLOUDVPP_DATABASE")
        .env_remove("CLOUDVPP_API_KEY")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("Address already in use"), "{err}");
    assert!(!err.contains("api-key"), "{err}");
    let made: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(made.is_empty(), "{made:?}");
}

/// Output into a pipe whose reader is gone (`cloudvpp ... | head`) ends the command
/// quietly, with success, instead of a panic.
#[test]
fn a_closed_output_pipe_ends_commands_quietly() {
    let env = Env::new();
    env.org("Piped");
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cloudvpp"))
        .args(["appsbooks", "limits", "show"])
        .env("CLOUDVPP_DATABASE", env.db())
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {err}", out.status);
    assert!(!err.contains("panicked"), "{err}");
}

/// Every page of a listing, asserting that each page but the last is full.
async fn full_pages(srv: &common::Server, token: &str, query: &str, size: usize) -> Vec<Value> {
    let mut users = Vec::new();
    let mut page = 0;
    loop {
        let (status, body) = srv
            .get(token, &format!("/mdm/v2/users?pageIndex={page}&{query}"))
            .await;
        assert_eq!(status, 200, "{body}");
        let got = body["users"].as_array().unwrap();
        assert_eq!(body["size"].as_u64(), Some(got.len() as u64));
        users.extend(got.iter().cloned());
        match body["nextPageIndex"].as_u64() {
            Some(n) => {
                assert_eq!(got.len(), size, "page {page} of {query:?} is short: {body}");
                page = n;
            }
            None => {
                assert_eq!(body["totalPages"].as_u64(), Some(page + 1));
                return users;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn filtered_and_versioned_listings_have_full_pages() {
    let env = Env::new();
    let token = env.org("O");
    let srv = env.serve(&["--page-size", "3"]);
    let ev = srv.manage(&token, "create", users(0..12, "p")).await;
    srv.wait_event(&token, &ev).await;
    let (_, v0) = srv.get(&token, "/mdm/v2/users").await;
    let v0 = v0["versionId"].as_str().unwrap().to_string();
    // The first half retired: a window over creation order would give two empty
    // activeOnly pages first, and two empty retiredOnly pages last.
    let retire: Vec<Value> = (0..6)
        .map(|i| json!({"clientUserId": format!("p-{i}")}))
        .collect();
    let ev = srv.manage(&token, "retire", json!(retire)).await;
    srv.wait_event(&token, &ev).await;
    // p-7 changed three times: three change numbers, one record.
    for n in 0..3 {
        let ev = srv
            .manage(
                &token,
                "update",
                json!([{"clientUserId": "p-7", "email": format!("p7-{n}@example.com")}]),
            )
            .await;
        srv.wait_event(&token, &ev).await;
    }
    let names = |r: std::ops::Range<usize>| r.map(|i| format!("p-{i}")).collect::<Vec<_>>();

    let (_, first) = srv.get(&token, "/mdm/v2/users?activeOnly=true").await;
    assert_eq!(
        (first["totalPages"].as_u64(), first["size"].as_u64()),
        (Some(2), Some(3))
    );
    let active = full_pages(&srv, &token, "activeOnly=true", 3).await;
    assert_eq!(ids(&active), names(6..12));
    let retired = full_pages(&srv, &token, "retiredOnly=true", 3).await;
    assert_eq!(ids(&retired), names(0..6));
    // Past the filtered listing's last page: 9650.
    let (status, err) = srv
        .get(&token, "/mdm/v2/users?activeOnly=true&pageIndex=2")
        .await;
    assert_eq!((status, err["errorNumber"].as_u64()), (400, Some(9650)));

    // Since v0: the six retirements and p-7 once, in change order, on full pages.
    let since = full_pages(&srv, &token, &format!("sinceVersionId={v0}"), 3).await;
    let mut want = names(0..6);
    want.push("p-7".into());
    assert_eq!(ids(&since), want);
    assert_eq!(since[6]["email"], "p7-2@example.com");
    let since_active = full_pages(
        &srv,
        &token,
        &format!("sinceVersionId={v0}&activeOnly=true"),
        3,
    )
    .await;
    assert_eq!(ids(&since_active), vec!["p-7"]);
    let since_retired = full_pages(
        &srv,
        &token,
        &format!("sinceVersionId={v0}&retiredOnly=true"),
        3,
    )
    .await;
    assert_eq!(ids(&since_retired), names(0..6));
}

#[tokio::test(flavor = "multi_thread")]
async fn users_filter_by_managed_apple_id() {
    let env = Env::new();
    let token = env.org("O");
    let srv = env.serve(&[]);
    let ev = srv
        .manage(
            &token,
            "create",
            json!([
                {"clientUserId": "ann", "managedAppleId": "Ann@Corp.example"},
                {"clientUserId": "bob"},
                {"clientUserId": "cy", "managedAppleId": "cy@corp.example"}
            ]),
        )
        .await;
    assert_eq!(srv.wait_event(&token, &ev).await["eventStatus"], "COMPLETE");
    let (status, found) = srv
        .get(&token, "/mdm/v2/users?managedAppleId=ann@corp.example")
        .await;
    assert_eq!(status, 200);
    assert_eq!(ids(found["users"].as_array().unwrap()), vec!["ann"]);
    assert_eq!(
        (found["size"].as_u64(), found["totalPages"].as_u64()),
        (Some(1), Some(1))
    );
    // An account nobody holds: an empty page, not every user.
    let (status, none) = srv
        .get(&token, "/mdm/v2/users?managedAppleId=nobody@corp.example")
        .await;
    assert_eq!(status, 200);
    assert_eq!(none["size"], 0);
    assert!(none["users"].as_array().unwrap().is_empty());
    // Retired records of the account stay findable; activeOnly leaves them out.
    let ev = srv
        .manage(&token, "retire", json!([{"clientUserId": "ann"}]))
        .await;
    srv.wait_event(&token, &ev).await;
    let ev = srv
        .manage(
            &token,
            "create",
            json!([{"clientUserId": "ann2", "managedAppleId": "ANN@corp.example"}]),
        )
        .await;
    assert_eq!(srv.wait_event(&token, &ev).await["eventStatus"], "COMPLETE");
    let (_, both) = srv
        .get(&token, "/mdm/v2/users?managedAppleId=ann@corp.example")
        .await;
    assert_eq!(ids(both["users"].as_array().unwrap()), vec!["ann", "ann2"]);
    let (_, active) = srv
        .get(
            &token,
            "/mdm/v2/users?managedAppleId=ann@corp.example&activeOnly=true",
        )
        .await;
    assert_eq!(ids(active["users"].as_array().unwrap()), vec!["ann2"]);
    // With clientUserId, both must match.
    let (_, mismatch) = srv
        .get(
            &token,
            "/mdm/v2/users?managedAppleId=ann@corp.example&clientUserId=cy",
        )
        .await;
    assert_eq!(mismatch["size"], 0);
    // An account associated through the invitation page is found the same way.
    let (_, bob) = srv.get(&token, "/mdm/v2/users?clientUserId=bob").await;
    let code = bob["users"][0]["inviteCode"].as_str().unwrap().to_string();
    let r = srv
        .http
        .post(srv.url("/invite/accept"))
        .json(&json!({"inviteCode": code, "appleId": "bob@corp.example"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, bob) = srv
        .get(&token, "/mdm/v2/users?managedAppleId=Bob@corp.example")
        .await;
    assert_eq!(ids(bob["users"].as_array().unwrap()), vec!["bob"]);
    // Another page of one person's records does not exist.
    let (status, err) = srv
        .get(
            &token,
            "/mdm/v2/users?managedAppleId=bob@corp.example&pageIndex=1",
        )
        .await;
    assert_eq!((status, err["errorNumber"].as_u64()), (400, Some(9650)));
}

#[tokio::test(flavor = "multi_thread")]
async fn status_reports_failures_only_once_the_event_ends() {
    let env = Env::new();
    let token = env.org("O");
    let srv = env.serve(&["--processing-delay-ms", "150"]);
    let ev = srv
        .manage(&token, "create", json!([{"clientUserId": "dup"}]))
        .await;
    srv.wait_event(&token, &ev).await;
    // dup is refused in the first step (one user a step with a processing delay).
    let ev = srv
        .manage(&token, "create", {
            let mut u = vec![json!({"clientUserId": "dup"})];
            u.extend(users(0..6, "n").as_array().unwrap().iter().cloned());
            json!(u)
        })
        .await;
    let mut pending_after_refusal = 0;
    let done = loop {
        let (status, st) = srv
            .get(&token, &format!("/mdm/v2/status?eventId={ev}"))
            .await;
        assert_eq!(status, 200, "{st}");
        if st["eventStatus"] != "PENDING" {
            break st;
        }
        let failures = st.get("failures").and_then(Value::as_array);
        assert!(
            failures.is_none_or(|f| f.is_empty()),
            "a PENDING event shows no failures: {st}"
        );
        if st["numCompleted"].as_u64().unwrap_or(0) >= 1 {
            pending_after_refusal += 1;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    };
    assert!(
        pending_after_refusal > 0,
        "never saw the event PENDING after its refusal"
    );
    assert_eq!(done["eventStatus"], "FAILED");
    assert_eq!(done["numCompleted"], 6);
    assert_eq!(done["failures"][0]["errorNumber"], 9716);
    assert_eq!(
        done["failures"][0]["errorInfo"]["clientUserIds"],
        json!(["dup"])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_apple_accounts_fail_with_9635() {
    let env = Env::new();
    let token = env.org("O");
    let srv = env.serve(&["--refuse-apple-accounts", "*@refused.example"]);
    let ev = srv
        .manage(
            &token,
            "create",
            json!([
                {"clientUserId": "a", "managedAppleId": "x@Refused.example"},
                {"clientUserId": "b", "managedAppleId": "b@corp.example"},
                {"clientUserId": "c"}
            ]),
        )
        .await;
    let st = srv.wait_event(&token, &ev).await;
    assert_eq!(st["eventStatus"], "FAILED");
    assert_eq!(st["numCompleted"], 2);
    assert_eq!(st["failures"][0]["errorNumber"], 9635);
    assert_eq!(
        st["failures"][0]["errorMessage"],
        "Unable to associate the Apple Account with this user."
    );
    assert_eq!(
        st["failures"][0]["errorInfo"]["clientUserIds"],
        json!(["a"])
    );
    let (_, a) = srv.get(&token, "/mdm/v2/users?clientUserId=a").await;
    assert_eq!(a["size"], 0, "a refused create makes no record");

    // users/update giving a refused account: 9635, the user left Registered.
    let ev = srv
        .manage(
            &token,
            "update",
            json!([{"clientUserId": "c", "managedAppleId": "y@refused.example"}]),
        )
        .await;
    let st = srv.wait_event(&token, &ev).await;
    assert_eq!(
        (
            st["eventStatus"].as_str(),
            st["failures"][0]["errorNumber"].as_u64()
        ),
        (Some("FAILED"), Some(9635))
    );
    let (_, c) = srv.get(&token, "/mdm/v2/users?clientUserId=c").await;
    assert_eq!(c["users"][0]["status"], "Registered");
    let code = c["users"][0]["inviteCode"].as_str().unwrap().to_string();

    // The invitation page refuses the account with 9635; another one is accepted.
    let accept = |apple_id: &str| {
        srv.http
            .post(srv.url("/invite/accept"))
            .json(&json!({"inviteCode": code, "appleId": apple_id}))
            .send()
    };
    let r = accept("z@refused.example").await.unwrap();
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["errorNumber"], 9635);
    assert_eq!(body["error"], "apple_account_cannot_associate");
    let r = srv
        .http
        .post(srv.url("/invite"))
        .form(&[
            ("inviteCode", code.as_str()),
            ("appleId", "z@refused.example"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("Unable to associate"));
    let (_, c) = srv.get(&token, "/mdm/v2/users?clientUserId=c").await;
    assert_eq!(c["users"][0]["status"], "Registered");
    let r = accept("z@corp.example").await.unwrap();
    assert_eq!(r.status(), 200);
    let (_, c) = srv.get(&token, "/mdm/v2/users?clientUserId=c").await;
    assert_eq!(c["users"][0]["status"], "Associated");
}

#[tokio::test(flavor = "multi_thread")]
async fn client_config_reports_the_organisations_country_and_platform() {
    let env = Env::new();
    let plain = env.org("Plain");
    let gb = env
        .cli(&[
            "appsbooks",
            "org",
            "create",
            "--name",
            "British",
            "--country",
            "gb",
            "--default-platform",
            "enterprisestore",
        ])
        .trim()
        .to_string();
    let srv = env.serve(&[]);
    let profile = |body: &Value| {
        (
            body["countryISO2ACode"].as_str().unwrap().to_string(),
            body["defaultPlatform"].as_str().unwrap().to_string(),
        )
    };
    let (_, cfg) = srv.get(&plain, "/mdm/v2/client/config").await;
    assert_eq!(profile(&cfg), ("US".into(), "volumestore".into()));
    let (_, cfg) = srv.get(&gb, "/mdm/v2/client/config").await;
    assert_eq!(profile(&cfg), ("GB".into(), "enterprisestore".into()));
    // `org set` changes one value and keeps the other; the service reads it per request.
    env.cli(&[
        "appsbooks",
        "org",
        "set",
        "--org",
        "British",
        "--country",
        "FR",
    ]);
    let (_, cfg) = srv.get(&gb, "/mdm/v2/client/config").await;
    assert_eq!(profile(&cfg), ("FR".into(), "enterprisestore".into()));
    env.cli(&[
        "appsbooks",
        "org",
        "set",
        "--org",
        "Plain",
        "--default-platform",
        "enterprisestore",
    ]);
    let (_, cfg) = srv.get(&plain, "/mdm/v2/client/config").await;
    assert_eq!(profile(&cfg), ("US".into(), "enterprisestore".into()));
    // POST client/config returns them too.
    let (status, cfg) = srv
        .post(
            &gb,
            "/mdm/v2/client/config",
            json!({"mdmInfo": {"id": "1", "name": "n", "metadata": "m"}}),
        )
        .await;
    assert_eq!(status, 200, "{cfg}");
    assert_eq!(profile(&cfg), ("FR".into(), "enterprisestore".into()));
    // Values Apple does not use are refused by the command.
    for bad in [
        &["--country", "GBR"][..],
        &["--country", "1A"][..],
        &["--default-platform", "appstore"][..],
    ] {
        let mut args = vec!["appsbooks", "org", "set", "--org", "Plain"];
        args.extend_from_slice(bad);
        let out = std::process::Command::new(common::BIN)
            .args(&args)
            .env("CLOUDVPP_DATABASE", env.db())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad:?} accepted");
    }
}

/// Every listing command prints JSON with `--json`, timestamps in RFC 3339.
#[test]
fn appsbooks_commands_print_json() {
    let env = Env::new();
    env.org("Listed");
    env.cli(&[
        "appsbooks",
        "assets",
        "add",
        "--org",
        "Listed",
        "--adam-id",
        "408709785",
        "--count",
        "4",
    ]);
    let orgs: Value =
        serde_json::from_str(&env.cli(&["appsbooks", "org", "list", "--json"])).unwrap();
    assert_eq!(orgs[0]["name"], "Listed");
    let exp = orgs[0]["tokenExpires"].as_str().unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(exp).is_ok(), "{exp}");
    let table = env.cli(&["appsbooks", "org", "list"]);
    assert!(
        table.contains(exp),
        "the table shows the same RFC 3339 time: {table}"
    );
    let assets: Value = serde_json::from_str(&env.cli(&[
        "appsbooks",
        "assets",
        "list",
        "--org",
        "Listed",
        "--json",
    ]))
    .unwrap();
    assert_eq!(
        assets,
        json!([{"adamId": "408709785", "assignedCount": 0, "availableCount": 4,
            "deviceAssignable": true, "pricingParam": "STDQ", "productType": "App",
            "retiredCount": 0, "revocable": true, "totalCount": 4,
            "supportedPlatforms": ["iOS", "macOS"], "name": "GarageBand"}])
    );
    let limits: Value =
        serde_json::from_str(&env.cli(&["appsbooks", "limits", "show", "--json"])).unwrap();
    assert_eq!(limits["maxUsers"], 100);
}
