//! `ApiError`: every failure of the Apps and Books API leaves as Apple's `ErrorResponse`.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use cloudvpp_abwire::errors::{self, AppleError};
use cloudvpp_abwire::ErrorInfo;
use cloudvpp_store::StoreError;

/// Seconds a client is asked to wait after a storage failure.
pub const STORAGE_RETRY_AFTER: u64 = 5;

/// Largest request body of the Apps and Books API. `maxUsers` users with the longest fields
/// allowed fit in well under this; a bigger body is refused with 413 before it is read.
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// An Apple error, ready to be sent.
#[derive(Debug)]
pub struct ApiError {
    /// Which error.
    pub error: AppleError,
    /// Optional detail.
    pub info: Option<ErrorInfo>,
    /// Seconds for `Retry-After`.
    pub retry_after: Option<u64>,
    /// HTTP status when it is not the error's own (413 has no Apple number of its own).
    pub status: Option<StatusCode>,
}

impl From<AppleError> for ApiError {
    fn from(error: AppleError) -> Self {
        ApiError {
            error,
            info: None,
            retry_after: None,
            status: None,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        // The cause goes to the log only: database text (SQL, names, addresses) never
        // reaches a client. A database that cannot be reached is Apple's 9729 with 503,
        // any other storage failure Apple's 9603 with 500; both say when to come back.
        let error = match &e {
            StoreError::Unavailable(_) => {
                tracing::warn!(error = %e, "database unavailable");
                errors::SERVICE_UNAVAILABLE
            }
            _ => {
                tracing::error!(error = %e, "storage failure");
                errors::INTERNAL_ERROR
            }
        };
        ApiError {
            error,
            info: None,
            retry_after: Some(STORAGE_RETRY_AFTER),
            status: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status.unwrap_or_else(|| {
            StatusCode::from_u16(self.error.http_status).unwrap_or(StatusCode::BAD_REQUEST)
        });
        let mut body = self.error.response();
        body.error_info = self.info;
        let mut resp = (status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// Result alias for handlers.
pub type ApiResult<T> = Result<T, ApiError>;

/// Refuses a request that declares a body over [`MAX_BODY_BYTES`] at once, with 413 and
/// Apple's body, without reading any of it (a body without a declared length is cut off
/// at the limit by [`Body`]).
pub async fn refuse_declared_oversize(req: Request, next: axum::middleware::Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return ApiError {
            status: Some(StatusCode::PAYLOAD_TOO_LARGE),
            ..errors::INVALID_ARGUMENT.into()
        }
        .into_response();
    }
    next.run(req).await
}

/// A request body of at most [`MAX_BODY_BYTES`], refused with Apple's error body: a body
/// over the limit gets 413 with 9602, one that cannot be read 400 with 9602 (axum's own
/// rejections are plain text).
pub struct Body(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Bytes::from_request(req, state).await {
            Ok(b) => Ok(Body(b)),
            Err(rejection) => Err(ApiError {
                status: (rejection.status() == StatusCode::PAYLOAD_TOO_LARGE)
                    .then_some(StatusCode::PAYLOAD_TOO_LARGE),
                ..errors::INVALID_ARGUMENT.into()
            }),
        }
    }
}
