//! `cloudvpp`: the Apps and Books service and (later) the MDM, in one binary.

mod engine_cmd;
mod listener;
mod mdm_cmd;
mod simulate_cmd;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use cloudvpp_appsbooks::{ids, AppState, Config};
use cloudvpp_store::AppsBooksStore;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "cloudvpp",
    version,
    about = "Apple Apps and Books service and MDM, in one binary"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The Apps and Books service (Apple's App and Book Management API v2).
    Appsbooks {
        #[command(subcommand)]
        command: AppsbooksCommand,
    },
    /// The MDM service and its admin API client.
    Mdm {
        #[command(subcommand)]
        command: mdm_cmd::MdmCommand,
    },
    /// Both services in one process on one database, wired to each other.
    Serve(engine_cmd::ServeBothArgs),
    /// Invite people: register them with Apps and Books and send InviteToProgram.
    Invite(engine_cmd::InviteArgs),
    /// List invitations and where each person stands.
    Invitations(engine_cmd::InvitationsArgs),
    /// Simulated Apple devices: PKI, enrollment, polling, load bodies.
    Simulate {
        #[command(subcommand)]
        command: simulate_cmd::SimulateCommand,
    },
}

#[derive(Args, Clone)]
pub(crate) struct DbArg {
    /// Database URL: sqlite://PATH (created if missing) or postgres://USER@HOST/DB.
    #[arg(
        long,
        env = "CLOUDVPP_DATABASE",
        default_value = "sqlite://cloudvpp.db"
    )]
    pub(crate) database: String,
}

#[derive(Subcommand)]
enum AppsbooksCommand {
    /// Serve /mdm/v2 and the invitation page.
    Serve(ServeArgs),
    /// Organisations and their sTokens.
    Org {
        #[command(subcommand)]
        command: OrgCommand,
    },
    /// Service limits advertised in service config and enforced (maxUsers, maxRequestPerSecond, ...).
    Limits {
        #[command(subcommand)]
        command: LimitsCommand,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on; port 0 picks a free one (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    #[command(flatten)]
    db: DbArg,
    /// Base URL advertised in service config and invitation links; defaults to the listen address.
    #[arg(long)]
    public_url: Option<String>,
    /// PEM certificate chain: serve HTTPS.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<String>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<String>,
    /// Users per Get Users page.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(i64).range(1..=100_000))]
    page_size: i64,
    /// Milliseconds spent per user before applying it, to see PENDING events as at Apple.
    #[arg(long, default_value_t = 0)]
    processing_delay_ms: u64,
    /// Accept http:// notification URLs (local development and tests only).
    #[arg(long)]
    allow_http_notifications: bool,
    /// Accept notification URLs on loopback, private and link-local addresses (local
    /// development and tests only): by default they are refused, at configuration and at
    /// every send.
    #[arg(long)]
    allow_private_notification_urls: bool,
    /// Milliseconds between notification attempts, comma separated (attempts = count + 1).
    #[arg(long, default_value = "30000,120000", value_delimiter = ',')]
    notification_retry_ms: Vec<u64>,
    /// Milliseconds one notification attempt may take (at most 3/4 of --lease-ms).
    #[arg(long, default_value_t = 10_000)]
    notification_timeout_ms: u64,
    /// Most notifications one organisation may have waiting (its endpoint slow or down);
    /// beyond it the oldest are dropped, with a warning.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(i64).range(1..))]
    notification_backlog: i64,
    /// Fault setting: percentage of notifications dropped on purpose.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    drop_notifications_percent: u8,
    /// Milliseconds an event or notification stays with this instance after it took it;
    /// another instance sharing the database takes it over after a crash.
    #[arg(long, default_value_t = 30_000)]
    lease_ms: u64,
    /// Set a limit at start-up, NAME=VALUE (repeatable), e.g. maxRequestPerSecond=1000.
    #[arg(long = "limit", value_parser = parse_limit)]
    limits: Vec<(String, i64)>,
    #[command(flatten)]
    conn: listener::ConnLimits,
}

#[derive(Subcommand)]
enum OrgCommand {
    /// Create an organisation; prints its sToken alone on stdout.
    Create {
        #[command(flatten)]
        db: DbArg,
        /// Organisation (location) name.
        #[arg(long)]
        name: String,
        /// Token expiry, RFC 3339; default one year from now.
        #[arg(long)]
        expires: Option<String>,
    },
    /// List organisations.
    List {
        #[command(flatten)]
        db: DbArg,
    },
    /// Issue a new sToken; the old one then answers 9625. Prints the new token.
    Renew {
        #[command(flatten)]
        db: DbArg,
        /// The organisation's uId or name.
        #[arg(long)]
        org: String,
        /// Token expiry, RFC 3339; default one year from now.
        #[arg(long)]
        expires: Option<String>,
    },
}

#[derive(Subcommand)]
enum LimitsCommand {
    /// Show every limit.
    Show {
        #[command(flatten)]
        db: DbArg,
    },
    /// Set limits, NAME=VALUE ...; running services pick them up within a second.
    Set {
        #[command(flatten)]
        db: DbArg,
        /// NAME=VALUE pairs.
        #[arg(required = true, value_parser = parse_limit)]
        limits: Vec<(String, i64)>,
    },
}

pub(crate) fn parse_limit(s: &str) -> Result<(String, i64), String> {
    let (k, v) = s.split_once('=').ok_or("expected NAME=VALUE")?;
    let v: i64 = v
        .trim()
        .parse()
        .map_err(|_| format!("{v} is not a whole number"))?;
    if v < 0 {
        return Err("limits are not negative".into());
    }
    Ok((k.trim().to_string(), v))
}

async fn open_store(url: &str) -> Result<Arc<dyn AppsBooksStore>> {
    Ok(open_db(url).await?)
}

/// Opens the database named by `--database`: the one place a backend is chosen.
pub(crate) async fn open_db(url: &str) -> Result<Arc<dyn cloudvpp_store::Store>> {
    if url.starts_with("sqlite:") {
        let store = cloudvpp_store_sqlite::connect(url)
            .await
            .context("opening the SQLite database")?;
        Ok(Arc::new(store))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        let store = cloudvpp_store_postgres::connect(url)
            .await
            .context("opening the PostgreSQL database")?;
        Ok(Arc::new(store))
    } else {
        bail!("--database must start with sqlite:// or postgres:// (got {url:?})")
    }
}

fn expiry(expires: Option<&str>) -> Result<i64> {
    match expires {
        None => Ok(chrono::Utc::now().timestamp() + 365 * 24 * 3600),
        Some(s) => Ok(chrono::DateTime::parse_from_rfc3339(s)
            .with_context(|| format!("--expires {s:?} is not RFC 3339"))?
            .timestamp()),
    }
}

#[tokio::main]
async fn main() {
    // One crypto provider for the whole process (ring), chosen explicitly so rustls
    // never has to guess between providers pulled in by dependencies.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CLOUDVPP_LOG")
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: logs sent to files and collectors stay plain.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = run(Cli::parse()).await {
        eprintln!("cloudvpp: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Appsbooks { command } => match command {
            AppsbooksCommand::Serve(args) => serve(args).await,
            AppsbooksCommand::Org { command } => org(command).await,
            AppsbooksCommand::Limits { command } => limits(command).await,
        },
        Command::Mdm { command } => mdm_cmd::run(command).await,
        Command::Simulate { command } => simulate_cmd::run(command).await,
        Command::Serve(a) => engine_cmd::serve_both(a).await,
        Command::Invite(a) => engine_cmd::invite(a).await,
        Command::Invitations(a) => engine_cmd::invitations(a).await,
    }
}

async fn org(command: OrgCommand) -> Result<()> {
    match command {
        OrgCommand::Create { db, name, expires } => {
            let store = open_store(&db.database).await?;
            let exp = expiry(expires.as_deref())?;
            let stoken = ids::new_stoken(&name, exp);
            store
                .create_org(&ids::new_uid(), &name, &ids::new_secret(), &stoken, exp)
                .await?;
            println!("{stoken}");
        }
        OrgCommand::List { db } => {
            let store = open_store(&db.database).await?;
            println!("{:<18} {:<26} {:>10} NAME", "UID", "TOKEN EXPIRES", "USERS");
            for o in store.list_orgs().await? {
                let exp = store
                    .current_token_expiry(o.id)
                    .await?
                    .map(ids::apple_date)
                    .unwrap_or_default();
                println!("{:<18} {:<26} {:>10} {}", o.uid, exp, o.user_count, o.name);
            }
        }
        OrgCommand::Renew { db, org, expires } => {
            let store = open_store(&db.database).await?;
            let o = store
                .find_org(&org)
                .await?
                .with_context(|| format!("no organisation {org:?}"))?;
            let exp = expiry(expires.as_deref())?;
            let stoken = ids::new_stoken(&o.name, exp);
            store.renew_token(o.id, &stoken, exp).await?;
            println!("{stoken}");
        }
    }
    Ok(())
}

async fn limits(command: LimitsCommand) -> Result<()> {
    match command {
        LimitsCommand::Show { db } => {
            let store = open_store(&db.database).await?;
            let limits = cloudvpp_appsbooks::limits::Limits::new(store);
            for (k, v) in limits.all().await {
                println!("{k}={v}");
            }
        }
        LimitsCommand::Set { db, limits } => {
            let store = open_store(&db.database).await?;
            for (k, v) in limits {
                store.set_limit(&k, v).await?;
            }
        }
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> Result<()> {
    let store = open_store(&args.db.database).await?;
    for (k, v) in &args.limits {
        store.set_limit(k, *v).await?;
    }
    let (listener, base) = bind(args.listen, args.tls_cert.is_some())?;
    let public_url = args.public_url.clone().unwrap_or_else(|| base.clone());
    let config = Config {
        public_url: public_url.trim_end_matches('/').to_string(),
        page_size: args.page_size,
        processing_delay: Duration::from_millis(args.processing_delay_ms),
        allow_http_notifications: args.allow_http_notifications,
        allow_private_notification_urls: args.allow_private_notification_urls,
        notification_retry_delays: args
            .notification_retry_ms
            .iter()
            .map(|ms| Duration::from_millis(*ms))
            .collect(),
        drop_notifications_percent: args.drop_notifications_percent,
        notification_backlog: args.notification_backlog,
        notification_timeout: Duration::from_millis(args.notification_timeout_ms),
        lease: Duration::from_millis(args.lease_ms),
        ..Config::default()
    };
    let state = AppState::new(store, config);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let workers = cloudvpp_appsbooks::spawn_workers(state.clone(), stop_rx);
    let app = cloudvpp_appsbooks::router(state);
    // Scripts and tests read the bound address from this line.
    println!("appsbooks listening on {base}");
    tracing::info!(%base, %public_url, "appsbooks service started");
    serve_app(
        listener,
        args.tls_cert.as_deref().zip(args.tls_key.as_deref()),
        app,
        &args.conn,
    )
    .await?;
    let _ = stop_tx.send(true);
    for w in workers {
        let _ = w.await;
    }
    Ok(())
}

/// Binds `addr` for axum-server; returns the listener and its base URL (`http(s)://ip:port`).
pub(crate) fn bind(addr: SocketAddr, tls: bool) -> Result<(std::net::TcpListener, String)> {
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    listener.set_nonblocking(true)?;
    let scheme = if tls { "https" } else { "http" };
    let base = format!("{scheme}://{}", listener.local_addr()?);
    Ok((listener, base))
}

/// Serves `app` on `listener` (HTTPS with rustls when a certificate and key are given)
/// until SIGINT/SIGTERM, then drains for up to 5 s. Every connection is held to `limits`
/// (see [`listener`]); handlers can read the peer address (`ConnectInfo<SocketAddr>`).
pub(crate) async fn serve_app(
    listener: std::net::TcpListener,
    tls: Option<(&str, &str)>,
    app: axum::Router,
    limits: &listener::ConnLimits,
) -> Result<()> {
    let handle = axum_server::Handle::new();
    let h = handle.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        h.graceful_shutdown(Some(Duration::from_secs(5)));
    });
    let deadline = limits.body_deadline();
    let app = app
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            limits.body_timeout(),
        ))
        .layer(axum::middleware::map_request(
            move |req: axum::extract::Request| async move {
                req.map(|b| axum::body::Body::new(listener::DeadlineBody::new(b, deadline)))
            },
        ))
        .into_make_service_with_connect_info::<SocketAddr>();
    fn tune<A>(server: &mut axum_server::Server<A>, limits: &listener::ConnLimits) {
        let builder = server.http_builder();
        builder
            .http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(limits.header_timeout());
        // An HTTP/2 peer that stops answering pings is closed; a live idle one holds one
        // of the capped connection slots.
        builder
            .http2()
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(limits.header_timeout())
            // One connection must not stand for hundreds of concurrent requests.
            .max_concurrent_streams(32);
    }
    match tls {
        Some((cert, key)) => {
            let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .context("loading --tls-cert/--tls-key")?;
            let acceptor =
                listener::Limited::new(axum_server::tls_rustls::RustlsAcceptor::new(tls), limits);
            let mut server = axum_server::from_tcp(listener).acceptor(acceptor);
            tune(&mut server, limits);
            server.handle(handle).serve(app).await?;
        }
        None => {
            let acceptor =
                listener::Limited::new(axum_server::accept::DefaultAcceptor::new(), limits);
            let mut server = axum_server::from_tcp(listener).acceptor(acceptor);
            tune(&mut server, limits);
            server.handle(handle).serve(app).await?;
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
