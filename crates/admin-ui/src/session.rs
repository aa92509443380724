//! Sessions of the administrator page, held in this process's memory, and the brake on
//! failed logins.
//!
//! A session is a random 256-bit ID (the cookie) with its own random CSRF token. The map is
//! keyed by the ID's SHA-256 digest, so a lookup's timing says nothing useful about live
//! IDs. Sessions end after [`IDLE`] without a request, after [`LIFETIME`] whatever happens,
//! or at logout; a restart ends them all (log in again).

use rand::RngCore;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A session unused this long ends.
pub const IDLE: Duration = Duration::from_secs(30 * 60);
/// A session ends this long after login, used or not.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// The most sessions held at once; the oldest goes when a login would pass it.
pub const MAX_SESSIONS: usize = 1000;

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

/// 32 random bytes from the operating system, as hex.
fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

struct Session {
    csrf: String,
    created: Instant,
    last_used: Instant,
}

impl Session {
    fn alive(&self, now: Instant) -> bool {
        now.duration_since(self.created) < LIFETIME && now.duration_since(self.last_used) < IDLE
    }
}

/// The live sessions.
#[derive(Default)]
pub struct Sessions {
    by_digest: Mutex<HashMap<String, Session>>,
}

/// A new session: the ID to put in the cookie and its CSRF token.
pub struct NewSession {
    /// The cookie's value (a credential: never logged).
    pub id: String,
    /// The token every form of the session carries.
    pub csrf: String,
}

impl Sessions {
    /// Starts a session.
    pub fn create(&self) -> NewSession {
        let (id, csrf) = (random_token(), random_token());
        let now = Instant::now();
        let mut map = self.by_digest.lock().expect("lock");
        map.retain(|_, s| s.alive(now));
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(
            cloudvpp_store::secret::digest(&id),
            Session {
                csrf: csrf.clone(),
                created: now,
                last_used: now,
            },
        );
        NewSession { id, csrf }
    }

    /// The CSRF token of the live session `id` (and the session is used now), or none.
    pub fn csrf_of(&self, id: &str) -> Option<String> {
        let key = cloudvpp_store::secret::digest(id);
        let now = Instant::now();
        let mut map = self.by_digest.lock().expect("lock");
        match map.get_mut(&key) {
            Some(s) if s.alive(now) => {
                s.last_used = now;
                Some(s.csrf.clone())
            }
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends the session `id`.
    pub fn end(&self, id: &str) {
        let key = cloudvpp_store::secret::digest(id);
        self.by_digest.lock().expect("lock").remove(&key);
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

    #[test]
    fn a_session_has_random_ids_and_ends_at_logout() {
        let sessions = Sessions::default();
        let (a, b) = (sessions.create(), sessions.create());
        assert_eq!(a.id.len(), 64);
        assert_ne!(a.id, b.id);
        assert_ne!(a.csrf, a.id);
        assert_eq!(sessions.csrf_of(&a.id).as_deref(), Some(a.csrf.as_str()));
        assert_eq!(sessions.csrf_of("not-a-session"), None);
        sessions.end(&a.id);
        assert_eq!(sessions.csrf_of(&a.id), None);
        assert!(sessions.csrf_of(&b.id).is_some());
    }

    #[test]
    fn sessions_are_bounded_and_the_oldest_goes_first() {
        let sessions = Sessions::default();
        let first = sessions.create();
        for _ in 0..MAX_SESSIONS {
            sessions.create();
        }
        assert_eq!(sessions.by_digest.lock().unwrap().len(), MAX_SESSIONS);
        assert_eq!(sessions.csrf_of(&first.id), None);
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
