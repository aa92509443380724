//! `ApiError`: every failure of the Apps and Books API leaves as Apple's `ErrorResponse`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use cloudvpp_abwire::errors::{self, AppleError};
use cloudvpp_abwire::ErrorInfo;

/// An Apple error, ready to be sent.
#[derive(Debug)]
pub struct ApiError {
    /// Which error.
    pub error: AppleError,
    /// Optional detail.
    pub info: Option<ErrorInfo>,
    /// Seconds for `Retry-After`.
    pub retry_after: Option<u64>,
}

impl From<AppleError> for ApiError {
    fn from(error: AppleError) -> Self {
        ApiError {
            error,
            info: None,
            retry_after: None,
        }
    }
}

impl From<cloudvpp_store::StoreError> for ApiError {
    fn from(e: cloudvpp_store::StoreError) -> Self {
        // The cause goes to the log; the client gets Apple's generic 9603.
        tracing::error!(error = %e, "storage failure");
        ApiError {
            error: errors::INTERNAL_ERROR,
            info: None,
            retry_after: Some(5),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.error.http_status).unwrap_or(StatusCode::BAD_REQUEST);
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
