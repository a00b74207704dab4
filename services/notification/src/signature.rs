//! `SagaPay-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, one `v1` per
//! secret in use (two during a roll), the scheme receivers already know from other payment
//! platforms. The timestamp is signed, so a receiver can refuse old replays; the body is
//! signed byte for byte, so receivers must verify before parsing.

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const HEADER: &str = "sagapay-signature";

/// The header's value for `body` sent at `t` (unix seconds), signed with each of `secrets`.
pub fn header(secrets: &[&str], t: i64, body: &[u8]) -> String {
    let mut value = format!("t={t}");
    for secret in secrets {
        value.push_str(",v1=");
        value.push_str(&hex::encode(mac(secret, t, body)));
    }
    value
}

fn mac(secret: &str, t: i64, body: &[u8]) -> [u8; 32] {
    let mut m = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    m.update(t.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m.finalize().into_bytes().into()
}

/// A receiver's check, as the README shows it: one of the `v1` values is the HMAC with
/// `secret`, and `t` is within `tolerance_s` of `now`.
pub fn verify(header: &str, secret: &str, body: &[u8], now: i64, tolerance_s: i64) -> bool {
    let mut t = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => candidates.extend(hex::decode(v).ok()),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    if (now - t).abs() > tolerance_s {
        return false;
    }
    let expected = mac(secret, t, body);
    candidates
        .iter()
        .any(|c| sagapay_service_kit::constant_time::bytes_equal(c, &expected))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_with_each_secret_and_only_in_time() {
        let body = br#"{"id":"evt_1"}"#;
        let h = header(&["whsec_new", "whsec_old"], 1_700_000_000, body);
        assert!(h.starts_with("t=1700000000,v1="));
        assert_eq!(h.matches("v1=").count(), 2);
        for (secret, body, now, ok) in [
            ("whsec_new", &body[..], 1_700_000_000, true),
            ("whsec_old", &body[..], 1_700_000_100, true),
            ("whsec_other", &body[..], 1_700_000_000, false),
            (
                "whsec_new",
                &b"{\"id\":\"evt_2\"}"[..],
                1_700_000_000,
                false,
            ),
            ("whsec_new", &body[..], 1_700_000_301, false),
        ] {
            assert_eq!(verify(&h, secret, body, now, 300), ok, "{secret} at {now}");
        }
        assert!(!verify("v1=00", "whsec_new", body, 0, 300), "no timestamp");
    }
}
