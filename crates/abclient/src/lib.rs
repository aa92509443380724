//! A client of Apple's App and Book Management API v2, usable against Apple
//! (`https://vpp.itunes.apple.com/mdm/v2`) or a cloudvpp appsbooks service.
//!
//! Rules it keeps (lessons of other MDMs' Apps and Books clients):
//! - any body with an `errorNumber` is an error, whatever the HTTP status;
//! - one bounded retry loop per call ([`Client::send`]), honouring `Retry-After` and 9646
//!   with capped exponential backoff; retries are never nested; a write is only retried when
//!   the service refused it before processing (429/9646), never after a transport failure;
//! - requests are spaced by `maxRequestPerSecond`; `limits` and `urls` are cached and
//!   re-read every 5 minutes; user batches are split by `maxUsers`, asset requests by
//!   `maxAssets` and `maxClientUserIds`/`maxSerialNumbers` ([`split_manage_assets`]);
//! - pagination is sequential or up to 5 pages at once, keeping the first page's `versionId`;
//! - the location is claimed with `mdmInfo`, and a response carrying another MDM's
//!   `mdmInfo` raises an alarm ([`Client::ownership_conflict`]).

use cloudvpp_abwire::assets::{
    Assignment, GetAssetsResponse, GetAssignmentsResponse, ManageAssetsRequest, PricingParam,
    ProductType, ResponseAsset, RevokeAssetsRequest,
};
use cloudvpp_abwire::limits::Limit;
use cloudvpp_abwire::{
    ClientConfigRequest, ClientConfigResponse, ErrorResponse, EventResponse, GetUsersResponse,
    MdmInfo, RequestUser, ResponseMeta, ResponseUser, ServiceConfigResponse, StatusResponse,
};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::collections::HashSet;
use std::future::Future;
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

    /// Whether a write that failed so was certainly not applied: the service refused it
    /// before processing it (an answer below 500: "synchronous failures result in no
    /// asynchronous processing"; 429/9646 included). After a transport failure, a 5xx or
    /// an unreadable success the write may have been applied, and only a read can tell.
    pub fn write_not_applied(&self) -> bool {
        match self {
            ClientError::Apple { status, .. } | ClientError::Http(status) => *status < 500,
            ClientError::RetryBudgetExhausted { last, .. } => last.write_not_applied(),
            ClientError::Transport(_) | ClientError::Decode(_) => false,
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

/// Query of Get Assets (every filter optional; bounds are inclusive).
#[derive(Debug, Clone, Default)]
pub struct AssetsQuery {
    /// One App Store ID.
    pub adam_id: Option<String>,
    /// One quality.
    pub pricing_param: Option<PricingParam>,
    /// Apps or books.
    pub product_type: Option<ProductType>,
    /// Only (non-)revocable assets.
    pub revocable: Option<bool>,
    /// Only (non-)device-assignable assets.
    pub device_assignable: Option<bool>,
    /// At least this many licences free.
    pub min_available_count: Option<i64>,
    /// At most this many licences free.
    pub max_available_count: Option<i64>,
    /// At least this many licences assigned.
    pub min_assigned_count: Option<i64>,
    /// At most this many licences assigned.
    pub max_assigned_count: Option<i64>,
}

impl AssetsQuery {
    fn params(&self, page: u32) -> Vec<(&'static str, String)> {
        let mut q = vec![("pageIndex", page.to_string())];
        let mut opt = |name, v: Option<String>| {
            if let Some(v) = v {
                q.push((name, v));
            }
        };
        opt("adamId", self.adam_id.clone());
        opt(
            "pricingParam",
            self.pricing_param.map(|p| p.as_str().into()),
        );
        opt("productType", self.product_type.map(|p| p.as_str().into()));
        opt("revocable", self.revocable.map(|b| b.to_string()));
        opt(
            "deviceAssignable",
            self.device_assignable.map(|b| b.to_string()),
        );
        opt(
            "minAvailableCount",
            self.min_available_count.map(|n| n.to_string()),
        );
        opt(
            "maxAvailableCount",
            self.max_available_count.map(|n| n.to_string()),
        );
        opt(
            "minAssignedCount",
            self.min_assigned_count.map(|n| n.to_string()),
        );
        opt(
            "maxAssignedCount",
            self.max_assigned_count.map(|n| n.to_string()),
        );
        q
    }
}

/// Query of Get Assignments.
#[derive(Debug, Clone, Default)]
pub struct AssignmentsQuery {
    /// One App Store ID.
    pub adam_id: Option<String>,
    /// One user.
    pub client_user_id: Option<String>,
    /// One device.
    pub serial_number: Option<String>,
    /// One quality.
    pub pricing_param: Option<PricingParam>,
    /// Leave out assignments of retired users.
    pub exclude_inactive_users: bool,
    /// Add each user's `userStatus` and `idHash`.
    pub include_user_state: bool,
    /// Changes since this version.
    pub since_version_id: Option<String>,
}

impl AssignmentsQuery {
    fn params(&self, page: u32) -> Vec<(&'static str, String)> {
        let mut q = vec![("pageIndex", page.to_string())];
        let mut opt = |name, v: Option<String>| {
            if let Some(v) = v {
                q.push((name, v));
            }
        };
        opt("adamId", self.adam_id.clone());
        opt("clientUserId", self.client_user_id.clone());
        opt("serialNumber", self.serial_number.clone());
        opt(
            "pricingParam",
            self.pricing_param.map(|p| p.as_str().into()),
        );
        opt(
            "excludeInactiveUsers",
            self.exclude_inactive_users.then(|| "true".into()),
        );
        opt(
            "includeUserState",
            self.include_user_state.then(|| "true".into()),
        );
        opt("sinceVersionId", self.since_version_id.clone());
        q
    }
}

/// How many assets and targets one asset request may carry: the service limits as last
/// read (Apple's example values when service config does not say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssetLimits {
    /// `maxAssets`.
    pub assets: usize,
    /// `maxClientUserIds`.
    pub client_user_ids: usize,
    /// `maxSerialNumbers`.
    pub serial_numbers: usize,
    /// `maxRevokeClientUserIds`.
    pub revoke_client_user_ids: usize,
    /// `maxRevokeSerialNumbers`.
    pub revoke_serial_numbers: usize,
}

impl Default for AssetLimits {
    fn default() -> Self {
        let d = |l: Limit| l.apple_default() as usize;
        AssetLimits {
            assets: d(Limit::MaxAssets),
            client_user_ids: d(Limit::MaxClientUserIds),
            serial_numbers: d(Limit::MaxSerialNumbers),
            revoke_client_user_ids: d(Limit::MaxRevokeClientUserIds),
            revoke_serial_numbers: d(Limit::MaxRevokeSerialNumbers),
        }
    }
}

/// `items` without repeats, in first-seen order.
fn distinct<T: Clone + Eq + std::hash::Hash>(items: &[T]) -> Vec<T> {
    let mut seen = HashSet::new();
    items
        .iter()
        .filter(|i| seen.insert((*i).clone()))
        .cloned()
        .collect()
}

/// Splits an associate or disassociate request (every asset for every target) into
/// requests within `limits`: each chunk of at most `assets` assets goes with each chunk of
/// at most `client_user_ids` users, and separately with each chunk of at most
/// `serial_numbers` devices, so together they cover exactly the pairs asked for. Repeated
/// assets and targets are sent once (a repeat is a synchronous 9703/9704/9705 refusal of
/// the whole request). A request with no asset or no target is returned as it is, for the
/// service to refuse with its own number (9718, 9719).
pub fn split_manage_assets(
    req: &ManageAssetsRequest,
    limits: &AssetLimits,
) -> Vec<ManageAssetsRequest> {
    let assets = distinct(&req.assets);
    let users = distinct(req.client_user_ids.as_deref().unwrap_or_default());
    let serials = distinct(req.serial_numbers.as_deref().unwrap_or_default());
    if assets.is_empty() || (users.is_empty() && serials.is_empty()) {
        return vec![req.clone()];
    }
    let mut out = Vec::new();
    for a in assets.chunks(limits.assets.max(1)) {
        for u in users.chunks(limits.client_user_ids.max(1)) {
            out.push(ManageAssetsRequest {
                assets: a.to_vec(),
                client_user_ids: Some(u.to_vec()),
                serial_numbers: None,
            });
        }
        for s in serials.chunks(limits.serial_numbers.max(1)) {
            out.push(ManageAssetsRequest {
                assets: a.to_vec(),
                client_user_ids: None,
                serial_numbers: Some(s.to_vec()),
            });
        }
    }
    out
}

/// Splits a revoke request by `maxRevokeClientUserIds` and `maxRevokeSerialNumbers`, users
/// and devices in separate requests, repeats sent once. An empty request is returned as it
/// is (the service refuses it).
pub fn split_revoke_assets(
    req: &RevokeAssetsRequest,
    limits: &AssetLimits,
) -> Vec<RevokeAssetsRequest> {
    let users = distinct(req.client_user_ids.as_deref().unwrap_or_default());
    let serials = distinct(req.serial_numbers.as_deref().unwrap_or_default());
    if users.is_empty() && serials.is_empty() {
        return vec![req.clone()];
    }
    let mut out: Vec<RevokeAssetsRequest> = users
        .chunks(limits.revoke_client_user_ids.max(1))
        .map(|u| RevokeAssetsRequest {
            client_user_ids: Some(u.to_vec()),
            serial_numbers: None,
        })
        .collect();
    out.extend(
        serials
            .chunks(limits.revoke_serial_numbers.max(1))
            .map(|s| RevokeAssetsRequest {
                client_user_ids: None,
                serial_numbers: Some(s.to_vec()),
            }),
    );
    out
}

/// One page of a paged listing, as [`Client::all_pages`] walks it.
struct PageParts<T> {
    items: Vec<T>,
    total_pages: u32,
    last: bool,
    version_id: String,
    meta: ResponseMeta,
}

impl From<GetUsersResponse> for PageParts<ResponseUser> {
    fn from(p: GetUsersResponse) -> Self {
        PageParts {
            items: p.users,
            total_pages: p.total_pages,
            last: p.next_page_index.is_none(),
            version_id: p.version_id,
            meta: p.meta,
        }
    }
}

impl From<GetAssetsResponse> for PageParts<ResponseAsset> {
    fn from(p: GetAssetsResponse) -> Self {
        PageParts {
            items: p.assets,
            total_pages: p.total_pages,
            last: p.next_page_index.is_none(),
            version_id: p.version_id,
            meta: p.meta,
        }
    }
}

impl From<GetAssignmentsResponse> for PageParts<Assignment> {
    fn from(p: GetAssignmentsResponse) -> Self {
        PageParts {
            items: p.assignments,
            total_pages: p.total_pages,
            last: p.next_page_index.is_none(),
            version_id: p.version_id,
            meta: p.meta,
        }
    }
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
    ) -> Result<(Vec<ResponseUser>, String, ResponseMeta)> {
        Self::all_pages(|p| self.get_users(q, p), concurrency).await
    }

    /// Every page of a listing: the first, then `concurrency` (1..=5) at a time; the items,
    /// and the first page's `versionId` and metadata (the version to sync from next).
    async fn all_pages<P, T, F, Fut>(
        fetch: F,
        concurrency: usize,
    ) -> Result<(Vec<T>, String, ResponseMeta)>
    where
        P: Into<PageParts<T>>,
        F: Fn(u32) -> Fut,
        Fut: Future<Output = Result<P>>,
    {
        let first: PageParts<T> = fetch(0).await?.into();
        let (meta, version) = (first.meta, first.version_id);
        let mut items = first.items;
        let mut total = first.total_pages;
        let mut done = first.last;
        let (concurrency, mut page) = (concurrency.clamp(1, 5) as u32, 1u32);
        while !done {
            let end = (page + concurrency).min(total.max(page + 1));
            let results = futures::future::join_all((page..end).map(&fetch)).await;
            for r in results {
                let p: PageParts<T> = r?.into();
                items.extend(p.items);
                // totalPages can change while paging: go on until a page says it is the last.
                total = total.max(p.total_pages);
                done |= p.last;
            }
            page = end;
            done |= page >= total;
        }
        Ok((items, version, meta))
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

    /// One page of `GET assets`.
    pub async fn get_assets(&self, q: &AssetsQuery, page: u32) -> Result<GetAssetsResponse> {
        self.send(reqwest::Method::GET, "/assets", &q.params(page), None, true)
            .await
    }

    /// Every page of `GET assets`, `concurrency` (1..=5) at a time after the first.
    pub async fn all_assets(
        &self,
        q: &AssetsQuery,
        concurrency: usize,
    ) -> Result<Vec<ResponseAsset>> {
        Self::all_pages(|p| self.get_assets(q, p), concurrency)
            .await
            .map(|(a, _, _)| a)
    }

    /// One page of `GET assignments`.
    pub async fn get_assignments(
        &self,
        q: &AssignmentsQuery,
        page: u32,
    ) -> Result<GetAssignmentsResponse> {
        self.send(
            reqwest::Method::GET,
            "/assignments",
            &q.params(page),
            None,
            true,
        )
        .await
    }

    /// Every page of `GET assignments`, `concurrency` (1..=5) at a time after the first;
    /// returns the assignments and the first page's `versionId` (the one to sync from next).
    pub async fn all_assignments(
        &self,
        q: &AssignmentsQuery,
        concurrency: usize,
    ) -> Result<(Vec<Assignment>, String)> {
        Self::all_pages(|p| self.get_assignments(q, p), concurrency)
            .await
            .map(|(a, v, _)| (a, v))
    }

    /// The asset request limits from (cached) service config, Apple's example values for
    /// any it does not state.
    pub async fn asset_limits(&self) -> AssetLimits {
        let get = |l: Limit| async move {
            self.limit(l)
                .await
                .unwrap_or(l.apple_default())
                .clamp(1, i64::from(u32::MAX)) as usize
        };
        AssetLimits {
            assets: get(Limit::MaxAssets).await,
            client_user_ids: get(Limit::MaxClientUserIds).await,
            serial_numbers: get(Limit::MaxSerialNumbers).await,
            revoke_client_user_ids: get(Limit::MaxRevokeClientUserIds).await,
            revoke_serial_numbers: get(Limit::MaxRevokeSerialNumbers).await,
        }
    }

    /// POSTs `body` to `path`, an asynchronous request: its eventId. Never replayed after
    /// a transport failure or a 5xx (it may have been processed); see [`Self::send`].
    async fn post_event(&self, path: &str, body: &impl serde::Serialize) -> Result<String> {
        let body = serde_json::to_value(body).map_err(|e| ClientError::Decode(e.to_string()))?;
        let r: EventResponse = self
            .send(reqwest::Method::POST, path, &[], Some(&body), true)
            .await?;
        Ok(r.event_id)
    }

    async fn manage_assets(&self, action: &str, req: &ManageAssetsRequest) -> Result<Vec<String>> {
        let limits = self.asset_limits().await;
        let mut events = Vec::new();
        for part in split_manage_assets(req, &limits) {
            events.push(self.post_event(&format!("/assets/{action}"), &part).await?);
        }
        Ok(events)
    }

    /// `assets/associate`, split by `maxAssets` and `maxClientUserIds`/`maxSerialNumbers`
    /// ([`split_manage_assets`]); one eventId per request sent. Stops at the first refused
    /// request: a caller that must know which pairs each event covers splits first and
    /// sends the parts one at a time.
    pub async fn associate_assets(&self, req: &ManageAssetsRequest) -> Result<Vec<String>> {
        self.manage_assets("associate", req).await
    }

    /// `assets/disassociate`, split as [`Self::associate_assets`].
    pub async fn disassociate_assets(&self, req: &ManageAssetsRequest) -> Result<Vec<String>> {
        self.manage_assets("disassociate", req).await
    }

    /// `assets/revoke`, split by `maxRevokeClientUserIds` and `maxRevokeSerialNumbers`
    /// ([`split_revoke_assets`]); one eventId per request sent.
    pub async fn revoke_assets(&self, req: &RevokeAssetsRequest) -> Result<Vec<String>> {
        let limits = self.asset_limits().await;
        let mut events = Vec::new();
        for part in split_revoke_assets(req, &limits) {
            events.push(self.post_event("/assets/revoke", &part).await?);
        }
        Ok(events)
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
    use cloudvpp_abwire::assets::AssetRef;

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
        assert!(e.write_not_applied(), "9646 is refused unprocessed");
        assert!(!ClientError::Transport("reset".into()).write_not_applied());
        assert!(!ClientError::Http(502).write_not_applied());
        let refused = ClientError::Apple {
            number: 9700,
            message: "too many assets".into(),
            status: 400,
            retry_after: None,
        };
        assert!(refused.write_not_applied());
    }

    fn asset(id: &str) -> AssetRef {
        AssetRef {
            adam_id: id.into(),
            pricing_param: Some(PricingParam::Stdq),
        }
    }

    fn ids(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i}")).collect()
    }

    /// Every (asset, target) pair of `reqs`, with how often it is asked for.
    fn pairs(reqs: &[ManageAssetsRequest]) -> BTreeMap<(String, String), usize> {
        let mut out = BTreeMap::new();
        for r in reqs {
            for a in &r.assets {
                let targets = r.client_user_ids.iter().chain(&r.serial_numbers).flatten();
                for t in targets {
                    *out.entry((a.adam_id.clone(), t.clone())).or_default() += 1;
                }
            }
        }
        out
    }

    #[test]
    fn asset_requests_split_by_the_limits_and_cover_each_pair_once() {
        let limits = AssetLimits {
            assets: 25,
            client_user_ids: 1000,
            serial_numbers: 3,
            ..Default::default()
        };
        assert_eq!(
            limits,
            AssetLimits {
                serial_numbers: 3,
                ..AssetLimits::default()
            }
        );
        // 30 assets for 2500 people and 4 devices: 2 asset chunks × (3 user chunks + 2 device chunks).
        let req = ManageAssetsRequest {
            assets: (0..30).map(|i| asset(&format!("{}", 1000 + i))).collect(),
            client_user_ids: Some(ids("u", 2500)),
            serial_numbers: Some(ids("S", 4)),
        };
        let parts = split_manage_assets(&req, &limits);
        assert_eq!(parts.len(), 2 * (3 + 2));
        for p in &parts {
            assert!(p.assets.len() <= 25);
            assert!(p.client_user_ids.as_ref().is_none_or(|u| u.len() <= 1000));
            assert!(p.serial_numbers.as_ref().is_none_or(|s| s.len() <= 3));
            // Users and devices never share a request.
            assert!(p.client_user_ids.is_none() || p.serial_numbers.is_none());
        }
        let covered = pairs(&parts);
        assert_eq!(covered.len(), 30 * (2500 + 4));
        assert!(covered.values().all(|n| *n == 1));
        // Within the limits: the request itself.
        let small = ManageAssetsRequest {
            assets: vec![asset("1")],
            client_user_ids: Some(ids("u", 7)),
            serial_numbers: None,
        };
        assert_eq!(split_manage_assets(&small, &limits), vec![small.clone()]);
    }

    #[test]
    fn repeats_are_sent_once_and_empty_requests_go_as_they_are() {
        let limits = AssetLimits {
            assets: 1,
            client_user_ids: 2,
            ..Default::default()
        };
        let req = ManageAssetsRequest {
            assets: vec![asset("1"), asset("2"), asset("1")],
            client_user_ids: Some(vec!["a".into(), "b".into(), "a".into(), "c".into()]),
            serial_numbers: None,
        };
        let parts = split_manage_assets(&req, &limits);
        assert_eq!(parts.len(), 2 * 2);
        assert!(pairs(&parts).values().all(|n| *n == 1));
        assert_eq!(pairs(&parts).len(), 2 * 3);
        // The service refuses these with its own numbers (9718, 9719): they are not dropped.
        let no_assets = ManageAssetsRequest {
            assets: vec![],
            client_user_ids: Some(vec!["a".into()]),
            serial_numbers: None,
        };
        assert_eq!(
            split_manage_assets(&no_assets, &limits),
            vec![no_assets.clone()]
        );
        let no_targets = ManageAssetsRequest {
            assets: vec![asset("1")],
            ..Default::default()
        };
        assert_eq!(
            split_manage_assets(&no_targets, &limits),
            vec![no_targets.clone()]
        );
        // A limit of 0 from a broken service config still makes progress.
        let zero = AssetLimits {
            assets: 0,
            client_user_ids: 0,
            ..Default::default()
        };
        assert_eq!(split_manage_assets(&req, &zero).len(), 2 * 3);
    }

    #[test]
    fn revoke_requests_split_by_the_revoke_limits() {
        let limits = AssetLimits {
            revoke_client_user_ids: 100,
            revoke_serial_numbers: 2,
            ..Default::default()
        };
        let req = RevokeAssetsRequest {
            client_user_ids: Some(ids("u", 250)),
            serial_numbers: Some(ids("S", 3)),
        };
        let parts = split_revoke_assets(&req, &limits);
        let sizes: Vec<(usize, usize)> = parts
            .iter()
            .map(|p| {
                (
                    p.client_user_ids.as_ref().map_or(0, Vec::len),
                    p.serial_numbers.as_ref().map_or(0, Vec::len),
                )
            })
            .collect();
        assert_eq!(sizes, [(100, 0), (100, 0), (50, 0), (0, 2), (0, 1)]);
        let empty = RevokeAssetsRequest::default();
        assert_eq!(split_revoke_assets(&empty, &limits), vec![empty.clone()]);
    }

    #[test]
    fn queries_use_apples_parameter_names() {
        let q = AssignmentsQuery {
            adam_id: Some("408709785".into()),
            client_user_id: Some("u1".into()),
            exclude_inactive_users: true,
            ..Default::default()
        };
        assert_eq!(
            q.params(2),
            vec![
                ("pageIndex", "2".to_string()),
                ("adamId", "408709785".into()),
                ("clientUserId", "u1".into()),
                ("excludeInactiveUsers", "true".into()),
            ]
        );
        let q = AssetsQuery {
            adam_id: Some("1".into()),
            pricing_param: Some(PricingParam::Plus),
            min_available_count: Some(1),
            ..Default::default()
        };
        assert_eq!(
            q.params(0),
            vec![
                ("pageIndex", "0".to_string()),
                ("adamId", "1".into()),
                ("pricingParam", "PLUS".into()),
                ("minAvailableCount", "1".into()),
            ]
        );
    }
}
