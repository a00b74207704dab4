//! What makes two requests "the same request" for idempotency: a digest of the fields that
//! matter, in a fixed order. One function for every fingerprint (the gateway's fast path, the
//! orchestrator's payments and refunds), so they cannot disagree on how fields are joined.

use sha2::{Digest, Sha256};

/// Hex SHA-256 of `parts` joined by newlines. A part must not contain a newline (the
/// domain's text types refuse control characters), so different parts never join the same.
pub fn request_fingerprint(parts: &[&str]) -> String {
    hex::encode(Sha256::digest(parts.join("\n").as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_and_their_order_matter() {
        assert_eq!(
            request_fingerprint(&["a", "b"]),
            request_fingerprint(&["a", "b"])
        );
        assert_ne!(
            request_fingerprint(&["ab", "c"]),
            request_fingerprint(&["a", "bc"])
        );
        assert_ne!(
            request_fingerprint(&["a", "b"]),
            request_fingerprint(&["b", "a"])
        );
        // The digest of the joined text: what the orchestrator has stored since its first
        // version (a retry across an upgrade is still the same request).
        assert_eq!(
            request_fingerprint(&["m", "c", "100"]),
            hex::encode(Sha256::digest(b"m\nc\n100"))
        );
    }
}
