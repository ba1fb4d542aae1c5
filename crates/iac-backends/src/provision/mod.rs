//! Provisioners: make the engine match a planned `Stack`.
//!
//! * [`docker`]: the default — reconciles through the Docker Engine API (bollard), with its pure
//!   decision logic in [`reconcile`] and health-gated replacement;
//! * [`terraform`]: Terraform/OpenTofu with the kreuzwerker/docker provider, driving the module in `infra/`.

pub mod docker;
pub mod reconcile;
pub mod terraform;
