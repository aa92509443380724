//! `cloudvpp mdm ...`: the MDM service and a client of its admin API.

use crate::cmd::api::{call, print, ApiArgs};
use crate::flags::{ConnLimits, DbArg, MdmOptions, SuperviseArgs, TlsArgs};
use crate::server::{self, Bound, Listeners, ServerConfig};
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;
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
    },
    /// Push enrollments.
    Push {
        #[command(flatten)]
        api: ApiArgs,
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
        /// Enrollment ID.
        id: String,
    },
    /// List enrollments.
    Enrollments {
        #[command(flatten)]
        api: ApiArgs,
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
    },
    /// List locations.
    List {
        #[command(flatten)]
        api: ApiArgs,
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
        } => {
            let body =
                std::fs::read(&plist).with_context(|| format!("reading {}", plist.display()))?;
            let q = if no_push { "?nopush=1" } else { "" };
            print(
                &call(
                    &api,
                    reqwest::Method::PUT,
                    &format!("/api/v1/enqueue/{}{q}", ids.join(",")),
                    Some((body, "application/x-apple-plist")),
                )
                .await?,
            );
            Ok(())
        }
        MdmCommand::Invite {
            api,
            url,
            no_push,
            ids,
        } => {
            let body = json!({ "enrollment_ids": ids, "invitation_url": url, "push": !no_push });
            print(
                &call(
                    &api,
                    reqwest::Method::POST,
                    "/api/v1/invite-to-program",
                    Some((body.to_string().into_bytes(), "application/json")),
                )
                .await?,
            );
            Ok(())
        }
        MdmCommand::Push { api, ids } => {
            print(
                &call(
                    &api,
                    reqwest::Method::POST,
                    &format!("/api/v1/push/{}", ids.join(",")),
                    None,
                )
                .await?,
            );
            Ok(())
        }
        MdmCommand::Commands { api, pending, id } => {
            let q = if pending { "?pending=1" } else { "" };
            print(
                &call(
                    &api,
                    reqwest::Method::GET,
                    &format!("/api/v1/enrollments/{id}/commands{q}"),
                    None,
                )
                .await?,
            );
            Ok(())
        }
        MdmCommand::Location {
            command:
                LocationCommand::Add {
                    api,
                    stoken_file,
                    appsbooks_url,
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
            print(&v);
            Ok(())
        }
        MdmCommand::Location {
            command: LocationCommand::List { api },
        } => {
            print(&call(&api, reqwest::Method::GET, "/api/v1/locations", None).await?);
            Ok(())
        }
        MdmCommand::Location {
            command: LocationCommand::Apps { command },
        } => crate::cmd::licences::apps(command).await,
        MdmCommand::Enrollments { api } => {
            print(&call(&api, reqwest::Method::GET, "/api/v1/enrollments", None).await?);
            Ok(())
        }
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
