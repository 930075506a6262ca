//! Webhook verification: pure functions over headers and body, no I/O.
//!
//! Supported senders:
//! - GitHub (and Gitea/Forgejo, which send it too): `X-Hub-Signature-256: sha256=<hex>`, HMAC-SHA256 of the body.
//! - Gitea / Forgejo: `X-Gitea-Signature` / `X-Forgejo-Signature: <hex>`, the same HMAC without the prefix.
//! - GitLab: `X-Gitlab-Token: <secret>`, the secret itself.
//!
//! Every comparison is constant-time (`Mac::verify_slice`; the GitLab token is compared as the HMAC of both
//! sides, which also hides its length). With no secret configured every webhook is refused: an unauthenticated
//! endpoint that makes every node of the cluster fetch is a free amplifier for anyone who can reach it.

use std::collections::{HashSet, VecDeque};

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// What to do with one webhook request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum WebhookVerdict {
    /// Authentic push to the configured branch: sync (every node). HTTP 202.
    Sync { delivery: Option<String> },
    /// Authentic `ping` (sent when a hook is created). HTTP 200.
    Ping { delivery: Option<String> },
    /// Authentic but nothing to do (other branch, tag, other event). HTTP 200/202 with the reason.
    Ignored { reason: String },
    /// Authentic, but this delivery id was seen before (a redelivery). HTTP 200, no sync.
    Duplicate { delivery: String },
    /// Not authentic, or webhooks are not enabled. HTTP 401, no sync.
    Unauthorized { reason: String },
}

impl WebhookVerdict {
    /// A short stable name (`sync`, `ping`, `ignored`, `duplicate`, `unauthorized`).
    pub fn kind(&self) -> &'static str {
        match self {
            WebhookVerdict::Sync { .. } => "sync",
            WebhookVerdict::Ping { .. } => "ping",
            WebhookVerdict::Ignored { .. } => "ignored",
            WebhookVerdict::Duplicate { .. } => "duplicate",
            WebhookVerdict::Unauthorized { .. } => "unauthorized",
        }
    }
}

/// The delivery ids seen most recently, bounded: the oldest id is forgotten first (FIFO, which for ids that are
/// each delivered once or twice behaves like an LRU).
#[derive(Debug, Clone)]
pub struct DeliveryLog {
    capacity: usize,
    order: VecDeque<String>,
    seen: HashSet<String>,
}

impl DeliveryLog {
    pub const DEFAULT_CAPACITY: usize = 1000;

    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        DeliveryLog {
            capacity,
            order: VecDeque::with_capacity(capacity),
            seen: HashSet::with_capacity(capacity),
        }
    }

    pub fn contains(&self, id: &str) -> bool {
        self.seen.contains(id)
    }

    /// Records `id`; false if it was already there.
    pub fn insert(&mut self, id: &str) -> bool {
        if self.seen.contains(id) {
            return false;
        }
        if self.order.len() == self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.seen.remove(&oldest);
            }
        }
        self.order.push_back(id.to_string());
        self.seen.insert(id.to_string());
        true
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

impl Default for DeliveryLog {
    fn default() -> Self {
        DeliveryLog::new(Self::DEFAULT_CAPACITY)
    }
}

/// The headers this module reads, found case-insensitively in `headers`.
fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

fn first_header<'a>(headers: &'a [(String, String)], names: &[&str]) -> Option<&'a str> {
    names.iter().find_map(|n| header(headers, n))
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() & 1 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn hmac_matches(secret: &str, body: &[u8], hex_signature: &str) -> Result<(), &'static str> {
    let signature = decode_hex(hex_signature).ok_or("malformed signature")?;
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).map_err(|_| "unusable secret")?;
    mac.update(body);
    mac.verify_slice(&signature).map_err(|_| "signature mismatch")
}

/// Constant-time equality that does not leak the secret's length either: compares HMACs keyed by the secret.
fn token_matches(secret: &str, token: &str) -> bool {
    let Ok(mut expected) = HmacSha256::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    expected.update(secret.as_bytes());
    let expected = expected.finalize().into_bytes();
    let Ok(mut given) = HmacSha256::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    given.update(token.as_bytes());
    given.verify_slice(&expected).is_ok()
}

/// Why a delivery is not authentic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum AuthFailure {
    #[error("malformed x-hub-signature-256 (expected sha256=<hex>)")]
    MalformedGithubSignature,
    #[error("{header}: {reason}")]
    BadSignature { header: &'static str, reason: &'static str },
    #[error("x-gitlab-token mismatch")]
    GitlabTokenMismatch,
    #[error("missing signature (x-hub-signature-256, x-gitea-signature or x-gitlab-token)")]
    Missing,
}

/// Authenticates with whichever signature header is present, strongest first.
fn authenticate(headers: &[(String, String)], body: &[u8], secret: &str) -> Result<(), AuthFailure> {
    let bad = |header| move |reason| AuthFailure::BadSignature { header, reason };
    if let Some(sig) = header(headers, "x-hub-signature-256") {
        let hex = sig
            .strip_prefix("sha256=")
            .ok_or(AuthFailure::MalformedGithubSignature)?;
        return hmac_matches(secret, body, hex).map_err(bad("x-hub-signature-256"));
    }
    if let Some(sig) = first_header(headers, &["x-gitea-signature", "x-forgejo-signature"]) {
        return hmac_matches(secret, body, sig).map_err(bad("x-gitea-signature"));
    }
    if let Some(token) = header(headers, "x-gitlab-token") {
        return if token_matches(secret, token) {
            Ok(())
        } else {
            Err(AuthFailure::GitlabTokenMismatch)
        };
    }
    Err(AuthFailure::Missing)
}

#[derive(Deserialize)]
struct PushPayload {
    #[serde(rename = "ref")]
    git_ref: String,
}

/// Decides what one webhook request means. `headers` are (name, value) pairs, names in any case; `branch` is
/// the configured branch without `refs/heads/`. Authentic deliveries are recorded in `seen`; forged ones are
/// not, so a forger cannot make a real delivery look like a duplicate.
pub fn verify_webhook(
    headers: &[(String, String)],
    body: &[u8],
    secret: Option<&str>,
    branch: &str,
    seen: &mut DeliveryLog,
) -> WebhookVerdict {
    let Some(secret) = secret.filter(|s| !s.is_empty()) else {
        return WebhookVerdict::Unauthorized {
            reason: "no webhook secret configured".into(),
        };
    };
    if let Err(failure) = authenticate(headers, body, secret) {
        return WebhookVerdict::Unauthorized {
            reason: failure.to_string(),
        };
    }

    let delivery = first_header(
        headers,
        &[
            "x-github-delivery",
            "x-gitea-delivery",
            "x-forgejo-delivery",
            "x-gitlab-event-uuid",
        ],
    )
    .filter(|d| !d.is_empty())
    .map(str::to_string);
    if let Some(id) = &delivery {
        if !seen.insert(id) {
            return WebhookVerdict::Duplicate { delivery: id.clone() };
        }
    }

    let Some(event) = first_header(
        headers,
        &["x-github-event", "x-gitea-event", "x-forgejo-event", "x-gitlab-event"],
    ) else {
        return WebhookVerdict::Ignored {
            reason: "missing event header".into(),
        };
    };
    match event {
        "ping" => WebhookVerdict::Ping { delivery },
        "push" | "Push Hook" => {
            let want = format!("refs/heads/{branch}");
            match serde_json::from_slice::<PushPayload>(body) {
                Ok(p) if p.git_ref == want => WebhookVerdict::Sync { delivery },
                Ok(p) => WebhookVerdict::Ignored {
                    reason: format!("push to {}, not {want}", p.git_ref),
                },
                Err(_) => WebhookVerdict::Ignored {
                    reason: "push payload has no \"ref\"".into(),
                },
            }
        }
        other => WebhookVerdict::Ignored {
            reason: format!("event {other:?} is not a push"),
        },
    }
}

/// The event name of a request, for status (whatever the sender).
pub(crate) fn event_name(headers: &[(String, String)]) -> Option<String> {
    first_header(
        headers,
        &["x-github-event", "x-gitea-event", "x-forgejo-event", "x-gitlab-event"],
    )
    .map(str::to_string)
}

/// The delivery id of a request, for status (whatever the sender).
pub(crate) fn delivery_id(headers: &[(String, String)]) -> Option<String> {
    first_header(
        headers,
        &[
            "x-github-delivery",
            "x-gitea-delivery",
            "x-forgejo-delivery",
            "x-gitlab-event-uuid",
        ],
    )
    .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, body: &[u8]) -> String {
        let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body);
        mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn verdict_table() {
        let secret = "s3cret";
        let main = br#"{"ref":"refs/heads/main","after":"abc"}"#.as_slice();
        let dev = br#"{"ref":"refs/heads/dev"}"#.as_slice();
        let gh = |event: &str, delivery: &str, body: &[u8]| {
            h(&[
                ("X-GitHub-Event", event),
                ("X-GitHub-Delivery", delivery),
                ("X-Hub-Signature-256", &format!("sha256={}", sign(secret, body))),
            ])
        };
        let bad_sig = h(&[
            ("x-github-event", "push"),
            ("x-github-delivery", "d-bad"),
            ("x-hub-signature-256", &format!("sha256={}", sign("wrong", main))),
        ]);
        let gitea = h(&[
            ("x-gitea-event", "push"),
            ("x-gitea-delivery", "g-1"),
            ("x-gitea-signature", &sign(secret, main)),
        ]);
        let gitea_bad = h(&[("x-gitea-event", "push"), ("x-gitea-signature", "zz")]);
        let gitlab = h(&[
            ("x-gitlab-event", "Push Hook"),
            ("x-gitlab-event-uuid", "l-1"),
            ("x-gitlab-token", secret),
        ]);
        let gitlab_bad = h(&[
            ("x-gitlab-event", "Push Hook"),
            ("x-gitlab-event-uuid", "l-2"),
            ("x-gitlab-token", "s3cre"),
        ]);
        let unsigned = h(&[("x-github-event", "push"), ("x-github-delivery", "d-u")]);

        let sync = |d: &str| WebhookVerdict::Sync {
            delivery: Some(d.to_string()),
        };
        type Case<'a> = (
            &'a str,
            Vec<(String, String)>,
            &'a [u8],
            Option<&'a str>,
            WebhookVerdict,
        );
        let cases: Vec<Case> = vec![
            ("github push", gh("push", "d-1", main), main, Some(secret), sync("d-1")),
            ("github redelivery", gh("push", "d-1", main), main, Some(secret), {
                WebhookVerdict::Duplicate { delivery: "d-1".into() }
            }),
            ("github ping", gh("ping", "d-2", b"{}"), b"{}", Some(secret), {
                WebhookVerdict::Ping {
                    delivery: Some("d-2".into()),
                }
            }),
            ("github other branch", gh("push", "d-3", dev), dev, Some(secret), {
                WebhookVerdict::Ignored {
                    reason: "push to refs/heads/dev, not refs/heads/main".into(),
                }
            }),
            ("github other event", gh("issues", "d-4", b"{}"), b"{}", Some(secret), {
                WebhookVerdict::Ignored {
                    reason: "event \"issues\" is not a push".into(),
                }
            }),
            ("github bad signature", bad_sig.clone(), main, Some(secret), {
                WebhookVerdict::Unauthorized {
                    reason: "x-hub-signature-256: signature mismatch".into(),
                }
            }),
            ("github body tampered", gh("push", "d-5", main), dev, Some(secret), {
                WebhookVerdict::Unauthorized {
                    reason: "x-hub-signature-256: signature mismatch".into(),
                }
            }),
            ("gitea push", gitea, main, Some(secret), sync("g-1")),
            ("gitea malformed", gitea_bad, main, Some(secret), {
                WebhookVerdict::Unauthorized {
                    reason: "x-gitea-signature: malformed signature".into(),
                }
            }),
            ("gitlab push", gitlab, main, Some(secret), sync("l-1")),
            ("gitlab wrong token", gitlab_bad, main, Some(secret), {
                WebhookVerdict::Unauthorized {
                    reason: "x-gitlab-token mismatch".into(),
                }
            }),
            ("unsigned", unsigned, main, Some(secret), {
                WebhookVerdict::Unauthorized {
                    reason: "missing signature (x-hub-signature-256, x-gitea-signature or x-gitlab-token)".into(),
                }
            }),
            ("no secret configured", gh("push", "d-6", main), main, None, {
                WebhookVerdict::Unauthorized {
                    reason: "no webhook secret configured".into(),
                }
            }),
        ];
        let mut log = DeliveryLog::default();
        for (name, headers, body, secret, want) in cases {
            assert_eq!(
                verify_webhook(&headers, body, secret, "main", &mut log),
                want,
                "case {name}"
            );
        }
        // A forged request with a real delivery id did not poison the log: the real one still syncs.
        assert!(!log.contains("d-bad"));
        let real = gh("push", "d-bad", main);
        assert_eq!(
            verify_webhook(&real, main, Some(secret), "main", &mut log),
            sync("d-bad")
        );
    }

    #[test]
    fn delivery_log_is_bounded() {
        let mut log = DeliveryLog::new(3);
        for id in ["a", "b", "c", "d"] {
            assert!(log.insert(id));
        }
        assert_eq!(log.len(), 3);
        assert!(!log.contains("a"));
        assert!(!log.insert("d"));
        assert!(log.insert("a"));
    }
}
