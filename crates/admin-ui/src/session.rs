//! Sessions of the administrator page, and the brake on failed logins.
//!
//! A session lives in its cookie, not in the process: the cookie is
//! `<issued>.<idle until>.<id>.<MAC>`, two Unix times in seconds, a random 256-bit ID and an
//! HMAC-SHA256 over the three with a key derived from the admin API key. Any instance given
//! the same API key checks it without asking anyone (no database read or write per request),
//! so a session made on one instance works on every other one behind the same load balancer
//! and across restarts; changing the API key ends every session everywhere (their MACs no
//! longer match). The CSRF token is the HMAC of the session's ID under a second key, derived
//! from the API key with another label: the same on every instance, never sent in a cookie.
//!
//! A session ends [`IDLE`] after its last request (each request more than [`REFRESH_AFTER`]
//! after the cookie was made is answered with a renewed cookie: same ID, later idle time),
//! and [`LIFETIME`] after login whatever happens. Logout removes the cookie from the browser
//! and puts its ID in this process's revocation set until its lifetime is over; other
//! instances do not learn of it, so a copy of the cookie taken before logout stays good on
//! them until it is idle for [`IDLE`] or [`LIFETIME`] is over.

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A session unused this long ends.
pub const IDLE: Duration = Duration::from_secs(30 * 60);
/// A session ends this long after login, used or not.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// A request renews the cookie's idle time when the cookie is at least this old.
pub const REFRESH_AFTER: Duration = Duration::from_secs(60);
/// The most logged-out session IDs this process remembers; past that, the one whose
/// lifetime ends first is forgotten (its cookie would be good again here until then).
pub const MAX_REVOKED: usize = 10_000;

/// Failed logins one address may make within [`FAILURE_WINDOW`]; then every login from it
/// is refused (429) until the window ends.
pub const MAX_FAILURES: u32 = 5;
/// The window failed logins are counted in.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// How long a failed login waits before it is answered.
pub const FAILURE_DELAY: Duration = Duration::from_millis(400);
/// The most addresses whose failures are remembered; past that, a new address is refused
/// as if it had failed too often (many addresses at once is an attack, not a typo).
const MAX_TRACKED: usize = 10_000;

/// The longest cookie value taken (two times, an ID and a MAC with their dots).
const MAX_COOKIE: usize = 2 * 12 + 2 * 64 + 3;

/// Labels of the two keys derived from the API key.
const MAC_LABEL: &[u8] = b"cloudvpp admin-ui session cookie v1";
const CSRF_LABEL: &[u8] = b"cloudvpp admin-ui csrf token v1";

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// The keys of the session cookies and CSRF tokens, derived from the admin API key
/// (HMAC-SHA256 of a label under the key).
#[derive(Clone, Copy)]
pub struct SessionKeys {
    mac: [u8; 32],
    csrf: [u8; 32],
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys(<redacted>)")
    }
}

impl SessionKeys {
    /// The keys of every instance given `api_key`.
    pub fn from_api_key(api_key: &str) -> Self {
        SessionKeys {
            mac: hmac(api_key.as_bytes(), &[MAC_LABEL]),
            csrf: hmac(api_key.as_bytes(), &[CSRF_LABEL]),
        }
    }

    /// Keys of this process alone (random): its sessions work on no other instance.
    pub fn random() -> Self {
        let mut k = SessionKeys {
            mac: [0; 32],
            csrf: [0; 32],
        };
        rand::rngs::OsRng.fill_bytes(&mut k.mac);
        rand::rngs::OsRng.fill_bytes(&mut k.csrf);
        k
    }

    fn mac_of(&self, payload: &str) -> [u8; 32] {
        hmac(&self.mac, &[payload.as_bytes()])
    }

    /// The cookie value of session `id` made at `issued`, idle from `idle_until` (Unix
    /// seconds). Sessions are made by [`Sessions::create`]; this is for tests that need a
    /// cookie of another time.
    pub fn cookie(&self, issued: i64, idle_until: i64, id: &str) -> String {
        let payload = format!("{issued}.{idle_until}.{id}");
        let mac = hex::encode(self.mac_of(&payload));
        format!("{payload}.{mac}")
    }

    /// The CSRF token of session `id`.
    pub fn csrf(&self, id: &str) -> String {
        hex::encode(hmac(&self.csrf, &[id.as_bytes()]))
    }
}

/// 32 random bytes from the operating system, as hex.
fn random_id() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// Whether `s` is lowercase hex of 32 bytes.
fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Unix seconds of at most 12 digits.
fn seconds(s: &str) -> Option<i64> {
    (!s.is_empty() && s.len() <= 12 && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// A live session, as its cookie shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Live {
    /// The session's ID (a credential: never logged).
    pub id: String,
    /// The token every form of the session carries.
    pub csrf: String,
    /// When it was made (Unix seconds).
    pub issued: i64,
    /// A renewed cookie to send back (same ID, later idle time), when this one is older
    /// than [`REFRESH_AFTER`].
    pub renewed: Option<String>,
}

/// A new session: the value to put in the cookie and its CSRF token.
pub struct NewSession {
    /// The cookie's value (a credential: never logged).
    pub cookie: String,
    /// The token every form of the session carries.
    pub csrf: String,
}

/// Makes and checks sessions; remembers the IDs logged out on this process.
#[derive(Debug)]
pub struct Sessions {
    keys: SessionKeys,
    /// Logged-out IDs and the Unix second their lifetime ends.
    revoked: Mutex<HashMap<String, i64>>,
}

impl Sessions {
    /// Sessions under `keys`.
    pub fn new(keys: SessionKeys) -> Self {
        Sessions {
            keys,
            revoked: Mutex::default(),
        }
    }

    /// Starts a session at `now` (Unix milliseconds).
    pub fn create(&self, now_ms: i64) -> NewSession {
        let now = now_ms.div_euclid(1000);
        let id = random_id();
        let idle_until = now + IDLE.as_secs() as i64;
        NewSession {
            cookie: self.keys.cookie(now, idle_until, &id),
            csrf: self.keys.csrf(&id),
        }
    }

    /// The live session of cookie value `cookie` at `now` (Unix milliseconds), or none: a
    /// value not made with these keys, changed, idle too long, too old, or logged out here.
    pub fn check(&self, cookie: &str, now_ms: i64) -> Option<Live> {
        if cookie.len() > MAX_COOKIE {
            return None;
        }
        let (payload, mac) = cookie.rsplit_once('.')?;
        if !is_hex64(mac) {
            return None;
        }
        let mut parts = payload.splitn(3, '.');
        let issued = seconds(parts.next()?)?;
        let idle_until = seconds(parts.next()?)?;
        let id = parts.next()?;
        if !is_hex64(id) {
            return None;
        }
        let given = hex::decode(mac).ok()?;
        // Constant time: the MAC's check says nothing about how much of it was right.
        let mut check =
            HmacSha256::new_from_slice(&self.keys.mac).expect("HMAC takes a key of any length");
        check.update(payload.as_bytes());
        check.verify_slice(&given).ok()?;
        let now = now_ms.div_euclid(1000);
        let end = issued.checked_add(LIFETIME.as_secs() as i64)?;
        if now >= idle_until || now >= end || idle_until > end {
            return None;
        }
        if self.revoked.lock().expect("lock").contains_key(id) {
            return None;
        }
        let fresh = (now + IDLE.as_secs() as i64).min(end);
        let renewed = (fresh - idle_until >= REFRESH_AFTER.as_secs() as i64)
            .then(|| self.keys.cookie(issued, fresh, id));
        Some(Live {
            id: id.to_string(),
            csrf: self.keys.csrf(id),
            issued,
            renewed,
        })
    }

    /// Ends `session` on this process: its cookie is refused here from `now` (Unix
    /// milliseconds) until its lifetime is over.
    pub fn end(&self, session: &Live, now_ms: i64) {
        let now = now_ms.div_euclid(1000);
        let until = session.issued.saturating_add(LIFETIME.as_secs() as i64);
        let mut revoked = self.revoked.lock().expect("lock");
        revoked.retain(|_, end| *end > now);
        if revoked.len() >= MAX_REVOKED {
            if let Some(first) = revoked
                .iter()
                .min_by_key(|(_, end)| **end)
                .map(|(id, _)| id.clone())
            {
                revoked.remove(&first);
            }
        }
        revoked.insert(session.id.clone(), until);
    }
}

/// Failed logins per peer address.
#[derive(Default)]
pub struct LoginBrake {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl LoginBrake {
    /// How long `peer` must wait before it may try again, if it is held back.
    pub fn held(&self, peer: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let mut map = self.failures.lock().expect("lock");
        match map.get(&peer) {
            Some((_, since)) if now.duration_since(*since) >= FAILURE_WINDOW => {
                map.remove(&peer);
                None
            }
            Some((n, since)) if *n >= MAX_FAILURES => {
                Some(FAILURE_WINDOW.saturating_sub(now.duration_since(*since)))
            }
            Some(_) => None,
            None if map.len() >= MAX_TRACKED => {
                map.retain(|_, (_, since)| now.duration_since(*since) < FAILURE_WINDOW);
                (map.len() >= MAX_TRACKED).then_some(FAILURE_WINDOW)
            }
            None => None,
        }
    }

    /// Counts a failed login of `peer`.
    pub fn failed(&self, peer: IpAddr) {
        let now = Instant::now();
        let mut map = self.failures.lock().expect("lock");
        if map.len() >= MAX_TRACKED && !map.contains_key(&peer) {
            return;
        }
        let entry = map.entry(peer).or_insert((0, now));
        if now.duration_since(entry.1) >= FAILURE_WINDOW {
            *entry = (0, now);
        }
        entry.0 += 1;
    }

    /// A successful login of `peer` forgets its failures.
    pub fn succeeded(&self, peer: IpAddr) {
        self.failures.lock().expect("lock").remove(&peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;
    const SEC: i64 = 1000;

    fn sessions(api_key: &str) -> Sessions {
        Sessions::new(SessionKeys::from_api_key(api_key))
    }

    #[test]
    fn a_session_works_on_every_instance_with_the_same_key_and_no_other() {
        let (a, b, other) = (sessions("k1"), sessions("k1"), sessions("k2"));
        let (s, t) = (a.create(NOW), a.create(NOW));
        assert_ne!(s.cookie, t.cookie);
        assert_ne!(s.csrf, t.csrf);
        assert_eq!(s.csrf.len(), 64);
        assert!(
            !s.cookie.contains(&s.csrf),
            "the token is not in the cookie"
        );
        let live = b
            .check(&s.cookie, NOW + SEC)
            .expect("another instance knows it");
        assert_eq!(live.csrf, s.csrf);
        assert_eq!(live.renewed, None, "too young to renew");
        assert_eq!(a.check(&s.cookie, NOW).unwrap(), live);
        assert_eq!(other.check(&s.cookie, NOW), None, "another API key ends it");
        assert!(format!("{:?}", a).contains("redacted"));
    }

    #[test]
    fn a_changed_or_malformed_cookie_is_refused() {
        let a = sessions("k");
        let s = a.create(NOW);
        let (payload, mac) = s.cookie.rsplit_once('.').unwrap();
        let (issued, rest) = payload.split_once('.').unwrap();
        let (idle, id) = rest.split_once('.').unwrap();
        let flip = |t: &str| {
            let mut b = t.as_bytes().to_vec();
            b[0] = if b[0] == b'1' { b'2' } else { b'1' };
            String::from_utf8(b).unwrap()
        };
        let later: i64 = idle.parse::<i64>().unwrap() + 3600;
        for bad in [
            format!("{payload}.{}", flip(mac)),
            format!("{issued}.{idle}.{}.{mac}", flip(id)),
            format!("{issued}.{later}.{id}.{mac}"),
            format!("{}.{idle}.{id}.{mac}", issued.parse::<i64>().unwrap() + 1),
            format!("{payload}.{}", mac.to_uppercase()),
            format!("{payload}.{mac}0"),
            format!("{payload}.{mac}.x"),
            format!("{issued}.{id}.{mac}"),
            format!("-{issued}.{idle}.{id}.{mac}"),
            String::new(),
            "x".repeat(200),
            id.to_string(),
        ] {
            assert_eq!(a.check(&bad, NOW), None, "{bad}");
        }
        assert!(a.check(&s.cookie, NOW).is_some());
    }

    #[test]
    fn a_session_ends_when_idle_and_at_its_lifetime_and_requests_renew_it() {
        let a = sessions("k");
        let s = a.create(NOW);
        let idle = IDLE.as_secs() as i64 * SEC;
        assert!(a.check(&s.cookie, NOW + idle - SEC).is_some());
        assert_eq!(a.check(&s.cookie, NOW + idle), None, "idle too long");
        // Used a minute on: renewed, and the renewed cookie lives IDLE from then.
        let at = NOW + REFRESH_AFTER.as_secs() as i64 * SEC;
        let live = a.check(&s.cookie, at).unwrap();
        let renewed = live.renewed.expect("renewed");
        assert_ne!(renewed, s.cookie);
        let again = a
            .check(&renewed, at + idle - SEC)
            .expect("alive after the first idle");
        assert_eq!(
            (again.id, again.csrf),
            (live.id, live.csrf),
            "the same session"
        );
        assert_eq!(a.check(&renewed, at + idle), None);
        // Used all along, it still ends LIFETIME after login.
        let life = LIFETIME.as_secs() as i64 * SEC;
        let mut cookie = s.cookie;
        let mut t = NOW;
        while t < NOW + life - idle {
            t += idle / 2;
            cookie = a.check(&cookie, t).unwrap().renewed.unwrap_or(cookie);
        }
        let last = a.check(&cookie, NOW + life - SEC).expect("still alive");
        assert_eq!(last.issued, NOW / SEC);
        assert_eq!(a.check(&cookie, NOW + life), None, "past its lifetime");
        // A cookie made with these keys whose idle time passes the lifetime: refused.
        let id = "ab".repeat(32);
        let forged = a.keys.cookie(NOW / SEC, NOW / SEC + life / SEC + 1, &id);
        assert_eq!(a.check(&forged, NOW), None);
    }

    #[test]
    fn logout_ends_a_session_here_until_its_lifetime_is_over() {
        let (a, b) = (sessions("k"), sessions("k"));
        let (s, t) = (a.create(NOW), a.create(NOW));
        let live = a.check(&s.cookie, NOW).unwrap();
        a.end(&live, NOW);
        assert_eq!(a.check(&s.cookie, NOW + SEC), None);
        assert!(a.check(&t.cookie, NOW + SEC).is_some(), "only that one");
        // Another instance has not heard of it (stateless: see the module's doc).
        assert!(b.check(&s.cookie, NOW + SEC).is_some());
        // Remembered until its lifetime is over, then forgotten.
        let life = LIFETIME.as_secs() as i64 * SEC;
        a.end(&a.check(&t.cookie, NOW).unwrap(), NOW + life);
        assert_eq!(a.revoked.lock().unwrap().len(), 1);
    }

    #[test]
    fn the_revocation_set_is_bounded() {
        let a = sessions("k");
        let first = a.create(NOW);
        a.end(&a.check(&first.cookie, NOW).unwrap(), NOW);
        for i in 0..MAX_REVOKED as i64 {
            let live = Live {
                id: format!("{i:064x}"),
                csrf: String::new(),
                issued: NOW / SEC + 1,
                renewed: None,
            };
            a.end(&live, NOW);
        }
        assert_eq!(a.revoked.lock().unwrap().len(), MAX_REVOKED);
        assert!(
            a.check(&first.cookie, NOW).is_some(),
            "the one ending first was forgotten"
        );
    }

    #[test]
    fn failed_logins_hold_an_address_back_after_the_limit() {
        let brake = LoginBrake::default();
        let (peer, other): (IpAddr, IpAddr) =
            ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        for _ in 0..MAX_FAILURES - 1 {
            brake.failed(peer);
        }
        assert_eq!(brake.held(peer), None);
        brake.failed(peer);
        let wait = brake.held(peer).expect("held back");
        assert!(wait <= FAILURE_WINDOW && wait > FAILURE_WINDOW - Duration::from_secs(60));
        assert_eq!(brake.held(other), None, "another address is not");
        brake.succeeded(peer);
        assert_eq!(brake.held(peer), None);
    }
}
