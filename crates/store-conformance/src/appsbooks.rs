//! [`cloudvpp_store::AppsBooksStore`] and its [`cloudvpp_store::OrgTx`].

use crate::Backend;
use cloudvpp_abwire::assets::PricingParam;
use cloudvpp_abwire::errors::USER_NOT_FOUND;
use cloudvpp_abwire::{RequestUser, UserStatus};
use cloudvpp_store::{
    AssetKey, AssignmentFilter, AssignmentRecord, EventClaim, EventId, EventPayload, EventProgress,
    EventStatus, EventType, NewUser, Org, StoreError, Target, UserFilter, UserOrder, UserPage,
    UserRecord, UserUpdate,
};

const NOW: i64 = 1_700_000_000_000;

async fn org(b: &Backend, uid: &str) -> Org {
    b.store
        .create_org(
            uid,
            &format!("Org {uid}"),
            "secret",
            &format!("token-{uid}"),
            2_000_000_000,
        )
        .await
        .expect("create_org")
}

fn record(cuid: &str, status: UserStatus) -> UserRecord {
    UserRecord {
        ord: 0,
        chg: 0,
        client_user_id: cuid.to_string(),
        email: Some(format!("{cuid}@example.com")),
        invite_code: Some(format!("code{cuid}")),
        id_hash: (status == UserStatus::Associated).then(|| format!("hash-{cuid}")),
        status,
    }
}

/// Adds records in one organisation transaction, numbering them as the service does.
async fn add_users(b: &Backend, org: &Org, users: &[(&str, UserStatus)]) -> Vec<UserRecord> {
    let mut tx = b.store.begin_org_write(org.id).await.expect("begin");
    let (mut count, mut chg) = (tx.org().user_count, tx.org().chg);
    let mut added = Vec::new();
    for (cuid, status) in users {
        count += 1;
        chg += 1;
        let mut r = record(cuid, *status);
        r.ord = count;
        r.chg = chg;
        r.invite_code = Some(format!("code{cuid}-{count}"));
        added.push(r);
    }
    let new: Vec<NewUser> = added
        .iter()
        .map(|r| NewUser {
            record: r.clone(),
            managed_apple_id: None,
        })
        .collect();
    tx.insert_users(&new).await.expect("insert_users");
    tx.set_counters(count, chg).await.expect("set_counters");
    tx.commit().await.expect("commit");
    added
}

/// A page carries every value as stored: quotes, backslashes, any Unicode, NULLs (the
/// page's rows travel as one JSON text on some backends), in every kind of listing.
pub async fn page_values_round_trip(b: &Backend) {
    let o = org(b, "2101").await;
    let odd = [
        "q\"uote",
        "back\\slash",
        "ünï €",
        "emoji 🎒",
        "tab\u{2028}sep",
        "[1,\"x\"]",
    ];
    let mut users: Vec<(&str, UserStatus)> =
        odd.iter().map(|c| (*c, UserStatus::Registered)).collect();
    users.push(("gone", UserStatus::Retired));
    users.push(("bound", UserStatus::Associated));
    let mut added = add_users(b, &o, &users).await;
    // NULLs where the columns allow them.
    b.exec("UPDATE users SET email = NULL, invite_code = NULL WHERE client_user_id = 'gone'")
        .await;
    let gone = added
        .iter_mut()
        .find(|u| u.client_user_id == "gone")
        .unwrap();
    (gone.email, gone.invite_code) = (None, None);
    let all = UserFilter::default();
    let p = page(b, &o, UserOrder::Created, &all, 0, 100).await;
    assert_eq!((p.total, &p.users), (added.len() as i64, &added));
    let p = page(b, &o, UserOrder::Created, &all, 2, 3).await;
    assert_eq!(p.users, added[2..5]);
    let p = page(b, &o, UserOrder::ChangedSince(0), &all, 0, 100).await;
    assert_eq!(p.users, added);
    let active = UserFilter {
        active_only: true,
        ..Default::default()
    };
    let p = page(b, &o, UserOrder::Created, &active, 0, 100).await;
    let want: Vec<_> = added
        .iter()
        .filter(|u| u.client_user_id != "gone")
        .cloned()
        .collect();
    assert_eq!((p.total, p.users), (want.len() as i64, want));
    // Past the end: the listing's size, no records.
    let p = page(b, &o, UserOrder::Created, &all, 8, 100).await;
    assert_eq!((p.total, p.users.len()), (8, 0));
    let empty = org(b, "2102").await;
    let p = page(b, &empty, UserOrder::Created, &all, 0, 100).await;
    assert_eq!((p.total, p.users.len()), (0, 0));
}

/// One page of a listing, unwrapped.
async fn page(
    b: &Backend,
    org: &Org,
    order: UserOrder,
    filter: &UserFilter,
    first: i64,
    size: i64,
) -> UserPage {
    b.store
        .list_users_page(org.id, order, filter, first, size)
        .await
        .expect("list_users_page")
}

fn request(cuids: &[&str]) -> Vec<RequestUser> {
    cuids
        .iter()
        .map(|c| RequestUser {
            client_user_id: c.to_string(),
            email: None,
            managed_apple_id: None,
        })
        .collect()
}

/// Organisations by id, uId and name; tokens only by their whole string; a renewal
/// revokes the old token; limits are stored by name.
pub async fn orgs_tokens_and_limits(b: &Backend) {
    let a = org(b, "1001").await;
    let c = org(b, "1002").await;
    assert_ne!(a.id, c.id);
    assert_eq!((a.user_count, a.chg), (0, 0));
    assert_eq!(b.store.find_org("1002").await.unwrap().unwrap().id, c.id);
    assert_eq!(
        b.store.find_org("Org 1001").await.unwrap().unwrap().id,
        a.id
    );
    assert!(b.store.find_org("nope").await.unwrap().is_none());
    assert_eq!(b.store.list_orgs().await.unwrap().len(), 2);

    let t = b.store.find_token("token-1001").await.unwrap().unwrap();
    assert_eq!((t.org_id, t.revoked), (a.id, false));
    assert!(b.store.find_token("token-100").await.unwrap().is_none());
    b.store
        .renew_token(a.id, "fresh", 2_100_000_000)
        .await
        .unwrap();
    assert!(
        b.store
            .find_token("token-1001")
            .await
            .unwrap()
            .unwrap()
            .revoked
    );
    assert!(!b.store.find_token("fresh").await.unwrap().unwrap().revoked);
    // The token with its organisation, in one read, as authentication takes them.
    let (t, o) = b.store.find_token_with_org("fresh").await.unwrap().unwrap();
    assert_eq!(
        (t.org_id, t.revoked, t.expires_at),
        (a.id, false, 2_100_000_000)
    );
    assert_eq!(
        (o.id, o.uid.as_str(), o.name.as_str()),
        (a.id, "1001", "Org 1001")
    );
    assert_eq!(o.secret, a.secret);
    let (t, o) = b
        .store
        .find_token_with_org("token-1001")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((t.org_id, t.revoked, o.id), (a.id, true, a.id));
    let (t, o) = b
        .store
        .find_token_with_org("token-1002")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((t.org_id, o.id, o.uid.as_str()), (c.id, c.id, "1002"));
    assert!(b
        .store
        .find_token_with_org("token-100")
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        b.store.current_token_expiry(a.id).await.unwrap(),
        Some(2_100_000_000)
    );
    // Only the digest is stored.
    let plain: i64 = sqlx::query_scalar::<_, i64>(
        "SELECT COUNT(*) FROM tokens WHERE stoken = 'fresh' OR stoken = 'token-1001'",
    )
    .fetch_one(&b.raw)
    .await
    .unwrap();
    assert_eq!(plain, 0);

    b.store.set_limit("maxUsers", 7).await.unwrap();
    b.store.set_limit("maxUsers", 9).await.unwrap();
    assert_eq!(
        b.store.get_limits().await.unwrap(),
        vec![("maxUsers".to_string(), 9)]
    );
}

/// Windows of `ord` (full listings) and `chg` (`sinceVersionId`), with Apple's filters;
/// a clientUserId's records oldest first.
pub async fn user_windows_and_filters(b: &Backend) {
    let o = org(b, "2001").await;
    let other = org(b, "2002").await;
    add_users(b, &other, &[("x", UserStatus::Registered)]).await;
    add_users(
        b,
        &o,
        &[
            ("a", UserStatus::Registered),
            ("b", UserStatus::Retired),
            ("c", UserStatus::Associated),
            ("b", UserStatus::Registered),
        ],
    )
    .await;
    let cuids = |v: Vec<UserRecord>| v.into_iter().map(|u| u.client_user_id).collect::<Vec<_>>();
    let all = UserFilter::default();
    let active = UserFilter {
        active_only: true,
        ..Default::default()
    };
    let retired = UserFilter {
        retired_only: true,
        ..Default::default()
    };
    let created = UserOrder::Created;
    let p = page(b, &o, created, &all, 0, 10).await;
    assert_eq!(p.total, 4);
    assert_eq!(cuids(p.users), ["a", "b", "c", "b"]);
    let p = page(b, &o, created, &all, 1, 2).await;
    assert_eq!(p.total, 4);
    assert_eq!(cuids(p.users), ["b", "c"]);
    let p = page(b, &o, created, &active, 0, 10).await;
    assert_eq!(p.total, 3);
    assert_eq!(cuids(p.users), ["a", "c", "b"]);
    // Filtered pages are full: the second page of one active user is the second active one.
    let p = page(b, &o, created, &active, 1, 1).await;
    assert_eq!(p.total, 3);
    assert_eq!(cuids(p.users), ["c"]);
    let p = page(b, &o, created, &retired, 0, 10).await;
    assert_eq!(p.total, 1);
    assert_eq!(cuids(p.users), ["b"]);
    // Past the end: nothing, and the listing's size.
    let p = page(b, &o, created, &retired, 1, 10).await;
    assert_eq!((p.users.len(), p.total), (0, 1));
    let both = UserFilter {
        active_only: true,
        retired_only: true,
    };
    assert_eq!(
        page(b, &o, created, &both, 0, 10).await,
        UserPage::default()
    );
    // A change moves a record to the end of the chg order.
    let mut tx = b.store.begin_org_write(o.id).await.unwrap();
    let mut a = tx.active_users(&["a"]).await.unwrap().pop().unwrap();
    a.chg = tx.org().chg + 1;
    a.email = Some("new@example.com".into());
    tx.update_users(&[UserUpdate {
        record: a.clone(),
        managed_apple_id: Some("a@appleid.example".into()),
    }])
    .await
    .unwrap();
    let count = tx.org().user_count;
    tx.set_counters(count, a.chg).await.unwrap();
    tx.commit().await.unwrap();
    let since = page(b, &o, UserOrder::ChangedSince(1), &all, 0, 100).await;
    assert_eq!(since.total, 4);
    let since = since.users;
    assert_eq!(cuids(since.clone()), ["b", "c", "b", "a"]);
    let p = page(b, &o, UserOrder::ChangedSince(1), &active, 1, 2).await;
    assert_eq!(p.total, 3);
    assert_eq!(cuids(p.users), ["b", "a"]);
    assert_eq!(since[3].email.as_deref(), Some("new@example.com"));
    let org_now = b.store.get_org(o.id).await.unwrap().unwrap();
    assert_eq!((org_now.user_count, org_now.chg), (4, 5));

    let bs = b
        .store
        .list_users_by_client_id(o.id, "b", &all)
        .await
        .unwrap();
    assert_eq!(
        bs.iter().map(|u| (u.ord, u.status)).collect::<Vec<_>>(),
        [(2, UserStatus::Retired), (4, UserStatus::Registered)]
    );
    let (found_org, found) = b.store.find_invitation("codec-3").await.unwrap().unwrap();
    assert_eq!((found_org, found.client_user_id.as_str()), (o.id, "c"));
    assert!(b.store.find_invitation("nope").await.unwrap().is_none());
}

/// Filtered and `sinceVersionId` listings are placed by the counted blocks the writers keep:
/// every page but the last is full, whatever the filter, across block boundaries, after
/// retirements and changes, and matches the listing a plain scan would give.
pub async fn filtered_pages_are_full_and_exact(b: &Backend) {
    let o = org(b, "2101").await;
    let names: Vec<String> = (0..700).map(|i| format!("u{i:04}")).collect();
    let mut batch = Vec::new();
    for n in &names {
        batch.push((n.as_str(), UserStatus::Registered));
    }
    add_users(b, &o, &batch[..300]).await;
    add_users(b, &o, &batch[300..]).await;
    // Retire every third record and change every seventh, in two transactions: records
    // change kind and move along the chg order.
    for (step, pick) in [(3usize, true), (7usize, false)] {
        let mut tx = b.store.begin_org_write(o.id).await.unwrap();
        let mut chg = tx.org().chg;
        let keys: Vec<&str> = names.iter().step_by(step).map(String::as_str).collect();
        let mut updates = Vec::new();
        for mut r in tx.active_users(&keys).await.unwrap() {
            chg += 1;
            r.chg = chg;
            if pick {
                r.status = UserStatus::Retired;
            } else {
                r.email = Some("changed@example.com".into());
            }
            updates.push(UserUpdate {
                record: r,
                managed_apple_id: None,
            });
        }
        updates.sort_by_key(|u| u.record.ord);
        tx.update_users(&updates).await.unwrap();
        let count = tx.org().user_count;
        tx.set_counters(count, chg).await.unwrap();
        tx.commit().await.unwrap();
    }
    // The model: every record, read in full.
    let every = page(b, &o, UserOrder::Created, &UserFilter::default(), 0, 10_000)
        .await
        .users;
    assert_eq!(every.len(), 700);
    let version = b.store.get_org(o.id).await.unwrap().unwrap().chg;
    for (active_only, retired_only) in [(false, false), (true, false), (false, true)] {
        let filter = UserFilter {
            active_only,
            retired_only,
        };
        let keep = |u: &&UserRecord| {
            (!active_only || u.status != UserStatus::Retired)
                && (!retired_only || u.status == UserStatus::Retired)
        };
        for since in [None, Some(0), Some(5), Some(300), Some(699), Some(version)] {
            let mut want: Vec<&UserRecord> = every
                .iter()
                .filter(keep)
                .filter(|u| since.is_none_or(|v| u.chg > v))
                .collect();
            if since.is_some() {
                want.sort_by_key(|u| u.chg);
            }
            let order = since.map_or(UserOrder::Created, UserOrder::ChangedSince);
            for size in [1i64, 7, 100, 256] {
                let mut got = Vec::new();
                let mut first = 0;
                loop {
                    let p = page(b, &o, order, &filter, first, size).await;
                    assert_eq!(p.total, want.len() as i64, "{filter:?} {since:?} {size}");
                    if first >= p.total {
                        assert!(p.users.is_empty());
                        break;
                    }
                    let expect = (p.total - first).min(size);
                    assert_eq!(p.users.len() as i64, expect, "a full page at {first}");
                    got.extend(p.users);
                    first += size;
                    if size == 1 && first > 40 {
                        // Far pages of one: sample them, not all 700 queries.
                        assert!(got.iter().zip(&want).all(|(g, w)| g == *w));
                        first = (first + 97).min(p.total);
                        let p = page(b, &o, order, &filter, first - 1, 1).await;
                        if let Some(u) = p.users.first() {
                            assert_eq!(u, want[(first - 1) as usize]);
                        }
                        break;
                    }
                }
                if size > 1 {
                    assert_eq!(got.len(), want.len(), "{filter:?} {since:?} {size}");
                    assert!(got.iter().zip(&want).all(|(g, w)| g == *w));
                }
            }
        }
    }
}

/// The reads an organisation transaction offers: active records by clientUserId, the
/// holders of Apple Accounts, a record by invite code; many keys at once.
pub async fn org_transaction_reads(b: &Backend) {
    let o = org(b, "3001").await;
    let many: Vec<String> = (0..2500).map(|i| format!("u{i}")).collect();
    let specs: Vec<(&str, UserStatus)> = many
        .iter()
        .map(|c| (c.as_str(), UserStatus::Registered))
        .chain([
            ("gone", UserStatus::Retired),
            ("held", UserStatus::Associated),
        ])
        .collect();
    add_users(b, &o, &specs).await;
    let mut tx = b.store.begin_org_write(o.id).await.unwrap();
    let mut keys: Vec<&str> = many.iter().map(String::as_str).collect();
    keys.extend(["gone", "held", "missing"]);
    let active = tx.active_users(&keys).await.unwrap();
    assert_eq!(
        active.len(),
        2501,
        "every active record, none retired, across chunks"
    );
    let holders = tx
        .associated_with(&["hash-held", "hash-gone", "x"])
        .await
        .unwrap();
    assert_eq!(holders.len(), 1);
    assert_eq!(holders[0].client_user_id, "held");
    let by_code = tx.user_by_invite_code("codeu7-8").await.unwrap().unwrap();
    assert_eq!(by_code.client_user_id, "u7");
    assert!(tx.user_by_invite_code("nope").await.unwrap().is_none());
}

/// A transaction dropped without commit writes nothing; one that commits writes
/// everything, notifications included.
pub async fn org_transactions_are_all_or_nothing(b: &Backend) {
    let o = org(b, "4001").await;
    {
        let mut tx = b.store.begin_org_write(o.id).await.unwrap();
        let mut r = record("lost", UserStatus::Registered);
        (r.ord, r.chg) = (1, 1);
        tx.insert_users(&[NewUser {
            record: r,
            managed_apple_id: None,
        }])
        .await
        .unwrap();
        tx.set_counters(1, 1).await.unwrap();
        tx.enqueue_notifications("USER_MANAGEMENT", &["{}".into()], NOW)
            .await
            .unwrap();
    }
    let after = b.store.get_org(o.id).await.unwrap().unwrap();
    assert_eq!((after.user_count, after.chg), (0, 0));
    assert!(b.store.notification_orgs().await.unwrap().is_empty());
    assert!(b
        .store
        .list_users_by_client_id(o.id, "lost", &UserFilter::default())
        .await
        .unwrap()
        .is_empty());

    let mut tx = b.store.begin_org_write(o.id).await.unwrap();
    tx.enqueue_notifications(
        "USER_MANAGEMENT",
        &["{\"n\":1}".into(), "{\"n\":2}".into()],
        NOW,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        b.store.notification_counts(o.id).await.unwrap(),
        vec![("pending".to_string(), 2)]
    );
}

/// Writers of one organisation never share a change number or an ordinal: each holds
/// the organisation until it commits.
pub async fn concurrent_writers_never_share_numbers(b: &Backend) {
    let o = org(b, "5001").await;
    let mut tasks = Vec::new();
    for t in 0..4 {
        let store = b.store.clone();
        let id = o.id;
        tasks.push(tokio::spawn(async move {
            for i in 0..15 {
                let mut tx = store.begin_org_write(id).await.unwrap();
                let (count, chg) = (tx.org().user_count + 1, tx.org().chg + 1);
                // Another writer waiting here must not read the same counters.
                tokio::task::yield_now().await;
                let mut r = record(&format!("t{t}-{i}"), UserStatus::Registered);
                (r.ord, r.chg) = (count, chg);
                r.invite_code = Some(format!("c{t}x{i}"));
                tx.insert_users(&[NewUser {
                    record: r,
                    managed_apple_id: None,
                }])
                .await
                .unwrap();
                tx.set_counters(count, chg).await.unwrap();
                tx.commit().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let after = b.store.get_org(o.id).await.unwrap().unwrap();
    assert_eq!((after.user_count, after.chg), (60, 60));
    let users = page(
        b,
        &o,
        UserOrder::ChangedSince(0),
        &UserFilter::default(),
        0,
        100,
    )
    .await
    .users;
    let chgs: Vec<i64> = users.iter().map(|u| u.chg).collect();
    assert_eq!(chgs, (1..=60).collect::<Vec<_>>());
}

/// Acceptances (`UserTx`) commit side by side and have their changes numbered after the
/// commit: the numbers end up dense and distinct, the counted blocks exact, and a
/// `sinceVersionId` reader running meanwhile never skips one. A change committed but left
/// unnumbered (its process died) is numbered by `number_changes`.
pub async fn acceptances_are_numbered_after_commit_and_never_skipped(b: &Backend) {
    let o = org(b, "5002").await;
    let names: Vec<String> = (0..120).map(|i| format!("a{i}")).collect();
    let pairs: Vec<(&str, UserStatus)> = names
        .iter()
        .map(|n| (n.as_str(), UserStatus::Registered))
        .collect();
    let added = add_users(b, &o, &pairs).await;
    let v0 = b.store.get_org(o.id).await.unwrap().unwrap().chg;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A sync client: version first, then everything changed since the previous one.
    let reader = {
        let (store, id, done) = (b.store.clone(), o.id, done.clone());
        tokio::spawn(async move {
            let mut since = v0;
            let mut seen = std::collections::HashSet::new();
            loop {
                let last = done.load(std::sync::atomic::Ordering::SeqCst);
                let version = store.get_org(id).await.unwrap().unwrap().chg;
                let page = store
                    .list_users_page(
                        id,
                        UserOrder::ChangedSince(since),
                        &UserFilter::default(),
                        0,
                        10_000,
                    )
                    .await
                    .unwrap();
                for u in page.users {
                    if u.status == UserStatus::Associated {
                        seen.insert(u.client_user_id);
                    }
                }
                since = version;
                if last {
                    return seen;
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let mut tasks = Vec::new();
    for t in 0..6 {
        let store = b.store.clone();
        let mine: Vec<UserRecord> = added.iter().skip(t).step_by(6).cloned().collect();
        let id = o.id;
        tasks.push(tokio::spawn(async move {
            for rec in mine {
                let hash = format!("hash-{}", rec.client_user_id);
                let mut tx = store.begin_user_write(id, &hash).await.unwrap();
                let mut user = tx
                    .user_by_invite_code(rec.invite_code.as_deref().unwrap())
                    .await
                    .unwrap()
                    .expect("the record of the code");
                assert!(tx.associated_with().await.unwrap().is_empty());
                tokio::task::yield_now().await;
                user.status = UserStatus::Associated;
                user.id_hash = Some(hash);
                tx.change_user(&UserUpdate {
                    record: user,
                    managed_apple_id: None,
                })
                .await
                .unwrap();
                tx.commit().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = reader.await.unwrap();
    assert_eq!(
        seen.len(),
        120,
        "every acceptance seen by the syncing reader"
    );
    let after = b.store.get_org(o.id).await.unwrap().unwrap();
    assert_eq!(after.chg, v0 + 120, "one number per acceptance");
    let changed = page(
        b,
        &o,
        UserOrder::ChangedSince(v0),
        &UserFilter::default(),
        0,
        1000,
    )
    .await;
    let chgs: Vec<i64> = changed.users.iter().map(|u| u.chg).collect();
    assert_eq!(chgs, (v0 + 1..=v0 + 120).collect::<Vec<_>>());
    assert!(changed
        .users
        .iter()
        .all(|u| u.status == UserStatus::Associated));
    assert_eq!(changed.total, 120, "counted blocks follow the moves");
    // Pages placed by the counted blocks agree with the records.
    let second = page(
        b,
        &o,
        UserOrder::ChangedSince(v0),
        &UserFilter::default(),
        100,
        100,
    )
    .await;
    assert_eq!(second.users.len(), 20);
    assert_eq!(second.users[0].chg, v0 + 101);
    // A change committed without its number (an instance died after the commit).
    b.exec(&format!(
        "UPDATE users SET renumber = 1 WHERE org_id = {} AND client_user_id = 'a7'",
        o.id.0
    ))
    .await;
    assert_eq!(b.store.number_changes().await.unwrap(), 1);
    assert_eq!(b.store.number_changes().await.unwrap(), 0);
    let last = page(
        b,
        &o,
        UserOrder::ChangedSince(v0 + 120),
        &UserFilter::default(),
        0,
        10,
    )
    .await;
    assert_eq!(last.users.len(), 1);
    assert_eq!(
        (last.users[0].client_user_id.as_str(), last.users[0].chg),
        ("a7", v0 + 121)
    );
}

/// Queues one notification of `o`, due now.
async fn enqueue(b: &Backend, o: &Org, body: impl Into<String>) {
    let mut tx = b.store.begin_org_write(o.id).await.unwrap();
    tx.enqueue_notifications("TEST_NOTIFICATION", &[body.into()], cloudvpp_now())
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

async fn claim(b: &Backend, owner: &str, now: i64) -> Option<EventClaim> {
    b.store.claim_event(owner, now, 1000).await.unwrap()
}

/// Events run in order per organisation and in parallel across organisations, under
/// leases that expire; a claim that lost its lease can write nothing.
pub async fn event_claims_leases_and_steps(b: &Backend) {
    let a = org(b, "6001").await;
    let c = org(b, "6002").await;
    for (o, id) in [(&a, "a1"), (&a, "a2"), (&c, "c1")] {
        b.store
            .insert_event(
                o.id,
                &EventId::new(id),
                EventType::Create,
                &EventPayload::Users(request(&["p", "q"])),
                2,
                NOW,
            )
            .await
            .unwrap();
    }
    let first = claim(b, "w1", NOW).await.unwrap();
    assert_eq!((first.event_id.as_str(), first.cursor), ("a1", 0));
    assert_eq!(first.payload.len(), 2);
    // a2 waits for a1; c1 is free.
    let second = claim(b, "w2", NOW).await.unwrap();
    assert_eq!(second.event_id.as_str(), "c1");
    assert!(claim(b, "w3", NOW).await.is_none());

    // One step of a1 under w1's lease.
    let mut tx = b.store.begin_org_write(a.id).await.unwrap();
    let (mut progress, total) = tx.lock_event(&first).await.unwrap();
    assert_eq!((progress.clone(), total), (EventProgress::default(), 2));
    progress.cursor = 1;
    progress.num_completed = 1;
    tx.save_event(&first, &progress, EventStatus::Pending, NOW, 1000)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let ev = b
        .store
        .get_event(a.id, &EventId::new("a1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (ev.status, ev.num_completed, ev.num_requested),
        (EventStatus::Pending, 1, 2)
    );

    // The claim's cursor is now stale: its holder must re-read before writing.
    let mut tx = b.store.begin_org_write(a.id).await.unwrap();
    assert!(matches!(
        tx.lock_event(&first).await,
        Err(StoreError::LeaseLost)
    ));
    tx.rollback().await.unwrap();

    // The lease ran out (the step renewed it to NOW + 1000): w3 takes a1 where it was.
    let taken = claim(b, "w3", NOW + 1001).await.unwrap();
    assert_eq!((taken.event_id.as_str(), taken.cursor), ("a1", 1));
    let mut stale = first.clone();
    stale.cursor = 1;
    let mut tx = b.store.begin_org_write(a.id).await.unwrap();
    assert!(matches!(
        tx.lock_event(&stale).await,
        Err(StoreError::LeaseLost)
    ));
    tx.rollback().await.unwrap();
    assert!(matches!(
        b.store.event_step_failed(&stale, NOW + 1001, 1000).await,
        Err(StoreError::LeaseLost)
    ));
    assert_eq!(
        b.store
            .event_step_failed(&taken, NOW + 1001, 1000)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        b.store
            .event_step_failed(&taken, NOW + 1001, 1000)
            .await
            .unwrap(),
        2
    );
    let again = claim(b, "w4", NOW + 5000).await.unwrap();
    assert_eq!(again.step_failures, 2, "failures are kept with the event");

    // Finishing a1 lets a2 be claimed; the failures and final status read back.
    let mut tx = b.store.begin_org_write(a.id).await.unwrap();
    let (mut progress, _) = tx.lock_event(&again).await.unwrap();
    progress.cursor = 2;
    progress.failures = vec![(USER_NOT_FOUND, vec!["q".into()])];
    tx.save_event(&again, &progress, EventStatus::Failed, NOW + 5000, 1000)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let ev = b
        .store
        .get_event(a.id, &EventId::new("a1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev.status, EventStatus::Failed);
    assert_eq!(ev.failures, vec![(USER_NOT_FOUND, vec!["q".to_string()])]);
    assert!(
        b.store
            .get_event(c.id, &EventId::new("a1"))
            .await
            .unwrap()
            .is_none(),
        "events are per organisation"
    );
    let next = claim(b, "w5", NOW + 5000).await.unwrap();
    assert_eq!(next.event_id.as_str(), "a2");
}

/// Notifications are leased per organisation, soonest due first; a retry waits for its
/// time, a dead one is never handed out again; a full backlog drops the oldest.
pub async fn outbox_order_leases_retries_and_trim(b: &Backend) {
    let a = org(b, "7001").await;
    let c = org(b, "7002").await;
    for (o, body) in [(&a, "a1"), (&a, "a2"), (&a, "a3"), (&c, "c1")] {
        enqueue(b, o, body).await;
    }
    let mut orgs = b.store.notification_orgs().await.unwrap();
    orgs.sort();
    let mut want = vec![a.id, c.id];
    want.sort();
    assert_eq!(orgs, want);
    let now = cloudvpp_now();
    let got = b
        .store
        .claim_notifications("s1", a.id, now, 1000, 2)
        .await
        .unwrap();
    assert_eq!(
        got.iter().map(|i| i.body.as_str()).collect::<Vec<_>>(),
        ["a1", "a2"]
    );
    assert_eq!(got[0].attempts, 0);
    // Leased: another sender gets only the third.
    let rest = b
        .store
        .claim_notifications("s2", a.id, now, 1000, 10)
        .await
        .unwrap();
    assert_eq!(
        rest.iter().map(|i| i.body.as_str()).collect::<Vec<_>>(),
        ["a3"]
    );
    b.store
        .notification_delivered(got[0].id, now)
        .await
        .unwrap();
    b.store
        .notification_failed(got[1].id, Some(now + 60_000), "HTTP 500")
        .await
        .unwrap();
    b.store
        .notification_failed(rest[0].id, None, "gave up")
        .await
        .unwrap();
    assert!(b
        .store
        .claim_notifications("s3", a.id, now + 1, 1000, 10)
        .await
        .unwrap()
        .is_empty());
    let retry = b
        .store
        .claim_notifications("s3", a.id, now + 60_000, 1000, 10)
        .await
        .unwrap();
    assert_eq!(retry.len(), 1);
    assert_eq!((retry[0].body.as_str(), retry[0].attempts), ("a2", 1));
    let mut counts = b.store.notification_counts(a.id).await.unwrap();
    counts.sort();
    assert_eq!(
        counts,
        vec![
            ("dead".to_string(), 1),
            ("delivered".to_string(), 1),
            ("pending".to_string(), 1)
        ]
    );

    for i in 0..5 {
        enqueue(b, &c, format!("c{}", i + 2)).await;
    }
    assert_eq!(b.store.trim_notifications(c.id, 2, now).await.unwrap(), 4);
    let kept = b
        .store
        .claim_notifications("s4", c.id, cloudvpp_now(), 1000, 10)
        .await
        .unwrap();
    assert_eq!(
        kept.iter().map(|i| i.body.as_str()).collect::<Vec<_>>(),
        ["c5", "c6"]
    );
}

/// Requests are counted per organisation in the database's current second.
pub async fn request_windows(b: &Backend) {
    let a = org(b, "8001").await;
    let c = org(b, "8002").await;
    // A window may roll over between two counts: retry until three land in one.
    for _ in 0..5 {
        let n1 = b.store.count_request(a.id).await.unwrap();
        let n2 = b.store.count_request(a.id).await.unwrap();
        let other = b.store.count_request(c.id).await.unwrap();
        let n3 = b.store.count_request(a.id).await.unwrap();
        if n3 == n1 + 2 {
            assert_eq!(n2, n1 + 1);
            assert!(
                other >= 1 && other <= n3,
                "another organisation counts apart"
            );
            return;
        }
    }
    panic!("no three requests counted in one second in five tries");
}

/// A value a column cannot hold is an error naming the column, never a default.
pub async fn corrupt_values_are_reported(b: &Backend) {
    let o = org(b, "9001").await;
    add_users(b, &o, &[("a", UserStatus::Registered)]).await;
    b.store
        .insert_event(
            o.id,
            &EventId::new("e1"),
            EventType::Retire,
            &EventPayload::Users(request(&["a"])),
            1,
            NOW,
        )
        .await
        .unwrap();
    let corrupt = |r: Result<_, StoreError>, col: &str| match r {
        Err(StoreError::Corrupt { column, .. }) => assert_eq!(column, col),
        Err(e) => panic!("{col}: expected Corrupt, got {e}"),
        Ok(_) => panic!("{col}: a corrupt value was read as a good one"),
    };

    b.exec("UPDATE events SET event_type = 'REVIVE'").await;
    corrupt(
        b.store
            .get_event(o.id, &EventId::new("e1"))
            .await
            .map(|_| ()),
        "event_type",
    );
    corrupt(
        b.store.claim_event("w", NOW, 1000).await.map(|_| ()),
        "event_type",
    );
    for (planted, column) in [
        ("event_type = 'RETIRE', status = 'DONE-ISH'", "status"),
        (
            "status = 'PENDING', progress = '{\"cursor\": -4}'",
            "progress",
        ),
        ("progress = '{\"failures\": [[1234, [\"a\"]]]}'", "progress"),
    ] {
        b.exec(&format!("UPDATE events SET {planted}")).await;
        corrupt(
            b.store
                .get_event(o.id, &EventId::new("e1"))
                .await
                .map(|_| ()),
            column,
        );
    }

    b.exec("UPDATE users SET status = 'Asleep'").await;
    corrupt(
        b.store
            .list_users_page(o.id, UserOrder::Created, &UserFilter::default(), 0, 1)
            .await
            .map(|_| ()),
        "status",
    );
    b.exec("UPDATE orgs SET notification_types = 'not json'")
        .await;
    corrupt(
        b.store.get_org(o.id).await.map(|_| ()),
        "notification_types",
    );
}

fn cloudvpp_now() -> i64 {
    use cloudvpp_store::clock::Clock;
    cloudvpp_store::clock::SystemClock.now_ms()
}

/// Assets are written and read back whole, per organisation, by key; the assets' version
/// moves only when asked; a stored value that is not Apple's is corrupt.
pub async fn assets_round_trip(b: &Backend) {
    use cloudvpp_abwire::assets::{PricingParam, ProductType};
    use cloudvpp_store::AssetRecord;
    let o = org(b, "9101").await;
    let other = org(b, "9102").await;
    let asset = |adam: &str, pricing, total| AssetRecord {
        adam_id: adam.to_string(),
        pricing_param: pricing,
        product_type: ProductType::App,
        supported_platforms: vec!["iOS".into(), "macOS".into()],
        device_assignable: true,
        revocable: false,
        total_count: total,
        assigned_count: 1,
        retired_count: 1,
    };
    let mut tx = b.store.begin_org_write(o.id).await.unwrap();
    tx.put_assets(
        &[
            asset("20", PricingParam::Stdq, 5),
            asset("10", PricingParam::Plus, 7),
        ],
        3,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let mut tx = b.store.begin_org_write(other.id).await.unwrap();
    tx.put_assets(&[asset("10", PricingParam::Plus, 1)], 1)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let listed = b.store.list_assets(o.id).await.unwrap();
    assert_eq!(
        listed,
        vec![
            asset("10", PricingParam::Plus, 7),
            asset("20", PricingParam::Stdq, 5)
        ]
    );
    assert_eq!(b.store.get_org(o.id).await.unwrap().unwrap().asset_chg, 3);
    let mut tx = b.store.begin_org_write(o.id).await.unwrap();
    let got = tx
        .assets(&[
            ("10", PricingParam::Plus),
            ("10", PricingParam::Stdq),
            ("30", PricingParam::Stdq),
        ])
        .await
        .unwrap();
    assert_eq!(got, vec![asset("10", PricingParam::Plus, 7)]);
    // Replaced whole, by key.
    tx.put_assets(&[asset("10", PricingParam::Plus, 9)], 4)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(b.store.list_assets(o.id).await.unwrap()[0].total_count, 9);
    assert_eq!(
        b.store.list_assets(other.id).await.unwrap()[0].total_count,
        1
    );

    b.exec("UPDATE assets SET pricing_param = 'GOLD' WHERE total_count = 1")
        .await;
    match b.store.list_assets(other.id).await {
        Err(StoreError::Corrupt { column, .. }) => assert_eq!(column, "pricing_param"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

fn assignment(adam_id: &str, target: Target, chg: i64, user_active: bool) -> AssignmentRecord {
    AssignmentRecord {
        asset: AssetKey {
            adam_id: adam_id.to_string(),
            pricing_param: PricingParam::Stdq,
        },
        target,
        chg,
        user_active,
    }
}

/// Every page of an assignments listing, in pages of `size`.
async fn assignment_pages(
    b: &Backend,
    org: &Org,
    since: Option<i64>,
    filter: &AssignmentFilter,
    size: i64,
) -> (Vec<AssignmentRecord>, i64) {
    let mut out = Vec::new();
    let mut first = 0;
    loop {
        let p = b
            .store
            .list_assignments_page(org.id, since, filter, first, size)
            .await
            .expect("list_assignments_page");
        if p.assignments.is_empty() {
            return (out, p.total);
        }
        if first + size < p.total {
            assert_eq!(
                p.assignments.len() as i64,
                size,
                "a page before the last is full"
            );
        }
        first += size;
        out.extend(p.assignments);
    }
}

/// Assignments written, changed and removed across counted-block boundaries are listed
/// exactly: every filter, every `since`, full pages; lookups by target find them.
pub async fn assignments_listings_are_exact(b: &Backend) {
    let o = org(b, "9101").await;
    // 700 assignments (crossing the 256-key blocks twice), every seventh of an inactive
    // user, every tenth a device; two assets.
    let mut model: Vec<AssignmentRecord> = (1..=700)
        .map(|i| {
            let target = if i % 10 == 0 {
                Target::Serial(format!("S{i}"))
            } else {
                Target::User(format!("u{i}"))
            };
            let adam = if i % 2 == 0 { "1" } else { "2" };
            assignment(adam, target, i, i % 7 != 0 || i % 10 == 0)
        })
        .collect();
    let mut tx = b.store.begin_org_write(o.id).await.unwrap();
    tx.insert_assignments(&model).await.unwrap();
    tx.set_assignment_chg(700).await.unwrap();
    tx.commit().await.unwrap();
    // Remove 100 from the middle; move 50 to the end (a retirement), inactive.
    let mut tx = b.store.begin_org_write(o.id).await.unwrap();
    let gone: Vec<AssignmentRecord> = model.drain(200..300).collect();
    tx.delete_assignments(&gone).await.unwrap();
    let mut moves = Vec::new();
    for (k, a) in model.iter_mut().skip(400).take(50).enumerate() {
        let before = a.clone();
        a.chg = 701 + k as i64;
        a.user_active = false;
        moves.push((before, a.clone()));
    }
    tx.update_assignments(&moves).await.unwrap();
    tx.set_assignment_chg(750).await.unwrap();
    // Removing what is not stored as read is refused, and the transaction with it.
    assert!(matches!(
        tx.delete_assignments(&gone[..1]).await,
        Err(StoreError::Conflict(_))
    ));
    drop(tx);
    // The refused transaction wrote nothing: do it again and commit.
    let mut tx = b.store.begin_org_write(o.id).await.unwrap();
    tx.delete_assignments(&gone).await.unwrap();
    tx.update_assignments(&moves).await.unwrap();
    tx.set_assignment_chg(750).await.unwrap();
    tx.commit().await.unwrap();
    model.sort_by_key(|a| a.chg);

    let none = AssignmentFilter::default();
    let active = AssignmentFilter {
        exclude_inactive_users: true,
        ..AssignmentFilter::default()
    };
    for since in [
        None,
        Some(0),
        Some(1),
        Some(255),
        Some(256),
        Some(333),
        Some(699),
        Some(720),
        Some(750),
    ] {
        for (filter, keep) in [
            (
                &none,
                &(|_: &AssignmentRecord| true) as &dyn Fn(&AssignmentRecord) -> bool,
            ),
            (&active, &|a: &AssignmentRecord| a.user_active),
        ] {
            let want: Vec<AssignmentRecord> = model
                .iter()
                .filter(|a| a.chg > since.unwrap_or(0) && keep(a))
                .cloned()
                .collect();
            for size in [1, 23, 256, 1000] {
                // Pages of one only where few: each page is a few round trips.
                if size == 1 && want.len() > 60 {
                    continue;
                }
                let (got, total) = assignment_pages(b, &o, since, filter, size).await;
                assert_eq!(total, want.len() as i64, "{since:?} {size}");
                assert_eq!(got, want, "{since:?} size {size}");
            }
        }
    }
    // Narrowing filters.
    let by_adam = AssignmentFilter {
        adam_id: Some("1".into()),
        ..AssignmentFilter::default()
    };
    let (got, _) = assignment_pages(b, &o, Some(100), &by_adam, 9).await;
    let want: Vec<_> = model
        .iter()
        .filter(|a| a.asset.adam_id == "1" && a.chg > 100)
        .cloned()
        .collect();
    assert_eq!(got, want);
    let by_serial = AssignmentFilter {
        serial_number: Some("S690".into()),
        ..AssignmentFilter::default()
    };
    let (got, _) = assignment_pages(b, &o, None, &by_serial, 10).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].target, Target::Serial("S690".into()));
    let by_user = AssignmentFilter {
        client_user_id: Some("S690".into()),
        ..AssignmentFilter::default()
    };
    assert!(
        assignment_pages(b, &o, None, &by_user, 10)
            .await
            .0
            .is_empty(),
        "a serial is not a user"
    );

    // Lookups by target, in a transaction.
    let mut tx = b.store.begin_org_write(o.id).await.unwrap();
    let held = tx
        .assignments_of(&[
            Target::User("u1".into()),
            Target::Serial("S10".into()),
            Target::User("u250".into()),
        ])
        .await
        .unwrap();
    assert_eq!(held.len(), 2, "u250 was removed: {held:?}");
    assert_eq!(tx.org().assign_chg, 750);
    tx.rollback().await.unwrap();
    // Another organisation sees none of them.
    let other = org(b, "9102").await;
    let p = b
        .store
        .list_assignments_page(other.id, None, &none, 0, 10)
        .await
        .unwrap();
    assert_eq!((p.total, p.assignments.len()), (0, 0));
}

/// The latest record of each clientUserId: the active one, else the last retired one.
pub async fn latest_users_are_the_newest_records(b: &Backend) {
    let o = org(b, "9201").await;
    add_users(
        b,
        &o,
        &[
            ("a", UserStatus::Retired),
            ("a", UserStatus::Registered),
            ("b", UserStatus::Retired),
            ("c", UserStatus::Associated),
        ],
    )
    .await;
    let mut got = b
        .store
        .latest_users(o.id, &["a", "b", "c", "zz"])
        .await
        .unwrap();
    got.sort_by(|x, y| x.client_user_id.cmp(&y.client_user_id));
    let states: Vec<(&str, UserStatus)> = got
        .iter()
        .map(|u| (u.client_user_id.as_str(), u.status))
        .collect();
    assert_eq!(
        states,
        [
            ("a", UserStatus::Registered),
            ("b", UserStatus::Retired),
            ("c", UserStatus::Associated)
        ]
    );
}
