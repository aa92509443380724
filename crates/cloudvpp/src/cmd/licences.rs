//! Licences through the engine's admin API: `cloudvpp mdm location apps ...` (the apps and
//! books a location gives every person once associated), `cloudvpp assign` and
//! `cloudvpp assignments`.

use crate::cmd::api::{call, print, ApiArgs};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::time::Duration;

/// The assignment states, as the API spells them.
const STATES: [&str; 5] = ["pending", "requested", "assigned", "waiting", "failed"];
/// People per `POST /api/v1/assignments`.
const CHUNK: usize = 1000;
/// People one `cloudvpp assign --csv` takes.
const MAX_CSV_PEOPLE: usize = 100_000;
/// Largest CSV read.
const MAX_CSV_BYTES: u64 = 16 << 20;

/// `cloudvpp mdm location apps ...`.
#[derive(Subcommand)]
pub enum AppsCommand {
    /// Add an app or book to a location's list: every person of the location gets a
    /// licence once associated (people already associated too).
    Add {
        #[command(flatten)]
        api: ApiArgs,
        /// Location ID (the only location when omitted).
        #[arg(long)]
        location: Option<i64>,
        /// The App Store ID.
        #[arg(long)]
        adam_id: String,
        /// Licence quality.
        #[arg(long, default_value = "STDQ", value_parser = ["STDQ", "PLUS"])]
        pricing: String,
    },
    /// List a location's apps and books.
    List {
        #[command(flatten)]
        api: ApiArgs,
        /// Location ID (the only location when omitted).
        #[arg(long)]
        location: Option<i64>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Take an app or book off a location's list (licences already assigned stay).
    Remove {
        #[command(flatten)]
        api: ApiArgs,
        /// Location ID (the only location when omitted).
        #[arg(long)]
        location: Option<i64>,
        /// The App Store ID.
        #[arg(long)]
        adam_id: String,
    },
}

/// `cloudvpp assign`.
#[derive(Args)]
pub struct AssignArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The App Store ID.
    #[arg(long)]
    adam_id: String,
    /// Licence quality.
    #[arg(long, default_value = "STDQ", value_parser = ["STDQ", "PLUS"])]
    pricing: String,
    /// One person, by clientUserId.
    #[arg(long, conflicts_with_all = ["email", "csv"])]
    client_user_id: Option<String>,
    /// One person, by the email they were invited with.
    #[arg(long, conflicts_with = "csv")]
    email: Option<String>,
    /// Many people: a CSV with a header naming a `client_user_id` or an `email` column
    /// (the `cloudvpp invite --csv` file works).
    #[arg(long)]
    csv: Option<std::path::PathBuf>,
    /// Location ID (needed when a person is invited in several).
    #[arg(long)]
    location: Option<i64>,
    /// Wait until every licence is assigned, waiting for licences, or failed.
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 3600)]
    timeout: u64,
    /// Print the assignments requested and the people refused as JSON (follow them with
    /// `cloudvpp assignments --json`).
    #[arg(long, conflicts_with = "wait")]
    json: bool,
}

/// `cloudvpp assignments`.
#[derive(Args)]
pub struct AssignmentsArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Only this state.
    #[arg(long, value_parser = STATES)]
    state: Option<String>,
    /// Only this app or book.
    #[arg(long)]
    adam_id: Option<String>,
    /// Only this location.
    #[arg(long)]
    location: Option<i64>,
    /// Only this person.
    #[arg(long)]
    client_user_id: Option<String>,
    /// At most this many (newest first).
    #[arg(long, default_value_t = 100)]
    limit: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `path?k=v&...`, the values percent-encoded.
fn with_query(path: &str, params: &[(&str, Option<String>)]) -> String {
    let mut url = reqwest::Url::parse("http://admin").expect("base URL");
    url.set_path(path);
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in params {
            if let Some(v) = v {
                q.append_pair(k, v);
            }
        }
    }
    match url.query() {
        Some(q) if !q.is_empty() => format!("{}?{q}", url.path()),
        _ => url.path().to_string(),
    }
}

/// `--location`, or the only location there is.
async fn location(api: &ApiArgs, given: Option<i64>) -> Result<i64> {
    if let Some(l) = given {
        return Ok(l);
    }
    let v = call(api, reqwest::Method::GET, "/api/v1/locations", None).await?;
    let ids: Vec<i64> = v["locations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["id"].as_i64())
        .collect();
    match ids.as_slice() {
        [only] => Ok(*only),
        [] => bail!("no location yet: add one with `cloudvpp mdm location add`"),
        _ => bail!("several locations: give --location"),
    }
}

/// Runs `cloudvpp mdm location apps ...`.
pub async fn apps(command: AppsCommand) -> Result<()> {
    match command {
        AppsCommand::Add {
            api,
            location: loc,
            adam_id,
            pricing,
        } => {
            let loc = location(&api, loc).await?;
            let body = json!({ "adam_id": adam_id, "pricing_param": pricing });
            let v = call(
                &api,
                reqwest::Method::POST,
                &format!("/api/v1/locations/{loc}/apps"),
                Some((body.to_string().into_bytes(), "application/json")),
            )
            .await?;
            println!(
                "location {loc}: {} {} added; {} people already associated get it now",
                v["adam_id"].as_str().unwrap_or(""),
                v["pricing_param"].as_str().unwrap_or(""),
                v["assignments_created"]
            );
        }
        AppsCommand::List {
            api,
            location: loc,
            json,
        } => {
            let loc = location(&api, loc).await?;
            let v = call(
                &api,
                reqwest::Method::GET,
                &format!("/api/v1/locations/{loc}/apps"),
                None,
            )
            .await?;
            if json {
                print(&v);
                return Ok(());
            }
            println!("{:<10} {:<20} PRICE", "LOCATION", "ADAM ID");
            for a in v["apps"].as_array().into_iter().flatten() {
                println!(
                    "{:<10} {:<20} {}",
                    a["location_id"].as_i64().unwrap_or_default(),
                    a["adam_id"].as_str().unwrap_or(""),
                    a["pricing_param"].as_str().unwrap_or("")
                );
            }
        }
        AppsCommand::Remove {
            api,
            location: loc,
            adam_id,
        } => {
            let loc = location(&api, loc).await?;
            let path = with_query(
                &format!("/api/v1/locations/{loc}/apps"),
                &[("adam_id", Some(adam_id.clone()))],
            );
            call(&api, reqwest::Method::DELETE, &path, None).await?;
            println!("location {loc}: {adam_id} removed (licences already assigned stay)");
        }
    }
    Ok(())
}

/// People of a CSV file: (clientUserIds, emails), one per record, the clientUserId when a
/// record has both. UTF-8, a BOM and CRLF line ends allowed; other columns are ignored, so
/// the `cloudvpp invite --csv` file works.
fn read_people(path: &std::path::Path) -> Result<(Vec<String>, Vec<String>)> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if size > MAX_CSV_BYTES {
        bail!("{} is over {} MiB", path.display(), MAX_CSV_BYTES >> 20);
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse_people(&bytes).with_context(|| path.display().to_string())
}

/// [`read_people`] of bytes.
fn parse_people(bytes: &[u8]) -> Result<(Vec<String>, Vec<String>)> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let header: Vec<String> = reader
        .headers()
        .context("reading the header")?
        .iter()
        .map(str::to_lowercase)
        .collect();
    let col = |name: &str| header.iter().position(|h| h == name);
    let (cuid, email) = (col("client_user_id"), col("email"));
    if cuid.is_none() && email.is_none() {
        bail!("the header needs a client_user_id or an email column");
    }
    let (mut ids, mut emails) = (Vec::new(), Vec::new());
    for record in reader.records() {
        let record = record.context("reading the file")?;
        let line = record.position().map_or(0, |p| p.line());
        let get = |i: Option<usize>| {
            i.and_then(|i| record.get(i))
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        match (get(cuid), get(email)) {
            (Some(id), _) => ids.push(id),
            (None, Some(e)) => emails.push(e),
            (None, None) if record.iter().all(str::is_empty) => continue,
            (None, None) => bail!("line {line}: no client_user_id or email"),
        }
        if ids.len() + emails.len() > MAX_CSV_PEOPLE {
            bail!("more than {MAX_CSV_PEOPLE} people in one file: split it");
        }
    }
    Ok((ids, emails))
}

/// Runs `cloudvpp assign`.
pub async fn assign(a: AssignArgs) -> Result<()> {
    let (ids, emails) = match (&a.csv, &a.client_user_id, &a.email) {
        (Some(path), _, _) => read_people(path)?,
        (None, Some(id), _) => (vec![id.clone()], Vec::new()),
        (None, None, Some(e)) => (Vec::new(), vec![e.clone()]),
        (None, None, None) => bail!("give --client-user-id, --email or --csv"),
    };
    let single = ids.len() + emails.len() == 1;
    let mut assigned: Vec<Value> = Vec::new();
    let mut refused: Vec<Value> = Vec::new();
    let people: Vec<(bool, String)> = ids
        .into_iter()
        .map(|i| (true, i))
        .chain(emails.into_iter().map(|e| (false, e)))
        .collect();
    for chunk in people.chunks(CHUNK) {
        let (ids, emails): (Vec<_>, Vec<_>) = chunk.iter().partition(|(is_id, _)| *is_id);
        let body = json!({
            "adam_id": a.adam_id, "pricing_param": a.pricing, "location_id": a.location,
            "client_user_ids": ids.iter().map(|(_, p)| p).collect::<Vec<_>>(),
            "emails": emails.iter().map(|(_, p)| p).collect::<Vec<_>>(),
        });
        let v = call(
            &a.api,
            reqwest::Method::POST,
            "/api/v1/assignments",
            Some((body.to_string().into_bytes(), "application/json")),
        )
        .await?;
        assigned.extend(v["assignments"].as_array().into_iter().flatten().cloned());
        refused.extend(v["refused"].as_array().into_iter().flatten().cloned());
    }
    if a.json {
        print(&json!({ "assignments": assigned, "refused": refused }));
        if !refused.is_empty() {
            bail!("{} people refused", refused.len());
        }
        return Ok(());
    }
    for r in &refused {
        eprintln!(
            "{}: {}",
            r["person"].as_str().unwrap_or(""),
            r["error"].as_str().unwrap_or("")
        );
    }
    if single && !a.wait {
        if let Some(one) = assigned.first() {
            print(one);
        }
    } else if !a.wait {
        eprintln!(
            "{} assignments of {} requested; follow them with `cloudvpp assignments --adam-id {}`",
            assigned.len(),
            a.adam_id,
            a.adam_id
        );
    }
    if a.wait && !assigned.is_empty() {
        wait(&a, &assigned).await?;
    }
    if !refused.is_empty() {
        bail!("{} people refused", refused.len());
    }
    Ok(())
}

/// Waits, with a progress bar, until every assignment of `mine` is assigned, waiting or failed.
async fn wait(a: &AssignArgs, mine: &[Value]) -> Result<()> {
    let wanted: std::collections::HashSet<String> = mine
        .iter()
        .filter_map(|v| v["id"].as_str().map(str::to_string))
        .collect();
    let bar = indicatif::ProgressBar::new(wanted.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:12} [{bar:40}] {pos}/{len} {elapsed}")
            .expect("template")
            .progress_chars("=> "),
    );
    bar.set_message("assigned");
    let deadline = std::time::Instant::now() + Duration::from_secs(a.timeout);
    let path = with_query(
        "/api/v1/assignments",
        &[
            ("adam_id", Some(a.adam_id.clone())),
            ("limit", Some("100000".into())),
        ],
    );
    loop {
        let v = call(&a.api, reqwest::Method::GET, &path, None).await?;
        let states: Vec<(&str, &Value)> = v["assignments"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|x| wanted.contains(x["id"].as_str().unwrap_or("")))
            .map(|x| (x["state"].as_str().unwrap_or(""), x))
            .collect();
        let count = |s: &str| states.iter().filter(|(st, _)| *st == s).count();
        let (done, waiting, failed) = (count("assigned"), count("waiting"), count("failed"));
        bar.set_position(done as u64);
        if done + waiting + failed >= wanted.len() {
            bar.finish();
            for (st, x) in states.iter().filter(|(st, _)| *st != "assigned") {
                eprintln!(
                    "{}: {st} ({})",
                    x["client_user_id"].as_str().unwrap_or(""),
                    x["reason"].as_str().unwrap_or("")
                );
            }
            println!("{done} assigned, {waiting} waiting for licences, {failed} failed");
            return if failed == 0 {
                Ok(())
            } else {
                bail!("{failed} assignments failed")
            };
        }
        if std::time::Instant::now() > deadline {
            bar.abandon();
            bail!("timed out: {done} of {} assigned", wanted.len());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Runs `cloudvpp assignments`.
pub async fn assignments(a: AssignmentsArgs) -> Result<()> {
    let path = with_query(
        "/api/v1/assignments",
        &[
            ("limit", Some(a.limit.to_string())),
            ("state", a.state.clone()),
            ("adam_id", a.adam_id.clone()),
            ("location_id", a.location.map(|l| l.to_string())),
            ("client_user_id", a.client_user_id.clone()),
        ],
    );
    let v = call(&a.api, reqwest::Method::GET, &path, None).await?;
    if a.json {
        print(&v);
        return Ok(());
    }
    let counts: Vec<String> = STATES
        .iter()
        .filter_map(|s| v["counts"][s].as_i64().map(|n| format!("{s} {n}")))
        .collect();
    println!("{}", counts.join(", "));
    println!(
        "{:<36} {:<24} {:<12} {:<10} REASON",
        "ID", "PERSON", "ADAM ID", "STATE"
    );
    for x in v["assignments"].as_array().into_iter().flatten() {
        let s = |k: &str| x[k].as_str().unwrap_or("-").to_string();
        println!(
            "{:<36} {:<24} {:<12} {:<10} {}",
            s("id"),
            s("client_user_id"),
            s("adam_id"),
            s("state"),
            x["reason"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn csv_people_by_client_user_id_or_email() {
        let text = "\u{feff}Client_User_Id,email,enrollment_id\r\n\
                    ann,ann@example.com,DEV1\r\n\
                    ,\"bob@example.com\",\r\n\
                    \r\n\
                    \"c, d\",,\r\n";
        let (ids, emails) = super::parse_people(text.as_bytes()).unwrap();
        assert_eq!(ids, ["ann", "c, d"]);
        assert_eq!(emails, ["bob@example.com"]);
        let emails_only = super::parse_people(b"email\npat@example.com\n").unwrap();
        assert_eq!(emails_only.1, ["pat@example.com"]);
        let err = super::parse_people(b"name\npat\n").unwrap_err();
        assert!(
            err.to_string().contains("client_user_id or an email"),
            "{err}"
        );
        let err = super::parse_people(b"client_user_id,email,enrollment_id\nann,a@b.c,\n,,DEV2\n")
            .unwrap_err();
        assert!(format!("{err:#}").contains("line 3"), "{err:#}");
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(
            super::with_query(
                "/api/v1/assignments",
                &[("client_user_id", Some("a b&c".into())), ("state", None)]
            ),
            "/api/v1/assignments?client_user_id=a+b%26c"
        );
        assert_eq!(
            super::with_query("/api/v1/assignments", &[("state", None)]),
            "/api/v1/assignments"
        );
    }
}
