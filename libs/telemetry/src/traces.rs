//! OpenTelemetry traces. When `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans are exported over
//! OTLP/HTTP (protobuf, or JSON with `OTEL_EXPORTER_OTLP_PROTOCOL=http/json`) in batches
//! (`OTEL_BSP_SCHEDULE_DELAY`, default 5 s); when it is not set nothing is exported and no
//! exporter runs.
//!
//! The endpoint may be `https://`: the exporter's client speaks TLS (rustls on ring, with the
//! host's trust store, so a collector behind a private CA is trusted once its CA is installed
//! on the host, or named by `SSL_CERT_FILE`).
//!
//! W3C trace context travels in `traceparent` headers, in HTTP and in Kafka messages: the
//! HTTP middleware and the inbox consumer make their span a child of the `traceparent` they
//! received (`continue_trace`), and what they pass on is their own span's context, so one
//! payment is one trace across all six services.

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithHttpConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::collections::HashMap;
use std::sync::OnceLock;
use tracing_opentelemetry::OpenTelemetrySpanExt;

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

pub const ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// Builds the exporting tracer provider if `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
pub(crate) fn provider(service_name: &'static str) -> Option<SdkTracerProvider> {
    std::env::var(ENDPOINT_ENV).ok().filter(|v| !v.is_empty())?;
    // The exporter's client names no crypto provider of its own: ring, the one compiled in.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The exporter's own client reads proxy settings from the environment; spans name
    // payments, so they go straight to the collector. (A blocking client is built off the
    // async threads, as the exporter builds its own.)
    let client = match std::thread::spawn(|| {
        reqwest_otlp::blocking::Client::builder()
            .no_proxy()
            .timeout(std::time::Duration::from_secs(10))
            .build()
    })
    .join()
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            eprintln!("OTLP exporter not started: {e}");
            return None;
        }
        Err(_) => {
            eprintln!("OTLP exporter not started: building its client panicked");
            return None;
        }
    };
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .build()
    {
        Ok(e) => e,
        Err(e) => {
            eprintln!("OTLP exporter not started: {e}");
            return None;
        }
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service_name)
                .build(),
        )
        .build();
    let _ = PROVIDER.set(provider.clone());
    Some(provider)
}

pub(crate) fn tracer(provider: &SdkTracerProvider) -> opentelemetry_sdk::trace::Tracer {
    provider.tracer("sagapay")
}

/// Exports what is still buffered; call before the process exits.
pub fn shutdown() {
    if let Some(p) = PROVIDER.get() {
        let _ = p.force_flush();
    }
}

/// `00-<trace id>-<span id>-<flags>`, ids not all zero.
fn parse_traceparent(v: &str) -> Option<(&str, &str)> {
    let parts: Vec<&str> = v.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            && s.bytes().any(|b| b != b'0')
    };
    (parts.len() == 4 && parts[0] == "00" && hex(parts[1], 32) && hex(parts[2], 16))
        .then(|| (parts[1], parts[2]))
}

/// Makes `span` (declared with empty `trace_id` and `span_id` fields) a child of the
/// `traceparent` received, records the ids on it (so every log line inside carries them),
/// and returns the `traceparent` to pass on: this span's own context when traces are
/// exported, else the one received (or a new one) so the trace id still travels.
pub fn continue_trace(span: &tracing::Span, received: Option<&str>) -> String {
    let received = received.filter(|v| parse_traceparent(v).is_some());
    if let Some(tp) = received {
        let carrier: HashMap<String, String> = [("traceparent".to_owned(), tp.to_owned())].into();
        let parent = TraceContextPropagator::new().extract(&carrier);
        let _ = span.set_parent(parent);
    }
    let cx = span.context();
    let otel = cx.span().span_context().clone();
    let passed_on = if otel.is_valid() {
        format!("00-{}-{}-01", otel.trace_id(), otel.span_id())
    } else {
        received.map(str::to_owned).unwrap_or_else(new_traceparent)
    };
    if let Some((trace_id, span_id)) = parse_traceparent(&passed_on) {
        span.record("trace_id", trace_id);
        span.record("span_id", span_id);
    }
    passed_on
}

/// A new trace: random trace id and span id, sampled.
pub fn new_traceparent() -> String {
    let mut bytes = [0u8; 24];
    // Ids need not be secret: should the OS source fail, they are constant but still valid.
    let _ = getrandom::fill(&mut bytes);
    bytes[0] |= 1; // never the all-zero (invalid) trace id
    bytes[16] |= 1; // nor span id
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("00-{}-{}-01", &hex[..32], &hex[32..48])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_parse_and_new_ones_are_valid() {
        assert!(parse_traceparent(&new_traceparent()).is_some());
        assert!(
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_some()
        );
        assert!(
            parse_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none()
        );
        assert!(
            parse_traceparent("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01").is_none()
        );
    }

    #[test]
    fn without_an_exporter_the_received_trace_id_is_passed_on() {
        let span = tracing::info_span!(
            "t",
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty
        );
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(continue_trace(&span, Some(tp)), tp);
        let fresh = continue_trace(&span, Some("junk"));
        assert!(parse_traceparent(&fresh).is_some());
    }
}
