//! Logging and the Prometheus recorder, set up once per process.
//!
//! JSON logs (`ASSAY_LOG_FORMAT=json`) are flat: one object per line with
//! `timestamp`, `level`, `target`, `message`, then the fields of every span
//! the event is in (outermost first), then the event's own fields. A field
//! set by an inner span or the event wins over an outer one of the same
//! name. So every line of an HTTP request carries `request_id`, `method`,
//! `route` and `tenant`, and every line of a chunk job carries
//! `evaluation_id`, `chunk`, `tenant` and `request_id`, at the top level
//! where log tools index them. The README lists the stable field names.
//!
//! Traces: when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (e.g.
//! `http://otel-collector:4318`), spans are also exported over OTLP/HTTP
//! (protobuf) to `<endpoint>/v1/traces`, batched on the SDK's own thread;
//! `OTEL_SERVICE_NAME` names the service (default: the binary's name). Off
//! when unset, and nothing else depends on it.

use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Logs to stderr; JSON lines when `ASSAY_LOG_FORMAT=json`, filtered by `RUST_LOG`
/// (default `info`). Safe to call twice (tests start several apps in one process).
pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("ASSAY_LOG_FORMAT").is_ok_and(|format| format == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok();
    // Built on a thread of its own: the exporter's blocking HTTP client must
    // not be created (or dropped) inside the async runtime `main` runs in.
    let traces = endpoint
        .filter(|endpoint| !endpoint.trim().is_empty())
        .and_then(
            |endpoint| match std::thread::spawn(move || otlp_provider(&endpoint)).join() {
                Ok(Ok(provider)) => Some(provider),
                Ok(Err(error)) => {
                    eprintln!("OTEL_EXPORTER_OTLP_ENDPOINT: {error}; traces are not exported");
                    None
                }
                Err(_) => None,
            },
        );
    let installed = if json {
        builder
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .finish()
            .with(traces.as_ref().map(trace_layer))
            .try_init()
    } else {
        builder
            .finish()
            .with(traces.as_ref().map(trace_layer))
            .try_init()
    };
    if installed.is_ok()
        && let Some(provider) = traces
    {
        let _ = TRACES.set(provider);
    }
}

/// The trace exporter of this process, kept to flush it at exit.
static TRACES: OnceLock<opentelemetry_sdk::trace::SdkTracerProvider> = OnceLock::new();

/// A tracer provider exporting spans to `<endpoint>/v1/traces` over OTLP/HTTP.
/// Building it connects to nothing.
pub fn otlp_provider(
    endpoint: &str,
) -> Result<opentelemetry_sdk::trace::SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .build()?;
    let service = std::env::var("OTEL_SERVICE_NAME").ok().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|path| {
                path.file_name()
                    .map(|name| name.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| "assay".to_owned())
    });
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build(),
        )
        .build())
}

/// The `tracing` layer that turns spans into OpenTelemetry spans of `provider`.
pub fn trace_layer<S>(
    provider: &opentelemetry_sdk::trace::SdkTracerProvider,
) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    use opentelemetry::trace::TracerProvider as _;
    tracing_opentelemetry::layer().with_tracer(provider.tracer("assay"))
}

/// Flushes spans not exported yet (call once, at the end of `main`).
pub fn shutdown_tracing() {
    if let Some(provider) = TRACES.get() {
        let _ = provider.shutdown();
    }
}

/// The JSON line format described in the module doc.
pub struct FlatJson;

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
        let metadata = event.metadata();
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .into(),
        );
        line.insert("level".into(), metadata.level().as_str().into());
        line.insert("target".into(), metadata.target().into());
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                // JsonFields stores a span's fields as one JSON object.
                if let Some(fields) = extensions.get::<FormattedFields<N>>()
                    && let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(fields)
                {
                    line.extend(fields);
                }
            }
        }
        event.record(&mut FieldVisitor(&mut line));
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// Collects an event's fields into the line.
struct FieldVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for FieldVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

/// Resident memory of this process in bytes (Linux: `VmRSS` of
/// `/proc/self/status`), for `assay_process_resident_memory_bytes`.
pub fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kilobytes: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kilobytes * 1024)
}

/// A binary's exit: success, or its error on stderr and status 1. The error
/// is one line, its causes joined by `: ` (`{:#}`), so an operator reads
/// what went wrong without a `Debug` dump; with `RUST_BACKTRACE` set (not
/// `0`) it is printed in full, with the backtrace anyhow captured.
pub fn exit_code(outcome: anyhow::Result<()>) -> std::process::ExitCode {
    let Err(error) = outcome else {
        return std::process::ExitCode::SUCCESS;
    };
    let verbose = std::env::var("RUST_BACKTRACE").is_ok_and(|value| value != "0");
    eprintln!("{}", error_line(&error, verbose));
    std::process::ExitCode::FAILURE
}

/// `error: <message>: <cause>: ...` on one line, or everything when `verbose`.
pub fn error_line(error: &anyhow::Error, verbose: bool) -> String {
    if verbose {
        return format!("error: {error:?}");
    }
    let line = format!("{error:#}");
    let line: Vec<&str> = line.split_whitespace().collect();
    format!("error: {}", line.join(" "))
}

/// Buckets for latencies in seconds: from 1 ms (cached or mocked calls) to
/// 2 minutes (slow LLM calls), so Grafana can compute quantiles across replicas.
/// 0.2 is the API's latency SLO: its alert reads the `le="0.2"` bucket.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Buckets for the runs per chunk an evaluation was planned with: the
/// default 250 and the sizes small evaluations are cut to (down to 25).
const CHUNK_RUNS_BUCKETS: &[f64] = &[
    1.0, 10.0, 25.0, 50.0, 100.0, 150.0, 200.0, 250.0, 500.0, 1000.0,
];

/// Buckets for the chunks of one evaluation.
const CHUNK_COUNT_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 512.0, 4096.0];

/// Installs the global Prometheus recorder once per process and returns the
/// handle that renders `/metrics`. Later calls (tests start several apps in one
/// process) get the same handle.
pub fn install_prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("bucket list is not empty")
                .set_buckets_for_metric(
                    Matcher::Full("assay_evaluation_chunk_runs".into()),
                    CHUNK_RUNS_BUCKETS,
                )
                .expect("bucket list is not empty")
                .set_buckets_for_metric(
                    Matcher::Full("assay_evaluation_chunks".into()),
                    CHUNK_COUNT_BUCKETS,
                )
                .expect("bucket list is not empty")
                .install_recorder()
                .expect("no other metrics recorder is installed in this process");
            let upkeep = handle.clone();
            // `install_recorder` does not drain histograms by itself.
            std::thread::spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                }
            });
            handle
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn errors_print_as_one_line_unless_asked_for_more() {
        let error = anyhow::anyhow!("connection refused\n(is the server up?)")
            .context("connecting to postgres://u:***@db/assay");
        assert_eq!(
            error_line(&error, false),
            "error: connecting to postgres://u:***@db/assay: connection refused (is the server up?)"
        );
        let verbose = error_line(&error, true);
        assert!(verbose.contains("Caused by:"), "{verbose}");
    }

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn with_an_endpoint_spans_become_opentelemetry_spans() {
        use opentelemetry::trace::TraceContextExt as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        // Nothing listens there: building the exporter connects to nothing,
        // and a failed export is the SDK's to report, not ours.
        let provider = otlp_provider("http://127.0.0.1:9/").unwrap();
        let subscriber = tracing_subscriber::registry().with(trace_layer(&provider));
        let (with, without) = tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("http_request", request_id = "r-1");
            let child = span.in_scope(|| tracing::info_span!("job"));
            (span.context(), child.context())
        });
        let (parent, child) = (
            with.span().span_context().clone(),
            without.span().span_context().clone(),
        );
        assert!(parent.is_valid(), "the span has an OpenTelemetry context");
        assert_eq!(
            parent.trace_id(),
            child.trace_id(),
            "a child span is in its parent's trace"
        );
        assert_ne!(parent.span_id(), child.span_id());
        let _ = provider.shutdown();
        // Without the layer, spans have no OpenTelemetry context.
        let plain = tracing::subscriber::with_default(tracing_subscriber::registry(), || {
            tracing::info_span!("x").context()
        });
        assert!(!plain.span().span_context().is_valid());
    }

    #[test]
    fn json_lines_carry_the_fields_of_every_enclosing_span_at_the_top_level() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let outer = tracing::info_span!(
                "http_request",
                request_id = "r-1",
                tenant = tracing::field::Empty
            );
            let _outer = outer.enter();
            outer.record("tenant", "acme");
            let inner = tracing::info_span!("job", chunk = 3, request_id = "r-2");
            let _inner = inner.enter();
            tracing::info!(answer = 42, ok = true, "hello");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let line: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["message"], "hello");
        assert_eq!(line["level"], "INFO");
        assert_eq!(
            line["tenant"], "acme",
            "a field recorded after the span began"
        );
        assert_eq!(line["chunk"], 3);
        assert_eq!(line["request_id"], "r-2", "the inner span wins");
        assert_eq!(line["answer"], 42);
        assert_eq!(line["ok"], true);
        assert!(line["timestamp"].as_str().unwrap().ends_with('Z'));
    }
}
