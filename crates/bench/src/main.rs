//! `cloudvpp-bench`: drives a running cloudvpp appsbooks service and prints figures.
//! Bounded: every phase has a fixed number of requests and an overall time limit.

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
enum Cmd {
    /// Apps and Books: creation, full sync, paging, sinceVersionId (bench/appsbooks.sh).
    Appsbooks(Args),
    /// Apps and Books: the full sync's work in-process, without HTTP: every page of Get
    /// Users read through the store and serialised as the service does
    /// (`users::users_page_body`), on the database a `bench/appsbooks.sh` run left.
    AppsbooksLocal(LocalArgs),
    /// The invitation engine end to end (bench/invitations.sh).
    Invitations(InvArgs),
    /// Licences: associate one app to many users, then a full Get Assignments sync
    /// (bench/assets.sh).
    Assets(AssetArgs),
}

#[derive(Parser)]
struct LocalArgs {
    /// The database, as `cloudvpp --database` takes it (sqlite://PATH or postgres://...).
    #[arg(long)]
    database: String,
    /// The organisation, by uId or name.
    #[arg(long, default_value = "Bench")]
    org: String,
    /// Users a page (the service's default).
    #[arg(long, default_value_t = 1000)]
    page_size: i64,
    /// Full syncs to time.
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

#[derive(Parser)]
struct AssetArgs {
    /// Base URL of the service (loopback).
    #[arg(long)]
    base: String,
    /// sToken.
    #[arg(long)]
    token: String,
    /// Users the organisation holds (created first, unmeasured, if missing).
    #[arg(long, default_value_t = 1_000_000)]
    users: usize,
    /// Users given the measured app (requests of 100).
    #[arg(long, default_value_t = 100_000)]
    associate: usize,
    /// Assignments the organisation must hold before the sync (more apps associated,
    /// unmeasured, 1,000 users a request).
    #[arg(long, default_value_t = 1_000_000)]
    assignments: usize,
    /// The organisation's adamIds, comma-separated: the first is measured, the next ones
    /// fill up to `assignments`.
    #[arg(long, value_delimiter = ',', required = true)]
    adam_ids: Vec<String>,
    /// Concurrent requests.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
}

#[derive(Parser)]
struct InvArgs {
    /// MDM service base URL (loopback).
    #[arg(long)]
    mdm: String,
    /// Admin API key.
    #[arg(long)]
    api_key: String,
    /// Simulator state file with the enrolled devices.
    #[arg(long)]
    state: std::path::PathBuf,
    /// Concurrent device sessions.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Invitations measured alone first, one after another (each on its own device, taken
    /// from the fleet and left out of the batch).
    #[arg(long, default_value_t = 20)]
    solo: usize,
}

#[derive(Parser)]
struct Args {
    /// Base URL of the service (must be loopback); several, comma-separated, for several
    /// instances on one database: requests go round-robin over them.
    #[arg(long, value_delimiter = ',', required = true)]
    base: Vec<String>,
    /// sToken.
    #[arg(long)]
    token: String,
    /// Users to create in the measured creation phase.
    #[arg(long, default_value_t = 100_000)]
    create: usize,
    /// Users the organisation must hold before the sync phases (created unmeasured, 100 a request).
    #[arg(long, default_value_t = 1_000_000)]
    total: usize,
    /// Concurrent requests while creating.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Samples of the sinceVersionId page.
    #[arg(long, default_value_t = 500)]
    samples: usize,
    /// Stop after the full sync (A/B runs of the sync alone).
    #[arg(long)]
    sync_only: bool,
    /// The servers' process ids (comma-separated): their CPU time (user + system, from
    /// /proc) during the full sync is reported per page.
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,
}

/// What a syncing client reads of a Get Users page: typed, as a real client parses it
/// (parsing into `serde_json::Value` would cost the client more than the server's work).
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct SyncPage {
    users: Vec<SyncUser>,
    next_page_index: Option<u64>,
    version_id: String,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // read as a client would, then dropped
struct SyncUser {
    client_user_id: String,
    email: Option<String>,
    id_hash: Option<String>,
    invite_code: Option<String>,
    status: String,
}

/// CPU time (user + system) of the processes, in seconds, from /proc; None off Linux.
fn cpu_seconds(pids: &[u32]) -> Option<f64> {
    let tick = 100.0; // USER_HZ: 100 on every Linux this runs on
    let mut sum = 0.0;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may hold spaces), from field 3 on.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        let (utime, stime): (f64, f64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
        sum += (utime + stime) / tick;
    }
    Some(sum)
}

struct Client {
    http: reqwest::Client,
    bases: Vec<String>,
    next: std::sync::atomic::AtomicUsize,
    token: String,
}

impl Client {
    /// `path` on the next instance, round-robin.
    fn url(&self, path: &str) -> String {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{}{}", self.bases[i % self.bases.len()], path)
    }

    async fn get(&self, path: &str) -> Result<Value> {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(&self.token)
            .send()
            .await?;
        let status = r.status();
        let v: Value = r.json().await?;
        if !status.is_success() || v.get("errorNumber").is_some() {
            bail!("GET {path}: {status} {v}");
        }
        Ok(v)
    }
    /// A Get Users page, typed.
    async fn page(&self, path: &str) -> Result<SyncPage> {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(&self.token)
            .send()
            .await?;
        let status = r.status();
        let body = r.bytes().await?;
        if !status.is_success() {
            bail!("GET {path}: {status} {}", String::from_utf8_lossy(&body));
        }
        Ok(serde_json::from_slice(&body)?)
    }
    async fn create(&self, from: usize, n: usize, prefix: &str) -> Result<String> {
        let users: Vec<Value> = (from..from + n)
            .map(|i| json!({"clientUserId": format!("{prefix}-{i}"), "email": format!("{prefix}-{i}@example.com")}))
            .collect();
        let r = self
            .http
            .post(self.url("/mdm/v2/users/create"))
            .bearer_auth(&self.token)
            .json(&json!({ "users": users }))
            .send()
            .await?;
        let v: Value = r.json().await?;
        Ok(v["eventId"]
            .as_str()
            .with_context(|| format!("create: {v}"))?
            .to_string())
    }
}

/// Creates `count` users from `start` in requests of 100 and waits for every event.
async fn create_all(
    c: &Arc<Client>,
    start: usize,
    count: usize,
    concurrency: usize,
    prefix: &str,
) -> Result<Duration> {
    let t0 = Instant::now();
    let batches: Vec<usize> = (start..start + count).step_by(100).collect();
    let queue = Arc::new(std::sync::Mutex::new(batches.into_iter()));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (c, queue, prefix) = (c.clone(), queue.clone(), prefix.to_string());
        tasks.push(tokio::spawn(async move {
            let mut events = Vec::new();
            loop {
                let next = queue.lock().unwrap().next();
                let Some(from) = next else { break };
                events.push(c.create(from, 100, &prefix).await?);
            }
            anyhow::Ok(events)
        }));
    }
    let mut events = Vec::new();
    for t in tasks {
        events.extend(t.await??);
    }
    let accepted = t0.elapsed();
    // Events of one organisation finish in order: waiting for the last one, then checking all, is exact.
    for ev in events.iter().rev().take(1).chain(events.iter()) {
        loop {
            let st = c.get(&format!("/mdm/v2/status?eventId={ev}")).await?;
            match st["eventStatus"].as_str() {
                Some("COMPLETE") => break,
                Some("PENDING") => tokio::time::sleep(Duration::from_millis(20)).await,
                _ => bail!("event {ev}: {st}"),
            }
        }
    }
    eprintln!(
        "  accepted {} requests in {:.2}s",
        events.len(),
        accepted.as_secs_f64()
    );
    Ok(t0.elapsed())
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn p99(v: &mut [Duration]) -> Duration {
    v.sort();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cmd::parse() {
        Cmd::Appsbooks(a) => appsbooks(a).await,
        Cmd::AppsbooksLocal(a) => appsbooks_local(a).await,
        Cmd::Invitations(a) => invitations(a).await,
        Cmd::Assets(a) => assets(a).await,
    }
}

/// Every page of Get Users read and serialised in-process, `runs` times.
async fn appsbooks_local(a: LocalArgs) -> Result<()> {
    use cloudvpp_appsbooks::{auth::OrgContext, users::users_page_body};
    use cloudvpp_store::{UserFilter, UserOrder};
    let store = cloudvpp::server::open_existing_db(&a.database).await?;
    let org = store
        .find_org(&a.org)
        .await?
        .with_context(|| format!("no organisation {:?}", a.org))?;
    let token_expires_at = store.current_token_expiry(org.id).await?.unwrap_or(0);
    let ctx = OrgContext {
        org,
        token_expires_at,
    };
    let size = a.page_size.max(1);
    for run in 1..=a.runs {
        let (mut read, mut write) = (Duration::ZERO, Duration::ZERO);
        let (mut page, mut users, mut bytes) = (0i64, 0usize, 0usize);
        let t0 = Instant::now();
        loop {
            let t = Instant::now();
            let found = store
                .list_users_page(
                    ctx.org.id,
                    UserOrder::Created,
                    &UserFilter::default(),
                    page * size,
                    size,
                )
                .await?;
            read += t.elapsed();
            let total_pages = (found.total + size - 1) / size;
            users += found.users.len();
            let t = Instant::now();
            let body = users_page_body(&ctx, page, total_pages, found.users)
                .map_err(|e| anyhow::anyhow!("serialising: {}", e.error.number))?;
            write += t.elapsed();
            bytes += body.0.len();
            page += 1;
            if page >= total_pages {
                break;
            }
        }
        let took = t0.elapsed();
        println!(
            "in-process sync {run}: {users} users, {page} pages, {:.1} MB in {:.2}s ({:.2} ms/page: read {:.2}, serialise {:.2})",
            bytes as f64 / 1e6,
            took.as_secs_f64(),
            took.as_secs_f64() * 1000.0 / page as f64,
            read.as_secs_f64() * 1000.0 / page as f64,
            write.as_secs_f64() * 1000.0 / page as f64,
        );
    }
    Ok(())
}

fn loopback(url: &str) -> Result<()> {
    let host = reqwest::Url::parse(url)?
        .host_str()
        .unwrap_or("")
        .to_string();
    if host != "127.0.0.1" && host != "localhost" && host != "[::1]" {
        bail!("benchmarks only target loopback");
    }
    Ok(())
}

/// Unix milliseconds now (the server's clock on this machine).
fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The `p`th percentile of sorted `v`.
fn pct(v: &[i64], p: usize) -> i64 {
    v.get((v.len() * p / 100).min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0)
}

/// First `--solo` invitations alone, one after another (request to `queued`, polled every
/// 10 ms), then one invitation per remaining enrolled device, from request to `queued` and
/// to `associated`: the devices check in when they have something queued (as a push would
/// make them) and their people accept. An invitation stays `queued` until its device is
/// served, and its `updated_at` is then the moment it was queued.
async fn invitations(a: InvArgs) -> Result<()> {
    loopback(&a.mdm)?;
    let fleet = cloudvpp_simulator::Fleet::load(&a.state)?;
    let all: Vec<Arc<cloudvpp_simulator::SimDevice>> =
        fleet.devices(&a.mdm)?.into_iter().map(Arc::new).collect();
    if all.len() <= a.solo {
        bail!(
            "{} devices enrolled, {} of them for the solo phase",
            all.len(),
            a.solo
        );
    }
    let (solo, batch) = all.split_at(a.solo);
    let devices: std::collections::HashMap<String, Arc<cloudvpp_simulator::SimDevice>> = batch
        .iter()
        .map(|d| (d.spec.id.clone(), d.clone()))
        .collect();
    let n = devices.len();
    let http = reqwest::Client::new();
    let api = |m: reqwest::Method, p: &str| {
        http.request(m, format!("{}{}", a.mdm, p))
            .bearer_auth(&a.api_key)
    };
    let mut served: std::collections::HashSet<String> = std::collections::HashSet::new();
    if !solo.is_empty() {
        println!(
            "== {} invitations alone, one after another, request to queued",
            solo.len()
        );
        let mut client_ms = Vec::new();
        let mut server_ms = Vec::new();
        for (i, d) in solo.iter().enumerate() {
            // Their invitations stay queued: the batch's loop leaves these devices alone.
            served.insert(d.spec.id.clone());
            let t = Instant::now();
            let r = api(reqwest::Method::POST, "/api/v1/invitations")
                .json(&json!({"client_user_id": format!("solo-person-{i}"), "email": format!("solo{i}@example.com"), "enrollment_id": d.spec.id}))
                .send()
                .await?;
            if !r.status().is_success() {
                bail!("POST invitations: {}", r.text().await?);
            }
            let v: Value = r.json().await?;
            let id = v["results"][0]["invitation"]["id"]
                .as_str()
                .context("no invitation id in the answer")?
                .to_string();
            let deadline = t + Duration::from_secs(120);
            loop {
                let inv: Value = api(reqwest::Method::GET, &format!("/api/v1/invitations/{id}"))
                    .send()
                    .await?
                    .json()
                    .await?;
                let inv = if inv["invitation"].is_object() {
                    inv["invitation"].clone()
                } else {
                    inv
                };
                match inv["state"].as_str() {
                    Some("queued" | "delivered" | "associated") => {
                        client_ms.push(t.elapsed().as_millis() as i64);
                        server_ms.push(
                            inv["updated_at"].as_i64().unwrap_or(0)
                                - inv["created_at"].as_i64().unwrap_or(0),
                        );
                        break;
                    }
                    Some("failed") => bail!("solo invitation failed: {inv}"),
                    _ => {}
                }
                if Instant::now() > deadline {
                    bail!("solo invitation not queued in 120 s: {inv}");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let all_client = client_ms.clone();
        client_ms.sort();
        server_ms.sort();
        println!(
            "alone: request to queued median {} ms, p90 {} ms, max {} ms (server's created_at to queued: median {} ms); each: {:?}",
            pct(&client_ms, 50),
            pct(&client_ms, 90),
            client_ms.last().copied().unwrap_or(0),
            pct(&server_ms, 50),
            all_client
        );
    }
    let ids: Vec<&String> = devices.keys().collect();
    println!("== {n} invitations, one per device, request to queued and to associated");
    let t0 = Instant::now();
    let t0_ms = unix_ms();
    // When each invitation was asked for (its request's start), by client_user_id.
    let mut asked: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    for (c, chunk) in ids.chunks(1000).enumerate() {
        let people: Vec<Value> = chunk
            .iter()
            .enumerate()
            .map(|(i, id)| json!({"client_user_id": format!("bench-person-{}", c * 1000 + i), "email": format!("p{}@example.com", c * 1000 + i), "enrollment_id": id}))
            .collect();
        let sent = unix_ms();
        for i in 0..chunk.len() {
            asked.insert(format!("bench-person-{}", c * 1000 + i), sent);
        }
        let r = api(reqwest::Method::POST, "/api/v1/invitations")
            .json(&json!({ "invitations": people }))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("POST invitations: {}", r.text().await?);
        }
    }
    println!("submitted in {:.2}s", t0.elapsed().as_secs_f64());
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    // Unix ms each invitation was queued at (its updated_at while seen queued).
    let mut queued_at: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    loop {
        let v: Value = api(
            reqwest::Method::GET,
            "/api/v1/invitations?state=queued&limit=100000",
        )
        .send()
        .await?
        .json()
        .await?;
        // The counts of a listing follow its filter: the state of them all, unfiltered.
        let all: Value = api(reqwest::Method::GET, "/api/v1/invitations?limit=1")
            .send()
            .await?
            .json()
            .await?;
        let counts = all["counts"].clone();
        if counts["associated"].as_u64() >= Some(n as u64) {
            break;
        }
        if Instant::now() > deadline {
            bail!("timed out: {counts}");
        }
        for i in v["invitations"].as_array().into_iter().flatten() {
            if let (Some(c), Some(at)) = (i["client_user_id"].as_str(), i["updated_at"].as_i64()) {
                if asked.contains_key(c) {
                    queued_at.entry(c.to_string()).or_insert(at);
                }
            }
        }
        let todo: Vec<Arc<cloudvpp_simulator::SimDevice>> = v["invitations"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["channel"].as_str())
            .filter(|c| served.insert(c.to_string()))
            .filter_map(|c| devices.get(c).cloned())
            .collect();
        if todo.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let sessions = futures::stream::iter(todo.into_iter().map(|d| {
            let http = http.clone();
            async move {
                for h in d.poll(false).await? {
                    if let (Some(url), "Acknowledged") = (&h.invitation_url, h.status.as_str()) {
                        cloudvpp_simulator::accept_invitation(
                            &http,
                            url,
                            &format!("{}@people.example", d.spec.id.to_lowercase()),
                        )
                        .await?;
                    }
                }
                anyhow::Ok(())
            }
        }));
        use futures::StreamExt;
        let results: Vec<Result<()>> = sessions.buffer_unordered(a.concurrency).collect().await;
        for r in results {
            r?;
        }
    }
    let total = t0.elapsed();
    let v: Value = api(
        reqwest::Method::GET,
        &format!("/api/v1/invitations?state=associated&limit={}", n + 10),
    )
    .send()
    .await?
    .json()
    .await?;
    let mut per: Vec<i64> = v["invitations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| {
            i["client_user_id"]
                .as_str()
                .is_some_and(|c| asked.contains_key(c))
        })
        .map(|i| i["updated_at"].as_i64().unwrap_or(0) - i["created_at"].as_i64().unwrap_or(0))
        .collect();
    per.sort();
    let mut to_queued: Vec<i64> = queued_at.iter().map(|(c, at)| at - asked[c]).collect();
    to_queued.sort();
    let last_queued = queued_at.values().max().copied().unwrap_or(t0_ms) - t0_ms;
    println!(
        "batch: request to queued median {} ms, p90 {} ms, max {} ms; all {} queued {} ms after the first request (median/total {:.2})",
        pct(&to_queued, 50),
        pct(&to_queued, 90),
        to_queued.last().copied().unwrap_or(0),
        to_queued.len(),
        last_queued,
        pct(&to_queued, 50) as f64 / last_queued.max(1) as f64
    );
    println!(
        "invitations: {n} associated in {:.2}s ({:.0}/s); per invitation to associated median {} ms, p90 {} ms, max {} ms",
        total.as_secs_f64(),
        n as f64 / total.as_secs_f64(),
        pct(&per, 50),
        pct(&per, 90),
        per.last().copied().unwrap_or(0)
    );
    Ok(())
}

async fn appsbooks(a: Args) -> Result<()> {
    for b in &a.base {
        loopback(b)?;
    }
    println!("{} instance(s): {}", a.base.len(), a.base.join(" "));
    let c = Arc::new(Client {
        http: reqwest::Client::new(),
        bases: a
            .base
            .iter()
            .map(|b| b.trim_end_matches('/').to_string())
            .collect(),
        next: Default::default(),
        token: a.token,
    });
    let deadline = Instant::now() + Duration::from_secs(1800);

    println!(
        "== create {} users (requests of 100, {} concurrent) until all COMPLETE",
        a.create, a.concurrency
    );
    let took = create_all(&c, 0, a.create, a.concurrency, "bench").await?;
    println!(
        "create: {} users COMPLETE in {:.2}s ({:.0} users/s)",
        a.create,
        took.as_secs_f64(),
        a.create as f64 / took.as_secs_f64()
    );

    let have = c.get("/mdm/v2/users?pageIndex=0").await?;
    let size = have["size"].as_u64().unwrap_or(1000).max(1) as usize;
    let existing = have["totalPages"].as_u64().unwrap_or(1) as usize * size;
    if a.total > existing {
        let more = a.total - a.create;
        println!("== seeding to {} users (unmeasured phase)", a.total);
        let took = create_all(&c, a.create, more, a.concurrency, "bench").await?;
        println!("seed: {more} more users in {:.1}s", took.as_secs_f64());
    }
    if Instant::now() > deadline {
        bail!("time limit");
    }

    println!("== full sync: every page of GET users, one client (round-robin over the instances)");
    let cpu0 = cpu_seconds(&a.pids);
    let t0 = Instant::now();
    let (mut page, mut count, mut pages) = (0u64, 0usize, 0usize);
    let mut first_version = None;
    loop {
        let v = c.page(&format!("/mdm/v2/users?pageIndex={page}")).await?;
        first_version.get_or_insert(v.version_id);
        count += v.users.len();
        pages += 1;
        match v.next_page_index {
            Some(n) => page = n,
            None => break,
        }
    }
    let took = t0.elapsed();
    println!(
        "full sync: {count} users, {pages} pages in {:.2}s ({:.2} ms/page)",
        took.as_secs_f64(),
        took.as_secs_f64() * 1000.0 / pages as f64
    );
    if let (Some(c0), Some(c1), false) = (cpu0, cpu_seconds(&a.pids), a.pids.is_empty()) {
        println!(
            "full sync: server CPU {:.2} s ({:.2} ms/page)",
            c1 - c0,
            (c1 - c0) * 1000.0 / pages as f64
        );
    }

    if a.sync_only {
        return Ok(());
    }
    println!("== page latency by index (no OFFSET growth)");
    for idx in [0, pages / 2, pages - 1] {
        let mut lat = Vec::new();
        for _ in 0..50 {
            let t = Instant::now();
            c.get(&format!("/mdm/v2/users?pageIndex={idx}")).await?;
            lat.push(t.elapsed());
        }
        println!(
            "page {idx}: median {:.2} ms",
            median(&mut lat).as_secs_f64() * 1000.0
        );
    }

    println!("== sinceVersionId page with 100 changes");
    let version = c.get("/mdm/v2/users?pageIndex=0").await?["versionId"]
        .as_str()
        .unwrap()
        .to_string();
    let stride = (a.total.max(a.create) / 100).max(1);
    let users: Vec<Value> =
        (0..100).map(|i| json!({"clientUserId": format!("bench-{}", i * stride), "email": format!("changed-{i}@example.com")})).collect();
    let r: Value = c
        .http
        .post(c.url("/mdm/v2/users/update"))
        .bearer_auth(&c.token)
        .json(&json!({"users": users}))
        .send()
        .await?
        .json()
        .await?;
    let ev = r["eventId"].as_str().context("update")?.to_string();
    loop {
        let st = c.get(&format!("/mdm/v2/status?eventId={ev}")).await?;
        match st["eventStatus"].as_str() {
            Some("PENDING") => tokio::time::sleep(Duration::from_millis(10)).await,
            Some("COMPLETE") => break,
            _ => bail!("update event: {st}"),
        }
    }
    let mut lat = Vec::new();
    for _ in 0..a.samples {
        let t = Instant::now();
        let v = c
            .get(&format!("/mdm/v2/users?sinceVersionId={version}"))
            .await?;
        lat.push(t.elapsed());
        if v["size"] != 100 {
            bail!("expected 100 changes, got {}", v["size"]);
        }
    }
    println!(
        "since page (100 changes): median {:.3} ms, p99 {:.3} ms over {} requests",
        median(&mut lat).as_secs_f64() * 1000.0,
        p99(&mut lat).as_secs_f64() * 1000.0,
        a.samples
    );
    Ok(())
}

/// Associates `adam_id` to users `bench-{from}..` in requests of `per`, `concurrency` at a
/// time, and waits until every event is COMPLETE.
async fn associate_all(
    c: &Arc<Client>,
    adam_id: &str,
    from: usize,
    count: usize,
    per: usize,
    concurrency: usize,
) -> Result<Duration> {
    let t0 = Instant::now();
    let batches: Vec<usize> = (from..from + count).step_by(per).collect();
    let queue = Arc::new(std::sync::Mutex::new(batches.into_iter()));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (c, queue, adam_id) = (c.clone(), queue.clone(), adam_id.to_string());
        let end = from + count;
        tasks.push(tokio::spawn(async move {
            let mut events = Vec::new();
            loop {
                let next = queue.lock().unwrap().next();
                let Some(start) = next else { break };
                let ids: Vec<String> = (start..(start + per).min(end))
                    .map(|i| format!("bench-{i}"))
                    .collect();
                let r: Value = c
                    .http
                    .post(c.url("/mdm/v2/assets/associate"))
                    .bearer_auth(&c.token)
                    .json(&json!({"assets": [{"adamId": adam_id, "pricingParam": "STDQ"}], "clientUserIds": ids}))
                    .send()
                    .await?
                    .json()
                    .await?;
                events.push(
                    r["eventId"]
                        .as_str()
                        .with_context(|| format!("associate: {r}"))?
                        .to_string(),
                );
            }
            anyhow::Ok(events)
        }));
    }
    let mut events = Vec::new();
    for t in tasks {
        events.extend(t.await??);
    }
    let accepted = t0.elapsed();
    for ev in events.iter().rev().take(1).chain(events.iter()) {
        loop {
            let st = c.get(&format!("/mdm/v2/status?eventId={ev}")).await?;
            match st["eventStatus"].as_str() {
                Some("COMPLETE") => break,
                Some("PENDING") => tokio::time::sleep(Duration::from_millis(20)).await,
                _ => bail!("event {ev}: {st}"),
            }
        }
    }
    eprintln!(
        "  accepted {} requests in {:.2}s",
        events.len(),
        accepted.as_secs_f64()
    );
    Ok(t0.elapsed())
}

async fn assets(a: AssetArgs) -> Result<()> {
    loopback(&a.base)?;
    let c = Arc::new(Client {
        http: reqwest::Client::new(),
        bases: vec![a.base.trim_end_matches('/').to_string()],
        next: Default::default(),
        token: a.token,
    });
    let have = c.get("/mdm/v2/users?pageIndex=0").await?;
    let size = have["size"].as_u64().unwrap_or(1000).max(1) as usize;
    let existing = (have["totalPages"].as_u64().unwrap_or(1) as usize - 1) * size;
    if a.users > existing {
        println!("== seeding {} users (unmeasured)", a.users - existing);
        let took = create_all(&c, existing, a.users - existing, a.concurrency, "bench").await?;
        println!("seed: {:.1}s", took.as_secs_f64());
    }
    let assets = c.get("/mdm/v2/assets?pageIndex=0").await?;
    println!(
        "organisation: {} users, {} assets",
        a.users,
        assets["size"].as_u64().unwrap_or(0) * assets["totalPages"].as_u64().unwrap_or(1)
    );

    println!(
        "== associate {} to {} users (requests of 100, {} concurrent) until all COMPLETE",
        a.adam_ids[0], a.associate, a.concurrency
    );
    let took = associate_all(&c, &a.adam_ids[0], 0, a.associate, 100, a.concurrency).await?;
    println!(
        "associate: {} assignments COMPLETE in {:.2}s ({:.0} assignments/s)",
        a.associate,
        took.as_secs_f64(),
        a.associate as f64 / took.as_secs_f64()
    );

    let mut held = a.associate;
    let mut next = a.adam_ids.iter().skip(1);
    if held < a.assignments {
        println!("== filling to {} assignments (unmeasured)", a.assignments);
        let t0 = Instant::now();
        while held < a.assignments {
            let adam_id = next.next().context("not enough adamIds to fill")?;
            let n = (a.assignments - held).min(a.users);
            associate_all(&c, adam_id, 0, n, 1000, a.concurrency).await?;
            held += n;
        }
        println!("fill: {:.1}s", t0.elapsed().as_secs_f64());
    }

    println!("== full sync: every page of GET assignments, one client");
    let t0 = Instant::now();
    let (mut page, mut count, mut pages) = (0u64, 0usize, 0usize);
    loop {
        let v = c
            .get(&format!("/mdm/v2/assignments?pageIndex={page}"))
            .await?;
        count += v["assignments"].as_array().map(|u| u.len()).unwrap_or(0);
        pages += 1;
        match v["nextPageIndex"].as_u64() {
            Some(n) => page = n,
            None => break,
        }
    }
    let took = t0.elapsed();
    if count != held {
        bail!("sync returned {count} assignments, expected {held}");
    }
    println!(
        "full sync: {count} assignments, {pages} pages in {:.2}s ({:.1} ms/page)",
        took.as_secs_f64(),
        took.as_secs_f64() * 1000.0 / pages as f64
    );
    println!("== page latency by index");
    for idx in [0, pages / 2, pages - 1] {
        let mut lat = Vec::new();
        for _ in 0..30 {
            let t = Instant::now();
            c.get(&format!("/mdm/v2/assignments?pageIndex={idx}"))
                .await?;
            lat.push(t.elapsed());
        }
        println!(
            "page {idx}: median {:.2} ms",
            median(&mut lat).as_secs_f64() * 1000.0
        );
    }
    Ok(())
}
