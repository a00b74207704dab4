//! Dead letters: a message that cannot be processed is published, with everything needed to
//! understand and replay it, to the namespace's dead-letter topic; the consumer moves on.

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Classification {
    /// Malformed or invalid: retrying the same bytes can never succeed.
    NonRetryable,
    /// Retryable in principle, but the attempts allowed are used up.
    RetryExhausted,
}

impl Classification {
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
}

impl DeadLetter {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips_text_and_binary() {
        let mut dl = DeadLetter {
            original_topic: "t".into(),
            original_partition: 0,
            original_offset: 1,
            original_key: None,
            original_headers: BTreeMap::new(),
            payload: None,
            payload_base64: None,
            event_id: None,
            event_type: None,
            failing_service: "risk".into(),
            error: "bad".into(),
            classification: Classification::NonRetryable,
            failed_at: Utc::now(),
        };
        dl.set_payload(b"{\"a\":1}");
        assert_eq!(dl.original_value(), b"{\"a\":1}");
        dl.set_payload(&[0xff, 0x00, 0x10]);
        assert!(dl.payload.is_none());
        assert_eq!(dl.original_value(), vec![0xff, 0x00, 0x10]);
    }
}
