//! Secrets that are only ever compared: stored as SHA-256 digests, compared in constant time.
//!
//! A stored digest is `sha256:<64 hex digits>`; the prefix tells a digest from a plaintext
//! value written by an older version (rehashed at start-up by the SQL backends), since some
//! plaintext secrets are themselves 64 hex digits.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Prefix of a stored digest.
pub const PREFIX: &str = "sha256:";

/// The stored form of `secret`.
pub fn digest(secret: &str) -> String {
    format!("{PREFIX}{}", hex::encode(Sha256::digest(secret.as_bytes())))
}

/// Whether `stored` is already a digest (not a plaintext left by an older version).
pub fn is_digest(stored: &str) -> bool {
    stored
        .strip_prefix(PREFIX)
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Whether `given` is the secret whose stored form is `stored`, in constant time.
pub fn matches_digest(given: &str, stored: &str) -> bool {
    let want = digest(given);
    // Both are the same length when `stored` is a digest; ct_eq is false otherwise.
    bool::from(want.as_bytes().ct_eq(stored.as_bytes()))
}

/// Whether two secrets are equal, in time that depends on neither: their digests are
/// compared, so the length of the secret does not show either.
pub fn equal(a: &str, b: &str) -> bool {
    let (x, y) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    bool::from(x.as_slice().ct_eq(y.as_slice()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_match_only_their_secret() {
        let d = digest("s3cret");
        assert!(is_digest(&d));
        assert!(!is_digest("s3cret"));
        assert!(!is_digest(&"a".repeat(64)));
        assert!(matches_digest("s3cret", &d));
        assert!(!matches_digest("s3cret ", &d));
        assert!(!matches_digest("s3cret", "s3cret"));
        assert!(equal("k", "k"));
        assert!(!equal("k", "K"));
        assert!(!equal("", "k"));
    }
}
