//! A client of the MDM service's admin API, shared by `mdm ...`, `invite` and `invitations`.

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::Value;

/// Where the admin API is and its key.
#[derive(Args, Clone)]
pub struct ApiArgs {
    /// MDM service base URL.
    #[arg(
        long,
        env = "CLOUDVPP_MDM_URL",
        default_value = "http://127.0.0.1:9000"
    )]
    pub server: String,
    /// Admin API key.
    #[arg(long, env = "CLOUDVPP_API_KEY")]
    pub api_key: String,
}

/// Calls the admin API; a 422 (partly refused) is returned like a success.
pub async fn call(
    api: &ApiArgs,
    method: reqwest::Method,
    path: &str,
    body: Option<(Vec<u8>, &str)>,
) -> Result<Value> {
    let mut req = reqwest::Client::new()
        .request(
            method,
            format!("{}{}", api.server.trim_end_matches('/'), path),
        )
        .bearer_auth(&api.api_key);
    if let Some((b, ct)) = body {
        req = req.header("Content-Type", ct).body(b);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("calling {}", api.server))?;
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() && status.as_u16() != 422 {
        bail!(
            "{}: {}",
            status,
            v.get("error")
                .and_then(|e| e.as_str())
                .unwrap_or(&v.to_string())
        );
    }
    Ok(v)
}

/// Prints JSON, pretty.
pub fn print(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}
