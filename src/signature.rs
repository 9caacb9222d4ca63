//! Standard Webhooks v1 (symmetric) signatures: verifying inbound deliveries and signing outbound ones.

use axum::http::HeaderMap;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far a timestamp may be from now, either way.
pub const TOLERANCE_SECS: i64 = 5 * 60;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing or unreadable `{0}` header")]
    MissingHeader(&'static str),
    #[error("`webhook-id` must not contain a full stop")]
    BadId,
    #[error("`webhook-timestamp` is not a unix time in seconds")]
    BadTimestamp,
    #[error("`webhook-timestamp` is more than five minutes away from now")]
    OutsideWindow,
    #[error("no signature in `webhook-signature` matches")]
    NoMatch,
}

/// `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")).
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    format!("v1,{}", STANDARD.encode(digest(key, id, timestamp, body)))
}

fn digest(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// Verifies the Standard Webhooks headers of a delivery against any of `keys`, on the raw body.
pub fn verify(
    keys: &[Vec<u8>],
    headers: &HeaderMap,
    body: &[u8],
    now_secs: i64,
) -> Result<(), SignatureError> {
    let header = |name: &'static str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or(SignatureError::MissingHeader(name))
    };
    let id = header("webhook-id")?;
    let timestamp_text = header("webhook-timestamp")?;
    let signatures = header("webhook-signature")?;
    if id.contains('.') {
        return Err(SignatureError::BadId);
    }
    if timestamp_text.contains('.') || !timestamp_text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SignatureError::BadTimestamp);
    }
    let timestamp: i64 = timestamp_text
        .parse()
        .map_err(|_| SignatureError::BadTimestamp)?;
    if (now_secs - timestamp).abs() > TOLERANCE_SECS {
        return Err(SignatureError::OutsideWindow);
    }
    for key in keys {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp_text.as_bytes());
        mac.update(b".");
        mac.update(body);
        for entry in signatures.split(' ') {
            let Some(encoded) = entry.strip_prefix("v1,") else {
                continue;
            };
            let Ok(given) = STANDARD.decode(encoded) else {
                continue;
            };
            // `verify_slice` checks the length and compares in constant time.
            if mac.clone().verify_slice(&given).is_ok() {
                return Ok(());
            }
        }
    }
    Err(SignatureError::NoMatch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const KEY: &[u8] = b"0123456789abcdefghijklmnopqrstuv";
    const NOW: i64 = 1_700_000_000;

    fn headers(id: &str, ts: &str, sig: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert("webhook-id", HeaderValue::from_str(id).unwrap());
        map.insert("webhook-timestamp", HeaderValue::from_str(ts).unwrap());
        map.insert("webhook-signature", HeaderValue::from_str(sig).unwrap());
        map
    }

    #[test]
    fn a_correct_signature_verifies_on_the_raw_bytes() {
        let body = br#"{"a": 1}"#;
        let sig = sign(KEY, "msg_1", NOW, body);
        assert_eq!(
            verify(
                &[KEY.to_vec()],
                &headers("msg_1", &NOW.to_string(), &sig),
                body,
                NOW
            ),
            Ok(())
        );
        // The same JSON re-serialised is different bytes and must not verify.
        assert_eq!(
            verify(
                &[KEY.to_vec()],
                &headers("msg_1", &NOW.to_string(), &sig),
                br#"{"a":1}"#,
                NOW
            ),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn the_known_standard_webhooks_vector_verifies() {
        // From the Standard Webhooks reference libraries' test suite.
        let key = STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let sig = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        let map = headers("msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", sig);
        assert_eq!(
            verify(std::slice::from_ref(&key), &map, body, 1_614_265_330),
            Ok(())
        );
        assert_eq!(
            sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body),
            sig
        );
    }

    #[test]
    fn empty_truncated_or_foreign_signatures_fail() {
        let body = b"{}";
        let good = sign(KEY, "m", NOW, body);
        let truncated = &good[..good.len() - 8];
        for sig in ["v1,", "v1,AAAA", truncated, "v2,abc", "garbage"] {
            assert_eq!(
                verify(
                    &[KEY.to_vec()],
                    &headers("m", &NOW.to_string(), sig),
                    body,
                    NOW
                ),
                Err(SignatureError::NoMatch),
                "{sig}"
            );
        }
    }

    #[test]
    fn any_of_several_signatures_and_keys_is_enough() {
        let body = b"{}";
        let other = b"another-key-another-key-another!".to_vec();
        let sig = format!("v1,AAAA {}", sign(&other, "m", NOW, body));
        assert_eq!(
            verify(
                &[KEY.to_vec(), other],
                &headers("m", &NOW.to_string(), &sig),
                body,
                NOW
            ),
            Ok(())
        );
    }

    #[test]
    fn the_window_is_five_minutes_both_ways() {
        let body = b"{}";
        for (ts, ok) in [
            (NOW - 300, true),
            (NOW + 300, true),
            (NOW - 301, false),
            (NOW + 301, false),
        ] {
            let sig = sign(KEY, "m", ts, body);
            let result = verify(
                &[KEY.to_vec()],
                &headers("m", &ts.to_string(), &sig),
                body,
                NOW,
            );
            assert_eq!(result.is_ok(), ok, "timestamp offset {}", ts - NOW);
        }
    }

    #[test]
    fn malformed_headers_are_named() {
        let body = b"{}";
        let sig = sign(KEY, "m", NOW, body);
        assert_eq!(
            verify(&[KEY.to_vec()], &HeaderMap::new(), body, NOW),
            Err(SignatureError::MissingHeader("webhook-id"))
        );
        assert_eq!(
            verify(
                &[KEY.to_vec()],
                &headers("a.b", &NOW.to_string(), &sig),
                body,
                NOW
            ),
            Err(SignatureError::BadId)
        );
        assert_eq!(
            verify(&[KEY.to_vec()], &headers("m", "17.5", &sig), body, NOW),
            Err(SignatureError::BadTimestamp)
        );
        assert_eq!(
            verify(&[KEY.to_vec()], &headers("m", "-5", &sig), body, NOW),
            Err(SignatureError::BadTimestamp)
        );
    }
}
