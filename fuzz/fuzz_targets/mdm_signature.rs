//! `verify_mdm_signature(header, body)`. Two input shapes:
//! - `D`, a 2-byte big-endian length, that many bytes of DER, then the body: the header is
//!   the DER in base64, so mutations reach the CMS and certificate parsers instead of
//!   mostly breaking the base64;
//! - anything else: the header text, a newline, the body (no newline: empty body).
#![no_main]

use base64::Engine;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (header, body) = match data {
        [b'D', hi, lo, rest @ ..] => {
            let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(rest.len());
            let (der, body) = rest.split_at(len);
            (base64::engine::general_purpose::STANDARD.encode(der), body)
        }
        _ => match data.iter().position(|&b| b == b'\n') {
            // A header value reaches the service as text; lossy keeps every input useful.
            Some(i) => (
                String::from_utf8_lossy(&data[..i]).into_owned(),
                &data[i + 1..],
            ),
            None => (String::from_utf8_lossy(data).into_owned(), &[][..]),
        },
    };
    let _ = cloudvpp_identity::verify_mdm_signature(&header, body);
});
