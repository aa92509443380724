//! The MDM and engine tables through the store on a real SQLite file: typed rows, batched
//! statements, and corrupt values reported as such rather than read as defaults.

use cloudvpp_store::engine::{EngineStore, Invitation, InvitationId, InvitationState, LocationId};
use cloudvpp_store::mdm::{
    AuthenticateInfo, CommandStatus, CommandUuid, EnrollmentId, EnrollmentType, MdmStore, Platform,
    QueuedCommand, TokenUpdateInfo,
};
use cloudvpp_store::StoreError;
use cloudvpp_store_sqlite::SqlStore;

async fn open(dir: &tempfile::TempDir) -> (SqlStore, sqlx::AnyPool) {
    let url = format!("sqlite://{}/t.db", dir.path().display());
    let store = cloudvpp_store_sqlite::connect(&url).await.unwrap();
    // A second connection to damage rows behind the store's back.
    let raw = sqlx::AnyPool::connect(&url).await.unwrap();
    (store, raw)
}

async fn enroll(store: &SqlStore, udid: &str, platform: Platform) {
    let device_id = EnrollmentId::from(udid);
    store
        .authenticate(
            &AuthenticateInfo {
                device_id: device_id.clone(),
                kind: EnrollmentType::Device,
                platform,
                serial_number: None,
                topic: "com.apple.mgmt.test".into(),
                raw: b"<plist/>".to_vec(),
            },
            1,
        )
        .await
        .unwrap();
    store
        .token_update(
            &TokenUpdateInfo {
                id: device_id.clone(),
                device_id,
                kind: EnrollmentType::Device,
                user_short_name: None,
                topic: "com.apple.mgmt.test".into(),
                push_magic: "magic".into(),
                token_hex: "00ff".into(),
                awaiting_configuration: false,
                raw: b"<plist/>".to_vec(),
            },
            2,
        )
        .await
        .unwrap();
}

fn invitation(id: &str, location: LocationId, person: &str) -> Invitation {
    Invitation {
        id: InvitationId::from(id),
        location_id: location,
        client_user_id: person.into(),
        email: None,
        enrollment_id: None,
        channel: None,
        state: InvitationState::Registering,
        reason: None,
        invite_code: None,
        invitation_url: None,
        event_id: None,
        command_uuid: None,
        invitation_result: None,
        attempts: 0,
        created_at: 10,
        updated_at: 10,
        next_action_at: 10,
    }
}

#[tokio::test]
async fn enqueue_is_batched_and_command_states_are_read_by_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _raw) = open(&dir).await;
    enroll(&store, "A", Platform::Ios).await;
    enroll(&store, "B", Platform::MacOs).await;
    let cmd = QueuedCommand {
        command_uuid: CommandUuid::from("CMD-1"),
        request_type: "InviteToProgram".into(),
        command: b"<plist/>".to_vec(),
    };
    let ids: Vec<EnrollmentId> = ["B", "NOPE", "A", "B"].map(EnrollmentId::from).into();
    let queued = store.enqueue(&ids, &cmd, 5).await.unwrap();
    assert_eq!(queued, ["B", "A"].map(EnrollmentId::from));
    assert!(matches!(
        store.enqueue(&ids, &cmd, 6).await,
        Err(StoreError::Conflict(_))
    ));
    let e = store.enrollment(&"B".into()).await.unwrap().unwrap();
    assert_eq!(
        (e.kind, e.platform),
        (EnrollmentType::Device, Platform::MacOs)
    );

    store
        .store_report(
            &"A".into(),
            &"CMD-1".into(),
            CommandStatus::Acknowledged,
            b"<plist/>",
            Some("Acknowledged"),
            7,
        )
        .await
        .unwrap();
    let keys = [
        (EnrollmentId::from("A"), CommandUuid::from("CMD-1")),
        (EnrollmentId::from("B"), CommandUuid::from("CMD-1")),
        (EnrollmentId::from("A"), CommandUuid::from("OTHER")),
    ];
    let mut states = store.command_states(&keys).await.unwrap();
    states.sort_by(|a, b| a.enrollment_id.cmp(&b.enrollment_id));
    assert_eq!(states.len(), 2);
    assert_eq!(states[0].status, Some(CommandStatus::Acknowledged));
    assert_eq!(states[0].invitation_result.as_deref(), Some("Acknowledged"));
    assert_eq!(states[1].status, None);
    assert!(states[1].active);
}

#[tokio::test]
async fn unknown_values_in_rows_are_corrupt_not_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let (store, raw) = open(&dir).await;
    enroll(&store, "A", Platform::Ios).await;
    let loc = store
        .add_location("Acme", "stoken", "http://127.0.0.1:1", "secret", None)
        .await
        .unwrap();
    store
        .create_invitations(&[
            invitation("i1", loc.id, "alice"),
            invitation("i2", loc.id, "bob"),
        ])
        .await
        .unwrap();
    let open_ones = store
        .open_invitations(&[(loc.id, "alice".into()), (loc.id, "carol".into())])
        .await
        .unwrap();
    assert_eq!(open_ones.len(), 1);
    assert_eq!(open_ones[0].id.as_str(), "i1");

    sqlx::query("UPDATE engine_invitations SET state = 'lost' WHERE id = 'i1'")
        .execute(&raw)
        .await
        .unwrap();
    let e = store.invitation(&"i1".into()).await.unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::Corrupt {
                column: "state",
                ..
            }
        ),
        "{e}"
    );
    assert!(store.invitation_counts().await.is_err());

    sqlx::query("UPDATE mdm_devices SET platform = 'Windows' WHERE id = 'A'")
        .execute(&raw)
        .await
        .unwrap();
    let e = store.enrollment(&"A".into()).await.unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::Corrupt {
                column: "platform",
                ..
            }
        ),
        "{e}"
    );

    sqlx::query("UPDATE mdm_enrollments SET enabled = 7 WHERE id = 'A'")
        .execute(&raw)
        .await
        .unwrap();
    sqlx::query("UPDATE mdm_devices SET platform = 'iOS' WHERE id = 'A'")
        .execute(&raw)
        .await
        .unwrap();
    let e = store.enrollment(&"A".into()).await.unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::Corrupt {
                column: "enabled",
                ..
            }
        ),
        "{e}"
    );
}

#[tokio::test]
async fn queued_invitations_are_read_page_after_page() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _raw) = open(&dir).await;
    let loc = store
        .add_location("Acme", "stoken", "http://127.0.0.1:1", "secret", None)
        .await
        .unwrap();
    let mut all: Vec<Invitation> = ["q3", "q1", "q2", "r1"]
        .iter()
        .map(|id| invitation(id, loc.id, id))
        .collect();
    for inv in &mut all[..3] {
        inv.state = InvitationState::Queued;
    }
    store.create_invitations(&all).await.unwrap();
    let ids = |page: &[Invitation]| page.iter().map(|i| i.id.to_string()).collect::<Vec<_>>();
    let first = store.queued_invitations(&[loc.id], None, 2).await.unwrap();
    assert_eq!(ids(&first), ["q1", "q2"]);
    let rest = store
        .queued_invitations(&[loc.id], Some(&first[1].id), 2)
        .await
        .unwrap();
    assert_eq!(ids(&rest), ["q3"]);
    assert!(store
        .queued_invitations(&[LocationId(loc.id.0 + 1)], None, 2)
        .await
        .unwrap()
        .is_empty());
}
