//! `cloudvpp-bench`: drives a running cloudvpp appsbooks service and prints figures.
//! Bounded: every phase has a fixed number of requests and an overall time limit.

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// Base URL of the service (must be loopback).
    #[arg(long)]
    base: String,
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
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    async fn get(&self, path: &str) -> Result<Value> {
        let r = self
            .http
            .get(format!("{}{}", self.base, path))
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
    async fn create(&self, from: usize, n: usize, prefix: &str) -> Result<String> {
        let users: Vec<Value> = (from..from + n)
            .map(|i| json!({"clientUserId": format!("{prefix}-{i}"), "email": format!("{prefix}-{i}@example.com")}))
            .collect();
        let r = self
            .http
            .post(format!("{}/mdm/v2/users/create", self.base))
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
    let a = Args::parse();
    let host = reqwest::Url::parse(&a.base)?
        .host_str()
        .unwrap_or("")
        .to_string();
    if host != "127.0.0.1" && host != "localhost" && host != "[::1]" {
        bail!("benchmarks only target loopback");
    }
    let c = Arc::new(Client {
        http: reqwest::Client::new(),
        base: a.base.trim_end_matches('/').into(),
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

    println!("== full sync: every page of GET users, one client");
    let t0 = Instant::now();
    let (mut page, mut count, mut pages) = (0u64, 0usize, 0usize);
    let mut first_version = None;
    loop {
        let v = c.get(&format!("/mdm/v2/users?pageIndex={page}")).await?;
        first_version.get_or_insert_with(|| v["versionId"].as_str().unwrap().to_string());
        count += v["users"].as_array().map(|u| u.len()).unwrap_or(0);
        pages += 1;
        match v["nextPageIndex"].as_u64() {
            Some(n) => page = n,
            None => break,
        }
    }
    let took = t0.elapsed();
    println!(
        "full sync: {count} users, {pages} pages in {:.2}s ({:.1} ms/page)",
        took.as_secs_f64(),
        took.as_secs_f64() * 1000.0 / pages as f64
    );

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
        .post(format!("{}/mdm/v2/users/update", c.base))
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
