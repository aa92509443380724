//! The deployment files say what the binary can do: the systemd unit's `ExecStart` and the
//! Dockerfile's `ENTRYPOINT` + `CMD` are command lines of the real CLI, and each, run
//! here with its paths moved into a temporary directory and its ports onto free loopback
//! ones, starts both services with the settings it names. The unit's sandbox leaves the
//! process its state directory to write, and the image runs as an unprivileged user.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
const BIN: &str = env!("CARGO_BIN_EXE_cloudvpp");

fn read(rel: &str) -> String {
    std::fs::read_to_string(format!("{ROOT}/{rel}")).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// `Key=value` lines of a unit file by key (a key may repeat), comments and sections aside.
fn unit_keys(text: &str) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        let (k, v) = line.split_once('=').expect("Key=value");
        out.entry(k.to_string()).or_default().push(v.to_string());
    }
    out
}

/// The command line, parsed by the CLI itself; panics with clap's message if it does not.
fn parse(args: &[String]) -> cloudvpp::Cli {
    let argv = std::iter::once("cloudvpp".to_string()).chain(args.iter().cloned());
    <cloudvpp::Cli as clap::Parser>::try_parse_from(argv)
        .unwrap_or_else(|e| panic!("`cloudvpp {}` does not parse:\n{e}", args.join(" ")))
}

/// The value after `flag` in `args`.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// A throwaway device CA in `dir`, made by the CLI.
fn device_ca(dir: &Path) -> String {
    let ca = dir.join("device-ca.pem");
    let out = Command::new(BIN)
        .args(["simulate", "pki", "--state"])
        .arg(dir.join("sim.json"))
        .arg("--ca-out")
        .arg(&ca)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ca.to_str().unwrap().to_string()
}

/// Runs `cloudvpp ARGS` in `cwd` with `envs`, waits for both "listening on" lines, checks
/// that both services are ready, and returns the two base URLs and the service config.
async fn run_both(args: &[String], cwd: &Path, envs: &[(&str, &str)]) -> serde_json::Value {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("CLOUDVPP_DATABASE")
        .env_remove("CLOUDVPP_API_KEY")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut bases = Vec::new();
    for _ in 0..2 {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert!(line.contains(" listening on http"), "{line:?}");
        bases.push(line.trim().rsplit(' ').next().unwrap().to_string());
    }
    std::thread::spawn(move || for _ in out.lines() {});
    let http = reqwest::Client::new();
    for base in &bases {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = http.get(format!("{base}/readyz")).send().await;
            if r.as_ref().is_ok_and(|r| r.status() == 200) {
                break;
            }
            assert!(Instant::now() < deadline, "{base}/readyz: {r:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let config: serde_json::Value = http
        .get(format!("{}/mdm/v2/service/config", bases[0]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // The admin API is on, with the key from the environment.
    let r = http
        .get(format!("{}/api/v1/locations", bases[1]))
        .bearer_auth("deploy-test-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = child.kill();
    let _ = child.wait();
    config
}

/// `args` with every occurrence of `from` in each word replaced by `to`.
fn moved(args: &[String], from: &str, to: &str) -> Vec<String> {
    args.iter().map(|a| a.replace(from, to)).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_systemd_unit_runs_the_real_command_line_in_its_sandbox() {
    let unit = read("deploy/cloudvpp.service");
    let keys = unit_keys(&unit);
    let one = |k: &str| -> &str {
        let v = keys.get(k).unwrap_or_else(|| panic!("no {k}="));
        assert_eq!(v.len(), 1, "{k}= given {} times", v.len());
        &v[0]
    };
    // Hardening.
    for (k, v) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("CapabilityBoundingSet", ""),
        ("UMask", "0077"),
    ] {
        assert_eq!(one(k), v, "{k}");
    }
    assert_ne!(one("User"), "root");
    let state = one("ReadWritePaths");
    assert_eq!(one("WorkingDirectory"), state);
    assert_eq!(format!("/var/lib/{}", one("StateDirectory")), state);

    // ExecStart is a command line of this binary.
    let words: Vec<String> = one("ExecStart")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(words[0], "/usr/local/bin/cloudvpp");
    assert!(
        !words.iter().any(|w| w.contains('$') || w.contains('"')),
        "no systemd expansion or quoting: the line is passed as it is"
    );
    let args = words[1..].to_vec();
    assert!(matches!(parse(&args).command, cloudvpp::Command::Serve(_)));
    // What it writes is inside the one writable path; what it reads is outside /home.
    let db = flag(&args, "--database").unwrap();
    let db_path = db.strip_prefix("sqlite://").expect("SQLite by default");
    assert!(
        Path::new(db_path).starts_with(state),
        "{db_path} not in {state}"
    );
    let ca = flag(&args, "--ca").expect("a device CA: no throwaway one in production");
    assert!(ca.starts_with("/etc/"), "{ca}");
    assert!(
        flag(&args, "--api-key").is_none(),
        "the key comes from EnvironmentFile"
    );
    assert!(one("EnvironmentFile").starts_with("/etc/"));

    // Run it: the state directory and /etc/cloudvpp moved into a temporary directory, the
    // ports onto free loopback ones, the key as the environment file gives it.
    let dir = tempfile::tempdir().unwrap();
    let (state_dir, etc) = (dir.path().join("state"), dir.path().join("etc"));
    std::fs::create_dir_all(&state_dir).unwrap();
    std::fs::create_dir_all(&etc).unwrap();
    let ca_file = device_ca(&etc);
    let mut run = moved(&args, state, state_dir.to_str().unwrap());
    run = moved(&run, ca, &ca_file);
    run = moved(&run, "0.0.0.0:8080", "127.0.0.1:0");
    run = moved(&run, "0.0.0.0:9000", "127.0.0.1:0");
    let config = run_both(&run, &state_dir, &[("CLOUDVPP_API_KEY", "deploy-test-key")]).await;
    // The public URL of the unit is what invitations link to.
    let public = flag(&args, "--appsbooks-public-url").unwrap();
    let invite = config["urls"]["invitationEmail"].as_str().unwrap();
    assert!(invite.starts_with(public), "{invite}");
    // Nothing written but the database: no key file, no throwaway CA.
    let mut files: Vec<String> = std::fs::read_dir(&state_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let db_name = Path::new(db_path).file_name().unwrap().to_string_lossy();
    assert!(files.iter().all(|f| f.starts_with(&*db_name)), "{files:?}");
    assert!(files.contains(&db_name.to_string()), "{files:?}");
}

/// Instructions of a Dockerfile's last stage, by instruction (continuation lines joined).
fn final_stage(text: &str) -> Vec<(String, String)> {
    let mut joined = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
            continue;
        }
        cur.push_str(t);
        joined.push(std::mem::take(&mut cur));
    }
    let mut stage = Vec::new();
    for l in joined {
        let (ins, rest) = l.split_once(' ').unwrap_or((&l, ""));
        if ins.eq_ignore_ascii_case("FROM") {
            stage.clear();
        }
        stage.push((ins.to_uppercase(), rest.trim().to_string()));
    }
    stage
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dockerfile_runs_the_real_command_line_as_an_unprivileged_user() {
    let text = read("Dockerfile");
    let stage = final_stage(&text);
    let get = |ins: &str| -> Vec<&str> {
        stage
            .iter()
            .filter(|(i, _)| i == ins)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let from = get("FROM");
    assert!(
        from[0].starts_with("debian:bookworm-slim") || from[0].contains("distroless"),
        "{from:?}"
    );
    assert!(text.contains(" AS build"), "a build stage");
    // Not root.
    let user = get("USER");
    let uid = user.last().expect("USER").split(':').next().unwrap();
    assert!(uid != "0" && uid != "root", "{uid}");
    let run = get("RUN").join(" ");
    assert!(
        run.contains(&format!("--uid {uid}")),
        "the user {uid} is made"
    );
    // The binary the entrypoint names is the one copied from the build stage.
    let json = |ins: &str| -> Vec<String> {
        serde_json::from_str(get(ins).last().unwrap_or_else(|| panic!("no {ins}")))
            .unwrap_or_else(|e| panic!("{ins} is not a JSON array: {e}"))
    };
    let entry = json("ENTRYPOINT");
    assert_eq!(entry.len(), 1);
    assert!(
        get("COPY")
            .iter()
            .any(|c| c.starts_with("--from=build") && c.ends_with(&format!(" {}", entry[0]))),
        "{:?}",
        get("COPY")
    );
    let args = json("CMD");
    assert!(matches!(parse(&args).command, cloudvpp::Command::Serve(_)));
    // Listening where the image says it does, reachable from outside the container, with
    // the database in the volume.
    let mut ports: Vec<String> = get("EXPOSE")
        .iter()
        .flat_map(|e| e.split_whitespace().map(str::to_string))
        .collect();
    ports.sort();
    let mut listens: Vec<String> = ["--appsbooks-listen", "--mdm-listen"]
        .iter()
        .map(|f| flag(&args, f).unwrap().to_string())
        .collect();
    assert!(
        listens.iter().all(|l| l.starts_with("0.0.0.0:")),
        "{listens:?}"
    );
    let mut listen_ports: Vec<String> = listens
        .iter_mut()
        .map(|l| l.rsplit(':').next().unwrap().to_string())
        .collect();
    listen_ports.sort();
    assert_eq!(ports, listen_ports);
    let volume: Vec<String> = serde_json::from_str(get("VOLUME")[0]).unwrap();
    let db = flag(&args, "--database").unwrap();
    assert!(
        db.strip_prefix("sqlite://")
            .is_some_and(|p| Path::new(p).starts_with(&volume[0])),
        "{db}"
    );
    assert_eq!(get("WORKDIR").last().copied(), Some(volume[0].as_str()));
    let ignore = read(".dockerignore");
    for must in ["target/", ".git/"] {
        assert!(
            ignore.lines().any(|l| l.trim() == must),
            ".dockerignore: {must}"
        );
    }

    // Run it as the container would: in the volume, the ports moved onto loopback.
    let dir = tempfile::tempdir().unwrap();
    let mut run = moved(&args, &volume[0], dir.path().to_str().unwrap());
    for l in ["0.0.0.0:8080", "0.0.0.0:9000"] {
        run = moved(&run, l, "127.0.0.1:0");
    }
    let config = run_both(&run, dir.path(), &[("CLOUDVPP_API_KEY", "deploy-test-key")]).await;
    assert!(config["urls"]["invitationEmail"].is_string(), "{config}");
    assert!(dir.path().join("cloudvpp.db").exists());
}
