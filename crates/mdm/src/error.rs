//! Errors towards devices and admin clients.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cloudvpp_store::StoreError;

/// A refused MDM request. Never 401: Apple devices remove their MDM profile on a 401, so
/// identity failures answer 400 (or 403), as nanomdm does.
#[derive(Debug)]
pub struct MdmError {
    /// Status to send.
    pub status: StatusCode,
    /// Why, for the log and the body.
    pub reason: String,
    /// Enrollment concerned, when known.
    pub enrollment: Option<String>,
    /// Whether `reason` may be shown to the device; storage failures are only logged.
    pub public: bool,
}

impl MdmError {
    /// 400 with a reason.
    pub fn bad(reason: impl Into<String>) -> Self {
        MdmError {
            status: StatusCode::BAD_REQUEST,
            reason: reason.into(),
            enrollment: None,
            public: true,
        }
    }
    /// Attaches the enrollment ID for the log line.
    pub fn for_enrollment(mut self, id: &str) -> Self {
        self.enrollment = Some(id.to_string());
        self
    }
    /// 500 for a storage failure (503 when the database cannot be reached, so the device
    /// retries later). The database's words go to the log only: they can name tables,
    /// queries and values, none of which a device should see.
    pub fn internal(e: StoreError) -> Self {
        let status = match e {
            StoreError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        MdmError {
            status,
            reason: e.to_string(),
            enrollment: None,
            public: false,
        }
    }
}

impl IntoResponse for MdmError {
    fn into_response(self) -> Response {
        debug_assert_ne!(self.status, StatusCode::UNAUTHORIZED);
        tracing::warn!(status = self.status.as_u16(), enrollment = self.enrollment.as_deref().unwrap_or("-"), reason = %self.reason, "MDM request refused");
        if self.public {
            (self.status, format!("{}\n", self.reason)).into_response()
        } else if self.status == StatusCode::SERVICE_UNAVAILABLE {
            // Devices retry on their own; the header says when it is worth it.
            (
                self.status,
                [(axum::http::header::RETRY_AFTER, "5")],
                "temporarily unavailable\n",
            )
                .into_response()
        } else {
            (self.status, "internal error: see the server log\n").into_response()
        }
    }
}
