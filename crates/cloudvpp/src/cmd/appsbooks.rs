//! `cloudvpp appsbooks ...`: the Apps and Books service, its organisations and limits.

use crate::flags::{parse_limit, AppsbooksOptions, ConnLimits, DbArg, SuperviseArgs, TlsArgs};
use crate::server::{self, AppsbooksConfig, Bound, Listeners, ServerConfig};
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use cloudvpp_appsbooks::ids;
use cloudvpp_store::AppsBooksStore;
use std::net::SocketAddr;
use std::sync::Arc;

/// `cloudvpp appsbooks ...`.
#[derive(Subcommand)]
pub enum AppsbooksCommand {
    /// Serve /mdm/v2 and the invitation page.
    Serve(Box<ServeArgs>),
    /// Organisations and their sTokens.
    Org {
        #[command(subcommand)]
        command: OrgCommand,
    },
    /// Service limits advertised in service config and enforced (maxUsers, maxRequestPerSecond, ...).
    Limits {
        #[command(subcommand)]
        command: LimitsCommand,
    },
    /// Apps and books an organisation owns licences of: purchases and refunds.
    Assets {
        #[command(subcommand)]
        command: AssetsCommand,
    },
}

#[derive(Subcommand)]
pub enum AssetsCommand {
    /// Record a purchase of licences (a refund with a negative count); sends ASSET_COUNT to
    /// the organisation's MDM when it subscribes. Prints the asset as it now is.
    Add {
        #[command(flatten)]
        db: DbArg,
        /// The organisation's uId or name.
        #[arg(long)]
        org: String,
        /// The App Store ID (a few well-known ones come with names and platforms).
        #[arg(long)]
        adam_id: String,
        /// Licences bought; negative: refunded (only free licences can be).
        #[arg(long, allow_hyphen_values = true)]
        count: i64,
        /// Licence quality.
        #[arg(long, default_value = "STDQ", value_parser = ["STDQ", "PLUS"])]
        pricing: String,
        /// App or Book; default: the catalogue's, else App.
        #[arg(long, value_parser = ["App", "Book"])]
        product_type: Option<String>,
        /// Platforms, comma-separated (iOS, macOS, tvOS, watchOS, visionOS).
        #[arg(long, value_delimiter = ',')]
        platforms: Option<Vec<String>>,
        /// Default: true for apps, false for books.
        #[arg(long)]
        device_assignable: Option<bool>,
        /// Default: true for apps, false for books.
        #[arg(long)]
        revocable: Option<bool>,
        /// Print the asset as JSON (Apple's field names, plus `name`).
        #[arg(long)]
        json: bool,
    },
    /// List an organisation's assets with their counts.
    List {
        #[command(flatten)]
        db: DbArg,
        /// The organisation's uId or name.
        #[arg(long)]
        org: String,
        /// Print a JSON array (Apple's field names, plus `name`).
        #[arg(long)]
        json: bool,
    },
}

/// `cloudvpp appsbooks serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free one (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Base URL advertised in service config and invitation links; defaults to the listen address.
    #[arg(long)]
    pub public_url: Option<String>,
    #[command(flatten)]
    pub db: DbArg,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub opts: AppsbooksOptions,
    #[command(flatten)]
    pub conn: ConnLimits,
    #[command(flatten)]
    pub supervise: SuperviseArgs,
}

#[derive(Subcommand)]
pub enum OrgCommand {
    /// Create an organisation; prints its sToken alone on stdout.
    Create {
        #[command(flatten)]
        db: DbArg,
        /// Organisation (location) name.
        #[arg(long)]
        name: String,
        /// Token expiry, RFC 3339; default one year from now.
        #[arg(long)]
        expires: Option<String>,
        #[command(flatten)]
        profile: ProfileArgs,
    },
    /// Change what client config reports of an organisation.
    Set {
        #[command(flatten)]
        db: DbArg,
        /// The organisation's uId or name.
        #[arg(long)]
        org: String,
        #[command(flatten)]
        profile: ProfileArgs,
    },
    /// List organisations.
    List {
        #[command(flatten)]
        db: DbArg,
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Issue a new sToken; the old one then answers 9625. Prints the new token.
    Renew {
        #[command(flatten)]
        db: DbArg,
        /// The organisation's uId or name.
        #[arg(long)]
        org: String,
        /// Token expiry, RFC 3339; default one year from now.
        #[arg(long)]
        expires: Option<String>,
    },
}

/// What GET client/config reports of an organisation.
#[derive(Args)]
pub struct ProfileArgs {
    /// `countryISO2ACode`: ISO 3166-1 alpha-2 (GB, US, ...); default US.
    #[arg(long, value_parser = parse_country)]
    pub country: Option<String>,
    /// `defaultPlatform`, the platform of content metadata lookups; default volumestore.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(cloudvpp_appsbooks::config::PLATFORMS))]
    pub default_platform: Option<String>,
}

fn parse_country(s: &str) -> Result<String, String> {
    cloudvpp_appsbooks::config::country_code(s)
        .ok_or_else(|| format!("{s:?} is not an ISO 3166-1 alpha-2 code (two letters, such as GB)"))
}

impl ProfileArgs {
    async fn apply(&self, store: &dyn AppsBooksStore, org: cloudvpp_store::OrgId) -> Result<()> {
        if self.country.is_some() || self.default_platform.is_some() {
            store
                .set_org_profile(
                    org,
                    self.country.as_deref(),
                    self.default_platform.as_deref(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(Subcommand)]
pub enum LimitsCommand {
    /// Show every limit.
    Show {
        #[command(flatten)]
        db: DbArg,
        /// Print a JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Set limits, NAME=VALUE ...; running services pick them up within a second.
    Set {
        #[command(flatten)]
        db: DbArg,
        /// NAME=VALUE pairs.
        #[arg(required = true, value_parser = parse_limit)]
        limits: Vec<(String, i64)>,
    },
}

async fn open_store(url: &str) -> Result<Arc<dyn AppsBooksStore>> {
    Ok(server::open_db(url).await?)
}

/// The store of a command that needs data already there (it never creates a database).
async fn open_existing(url: &str) -> Result<Arc<dyn AppsBooksStore>> {
    Ok(server::open_existing_db(url).await?)
}

fn expiry(expires: Option<&str>) -> Result<i64> {
    match expires {
        None => Ok(chrono::Utc::now().timestamp() + 365 * 24 * 3600),
        Some(s) => Ok(chrono::DateTime::parse_from_rfc3339(s)
            .with_context(|| format!("--expires {s:?} is not RFC 3339"))?
            .timestamp()),
    }
}

/// Runs `cloudvpp appsbooks ...`.
pub async fn run(command: AppsbooksCommand) -> Result<()> {
    match command {
        AppsbooksCommand::Serve(args) => serve(*args).await,
        AppsbooksCommand::Org { command } => org(command).await,
        AppsbooksCommand::Limits { command } => limits(command).await,
        AppsbooksCommand::Assets { command } => assets(command).await,
    }
}

async fn find_org(store: &dyn AppsBooksStore, org: &str) -> Result<cloudvpp_store::Org> {
    store
        .find_org(org)
        .await?
        .with_context(|| format!("no organisation {org:?}"))
}

fn asset_line(a: &cloudvpp_store::AssetRecord) -> String {
    format!(
        "{:<12} {:<6} {:<5} {:>8} {:>9} {:>10} {:<22} {}",
        a.adam_id,
        a.pricing_param.as_str(),
        a.product_type.as_str(),
        a.total_count,
        a.assigned_count,
        a.available_count(),
        a.supported_platforms.join(","),
        cloudvpp_appsbooks::assets::catalogue_name(&a.adam_id).unwrap_or("")
    )
}

/// An asset as `--json` prints it: Apple's `ResponseAsset` and the catalogue's name.
fn asset_json(a: &cloudvpp_store::AssetRecord) -> serde_json::Value {
    let mut v = serde_json::to_value(a.to_response()).expect("serialisable");
    v["name"] = serde_json::json!(cloudvpp_appsbooks::assets::catalogue_name(&a.adam_id));
    v
}

const ASSET_HEADER: &str =
    "ADAM ID      PRICE  TYPE     TOTAL  ASSIGNED  AVAILABLE PLATFORMS              NAME";

async fn assets(command: AssetsCommand) -> Result<()> {
    use cloudvpp_abwire::assets::{PricingParam, ProductType};
    match command {
        AssetsCommand::Add {
            db,
            org,
            adam_id,
            count,
            pricing,
            product_type,
            platforms,
            device_assignable,
            revocable,
            json,
        } => {
            let store = open_existing(&db.database).await?;
            let o = find_org(&*store, &org).await?;
            let purchase = cloudvpp_appsbooks::assets::Purchase {
                adam_id,
                count,
                pricing_param: PricingParam::parse(&pricing).context("--pricing")?,
                product_type: product_type.as_deref().and_then(ProductType::parse),
                platforms,
                device_assignable,
                revocable,
            };
            let now = cloudvpp_store::clock::Clock::now_ms(&cloudvpp_store::clock::SystemClock);
            let asset =
                cloudvpp_appsbooks::assets::record_purchase(&*store, &o, &purchase, now).await?;
            if json {
                println!("{}", asset_json(&asset));
            } else {
                println!("{ASSET_HEADER}");
                println!("{}", asset_line(&asset));
            }
        }
        AssetsCommand::List { db, org, json } => {
            let store = open_existing(&db.database).await?;
            let o = find_org(&*store, &org).await?;
            let assets = store.list_assets(o.id).await?;
            if json {
                let list: Vec<_> = assets.iter().map(asset_json).collect();
                println!("{}", serde_json::Value::Array(list));
            } else {
                println!("{ASSET_HEADER}");
                for a in &assets {
                    println!("{}", asset_line(a));
                }
            }
        }
    }
    Ok(())
}

async fn org(command: OrgCommand) -> Result<()> {
    match command {
        OrgCommand::Create {
            db,
            name,
            expires,
            profile,
        } => {
            let store = open_store(&db.database).await?;
            let exp = expiry(expires.as_deref())?;
            let stoken = ids::new_stoken(&name, exp);
            let o = store
                .create_org(&ids::new_uid(), &name, &ids::new_secret(), &stoken, exp)
                .await?;
            profile.apply(store.as_ref(), o.id).await?;
            println!("{stoken}");
        }
        OrgCommand::Set { db, org, profile } => {
            let store = open_store(&db.database).await?;
            let o = store
                .find_org(&org)
                .await?
                .with_context(|| format!("no organisation {org:?}"))?;
            profile.apply(store.as_ref(), o.id).await?;
        }
        OrgCommand::List { db, json } => {
            let store = open_existing(&db.database).await?;
            let mut rows = Vec::new();
            for o in store.list_orgs().await? {
                let exp = store
                    .current_token_expiry(o.id)
                    .await?
                    .map(|secs| super::invitations::rfc3339(secs.saturating_mul(1000)));
                rows.push((o, exp));
            }
            if json {
                let list: Vec<_> = rows
                    .iter()
                    .map(|(o, exp)| {
                        serde_json::json!({"uId": o.uid, "name": o.name, "tokenExpires": exp,
                            "users": o.user_count, "country": o.country,
                            "defaultPlatform": o.default_platform})
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(list));
            } else {
                println!("{:<18} {:<26} {:>10} NAME", "UID", "TOKEN EXPIRES", "USERS");
                for (o, exp) in &rows {
                    let exp = exp.as_deref().unwrap_or("");
                    println!("{:<18} {:<26} {:>10} {}", o.uid, exp, o.user_count, o.name);
                }
            }
        }
        OrgCommand::Renew { db, org, expires } => {
            let store = open_existing(&db.database).await?;
            let o = store
                .find_org(&org)
                .await?
                .with_context(|| format!("no organisation {org:?}"))?;
            let exp = expiry(expires.as_deref())?;
            let stoken = ids::new_stoken(&o.name, exp);
            store.renew_token(o.id, &stoken, exp).await?;
            println!("{stoken}");
        }
    }
    Ok(())
}

async fn limits(command: LimitsCommand) -> Result<()> {
    match command {
        LimitsCommand::Show { db, json } => {
            let store = open_existing(&db.database).await?;
            let limits = cloudvpp_appsbooks::limits::Limits::new(store);
            let all = limits.all().await;
            if json {
                println!("{}", serde_json::json!(all));
            } else {
                for (k, v) in all {
                    println!("{k}={v}");
                }
            }
        }
        LimitsCommand::Set { db, limits } => {
            let store = open_store(&db.database).await?;
            for (k, v) in limits {
                store.set_limit(&k, v).await?;
            }
        }
    }
    Ok(())
}

impl ServeArgs {
    /// The server this command line describes (its listener is `--listen`, bound apart).
    pub fn into_config(self) -> ServerConfig {
        ServerConfig {
            database: self.db.database,
            appsbooks: Some(AppsbooksConfig {
                public_url: self.public_url,
                opts: self.opts,
            }),
            mdm: None,
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
        appsbooks: Some(bound),
        mdm: None,
    };
    let running = server::start(args.into_config(), listeners).await?;
    // Scripts and tests read the bound address from this line.
    println!("appsbooks listening on {base}");
    running.serve(server::shutdown_signal()).await
}
