//! Reading a Kafka message: whether it is an envelope this consumer handles, what can be
//! told of one that is not (for its dead letter), its lane, and its span.

use crate::handler::MessageContext;
use rdkafka::message::{Message, OwnedMessage};
use sagapay_domain::{Envelope, EventType};
use std::hash::{Hash, Hasher};

/// The span of one consumed event; it continues the trace the message's headers carry.
pub(super) fn consume_span(envelope: &Envelope, ctx: &MessageContext) -> tracing::Span {
    tracing::info_span!(
        "consume",
        otel.name = format!("consume {}", envelope.event_type),
        otel.kind = "consumer",
        messaging.system = "kafka",
        event_type = %envelope.event_type,
        event_id = %envelope.event_id,
        payment_id = %envelope.payment_id,
        correlation_id = %envelope.correlation_id,
        topic = %ctx.topic,
        partition = ctx.partition,
        offset = ctx.offset,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    )
}

/// The lane of a message: by key, so one payment's events stay in order; messages without a
/// key go by partition.
pub(super) fn lane_of(msg: &OwnedMessage, lanes: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match msg.key() {
        Some(key) => key.hash(&mut h),
        None => (msg.topic(), msg.partition()).hash(&mut h),
    }
    (h.finish() % lanes as u64) as usize
}

/// The event id and type of bytes that are not a valid envelope, as far as they can be read
/// (for the dead letter): a UUID, and a type of at most 64 printable characters.
pub(super) fn identify(value: &[u8]) -> (Option<String>, Option<String>) {
    #[derive(serde::Deserialize)]
    struct Ids {
        event_id: Option<uuid::Uuid>,
        event_type: Option<serde_json::Value>,
    }
    let Ok(ids) = serde_json::from_slice::<Ids>(value) else {
        return (None, None);
    };
    let event_type = ids
        .event_type
        .as_ref()
        .and_then(serde_json::Value::as_str)
        .filter(|t| t.len() <= 64 && t.chars().all(|c| c.is_ascii_graphic()))
        .map(str::to_owned);
    (ids.event_id.map(|id| id.to_string()), event_type)
}

/// What a message is to this consumer.
pub(super) enum Parsed {
    /// An envelope of a type it handles, on the right channel.
    Handled(Envelope),
    /// A type it does not follow, on a stream: passed over.
    NotFollowed,
}

/// Reads an envelope and checks it belongs on the topic it came from and to this consumer.
pub(super) fn parse(value: &[u8], topic: &str, handles: &[EventType]) -> Result<Parsed, String> {
    let env = Envelope::from_json(value).map_err(|e| e.to_string())?;
    let Some(event_type) = env.event_type() else {
        return Err(format!("unknown event type {:?}", env.event_type));
    };
    let channel = event_type.channel();
    if !topic.ends_with(&format!(".{}", channel.as_str())) {
        return Err(format!(
            "event type {} travels on the {} channel, not on topic {topic}",
            env.event_type,
            channel.as_str()
        ));
    }
    if handles.contains(&event_type) {
        Ok(Parsed::Handled(env))
    } else if channel.is_stream() {
        Ok(Parsed::NotFollowed)
    } else {
        Err(format!("event type {} is not handled here", env.event_type))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sagapay_domain::events::RiskApproved;

    #[test]
    fn parse_rejects_garbage_unknown_types_misrouted_and_unhandled_events() {
        let handles = [EventType::RiskApproved, EventType::PaymentFinalized];
        let ok = |r: Result<Parsed, String>| matches!(r, Ok(Parsed::Handled(_)));
        assert!(parse(b"not json", "ns.orchestrator", &handles).is_err());
        let env = Envelope::new(
            uuid::Uuid::now_v7(),
            None,
            "c",
            &RiskApproved { reason: "r".into() },
        );
        assert!(ok(parse(&env.to_json(), "ns.orchestrator", &handles)));
        assert!(
            parse(&env.to_json(), "ns.risk", &handles).is_err(),
            "misrouted"
        );
        assert!(
            parse(&env.to_json(), "ns.orchestrator", &[EventType::RiskDenied]).is_err(),
            "not handled on the service's own channel"
        );
        let mut unknown = env.clone();
        unknown.event_type = "risk.maybe".into();
        assert!(parse(&unknown.to_json(), "ns.orchestrator", &handles).is_err());
        let mut other = env.clone();
        other.event_type = "payments.finalized".into();
        assert!(
            matches!(
                parse(&other.to_json(), "ns.payments", &[EventType::RiskApproved]),
                Ok(Parsed::NotFollowed)
            ),
            "passed over on a stream"
        );
    }
}
