//! Which certificates are device identities: a leaf for client authentication, valid
//! now, that chains to one of the configured CAs, possibly through intermediates the
//! device sent in its CMS.

use crate::verify::verify_signature;
use crate::{DeviceCert, IdentityError, Presented};
use dashmap::DashMap;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;
use x509_parser::time::ASN1Time;

/// Intermediates between a device certificate and a configured CA.
const MAX_INTERMEDIATES: usize = 4;
/// Verified chains remembered; cleared whole when full.
const CACHE_SIZE: usize = 1_000_000;
/// Issuer signatures tried for one certificate chain.
const MAX_SIGNATURE_CHECKS: usize = 8;

pub(crate) fn parse(der: &[u8]) -> Result<X509Certificate<'_>, IdentityError> {
    match X509Certificate::from_der(der) {
        Ok(([], c)) => Ok(c),
        _ => Err(IdentityError::Malformed(
            "a certificate that is not DER X.509".into(),
        )),
    }
}

fn check_dates(c: &X509Certificate, whose: &str, now: ASN1Time) -> Result<(), IdentityError> {
    let v = c.validity();
    if now < v.not_before {
        return Err(IdentityError::NotYetValid(format!(
            "{whose} is valid from {}",
            v.not_before
        )));
    }
    if now > v.not_after {
        return Err(IdentityError::Expired(format!(
            "{whose} expired {}",
            v.not_after
        )));
    }
    Ok(())
}

fn signed_by(child: &X509Certificate, issuer: &X509Certificate) -> Result<(), IdentityError> {
    verify_signature(
        issuer.public_key(),
        child.signature_algorithm.algorithm.as_bytes(),
        None,
        child.tbs_certificate.as_ref(),
        &child.signature_value.data,
    )
}

/// A device identity must be an end-entity certificate usable for client authentication.
fn leaf_policy(c: &X509Certificate) -> Result<(), IdentityError> {
    match c.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => {
            return Err(IdentityError::NotALeaf(
                "a CA certificate (basicConstraints cA) is not a device identity".into(),
            ))
        }
        Ok(_) => {}
        Err(_) => return Err(IdentityError::Malformed("basicConstraints".into())),
    }
    match c.extended_key_usage() {
        Ok(Some(eku)) if !(eku.value.client_auth || eku.value.any) => Err(
            IdentityError::WrongUsage("extendedKeyUsage without clientAuth".into()),
        ),
        Ok(_) => Ok(()),
        Err(_) => Err(IdentityError::Malformed("extendedKeyUsage".into())),
    }
}

/// A CA certificate between the leaf and an anchor must be one that may issue client
/// certificates: cA, keyCertSign if it states key usages, clientAuth if it states extended
/// key usages, and a path length that allows the `below` intermediates under it.
fn ca_policy(c: &X509Certificate, below: usize) -> Result<(), IdentityError> {
    if !c.is_ca() {
        return Err(IdentityError::Untrusted(
            "an intermediate that is not a CA".into(),
        ));
    }
    match c.key_usage() {
        Ok(Some(ku)) if !ku.value.key_cert_sign() => {
            return Err(IdentityError::Untrusted(
                "an intermediate without keyCertSign".into(),
            ))
        }
        Ok(_) => {}
        Err(_) => return Err(IdentityError::Malformed("keyUsage".into())),
    }
    match c.extended_key_usage() {
        Ok(Some(eku)) if !(eku.value.client_auth || eku.value.any) => {
            return Err(IdentityError::Untrusted(
                "an intermediate whose extendedKeyUsage excludes clientAuth".into(),
            ))
        }
        Ok(_) => {}
        Err(_) => return Err(IdentityError::Malformed("extendedKeyUsage".into())),
    }
    path_len_allows(c, below)
}

/// Whether `ca`'s pathLenConstraint allows `below` intermediate CAs under it.
fn path_len_allows(ca: &X509Certificate, below: usize) -> Result<(), IdentityError> {
    match ca.basic_constraints() {
        Ok(Some(bc)) => match bc.value.path_len_constraint {
            Some(max) if (max as usize) < below => Err(IdentityError::Untrusted(format!(
                "{} allows {max} intermediates below it, the chain has {below}",
                ca.subject()
            ))),
            _ => Ok(()),
        },
        Ok(None) => Ok(()),
        Err(_) => Err(IdentityError::Malformed("basicConstraints".into())),
    }
}

/// When the child names its issuer's key (authorityKeyIdentifier) and the candidate
/// states its own (subjectKeyIdentifier), they must agree: a cheap filter before any
/// signature check.
fn key_ids_fit(child: &X509Certificate, issuer: &X509Certificate) -> bool {
    let aki = child
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.as_ref().map(|k| k.0),
            _ => None,
        });
    let ski = issuer
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0),
            _ => None,
        });
    match (aki, ski) {
        (Some(a), Some(s)) => a == s,
        _ => true,
    }
}

/// OIDs of the subject attributes that may name a device: commonName, serialNumber, UID.
const NAMING_ATTRIBUTES: [&[u8]; 3] = [
    &[0x55, 0x04, 0x03],
    &[0x55, 0x04, 0x05],
    &[0x09, 0x92, 0x26, 0x89, 0x93, 0xF2, 0x2C, 0x64, 0x01, 0x01],
];

/// The commonName, serialNumber and UID values and the subjectAltName strings, ASCII
/// only and lower-cased (ASCII only, so no Unicode case folding can make two names
/// meet), for the "certificate names this device" option.
pub(crate) fn names(c: &X509Certificate) -> Vec<String> {
    let ascii = |s: &str| s.is_ascii().then(|| s.to_ascii_lowercase());
    let mut out: Vec<String> = c
        .subject()
        .iter_attributes()
        .filter(|a| NAMING_ATTRIBUTES.contains(&a.attr_type().as_bytes()))
        .filter_map(|a| a.as_str().ok())
        .filter_map(ascii)
        .collect();
    if let Ok(Some(san)) = c.subject_alternative_name() {
        for n in &san.value.general_names {
            let s = match n {
                GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
                    Some(s.to_string())
                }
                // otherName [0] EXPLICIT value: take it when it is a string.
                GeneralName::OtherName(_, v) => other_name_string(v),
                _ => None,
            };
            out.extend(s.as_deref().and_then(ascii));
        }
    }
    out
}

fn other_name_string(v: &[u8]) -> Option<String> {
    use x509_parser::der_parser::asn1_rs::{Any, FromBer};
    let (_, outer) = Any::from_ber(v).ok()?;
    let (_, inner) = Any::from_ber(outer.data).ok()?;
    std::str::from_utf8(inner.data).ok().map(str::to_string)
}

/// The CAs device certificates must come from.
pub struct CaPool {
    anchors: Vec<Vec<u8>>,
    /// Leaf fingerprint → when the verified chain stops being valid (Unix seconds); the
    /// same devices come back all day, and a chain walk is several signature checks.
    /// Sharded: check-ins of different devices never wait for one another.
    cache: DashMap<String, i64>,
}

impl CaPool {
    /// Reads every certificate of a PEM bundle. Any certificate there is a trust anchor:
    /// a root, or an intermediate the operator chose to trust directly.
    pub fn from_pem(pem: &[u8]) -> Result<Self, IdentityError> {
        let mut anchors = Vec::new();
        for item in x509_parser::pem::Pem::iter_from_buffer(pem) {
            let item = item.map_err(|e| IdentityError::Malformed(format!("CA file: {e}")))?;
            if item.label != "CERTIFICATE" {
                continue;
            }
            parse(&item.contents)?;
            anchors.push(item.contents);
        }
        if anchors.is_empty() {
            return Err(IdentityError::Malformed(
                "no certificate in the CA file".into(),
            ));
        }
        Ok(CaPool {
            anchors,
            cache: DashMap::new(),
        })
    }

    /// Checks a presented certificate (and the intermediates that came with it) and
    /// returns the device identity: always the presented leaf itself.
    /// A leaf whose chain was verified before costs one hash and one lookup: it is parsed
    /// only when its chain is walked.
    pub fn verify(&self, presented: &Presented) -> Result<DeviceCert, IdentityError> {
        let now = ASN1Time::now();
        let sha256 = crate::fingerprint(&presented.leaf);
        let cached = self.cache.get(&sha256).map(|e| *e);
        if cached.is_none_or(|until| until <= now.timestamp()) {
            let leaf = parse(&presented.leaf)?;
            let until = self.walk(&leaf, presented, now)?;
            if self.cache.len() >= CACHE_SIZE {
                self.cache.clear();
            }
            self.cache.insert(sha256.clone(), until);
        }
        Ok(DeviceCert {
            der: presented.leaf.clone(),
            sha256,
        })
    }

    /// Walks from the leaf to an anchor; returns the earliest expiry on the way.
    fn walk(
        &self,
        leaf: &X509Certificate,
        presented: &Presented,
        now: ASN1Time,
    ) -> Result<i64, IdentityError> {
        leaf_policy(leaf)?;
        check_dates(leaf, "the certificate", now)?;
        let anchors: Vec<X509Certificate> = self
            .anchors
            .iter()
            .map(|d| parse(d))
            .collect::<Result<_, _>>()?;
        let intermediates: Vec<X509Certificate> = presented
            .others
            .iter()
            .filter_map(|d| parse(d).ok())
            .collect();
        let mut used = vec![false; intermediates.len()];
        let mut until = leaf.validity().not_after.timestamp();
        let mut current = leaf;
        // Signature checks one request may cause: a CMS full of look-alike issuers must
        // not buy dozens of RSA verifications.
        let mut budget = MAX_SIGNATURE_CHECKS;
        let mut try_issuer = |child: &X509Certificate, issuer: &X509Certificate| {
            if budget == 0 {
                return Err(IdentityError::Untrusted(
                    "too many candidate issuers".into(),
                ));
            }
            budget -= 1;
            signed_by(child, issuer)
        };
        for below in 0..=MAX_INTERMEDIATES {
            let issuer_name = current.issuer().as_raw();
            let mut last_failure = None;
            for anchor in anchors
                .iter()
                .filter(|a| a.subject().as_raw() == issuer_name && key_ids_fit(current, a))
            {
                match try_issuer(current, anchor) {
                    Ok(()) => {
                        check_dates(anchor, "the issuing CA", now)?;
                        path_len_allows(anchor, below)?;
                        return Ok(until.min(anchor.validity().not_after.timestamp()));
                    }
                    Err(e) => last_failure = Some(e),
                }
            }
            let mut next = None;
            for (n, c) in intermediates.iter().enumerate() {
                if used[n]
                    || c.subject().as_raw() != issuer_name
                    || !key_ids_fit(current, c)
                    || ca_policy(c, below).is_err()
                    || check_dates(c, "", now).is_err()
                {
                    continue;
                }
                match try_issuer(current, c) {
                    Ok(()) => {
                        next = Some(n);
                        break;
                    }
                    Err(e) => last_failure = Some(e),
                }
            }
            match next {
                Some(n) => {
                    used[n] = true;
                    current = &intermediates[n];
                    until = until.min(current.validity().not_after.timestamp());
                }
                None => {
                    return Err(match last_failure {
                        Some(IdentityError::BadSignature(_)) => IdentityError::Untrusted(
                            "the issuing CA's signature on the certificate does not verify".into(),
                        ),
                        Some(e) => e,
                        None => IdentityError::Untrusted(format!(
                            "not issued by a configured CA (issuer {})",
                            current.issuer()
                        )),
                    })
                }
            }
        }
        Err(IdentityError::Untrusted(format!(
            "more than {MAX_INTERMEDIATES} intermediates"
        )))
    }
}
