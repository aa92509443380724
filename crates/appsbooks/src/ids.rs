//! Identifiers and opaque strings: sTokens, `uId`, invite codes, `idHash`, `versionId`.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use cloudvpp_abwire::STokenContent;
use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Apple's date style: UTC with a `+0000` offset.
pub fn apple_date(unix_secs: i64) -> String {
    chrono::DateTime::from_timestamp(unix_secs, 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S+0000")
        .to_string()
}

/// A new sToken: base64 of `{"token","expDate","orgName"}`, as Apple's `.vpptoken` file.
pub fn new_stoken(org_name: &str, expires_at: i64) -> String {
    let mut raw = [0u8; 48];
    rand::thread_rng().fill(&mut raw[..]);
    let content = STokenContent {
        token: B64.encode(raw),
        exp_date: apple_date(expires_at),
        org_name: org_name.to_string(),
    };
    B64.encode(serde_json::to_vec(&content).expect("serialisable"))
}

/// A new `uId`: 16 decimal digits, as Apple's.
pub fn new_uid() -> String {
    let mut rng = rand::thread_rng();
    let mut s = rng.gen_range(1..10).to_string();
    for _ in 0..15 {
        s.push(char::from(b'0' + rng.gen_range(0..10)));
    }
    s
}

/// A per-organisation secret.
pub fn new_secret() -> String {
    uuid::Uuid::new_v4().simple().to_string() + &uuid::Uuid::new_v4().simple().to_string()
}

/// A new invite code: 32 lowercase hex digits, as Apple's.
pub fn new_invite_code() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn mac(secret: &str, parts: &[&[u8]]) -> Vec<u8> {
    let mut m = HmacSha256::new_from_slice(secret.as_bytes()).expect("any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().to_vec()
}

/// `idHash` of an Apple Account: base64 of 20 bytes, stable for the same account in the
/// same organisation and unrelated across organisations.
pub fn id_hash(org_secret: &str, apple_account: &str) -> String {
    let account = apple_account.trim().to_lowercase();
    B64.encode(&mac(org_secret, &[b"idHash:", account.as_bytes()])[..20])
}

/// `versionId` for change sequence `chg`: UUID-shaped, the sequence number in the first
/// half and an organisation-keyed check in the second, so no table is needed and a
/// version from another organisation, or a made-up one, is refused (9721).
pub fn encode_version(org_secret: &str, chg: i64) -> String {
    encode_version_of(org_secret, b"version:", chg)
}

/// The `versionId` of Get Assignments for the assignments' change number `chg`: keyed
/// apart from Get Users', so one endpoint's version is refused by the other (9721).
pub fn encode_assignments_version(org_secret: &str, chg: i64) -> String {
    encode_version_of(org_secret, b"assignments-version:", chg)
}

/// Reads a Get Assignments `versionId` back; `None` if it was not issued for this
/// organisation's assignments.
pub fn decode_assignments_version(org_secret: &str, version: &str) -> Option<i64> {
    decode_version_of(org_secret, b"assignments-version:", version)
}

fn encode_version_of(org_secret: &str, domain: &[u8], chg: i64) -> String {
    let check = mac(org_secret, &[domain, &chg.to_be_bytes()]);
    let hex = format!(
        "{:016x}{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        chg as u64, check[0], check[1], check[2], check[3], check[4], check[5], check[6], check[7]
    );
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Reads a `versionId` back; `None` if it was not issued for this organisation.
pub fn decode_version(org_secret: &str, version: &str) -> Option<i64> {
    decode_version_of(org_secret, b"version:", version)
}

fn decode_version_of(org_secret: &str, domain: &[u8], version: &str) -> Option<i64> {
    // Exactly the shape we issue (ASCII, so slicing below never splits a character).
    let shaped = version.len() == 36
        && version.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    if !shaped {
        return None;
    }
    let hex: String = version.chars().filter(|c| *c != '-').collect();
    let chg = i64::try_from(u64::from_str_radix(&hex[0..16], 16).ok()?).ok()?;
    (encode_version_of(org_secret, domain, chg) == version.to_ascii_lowercase()).then_some(chg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stoken_decodes_to_apple_fields() {
        let t = new_stoken("ORG12345", 1_920_000_000);
        let content: STokenContent = serde_json::from_slice(&B64.decode(t).unwrap()).unwrap();
        assert_eq!(content.org_name, "ORG12345");
        assert_eq!(content.exp_date, "2030-11-04T05:20:00+0000");
    }

    #[test]
    fn versions_round_trip_and_are_org_bound() {
        let v = encode_version("s1", 42);
        assert_eq!(v.len(), 36);
        assert_eq!(decode_version("s1", &v), Some(42));
        assert_eq!(decode_version("s2", &v), None);
        assert_eq!(
            decode_assignments_version("s1", &v),
            None,
            "not a users version"
        );
        let a = encode_assignments_version("s1", 42);
        assert_eq!(decode_assignments_version("s1", &a), Some(42));
        assert_eq!(decode_version("s1", &a), None);
        assert_eq!(
            decode_version("s1", "021f10a0-7035-11eb-9f67-bd1df52e1e13"),
            None
        );
        // Multi-byte characters where hex digits go, a dash out of place: refused, no panic.
        let odd = format!("a{}a----", "é".repeat(15));
        assert_eq!(odd.len(), 36);
        assert_eq!(decode_version("s1", &odd), None);
        assert_eq!(decode_version("s1", &v.replacen('-', "0", 1)), None);
        assert_eq!(
            decode_version("s1", "ffffffff-ffff-ffff-0000-000000000000"),
            None
        );
    }

    #[test]
    fn id_hash_is_stable_and_sha1_sized() {
        let a = id_hash("s", "Person@Example.com");
        assert_eq!(a, id_hash("s", "person@example.com "));
        assert_ne!(a, id_hash("t", "person@example.com"));
        assert_eq!(B64.decode(&a).unwrap().len(), 20);
        assert_eq!(new_uid().len(), 16);
    }
}
