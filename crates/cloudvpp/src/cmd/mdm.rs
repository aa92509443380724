//! `cloudvpp mdm ...`: the MDM service and a client of its admin API.

use crate::cmd::api::{call, print, ApiArgs};
use crate::flags::{ConnLimits, DbArg, MdmOptions, SuperviseArgs, TlsArgs};
use crate::server::{self, Bound, Listeners, ServerConfig};
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::net::SocketAddr;

/// `cloudvpp mdm ...`.
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
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
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
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Push enrollments.
    Push {
        #[command(flatten)]
        api: ApiArgs,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
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
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Enrollment ID.
        id: String,
    },
    /// List enrollments.
    Enrollments {
        #[command(flatten)]
        api: ApiArgs,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
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
    /// notifications and imports its users. The token is never printed or logged. Adding
    /// an organisation again changes nothing and names the location there; a renewed sToken
    /// of the same organisation replaces the old one.
    Add {
        #[command(flatten)]
        api: ApiArgs,
        /// The .vpptoken file.
        #[arg(long)]
        stoken_file: std::path::PathBuf,
        /// Apps and Books service base URL (default: Apple's).
        #[arg(long)]
        appsbooks_url: Option<String>,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List locations.
    List {
        #[command(flatten)]
        api: ApiArgs,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The apps and books a location gives every person once associated.
    Apps {
        #[command(subcommand)]
        command: crate::cmd::licences::AppsCommand,
    },
}

/// `cloudvpp mdm serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free one (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub db: DbArg,
    #[command(flatten)]
    pub opts: MdmOptions,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub conn: ConnLimits,
    #[command(flatten)]
    pub supervise: SuperviseArgs,
}

/// Runs `cloudvpp mdm ...`.
pub async fn run(cmd: MdmCommand) -> Result<()> {
    match cmd {
        MdmCommand::Serve(args) => serve(*args).await,
        MdmCommand::Enqueue {
            api,
            plist,
            no_push,
            ids,
            json,
        } => {
            let body =
                std::fs::read(&plist).with_context(|| format!("reading {}", plist.display()))?;
            let q = if no_push { "?nopush=1" } else { "" };
            let v = call(
                &api,
                reqwest::Method::PUT,
                &format!("/api/v1/enqueue/{}{q}", ids.join(",")),
                Some((body, "application/x-apple-plist")),
            )
            .await?;
            show(&v, json, print_queued);
            Ok(())
        }
        MdmCommand::Invite {
            api,
            url,
            no_push,
            ids,
            json,
        } => {
            let body = json!({ "enrollment_ids": ids, "invitation_url": url, "push": !no_push });
            let v = call(
                &api,
                reqwest::Method::POST,
                "/api/v1/invite-to-program",
                Some((body.to_string().into_bytes(), "application/json")),
            )
            .await?;
            show(&v, json, print_queued);
            Ok(())
        }
        MdmCommand::Push { api, ids, json } => {
            let v = call(
                &api,
                reqwest::Method::POST,
                &format!("/api/v1/push/{}", ids.join(",")),
                None,
            )
            .await?;
            show(&v, json, print_queued);
            Ok(())
        }
        MdmCommand::Commands {
            api,
            pending,
            id,
            json,
        } => {
            let q = if pending { "?pending=1" } else { "" };
            let v = call(
                &api,
                reqwest::Method::GET,
                &format!("/api/v1/enrollments/{id}/commands{q}"),
                None,
            )
            .await?;
            show(&v, json, print_commands);
            Ok(())
        }
        MdmCommand::Location {
            command:
                LocationCommand::Add {
                    api,
                    stoken_file,
                    appsbooks_url,
                    json,
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
            // Idempotent per organisation: the same sToken again names the location there.
            if v["token_replaced"] == true {
                eprintln!(
                    "location {} ({}) was there already: its sToken is replaced by this one",
                    v["id"],
                    v["name"].as_str().unwrap_or("-")
                );
            } else if v["existing"] == true {
                eprintln!(
                    "location {} ({}) was there already with this sToken: nothing changed",
                    v["id"],
                    v["name"].as_str().unwrap_or("-")
                );
            }
            if v["expiry_warning"] == true {
                eprintln!(
                    "warning: this sToken expires within 15 days (expires_at {}): renew it",
                    v["expires_at"]
                );
            }
            show(&v, json, |v| {
                let what = if v["token_replaced"] == true {
                    "token replaced"
                } else if v["existing"] == true {
                    "already there"
                } else {
                    "added"
                };
                println!(
                    "location {} {} (uId {}): {what}; token expires {}",
                    v["id"],
                    v["name"].as_str().unwrap_or("-"),
                    v["uid"].as_str().unwrap_or("-"),
                    when(&v["expires_at"], 1000)
                );
            });
            Ok(())
        }
        MdmCommand::Location {
            command: LocationCommand::List { api, json },
        } => {
            let v = call(&api, reqwest::Method::GET, "/api/v1/locations", None).await?;
            show(&v, json, print_locations);
            Ok(())
        }
        MdmCommand::Location {
            command: LocationCommand::Apps { command },
        } => crate::cmd::licences::apps(command).await,
        MdmCommand::Enrollments { api, json } => {
            let v = call(&api, reqwest::Method::GET, "/api/v1/enrollments", None).await?;
            show(&v, json, print_enrollments);
            Ok(())
        }
    }
}

/// The API's answer as JSON (`--json`), or as `table` prints it.
fn show(v: &Value, json: bool, table: impl Fn(&Value)) {
    if json {
        print(v);
    } else {
        table(v);
    }
}

/// A timestamp of the API (`unit` milliseconds per unit: 1 for ms, 1000 for seconds) in
/// RFC 3339, or `-`.
fn when(v: &Value, unit: i64) -> String {
    v.as_i64()
        .map(|t| super::invitations::rfc3339(t.saturating_mul(unit)))
        .unwrap_or_else(|| "-".to_string())
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// Per enrollment: queued or why not, and the push's outcome.
fn print_queued(v: &Value) {
    if let Some(uuid) = v["command_uuid"].as_str() {
        println!("command {uuid} ({})", text(&v["request_type"]));
    }
    println!("{:<40} {:<7} PUSH", "ENROLLMENT", "QUEUED");
    if let Some(status) = v["status"].as_object() {
        for (id, st) in status {
            let queued = match st["queued"].as_bool() {
                Some(true) => "yes",
                Some(false) => "no",
                None => "-",
            };
            let push = st["push_result"]
                .as_str()
                .map(|r| format!("sent {r}"))
                .or_else(|| st["push_error"].as_str().map(|e| format!("failed: {e}")))
                .or_else(|| st["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| "-".to_string());
            println!("{id:<40} {queued:<7} {push}");
        }
    }
}

fn print_commands(v: &Value) {
    println!(
        "{:<25} {:<37} {:<18} {:<12} RESULT",
        "CREATED", "COMMAND", "REQUEST TYPE", "STATUS"
    );
    for c in v["commands"].as_array().into_iter().flatten() {
        println!(
            "{:<25} {:<37} {:<18} {:<12} {}",
            when(&c["created_at"], 1),
            text(&c["command_uuid"]),
            text(&c["request_type"]),
            text(&c["status"]),
            c["invitation_result"].as_str().unwrap_or("")
        );
    }
}

fn print_enrollments(v: &Value) {
    println!(
        "{:<40} {:<7} {:<8} {:<8} LAST SEEN",
        "ID", "TYPE", "PLATFORM", "ENABLED"
    );
    for e in v["enrollments"].as_array().into_iter().flatten() {
        println!(
            "{:<40} {:<7} {:<8} {:<8} {}",
            text(&e["id"]),
            text(&e["type"]),
            text(&e["platform"]),
            if e["enabled"] == true { "yes" } else { "no" },
            when(&e["last_seen_at"], 1)
        );
    }
}

fn print_locations(v: &Value) {
    println!(
        "{:<4} {:<18} {:<25} {:>9} {:<25} NAME",
        "ID", "UID", "TOKEN EXPIRES", "MIRRORED", "LAST SYNC"
    );
    for l in v["locations"].as_array().into_iter().flatten() {
        let mut expires = when(&l["expires_at"], 1000);
        if l["expiry_warning"] == true {
            expires.push('!');
        }
        println!(
            "{:<4} {:<18} {:<25} {:>9} {:<25} {}",
            l["id"],
            text(&l["uid"]),
            expires,
            l["mirrored_users"],
            when(&l["last_sync_at"], 1),
            text(&l["name"])
        );
    }
}

impl ServeArgs {
    /// The server this command line describes (its listener is `--listen`, bound apart).
    pub fn into_config(self) -> ServerConfig {
        ServerConfig {
            database: self.db.database,
            appsbooks: None,
            mdm: Some(self.opts),
            tls: self.tls,
            conn: self.conn,
            supervise: self.supervise,
            clock: std::sync::Arc::new(cloudvpp_store::clock::SystemClock),
        }
    }
}

async fn serve(args: ServeArgs) -> Result<()> {
    let bound = Bound::bind(args.listen, args.tls.pair().is_some())?;
    let base = bound.base.clone();
    let listeners = Listeners {
        appsbooks: None,
        mdm: Some(bound),
    };
    let running = server::start(args.into_config(), listeners).await?;
    println!("mdm listening on {base}");
    running.serve(server::shutdown_signal()).await
}
