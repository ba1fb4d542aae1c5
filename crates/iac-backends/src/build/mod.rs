//! The `ImageBuilder` stage: turns a fetched source tree and its resolved entry into a container
//! image on the local Docker engine.
//!
//! - [`docker`]: [`DockerImageBuilder`], the `iac_core::ImageBuilder` over bollard (reuse by
//!   build-key label, base image resolution, streamed build output).
//! - [`dockerfile`]: the pure render of `infra/templates/app.Dockerfile.tmpl`.
//! - [`key`]: build key and content-addressed tag.
//! - [`context`]: the in-memory build context tar.
//! - [`wheels`]: host-side `pip download` of app dependencies for offline installs.
//! - [`config`]: the [`ImageConfig`] struct.

pub mod config;
pub mod context;
pub mod docker;
pub mod dockerfile;
pub mod key;
pub mod wheels;

pub use config::ImageConfig;
pub use docker::{DockerImageBuilder, LABEL_BASE_IMAGE, LABEL_BUILD_KEY};
pub use dockerfile::{DockerfileInputs, render_dockerfile};
