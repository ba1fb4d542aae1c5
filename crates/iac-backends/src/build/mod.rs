//! The `ImageBuilder` stage: turns a fetched source tree and its resolved entry into a container
//! image on the local Docker engine.
//!
//! - [`docker`]: [`DockerImageBuilder`], the `iac_core::ImageBuilder` over bollard (reuse by
//!   build-key label, base image resolution, streamed build output).
//! - [`dockerfile`]: the pure render of `infra/templates/app.Dockerfile.tmpl`.
//! - [`key`]: build key and content-addressed tag.
//! - [`context`]: the build context tar (a capped temp file, streamed to the engine).
//! - [`tree`]: the file set of a source tree in an image (fixed exclusions + `.dockerignore`),
//!   shared with the `path:` digest; [`ignore`]: Docker's `.dockerignore` rules.
//! - [`wheels`]: the app's install plan, read statically from its tree; [`requirements`]: the
//!   requirements-file parser (regenerates every line); [`resolver`]: the confined container that
//!   resolves and builds the dependencies into wheels (nothing of a repo's runs on the host);
//!   [`resolver_proxy`]: its only way out to the index (an allowlisting Envoy on a Unix socket);
//!   [`crate::output_tail`]: bounded build and resolver output; [`lockfile`]: uv, Poetry, PDM
//!   and Pipenv locks as pins; [`declared`]: Poetry/Pipfile dependency tables as PEP 508;
//!   [`project`]: whether the project itself is installed (the virtual-project rule);
//!   [`install_report`]: that plan for people (`iac inspect`).
//! - [`config`]: the [`ImageConfig`] struct and the base images per Python minor.
//! - [`base`]: [`BaseImageMaker`], the hook that builds a missing Python base image on demand.
//! - [`cgroup`]: [`cgroup::BuildCgroup`], the pids-limited cgroup an image build's steps run under.
//! - [`aptfile`]: `apt.txt` / `Aptfile`, validated Debian package names; [`apt_base`]: the
//!   derived base image (built with network, cached by tag) that has them installed.

pub mod apt_base;
pub mod aptfile;
pub mod base;
pub mod cgroup;
pub mod config;
pub mod context;
pub mod declared;
pub mod docker;
pub mod dockerfile;
pub mod ignore;
pub mod install_report;
pub mod key;
pub mod lockfile;
pub mod project;
pub mod requirements;
pub mod resolver;
pub mod resolver_proxy;
pub mod tree;
pub mod wheels;

pub use base::BaseImageMaker;
pub use config::{ImageConfig, OTEL_PACKAGES, PythonChoice, PythonImages};
pub use docker::{DockerImageBuilder, LABEL_BASE_IMAGE, LABEL_BUILD_KEY};
pub use dockerfile::{DockerfileInputs, render_dockerfile};
