//! `cloudvpp invite` and `cloudvpp invitations`: the invitation engine's admin API.

use crate::cmd::api::{call, print, ApiArgs};
use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use std::time::Duration;

/// `cloudvpp invite`.
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

/// `cloudvpp invitations`.
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

/// Runs `cloudvpp invite`.
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

/// Runs `cloudvpp invitations`.
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
