//! What every admin router (`/api/v1/`, the MDM's and the engine's) shares: the API-key
//! check as one middleware layer, and JSON failures `{"error": ...}`.
//!
//! The key comes as `Authorization: Bearer KEY`, or HTTP Basic with the key as password
//! (as nanomdm's API). A missing or wrong key answers 403, never 401: nothing on this
//! server answers 401.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use base64::Engine;
use cloudvpp_store::StoreError;
use std::sync::Arc;

/// An API failure: JSON `{"error": ...}`.
#[derive(Debug)]
pub struct ApiFailure(StatusCode, String);

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

impl ApiFailure {
    /// The HTTP status it answers with.
    pub fn status(&self) -> StatusCode {
        self.0
    }

    /// What it says (no internal detail: storage failures say only that).
    pub fn message(&self) -> &str {
        &self.1
    }
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}

/// The body of every failure of the admin API.
// Serialised by `ApiFailure` and described by the document from the same type;
// `deny_unknown_fields` makes it say `additionalProperties: false`.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
}

/// Name of the API-key security scheme in the OpenAPI document (HTTP Bearer).
pub const BEARER_SCHEME: &str = "api_key";
/// Name of the alternative scheme: HTTP Basic with the key as password.
pub const BASIC_SCHEME: &str = "api_key_basic";

/// Result of admin handlers.
pub type ApiResult<T> = Result<T, ApiFailure>;

/// An API failure with a status.
pub fn fail(status: StatusCode, msg: impl Into<String>) -> ApiFailure {
    ApiFailure(status, msg.into())
}

/// Parses a JSON request body; 400 with serde's reason when it is not the expected shape.
pub fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(body)
        .map_err(|e| fail(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")))
}

/// A storage failure: logged, answered 500 (503 when the database cannot be reached)
/// without the database's words.
pub fn storage_failure(e: StoreError) -> ApiFailure {
    tracing::error!(error = %e, "admin API storage failure");
    match e {
        StoreError::Unavailable(_) => fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage temporarily unavailable",
        ),
        _ => fail(StatusCode::INTERNAL_SERVER_ERROR, "storage failure"),
    }
}

/// The admin API key; without one the admin API is off (every call 403).
#[derive(Clone)]
pub struct AdminKey(Option<Arc<str>>);

impl std::fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "AdminKey(<redacted>)"
        } else {
            "AdminKey(off)"
        })
    }
}

impl AdminKey {
    /// The key, or none (admin API off).
    pub fn new(key: Option<&str>) -> Self {
        AdminKey(key.map(Arc::from))
    }

    /// Whether an admin key is set (without one, the admin API and pages are off).
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// Whether `given` is the key, compared in constant time (over digests); always false
    /// when the admin API is off.
    pub fn matches(&self, given: &str) -> bool {
        self.0
            .as_deref()
            .is_some_and(|key| cloudvpp_store::secret::equal(given, key))
    }

    /// Checks a request's `Authorization` header.
    pub fn check(&self, headers: &HeaderMap) -> ApiResult<()> {
        let Some(key) = self.0.as_deref() else {
            return Err(fail(
                StatusCode::FORBIDDEN,
                "the admin API is off: start the service with --api-key",
            ));
        };
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        // Compared in constant time (over digests), so timing tells nothing about the key.
        let same = |given: &str| cloudvpp_store::secret::equal(given, key);
        let ok = if let Some(t) = given.strip_prefix("Bearer ") {
            same(t.trim())
        } else if let Some(b) = given.strip_prefix("Basic ") {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
                .and_then(|d| String::from_utf8(d).ok())
                .and_then(|s| s.split_once(':').map(|(_, p)| same(p)))
                .unwrap_or(false)
        } else {
            false
        };
        if ok {
            Ok(())
        } else {
            Err(fail(StatusCode::FORBIDDEN, "missing or wrong API key"))
        }
    }
}

async fn require_key(State(key): State<AdminKey>, req: Request, next: Next) -> Response {
    match key.check(req.headers()) {
        Ok(()) => next.run(req).await,
        Err(refused) => refused.into_response(),
    }
}

/// `router`'s routes, each behind the API-key check (run before any extractor, so nothing
/// of a refused request is read). Paths it does not route stay 404.
pub fn require_api_key<S>(router: Router<S>, key: AdminKey) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    router.route_layer(axum::middleware::from_fn_with_state(key, require_key))
}
