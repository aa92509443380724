//! `cloudvpp invite`: invite one person, or everyone in a CSV file, through the engine's
//! admin API; `--wait` follows the invitations until each has ended.
//!
//! A file is checked whole before anyone is invited: the columns, then each row (its
//! fields, email syntax, rows that repeat a person), then, in one dry run of the API, what
//! the engine knows (the enrollment exists, the person is not already invited, retired or
//! associated). The valid rows are then invited and the others listed with their line
//! numbers; `--strict` refuses the whole file instead. Running the same file again invites
//! nobody twice: everyone already invited is reported as skipped, with the reason.

use crate::cmd::api::{print, ApiArgs};
use crate::cmd::invitations::{api_error, call_any, rfc3339};
use crate::Exit;
use anyhow::{bail, Context, Result};
use clap::Args;
use cloudvpp_engine::api::MAX_INVITATIONS_PER_REQUEST;
pub use cloudvpp_engine::csv_file::{email_syntax_ok, parse_csv, Rejected, Row, COLUMNS};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

/// The exit codes of `cloudvpp invite`, shown by `--help`.
pub const EXIT_CODES: &str = "\
Exit status:
  0  everyone invited, or invited before (with --wait: every invitation associated)
  1  with --wait: some invitations failed or were retired; or an error
  3  with --wait: timed out (--timeout) before every invitation ended
  4  some rows were rejected (listed with their line numbers); with --strict, nobody was invited
The first that applies wins, in the order 3, 1, 4.";

/// Exit code: some invitations failed (with --wait).
pub const EXIT_FAILED: i32 = 1;
/// Exit code: timed out waiting.
pub const EXIT_TIMED_OUT: i32 = 3;
/// Exit code: rows rejected.
pub const EXIT_REJECTED: i32 = 4;

/// The largest CSV file read (a million people take about 100 MB).
pub const MAX_CSV_BYTES: u64 = 256 << 20;

/// `cloudvpp invite`.
#[derive(Args)]
#[command(after_help = EXIT_CODES)]
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
    /// Many people: a CSV file (UTF-8, a BOM and CRLF line ends allowed) whose header names
    /// some of the columns client_user_id (required), email, enrollment_id.
    #[arg(long)]
    csv: Option<std::path::PathBuf>,
    /// With --csv: if any row is rejected, invite nobody.
    #[arg(long, requires = "csv")]
    strict: bool,
    /// Invite people who were retired on purpose (otherwise they are skipped).
    #[arg(long)]
    reinvite_retired: bool,
    /// Location ID (needed when there are several).
    #[arg(long)]
    location: Option<i64>,
    /// Wait until every invitation is associated, failed or retired: a progress bar on a
    /// terminal, otherwise a plain line every --progress-every seconds; failures are printed
    /// as they happen.
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this many seconds (exit status 3).
    #[arg(long, default_value_t = 3600)]
    timeout: u64,
    /// With --wait and no terminal: seconds between progress lines.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    progress_every: u64,
    /// Print the outcome of every row as one JSON document (`results`, `rejected`,
    /// `summary`); follow the invitations with `cloudvpp invitations --json`.
    #[arg(long, conflicts_with = "wait")]
    json: bool,
}

/// Reads and checks a CSV file ([`parse_csv`], the engine's reader) after bounding its size.
pub fn read_csv(path: &Path) -> Result<(Vec<Row>, Vec<Rejected>)> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if size > MAX_CSV_BYTES {
        bail!(
            "{}: {size} bytes; at most {MAX_CSV_BYTES} (split the file)",
            path.display()
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse_csv(&bytes).with_context(|| path.display().to_string())
}

/// One entry of the API's request.
fn entry(row: &Row, location: Option<i64>) -> Value {
    json!({
        "client_user_id": row.client_user_id, "email": row.email,
        "enrollment_id": row.enrollment_id, "location_id": location,
    })
}

/// Posts rows in requests of at most [`MAX_INVITATIONS_PER_REQUEST`]; returns each row's
/// result (the API's `results` entry).
async fn post_rows(a: &InviteArgs, rows: &[Row], dry_run: bool) -> Result<Vec<Value>> {
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(MAX_INVITATIONS_PER_REQUEST) {
        let body = json!({
            "invitations": chunk.iter().map(|r| entry(r, a.location)).collect::<Vec<_>>(),
            "dry_run": dry_run,
            "atomic": a.strict,
            "reinvite_retired": a.reinvite_retired,
        });
        let (status, v) = call_any(
            &a.api,
            reqwest::Method::POST,
            "/api/v1/invitations",
            Some(&body),
        )
        .await?;
        let results = v["results"].as_array();
        match (status, results) {
            (200 | 202 | 400 | 422, Some(r)) if r.len() == chunk.len() => {
                out.extend(r.iter().cloned())
            }
            _ => bail!("{}", api_error(status, &v)),
        }
    }
    Ok(out)
}

fn prefix(line: u64) -> String {
    if line == 0 {
        String::new()
    } else {
        format!("line {line}: ")
    }
}

/// Runs `cloudvpp invite`.
pub async fn invite(a: InviteArgs) -> Result<()> {
    let (rows, mut rejected) = match (&a.csv, &a.client_user_id) {
        (Some(path), _) => read_csv(path)?,
        (None, Some(id)) => {
            let row = Row {
                line: 0,
                client_user_id: id.trim().to_string(),
                email: a.email.clone(),
                enrollment_id: a.enrollment.clone(),
            };
            match &row.email {
                Some(e) if !email_syntax_ok(e) => bail!("invalid email {e:?}"),
                _ => (vec![row], Vec::new()),
            }
        }
        (None, None) => bail!("give --client-user-id or --csv"),
    };
    let single = a.csv.is_none();
    // What the engine would do with each row, before anyone is invited.
    let mut valid = Vec::with_capacity(rows.len());
    if !rows.is_empty() {
        for (row, r) in rows.iter().zip(post_rows(&a, &rows, true).await?) {
            if r["outcome"] == "rejected" {
                rejected.push(Rejected {
                    line: row.line,
                    who: row.client_user_id.clone(),
                    reason: r["reason"].as_str().unwrap_or("rejected").to_string(),
                });
            } else {
                valid.push(row.clone());
            }
        }
    }
    rejected.sort_by_key(|r| r.line);
    let rejected_json = |rejected: &[Rejected]| -> Vec<Value> {
        rejected
            .iter()
            .map(|r| json!({"line": r.line, "client_user_id": r.who, "reason": r.reason}))
            .collect()
    };
    let print_rejected = |rejected: &[Rejected]| {
        if a.json {
            print(&json!({
                "results": [],
                "rejected": rejected_json(rejected),
                "summary": {"invited": 0, "in_progress": 0, "skipped": 0, "rejected": rejected.len()},
            }));
            return;
        }
        for r in rejected {
            let who = if r.who.is_empty() {
                String::new()
            } else {
                format!(" ({})", r.who)
            };
            println!("{}rejected{who}: {}", prefix(r.line), r.reason);
        }
    };
    if single && !rejected.is_empty() {
        bail!(Exit::new(EXIT_REJECTED, rejected[0].reason.clone()));
    }
    if a.strict && !rejected.is_empty() {
        print_rejected(&rejected);
        bail!(Exit::new(
            EXIT_REJECTED,
            format!(
                "{} rows rejected: nobody invited (--strict)",
                rejected.len()
            )
        ));
    }
    // Invite; the engine decides each row again (it may have changed since the dry run).
    let results = if valid.is_empty() {
        Vec::new()
    } else {
        post_rows(&a, &valid, false).await?
    };
    if a.strict && results.iter().any(|r| r["outcome"] == "rejected") {
        // The engine changed since the check (an enrollment went away): with `atomic`, a
        // request with a rejected row stored nothing.
        for (row, r) in valid.iter().zip(&results) {
            if r["outcome"] == "rejected" {
                rejected.push(Rejected {
                    line: row.line,
                    who: row.client_user_id.clone(),
                    reason: r["reason"].as_str().unwrap_or("rejected").to_string(),
                });
            }
        }
        rejected.sort_by_key(|r| r.line);
        print_rejected(&rejected);
        bail!(Exit::new(
            EXIT_REJECTED,
            "rows were rejected while inviting (the engine changed since the check): \
             the requests holding them invited nobody (--strict)"
        ));
    }
    let (mut new, mut in_progress, mut skipped) = (0, 0, 0);
    let mut followed: Vec<Value> = Vec::new();
    let mut rows_json: Vec<Value> = Vec::new();
    for (row, r) in valid.iter().zip(&results) {
        let reason = r["reason"].as_str().unwrap_or("").to_string();
        let inv = &r["invitation"];
        if a.json {
            let outcome = r["outcome"].as_str().unwrap_or("");
            match outcome {
                "new" => new += 1,
                "in_progress" => in_progress += 1,
                "skipped" => skipped += 1,
                _ => {
                    rejected.push(Rejected {
                        line: row.line,
                        who: row.client_user_id.clone(),
                        reason,
                    });
                    continue;
                }
            }
            let mut one = json!({"line": row.line, "client_user_id": row.client_user_id,
                "outcome": outcome, "reason": r["reason"]});
            if inv.is_object() {
                one["invitation"] = super::invitations::with_rfc3339(inv);
            }
            rows_json.push(one);
            continue;
        }
        match r["outcome"].as_str().unwrap_or("") {
            "new" => {
                new += 1;
                followed.push(inv.clone());
                if single && !a.wait {
                    print(inv);
                }
            }
            "in_progress" => {
                in_progress += 1;
                followed.push(inv.clone());
                if single && !a.wait {
                    print(inv);
                }
                if !single {
                    println!(
                        "{}skipped {}: already invited, {} (invitation {})",
                        prefix(row.line),
                        row.client_user_id,
                        inv["state"].as_str().unwrap_or("in progress"),
                        inv["id"].as_str().unwrap_or("-")
                    );
                } else {
                    eprintln!(
                        "already invited: invitation {} is {}",
                        inv["id"].as_str().unwrap_or("-"),
                        inv["state"].as_str().unwrap_or("in progress")
                    );
                }
            }
            "skipped" => {
                skipped += 1;
                println!(
                    "{}skipped {}: {reason}",
                    prefix(row.line),
                    row.client_user_id
                );
            }
            _ => rejected.push(Rejected {
                line: row.line,
                who: row.client_user_id.clone(),
                reason,
            }),
        }
    }
    rejected.sort_by_key(|r| r.line);
    if a.json {
        print(&json!({
            "results": rows_json,
            "rejected": rejected_json(&rejected),
            "summary": {"invited": new, "in_progress": in_progress, "skipped": skipped,
                "rejected": rejected.len()},
        }));
    } else {
        print_rejected(&rejected);
    }
    if !single && !a.json {
        println!(
            "{new} invited, {in_progress} already in progress, {skipped} skipped, {} rejected",
            rejected.len()
        );
    }
    let mut code = 0;
    if a.wait && !followed.is_empty() {
        code = wait(&a, followed).await?;
    }
    if code == 0 && !rejected.is_empty() {
        code = EXIT_REJECTED;
    }
    match code {
        0 => Ok(()),
        EXIT_FAILED => bail!(Exit::new(code, "some invitations failed or were retired")),
        EXIT_TIMED_OUT => bail!(Exit::new(code, "timed out waiting")),
        _ => bail!(Exit::new(code, format!("{} rows rejected", rejected.len()))),
    }
}

/// One followed invitation.
struct Followed {
    person: String,
    state: String,
}

const ENDED: [&str; 3] = ["associated", "failed", "retired"];

/// `registering 2, queued 3, associated 5` (the states that have any, in their order).
fn counts_text(followed: &HashMap<String, Followed>) -> String {
    let parts: Vec<String> = cloudvpp_store::engine::InvitationState::ALL
        .iter()
        .filter_map(|s| {
            let n = followed.values().filter(|f| f.state == s.as_str()).count();
            (n > 0).then(|| format!("{} {n}", s.as_str()))
        })
        .collect();
    parts.join(", ")
}

/// Follows `invitations` until each has ended or the timeout; returns the exit code.
async fn wait(a: &InviteArgs, invitations: Vec<Value>) -> Result<i32> {
    let mut followed: HashMap<String, Followed> = HashMap::new();
    let mut since = i64::MAX;
    for inv in &invitations {
        let Some(id) = inv["id"].as_str() else {
            continue;
        };
        since = since.min(inv["updated_at"].as_i64().unwrap_or(0));
        followed.insert(
            id.to_string(),
            Followed {
                person: inv["client_user_id"].as_str().unwrap_or("-").to_string(),
                state: inv["state"].as_str().unwrap_or("").to_string(),
            },
        );
    }
    let total = followed.len() as u64;
    let terminal = std::io::stdout().is_terminal();
    let bar = if terminal {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "[{bar:30}] {pos}/{len} ended  {msg}  {elapsed}",
            )
            .expect("template")
            .progress_chars("=> "),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let say = |line: String| {
        if terminal {
            bar.println(line);
        } else {
            println!("{line}");
        }
    };
    let started = Instant::now();
    let deadline = started + Duration::from_secs(a.timeout);
    let every = Duration::from_secs(a.progress_every);
    let mut last_line: Option<Instant> = None;
    loop {
        // Changes since the last look, with a margin for clocks of several instances.
        let (status, v) = call_any(
            &a.api,
            reqwest::Method::GET,
            &format!(
                "/api/v1/invitations?limit=100000&updated_since={}",
                since.saturating_sub(5_000).max(0)
            ),
            None,
        )
        .await?;
        if status != 200 {
            bail!("{}", api_error(status, &v));
        }
        for inv in v["invitations"].as_array().into_iter().flatten() {
            let Some(f) = inv["id"].as_str().and_then(|id| followed.get_mut(id)) else {
                continue;
            };
            since = since.max(inv["updated_at"].as_i64().unwrap_or(0));
            let state = inv["state"].as_str().unwrap_or("").to_string();
            if state != f.state && matches!(state.as_str(), "failed" | "retired") {
                say(format!(
                    "{state}: {} (invitation {}): {}",
                    f.person,
                    inv["id"].as_str().unwrap_or("-"),
                    inv["reason"].as_str().unwrap_or("no reason given")
                ));
            }
            f.state = state;
        }
        let ended = followed
            .values()
            .filter(|f| ENDED.contains(&f.state.as_str()))
            .count() as u64;
        let text = counts_text(&followed);
        bar.set_position(ended);
        bar.set_message(text.clone());
        let done = ended == total;
        let timed_out = !done && Instant::now() >= deadline;
        if !terminal && (done || timed_out || last_line.is_none_or(|t| t.elapsed() >= every)) {
            println!(
                "{} {ended}/{total} ended: {text}",
                rfc3339(chrono::Utc::now().timestamp_millis())
            );
            last_line = Some(Instant::now());
        }
        if done {
            bar.finish();
            let failed = followed
                .values()
                .filter(|f| f.state != "associated")
                .count();
            println!(
                "{} associated, {failed} failed or retired",
                total as usize - failed
            );
            return Ok(if failed == 0 { 0 } else { EXIT_FAILED });
        }
        if timed_out {
            bar.abandon();
            println!(
                "timed out after {}s: {ended} of {total} ended ({text})",
                a.timeout
            );
            return Ok(EXIT_TIMED_OUT);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
