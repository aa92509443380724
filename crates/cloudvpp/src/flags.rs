//! Flag groups shared by the commands (`#[derive(clap::Args)]`, flattened into each):
//! every setting of a service is declared once, in its group, so a flag added to a
//! service appears on `cloudvpp serve` too by construction.

use clap::Args;
use std::net::IpAddr;
use std::time::Duration;

pub use crate::listener::ConnLimits;

/// `--database`.
#[derive(Args, Clone, Debug)]
pub struct DbArg {
    /// Database URL: sqlite://PATH (created if missing) or postgres://USER@HOST/DB.
    #[arg(
        long,
        env = "CLOUDVPP_DATABASE",
        default_value = "sqlite://cloudvpp.db"
    )]
    pub database: String,
}

/// `--tls-cert` and `--tls-key`: serve HTTPS (on every listener of the command).
#[derive(Args, Clone, Debug, Default)]
pub struct TlsArgs {
    /// PEM certificate chain: serve HTTPS.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<String>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<String>,
}

impl TlsArgs {
    /// The certificate and key files, when both are given.
    pub fn pair(&self) -> Option<(&str, &str)> {
        self.tls_cert.as_deref().zip(self.tls_key.as_deref())
    }
}

/// Settings of the Apps and Books service (`appsbooks serve` and `serve`).
#[derive(Args, Clone, Debug)]
pub struct AppsbooksOptions {
    /// Users per Get Users page.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(i64).range(1..=100_000))]
    pub page_size: i64,
    /// Milliseconds spent per user before applying it, to see PENDING events as at Apple.
    #[arg(long, default_value_t = 0)]
    pub processing_delay_ms: u64,
    /// Accept http:// notification URLs (local development and tests only; `cloudvpp
    /// serve` always does, for its own MDM on loopback).
    #[arg(long)]
    pub allow_http_notifications: bool,
    /// Accept notification URLs on loopback, private and link-local addresses (local
    /// development and tests only): by default they are refused, at configuration and at
    /// every send.
    #[arg(long)]
    pub allow_private_notification_urls: bool,
    /// Milliseconds between notification attempts, comma separated (attempts = count + 1).
    #[arg(long, default_value = "30000,120000", value_delimiter = ',')]
    pub notification_retry_ms: Vec<u64>,
    /// Milliseconds one notification attempt may take (at most 3/4 of --lease-ms).
    #[arg(long, default_value_t = 10_000)]
    pub notification_timeout_ms: u64,
    /// Most notifications one organisation may have waiting (its endpoint slow or down);
    /// beyond it the oldest are dropped, with a warning.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(i64).range(1..))]
    pub notification_backlog: i64,
    /// Fault setting: percentage of notifications dropped on purpose.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub drop_notifications_percent: u8,
    /// Fault setting: Apple Accounts (glob, `*` and `?`, any case; repeatable) that cannot be
    /// associated: a users/create or users/update giving one as managedAppleId fails that
    /// user with async 9635, and the invitation page refuses it with 9635.
    #[arg(long = "refuse-apple-accounts", value_name = "GLOB")]
    pub refuse_apple_accounts: Vec<String>,
    /// Milliseconds an event, a notification or (in `cloudvpp serve`, unless
    /// --engine-lease-ms) an engine location stays with this instance after it took or
    /// renewed it; another instance sharing the database (or this one, restarted) takes it
    /// over after a crash.
    #[arg(long, default_value_t = 30_000)]
    pub lease_ms: u64,
    /// Set a limit at start-up, NAME=VALUE (repeatable), e.g. maxRequestPerSecond=1000.
    #[arg(long = "limit", value_parser = parse_limit)]
    pub limits: Vec<(String, i64)>,
}

impl AppsbooksOptions {
    /// The service configuration these flags describe, advertising `public_url`.
    pub fn config(&self, public_url: &str) -> cloudvpp_appsbooks::Config {
        cloudvpp_appsbooks::Config {
            public_url: public_url.trim_end_matches('/').to_string(),
            page_size: self.page_size,
            processing_delay: Duration::from_millis(self.processing_delay_ms),
            allow_http_notifications: self.allow_http_notifications,
            allow_private_notification_urls: self.allow_private_notification_urls,
            notification_retry_delays: self
                .notification_retry_ms
                .iter()
                .map(|ms| Duration::from_millis(*ms))
                .collect(),
            drop_notifications_percent: self.drop_notifications_percent,
            refuse_apple_accounts: self.refuse_apple_accounts.clone(),
            notification_backlog: self.notification_backlog,
            notification_timeout: Duration::from_millis(self.notification_timeout_ms),
            lease: Duration::from_millis(self.lease_ms),
            ..cloudvpp_appsbooks::Config::default()
        }
    }
}

/// Settings of the MDM service and its invitation engine (`mdm serve` and `serve`).
#[derive(Args, Clone, Debug)]
pub struct MdmOptions {
    /// PEM file of the CA(s) that issue device identity certificates (`cloudvpp serve`
    /// makes a throwaway one for simulated devices when omitted).
    #[arg(long)]
    pub ca: Option<std::path::PathBuf>,
    /// Take the device certificate from this header (RFC 9440, or URL-escaped PEM) set by a
    /// TLS-terminating proxy, instead of Mdm-Signature.
    #[arg(long)]
    pub cert_header: Option<String>,
    /// Address or network (CIDR) of the proxy allowed to set --cert-header (repeatable).
    /// Without it (and without --proxy-secret) only loopback peers may, and the service
    /// refuses to start on a non-loopback address.
    #[arg(long = "trusted-proxy", requires = "cert_header", value_parser = parse_net)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Shared secret the proxy sends in the Cloudvpp-Proxy-Secret header, in addition to
    /// or instead of --trusted-proxy.
    #[arg(long, env = "CLOUDVPP_PROXY_SECRET", requires = "cert_header")]
    pub proxy_secret: Option<String>,
    /// Authenticate only device certificates that name the device (its UDID, serial
    /// number or EnrollmentID in the subject or subjectAltName), for CAs that attest devices.
    #[arg(long)]
    pub require_device_id_in_cert: bool,
    /// Milliseconds a location's engine work stays with this instance after it last
    /// renewed its lease; another instance on the same database takes it over after that
    /// (default 10000; `cloudvpp serve` uses its --lease-ms).
    #[arg(long)]
    pub engine_lease_ms: Option<u64>,
    /// APNs base URL, e.g. https://api.push.apple.com.
    #[arg(long, requires_all = ["push_cert", "push_key"])]
    pub apns_url: Option<String>,
    /// MDM push certificate, PEM.
    #[arg(long)]
    pub push_cert: Option<std::path::PathBuf>,
    /// Its private key, PEM.
    #[arg(long)]
    pub push_key: Option<std::path::PathBuf>,
    /// Extra CA to trust for APNs (a loopback fake in tests).
    #[arg(long)]
    pub apns_ca: Option<std::path::PathBuf>,
    /// Admin API key (Authorization: Bearer KEY); without it the admin API is off.
    #[arg(long, env = "CLOUDVPP_API_KEY")]
    pub api_key: Option<String>,
    /// Public base URL of this service (Apps and Books notifications are sent there);
    /// defaults to the listen address.
    #[arg(long)]
    pub public_url: Option<String>,
    /// Milliseconds between status polls of a PENDING Apps and Books event (Apple asks for 30 s).
    #[arg(long, default_value_t = 30_000)]
    pub status_poll_ms: u64,
    /// Milliseconds between incremental user syncs.
    #[arg(long, default_value_t = 60_000)]
    pub sync_interval_ms: u64,
    /// Longest wait, in milliseconds, between two rounds of the invitation engine when
    /// nothing wakes it (a new invitation, a notification, an invitation falling due do).
    #[arg(long, default_value_t = 200)]
    pub engine_tick_ms: u64,
    /// Milliseconds between looks at the licences free for assignments waiting for
    /// licences (9709), when no ASSET_COUNT notification says some were bought (at least 1000).
    #[arg(long, default_value_t = 300_000)]
    pub licence_recheck_ms: u64,
}

/// How background tasks (event worker, notification sender, engine, last-seen writer)
/// are supervised: a task that panics or ends is restarted with backoff (100 ms doubling
/// to 10 s); one that keeps dying is given up.
#[derive(Args, Clone, Debug)]
pub struct SuperviseArgs {
    /// A background task that dies this many times within --task-death-window-secs is
    /// given up: /readyz answers 503 and the process stops with exit code 70, for its
    /// supervisor (systemd, Kubernetes) to restart it.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub task_max_deaths: u32,
    /// The window, in seconds, in which --task-max-deaths deaths give a task up.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub task_death_window_secs: u64,
    /// Tests only: the named background task panics at every start (how the tests make a
    /// task die repeatedly; see server.rs).
    #[arg(long, env = "CLOUDVPP_TEST_PANIC_TASK", hide = true)]
    pub test_panic_task: Option<String>,
}

impl Default for SuperviseArgs {
    fn default() -> Self {
        SuperviseArgs {
            task_max_deaths: 5,
            task_death_window_secs: 60,
            test_panic_task: None,
        }
    }
}

impl SuperviseArgs {
    /// The restart policy.
    pub fn policy(&self) -> cloudvpp_supervise::Policy {
        cloudvpp_supervise::Policy {
            max_deaths: self.task_max_deaths,
            window: Duration::from_secs(self.task_death_window_secs),
            ..cloudvpp_supervise::Policy::default()
        }
    }
}

/// `NAME=VALUE` of `--limit` and `limits set`.
pub fn parse_limit(s: &str) -> Result<(String, i64), String> {
    let (k, v) = s.split_once('=').ok_or("expected NAME=VALUE")?;
    let v: i64 = v
        .trim()
        .parse()
        .map_err(|_| format!("{v} is not a whole number"))?;
    if v < 0 {
        return Err("limits are not negative".into());
    }
    // Only Apple's names: a typo would otherwise be stored and change nothing.
    let limit: cloudvpp_abwire::limits::Limit = k.trim().parse()?;
    Ok((limit.name().to_string(), v))
}

/// An address (`10.0.0.5`) or a network (`10.0.0.0/24`).
pub fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is neither an IP address nor a CIDR network"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_apples_names_only() {
        assert_eq!(parse_limit("maxUsers=50"), Ok(("maxUsers".into(), 50)));
        let typo = parse_limit("maxUser=50").unwrap_err();
        assert!(
            typo.contains("unknown limit") && typo.contains("maxUsers"),
            "{typo}"
        );
        assert!(parse_limit("maxUsers=-1").is_err());
    }
}
