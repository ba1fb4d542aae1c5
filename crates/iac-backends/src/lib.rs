//! `iac-backends`: the default implementation of every `iac-core` stage trait, one module per
//! stage and one file per backend (the `object_store` shape):
//!
//! | stage | module |
//! |---|---|
//! | `SourceFetcher` | [`fetch`]: `tarball.rs`, `git.rs`, `chain.rs`, `local.rs` (+ `cache.rs`, `extract.rs`) |
//! | `EntryResolver` | [`entry`]: one provider per language (`python.rs`, `binary.rs`) |
//! | `ImageBuilder` | [`build`]: `docker.rs` |
//! | `Pki` | [`pki`]: `dev_ca.rs` |
//! | `SidecarRenderer` | [`sidecar`]: `envoy.rs` |
//! | `Provisioner` | [`provision`]: `docker/`, `terraform/` (+ `reconcile.rs`) |
//! | `HealthProber`, `LogStreamer` | [`health`]: `grpc.rs` |
//! | `AuthVerifier` | [`auth`]: `supabase/` |
//! | `HistoryStore` | [`history`]: `sqlite.rs`, `postgres.rs` (+ `jsonl.rs`, the event log files) |
//!
//! [`output_tail`] keeps bounded tails of output a repo controls (builds, pip, container logs).
//!
//! [`engine`] is the Docker engine layer every Docker-speaking backend (the image builder, the
//! docker provisioner) and the `iac` binary go through: one `connect`, one error type.

#![warn(missing_docs)]

pub mod auth;
pub mod build;
pub mod compose;
pub mod engine;
pub mod entry;
pub mod fetch;
pub mod health;
pub mod history;
pub mod http_body;
pub mod kubernetes;
pub mod output_tail;
pub mod pki;
pub mod provision;
pub mod secret;
pub mod sidecar;
