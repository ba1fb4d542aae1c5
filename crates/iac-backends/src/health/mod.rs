//! Health probing and log streaming of running services, over mTLS through their Envoy.
//! [`grpc`] is the backend: [`GrpcProber`] implements both `HealthProber` and `LogStreamer`.

pub mod grpc;

pub use grpc::{GrpcProber, ProbeConfig, install_crypto_provider};
