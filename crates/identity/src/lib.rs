//! Device identity for the MDM endpoints.
//!
//! A device proves who it is with its identity certificate, carried either in the
//! `Mdm-Signature` header (a base64 detached CMS signature over the exact request body)
//! or, behind a TLS-terminating proxy, in a certificate header (RFC 9440). [`CaPool`]
//! checks that the certificate was issued by one of the configured CAs; binding the
//! certificate to an enrollment is the MDM service's job.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use cryptographic_message_syntax::{SignedData, SignedDataBuilder, SignerBuilder};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use x509_certificate::{CapturedX509Certificate, InMemorySigningKeyPair};

/// Why an identity was refused.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// No signature or certificate header.
    #[error("no device identity (missing Mdm-Signature or certificate header)")]
    Missing,
    /// The header is not base64 / CMS / a certificate.
    #[error("malformed identity: {0}")]
    Malformed(String),
    /// The signature does not match the body.
    #[error("Mdm-Signature does not verify over the body: {0}")]
    BadSignature(String),
    /// The certificate is not from a trusted CA, or is out of its validity.
    #[error("certificate not trusted: {0}")]
    Untrusted(String),
}

/// A verified device certificate.
#[derive(Debug, Clone)]
pub struct DeviceCert {
    /// DER bytes.
    pub der: Vec<u8>,
    /// Lower-case hex SHA-256 of the DER: the enrollment binding key.
    pub sha256: String,
}

impl DeviceCert {
    fn from_captured(c: &CapturedX509Certificate) -> Self {
        let der = c.constructed_data().to_vec();
        let sha256 = hex::encode(Sha256::digest(&der));
        DeviceCert { der, sha256 }
    }
}

/// Verifies `Mdm-Signature` over `body` and returns the signer's certificate. The
/// signature must have exactly one signer whose certificate is in the CMS structure.
pub fn verify_mdm_signature(
    header: &str,
    body: &[u8],
) -> Result<(CapturedX509Certificate, DeviceCert), IdentityError> {
    let der = B64
        .decode(header.trim().as_bytes())
        .map_err(|e| IdentityError::Malformed(format!("Mdm-Signature is not base64: {e}")))?;
    let sd = SignedData::parse_ber(&der)
        .map_err(|e| IdentityError::Malformed(format!("Mdm-Signature is not CMS: {e}")))?;
    let mut signers = sd.signers();
    let signer = signers
        .next()
        .ok_or_else(|| IdentityError::Malformed("CMS without signer".into()))?;
    if signers.next().is_some() {
        return Err(IdentityError::Malformed(
            "CMS with more than one signer".into(),
        ));
    }
    if sd.signed_content().is_some() {
        return Err(IdentityError::Malformed("CMS is not detached".into()));
    }
    signer
        .verify_message_digest_with_content(body)
        .map_err(|e| IdentityError::BadSignature(e.to_string()))?;
    signer
        .verify_signature_with_signed_data(&sd)
        .map_err(|e| IdentityError::BadSignature(e.to_string()))?;
    let (issuer, serial) = signer.certificate_issuer_and_serial().ok_or_else(|| {
        IdentityError::Malformed("signer not identified by issuer and serial".into())
    })?;
    let cert = sd
        .certificates()
        .find(|c| c.issuer_name() == issuer && c.serial_number_asn1() == serial)
        .ok_or_else(|| IdentityError::Malformed("signer certificate not in the signature".into()))?
        .clone();
    let dc = DeviceCert::from_captured(&cert);
    Ok((cert, dc))
}

/// Reads a proxy-supplied client certificate: RFC 9440 (`:base64-DER:`) or URL-escaped PEM
/// (nginx `$ssl_client_escaped_cert`).
pub fn cert_from_header(
    value: &str,
) -> Result<(CapturedX509Certificate, DeviceCert), IdentityError> {
    let v = value.trim();
    let cert = if let Some(inner) = v.strip_prefix(':').and_then(|r| r.strip_suffix(':')) {
        let der = B64
            .decode(inner)
            .map_err(|e| IdentityError::Malformed(format!("RFC 9440 value is not base64: {e}")))?;
        CapturedX509Certificate::from_der(der)
            .map_err(|e| IdentityError::Malformed(e.to_string()))?
    } else {
        let pem = percent_decode(v);
        CapturedX509Certificate::from_pem(pem.as_bytes())
            .map_err(|e| IdentityError::Malformed(e.to_string()))?
    };
    let dc = DeviceCert::from_captured(&cert);
    Ok((cert, dc))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The CAs device certificates must come from. A certificate is trusted when one of the
/// pool's certificates signed it and it is within its validity; results are cached per
/// certificate, since the same devices come back all day.
pub struct CaPool {
    cas: Vec<CapturedX509Certificate>,
    cache: Mutex<HashMap<String, i64>>,
}

impl CaPool {
    /// Reads every certificate of a PEM bundle.
    pub fn from_pem(pem: &[u8]) -> Result<Self, IdentityError> {
        let cas = CapturedX509Certificate::from_pem_multiple(pem)
            .map_err(|e| IdentityError::Malformed(e.to_string()))?;
        if cas.is_empty() {
            return Err(IdentityError::Malformed(
                "no certificate in the CA file".into(),
            ));
        }
        Ok(CaPool {
            cas,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Checks `cert` (whose fingerprint is `dc.sha256`) against the pool.
    pub fn verify(
        &self,
        cert: &CapturedX509Certificate,
        dc: &DeviceCert,
    ) -> Result<(), IdentityError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        if let Some(not_after) = self.cache.lock().expect("lock").get(&dc.sha256) {
            if *not_after > now {
                return Ok(());
            }
        }
        if !cert.time_constraints_valid(None) {
            return Err(IdentityError::Untrusted(
                "outside its validity period".into(),
            ));
        }
        let signed_by_pool = self
            .cas
            .iter()
            .any(|ca| cert.verify_signed_by_certificate(ca).is_ok());
        if !signed_by_pool {
            return Err(IdentityError::Untrusted(
                "not issued by a configured CA".into(),
            ));
        }
        let mut cache = self.cache.lock().expect("lock");
        if cache.len() > 1_000_000 {
            cache.clear();
        }
        cache.insert(dc.sha256.clone(), cert.validity_not_after().timestamp());
        Ok(())
    }
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
        let ca_key = keypair(ca_key_pem)?;
        let ca_params = rcgen::CertificateParams::from_ca_cert_pem(ca_cert_pem).map_err(err)?;
        let ca = ca_params.self_signed(&ca_key).map_err(err)?;
        let key = keypair(subject_key_pem)?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(rcgen::SerialNumber::from_slice(
            &rand::random::<[u8; 16]>()[..],
        ));
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
        let (signer, dc) = verify_mdm_signature(&sig, body).unwrap();
        assert_eq!(dc.der, cert.constructed_data());
        let pool = CaPool::from_pem(ca_pem.as_bytes()).unwrap();
        pool.verify(&signer, &dc).unwrap();
        pool.verify(&signer, &dc).unwrap(); // cached
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
            other.verify(&signer, &dc),
            Err(IdentityError::Untrusted(_))
        ));
    }

    #[test]
    fn rfc9440_and_escaped_pem_headers_read_the_same_certificate() {
        let (_, _, dev_pem, _) = ca_and_device();
        let cert = pem::cert(dev_pem.as_bytes()).unwrap();
        let rfc = format!(":{}:", B64.encode(cert.constructed_data()));
        let (_, a) = cert_from_header(&rfc).unwrap();
        let escaped = dev_pem
            .replace('\n', "%0A")
            .replace(' ', "%20")
            .replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D");
        let (_, b) = cert_from_header(&escaped).unwrap();
        assert_eq!(a.sha256, b.sha256);
        assert!(cert_from_header(":not base64:").is_err());
    }
}
