//! Test harness: the real `cloudvpp` binary on 127.0.0.1 with a real SQLite file, and a
//! real HTTP server standing in for an MDM's notification endpoint.
#![allow(dead_code)]

use axum::http::HeaderMap;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_cloudvpp");

/// A temp dir and one database: a SQLite file in the dir, or, when
/// `CLOUDVPP_TEST_POSTGRES_URL` names a PostgreSQL server, a fresh database on it that is
/// dropped afterwards.
pub struct Env {
    pub dir: tempfile::TempDir,
    postgres: Option<(String, String)>,
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some((server, name)) = &self.postgres {
            let _ = psql(
                server,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            );
        }
    }
}

fn psql(server: &str, sql: &str) -> std::process::Output {
    Command::new("psql")
        .args([&format!("{server}/postgres"), "-q", "-c", sql])
        .output()
        .expect("psql")
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let postgres = std::env::var("CLOUDVPP_TEST_POSTGRES_URL")
            .ok()
            .filter(|s| !s.is_empty())
            .map(|server| {
                let server = server.trim_end_matches('/').to_string();
                let tag = dir
                    .path()
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .to_lowercase()
                    .replace(|c: char| !c.is_ascii_alphanumeric(), "");
                let name = format!("cloudvpp_t_{tag}_{}", std::process::id());
                let out = psql(&server, &format!("CREATE DATABASE {name}"));
                assert!(
                    out.status.success(),
                    "creating {name}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                (server, name)
            });
        Env { dir, postgres }
    }
    pub fn db(&self) -> String {
        match &self.postgres {
            Some((server, name)) => format!("{server}/{name}"),
            None => format!("sqlite://{}/ab.db", self.dir.path().display()),
        }
    }
    /// Runs a CLI command and returns stdout; panics on failure.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(BIN)
            .args(args)
            .env("CLOUDVPP_DATABASE", self.db())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
    /// Creates an organisation and returns its sToken.
    pub fn org(&self, name: &str) -> String {
        self.cli(&["appsbooks", "org", "create", "--name", name])
            .trim()
            .to_string()
    }
    /// Starts `cloudvpp appsbooks serve` with extra flags.
    pub fn serve(&self, extra: &[&str]) -> Server {
        let mut args = vec![
            "appsbooks",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--allow-http-notifications",
            // Test notification endpoints listen on 127.0.0.1.
            "--allow-private-notification-urls",
        ];
        args.extend_from_slice(extra);
        self.spawn(&args)
    }

    /// Starts `cloudvpp appsbooks serve` on plain HTTP, guarding notification URLs as in
    /// production (private addresses refused).
    pub fn serve_guarded(&self, extra: &[&str]) -> Server {
        let mut args = vec![
            "appsbooks",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--allow-http-notifications",
        ];
        args.extend_from_slice(extra);
        self.spawn(&args)
    }

    /// This env's PostgreSQL database URL, when the suite runs on PostgreSQL.
    pub fn postgres_db(&self) -> Option<String> {
        self.postgres.as_ref().map(|_| self.db())
    }

    /// Runs SQL (several statements allowed) on this env's database, SQLite or PostgreSQL.
    pub async fn sql(&self, sql: &str) {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&self.db()).await.unwrap();
        sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();
    }

    /// The single integer one query returns, on this env's database.
    pub async fn sql_i64(&self, sql: &str) -> i64 {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&self.db()).await.unwrap();
        let n: i64 = sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap();
        conn.close().await.unwrap();
        n
    }

    /// The single text one query returns (NULL as ""), on this env's database.
    pub async fn sql_text(&self, sql: &str) -> String {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&self.db()).await.unwrap();
        let v: Option<String> = sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap();
        conn.close().await.unwrap();
        v.unwrap_or_default()
    }

    /// This env's PostgreSQL database name, when the suite runs on PostgreSQL.
    pub fn postgres_name(&self) -> Option<String> {
        self.postgres.as_ref().map(|(_, name)| name.clone())
    }

    /// Runs one statement as the server's administrator, from the `postgres` database (to
    /// change this env's database from outside it).
    pub fn pg_admin(&self, sql: &str) {
        let (server, _) = self.postgres.as_ref().expect("a PostgreSQL run");
        let out = psql(server, sql);
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Rows of one query run by psql on this env's PostgreSQL database.
    pub fn psql_rows(&self, sql: &str) -> String {
        let out = Command::new("psql")
            .args([&self.db(), "-qtA", "-c", sql])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// Starts `cloudvpp ARGS --database <this env's db>` and waits for its "listening on" line.
    pub fn spawn(&self, args: &[&str]) -> Server {
        self.spawn_on(&self.db(), args)
    }

    /// Starts `cloudvpp ARGS --database DB` and waits for its "listening on" line.
    pub fn spawn_on(&self, db: &str, args: &[&str]) -> Server {
        self.spawn_with_stderr(db, args, Stdio::inherit())
    }

    /// As [`Env::spawn`], with the server's log (warnings and up) written to `log`.
    pub fn spawn_logged(&self, args: &[&str], log: &std::path::Path) -> Server {
        let file = std::fs::File::create(log).unwrap();
        self.spawn_with_stderr(&self.db(), args, Stdio::from(file))
    }

    fn spawn_with_stderr(&self, db: &str, args: &[&str], stderr: Stdio) -> Server {
        let mut child = Command::new(BIN)
            .args(args)
            .args(["--database", db])
            .env("CLOUDVPP_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let base = line.trim().rsplit(' ').next().unwrap().to_string();
        assert!(base.starts_with("http"), "unexpected first line {line:?}");
        Server {
            child,
            base,
            http: reqwest::Client::new(),
        }
    }
}

/// The command line of `cloudvpp mdm serve` on a free loopback port with `key` as its
/// admin API key and `ca` as its device CA, then `extra`.
pub fn mdm_serve_args<'a>(key: &'a str, ca: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "mdm",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--api-key",
        key,
        "--ca",
        ca,
    ];
    args.extend_from_slice(extra);
    args
}

pub struct Server {
    pub child: Child,
    pub base: String,
    pub http: reqwest::Client,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// SIGKILL, as a crash.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends, waiting out 9646 as a well-behaved client does (Retry-After).
    async fn send(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        loop {
            let r = req.try_clone().unwrap().send().await.unwrap();
            let status = r.status().as_u16();
            if status == 429 {
                let secs: u64 = r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(secs * 1000 / 4)).await;
                continue;
            }
            return (status, r.json().await.unwrap_or(Value::Null));
        }
    }

    pub async fn get(&self, token: &str, path: &str) -> (u16, Value) {
        self.send(self.http.get(self.url(path)).bearer_auth(token))
            .await
    }

    pub async fn post(&self, token: &str, path: &str, body: Value) -> (u16, Value) {
        self.send(
            self.http
                .post(self.url(path))
                .bearer_auth(token)
                .json(&body),
        )
        .await
    }

    /// Posts users to users/create|update|retire and returns the eventId.
    pub async fn manage(&self, token: &str, action: &str, users: Value) -> String {
        let (status, body) = self
            .post(
                token,
                &format!("/mdm/v2/users/{action}"),
                serde_json::json!({ "users": users }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["eventId"].as_str().unwrap().to_string()
    }

    /// Polls status until the event is no longer PENDING.
    pub async fn wait_event(&self, token: &str, event_id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) = self
                .get(token, &format!("/mdm/v2/status?eventId={event_id}"))
                .await;
            assert_eq!(status, 200, "{body}");
            if body["eventStatus"] != "PENDING" {
                return body;
            }
            assert!(Instant::now() < deadline, "event {event_id} still pending");
            tokio::time::sleep(Duration::from_millis(70)).await;
        }
    }

    /// All users, following nextPageIndex.
    pub async fn all_users(&self, token: &str, query: &str) -> (Vec<Value>, String) {
        let mut users = Vec::new();
        let mut page = 0;
        let mut version = None;
        loop {
            let sep = if query.is_empty() { "" } else { "&" };
            let (status, body) = self
                .get(
                    token,
                    &format!("/mdm/v2/users?pageIndex={page}{sep}{query}"),
                )
                .await;
            assert_eq!(status, 200, "{body}");
            version.get_or_insert_with(|| body["versionId"].as_str().unwrap().to_string());
            users.extend(body["users"].as_array().unwrap().iter().cloned());
            match body["nextPageIndex"].as_u64() {
                Some(n) => page = n,
                None => return (users, version.unwrap()),
            }
        }
    }
}

/// One notification as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub authorization: Option<String>,
    pub body: Value,
}

/// A notification endpoint: records every POST; answers 500 while `fail_next` > 0 or
/// `fail_always` is set.
#[derive(Clone, Default)]
pub struct Receiver {
    pub received: Arc<Mutex<Vec<Received>>>,
    pub attempts: Arc<Mutex<u32>>,
    pub fail_next: Arc<Mutex<u32>>,
    pub fail_always: Arc<Mutex<bool>>,
}

pub struct RunningReceiver {
    pub url: String,
    pub addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RunningReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    pub async fn start(&self) -> RunningReceiver {
        self.start_on("127.0.0.1:0").await
    }

    pub async fn start_on(&self, addr: &str) -> RunningReceiver {
        let me = self.clone();
        let app = axum::Router::new().route(
            "/notify",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let me = me.clone();
                async move {
                    *me.attempts.lock().unwrap() += 1;
                    let fail = {
                        let mut n = me.fail_next.lock().unwrap();
                        if *n > 0 {
                            *n -= 1;
                            true
                        } else {
                            *me.fail_always.lock().unwrap()
                        }
                    };
                    if fail {
                        return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    me.received.lock().unwrap().push(Received {
                        authorization: headers
                            .get("authorization")
                            .map(|v| v.to_str().unwrap().to_string()),
                        body: serde_json::from_slice(&body).unwrap(),
                    });
                    axum::http::StatusCode::OK
                }
            }),
        );
        // A just-aborted receiver may still hold the port for a moment.
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("binding {addr}: {e}"),
            }
        };
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        RunningReceiver {
            url: format!("http://{addr}/notify"),
            addr,
            task,
        }
    }

    pub fn of_type(&self, kind: &str) -> Vec<Received> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.body["notificationType"] == kind)
            .cloned()
            .collect()
    }

    /// Waits until `n` notifications of `kind` arrived.
    pub async fn wait_for(&self, kind: &str, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.of_type(kind);
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "only {} {kind} notifications arrived, wanted {n}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

pub fn users(range: std::ops::Range<usize>, prefix: &str) -> Value {
    Value::Array(
        range
            .map(|i| serde_json::json!({"clientUserId": format!("{prefix}-{i}"), "email": format!("{prefix}-{i}@example.com")}))
            .collect(),
    )
}

/// A notification endpoint that answers the TEST_NOTIFICATION (so that it can be
/// configured) and never answers anything else: each later request is held open until the
/// sender gives up. Counts the requests it holds now and the most it held at once.
pub struct Hanging {
    pub url: String,
    pub holding: Arc<AtomicUsize>,
    pub most: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Hanging {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Hanging {
    pub async fn start() -> Hanging {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/notify", listener.local_addr().unwrap());
        let (holding, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (h, m) = (holding.clone(), most.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((conn, _)) = listener.accept().await {
                conns.spawn(hang(conn, h.clone(), m.clone()));
            }
        });
        Hanging {
            url,
            holding,
            most,
            task,
        }
    }
}

async fn hang(mut conn: tokio::net::TcpStream, holding: Arc<AtomicUsize>, most: Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // One request: the head, then Content-Length bytes of body.
        let request_len = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let body_len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse().unwrap())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + body_len {
                    break end + 4 + body_len;
                }
            }
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let request: Vec<u8> = buf.drain(..request_len).collect();
        if String::from_utf8_lossy(&request).contains("TEST_NOTIFICATION") {
            let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
            if conn.write_all(ok).await.is_err() {
                return;
            }
            continue;
        }
        let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
        most.fetch_max(now, Ordering::SeqCst);
        // Never answer; wait for the sender to hang up.
        while let Ok(n) = conn.read(&mut chunk).await {
            if n == 0 {
                break;
            }
        }
        holding.fetch_sub(1, Ordering::SeqCst);
        return;
    }
}

/// `cloudvpp appsbooks serve ARGS` as a server config, on a free loopback listener.
pub fn appsbooks_in_process(
    args: &[&str],
) -> (
    cloudvpp::server::ServerConfig,
    cloudvpp::server::Listeners,
    String,
) {
    let mut line = vec!["cloudvpp", "appsbooks", "serve"];
    line.extend_from_slice(args);
    let cli = <cloudvpp::Cli as clap::Parser>::try_parse_from(line).unwrap();
    let cloudvpp::Command::Appsbooks {
        command: cloudvpp::cmd::appsbooks::AppsbooksCommand::Serve(serve),
    } = cli.command
    else {
        unreachable!()
    };
    let bound = cloudvpp::server::Bound::from_std(
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        false,
    )
    .unwrap();
    let base = bound.base.clone();
    let listeners = cloudvpp::server::Listeners {
        appsbooks: Some(bound),
        mdm: None,
    };
    (serve.into_config(), listeners, base)
}
