//! Kafka headers SagaPay sets on every message. The envelope is the source of truth; headers
//! repeat what infrastructure (tracing, routing, debugging with a console consumer) needs
//! without parsing the value.

use rdkafka::message::{Header, Headers, OwnedHeaders};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const CORRELATION_ID: &str = "correlation_id";
pub const EVENT_ID: &str = "event_id";
pub const EVENT_TYPE: &str = "event_type";
/// W3C trace context (https://www.w3.org/TR/trace-context/).
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// Longest header name or value kept from a consumed message.
pub const HEADER_MAX_BYTES: usize = 512;

/// Text headers of one message, ordered by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageHeaders(pub BTreeMap<String, String>);

impl MessageHeaders {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        self.0.insert(name.to_owned(), value.into());
    }

    /// The headers a follow-up event inherits from the message that caused it: trace context.
    pub fn propagated(&self) -> MessageHeaders {
        let mut out = MessageHeaders::default();
        for name in [TRACEPARENT, TRACESTATE] {
            if let Some(v) = self.get(name) {
                out.set(name, v);
            }
        }
        out
    }

    /// The text headers of a Kafka message. Headers are copies of what the envelope says (or
    /// trace context), so one that breaks the text rules (`TEXT_NO_NUL`, `TEXT_BOUNDED`) is
    /// left out rather than carried into a database row.
    pub fn from_kafka<H: Headers>(headers: Option<&H>) -> MessageHeaders {
        let mut out = MessageHeaders::default();
        if let Some(headers) = headers {
            for h in headers.iter() {
                if let Some(Ok(v)) = h.value.map(std::str::from_utf8) {
                    let fits = |s: &str| {
                        sagapay_domain::text::check_text("header", s, HEADER_MAX_BYTES).is_ok()
                    };
                    if fits(h.key) && fits(v) {
                        out.set(h.key, v);
                    }
                }
            }
        }
        out
    }

    pub fn to_kafka(&self) -> OwnedHeaders {
        self.0.iter().fold(OwnedHeaders::new(), |acc, (k, v)| {
            acc.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            })
        })
    }
}
