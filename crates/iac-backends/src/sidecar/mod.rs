//! Sidecar renderers: turn the [`iac_core::Mesh`] into one proxy config per service.
//! [`envoy`] is the default (and only) backend; see its docs for the port and route layout.
//! [`envoy_bin`] runs a real Envoy on the host (validation, tests).

pub mod envoy;
pub mod envoy_bin;

pub use envoy::{EnvoyConfig, EnvoyRenderer};
