//! Comparing what an attacker may probe byte by byte (keys, signatures, MACs): in constant
//! time, so how long a comparison takes tells nothing of how much of a guess was right. Every
//! such comparison in SagaPay goes through here.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Whether `a` and `b` are the same bytes, in time independent of where they differ (their
/// lengths may show: compare fixed-length values, digests or MACs).
pub fn bytes_equal(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// Whether two secrets are equal, compared as SHA-256 digests so that neither a secret nor
/// its length shows through timing.
pub fn secret_matches(given: &str, expected: &str) -> bool {
    bytes_equal(
        &Sha256::digest(given.as_bytes()),
        &Sha256::digest(expected.as_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_only_when_equal() {
        assert!(bytes_equal(b"abc", b"abc"));
        assert!(!bytes_equal(b"abc", b"abd"));
        assert!(!bytes_equal(b"abc", b"abcd"));
        assert!(secret_matches("s3cret", "s3cret"));
        assert!(!secret_matches("s3cret", "s3cre"));
        assert!(!secret_matches("", "s3cret"));
    }
}
