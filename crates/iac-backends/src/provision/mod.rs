//! Provisioners: make the Docker engine match a planned `Stack`.
//!
//! * [`terraform`]: Terraform/OpenTofu with the kreuzwerker/docker provider, driving the module in `infra/`.

pub mod terraform;
