//! `cloudvpp serve`: the Apps and Books service and the MDM service (with its engine) in
//! one process, on one database (SQLite by default), wired to each other. Its flags are
//! the two services' own groups ([`crate::flags`]), so each service flag exists here too.

use crate::flags::{AppsbooksOptions, ConnLimits, DbArg, MdmOptions, SuperviseArgs, TlsArgs};
use crate::server::{self, AppsbooksConfig, Bound, Listeners, ServerConfig};
use anyhow::Result;
use clap::Args;
use std::net::SocketAddr;

/// `cloudvpp serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// Where the Apps and Books service listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub appsbooks_listen: SocketAddr,
    /// Where the MDM service listens.
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub mdm_listen: SocketAddr,
    /// Base URL the Apps and Books service advertises in service config and invitation
    /// links; defaults to its listen address. (The MDM's is --public-url.)
    #[arg(long)]
    pub appsbooks_public_url: Option<String>,
    #[command(flatten)]
    pub db: DbArg,
    #[command(flatten)]
    pub mdm: MdmOptions,
    #[command(flatten)]
    pub appsbooks: AppsbooksOptions,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub conn: ConnLimits,
    #[command(flatten)]
    pub supervise: SuperviseArgs,
}

impl ServeArgs {
    /// The server this command line describes (its listeners are `--appsbooks-listen` and
    /// `--mdm-listen`, bound apart).
    pub fn into_config(self) -> ServerConfig {
        ServerConfig {
            database: self.db.database,
            appsbooks: Some(AppsbooksConfig {
                public_url: self.appsbooks_public_url,
                opts: self.appsbooks,
            }),
            mdm: Some(self.mdm),
            tls: self.tls,
            conn: self.conn,
            supervise: self.supervise,
            clock: std::sync::Arc::new(cloudvpp_store::clock::SystemClock),
        }
    }
}

/// Runs `cloudvpp serve`.
pub async fn run(mut a: ServeArgs) -> Result<()> {
    // The ports first: a busy port fails the command before any file is made or named.
    let tls = a.tls.pair().is_some();
    let (ab, mdm) = (
        Bound::bind(a.appsbooks_listen, tls)?,
        Bound::bind(a.mdm_listen, tls)?,
    );
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
    let ab_base = a
        .appsbooks_public_url
        .clone()
        .unwrap_or_else(|| ab.base.clone());
    let ab_base = ab_base.trim_end_matches('/').to_string();
    let (ab_listen, mdm_listen) = (ab.base.clone(), mdm.base.clone());
    let listeners = Listeners {
        appsbooks: Some(ab),
        mdm: Some(mdm),
    };
    let running = server::start(a.into_config(), listeners).await?;
    // Scripts and tests read the bound addresses from these lines.
    println!("appsbooks listening on {ab_listen}");
    println!("mdm listening on {mdm_listen}");
    println!(
        "Apps and Books base URL for `cloudvpp mdm location add --appsbooks-url`: {ab_base}/mdm/v2"
    );
    running.serve(server::shutdown_signal()).await
}
