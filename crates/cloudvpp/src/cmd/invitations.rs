//! `cloudvpp invitations`: list invitations (`cloudvpp invitations`), send them again
//! (`resend`) and retire them (`retire`), through the engine's admin API.

use crate::cmd::api::{print, ApiArgs};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use cloudvpp_store::engine::InvitationState;
use futures::StreamExt;
use serde_json::{json, Value};

/// An invitation state on the command line: only the real ones parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StateArg {
    /// Not yet a registered user at Apps and Books.
    Registering,
    /// Registered; the invitation link is ready.
    Registered,
    /// InviteToProgram waits for the device.
    Queued,
    /// The device showed the invitation.
    Delivered,
    /// The person accepted.
    Associated,
    /// Ended without association (see the reason).
    Failed,
    /// Retired through the engine.
    Retired,
}

impl StateArg {
    /// The engine's state.
    pub fn state(self) -> InvitationState {
        match self {
            StateArg::Registering => InvitationState::Registering,
            StateArg::Registered => InvitationState::Registered,
            StateArg::Queued => InvitationState::Queued,
            StateArg::Delivered => InvitationState::Delivered,
            StateArg::Associated => InvitationState::Associated,
            StateArg::Failed => InvitationState::Failed,
            StateArg::Retired => InvitationState::Retired,
        }
    }
}

/// `cloudvpp invitations [resend|retire]`.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct InvitationsArgs {
    /// Without a subcommand: list invitations.
    #[command(subcommand)]
    command: Option<InvitationsCommand>,
    #[command(flatten)]
    list: ListArgs,
}

/// What `cloudvpp invitations` does besides listing.
#[derive(Subcommand)]
pub enum InvitationsCommand {
    /// Send invitations again (a new InviteToProgram, or registration started over), by ID
    /// or every one in a state; one invitation may take a corrected --email or --enrollment.
    Resend(ResendArgs),
    /// Retire invitations by ID: the person is retired at Apps and Books and the invitation
    /// ends `retired` (a later `invite` skips them unless --reinvite-retired).
    Retire(RetireArgs),
}

/// The listing.
#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Only this state.
    #[arg(long, value_enum)]
    state: Option<StateArg>,
    /// Only this person.
    #[arg(long)]
    client_user_id: Option<String>,
    /// Only this location.
    #[arg(long)]
    location: Option<i64>,
    /// At most this many, newest first (the counts and the total cover every match).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    limit: u64,
    /// Print JSON (timestamps RFC 3339).
    #[arg(long)]
    json: bool,
}

/// `cloudvpp invitations resend`.
#[derive(Args)]
pub struct ResendArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Every invitation in this state (e.g. failed), instead of IDs.
    #[arg(
        long,
        value_enum,
        conflicts_with = "ids",
        required_unless_present = "ids"
    )]
    state: Option<StateArg>,
    /// With --state: only this location.
    #[arg(long, requires = "state")]
    location: Option<i64>,
    /// A corrected email (one invitation only).
    #[arg(long, conflicts_with = "state")]
    email: Option<String>,
    /// Another enrollment to send InviteToProgram to (one invitation only).
    #[arg(long, conflicts_with = "state")]
    enrollment: Option<String>,
    /// Invitation IDs.
    ids: Vec<String>,
    /// Print the outcome per invitation as JSON.
    #[arg(long)]
    json: bool,
}

/// `cloudvpp invitations retire`.
#[derive(Args)]
pub struct RetireArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Invitation IDs.
    #[arg(required = true)]
    ids: Vec<String>,
    /// Print the outcome per invitation as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `cloudvpp invitations ...`.
pub async fn run(a: InvitationsArgs) -> Result<()> {
    match a.command {
        None => list(a.list).await,
        Some(InvitationsCommand::Resend(r)) => resend(r).await,
        Some(InvitationsCommand::Retire(r)) => retire(r).await,
    }
}

/// Calls the admin API and returns the status and the JSON body (Null when there is none),
/// whatever the status: the caller decides what an answer means.
pub async fn call_any(
    api: &ApiArgs,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Value)> {
    let mut req = reqwest::Client::new()
        .request(
            method,
            format!("{}{}", api.server.trim_end_matches('/'), path),
        )
        .bearer_auth(&api.api_key);
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("calling {}", api.server))?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await.unwrap_or(Value::Null)))
}

/// The error text of an admin API answer.
pub fn api_error(status: u16, v: &Value) -> String {
    match v.get("error").and_then(Value::as_str) {
        Some(e) => format!("{status}: {e}"),
        None => format!("{status}: {v}"),
    }
}

/// Unix milliseconds as RFC 3339 (UTC, milliseconds).
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// An invitation as the CLI shows it: the API's, with RFC 3339 timestamps.
pub fn with_rfc3339(inv: &Value) -> Value {
    let mut v = inv.clone();
    for k in ["created_at", "updated_at"] {
        if let Some(ms) = inv[k].as_i64() {
            v[k] = json!(rfc3339(ms));
        }
    }
    v
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn list(a: ListArgs) -> Result<()> {
    let mut path = format!("/api/v1/invitations?limit={}", a.limit);
    if let Some(s) = a.state {
        path.push_str(&format!("&state={}", s.state().as_str()));
    }
    if let Some(c) = &a.client_user_id {
        path.push_str(&format!("&client_user_id={}", encode(c)));
    }
    if let Some(l) = a.location {
        path.push_str(&format!("&location_id={l}"));
    }
    let (status, v) = call_any(&a.api, reqwest::Method::GET, &path, None).await?;
    if status != 200 {
        bail!("{}", api_error(status, &v));
    }
    let mut invitations: Vec<Value> = v["invitations"].as_array().cloned().unwrap_or_default();
    // Newest first; the same instant by ID, so that the order never changes between runs.
    invitations.sort_by(|x, y| {
        (y["created_at"].as_i64(), x["id"].as_str())
            .cmp(&(x["created_at"].as_i64(), y["id"].as_str()))
    });
    let total = v["total"].as_i64().unwrap_or(invitations.len() as i64);
    let shown = invitations.len() as i64;
    if a.json {
        print(&json!({
            "total": total,
            "shown": shown,
            "counts": v["counts"],
            "invitations": invitations.iter().map(with_rfc3339).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    let counts: Vec<String> = InvitationState::ALL
        .iter()
        .map(|s| {
            format!(
                "{} {}",
                s.as_str(),
                v["counts"][s.as_str()].as_i64().unwrap_or(0)
            )
        })
        .collect();
    println!("{}", counts.join(", "));
    if shown < total {
        println!("showing {shown} of {total}, newest first (--limit to see more)");
    }
    let header = [
        "CREATED", "ID", "PERSON", "EMAIL", "STATE", "CHANNEL", "LINK", "REASON",
    ];
    let rows: Vec<[String; 8]> = invitations
        .iter()
        .map(|i| {
            let s = |k: &str| i[k].as_str().unwrap_or("-").to_string();
            [
                i["created_at"].as_i64().map_or("-".into(), rfc3339),
                s("id"),
                s("client_user_id"),
                s("email"),
                s("state"),
                s("channel"),
                s("invitation_url"),
                i["reason"].as_str().unwrap_or("").to_string(),
            ]
        })
        .collect();
    print_table(&header, &rows);
    Ok(())
}

/// Prints columns padded to their widest cell (the last one unpadded).
fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    let mut width = header.map(|h| h.chars().count());
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (n, c) in cells.iter().enumerate() {
            if n + 1 == N {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  ", w = width[n]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// Runs one admin call per ID, 8 at a time; prints one line per ID (with `json`, one JSON
/// document at the end: each ID's invitation or why it was refused, and the counts) and
/// returns how many were refused.
async fn each(
    api: &ApiArgs,
    ids: Vec<String>,
    action: &str,
    body: Option<Value>,
    json: bool,
) -> Result<usize> {
    let calls = futures::stream::iter(ids.into_iter().map(|id| {
        let body = body.clone();
        async move {
            let r = call_any(
                api,
                reqwest::Method::POST,
                &format!("/api/v1/invitations/{}/{action}", encode(&id)),
                body.as_ref(),
            )
            .await;
            (id, r)
        }
    }))
    .buffered(8);
    let mut calls = std::pin::pin!(calls);
    let mut refused = 0;
    let mut results = Vec::new();
    while let Some((id, r)) = calls.next().await {
        match r? {
            (200, v) if json => {
                results.push(json!({"id": id, "ok": true, "invitation": with_rfc3339(&v)}))
            }
            (200, v) => println!(
                "{id}  {}  {}{}",
                v["client_user_id"].as_str().unwrap_or("-"),
                v["state"].as_str().unwrap_or("-"),
                v["reason"]
                    .as_str()
                    .map(|r| format!("  ({r})"))
                    .unwrap_or_default()
            ),
            (status, v) => {
                refused += 1;
                if json {
                    results.push(json!({"id": id, "ok": false, "error": api_error(status, &v)}));
                } else {
                    println!("{id}  refused: {}", api_error(status, &v));
                }
            }
        }
    }
    if json {
        let done = results.len() - refused;
        print(&json!({ "results": results, "done": done, "refused": refused }));
    }
    Ok(refused)
}

async fn resend(a: ResendArgs) -> Result<()> {
    let ids = match a.state {
        Some(state) => {
            let mut path = format!(
                "/api/v1/invitations?limit=100000&state={}",
                state.state().as_str()
            );
            if let Some(l) = a.location {
                path.push_str(&format!("&location_id={l}"));
            }
            let (status, v) = call_any(&a.api, reqwest::Method::GET, &path, None).await?;
            if status != 200 {
                bail!("{}", api_error(status, &v));
            }
            if v["total"].as_i64().unwrap_or(0) > 100_000 {
                eprintln!("more than 100000 invitations are {}: resending the newest 100000; run again for the rest", state.state());
            }
            v["invitations"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["id"].as_str().map(str::to_string))
                .collect()
        }
        None => a.ids,
    };
    if (a.email.is_some() || a.enrollment.is_some()) && ids.len() != 1 {
        bail!("--email and --enrollment correct one invitation: give exactly one ID");
    }
    if ids.is_empty() {
        if a.json {
            print(&json!({ "results": [], "done": 0, "refused": 0 }));
        } else {
            println!("nothing to resend");
        }
        return Ok(());
    }
    let body = (a.email.is_some() || a.enrollment.is_some())
        .then(|| json!({ "email": a.email, "enrollment_id": a.enrollment }));
    let n = ids.len();
    let refused = each(&a.api, ids, "resend", body, a.json).await?;
    if !a.json {
        println!("{} resent, {refused} refused", n - refused);
    }
    if refused > 0 {
        bail!("{refused} of {n} invitations were not resent");
    }
    Ok(())
}

async fn retire(a: RetireArgs) -> Result<()> {
    let n = a.ids.len();
    let refused = each(&a.api, a.ids, "retire", None, a.json).await?;
    if !a.json {
        println!("{} retired, {refused} refused", n - refused);
    }
    if refused > 0 {
        bail!("{refused} of {n} invitations were not retired");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_flag_takes_exactly_the_engines_states() {
        let names: Vec<String> = StateArg::value_variants()
            .iter()
            .map(|v| v.to_possible_value().unwrap().get_name().to_string())
            .collect();
        let states: Vec<&str> = InvitationState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(names, states);
        for v in StateArg::value_variants() {
            assert_eq!(
                v.to_possible_value().unwrap().get_name(),
                v.state().as_str()
            );
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
