//! [`cloudvpp_store::engine::EngineStore`]: one location per organisation, renewed tokens,
//! and the invitation reads the admin API answers with.

use crate::Backend;
use cloudvpp_store::engine::{
    Invitation, InvitationFilter, InvitationId, InvitationState, LocationId, NewLocation,
};
use cloudvpp_store::mdm::EnrollmentId;

fn new_location<'a>(stoken: &'a str, notify: &'a str) -> NewLocation<'a> {
    NewLocation {
        name: "Acme",
        stoken,
        base_url: "http://127.0.0.1:1/mdm/v2",
        notify_token: notify,
        expires_at: Some(1_900_000_000),
    }
}

/// A location is added once per organisation `uId`, even by writers racing each other; a
/// renewed token replaces the stored one.
pub async fn locations_once_per_organisation(b: &Backend) {
    let (loc, created) = b
        .store
        .add_location_once(&new_location("tok-1", "n1"), "UID-1")
        .await
        .unwrap();
    assert!(created);
    assert_eq!(loc.uid.as_deref(), Some("UID-1"));
    // The same organisation by uId, or an older row by its token: the one there.
    let (again, created) = b
        .store
        .add_location_once(&new_location("tok-2", "n2"), "UID-1")
        .await
        .unwrap();
    assert_eq!((again.id, created), (loc.id, false));
    assert_eq!(again.stoken, "tok-1", "nothing changed");
    let old = b
        .store
        .add_location("Old", "tok-old", "http://127.0.0.1:1/mdm/v2", "n", None)
        .await
        .unwrap();
    let (found, created) = b
        .store
        .add_location_once(&new_location("tok-old", "n3"), "UID-OLD")
        .await
        .unwrap();
    assert_eq!((found.id, created), (old.id, false));

    // Eight writers add one new organisation at once: one location.
    let mut set = tokio::task::JoinSet::new();
    for i in 0..8 {
        let store = b.store.clone();
        set.spawn(async move {
            let token = format!("race-{i}");
            store
                .add_location_once(&new_location(&token, "n"), "UID-RACE")
                .await
                .unwrap()
        });
    }
    let mut ids = std::collections::HashSet::new();
    let mut made = 0;
    while let Some(r) = set.join_next().await {
        let (l, created) = r.unwrap();
        ids.insert(l.id);
        made += created as usize;
    }
    assert_eq!((ids.len(), made), (1, 1));
    assert_eq!(b.store.locations().await.unwrap().len(), 3);

    // A renewed token replaces the old one, with its expiry and a new notification secret.
    b.store
        .replace_location_token(
            loc.id,
            &NewLocation {
                expires_at: Some(1_950_000_000),
                ..new_location("tok-renewed", "n-renewed")
            },
        )
        .await
        .unwrap();
    let l = b.store.location(loc.id).await.unwrap().unwrap();
    assert_eq!(l.stoken, "tok-renewed");
    assert_eq!(l.expires_at, Some(1_950_000_000));
    assert!(cloudvpp_store::secret::matches_digest(
        "n-renewed",
        &l.notify_token_digest
    ));
    assert_eq!(l.uid.as_deref(), Some("UID-1"));
}

fn invitation(
    id: &str,
    loc: LocationId,
    person: &str,
    state: InvitationState,
    created: i64,
    updated: i64,
) -> Invitation {
    Invitation {
        id: InvitationId::from(id),
        location_id: loc,
        client_user_id: person.into(),
        email: Some(format!("{person}@example.com")),
        enrollment_id: Some(EnrollmentId::from("DEVICE")),
        channel: None,
        state,
        reason: None,
        invite_code: None,
        invitation_url: None,
        event_id: None,
        command_uuid: None,
        invitation_result: None,
        attempts: 0,
        created_at: created,
        updated_at: updated,
        next_action_at: created,
    }
}

/// A person's invitations in every state; counts and listings by the same filter;
/// changes since a time in the order they happened.
pub async fn invitation_people_counts_and_changes(b: &Backend) {
    let (l1, _) = b
        .store
        .add_location_once(&new_location("t1", "n"), "U1")
        .await
        .unwrap();
    let (l2, _) = b
        .store
        .add_location_once(&new_location("t2", "n"), "U2")
        .await
        .unwrap();
    use InvitationState::*;
    let all = vec![
        invitation("a1", l1.id, "ann", Retired, 100, 500),
        invitation("a2", l1.id, "ann", Registering, 200, 200),
        invitation("b1", l1.id, "bob", Failed, 300, 400),
        invitation("c1", l1.id, "cat", Failed, 350, 350),
        invitation("a3", l2.id, "ann", Associated, 400, 600),
    ];
    b.store.create_invitations(&all).await.unwrap();

    let mut of: Vec<String> = b
        .store
        .invitations_of(&[(l1.id, "ann".into()), (l1.id, "bob".into())])
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id.to_string())
        .collect();
    of.sort();
    assert_eq!(of, ["a1", "a2", "b1"], "every state, this location only");

    let counts = |f: InvitationFilter| async move {
        let mut c = b.store.invitation_counts_matching(&f).await.unwrap();
        c.sort();
        c
    };
    assert_eq!(
        counts(InvitationFilter::default()).await,
        [(Registering, 1), (Associated, 1), (Failed, 2), (Retired, 1)]
    );
    let failed_here = InvitationFilter {
        state: Some(Failed),
        location_id: Some(l1.id),
        ..Default::default()
    };
    assert_eq!(counts(failed_here.clone()).await, [(Failed, 2)]);
    let ann = InvitationFilter {
        client_user_id: Some("ann".into()),
        ..Default::default()
    };
    assert_eq!(
        counts(ann.clone()).await,
        [(Registering, 1), (Associated, 1), (Retired, 1)]
    );
    // The limit cuts the listing, not the counts; newest first.
    let listed = b
        .store
        .invitations(&InvitationFilter {
            limit: Some(2),
            ..ann
        })
        .await
        .unwrap();
    let ids: Vec<String> = listed.iter().map(|i| i.id.to_string()).collect();
    assert_eq!(ids, ["a3", "a2"]);
    // Changes since 350, oldest change first.
    let since = b
        .store
        .invitations(&InvitationFilter {
            updated_since: Some(350),
            ..Default::default()
        })
        .await
        .unwrap();
    let ids: Vec<String> = since.iter().map(|i| i.id.to_string()).collect();
    assert_eq!(ids, ["c1", "b1", "a1", "a3"]);
    assert_eq!(
        counts(InvitationFilter {
            updated_since: Some(450),
            ..Default::default()
        })
        .await,
        [(Associated, 1), (Retired, 1)]
    );
}

/// Search by clientUserId or email (any case, LIKE's characters taken literally) and pages
/// of the newest-first listing; counts follow the search and ignore the page.
pub async fn invitation_search_and_pages(b: &Backend) {
    let (l1, _) = b
        .store
        .add_location_once(&new_location("t1", "n"), "U1")
        .await
        .unwrap();
    use InvitationState::*;
    let mut all = vec![
        invitation("p1", l1.id, "Pat", Queued, 100, 100),
        invitation("p2", l1.id, "pat_2", Failed, 200, 200),
        invitation("p3", l1.id, "patrick", Queued, 300, 300),
        invitation("o1", l1.id, "other", Queued, 400, 400),
        invitation("w1", l1.id, "100%", Queued, 500, 500),
    ];
    // Found by email only.
    all[3].email = Some("Someone.PAT@school.example".into());
    b.store.create_invitations(&all).await.unwrap();
    let find = |text: &str, limit: i64, offset: i64| {
        let f = InvitationFilter {
            search: Some(text.into()),
            limit: Some(limit),
            offset: Some(offset),
            ..Default::default()
        };
        async move {
            let ids: Vec<String> = b
                .store
                .invitations(&f)
                .await
                .unwrap()
                .into_iter()
                .map(|i| i.id.to_string())
                .collect();
            let mut counts = b.store.invitation_counts_matching(&f).await.unwrap();
            counts.sort();
            (ids, counts)
        }
    };
    let (ids, counts) = find("pat", 10, 0).await;
    assert_eq!(
        ids,
        ["o1", "p3", "p2", "p1"],
        "newest first, email included"
    );
    assert_eq!(counts, [(Queued, 3), (Failed, 1)]);
    // Pages: the counts do not change with the page.
    assert_eq!(
        find("PAT", 2, 0).await,
        (vec!["o1".into(), "p3".into()], counts.clone())
    );
    assert_eq!(find("pat", 2, 2).await.0, ["p2", "p1"]);
    assert!(find("pat", 2, 4).await.0.is_empty());
    // `_` and `%` are characters, not wildcards.
    assert_eq!(find("t_", 10, 0).await.0, ["p2"]);
    assert_eq!(find("0%", 10, 0).await.0, ["w1"]);
    assert!(find("nobody", 10, 0).await.0.is_empty());
    // With the other filters.
    let failed = InvitationFilter {
        search: Some("pat".into()),
        state: Some(Failed),
        ..Default::default()
    };
    let ids: Vec<String> = b
        .store
        .invitations(&failed)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id.to_string())
        .collect();
    assert_eq!(ids, ["p2"]);
}
