//! Service limits (Apple's example values, overridable in the store at run time) and the
//! per-organisation rate limiter behind 9646.

pub use cloudvpp_abwire::limits::Limit;
use cloudvpp_store::AppsBooksStore;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a read of the overrides is reused: limits change "without notice", and a
/// change made with `cloudvpp appsbooks limits set` shows within this time.
const REFRESH: Duration = Duration::from_secs(1);

/// Current limits.
pub struct Limits {
    store: Arc<dyn AppsBooksStore>,
    cache: Mutex<Option<(Instant, BTreeMap<String, i64>)>>,
}

impl Limits {
    /// Limits backed by `store`.
    pub fn new(store: Arc<dyn AppsBooksStore>) -> Self {
        Limits {
            store,
            cache: Mutex::new(None),
        }
    }

    /// Every limit, defaults merged with overrides.
    pub async fn all(&self) -> BTreeMap<String, i64> {
        if let Some((at, map)) = self.cache.lock().expect("lock").as_ref() {
            if at.elapsed() < REFRESH {
                return map.clone();
            }
        }
        let mut map: BTreeMap<String, i64> = Limit::ALL
            .iter()
            .map(|(k, v)| (k.name().to_string(), *v))
            .collect();
        match self.store.get_limits().await {
            // Only Apple's names: a row stored under another name by an older version
            // changes nothing.
            Ok(over) => map.extend(over.into_iter().filter(|(k, _)| Limit::parse(k).is_some())),
            Err(e) => tracing::warn!(error = %e, "reading limits; using defaults"),
        }
        *self.cache.lock().expect("lock") = Some((Instant::now(), map.clone()));
        map
    }

    /// One limit (every request reads one: without copying the map while it is fresh).
    pub async fn get(&self, limit: Limit) -> i64 {
        if let Some((at, map)) = self.cache.lock().expect("lock").as_ref() {
            if at.elapsed() < REFRESH {
                return value(map, limit);
            }
        }
        value(&self.all().await, limit)
    }
}

/// Fixed one-second windows per organisation, counted in the database so that instances
/// behind a load balancer share one budget (docs/appsbooks-behaviour.md).
pub struct RateLimiter {
    store: Arc<dyn AppsBooksStore>,
}

impl RateLimiter {
    /// A limiter counting in `store`.
    pub fn new(store: Arc<dyn AppsBooksStore>) -> Self {
        RateLimiter { store }
    }

    /// Counts one request; `false` when the organisation is over `per_second`. When the
    /// count cannot be stored the request is let through: the limit protects the service,
    /// and a database that cannot count will fail the request on its own anyway.
    pub async fn allow(&self, org_id: cloudvpp_store::OrgId, per_second: i64) -> bool {
        match self.store.count_request(org_id).await {
            Ok(n) => n <= per_second,
            Err(e) => {
                tracing::warn!(error = %e, %org_id, "counting a request; letting it through");
                true
            }
        }
    }
}

/// `limit` in a map of every limit (as [`Limits::all`] returns), Apple's default if absent.
pub fn value(all: &BTreeMap<String, i64>, limit: Limit) -> i64 {
    all.get(limit.name())
        .copied()
        .unwrap_or_else(|| limit.apple_default())
}
