//! Bounded plist decoding for bodies from devices and API clients.
//!
//! `plist::from_bytes` trusts its input in three ways that an attacker can use:
//! - serde recurses once per nesting level, so a deeply nested plist (XML or binary)
//!   overflows the stack and aborts the whole process;
//! - the binary reader re-reads a container at every reference to it (only small scalars
//!   are cached), so a few hundred bytes of arrays that each reference the next one twice
//!   expand to 2^n objects and pin a worker;
//! - a binary container's declared length reaches `Vec::with_capacity` in
//!   `plist::Value`'s deserializer (up to one element per byte of the body).
//!
//! Here the reader's event stream passes through [`Bounded`], which counts as it goes and
//! ends the stream at the first limit passed, before serde sees the event. So serde never
//! recurses deeper than `max_depth`, never sees more than `max_objects` objects, and the
//! work done is bounded by the limits and the body size, whatever the references.
//! Reference cycles are refused by the plist crate's binary reader itself (it marks the
//! containers being read and fails with `RecursiveObject`); the depth limit would stop them
//! anyway.
//!
//! Only XML and binary plists are read: MDM bodies are one or the other, and the ASCII
//! (OpenStep) reader that `plist::from_bytes` falls back to is surface nothing needs.

use std::io::Cursor;

use plist::stream::{BinaryReader, Event, OwnedEvent, XmlReader};
use serde::de::DeserializeOwned;

use crate::DecodeError;

/// Limits for [`from_bytes_bounded`] and [`parse_bounded`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlistLimits {
    /// Largest body, in bytes.
    pub max_input: usize,
    /// Deepest nesting of arrays and dictionaries (the root container is level 1).
    pub max_depth: usize,
    /// Most objects (containers, keys, values), counting a shared binary object once per
    /// reference, as it is expanded.
    pub max_objects: usize,
    /// Most bytes of strings (keys included) and data, expanded the same way.
    pub max_bytes: usize,
}

impl PlistLimits {
    /// The limits every decoder of this crate uses.
    ///
    /// - `max_input` 4 MiB: the MDM service's body limit (a report can carry large query
    ///   answers, such as a Mac's InstalledApplicationList).
    /// - `max_depth` 32: Apple's bodies nest a handful of levels (a ProfileList's payloads
    ///   are about 6); 32 keeps serde's recursion to a few tens of kilobytes of stack.
    /// - `max_objects` 250,000: a Mac's InstalledApplicationList in XML is about 25 bytes an
    ///   object, so a full 4 MiB report holds about 170,000 (the test
    ///   `a_full_size_real_report_fits_the_limits`); walking 250,000 takes a fraction of a
    ///   second, and a binary reference DAG stops there.
    /// - `max_bytes` 16 MiB: four times the body, room for legitimately shared binary
    ///   strings, while a large string referenced thousands of times is refused.
    pub const DEFAULT: PlistLimits = PlistLimits {
        max_input: 4 * 1024 * 1024,
        max_depth: 32,
        max_objects: 250_000,
        max_bytes: 16 * 1024 * 1024,
    };
}

impl Default for PlistLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Parses an XML or binary plist into a [`plist::Value`] within `limits`.
pub fn parse_bounded(body: &[u8], limits: &PlistLimits) -> Result<plist::Value, DecodeError> {
    from_bytes_bounded(body, limits)
}

/// Deserializes an XML or binary plist into `T` within `limits`, in one pass: the typed
/// struct is filled from the bounded event stream, and keys it does not name are skipped
/// without being kept.
pub fn from_bytes_bounded<T: DeserializeOwned>(
    body: &[u8],
    limits: &PlistLimits,
) -> Result<T, DecodeError> {
    if body.len() > limits.max_input {
        return Err(DecodeError(format!(
            "plist body is {} bytes, more than {}",
            body.len(),
            limits.max_input
        )));
    }
    let mut events = Bounded::new(body, limits);
    let result = T::deserialize(&mut plist::Deserializer::new(&mut events));
    // A limit or reader error ends the stream early; serde then reports a truncated
    // stream, so the recorded cause is the error to give.
    if let Some(e) = events.error.take() {
        return Err(e);
    }
    let value = result.map_err(|e| DecodeError(format!("plist: {e}")))?;
    // As `plist::from_bytes`: nothing may follow the root object.
    match events.next() {
        Some(_) => Err(DecodeError("plist: data after the root object".into())),
        None => match events.error.take() {
            Some(e) => Err(e),
            None => Ok(value),
        },
    }
}

enum Source<'a> {
    Binary(BinaryReader<Cursor<&'a [u8]>>),
    Xml(XmlReader<Cursor<&'a [u8]>>),
}

/// The reader's events, counted against the limits. The first error (a limit passed or
/// the reader's own) is kept in `error` and ends the stream.
struct Bounded<'a> {
    source: Source<'a>,
    limits: PlistLimits,
    depth: usize,
    objects: usize,
    bytes: usize,
    error: Option<DecodeError>,
}

impl<'a> Bounded<'a> {
    fn new(body: &'a [u8], limits: &PlistLimits) -> Self {
        let source = if body.starts_with(b"bplist00") {
            Source::Binary(BinaryReader::new(Cursor::new(body)))
        } else {
            Source::Xml(XmlReader::new(Cursor::new(body)))
        };
        Bounded {
            source,
            limits: *limits,
            depth: 0,
            objects: 0,
            bytes: 0,
            error: None,
        }
    }

    fn check(&mut self, event: OwnedEvent) -> Result<OwnedEvent, DecodeError> {
        let event = match event {
            Event::EndCollection => {
                self.depth = self.depth.saturating_sub(1);
                return Ok(event);
            }
            // The declared length is dropped: `plist::Value` would reserve that many
            // elements up front. Collections grow as their elements actually arrive.
            Event::StartArray(_) | Event::StartDictionary(_) => {
                self.depth += 1;
                if self.depth > self.limits.max_depth {
                    return Err(DecodeError(format!(
                        "plist nested deeper than {}",
                        self.limits.max_depth
                    )));
                }
                if matches!(event, Event::StartArray(_)) {
                    Event::StartArray(None)
                } else {
                    Event::StartDictionary(None)
                }
            }
            Event::String(ref s) => {
                self.bytes = self.bytes.saturating_add(s.len());
                event
            }
            Event::Data(ref d) => {
                self.bytes = self.bytes.saturating_add(d.len());
                event
            }
            other => other,
        };
        self.objects += 1;
        if self.objects > self.limits.max_objects {
            return Err(DecodeError(format!(
                "plist has more than {} objects",
                self.limits.max_objects
            )));
        }
        if self.bytes > self.limits.max_bytes {
            return Err(DecodeError(format!(
                "plist strings and data exceed {} bytes",
                self.limits.max_bytes
            )));
        }
        Ok(event)
    }
}

impl Iterator for Bounded<'_> {
    type Item = Result<OwnedEvent, plist::Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.error.is_some() {
            return None;
        }
        let next = match &mut self.source {
            Source::Binary(r) => r.next(),
            Source::Xml(r) => r.next(),
        }?;
        let checked = match next {
            Ok(event) => self.check(event),
            Err(e) => Err(reader_error(&e)),
        };
        match checked {
            Ok(event) => Some(Ok(event)),
            Err(e) => {
                self.error = Some(e);
                None
            }
        }
    }
}

/// The reader's error, named plainly where it is one of ours. plist's error kinds are
/// private; its Display starts with the kind's name, which the tests pin.
fn reader_error(e: &plist::Error) -> DecodeError {
    let text = e.to_string();
    if text.starts_with("RecursiveObject") {
        DecodeError("plist has a reference cycle".into())
    } else {
        DecodeError(format!("plist: {text}"))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::{decode_command, CheckinMessage, Report, ReportStatus};

    /// One object of a hand-built binary plist.
    enum Obj {
        Array(Vec<usize>),
        Dict(Vec<(usize, usize)>),
        Str(Vec<u8>),
        /// Written as is: a marker and whatever follows it.
        Raw(Vec<u8>),
    }

    /// A marker byte with its length, inline below 15, else as a following 4-byte int.
    fn marker(out: &mut Vec<u8>, kind: u8, len: usize) {
        if len < 15 {
            out.push(kind << 4 | len as u8);
        } else {
            out.push(kind << 4 | 0x0f);
            out.push(0x12);
            out.extend((len as u32).to_be_bytes());
        }
    }

    /// `bplist00`, the objects, the offset table (4-byte offsets) and the trailer
    /// (2-byte object references), as CoreFoundation lays them out.
    fn bplist(objects: &[Obj], root: usize) -> Vec<u8> {
        let mut out = b"bplist00".to_vec();
        let mut offsets = Vec::new();
        for o in objects {
            offsets.push(out.len() as u32);
            match o {
                Obj::Array(refs) => {
                    marker(&mut out, 0xa, refs.len());
                    for r in refs {
                        out.extend((*r as u16).to_be_bytes());
                    }
                }
                Obj::Dict(pairs) => {
                    marker(&mut out, 0xd, pairs.len());
                    for (k, _) in pairs {
                        out.extend((*k as u16).to_be_bytes());
                    }
                    for (_, v) in pairs {
                        out.extend((*v as u16).to_be_bytes());
                    }
                }
                Obj::Str(s) => {
                    marker(&mut out, 0x5, s.len());
                    out.extend(s);
                }
                Obj::Raw(bytes) => out.extend(bytes),
            }
        }
        let table = out.len() as u64;
        for off in offsets {
            out.extend(off.to_be_bytes());
        }
        out.extend([0; 6]);
        out.push(4); // offset size
        out.push(2); // reference size
        out.extend((objects.len() as u64).to_be_bytes());
        out.extend((root as u64).to_be_bytes());
        out.extend(table.to_be_bytes());
        out
    }

    fn err<T: std::fmt::Debug>(r: Result<T, DecodeError>) -> String {
        r.expect_err("must be refused").0
    }

    /// An XML check-in, report and command whose `X` key (which no decoder reads) holds
    /// `value`: the typed decoders must still refuse what they skip.
    fn under_ignored_key(value: &str) -> [(String, &'static str); 3] {
        let doc = |keys: &str| format!("<plist><dict>{keys}<key>X</key>{value}</dict></plist>");
        [
            (
                doc("<key>MessageType</key><string>Authenticate</string>"),
                "check-in",
            ),
            (doc("<key>Status</key><string>Idle</string>"), "report"),
            (
                doc("<key>CommandUUID</key><string>c</string><key>Command</key><dict><key>RequestType</key><string>T</string></dict>"),
                "command",
            ),
        ]
    }

    /// Runs the decoder `which` names.
    fn decode(which: &str, body: &[u8]) -> Result<(), DecodeError> {
        match which {
            "check-in" => CheckinMessage::decode(body).map(drop),
            "report" => Report::decode(body).map(drop),
            "command" => decode_command(body).map(drop),
            _ => unreachable!(),
        }
    }

    /// A binary dictionary `{Status: Idle, X: <object 3>}` followed by `rest` from object
    /// 3 on (so `rest` refers to its own objects as 3, 4, ...).
    fn binary_report_with(rest: Vec<Obj>) -> Vec<u8> {
        let mut objects = vec![
            Obj::Dict(vec![(1, 2), (4, 3)]),
            Obj::Str(b"Status".to_vec()),
            Obj::Str(b"Idle".to_vec()),
        ];
        // Object 3 is `rest[0]`; the key "X" goes last so `rest` keeps its numbering.
        let key = 3 + rest.len();
        objects.extend(rest);
        objects.push(Obj::Str(b"X".to_vec()));
        if let Obj::Dict(pairs) = &mut objects[0] {
            pairs[1] = (key, 3);
        }
        bplist(&objects, 0)
    }

    #[test]
    fn deep_xml_nesting_is_refused_without_crashing() {
        let n = 100_000;
        let body = format!(
            "<plist version=\"1.0\">{}{}</plist>",
            "<array>".repeat(n),
            "</array>".repeat(n)
        );
        assert_eq!(
            err(parse_bounded(body.as_bytes(), &PlistLimits::DEFAULT)),
            "plist nested deeper than 32"
        );
        let deep = format!("{}{}", "<array>".repeat(n), "</array>".repeat(n));
        for (body, which) in under_ignored_key(&deep) {
            assert_eq!(
                err(decode(which, body.as_bytes())),
                format!("{which} plist nested deeper than 32")
            );
        }
        // Dictionaries count too, and exactly 32 levels are allowed.
        let dicts = |n: usize| {
            format!(
                "<plist>{}{}</plist>",
                "<dict><key>k</key>".repeat(n - 1) + "<dict>",
                "</dict>".repeat(n)
            )
        };
        // The full depth fits a small stack (tokio's workers have 2 MiB), unoptimised too.
        let at_limit = dicts(32);
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || parse_bounded(at_limit.as_bytes(), &PlistLimits::DEFAULT).unwrap())
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(
            err(parse_bounded(dicts(33).as_bytes(), &PlistLimits::DEFAULT)),
            "plist nested deeper than 32"
        );
    }

    #[test]
    fn deep_binary_nesting_is_refused_without_crashing() {
        // Array i holds array i+1; the last is empty. 50,000 levels in about 150 KB.
        let n = 50_000;
        let chain = |first: usize| {
            let mut objects: Vec<Obj> = (first + 1..first + n)
                .map(|i| Obj::Array(vec![i]))
                .collect();
            objects.push(Obj::Array(vec![]));
            objects
        };
        assert_eq!(
            err(parse_bounded(&bplist(&chain(0), 0), &PlistLimits::DEFAULT)),
            "plist nested deeper than 32"
        );
        assert_eq!(
            err(Report::decode(&binary_report_with(chain(3)))),
            "report plist nested deeper than 32"
        );
    }

    #[test]
    fn binary_reference_dag_is_refused_quickly() {
        // 30 levels, each array referencing the next one twice: 2^31 objects once
        // expanded, from a body of a few hundred bytes.
        let levels = 30;
        let dag = |first: usize| {
            let mut objects: Vec<Obj> = (first + 1..first + levels)
                .map(|i| Obj::Array(vec![i, i]))
                .collect();
            objects.push(Obj::Str(b"leaf".to_vec()));
            objects
        };
        let body = bplist(&dag(0), 0);
        assert!(body.len() < 400, "{} bytes", body.len());
        let started = Instant::now();
        assert_eq!(
            err(parse_bounded(&body, &PlistLimits::DEFAULT)),
            "plist has more than 250000 objects"
        );
        // Under a key the report decoder skips, the expansion is counted all the same.
        assert_eq!(
            err(Report::decode(&binary_report_with(dag(3)))),
            "report plist has more than 250000 objects"
        );
        // Unoptimised test builds included; the unbounded decoder never returned.
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn binary_reference_cycles_are_refused() {
        // An array holding itself, and a two-array loop under a key the report skips.
        let body = bplist(&[Obj::Array(vec![0])], 0);
        assert_eq!(
            err(parse_bounded(&body, &PlistLimits::DEFAULT)),
            "plist has a reference cycle"
        );
        let body = binary_report_with(vec![Obj::Array(vec![4]), Obj::Array(vec![3])]);
        assert_eq!(
            err(Report::decode(&body)),
            "report plist has a reference cycle"
        );
        // A dictionary whose value is the dictionary itself.
        let body = binary_report_with(vec![Obj::Dict(vec![(5, 3)]), Obj::Str(b"k".to_vec())]);
        assert_eq!(
            err(Report::decode(&body)),
            "report plist has a reference cycle"
        );
    }

    #[test]
    fn huge_declared_lengths_are_refused() {
        // Lengths far beyond the body: string, data, UTF-16 string, array, dictionary.
        // The binary reader checks each against the body before allocating.
        for kind in [0x5f_u8, 0x4f, 0x6f, 0xaf, 0xdf] {
            let mut raw = vec![kind, 0x13];
            raw.extend(u64::MAX.to_be_bytes());
            let e = err(Report::decode(&binary_report_with(vec![Obj::Raw(raw)])));
            assert!(
                e.starts_with("report plist: ObjectOffsetTooLarge"),
                "{kind:#x}: {e}"
            );
            let mut raw = vec![kind, 0x12];
            raw.extend(0x7fff_ffff_u32.to_be_bytes());
            let e = err(Report::decode(&binary_report_with(vec![Obj::Raw(raw)])));
            assert!(
                e.starts_with("report plist: ObjectOffsetTooLarge"),
                "{kind:#x}: {e}"
            );
        }
        // A real 1 MiB string referenced 20 times: 20 MiB once expanded.
        let body = binary_report_with(vec![
            Obj::Array(vec![4; 20]),
            Obj::Str(vec![b'a'; 1024 * 1024]),
        ]);
        assert_eq!(
            err(Report::decode(&body)),
            "report plist strings and data exceed 16777216 bytes"
        );
        // And a body over the input limit is not read at all.
        let body = vec![b' '; PlistLimits::DEFAULT.max_input + 1];
        assert_eq!(
            err(CheckinMessage::decode(&body)),
            "check-in plist body is 4194305 bytes, more than 4194304"
        );
    }

    #[test]
    fn limits_are_the_callers() {
        let limits = PlistLimits {
            max_input: 1000,
            max_depth: 2,
            max_objects: 5,
            max_bytes: 10,
        };
        let xml = |inner: &str| format!("<plist>{inner}</plist>");
        let ok = xml("<array><array/><string>0123456789</string></array>");
        assert!(parse_bounded(ok.as_bytes(), &limits).is_ok());
        let cases = [
            (
                xml("<array><array><array/></array></array>"),
                "plist nested deeper than 2",
            ),
            (
                xml("<array><true/><true/><true/><true/><true/></array>"),
                "plist has more than 5 objects",
            ),
            (
                xml("<array><string>0123456789</string><data>AA==</data></array>"),
                "plist strings and data exceed 10 bytes",
            ),
            (
                xml(&" ".repeat(1000)),
                "plist body is 1015 bytes, more than 1000",
            ),
        ];
        for (body, want) in cases {
            assert_eq!(err(parse_bounded(body.as_bytes(), &limits)), want);
        }
    }

    #[test]
    fn malformed_bodies_are_refused() {
        for body in [
            &b""[..],
            b"garbage",
            b"{ MessageType = Authenticate; }", // ASCII plists are not read
            b"<plist><dict><key>Status</key><string>Idle</string></dict><string>x</string></plist>",
            b"bplist00",
            b"<plist><array></dict></plist>",
        ] {
            assert!(Report::decode(body).is_err(), "{body:?}");
            assert!(
                parse_bounded(body, &PlistLimits::DEFAULT).is_err(),
                "{body:?}"
            );
        }
    }

    const AUTHENTICATE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
	<key>BuildVersion</key>
	<string>22A3354</string>
	<key>IMEI</key>
	<string>35 304308 123456 7</string>
	<key>MessageType</key>
	<string>Authenticate</string>
	<key>OSVersion</key>
	<string>17.0</string>
	<key>ProductName</key>
	<string>iPhone14,2</string>
	<key>SerialNumber</key>
	<string>F2LX1234ABCD</string>
	<key>Topic</key>
	<string>com.apple.mgmt.External.00000000-0000-0000-0000-000000000000</string>
	<key>UDID</key>
	<string>00008110-000A1B2C3D4E5F60</string>
</dict>
</plist>"#;

    const TOKEN_UPDATE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
	<key>AwaitingConfiguration</key>
	<false/>
	<key>MessageType</key>
	<string>TokenUpdate</string>
	<key>PushMagic</key>
	<string>8A5E3A7C-0D2B-4C1E-9F3A-2B1C0D9E8F7A</string>
	<key>Token</key>
	<data>
	3q2+7wABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f
	</data>
	<key>Topic</key>
	<string>com.apple.mgmt.External.00000000-0000-0000-0000-000000000000</string>
	<key>UDID</key>
	<string>00008110-000A1B2C3D4E5F60</string>
</dict>
</plist>"#;

    fn to_binary(xml: &str) -> Vec<u8> {
        let v: plist::Value = plist::from_bytes(xml.as_bytes()).unwrap();
        let mut bin = Vec::new();
        plist::to_writer_binary(&mut bin, &v).unwrap();
        bin
    }

    #[test]
    fn real_checkins_still_decode_xml_and_binary() {
        for body in [AUTHENTICATE.as_bytes().to_vec(), to_binary(AUTHENTICATE)] {
            let m = CheckinMessage::decode(&body).unwrap();
            assert_eq!(m.message_type, "Authenticate");
            assert_eq!(m.product_name.as_deref(), Some("iPhone14,2"));
            assert_eq!(m.keys().resolve().unwrap().id, "00008110-000A1B2C3D4E5F60");
        }
        for body in [TOKEN_UPDATE.as_bytes().to_vec(), to_binary(TOKEN_UPDATE)] {
            let m = CheckinMessage::decode(&body).unwrap();
            assert_eq!(m.message_type, "TokenUpdate");
            assert_eq!(
                m.token.map(Vec::from).unwrap()[..4],
                [0xde, 0xad, 0xbe, 0xef]
            );
            assert_eq!(m.awaiting_configuration, Some(false));
        }
        // The bounded parser gives what the unbounded one gives.
        assert_eq!(
            parse_bounded(TOKEN_UPDATE.as_bytes(), &PlistLimits::DEFAULT).unwrap(),
            plist::from_bytes::<plist::Value>(TOKEN_UPDATE.as_bytes()).unwrap()
        );
    }

    #[test]
    fn a_full_size_real_report_fits_the_limits() {
        // A Mac's InstalledApplicationList just under the 4 MiB body limit: the densest
        // large answer a device sends. It must not be refused by the object count.
        let mut apps = Vec::new();
        for i in 0..8_000 {
            let mut d = plist::Dictionary::new();
            d.insert("Identifier".into(), format!("com.example.app{i}").into());
            d.insert("Name".into(), format!("App {i}").into());
            d.insert("ShortVersion".into(), "1.2".into());
            d.insert("Version".into(), "120".into());
            d.insert("BundleSize".into(), 123456.into());
            d.insert("DynamicSize".into(), 0.into());
            d.insert("IsValidated".into(), true.into());
            d.insert("Installing".into(), false.into());
            d.insert("HasUpdateAvailable".into(), false.into());
            d.insert("ExternalVersionIdentifier".into(), 0.into());
            apps.push(plist::Value::Dictionary(d));
        }
        let mut d = plist::Dictionary::new();
        d.insert("Status".into(), "Acknowledged".into());
        d.insert("CommandUUID".into(), "c1".into());
        d.insert("UDID".into(), "D".into());
        d.insert("InstalledApplicationList".into(), apps.into());
        let mut xml = Vec::new();
        plist::to_writer_xml(&mut xml, &plist::Value::Dictionary(d)).unwrap();
        assert!(xml.len() < PlistLimits::DEFAULT.max_input, "{}", xml.len());
        let (r, status) = Report::decode(&xml).unwrap();
        assert_eq!(
            (r.command_uuid.as_deref(), status),
            (Some("c1"), ReportStatus::Acknowledged)
        );
        assert!(parse_bounded(&xml, &PlistLimits::DEFAULT).is_ok());
    }
}
