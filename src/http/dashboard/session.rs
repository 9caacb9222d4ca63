//! Who is looking at the dashboard: a signed session cookie, and the CSRF tokens bound to it.
//!
//! Stateless, so any replica verifies what another issued: the cookie carries a random nonce,
//! when it was issued, and which API token signed in (as a keyed fingerprint, never the token
//! or its plain hash), all under an HMAC with a key derived from `webhook.secret`. The MAC also
//! covers the token's digest, so a session ends when its token leaves `api.tokens`. Every
//! visitor gets a cookie, signed in or not: it anchors the CSRF token of the sign-in form
//! itself, and of every action when no sign-in is needed (loopback without `api.tokens`).
//!
//! A CSRF token is the HMAC of the cookie's value: a page from the dashboard carries it in its
//! forms, a page elsewhere cannot read it (the cookie is `HttpOnly`, `SameSite=Strict`, and no
//! CORS is served), so a forged POST lacks it.

use axum::http::{header, HeaderMap, HeaderValue};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// The cookie's name.
pub const COOKIE: &str = "jobhook_session";
const VERSION: &str = "v1";
/// A cookie issued this far in the future (clocks of replicas that disagree) is still taken.
const SKEW_MS: i64 = 60_000;

/// Issues and checks sessions; built once from the configuration.
pub struct Sessions {
    key: [u8; 32],
    /// Per configured token: its SHA-256, and the keyed fingerprint a cookie names it by.
    tokens: Vec<([u8; 32], String)>,
    ttl_ms: i64,
}

/// A visitor with a valid cookie (or one just issued).
#[derive(Debug, Clone)]
pub struct Visitor {
    /// The cookie's value, to bind CSRF tokens to.
    value: String,
    /// Signed in with one of `api.tokens` (always false when there are none).
    pub signed_in: bool,
}

impl Sessions {
    /// `secret` is `webhook.secret`; `token_digests` the SHA-256 of each of `api.tokens`.
    pub fn new(secret: &SecretString, token_digests: &[[u8; 32]], ttl_ms: i64) -> Sessions {
        let key: [u8; 32] = mac(
            secret.expose_secret().as_bytes(),
            &[b"jobhook dashboard sessions v1"],
        );
        let tokens = token_digests
            .iter()
            .map(|digest| {
                let fingerprint = mac(&key, &[b"token\0", digest]);
                (*digest, URL_SAFE_NO_PAD.encode(&fingerprint[..9]))
            })
            .collect();
        Sessions {
            key,
            tokens,
            ttl_ms,
        }
    }

    /// Whether the dashboard asks for a token (`api.tokens` is set).
    pub fn sign_in_required(&self) -> bool {
        !self.tokens.is_empty()
    }

    pub fn ttl_secs(&self) -> i64 {
        self.ttl_ms / 1000
    }

    /// A session for someone who has not signed in (or need not).
    pub fn anonymous(&self, now: i64) -> Visitor {
        self.issue(now, None)
    }

    /// A fresh session for `token`, when it is one of `api.tokens` (checked in constant time).
    pub fn sign_in(&self, token: &str, now: i64) -> Option<Visitor> {
        let presented: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        let mut found = None;
        for (digest, fingerprint) in &self.tokens {
            if bool::from(digest.ct_eq(&presented)) {
                found = Some((digest, fingerprint.as_str()));
            }
        }
        found.map(|(digest, fingerprint)| self.issue(now, Some((digest, fingerprint))))
    }

    fn issue(&self, now: i64, token: Option<(&[u8; 32], &str)>) -> Visitor {
        let nonce = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>());
        let fingerprint = token.map_or("-", |(_, f)| f);
        let payload = format!("{VERSION}.{nonce}.{now}.{fingerprint}");
        let digest: &[u8] = token.map_or(&[], |(d, _)| d.as_slice());
        let tag = mac(
            &self.key,
            &[b"session\0", payload.as_bytes(), b"\0", digest],
        );
        Visitor {
            value: format!("{payload}.{}", URL_SAFE_NO_PAD.encode(tag)),
            signed_in: token.is_some(),
        }
    }

    /// The visitor whose cookie in `headers` is valid at `now`, if any.
    pub fn read(&self, headers: &HeaderMap, now: i64) -> Option<Visitor> {
        cookie_values(headers).find_map(|value| self.verify(value, now))
    }

    fn verify(&self, value: &str, now: i64) -> Option<Visitor> {
        let (payload, tag) = value.rsplit_once('.')?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        let mut parts = payload.split('.');
        let (Some(VERSION), Some(_nonce), Some(issued), Some(fingerprint), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        let issued: i64 = issued.parse().ok()?;
        if issued > now + SKEW_MS || now >= issued.saturating_add(self.ttl_ms) {
            return None;
        }
        let check = |digest: &[u8]| {
            let expected = mac(
                &self.key,
                &[b"session\0", payload.as_bytes(), b"\0", digest],
            );
            bool::from(expected.as_slice().ct_eq(&tag))
        };
        let signed_in = if fingerprint == "-" {
            if !check(&[]) {
                return None;
            }
            false
        } else {
            let mut valid = false;
            for (digest, known) in &self.tokens {
                if known.as_bytes().ct_eq(fingerprint.as_bytes()).into() {
                    valid |= check(digest);
                }
            }
            if !valid {
                return None;
            }
            true
        };
        Some(Visitor {
            value: value.to_owned(),
            signed_in,
        })
    }

    /// The CSRF token forms carry for `visitor`.
    pub fn csrf(&self, visitor: &Visitor) -> String {
        URL_SAFE_NO_PAD.encode(mac(&self.key, &[b"csrf\0", visitor.value.as_bytes()]))
    }

    /// Whether `presented` is `visitor`'s CSRF token (constant time).
    pub fn csrf_matches(&self, visitor: &Visitor, presented: &str) -> bool {
        self.csrf(visitor)
            .as_bytes()
            .ct_eq(presented.as_bytes())
            .into()
    }

    /// The `Set-Cookie` that keeps `visitor`'s session. `Secure` when the browser reached
    /// jobhook over https (see [`over_https`]).
    pub fn set_cookie(&self, visitor: &Visitor, secure: bool) -> HeaderValue {
        cookie_header(&visitor.value, self.ttl_secs(), secure)
    }

    /// The `Set-Cookie` that ends a session.
    pub fn clear_cookie(&self, secure: bool) -> HeaderValue {
        cookie_header("", 0, secure)
    }
}

fn cookie_header(value: &str, max_age: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let text =
        format!("{COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}");
    // The value is base64url, digits and dots: always a valid header value.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Whether the browser's request came over https: the private listener speaks plain http, so
/// only a TLS-terminating proxy in front of it knows, and says so in `X-Forwarded-Proto` or
/// `Forwarded`. Trusting the header is safe in this direction: it can only add `Secure`, which
/// narrows where the browser sends the cookie; a forged one breaks that client's own sign-in.
pub fn over_https(headers: &HeaderMap) -> bool {
    let forwarded_proto = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"));
    let forwarded = headers
        .get_all(header::FORWARDED)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([';', ',']))
        .any(|part| {
            let part = part.trim().to_ascii_lowercase();
            part.strip_prefix("proto=")
                .is_some_and(|proto| proto.trim_matches('"') == "https")
        });
    forwarded_proto || forwarded
}

/// The values of every `jobhook_session` cookie the request carries.
fn cookie_values(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE).then_some(value.trim_matches('"'))
        })
}

fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC takes a key of any length.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: i64 = 3_600_000;

    fn sessions(tokens: &[&str]) -> Sessions {
        let digests: Vec<[u8; 32]> = tokens
            .iter()
            .map(|t| Sha256::digest(t.as_bytes()).into())
            .collect();
        Sessions::new(
            &SecretString::from("a-webhook-secret-of-at-least-32-chars!"),
            &digests,
            TTL,
        )
    }

    fn with_cookie(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("other=1; {COOKIE}={value}")).unwrap(),
        );
        headers
    }

    #[test]
    fn a_session_signed_in_with_a_token_is_read_back_until_it_expires() {
        let sessions = sessions(&["tok-a", "tok-b"]);
        assert!(sessions.sign_in("wrong", 0).is_none());
        let visitor = sessions.sign_in("tok-b", 1_000).unwrap();
        assert!(
            !visitor.value.contains("tok-b"),
            "the token is not in the cookie"
        );
        let read = sessions.read(&with_cookie(&visitor.value), 2_000).unwrap();
        assert!(read.signed_in);
        assert!(sessions
            .read(&with_cookie(&visitor.value), 1_000 + TTL)
            .is_none());
        // Another process with the same secret but without that token no longer accepts it.
        assert!(super::tests::sessions(&["tok-a"])
            .read(&with_cookie(&visitor.value), 2_000)
            .is_none());
    }

    #[test]
    fn tampered_or_foreign_cookies_are_refused() {
        let sessions = sessions(&["tok-a"]);
        let anonymous = sessions.anonymous(0);
        assert!(
            !sessions
                .read(&with_cookie(&anonymous.value), 1)
                .unwrap()
                .signed_in
        );
        let signed = sessions.sign_in("tok-a", 0).unwrap();
        // Claiming the signed-in fingerprint on an anonymous session breaks its MAC.
        let fingerprint = signed.value.split('.').nth(3).unwrap();
        let forged = anonymous
            .value
            .replacen(".-.", &format!(".{fingerprint}."), 1);
        assert!(sessions.read(&with_cookie(&forged), 1).is_none());
        let other = Sessions::new(
            &SecretString::from("another-secret-of-at-least-32-characters"),
            &[Sha256::digest(b"tok-a").into()],
            TTL,
        );
        assert!(other.read(&with_cookie(&signed.value), 1).is_none());
        for junk in ["", "v1", "v1.a.b.c.d", "v2.x.0.-.AAAA", "...."] {
            assert!(sessions.read(&with_cookie(junk), 1).is_none(), "{junk}");
        }
    }

    #[test]
    fn csrf_tokens_belong_to_one_session() {
        let sessions = sessions(&[]);
        let (a, b) = (sessions.anonymous(0), sessions.anonymous(0));
        let token = sessions.csrf(&a);
        assert!(sessions.csrf_matches(&a, &token));
        assert!(!sessions.csrf_matches(&b, &token));
        assert!(!sessions.csrf_matches(&a, ""));
    }

    #[test]
    fn https_is_read_from_the_proxy_headers() {
        let mut headers = HeaderMap::new();
        assert!(!over_https(&headers));
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert!(over_https(&headers));
        let mut headers = HeaderMap::new();
        headers.insert(
            header::FORWARDED,
            HeaderValue::from_static("for=1.2.3.4;proto=https"),
        );
        assert!(over_https(&headers));
        headers.insert(header::FORWARDED, HeaderValue::from_static("proto=http"));
        assert!(!over_https(&headers));
    }
}
