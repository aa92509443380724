//! Writes the seed corpus under `fuzz/corpus/<target>/`: real bodies as devices, the
//! admin API and Apps and Books clients send them, a few small hostile plists, and
//! `Mdm-Signature` headers made with the workspace's dev PKI.
//!
//! `cargo run --example seed_corpus` from `fuzz/` (stable toolchain; rewrites the files,
//! and the signatures differ on every run since the keys are new).

use std::path::Path;

use base64::Engine;
use cloudvpp_identity::{devpki, pem, sign_detached};
use plist::{Dictionary, Value};

const UDID: &str = "00008110-000A1B2C3D4E5F60";
const TOPIC: &str = "com.apple.mgmt.External.2f6c3a1e-7b4d-4e8a-9c0f-5d2e1b3a4c6f";

fn dict(pairs: &[(&str, Value)]) -> Value {
    let mut d = Dictionary::new();
    for (k, v) in pairs {
        d.insert((*k).into(), v.clone());
    }
    Value::Dictionary(d)
}

fn s(v: &str) -> Value {
    Value::String(v.into())
}

fn xml(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    v.to_writer_xml(&mut out).unwrap();
    out
}

fn binary(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    v.to_writer_binary(&mut out).unwrap();
    out
}

/// A binary plist of arrays (object references) and strings, two-byte references.
fn bplist(objects: &[Result<Vec<u16>, &str>]) -> Vec<u8> {
    let mut out = b"bplist00".to_vec();
    let mut offsets = Vec::new();
    for o in objects {
        offsets.push(out.len() as u16);
        match o {
            Ok(refs) => {
                out.push(0xa0 | refs.len() as u8);
                for r in refs {
                    out.extend(r.to_be_bytes());
                }
            }
            Err(text) => {
                out.push(0x50 | text.len() as u8);
                out.extend(text.as_bytes());
            }
        }
    }
    let table = out.len() as u64;
    for off in offsets {
        out.extend(off.to_be_bytes());
    }
    out.extend([0, 0, 0, 0, 0, 0, 2, 2]);
    out.extend((objects.len() as u64).to_be_bytes());
    out.extend(0u64.to_be_bytes());
    out.extend(table.to_be_bytes());
    out
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn main() {
    // Check-in messages.
    let authenticate = dict(&[
        ("BuildVersion", s("22A3354")),
        ("MessageType", s("Authenticate")),
        ("OSVersion", s("17.0")),
        ("ProductName", s("iPhone14,2")),
        ("SerialNumber", s("F2LX1234ABCD")),
        ("Topic", s(TOPIC)),
        ("UDID", s(UDID)),
        ("DeviceName", s("Pat's iPhone")),
    ]);
    let token = Value::Data((0u8..32).collect());
    let token_update = dict(&[
        ("AwaitingConfiguration", Value::Boolean(false)),
        ("MessageType", s("TokenUpdate")),
        ("PushMagic", s("8A5E3A7C-0D2B-4C1E-9F3A-2B1C0D9E8F7A")),
        ("Token", token.clone()),
        ("Topic", s(TOPIC)),
        ("UDID", s(UDID)),
    ]);
    let mac_user = dict(&[
        ("MessageType", s("TokenUpdate")),
        ("PushMagic", s("1B2C3D4E-0000-4000-8000-000000000001")),
        ("Token", token.clone()),
        ("Topic", s(TOPIC)),
        ("UDID", s("564D0E3A-9F1B-4C2D-8E7F-0A1B2C3D4E5F")),
        ("UserID", s("A1B2C3D4-E5F6-4789-ABCD-EF0123456789")),
        ("UserLongName", s("Pat Example")),
        ("UserShortName", s("pat")),
    ]);
    let shared_ipad = dict(&[
        ("MessageType", s("TokenUpdate")),
        ("PushMagic", s("1B2C3D4E-0000-4000-8000-000000000002")),
        ("Token", token.clone()),
        ("Topic", s(TOPIC)),
        ("UDID", s(UDID)),
        ("UserID", s("FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF")),
        ("UserShortName", s("pat@school.example")),
    ]);
    let user_enrollment = dict(&[
        ("MessageType", s("TokenUpdate")),
        ("EnrollmentID", s("E1F2A3B4-C5D6-4E7F-8091-A2B3C4D5E6F7")),
        (
            "EnrollmentUserID",
            s("0A1B2C3D-4E5F-4061-8293-A4B5C6D7E8F9"),
        ),
        ("PushMagic", s("1B2C3D4E-0000-4000-8000-000000000003")),
        ("Token", token),
        ("Topic", s(TOPIC)),
    ]);
    let checkout = dict(&[
        ("MessageType", s("CheckOut")),
        ("Topic", s(TOPIC)),
        ("UDID", s(UDID)),
    ]);
    write("checkin_plist", "authenticate.xml", &xml(&authenticate));
    write(
        "checkin_plist",
        "authenticate.bplist",
        &binary(&authenticate),
    );
    write("checkin_plist", "token-update.xml", &xml(&token_update));
    write(
        "checkin_plist",
        "token-update.bplist",
        &binary(&token_update),
    );
    write(
        "checkin_plist",
        "token-update-mac-user.xml",
        &xml(&mac_user),
    );
    write(
        "checkin_plist",
        "token-update-shared-ipad.bplist",
        &binary(&shared_ipad),
    );
    write(
        "checkin_plist",
        "token-update-user-enrollment.xml",
        &xml(&user_enrollment),
    );
    write("checkin_plist", "checkout.xml", &xml(&checkout));
    // Hostile shapes, small: an exponential reference DAG and a cycle.
    let dag: Vec<_> = (1..20)
        .map(|i| Ok(vec![i, i]))
        .chain([Err("leaf")])
        .collect();
    write("checkin_plist", "dag.bplist", &bplist(&dag));
    write(
        "checkin_plist",
        "cycle.bplist",
        &bplist(&[Ok(vec![1]), Ok(vec![0])]),
    );
    write(
        "checkin_plist",
        "nested.xml",
        format!(
            "<plist>{}{}</plist>",
            "<array>".repeat(40),
            "</array>".repeat(40)
        )
        .as_bytes(),
    );

    // Command reports.
    let idle = dict(&[("Status", s("Idle")), ("UDID", s(UDID))]);
    let invite_ack = dict(&[
        ("CommandUUID", s("0001_InviteToProgram")),
        ("InvitationResult", s("Acknowledged")),
        ("Status", s("Acknowledged")),
        ("UDID", s(UDID)),
    ]);
    let error = dict(&[
        ("CommandUUID", s("5c1d7a0e-0000-4000-8000-00000000000a")),
        (
            "ErrorChain",
            Value::Array(vec![dict(&[
                ("ErrorCode", Value::Integer(12021.into())),
                ("ErrorDomain", s("MCMDMErrorDomain")),
                ("LocalizedDescription", s("Unknown command")),
                ("USEnglishDescription", s("Unknown command")),
            ])]),
        ),
        ("Status", s("Error")),
        ("UDID", s(UDID)),
    ]);
    let not_now = dict(&[
        ("CommandUUID", s("5c1d7a0e-0000-4000-8000-00000000000b")),
        ("Status", s("NotNow")),
        ("EnrollmentID", s("E1F2A3B4-C5D6-4E7F-8091-A2B3C4D5E6F7")),
    ]);
    let device_information = dict(&[
        ("CommandUUID", s("5c1d7a0e-0000-4000-8000-00000000000c")),
        (
            "QueryResponses",
            dict(&[
                ("DeviceName", s("Pat's iPhone")),
                ("OSVersion", s("17.0")),
                ("BatteryLevel", Value::Real(0.87)),
                ("IsSupervised", Value::Boolean(true)),
                ("AvailableDeviceCapacity", Value::Real(87.5)),
                ("WiFiMAC", s("a4:83:e7:00:00:01")),
            ]),
        ),
        ("Status", s("Acknowledged")),
        ("UDID", s(UDID)),
        ("UserID", s("A1B2C3D4-E5F6-4789-ABCD-EF0123456789")),
    ]);
    write("report_plist", "idle.xml", &xml(&idle));
    write("report_plist", "idle.bplist", &binary(&idle));
    write("report_plist", "invite-acknowledged.xml", &xml(&invite_ack));
    write("report_plist", "error.xml", &xml(&error));
    write("report_plist", "error.bplist", &binary(&error));
    write(
        "report_plist",
        "not-now-user-enrollment.xml",
        &xml(&not_now),
    );
    write(
        "report_plist",
        "device-information.xml",
        &xml(&device_information),
    );
    write(
        "report_plist",
        "device-information.bplist",
        &binary(&device_information),
    );

    // Commands.
    let invite = cloudvpp_mdmwire::invite_to_program(
        "0001_InviteToProgram",
        "https://buy.itunes.apple.com/WebObjects/MZFinance.woa/wa/associateVPPUserWithITSAccount?cc=us&inviteCode=7770596534cf46b58fb0254e7112a5e5&mt=8",
    );
    let query = dict(&[
        (
            "Command",
            dict(&[
                ("RequestType", s("DeviceInformation")),
                (
                    "Queries",
                    Value::Array(vec![s("DeviceName"), s("OSVersion"), s("BatteryLevel")]),
                ),
            ]),
        ),
        ("CommandUUID", s("5c1d7a0e-0000-4000-8000-00000000000c")),
    ]);
    write("command_plist", "invite-to-program.xml", &invite);
    let invite_value: Value = plist::from_bytes(&invite).unwrap();
    write(
        "command_plist",
        "invite-to-program.bplist",
        &binary(&invite_value),
    );
    write("command_plist", "device-information.xml", &xml(&query));
    write(
        "command_plist",
        "device-information.bplist",
        &binary(&query),
    );

    // Apps and Books bodies.
    let json = [
        (
            "users-create.json",
            r#"{"users":[{"clientUserId":"client-1","email":"pat@example.com"},{"clientUserId":"client-2","managedAppleId":"sam@school.example"}]}"#,
        ),
        (
            "users-update.json",
            r#"{"users":[{"clientUserId":"client-1","email":"pat.new@example.com"}]}"#,
        ),
        (
            "users-retire.json",
            r#"{"users":[{"clientUserId":"client-1"},{"clientUserId":"client-2"}]}"#,
        ),
        ("users-empty.json", r#"{"users":[]}"#),
        (
            "client-config.json",
            r#"{"mdmInfo":{"id":"3a1f6c2e-mdm","metadata":"tenant=42","name":"cloudvpp"},"notificationAuthToken":"s3cr3t-token","notificationTypes":["USER_MANAGEMENT","USER_ASSOCIATED"],"notificationUrl":"https://mdm.example.com/notify"}"#,
        ),
        ("client-config-empty.json", "{}"),
        (
            "notification-user-associated.json",
            r#"{"notification":{"associatedUsers":[{"clientUserId":"client-100","email":"client-100@apple.com","idHash":"leSKk3IaE2vk2KLmv2k3/200D3=","inviteCode":"f551b37da07146628e8dcbe0111f0364","status":"Associated"}]},"notificationId":"90b83144-0000","notificationType":"USER_ASSOCIATED","uId":"2049025000431439"}"#,
        ),
        (
            "notification-user-management.json",
            r#"{"notification":{"eventId":"ev-1","result":"FAILURE","type":"CREATE","users":[{"clientUserId":"client-1","status":"Registered","inviteCode":"abc"}],"error":{"errorInfo":{"clientUserIds":["client-1"]},"errorMessage":"Too many users","errorNumber":9714}},"notificationId":"n-2","notificationType":"USER_MANAGEMENT","uId":"2049025000431439"}"#,
        ),
        (
            "notification-test.json",
            r#"{"notification":{},"notificationId":"n-3","notificationType":"TEST_NOTIFICATION","uId":"2049025000431439"}"#,
        ),
    ];
    for (name, body) in json {
        write("abwire_json", name, body.as_bytes());
    }

    // Mdm-Signature: as text (header, newline, body) and as DER (see the target).
    let (ca, ca_key) = devpki::new_ca("Fuzz Seed CA").unwrap();
    let key_pem = devpki::new_key_pem().unwrap();
    let cert_pem = devpki::issue(&ca, &ca_key, UDID, &key_pem).unwrap();
    let key = pem::key(key_pem.as_bytes()).unwrap();
    let cert = pem::cert(cert_pem.as_bytes()).unwrap();
    let signed = [
        ("authenticate.sig", xml(&authenticate)),
        ("idle-report.sig", xml(&idle)),
        ("idle-report-binary.sig", binary(&idle)),
        ("empty-body.sig", Vec::new()),
    ];
    for (name, body) in signed {
        let header = sign_detached(&key, &cert, &body).unwrap();
        cloudvpp_identity::verify_mdm_signature(&header, &body).expect("seed verifies");
        let der = base64::engine::general_purpose::STANDARD
            .decode(&header)
            .unwrap();
        let mut input = vec![b'D'];
        input.extend((der.len() as u16).to_be_bytes());
        input.extend(&der);
        input.extend(&body);
        write("mdm_signature", &format!("{name}.der"), &input);
        let mut input = header.into_bytes();
        input.push(b'\n');
        input.extend(&body);
        write("mdm_signature", name, &input);
    }
}
