//! Server assembly, used by `appsbooks serve`, `mdm serve` and `serve` alike, and by
//! tests in-process ([`serve_with_listener`]): the database, the services' routers, their
//! supervised background tasks, `/readyz`, and every listener's HTTP plumbing
//! ([`serve_app`]).
//!
//! Background tasks run under [`cloudvpp_supervise`]: a task that panics or ends before
//! shutdown is restarted with backoff; one that keeps dying is given up, which turns
//! `/readyz` to 503, stops the HTTP servers gracefully and ends [`Running::serve`] with
//! [`Fatal`] (the binary exits with [`Fatal::EXIT_CODE`]).

use crate::flags::{AppsbooksOptions, ConnLimits, MdmOptions, SuperviseArgs, TlsArgs};
use crate::listener;
use anyhow::{bail, Context, Result};
use cloudvpp_identity::CaPool;
use cloudvpp_supervise::{supervise, Health};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Opens the database named by `--database`: the one place a backend is chosen.
pub async fn open_db(url: &str) -> Result<Arc<dyn cloudvpp_store::Store>> {
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

/// Opens a database that must already exist: commands that only read (or change what is
/// there) do not create an empty SQLite file at a mistyped path.
pub async fn open_existing_db(url: &str) -> Result<Arc<dyn cloudvpp_store::Store>> {
    if let Some(path) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .map(|rest| rest.split('?').next().unwrap_or(rest))
        .filter(|p| !p.is_empty() && *p != ":memory:")
    {
        if !std::path::Path::new(path).exists() {
            bail!(
                "no database at {path}: check --database (CLOUDVPP_DATABASE); `serve` and `org create` create one"
            );
        }
    }
    open_db(url).await
}

/// A bound listener and its base URL (`http(s)://ip:port`).
#[derive(Debug)]
pub struct Bound {
    /// The listener (non-blocking).
    pub listener: std::net::TcpListener,
    /// Its base URL.
    pub base: String,
}

impl Bound {
    /// Binds `addr`; `tls` picks the scheme of the base URL.
    pub fn bind(addr: SocketAddr, tls: bool) -> Result<Bound> {
        let listener =
            std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
        Bound::from_std(listener, tls)
    }

    /// Takes a listener bound elsewhere (a test's).
    pub fn from_std(listener: std::net::TcpListener, tls: bool) -> Result<Bound> {
        listener.set_nonblocking(true)?;
        let scheme = if tls { "https" } else { "http" };
        let base = format!("{scheme}://{}", listener.local_addr()?);
        Ok(Bound { listener, base })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }
}

/// The Apps and Books service's part of a server.
#[derive(Clone, Debug)]
pub struct AppsbooksConfig {
    /// Base URL advertised in service config and invitation links; defaults to the
    /// listener's.
    pub public_url: Option<String>,
    /// Its settings.
    pub opts: AppsbooksOptions,
}

/// What a server runs: one or both services on one database. With both (`cloudvpp
/// serve`) they are wired to each other: the Apps and Books service may notify the MDM's
/// own notification endpoint on loopback, over plain HTTP.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Database URL.
    pub database: String,
    /// The Apps and Books service, if it runs.
    pub appsbooks: Option<AppsbooksConfig>,
    /// The MDM service and its engine, if they run.
    pub mdm: Option<MdmOptions>,
    /// HTTPS for every listener.
    pub tls: TlsArgs,
    /// Every listener's connection limits.
    pub conn: ConnLimits,
    /// Supervision of the background tasks.
    pub supervise: SuperviseArgs,
    /// The time the services reckon by (the system's; tests may hold or move it).
    pub clock: Arc<dyn cloudvpp_store::clock::Clock>,
}

/// The listeners of a server, one per service it runs.
#[derive(Debug, Default)]
pub struct Listeners {
    /// The Apps and Books service's.
    pub appsbooks: Option<Bound>,
    /// The MDM service's.
    pub mdm: Option<Bound>,
}

/// A background task was given up: the process must stop with [`Fatal::EXIT_CODE`].
#[derive(Debug)]
pub struct Fatal {
    /// The task's name.
    pub task: String,
}

impl Fatal {
    /// EX_SOFTWARE: an internal error an orchestrator should answer with a restart.
    pub const EXIT_CODE: i32 = 70;
}

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "background task {} kept dying and was given up; stopped (exit code {})",
            self.task,
            Self::EXIT_CODE
        )
    }
}

impl std::error::Error for Fatal {}

/// A server whose store is open and whose background tasks run; [`Running::serve`]
/// serves its listeners.
pub struct Running {
    apps: Vec<(Bound, axum::Router)>,
    services: Vec<&'static str>,
    tasks: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    health: Health,
    tls: TlsArgs,
    conn: ConnLimits,
}

/// Opens the database, builds the services of `config` on `listeners` and starts their
/// supervised background tasks.
pub async fn start(config: ServerConfig, listeners: Listeners) -> Result<Running> {
    let mut mdm_opts = config.mdm.clone();
    let wired = config.appsbooks.is_some() && mdm_opts.is_some();
    let mdm_parts = match (&mut mdm_opts, listeners.mdm) {
        (Some(opts), Some(bound)) => {
            if wired && opts.engine_lease_ms.is_none() {
                let lease = config
                    .appsbooks
                    .as_ref()
                    .map_or(30_000, |a| a.opts.lease_ms);
                opts.engine_lease_ms = Some(lease.min(10_000));
            }
            let proxy = proxy_trust(opts, bound.addr())?;
            Some((opts.clone(), proxy, bound))
        }
        (None, None) => None,
        _ => bail!("the MDM service needs both its settings and a listener"),
    };
    let ab_parts = match (config.appsbooks, listeners.appsbooks) {
        (Some(ab), Some(bound)) => Some((ab, bound)),
        (None, None) => None,
        _ => bail!("the Apps and Books service needs both its settings and a listener"),
    };
    let store = open_db(&config.database).await?;
    let health = Health::new();
    let (stop, stop_rx) = watch::channel(false);
    let supervisor = Supervisor {
        args: config.supervise,
        health: health.clone(),
        stop: stop_rx,
    };
    let mut apps = Vec::new();
    let mut tasks = Vec::new();
    let gauges = crate::telemetry::Gauges {
        store: store.clone(),
        clock: config.clock.clone(),
        appsbooks: ab_parts.is_some(),
        mdm: mdm_parts.is_some(),
    };
    if let Some((ab, bound)) = ab_parts {
        for (k, v) in &ab.opts.limits {
            cloudvpp_store::AppsBooksStore::set_limit(&*store, k, *v).await?;
        }
        let public_url = ab.public_url.clone().unwrap_or_else(|| bound.base.clone());
        let mut cfg = ab.opts.config(&public_url);
        cfg.clock = config.clock.clone();
        if let Some((mdm, _, mdm_bound)) = &mdm_parts {
            // Notifications may reach this process's own MDM notification endpoint,
            // however private its address, and no other private address (not its admin
            // API either); both services run on loopback, over plain HTTP.
            let mdm_public = mdm.public_url.as_deref().unwrap_or(&mdm_bound.base);
            let own_endpoint = format!(
                "{}/notifications/appsbooks/",
                mdm_public.trim_end_matches('/')
            );
            let exempt = cloudvpp_appsbooks::notify::Exempt::new(&own_endpoint)
                .with_context(|| format!("the MDM's public URL {mdm_public:?}"))?;
            cfg.notification_exempt = vec![exempt];
            cfg.allow_http_notifications = true;
        }
        let state = cloudvpp_appsbooks::AppState::new(store.clone(), cfg);
        for (name, worker) in cloudvpp_appsbooks::workers(state.clone(), supervisor.stop.clone()) {
            tasks.push(supervisor.spawn(name, worker));
        }
        tracing::info!(base = %bound.base, %public_url, "appsbooks service started");
        let router = cloudvpp_appsbooks::router(state).merge(readiness(store.clone(), &health));
        apps.push((bound, observed(router, "appsbooks", &gauges)));
    }
    if let Some((opts, proxy, bound)) = mdm_parts {
        let (router, mdm_tasks) = build_mdm(
            store.clone(),
            &opts,
            proxy,
            bound.base.clone(),
            &supervisor,
            &config.clock,
        )
        .await?;
        tasks.extend(mdm_tasks);
        tracing::info!(base = %bound.base, admin_api = opts.api_key.is_some(), push = opts.apns_url.is_some(), "mdm service started");
        let router = router.merge(readiness(store, &health));
        apps.push((bound, observed(router, "mdm", &gauges)));
    }
    let services = apps
        .iter()
        .map(|(_, r): &(Bound, Observed)| r.service)
        .collect();
    let apps = apps.into_iter().map(|(b, r)| (b, r.router)).collect();
    Ok(Running {
        apps,
        services,
        tasks,
        stop,
        health,
        tls: config.tls,
        conn: config.conn,
    })
}

/// A service's router with `/metrics` and the HTTP metrics layer.
struct Observed {
    service: &'static str,
    router: axum::Router,
}

/// Adds `GET /metrics` to `router` and counts every request to its routes (the layer goes
/// last, so that it sees every route, with its matched path).
fn observed(
    router: axum::Router,
    service: &'static str,
    gauges: &crate::telemetry::Gauges,
) -> Observed {
    let router = router
        .merge(crate::telemetry::router(gauges.clone()))
        .route_layer(axum::middleware::from_fn_with_state(
            service,
            crate::telemetry::track_http,
        ));
    Observed { service, router }
}

/// [`start`], then [`Running::serve`] until `shutdown` resolves: a server in-process.
pub async fn serve_with_listener(
    config: ServerConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    start(config, listeners).await?.serve(shutdown).await
}

impl Running {
    /// The health of the background tasks (what `/readyz` reports, with the database).
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// The base URLs of the listeners, in the order Apps and Books, MDM.
    pub fn bases(&self) -> Vec<String> {
        self.apps.iter().map(|(b, _)| b.base.clone()).collect()
    }

    /// Serves every listener until `shutdown` resolves or a background task is given
    /// up; then drains the connections (up to 5 s) and stops the background tasks. A
    /// given-up task ends this with [`Fatal`].
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let handles: Vec<axum_server::Handle> = self
            .apps
            .iter()
            .map(|_| axum_server::Handle::new())
            .collect();
        let (hs, health) = (handles.clone(), self.health.clone());
        let stopper = tokio::spawn(async move {
            let given_up = tokio::select! {
                _ = shutdown => None,
                task = health.fatal() => Some(task),
            };
            let began = Instant::now();
            if let Some(task) = &given_up {
                tracing::error!(
                    task = task.as_str(),
                    "a background task was given up: /readyz answers 503; stopping the HTTP \
                     servers, then exiting with code {}",
                    Fatal::EXIT_CODE
                );
            }
            for h in hs {
                h.graceful_shutdown(Some(Duration::from_secs(5)));
            }
            (given_up, began)
        });
        let served = futures::future::try_join_all(self.apps.into_iter().zip(handles).map(
            |((bound, app), handle)| {
                serve_app(bound.listener, self.tls.pair(), app, &self.conn, handle)
            },
        ))
        .await;
        let (given_up, began) = if stopper.is_finished() {
            stopper.await.unwrap_or((None, Instant::now()))
        } else {
            stopper.abort();
            (None, Instant::now())
        };
        let _ = self.stop.send(true);
        let tasks: Vec<String> = self.health.tasks().into_iter().map(|(n, _)| n).collect();
        for t in self.tasks {
            let _ = t.await;
        }
        tracing::info!(
            services = self.services.join(","),
            tasks = tasks.join(","),
            elapsed_ms = began.elapsed().as_millis() as u64,
            reason = match &given_up {
                Some(_) => "background task given up",
                None if served.is_err() => "server error",
                None => "shutdown requested",
            },
            "stopped"
        );
        served?;
        match given_up.or_else(|| self.health.given_up()) {
            Some(task) => Err(Fatal { task }.into()),
            None => Ok(()),
        }
    }
}

/// Starts supervised tasks that share one policy, one [`Health`] and one stop signal.
struct Supervisor {
    args: SuperviseArgs,
    health: Health,
    stop: watch::Receiver<bool>,
}

impl Supervisor {
    fn spawn<F, Fut>(&self, name: &'static str, mut factory: F) -> JoinHandle<()>
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        // Every worker survives database errors by design (it logs and retries), so no
        // real fault makes one die over and over; tests that need a task to keep dying
        // name it in the hidden --test-panic-task (CLOUDVPP_TEST_PANIC_TASK), and it
        // then panics at every start.
        let doomed = self.args.test_panic_task.as_deref() == Some(name);
        supervise(
            name,
            self.args.policy(),
            &self.health,
            self.stop.clone(),
            move || {
                let run = factory();
                async move {
                    if doomed {
                        panic!("--test-panic-task {name}");
                    }
                    run.await
                }
            },
        )
    }
}

/// `GET /readyz`: 200 while the database answers (within 2 s) and every supervised task
/// runs; 503 otherwise (`/healthz` only says the process answers HTTP).
fn readiness(store: Arc<dyn cloudvpp_store::Store>, health: &Health) -> axum::Router {
    use axum::http::StatusCode;
    let health = health.clone();
    axum::Router::new().route(
        "/readyz",
        axum::routing::get(move || {
            let (store, health) = (store.clone(), health.clone());
            async move {
                let down: Vec<String> = health
                    .tasks()
                    .into_iter()
                    .filter(|(_, s)| {
                        !matches!(
                            s,
                            cloudvpp_supervise::TaskState::Running
                                | cloudvpp_supervise::TaskState::Stopped
                        )
                    })
                    .map(|(name, _)| name)
                    .collect();
                if !down.is_empty() || !health.ready() {
                    return (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready: background task {}\n", down.join(", ")),
                    );
                }
                // A primary-key probe: cheap, and it needs a connection and the schema.
                let probe =
                    cloudvpp_store::AppsBooksStore::get_org(&*store, cloudvpp_store::OrgId(0));
                match tokio::time::timeout(Duration::from_secs(2), probe).await {
                    Ok(Ok(_)) => (StatusCode::OK, "ready\n".to_string()),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "readiness: the database does not answer");
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "not ready: database\n".to_string(),
                        )
                    }
                    Err(_) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: database\n".to_string(),
                    ),
                }
            }
        }),
    )
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

/// Builds the MDM service with its engine on `store`: the router, and the background
/// tasks started under `supervisor`.
async fn build_mdm(
    store: Arc<dyn cloudvpp_store::Store>,
    opts: &MdmOptions,
    proxy: Option<cloudvpp_mdm::ProxyTrust>,
    default_public_url: String,
    supervisor: &Supervisor,
    clock: &Arc<dyn cloudvpp_store::clock::Clock>,
) -> Result<(axum::Router, Vec<JoinHandle<()>>)> {
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
    let state = cloudvpp_mdm::MdmState::new(
        store.clone(),
        cloudvpp_mdm::Config {
            clock: clock.clone(),
            ca,
            cert_header: proxy,
            require_device_id_in_cert: opts.require_device_id_in_cert,
            api_key: opts.api_key.clone(),
            pusher,
        },
    );
    // The page's cookie is Secure when browsers reach it over HTTPS: this listener's TLS,
    // or a TLS proxy named by the public URL.
    let ui = cloudvpp_admin_ui::UiConfig {
        secure_cookies: default_public_url.starts_with("https:")
            || opts
                .public_url
                .as_deref()
                .is_some_and(|u| u.starts_with("https:")),
        // Sessions signed with a key derived from the API key: every instance with the
        // same key knows them; a new key ends them all.
        session_keys: opts
            .api_key
            .as_deref()
            .map(cloudvpp_admin_ui::session::SessionKeys::from_api_key),
    };
    let engine = cloudvpp_engine::Engine::new(
        store,
        state.clone(),
        cloudvpp_engine::EngineConfig {
            public_url: opts.public_url.clone().unwrap_or(default_public_url),
            status_poll: Duration::from_millis(opts.status_poll_ms),
            sync_interval: Duration::from_millis(opts.sync_interval_ms),
            tick: Duration::from_millis(opts.engine_tick_ms.max(1)),
            licence_recheck: Duration::from_millis(opts.licence_recheck_ms.max(1000)),
            lease: Duration::from_millis(opts.engine_lease_ms.unwrap_or(10_000).max(100)),
            clock: clock.clone(),
            ..Default::default()
        },
    );
    let stop = supervisor.stop.clone();
    let (s, st) = (state.clone(), stop.clone());
    let (e, et) = (engine.clone(), stop);
    let tasks = vec![
        supervisor.spawn("mdm-seen", move || {
            cloudvpp_mdm::run_seen_flusher(s.clone(), st.clone())
        }),
        supervisor.spawn("engine", move || {
            cloudvpp_engine::run(e.clone(), et.clone())
        }),
    ];
    let router = cloudvpp_mdm::router(state)
        .merge(cloudvpp_engine::api::router(engine.clone()))
        .merge(cloudvpp_admin_ui::router(engine, ui))
        .merge(crate::openapi::router());
    Ok((router, tasks))
}

/// Serves `app` on `listener` (HTTPS with rustls when a certificate and key are given)
/// until `handle` is told to shut down gracefully. Every connection is held to `limits`
/// (see [`listener`]); handlers can read the peer address (`ConnectInfo<SocketAddr>`).
pub async fn serve_app(
    listener: std::net::TcpListener,
    tls: Option<(&str, &str)>,
    app: axum::Router,
    limits: &ConnLimits,
    handle: axum_server::Handle,
) -> Result<()> {
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
    fn tune<A>(server: &mut axum_server::Server<A>, limits: &ConnLimits) {
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

/// Resolves at SIGINT or SIGTERM.
pub async fn shutdown_signal() {
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
