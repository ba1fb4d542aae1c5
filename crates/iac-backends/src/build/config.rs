//! [`ImageConfig`]: everything the Docker image builder is configured with (the `[images]` /
//! `[build]` section of `iac.toml`), with the defaults `make bootstrap` prepares for, and the
//! per-Python base images ([`PythonImages`], [`ImageConfig::python_images`]): `base_image` /
//! `offline_base_image` belong to `default_python` (3.11), `[images.pythons."X.Y"]` to the others
//! (3.13 from Debian trixie, 3.14 from Debian unstable by default).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The OpenTelemetry packages every Python image gets from the wheelhouse (which
/// `scripts/images/otel-requirements.txt` fills): the SDK with its OTLP exporter and
/// auto-instrumentation, and the instrumentations that carry W3C `baggage` from a request the app
/// serves to the calls it makes — the clients urllib, urllib3, requests, httpx, aiohttp and grpc
/// inject it, the servers Flask, FastAPI and grpc extract it. Sandbox routing
/// (`baggage: iac-sandbox=<name>`) relies on them across a chain of services. Not Django's: loaded
/// at interpreter start without `DJANGO_SETTINGS_MODULE` in the environment, its instrumentor
/// configures Django's settings with the defaults, and the app then fails every request (no
/// `ROOT_URLCONF`; seen with `tests/public_apps.rs`'s Django app).
pub const OTEL_PACKAGES: &[&str] = &[
    "opentelemetry-distro",
    "opentelemetry-exporter-otlp",
    "opentelemetry-instrumentation-urllib",
    "opentelemetry-instrumentation-urllib3",
    "opentelemetry-instrumentation-requests",
    "opentelemetry-instrumentation-httpx",
    "opentelemetry-instrumentation-aiohttp-client",
    "opentelemetry-instrumentation-grpc",
    "opentelemetry-instrumentation-flask",
    "opentelemetry-instrumentation-fastapi",
];

/// Configuration of [`super::DockerImageBuilder`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageConfig {
    /// Base image of every app image when the engine has it (`python:3.11-slim`).
    pub base_image: String,
    /// Used instead when `base_image` is absent; `make bootstrap` builds it on engines that cannot
    /// pull (`iac/python:3.11-bookworm`).
    pub offline_base_image: String,
    /// The Python minor of `base_image` / `offline_base_image`, used when a repo names no version
    /// and preferred when its constraints allow it (`"3.11"`).
    pub default_python: String,
    /// Base images of the other Python minors a repo may ask for, by `"X.Y"`. Default: 3.13
    /// (`python:3.13-slim`, offline `iac/python:3.13-trixie`) and 3.14 (`python:3.14-slim`,
    /// offline `iac/python:3.14-sid`). A table in iac.toml replaces this whole map.
    pub pythons: BTreeMap<String, PythonImages>,
    /// The static `iac-agent` copied to `/usr/local/bin` of every image. Default: `iac-agent` next
    /// to the running executable.
    pub agent_binary: Option<PathBuf>,
    /// Wheels of the OpenTelemetry SDK for offline installs. Default:
    /// `$XDG_CACHE_HOME/iac/wheelhouse` (else `~/.cache/iac/wheelhouse`).
    pub wheelhouse: Option<PathBuf>,
    /// A directory holding an `app.Dockerfile.tmpl` that replaces the built-in template.
    pub template_dir: Option<PathBuf>,
    /// Repository prefix of built images: `<prefix>/<project>-<service>:<key>`.
    pub tag_prefix: String,
    /// Bake the OpenTelemetry SDK into Python images.
    pub otel: bool,
    /// What is installed from the wheelhouse when `otel` is on (default [`OTEL_PACKAGES`]).
    pub otel_packages: Vec<String>,
    /// Load OpenTelemetry's auto-instrumentation into Python entries, as `opentelemetry-instrument`
    /// would (the agent's `--otel-auto-instrument`; SDK configured from `OTEL_*`).
    pub otel_instrument: bool,
    /// How bootstrap runs pip on the host to fill the OpenTelemetry wheelhouse (a fixed list the
    /// operator chooses; an app's dependencies never reach host pip: see `resolver`).
    pub pip: Vec<String>,
    /// Extra arguments for every pip call of the resolver (and bootstrap's), e.g.
    /// `["--index-url", "https://mirror/simple"]` or `["--no-index"]` with
    /// `resolver.find_links`. URL credentials are redacted when printed.
    #[serde(serialize_with = "redacted_args::serialize")]
    pub pip_args: Vec<String>,
    /// `PIP_INDEX_URL` of the resolver (it never inherits iac's environment; this is how the
    /// operator names an index). Unset: pip's default. Redacted when printed.
    #[serde(serialize_with = "redacted_opt::serialize")]
    pub pip_index_url: Option<String>,
    /// `PIP_EXTRA_INDEX_URL` of the resolver (space-joined). Redacted when printed.
    #[serde(serialize_with = "redacted_args::serialize")]
    pub pip_extra_index_urls: Vec<String>,
    /// Names of further variables of iac's environment the resolver may see (e.g.
    /// `PIP_DEFAULT_TIMEOUT`). It otherwise gets only proxy variables: never iac's secrets.
    pub pip_pass_env: Vec<String>,
    /// The confined container that resolves, downloads and builds an app's dependencies.
    pub resolver: ResolverConfig,
    /// Memory limit of an image build (swap included), MiB; at most 2047 (the engine API field
    /// bollard sends is 32-bit).
    pub build_memory_mib: u32,
    /// CPU limit of an image build, whole CPUs.
    pub build_cpus: u32,
    /// Process limit of an image build's steps (`pids.max` of the cgroup iac makes as the
    /// build's parent, see [`super::cgroup`]); 16 to 65536.
    pub build_pids: u32,
    /// Cap on one build context (source tree + agent + wheels), in bytes. Default 2 GiB.
    pub max_context_bytes: u64,
    /// Cache of the apps' dependency wheels, keyed by their requirements. Default:
    /// `$XDG_CACHE_HOME/iac/app-wheels`.
    pub app_wheel_cache: Option<PathBuf>,
    /// Extra labels on every image and on every build step after the shared layers (tests put
    /// `iac.test=<id>` here so everything they create can be removed by label).
    pub labels: BTreeMap<String, String>,
    /// uid/gid of the non-root `app` user the agent runs the entry as.
    pub app_uid: u32,
}

/// `[images.resolver]`: the container an app's dependencies are resolved and built in (see
/// [`super::resolver`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResolverConfig {
    /// Its network when pip uses an index: `proxy` (default: no network of its own, and the
    /// index hosts only, through an allowlisting Envoy on the host's network — see
    /// [`super::resolver_proxy`]), or, unconfined, `host`, `bridge` or a network name. Offline
    /// (`--no-index` and local find-links only) it gets none whatever this says.
    pub network: String,
    /// Further `host` or `host:port` the proxy admits (an index's file host other than
    /// `files.pythonhosted.org`, e.g. a mirror's blob store); the index hosts are admitted
    /// already.
    pub allow_hosts: Vec<String>,
    /// The Envoy image the proxy runs; unset: the sidecar's (`[sidecar] image`, else its
    /// offline equivalent).
    pub proxy_image: Option<String>,
    /// `uid:gid` it runs as (never 0).
    pub user: String,
    /// Memory limit (swap included), MiB.
    pub memory_mib: u64,
    /// CPU limit, whole CPUs.
    pub cpus: u32,
    /// Process limit.
    pub pids: i64,
    /// Deadline of one pip run; then the container is killed.
    #[serde(with = "iac_core::duration")]
    pub timeout: std::time::Duration,
    /// The CA bundle mounted for pip (default: the host's, from the usual places).
    pub ca_bundle: Option<PathBuf>,
    /// Host directories of wheels/sdists offered read-only as `--find-links`.
    pub find_links: Vec<PathBuf>,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        ResolverConfig {
            network: "proxy".into(),
            allow_hosts: Vec::new(),
            proxy_image: None,
            user: "65534:65534".into(),
            memory_mib: 2048,
            cpus: 1,
            pids: 512,
            timeout: std::time::Duration::from_secs(15 * 60),
            ca_bundle: None,
            find_links: Vec::new(),
        }
    }
}

impl ResolverConfig {
    /// Checks the values, naming the key and what was expected.
    pub fn validate(&self) -> Result<(), String> {
        let (uid, _) = parse_user(&self.user)?;
        if uid == 0 {
            return Err(format!(
                "images.resolver.user {:?}: the resolver never runs as root; expected an unprivileged uid:gid such as \"65534:65534\"",
                self.user
            ));
        }
        if self.network.is_empty()
            || self
                .network
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "images.resolver.network {:?}: expected proxy, host, bridge, none or a network name",
                self.network
            ));
        }
        for h in &self.allow_hosts {
            super::resolver_proxy::authority(h)?;
        }
        if self.memory_mib < 128 {
            return Err(format!(
                "images.resolver.memory_mib = {}: expected at least 128",
                self.memory_mib
            ));
        }
        if self.cpus == 0 || self.pids < 16 {
            return Err(
                "images.resolver: cpus must be at least 1 and pids at least 16".to_string(),
            );
        }
        if self.timeout.is_zero() {
            return Err(
                "images.resolver.timeout: expected a positive duration, e.g. \"15m\"".into(),
            );
        }
        if let Some(ca) = &self.ca_bundle
            && !ca.is_file()
        {
            return Err(format!(
                "images.resolver.ca_bundle {}: no such file; expected a PEM CA bundle",
                ca.display()
            ));
        }
        for d in &self.find_links {
            if !d.is_absolute() {
                return Err(format!(
                    "images.resolver.find_links {}: expected an absolute directory path",
                    d.display()
                ));
            }
        }
        Ok(())
    }

    /// `(uid, gid)` of `user` (validated by [`Self::validate`]; 65534 when unparsable).
    pub fn uid_gid(&self) -> (u32, u32) {
        parse_user(&self.user).unwrap_or((65534, 65534))
    }

    /// The CA bundle to mount: configured, else the first of the usual host paths that exists.
    pub fn ca_bundle_path(&self) -> Option<PathBuf> {
        if let Some(p) = &self.ca_bundle {
            return Some(p.clone());
        }
        HOST_CA_BUNDLES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
    }
}

/// CA bundles looked for on the host when `images.resolver.ca_bundle` is unset.
const HOST_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

pub(crate) fn parse_user(user: &str) -> Result<(u32, u32), String> {
    let bad =
        || format!("images.resolver.user {user:?}: expected numeric uid:gid, e.g. \"65534:65534\"");
    let (u, g) = user.split_once(':').ok_or_else(bad)?;
    Ok((u.parse().map_err(|_| bad())?, g.parse().map_err(|_| bad())?))
}

/// The base images of one Python minor: the official one, used when the engine has it, and the
/// offline equivalent bootstrap builds from Debian (on demand during a deploy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PythonImages {
    /// The official image (`python:X.Y-slim-bookworm` style), used when the engine has it.
    pub image: String,
    /// The offline equivalent `iac bootstrap` builds from Debian packages.
    pub offline_image: String,
}

/// The Python of one build: its minor and base images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonChoice {
    /// `"X.Y"`.
    pub version: String,
    /// The official base image of this minor.
    pub image: String,
    /// The offline base image of this minor (built on demand when neither exists).
    pub offline_image: String,
    /// Whether this is `default_python` (its wheelhouse is `wheelhouse`, not `wheelhouse-X.Y`).
    pub is_default: bool,
}

/// `"3.13"` → `(3, 13)`; anything else is an error naming what was expected.
pub fn parse_minor(v: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{v:?} is not a Python minor version; expected X.Y, e.g. \"3.13\"");
    let (a, b) = v.split_once('.').ok_or_else(bad)?;
    let ok = |s: &str| !s.is_empty() && s.len() <= 3 && s.bytes().all(|c| c.is_ascii_digit());
    if !ok(a) || !ok(b) {
        return Err(bad());
    }
    Ok((a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?))
}

impl Default for ImageConfig {
    fn default() -> Self {
        ImageConfig {
            base_image: "python:3.11-slim".into(),
            offline_base_image: "iac/python:3.11-bookworm".into(),
            default_python: "3.11".into(),
            pythons: BTreeMap::from([
                (
                    "3.13".to_string(),
                    PythonImages {
                        image: "python:3.13-slim".into(),
                        offline_image: "iac/python:3.13-trixie".into(),
                    },
                ),
                (
                    "3.14".to_string(),
                    PythonImages {
                        image: "python:3.14-slim".into(),
                        offline_image: "iac/python:3.14-sid".into(),
                    },
                ),
            ]),
            agent_binary: None,
            wheelhouse: None,
            template_dir: None,
            tag_prefix: "iac".into(),
            otel: true,
            otel_packages: OTEL_PACKAGES.iter().map(|p| (*p).to_string()).collect(),
            otel_instrument: true,
            pip: vec!["python3".into(), "-m".into(), "pip".into()],
            pip_args: Vec::new(),
            pip_index_url: None,
            pip_extra_index_urls: Vec::new(),
            pip_pass_env: Vec::new(),
            resolver: ResolverConfig::default(),
            build_memory_mib: 2047,
            build_cpus: 1,
            build_pids: 1024,
            max_context_bytes: 2 * 1024 * 1024 * 1024,
            app_wheel_cache: None,
            labels: BTreeMap::new(),
            app_uid: 10001,
        }
    }
}

impl ImageConfig {
    /// The agent binary to copy into images: configured, else `iac-agent` beside the running
    /// executable.
    pub fn agent_binary_path(&self) -> PathBuf {
        if let Some(p) = &self.agent_binary {
            return p.clone();
        }
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join("iac-agent")))
            .unwrap_or_else(|| PathBuf::from("iac-agent"))
    }

    /// The OpenTelemetry wheelhouse directory of `default_python` (configured or the bootstrap
    /// default).
    pub fn wheelhouse_path(&self) -> PathBuf {
        self.wheelhouse
            .clone()
            .unwrap_or_else(|| cache_dir().join("wheelhouse"))
    }

    /// The wheelhouse for `python`: [`Self::wheelhouse_path`] for the default Python, else the
    /// sibling `<wheelhouse>-X.Y` (what `scripts/bootstrap-images.sh --python X.Y` fills).
    pub fn wheelhouse_for(&self, python: &PythonChoice) -> PathBuf {
        let base = self.wheelhouse_path();
        if python.is_default {
            return base;
        }
        let mut name = base.file_name().unwrap_or_default().to_os_string();
        name.push(format!("-{}", python.version));
        base.with_file_name(name)
    }

    /// Every Python minor the builder can provide, ascending (the default and `pythons`).
    pub fn available_pythons(&self) -> Result<Vec<(u32, u32)>, String> {
        let mut out = vec![
            parse_minor(&self.default_python).map_err(|e| format!("images.default_python: {e}"))?,
        ];
        for v in self.pythons.keys() {
            let m = parse_minor(v).map_err(|e| format!("images.pythons: {e}"))?;
            if v == &self.default_python {
                return Err(format!(
                    "images.pythons has {v:?}, which is images.default_python: its images are images.base_image and images.offline_base_image"
                ));
            }
            out.push(m);
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// The base images for a build whose entry asks for `version` (`None`: the default Python).
    pub fn python_images(&self, version: Option<&str>) -> Result<PythonChoice, String> {
        let v = version.unwrap_or(&self.default_python);
        if v == self.default_python {
            return Ok(PythonChoice {
                version: v.to_string(),
                image: self.base_image.clone(),
                offline_image: self.offline_base_image.clone(),
                is_default: true,
            });
        }
        match self.pythons.get(v) {
            Some(p) => Ok(PythonChoice {
                version: v.to_string(),
                image: p.image.clone(),
                offline_image: p.offline_image.clone(),
                is_default: false,
            }),
            None => Err(format!(
                "the entry asks for Python {v}, which is not configured; expected one of {} (images.default_python and images.pythons)",
                std::iter::once(self.default_python.as_str())
                    .chain(self.pythons.keys().map(String::as_str))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// Checks `build_memory_mib`, `build_cpus` and `build_pids`, naming the key and what was
    /// expected.
    pub fn validate_build_limits(&self) -> Result<(), String> {
        if !(128..=2047).contains(&self.build_memory_mib) {
            return Err(format!(
                "images.build_memory_mib = {}: expected 128 to 2047",
                self.build_memory_mib
            ));
        }
        if !(1..=64).contains(&self.build_cpus) {
            return Err(format!(
                "images.build_cpus = {}: expected 1 to 64",
                self.build_cpus
            ));
        }
        if !(16..=65536).contains(&self.build_pids) {
            return Err(format!(
                "images.build_pids = {}: expected 16 to 65536",
                self.build_pids
            ));
        }
        Ok(())
    }

    /// `build_memory_mib` in bytes, as the build API takes it.
    pub fn build_memory_bytes(&self) -> i32 {
        (self.build_memory_mib.min(2047) as i32) * 1024 * 1024
    }

    /// Where the resolver's app dependency wheels are cached.
    pub fn app_wheel_cache_path(&self) -> PathBuf {
        self.app_wheel_cache
            .clone()
            .unwrap_or_else(|| cache_dir().join("app-wheels"))
    }

    /// `pip_args` with any `user:password@` in URLs replaced by `***@`.
    pub fn pip_args_redacted(&self) -> Vec<String> {
        self.pip_args
            .iter()
            .map(|a| redact_url_credentials(a))
            .collect()
    }
}

fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("iac")
}

/// Replaces the userinfo of a URL (`scheme://user:pass@host`) with `***`.
pub(crate) fn redact_url_credentials(s: &str) -> String {
    let Some(scheme_end) = s.find("://") else {
        return s.to_string();
    };
    let rest = &s[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}://***@{}", &s[..scheme_end], &rest[at + 1..]),
        None => s.to_string(),
    }
}

impl std::fmt::Debug for ImageConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageConfig")
            .field("base_image", &self.base_image)
            .field("offline_base_image", &self.offline_base_image)
            .field("default_python", &self.default_python)
            .field("pythons", &self.pythons)
            .field("agent_binary", &self.agent_binary)
            .field("wheelhouse", &self.wheelhouse)
            .field("template_dir", &self.template_dir)
            .field("tag_prefix", &self.tag_prefix)
            .field("otel", &self.otel)
            .field("otel_packages", &self.otel_packages)
            .field("otel_instrument", &self.otel_instrument)
            .field("pip", &self.pip)
            .field("pip_args", &self.pip_args_redacted())
            .field(
                "pip_index_url",
                &self.pip_index_url.as_deref().map(redact_url_credentials),
            )
            .field(
                "pip_extra_index_urls",
                &self
                    .pip_extra_index_urls
                    .iter()
                    .map(|u| redact_url_credentials(u))
                    .collect::<Vec<_>>(),
            )
            .field("pip_pass_env", &self.pip_pass_env)
            .field("max_context_bytes", &self.max_context_bytes)
            .field("app_wheel_cache", &self.app_wheel_cache)
            .field("labels", &self.labels)
            .field("app_uid", &self.app_uid)
            .finish()
    }
}

/// Serializes `pip_args` redacted: configs are printed (`iac config`), index credentials must not be.
pub(crate) mod redacted_args {
    pub fn serialize<S: serde::Serializer>(args: &[String], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(args.iter().map(|a| super::redact_url_credentials(a)))
    }
}

/// Serializes an optional URL redacted.
pub(crate) mod redacted_opt {
    pub fn serialize<S: serde::Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(u) => s.serialize_some(&super::redact_url_credentials(u)),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_otel_package_is_in_the_wheelhouse_requirements() {
        // The image installs OTEL_PACKAGES with --no-index from the wheelhouse bootstrap fills
        // from this file: a package missing there would fail every Python build offline.
        let reqs = include_str!("../../../../scripts/images/otel-requirements.txt");
        let listed: Vec<&str> = reqs
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| l.split(['=', '<', '>', '~', '!', ' ']).next().unwrap_or(l))
            .collect();
        for p in OTEL_PACKAGES {
            assert!(
                listed.contains(p),
                "{p} is installed by default but not in otel-requirements.txt: {listed:?}"
            );
        }
        assert_eq!(ImageConfig::default().otel_packages, OTEL_PACKAGES);
    }

    #[test]
    fn credentials_in_pip_args_are_redacted_when_printed() {
        let cfg = ImageConfig {
            pip_args: vec![
                "--index-url".into(),
                "https://bob:s3cret@pypi.example/simple".into(),
            ],
            pip_index_url: Some("https://bob:s3cret@idx.example/simple".into()),
            pip_extra_index_urls: vec!["https://bob:s3cret@extra.example/simple".into()],
            ..ImageConfig::default()
        };
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("s3cret"), "{dbg}");
        assert!(dbg.contains("https://***@pypi.example/simple"), "{dbg}");
        assert!(dbg.contains("https://***@idx.example/simple"), "{dbg}");
        let json = serde_json::to_string(&cfg).unwrap();
        assert!(!json.contains("s3cret"), "{json}");
        assert_eq!(
            redact_url_credentials("https://pypi.org/simple"),
            "https://pypi.org/simple"
        );
        assert_eq!(redact_url_credentials("--no-index"), "--no-index");
    }

    #[test]
    fn defaults_match_bootstrap_and_partial_configs_fill_in() {
        let cfg: ImageConfig =
            serde_json::from_str(r#"{"base_image": "python:3.12-slim"}"#).unwrap();
        assert_eq!(cfg.base_image, "python:3.12-slim");
        assert_eq!(cfg.offline_base_image, "iac/python:3.11-bookworm");
        assert_eq!(cfg.tag_prefix, "iac");
        assert!(cfg.otel && cfg.otel_instrument);
        assert!(cfg.wheelhouse_path().ends_with("iac/wheelhouse"));
        assert_eq!(cfg.max_context_bytes, 2 << 30);
        assert!(cfg.pip_index_url.is_none() && cfg.pip_pass_env.is_empty());
        assert_eq!(cfg.default_python, "3.11");
        assert_eq!(
            cfg.available_pythons().unwrap(),
            vec![(3, 11), (3, 13), (3, 14)]
        );
    }

    #[test]
    fn python_images_per_version_and_their_wheelhouses() {
        let cfg = ImageConfig {
            wheelhouse: Some(PathBuf::from("/srv/wh")),
            ..ImageConfig::default()
        };
        let d = cfg.python_images(None).unwrap();
        assert_eq!(
            (
                d.version.as_str(),
                d.image.as_str(),
                d.offline_image.as_str()
            ),
            ("3.11", "python:3.11-slim", "iac/python:3.11-bookworm")
        );
        assert_eq!(cfg.python_images(Some("3.11")).unwrap(), d);
        assert_eq!(cfg.wheelhouse_for(&d), PathBuf::from("/srv/wh"));
        let p = cfg.python_images(Some("3.14")).unwrap();
        assert_eq!(
            (p.image.as_str(), p.offline_image.as_str()),
            ("python:3.14-slim", "iac/python:3.14-sid")
        );
        assert_eq!(cfg.wheelhouse_for(&p), PathBuf::from("/srv/wh-3.14"));
        let e = cfg.python_images(Some("3.12")).unwrap_err();
        assert!(
            e.contains("Python 3.12") && e.contains("3.11, 3.13, 3.14"),
            "{e}"
        );

        let bad = ImageConfig {
            default_python: "3".into(),
            ..ImageConfig::default()
        };
        assert!(
            bad.available_pythons()
                .unwrap_err()
                .contains("images.default_python")
        );
        let mut dup = ImageConfig::default();
        dup.pythons.insert(
            "3.11".into(),
            PythonImages {
                image: "x".into(),
                offline_image: "y".into(),
            },
        );
        assert!(
            dup.available_pythons()
                .unwrap_err()
                .contains("images.base_image")
        );
        assert_eq!(parse_minor("3.13"), Ok((3, 13)));
        assert!(parse_minor("3.13.1").is_err() && parse_minor("three").is_err());
    }

    #[test]
    fn resolver_and_build_limits_are_validated_naming_the_key() {
        assert_eq!(ResolverConfig::default().validate(), Ok(()));
        let bad = |f: fn(&mut ResolverConfig)| {
            let mut c = ResolverConfig::default();
            f(&mut c);
            c.validate().unwrap_err()
        };
        let e = bad(|c| c.user = "0:0".into());
        assert!(
            e.contains("images.resolver.user") && e.contains("root"),
            "{e}"
        );
        let e = bad(|c| c.user = "nobody".into());
        assert!(e.contains("uid:gid"), "{e}");
        let e = bad(|c| c.memory_mib = 1);
        assert!(e.contains("images.resolver.memory_mib"), "{e}");
        let e = bad(|c| c.timeout = std::time::Duration::ZERO);
        assert!(e.contains("images.resolver.timeout"), "{e}");
        let e = bad(|c| c.network = "host net".into());
        assert!(e.contains("images.resolver.network"), "{e}");
        let e = bad(|c| c.find_links = vec![PathBuf::from("wheels")]);
        assert!(e.contains("absolute"), "{e}");
        let e = bad(|c| c.ca_bundle = Some(PathBuf::from("/nonexistent/ca.pem")));
        assert!(e.contains("images.resolver.ca_bundle"), "{e}");
        let cfg = ImageConfig {
            build_memory_mib: 4096,
            ..ImageConfig::default()
        };
        let e = cfg.validate_build_limits().unwrap_err();
        assert!(
            e.contains("images.build_memory_mib") && e.contains("2047"),
            "{e}"
        );
        for pids in [0, 15, 65537] {
            let cfg = ImageConfig {
                build_pids: pids,
                ..ImageConfig::default()
            };
            let e = cfg.validate_build_limits().unwrap_err();
            assert!(
                e.contains(&format!("images.build_pids = {pids}")) && e.contains("16 to 65536"),
                "{e}"
            );
        }
        assert_eq!(
            ImageConfig::default().build_memory_bytes(),
            2047 * 1024 * 1024
        );
        // Read from TOML with its duration syntax.
        let c: ImageConfig =
            toml::from_str("[resolver]\nnetwork = \"bridge\"\ntimeout = \"90s\"\n").unwrap();
        assert_eq!(c.resolver.network, "bridge");
        assert_eq!(c.resolver.timeout, std::time::Duration::from_secs(90));
        assert!(toml::from_str::<ImageConfig>("[resolver]\nnetwrk = \"x\"\n").is_err());
    }
}
