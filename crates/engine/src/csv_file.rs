//! The people-to-invite CSV file, read and checked row by row: one reader for every way a
//! file comes in (`cloudvpp invite --csv`, the administrator web page's upload), so a file
//! is judged the same whichever way it is given. What the engine knows (enrollments,
//! people already invited) is checked afterwards, entry by entry, by the same admission as
//! `POST /api/v1/invitations` ([`crate::api::admit_invitations`]).
//!
//! Columns: `client_user_id` (required), `email`, `enrollment_id`; UTF-8 with or without a
//! BOM, LF or CRLF line ends, quoted fields (the `csv` crate).

use std::collections::HashMap;

/// The columns a CSV file may have.
pub const COLUMNS: [&str; 3] = ["client_user_id", "email", "enrollment_id"];

/// A problem with the file as a whole: nobody in it is invited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvError(pub String);

impl std::fmt::Display for CsvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CsvError {}

/// One row to invite; `line` is its line in the file (0 when it came from no file).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Line number in the file.
    pub line: u64,
    /// clientUserId.
    pub client_user_id: String,
    /// Email.
    pub email: Option<String>,
    /// Enrollment.
    pub enrollment_id: Option<String>,
}

/// A row that is not invited, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// Line number in the file (0 when it came from no file).
    pub line: u64,
    /// The row's clientUserId, if it has one.
    pub who: String,
    /// Why.
    pub reason: String,
}

/// Whether `email` looks like an address: `local@domain`, a local part of printable
/// characters without spaces or dots at its ends, a domain of at least two labels of
/// letters, digits and inner hyphens.
pub fn email_syntax_ok(email: &str) -> bool {
    let Some((local, domain)) = email.rsplit_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local
            .chars()
            .all(|c| c.is_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c));
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        });
    email.len() <= 254 && local_ok && domain_ok
}

/// Reads and checks a CSV file's bytes: a file-level problem (no header, an unknown or
/// repeated column, no client_user_id column, a header that is not UTF-8) is an error; a
/// row-level one rejects the row. Bounding the size is the caller's (it knows where the
/// bytes come from).
pub fn parse_csv(bytes: &[u8]) -> Result<(Vec<Row>, Vec<Rejected>), CsvError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    // CRLF becomes LF first, so that a line end is one byte.
    let mut unix = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    while let Some((&b, tail)) = rest.split_first() {
        if !(b == b'\r' && tail.first() == Some(&b'\n')) {
            unix.push(b);
        }
        rest = tail;
    }
    let bytes = unix.as_slice();
    // A record's position is where the reader began it, blank lines before it included:
    // its line is that of its first byte after them.
    let line_of = |start: u64| {
        let mut at = start as usize;
        while bytes.get(at) == Some(&b'\n') {
            at += 1;
        }
        bytes[..at.min(bytes.len())]
            .iter()
            .filter(|b| **b == b'\n')
            .count() as u64
            + 1
    };
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let header = reader
        .byte_headers()
        .map_err(|e| CsvError(format!("reading the header: {e}")))?
        .clone();
    if header.is_empty() || header.iter().all(<[u8]>::is_empty) {
        return Err(CsvError(
            "the file is empty: it needs a header line (client_user_id,email,enrollment_id)".into(),
        ));
    }
    let mut cols: HashMap<String, usize> = HashMap::new();
    for (i, h) in header.iter().enumerate() {
        let name = std::str::from_utf8(h)
            .map_err(|e| CsvError(format!("the header is not UTF-8: {e}")))?
            .to_lowercase();
        if !COLUMNS.contains(&name.as_str()) {
            return Err(CsvError(format!(
                "unknown column {name:?} in the header: the columns are {}",
                COLUMNS.join(", ")
            )));
        }
        if cols.insert(name.clone(), i).is_some() {
            return Err(CsvError(format!(
                "column {name:?} appears twice in the header"
            )));
        }
    }
    let cuid_col = *cols
        .get("client_user_id")
        .ok_or_else(|| CsvError("the header needs a client_user_id column".into()))?;
    let (email_col, enrollment_col) = (
        cols.get("email").copied(),
        cols.get("enrollment_id").copied(),
    );
    let mut rows = Vec::new();
    let mut rejected = Vec::new();
    // Where each person, person and device, and email was first seen.
    let mut seen_key: HashMap<(String, Option<String>), u64> = HashMap::new();
    let mut seen_person: HashMap<String, (u64, Option<String>)> = HashMap::new();
    let mut seen_email: HashMap<String, (u64, String)> = HashMap::new();
    for record in reader.byte_records() {
        let record = record.map_err(|e| CsvError(format!("reading the file: {e}")))?;
        let line = record.position().map_or(0, |p| line_of(p.byte()));
        let mut reject = |who: &str, reason: String| {
            rejected.push(Rejected {
                line,
                who: who.to_string(),
                reason,
            })
        };
        let fields: Vec<&str> = match record.iter().map(std::str::from_utf8).collect() {
            Ok(f) => f,
            Err(_) => {
                reject("", "not UTF-8".into());
                continue;
            }
        };
        if fields.iter().all(|f| f.is_empty()) {
            continue;
        }
        let get = |i: Option<usize>| {
            i.and_then(|i| fields.get(i))
                .filter(|s| !s.is_empty())
                .map(|s| s.to_string())
        };
        let cuid = get(Some(cuid_col)).unwrap_or_default();
        if fields.len() != header.len() {
            reject(
                &cuid,
                format!("{} fields, the header has {}", fields.len(), header.len()),
            );
            continue;
        }
        if cuid.is_empty() {
            reject("", "no client_user_id".into());
            continue;
        }
        let (email, enrollment) = (get(email_col), get(enrollment_col));
        if let Some(e) = &email {
            if !email_syntax_ok(e) {
                reject(&cuid, format!("invalid email {e:?}"));
                continue;
            }
        }
        if let Some(first) = seen_key.get(&(cuid.clone(), enrollment.clone())) {
            reject(&cuid, format!("repeats line {first}"));
            continue;
        }
        if let Some((first, other)) = seen_person.get(&cuid) {
            if email.is_some() && other.is_some() && *other != email {
                reject(
                    &cuid,
                    format!("client_user_id {cuid:?} is on line {first} with another email"),
                );
                continue;
            }
        }
        if let Some(e) = &email {
            if let Some((first, other)) = seen_email.get(&e.to_lowercase()) {
                if *other != cuid {
                    reject(
                        &cuid,
                        format!("email {e:?} is on line {first} for client_user_id {other:?}"),
                    );
                    continue;
                }
            }
            seen_email
                .entry(e.to_lowercase())
                .or_insert((line, cuid.clone()));
        }
        seen_key.insert((cuid.clone(), enrollment.clone()), line);
        seen_person
            .entry(cuid.clone())
            .or_insert((line, email.clone()));
        rows.push(Row {
            line,
            client_user_id: cuid,
            email,
            enrollment_id: enrollment,
        });
    }
    Ok((rows, rejected))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_syntax() {
        for ok in [
            "pat@example.com",
            "pat.o'neil+vpp@mail.example.co.uk",
            "élève@école.example",
            "a-b_c@x-y.example",
        ] {
            assert!(email_syntax_ok(ok), "{ok}");
        }
        for bad in [
            "",
            "pat",
            "pat@",
            "@example.com",
            "pat@example",
            "pat@@example.com",
            "pat @example.com",
            "pat@exa mple.com",
            ".pat@example.com",
            "pat.@example.com",
            "p..t@example.com",
            "pat@-example.com",
            "pat@example..com",
            "pat@example.com.",
            "pat,x@example.com",
        ] {
            assert!(!email_syntax_ok(bad), "{bad}");
        }
    }

    fn lines(rej: &[Rejected]) -> Vec<(u64, &str)> {
        rej.iter().map(|r| (r.line, r.reason.as_str())).collect()
    }

    #[test]
    fn a_file_with_a_bom_and_crlf_line_ends_reads_as_any_other() {
        let plain = "client_user_id,email,enrollment_id\na,a@example.com,E1\nb,b@example.com,\n";
        let windows = "\u{feff}Client_User_ID , Email,enrollment_id\r\na,a@example.com,E1\r\n\r\nb,b@example.com,\r\n";
        let (p, pr) = parse_csv(plain.as_bytes()).unwrap();
        let (w, wr) = parse_csv(windows.as_bytes()).unwrap();
        assert!(pr.is_empty() && wr.is_empty());
        let strip = |r: &[Row]| {
            r.iter()
                .map(|r| {
                    (
                        r.client_user_id.clone(),
                        r.email.clone(),
                        r.enrollment_id.clone(),
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(&p), strip(&w));
        assert_eq!(w[1].enrollment_id, None);
        // The blank line counts: b is on line 4.
        assert_eq!((w[0].line, w[1].line), (2, 4));
    }

    #[test]
    fn rows_are_checked_one_by_one_with_their_line_numbers() {
        let text = "client_user_id,email,enrollment_id
a,a@example.com,E1
b,not-an-email,E2
,c@example.com,E3
a,a@example.com,E1
a,other@example.com,E4
d,a@example.com,E5
e,e@example.com
\"f, with a comma\",\"f@example.com\",E6
a,,E7
";
        let (rows, rej) = parse_csv(text.as_bytes()).unwrap();
        assert_eq!(
            lines(&rej),
            vec![
                (3, "invalid email \"not-an-email\""),
                (4, "no client_user_id"),
                (5, "repeats line 2"),
                (6, "client_user_id \"a\" is on line 2 with another email"),
                (
                    7,
                    "email \"a@example.com\" is on line 2 for client_user_id \"a\""
                ),
                (8, "2 fields, the header has 3"),
            ]
        );
        let ok: Vec<(u64, &str)> = rows
            .iter()
            .map(|r| (r.line, r.client_user_id.as_str()))
            .collect();
        // The same person on another device, with no email, is a second invitation.
        assert_eq!(ok, vec![(2, "a"), (9, "f, with a comma"), (10, "a")]);
    }

    #[test]
    fn file_level_problems_refuse_the_file() {
        let err = |t: &str| parse_csv(t.as_bytes()).unwrap_err().to_string();
        assert!(err("client_user_id,emial\na,a@example.com\n").contains("unknown column \"emial\""));
        assert!(err("email\na@example.com\n").contains("client_user_id column"));
        assert!(err("client_user_id,email,email\n").contains("twice"));
        assert!(err("").contains("empty"));
        let (rows, rej) = parse_csv(b"client_user_id\nok\n\xff\xfe\n").unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(lines(&rej), vec![(3, "not UTF-8")]);
    }
}
