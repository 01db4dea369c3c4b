//! `X-Hub-Signature-256`: HMAC-SHA256 of the raw body with the app secret.
//! Computed over the bytes exactly as received: Meta signs its escaped
//! JSON, so re-serialising would change the bytes and break non-ASCII text.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Checks a header value `sha256=<hex>` against the body, in constant time.
pub fn verify(secret: &[u8], header: Option<&str>, body: &[u8]) -> Result<(), &'static str> {
    let header = header.ok_or("missing X-Hub-Signature-256 header")?;
    let hex_digest = header
        .trim()
        .strip_prefix("sha256=")
        .ok_or("X-Hub-Signature-256 must look like sha256=<hex>")?;
    let expected = hex::decode(hex_digest).map_err(|_| "X-Hub-Signature-256 is not hex")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| "invalid app secret")?;
    mac.update(body);
    mac.verify_slice(&expected)
        .map_err(|_| "X-Hub-Signature-256 does not match the body")
}

#[cfg(test)]
mod tests {
    use super::*;

    // Meta's test vector: compact, ASCII-escaped JSON, no trailing newline.
    const BODY: &[u8] = include_bytes!("../tests/fixtures/signature_fixture_text_non_ascii.json");
    const GOOD: &str = "sha256=f837ee19f226214302584c609bf140394d45ff22d14b4b52545d94b37bb72116";

    #[test]
    fn accepts_metas_test_vector() {
        assert_eq!(verify(b"test-app-secret", Some(GOOD), BODY), Ok(()));
        assert_eq!(
            verify(
                b"test-app-secret",
                Some(&GOOD.to_uppercase().replace("SHA256", "sha256")),
                BODY
            ),
            Ok(())
        );
    }

    #[test]
    fn rejects_wrong_secret_body_or_format() {
        assert!(verify(b"other-secret", Some(GOOD), BODY).is_err());
        assert!(verify(b"test-app-secret", Some(GOOD), b"{}").is_err());
        assert!(verify(b"test-app-secret", None, BODY).is_err());
        assert!(verify(b"test-app-secret", Some("f837ee19"), BODY).is_err());
        assert!(verify(b"test-app-secret", Some("sha256=zz"), BODY).is_err());
    }

    #[test]
    fn rejects_the_signature_of_a_reserialised_body() {
        let reserialised =
            serde_json::to_vec(&serde_json::from_slice::<serde_json::Value>(BODY).unwrap())
                .unwrap();
        assert_ne!(reserialised, BODY);
        assert!(verify(b"test-app-secret", Some(GOOD), &reserialised).is_err());
    }
}
