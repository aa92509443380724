//! Detached CMS `SignedData` (RFC 5652), read from BER as Apple devices send it, and
//! verified over the request body.
//!
//! Hand-walked with asn1-rs rather than through a CMS crate because the identity decision
//! needs three things the crates we tried do not give together: BER (devices send
//! indefinite lengths), the certificates' original bytes (re-encoding one breaks its
//! issuer's signature and its fingerprint), and an exact, unambiguous match of the signer
//! to one certificate.

use crate::oids;
use crate::verify::{verify_signature, Digest};
use crate::IdentityError;
use x509_parser::der_parser::asn1_rs::{Any, Class, FromBer, Length, Tag};
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Certificates a signature may carry; Apple devices send one or two.
const MAX_CERTS: usize = 16;

fn malformed(what: impl Into<String>) -> IdentityError {
    IdentityError::Malformed(what.into())
}

/// Reads one element; returns it, its complete encoding and the rest.
fn element<'a>(i: &'a [u8], what: &str) -> Result<(Any<'a>, &'a [u8], &'a [u8]), IdentityError> {
    let (rest, any) = Any::from_ber(i).map_err(|_| malformed(format!("CMS: bad {what}")))?;
    let raw = &i[..i.len() - rest.len()];
    Ok((any, raw, rest))
}

fn expect_universal(any: &Any, tag: Tag, what: &str) -> Result<(), IdentityError> {
    if any.header.class() != Class::Universal || any.header.tag() != tag {
        return Err(malformed(format!("CMS: {what} has the wrong type")));
    }
    Ok(())
}

fn is_context(any: &Any, n: u32) -> bool {
    any.header.class() == Class::ContextSpecific && any.header.tag() == Tag(n)
}

fn oid_bytes<'a>(any: &Any<'a>, what: &str) -> Result<&'a [u8], IdentityError> {
    expect_universal(any, Tag::Oid, what)?;
    Ok(any.data)
}

/// The content of an OCTET STRING, joining BER's constructed chunks.
fn octets(any: &Any, what: &str) -> Result<Vec<u8>, IdentityError> {
    expect_universal(any, Tag::OctetString, what)?;
    if !any.header.is_constructed() {
        return Ok(any.data.to_vec());
    }
    let mut out = Vec::new();
    let mut i = any.data;
    while !i.is_empty() {
        let (chunk, _, rest) = element(i, what)?;
        if chunk.header.is_constructed() {
            return Err(malformed(format!("CMS: {what} nests constructed chunks")));
        }
        expect_universal(&chunk, Tag::OctetString, what)?;
        out.extend_from_slice(chunk.data);
        i = rest;
    }
    Ok(out)
}

/// The OID of an AlgorithmIdentifier.
fn algorithm<'a>(any: &Any<'a>, what: &str) -> Result<&'a [u8], IdentityError> {
    expect_universal(any, Tag::Sequence, what)?;
    let (oid, _, _) = element(any.data, what)?;
    oid_bytes(&oid, what)
}

/// How the signer names its certificate.
enum SignerId<'a> {
    /// The issuer's Name, encoded, and the serial number's content octets.
    IssuerSerial(&'a [u8], &'a [u8]),
    /// The subjectKeyIdentifier.
    KeyId(Vec<u8>),
}

struct SignerInfo<'a> {
    sid: SignerId<'a>,
    digest: &'a [u8],
    /// `signedAttrs` re-tagged as the SET OF that the signature covers.
    signed_attrs: Option<Vec<u8>>,
    /// messageDigest and contentType from the signed attributes.
    message_digest: Option<Vec<u8>>,
    content_type: Option<&'a [u8]>,
    signature_alg: &'a [u8],
    signature: Vec<u8>,
}

fn parse_signer_info(data: &[u8]) -> Result<SignerInfo<'_>, IdentityError> {
    let (version, _, i) = element(data, "SignerInfo version")?;
    expect_universal(&version, Tag::Integer, "SignerInfo version")?;
    let (sid, _, i) = element(i, "signer identifier")?;
    let sid = if sid.header.class() == Class::Universal && sid.header.tag() == Tag::Sequence {
        let (issuer, issuer_raw, rest) = element(sid.data, "signer issuer")?;
        expect_universal(&issuer, Tag::Sequence, "signer issuer")?;
        let (serial, _, _) = element(rest, "signer serial")?;
        expect_universal(&serial, Tag::Integer, "signer serial")?;
        if issuer.header.length() == Length::Indefinite {
            return Err(malformed("CMS: signer issuer is not DER"));
        }
        SignerId::IssuerSerial(issuer_raw, serial.data)
    } else if is_context(&sid, 0) && !sid.header.is_constructed() {
        SignerId::KeyId(sid.data.to_vec())
    } else {
        return Err(malformed("CMS: unknown signer identifier"));
    };
    let (digest, _, i) = element(i, "digest algorithm")?;
    let digest = algorithm(&digest, "digest algorithm")?;
    let (mut next, next_raw, mut i) = element(i, "signature algorithm")?;
    let mut signed_attrs = None;
    let mut message_digest = None;
    let mut content_type = None;
    if is_context(&next, 0) {
        if next.header.length() == Length::Indefinite {
            return Err(malformed("CMS: signed attributes are not DER"));
        }
        // The signature covers the DER of the attributes as a SET OF (tag 0x31), not
        // the [0] IMPLICIT tag they travel under (RFC 5652 5.4).
        let mut der = next_raw.to_vec();
        der[0] = 0x31;
        signed_attrs = Some(der);
        let mut a = next.data;
        while !a.is_empty() {
            let (attr, _, rest) = element(a, "signed attribute")?;
            expect_universal(&attr, Tag::Sequence, "signed attribute")?;
            let (kind, _, values) = element(attr.data, "attribute type")?;
            let kind = oid_bytes(&kind, "attribute type")?;
            let (set, _, _) = element(values, "attribute values")?;
            expect_universal(&set, Tag::Set, "attribute values")?;
            let (value, _, more) = element(set.data, "attribute value")?;
            let single = more.is_empty();
            if kind == oids::MESSAGE_DIGEST {
                if message_digest.is_some() || !single {
                    return Err(malformed("CMS: more than one messageDigest"));
                }
                message_digest = Some(octets(&value, "messageDigest")?);
            } else if kind == oids::CONTENT_TYPE {
                if content_type.is_some() || !single {
                    return Err(malformed("CMS: more than one contentType"));
                }
                content_type = Some(oid_bytes(&value, "contentType")?);
            }
            a = rest;
        }
        (next, _, i) = element(i, "signature algorithm")?;
    }
    let signature_alg = algorithm(&next, "signature algorithm")?;
    let (signature, _, _) = element(i, "signature")?;
    let signature = octets(&signature, "signature")?;
    Ok(SignerInfo {
        sid,
        digest,
        signed_attrs,
        message_digest,
        content_type,
        signature_alg,
        signature,
    })
}

/// What a verified `Mdm-Signature` proves: the body was signed by the key of `signer`,
/// a certificate the CMS carried; `others` are the rest of its certificates (candidate
/// intermediates for the chain to a configured CA).
#[derive(Debug, Clone)]
pub struct Verified {
    /// The signer's certificate, DER as sent.
    pub signer: Vec<u8>,
    /// The other certificates of the CMS, DER as sent.
    pub others: Vec<Vec<u8>>,
}

/// Verifies a detached CMS signature (DER or BER) over `body`.
pub fn verify_detached(der: &[u8], body: &[u8]) -> Result<Verified, IdentityError> {
    let (ci, _, rest) = element(der, "ContentInfo")?;
    if !rest.is_empty() {
        return Err(malformed("CMS: trailing bytes"));
    }
    expect_universal(&ci, Tag::Sequence, "ContentInfo")?;
    let (ct, _, i) = element(ci.data, "content type")?;
    if oid_bytes(&ct, "content type")? != oids::SIGNED_DATA {
        return Err(malformed("CMS: not SignedData"));
    }
    let (wrapper, _, _) = element(i, "content")?;
    if !is_context(&wrapper, 0) {
        return Err(malformed("CMS: no content"));
    }
    let (sd, _, _) = element(wrapper.data, "SignedData")?;
    expect_universal(&sd, Tag::Sequence, "SignedData")?;
    let (version, _, i) = element(sd.data, "version")?;
    expect_universal(&version, Tag::Integer, "version")?;
    let (digests, _, i) = element(i, "digest algorithms")?;
    expect_universal(&digests, Tag::Set, "digest algorithms")?;
    let (encap, _, mut i) = element(i, "encapsulated content")?;
    expect_universal(&encap, Tag::Sequence, "encapsulated content")?;
    let (econtent_type, _, econtent) = element(encap.data, "eContentType")?;
    oid_bytes(&econtent_type, "eContentType")?;
    if !econtent.is_empty() {
        return Err(malformed("CMS is not detached"));
    }

    let mut certs: Vec<Vec<u8>> = Vec::new();
    let mut signer_infos = None;
    while !i.is_empty() {
        let (field, _, rest) = element(i, "SignedData field")?;
        i = rest;
        if is_context(&field, 0) {
            let mut c = field.data;
            while !c.is_empty() {
                let (cert, raw, more) = element(c, "certificate")?;
                c = more;
                if cert.header.class() != Class::Universal || cert.header.tag() != Tag::Sequence {
                    continue; // attribute and other certificate formats are not identities
                }
                if certs.len() == MAX_CERTS {
                    return Err(malformed(format!(
                        "CMS carries more than {MAX_CERTS} certificates"
                    )));
                }
                certs.push(raw.to_vec());
            }
        } else if is_context(&field, 1) {
            continue; // CRLs: revocation is the CA's business, not checked here
        } else {
            expect_universal(&field, Tag::Set, "signerInfos")?;
            signer_infos = Some(field.data);
        }
    }
    let infos = signer_infos.ok_or_else(|| malformed("CMS without signerInfos"))?;
    let (info, _, more) = element(infos, "SignerInfo")?;
    if !more.is_empty() {
        return Err(malformed("CMS with more than one signer"));
    }
    expect_universal(&info, Tag::Sequence, "SignerInfo")?;
    let info = parse_signer_info(info.data)?;

    // The signer is identified exactly once: every certificate that matches its
    // identifier is a candidate, and two different candidates are refused, so the key
    // that verifies is always the key of the certificate returned.
    let mut matching: Vec<usize> = Vec::new();
    for (n, der) in certs.iter().enumerate() {
        let Ok((_, cert)) = X509Certificate::from_der(der) else {
            return Err(malformed("CMS carries a certificate that does not parse"));
        };
        let hit = match &info.sid {
            SignerId::IssuerSerial(issuer, serial) => {
                cert.issuer().as_raw() == *issuer && cert.raw_serial() == *serial
            }
            SignerId::KeyId(id) => cert.iter_extensions().any(|e| {
                matches!(e.parsed_extension(), ParsedExtension::SubjectKeyIdentifier(k) if k.0 == id.as_slice())
            }),
        };
        if hit && !matching.iter().any(|m| certs[*m] == *der) {
            matching.push(n);
        }
    }
    let signer_index = match matching.as_slice() {
        [one] => *one,
        [] => {
            return Err(malformed(
                "the signer's certificate is not in the signature",
            ))
        }
        _ => {
            return Err(IdentityError::Ambiguous(
                "several certificates match the signer".into(),
            ))
        }
    };
    let signer_der = certs[signer_index].clone();
    let (_, signer) = X509Certificate::from_der(&signer_der)
        .map_err(|_| malformed("signer certificate does not parse"))?;

    let digest = Digest::from_oid(info.digest)?;
    let signed_message: Vec<u8> = match &info.signed_attrs {
        Some(attrs) => {
            let want = info
                .message_digest
                .as_deref()
                .ok_or_else(|| malformed("CMS signed attributes without messageDigest"))?;
            // Required by RFC 5652, but not compared with eContentType: some signers
            // (the cryptographic-message-syntax crate among them) label detached
            // content as signedData there, and the signature covers the attribute anyway.
            if info.content_type.is_none() {
                return Err(malformed("CMS signed attributes without contentType"));
            }
            if digest.hash(body) != want {
                return Err(IdentityError::BadSignature(
                    "the body's digest differs from the signed messageDigest".into(),
                ));
            }
            attrs.clone()
        }
        None => body.to_vec(),
    };
    verify_signature(
        signer.public_key(),
        info.signature_alg,
        Some(digest),
        &signed_message,
        &info.signature,
    )?;
    let others = certs
        .into_iter()
        .enumerate()
        .filter(|(n, _)| *n != signer_index)
        .map(|(_, c)| c)
        .collect();
    Ok(Verified {
        signer: signer_der,
        others,
    })
}
