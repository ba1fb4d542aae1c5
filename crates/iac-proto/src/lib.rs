//! Generated code for `proto/controlplane.proto` (package `iac.controlplane.v1`).
//!
//! Shared by `iac-agent` (server), the health prober and log streamer in `iac-backends` (client)
//! and the control plane in `iac-bin` (server). Nothing hand-written lives here.
#![allow(clippy::all, clippy::pedantic)]
#![warn(missing_docs)]

/// The generated messages, client and server. Their docs are the `.proto` file's comments; a
/// field the `.proto` leaves uncommented has none, hence the `allow` on generated code only.
#[allow(missing_docs)]
pub mod v1 {
    tonic::include_proto!("iac.controlplane.v1");
}

pub use v1::control_plane_client::ControlPlaneClient;
pub use v1::control_plane_server::{ControlPlane, ControlPlaneServer};
pub use v1::{
    DeployRequest, DeployResult, HealthStatus, LogLine, LogRequest, Restarts, ServiceResult,
    health_status::Status as HealthStatusCode,
};
