//! The Docker engine layer: the one place iac talks bollard.
//!
//! * [`DockerEngine`]: the connection. [`DockerEngine::connect`] is the only way iac opens one; it
//!   takes `[docker] docker_host` (`unix:///path`, a bare socket path, `tcp://host:port`, …; `None`
//!   = the `DOCKER_HOST` environment variable, else the local socket) and the request timeout.
//!   The image builder, the docker provisioner, `iac bootstrap` and the binary's engine checks
//!   all go through it; besides the connection it answers the questions those share — engine
//!   version, image inspect ([`DockerEngine::image`]), "which of these images is present".
//! * [`EngineError`] (`error`): one failed request (what was attempted, the engine's status and
//!   message), converted into the stage errors of `iac-core`.
//! * [`Engine`] / [`BollardEngine`] (`containers`): the containers-and-networks calls the docker
//!   provisioner reconciles with, behind a trait so its unit tests use a mockall fake.
//! * [`Registry`] / [`BollardRegistry`] ([`registry`]): tag, push and digest lookups for the swarm
//!   provisioner's `[swarm] registry` (a mockall fake in its unit tests), and the pure naming
//!   around them.
//! * [`swarm::SwarmEngine`] / [`swarm::BollardSwarm`] ([`swarm`]): every call of the Swarm
//!   provisioner (swarm state, overlay networks, services, tasks, nodes, configs and secrets,
//!   images and the pod image build), behind a trait with a mockall fake.
//!
//! Nothing outside `iac-backends` names a bollard type: the `iac` binary only sees this module.

pub(crate) mod containers;
mod error;
pub mod registry;
pub mod swarm;

use std::collections::BTreeMap;
use std::time::Duration;

use bollard::Docker;

#[cfg(any(test, feature = "mocks"))]
pub use containers::MockEngine;
pub use containers::{
    BollardEngine, Engine, ExecOutput, ExitState, ImageTag, LogWait, NetworkInfo, Observed,
    create_body,
};
pub use error::EngineError;
#[cfg(test)]
pub use registry::MockRegistry;
pub use registry::{BollardRegistry, Registry, RegistryAuth};

/// The engine address used when neither the config nor `DOCKER_HOST` names one.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";

/// `host` (`[docker] docker_host`) as a URL the docker CLI and Terraform's provider take: a bare
/// socket path becomes `unix://<path>`, anything else is kept.
pub fn host_url(host: &str) -> String {
    if host.starts_with('/') {
        format!("unix://{host}")
    } else {
        host.to_string()
    }
}

/// A connection to a Docker engine (cheap to clone: the client is shared).
#[derive(Debug, Clone)]
pub struct DockerEngine {
    docker: Docker,
    /// The address as configured, for messages (`DOCKER_HOST or the local socket` when unset).
    shown: String,
}

/// What the engine says about itself (`GET /version`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineVersion {
    /// The engine's version, e.g. `26.1.5`.
    pub version: String,
    /// The API version the engine speaks, e.g. `1.45`.
    pub api_version: String,
}

impl std::fmt::Display for EngineVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "docker {} (API {})", self.version, self.api_version)
    }
}

/// An image as the engine reports it (`GET /images/{name}/json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// `sha256:…`.
    pub id: String,
    /// Size in bytes (0 when the engine does not say).
    pub size: u64,
    /// The image's labels.
    pub labels: BTreeMap<String, String>,
}

impl DockerEngine {
    /// Connects to `host` (see the module docs; `None` = `DOCKER_HOST`, else the local socket) and
    /// negotiates the API version, so an unreachable engine is an error here rather than at the
    /// first real request. Every request is bounded by `request_timeout` (at least 1 s).
    pub async fn connect(
        host: Option<&str>,
        request_timeout: Duration,
    ) -> Result<Self, EngineError> {
        let engine = Self::client(host, request_timeout)?;
        let shown = engine.shown.clone();
        let docker = engine.docker.negotiate_version().await.map_err(|e| {
            EngineError::new(
                format!("connect to {shown}"),
                None,
                format!(
                    "{e} (expected a reachable Docker engine: is dockerd running, and may this user use its socket?)"
                ),
            )
        })?;
        Ok(DockerEngine { docker, shown })
    }

    /// The client for `host` without asking the engine anything (commands that never reach the
    /// engine, such as `iac render`, still hold one). Fails only on a malformed address.
    pub fn client(host: Option<&str>, request_timeout: Duration) -> Result<Self, EngineError> {
        let request_timeout = request_timeout.max(Duration::from_secs(1));
        let shown = host
            .filter(|h| !h.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| "DOCKER_HOST or the local socket".to_string());
        let bad = |e: bollard::errors::Error| {
            EngineError::new(
                format!("connect to {shown}"),
                None,
                format!(
                    "{e} (expected a reachable Docker engine at unix:///path, /path, tcp://host:port or http://host:port)"
                ),
            )
        };
        let docker = match host.filter(|h| !h.is_empty()) {
            None => Docker::connect_with_defaults().map_err(bad)?,
            Some(h) if h.starts_with('/') => Docker::connect_with_unix(
                h,
                request_timeout.as_secs(),
                bollard::API_DEFAULT_VERSION,
            )
            .map_err(bad)?,
            Some(h) => Docker::connect_with_host(h).map_err(bad)?,
        };
        Ok(DockerEngine {
            docker: docker.with_timeout(request_timeout),
            shown,
        })
    }

    /// The address this connection was made to, as configured (for messages).
    pub fn shown_host(&self) -> &str {
        &self.shown
    }

    /// The bollard client, for the modules of this crate that speak the engine API.
    pub(crate) fn docker(&self) -> &Docker {
        &self.docker
    }

    /// The engine's version.
    pub async fn version(&self) -> Result<EngineVersion, EngineError> {
        let v = self.docker.version().await.map_err(|e| {
            EngineError::from_bollard(format!("ask {} for its version", self.shown), e)
        })?;
        Ok(EngineVersion {
            version: v.version.unwrap_or_default(),
            api_version: v.api_version.unwrap_or_default(),
        })
    }

    /// The engine's cgroup driver and version (`/info`), as [`crate::build::cgroup::Layout`]
    /// takes them.
    pub async fn cgroup_setup(
        &self,
    ) -> Result<
        (
            Option<bollard::models::SystemInfoCgroupDriverEnum>,
            Option<bollard::models::SystemInfoCgroupVersionEnum>,
        ),
        EngineError,
    > {
        let info = self.docker.info().await.map_err(|e| {
            EngineError::from_bollard(format!("ask {} for its cgroup driver", self.shown), e)
        })?;
        Ok((info.cgroup_driver, info.cgroup_version))
    }

    /// `Some` when the engine has the image `name`, `None` when it does not; an error when the
    /// engine cannot be asked.
    pub async fn image(&self, name: &str) -> Result<Option<ImageInfo>, EngineError> {
        match self.docker.inspect_image(name).await {
            Ok(img) => Ok(Some(ImageInfo {
                id: img.id.unwrap_or_default(),
                size: img.size.and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
                labels: img
                    .config
                    .and_then(|c| c.labels)
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
            })),
            Err(e) => {
                let e = EngineError::from_bollard(format!("inspect image {name}"), e);
                if e.is_not_found() { Ok(None) } else { Err(e) }
            }
        }
    }

    /// The first of `names` the engine has (empty names are skipped), `None` when it has none.
    pub async fn first_present<'a>(
        &self,
        names: &[&'a str],
    ) -> Result<Option<&'a str>, EngineError> {
        for name in names.iter().copied().filter(|n| !n.is_empty()) {
            if self.image(name).await?.is_some() {
                return Ok(Some(name));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_urls_for_the_cli() {
        assert_eq!(host_url("/run/docker.sock"), "unix:///run/docker.sock");
        assert_eq!(host_url("tcp://10.0.0.2:2375"), "tcp://10.0.0.2:2375");
        assert_eq!(host_url("unix:///x.sock"), "unix:///x.sock");
    }

    #[test]
    fn a_malformed_host_is_an_error_naming_it() {
        let e = DockerEngine::client(Some("ftp://nowhere"), Duration::from_secs(1)).unwrap_err();
        assert!(e.op.contains("ftp://nowhere"), "{e}");
        assert!(
            e.message.contains("unix:///path, /path, tcp://host:port"),
            "{e}"
        );
    }
}
