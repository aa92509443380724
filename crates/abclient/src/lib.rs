//! A client of Apple's App and Book Management API v2, usable against Apple
//! (`https://vpp.itunes.apple.com/mdm/v2`) or a cloudvpp appsbooks service.
//!
//! Rules it keeps (lessons of other MDMs' Apps and Books clients):
//! - any body with an `errorNumber` is an error, whatever the HTTP status;
//! - one bounded retry loop per call ([`Client::send`]), honouring `Retry-After` and 9646
//!   with capped exponential backoff; retries are never nested; a write is only retried when
//!   the service refused it before processing (429/9646), never after a transport failure;
//! - requests are spaced by `maxRequestPerSecond`; `limits` and `urls` are cached and
//!   re-read every 5 minutes; user batches are split by `maxUsers`;
//! - pagination is sequential or up to 5 pages at once, keeping the first page's `versionId`;
//! - the location is claimed with `mdmInfo`, and a response carrying another MDM's
//!   `mdmInfo` raises an alarm ([`Client::ownership_conflict`]).

use cloudvpp_abwire::limits::Limit;
use cloudvpp_abwire::{
    ClientConfigRequest, ClientConfigResponse, ErrorResponse, EventResponse, GetUsersResponse,
    MdmInfo, RequestUser, ResponseUser, ServiceConfigResponse, StatusResponse,
};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Apple's production base URL.
pub const APPLE_BASE_URL: &str = "https://vpp.itunes.apple.com/mdm/v2";
/// How long service config is trusted ("sync them every 5 minutes").
pub const CONFIG_TTL: Duration = Duration::from_secs(300);

/// A failed call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// Apple's error body.
    #[error("Apps and Books error {number}: {message}")]
    Apple {
        /// `errorNumber`.
        number: u32,
        /// `errorMessage`.
        message: String,
        /// HTTP status it came with.
        status: u16,
        /// `Retry-After`, seconds.
        retry_after: Option<u64>,
    },
    /// A non-2xx answer without Apple's body.
    #[error("HTTP {0}")]
    Http(u16),
    /// Could not talk to the service.
    #[error("transport: {0}")]
    Transport(String),
    /// The body was not what the API documents.
    #[error("unexpected body: {0}")]
    Decode(String),
    /// The retry budget of one call ran out; the last error is kept.
    #[error("gave up after {attempts} attempts: {last}")]
    RetryBudgetExhausted {
        /// Attempts made.
        attempts: u32,
        /// The last error.
        last: Box<ClientError>,
    },
}

impl ClientError {
    /// The Apple error number, if any (also inside an exhausted budget).
    pub fn apple_number(&self) -> Option<u32> {
        match self {
            ClientError::Apple { number, .. } => Some(*number),
            ClientError::RetryBudgetExhausted { last, .. } => last.apple_number(),
            _ => None,
        }
    }
}

/// Result alias.
pub type Result<T> = std::result::Result<T, ClientError>;

/// Retry settings of one call.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts per call, the first included.
    pub attempts: u32,
    /// First backoff.
    pub base: Duration,
    /// Longest wait, including a `Retry-After`.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            base: Duration::from_millis(500),
            cap: Duration::from_secs(60),
        }
    }
}

/// Query of Get Users.
#[derive(Debug, Clone, Default)]
pub struct UsersQuery {
    /// Only active users.
    pub active_only: bool,
    /// Only retired users.
    pub retired_only: bool,
    /// One clientUserId.
    pub client_user_id: Option<String>,
    /// Changes since this version.
    pub since_version_id: Option<String>,
}

/// A client for one sToken.
pub struct Client {
    http: reqwest::Client,
    base: String,
    stoken: String,
    retry: RetryPolicy,
    mdm_info: Option<MdmInfo>,
    config: Mutex<Option<(Instant, ServiceConfigResponse)>>,
    next_slot: tokio::sync::Mutex<Instant>,
    conflict: AtomicBool,
    rate_limited: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The sToken is a credential: never print it.
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("stoken", &"<redacted>")
            .finish()
    }
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse().ok())
}

impl Client {
    /// A client of the service at `base` (ending in `/mdm/v2`) for `stoken`.
    pub fn new(base: &str, stoken: &str) -> Self {
        Client {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("http client"),
            base: base.trim_end_matches('/').to_string(),
            stoken: stoken.trim().to_string(),
            retry: RetryPolicy::default(),
            mdm_info: None,
            config: Mutex::new(None),
            next_slot: tokio::sync::Mutex::new(Instant::now()),
            conflict: AtomicBool::new(false),
            rate_limited: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Replaces the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The `mdmInfo` this MDM claims locations with.
    pub fn with_mdm_info(mut self, info: MdmInfo) -> Self {
        self.mdm_info = Some(info);
        self
    }

    /// How many answers were 429/9646 (each was waited out and retried).
    pub fn rate_limited(&self) -> u64 {
        self.rate_limited.load(Ordering::Relaxed)
    }

    /// Whether a response carried another MDM's `mdmInfo`.
    pub fn ownership_conflict(&self) -> bool {
        self.conflict.load(Ordering::Relaxed)
    }

    /// Waits for this token's next request slot (`1 s / maxRequestPerSecond`).
    async fn pace(&self, per_second: i64) {
        let interval = Duration::from_secs_f64(1.0 / per_second.max(1) as f64);
        let wait = {
            let mut slot = self.next_slot.lock().await;
            let now = Instant::now();
            let at = (*slot).max(now);
            *slot = at + interval;
            at - now
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    fn check_owner(&self, body: &serde_json::Value) {
        if let (Some(ours), Some(theirs)) = (&self.mdm_info, body.get("mdmInfo")) {
            let their_id = theirs.get("id").and_then(|v| v.as_str());
            if their_id.is_some()
                && their_id != ours.id.as_deref()
                && !self.conflict.swap(true, Ordering::Relaxed)
            {
                tracing::error!(ours = ?ours.id, theirs = ?their_id, "another MDM has claimed this Apps and Books location");
            }
        }
    }

    /// The one retry loop. `write`: the request changes state, so it is repeated only when
    /// the service refused it unprocessed (HTTP 429 / 9646).
    async fn send<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&serde_json::Value>,
        auth: bool,
    ) -> Result<T> {
        let per_second = if auth {
            self.limit(Limit::MaxRequestPerSecond).await.unwrap_or(15)
        } else {
            i64::MAX
        };
        self.send_paced(method, path, query, body, auth, per_second)
            .await
    }

    /// [`Self::attempts`], counted: `cloudvpp_abclient_calls_total` by endpoint and
    /// result (`ok`, `apple_error`, `http_error`, `transport`, `decode`, `gave_up`).
    async fn send_paced<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&serde_json::Value>,
        auth: bool,
        per_second: i64,
    ) -> Result<T> {
        let result = self
            .attempts(method, path, query, body, auth, per_second)
            .await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(ClientError::Apple { .. }) => "apple_error",
            Err(ClientError::Http(_)) => "http_error",
            Err(ClientError::Transport(_)) => "transport",
            Err(ClientError::Decode(_)) => "decode",
            Err(ClientError::RetryBudgetExhausted { .. }) => "gave_up",
        };
        metrics::counter!(
            "cloudvpp_abclient_calls_total",
            "endpoint" => path.to_string(),
            "result" => outcome
        )
        .increment(1);
        result
    }

    async fn attempts<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&serde_json::Value>,
        auth: bool,
        per_second: i64,
    ) -> Result<T> {
        let write = method != reqwest::Method::GET;
        let mut last = ClientError::Transport("no attempt".into());
        for attempt in 1..=self.retry.attempts {
            if auth {
                self.pace(per_second).await;
            }
            let mut req = self
                .http
                .request(method.clone(), format!("{}{}", self.base, path))
                .query(query);
            if auth {
                req = req.bearer_auth(&self.stoken);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let (retryable, wait_hint) = match req.send().await {
                Err(e) => {
                    last = ClientError::Transport(e.to_string());
                    (!write, None)
                }
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let after = retry_after(resp.headers());
                    let text = resp
                        .bytes()
                        .await
                        .map_err(|e| ClientError::Transport(e.to_string()))?;
                    let value: Option<serde_json::Value> = serde_json::from_slice(&text).ok();
                    // An errorNumber is an error whatever the status (Apple has sent them with 200).
                    if let Some(err) = value
                        .as_ref()
                        .and_then(|v| v.get("errorNumber").map(|_| v))
                        .and_then(|v| serde_json::from_value::<ErrorResponse>(v.clone()).ok())
                    {
                        last = ClientError::Apple {
                            number: err.error_number,
                            message: err.error_message,
                            status,
                            retry_after: after,
                        };
                        let refused_unprocessed = status == 429 || err.error_number == 9646;
                        if refused_unprocessed {
                            self.rate_limited.fetch_add(1, Ordering::Relaxed);
                            metrics::counter!(
                                "cloudvpp_abclient_rate_limited_total",
                                "endpoint" => path.to_string()
                            )
                            .increment(1);
                        }
                        (refused_unprocessed || (!write && status >= 500), after)
                    } else if !(200..300).contains(&status) {
                        last = ClientError::Http(status);
                        (status == 429 || (!write && status >= 500), after)
                    } else {
                        let v = value.ok_or_else(|| {
                            ClientError::Decode(
                                String::from_utf8_lossy(&text).chars().take(200).collect(),
                            )
                        })?;
                        self.check_owner(&v);
                        return serde_json::from_value(v)
                            .map_err(|e| ClientError::Decode(e.to_string()));
                    }
                }
            };
            if !retryable {
                return Err(last);
            }
            if attempt == self.retry.attempts {
                break;
            }
            let backoff = self.retry.base.saturating_mul(1 << (attempt - 1).min(16));
            let wait = wait_hint
                .map(Duration::from_secs)
                .unwrap_or(backoff)
                .max(backoff.min(self.retry.cap))
                .min(self.retry.cap);
            tracing::debug!(path, attempt, ?wait, error = %last, "retrying");
            metrics::counter!("cloudvpp_abclient_retries_total", "endpoint" => path.to_string())
                .increment(1);
            tokio::time::sleep(wait).await;
        }
        Err(ClientError::RetryBudgetExhausted {
            attempts: self.retry.attempts,
            last: Box::new(last),
        })
    }

    /// `GET service/config`, cached for [`CONFIG_TTL`].
    pub async fn service_config(&self) -> Result<ServiceConfigResponse> {
        let cached = self
            .config
            .lock()
            .expect("lock")
            .as_ref()
            .filter(|(at, _)| at.elapsed() < CONFIG_TTL)
            .map(|(_, c)| c.clone());
        match cached {
            Some(c) => Ok(c),
            None => self.refresh_service_config().await,
        }
    }

    /// Re-reads service config now.
    pub async fn refresh_service_config(&self) -> Result<ServiceConfigResponse> {
        let cfg: ServiceConfigResponse = self
            .send_paced(
                reqwest::Method::GET,
                "/service/config",
                &[],
                None,
                false,
                i64::MAX,
            )
            .await?;
        *self.config.lock().expect("lock") = Some((Instant::now(), cfg.clone()));
        Ok(cfg)
    }

    /// One limit from (cached) service config.
    pub async fn limit(&self, limit: Limit) -> Option<i64> {
        let name = limit.name();
        let cached = self
            .config
            .lock()
            .expect("lock")
            .as_ref()
            .filter(|(at, _)| at.elapsed() < CONFIG_TTL)
            .map(|(_, c)| c.limits.get(name).copied());
        match cached {
            Some(v) => v,
            None => self
                .refresh_service_config()
                .await
                .ok()
                .and_then(|c| c.limits.get(name).copied()),
        }
    }

    /// The invitation link for `invite_code`, from `urls.invitationEmail`.
    pub async fn invitation_url(&self, invite_code: &str) -> Result<String> {
        let cfg = self.service_config().await?;
        let template = cfg
            .urls
            .get("invitationEmail")
            .ok_or_else(|| ClientError::Decode("no urls.invitationEmail".into()))?;
        cloudvpp_abwire::invitation_url(template, invite_code)
            .ok_or_else(|| ClientError::Decode(format!("no invite code placeholder in {template}")))
    }

    /// `GET client/config`.
    pub async fn client_config(&self) -> Result<ClientConfigResponse> {
        self.send(reqwest::Method::GET, "/client/config", &[], None, true)
            .await
    }

    /// `POST client/config`.
    pub async fn set_client_config(
        &self,
        req: &ClientConfigRequest,
    ) -> Result<ClientConfigResponse> {
        let body = serde_json::to_value(req).map_err(|e| ClientError::Decode(e.to_string()))?;
        self.send(
            reqwest::Method::POST,
            "/client/config",
            &[],
            Some(&body),
            true,
        )
        .await
    }

    /// Claims the location with our `mdmInfo` unless another MDM holds it.
    pub async fn claim(
        &self,
        notification: Option<(&str, &str, Vec<String>)>,
    ) -> Result<ClientConfigResponse> {
        let current = self.client_config().await?;
        let mut req = ClientConfigRequest::default();
        if let Some(ours) = &self.mdm_info {
            match &current.meta.mdm_info {
                Some(theirs) if theirs.id.is_some() && theirs.id != ours.id => {
                    self.conflict.store(true, Ordering::Relaxed);
                    tracing::error!(theirs = ?theirs.id, "location is claimed by another MDM; not overwriting");
                }
                _ => req.mdm_info = Some(ours.clone()),
            }
        }
        if let Some((url, token, types)) = notification {
            req.notification_url = Some(url.to_string());
            req.notification_auth_token = Some(token.to_string());
            req.notification_types = Some(types);
        }
        self.set_client_config(&req).await
    }

    /// One page of `GET users`.
    pub async fn get_users(&self, q: &UsersQuery, page: u32) -> Result<GetUsersResponse> {
        let mut query = vec![("pageIndex", page.to_string())];
        if q.active_only {
            query.push(("activeOnly", "true".into()));
        }
        if q.retired_only {
            query.push(("retiredOnly", "true".into()));
        }
        if let Some(c) = &q.client_user_id {
            query.push(("clientUserId", c.clone()));
        }
        if let Some(v) = &q.since_version_id {
            query.push(("sinceVersionId", v.clone()));
        }
        self.send(reqwest::Method::GET, "/users", &query, None, true)
            .await
    }

    /// Every page, `concurrency` (1..=5) at a time after the first; returns the users and
    /// the first page's `versionId` (the one to sync from next).
    pub async fn all_users(
        &self,
        q: &UsersQuery,
        concurrency: usize,
    ) -> Result<(Vec<ResponseUser>, String)> {
        self.all_users_with_meta(q, concurrency)
            .await
            .map(|(u, v, _)| (u, v))
    }

    /// As [`Self::all_users`], with the first page's metadata (`uId`, `mdmInfo`, ...).
    pub async fn all_users_with_meta(
        &self,
        q: &UsersQuery,
        concurrency: usize,
    ) -> Result<(Vec<ResponseUser>, String, cloudvpp_abwire::ResponseMeta)> {
        let first = self.get_users(q, 0).await?;
        let meta = first.meta.clone();
        let version = first.version_id.clone();
        let mut users = first.users;
        let mut total = first.total_pages;
        let mut done = first.next_page_index.is_none();
        let (concurrency, mut page) = (concurrency.clamp(1, 5) as u32, 1u32);
        while !done {
            let end = (page + concurrency).min(total.max(page + 1));
            let results =
                futures::future::join_all((page..end).map(|p| self.get_users(q, p))).await;
            for r in results {
                let p = r?;
                users.extend(p.users);
                // totalPages can change while paging: go on until a page says it is the last.
                total = total.max(p.total_pages);
                done |= p.next_page_index.is_none();
            }
            page = end;
            done |= page >= total;
        }
        Ok((users, version, meta))
    }

    async fn manage(&self, action: &str, users: &[RequestUser]) -> Result<Vec<String>> {
        let max = self.limit(Limit::MaxUsers).await.unwrap_or(100).max(1) as usize;
        let mut events = Vec::new();
        for chunk in users.chunks(max) {
            let body = serde_json::json!({ "users": chunk });
            let r: EventResponse = self
                .send(
                    reqwest::Method::POST,
                    &format!("/users/{action}"),
                    &[],
                    Some(&body),
                    true,
                )
                .await?;
            events.push(r.event_id);
        }
        Ok(events)
    }

    /// `users/create`, split by `maxUsers`; one eventId per request.
    pub async fn create_users(&self, users: &[RequestUser]) -> Result<Vec<String>> {
        self.manage("create", users).await
    }

    /// `users/update`, split by `maxUsers`.
    pub async fn update_users(&self, users: &[RequestUser]) -> Result<Vec<String>> {
        self.manage("update", users).await
    }

    /// `users/retire`, split by `maxUsers`.
    pub async fn retire_users(&self, users: &[RequestUser]) -> Result<Vec<String>> {
        self.manage("retire", users).await
    }

    /// `GET status`.
    pub async fn event_status(&self, event_id: &str) -> Result<StatusResponse> {
        self.send(
            reqwest::Method::GET,
            "/status",
            &[("eventId", event_id.to_string())],
            None,
            true,
        )
        .await
    }

    /// The limits as last read.
    pub async fn limits(&self) -> Result<BTreeMap<String, i64>> {
        Ok(self.service_config().await?.limits)
    }
}

/// Decodes an sToken's `expDate` (Unix seconds), for expiry warnings.
pub fn stoken_expiry(stoken: &str) -> Option<i64> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(stoken.trim())
        .ok()?;
    let c: cloudvpp_abwire::STokenContent = serde_json::from_slice(&raw).ok()?;
    parse_apple_date(&c.exp_date)
}

/// Parses `2030-11-08T22:33:22+0000` (and RFC 3339) to Unix seconds.
pub fn parse_apple_date(s: &str) -> Option<i64> {
    // Minimal civil-date arithmetic keeps this crate free of a date library.
    let b = s.as_bytes();
    if b.len() < 19 {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, se) = (
        n(0..4)?,
        n(5..7)?,
        n(8..10)?,
        n(11..13)?,
        n(14..16)?,
        n(17..19)?,
    );
    let rest = &s[19..];
    let offset = if rest.starts_with('Z') || rest.is_empty() {
        0
    } else {
        let sign = if rest.starts_with('-') { -1 } else { 1 };
        let digits: String = rest[1..].chars().filter(|c| c.is_ascii_digit()).collect();
        let oh: i64 = digits.get(0..2)?.parse().ok()?;
        let om: i64 = digits.get(2..4).and_then(|m| m.parse().ok()).unwrap_or(0);
        sign * (oh * 3600 + om * 60)
    };
    let (y2, m2) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + se - offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apple_dates_parse() {
        assert_eq!(parse_apple_date("1970-01-01T00:00:00+0000"), Some(0));
        assert_eq!(
            parse_apple_date("2030-11-04T05:20:00+0000"),
            Some(1_920_000_000)
        );
        assert_eq!(
            parse_apple_date("2014-08-15T18:13:52-0700"),
            parse_apple_date("2014-08-16T01:13:52Z")
        );
        assert_eq!(parse_apple_date("junk"), None);
    }

    #[test]
    fn errors_keep_their_number_through_retries() {
        let e = ClientError::RetryBudgetExhausted {
            attempts: 3,
            last: Box::new(ClientError::Apple {
                number: 9646,
                message: "x".into(),
                status: 429,
                retry_after: Some(1),
            }),
        };
        assert_eq!(e.apple_number(), Some(9646));
    }
}
