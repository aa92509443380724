//! APNs push over HTTP/2 with the MDM push certificate.
//!
//! `POST <apns>/3/device/<hex token>` with `{"mdm":"<PushMagic>"}`, `apns-push-type: mdm`
//! and `apns-topic`. Transport errors, 429 and 5xx are retried a bounded number of times
//! with exponential backoff; other answers (400 BadDeviceToken, 410 Unregistered, ...)
//! are final.

use cloudvpp_store::clock::Clock as _;
use cloudvpp_store::mdm::EnrollmentRecord;
use std::time::Duration;

/// Attempts per push.
const ATTEMPTS: u32 = 3;

/// APNs client.
pub struct Pusher {
    client: reqwest::Client,
    base: String,
}

/// Outcome of one push.
pub type PushResult = Result<String, String>;

impl Pusher {
    /// `base`: `https://api.push.apple.com` (or a loopback fake); `identity_pem`: push
    /// certificate and private key; `extra_root_pem`: CA to trust besides the system's.
    pub fn new(
        base: &str,
        identity_pem: &[u8],
        extra_root_pem: Option<&[u8]>,
    ) -> Result<Self, String> {
        let identity = reqwest::Identity::from_pem(identity_pem)
            .map_err(|e| format!("push certificate/key: {e}"))?;
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .identity(identity)
            .http2_prior_knowledge()
            .timeout(Duration::from_secs(15));
        if let Some(pem) = extra_root_pem {
            for cert in
                reqwest::Certificate::from_pem_bundle(pem).map_err(|e| format!("APNs CA: {e}"))?
            {
                b = b.add_root_certificate(cert);
            }
        }
        Ok(Pusher {
            client: b.build().map_err(|e| e.to_string())?,
            base: base.trim_end_matches('/').to_string(),
        })
    }

    /// Pushes one enrollment; `Ok(apns-id)`. Counted in `cloudvpp_mdm_pushes_total` by
    /// result (`sent`, or `failed` after the retries).
    pub async fn push(&self, e: &EnrollmentRecord) -> PushResult {
        let result = self.send(e).await;
        let label = if result.is_ok() { "sent" } else { "failed" };
        metrics::counter!("cloudvpp_mdm_pushes_total", "result" => label).increment(1);
        result
    }

    async fn send(&self, e: &EnrollmentRecord) -> PushResult {
        let url = format!("{}/3/device/{}", self.base, e.token_hex);
        let body = serde_json::json!({ "mdm": e.push_magic }).to_string();
        // APNs reads the expiry by the real clock, whatever the service's.
        let now = cloudvpp_store::clock::SystemClock.now_ms();
        let expiration = (now / 1000 + 86_400).to_string();
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
            let sent = self
                .client
                .post(&url)
                .header("apns-push-type", "mdm")
                .header("apns-topic", &e.topic)
                .header("apns-priority", "10")
                .header("apns-expiration", &expiration)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(resp) if resp.status().is_success() => {
                    let id = resp
                        .headers()
                        .get("apns-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    return Ok(id);
                }
                Ok(resp) => {
                    let status = resp.status();
                    let text = resp.text().await.unwrap_or_default();
                    last = format!("APNs {}: {}", status.as_u16(), text.trim());
                    if !(status.is_server_error() || status.as_u16() == 429) {
                        return Err(last);
                    }
                }
                Err(err) => last = format!("APNs unreachable: {err}"),
            }
            tracing::info!(enrollment = %e.id, attempt = attempt + 1, error = %last, "push failed");
        }
        Err(last)
    }
}
