//! The admin API's real answers against its OpenAPI document: a real `cloudvpp serve`
//! (SQLite, both services) with enrolled simulated devices, a location and invitations,
//! every documented route called to its successes and its main refusals, and each answer
//! validated (JSON Schema 2020-12, as OpenAPI 3.1) against the schema the served document
//! gives for its route, method and status. A status the document does not list for the
//! route fails too, and so does a documented status this test never provokes (unless
//! listed in [`NOT_EXERCISED`] with the reason), so that a new answer gets tested here.

mod common;

use cloudvpp_simulator::{Pki, SimDevice, SimPlatform};
use common::Env;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEY: &str = "openapi-responses-key";
const ORG: &str = "Acme Schools";
/// An app of the Apps and Books service's catalogue.
const APP: &str = "408709785";
/// Another one.
const OTHER_APP: &str = "361309726";

/// Documented answers this test does not provoke: (method, route, status, why).
const NOT_EXERCISED: &[(&str, &str, u16, &str)] = &[(
    "post",
    "/api/v1/locations",
    502,
    "importing the users fails only when Apps and Books fails between the token check \
     and the sync",
)];

/// `cloudvpp serve` with the admin key and fast engine rounds; the process and the base
/// URLs of Apps and Books and of the MDM.
fn serve(env: &Env, ca: &str) -> (std::process::Child, String, String) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(common::BIN)
        .args(["serve", "--api-key", KEY])
        .args(["--appsbooks-listen", "127.0.0.1:0"])
        .args(["--mdm-listen", "127.0.0.1:0"])
        .args(["--ca", ca, "--database", &env.db()])
        .args(["--status-poll-ms", "200", "--sync-interval-ms", "1000"])
        // Errors only: the refused sToken provoked below makes the engine warn on purpose.
        .env("CLOUDVPP_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let (mut ab, mut mdm) = (String::new(), String::new());
    out.read_line(&mut ab).unwrap();
    out.read_line(&mut mdm).unwrap();
    // Keep reading stdout so the process never blocks on a full pipe.
    std::thread::spawn(move || for _ in out.lines() {});
    let url = |l: &str| l.trim().rsplit(' ').next().unwrap().to_string();
    (child, url(&ab), url(&mdm))
}

struct Killed(std::process::Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A request body.
enum Body {
    None,
    Json(Value),
    /// Content type and bytes, sent as they are.
    Raw(&'static str, Vec<u8>),
}

/// The admin API as its document describes it: every answer is checked against the
/// document, and the mismatches are gathered to be reported together.
struct Api {
    base: String,
    http: reqwest::Client,
    doc: Value,
    /// (method, documented route, status) of every call.
    seen: BTreeSet<(String, String, u16)>,
    failures: Vec<String>,
}

impl Api {
    /// The documented route `path` is an instance of (the one with the most literal
    /// segments in common, so `/invitations/{id}` is not taken for a longer route).
    fn route_of(&self, path: &str) -> Option<String> {
        let segments: Vec<&str> = path.split('/').collect();
        let mut best: Option<(usize, &String)> = None;
        for route in self.doc["paths"].as_object().unwrap().keys() {
            let parts: Vec<&str> = route.split('/').collect();
            if parts.len() != segments.len() {
                continue;
            }
            let mut literal = 0;
            let fits = parts.iter().zip(&segments).all(|(r, p)| {
                if r.starts_with('{') {
                    !p.is_empty()
                } else {
                    literal += 1;
                    r == p
                }
            });
            if fits && best.is_none_or(|(n, _)| literal > n) {
                best = Some((literal, route));
            }
        }
        best.map(|(_, r)| r.clone())
    }

    /// Calls `method path` with the key and checks the answer against the document; the
    /// status and the body (null when empty or not JSON).
    async fn call(&mut self, method: &str, path: &str, body: Body) -> (u16, Value) {
        let method = method.to_lowercase();
        let route = self
            .route_of(path.split('?').next().unwrap())
            .unwrap_or_else(|| panic!("{path} is no documented route"));
        let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let mut req = self
            .http
            .request(m, format!("{}{path}", self.base))
            .bearer_auth(KEY);
        req = match body {
            Body::None => req,
            Body::Json(v) => req.json(&v),
            Body::Raw(content_type, bytes) => req.header("content-type", content_type).body(bytes),
        };
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let content_type = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let text = r.text().await.unwrap();
        self.check(&method, &route, status, &content_type, &text);
        self.seen.insert((method, route, status));
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn check(&mut self, method: &str, route: &str, status: u16, content_type: &str, text: &str) {
        let what = format!("{} {route} answered {status}", method.to_uppercase());
        let responses = &self.doc["paths"][route][method]["responses"];
        let Some(response) = responses.get(status.to_string()) else {
            self.failures.push(format!(
                "{what}: status not documented for the route; body {text}"
            ));
            return;
        };
        let Some(content) = response["content"].get("application/json") else {
            if !text.is_empty() {
                self.failures
                    .push(format!("{what}: the document gives no body; got {text}"));
            }
            return;
        };
        if content_type != "application/json" {
            self.failures.push(format!(
                "{what}: content type {content_type:?}, documented application/json; body {text}"
            ));
        }
        let body: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                self.failures
                    .push(format!("{what}: body is not JSON ({e}): {text}"));
                return;
            }
        };
        let Some(schema) = content.get("schema") else {
            return;
        };
        // The schema's `$ref`s point into the document (`#/components/schemas/...`): the
        // components go along in the root, where those pointers resolve.
        let mut root = schema.clone();
        root["components"] = self.doc["components"].clone();
        let validator = jsonschema::draft202012::new(&root)
            .unwrap_or_else(|e| panic!("{what}: the documented schema does not compile: {e}"));
        let errors: Vec<String> = validator
            .iter_errors(&body)
            .map(|e| {
                format!(
                    "  at {:?} (schema {:?}): {e}",
                    e.instance_path().as_str(),
                    e.schema_path().as_str()
                )
            })
            .collect();
        if !errors.is_empty() {
            self.failures.push(format!(
                "{what}: body does not match the documented schema\n{}\n  body: {body}",
                errors.join("\n")
            ));
        }
    }

    /// As [`Self::call`], and the status must be `want`: the scenario's own expectation,
    /// so that a step that went otherwise is not taken for a tested answer.
    async fn expect(&mut self, want: u16, method: &str, path: &str, body: Body) -> Value {
        let (status, v) = self.call(method, path, body).await;
        assert_eq!(status, want, "{method} {path}: {v}");
        v
    }
}

/// A command plist as `PUT /api/v1/enqueue` takes it.
fn command_plist(uuid: &str) -> Body {
    let plist = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0"><dict>
<key>CommandUUID</key><string>{uuid}</string>
<key>Command</key><dict><key>RequestType</key><string>ProfileList</string></dict>
</dict></plist>"#
    );
    Body::Raw(PLIST, plist.into_bytes())
}

const PLIST: &str = "application/x-apple-aspen-mdm";

fn json(v: Value) -> Body {
    Body::Json(v)
}

/// Collects into `open` the object schemas under `v` (following `$ref`s into `doc`, each
/// once: `seen`) that allow fields they do not list; `at` names where `v` is.
fn open_objects(
    doc: &Value,
    v: &Value,
    at: &str,
    seen: &mut BTreeSet<String>,
    open: &mut BTreeSet<String>,
) {
    match v {
        Value::Object(o) => {
            if o.get("properties").is_some_and(Value::is_object)
                && o.get("additionalProperties") != Some(&Value::Bool(false))
            {
                open.insert(at.to_string());
            }
            if let Some(Value::String(r)) = o.get("$ref") {
                if seen.insert(r.clone()) {
                    let target = doc.pointer(r.trim_start_matches('#')).unwrap();
                    open_objects(doc, target, r, seen, open);
                }
            }
            for (k, x) in o {
                open_objects(doc, x, &format!("{at}/{k}"), seen, open);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                open_objects(doc, x, &format!("{at}/{i}"), seen, open);
            }
        }
        _ => {}
    }
}

async fn until<F: AsyncFnMut() -> bool>(what: &str, secs: u64, mut f: F) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_answer_matches_the_openapi_document() {
    let env = Env::new();
    let pki = Pki::generate().unwrap();
    let ca = env.dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_cert_pem).unwrap();
    let (child, ab, mdm) = serve(&env, ca.to_str().unwrap());
    let _child = Killed(child);
    let http = reqwest::Client::new();

    // The document as this very server serves it.
    let r = http
        .get(format!("{mdm}/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut api = Api {
        base: mdm.clone(),
        http: http.clone(),
        doc: r.json().await.unwrap(),
        seen: BTreeSet::new(),
        failures: Vec::new(),
    };
    api.expect(200, "GET", "/api/v1/openapi.json", Body::None)
        .await;

    // Nothing yet: empty lists, and invitations need a location.
    api.expect(200, "GET", "/api/v1/enrollments", Body::None)
        .await;
    api.expect(200, "GET", "/api/v1/locations", Body::None)
        .await;
    let ann_alone = json!({"client_user_id": "ann"});
    api.expect(409, "POST", "/api/v1/invitations", json(ann_alone))
        .await;

    // Devices: an iPhone (device channel) and a Mac (device and user channels).
    let key = Arc::new(cloudvpp_identity::pem::key(pki.device_key_pem.as_bytes()).unwrap());
    let device = |platform| {
        let spec = pki.new_device(platform).unwrap();
        SimDevice::with_key(spec, key.clone(), &mdm, http.clone()).unwrap()
    };
    let (phone, mac) = (device(SimPlatform::Ios), device(SimPlatform::Macos));
    phone.enroll().await.unwrap();
    mac.enroll().await.unwrap();
    let (p, m) = (phone.spec.id.clone(), mac.spec.id.clone());
    let mac_user = mac.spec.enrollment_ids()[1].clone();

    // Enrollments: all, one device's, each kind of channel, unknown.
    let v = api
        .expect(200, "GET", "/api/v1/enrollments", Body::None)
        .await;
    assert_eq!(v["enrollments"].as_array().unwrap().len(), 3, "{v}");
    let path = format!("/api/v1/enrollments?device_id={m}");
    api.expect(200, "GET", &path, Body::None).await;
    for id in [&p, &mac_user] {
        let path = format!("/api/v1/enrollments/{id}");
        api.expect(200, "GET", &path, Body::None).await;
    }
    api.expect(404, "GET", "/api/v1/enrollments/NO-SUCH-ID", Body::None)
        .await;

    // Raw commands: pushed (APNs is not configured here: push_error), also to an unknown
    // enrollment, not pushed; then a CommandUUID again, only unknown enrollments, not a
    // plist, no ID at all, on both methods (one operation each in the document).
    let v = api
        .expect(
            200,
            "PUT",
            &format!("/api/v1/enqueue/{p},NOPE"),
            command_plist("C-1"),
        )
        .await;
    assert_eq!(v["status"]["NOPE"]["queued"], false, "{v}");
    let path = format!("/api/v1/enqueue/{p}?nopush=1");
    api.expect(200, "POST", &path, command_plist("C-2")).await;
    // Queued on the Mac and never answered.
    let path = format!("/api/v1/enqueue/{m}?nopush=1");
    api.expect(200, "PUT", &path, command_plist("C-MAC")).await;
    for method in ["PUT", "POST"] {
        let path = format!("/api/v1/enqueue/{p}");
        api.expect(409, method, &path, command_plist("C-1")).await;
        let unknown = command_plist(&format!("C-UNKNOWN-{method}"));
        api.expect(422, method, "/api/v1/enqueue/NOPE", unknown)
            .await;
        let garbage = Body::Raw(PLIST, b"not a plist".to_vec());
        api.expect(400, method, &path, garbage).await;
        api.expect(400, method, "/api/v1/enqueue/,", command_plist("C-4"))
            .await;
    }

    // Pushes: APNs absent, so each outcome is a push_error.
    let path = format!("/api/v1/push/{p},NOPE");
    api.expect(200, "POST", &path, Body::None).await;
    let path = format!("/api/v1/push/{m}");
    api.expect(200, "GET", &path, Body::None).await;
    for method in ["POST", "GET"] {
        api.expect(400, method, "/api/v1/push/,", Body::None).await;
    }

    // InviteToProgram: on the phone, refused on the Mac's device channel (it belongs on
    // the user channel), a CommandUUID again, a bad URL.
    let itp = "/api/v1/invite-to-program";
    let invite = |id: &str, uuid: Option<&str>| {
        json(json!({
            "enrollment_ids": [id],
            "invitation_url": "https://ab.example/invite?inviteCode=ABC",
            "command_uuid": uuid,
        }))
    };
    api.expect(200, "POST", itp, invite(&p, Some("ITP-1")))
        .await;
    api.expect(422, "POST", itp, invite(&m, None)).await;
    api.expect(409, "POST", itp, invite(&p, Some("ITP-1")))
        .await;
    let bad_url = json!({"enrollment_ids": [p], "invitation_url": "no url"});
    api.expect(400, "POST", itp, json(bad_url)).await;

    // The phone answers its queue (ProfileList with Error, InviteToProgram acknowledged);
    // the Mac's command stays unanswered.
    phone.poll(false).await.unwrap();
    for (id, query) in [(&p, ""), (&p, "?pending=1"), (&m, ""), (&mac_user, "")] {
        let path = format!("/api/v1/enrollments/{id}/commands{query}");
        api.expect(200, "GET", &path, Body::None).await;
    }
    for (id, uuid) in [(&p, "C-1"), (&p, "ITP-1"), (&m, "C-MAC")] {
        let path = format!("/api/v1/enrollments/{id}/commands/{uuid}");
        api.expect(200, "GET", &path, Body::None).await;
    }
    let path = format!("/api/v1/enrollments/{p}/commands/NO-SUCH");
    api.expect(404, "GET", &path, Body::None).await;

    // A location from the Apps and Books side of the same process: refused bodies first,
    // then added, and the same sToken again.
    let locs = "/api/v1/locations";
    let base_url = format!("{ab}/mdm/v2");
    let no_token = json!({"base_url": base_url});
    api.expect(400, "POST", locs, json(no_token)).await;
    let bad_token = json!({"stoken": "not-a-token", "base_url": base_url});
    api.expect(400, "POST", locs, json(bad_token)).await;
    let token = json!({"stoken": env.org(ORG), "base_url": base_url});
    let loc = api.expect(201, "POST", locs, json(token.clone())).await;
    let loc_id = loc["id"].as_i64().unwrap();
    let v = api.expect(200, "POST", locs, json(token)).await;
    assert_eq!(v["existing"], true, "{v}");
    api.expect(200, "GET", locs, Body::None).await;

    // Invitations: one (with an enrollment), a dry run, some rejected, all rejected, a bad
    // body, an empty list, repeats and one in progress.
    let invs = "/api/v1/invitations";
    let person = |cuid: &str, email: &str| json!({"client_user_id": cuid, "email": email});
    let mut ann = person("ann", "ann@example.com");
    ann["enrollment_id"] = json!(p);
    let v = api.expect(202, "POST", invs, json(ann.clone())).await;
    let ann_id = v["invitations"][0]["id"].as_str().unwrap().to_string();
    let dry = json!({"invitations": [person("bob", "bob@example.com")], "dry_run": true});
    api.expect(200, "POST", invs, json(dry)).await;
    let some_bad = json!({"invitations": [
        person("bob", "bob@example.com"), person("carl", "not an email"),
    ]});
    let v = api.expect(422, "POST", invs, json(some_bad)).await;
    let bob_id = v["invitations"][0]["id"].as_str().unwrap().to_string();
    let all_bad = json!({"invitations": [person("dan", "not an email")]});
    api.expect(400, "POST", invs, json(all_bad)).await;
    let broken = Body::Raw("application/json", b"{".to_vec());
    api.expect(400, "POST", invs, broken).await;
    api.expect(400, "POST", invs, json(json!({"invitations": []})))
        .await;
    let again = json!({"invitations": [ann.clone(), ann, person("eve", "eve@example.com")]});
    api.expect(202, "POST", invs, json(again)).await;

    // Listings and one invitation.
    for query in ["", "?state=registering", "?location_id=1&limit=1"] {
        let path = format!("{invs}{query}");
        api.expect(200, "GET", &path, Body::None).await;
    }
    for query in ["?state=bogus", "?limit=many"] {
        let path = format!("{invs}{query}");
        api.expect(400, "GET", &path, Body::None).await;
    }
    api.expect(404, "GET", "/api/v1/invitations/nope", Body::None)
        .await;

    // Ann's invitation goes on: registered at Apps and Books, InviteToProgram queued for
    // the phone, which answers it.
    let ann_path = format!("/api/v1/invitations/{ann_id}");
    until("ann's InviteToProgram", 60, async || {
        let (s, v) = api.call("GET", &ann_path, Body::None).await;
        s == 200 && v["command_uuid"].is_string()
    })
    .await;
    phone.poll(false).await.unwrap();
    api.expect(200, "GET", &ann_path, Body::None).await;
    let path = format!("/api/v1/enrollments/{p}/commands");
    api.expect(200, "GET", &path, Body::None).await;

    // Resend: as it is, with a correction, refused corrections, unknown.
    let ann_resend = format!("{ann_path}/resend");
    api.expect(200, "POST", &ann_resend, Body::None).await;
    let same_enrollment = json!({"enrollment_id": p});
    api.expect(200, "POST", &ann_resend, json(same_enrollment))
        .await;
    for refused in [
        json!({"email": "not an email"}),
        json!({"enrollment_id": "NOPE"}),
        json!({"no_such_field": 1}),
    ] {
        api.expect(400, "POST", &ann_resend, json(refused)).await;
    }
    let path = "/api/v1/invitations/nope/resend";
    api.expect(404, "POST", path, Body::None).await;

    // Retire: Bob, who then cannot be sent again; unknown.
    let path = format!("/api/v1/invitations/{bob_id}/retire");
    api.expect(200, "POST", &path, Body::None).await;
    let path = format!("/api/v1/invitations/{bob_id}/resend");
    api.expect(409, "POST", &path, Body::None).await;
    let path = "/api/v1/invitations/nope/retire";
    api.expect(404, "POST", path, Body::None).await;

    // The location's apps: list, add, remove; an unknown location (an ID that is not a
    // number names none either: the API's JSON, not the router's plain-text rejection),
    // a bad adam_id, one not listed, none given.
    let apps = format!("/api/v1/locations/{loc_id}/apps");
    api.expect(200, "GET", &apps, Body::None).await;
    for unknown in ["999", "abc"] {
        let path = format!("/api/v1/locations/{unknown}/apps");
        api.expect(404, "GET", &path, Body::None).await;
        let app = json!({"adam_id": APP});
        api.expect(404, "POST", &path, json(app)).await;
        let path = format!("{path}?adam_id={APP}");
        api.expect(404, "DELETE", &path, Body::None).await;
    }
    for (adam_id, pricing) in [(APP, None), (OTHER_APP, Some("PLUS"))] {
        let app = json!({"adam_id": adam_id, "pricing_param": pricing});
        api.expect(201, "POST", &apps, json(app)).await;
    }
    let bad = json!({"adam_id": "x1"});
    api.expect(400, "POST", &apps, json(bad)).await;
    api.expect(200, "GET", &apps, Body::None).await;
    let remove = format!("{apps}?adam_id={OTHER_APP}");
    api.expect(200, "DELETE", &remove, Body::None).await;
    api.expect(404, "DELETE", &remove, Body::None).await;
    api.expect(400, "DELETE", &apps, Body::None).await;

    // Assignments: to invited people (by clientUserId and by email), some not invited, no
    // one, an unknown location; listings.
    let asg = "/api/v1/assignments";
    let ok =
        json!({"adam_id": OTHER_APP, "client_user_ids": ["ann"], "emails": ["eve@example.com"]});
    api.expect(202, "POST", asg, json(ok)).await;
    let some = json!({"adam_id": OTHER_APP, "client_user_ids": ["ann", "nobody"]});
    api.expect(422, "POST", asg, json(some)).await;
    let no_one = json!({"adam_id": APP, "client_user_ids": []});
    api.expect(400, "POST", asg, json(no_one)).await;
    let elsewhere = json!({"adam_id": APP, "client_user_ids": ["ann"], "location_id": 999});
    api.expect(404, "POST", asg, json(elsewhere)).await;
    for query in ["", "?state=pending", "?state=bogus", "?adam_id=1&limit=1"] {
        let path = format!("{asg}{query}");
        api.expect(200, "GET", &path, Body::None).await;
    }

    // Apps and Books failing: the organisation's sToken is renewed there, so the stored one
    // is refused; a registered person's new email, and a retirement, cannot be sent.
    let renewed = env
        .cli(&["appsbooks", "org", "renew", "--org", ORG])
        .trim()
        .to_string();
    let new_email = json!({"email": "ann.new@example.com"});
    api.expect(502, "POST", &ann_resend, json(new_email)).await;
    let path = format!("{ann_path}/retire");
    api.expect(502, "POST", &path, Body::None).await;
    // The renewed sToken replaces the stored one.
    let renewed = json!({"stoken": renewed, "base_url": base_url});
    let v = api.expect(200, "POST", locs, json(renewed)).await;
    assert_eq!(v["token_replaced"], true, "{v}");
    api.expect(200, "GET", locs, Body::None).await;

    // And the answers' schemas are closed: an undocumented field fails above.
    let (mut open, mut seen) = (BTreeSet::new(), BTreeSet::new());
    for (route, item) in api.doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let at = format!("{method} {route} responses");
            open_objects(&api.doc, &op["responses"], &at, &mut seen, &mut open);
        }
    }
    assert!(
        open.is_empty(),
        "answer schemas without additionalProperties: false (add \
         #[serde(deny_unknown_fields)]): {open:?}"
    );

    assert!(
        api.failures.is_empty(),
        "{} answers differ from the OpenAPI document:\n\n{}",
        api.failures.len(),
        api.failures.join("\n\n")
    );

    // Every documented answer was provoked, but those listed as not.
    let mut missing = Vec::new();
    for (route, item) in api.doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let statuses = op["responses"]
                .as_object()
                .into_iter()
                .flat_map(|r| r.keys());
            for status in statuses {
                let status: u16 = status.parse().unwrap();
                let excused = NOT_EXERCISED
                    .iter()
                    .any(|&(m, r, s, _)| (m, r, s) == (method.as_str(), route.as_str(), status));
                if !excused && !api.seen.contains(&(method.clone(), route.clone(), status)) {
                    missing.push(format!("{} {route} {status}", method.to_uppercase()));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "documented answers this test never provoked (provoke them, or list them in \
         NOT_EXERCISED with the reason):\n{}",
        missing.join("\n")
    );
}
