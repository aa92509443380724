//! Sessions of the administrator page (`/admin`) across instances: a session made on one
//! `cloudvpp mdm serve` works on another one on the same database with the same API key,
//! and on a restarted one; another API key, a changed cookie or an expired one is refused.
//! Plain HTTP with the cookie (no browser): `tests/admin_ui.rs` drives the page itself.

mod common;

use cloudvpp_admin_ui::session::{SessionKeys, IDLE, LIFETIME};
use common::{Env, Server};
use std::sync::OnceLock;

const KEY: &str = "admin-sessions-test-key-0123456789";

fn pki() -> &'static cloudvpp_simulator::Pki {
    static PKI: OnceLock<cloudvpp_simulator::Pki> = OnceLock::new();
    PKI.get_or_init(|| cloudvpp_simulator::Pki::generate().unwrap())
}

fn mdm(env: &Env, key: &str) -> Server {
    let ca = env.dir.path().join("ca.pem");
    if !ca.exists() {
        std::fs::write(&ca, &pki().ca_cert_pem).unwrap();
    }
    env.spawn(&common::mdm_serve_args(key, ca.to_str().unwrap(), &[]))
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Logs in on `srv`; the cookie (`name=value`).
async fn login(srv: &Server) -> String {
    let r = http()
        .post(srv.url("/admin/login"))
        .form(&[("key", KEY)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    set.split(';').next().unwrap().to_string()
}

/// GET `path` on `srv` with `cookie`: the status, the `Location`, the page.
async fn get(srv: &Server, path: &str, cookie: &str) -> (u16, String, String) {
    let r = http()
        .get(srv.url(path))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    let location = r
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_string())
        .unwrap_or_default();
    (r.status().as_u16(), location, r.text().await.unwrap())
}

/// POST a form to `path` on `srv` with `cookie`: the status.
async fn post(srv: &Server, path: &str, cookie: &str, form: &[(&str, &str)]) -> u16 {
    http()
        .post(srv.url(path))
        .header("cookie", cookie)
        .form(form)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    html[at..at + 64].to_string()
}

/// Whether `cookie` is a live session on `srv` (the overview, not the login).
async fn logged_in(srv: &Server, cookie: &str) -> bool {
    let (status, location, _) = get(srv, "/admin", cookie).await;
    match status {
        200 => true,
        303 => {
            assert_eq!(location, "/admin/login");
            false
        }
        s => panic!("GET /admin: {s}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_made_on_one_instance_works_on_another_and_after_a_restart() {
    let env = Env::new();
    let a = mdm(&env, KEY);
    let b = mdm(&env, KEY);
    let cookie = login(&a).await;

    // Instance b never saw the login: the page and a form of the session work there.
    let (status, _, page) = get(&b, "/admin", &cookie).await;
    assert_eq!(status, 200, "{page}");
    let csrf = csrf_of(&page);
    let (_, _, on_a) = get(&a, "/admin", &cookie).await;
    assert_eq!(csrf_of(&on_a), csrf, "the same CSRF token on both");
    assert_eq!(
        post(
            &b,
            "/admin/logout",
            &cookie,
            &[("csrf", "0".repeat(64).as_str())]
        )
        .await,
        403,
        "a wrong token is still wrong on b"
    );

    // A restart keeps it.
    a.kill9();
    let a = mdm(&env, KEY);
    assert!(logged_in(&a, &cookie).await, "after a restart");

    // Another API key (a rotation) ends it.
    let rotated = mdm(&env, "another-admin-key-0123456789");
    assert!(!logged_in(&rotated, &cookie).await, "after the key changed");

    // Logout on a: refused there from then on, the browser's cookie removed. b has not
    // heard of it (per process, see SECURITY.md): it ends there when idle or too old.
    let r = http()
        .post(a.url("/admin/logout"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    assert!(!logged_in(&a, &cookie).await, "logged out on a");
    assert!(
        logged_in(&b, &cookie).await,
        "b does not know of the logout"
    );
    // A new login on b is a new session, with its own token.
    let again = login(&b).await;
    assert_ne!(again, cookie);
    let (_, _, page) = get(&a, "/admin", &again).await;
    assert_ne!(csrf_of(&page), csrf);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_forged_or_expired_cookie_is_refused() {
    let env = Env::new();
    let srv = mdm(&env, KEY);
    let cookie = login(&srv).await;
    assert!(logged_in(&srv, &cookie).await);
    let value = cookie.strip_prefix("cloudvpp_admin=").unwrap();
    let parts: Vec<&str> = value.split('.').collect();
    assert_eq!(parts.len(), 4, "{value}");
    let (issued, idle, id, mac) = (parts[0], parts[1], parts[2], parts[3]);
    let flip = |s: &str| {
        let mut b = s.as_bytes().to_vec();
        let last = b.len() - 1;
        b[last] = if b[last] == b'0' { b'1' } else { b'0' };
        String::from_utf8(b).unwrap()
    };
    let later = idle.parse::<i64>().unwrap() + 24 * 3600;
    let now = chrono::Utc::now().timestamp();
    let keys = SessionKeys::from_api_key(KEY);
    let idle_secs = IDLE.as_secs() as i64;
    let life_secs = LIFETIME.as_secs() as i64;
    let refused = [
        ("MAC changed", format!("{issued}.{idle}.{id}.{}", flip(mac))),
        ("ID changed", format!("{issued}.{idle}.{}.{mac}", flip(id))),
        ("idle time moved on", format!("{issued}.{later}.{id}.{mac}")),
        (
            "MAC of another key",
            SessionKeys::from_api_key("not-the-key").cookie(now, now + idle_secs, id),
        ),
        (
            "idle too long",
            keys.cookie(now - idle_secs - 60, now - 60, id),
        ),
        (
            "past its lifetime",
            keys.cookie(now - life_secs - 60, now - 60, id),
        ),
        (
            "idle time beyond the lifetime",
            keys.cookie(now - life_secs + 60, now + idle_secs, id),
        ),
        ("not a cookie of ours", id.to_string()),
    ];
    for (what, bad) in &refused {
        let bad = format!("cloudvpp_admin={bad}");
        assert!(!logged_in(&srv, &bad).await, "{what}: {bad}");
        let csrf = keys.csrf(id);
        assert_eq!(
            post(&srv, "/admin/logout", &bad, &[("csrf", csrf.as_str())]).await,
            403,
            "{what}: a form is refused"
        );
    }
    // The same keys, times still good: accepted (so the refusals above were the changes').
    let good = format!(
        "cloudvpp_admin={}",
        keys.cookie(now - 60, now + idle_secs - 60, id)
    );
    assert!(logged_in(&srv, &good).await);
    // A cookie more than a minute old is renewed: the same session, idle from now.
    let r = http()
        .get(srv.url("/admin"))
        .header("cookie", &good)
        .send()
        .await
        .unwrap();
    let set = r.headers()["set-cookie"].to_str().unwrap();
    let renewed = set.split(';').next().unwrap();
    assert_ne!(renewed, good);
    assert!(renewed.contains(id));
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"));
    assert!(logged_in(&srv, renewed).await);
}
