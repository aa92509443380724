//! Signature checks with ring, for every key a device may present: RSA 1024 to 8192 bits
//! (SCEP payloads may ask for 1024) with SHA-1/256/384/512, and ECDSA P-256/P-384
//! (ACME hardware-bound keys) with SHA-256/384. The algorithm is chosen from the
//! signer's key and the declared digest, so a CA of one algorithm can issue a device key
//! of the other.

use crate::oids;
use crate::IdentityError;
use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

/// Smallest RSA modulus accepted.
pub const MIN_RSA_BITS: usize = 1024;

/// A digest algorithm named by a CMS signer or a certificate's signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Digest {
    /// SHA-1 (older SCEP clients).
    Sha1,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl Digest {
    /// From a digest AlgorithmIdentifier's OID.
    pub fn from_oid(oid: &[u8]) -> Result<Self, IdentityError> {
        Ok(match oid {
            oids::SHA1 => Digest::Sha1,
            oids::SHA256 => Digest::Sha256,
            oids::SHA384 => Digest::Sha384,
            oids::SHA512 => Digest::Sha512,
            _ => {
                return Err(IdentityError::Unsupported(format!(
                    "digest algorithm {}",
                    oids::name(oid)
                )))
            }
        })
    }

    /// The digest of `data`.
    pub fn hash(self, data: &[u8]) -> Vec<u8> {
        let alg = match self {
            Digest::Sha1 => &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            Digest::Sha256 => &ring::digest::SHA256,
            Digest::Sha384 => &ring::digest::SHA384,
            Digest::Sha512 => &ring::digest::SHA512,
        };
        ring::digest::digest(alg, data).as_ref().to_vec()
    }
}

enum KeyKind {
    Rsa,
    Ec,
}

/// The digest a signature algorithm implies, and the key kind it needs; `None` for the
/// bare key OIDs (rsaEncryption, id-ecPublicKey) that CMS signers may use, where the
/// SignerInfo's digest algorithm says which hash.
fn signature_algorithm(oid: &[u8]) -> Result<(KeyKind, Option<Digest>), IdentityError> {
    Ok(match oid {
        oids::RSA_ENCRYPTION => (KeyKind::Rsa, None),
        oids::SHA1_WITH_RSA => (KeyKind::Rsa, Some(Digest::Sha1)),
        oids::SHA256_WITH_RSA => (KeyKind::Rsa, Some(Digest::Sha256)),
        oids::SHA384_WITH_RSA => (KeyKind::Rsa, Some(Digest::Sha384)),
        oids::SHA512_WITH_RSA => (KeyKind::Rsa, Some(Digest::Sha512)),
        oids::EC_PUBLIC_KEY => (KeyKind::Ec, None),
        oids::ECDSA_SHA1 => (KeyKind::Ec, Some(Digest::Sha1)),
        oids::ECDSA_SHA256 => (KeyKind::Ec, Some(Digest::Sha256)),
        oids::ECDSA_SHA384 => (KeyKind::Ec, Some(Digest::Sha384)),
        oids::ECDSA_SHA512 => (KeyKind::Ec, Some(Digest::Sha512)),
        _ => {
            return Err(IdentityError::Unsupported(format!(
                "signature algorithm {}",
                oids::name(oid)
            )))
        }
    })
}

/// Verifies `sig` over `msg` with the key of `spki`. `sig_alg` is the signature
/// algorithm OID; `digest` the CMS signer's digest algorithm, when there is one.
pub fn verify_signature(
    spki: &SubjectPublicKeyInfo,
    sig_alg: &[u8],
    digest: Option<Digest>,
    msg: &[u8],
    sig: &[u8],
) -> Result<(), IdentityError> {
    let (kind, implied) = signature_algorithm(sig_alg)?;
    let digest = match (implied, digest) {
        (Some(a), Some(b)) if a != b => {
            return Err(IdentityError::BadSignature(
                "the signature algorithm and the digest algorithm disagree".into(),
            ))
        }
        (Some(a), _) | (None, Some(a)) => a,
        (None, None) => {
            return Err(IdentityError::Unsupported(
                "signature algorithm without a digest".into(),
            ))
        }
    };
    let key_oid = spki.algorithm.algorithm.as_bytes();
    let alg: &'static dyn VerificationAlgorithm = match kind {
        KeyKind::Rsa => {
            if key_oid != oids::RSA_ENCRYPTION {
                return Err(IdentityError::BadSignature(
                    "an RSA signature from a key that is not RSA".into(),
                ));
            }
            let bits = match spki.parsed() {
                Ok(PublicKey::RSA(k)) => k.key_size(),
                _ => return Err(IdentityError::Malformed("RSA public key".into())),
            };
            if bits < MIN_RSA_BITS {
                return Err(IdentityError::KeyTooSmall(format!(
                    "RSA key of {bits} bits (at least {MIN_RSA_BITS})"
                )));
            }
            match digest {
                Digest::Sha1 => &signature::RSA_PKCS1_1024_8192_SHA1_FOR_LEGACY_USE_ONLY,
                Digest::Sha256 => &signature::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY,
                Digest::Sha384 if bits >= 2048 => &signature::RSA_PKCS1_2048_8192_SHA384,
                Digest::Sha384 => {
                    return Err(IdentityError::Unsupported(
                        "SHA-384 with an RSA key under 2048 bits".into(),
                    ))
                }
                Digest::Sha512 => &signature::RSA_PKCS1_1024_8192_SHA512_FOR_LEGACY_USE_ONLY,
            }
        }
        KeyKind::Ec => {
            if key_oid != oids::EC_PUBLIC_KEY {
                return Err(IdentityError::BadSignature(
                    "an ECDSA signature from a key that is not EC".into(),
                ));
            }
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.as_bytes().to_vec())
                .unwrap_or_default();
            match (curve.as_slice(), digest) {
                (oids::P256, Digest::Sha256) => &signature::ECDSA_P256_SHA256_ASN1,
                (oids::P256, Digest::Sha384) => &signature::ECDSA_P256_SHA384_ASN1,
                (oids::P384, Digest::Sha256) => &signature::ECDSA_P384_SHA256_ASN1,
                (oids::P384, Digest::Sha384) => &signature::ECDSA_P384_SHA384_ASN1,
                (oids::P256 | oids::P384, d) => {
                    return Err(IdentityError::Unsupported(format!("ECDSA with {d:?}")))
                }
                (other, _) => {
                    return Err(IdentityError::Unsupported(format!(
                        "EC curve {}",
                        oids::name(other)
                    )))
                }
            }
        }
    };
    UnparsedPublicKey::new(alg, spki.subject_public_key.data.as_ref())
        .verify(msg, sig)
        .map_err(|_| IdentityError::BadSignature("the signature does not verify".into()))
}
