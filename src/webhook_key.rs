//! The unguessable path tokens of `POST /webhooks/pictory/{key}`.
//!
//! A key is an HMAC of a fixed label (or of a submission id) under `webhook.secret`, so jobhook can
//! check one without storing it, rotate secrets (`webhook.previous_secrets` still verify), and
//! recognise which submission a webhook belongs to even when its body names no job.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use uuid::Uuid;

/// Bytes of HMAC kept in a key: 192 bits, short enough for Pictory's 500-character URL limit.
const MAC_LEN: usize = 24;
const GENERIC_LABEL: &[u8] = b"jobhook/webhook/v1/generic";
const SUBMISSION_LABEL: &str = "jobhook/webhook/v1/submission/";

/// What a valid key says about the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyScope {
    /// The shared URL given out for jobs submitted outside jobhook.
    Generic,
    /// The URL jobhook put in the Generate request of this submission.
    Submission(Uuid),
}

#[derive(Clone)]
pub struct WebhookKeys {
    /// The current secret first, then the previous ones.
    secrets: Vec<SecretString>,
    /// The generic key's MAC under each secret, in the same order: every webhook without a
    /// submission checks against these, so they are worked out once.
    generic: Vec<[u8; MAC_LEN]>,
}

impl std::fmt::Debug for WebhookKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookKeys")
            .field("secrets", &self.secrets.len())
            .finish()
    }
}

impl WebhookKeys {
    pub fn new(current: SecretString, previous: &[SecretString]) -> Self {
        let mut secrets = vec![current];
        secrets.extend(previous.iter().cloned());
        let generic = secrets.iter().map(|s| mac(s, GENERIC_LABEL)).collect();
        WebhookKeys { secrets, generic }
    }

    pub fn generic_key(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.generic[0])
    }

    pub fn submission_key(&self, submission_id: Uuid) -> String {
        let label = format!("{SUBMISSION_LABEL}{submission_id}");
        format!(
            "{}.{}",
            submission_id.simple(),
            URL_SAFE_NO_PAD.encode(mac(&self.secrets[0], label.as_bytes()))
        )
    }

    /// Checks a key in constant time against every accepted secret.
    pub fn check(&self, key: &str) -> Option<KeyScope> {
        let (scope, expected, token) = match key.split_once('.') {
            None => (KeyScope::Generic, self.generic.clone(), key),
            Some((id, token)) => {
                let id = Uuid::try_parse(id).ok()?;
                let label = format!("{SUBMISSION_LABEL}{id}");
                let macs = self
                    .secrets
                    .iter()
                    .map(|s| mac(s, label.as_bytes()))
                    .collect();
                (KeyScope::Submission(id), macs, token)
            }
        };
        let given = URL_SAFE_NO_PAD.decode(token).ok()?;
        if given.len() != MAC_LEN {
            return None;
        }
        let mut matched = subtle::Choice::from(0);
        for mac in &expected {
            matched |= mac.ct_eq(&given[..]);
        }
        bool::from(matched).then_some(scope)
    }
}

fn mac(secret: &SecretString, label: &[u8]) -> [u8; MAC_LEN] {
    let mut hmac = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes())
        .expect("HMAC accepts keys of any length");
    hmac.update(label);
    let full = hmac.finalize().into_bytes();
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(&full[..MAC_LEN]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(current: &str, previous: &[&str]) -> WebhookKeys {
        let previous: Vec<SecretString> = previous.iter().map(|s| SecretString::from(*s)).collect();
        WebhookKeys::new(SecretString::from(current), &previous)
    }

    #[test]
    fn generic_and_submission_keys_verify_and_say_their_scope() {
        let keys = keys("a-secret-that-is-long-enough-0001", &[]);
        assert_eq!(keys.check(&keys.generic_key()), Some(KeyScope::Generic));
        let id = Uuid::now_v7();
        assert_eq!(
            keys.check(&keys.submission_key(id)),
            Some(KeyScope::Submission(id))
        );
    }

    #[test]
    fn keys_of_another_secret_or_tampered_keys_fail() {
        let ours = keys("a-secret-that-is-long-enough-0001", &[]);
        let theirs = keys("a-secret-that-is-long-enough-0002", &[]);
        assert_eq!(ours.check(&theirs.generic_key()), None);
        let mut tampered = ours.generic_key();
        tampered.pop();
        assert_eq!(ours.check(&tampered), None);
        assert_eq!(ours.check(""), None);
        assert_eq!(ours.check("."), None);
        // A submission key whose id was swapped for another one does not verify.
        let key = ours.submission_key(Uuid::now_v7());
        let (_, mac) = key.split_once('.').unwrap();
        assert_eq!(
            ours.check(&format!("{}.{mac}", Uuid::now_v7().simple())),
            None
        );
    }

    #[test]
    fn previous_secrets_still_verify_after_rotation() {
        let old = keys("the-old-secret-that-is-long-enough", &[]);
        let rotated = keys(
            "the-new-secret-that-is-long-enough",
            &["the-old-secret-that-is-long-enough"],
        );
        assert_eq!(rotated.check(&old.generic_key()), Some(KeyScope::Generic));
        let id = Uuid::now_v7();
        assert_eq!(
            rotated.check(&old.submission_key(id)),
            Some(KeyScope::Submission(id))
        );
        assert_ne!(rotated.generic_key(), old.generic_key());
    }

    #[test]
    fn keys_are_url_safe_and_short() {
        let keys = keys("a-secret-that-is-long-enough-0001", &[]);
        let key = keys.submission_key(Uuid::now_v7());
        assert!(key.len() < 80);
        assert!(key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)));
    }
}
