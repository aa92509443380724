//! The Apps and Books client against the real appsbooks service over HTTP.

mod common;

use cloudvpp_abclient::{Client, RetryPolicy, UsersQuery};
use cloudvpp_abwire::{MdmInfo, RequestUser};
use common::Env;
use serde_json::json;
use std::time::Duration;

fn people(range: std::ops::Range<usize>) -> Vec<RequestUser> {
    range
        .map(|i| RequestUser {
            client_user_id: format!("c{i}"),
            email: Some(format!("c{i}@example.com")),
            managed_apple_id: None,
        })
        .collect()
}

async fn wait_all(c: &Client, events: &[String]) {
    for ev in events {
        for _ in 0..400 {
            if c.event_status(ev).await.unwrap().event_status != "PENDING" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn batches_pages_versions_and_invitation_urls() {
    let env = Env::new();
    let token = env.org("O");
    let srv = env.serve(&[
        "--page-size",
        "7",
        "--limit",
        "maxUsers=40",
        "--limit",
        "maxRequestPerSecond=1000",
    ]);
    let c = Client::new(&format!("{}/mdm/v2", srv.base), &token);
    // 100 people: split by maxUsers (40) into 3 requests.
    let events = c.create_users(&people(0..100)).await.unwrap();
    assert_eq!(events.len(), 3);
    wait_all(&c, &events).await;
    // Five pages at a time, every user once, the first page's version.
    let (users, version) = c.all_users(&UsersQuery::default(), 5).await.unwrap();
    assert_eq!(users.len(), 100);
    let mut ids: Vec<_> = users.iter().map(|u| u.client_user_id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 100);
    let (seq, _) = c.all_users(&UsersQuery::default(), 1).await.unwrap();
    assert_eq!(seq.len(), 100);
    // Changes since that version only.
    let ev = c.retire_users(&people(10..13)).await.unwrap();
    wait_all(&c, &ev).await;
    let (changed, _) = c
        .all_users(
            &UsersQuery {
                since_version_id: Some(version),
                ..Default::default()
            },
            5,
        )
        .await
        .unwrap();
    assert_eq!(changed.len(), 3);
    // The invitation link from service config.
    let code = users[0].invite_code.clone().unwrap();
    assert_eq!(
        c.invitation_url(&code).await.unwrap(),
        format!("{}/invite?inviteCode={code}&mt=8", srv.base)
    );
    // Errors carry Apple's number.
    let err = c.event_status("nope").await.unwrap_err();
    assert_eq!(err.apple_number(), Some(9708));
    let bad = Client::new(&format!("{}/mdm/v2", srv.base), "bm9wZQ==");
    assert_eq!(
        bad.client_config().await.unwrap_err().apple_number(),
        Some(9601)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_are_waited_out_and_writes_are_not_replayed() {
    let env = Env::new();
    let token = env.org("O");
    let srv = env.serve(&["--limit", "maxRequestPerSecond=3"]);
    // This client believes it may send 1000 a second: the service's 429s must pace it.
    let c = Client::new(&format!("{}/mdm/v2", srv.base), &token).with_retry(RetryPolicy {
        attempts: 8,
        base: Duration::from_millis(100),
        cap: Duration::from_secs(2),
    });
    // A client that will give up at the first refusal, also believing in 1000 a second.
    let impatient = Client::new(&format!("{}/mdm/v2", srv.base), &token).with_retry(RetryPolicy {
        attempts: 1,
        base: Duration::from_millis(1),
        cap: Duration::from_millis(1),
    });
    env.cli(&["appsbooks", "limits", "set", "maxRequestPerSecond=1000"]);
    c.refresh_service_config().await.unwrap();
    impatient.refresh_service_config().await.unwrap();
    env.cli(&["appsbooks", "limits", "set", "maxRequestPerSecond=3"]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let calls: Vec<_> = (0..10).map(|_| c.client_config()).collect();
    for r in futures::future::join_all(calls).await {
        r.unwrap();
    }
    assert!(
        c.rate_limited() > 0,
        "the service refused some requests with 9646"
    );
    // A write refused with 9646 is sent again; it is applied exactly once.
    let events = c.create_users(&people(0..5)).await.unwrap();
    assert_eq!(events.len(), 1);
    wait_all(&c, &events).await;
    let (users, _) = c.all_users(&UsersQuery::default(), 1).await.unwrap();
    assert_eq!(users.len(), 5, "created once, whatever the retries");
    // A budget that runs out says so, keeping Apple's number.
    let mut saw_9646 = false;
    for _ in 0..10 {
        if let Err(e) = impatient.client_config().await {
            saw_9646 |= e.apple_number() == Some(9646);
        }
    }
    assert!(saw_9646);
}

#[tokio::test(flavor = "multi_thread")]
async fn another_mdms_claim_raises_the_alarm_and_is_not_overwritten() {
    let env = Env::new();
    let token = env.org("O");
    let srv = env.serve(&[]);
    let (status, _) = srv
        .post(
            &token,
            "/mdm/v2/client/config",
            json!({"mdmInfo": {"id": "other-mdm", "name": "Other", "metadata": "1"}}),
        )
        .await;
    assert_eq!(status, 200);
    let ours = MdmInfo {
        id: Some("cloudvpp".into()),
        name: Some("cloudvpp".into()),
        metadata: Some("1".into()),
    };
    let c = Client::new(&format!("{}/mdm/v2", srv.base), &token).with_mdm_info(ours.clone());
    assert!(!c.ownership_conflict());
    c.claim(None).await.unwrap();
    assert!(c.ownership_conflict());
    let cfg = c.client_config().await.unwrap();
    assert_eq!(
        cfg.meta.mdm_info.unwrap().id.as_deref(),
        Some("other-mdm"),
        "a foreign claim is left alone"
    );
    // On a free location the claim is made.
    let free = env.org("Free");
    let c2 = Client::new(&format!("{}/mdm/v2", srv.base), &free).with_mdm_info(ours);
    c2.claim(None).await.unwrap();
    assert!(!c2.ownership_conflict());
    assert_eq!(
        c2.client_config()
            .await
            .unwrap()
            .meta
            .mdm_info
            .unwrap()
            .id
            .as_deref(),
        Some("cloudvpp")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn asset_requests_are_split_by_the_services_limits_and_listings_walk_every_page() {
    use cloudvpp_abclient::{AssetsQuery, AssignmentsQuery};
    use cloudvpp_abwire::assets::{
        AssetRef, ManageAssetsRequest, PricingParam, RevokeAssetsRequest,
    };
    let env = Env::new();
    let token = env.org("O");
    let srv = env.serve(&[
        "--page-size",
        "4",
        "--limit",
        "maxAssets=2",
        "--limit",
        "maxClientUserIds=3",
        "--limit",
        "maxRevokeClientUserIds=2",
        "--limit",
        "maxRequestPerSecond=1000",
    ]);
    let apps = ["408709785", "361309726", "284882215"];
    for a in apps {
        env.cli(&[
            "appsbooks",
            "assets",
            "add",
            "--org",
            "O",
            "--adam-id",
            a,
            "--count",
            "10",
        ]);
    }
    let c = Client::new(&format!("{}/mdm/v2", srv.base), &token);
    wait_all(&c, &c.create_users(&people(0..7)).await.unwrap()).await;
    let limits = c.asset_limits().await;
    assert_eq!((limits.assets, limits.client_user_ids), (2, 3));
    let req = ManageAssetsRequest {
        assets: apps
            .iter()
            .map(|a| AssetRef {
                adam_id: a.to_string(),
                pricing_param: Some(PricingParam::Stdq),
            })
            .collect(),
        client_user_ids: Some((0..7).map(|i| format!("c{i}")).collect()),
        serial_numbers: None,
    };
    // Sent whole, the service refuses it (9700); split, it is 2 asset chunks × 3 user chunks.
    let (status, body) = srv
        .post(
            &token,
            "/mdm/v2/assets/associate",
            serde_json::to_value(&req).unwrap(),
        )
        .await;
    assert_eq!(
        (status, body["errorNumber"].as_u64()),
        (400, Some(9700)),
        "{body}"
    );
    let events = c.associate_assets(&req).await.unwrap();
    assert_eq!(events.len(), 6);
    wait_all(&c, &events).await;
    for ev in &events {
        let s = c.event_status(ev).await.unwrap();
        assert_eq!(
            (s.event_status.as_str(), s.event_type.as_str()),
            ("COMPLETE", "ASSOCIATE")
        );
    }
    // 21 assignments over pages of 4, walked three pages at a time and one at a time.
    let (all, version) = c
        .all_assignments(&AssignmentsQuery::default(), 3)
        .await
        .unwrap();
    assert_eq!(all.len(), 21);
    let (seq, _) = c
        .all_assignments(&AssignmentsQuery::default(), 1)
        .await
        .unwrap();
    assert_eq!(seq.len(), 21);
    let one = AssignmentsQuery {
        adam_id: Some(apps[0].into()),
        client_user_id: Some("c3".into()),
        ..Default::default()
    };
    assert_eq!(
        c.get_assignments(&one, 0).await.unwrap().assignments.len(),
        1
    );
    let assets = c.all_assets(&AssetsQuery::default(), 2).await.unwrap();
    assert_eq!(assets.len(), 3);
    assert!(assets
        .iter()
        .all(|a| a.assigned_count == 7 && a.available_count == 3));
    // Disassociate and revoke are split the same way; changes since the version above.
    let events = c
        .disassociate_assets(&ManageAssetsRequest {
            assets: req.assets[..1].to_vec(),
            client_user_ids: Some(vec!["c0".into(), "c1".into()]),
            serial_numbers: None,
        })
        .await
        .unwrap();
    wait_all(&c, &events).await;
    let events = c
        .revoke_assets(&RevokeAssetsRequest {
            client_user_ids: Some(vec!["c4".into(), "c5".into(), "c6".into()]),
            serial_numbers: None,
        })
        .await
        .unwrap();
    assert_eq!(events.len(), 2, "maxRevokeClientUserIds=2");
    wait_all(&c, &events).await;
    let (left, _) = c
        .all_assignments(&AssignmentsQuery::default(), 5)
        .await
        .unwrap();
    assert_eq!(left.len(), 21 - 2 - 9);
    let since = AssignmentsQuery {
        since_version_id: Some(version),
        ..Default::default()
    };
    let (changed, _) = c.all_assignments(&since, 5).await.unwrap();
    assert!(changed.len() < 21, "only changes: {changed:?}");
    // More than there are licences: Apple's 9709, asynchronously, naming who did not get
    // one. The second app is held by c0..c3 (c4..c6 gave theirs back): 6 of 10 are free.
    wait_all(&c, &c.create_users(&people(7..15)).await.unwrap()).await;
    let more = ManageAssetsRequest {
        assets: req.assets[1..2].to_vec(),
        client_user_ids: Some((7..15).map(|i| format!("c{i}")).collect()),
        serial_numbers: None,
    };
    let events = c.associate_assets(&more).await.unwrap();
    wait_all(&c, &events).await;
    let failed: Vec<String> = futures::future::join_all(events.iter().map(|e| c.event_status(e)))
        .await
        .into_iter()
        .flat_map(|s| s.unwrap().failures)
        .filter(|f| f.error_number == 9709)
        .flat_map(|f| f.error_info.unwrap().client_user_ids.unwrap_or_default())
        .collect();
    assert_eq!(failed.len(), 2, "8 asked, 6 free: {failed:?}");
}
