//! iac's own observability: `tracing` to stderr filtered by `RUST_LOG` (see [`init`] for the
//! defaults), and the deploy traces (shape: [`iac_core::trace_context`]) exported per the standard
//! OpenTelemetry environment:
//!
//! | variable | effect |
//! |---|---|
//! | `OTEL_TRACES_EXPORTER` | `otlp`, `console` (spans printed to stdout), `none`; unset: `otlp` when an endpoint is set, else none |
//! | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_ENDPOINT` | where to send (read by the exporter; `otel_endpoint` in iac.toml is used when neither is set) |
//! | `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, `OTEL_EXPORTER_OTLP_PROTOCOL` | `grpc` (default, port 4317) or `http/protobuf` (port 4318, `/v1/traces`) |
//! | `OTEL_EXPORTER_OTLP_*HEADERS`, `*_TIMEOUT`, `*_COMPRESSION` | honoured by the exporter |
//! | `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` | resource; default `service.name=iac`, `service.version` = this build |
//!
//! [`init`] must run inside the Tokio runtime (the gRPC exporter's channel spawns onto it — built
//! outside, every command panicked with "there is no reactor running"), and the returned guard
//! must be dropped while the runtime is still alive so the last spans are flushed.

use std::collections::HashMap;

use opentelemetry::KeyValue;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// Flushes and shuts the exporter down when dropped (drop it before the runtime).
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.force_flush();
            let _ = p.shutdown();
        }
    }
}

/// Which exporter the environment asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TracesExporter {
    /// Nothing is exported (no endpoint, or `OTEL_TRACES_EXPORTER=none`).
    None,
    /// Spans printed to stdout.
    Console,
    /// OTLP over gRPC.
    OtlpGrpc,
    /// OTLP over HTTP with protobuf bodies.
    OtlpHttp,
}

/// Reads `OTEL_TRACES_EXPORTER` and the OTLP protocol variables through `env`; `config_endpoint`
/// is iac.toml's `otel_endpoint`. A value iac cannot honour is an error naming the variable.
pub fn choose_exporter(
    env: impl Fn(&str) -> Option<String>,
    config_endpoint: Option<&str>,
) -> Result<TracesExporter, String> {
    let get = |k: &str| {
        env(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let endpoint = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|| get("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .or_else(|| config_endpoint.map(str::to_string));
    let wanted = get("OTEL_TRACES_EXPORTER");
    let otlp = match wanted.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None => endpoint.is_some(),
        Some("none") => return Ok(TracesExporter::None),
        Some("console") | Some("logging") => return Ok(TracesExporter::Console),
        Some("otlp") => true,
        Some(other) => {
            return Err(format!(
                "OTEL_TRACES_EXPORTER={other:?} is not supported: expected otlp, console or none"
            ));
        }
    };
    if !otlp {
        return Ok(TracesExporter::None);
    }
    let protocol = get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .map(|p| ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", p))
        .or_else(|| get("OTEL_EXPORTER_OTLP_PROTOCOL").map(|p| ("OTEL_EXPORTER_OTLP_PROTOCOL", p)));
    match protocol {
        None => Ok(TracesExporter::OtlpGrpc),
        Some((_, p)) if p.eq_ignore_ascii_case("grpc") => Ok(TracesExporter::OtlpGrpc),
        Some((_, p)) if p.eq_ignore_ascii_case("http/protobuf") => Ok(TracesExporter::OtlpHttp),
        Some((var, p)) => Err(format!(
            "{var}={p:?} is not supported: expected grpc or http/protobuf"
        )),
    }
}

/// The resource of iac's spans: `service.name=iac` (unless `OTEL_SERVICE_NAME` says otherwise),
/// `service.version`, plus `OTEL_RESOURCE_ATTRIBUTES`.
pub fn resource() -> opentelemetry_sdk::Resource {
    let mut b = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none_or(|v| v.is_empty()) {
        b = b.with_service_name("iac");
    }
    b.with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Builds the tracer provider for `which`, or `None` for [`TracesExporter::None`].
pub fn provider(
    which: &TracesExporter,
    config_endpoint: Option<&str>,
) -> Result<Option<SdkTracerProvider>, String> {
    let env_endpoint = [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()));
    // iac.toml's endpoint only when the environment names none (the exporter reads the env).
    let fallback = config_endpoint.filter(|_| !env_endpoint);
    let builder = SdkTracerProvider::builder().with_resource(resource());
    let p = match which {
        TracesExporter::None => return Ok(None),
        TracesExporter::Console => builder
            .with_batch_exporter(opentelemetry_stdout::SpanExporter::default())
            .build(),
        TracesExporter::OtlpGrpc => {
            let mut b = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            if let Some(ep) = fallback {
                b = b.with_endpoint(ep);
            }
            let e = b
                .build()
                .map_err(|e| format!("OTLP/gRPC trace exporter: {e}"))?;
            builder.with_batch_exporter(e).build()
        }
        TracesExporter::OtlpHttp => {
            let mut b = opentelemetry_otlp::SpanExporter::builder().with_http();
            if let Some(ep) = fallback {
                b = b.with_endpoint(format!("{}/v1/traces", ep.trim_end_matches('/')));
            }
            let e = b
                .build()
                .map_err(|e| format!("OTLP/HTTP trace exporter: {e}"))?;
            builder.with_batch_exporter(e).build()
        }
    };
    Ok(Some(p))
}

/// The `traceparent` of `span`'s OpenTelemetry context, if it has a valid one.
fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// The layer that turns iac's spans into OpenTelemetry spans for `provider`: only iac's own
/// crates (a span from the exporter's HTTP stack would feed back into the exporter).
pub fn otel_layer<S>(provider: &SdkTracerProvider) -> impl Layer<S> + use<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let tracer = provider.tracer("iac");
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(
            Targets::new()
                .with_target("iac_core", LevelFilter::INFO)
                .with_target("iac_backends", LevelFilter::INFO)
                .with_target("iac_bin", LevelFilter::INFO),
        )
}

/// Installs logging and tracing. `default_filter` applies to the stderr log when `RUST_LOG` is
/// unset: CLI commands pass `warn,iac_core::event=off` (their progress display already shows
/// every event), `iac serve` passes `info` (events are its log). Exported spans are not
/// affected by `RUST_LOG`. Call inside the Tokio runtime.
pub fn init(otel_endpoint: Option<&str>, json_logs: bool, default_filter: &str) -> TelemetryGuard {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let fmt = if json_logs {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_target(false)
            .with_filter(filter)
            .boxed()
    };
    let provider = choose_exporter(|k| std::env::var(k).ok(), otel_endpoint)
        .and_then(|which| provider(&which, otel_endpoint));
    let provider = match provider {
        Ok(p) => p,
        Err(e) => {
            eprintln!("warning: traces are not exported: {e}");
            None
        }
    };
    let otel = provider.as_ref().map(otel_layer::<Registry>);
    if provider.is_some() {
        iac_core::trace_context::set_traceparent_source(traceparent_of);
    }
    let _ = tracing_subscriber::registry()
        .with(otel)
        .with(fmt)
        .try_init();
    TelemetryGuard { provider }
}

/// Registers the `traceparent` reader for spans of a subscriber built with [`otel_layer`]
/// (what [`init`] does; tests that build their own subscriber call it).
pub fn register_traceparent_source() {
    iac_core::trace_context::set_traceparent_source(traceparent_of);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn exporter_follows_the_standard_variables() {
        assert_eq!(choose_exporter(env(&[]), None), Ok(TracesExporter::None));
        assert_eq!(
            choose_exporter(
                env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")]),
                None
            ),
            Ok(TracesExporter::OtlpGrpc)
        );
        assert_eq!(
            choose_exporter(env(&[]), Some("http://c:4317")),
            Ok(TracesExporter::OtlpGrpc)
        );
        assert_eq!(
            choose_exporter(
                env(&[
                    (
                        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                        "http://c:4318/v1/traces"
                    ),
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                    ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
                ]),
                None
            ),
            Ok(TracesExporter::OtlpHttp)
        );
        assert_eq!(
            choose_exporter(env(&[("OTEL_TRACES_EXPORTER", "console")]), None),
            Ok(TracesExporter::Console)
        );
        assert_eq!(
            choose_exporter(
                env(&[
                    ("OTEL_TRACES_EXPORTER", "none"),
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")
                ]),
                None
            ),
            Ok(TracesExporter::None)
        );
        let e = choose_exporter(
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ]),
            None,
        )
        .unwrap_err();
        assert!(
            e.contains("OTEL_EXPORTER_OTLP_PROTOCOL") && e.contains("http/json"),
            "{e}"
        );
        let e = choose_exporter(env(&[("OTEL_TRACES_EXPORTER", "zipkin")]), None).unwrap_err();
        assert!(e.contains("zipkin"), "{e}");
    }
}
