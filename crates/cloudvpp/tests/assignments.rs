//! End-to-end tests of licences at the Apps and Books service: Get Assignments, Associate,
//! Disassociate and Revoke Assets, retirement releasing licences, `ASSET_MANAGEMENT`
//! notifications and exact counts under concurrent events on two instances. The real
//! binary over HTTP on 127.0.0.1; SQLite by default, PostgreSQL with
//! `CLOUDVPP_TEST_POSTGRES_URL`.

mod common;

use common::{users, Env, Receiver, Server};
use serde_json::{json, Value};
use std::collections::BTreeSet;

const APP: &str = "408709785";
const BOOK: &str = "1000000001";

fn buy(env: &Env, org: &str, adam_id: &str, count: i64, book: bool) {
    let count = count.to_string();
    let mut line = vec![
        "appsbooks",
        "assets",
        "add",
        "--org",
        org,
        "--adam-id",
        adam_id,
        "--count",
        &count,
    ];
    if book {
        line.extend_from_slice(&["--pricing", "PLUS", "--product-type", "Book"]);
    }
    env.cli(&line);
}

/// Posts to assets/associate|disassociate|revoke; returns (HTTP status, body).
async fn assets_call(srv: &Server, token: &str, action: &str, body: Value) -> (u16, Value) {
    srv.post(token, &format!("/mdm/v2/assets/{action}"), body)
        .await
}

/// Runs an asset event to its end and returns its status body.
async fn run(srv: &Server, token: &str, action: &str, body: Value) -> Value {
    let (status, resp) = assets_call(srv, token, action, body).await;
    assert_eq!(status, 200, "{action}: {resp}");
    srv.wait_event(token, resp["eventId"].as_str().unwrap())
        .await
}

fn app(adam_id: &str) -> Value {
    json!({"adamId": adam_id, "pricingParam": "STDQ"})
}

fn book(adam_id: &str) -> Value {
    json!({"adamId": adam_id, "pricingParam": "PLUS"})
}

async fn asset(srv: &Server, token: &str, adam_id: &str) -> Value {
    let (status, body) = srv
        .get(token, &format!("/mdm/v2/assets?adamId={adam_id}"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["assets"][0].clone()
}

/// Every assignment of a listing, following nextPageIndex; with the first page's version.
async fn all_assignments(srv: &Server, token: &str, query: &str) -> (Vec<Value>, String) {
    let mut out = Vec::new();
    let mut page = 0;
    let mut version = None;
    loop {
        let (status, body) = srv
            .get(
                token,
                &format!("/mdm/v2/assignments?pageIndex={page}&{query}"),
            )
            .await;
        assert_eq!(status, 200, "{query}: {body}");
        version.get_or_insert_with(|| body["versionId"].as_str().unwrap().to_string());
        let list = body["assignments"].as_array().unwrap();
        assert_eq!(body["size"].as_u64().unwrap() as usize, list.len());
        out.extend(list.iter().cloned());
        match body["nextPageIndex"].as_u64() {
            Some(n) => page = n,
            None => return (out, version.unwrap()),
        }
    }
}

fn holders(list: &[Value]) -> BTreeSet<String> {
    list.iter()
        .map(|a| {
            format!(
                "{}:{}",
                a["adamId"].as_str().unwrap(),
                a["clientUserId"]
                    .as_str()
                    .or(a["serialNumber"].as_str())
                    .unwrap()
            )
        })
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn assert_balanced(a: &Value) {
    let (total, assigned, available) = (
        a["totalCount"].as_i64().unwrap(),
        a["assignedCount"].as_i64().unwrap(),
        a["availableCount"].as_i64().unwrap(),
    );
    assert!(assigned >= 0 && available >= 0, "{a}");
    assert_eq!(assigned + available, total, "{a}");
}

#[tokio::test(flavor = "multi_thread")]
async fn associate_disassociate_revoke_and_retire_move_licences() {
    let env = Env::new();
    let token = env.org("Licences");
    let srv = env.serve(&[]);
    buy(&env, "Licences", APP, 3, false);
    buy(&env, "Licences", BOOK, 2, true);
    let ev = srv.manage(&token, "create", users(0..5, "p")).await;
    srv.wait_event(&token, &ev).await;

    // Four people, three licences: the fourth fails with 9709, naming the asset and user.
    let status = run(
        &srv,
        &token,
        "associate",
        json!({"assets": [app(APP)], "clientUserIds": ["p-0", "p-1", "p-2", "p-3"]}),
    )
    .await;
    assert_eq!(status["eventType"], "ASSOCIATE");
    assert_eq!(status["eventStatus"], "FAILED");
    assert_eq!(
        (
            status["numRequested"].as_u64(),
            status["numCompleted"].as_u64()
        ),
        (Some(4), Some(3))
    );
    assert_eq!(
        status["failures"],
        json!([{"errorInfo": {"assets": [app(APP)], "clientUserIds": ["p-3"]},
                "errorMessage": "There are not enough licenses for this app or book available to assign to the selected group.",
                "errorNumber": 9709}])
    );
    let a = asset(&srv, &token, APP).await;
    assert_eq!(
        (a["assignedCount"].as_i64(), a["availableCount"].as_i64()),
        (Some(3), Some(0))
    );
    let (list, _) = all_assignments(&srv, &token, "").await;
    assert_eq!(
        holders(&list),
        set(&[
            &format!("{APP}:p-0"),
            &format!("{APP}:p-1"),
            &format!("{APP}:p-2")
        ])
    );
    assert_eq!(list[0]["pricingParam"], "STDQ");

    // Associating again what is held uses no second licence.
    let again = run(
        &srv,
        &token,
        "associate",
        json!({"assets": [{"adamId": APP}], "clientUserIds": ["p-0"]}),
    )
    .await;
    assert_eq!(again["eventStatus"], "COMPLETE");
    assert_eq!(asset(&srv, &token, APP).await["assignedCount"], 3);

    // Synchronous refusals change nothing.
    let (code, body) = assets_call(
        &srv,
        &token,
        "associate",
        json!({"assets": [app(APP)], "clientUserIds": ["p-4", "nobody"]}),
    )
    .await;
    assert_eq!(
        (code, body["errorNumber"].as_u64()),
        (400, Some(9609)),
        "{body}"
    );
    assert_eq!(body["errorInfo"]["clientUserIds"], json!(["nobody"]));
    let (code, body) = assets_call(
        &srv,
        &token,
        "associate",
        json!({"assets": [book(BOOK)], "serialNumbers": ["C02XL0AAJGH5"]}),
    )
    .await;
    assert_eq!(
        (code, body["errorNumber"].as_u64()),
        (400, Some(9707)),
        "{body}"
    );
    let (code, body) = assets_call(
        &srv,
        &token,
        "disassociate",
        json!({"assets": [book(BOOK)], "clientUserIds": ["p-0"]}),
    )
    .await;
    assert_eq!(
        (code, body["errorNumber"].as_u64()),
        (400, Some(9706)),
        "{body}"
    );
    let (code, body) = assets_call(
        &srv,
        &token,
        "associate",
        json!({"assets": [], "clientUserIds": ["p-0"]}),
    )
    .await;
    assert_eq!(
        (code, body["errorNumber"].as_u64()),
        (400, Some(9718)),
        "{body}"
    );
    let (code, body) = assets_call(&srv, &token, "associate", json!({"assets": [app(APP)]})).await;
    assert_eq!(
        (code, body["errorNumber"].as_u64()),
        (400, Some(9719)),
        "{body}"
    );
    let (code, body) = assets_call(
        &srv,
        &token,
        "associate",
        json!({"assets": [app(APP), app(APP)], "clientUserIds": ["p-0"]}),
    )
    .await;
    assert_eq!(
        (code, body["errorNumber"].as_u64()),
        (400, Some(9703)),
        "{body}"
    );
    let (code, body) = assets_call(
        &srv,
        &token,
        "revoke",
        json!({"clientUserIds": ["p-0", "p-0"]}),
    )
    .await;
    assert_eq!(
        (code, body["errorNumber"].as_u64()),
        (400, Some(9704)),
        "{body}"
    );
    assert_eq!(asset(&srv, &token, APP).await["assignedCount"], 3);

    // A freed licence goes to a device; a book to a person.
    let off = run(
        &srv,
        &token,
        "disassociate",
        json!({"assets": [app(APP)], "clientUserIds": ["p-2"]}),
    )
    .await;
    assert_eq!(off["eventStatus"], "COMPLETE");
    let dev = run(
        &srv,
        &token,
        "associate",
        json!({"assets": [app(APP)], "serialNumbers": ["C02XL0AAJGH5"]}),
    )
    .await;
    assert_eq!(dev["eventStatus"], "COMPLETE", "{dev}");
    let b = run(
        &srv,
        &token,
        "associate",
        json!({"assets": [book(BOOK)], "clientUserIds": ["p-0", "p-1"]}),
    )
    .await;
    assert_eq!(b["eventStatus"], "COMPLETE", "{b}");
    let (list, _) = all_assignments(&srv, &token, "").await;
    assert_eq!(
        holders(&list),
        set(&[
            &format!("{APP}:p-0"),
            &format!("{APP}:p-1"),
            &format!("{APP}:C02XL0AAJGH5"),
            &format!("{BOOK}:p-0"),
            &format!("{BOOK}:p-1"),
        ])
    );

    // Revoke takes back what is revocable (the app), not the book.
    let r = run(&srv, &token, "revoke", json!({"clientUserIds": ["p-0"]})).await;
    assert_eq!(
        (
            r["eventType"].as_str(),
            r["eventStatus"].as_str(),
            r["numRequested"].as_u64()
        ),
        (Some("REVOKE"), Some("COMPLETE"), Some(1))
    );
    // Retiring p1 frees its app licence; its book stays assigned and counts as retired.
    let ev = srv
        .manage(&token, "retire", json!([{"clientUserId": "p-1"}]))
        .await;
    srv.wait_event(&token, &ev).await;
    let a = asset(&srv, &token, APP).await;
    assert_eq!(
        (a["assignedCount"].as_i64(), a["availableCount"].as_i64()),
        (Some(1), Some(2))
    );
    let bk = asset(&srv, &token, BOOK).await;
    assert_eq!(
        (bk["assignedCount"].as_i64(), bk["retiredCount"].as_i64()),
        (Some(2), Some(1))
    );
    assert_balanced(&a);
    assert_balanced(&bk);
    let (list, _) = all_assignments(&srv, &token, "").await;
    assert_eq!(
        holders(&list),
        set(&[
            &format!("{APP}:C02XL0AAJGH5"),
            &format!("{BOOK}:p-0"),
            &format!("{BOOK}:p-1")
        ])
    );
    let (active, _) = all_assignments(&srv, &token, "excludeInactiveUsers=true").await;
    assert_eq!(
        holders(&active),
        set(&[&format!("{APP}:C02XL0AAJGH5"), &format!("{BOOK}:p-0")])
    );
    let (with_state, _) = all_assignments(&srv, &token, "includeUserState=true").await;
    let p1 = with_state
        .iter()
        .find(|a| a["clientUserId"] == "p-1")
        .unwrap();
    assert_eq!(p1["userStatus"], "Retired");
    let p0 = with_state
        .iter()
        .find(|a| a["clientUserId"] == "p-0")
        .unwrap();
    assert_eq!(p0["userStatus"], "Registered");
    let dev = with_state
        .iter()
        .find(|a| a["serialNumber"].is_string())
        .unwrap();
    assert!(
        dev.get("userStatus").is_none(),
        "a device has no user state: {dev}"
    );

    // A retired user can no longer be given anything: asynchronous 9609.
    let late = run(
        &srv,
        &token,
        "associate",
        json!({"assets": [app(APP)], "clientUserIds": ["p-1"]}),
    )
    .await;
    assert_eq!(late["failures"][0]["errorNumber"], 9609, "{late}");
}

#[tokio::test(flavor = "multi_thread")]
async fn assignments_pages_versions_and_filters_are_exact() {
    let env = Env::new();
    let token = env.org("Paged");
    let srv = env.serve(&["--page-size", "3"]);
    buy(&env, "Paged", APP, 20, false);
    buy(&env, "Paged", "361309726", 20, false);
    let ev = srv.manage(&token, "create", users(0..7, "u")).await;
    srv.wait_event(&token, &ev).await;
    let all: Vec<String> = (0..7).map(|i| format!("u-{i}")).collect();
    run(
        &srv,
        &token,
        "associate",
        json!({"assets": [app(APP)], "clientUserIds": all}),
    )
    .await;
    run(&srv, &token, "associate", json!({"assets": [app("361309726")], "clientUserIds": ["u-1", "u-2"], "serialNumbers": ["SN1"]})).await;

    // 10 assignments, pages of 3: 3, 3, 3, 1.
    let (status, first) = srv.get(&token, "/mdm/v2/assignments").await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(
        (
            first["totalPages"].as_u64(),
            first["size"].as_u64(),
            first["nextPageIndex"].as_u64()
        ),
        (Some(4), Some(3), Some(1))
    );
    assert!(first["uId"].is_string() && first["tokenExpirationDate"].is_string());
    let (list, version) = all_assignments(&srv, &token, "").await;
    assert_eq!(list.len(), 10);
    assert_eq!(holders(&list).len(), 10, "no assignment twice");
    let (status, body) = srv.get(&token, "/mdm/v2/assignments?pageIndex=4").await;
    assert_eq!((status, body["errorNumber"].as_u64()), (400, Some(9650)));

    // Filters.
    for (query, want) in [
        (format!("adamId={APP}"), 7),
        ("clientUserId=u-1".to_string(), 2),
        ("serialNumber=SN1".to_string(), 1),
        ("pricingParam=STDQ".to_string(), 10),
        ("pricingParam=PLUS".to_string(), 0),
        (format!("adamId={APP}&clientUserId=u-6"), 1),
    ] {
        let (got, _) = all_assignments(&srv, &token, &query).await;
        assert_eq!(got.len(), want, "{query}");
    }
    let (got, _) = all_assignments(&srv, &token, "clientUserId=u-1").await;
    assert!(got.iter().all(|a| a["clientUserId"] == "u-1"));
    for bad in [
        "adamId=abc",
        "pricingParam=GOLD",
        "excludeInactiveUsers=maybe",
        "pageIndex=x",
    ] {
        let (status, body) = srv.get(&token, &format!("/mdm/v2/assignments?{bad}")).await;
        assert_eq!(
            (status, body["errorNumber"].as_u64()),
            (400, Some(9602)),
            "{bad}"
        );
    }

    // Versions: nothing after the current one; a change after it is all a sync returns.
    let (since, v2) = all_assignments(&srv, &token, &format!("sinceVersionId={version}")).await;
    assert!(since.is_empty());
    assert_eq!(v2, version, "no change, same version");
    run(
        &srv,
        &token,
        "disassociate",
        json!({"assets": [app(APP)], "clientUserIds": ["u-0"]}),
    )
    .await;
    let (since, v3) = all_assignments(&srv, &token, &format!("sinceVersionId={version}")).await;
    assert!(since.is_empty(), "a removal is not listed: {since:?}");
    assert_ne!(v3, version, "a removal moves the version");
    run(
        &srv,
        &token,
        "associate",
        json!({"assets": [app("361309726")], "clientUserIds": ["u-5"]}),
    )
    .await;
    let (since, _) = all_assignments(&srv, &token, &format!("sinceVersionId={v3}")).await;
    assert_eq!(holders(&since), set(&["361309726:u-5"]));
    // Pages of a version listing are full too.
    let ev = srv.manage(&token, "create", users(7..12, "u")).await;
    srv.wait_event(&token, &ev).await;
    let more: Vec<String> = (7..12).map(|i| format!("u-{i}")).collect();
    run(
        &srv,
        &token,
        "associate",
        json!({"assets": [app(APP)], "clientUserIds": more}),
    )
    .await;
    let (status, body) = srv
        .get(&token, &format!("/mdm/v2/assignments?sinceVersionId={v3}"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        (body["size"].as_u64(), body["totalPages"].as_u64()),
        (Some(3), Some(2)),
        "{body}"
    );

    // A users versionId, or a made-up one, is not an assignments version.
    let (_, users_page) = srv.get(&token, "/mdm/v2/users").await;
    let uv = users_page["versionId"].as_str().unwrap();
    for v in [uv, "0000002a-0000-0000-0000-000000000000"] {
        let (status, body) = srv
            .get(&token, &format!("/mdm/v2/assignments?sinceVersionId={v}"))
            .await;
        assert_eq!(
            (status, body["errorNumber"].as_u64()),
            (400, Some(9721)),
            "{v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn asset_management_notifications_report_every_assignment() {
    let env = Env::new();
    let token = env.org("Notified");
    let srv = env.serve(&[]);
    let rx = Receiver::default();
    let running = rx.start().await;
    let (status, body) = srv
        .post(&token, "/mdm/v2/client/config", json!({"notificationAuthToken": "tok", "notificationUrl": running.url, "notificationTypes": ["ASSET_MANAGEMENT"]}))
        .await;
    assert_eq!(status, 200, "{body}");
    buy(&env, "Notified", APP, 140, false);
    let ev = srv.manage(&token, "create", users(0..100, "a")).await;
    srv.wait_event(&token, &ev).await;
    let ev = srv.manage(&token, "create", users(100..150, "a")).await;
    srv.wait_event(&token, &ev).await;
    let cuids: Vec<String> = (0..150).map(|i| format!("a-{i}")).collect();
    let (code, resp) = assets_call(
        &srv,
        &token,
        "associate",
        json!({"assets": [app(APP)], "clientUserIds": cuids}),
    )
    .await;
    assert_eq!(code, 200, "{resp}");
    let event_id = resp["eventId"].as_str().unwrap();
    let status = srv.wait_event(&token, event_id).await;
    assert_eq!(status["numCompleted"], 140);
    let got = rx.wait_for("ASSET_MANAGEMENT", 3).await;
    let mut assigned = BTreeSet::new();
    let mut failed = Vec::new();
    for n in &got {
        let p = &n.body["notification"];
        assert_eq!(p["eventId"], event_id);
        assert_eq!(p["type"], "ASSOCIATE");
        let list = p["assignments"].as_array().unwrap();
        assert!(list.len() <= 100);
        match p["result"].as_str().unwrap() {
            "SUCCESS" => assigned.extend(holders(list)),
            "FAILURE" => {
                assert_eq!(p["error"]["errorNumber"], 9709);
                failed.extend(
                    p["error"]["errorInfo"]["clientUserIds"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .cloned(),
                );
            }
            other => panic!("result {other}"),
        }
    }
    assert_eq!(assigned.len(), 140);
    assert_eq!(failed.len(), 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn service_config_lists_every_endpoint() {
    let env = Env::new();
    let srv = env.serve(&[]);
    let resp = reqwest::get(srv.url("/mdm/v2/service/config"))
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    let urls = body["urls"].as_object().unwrap();
    for key in [
        "clientConfig",
        "getUsers",
        "createUsers",
        "updateUsers",
        "retireUsers",
        "eventStatus",
        "getAssets",
        "getAssignments",
        "associateAssets",
        "disassociateAssets",
        "revokeAssets",
        "invitationEmail",
    ] {
        assert!(urls.contains_key(key), "{key} missing: {urls:?}");
    }
    // Each advertised endpoint answers (401 without a token, never 404).
    for (key, url) in urls {
        if key == "invitationEmail" {
            continue;
        }
        let status = reqwest::get(url.as_str().unwrap()).await.unwrap().status();
        assert_ne!(status.as_u16(), 404, "{key}: {url}");
    }
    let limits = body["limits"].as_object().unwrap();
    for key in [
        "maxAssets",
        "maxClientUserIds",
        "maxSerialNumbers",
        "maxRevokeClientUserIds",
        "maxRevokeSerialNumbers",
    ] {
        assert!(limits.contains_key(key), "{key}");
    }
}

/// Concurrent associate and disassociate events on two instances of one database: the
/// counts stay exact, never negative, and the licences given equal the assignments listed.
#[tokio::test(flavor = "multi_thread")]
async fn counts_stay_exact_under_concurrent_events_on_two_instances() {
    let env = Env::new();
    let token = env.org("Busy");
    let flags = [
        "--lease-ms",
        "1500",
        "--limit",
        "maxRequestPerSecond=100000",
    ];
    let a = env.serve(&flags);
    let b = env.serve(&flags);
    buy(&env, "Busy", APP, 50, false);
    let ev = a.manage(&token, "create", users(0..80, "c")).await;
    a.wait_event(&token, &ev).await;
    // Eight associations of ten people and four disassociations, sent at once to both.
    let mut calls = Vec::new();
    for k in 0..8 {
        let srv = if k % 2 == 0 { &a } else { &b };
        let cuids: Vec<String> = (k * 10..k * 10 + 10).map(|i| format!("c-{i}")).collect();
        calls.push(assets_call(
            srv,
            &token,
            "associate",
            json!({"assets": [app(APP)], "clientUserIds": cuids}),
        ));
    }
    let mut offs = Vec::new();
    for k in 0..4 {
        let srv = if k % 2 == 0 { &b } else { &a };
        let cuids: Vec<String> = (k * 10..k * 10 + 5).map(|i| format!("c-{i}")).collect();
        offs.push(assets_call(
            srv,
            &token,
            "disassociate",
            json!({"assets": [app(APP)], "clientUserIds": cuids}),
        ));
    }
    let (ons, offs) = tokio::join!(
        futures::future::join_all(calls),
        futures::future::join_all(offs)
    );
    let mut statuses = Vec::new();
    for (code, body) in ons.iter().chain(offs.iter()) {
        assert_eq!(*code, 200, "{body}");
        statuses.push(
            a.wait_event(&token, body["eventId"].as_str().unwrap())
                .await,
        );
    }
    let a_now = asset(&a, &token, APP).await;
    assert_balanced(&a_now);
    let (list, _) = all_assignments(&b, &token, "").await;
    assert_eq!(
        a_now["assignedCount"].as_i64().unwrap(),
        list.len() as i64,
        "{a_now}"
    );
    assert!(list.len() <= 50);
    // Every association task either holds a licence now, was taken back, or failed 9709.
    let completed: u64 = statuses[..8]
        .iter()
        .map(|s| s["numCompleted"].as_u64().unwrap())
        .sum();
    let refused: usize = statuses[..8]
        .iter()
        .flat_map(|s| s["failures"].as_array().cloned().unwrap_or_default())
        .map(|f| {
            assert_eq!(f["errorNumber"], 9709, "{f}");
            f["errorInfo"]["clientUserIds"].as_array().unwrap().len()
        })
        .sum();
    assert_eq!(completed as usize + refused, 80);
    let held: BTreeSet<String> = holders(&list);
    assert_eq!(held.len(), list.len());
}

/// The service limits bound every asset request: 9700, 9701, 9702 (and the revoke limits),
/// duplicate serial numbers 9705; nothing is stored when one is refused.
#[tokio::test(flavor = "multi_thread")]
async fn asset_requests_stay_within_the_service_limits() {
    let env = Env::new();
    let token = env.org("Limited");
    let srv = env.serve(&[
        "--limit",
        "maxAssets=1",
        "--limit",
        "maxClientUserIds=2",
        "--limit",
        "maxSerialNumbers=2",
        "--limit",
        "maxRevokeClientUserIds=1",
        "--limit",
        "maxRevokeSerialNumbers=1",
    ]);
    buy(&env, "Limited", APP, 5, false);
    let ev = srv.manage(&token, "create", users(0..3, "l")).await;
    srv.wait_event(&token, &ev).await;
    for (action, body, want) in [
        (
            "associate",
            json!({"assets": [app(APP), app("361309726")], "clientUserIds": ["l-0"]}),
            9700,
        ),
        (
            "associate",
            json!({"assets": [app(APP)], "clientUserIds": ["l-0", "l-1", "l-2"]}),
            9701,
        ),
        (
            "disassociate",
            json!({"assets": [app(APP)], "serialNumbers": ["S1", "S2", "S3"]}),
            9702,
        ),
        (
            "associate",
            json!({"assets": [app(APP)], "serialNumbers": ["S1", "S1"]}),
            9705,
        ),
        ("revoke", json!({"clientUserIds": ["l-0", "l-1"]}), 9701),
        ("revoke", json!({"serialNumbers": ["S1", "S2"]}), 9702),
    ] {
        let (code, resp) = assets_call(&srv, &token, action, body).await;
        assert_eq!(
            (code, resp["errorNumber"].as_u64()),
            (400, Some(want)),
            "{action}: {resp}"
        );
    }
    // Garbage: a broken body, wrong types, another content type, a filter too long. (Bodies
    // over 2 MiB are refused for every endpoint by one layer: tests/appsbooks.rs.)
    let http = reqwest::Client::new();
    for (body, kind, status, number) in [
        (b"{\"assets\":".to_vec(), "application/json", 400, 9602),
        (b"[1,2,3]".to_vec(), "application/json", 400, 9602),
        (
            br#"{"assets":[{"adamId":"1"}],"clientUserIds":[7]}"#.to_vec(),
            "application/json",
            400,
            9602,
        ),
        (
            br#"{"assets":[{"adamId":"1"}],"clientUserIds":["l-0"]}"#.to_vec(),
            "text/plain",
            415,
            9727,
        ),
    ] {
        let resp = http
            .post(srv.url("/mdm/v2/assets/associate"))
            .bearer_auth(&token)
            .header("content-type", kind)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status, "{kind}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["errorNumber"], number, "{v}");
    }
    let long = "x".repeat(300);
    let (code, resp) = srv
        .get(&token, &format!("/mdm/v2/assignments?clientUserId={long}"))
        .await;
    assert_eq!((code, resp["errorNumber"].as_u64()), (400, Some(9602)));
    // Nothing was stored: no event ran, no licence moved.
    assert_eq!(asset(&srv, &token, APP).await["assignedCount"], 0);
    let (list, _) = all_assignments(&srv, &token, "").await;
    assert!(list.is_empty());
}
