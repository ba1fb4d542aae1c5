//! iac's own observability: `tracing` to stderr filtered by `RUST_LOG` (see [`init`] for the
//! defaults), and, when an OTLP endpoint is configured,
//! spans exported over OTLP/gRPC via tracing-opentelemetry.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Flushes exported spans when dropped.
pub struct TelemetryGuard {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// `default_filter` applies when `RUST_LOG` is unset: CLI commands pass
/// `warn,iac_core::event=off` (their progress display already shows every event), `iac serve`
/// passes `info` (events are its log).
pub fn init(otlp_endpoint: Option<&str>, json_logs: bool, default_filter: &str) -> TelemetryGuard {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let fmt = if json_logs {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_target(false)
            .boxed()
    };
    let mut provider = None;
    let otel_layer = otlp_endpoint.and_then(|ep| {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(ep)
            .build();
        match exporter {
            Ok(exporter) => {
                let p = opentelemetry_sdk::trace::SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(
                        opentelemetry_sdk::Resource::builder()
                            .with_service_name("iac")
                            .build(),
                    )
                    .build();
                let tracer = p.tracer("iac");
                provider = Some(p);
                Some(tracing_opentelemetry::layer().with_tracer(tracer))
            }
            Err(e) => {
                eprintln!("warning: OTLP exporter for {ep} not started: {e}");
                None
            }
        }
    });
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel_layer)
        .try_init();
    TelemetryGuard { provider }
}
