//! [`cloudvpp_store::engine::EngineStore`]'s licences: location app lists, assignment
//! records, their leases and guarded writes.

use crate::Backend;
use cloudvpp_abwire::assets::PricingParam;
use cloudvpp_store::engine::{
    AppleFailure, Assignment, AssignmentFilter, AssignmentId, AssignmentState, Invitation,
    InvitationId, InvitationState, LocationApp, LocationId,
};
use cloudvpp_store::StoreError;

const NOW: i64 = 1_700_000_000_000;

async fn location(b: &Backend, name: &str) -> LocationId {
    b.store
        .add_location(
            name,
            &format!("stoken-{name}"),
            "http://127.0.0.1:1/mdm/v2",
            "n",
            None,
        )
        .await
        .unwrap()
        .id
}

fn invitation(loc: LocationId, person: &str, state: InvitationState) -> Invitation {
    Invitation {
        id: InvitationId::new(format!("inv-{person}")),
        location_id: loc,
        client_user_id: person.into(),
        email: Some(format!("{person}@example.com")),
        enrollment_id: None,
        channel: None,
        state,
        reason: None,
        invite_code: None,
        invitation_url: None,
        event_id: None,
        command_uuid: None,
        invitation_result: None,
        attempts: 0,
        created_at: NOW,
        updated_at: NOW,
        next_action_at: i64::MAX,
    }
}

fn assignment(loc: LocationId, person: &str, adam_id: &str, at: i64) -> Assignment {
    Assignment {
        id: AssignmentId::new(format!("asg-{person}-{adam_id}-{at}")),
        location_id: loc,
        client_user_id: person.into(),
        adam_id: adam_id.into(),
        pricing_param: PricingParam::Stdq,
        state: AssignmentState::Pending,
        error: None,
        note: None,
        event_id: None,
        attempts: 0,
        version: 0,
        created_at: at,
        updated_at: at,
        next_action_at: at,
    }
}

/// Location app lists; associated people without their assignments; assignments created
/// once per (location, person, adamId); finding invited people by clientUserId or email.
pub async fn location_apps_and_missing_assignments(b: &Backend) {
    let (l1, l2) = (location(b, "L1").await, location(b, "L2").await);
    for (loc, adam, pricing) in [
        (l1, "100", PricingParam::Stdq),
        (l1, "200", PricingParam::Stdq),
        (l1, "200", PricingParam::Plus),
        (l2, "300", PricingParam::Stdq),
    ] {
        let app = LocationApp {
            location_id: loc,
            adam_id: adam.into(),
            pricing_param: pricing,
            created_at: NOW,
        };
        b.store.put_location_app(&app).await.unwrap();
    }
    let apps = b.store.location_apps(&[l1]).await.unwrap();
    let listed: Vec<(&str, PricingParam)> = apps
        .iter()
        .map(|a| (a.adam_id.as_str(), a.pricing_param))
        .collect();
    assert_eq!(
        listed,
        [("100", PricingParam::Stdq), ("200", PricingParam::Plus)],
        "a second add changes the quality"
    );
    assert_eq!(b.store.location_apps(&[l1, l2]).await.unwrap().len(), 3);
    assert!(b.store.location_apps(&[]).await.unwrap().is_empty());

    let invs = [
        invitation(l1, "ann", InvitationState::Associated),
        invitation(l1, "bob", InvitationState::Delivered),
        invitation(l2, "cat", InvitationState::Associated),
    ];
    b.store.create_invitations(&invs).await.unwrap();
    // A second associated invitation of ann (another device) asks for nothing more.
    let mut again = invitation(l1, "ann", InvitationState::Associated);
    again.id = InvitationId::new("inv-ann-2");
    b.store.create_invitations(&[again]).await.unwrap();
    let mut missing: Vec<(String, String)> = b
        .store
        .missing_assignments(&[l1, l2], 100)
        .await
        .unwrap()
        .into_iter()
        .map(|(p, a)| (p, a.adam_id))
        .collect();
    missing.sort();
    assert_eq!(
        missing,
        [
            ("ann".to_string(), "100".to_string()),
            ("ann".into(), "200".into()),
            ("cat".into(), "300".into())
        ]
    );
    assert_eq!(
        b.store
            .create_assignments(&[assignment(l1, "ann", "100", NOW)])
            .await
            .unwrap(),
        1
    );
    // The same person and app again, under another ID: not created twice.
    let created = b
        .store
        .create_assignments(&[
            assignment(l1, "ann", "100", NOW + 1),
            assignment(l1, "ann", "200", NOW + 1),
        ])
        .await
        .unwrap();
    assert_eq!(created, 1);
    assert_eq!(
        b.store.missing_assignments(&[l1], 100).await.unwrap().len(),
        0
    );
    assert!(b.store.remove_location_app(l1, "200").await.unwrap());
    assert!(!b.store.remove_location_app(l1, "200").await.unwrap());
    assert_eq!(
        b.store
            .assignments_of(&[(l1, "ann".into())])
            .await
            .unwrap()
            .len(),
        2,
        "assignments stay"
    );

    let found = b
        .store
        .find_invitations(&["bob".into()], &["Cat@Example.com".into()])
        .await
        .unwrap();
    let mut people: Vec<&str> = found.iter().map(|i| i.client_user_id.as_str()).collect();
    people.sort();
    assert_eq!(people, ["bob", "cat"]);
}

/// Assignments are leased to one owner at a time; an owner writes only what it holds; a
/// writer without a lease writes only the version it read and nothing a live lease holds.
pub async fn assignment_leases_and_guarded_writes(b: &Backend) {
    let loc = location(b, "L").await;
    let other = location(b, "M").await;
    let rows: Vec<Assignment> = ["p1", "p2", "p3"]
        .iter()
        .map(|p| assignment(loc, p, "100", NOW))
        .chain([assignment(other, "q", "100", NOW)])
        .collect();
    b.store.create_assignments(&rows).await.unwrap();
    // Not due yet, or of a location not asked for: not handed out.
    assert!(b
        .store
        .claim_assignments("a", &[loc], NOW - 1, 1000, 10)
        .await
        .unwrap()
        .is_empty());
    let held = b
        .store
        .claim_assignments("a", &[loc], NOW, 1000, 2)
        .await
        .unwrap();
    assert_eq!(held.len(), 2, "at most the limit");
    assert!(held.iter().all(|a| a.location_id == loc));
    let rest = b
        .store
        .claim_assignments("b", &[loc], NOW + 10, 1000, 10)
        .await
        .unwrap();
    assert_eq!(rest.len(), 1, "only what no one holds");
    assert!(held.iter().all(|h| h.id != rest[0].id));

    // b cannot write what a holds; a can, keeping or giving up its lease.
    let mut sent = held[0].clone();
    sent.state = AssignmentState::Requested;
    sent.attempts = 1;
    sent.next_action_at = NOW + 5000;
    assert_eq!(
        b.store
            .save_assignments("b", std::slice::from_ref(&sent), true)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        b.store
            .save_assignments("a", std::slice::from_ref(&sent), false)
            .await
            .unwrap(),
        1
    );
    sent.event_id = Some("ev-1".into());
    assert_eq!(
        b.store
            .save_assignments("a", std::slice::from_ref(&sent), true)
            .await
            .unwrap(),
        1
    );
    let stored = b.store.event_assignments(loc, "ev-1").await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].version, 2, "each write bumps the version");
    assert_eq!(stored[0].attempts, 1);

    // A writer without a lease: the version it read, and only rows no live lease holds.
    let mut done = stored[0].clone();
    done.state = AssignmentState::Assigned;
    let mut stale = done.clone();
    stale.version = 1;
    assert_eq!(
        b.store
            .update_idle_assignments(&[stale], NOW + 20)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        b.store
            .update_idle_assignments(std::slice::from_ref(&done), NOW + 20)
            .await
            .unwrap(),
        1
    );
    let mut leased = held[1].clone();
    leased.state = AssignmentState::Failed;
    leased.error = Some(AppleFailure {
        number: 9609,
        message: "Registered user not found".into(),
    });
    assert_eq!(
        b.store
            .update_idle_assignments(std::slice::from_ref(&leased), NOW + 20)
            .await
            .unwrap(),
        0,
        "a holds it"
    );
    // Renewed, a's lease outlives its first deadline; then it runs out and b takes over.
    b.store
        .renew_assignment_leases("a", NOW + 900, 1000)
        .await
        .unwrap();
    assert!(b
        .store
        .claim_assignments("b", &[loc], NOW + 1500, 1000, 10)
        .await
        .unwrap()
        .iter()
        .all(|a| a.id != held[1].id));
    let taken = b
        .store
        .claim_assignments("b", &[loc], NOW + 1901, 1000, 10)
        .await
        .unwrap();
    assert!(taken.iter().any(|a| a.id == held[1].id));
    assert_eq!(
        b.store
            .save_assignments("a", std::slice::from_ref(&leased), true)
            .await
            .unwrap(),
        0,
        "a lost it"
    );
    b.store.release_assignments("b").await.unwrap();
    assert_eq!(
        b.store
            .update_idle_assignments(std::slice::from_ref(&leased), NOW + 1902)
            .await
            .unwrap(),
        1,
        "given up: idle"
    );

    // Waiting ones of one app wake when licences may have appeared.
    let mut waiting = b
        .store
        .claim_assignments("c", &[loc], NOW + 2000, 1000, 10)
        .await
        .unwrap();
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    waiting[0].state = AssignmentState::Waiting;
    waiting[0].error = Some(AppleFailure {
        number: 9709,
        message: "not enough".into(),
    });
    waiting[0].next_action_at = NOW + 300_000;
    b.store.save_assignments("c", &waiting, true).await.unwrap();
    assert_eq!(
        b.store
            .wake_waiting(loc, "100", PricingParam::Plus, NOW + 2001)
            .await
            .unwrap(),
        0,
        "another quality"
    );
    assert_eq!(
        b.store
            .wake_waiting(loc, "100", PricingParam::Stdq, NOW + 2001)
            .await
            .unwrap(),
        1
    );
    let woken = b
        .store
        .claim_assignments("c", &[loc], NOW + 2001, 1000, 10)
        .await
        .unwrap();
    assert_eq!(woken.len(), 1);
    assert_eq!(woken[0].error.as_ref().map(|e| e.number), Some(9709));

    let counts = b.store.assignment_counts().await.unwrap();
    assert_eq!(
        counts,
        [
            (AssignmentState::Assigned, 1),
            (AssignmentState::Failed, 1),
            (AssignmentState::Pending, 1),
            (AssignmentState::Waiting, 1),
        ]
    );
    let failed = b
        .store
        .assignments(&AssignmentFilter {
            state: Some(AssignmentState::Failed),
            adam_id: Some("100".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].error.as_ref().map(|e| e.number), Some(9609));

    // A stored value that is not one of ours is corrupt, never a default.
    let corrupt = |r: Result<Vec<Assignment>, StoreError>, col: &str| match r {
        Err(StoreError::Corrupt { column, .. }) => assert_eq!(column, col),
        Err(e) => panic!("{col}: expected Corrupt, got {e}"),
        Ok(_) => panic!("{col}: a corrupt value was read as a good one"),
    };
    b.exec("UPDATE engine_assignments SET error_message = NULL WHERE state = 'failed'")
        .await;
    corrupt(
        b.store.assignments(&AssignmentFilter::default()).await,
        "error_number",
    );
    b.exec(
        "UPDATE engine_assignments SET state = 'lost', error_number = NULL WHERE state = 'failed'",
    )
    .await;
    corrupt(
        b.store.assignments(&AssignmentFilter::default()).await,
        "state",
    );
}
