//! What the process tells its operators: the log (the tracing subscriber: `RUST_LOG`,
//! `--log-format`, colour only on a terminal) and the metrics (one Prometheus recorder per
//! process, rendered by every service's `GET /metrics`, and the HTTP middleware that counts
//! requests). `docs/OPERATIONS.md` lists what is logged and measured.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cloudvpp_store::engine::InvitationState;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The log's format (`--log-format`, `CLOUDVPP_LOG_FORMAT`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields` (with `message`).
    Json,
}

/// The filter when neither `CLOUDVPP_LOG` nor `RUST_LOG` is set.
pub const DEFAULT_FILTER: &str = "info,sqlx=warn";

/// The log filter: `CLOUDVPP_LOG` (kept as an alias, and the more specific, so it wins),
/// else `RUST_LOG`, else [`DEFAULT_FILTER`]. A directive that does not parse is reported
/// (variable, value, error) and the default used.
pub fn log_filter(
    cloudvpp_log: Option<&str>,
    rust_log: Option<&str>,
) -> (
    tracing_subscriber::EnvFilter,
    Option<(&'static str, String, String)>,
) {
    let chosen = [("CLOUDVPP_LOG", cloudvpp_log), ("RUST_LOG", rust_log)]
        .into_iter()
        .find_map(|(var, v)| v.filter(|v| !v.trim().is_empty()).map(|v| (var, v)));
    match chosen {
        None => (DEFAULT_FILTER.into(), None),
        Some((var, v)) => match tracing_subscriber::EnvFilter::try_new(v) {
            Ok(f) => (f, None),
            Err(e) => (
                DEFAULT_FILTER.into(),
                Some((var, v.to_string(), e.to_string())),
            ),
        },
    }
}

/// Installs the process's subscriber: to stderr, in `format`, filtered by [`log_filter`],
/// with ANSI colour only when stderr is a terminal and `NO_COLOR` is unset (never in
/// files, pipes or JSON).
pub fn init_logging(format: LogFormat) {
    let (filter, bad) = log_filter(
        std::env::var("CLOUDVPP_LOG").ok().as_deref(),
        std::env::var("RUST_LOG").ok().as_deref(),
    );
    let ansi = format == LogFormat::Text
        && std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
    if let Some((var, value, error)) = bad {
        tracing::warn!(
            var,
            value,
            error,
            default = DEFAULT_FILTER,
            "log filter ignored"
        );
    }
}

/// Latency buckets (seconds) of every `*_seconds` histogram.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process's Prometheus recorder, installed at the first call (once per process, however
/// many servers a test starts in it).
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .expect("the buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed: /metrics stays empty");
        }
        describe();
        // Histogram samples wait in lock-free buckets until an upkeep folds them: without a
        // scrape they would pile up by the request (8 bytes each), so fold them every 5 s.
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_secs(5));
                upkeep.run_upkeep();
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "metrics upkeep thread: histograms are folded at scrapes only");
        }
        handle
    })
}

/// HELP lines of the series recorded here and in the services.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "cloudvpp_http_requests_total",
        "HTTP requests answered, by service, method, route (the matched path) and status"
    );
    describe_histogram!(
        "cloudvpp_http_request_duration_seconds",
        Unit::Seconds,
        "Time to the response head, by service, method, route and status"
    );
    describe_gauge!(
        "cloudvpp_invitations",
        "Invitations by state (read from the store at each scrape)"
    );
    describe_counter!(
        "cloudvpp_mdm_idle_answers_total",
        "Idle reports answered from memory (queue known empty, no database read) or from the database"
    );
    describe_gauge!(
        "cloudvpp_mdm_queue_depth",
        "MDM commands still to deliver (one COUNT at each scrape)"
    );
    describe_gauge!(
        "cloudvpp_appsbooks_events_pending",
        "Apps and Books events still PENDING (one COUNT at each scrape)"
    );
    describe_gauge!(
        "cloudvpp_appsbooks_oldest_pending_event_age_seconds",
        Unit::Seconds,
        "Age of the oldest PENDING event, 0 when none (at each scrape)"
    );
    describe_gauge!(
        "cloudvpp_appsbooks_outbox_backlog",
        "Notifications waiting in the outbox (one COUNT at each scrape)"
    );
    describe_gauge!(
        "cloudvpp_metrics_store_errors",
        "1 when the last scrape could not read the store's gauges (they keep older values)"
    );
}

/// Counts every request that matched a route of `service`: `cloudvpp_http_requests_total`
/// and `cloudvpp_http_request_duration_seconds`, labelled by the route's template (never
/// the raw URI, so IDs do not multiply series). Applied with `Router::route_layer`.
pub async fn track_http(State(service): State<&'static str>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let method = match req.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "DELETE" | "PATCH" | "HEAD" | "OPTIONS") => m.to_string(),
        _ => "other".to_string(),
    };
    let start = Instant::now();
    let response = next.run(req).await;
    let labels = [
        ("service", service.to_string()),
        ("method", method),
        ("route", route),
        ("status", response.status().as_u16().to_string()),
    ];
    metrics::counter!("cloudvpp_http_requests_total", &labels).increment(1);
    metrics::histogram!("cloudvpp_http_request_duration_seconds", &labels)
        .record(start.elapsed().as_secs_f64());
    response
}

/// What one server's `/metrics` reads from the store at each scrape, for the services it runs.
#[derive(Clone)]
pub struct Gauges {
    /// The server's store.
    pub store: Arc<dyn cloudvpp_store::Store>,
    /// The time the services reckon by.
    pub clock: Arc<dyn cloudvpp_store::clock::Clock>,
    /// The Apps and Books service runs: events and outbox.
    pub appsbooks: bool,
    /// The MDM service (and engine) runs: queue and invitations.
    pub mdm: bool,
}

impl Gauges {
    /// Reads the gauges (within 2 s; on failure they keep their last values and
    /// `cloudvpp_metrics_store_errors` is 1).
    async fn update(&self) {
        let read = async {
            let backlog = cloudvpp_store::gauges::GaugeStore::backlog(&*self.store).await?;
            let invitations = if self.mdm {
                cloudvpp_store::engine::EngineStore::invitation_counts(&*self.store).await?
            } else {
                Vec::new()
            };
            Ok::<_, cloudvpp_store::StoreError>((backlog, invitations))
        };
        let (backlog, invitations) = match tokio::time::timeout(Duration::from_secs(2), read).await
        {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "metrics: reading the store's gauges");
                metrics::gauge!("cloudvpp_metrics_store_errors").set(1.0);
                return;
            }
            Err(_) => {
                tracing::warn!("metrics: reading the store's gauges took over 2 s");
                metrics::gauge!("cloudvpp_metrics_store_errors").set(1.0);
                return;
            }
        };
        metrics::gauge!("cloudvpp_metrics_store_errors").set(0.0);
        if self.mdm {
            metrics::gauge!("cloudvpp_mdm_queue_depth").set(backlog.mdm_queue as f64);
            for state in InvitationState::ALL {
                let n = invitations
                    .iter()
                    .find(|(s, _)| *s == state)
                    .map_or(0, |(_, n)| *n);
                metrics::gauge!("cloudvpp_invitations", "state" => state.as_str()).set(n as f64);
            }
        }
        if self.appsbooks {
            metrics::gauge!("cloudvpp_appsbooks_events_pending").set(backlog.pending_events as f64);
            let age = backlog
                .oldest_pending_event_ms
                .map_or(0.0, |t| (self.clock.now_ms() - t).max(0) as f64 / 1000.0);
            metrics::gauge!("cloudvpp_appsbooks_oldest_pending_event_age_seconds").set(age);
            metrics::gauge!("cloudvpp_appsbooks_outbox_backlog").set(backlog.outbox as f64);
        }
    }
}

/// `GET /metrics`: the store's gauges read now, then every series of the process in
/// Prometheus' text format. Open, like `/healthz` (see `docs/OPERATIONS.md`, Metrics).
pub fn router(gauges: Gauges) -> axum::Router {
    let handle = prometheus();
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let gauges = gauges.clone();
            async move {
                gauges.update().await;
                handle.run_upkeep();
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    handle.render(),
                )
                    .into_response()
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloudvpp_log_wins_then_rust_log_then_the_default() {
        let show = |c: Option<&str>, r: Option<&str>| log_filter(c, r).0.to_string();
        assert_eq!(show(None, None), log_filter(None, None).0.to_string());
        assert!(show(None, None).contains("info"));
        assert_eq!(show(None, Some("warn")), "warn");
        assert_eq!(show(Some("debug"), Some("warn")), "debug");
        assert_eq!(show(Some(" "), Some("warn")), "warn");
        let (_, bad) = log_filter(None, Some("x=notalevel"));
        assert_eq!(bad.map(|b| b.0), Some("RUST_LOG"));
    }
}
