//! `cloudvpp invite`, `cloudvpp invitations` and `cloudvpp serve` (both services at once).

use crate::mdm_cmd::{call, print, ApiArgs, MdmOptions};
use crate::{open_db, serve_app, DbArg};
use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Args)]
pub struct InviteArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// One person: their clientUserId.
    #[arg(long, conflicts_with = "csv")]
    client_user_id: Option<String>,
    /// Their email.
    #[arg(long, requires = "client_user_id")]
    email: Option<String>,
    /// The enrollment to send InviteToProgram to (omit for an email link only).
    #[arg(long, requires = "client_user_id")]
    enrollment: Option<String>,
    /// Many people: a CSV with a header `client_user_id,email,enrollment_id`.
    #[arg(long)]
    csv: Option<std::path::PathBuf>,
    /// Location ID (needed when there are several).
    #[arg(long)]
    location: Option<i64>,
    /// Wait, with a progress bar, until every invitation is associated or failed.
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 3600)]
    timeout: u64,
}

#[derive(Args)]
pub struct InvitationsArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Only this state (registering, registered, queued, delivered, associated, failed, retired).
    #[arg(long)]
    state: Option<String>,
    /// Only this person.
    #[arg(long)]
    client_user_id: Option<String>,
    /// At most this many.
    #[arg(long, default_value_t = 100)]
    limit: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn read_csv(path: &std::path::Path, location: Option<i64>) -> Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<String> = lines
        .next()
        .context("empty CSV")?
        .split(',')
        .map(|h| h.trim().to_lowercase())
        .collect();
    let col = |name: &str| header.iter().position(|h| h == name);
    let cuid = col("client_user_id").context("the CSV needs a client_user_id column")?;
    let (email, enrollment) = (col("email"), col("enrollment_id"));
    let mut out = Vec::new();
    for (n, line) in lines.enumerate() {
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let get = |i: Option<usize>| {
            i.and_then(|i| f.get(i))
                .filter(|s| !s.is_empty())
                .map(|s| s.to_string())
        };
        let id = get(Some(cuid)).with_context(|| format!("line {}: no client_user_id", n + 2))?;
        out.push(json!({ "client_user_id": id, "email": get(email), "enrollment_id": get(enrollment), "location_id": location }));
    }
    Ok(out)
}

pub async fn invite(a: InviteArgs) -> Result<()> {
    let people = match (&a.csv, &a.client_user_id) {
        (Some(path), _) => read_csv(path, a.location)?,
        (None, Some(id)) => vec![
            json!({ "client_user_id": id, "email": a.email, "enrollment_id": a.enrollment, "location_id": a.location }),
        ],
        (None, None) => bail!("give --client-user-id or --csv"),
    };
    let bar = indicatif::ProgressBar::new(people.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:12} [{bar:40}] {pos}/{len} {elapsed}")
            .expect("template")
            .progress_chars("=> "),
    );
    bar.set_message("submitting");
    let mut ids = Vec::with_capacity(people.len());
    for chunk in people.chunks(500) {
        let body = json!({ "invitations": chunk });
        let v = call(
            &a.api,
            reqwest::Method::POST,
            "/api/v1/invitations",
            Some((body.to_string().into_bytes(), "application/json")),
        )
        .await?;
        for inv in v["invitations"].as_array().into_iter().flatten() {
            ids.push(inv["id"].as_str().unwrap_or_default().to_string());
            if people.len() == 1 && !a.wait {
                print(inv);
            }
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish();
    if !a.wait {
        if people.len() > 1 {
            eprintln!(
                "{} invitations submitted; follow them with `cloudvpp invitations`",
                ids.len()
            );
        }
        return Ok(());
    }
    let wanted: std::collections::HashSet<String> = ids.into_iter().collect();
    let bar = indicatif::ProgressBar::new(wanted.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:12} [{bar:40}] {pos}/{len} {elapsed}")
            .expect("template")
            .progress_chars("=> "),
    );
    bar.set_message("associated");
    let deadline = std::time::Instant::now() + Duration::from_secs(a.timeout);
    loop {
        let v = call(
            &a.api,
            reqwest::Method::GET,
            &format!("/api/v1/invitations?limit={}", wanted.len().max(1000) * 2),
            None,
        )
        .await?;
        let mine: Vec<&Value> = v["invitations"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| wanted.contains(i["id"].as_str().unwrap_or("")))
            .collect();
        let done = mine.iter().filter(|i| i["state"] == "associated").count();
        let failed: Vec<&&Value> = mine
            .iter()
            .filter(|i| i["state"] == "failed" || i["state"] == "retired")
            .collect();
        bar.set_position(done as u64);
        if done + failed.len() >= wanted.len() {
            bar.finish();
            for f in &failed {
                eprintln!(
                    "{}: {} ({})",
                    f["client_user_id"],
                    f["state"],
                    f["reason"].as_str().unwrap_or("")
                );
            }
            println!("{done} associated, {} failed", failed.len());
            return if failed.is_empty() {
                Ok(())
            } else {
                bail!("{} invitations failed", failed.len())
            };
        }
        if std::time::Instant::now() > deadline {
            bar.abandon();
            bail!("timed out: {done} of {} associated", wanted.len());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub async fn invitations(a: InvitationsArgs) -> Result<()> {
    let mut path = format!("/api/v1/invitations?limit={}", a.limit);
    if let Some(s) = &a.state {
        path.push_str(&format!("&state={s}"));
    }
    if let Some(c) = &a.client_user_id {
        path.push_str(&format!("&client_user_id={c}"));
    }
    let v = call(&a.api, reqwest::Method::GET, &path, None).await?;
    if a.json {
        print(&v);
        return Ok(());
    }
    let counts: Vec<String> = v["counts"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    println!("{}", counts.join(", "));
    println!(
        "{:<36} {:<24} {:<11} {:<40} REASON",
        "ID", "PERSON", "STATE", "CHANNEL"
    );
    for i in v["invitations"].as_array().into_iter().flatten() {
        let s = |k: &str| i[k].as_str().unwrap_or("-").to_string();
        println!(
            "{:<36} {:<24} {:<11} {:<40} {}",
            s("id"),
            s("client_user_id"),
            s("state"),
            s("channel"),
            i["reason"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct ServeBothArgs {
    /// Where the Apps and Books service listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    appsbooks_listen: SocketAddr,
    /// Where the MDM service listens.
    #[arg(long, default_value = "127.0.0.1:9000")]
    mdm_listen: SocketAddr,
    #[command(flatten)]
    db: DbArg,
    #[command(flatten)]
    mdm: MdmOptions,
    /// Apps and Books: milliseconds per user before it is applied.
    #[arg(long, default_value_t = 0)]
    processing_delay_ms: u64,
    /// Apps and Books fault setting: percentage of notifications dropped on purpose.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    drop_notifications_percent: u8,
    /// Apps and Books limits, NAME=VALUE (repeatable).
    #[arg(long = "limit", value_parser = crate::parse_limit)]
    limits: Vec<(String, i64)>,
    /// Milliseconds an event, a notification or (unless --engine-lease-ms) an engine
    /// location stays with this instance after it took or renewed it; another instance (or
    /// this one, restarted) takes it over after a crash.
    #[arg(long, default_value_t = 30_000)]
    lease_ms: u64,
    #[command(flatten)]
    conn: crate::listener::ConnLimits,
}

/// `cloudvpp serve`: the Apps and Books service and the MDM service (with its engine) in
/// one process, on one database (SQLite by default), wired to each other.
pub async fn serve_both(mut a: ServeBothArgs) -> Result<()> {
    if a.mdm.ca.is_none() {
        // A development convenience: a throwaway CA whose devices `cloudvpp simulate` can mint.
        let (state, ca) = (
            std::path::PathBuf::from("cloudvpp-sim.json"),
            std::path::PathBuf::from("cloudvpp-ca.pem"),
        );
        if !state.exists() || !ca.exists() {
            let pki = tokio::task::spawn_blocking(cloudvpp_simulator::Pki::generate).await??;
            cloudvpp_simulator::write_private(&ca, pki.ca_cert_pem.as_bytes())?;
            cloudvpp_simulator::Fleet {
                pki,
                devices: Vec::new(),
            }
            .save(&state)?;
        }
        eprintln!(
            "no --ca: trusting the simulator CA {} (devices: cloudvpp simulate enroll --state {})",
            ca.display(),
            state.display()
        );
        a.mdm.ca = Some(ca);
    }
    if a.mdm.api_key.is_none() {
        // Kept in an owner-only file rather than printed: stderr is the log, and a key in a
        // log is a key for whoever reads the log.
        let path = std::path::PathBuf::from("cloudvpp-api-key");
        let key = match std::fs::read_to_string(&path) {
            Ok(k) if !k.trim().is_empty() => k.trim().to_string(),
            _ => {
                let key = uuid::Uuid::new_v4().simple().to_string();
                cloudvpp_simulator::write_private(&path, key.as_bytes())?;
                key
            }
        };
        eprintln!(
            "no --api-key: the admin API key is in {p} (export CLOUDVPP_API_KEY=$(cat {p}))",
            p = path.display()
        );
        a.mdm.api_key = Some(key);
    }
    a.mdm.engine_lease_ms = a.mdm.engine_lease_ms.or(Some(a.lease_ms.min(10_000)));
    let proxy = crate::mdm_cmd::proxy_trust(&a.mdm, a.mdm_listen)?;
    let store = open_db(&a.db.database).await?;
    for (k, v) in &a.limits {
        cloudvpp_store::AppsBooksStore::set_limit(&*store, k, *v).await?;
    }
    let (ab_listener, ab_base) = crate::bind(a.appsbooks_listen, false)?;
    let (mdm_listener, mdm_base) = crate::bind(a.mdm_listen, false)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Notifications may reach this process's own MDM notification endpoint, however
    // private its address, and no other private address (not its admin API either).
    let mdm_public = a.mdm.public_url.clone().unwrap_or_else(|| mdm_base.clone());
    let own_endpoint = format!(
        "{}/notifications/appsbooks/",
        mdm_public.trim_end_matches('/')
    );
    let exempt = cloudvpp_appsbooks::notify::Exempt::new(&own_endpoint)
        .with_context(|| format!("the MDM's public URL {mdm_public:?}"))?;
    let ab_state = cloudvpp_appsbooks::AppState::new(
        store.clone(),
        cloudvpp_appsbooks::Config {
            public_url: ab_base.clone(),
            processing_delay: Duration::from_millis(a.processing_delay_ms),
            // Both services run on loopback: notifications go over plain HTTP.
            allow_http_notifications: true,
            notification_exempt: vec![exempt],
            drop_notifications_percent: a.drop_notifications_percent,
            lease: Duration::from_millis(a.lease_ms),
            ..Default::default()
        },
    );
    let mut tasks = cloudvpp_appsbooks::spawn_workers(ab_state.clone(), stop_rx.clone());
    let (mdm_router, mdm_tasks) =
        crate::mdm_cmd::build(store, &a.mdm, proxy, mdm_base.clone(), stop_rx).await?;
    tasks.extend(mdm_tasks);
    println!("appsbooks listening on {ab_base}");
    println!("mdm listening on {mdm_base}");
    println!(
        "Apps and Books base URL for `cloudvpp mdm location add --appsbooks-url`: {ab_base}/mdm/v2"
    );
    tokio::try_join!(
        serve_app(
            ab_listener,
            None,
            cloudvpp_appsbooks::router(ab_state),
            &a.conn
        ),
        serve_app(mdm_listener, None, mdm_router, &a.conn),
    )?;
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}
