//! The OpenAPI document of the admin API, against a real `cloudvpp serve`: it is OpenAPI
//! 3.1, every documented route answers (with the key) as a route, every admin route is
//! documented, and `docs/openapi.json` is the served document.

mod common;

use common::Env;
use serde_json::Value;
use std::collections::BTreeSet;

const KEY: &str = "openapi-test-key";

/// Every admin route, method and path: the routers are built from the documented
/// handlers (utoipa-axum), so this list catches a route added with plain `.route(...)`.
const ROUTES: &[(&str, &str)] = &[
    ("get", "/api/v1/openapi.json"),
    ("put", "/api/v1/enqueue/{ids}"),
    ("post", "/api/v1/enqueue/{ids}"),
    ("post", "/api/v1/invite-to-program"),
    ("post", "/api/v1/push/{ids}"),
    ("get", "/api/v1/push/{ids}"),
    ("get", "/api/v1/enrollments"),
    ("get", "/api/v1/enrollments/{id}"),
    ("get", "/api/v1/enrollments/{id}/commands"),
    ("get", "/api/v1/enrollments/{id}/commands/{uuid}"),
    ("get", "/api/v1/locations"),
    ("post", "/api/v1/locations"),
    ("get", "/api/v1/invitations"),
    ("post", "/api/v1/invitations"),
    ("get", "/api/v1/invitations/{id}"),
    ("post", "/api/v1/invitations/{id}/resend"),
    ("post", "/api/v1/invitations/{id}/retire"),
    ("get", "/api/v1/locations/{id}/apps"),
    ("post", "/api/v1/locations/{id}/apps"),
    ("delete", "/api/v1/locations/{id}/apps"),
    ("get", "/api/v1/assignments"),
    ("post", "/api/v1/assignments"),
];

/// `cloudvpp serve` with an admin key; the MDM service's base URL.
fn serve(env: &Env) -> (std::process::Child, String) {
    use std::io::BufRead;
    let pki = cloudvpp_simulator::Pki::generate().unwrap();
    let ca = env.dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_cert_pem).unwrap();
    let mut child = std::process::Command::new(common::BIN)
        .args(["serve", "--api-key", KEY])
        .args([
            "--appsbooks-listen",
            "127.0.0.1:0",
            "--mdm-listen",
            "127.0.0.1:0",
        ])
        .args(["--ca", ca.to_str().unwrap(), "--database", &env.db()])
        .env("CLOUDVPP_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let (mut ab, mut mdm) = (String::new(), String::new());
    out.read_line(&mut ab).unwrap();
    out.read_line(&mut mdm).unwrap();
    std::thread::spawn(move || for _ in out.lines() {});
    (child, mdm.trim().rsplit(' ').next().unwrap().to_string())
}

struct Killed(std::process::Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether an answer is the router's "no such route": 405, or a 404 with an empty body
/// (handlers' 404s, "unknown enrollment" and the like, carry `{"error": ...}`).
fn no_route(status: u16, body: &str) -> bool {
    status == 405 || (status == 404 && body.is_empty())
}

#[tokio::test]
async fn openapi_document_matches_the_routes() {
    let env = Env::new();
    let (child, mdm) = serve(&env);
    let _child = Killed(child);
    let http = reqwest::Client::new();

    // Served without the key (it holds no data).
    let r = http
        .get(format!("{mdm}/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let served = r.text().await.unwrap();
    let doc: Value = serde_json::from_str(&served).unwrap();
    let version = doc["openapi"].as_str().unwrap();
    assert!(version.starts_with("3.1."), "openapi {version}");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    assert_eq!(schemes["api_key"]["scheme"], "bearer");
    assert_eq!(schemes["api_key_basic"]["scheme"], "basic");

    // The documented routes, and the known ones, are the same.
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                documented.insert((method.clone(), path.clone()));
            }
        }
    }
    let known: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(
        documented.difference(&known).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "documented but not in this test's list"
    );
    assert_eq!(
        known.difference(&documented).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "routes not documented"
    );

    // The router's own 404 is told apart from handlers' (see `no_route`).
    let r = http
        .get(format!("{mdm}/api/v1/no-such-route"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    assert!(no_route(status, &r.text().await.unwrap()), "{status}");

    // Every documented route exists with its method (dummy path parameters, an empty JSON
    // object as body: refusals such as 400 or 404 "unknown enrollment" are fine).
    for (method, path) in &documented {
        let url = format!("{mdm}{}", fill(path));
        let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let mut req = http.request(m.clone(), &url).bearer_auth(KEY);
        if m != reqwest::Method::GET {
            req = req.json(&serde_json::json!({}));
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        assert!(!no_route(status, &body), "{method} {path}: {status} {body}");
        // And the admin routes are behind the key, as the document says.
        if path != "/api/v1/openapi.json" {
            let r = http.request(m, &url).send().await.unwrap();
            assert_eq!(r.status(), 403, "{method} {path} without the key");
        }
    }

    // The checked-in copy is the served document.
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&file, &served).unwrap();
    }
    let checked_in: Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap_or_default())
            .unwrap_or(Value::Null);
    assert!(
        checked_in == doc,
        "docs/openapi.json differs from the served document; regenerate it with \
         `UPDATE_OPENAPI=1 cargo test -p cloudvpp --test openapi` and commit it"
    );
}

/// `path` with every `{param}` replaced by a dummy value.
fn fill(path: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        out.push('1');
        rest = &rest[rest.find('}').unwrap() + 1..];
    }
    out + rest
}
