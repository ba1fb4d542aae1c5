//! Images in a registry (`[swarm] registry = "HOST:PORT"`): the [`Registry`] trait — what the
//! engine has recorded for an image (its `RepoDigests`), whether the registry holds a manifest
//! (the engine's distribution endpoint asks it), and tag + push — with its bollard implementation
//! [`BollardRegistry`] and a mockall fake for unit tests; and the pure naming around it:
//! [`registry_reference`] (where a local image goes), [`parse_push_digest`] (the digest the
//! engine's push output ends with) and [`digest_for`] (a repository's digest in `RepoDigests`).
//!
//! The engine does the talking to the registry (push, manifest lookups), so its registry settings
//! apply: a `127.0.0.0/8` registry is allowed over plain HTTP by default, any other plain-HTTP
//! one must be in the engine's `insecure-registries`.

use async_trait::async_trait;
use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::query_parameters::{PushImageOptionsBuilder, TagImageOptionsBuilder};
use futures::StreamExt;

use iac_core::{Events, Stage};

use super::{DockerEngine, EngineError};
use crate::secret::Secret;

/// A registry login (`[swarm] registry_username` / `registry_password`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryAuth {
    /// `HOST:PORT` of the registry.
    pub server: String,
    /// The login's user name.
    pub username: String,
    /// The login's password or token (redacted when printed).
    pub password: Secret,
}

impl RegistryAuth {
    /// The engine's `X-Registry-Auth` for this login.
    pub(crate) fn credentials(&self) -> DockerCredentials {
        DockerCredentials {
            username: Some(self.username.clone()),
            password: Some(self.password.expose().to_string()),
            serveraddress: Some(self.server.clone()),
            ..Default::default()
        }
    }
}

/// Where the local image `image` goes in `registry` (`HOST:PORT`): `(HOST:PORT/<repo>, <tag>)`.
/// The repository keeps its path and drops a registry host it may already name
/// (`reg.example:5000/iac/web:1` → `HOST:PORT/iac/web`, `1`); no tag means `latest`. An image
/// named by digest, or one with an empty name, is an error naming it.
pub fn registry_reference(registry: &str, image: &str) -> Result<(String, String), String> {
    if image.contains('@') {
        return Err(format!(
            "image {image}: named by digest; expected a local image name with a tag to push to {registry}"
        ));
    }
    let (name, tag) = match image.rfind(':') {
        Some(i) if !image[i..].contains('/') => (&image[..i], &image[i + 1..]),
        _ => (image, "latest"),
    };
    let path = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            rest
        }
        _ => name,
    };
    if path.is_empty() || tag.is_empty() {
        return Err(format!(
            "image {image:?}: expected REPOSITORY[:TAG] to push to {registry}"
        ));
    }
    Ok((format!("{registry}/{path}"), tag.to_string()))
}

/// Whether `d` is `sha256:` and 64 lowercase hex digits.
fn is_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The manifest digest of a push from the engine's last status line
/// (`<tag>: digest: sha256:<64 hex> size: <n>`); `None` for any other line.
pub fn parse_push_digest(status: &str) -> Option<String> {
    let (_, rest) = status.split_once(": digest: ")?;
    let digest = rest.split_whitespace().next()?;
    is_digest(digest).then(|| digest.to_string())
}

/// The digest `repo` has in an image's `RepoDigests` (`<repo>@sha256:…`), if any.
pub fn digest_for(repo_digests: &[String], repo: &str) -> Option<String> {
    repo_digests.iter().find_map(|r| {
        let (name, digest) = r.split_once('@')?;
        (name == repo && is_digest(digest)).then(|| digest.to_string())
    })
}

/// Push progress as lines worth showing. The engine reports every layer's state without saying
/// which layer (bollard drops the id): "Preparing" once per layer, then "Waiting"/"Pushing"
/// (repeated with every chunk), then one end state. Shown: the end states, counted against the
/// layers announced, and every other line (the repository, the digest).
#[derive(Debug, Default)]
struct PushLayers {
    total: usize,
    done: usize,
}

impl PushLayers {
    fn line(&mut self, status: &str) -> Option<String> {
        match status {
            "Preparing" => {
                self.total += 1;
                None
            }
            "Waiting" | "Pushing" => None,
            s if s == "Pushed" || s == "Layer already exists" || s.starts_with("Mounted from") => {
                self.done += 1;
                Some(format!(
                    "layer {} of {}: {s}",
                    self.done,
                    self.total.max(self.done)
                ))
            }
            s => Some(s.to_string()),
        }
    }
}

/// The registry operations a deploy needs. `repo`s are full (`HOST:PORT/path`).
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait Registry: Send + Sync {
    /// The local image's `RepoDigests`: the `repo@sha256:…` it was pushed (or pulled) as.
    async fn repo_digests(&self, image: &str) -> Result<Vec<String>, EngineError>;
    /// The digest of the manifest the registry holds for `reference` (`repo@sha256:…` or
    /// `repo:tag`), `None` when it holds none.
    async fn registry_digest(&self, reference: &str) -> Result<Option<String>, EngineError>;
    /// Tags `image` as `repo:tag` and pushes that; the pushed manifest's digest. Push progress
    /// goes to `events` (one line per layer state, as the engine reports it).
    async fn push(
        &self,
        image: &str,
        repo: &str,
        tag: &str,
        events: &Events,
    ) -> Result<String, EngineError>;
}

/// [`Registry`] over bollard, with an optional login for one registry.
#[derive(Debug, Clone)]
pub struct BollardRegistry {
    docker: Docker,
    auth: Option<RegistryAuth>,
}

impl BollardRegistry {
    /// Registry operations through `engine`, logging in with `auth` when given.
    pub fn new(engine: &DockerEngine, auth: Option<RegistryAuth>) -> Self {
        BollardRegistry {
            docker: engine.docker().clone(),
            auth,
        }
    }

    fn credentials(&self) -> Option<DockerCredentials> {
        self.auth.as_ref().map(RegistryAuth::credentials)
    }
}

/// The registry part (`HOST:PORT`) of a full repository, for messages.
fn registry_of(repo: &str) -> &str {
    repo.split_once('/').map_or(repo, |(r, _)| r)
}

#[async_trait]
impl Registry for BollardRegistry {
    async fn repo_digests(&self, image: &str) -> Result<Vec<String>, EngineError> {
        let img = self
            .docker
            .inspect_image(image)
            .await
            .map_err(|e| EngineError::from_bollard(format!("inspect image {image}"), e))?;
        Ok(img.repo_digests.unwrap_or_default())
    }

    async fn registry_digest(&self, reference: &str) -> Result<Option<String>, EngineError> {
        match self
            .docker
            .inspect_registry_image(reference, self.credentials())
            .await
        {
            Ok(d) => Ok(Some(d.descriptor.digest.unwrap_or_default())),
            // The engine answers "manifest unknown" with 404 (a registry that is there but does
            // not hold it); an unreachable registry is a 500 naming the address.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(EngineError::from_bollard(
                format!(
                    "ask registry {} for {reference} (through the engine)",
                    registry_of(reference)
                ),
                e,
            )),
        }
    }

    async fn push(
        &self,
        image: &str,
        repo: &str,
        tag: &str,
        events: &Events,
    ) -> Result<String, EngineError> {
        let registry = registry_of(repo);
        let op = format!("push image {image} to registry {registry} as {repo}:{tag}");
        self.docker
            .tag_image(
                image,
                Some(
                    TagImageOptionsBuilder::default()
                        .repo(repo)
                        .tag(tag)
                        .build(),
                ),
            )
            .await
            .map_err(|e| EngineError::from_bollard(op.clone(), e))?;
        let reference = format!("{repo}:{tag}");
        let mut stream = self.docker.push_image(
            repo,
            Some(PushImageOptionsBuilder::default().tag(tag).build()),
            self.credentials(),
        );
        let mut digest = None;
        let mut layers = PushLayers::default();
        while let Some(item) = stream.next().await {
            let info = match item {
                Ok(info) => info,
                Err(bollard::errors::Error::DockerStreamError { error }) => {
                    return Err(EngineError::new(op, None, error));
                }
                Err(e) => return Err(EngineError::from_bollard(op, e)),
            };
            let Some(status) = info.status.as_deref() else {
                continue;
            };
            if let Some(d) = parse_push_digest(status) {
                digest = Some(d);
            }
            if let Some(line) = layers.line(status) {
                events.debug(Stage::Provision, format!("push {reference}: {line}"));
            }
        }
        if let Some(d) = digest {
            return Ok(d);
        }
        // Older engines may not print the digest line; the engine records it in RepoDigests.
        digest_for(&self.repo_digests(image).await?, repo).ok_or_else(|| {
            EngineError::new(
                op,
                None,
                "the push ended without a manifest digest (none in the engine's output nor in the image's RepoDigests)",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:ca487c4325fb79cf1bec5631686f0d3ae944f8f6de991d7459b5dd582c6d1b29";

    #[test]
    fn local_images_go_under_the_registry_with_their_path_and_tag() {
        let r = |image| registry_reference("127.0.0.1:5000", image);
        assert_eq!(
            r("iac/demo-web:pod-0123456789abcdef").unwrap(),
            (
                "127.0.0.1:5000/iac/demo-web".to_string(),
                "pod-0123456789abcdef".to_string()
            )
        );
        assert_eq!(
            r("reg.example:5000/team/web:1").unwrap(),
            ("127.0.0.1:5000/team/web".to_string(), "1".to_string()),
            "a registry host the name already has is replaced"
        );
        assert_eq!(
            r("localhost/web").unwrap(),
            ("127.0.0.1:5000/web".to_string(), "latest".to_string())
        );
        assert_eq!(
            r("web").unwrap(),
            ("127.0.0.1:5000/web".to_string(), "latest".to_string())
        );
        let e = r("iac/web@sha256:abc").unwrap_err();
        assert!(
            e.contains("iac/web@sha256:abc") && e.contains("digest"),
            "{e}"
        );
        let e = r("iac/web:").unwrap_err();
        assert!(e.contains("REPOSITORY[:TAG]"), "{e}");
    }

    #[test]
    fn the_digest_comes_from_the_last_push_line() {
        assert_eq!(
            parse_push_digest(&format!("pod-1: digest: {D} size: 524")).as_deref(),
            Some(D)
        );
        for other in [
            "The push refers to repository [127.0.0.1:5000/iac/web]",
            "Pushed",
            "Layer already exists",
            "pod-1: digest: sha256:short size: 1",
            "pod-1: digest: md5:0123 size: 1",
        ] {
            assert_eq!(parse_push_digest(other), None, "{other}");
        }
        let upper = format!(
            "t: digest: {} size: 1",
            D.to_uppercase().replace("SHA", "sha")
        );
        assert_eq!(parse_push_digest(&upper), None, "digests are lowercase hex");
    }

    #[test]
    fn push_progress_counts_layers_and_drops_the_chatter() {
        let mut p = PushLayers::default();
        let lines: Vec<String> = [
            "The push refers to repository [127.0.0.1:5000/iac/web]",
            "Preparing",
            "Preparing",
            "Preparing",
            "Waiting",
            "Pushing",
            "Pushing",
            "Layer already exists",
            "Pushed",
            "Mounted from iac/other",
            "pod-1: digest: sha256:0 size: 1",
        ]
        .iter()
        .filter_map(|s| p.line(s))
        .collect();
        assert_eq!(
            lines,
            [
                "The push refers to repository [127.0.0.1:5000/iac/web]",
                "layer 1 of 3: Layer already exists",
                "layer 2 of 3: Pushed",
                "layer 3 of 3: Mounted from iac/other",
                "pod-1: digest: sha256:0 size: 1",
            ]
        );
    }

    #[test]
    fn repo_digests_are_matched_by_the_whole_repository() {
        let digests = vec![
            format!("127.0.0.1:5000/iac/web-extra@{D}"),
            "127.0.0.1:5000/iac/web@sha256:nothex".to_string(),
            format!("127.0.0.1:6000/iac/web@{D}"),
        ];
        assert_eq!(digest_for(&digests, "127.0.0.1:5000/iac/web"), None);
        let mut with = digests.clone();
        with.push(format!("127.0.0.1:5000/iac/web@{D}"));
        assert_eq!(
            digest_for(&with, "127.0.0.1:5000/iac/web").as_deref(),
            Some(D)
        );
    }

    #[test]
    fn credentials_name_the_registry_and_the_password_stays_redacted() {
        let a = RegistryAuth {
            server: "reg:5000".into(),
            username: "ci".into(),
            password: Secret::new("hunter2"),
        };
        let c = a.credentials();
        assert_eq!(c.serveraddress.as_deref(), Some("reg:5000"));
        assert_eq!(c.username.as_deref(), Some("ci"));
        assert_eq!(c.password.as_deref(), Some("hunter2"));
        assert!(!format!("{a:?}").contains("hunter2"));
        assert_eq!(registry_of("reg:5000/iac/web@sha256:x"), "reg:5000");
    }
}
