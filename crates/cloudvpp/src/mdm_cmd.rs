//! `cloudvpp mdm ...`: the MDM service and a client of its admin API.

use crate::{open_db, serve_app, DbArg};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use cloudvpp_identity::CaPool;
use cloudvpp_mdm::{Config, MdmState};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Subcommand)]
pub enum MdmCommand {
    /// Serve PUT /checkin, PUT /mdm and the admin API.
    Serve(Box<ServeArgs>),
    /// Queue a raw command plist for enrollments (and push).
    Enqueue {
        #[command(flatten)]
        api: ApiArgs,
        /// The command plist file.
        #[arg(long)]
        plist: std::path::PathBuf,
        /// Do not push.
        #[arg(long)]
        no_push: bool,
        /// Enrollment IDs.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Queue InviteToProgram with an invitation URL (and push).
    Invite {
        #[command(flatten)]
        api: ApiArgs,
        /// The Apps and Books invitation URL.
        #[arg(long)]
        url: String,
        /// Do not push.
        #[arg(long)]
        no_push: bool,
        /// Enrollment IDs (device channel on iOS, user channel on macOS and Shared iPad).
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Push enrollments.
    Push {
        #[command(flatten)]
        api: ApiArgs,
        /// Enrollment IDs.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Show an enrollment's commands and results.
    Commands {
        #[command(flatten)]
        api: ApiArgs,
        /// Only commands still to deliver.
        #[arg(long)]
        pending: bool,
        /// Enrollment ID.
        id: String,
    },
    /// List enrollments.
    Enrollments {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Apps and Books locations (sTokens) the engine invites people in.
    Location {
        #[command(subcommand)]
        command: LocationCommand,
    },
}

#[derive(Subcommand)]
pub enum LocationCommand {
    /// Add a location from its sToken file; the engine claims it, subscribes to its
    /// notifications and imports its users. The token is never printed or logged.
    Add {
        #[command(flatten)]
        api: ApiArgs,
        /// The .vpptoken file.
        #[arg(long)]
        stoken_file: std::path::PathBuf,
        /// Apps and Books service base URL (default: Apple's).
        #[arg(long)]
        appsbooks_url: Option<String>,
    },
    /// List locations.
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free one (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    #[command(flatten)]
    db: DbArg,
    #[command(flatten)]
    pub opts: MdmOptions,
    /// PEM certificate chain: serve HTTPS.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<String>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<String>,
    #[command(flatten)]
    conn: crate::listener::ConnLimits,
}

/// Settings of the MDM service and its invitation engine.
#[derive(Args, Clone)]
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
}

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

pub fn print(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub async fn run(cmd: MdmCommand) -> Result<()> {
    match cmd {
        MdmCommand::Serve(args) => serve(*args).await,
        MdmCommand::Enqueue {
            api,
            plist,
            no_push,
            ids,
        } => {
            let body =
                std::fs::read(&plist).with_context(|| format!("reading {}", plist.display()))?;
            let q = if no_push { "?nopush=1" } else { "" };
            print(
                &call(
                    &api,
                    reqwest::Method::PUT,
                    &format!("/api/v1/enqueue/{}{q}", ids.join(",")),
                    Some((body, "application/x-apple-plist")),
                )
                .await?,
            );
            Ok(())
        }
        MdmCommand::Invite {
            api,
            url,
            no_push,
            ids,
        } => {
            let body = json!({ "enrollment_ids": ids, "invitation_url": url, "push": !no_push });
            print(
                &call(
                    &api,
                    reqwest::Method::POST,
                    "/api/v1/invite-to-program",
                    Some((body.to_string().into_bytes(), "application/json")),
                )
                .await?,
            );
            Ok(())
        }
        MdmCommand::Push { api, ids } => {
            print(
                &call(
                    &api,
                    reqwest::Method::POST,
                    &format!("/api/v1/push/{}", ids.join(",")),
                    None,
                )
                .await?,
            );
            Ok(())
        }
        MdmCommand::Commands { api, pending, id } => {
            let q = if pending { "?pending=1" } else { "" };
            print(
                &call(
                    &api,
                    reqwest::Method::GET,
                    &format!("/api/v1/enrollments/{id}/commands{q}"),
                    None,
                )
                .await?,
            );
            Ok(())
        }
        MdmCommand::Location {
            command:
                LocationCommand::Add {
                    api,
                    stoken_file,
                    appsbooks_url,
                },
        } => {
            let stoken = std::fs::read_to_string(&stoken_file)
                .with_context(|| format!("reading {}", stoken_file.display()))?;
            let body = json!({ "stoken": stoken.trim(), "base_url": appsbooks_url });
            let v = call(
                &api,
                reqwest::Method::POST,
                "/api/v1/locations",
                Some((body.to_string().into_bytes(), "application/json")),
            )
            .await?;
            if v["expiry_warning"] == true {
                eprintln!(
                    "warning: this sToken expires within 15 days (expires_at {}): renew it",
                    v["expires_at"]
                );
            }
            print(&v);
            Ok(())
        }
        MdmCommand::Location {
            command: LocationCommand::List { api },
        } => {
            print(&call(&api, reqwest::Method::GET, "/api/v1/locations", None).await?);
            Ok(())
        }
        MdmCommand::Enrollments { api } => {
            print(&call(&api, reqwest::Method::GET, "/api/v1/enrollments", None).await?);
            Ok(())
        }
    }
}

/// An address (`10.0.0.5`) or a network (`10.0.0.0/24`).
fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is neither an IP address nor a CIDR network"))
}

/// Who may set --cert-header. A header anyone can set would let anyone name any
/// device's certificate, so without a named proxy only loopback peers are trusted, and
/// only while the service itself listens on loopback.
pub fn proxy_trust(
    opts: &MdmOptions,
    listen: SocketAddr,
) -> Result<Option<cloudvpp_mdm::ProxyTrust>> {
    let Some(header) = &opts.cert_header else {
        return Ok(None);
    };
    let mut addresses = opts.trusted_proxies.clone();
    if addresses.is_empty() && opts.proxy_secret.is_none() {
        if !listen.ip().is_loopback() {
            bail!(
                "--cert-header on {listen}: name the proxy allowed to set it with --trusted-proxy \
                 or --proxy-secret, or anyone who reaches this port can act as any device"
            );
        }
        tracing::warn!(
            header = header.as_str(),
            "--cert-header without --trusted-proxy or --proxy-secret: trusting loopback peers only"
        );
        addresses = vec!["127.0.0.0/8".parse()?, "::1/128".parse()?];
    }
    Ok(Some(cloudvpp_mdm::ProxyTrust {
        header: header.clone(),
        addresses,
        secret: opts.proxy_secret.clone(),
    }))
}

/// Builds the MDM service with its engine on `store`: the router and the background tasks.
pub async fn build(
    store: Arc<dyn cloudvpp_store::Store>,
    opts: &MdmOptions,
    proxy: Option<cloudvpp_mdm::ProxyTrust>,
    default_public_url: String,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(axum::Router, Vec<tokio::task::JoinHandle<()>>)> {
    let ca_path = opts
        .ca
        .as_ref()
        .context("--ca is required: the CA that issues device identity certificates")?;
    let ca_pem =
        std::fs::read(ca_path).with_context(|| format!("reading --ca {}", ca_path.display()))?;
    let ca = CaPool::from_pem(&ca_pem).context("--ca")?;
    let pusher = match (&opts.apns_url, &opts.push_cert, &opts.push_key) {
        (Some(url), Some(cert), Some(key)) => {
            let mut identity =
                std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
            identity.push(b'\n');
            identity
                .extend(std::fs::read(key).with_context(|| format!("reading {}", key.display()))?);
            let extra = match &opts.apns_ca {
                Some(p) => {
                    Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?)
                }
                None => None,
            };
            Some(
                cloudvpp_mdm::push::Pusher::new(url, &identity, extra.as_deref())
                    .map_err(anyhow::Error::msg)?,
            )
        }
        _ => None,
    };
    let state = MdmState::new(
        store.clone(),
        Config {
            ca,
            cert_header: proxy,
            require_device_id_in_cert: opts.require_device_id_in_cert,
            api_key: opts.api_key.clone(),
            pusher,
        },
    );
    let engine = cloudvpp_engine::Engine::new(
        store,
        state.clone(),
        cloudvpp_engine::EngineConfig {
            public_url: opts.public_url.clone().unwrap_or(default_public_url),
            status_poll: Duration::from_millis(opts.status_poll_ms),
            sync_interval: Duration::from_millis(opts.sync_interval_ms),
            lease: Duration::from_millis(opts.engine_lease_ms.unwrap_or(10_000).max(100)),
            ..Default::default()
        },
    );
    let tasks = vec![
        tokio::spawn(cloudvpp_mdm::run_seen_flusher(state.clone(), stop.clone())),
        tokio::spawn(cloudvpp_engine::run(engine.clone(), stop)),
    ];
    let router = cloudvpp_mdm::router(state).merge(cloudvpp_engine::api::router(engine));
    Ok((router, tasks))
}

async fn serve(args: ServeArgs) -> Result<()> {
    let proxy = proxy_trust(&args.opts, args.listen)?;
    let store = open_db(&args.db.database).await?;
    let (listener, base) = crate::bind(args.listen, args.tls_cert.is_some())?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (router, tasks) = build(store, &args.opts, proxy, base.clone(), stop_rx).await?;
    println!("mdm listening on {base}");
    tracing::info!(%base, admin_api = args.opts.api_key.is_some(), push = args.opts.apns_url.is_some(), "mdm service started");
    serve_app(
        listener,
        args.tls_cert.as_deref().zip(args.tls_key.as_deref()),
        router,
        &args.conn,
    )
    .await?;
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}
