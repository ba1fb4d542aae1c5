//! Provisioners: make the engine match a planned `Stack`. `docker` (bollard, the default) with its
//! pure decision logic in `reconcile`; `terraform` renders the same stack for Terraform.

pub mod docker;
pub mod reconcile;
