//! Webhooks per Standard Webhooks: signing, and one delivery attempt. The retry schedule and
//! the durable queue live in worker/webhooks.rs and the store.

use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use reqwest::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::redirect::Policy;
use reqwest::StatusCode;
use sha2::Sha256;

use crate::net::{self, AddressPolicy};

const SECRET_PREFIX: &str = "whsec_";
/// How much of a receiver's answer we read (for the error message); the rest is dropped.
const MAX_RESPONSE_BYTES: usize = 4 * 1024;
pub const SECRET_SETTING: &str = "webhook_secret";

/// Signs payloads with the service's `whsec_…` secret.
#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

impl Signer {
    pub fn from_secret(secret: &str) -> anyhow::Result<Self> {
        let encoded = secret
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .unwrap_or(secret.trim());
        let key = B64.decode(encoded).map_err(|e| {
            anyhow::anyhow!("the webhook secret must be whsec_ followed by base64: {e}")
        })?;
        if key.len() < 16 {
            anyhow::bail!("the webhook secret is too short (need at least 16 bytes of key)");
        }
        Ok(Self { key })
    }

    /// A new random secret, 32 bytes of key.
    pub fn generate_secret() -> String {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        format!("{SECRET_PREFIX}{}", B64.encode(key))
    }

    /// `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any size");
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
    }
}

/// What one attempt got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// 2xx.
    Delivered { status: u16 },
    /// 410: the receiver asks us to stop for good.
    Gone,
    /// The target is not a public address (and not allowed): never sent.
    Refused(String),
    /// Anything else; may be retried. `retry_after` when a 429/503 said when.
    Failed {
        status: Option<u16>,
        error: String,
        retry_after: Option<Duration>,
    },
}

#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    signer: Signer,
    policy: AddressPolicy,
}

impl Sender {
    pub fn new(signer: Signer, timeout: Duration, policy: AddressPolicy) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("imgbatch-webhooks/", env!("CARGO_PKG_VERSION")))
            // A redirect could point anywhere, including inside our network: never follow.
            .redirect(Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .no_proxy();
        if let Some(resolver) = policy.resolver() {
            builder = builder.dns_resolver(resolver);
        }
        Ok(Self {
            client: builder.build()?,
            signer,
            policy,
        })
    }

    /// POSTs a signed body once. Returns the outcome and how long it took.
    pub async fn send(&self, url: &str, msg_id: &str, body: &str) -> (SendOutcome, Duration) {
        let started = Instant::now();
        let outcome = self.send_inner(url, msg_id, body).await;
        (outcome, started.elapsed())
    }

    async fn send_inner(&self, url: &str, msg_id: &str, body: &str) -> SendOutcome {
        let failed = |status: Option<u16>, error: String| SendOutcome::Failed {
            status,
            error,
            retry_after: None,
        };
        let parsed = match url::Url::parse(url) {
            Ok(u) => u,
            Err(e) => return failed(None, format!("invalid webhook URL: {e}")),
        };
        if let Err(e) = self.policy.check_url(&parsed) {
            return SendOutcome::Refused(e.to_string());
        }
        let timestamp = chrono::Utc::now().timestamp();
        let signature = self.signer.sign(msg_id, timestamp, body.as_bytes());
        let result = self
            .client
            .post(parsed)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header("webhook-id", msg_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body.to_string())
            .send()
            .await;
        let mut resp = match result {
            Ok(r) => r,
            Err(e) => {
                return match net::find_refusal(&e) {
                    Some(refused) => SendOutcome::Refused(refused.to_string()),
                    None => failed(None, describe(&e)),
                }
            }
        };
        let status = resp.status();
        if status.is_success() {
            return SendOutcome::Delivered {
                status: status.as_u16(),
            };
        }
        if status == StatusCode::GONE {
            return SendOutcome::Gone;
        }
        let retry_after = (status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::SERVICE_UNAVAILABLE)
            .then(|| resp.headers().get(RETRY_AFTER).and_then(parse_retry_after))
            .flatten();
        let mut snippet = Vec::new();
        while let Ok(Some(chunk)) = resp.chunk().await {
            let room = MAX_RESPONSE_BYTES - snippet.len();
            snippet.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if snippet.len() >= MAX_RESPONSE_BYTES {
                break;
            }
        }
        let text = String::from_utf8_lossy(&snippet);
        let text: String = text.chars().take(200).collect();
        let error = if status.is_redirection() {
            format!("receiver answered HTTP {status}; redirects are not followed")
        } else if text.trim().is_empty() {
            format!("receiver answered HTTP {status}")
        } else {
            format!("receiver answered HTTP {status}: {}", text.trim())
        };
        SendOutcome::Failed {
            status: Some(status.as_u16()),
            error,
            retry_after,
        }
    }
}

/// Retry-After in seconds (the HTTP-date form is rare for webhooks; treated as absent).
fn parse_retry_after(v: &HeaderValue) -> Option<Duration> {
    let secs: u64 = v.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs.min(24 * 3600)))
}

fn describe(e: &reqwest::Error) -> String {
    let mut last = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        last = s.to_string();
        source = s.source();
    }
    if e.is_timeout() {
        format!("timed out: {last}")
    } else if e.is_connect() {
        format!("could not connect: {last}")
    } else {
        format!("request failed: {last}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // The example from the Standard Webhooks specification.
        let signer = Signer::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = signer.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn secrets_are_generated_and_checked() {
        let s = Signer::generate_secret();
        assert!(s.starts_with("whsec_"));
        assert!(Signer::from_secret(&s).is_ok());
        assert_ne!(s, Signer::generate_secret());
        assert!(Signer::from_secret("whsec_!!!").is_err());
        assert!(Signer::from_secret("whsec_c2hvcnQ=").is_err());
    }

    #[test]
    fn retry_after_in_seconds() {
        assert_eq!(
            parse_retry_after(&HeaderValue::from_static("7")),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            parse_retry_after(&HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT")),
            None
        );
    }
}
