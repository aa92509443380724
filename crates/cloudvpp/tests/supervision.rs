//! Supervised background tasks and readiness: `/readyz` answers 503 while a task is dead
//! or the database does not answer, and a task that keeps dying stops the process with
//! exit code 70. Some tests start the services in-process (`serve_with_listener`), the
//! others the real binary.
//!
//! How a task is made to die: every worker survives database errors by design (it logs
//! them and tries again), so breaking the database under one makes it retry, never die.
//! The tests that need a task to keep dying use the binary's test-only panic switch
//! (`CLOUDVPP_TEST_PANIC_TASK=<task>`, hidden flag `--test-panic-task`): that task then
//! panics at every start. The database is broken for real (a table renamed under the
//! running process) to test readiness's database probe.

mod common;

use cloudvpp::server;
use common::{appsbooks_in_process, Env};
use std::time::{Duration, Instant};

async fn status(http: &reqwest::Client, url: &str) -> (u16, String) {
    let r = http.get(url).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Polls `url` until it answers `want`; returns the body.
async fn wait_status(http: &reqwest::Client, url: &str, want: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (got, body) = status(http, url).await;
        if got == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{url}: {got} {body}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn in_process_ready_then_stops_cleanly() {
    let env = Env::new();
    let db = env.db();
    let (config, listeners, base) = appsbooks_in_process(&["--database", &db]);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::serve_with_listener(config, listeners, async move {
        let _ = stop_rx.await;
    }));
    let http = reqwest::Client::new();
    assert_eq!(
        wait_status(&http, &format!("{base}/readyz"), 200).await,
        "ready\n"
    );
    assert_eq!(status(&http, &format!("{base}/healthz")).await.0, 200);
    let (code, body) = status(&http, &format!("{base}/mdm/v2/service/config")).await;
    assert_eq!(code, 200, "{body}");
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("stopped")
        .unwrap()
        .expect("a clean stop");
}

#[tokio::test]
async fn in_process_a_task_that_keeps_dying_ends_the_server_with_fatal() {
    let env = Env::new();
    let db = env.db();
    let (config, listeners, base) = appsbooks_in_process(&[
        "--database",
        &db,
        "--test-panic-task",
        "appsbooks-events",
        // 100 + 200 + 400 + 800 ms of backoff: long enough to see /readyz answer 503.
        "--task-max-deaths",
        "5",
    ]);
    let running = server::start(config, listeners).await.unwrap();
    let health = running.health();
    let server = tokio::spawn(running.serve(std::future::pending()));
    let http = reqwest::Client::new();
    let body = wait_status(&http, &format!("{base}/readyz"), 503).await;
    assert!(body.contains("appsbooks-events"), "{body}");
    // Liveness is not readiness: the process still answers.
    assert_eq!(status(&http, &format!("{base}/healthz")).await.0, 200);
    let err = tokio::time::timeout(Duration::from_secs(20), server)
        .await
        .expect("the server stops by itself")
        .unwrap()
        .expect_err("a given-up task ends the server with an error");
    let fatal = err
        .downcast_ref::<server::Fatal>()
        .expect("the error is Fatal");
    assert_eq!(fatal.task, "appsbooks-events");
    assert!(!health.ready());
    assert_eq!(health.given_up().as_deref(), Some("appsbooks-events"));
}

#[tokio::test]
async fn a_worker_that_keeps_dying_makes_readyz_503_and_the_process_exit_70() {
    let env = Env::new();
    let ca = env.dir.path().join("ca.pem");
    let pki = cloudvpp_simulator::Pki::generate().unwrap();
    std::fs::write(&ca, &pki.ca_cert_pem).unwrap();
    let log = env.dir.path().join("serve.log");
    let mut child = std::process::Command::new(common::BIN)
        .args(["serve", "--api-key", "k", "--ca", ca.to_str().unwrap()])
        .args([
            "--appsbooks-listen",
            "127.0.0.1:0",
            "--mdm-listen",
            "127.0.0.1:0",
        ])
        .args(["--database", &env.db()])
        .env("CLOUDVPP_TEST_PANIC_TASK", "appsbooks-outbox")
        .env("CLOUDVPP_LOG", "warn")
        .env("RUST_BACKTRACE", "0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let (ab, mdm) = {
        use std::io::BufRead;
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let (mut a, mut m) = (String::new(), String::new());
        out.read_line(&mut a).unwrap();
        out.read_line(&mut m).unwrap();
        std::thread::spawn(move || for _ in out.lines() {});
        let url = |l: &str| l.trim().rsplit(' ').next().unwrap().to_string();
        (url(&a), url(&m))
    };
    let http = reqwest::Client::new();
    // Both services report the process's tasks: one dead task makes both not ready.
    // (It dies within milliseconds of its start, and is given up after about 1.5 s.)
    for base in [&ab, &mdm] {
        let body = wait_status(&http, &format!("{base}/readyz"), 503).await;
        assert!(body.contains("appsbooks-outbox"), "{body}");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("still running: {}", std::fs::read_to_string(&log).unwrap());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = std::fs::read_to_string(&log).unwrap();
    assert_eq!(exit.code(), Some(70), "{log}");
    assert!(
        log.contains("background task keeps dying: giving up on it"),
        "{log}"
    );
    assert!(
        log.contains("background task appsbooks-outbox kept dying and was given up"),
        "{log}"
    );
    // The HTTP servers stopped with it.
    assert!(http.get(format!("{ab}/healthz")).send().await.is_err());
}

#[tokio::test]
async fn readyz_is_503_while_the_database_does_not_answer() {
    let env = Env::new();
    let server = env.serve(&[]);
    let http = reqwest::Client::new();
    assert_eq!(
        wait_status(&http, &server.url("/readyz"), 200).await,
        "ready\n"
    );
    // Break the database under the running process: the table readiness probes goes.
    env.sql("ALTER TABLE orgs RENAME TO orgs_away").await;
    assert_eq!(
        wait_status(&http, &server.url("/readyz"), 503).await,
        "not ready: database\n"
    );
    assert_eq!(status(&http, &server.url("/healthz")).await.0, 200);
    env.sql("ALTER TABLE orgs_away RENAME TO orgs").await;
    wait_status(&http, &server.url("/readyz"), 200).await;
}
