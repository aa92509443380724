//! Service Config and Client Config.

use crate::auth::OrgContext;
use crate::error::{ApiError, ApiResult, Body};
use crate::limits::Limit;
use crate::users::require_json;
use crate::AppState;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use cloudvpp_abwire::errors;
use cloudvpp_abwire::notification::types;
use cloudvpp_abwire::{
    ClientConfigRequest, ClientConfigResponse, ResponseErrorCode, ServiceConfigResponse,
};
use cloudvpp_store::ClientConfig;
use std::collections::BTreeMap;

/// `GET /mdm/v2/service/config`: no authentication, as at Apple.
pub async fn service_config(State(state): State<AppState>) -> Json<ServiceConfigResponse> {
    let base = format!("{}/mdm/v2", state.config.public_url);
    let mut urls = BTreeMap::new();
    for (key, path) in [
        ("clientConfig", "/client/config"),
        ("getUsers", "/users"),
        ("createUsers", "/users/create"),
        ("updateUsers", "/users/update"),
        ("retireUsers", "/users/retire"),
        ("eventStatus", "/status"),
        ("getAssets", "/assets"),
        ("getAssignments", "/assignments"),
        ("associateAssets", "/assets/associate"),
        ("disassociateAssets", "/assets/disassociate"),
        ("revokeAssets", "/assets/revoke"),
    ] {
        urls.insert(key.to_string(), format!("{base}{path}"));
    }
    urls.insert(
        "invitationEmail".into(),
        format!(
            "{}/invite?inviteCode={}&mt=8",
            state.config.public_url,
            cloudvpp_abwire::INVITE_CODE_PLACEHOLDER
        ),
    );
    Json(ServiceConfigResponse {
        error_codes: errors::ALL
            .iter()
            .map(|e| ResponseErrorCode {
                error_message: e.message.to_string(),
                error_number: e.number,
            })
            .collect(),
        limits: state.limits.all().await,
        notification_types: [
            "ASSET_MANAGEMENT",
            "USER_MANAGEMENT",
            "USER_ASSOCIATED",
            "ASSET_COUNT",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        urls,
    })
}

/// The values `defaultPlatform` takes (Apple: "`volumestore` or `enterprisestore`", the
/// platform of `contentMetadataLookup`).
pub const PLATFORMS: [&str; 2] = ["volumestore", "enterprisestore"];

/// A `countryISO2ACode` as Apple writes it: two upper-case ASCII letters (ISO 3166-1
/// alpha-2), from any case.
pub fn country_code(s: &str) -> Option<String> {
    let s = s.trim();
    (s.len() == 2 && s.bytes().all(|b| b.is_ascii_alphabetic())).then(|| s.to_ascii_uppercase())
}

fn client_config_response(ctx: &OrgContext, cfg: &ClientConfig) -> ClientConfigResponse {
    let mut meta = ctx.meta();
    meta.mdm_info = cfg.mdm_info.clone();
    ClientConfigResponse {
        country_iso2a_code: ctx.org.country.clone(),
        default_platform: ctx.org.default_platform.clone(),
        location_name: ctx.org.name.clone(),
        notification_auth_token: cfg.notification_auth_token.clone(),
        notification_url: cfg.notification_url.clone(),
        subscribed_notification_types: cfg.notification_types.clone(),
        website_url: "https://business.apple.com".into(),
        meta,
    }
}

/// `GET /mdm/v2/client/config`.
pub async fn get_client_config(ctx: OrgContext) -> Json<ClientConfigResponse> {
    Json(client_config_response(&ctx, &ctx.org.config))
}

/// `POST /mdm/v2/client/config`: validates, sends a `TEST_NOTIFICATION` to a new
/// notification URL (refusing the whole configuration with 9728 if it is not answered
/// with a 2xx), then stores. Fields left out keep their value; an empty
/// `notificationUrl` together with an empty `notificationAuthToken` turns notifications off.
pub async fn post_client_config(
    State(state): State<AppState>,
    ctx: OrgContext,
    headers: HeaderMap,
    Body(body): Body,
) -> ApiResult<Json<ClientConfigResponse>> {
    require_json(&headers)?;
    let req: ClientConfigRequest =
        serde_json::from_slice(&body).map_err(|_| ApiError::from(errors::INVALID_ARGUMENT))?;
    let limits = state.limits.all().await;
    let limit = |l: Limit| crate::limits::value(&limits, l).max(0) as usize;
    let mut cfg = ctx.org.config.clone();

    if let Some(info) = &req.mdm_info {
        let (Some(id), Some(name), Some(metadata)) = (&info.id, &info.name, &info.metadata) else {
            return Err(errors::MDM_INFO_INCOMPLETE.into());
        };
        if id.chars().count() > limit(Limit::MaxMdmIdLength) {
            return Err(errors::MDM_ID_TOO_LONG.into());
        }
        if name.chars().count() > limit(Limit::MaxMdmNameLength) {
            return Err(errors::MDM_NAME_TOO_LONG.into());
        }
        if metadata.chars().count() > limit(Limit::MaxMdmMetadataLength) {
            return Err(errors::MDM_METADATA_TOO_LONG.into());
        }
        cfg.mdm_info = Some(info.clone());
    }

    match (&req.notification_url, &req.notification_auth_token) {
        (None, None) => {}
        (Some(u), Some(t)) if u.is_empty() && t.is_empty() => {
            cfg.notification_url = None;
            cfg.notification_auth_token = None;
        }
        (Some(url), Some(token)) if !url.is_empty() && !token.is_empty() => {
            let max = limit(Limit::MaxNotificationLength);
            if url.chars().count() > max || token.chars().count() > max {
                return Err(errors::NOTIFICATION_TOO_LONG.into());
            }
            // The token travels as `Authorization: Bearer <token>`: visible ASCII only.
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(errors::INVALID_ARGUMENT.into());
            }
            state.notifier.check(url).await?;
            let test = crate::envelope::envelope(
                &ctx.org.uid,
                types::TEST_NOTIFICATION,
                serde_json::json!({}),
            );
            let timeout = state.config.notification_timeout;
            if let Err(why) = state.notifier.deliver(url, token, &test, timeout).await {
                tracing::info!(org = %ctx.org.id, %why, "test notification failed; configuration refused");
                return Err(errors::NOTIFICATION_URL_UNREACHABLE.into());
            }
            cfg.notification_url = Some(url.clone());
            cfg.notification_auth_token = Some(token.clone());
        }
        _ => return Err(errors::NOTIFICATION_URL_AND_TOKEN_REQUIRED.into()),
    }

    if let Some(kinds) = &req.notification_types {
        if kinds
            .iter()
            .any(|k| !cloudvpp_abwire::SUBSCRIBABLE_NOTIFICATION_TYPES.contains(&k.as_str()))
        {
            return Err(errors::INVALID_ARGUMENT.into());
        }
        let mut kinds = kinds.clone();
        kinds.dedup();
        cfg.notification_types = kinds;
    }

    state.store.set_client_config(ctx.org.id, &cfg).await?;
    Ok(Json(client_config_response(&ctx, &cfg)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn country_codes_are_two_letters_written_upper_case() {
        assert_eq!(country_code("gb").as_deref(), Some("GB"));
        assert_eq!(country_code(" Us ").as_deref(), Some("US"));
        for bad in ["", "G", "GBR", "1A", "G-", "É1"] {
            assert_eq!(country_code(bad), None, "{bad:?}");
        }
    }
}
