//! Dead letters: a message that cannot be processed is published, with everything needed to
//! understand and replay it, to the namespace's dead-letter topic; the consumer moves on.
//!
//! A letter must itself be publishable, or the consumer that writes it would be stuck again:
//! its error text is cut to [`ERROR_MAX_CHARS`], and when the original message is so large
//! that the letter would pass what the broker accepts, the letter keeps everything but the
//! original bytes (and says how many there were); the original stays on its topic, at the
//! offset the letter names.

use base64::Engine;
use chrono::{DateTime, Utc};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Longest error text a letter carries.
pub const ERROR_MAX_CHARS: usize = 2000;

/// Largest letter published with the original bytes inside (the producer's default
/// `message.max.bytes` is 1,000,000; headers and framing need the rest).
pub const LETTER_MAX_BYTES: usize = 900_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Classification {
    /// Malformed or invalid: retrying the same bytes can never succeed.
    NonRetryable,
    /// Retryable in principle, but the attempts allowed are used up.
    RetryExhausted,
}

impl Classification {
    pub const ALL: [Classification; 2] =
        [Classification::NonRetryable, Classification::RetryExhausted];

    pub fn as_str(self) -> &'static str {
        match self {
            Classification::NonRetryable => "NON_RETRYABLE",
            Classification::RetryExhausted => "RETRY_EXHAUSTED",
        }
    }
}

/// The value of a dead-letter message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub original_topic: String,
    pub original_partition: i32,
    pub original_offset: i64,
    pub original_key: Option<String>,
    pub original_headers: BTreeMap<String, String>,
    /// The original value, exactly: UTF-8 text when it was text, else `payload_base64`.
    pub payload: Option<String>,
    pub payload_base64: Option<String>,
    /// `event_id` and `event_type` when the envelope could be read that far.
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub failing_service: String,
    pub error: String,
    pub classification: Classification,
    pub failed_at: DateTime<Utc>,
    /// The SQLSTATE of the database error that refused the message, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sqlstate: Option<String>,
    /// Attempts made before giving up (`RETRY_EXHAUSTED`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// Set when the original value was too large to carry: its length in bytes (read it from
    /// the original topic and offset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_omitted_bytes: Option<usize>,
}

/// Where a letter comes from and why: the parts every letter has.
#[derive(Debug, Clone)]
pub struct Origin<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub headers: &'a BTreeMap<String, String>,
    pub value: &'a [u8],
}

impl DeadLetter {
    /// A letter for the message at `origin`, failed in `failing_service` with `error`.
    pub fn new(
        origin: &Origin<'_>,
        failing_service: &str,
        error: &str,
        classification: Classification,
    ) -> Self {
        let mut letter = DeadLetter {
            original_topic: origin.topic.to_owned(),
            original_partition: origin.partition,
            original_offset: origin.offset,
            original_key: origin.key.map(|k| String::from_utf8_lossy(k).into_owned()),
            original_headers: origin.headers.clone(),
            payload: None,
            payload_base64: None,
            event_id: None,
            event_type: None,
            failing_service: failing_service.to_owned(),
            error: error.chars().take(ERROR_MAX_CHARS).collect(),
            classification,
            failed_at: Utc::now(),
            sqlstate: None,
            attempts: None,
            payload_omitted_bytes: None,
        };
        letter.set_payload(origin.value);
        letter
    }

    /// The letter as JSON, without the original bytes when they would make it too large for
    /// the broker (`payload_omitted_bytes` then says how many there were).
    pub fn to_json(&self) -> Vec<u8> {
        let full = serde_json::to_vec(self).expect("letters always serialize");
        if full.len() <= LETTER_MAX_BYTES {
            return full;
        }
        let mut lean = self.clone();
        lean.payload_omitted_bytes = Some(self.original_value().len());
        lean.payload = None;
        lean.payload_base64 = None;
        serde_json::to_vec(&lean).expect("letters always serialize")
    }

    /// Stores `value` so that `original_value` gives back the same bytes.
    pub fn set_payload(&mut self, value: &[u8]) {
        match std::str::from_utf8(value) {
            Ok(text) => {
                self.payload = Some(text.to_owned());
                self.payload_base64 = None;
            }
            Err(_) => {
                self.payload = None;
                self.payload_base64 = Some(base64::engine::general_purpose::STANDARD.encode(value));
            }
        }
    }

    pub fn original_value(&self) -> Vec<u8> {
        if let Some(text) = &self.payload {
            return text.as_bytes().to_vec();
        }
        self.payload_base64
            .as_deref()
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .unwrap_or_default()
    }
}

/// Publishes `letter` to `topic`, retrying until the broker has it (a consumer must not move
/// past a message that is neither processed nor dead-lettered). Errors only at shutdown.
pub async fn publish(
    producer: &FutureProducer,
    topic: &str,
    letter: &DeadLetter,
    retry: (Duration, Duration),
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut value = letter.to_json();
    let key = letter.original_key.clone().unwrap_or_default();
    let (initial, most) = retry;
    let mut delays = crate::failure::retry_delays(initial, most);
    loop {
        let record = FutureRecord::to(topic).key(&key).payload(&value);
        match producer
            .send(record, Timeout::After(Duration::from_secs(10)))
            .await
        {
            Ok(_) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _))
                if letter.payload_omitted_bytes.is_none() =>
            {
                // The broker's limit is below ours: send the letter without the original.
                let mut lean = letter.clone();
                lean.payload_omitted_bytes = Some(letter.original_value().len());
                lean.payload = None;
                lean.payload_base64 = None;
                value = serde_json::to_vec(&lean)?;
            }
            Err((e, _)) => {
                tracing::warn!(error = %e, "dead-letter publish failed; retrying");
                let backoff = delays.next().unwrap_or(most);
                tokio::select! {
                    _ = shutdown.cancelled() => anyhow::bail!("shutdown while dead-lettering"),
                    _ = tokio::time::sleep(backoff) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(value: &[u8], error: &str) -> DeadLetter {
        let headers = BTreeMap::new();
        DeadLetter::new(
            &Origin {
                topic: "t",
                partition: 0,
                offset: 1,
                key: Some(b"k"),
                headers: &headers,
                value,
            },
            "risk",
            error,
            Classification::NonRetryable,
        )
    }

    #[test]
    fn payload_round_trips_text_and_binary() {
        let mut dl = letter(b"", "bad");
        dl.set_payload(b"{\"a\":1}");
        assert_eq!(dl.original_value(), b"{\"a\":1}");
        dl.set_payload(&[0xff, 0x00, 0x10]);
        assert!(dl.payload.is_none());
        assert_eq!(dl.original_value(), vec![0xff, 0x00, 0x10]);
    }

    #[test]
    fn a_letter_stays_publishable_whatever_it_carries() {
        let huge_error = "e".repeat(10 * ERROR_MAX_CHARS);
        let small = letter(b"{}", &huge_error);
        assert_eq!(small.error.chars().count(), ERROR_MAX_CHARS);
        let back: DeadLetter = serde_json::from_slice(&small.to_json()).unwrap();
        assert_eq!(back.original_value(), b"{}");
        assert_eq!(back.payload_omitted_bytes, None);

        let original = vec![b'x'; 999_000];
        let big = letter(&original, "too large to process");
        let json = big.to_json();
        assert!(json.len() < 10_000, "{} bytes", json.len());
        let back: DeadLetter = serde_json::from_slice(&json).unwrap();
        assert_eq!(back.payload_omitted_bytes, Some(999_000));
        assert_eq!(back.original_offset, 1);
        assert!(back.original_value().is_empty());
    }
}
