//! [`cloudvpp_store::mdm::MdmStore`] and [`cloudvpp_store::engine::EngineStore`]'s leases.

use crate::Backend;
use cloudvpp_store::mdm::{
    AuthenticateInfo, CommandStatus, CommandUuid, EnrollmentId, EnrollmentType, Platform,
    QueuedCommand, ReportOutcome, TokenUpdateInfo,
};
use cloudvpp_store::StoreError;

const NOW: i64 = 1_700_000_000_000;

async fn enroll(b: &Backend, udid: &str) -> EnrollmentId {
    let id = EnrollmentId::new(udid);
    b.store
        .authenticate(
            &AuthenticateInfo {
                device_id: id.clone(),
                kind: EnrollmentType::Device,
                platform: Platform::Ios,
                serial_number: Some(format!("SN{udid}")),
                topic: "com.apple.mgmt.test".into(),
                raw: b"<plist/>".to_vec(),
            },
            NOW,
        )
        .await
        .expect("authenticate");
    b.store
        .token_update(
            &TokenUpdateInfo {
                id: id.clone(),
                device_id: id.clone(),
                kind: EnrollmentType::Device,
                user_short_name: None,
                topic: "com.apple.mgmt.test".into(),
                push_magic: "magic".into(),
                token_hex: "00ff".into(),
                awaiting_configuration: false,
                raw: b"<plist/>".to_vec(),
            },
            NOW,
        )
        .await
        .expect("token_update");
    id
}

fn command(uuid: &str) -> QueuedCommand {
    QueuedCommand {
        command_uuid: CommandUuid::new(uuid),
        request_type: "DeviceInformation".into(),
        command: format!("<plist>{uuid}</plist>").into_bytes(),
    }
}

async fn next(b: &Backend, id: &EnrollmentId, skip_not_now: bool) -> Option<String> {
    b.store
        .next_command(id, skip_not_now)
        .await
        .unwrap()
        .map(|c| c.command_uuid.into_string())
}

/// Commands come back in the order queued; a final report takes one off the queue, a
/// NotNow sets it aside only when asked; a report for a command not queued here changes
/// nothing; a new Authenticate clears the device's queue.
pub async fn command_queue_order_and_reports(b: &Backend) {
    let d = enroll(b, "D1").await;
    let other = enroll(b, "D2").await;
    let ghost = EnrollmentId::new("nobody");
    for uuid in ["c1", "c2", "c3"] {
        let queued = b
            .store
            .enqueue(&[d.clone(), ghost.clone(), d.clone()], &command(uuid), NOW)
            .await
            .unwrap();
        assert_eq!(
            queued,
            vec![d.clone()],
            "existing enrollments only, each once"
        );
    }
    assert!(matches!(
        b.store
            .enqueue(std::slice::from_ref(&other), &command("c1"), NOW)
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(next(b, &d, false).await.as_deref(), Some("c1"));
    assert_eq!(next(b, &other, false).await, None);

    let report = |uuid: &str, status| {
        let store = b.store.clone();
        let d = d.clone();
        let uuid = CommandUuid::new(uuid);
        async move {
            store
                .store_report(&d, &uuid, status, b"<plist/>", None, NOW + 1)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        report("c1", CommandStatus::Acknowledged).await,
        ReportOutcome::Stored
    );
    assert_eq!(next(b, &d, false).await.as_deref(), Some("c2"));
    assert_eq!(
        report("c2", CommandStatus::NotNow).await,
        ReportOutcome::Stored
    );
    assert_eq!(next(b, &d, true).await.as_deref(), Some("c3"));
    assert_eq!(next(b, &d, false).await.as_deref(), Some("c2"));
    assert_eq!(
        report("never-queued", CommandStatus::Error).await,
        ReportOutcome::NotQueuedHere
    );

    let c2 = b
        .store
        .command_state(&d, &CommandUuid::new("c2"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (c2.status, c2.not_now_tally),
        (Some(CommandStatus::NotNow), 1)
    );
    let states = b
        .store
        .command_states(&[
            (d.clone(), CommandUuid::new("c1")),
            (d.clone(), CommandUuid::new("c3")),
            (other.clone(), CommandUuid::new("c1")),
        ])
        .await
        .unwrap();
    let mut seen: Vec<(String, Option<CommandStatus>)> = states
        .into_iter()
        .map(|s| (s.command_uuid.into_string(), s.status))
        .collect();
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        seen,
        vec![
            ("c1".to_string(), Some(CommandStatus::Acknowledged)),
            ("c3".to_string(), None)
        ]
    );
    let pending: Vec<String> = b
        .store
        .list_commands(&d, true)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.command_uuid.into_string())
        .collect();
    assert_eq!(pending, ["c2", "c3"]);

    // Re-enrollment: what was queued for the old enrollment is not sent to the new one.
    enroll(b, "D1").await;
    assert_eq!(next(b, &d, false).await, None);
}

/// One current certificate per device; a replaced one never works for it again, and one
/// certificate never serves two devices.
pub async fn certificate_bindings(b: &Backend) {
    let d = enroll(b, "E1").await;
    let e = enroll(b, "E2").await;
    assert_eq!(
        b.store
            .associate_cert(&d, "h1", "CN=one", NOW)
            .await
            .unwrap(),
        None
    );
    assert!(b.store.cert_associated(&d, "h1").await.unwrap());
    assert_eq!(
        b.store
            .associate_cert(&d, "h2", "CN=two", NOW + 1)
            .await
            .unwrap(),
        Some("h1".to_string())
    );
    assert!(!b.store.cert_associated(&d, "h1").await.unwrap());
    assert!(b.store.cert_associated(&d, "h2").await.unwrap());
    assert!(matches!(
        b.store.associate_cert(&d, "h1", "CN=one", NOW + 2).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        b.store.associate_cert(&e, "h2", "CN=two", NOW + 2).await,
        Err(StoreError::Conflict(_))
    ));
    let bindings = b.store.cert_bindings(&d).await.unwrap();
    assert_eq!(bindings.len(), 2);
}

/// Engine locations are leased: held by one owner until the lease runs out or is given
/// up, then taken by another.
pub async fn location_leases(b: &Backend) {
    for name in ["L1", "L2"] {
        b.store
            .add_location(
                name,
                &format!("stoken-{name}"),
                "http://127.0.0.1:1/mdm/v2",
                "n",
                None,
            )
            .await
            .unwrap();
    }
    let names = |v: Vec<cloudvpp_store::engine::Location>| {
        let mut n: Vec<String> = v.into_iter().map(|l| l.name).collect();
        n.sort();
        n
    };
    assert_eq!(
        names(b.store.claim_locations("a", NOW, 1000).await.unwrap()),
        ["L1", "L2"]
    );
    assert!(b
        .store
        .claim_locations("b", NOW + 500, 1000)
        .await
        .unwrap()
        .is_empty());
    // Renewed by its holder, the lease outlives the first deadline.
    assert_eq!(
        names(b.store.claim_locations("a", NOW + 900, 1000).await.unwrap()),
        ["L1", "L2"]
    );
    assert!(b
        .store
        .claim_locations("b", NOW + 1500, 1000)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        names(
            b.store
                .claim_locations("b", NOW + 1901, 1000)
                .await
                .unwrap()
        ),
        ["L1", "L2"]
    );
    b.store.release_locations("b").await.unwrap();
    assert_eq!(
        names(
            b.store
                .claim_locations("c", NOW + 1902, 1000)
                .await
                .unwrap()
        ),
        ["L1", "L2"]
    );
}

/// `last_seen_at` is written for many enrollments at once and never moves back.
pub async fn last_seen_batches(b: &Backend) {
    let many: Vec<EnrollmentId> = enroll_many(b, 30).await;
    let seen: Vec<(EnrollmentId, i64)> = many
        .iter()
        .enumerate()
        .map(|(i, id)| (id.clone(), NOW + i as i64))
        .collect();
    b.store.touch(&seen).await.unwrap();
    // An older stamp for the first (a batch from a slower instance) changes nothing.
    b.store
        .touch(&[
            (many[0].clone(), NOW - 5),
            (EnrollmentId::new("ghost"), NOW),
        ])
        .await
        .unwrap();
    for (i, id) in many.iter().enumerate() {
        let e = b.store.enrollment(id).await.unwrap().unwrap();
        assert_eq!(e.last_seen_at, Some(NOW + i as i64), "{id}");
    }
}

async fn enroll_many(b: &Backend, n: usize) -> Vec<EnrollmentId> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(enroll(b, &format!("S{i}")).await);
    }
    out
}
