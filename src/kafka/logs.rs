//! librdkafka's log lines and client errors, through `tracing`. A broker that is down is
//! reported on every reconnect attempt; each distinct message (numbers aside) is logged
//! at most once a minute, with how many like it were held back.

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::ClientContext;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const EVERY: Duration = Duration::from_secs(60);
/// Distinct messages remembered; beyond, the memory starts over.
const KEEP: usize = 1_000;

#[derive(Default)]
pub struct Logs {
    /// Message shape → (when last logged, held back since).
    seen: Mutex<HashMap<String, (Instant, u64)>>,
}

impl Logs {
    /// A librdkafka log line (`ClientContext::log`).
    pub fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let Some(held_back) = self.admit_now(message) else {
            return;
        };
        use RDKafkaLogLevel::*;
        match level {
            Emerg | Alert | Critical | Error => {
                tracing::error!(target: "librdkafka", fac, held_back, "{message}")
            }
            Warning => tracing::warn!(target: "librdkafka", fac, held_back, "{message}"),
            Notice | Info => tracing::info!(target: "librdkafka", fac, held_back, "{message}"),
            Debug => tracing::debug!(target: "librdkafka", fac, held_back, "{message}"),
        }
    }

    /// A client-wide error (`ClientContext::error`): brokers down, say. librdkafka retries
    /// by itself, so it is a warning.
    pub fn error(&self, error: KafkaError, reason: &str) {
        // The end of a partition (asked for with `enable.partition.eof`) is news, not an
        // error.
        if matches!(error, KafkaError::Global(RDKafkaErrorCode::PartitionEOF)) {
            return;
        }
        if let Some(held_back) = self.admit_now(reason) {
            tracing::warn!(target: "librdkafka", %error, held_back, "{reason}");
        }
    }

    /// `Some(messages of this shape held back since it was last logged)` when it is to be
    /// logged now (for the caller's own repeated errors).
    pub fn admit_now(&self, message: &str) -> Option<u64> {
        self.admit(message, Instant::now())
    }

    /// `Some(messages of this shape held back since it was last logged)` when it is to be
    /// logged at `now`.
    fn admit(&self, message: &str, now: Instant) -> Option<u64> {
        let key = shape(message);
        let mut seen = self.seen.lock().ok()?;
        if seen.len() >= KEEP && !seen.contains_key(&key) {
            seen.clear();
        }
        match seen.get_mut(&key) {
            Some((last, held)) if now.duration_since(*last) < EVERY => {
                *held += 1;
                None
            }
            Some((last, held)) => {
                *last = now;
                Some(std::mem::take(held))
            }
            None => {
                seen.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

/// The context of a producer that needs nothing but its logs and failed deliveries
/// reported (the alerts topic's).
#[derive(Default)]
pub struct Quiet(pub Logs);

impl ClientContext for Quiet {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.0.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.0.error(error, reason);
    }
}

impl rdkafka::consumer::ConsumerContext for Quiet {}

impl ProducerContext for Quiet {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, m)) = result {
            use rdkafka::message::Message;
            tracing::warn!(error = %e, topic = m.topic(), "record not delivered");
        }
    }
}

/// The message with every run of digits as `#` and without its parenthesised asides:
/// "refused (after 3ms in state CONNECT)" and "refused (after 7ms in state CONNECT, 1
/// identical error(s) suppressed)" are one shape.
fn shape(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut depth = 0usize;
    for c in message.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            _ if depth > 0 => {}
            '0'..='9' if out.ends_with('#') => {}
            '0'..='9' => out.push('#'),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_message_is_logged_once_a_minute_with_the_count_held_back() {
        let logs = Logs::default();
        let t0 = Instant::now();
        let refused = |ms: u32| {
            format!("127.0.0.1:9092/bootstrap: Connect failed: Connection refused (after {ms}ms in state CONNECT)")
        };
        assert_eq!(logs.admit(&refused(0), t0), Some(0));
        for s in 1..=5u64 {
            assert_eq!(
                logs.admit(&refused(s as u32), t0 + Duration::from_secs(s)),
                None
            );
        }
        // Another message is not held back by the first.
        assert_eq!(logs.admit("group coordinator changed", t0), Some(0));
        assert_eq!(logs.admit(&refused(9), t0 + EVERY), Some(5));
        assert_eq!(
            logs.admit(&refused(9), t0 + EVERY + Duration::from_secs(1)),
            None
        );
    }

    #[test]
    fn numbers_do_not_make_messages_distinct_but_words_do() {
        assert_eq!(shape("after 12ms, 3 errors"), shape("after 7ms, 41 errors"));
        assert_ne!(shape("Connection refused"), shape("Connection reset"));
        assert_eq!(
            shape("refused (after 0ms in state CONNECT)"),
            shape("refused (after 9ms in state CONNECT, 1 identical error(s) suppressed)")
        );
    }

    #[test]
    fn the_memory_of_messages_is_bounded() {
        let logs = Logs::default();
        let t0 = Instant::now();
        for i in 0..3 * KEEP {
            logs.admit(
                &format!("message {}", "x".repeat(i % 50 + 1) + &i.to_string()),
                t0,
            );
        }
        assert!(logs.seen.lock().unwrap().len() <= KEEP);
    }
}
