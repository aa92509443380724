//! Device identity for the MDM endpoints.
//!
//! A device proves who it is with its identity certificate, carried either in the
//! `Mdm-Signature` header (a base64 detached CMS signature over the exact request body)
//! or, behind a TLS-terminating proxy, in a certificate header (RFC 9440). Either way the
//! result is a [`Presented`] certificate; [`CaPool::verify`] then decides whether it is a
//! device identity (a client-authentication leaf, valid now, chaining to a configured CA)
//! and returns it as a [`DeviceCert`]. Binding the certificate to an enrollment is the MDM
//! service's job.

mod chain;
mod cms;
mod oids;
mod verify;

pub use chain::CaPool;
pub use verify::MIN_RSA_BITS;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use cryptographic_message_syntax::{SignedDataBuilder, SignerBuilder};
use sha2::{Digest as _, Sha256};
use x509_certificate::{CapturedX509Certificate, InMemorySigningKeyPair};

/// Largest `Mdm-Signature` or certificate header read (base64 or escaped PEM); a device
/// identity with its intermediates is a few kilobytes.
pub const MAX_HEADER: usize = 64 * 1024;

/// Why an identity was refused: each check that can fail has its own case, so the log
/// says which one.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The header is not base64 / CMS / a certificate.
    #[error("malformed identity: {0}")]
    Malformed(String),
    /// Several certificates of the signature match its signer.
    #[error("ambiguous signer: {0}")]
    Ambiguous(String),
    /// The signature does not match the body, or not the signer's key.
    #[error("signature does not verify: {0}")]
    BadSignature(String),
    /// The key is smaller than accepted.
    #[error("key too small: {0}")]
    KeyTooSmall(String),
    /// An algorithm, curve or digest cloudvpp does not verify.
    #[error("unsupported algorithm: {0}")]
    Unsupported(String),
    /// Not issued by a configured CA.
    #[error("not trusted: {0}")]
    Untrusted(String),
    /// Past its validity.
    #[error("expired: {0}")]
    Expired(String),
    /// Before its validity.
    #[error("not yet valid: {0}")]
    NotYetValid(String),
    /// A CA certificate presented as an identity.
    #[error("not a leaf certificate: {0}")]
    NotALeaf(String),
    /// Not for client authentication.
    #[error("not for client authentication: {0}")]
    WrongUsage(String),
}

/// A certificate a request presented, not yet checked against the CAs.
#[derive(Debug, Clone)]
pub struct Presented {
    /// The identity certificate, DER as sent.
    pub leaf: Vec<u8>,
    /// Other certificates that came with it (candidate intermediates), DER as sent.
    pub others: Vec<Vec<u8>>,
}

/// A verified device certificate.
#[derive(Debug, Clone)]
pub struct DeviceCert {
    /// DER bytes.
    pub der: Vec<u8>,
    /// Lower-case hex SHA-256 of the DER: the enrollment binding key.
    pub sha256: String,
}

// Read from the DER when asked (Authenticate, logs): most requests never need them.
impl DeviceCert {
    /// The subject, for logs and the admin API.
    pub fn subject(&self) -> String {
        chain::parse(&self.der)
            .map(|c| c.subject().to_string())
            .unwrap_or_default()
    }

    /// Whether the certificate names one of `ids` (a UDID or EnrollmentID) in its
    /// commonName, serialNumber or UID, or a subjectAltName string, ignoring ASCII case.
    pub fn names_any(&self, ids: &[&str]) -> bool {
        let Ok(cert) = chain::parse(&self.der) else {
            return false;
        };
        let names = chain::names(&cert);
        ids.iter()
            .filter(|id| !id.is_empty())
            .any(|id| names.iter().any(|n| n.eq_ignore_ascii_case(id)))
    }
}

/// Lower-case hex SHA-256 of a certificate's DER.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// Verifies `Mdm-Signature` over `body` and returns the signer's certificate: the one
/// certificate of the CMS that its signer identifies, whose key made the signature.
pub fn verify_mdm_signature(header: &str, body: &[u8]) -> Result<Presented, IdentityError> {
    if header.len() > MAX_HEADER {
        return Err(IdentityError::Malformed("Mdm-Signature is too long".into()));
    }
    let der = B64
        .decode(header.trim().as_bytes())
        .map_err(|e| IdentityError::Malformed(format!("Mdm-Signature is not base64: {e}")))?;
    let v = cms::verify_detached(&der, body)?;
    Ok(Presented {
        leaf: v.signer,
        others: v.others,
    })
}

/// Reads RFC 9440's `Client-Cert-Chain`: a list of `:base64-DER:` intermediates.
pub fn chain_from_header(value: &str) -> Result<Vec<Vec<u8>>, IdentityError> {
    if value.len() > MAX_HEADER {
        return Err(IdentityError::Malformed(
            "certificate chain header is too long".into(),
        ));
    }
    value
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .take(8)
        .map(|v| {
            let inner = v
                .strip_prefix(':')
                .and_then(|r| r.strip_suffix(':'))
                .ok_or_else(|| {
                    IdentityError::Malformed("Client-Cert-Chain item is not :base64:".into())
                })?;
            B64.decode(inner).map_err(|e| {
                IdentityError::Malformed(format!("Client-Cert-Chain is not base64: {e}"))
            })
        })
        .collect()
}

/// Reads a proxy-supplied client certificate: RFC 9440 (`:base64-DER:`) or URL-escaped PEM
/// (nginx `$ssl_client_escaped_cert`).
pub fn cert_from_header(value: &str) -> Result<Presented, IdentityError> {
    if value.len() > MAX_HEADER {
        return Err(IdentityError::Malformed(
            "certificate header is too long".into(),
        ));
    }
    let v = value.trim();
    let der = if let Some(inner) = v.strip_prefix(':').and_then(|r| r.strip_suffix(':')) {
        B64.decode(inner)
            .map_err(|e| IdentityError::Malformed(format!("RFC 9440 value is not base64: {e}")))?
    } else {
        let pem = percent_decode(v);
        let (_, item) = x509_parser::pem::parse_x509_pem(&pem)
            .map_err(|e| IdentityError::Malformed(format!("certificate header PEM: {e}")))?;
        if item.label != "CERTIFICATE" {
            return Err(IdentityError::Malformed(
                "certificate header PEM is not a CERTIFICATE".into(),
            ));
        }
        item.contents
    };
    Ok(Presented {
        leaf: der,
        others: Vec::new(),
    })
}

fn percent_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// Signs `body` as a device does: a detached CMS signature, base64, for `Mdm-Signature`.
pub fn sign_detached(
    key: &InMemorySigningKeyPair,
    cert: &CapturedX509Certificate,
    body: &[u8],
) -> Result<String, IdentityError> {
    let der = SignedDataBuilder::default()
        .content_external(body.to_vec())
        .signer(SignerBuilder::new(key, cert.clone()))
        .certificate(cert.clone())
        .build_der()
        .map_err(|e| IdentityError::Malformed(e.to_string()))?;
    Ok(B64.encode(der))
}

/// Helpers to load PEM material.
pub mod pem {
    use super::*;

    /// A certificate from PEM.
    pub fn cert(pem: &[u8]) -> Result<CapturedX509Certificate, IdentityError> {
        CapturedX509Certificate::from_pem(pem).map_err(|e| IdentityError::Malformed(e.to_string()))
    }

    /// A PKCS#8 private key from PEM.
    pub fn key(pem: &[u8]) -> Result<InMemorySigningKeyPair, IdentityError> {
        InMemorySigningKeyPair::from_pkcs8_pem(pem)
            .map_err(|e| IdentityError::Malformed(e.to_string()))
    }
}

/// Throwaway PKI for development, tests and the simulator: an RSA CA and RSA device
/// identities. RSA keeps the certificate encoding canonical when the CMS builder re-encodes
/// it (with ECDSA it adds a NULL parameter, which breaks the issuer's signature).
pub mod devpki {
    use super::IdentityError;
    use rsa::pkcs8::{EncodePrivateKey, LineEnding};

    fn err(e: impl std::fmt::Display) -> IdentityError {
        IdentityError::Malformed(e.to_string())
    }

    /// A new RSA-2048 private key, PKCS#8 PEM.
    pub fn new_key_pem() -> Result<String, IdentityError> {
        let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).map_err(err)?;
        Ok(key.to_pkcs8_pem(LineEnding::LF).map_err(err)?.to_string())
    }

    fn keypair(pem: &str) -> Result<rcgen::KeyPair, IdentityError> {
        rcgen::KeyPair::from_pem_and_sign_algo(pem, &rcgen::PKCS_RSA_SHA256).map_err(err)
    }

    /// A self-signed CA: (certificate PEM, key PEM).
    pub fn new_ca(common_name: &str) -> Result<(String, String), IdentityError> {
        let key_pem = new_key_pem()?;
        let key = keypair(&key_pem)?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).map_err(err)?;
        Ok((cert.pem(), key_pem))
    }

    /// A client certificate for `subject_key_pem`, issued by the CA.
    pub fn issue(
        ca_cert_pem: &str,
        ca_key_pem: &str,
        common_name: &str,
        subject_key_pem: &str,
    ) -> Result<String, IdentityError> {
        issue_with_serial(
            ca_cert_pem,
            ca_key_pem,
            common_name,
            subject_key_pem,
            &rand::random::<[u8; 16]>()[..],
        )
    }

    /// [`issue`] with a chosen serial number (tests of signer matching).
    pub fn issue_with_serial(
        ca_cert_pem: &str,
        ca_key_pem: &str,
        common_name: &str,
        subject_key_pem: &str,
        serial: &[u8],
    ) -> Result<String, IdentityError> {
        let ca_key = keypair(ca_key_pem)?;
        let ca_params = rcgen::CertificateParams::from_ca_cert_pem(ca_cert_pem).map_err(err)?;
        let ca = ca_params.self_signed(&ca_key).map_err(err)?;
        let key = keypair(subject_key_pem)?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(rcgen::SerialNumber::from_slice(serial));
        let cert = params.signed_by(&key, &ca, &ca_key).map_err(err)?;
        Ok(cert.pem())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_and_device() -> (String, String, String, String) {
        let (ca, ca_key) = devpki::new_ca("Test CA").unwrap();
        let dev_key = devpki::new_key_pem().unwrap();
        let dev = devpki::issue(&ca, &ca_key, "device", &dev_key).unwrap();
        (ca, ca_key, dev, dev_key)
    }

    #[test]
    fn signatures_verify_only_over_the_exact_body() {
        let (ca_pem, _, dev_pem, dev_key) = ca_and_device();
        let cert = pem::cert(dev_pem.as_bytes()).unwrap();
        let key = pem::key(dev_key.as_bytes()).unwrap();
        let body = b"<plist>hello</plist>";
        let sig = sign_detached(&key, &cert, body).unwrap();
        let presented = verify_mdm_signature(&sig, body).unwrap();
        assert_eq!(presented.leaf, cert.constructed_data());
        let pool = CaPool::from_pem(ca_pem.as_bytes()).unwrap();
        let dc = pool.verify(&presented).unwrap();
        assert_eq!(dc.der, cert.constructed_data());
        assert_eq!(dc.sha256, fingerprint(cert.constructed_data()));
        assert!(dc.names_any(&["DEVICE"]));
        assert!(!dc.names_any(&["other", ""]));
        pool.verify(&presented).unwrap(); // cached
        assert!(matches!(
            verify_mdm_signature(&sig, b"<plist>hellp</plist>"),
            Err(IdentityError::BadSignature(_))
        ));
        assert!(matches!(
            verify_mdm_signature("!!!", body),
            Err(IdentityError::Malformed(_))
        ));
        assert!(matches!(
            verify_mdm_signature("aGVsbG8=", body),
            Err(IdentityError::Malformed(_))
        ));
        // A certificate from another CA is not trusted.
        let (other_ca, _, _, _) = ca_and_device();
        let other = CaPool::from_pem(other_ca.as_bytes()).unwrap();
        assert!(matches!(
            other.verify(&presented),
            Err(IdentityError::Untrusted(_))
        ));
    }

    #[test]
    fn a_ca_certificate_is_never_a_device_identity() {
        let (ca_pem, ca_key) = devpki::new_ca("Test CA").unwrap();
        let pool = CaPool::from_pem(ca_pem.as_bytes()).unwrap();
        let cert = pem::cert(ca_pem.as_bytes()).unwrap();
        let key = pem::key(ca_key.as_bytes()).unwrap();
        let sig = sign_detached(&key, &cert, b"x").unwrap();
        let presented = verify_mdm_signature(&sig, b"x").unwrap();
        assert!(matches!(
            pool.verify(&presented),
            Err(IdentityError::NotALeaf(_))
        ));
    }

    #[test]
    fn a_signer_matched_by_two_certificates_is_refused() {
        // Two certificates with the signer's issuer and serial: whichever verified, the
        // other could be taken as the identity, so neither is.
        let (ca_pem, ca_key, dev_pem, dev_key) = ca_and_device();
        let cert = pem::cert(dev_pem.as_bytes()).unwrap();
        let key = pem::key(dev_key.as_bytes()).unwrap();
        let serial = cert.serial_number_asn1().clone();
        let twin_key = devpki::new_key_pem().unwrap();
        let twin_pem =
            devpki::issue_with_serial(&ca_pem, &ca_key, "twin", &twin_key, &serial.into_bytes())
                .unwrap();
        let twin = pem::cert(twin_pem.as_bytes()).unwrap();
        assert_eq!(twin.serial_number_asn1(), cert.serial_number_asn1());
        let der = SignedDataBuilder::default()
            .content_external(b"body".to_vec())
            .signer(SignerBuilder::new(&key, cert.clone()))
            .certificate(twin)
            .certificate(cert)
            .build_der()
            .unwrap();
        assert!(matches!(
            verify_mdm_signature(&B64.encode(der), b"body"),
            Err(IdentityError::Ambiguous(_))
        ));
    }

    #[test]
    fn a_certificate_before_its_validity_is_refused() {
        let (ca_pem, ca_key) = devpki::new_ca("Test CA").unwrap();
        let ca_kp =
            rcgen::KeyPair::from_pem_and_sign_algo(&ca_key, &rcgen::PKCS_RSA_SHA256).unwrap();
        let ca = rcgen::CertificateParams::from_ca_cert_pem(&ca_pem)
            .unwrap()
            .self_signed(&ca_kp)
            .unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.not_before = rcgen::date_time_ymd(2999, 1, 1);
        params.not_after = rcgen::date_time_ymd(3000, 1, 1);
        let cert = params.signed_by(&key, &ca, &ca_kp).unwrap();
        let pool = CaPool::from_pem(ca_pem.as_bytes()).unwrap();
        let presented = Presented {
            leaf: cert.der().to_vec(),
            others: vec![],
        };
        assert!(matches!(
            pool.verify(&presented),
            Err(IdentityError::NotYetValid(_))
        ));
    }

    #[test]
    fn rfc9440_and_escaped_pem_headers_read_the_same_certificate() {
        let (_, _, dev_pem, _) = ca_and_device();
        let cert = pem::cert(dev_pem.as_bytes()).unwrap();
        let rfc = format!(":{}:", B64.encode(cert.constructed_data()));
        let a = cert_from_header(&rfc).unwrap();
        let escaped = dev_pem
            .replace('\n', "%0A")
            .replace(' ', "%20")
            .replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D");
        let b = cert_from_header(&escaped).unwrap();
        assert_eq!(a.leaf, b.leaf);
        assert!(cert_from_header(":not base64:").is_err());
        assert!(cert_from_header("%").is_err());
    }
}
