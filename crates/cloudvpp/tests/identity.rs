//! Device identity end to end: certificates and CMS signatures made by `openssl` (an
//! independent implementation) for every key a real Apple device may present, sent to the
//! real MDM binary on 127.0.0.1 through `Mdm-Signature` and through a proxy's
//! certificate header; and the attacks that must fail.

mod common;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use common::Env;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const KEY: &str = "test-api-key";
const CHECKIN: &str = "application/x-apple-aspen-mdm-checkin";
const MDM: &str = "application/x-apple-aspen-mdm";

/// A directory of keys and certificates made with the openssl command.
struct Ossl {
    dir: PathBuf,
}

impl Ossl {
    fn new(dir: &Path) -> Ossl {
        let dir = dir.join("pki");
        std::fs::create_dir_all(&dir).unwrap();
        Ossl { dir }
    }

    fn run(&self, args: &[&str]) -> Vec<u8> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// `rsa:BITS` or `ec:CURVE`.
    fn key(&self, name: &str, spec: &str) -> PathBuf {
        let file = format!("{name}.key");
        let (alg, param) = spec.split_once(':').unwrap();
        let opt = match alg {
            "rsa" => format!("rsa_keygen_bits:{param}"),
            _ => format!("ec_paramgen_curve:{param}"),
        };
        let alg = if alg == "rsa" { "RSA" } else { "EC" };
        self.run(&[
            "genpkey",
            "-algorithm",
            alg,
            "-pkeyopt",
            &opt,
            "-out",
            &file,
        ]);
        self.dir.join(file)
    }

    /// A self-signed CA: (certificate, key).
    fn root(&self, name: &str, spec: &str) -> (PathBuf, PathBuf) {
        let key = self.key(name, spec);
        let cert = format!("{name}.pem");
        self.run(&[
            "req",
            "-x509",
            "-new",
            "-key",
            key.to_str().unwrap(),
            "-subj",
            &format!("/CN={name}"),
            "-days",
            "30",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
            "-out",
            &cert,
        ]);
        (self.dir.join(cert), key)
    }

    /// A certificate for a new `spec` key issued by `ca`, with `ext` as its extensions.
    #[allow(clippy::too_many_arguments)]
    fn issue(
        &self,
        name: &str,
        subject: &str,
        spec: &str,
        ca: &(PathBuf, PathBuf),
        ext: &str,
        serial: u64,
        days: i64,
    ) -> (PathBuf, PathBuf) {
        let key = self.key(name, spec);
        let csr = format!("{name}.csr");
        self.run(&[
            "req",
            "-new",
            "-key",
            key.to_str().unwrap(),
            "-subj",
            subject,
            "-out",
            &csr,
        ]);
        let extfile = format!("{name}.ext");
        std::fs::write(self.dir.join(&extfile), format!("[v3]\n{ext}\n")).unwrap();
        let cert = format!("{name}.pem");
        self.run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            ca.0.to_str().unwrap(),
            "-CAkey",
            ca.1.to_str().unwrap(),
            "-set_serial",
            &serial.to_string(),
            "-days",
            &days.to_string(),
            "-extfile",
            &extfile,
            "-extensions",
            "v3",
            "-out",
            &cert,
        ]);
        (self.dir.join(cert), key)
    }

    /// A detached CMS signature of `body`, base64, as Mdm-Signature carries it.
    fn sign(&self, body: &[u8], id: &(PathBuf, PathBuf), md: &str, extra: &[&str]) -> String {
        let input = self.dir.join("body.bin");
        std::fs::write(&input, body).unwrap();
        let mut args = vec![
            "cms",
            "-sign",
            "-binary",
            "-in",
            input.to_str().unwrap(),
            "-signer",
            id.0.to_str().unwrap(),
            "-inkey",
            id.1.to_str().unwrap(),
            "-md",
            md,
            "-outform",
            "DER",
        ];
        args.extend_from_slice(extra);
        B64.encode(self.run(&args))
    }

    fn der(&self, cert: &Path) -> Vec<u8> {
        self.run(&["x509", "-in", cert.to_str().unwrap(), "-outform", "DER"])
    }

    fn sha256(&self, cert: &Path) -> String {
        let der = self.der(cert);
        let digest = self.run_stdin(&["dgst", "-sha256", "-r"], &der);
        String::from_utf8(digest).unwrap()[..64].to_string()
    }

    fn run_stdin(&self, args: &[&str], input: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut child = Command::new("openssl")
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        out.stdout
    }
}

/// Re-encodes the three outer containers of a DER CMS (ContentInfo, its [0], SignedData)
/// with indefinite lengths, as BER allows.
fn indefinite_outer(der: &[u8]) -> Vec<u8> {
    fn header_len(b: &[u8]) -> usize {
        if b[1] & 0x80 == 0 {
            2
        } else {
            2 + (b[1] & 0x7f) as usize
        }
    }
    let mut out = Vec::new();
    let ci = header_len(der);
    out.extend_from_slice(&[der[0], 0x80]);
    let oid_len = 2 + der[ci + 1] as usize;
    out.extend_from_slice(&der[ci..ci + oid_len]);
    let wrapper = ci + oid_len;
    out.extend_from_slice(&[der[wrapper], 0x80]);
    let sd = wrapper + header_len(&der[wrapper..]);
    out.extend_from_slice(&[der[sd], 0x80]);
    out.extend_from_slice(&der[sd + header_len(&der[sd..])..]);
    out.extend_from_slice(&[0; 6]);
    assert_eq!(&out[..2], &[0x30, 0x80]);
    out
}

fn plist(entries: &[(&str, &str)]) -> Vec<u8> {
    let mut s = String::from(
        r#"<?xml version="1.0" encoding="UTF-8"?><!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd"><plist version="1.0"><dict>"#,
    );
    for (k, v) in entries {
        if let Some(data) = v.strip_prefix("data:") {
            s.push_str(&format!("<key>{k}</key><data>{data}</data>"));
        } else {
            s.push_str(&format!("<key>{k}</key><string>{v}</string>"));
        }
    }
    s.push_str("</dict></plist>");
    s.into_bytes()
}

fn authenticate(udid: &str, serial: &str) -> Vec<u8> {
    plist(&[
        ("MessageType", "Authenticate"),
        ("UDID", udid),
        ("Topic", "com.apple.mgmt.External.test"),
        ("SerialNumber", serial),
        ("ProductName", "iPhone17,1"),
    ])
}

fn token_update(udid: &str) -> Vec<u8> {
    let token = B64.encode([7u8; 32]);
    plist(&[
        ("MessageType", "TokenUpdate"),
        ("UDID", udid),
        ("Topic", "com.apple.mgmt.External.test"),
        ("Token", &format!("data:{token}")),
        ("PushMagic", "magic"),
    ])
}

fn idle(udid: &str) -> Vec<u8> {
    plist(&[("UDID", udid), ("Status", "Idle")])
}

/// How a request proves its identity.
enum Proof {
    Signature(String),
    Header(String, Option<String>),
}

struct Mdm {
    srv: common::Server,
    http: reqwest::Client,
    log: PathBuf,
}

impl Mdm {
    fn start(env: &Env, ca: &Path, extra: &[&str]) -> Mdm {
        let args = common::mdm_serve_args(KEY, ca.to_str().unwrap(), extra);
        let log = env
            .dir
            .path()
            .join(format!("mdm-{}.log", uuid::Uuid::new_v4().simple()));
        Mdm {
            srv: env.spawn_logged(&args, &log),
            http: reqwest::Client::new(),
            log,
        }
    }

    async fn put(&self, path: &str, ct: &str, body: Vec<u8>, proof: Proof) -> (u16, String) {
        let mut req = self
            .http
            .put(self.srv.url(path))
            .header("Content-Type", ct)
            .body(body);
        match &proof {
            Proof::Signature(s) => req = req.header("Mdm-Signature", s),
            Proof::Header(cert, chain) => {
                req = req.header("X-Client-Cert", cert);
                if let Some(c) = chain {
                    req = req.header("Client-Cert-Chain", c);
                }
            }
        }
        let r = req.send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn enrollment(&self, id: &str) -> (u16, Value) {
        let r = self
            .http
            .get(self.srv.url(&format!("/api/v1/enrollments/{id}")))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The PKI of every test: roots of both algorithms and device identities of every kind.
struct Pki {
    o: Ossl,
    rsa_root: (PathBuf, PathBuf),
    ec_root: (PathBuf, PathBuf),
    p384_root: (PathBuf, PathBuf),
    inter: (PathBuf, PathBuf),
    bundle: PathBuf,
}

const CLIENT: &str = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth";

impl Pki {
    fn new(env: &Env) -> Pki {
        let o = Ossl::new(env.dir.path());
        let rsa_root = o.root("Root RSA", "rsa:2048");
        let ec_root = o.root("Root EC", "ec:P-256");
        let p384_root = o.root("Root P384", "ec:P-384");
        let inter = o.issue(
            "Intermediate",
            "/CN=Intermediate",
            "rsa:2048",
            &rsa_root,
            "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,digitalSignature",
            9000,
            30,
        );
        // --ca holds only the roots: the intermediate travels in the signature.
        let mut bundle = Vec::new();
        for c in [&rsa_root.0, &ec_root.0, &p384_root.0] {
            bundle.extend(std::fs::read(c).unwrap());
        }
        let path = env.dir.path().join("ca.pem");
        std::fs::write(&path, bundle).unwrap();
        Pki {
            o,
            rsa_root,
            ec_root,
            p384_root,
            inter,
            bundle: path,
        }
    }
}

/// One identity to try: name, key, issuer, digest, with the intermediate.
struct Case {
    name: &'static str,
    key: &'static str,
    md: &'static str,
    issuer: &'static str,
}

const CASES: &[Case] = &[
    Case {
        name: "rsa1024-sha1",
        key: "rsa:1024",
        md: "sha1",
        issuer: "rsa",
    },
    Case {
        name: "rsa1024-sha256",
        key: "rsa:1024",
        md: "sha256",
        issuer: "rsa",
    },
    Case {
        name: "rsa2048-sha256",
        key: "rsa:2048",
        md: "sha256",
        issuer: "rsa",
    },
    Case {
        name: "rsa4096-sha256",
        key: "rsa:4096",
        md: "sha256",
        issuer: "rsa",
    },
    Case {
        name: "p256-sha256",
        key: "ec:P-256",
        md: "sha256",
        issuer: "ec",
    },
    Case {
        name: "p384-sha384",
        key: "ec:P-384",
        md: "sha384",
        issuer: "p384",
    },
    Case {
        name: "rsa-ca-issues-p256",
        key: "ec:P-256",
        md: "sha256",
        issuer: "rsa",
    },
    Case {
        name: "ec-ca-issues-rsa2048",
        key: "rsa:2048",
        md: "sha256",
        issuer: "ec",
    },
    Case {
        name: "p256-via-intermediate",
        key: "ec:P-256",
        md: "sha256",
        issuer: "inter",
    },
];

/// Enrolls a device with `id` and checks in once; every message must be accepted.
async fn enroll_and_check_in(
    m: &Mdm,
    udid: &str,
    proof: impl Fn(&[u8]) -> Proof,
) -> Result<(), String> {
    for (path, ct, body) in [
        ("/checkin", CHECKIN, authenticate(udid, "SERIAL1")),
        ("/checkin", CHECKIN, token_update(udid)),
        ("/mdm", MDM, idle(udid)),
    ] {
        let p = proof(&body);
        let (status, text) = m.put(path, ct, body, p).await;
        if status != 200 {
            return Err(format!("{path}: {status} {text}"));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_device_key_type_works_through_mdm_signature_and_the_proxy_header() {
    let env = Env::new();
    let pki = Pki::new(&env);
    let sig = Mdm::start(&env, &pki.bundle, &[]);
    // Its own database: one certificate belongs to one device.
    let env2 = Env::new();
    let hdr = Mdm::start(&env2, &pki.bundle, &["--cert-header", "X-Client-Cert"]);
    let inter_der = format!(":{}:", B64.encode(pki.o.der(&pki.inter.0)));
    for (n, case) in CASES.iter().enumerate() {
        let issuer = match case.issuer {
            "rsa" => &pki.rsa_root,
            "ec" => &pki.ec_root,
            "p384" => &pki.p384_root,
            _ => &pki.inter,
        };
        let id = pki.o.issue(
            case.name,
            &format!("/CN={}", case.name),
            case.key,
            issuer,
            CLIENT,
            100 + n as u64,
            30,
        );
        let chain: Vec<&str> = if case.issuer == "inter" {
            vec!["-certfile", pki.inter.0.to_str().unwrap()]
        } else {
            vec![]
        };
        let udid = format!("SIG-{}", case.name);
        enroll_and_check_in(&sig, &udid, |body| {
            Proof::Signature(pki.o.sign(body, &id, case.md, &chain))
        })
        .await
        .unwrap_or_else(|e| panic!("{} through Mdm-Signature: {e}", case.name));
        let (_, e) = sig.enrollment(&udid).await;
        assert_eq!(e["enabled"], true, "{}: {e}", case.name);
        assert_eq!(
            e["certificates"][0]["sha256"],
            pki.o.sha256(&id.0),
            "{}: the identity is the signer's certificate",
            case.name
        );

        let rfc9440 = format!(":{}:", B64.encode(pki.o.der(&id.0)));
        let chain_header = (case.issuer == "inter").then(|| inter_der.clone());
        let udid = format!("HDR-{}", case.name);
        enroll_and_check_in(&hdr, &udid, |_| {
            Proof::Header(rfc9440.clone(), chain_header.clone())
        })
        .await
        .unwrap_or_else(|e| panic!("{} through the certificate header: {e}", case.name));
    }
    // BER with indefinite lengths, as streaming CMS encoders (Apple's among them) write
    // the outer containers.
    let ber_id = pki
        .o
        .issue("ber", "/CN=ber", "ec:P-256", &pki.inter, CLIENT, 301, 30);
    let chain = ["-certfile", pki.inter.0.to_str().unwrap()];
    enroll_and_check_in(&sig, "SIG-BER", |body| {
        let der = B64
            .decode(pki.o.sign(body, &ber_id, "sha256", &chain))
            .unwrap();
        Proof::Signature(B64.encode(indefinite_outer(&der)))
    })
    .await
    .expect("BER signature");

    // The intermediate is needed: without it the chain does not reach a configured CA.
    let id = pki.o.issue(
        "lonely",
        "/CN=lonely",
        "ec:P-256",
        &pki.inter,
        CLIENT,
        300,
        30,
    );
    let body = authenticate("LONELY", "S");
    let (status, text) = sig
        .put(
            "/checkin",
            CHECKIN,
            body.clone(),
            Proof::Signature(pki.o.sign(&body, &id, "sha256", &[])),
        )
        .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("not trusted"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_that_are_not_device_identities_are_refused_with_the_reason() {
    let env = Env::new();
    let pki = Pki::new(&env);
    let m = Mdm::start(&env, &pki.bundle, &[]);
    let o = &pki.o;
    let rogue = o.root("Rogue", "rsa:2048");
    let cases: Vec<(&str, (PathBuf, PathBuf), &str)> = vec![
        (
            "rsa512",
            o.issue(
                "rsa512",
                "/CN=small",
                "rsa:512",
                &pki.rsa_root,
                CLIENT,
                1,
                30,
            ),
            "key too small",
        ),
        ("ca-as-identity", pki.rsa_root.clone(), "not a leaf"),
        (
            "server-auth-only",
            o.issue(
                "server",
                "/CN=server",
                "rsa:2048",
                &pki.rsa_root,
                "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth",
                2,
                30,
            ),
            "not for client authentication",
        ),
        (
            "expired",
            o.issue(
                "expired",
                "/CN=expired",
                "ec:P-256",
                &pki.ec_root,
                CLIENT,
                3,
                -1,
            ),
            "expired",
        ),
        (
            "other-ca",
            o.issue(
                "stranger",
                "/CN=stranger",
                "rsa:2048",
                &rogue,
                CLIENT,
                4,
                30,
            ),
            "not trusted",
        ),
    ];
    for (name, id, reason) in cases {
        let udid = format!("BAD-{name}");
        let body = authenticate(&udid, "S");
        let (status, text) = m
            .put(
                "/checkin",
                CHECKIN,
                body.clone(),
                Proof::Signature(o.sign(&body, &id, "sha256", &[])),
            )
            .await;
        assert_eq!(status, 400, "{name}: {text}");
        assert!(
            text.contains(reason),
            "{name}: wanted {reason:?} in {text:?}"
        );
        assert_eq!(m.enrollment(&udid).await.0, 404, "{name}");
        // The log names the same check.
        assert!(m.log().contains(reason), "{name}: log lacks {reason:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn knowing_a_device_certificate_is_not_enough_to_act_as_that_device() {
    let env = Env::new();
    let pki = Pki::new(&env);
    let m = Mdm::start(&env, &pki.bundle, &[]);
    let o = &pki.o;
    let victim = o.issue(
        "victim",
        "/CN=victim",
        "rsa:2048",
        &pki.rsa_root,
        CLIENT,
        4242,
        30,
    );
    enroll_and_check_in(&m, "VICTIM", |b| {
        Proof::Signature(o.sign(b, &victim, "sha256", &[]))
    })
    .await
    .unwrap();
    // The attacker has the victim's public certificate and makes a twin: same issuer name
    // and serial, their own key, issued by their own CA that copies the real CA's name.
    let fake_ca = o.root("Root RSA", "rsa:2048");
    let twin = o.issue("twin", "/CN=victim", "rsa:2048", &fake_ca, CLIENT, 4242, 30);
    let body = idle("VICTIM");
    let victim_pem = victim.0.to_str().unwrap();
    let attempts = [
        // Signed by the twin, carrying the twin and the victim's certificate.
        (
            o.sign(&body, &twin, "sha256", &["-certfile", victim_pem]),
            "ambiguous",
        ),
        // Signed by the twin, carrying only the twin: the twin is the identity, and untrusted.
        (o.sign(&body, &twin, "sha256", &[]), "not trusted"),
        // Signed by the twin's key, carrying only the victim's certificate.
        (
            o.sign(
                &body,
                &twin,
                "sha256",
                &["-nocerts", "-certfile", victim_pem],
            ),
            "does not verify",
        ),
    ];
    for (sig, reason) in attempts {
        let (status, text) = m
            .put("/mdm", MDM, body.clone(), Proof::Signature(sig))
            .await;
        assert_eq!(status, 400, "{text}");
        assert!(text.contains(reason), "wanted {reason:?} in {text:?}");
    }
    // Re-enrollment with the twin is refused too, and the victim's binding holds.
    let auth = authenticate("VICTIM", "S");
    let (status, _) = m
        .put(
            "/checkin",
            CHECKIN,
            auth.clone(),
            Proof::Signature(o.sign(&auth, &twin, "sha256", &["-certfile", victim_pem])),
        )
        .await;
    assert_eq!(status, 400);
    let (_, e) = m.enrollment("VICTIM").await;
    assert_eq!(e["certificates"].as_array().unwrap().len(), 1, "{e}");
    assert_eq!(e["certificates"][0]["sha256"], o.sha256(&victim.0));
    let (status, text) = m
        .put(
            "/mdm",
            MDM,
            body.clone(),
            Proof::Signature(o.sign(&body, &victim, "sha256", &[])),
        )
        .await;
    assert_eq!(status, 200, "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn re_enrollment_replaces_the_binding_and_is_logged() {
    let env = Env::new();
    let pki = Pki::new(&env);
    let m = Mdm::start(&env, &pki.bundle, &[]);
    let o = &pki.o;
    let old = o.issue("old", "/CN=old", "rsa:2048", &pki.rsa_root, CLIENT, 10, 30);
    let new = o.issue("new", "/CN=new", "ec:P-256", &pki.ec_root, CLIENT, 11, 30);
    let with = |id: &(PathBuf, PathBuf)| {
        let id = id.clone();
        move |b: &[u8]| Proof::Signature(o.sign(b, &id, "sha256", &[]))
    };
    enroll_and_check_in(&m, "MOVER", with(&old)).await.unwrap();
    enroll_and_check_in(&m, "MOVER", with(&new)).await.unwrap();
    let body = idle("MOVER");
    let (status, text) = m.put("/mdm", MDM, body.clone(), with(&old)(&body)).await;
    assert_eq!(
        status, 400,
        "the replaced certificate stops working: {text}"
    );
    let (status, _) = m.put("/mdm", MDM, body.clone(), with(&new)(&body)).await;
    assert_eq!(status, 200);
    let (_, e) = m.enrollment("MOVER").await;
    let certs = e["certificates"].as_array().unwrap();
    assert_eq!(certs.len(), 2, "{e}");
    assert_eq!(certs[0]["sha256"], o.sha256(&new.0));
    assert_eq!(certs[0]["current"], true);
    assert_eq!(certs[1]["sha256"], o.sha256(&old.0));
    assert_eq!(certs[1]["current"], false);
    assert!(certs[1]["replaced_at"].is_i64());
    let log = m.log();
    assert!(
        log.contains("certificate binding replaced") && log.contains(&o.sha256(&old.0)),
        "{log}"
    );
    // A replaced certificate never comes back: not with its key, not by replaying the
    // Authenticate it once sent. The device's new certificate keeps working.
    let auth = authenticate("MOVER", "SERIAL1");
    let old_auth = with(&old)(&auth);
    let (status, text) = m.put("/checkin", CHECKIN, auth.clone(), old_auth).await;
    assert_eq!(status, 400);
    assert!(text.contains("replaced"), "{text}");
    let (status, _) = m.put("/mdm", MDM, body.clone(), with(&new)(&body)).await;
    assert_eq!(status, 200);
    let (_, e) = m.enrollment("MOVER").await;
    assert_eq!(e["certificates"][0]["sha256"], o.sha256(&new.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_option_requires_the_device_id_in_the_certificate() {
    let env = Env::new();
    let pki = Pki::new(&env);
    let m = Mdm::start(&env, &pki.bundle, &["--require-device-id-in-cert"]);
    let o = &pki.o;
    let by_cn = o.issue(
        "by-cn",
        "/CN=UDID-CN",
        "ec:P-256",
        &pki.ec_root,
        CLIENT,
        20,
        30,
    );
    let by_san = o.issue(
        "by-san",
        "/CN=device",
        "ec:P-256",
        &pki.ec_root,
        &format!("{CLIENT}\nsubjectAltName=DNS:udid-san"),
        21,
        30,
    );
    let other = o.issue(
        "other",
        "/CN=someone-else",
        "ec:P-256",
        &pki.ec_root,
        CLIENT,
        22,
        30,
    );
    // An attested certificate of the attacker's own device: its serial, not the victim's ID.
    let attacker = o.issue(
        "attacker",
        "/CN=UDID-ATTACKER/serialNumber=SER-ATTACKER",
        "ec:P-256",
        &pki.ec_root,
        CLIENT,
        23,
        30,
    );
    // A look-alike that only Unicode case folding would match (KELVIN SIGN for K).
    let kelvin = o.issue(
        "kelvin",
        "/CN=UDID-\u{212A}1",
        "ec:P-256",
        &pki.ec_root,
        CLIENT,
        24,
        30,
    );
    let try_auth = |udid: &'static str, serial: &'static str, id: &(PathBuf, PathBuf)| {
        let body = authenticate(udid, serial);
        let sig = o.sign(&body, id, "sha256", &[]);
        m.put("/checkin", CHECKIN, body, Proof::Signature(sig))
    };
    assert_eq!(try_auth("UDID-CN", "X", &by_cn).await.0, 200);
    assert_eq!(try_auth("UDID-SAN", "SERIAL-777", &by_san).await.0, 200);
    for (udid, serial, id) in [
        ("UDID-OTHER", "Y", &other),
        ("UDID-VICTIM", "SER-ATTACKER", &attacker),
        ("UDID-K1", "Z", &kelvin),
    ] {
        let (status, text) = try_auth(udid, serial, id).await;
        assert_eq!(status, 400, "{udid}: {text}");
        assert!(text.contains("does not name this device"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_certificate_header_is_trusted_only_from_the_configured_proxy() {
    let env = Env::new();
    let pki = Pki::new(&env);
    let o = &pki.o;
    let id = o.issue(
        "proxied",
        "/CN=proxied",
        "rsa:2048",
        &pki.rsa_root,
        CLIENT,
        30,
        30,
    );
    let cert = format!(":{}:", B64.encode(o.der(&id.0)));
    let body = authenticate("PROXIED", "S");

    // Requests from an address that is not the proxy's are refused.
    let elsewhere = Mdm::start(
        &env,
        &pki.bundle,
        &[
            "--cert-header",
            "X-Client-Cert",
            "--trusted-proxy",
            "10.9.8.7/32",
        ],
    );
    let (status, text) = elsewhere
        .put(
            "/checkin",
            CHECKIN,
            body.clone(),
            Proof::Header(cert.clone(), None),
        )
        .await;
    assert_eq!(status, 400);
    assert!(text.contains("not a trusted proxy"), "{text}");
    drop(elsewhere);

    // With a shared secret, only requests that carry it.
    let secret = Mdm::start(
        &env,
        &pki.bundle,
        &[
            "--cert-header",
            "X-Client-Cert",
            "--trusted-proxy",
            "127.0.0.1",
            "--proxy-secret",
            "s3cret",
        ],
    );
    let send = |value: Option<&'static str>| {
        let mut req = secret
            .http
            .put(secret.srv.url("/checkin"))
            .header("Content-Type", CHECKIN)
            .header("X-Client-Cert", &cert)
            .body(body.clone());
        if let Some(v) = value {
            req = req.header("Cloudvpp-Proxy-Secret", v);
        }
        req.send()
    };
    assert_eq!(send(None).await.unwrap().status(), 400);
    assert_eq!(send(Some("wrong")).await.unwrap().status(), 400);
    assert_eq!(send(Some("s3cret")).await.unwrap().status(), 200);
    assert!(
        !secret.log().contains("s3cret"),
        "the secret stays out of the log"
    );

    // Without a named proxy, the service will not listen beyond loopback.
    let out = Command::new(common::BIN)
        .args([
            "mdm",
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--cert-header",
            "X-Client-Cert",
        ])
        .args([
            "--ca",
            pki.bundle.to_str().unwrap(),
            "--database",
            &env.db(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--trusted-proxy"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_certificate_racing_for_several_devices_binds_one() {
    let env = Env::new();
    let pki = Pki::new(&env);
    let m = Mdm::start(&env, &pki.bundle, &[]);
    let o = &pki.o;
    let id = o.issue(
        "racer",
        "/CN=racer",
        "ec:P-256",
        &pki.ec_root,
        CLIENT,
        40,
        30,
    );
    let requests: Vec<_> = (0..16)
        .map(|n| {
            let udid = format!("RACE-{n}");
            let body = authenticate(&udid, "S");
            let sig = o.sign(&body, &id, "sha256", &[]);
            m.put("/checkin", CHECKIN, body, Proof::Signature(sig))
        })
        .collect();
    let answers = futures::future::join_all(requests).await;
    let won = answers.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(won, 1, "{answers:?}");
    assert!(answers.iter().all(|(s, _)| *s == 200 || *s == 400));
}

#[tokio::test(flavor = "multi_thread")]
async fn intermediates_must_be_cas_that_may_issue_client_certificates() {
    let env = Env::new();
    let pki = Pki::new(&env);
    let m = Mdm::start(&env, &pki.bundle, &[]);
    let o = &pki.o;
    let ca = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign";
    let cases = [
        // pathlen:0 forbids the CA below it.
        (
            "pathlen",
            "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign"
                .to_string(),
            true,
        ),
        (
            "no-keycertsign",
            "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,digitalSignature".to_string(),
            false,
        ),
        (
            "server-only",
            format!("{ca}\nextendedKeyUsage=serverAuth"),
            false,
        ),
        (
            "not-a-ca",
            "basicConstraints=critical,CA:FALSE".to_string(),
            false,
        ),
    ];
    for (n, (name, ext, nested)) in cases.iter().enumerate() {
        let sub = o.issue(
            &format!("sub-{name}"),
            &format!("/CN=Sub {name}"),
            "ec:P-256",
            &pki.rsa_root,
            ext,
            500 + n as u64,
            30,
        );
        let mut chain = vec![sub.0.clone()];
        let issuer = if *nested {
            let below = o.issue(
                &format!("below-{name}"),
                &format!("/CN=Below {name}"),
                "ec:P-256",
                &sub,
                ca,
                600 + n as u64,
                30,
            );
            chain.push(below.0.clone());
            below
        } else {
            sub
        };
        let leaf = o.issue(
            &format!("leaf-{name}"),
            &format!("/CN=leaf {name}"),
            "ec:P-256",
            &issuer,
            CLIENT,
            700 + n as u64,
            30,
        );
        let bundle = env.dir.path().join(format!("chain-{name}.pem"));
        let pems: Vec<u8> = chain
            .iter()
            .flat_map(|c| std::fs::read(c).unwrap())
            .collect();
        std::fs::write(&bundle, pems).unwrap();
        let udid = format!("CHAIN-{name}");
        let body = authenticate(&udid, "S");
        let sig = o.sign(
            &body,
            &leaf,
            "sha256",
            &["-certfile", bundle.to_str().unwrap()],
        );
        let (status, text) = m
            .put("/checkin", CHECKIN, body, Proof::Signature(sig))
            .await;
        assert_eq!(status, 400, "{name}: {text}");
        assert!(text.contains("not trusted"), "{name}: {text}");
    }
    // The same shapes with a proper intermediate are accepted.
    let good = o.issue(
        "sub-good",
        "/CN=Sub good",
        "ec:P-256",
        &pki.rsa_root,
        ca,
        800,
        30,
    );
    let leaf = o.issue(
        "leaf-good",
        "/CN=leaf good",
        "ec:P-256",
        &good,
        CLIENT,
        801,
        30,
    );
    let body = authenticate("CHAIN-good", "S");
    let sig = o.sign(
        &body,
        &leaf,
        "sha256",
        &["-certfile", good.0.to_str().unwrap()],
    );
    assert_eq!(
        m.put("/checkin", CHECKIN, body, Proof::Signature(sig))
            .await
            .0,
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repeated_proxy_header_is_refused() {
    let env = Env::new();
    let pki = Pki::new(&env);
    let o = &pki.o;
    let m = Mdm::start(&env, &pki.bundle, &["--cert-header", "X-Client-Cert"]);
    let mine = o.issue("mine", "/CN=mine", "ec:P-256", &pki.ec_root, CLIENT, 50, 30);
    let theirs = o.issue(
        "theirs",
        "/CN=theirs",
        "ec:P-256",
        &pki.ec_root,
        CLIENT,
        51,
        30,
    );
    let h = |id: &(PathBuf, PathBuf)| format!(":{}:", B64.encode(o.der(&id.0)));
    let r = m
        .http
        .put(m.srv.url("/checkin"))
        .header("Content-Type", CHECKIN)
        .header("X-Client-Cert", h(&mine))
        .header("x-client-cert", h(&theirs))
        .body(authenticate("TWICE", "S"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("more than once"));
    assert_eq!(m.enrollment("TWICE").await.0, 404);
}
