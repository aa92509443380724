//! Every listener under connections that cost without asking: silent ones, half-sent
//! headers, half-sent bodies, and more connections than the cap. The port must keep
//! answering real requests, and the server must close what it will not serve.

mod common;

use common::Env;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn addr(base: &str) -> String {
    base.trim_start_matches("http://").to_string()
}

/// Opens a connection and sends `prefix` (possibly nothing), then goes quiet.
async fn open(addr: &str, prefix: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    if !prefix.is_empty() {
        s.write_all(prefix).await.unwrap();
    }
    s
}

/// Whether the server closed the connection (EOF or reset), after maybe answering.
async fn closed_by_server(s: &mut TcpStream, within: Duration) -> (bool, String) {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    (read.is_ok(), String::from_utf8_lossy(&buf).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_and_half_sent_connections_do_not_make_a_port_unreachable() {
    let env = Env::new();
    let srv = env.serve(&["--header-timeout-secs", "2", "--body-timeout-secs", "2"]);
    let a = addr(&srv.base);
    let token = env.org("Acme");
    let mut held = Vec::new();
    for n in 0..300 {
        let prefix = match n % 3 {
            0 => Vec::new(),
            1 => b"GET /mdm/v2/service/config HTTP/1.1\r\nHost: x\r\nX-Slow: ".to_vec(),
            _ => format!(
                "POST /mdm/v2/users/create HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
                 Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"users\":["
            )
            .into_bytes(),
        };
        held.push((n % 3, open(&a, &prefix).await));
    }
    // The port answers while all 300 are held.
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        reqwest::get(srv.url("/mdm/v2/service/config")),
    )
    .await
    .expect("answered while 300 connections are held")
    .unwrap();
    assert_eq!(r.status(), 200);
    // The server closes every one of them on its own (2 s timeouts, generous margin).
    for (kind, mut s) in held {
        let (closed, answer) = closed_by_server(&mut s, Duration::from_secs(15)).await;
        assert!(closed, "connection of kind {kind} still open");
        if kind == 2 {
            // A body that stopped half-way: a 4xx, never a write.
            assert!(answer.starts_with("HTTP/1.1 4"), "{answer}");
        }
    }
    let (status, users) = srv.get(&token, "/mdm/v2/users").await;
    assert_eq!(status, 200, "{users}");
    assert_eq!(
        users["users"].as_array().map(Vec::len),
        Some(0),
        "the half-sent creations wrote nothing: {users}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_over_the_cap_are_closed_and_the_port_recovers() {
    let env = Env::new();
    let srv = env.serve(&["--max-connections", "20", "--header-timeout-secs", "2"]);
    let a = addr(&srv.base);
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(open(&a, b"").await);
    }
    // Let the server take them all before the next one arrives.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut extra = open(
        &a,
        b"GET /mdm/v2/service/config HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    let (closed, answer) = closed_by_server(&mut extra, Duration::from_secs(5)).await;
    assert!(
        closed && answer.is_empty(),
        "over the cap: closed unanswered ({answer})"
    );
    // Once the silent ones time out, the port serves again.
    let client = reqwest::Client::new();
    let mut ok = false;
    for _ in 0..40 {
        if let Ok(r) = client.get(srv.url("/mdm/v2/service/config")).send().await {
            ok = r.status() == 200;
            if ok {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        ok,
        "the port serves again after the held connections time out"
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_dripped_under_the_chunk_timeout_still_ends_at_its_deadline() {
    let env = Env::new();
    let token = env.org("Acme");
    let srv = env.serve(&["--body-timeout-secs", "2", "--body-deadline-secs", "3"]);
    let mut s = open(
        &addr(&srv.base),
        format!(
            "POST /mdm/v2/users/create HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    // One byte a second: never 2 s between chunks, so only the deadline can end it.
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    for _ in 0..20 {
        if s.write_all(b" ").await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&chunk[..n]),
            Err(_) => {}
        }
        if !answer.is_empty() {
            break;
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 4"),
        "refused at the deadline: {answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_http2_connection_gives_its_slot_back() {
    let env = Env::new();
    let srv = env.serve(&["--max-connections", "1", "--idle-timeout-secs", "2"]);
    // An HTTP/2 client that keeps its connection open after one request.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2
        .get(srv.url("/mdm/v2/service/config"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    // While it holds the only slot, another connection is closed unanswered...
    let mut other = open(
        &addr(&srv.base),
        b"GET /mdm/v2/service/config HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    let (closed, answer) = closed_by_server(&mut other, Duration::from_secs(1)).await;
    assert!(closed && answer.is_empty(), "{answer}");
    // ...until the server closes the idle HTTP/2 connection.
    let mut served = false;
    for _ in 0..40 {
        let mut s = open(
            &addr(&srv.base),
            b"GET /mdm/v2/service/config HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        let (_, answer) = closed_by_server(&mut s, Duration::from_secs(2)).await;
        if answer.starts_with("HTTP/1.1 200") {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(served, "the idle HTTP/2 connection was not closed");
    drop(h2);
}
