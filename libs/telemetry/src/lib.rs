//! Logs, traces and HTTP metrics shared by every SagaPay service.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder};
use tracing_subscriber::EnvFilter;

pub mod logs;
pub mod traces;

pub use traces::{continue_trace, new_traceparent, shutdown};

/// JSON logs on stdout (see `logs`), filtered by `RUST_LOG` (default `info`), and OpenTelemetry
/// traces when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (see `traces`). Safe to call more than once
/// (tests start several services in one process): later calls do nothing.
pub fn init(service_name: &'static str, service_instance: Option<&str>) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,sqlx=warn,rdkafka=warn,refinery_core=warn,tokio_postgres=warn,opentelemetry=warn,opentelemetry_sdk=warn,opentelemetry_otlp=warn")
    });
    let fmt = tracing_subscriber::fmt::layer()
        .fmt_fields(logs::span_fields())
        .event_format(logs::FlatJson {
            service_name,
            service_instance: service_instance.map(str::to_owned),
        });
    let otel = traces::provider(service_name)
        .map(|p| tracing_opentelemetry::layer().with_tracer(traces::tracer(&p)));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init();
}

/// HTTP metrics with bounded labels: method, route template (never a raw path), status.
#[derive(Clone)]
pub struct HttpMetrics {
    pub requests_total: IntCounterVec,
    pub request_duration_seconds: HistogramVec,
}

impl HttpMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let requests_total = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests answered"),
            &["method", "route", "status"],
        )?;
        let request_duration_seconds = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "Time to answer an HTTP request",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["method", "route"],
        )?;
        registry.register(Box::new(requests_total.clone()))?;
        registry.register(Box::new(request_duration_seconds.clone()))?;
        Ok(Self {
            requests_total,
            request_duration_seconds,
        })
    }
}

/// Prometheus text exposition of a registry.
pub fn render(registry: &Registry) -> String {
    TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap_or_default()
}
