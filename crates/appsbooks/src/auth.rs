//! sToken authentication: `Authorization: Bearer <whole sToken>`.

use crate::error::ApiError;
use crate::ids::apple_date;
use crate::AppState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use cloudvpp_abwire::errors;
use cloudvpp_abwire::ResponseMeta;
use cloudvpp_store::Org;

/// The authenticated organisation of a request, after the rate limit.
pub struct OrgContext {
    /// The organisation.
    pub org: Org,
    /// Expiry of the token used, Unix seconds.
    pub token_expires_at: i64,
}

impl OrgContext {
    /// `uId`, `tokenExpirationDate` and `mdmInfo` for the response.
    pub fn meta(&self) -> ResponseMeta {
        ResponseMeta {
            u_id: Some(self.org.uid.clone()),
            token_expiration_date: Some(apple_date(self.token_expires_at)),
            mdm_info: self.org.config.mdm_info.clone(),
        }
    }
}

impl FromRequestParts<AppState> for OrgContext {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(errors::INVALID_AUTHORIZATION_HEADER)?;
        let (scheme, token) = header
            .trim()
            .split_once(' ')
            .ok_or(errors::INVALID_AUTHORIZATION_HEADER)?;
        let token = token.trim();
        if !scheme.eq_ignore_ascii_case("bearer")
            || token.is_empty()
            || token.contains(char::is_whitespace)
        {
            return Err(errors::INVALID_AUTHORIZATION_HEADER.into());
        }
        // The token and its organisation in one read, every request: a revoked or renewed
        // token stops working at once, on every instance (no cache to outlive it).
        let (record, org) = state
            .store
            .find_token_with_org(token)
            .await?
            .ok_or(errors::LOGIN_REQUIRED)?;
        if record.revoked {
            return Err(errors::TOKEN_REVOKED.into());
        }
        if record.expires_at <= state.config.clock.now_ms() / 1000 {
            return Err(errors::TOKEN_EXPIRED.into());
        }
        let per_second = state
            .limits
            .get(crate::limits::Limit::MaxRequestPerSecond)
            .await;
        if !state.rate.allow(record.org_id, per_second).await {
            return Err(ApiError {
                retry_after: Some(1),
                ..errors::TOO_MANY_REQUESTS.into()
            });
        }
        Ok(OrgContext {
            org,
            token_expires_at: record.expires_at,
        })
    }
}
