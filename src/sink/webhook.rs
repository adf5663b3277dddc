//! Signed webhooks to grid operators and other receivers, from the store's durable outbox.
//!
//! - Receivers filter what they get: sites, device kinds, minimum severity, techniques.
//! - An alert snapshot is queued in the same transaction that stores it, so a crash never
//!   loses a delivery that was due; the worker sends what is due, oldest first.
//! - Headers (docs/design.md): `X-Wattchdog-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret,
//!   "<t>.<body>")>` and `Idempotency-Key: <snapshot id>` (`<alert id>:<status>:<findings>:
//!   <severity>`); optionally the Standard Webhooks headers. A receiver may see a snapshot
//!   twice (at least once), always under the same key; the next snapshot of the alert (an
//!   escalation, the closing) comes under its own, so deduplicating on it drops nothing.
//! - Failures retry with exponential backoff and jitter until `max_age`; then the
//!   delivery becomes a dead letter, listed by the API.

use crate::model::{Alert, Role, Severity};
use crate::sink::store::{self, OutboxItem, Shared};
use crate::time::serde_duration;
use crate::tomlfile::{check, TomlError};
use hmac::{Hmac, KeyInit, Mac};
use rand::Rng;
use serde::Deserialize;
use sha2::Sha256;

use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// One `[[webhooks]]` receiver.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receiver {
    /// Name (in the outbox and logs).
    pub name: String,
    /// `https://…` (or `http://` on loopback and test rigs).
    pub url: String,
    /// HMAC secret.
    pub secret: String,
    /// Only these sites (empty: all).
    #[serde(default)]
    pub sites: Vec<String>,
    /// Only these device kinds (empty: all).
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Only at least this severity.
    #[serde(default = "default_severity")]
    pub min_severity: Severity,
    /// Only alerts in these roles. The default, `["cause"]`, sends what started each
    /// incident and not the plant reacting to it; list all three roles for every alert.
    /// An alert once sent is followed to its last snapshot even when it leaves the roles
    /// (a cause that turns out a consequence says so).
    #[serde(default = "default_roles")]
    pub roles: Vec<Role>,
    /// Only these ATT&CK technique ids (empty: all).
    #[serde(default)]
    pub techniques: Vec<String>,
    /// Also send the Standard Webhooks headers; the secret must then be in their
    /// `whsec_<base64>` form, whose decoded bytes are the key (as their libraries do).
    #[serde(default)]
    pub standard_webhooks: bool,
    /// Give up on a delivery this long after it was queued. Default `"24h"`.
    #[serde(
        default = "default_max_age",
        deserialize_with = "serde_duration::deserialize"
    )]
    pub max_age: i64,
    /// Per-request timeout. Default `"10s"`.
    #[serde(
        default = "default_timeout",
        deserialize_with = "serde_duration::deserialize"
    )]
    pub timeout: i64,
}

fn default_severity() -> Severity {
    Severity::Info
}
fn default_roles() -> Vec<Role> {
    vec![Role::Cause]
}
fn default_max_age() -> i64 {
    86_400_000
}
fn default_timeout() -> i64 {
    10_000
}

impl Receiver {
    /// Whether this receiver wants the alert.
    pub fn wants(&self, a: &Alert) -> bool {
        super::passes(
            a,
            &self.sites,
            &self.kinds,
            self.min_severity,
            &self.roles,
            &self.techniques,
        )
    }

    /// Whether the receiver filters on roles (so an alert it was sent must be followed).
    pub fn follows(&self) -> bool {
        Role::ALL.iter().any(|r| !self.roles.contains(r))
    }
}

/// Checks the receivers.
pub fn validate(receivers: &[Receiver], origin: &str) -> Result<(), TomlError> {
    let mut names = std::collections::BTreeSet::new();
    for (i, r) in receivers.iter().enumerate() {
        let key = |k: &str| format!("webhooks[{i}].{k}");
        check(
            origin,
            &key("name"),
            names.insert(r.name.clone()) && !r.name.is_empty(),
            "must be unique and not empty",
        )?;
        check(
            origin,
            &key("url"),
            r.url.starts_with("https://") || r.url.starts_with("http://"),
            "must be an http(s) URL",
        )?;
        check(
            origin,
            &key("secret"),
            r.secret.len() >= 16,
            "must be at least 16 characters",
        )?;
        if r.standard_webhooks {
            let key_len = standard_key(&r.secret).map(|k| k.len());
            check(
                origin,
                &key("secret"),
                matches!(key_len, Some(24..=64)),
                "with standard_webhooks must be `whsec_` and the base64 of 24 to 64 bytes",
            )?;
        }
        check(
            origin,
            &key("roles"),
            !r.roles.is_empty(),
            "must name at least one of cause, consequence, recovery (absent: [\"cause\"])",
        )?;
        check(
            origin,
            &key("max_age"),
            r.max_age >= 1000,
            "must be at least 1s",
        )?;
        check(
            origin,
            &key("timeout"),
            r.timeout >= 1,
            "must be at least 1ms",
        )?;
    }
    Ok(())
}

/// `t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn signature(secret: &str, t: i64, body: &str) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(format!("{t}.{body}").as_bytes());
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("t={t},v1={hex}")
}

/// The Standard Webhooks key: the bytes that `whsec_<base64>` encodes.
fn standard_key(secret: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let encoded = secret.strip_prefix("whsec_")?;
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()
}

/// Standard Webhooks: `v1,<base64 HMAC-SHA256(key, "<id>.<t>.<body>")>`, the key decoded
/// from the `whsec_` secret (checked at load; a secret that is not in that form signs
/// with its own bytes, which no receiver library would accept).
fn standard_signature(secret: &str, id: &str, t: i64, body: &str) -> String {
    use base64::Engine;
    let key = standard_key(secret).unwrap_or_else(|| secret.as_bytes().to_vec());
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(&key).expect("HMAC takes keys of any length");
    mac.update(format!("{id}.{t}.{body}").as_bytes());
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// Delay before attempt `attempts + 1`: 1 s doubling to 5 min, ± 25 % jitter.
fn backoff(attempts: i64) -> i64 {
    let base = 1000.0 * 2f64.powi(attempts.clamp(0, 20) as i32);
    (base.min(300_000.0) * rand::rng().random_range(0.75..1.25)) as i64
}

/// Sends due deliveries until `stop` turns true; `queued` wakes it when a snapshot is
/// queued, so a delivery does not wait for the next look at the outbox.
pub async fn deliver(
    receivers: Vec<Receiver>,
    store: Shared,
    queued: std::sync::Arc<tokio::sync::Notify>,
    mut stop: watch::Receiver<bool>,
) {
    // rustls with ring (as everywhere in wattchdog); a no-op if a provider is installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = match reqwest::Client::builder().build() {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "webhooks disabled: cannot build an HTTP client");
            return;
        }
    };
    info!(receivers = receivers.len(), "webhook delivery starting");
    loop {
        let now = chrono::Utc::now().timestamp_millis();
        let names: Vec<String> = receivers.iter().map(|r| r.name.clone()).collect();
        // Per receiver, so one that is down does not hold up the others; `more`: one
        // had a full batch due, so go again at once.
        let (due, more) = store::blocking(&store, move |s| {
            let (mut due, mut more) = (Vec::new(), false);
            for name in &names {
                let batch = s.due(name, now, 64)?;
                more |= batch.len() == 64;
                due.extend(batch);
            }
            Ok((due, more))
        })
        .await
        .unwrap_or_else(|e| {
            warn!(error = %e, "cannot read the outbox");
            (Vec::new(), false)
        });
        for item in &due {
            let Some(r) = receivers.iter().find(|r| r.name == item.receiver) else {
                continue;
            };
            let outcome = send(&client, r, item).await;
            let seq = item.seq;
            let result = match outcome {
                Ok(()) => store::blocking(&store, move |s| s.delivered(seq)).await,
                Err(e) => {
                    let age = chrono::Utc::now().timestamp_millis() - item.created_at;
                    let next = (age < r.max_age).then(|| now + backoff(item.attempts));
                    if next.is_none() {
                        warn!(receiver = %r.name, alert = %item.alert_id, error = %e, "webhook given up: dead letter");
                    } else {
                        debug!(receiver = %r.name, alert = %item.alert_id, error = %e, "webhook failed; will retry");
                    }
                    store::blocking(&store, move |s| s.failed(seq, &e, next)).await
                }
            };
            if let Err(e) = result {
                warn!(error = %e, "cannot update the outbox");
            }
        }
        let pause = if more {
            Duration::ZERO
        } else {
            Duration::from_millis(250)
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = queued.notified() => {}
            _ = stop.changed() => break,
        }
    }
}

async fn send(client: &reqwest::Client, r: &Receiver, item: &OutboxItem) -> Result<(), String> {
    let t = chrono::Utc::now().timestamp();
    let mut req = client
        .post(&r.url)
        .timeout(Duration::from_millis(r.timeout as u64))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("X-Wattchdog-Signature", signature(&r.secret, t, &item.body))
        .header("Idempotency-Key", &item.delivery_id);
    if r.standard_webhooks {
        req = req
            .header("webhook-id", &item.delivery_id)
            .header("webhook-timestamp", t.to_string())
            .header(
                "webhook-signature",
                standard_signature(&r.secret, &item.delivery_id, t, &item.body),
            );
    }
    let resp = req
        .body(item.body.clone())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {}", resp.status()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_vector() {
        // HMAC-SHA256("secret", "1700000000.{}"), computed independently with Python's hmac.
        assert_eq!(
            signature("secret", 1_700_000_000, "{}"),
            "t=1700000000,v1=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163"
        );
    }

    #[test]
    fn standard_signature_matches_the_specification_test_vector() {
        // Published with the Standard Webhooks reference libraries.
        assert_eq!(
            standard_signature(
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                r#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn standard_webhooks_need_a_whsec_secret() {
        let receiver = |secret: &str| Receiver {
            name: "grid".into(),
            url: "https://grid.example/hook".into(),
            secret: secret.into(),
            sites: vec![],
            kinds: vec![],
            min_severity: Severity::Info,
            roles: default_roles(),
            techniques: vec![],
            standard_webhooks: true,
            max_age: default_max_age(),
            timeout: default_timeout(),
        };
        assert!(validate(&[receiver("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")], "t").is_ok());
        for bad in [
            "a-plain-secret-of-some-length",
            "whsec_not*base64*at*all*at*all",
            "whsec_c2l4dGVlbi1ieXRlcyEhIQ==", // 16 bytes: too short a key
        ] {
            let err = validate(&[receiver(bad)], "t").unwrap_err().to_string();
            assert!(err.contains("whsec_"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_new_receiver_gets_causes_unless_it_asks_for_every_role() {
        let with = |roles: &str| {
            toml::from_str::<Receiver>(&format!(
                "name = \"grid\"\nurl = \"https://grid.example/hook\"\nsecret = \"0123456789abcdef\"\n{roles}"
            ))
            .unwrap()
        };
        let r = with("");
        assert_eq!(r.roles, [Role::Cause]);
        let mut a = Alert::sample("a", 0, Severity::High, crate::model::AlertStatus::Open);
        assert!(r.wants(&a) && r.follows());
        a.role = Role::Consequence;
        assert!(!r.wants(&a));
        let all = with("roles = [\"cause\", \"consequence\", \"recovery\"]");
        assert!(all.wants(&a) && !all.follows());
        let none = with("roles = []");
        let err = validate(&[none], "t").unwrap_err().to_string();
        assert!(err.contains("roles"), "{err}");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!((750..=1250).contains(&backoff(0)));
        assert!((3000..=5000).contains(&backoff(2)));
        assert!(backoff(30) <= 375_000);
    }
}
