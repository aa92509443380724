//! The OpenAPI 3.1 document of the admin API (`/api/v1/`): the MDM's and the engine's routes
//! as their routers describe them (`utoipa-axum`), with the API-key security schemes.
//! Served at [`PATH`] without the key: it holds no data, only the API's shape.

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use cloudvpp_mdm::admin::{BASIC_SCHEME, BEARER_SCHEME};
use std::sync::LazyLock;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ComponentsBuilder, InfoBuilder, OpenApi, OpenApiBuilder};

/// Where the MDM service serves the document.
pub const PATH: &str = "/api/v1/openapi.json";

/// The document's own route, so that it is listed too (without security).
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "meta",
    security(()),
    responses((status = 200, description = "This document (OpenAPI 3.1)", content_type = "application/json"))
)]
async fn openapi_json() -> impl IntoResponse {
    // Built once: the document is fixed at compile time.
    static JSON: LazyLock<String> = LazyLock::new(json);
    ([(CONTENT_TYPE, "application/json")], JSON.as_str())
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(openapi_json))]
struct Own;

/// The merged document: MDM and engine admin routes, the document's own route, the key.
pub fn document() -> OpenApi {
    use utoipa::OpenApi as _;
    let key = |scheme, description: &str| {
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(scheme)
                .description(Some(description))
                .build(),
        )
    };
    let mut doc = OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("cloudvpp admin API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "The MDM's and the invitation engine's admin API. Every route but this \
                     document needs the API key (`--api-key`): `Authorization: Bearer KEY`, \
                     or HTTP Basic with the key as password. A missing or wrong key answers \
                     403 (never 401); without `--api-key` the admin API is off (403).",
                ))
                .build(),
        )
        .components(Some(
            ComponentsBuilder::new()
                .security_scheme(
                    BEARER_SCHEME,
                    key(HttpAuthScheme::Bearer, "`Authorization: Bearer KEY`"),
                )
                .security_scheme(
                    BASIC_SCHEME,
                    key(
                        HttpAuthScheme::Basic,
                        "HTTP Basic, any user name, the key as password",
                    ),
                )
                .build(),
        ))
        // Either scheme: two requirements are alternatives.
        .security(Some([
            SecurityRequirement::new(BEARER_SCHEME, Vec::<String>::new()),
            SecurityRequirement::new(BASIC_SCHEME, Vec::<String>::new()),
        ]))
        .build();
    doc.merge(cloudvpp_mdm::admin_api().into_openapi());
    doc.merge(cloudvpp_engine::api::admin_api().into_openapi());
    doc.merge(Own::openapi());
    doc
}

/// The document as served, pretty-printed (and as checked in at `docs/openapi.json`).
pub fn json() -> String {
    document()
        .to_pretty_json()
        .expect("an OpenAPI document serializes")
        + "\n"
}

/// The route serving the document.
pub fn router() -> axum::Router {
    axum::Router::new().route(PATH, get(openapi_json))
}
