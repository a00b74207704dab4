//! JSON log lines with the context an operator searches by, at the top level:
//! `timestamp`, `level`, `service_name`, `message`, `trace_id`, `span_id`, `event_id`,
//! `payment_id`, … — the event's own fields and those of every span it happened in (the
//! innermost span wins), so a line needs no span list to be understood.

use serde_json::{Map, Value};
use std::fmt;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The process's service (and instance, when several run), for every line.
pub struct FlatJson {
    pub service_name: &'static str,
    pub service_instance: Option<String>,
}

struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::from(format!("{value:?}")));
    }
}

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            Value::from(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        );
        line.insert(
            "level".into(),
            Value::from(event.metadata().level().as_str()),
        );
        line.insert("service_name".into(), Value::from(self.service_name));
        if let Some(instance) = &self.service_instance {
            line.insert("service_instance".into(), Value::from(instance.as_str()));
        }
        // Span fields, outermost first, so inner spans override outer ones.
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                if let Some(fields) = ext.get::<FormattedFields<N>>() {
                    if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(fields) {
                        // `otel.*` fields name and classify spans for the exporter only.
                        line.extend(map.into_iter().filter(|(k, _)| !k.starts_with("otel.")));
                    }
                }
            }
        }
        event.record(&mut Fields(&mut line));
        line.insert("target".into(), Value::from(event.metadata().target()));
        let text = serde_json::to_string(&Value::Object(line)).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// Span fields are kept as JSON, so `FlatJson` can lift them to the top level.
pub fn span_fields() -> JsonFields {
    JsonFields::new()
}
