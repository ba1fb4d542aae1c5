//! [`Resolver`]: an app's dependencies resolved, downloaded and (for source distributions) built
//! into wheels inside a throwaway, confined container — never on the host.
//!
//! The container runs the app's own base image (so pip resolves for exactly the interpreter and
//! platform the image has, and an sdist builds against it) as an unprivileged user
//! (`images.resolver.user`, default `65534:65534`), with every capability dropped,
//! `no-new-privileges`, a read-only root filesystem, memory, CPU and pids limits, and a deadline
//! after which it is killed. Its only mounts are an input directory iac wrote (read-only: the
//! regenerated requirement files, see [`super::wheels::DepPlan`]), its output directory, a scratch
//! directory for `HOME`/`TMPDIR`, the host's CA bundle and the operator's find-links directories
//! (read-only). It gets no variable of iac's environment except proxy settings and what the
//! operator lists in `images.pip_pass_env`; the index comes from `images.pip_index_url` /
//! `images.pip_args`. Its network, when pip uses an index, is `images.resolver.network`:
//! `proxy` by default — no network of its own, the index hosts only, through the allowlisting
//! [`IndexProxy`] (here only the host network reaches the package index, so the proxy runs
//! there and the resolver reaches it through a Unix socket and a relay on its loopback).
//!
//! Results are cached by everything that determines them (the plan, the index settings, the
//! base image id) under `images.app_wheel_cache`; a run works in an owned temp dir there and is
//! renamed into place whole, so every service and deploy with the same plan (the same lock) on the
//! same interpreter reuses it without starting a container. Wheels pip built from source
//! distributions are also kept on their own, by name, version and interpreter, in
//! `built/<interpreter key>/` there ([`Resolver::built_dir`]: the base image id and the index
//! settings): every later run for that interpreter is offered them as a find-links directory, so an
//! sdist builds once even when the plan around it changes. Its output is kept in a bounded
//! [`OutputTail`].

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType};
use bollard::query_parameters::{
    KillContainerOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use futures::StreamExt;
use sha2::{Digest, Sha256};

use iac_core::{BuildError, Events, Stage};

use super::config::{ResolverConfig, redact_url_credentials};
use super::resolver_proxy::{self, IndexProxy, ProxySpec};
use super::wheels::{AppDeps, CONSTRAINTS_FILE, DepPlan, LOCAL_FILE, REQUIREMENTS_FILE};
use crate::output_tail::OutputTail;

/// Label on every resolver container (with `iac.managed-by=iac` and the builder's labels).
pub const LABEL_RESOLVER: &str = "iac.role";
/// Value of [`LABEL_RESOLVER`].
pub const RESOLVER_ROLE: &str = "resolver";

/// Variables of iac's environment the resolver gets: how to reach the index through a proxy.
pub const PROXY_ENV: &[&str] = &[
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
];

/// `[images.resolver] network` value: no network, the index through [`IndexProxy`].
pub const PROXY_NETWORK: &str = "proxy";

/// The first of iac's proxy variables ([`PROXY_ENV`], read through `var`) that names a proxy,
/// as an error saying why the `proxy` network cannot be used: the index proxy connects to the
/// index directly and cannot go through an HTTP proxy. `no_proxy`/`NO_PROXY` only say what
/// goes direct, and an empty value is no proxy: neither counts.
pub fn proxy_env_conflict(var: impl Fn(&str) -> Option<String>) -> Option<String> {
    let name = PROXY_ENV
        .iter()
        .filter(|n| !n.eq_ignore_ascii_case("no_proxy"))
        .find(|n| var(n).is_some_and(|v| !v.trim().is_empty()))?;
    Some(format!(
        "{name} is set, so this host reaches the package index through an HTTP proxy; the resolver's index proxy ([images.resolver] network = \"proxy\", the default) connects to the index directly and cannot use it. Set [images.resolver] network = \"host\" (pip then uses {name}; the resolver shares the host's network) or unset {name} if the index is reachable without it"
    ))
}

/// Where things are inside the resolver container.
const IN_DIR: &str = "/iac/in";
const OUT_DIR: &str = "/iac/out";
const SCRATCH_DIR: &str = "/iac/scratch";
const CA_PATH: &str = "/iac/ca-bundle.crt";
const FIND_LINKS_DIR: &str = "/iac/find-links";

/// Marks a finished cache entry.
const COMPLETE: &str = ".iac-complete";

/// Where wheels built from source distributions are kept, under the cache directory.
const BUILT_DIR: &str = "built";

/// What pip says when it has built a wheel: `Created wheel for NAME: filename=FILE size=…`.
const CREATED_WHEEL: &str = "Created wheel for ";

/// The longest line kept while looking for [`CREATED_WHEEL`] lines.
const LINE_CAP: usize = 4096;

/// Bounds on what iac keeps of pip's output.
const OUTPUT_TAIL_BYTES: usize = 64 * 1024;
const OUTPUT_EVENT_LINES: usize = 2000;

/// The dependency resolver of one build.
#[derive(Debug, Clone)]
pub struct Resolver {
    /// The app's base image (what the resolver runs), by tag.
    pub image: String,
    /// Its id (part of the cache key: another interpreter build is another result).
    pub image_id: String,
    /// Index, wheelhouse and cache settings the resolver runs with.
    pub config: ResolverConfig,
    /// Extra pip arguments from the operator (`images.pip_args`).
    pub pip_args: Vec<String>,
    /// `PIP_INDEX_URL` (operator config).
    pub index_url: Option<String>,
    /// `PIP_EXTRA_INDEX_URL` (operator config).
    pub extra_index_urls: Vec<String>,
    /// Names of further variables of iac's environment the resolver may see.
    pub pass_env: Vec<String>,
    /// Host directories offered read-only as `--find-links` (the bootstrap wheelhouse, which
    /// holds setuptools and wheel, and `images.resolver.find_links`).
    pub find_links: Vec<PathBuf>,
    /// Finished results, one directory per key.
    pub cache_dir: PathBuf,
    /// Whose wheels built from sdists this run may reuse and keeps: `<project>/<service>`. Code
    /// that builds an sdist is the repo's, and could leave any wheel it likes in the output, so
    /// one service's built wheels are never offered to another's resolve.
    pub scope: String,
    /// The image's CPython `(major, minor)`: markers are evaluated for it.
    pub python: (u32, u32),
    /// Labels on the resolver containers (tests add theirs, to clean up by label).
    pub labels: BTreeMap<String, String>,
    /// The Envoy image of the index proxy (`[images.resolver] proxy_image`, else the
    /// sidecar's); needed only with the `proxy` network.
    pub proxy_image: Option<String>,
}

/// The host directories of one resolver run.
struct Dirs<'a> {
    input: &'a Path,
    out: &'a Path,
    scratch: &'a Path,
    /// Copies of the find-links directories, readable by the resolver's user.
    links: &'a [PathBuf],
    /// The index proxy's socket directory (the `proxy` network).
    proxy: Option<&'a Path>,
}

/// Copies the top-level files of each existing find-links directory into `dest/<i>/` (0755
/// directories, 0644 files), so the unprivileged resolver can read them whatever the originals'
/// modes (the bootstrap wheelhouse is private to its owner). Returns the copies.
fn stage_find_links(dirs: &[PathBuf], dest: &Path) -> Result<Vec<PathBuf>, BuildError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BuildError::Io { path, source }
    };
    let mut out = Vec::new();
    for d in dirs.iter().filter(|d| d.is_dir()) {
        let copy = dest.join(out.len().to_string());
        std::fs::create_dir_all(&copy).map_err(io(&copy))?;
        for e in std::fs::read_dir(d).map_err(io(d))? {
            let e = e.map_err(io(d))?;
            let from = e.path();
            if !from.is_file() {
                continue;
            }
            let to = copy.join(e.file_name());
            std::fs::copy(&from, &to).map_err(io(&from))?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644))
                .map_err(io(&to))?;
        }
        for p in [dest, copy.as_path()] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).map_err(io(p))?;
        }
        out.push(copy);
    }
    Ok(out)
}

/// One pip invocation in the container.
struct Step<'a> {
    what: &'a str,
    /// pip's arguments after `python3 -m pip`.
    argv: Vec<String>,
}

impl Resolver {
    /// Makes a directory of wheels (and the [`REQUIREMENTS_FILE`], [`CONSTRAINTS_FILE`] and
    /// [`LOCAL_FILE`] lists) for `deps` of the tree at `source_dir` and returns it. Reuses an
    /// earlier result with the same inputs.
    pub async fn prepare(
        &self,
        docker: &Docker,
        service: &str,
        source_dir: &Path,
        deps: &AppDeps,
        events: &Events,
    ) -> Result<PathBuf, BuildError> {
        let fail = |message: String| BuildError::Build {
            service: service.to_string(),
            message,
        };
        let plan = {
            let dir = source_dir.to_path_buf();
            let deps = deps.clone();
            let python = self.python;
            tokio::task::spawn_blocking(move || DepPlan::from_tree(&dir, &deps, python))
                .await
                .map_err(|e| fail(format!("reading the app's requirements: {e}")))?
                .map_err(|why| fail(format!("app dependencies refused: {why}")))?
        };
        for s in &plan.skipped {
            events.debug(
                Stage::Build,
                format!(
                    "app dependencies: left out (markers false on CPython {}.{}): {s}",
                    self.python.0, self.python.1
                ),
            );
        }
        let key = self.cache_key(&plan);
        let done = self.cache_dir.join(&key);
        if done.join(COMPLETE).is_file() {
            events.info(
                Stage::Build,
                format!("app dependencies: cached wheels {}", done.display()),
            );
            return Ok(done);
        }
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| BuildError::Io { path, source }
        };
        // Private (0700, an existing one tightened; a symlink or another uid's dir refused):
        // the wheels are built from the app's private requirements.
        iac_core::fsutil::create_private_dir(&self.cache_dir).map_err(io(&self.cache_dir))?;
        // A killed build's work directory (its owner's lock no longer held) goes first.
        iac_core::fsutil::sweep_orphans(&self.cache_dir, Duration::MAX);
        let work = iac_core::fsutil::OwnedTempDir::new_in(&self.cache_dir, &format!(".{key}.tmp-"))
            .map_err(io(&self.cache_dir))?;
        let input = work.path().join("in");
        let out = work.path().join("wheels");
        let scratch = work.path().join("scratch");
        for d in [&input, &out, &scratch] {
            std::fs::create_dir(d).map_err(io(d))?;
        }
        let write = |path: &Path, lines: &[String]| {
            let mut text = lines.join("\n");
            if !text.is_empty() {
                text.push('\n');
            }
            std::fs::write(path, text).map_err(io(path))
        };
        // pip reads only files iac wrote from the parsed plan, never the repo's.
        write(
            &input.join("requirements.txt"),
            &plan.resolver_requirements(),
        )?;
        write(&input.join("constraints.txt"), &plan.resolver_constraints())?;
        write(&input.join("build.txt"), &plan.build)?;
        for d in [&out, &scratch] {
            self.give_to_resolver_user(d).map_err(io(d))?;
        }
        // Wheels earlier runs built from sdists for this interpreter: offered like the
        // operator's find-links, so pip takes them instead of building those sdists again.
        let built_dir = self.built_dir();
        let reused = built_wheels(&built_dir);
        if !reused.is_empty() {
            events.info(
                Stage::Build,
                format!(
                    "app dependencies: {} wheel(s) built from source earlier offered from the cache: {}",
                    reused.len(),
                    reused.join(", ")
                ),
            );
        }
        let mut offered = self.find_links.clone();
        offered.push(built_dir.clone());
        let links = stage_find_links(&offered, &work.path().join("links"))?;

        let t = Instant::now();
        let mut built = Vec::new();
        let mut steps = Vec::new();
        if plan.downloads() {
            let mut argv = self.wheel_args(links.len());
            argv.extend(["-r".into(), format!("{IN_DIR}/requirements.txt")]);
            if !plan.constraints.is_empty() {
                argv.extend(["-c".into(), format!("{IN_DIR}/constraints.txt")]);
            }
            steps.push(Step {
                what: "the app's dependencies",
                argv,
            });
        }
        if !plan.build.is_empty() {
            let mut argv = self.wheel_args(links.len());
            argv.extend(["-r".into(), format!("{IN_DIR}/build.txt")]);
            steps.push(Step {
                what: "the build requirements",
                argv,
            });
        }
        if self.network() == "host" {
            events.warn(
                Stage::Build,
                "app dependencies: the resolver container shares the host's network ([images.resolver] network = \"host\"): a source distribution's build code could reach services listening on this host; the default, network = \"proxy\", reaches only the package index",
            );
        }
        let proxy = if self.network() == PROXY_NETWORK && !steps.is_empty() {
            Some(
                self.start_proxy(docker, work.path(), steps.len(), events)
                    .await
                    .map_err(&fail)?,
            )
        } else {
            None
        };
        let socket_dir = proxy.as_ref().map(|p| p.socket_dir().to_path_buf());
        let mut outcome = Ok(());
        for step in &steps {
            events.info(
                Stage::Build,
                format!(
                    "app dependencies: resolving {} in a confined container ({}, user {}, network {}, {} MiB, {} CPU)",
                    step.what,
                    self.image,
                    self.config.user,
                    if proxy.is_some() {
                        "none + the index proxy"
                    } else {
                        self.network()
                    },
                    self.config.memory_mib,
                    self.config.cpus
                ),
            );
            let dirs = Dirs {
                input: &input,
                out: &out,
                scratch: &scratch,
                links: &links,
                proxy: socket_dir.as_deref(),
            };
            match self.run(docker, step, &dirs, events).await {
                Ok(b) => built.extend(b),
                Err(e) => {
                    outcome = Err(fail(e));
                    break;
                }
            }
        }
        if let Some(p) = proxy {
            let (log, refused) = p.stop().await;
            for line in log {
                events.debug(Stage::Build, format!("index proxy: {line}"));
            }
            for refused in refused {
                events.warn(
                    Stage::Build,
                    format!(
                        "app dependencies: the index proxy refused {refused}; only the package index hosts are reachable from the resolver ([images.resolver] allow_hosts adds more)"
                    ),
                );
            }
        }
        outcome?;
        self.keep_built(&built, &out, &built_dir, events)
            .map_err(|e| fail(format!("keeping the wheels built from source: {e}")))?;
        let mut wheels = 0;
        for e in std::fs::read_dir(&out).map_err(io(&out))? {
            let e = e.map_err(io(&out))?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if !name.ends_with(".whl") || !e.file_type().map_err(io(&out))?.is_file() {
                // Only wheels leave the resolver.
                let p = e.path();
                let _ = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
                continue;
            }
            wheels += 1;
        }
        write(&out.join(REQUIREMENTS_FILE), &plan.install_requirements())?;
        write(&out.join(CONSTRAINTS_FILE), &plan.install_constraints())?;
        write(&out.join(LOCAL_FILE), &plan.local)?;
        events.info(
            Stage::Build,
            format!(
                "app dependencies: {wheels} wheels from the resolver container ({:.1?})",
                t.elapsed()
            ),
        );
        std::fs::write(out.join(COMPLETE), b"").map_err(io(&out))?;
        match std::fs::rename(&out, &done) {
            Ok(()) => Ok(done),
            // A concurrent build of the same inputs finished first: use its result.
            Err(_) if done.join(COMPLETE).is_file() => Ok(done),
            Err(source) => Err(BuildError::Io { path: done, source }),
        }
    }

    /// The network the container gets: `none` when pip cannot use one — the operator's
    /// `pip_args` hold `--no-index`, no index URL is configured, no argument names a URL and
    /// `PIP_FIND_LINKS` is not passed in — so only the mounted find-links directories are
    /// read; otherwise `[images.resolver] network`.
    pub fn network(&self) -> &str {
        let offline = self.pip_args.iter().any(|a| a == "--no-index")
            && self.index_url.is_none()
            && self.extra_index_urls.is_empty()
            && !self.pip_args.iter().any(|a| a.contains("://"))
            && !self.pass_env.iter().any(|n| n == "PIP_FIND_LINKS");
        if offline {
            "none"
        } else {
            &self.config.network
        }
    }

    /// Starts the index proxy of one run in `work` (its config and socket directories), admitting
    /// the index hosts of these settings.
    async fn start_proxy(
        &self,
        docker: &Docker,
        work: &Path,
        steps: usize,
        events: &Events,
    ) -> Result<IndexProxy, String> {
        if let Some(e) = proxy_env_conflict(|n| std::env::var(n).ok()) {
            return Err(e);
        }
        let allow = resolver_proxy::allowlist(
            self.index_url.as_deref(),
            &self.extra_index_urls,
            &self.pip_args,
            &self.config.allow_hosts,
        )?;
        let image = self.proxy_image.as_deref().ok_or_else(|| {
            "the resolver's index proxy needs an Envoy image: set [images.resolver] proxy_image (or network = \"host\" to go without the proxy)".to_string()
        })?;
        events.info(
            Stage::Build,
            format!(
                "app dependencies: the resolver has no network; its index proxy ({image}) admits only {}",
                allow.join(", ")
            ),
        );
        IndexProxy::start(
            docker,
            ProxySpec {
                image,
                dir: work,
                allow: &allow,
                user: &self.config.user,
                labels: self.labels.clone().into_iter().collect(),
                // Each step has its deadline; the proxy outlives them all by a margin.
                lifetime: self
                    .config
                    .timeout
                    .saturating_mul(u32::try_from(steps).unwrap_or(u32::MAX))
                    .saturating_add(Duration::from_secs(300)),
            },
        )
        .await
    }

    /// `pip wheel` into the output directory, with the find-links and the operator's arguments.
    fn wheel_args(&self, links: usize) -> Vec<String> {
        let mut argv = vec![
            "wheel".to_string(),
            "--wheel-dir".into(),
            OUT_DIR.into(),
            "--disable-pip-version-check".into(),
            "--no-input".into(),
            "--progress-bar".into(),
            "off".into(),
        ];
        for i in 0..links {
            argv.push("--find-links".into());
            argv.push(format!("{FIND_LINKS_DIR}/{i}"));
        }
        argv.extend(self.pip_args.iter().cloned());
        argv
    }

    /// Output and scratch directories belong to the resolver's user (it cannot write anything
    /// else). When iac cannot chown (not root), they are opened to everyone instead: they sit in
    /// the private (0700) cache directory, so no other local user reaches them.
    fn give_to_resolver_user(&self, dir: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let (uid, gid) = self.config.uid_gid();
        match std::os::unix::fs::chown(dir, Some(uid), Some(gid)) {
            Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)),
            Err(_) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)),
        }
    }

    /// The container of one step (pure: unit-tested).
    fn container(&self, step: &Step<'_>, dirs: &Dirs<'_>) -> ContainerCreateBody {
        let bind = |source: &Path, target: &str, read_only: bool| Mount {
            target: Some(target.to_string()),
            source: Some(source.display().to_string()),
            typ: Some(MountType::BIND),
            read_only: Some(read_only),
            ..Default::default()
        };
        let mut mounts = vec![
            bind(dirs.input, IN_DIR, true),
            bind(dirs.out, OUT_DIR, false),
            bind(dirs.scratch, SCRATCH_DIR, false),
        ];
        for (i, d) in dirs.links.iter().enumerate() {
            mounts.push(bind(d, &format!("{FIND_LINKS_DIR}/{i}"), true));
        }
        let proxied = dirs.proxy.filter(|_| self.network() == PROXY_NETWORK);
        if let Some(p) = proxied {
            // Read-only: the build code can connect to the socket, not replace it.
            mounts.push(bind(p, resolver_proxy::SOCKET_DIR, true));
        }
        let mut env = vec![
            format!("HOME={SCRATCH_DIR}/home"),
            format!("TMPDIR={SCRATCH_DIR}"),
            "PIP_DISABLE_PIP_VERSION_CHECK=1".to_string(),
            "PIP_NO_INPUT=1".into(),
            "PIP_NO_CACHE_DIR=1".into(),
            "PYTHONDONTWRITEBYTECODE=1".into(),
            "PYTHONNOUSERSITE=1".into(),
            "LC_ALL=C.UTF-8".into(),
        ];
        if let Some(ca) = self.config.ca_bundle_path() {
            mounts.push(bind(&ca, CA_PATH, true));
            for v in ["PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"] {
                env.push(format!("{v}={CA_PATH}"));
            }
        }
        // Behind the index proxy, pip's only proxy is the relay. The proxy container connects to
        // the index directly (Envoy's forward proxy has no upstream proxy), so a host that needs
        // an HTTP proxy cannot use this network: `start_proxy` refuses it
        // (`proxy_env_conflict`) before a resolver runs.
        let inherited: &[&str] = if proxied.is_some() { &[] } else { PROXY_ENV };
        for name in inherited
            .iter()
            .copied()
            .chain(self.pass_env.iter().map(String::as_str))
            .filter(|n| proxied.is_none() || !PROXY_ENV.contains(n) && *n != "PIP_PROXY")
        {
            if let Ok(v) = std::env::var(name) {
                env.push(format!("{name}={v}"));
            }
        }
        if proxied.is_some() {
            let relay = format!("http://127.0.0.1:{}", resolver_proxy::RELAY_PORT);
            for k in [
                "HTTPS_PROXY",
                "https_proxy",
                "HTTP_PROXY",
                "http_proxy",
                "PIP_PROXY",
            ] {
                env.push(format!("{k}={relay}"));
            }
            env.push("NO_PROXY=".into());
            env.push("no_proxy=".into());
        }
        if let Some(u) = &self.index_url {
            env.push(format!("PIP_INDEX_URL={u}"));
        }
        if !self.extra_index_urls.is_empty() {
            env.push(format!(
                "PIP_EXTRA_INDEX_URL={}",
                self.extra_index_urls.join(" ")
            ));
        }
        let mut cmd = Vec::new();
        if proxied.is_some() {
            cmd.extend([
                "python3".to_string(),
                "-I".into(),
                "-c".into(),
                resolver_proxy::RELAY.into(),
                resolver_proxy::RELAY_PORT.to_string(),
                format!(
                    "{}/{}",
                    resolver_proxy::SOCKET_DIR,
                    resolver_proxy::SOCKET_NAME
                ),
            ]);
        }
        cmd.extend(["python3".to_string(), "-m".into(), "pip".into()]);
        cmd.extend(step.argv.iter().cloned());
        let mut labels: HashMap<String, String> = self.labels.clone().into_iter().collect();
        iac_core::labels::mark_managed(&mut labels);
        labels.insert(LABEL_RESOLVER.to_string(), RESOLVER_ROLE.to_string());
        let memory = (self.config.memory_mib * 1024 * 1024) as i64;
        ContainerCreateBody {
            image: Some(self.image.clone()),
            cmd: Some(cmd),
            env: Some(env),
            user: Some(self.config.user.clone()),
            working_dir: Some(SCRATCH_DIR.to_string()),
            labels: Some(labels),
            network_disabled: Some(self.network() == "none"),
            host_config: Some(HostConfig {
                mounts: Some(mounts),
                // The proxy network is no network: a loopback for the relay, nothing else.
                network_mode: Some(
                    if self.network() == PROXY_NETWORK {
                        "none"
                    } else {
                        self.network()
                    }
                    .to_string(),
                ),
                memory: Some(memory),
                memory_swap: Some(memory),
                nano_cpus: Some(i64::from(self.config.cpus) * 1_000_000_000),
                pids_limit: Some(self.config.pids),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges".into()]),
                readonly_rootfs: Some(true),
                init: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Runs one step to completion (or the deadline); on failure, a message for the report.
    async fn run(
        &self,
        docker: &Docker,
        step: &Step<'_>,
        dirs: &Dirs<'_>,
        events: &Events,
    ) -> Result<Vec<String>, String> {
        let body = self.container(step, dirs);
        // The relay's script is iac's, always the same: not worth a debug line.
        let relay = usize::from(dirs.proxy.is_some() && self.network() == PROXY_NETWORK) * 6;
        let shown = body
            .cmd
            .iter()
            .flatten()
            .skip(relay)
            .map(|a| redact_url_credentials(a))
            .collect::<Vec<_>>()
            .join(" ");
        events.debug(Stage::Build, format!("resolver: $ {shown}"));
        let created = docker
            .create_container(
                None::<bollard::query_parameters::CreateContainerOptions>,
                body,
            )
            .await
            .map_err(|e| format!("creating the resolver container from {}: {e}", self.image))?;
        let guard = ContainerGuard {
            docker: docker.clone(),
            id: Some(created.id.clone()),
        };
        docker
            .start_container(&created.id, None)
            .await
            .map_err(|e| format!("starting the resolver container: {e}"))?;
        let mut tail = OutputTail::new(OUTPUT_TAIL_BYTES, OUTPUT_EVENT_LINES);
        let mut created_lines = CreatedWheels::default();
        let followed = async {
            let opts = LogsOptionsBuilder::new()
                .follow(true)
                .stdout(true)
                .stderr(true)
                .build();
            let mut logs = docker.logs(&created.id, Some(opts));
            while let Some(chunk) = logs.next().await {
                match chunk {
                    Ok(c) => {
                        let redacted = redact_text(&String::from_utf8_lossy(&c.into_bytes()));
                        created_lines.push(&redacted);
                        tail.push_as_events(redacted.as_bytes(), events, Stage::Build, "pip: ");
                    }
                    Err(_) => break,
                }
            }
            tail.finish_as_events(events, Stage::Build, "pip: ");
            let mut wait = docker.wait_container(
                &created.id,
                Some(WaitContainerOptionsBuilder::default().build()),
            );
            match wait.next().await {
                Some(Ok(r)) => Ok(r.status_code),
                Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => {
                    Ok(code)
                }
                Some(Err(e)) => Err(format!("waiting for the resolver container: {e}")),
                None => Err("the engine ended the wait without an exit code".to_string()),
            }
        };
        let code = match tokio::time::timeout(self.config.timeout, followed).await {
            Ok(r) => r?,
            Err(_) => {
                let _ = docker
                    .kill_container(
                        &created.id,
                        Some(KillContainerOptionsBuilder::default().build()),
                    )
                    .await;
                guard.remove().await;
                return Err(format!(
                    "resolving {} did not finish within {} (images.resolver.timeout); the container was killed.\nlast pip output:\n{}",
                    step.what,
                    humantime::format_duration(self.config.timeout),
                    tail.last_lines(15)
                ));
            }
        };
        let oom = docker
            .inspect_container(&created.id, None)
            .await
            .ok()
            .and_then(|c| c.state)
            .and_then(|s| s.oom_killed)
            .unwrap_or(false);
        guard.remove().await;
        if code == 0 {
            return Ok(created_lines.finish());
        }
        if oom {
            return Err(format!(
                "resolving {} ran out of memory (limit {} MiB, images.resolver.memory_mib)",
                step.what, self.config.memory_mib
            ));
        }
        Err(resolve_error(step.what, self.python, &tail.text()))
    }

    fn cache_key(&self, plan: &DepPlan) -> String {
        let mut h = Sha256::new();
        let mut part = |s: &str| {
            h.update((s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        };
        part("iac-app-wheels/v3-resolver");
        part(&self.image_id);
        for s in &self.pip_args {
            part(s);
        }
        part(self.index_url.as_deref().unwrap_or("(default index)"));
        for s in &self.extra_index_urls {
            part(s);
        }
        for d in &self.find_links {
            part(&d.display().to_string());
        }
        for (name, list) in [
            ("requirements", plan.resolver_requirements()),
            ("constraints", plan.resolver_constraints()),
            ("local", plan.local.clone()),
            ("build", plan.build.clone()),
        ] {
            part(name);
            part(&list.len().to_string());
            for s in &list {
                part(s);
            }
        }
        hex::encode(h.finalize())[..24].to_string()
    }

    /// Where the wheels built from sdists for this interpreter are kept: one directory per
    /// [`Resolver::scope`] (one service of one project), base image id and package source (the index settings and find-links, which decide what a
    /// `name==version` sdist is), the wheel's file name giving its name and version.
    pub fn built_dir(&self) -> PathBuf {
        let mut h = Sha256::new();
        let mut part = |s: &str| {
            h.update((s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        };
        part("iac-built-wheels/v2");
        part(&self.scope);
        part(&self.image_id);
        for s in &self.pip_args {
            part(s);
        }
        part(self.index_url.as_deref().unwrap_or("(default index)"));
        for s in &self.extra_index_urls {
            part(s);
        }
        for d in &self.find_links {
            part(&d.display().to_string());
        }
        self.cache_dir
            .join(BUILT_DIR)
            .join(&hex::encode(h.finalize())[..24])
    }

    /// Copies the wheels pip built from source in this run (`built`, file names in `out`) into
    /// `built_dir`, each written to a temp file and renamed, so the next run is offered them.
    fn keep_built(
        &self,
        built: &[String],
        out: &Path,
        built_dir: &Path,
        events: &Events,
    ) -> std::io::Result<()> {
        let mut kept = Vec::new();
        for name in built {
            let from = out.join(name);
            // `out` was written by the repo's build code: only a regular file is kept, never
            // what a symlink there points at (a host file would be copied into the cache).
            let regular = std::fs::symlink_metadata(&from).is_ok_and(|m| m.file_type().is_file());
            if !is_wheel_file_name(name) || !regular || built_dir.join(name).is_file() {
                continue;
            }
            iac_core::fsutil::create_private_dir(&self.cache_dir)?;
            iac_core::fsutil::create_private_dir(&self.cache_dir.join(BUILT_DIR))?;
            iac_core::fsutil::create_private_dir(built_dir)?;
            let tmp = built_dir.join(format!(".{name}.tmp-{}", std::process::id()));
            {
                use std::os::unix::fs::OpenOptionsExt;
                // O_NOFOLLOW: a link swapped in after the check is refused, not followed.
                let mut src = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&from)?;
                let mut dst = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)?;
                std::io::copy(&mut src, &mut dst)?;
            }
            if let Err(e) = std::fs::rename(&tmp, built_dir.join(name)) {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            kept.push(name.clone());
        }
        if !kept.is_empty() {
            events.info(
                Stage::Build,
                format!(
                    "app dependencies: built from source and cached for this interpreter: {}",
                    kept.join(", ")
                ),
            );
        }
        Ok(())
    }
}

/// The wheels kept in `dir` (file names, sorted); none when it does not exist.
fn built_wheels(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| is_wheel_file_name(n))
        .collect();
    names.sort();
    names
}

/// A plain wheel file name (`name-version-…-tag.whl`, no path, no temp file).
fn is_wheel_file_name(name: &str) -> bool {
    name.ends_with(".whl")
        && !name.starts_with('.')
        && name.split('-').count() >= 5
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c))
}

/// The file names of the wheels pip built, read from its output as it streams (lines split
/// across chunks joined; an overlong line cut at [`LINE_CAP`]).
#[derive(Default)]
struct CreatedWheels {
    partial: String,
    names: Vec<String>,
}

impl CreatedWheels {
    fn push(&mut self, chunk: &str) {
        let mut rest = chunk;
        while let Some(i) = rest.find('\n') {
            self.partial.push_str(&rest[..i]);
            self.line();
            rest = &rest[i + 1..];
        }
        if self.partial.len() + rest.len() <= LINE_CAP {
            self.partial.push_str(rest);
        }
    }

    fn line(&mut self) {
        let line = std::mem::take(&mut self.partial);
        if let Some(name) = created_wheel(&line) {
            self.names.push(name.to_string());
        }
    }

    fn finish(mut self) -> Vec<String> {
        if !self.partial.is_empty() {
            self.line();
        }
        self.names
    }
}

/// The wheel file name of one `Created wheel for NAME: filename=FILE size=…` line of pip's.
fn created_wheel(line: &str) -> Option<&str> {
    let (_, after) = line.split_once(CREATED_WHEEL)?;
    let (_, file) = after.split_once("filename=")?;
    let file = file.split_whitespace().next()?;
    is_wheel_file_name(file).then_some(file)
}

/// Removes a container of a resolve (the resolver's, the index proxy's): explicitly when its
/// step ends, or on drop (a panic, a cancelled deploy) from a spawned task.
pub(super) struct ContainerGuard {
    pub(super) docker: Docker,
    pub(super) id: Option<String>,
}

impl ContainerGuard {
    pub(super) async fn remove(mut self) {
        if let Some(id) = self.id.take() {
            let opts = RemoveContainerOptionsBuilder::default().force(true).build();
            let _ = self.docker.remove_container(&id, Some(opts)).await;
        }
    }
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        if let Some(id) = self.id.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let docker = self.docker.clone();
            rt.spawn(async move {
                let opts = RemoveContainerOptionsBuilder::default().force(true).build();
                let _ = docker.remove_container(&id, Some(opts)).await;
            });
        }
    }
}

/// Every `scheme://user:pass@` in `text` with the userinfo replaced by `***`.
fn redact_text(text: &str) -> String {
    text.split_inclusive(char::is_whitespace)
        .map(|w| {
            let trimmed = w.trim_end();
            let tail = &w[trimmed.len()..];
            // Quotes and brackets around URLs in pip's messages.
            let start = trimmed
                .find(|c: char| c.is_ascii_alphanumeric())
                .unwrap_or(0);
            format!(
                "{}{}{tail}",
                &trimmed[..start],
                redact_url_credentials(&trimmed[start..])
            )
        })
        .collect()
}

/// A resolver failure for the deploy report: what is missing and what to do, from pip's
/// `ERROR:` lines and the compiler's last words (never its whole output).
fn resolve_error(what: &str, python: (u32, u32), output: &str) -> String {
    let py = format!("CPython {}.{}", python.0, python.1);
    let missing: Vec<String> = output
        .lines()
        .filter_map(|l| {
            l.split_once("No matching distribution found for ")
                .map(|(_, rest)| rest.trim().to_string())
        })
        .collect();
    let failed_build: Vec<String> = output
        .lines()
        .filter_map(|l| {
            l.split_once("Failed building wheel for ")
                .or_else(|| l.split_once("Failed to build "))
                .map(|(_, rest)| rest.trim().to_string())
        })
        .collect();
    let header = output.lines().find_map(|l| {
        let (_, rest) = l.split_once("fatal error: ")?;
        let h = rest.split(':').next()?.trim();
        h.ends_with(".h").then(|| h.to_string())
    });
    let library = output.lines().find_map(|l| {
        let (_, rest) = l.split_once("cannot find -l")?;
        let lib: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+' | '.'))
            .collect();
        (!lib.is_empty()).then_some(lib)
    });
    let no_compiler = output.lines().any(|l| {
        (l.contains("command 'gcc'")
            || l.contains("command 'x86_64-linux-gnu-gcc'")
            || l.contains("command 'cc'"))
            && (l.contains("No such file") || l.contains("failed"))
            || l.contains("gcc: not found")
            || l.contains("cc: not found")
    });
    let errors: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("ERROR:"))
        .take(5)
        .collect();
    let mut msg = if !missing.is_empty() {
        format!(
            "{what}: no distribution of {} for {py} on the configured index; check the name and version, or give the operator's index (images.pip_index_url) or a wheelhouse (images.resolver.find_links) one",
            missing.join(", ")
        )
    } else if !failed_build.is_empty() {
        let pkgs = failed_build.join(", ");
        match (header, library, no_compiler) {
            (Some(h), _, _) => format!(
                "{what}: building {pkgs} from source needs the C header {h}, which the resolver image does not have: {}; or use a version of {pkgs} that ships a wheel for {py} manylinux x86_64",
                super::aptfile::suggest_for_header(&h)
            ),
            (None, Some(lib), _) => format!(
                "{what}: building {pkgs} from source needs the library {lib} (cannot find -l{lib}), which the resolver image does not have: {}; or use a version of {pkgs} that ships a wheel for {py} manylinux x86_64",
                super::aptfile::suggest_for_library(&lib)
            ),
            (None, None, true) => format!(
                "{what}: building {pkgs} from source needs a C compiler, which the resolver image does not have: add `gcc` and `python3-dev` to apt.txt; or use a version of {pkgs} that ships a wheel for {py} manylinux x86_64"
            ),
            (None, None, false) => format!(
                "{what}: building {pkgs} from its source distribution failed in the resolver container"
            ),
        }
    } else {
        format!("resolving {what} in the resolver container failed ({py})")
    };
    if !errors.is_empty() {
        msg.push_str("\npip said:\n");
        msg.push_str(&errors.join("\n"));
    } else {
        let last = super::wheels::tail(output, 8);
        if !last.is_empty() {
            msg.push_str("\nlast pip output:\n");
            msg.push_str(&last);
        }
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::super::requirements::IndexReq;
    use super::*;

    fn resolver() -> Resolver {
        Resolver {
            image: "iac/python:3.11-bookworm".into(),
            image_id: "sha256:abc".into(),
            config: ResolverConfig::default(),
            pip_args: vec![],
            index_url: Some("https://op:s3cret@mirror.example/simple".into()),
            extra_index_urls: vec![],
            pass_env: vec![],
            find_links: vec![],
            cache_dir: PathBuf::from("/nonexistent"),
            scope: "p/api".into(),
            python: (3, 11),
            labels: BTreeMap::from([("iac.test".to_string(), "t1".to_string())]),
            proxy_image: Some("iac/envoy:test".into()),
        }
    }

    #[test]
    fn an_offline_resolver_gets_no_network() {
        let step = |r: &Resolver| {
            let c = r.container(
                &Step {
                    what: "x",
                    argv: r.wheel_args(0),
                },
                &Dirs {
                    input: Path::new("/c/in"),
                    out: Path::new("/c/out"),
                    scratch: Path::new("/c/s"),
                    links: &[],
                    proxy: Some(Path::new("/c/proxy")),
                },
            );
            (
                c.network_disabled,
                c.host_config.unwrap().network_mode.unwrap(),
            )
        };
        let mut r = resolver();
        assert_eq!(r.network(), PROXY_NETWORK, "online: the default");
        assert_eq!(
            step(&r),
            (Some(false), "none".to_string()),
            "online behind the proxy: no network but a loopback"
        );
        r.config.network = "host".into();
        assert_eq!(
            step(&r),
            (Some(false), "host".to_string()),
            "online: as configured"
        );
        r.config.network = PROXY_NETWORK.into();
        r.index_url = None;
        r.pip_args = vec!["--no-index".into()];
        assert_eq!(
            step(&r),
            (Some(true), "none".to_string()),
            "--no-index: none"
        );
        r.config.network = "bridge".into();
        assert_eq!(r.network(), "none", "whatever the configured network");
        for (args, pass) in [
            (
                vec!["--no-index", "--find-links", "https://wheels.example/"],
                None,
            ),
            (vec!["--no-index"], Some("PIP_FIND_LINKS")),
        ] {
            let mut r = resolver();
            r.index_url = None;
            r.pip_args = args.iter().map(|a| a.to_string()).collect();
            r.pass_env = pass.into_iter().map(str::to_string).collect();
            assert_eq!(
                r.network(),
                PROXY_NETWORK,
                "{args:?} {pass:?}: pip may fetch"
            );
        }
        let mut r = resolver();
        r.pip_args = vec!["--no-index".into()];
        assert_eq!(r.network(), PROXY_NETWORK, "an index URL is configured");
    }

    #[test]
    fn the_container_is_confined() {
        let r = resolver();
        let step = Step {
            what: "x",
            argv: r.wheel_args(1),
        };
        let links = [PathBuf::from("/c/links/0")];
        let dirs = Dirs {
            input: Path::new("/c/in"),
            out: Path::new("/c/out"),
            scratch: Path::new("/c/s"),
            links: &links,
            proxy: None,
        };
        let c = r.container(&step, &dirs);
        assert_eq!(c.user.as_deref(), Some("65534:65534"));
        let hc = c.host_config.unwrap();
        assert_eq!(hc.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(hc.security_opt, Some(vec!["no-new-privileges".to_string()]));
        assert_eq!(hc.readonly_rootfs, Some(true));
        assert_eq!(hc.memory, Some(2048 * 1024 * 1024));
        assert_eq!(hc.memory_swap, hc.memory, "no swap beyond the limit");
        assert_eq!(hc.pids_limit, Some(512));
        assert_eq!(hc.nano_cpus, Some(1_000_000_000));
        assert!(hc.privileged.is_none() && hc.cap_add.is_none() && hc.binds.is_none());
        let mounts = hc.mounts.unwrap();
        let writable: Vec<&str> = mounts
            .iter()
            .filter(|m| m.read_only != Some(true))
            .map(|m| m.target.as_deref().unwrap())
            .collect();
        assert_eq!(writable, [OUT_DIR, SCRATCH_DIR], "only output and scratch");
        assert!(
            !mounts
                .iter()
                .any(|m| m.source.as_deref().unwrap_or("").contains("docker.sock")),
            "never the engine socket"
        );
        let env = c.env.unwrap();
        assert!(env.iter().all(|e| !e.starts_with("CARGO")), "{env:?}");
        assert!(env.contains(&"PIP_INDEX_URL=https://op:s3cret@mirror.example/simple".to_string()));
        let labels = c.labels.unwrap();
        assert_eq!(labels.get("iac.test").map(String::as_str), Some("t1"));
        assert_eq!(
            labels.get(LABEL_RESOLVER).map(String::as_str),
            Some(RESOLVER_ROLE)
        );
        let cmd = c.cmd.unwrap();
        assert_eq!(&cmd[..4], ["python3", "-m", "pip", "wheel"]);
    }

    /// A host proxy variable makes the `proxy` network an error naming it and the setting to
    /// use; `no_proxy` alone or an empty value does not.
    #[test]
    fn a_host_http_proxy_is_refused_with_the_proxy_network() {
        fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
            let pairs: Vec<(String, String)> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            move |n| pairs.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone())
        }
        assert_eq!(proxy_env_conflict(env(&[])), None);
        assert_eq!(
            proxy_env_conflict(env(&[("no_proxy", "localhost"), ("NO_PROXY", "x")])),
            None
        );
        assert_eq!(proxy_env_conflict(env(&[("HTTPS_PROXY", " ")])), None);
        for name in ["https_proxy", "HTTPS_PROXY", "http_proxy", "ALL_PROXY"] {
            let e = proxy_env_conflict(env(&[(name, "http://proxy.corp:3128")])).expect(name);
            assert!(
                e.starts_with(&format!("{name} is set"))
                    && e.contains("network = \"host\"")
                    && e.contains("[images.resolver]"),
                "{e}"
            );
        }
    }

    /// Behind the index proxy: no network but a loopback, the socket mounted read-only, pip's
    /// proxy variables naming the relay and none of iac's own, and the relay wrapping pip.
    #[test]
    fn a_proxied_resolver_reaches_only_the_relay() {
        // A proxy variable of iac's that no other test depends on (`no_proxy` only ever widens
        // what goes direct, and nothing here sets a proxy).
        // SAFETY: set and removed around one pure call; no other thread relies on its value.
        unsafe { std::env::set_var("no_proxy", "corp-proxy.example") };
        let r = resolver();
        let c = r.container(
            &Step {
                what: "x",
                argv: r.wheel_args(0),
            },
            &Dirs {
                input: Path::new("/c/in"),
                out: Path::new("/c/out"),
                scratch: Path::new("/c/s"),
                links: &[],
                proxy: Some(Path::new("/c/proxy")),
            },
        );
        unsafe { std::env::remove_var("no_proxy") };
        let hc = c.host_config.unwrap();
        assert_eq!(hc.network_mode.as_deref(), Some("none"));
        let socket = hc
            .mounts
            .unwrap()
            .into_iter()
            .find(|m| m.target.as_deref() == Some(resolver_proxy::SOCKET_DIR))
            .expect("the socket dir is mounted");
        assert_eq!(socket.source.as_deref(), Some("/c/proxy"));
        assert_eq!(socket.read_only, Some(true));
        let env = c.env.unwrap();
        for k in [
            "HTTPS_PROXY",
            "HTTP_PROXY",
            "https_proxy",
            "http_proxy",
            "PIP_PROXY",
        ] {
            assert!(
                env.contains(&format!("{k}=http://127.0.0.1:3128")),
                "{k}: {env:?}"
            );
        }
        assert!(
            !env.iter().any(|e| e.contains("corp-proxy")) && env.contains(&"no_proxy=".to_string()),
            "iac's own proxy settings are not the resolver's: {env:?}"
        );
        let cmd = c.cmd.unwrap();
        assert_eq!(&cmd[..3], ["python3", "-I", "-c"]);
        assert_eq!(cmd[3], resolver_proxy::RELAY);
        assert_eq!(&cmd[4..6], ["3128", "/iac/proxy/proxy.sock"]);
        assert_eq!(&cmd[6..10], ["python3", "-m", "pip", "wheel"]);
    }

    #[test]
    fn errors_name_the_package_and_what_is_missing() {
        let out = redact_text(
            "Looking in indexes: https://op:s3cret@mirror.example/simple\nERROR: Could not find a version that satisfies the requirement nosuch==1.0 (from versions: none)\nERROR: No matching distribution found for nosuch==1.0\n",
        );
        assert!(!out.contains("s3cret"), "{out}");
        let msg = resolve_error("the app's dependencies", (3, 11), &out);
        assert!(
            msg.contains("nosuch==1.0") && msg.contains("CPython 3.11"),
            "{msg}"
        );
        assert!(!msg.contains("Looking in indexes"), "{msg}");
        let msg = resolve_error(
            "the app's dependencies",
            (3, 11),
            "  src/fast.c:1:10: fatal error: libxml/xpath.h: No such file or directory\n  error: command '/usr/bin/x86_64-linux-gnu-gcc' failed with exit code 1\n  ERROR: Failed building wheel for lxml\nERROR: Failed to build one or more wheels\n",
        );
        assert!(
            msg.contains("lxml") && msg.contains("libxml/xpath.h"),
            "{msg}"
        );
        assert!(
            msg.contains("apt.txt") && msg.contains("`libxml2-dev`"),
            "{msg}"
        );
        let msg = resolve_error(
            "the app's dependencies",
            (3, 11),
            "  /usr/bin/ld: cannot find -lpq: No such file or directory\n  collect2: error: ld returned 1 exit status\n  ERROR: Failed building wheel for psycopg2\n",
        );
        assert!(
            msg.contains("psycopg2")
                && msg.contains("cannot find -lpq")
                && msg.contains("`libpq-dev`")
                && msg.contains("apt.txt"),
            "{msg}"
        );
        let msg = resolve_error(
            "the app's dependencies",
            (3, 11),
            "error: command 'x86_64-linux-gnu-gcc' failed: No such file or directory\nERROR: Failed building wheel for fastpkg\n",
        );
        assert!(
            msg.contains("C compiler") && msg.contains("fastpkg"),
            "{msg}"
        );
    }

    #[test]
    fn built_wheels_are_kept_per_interpreter_and_package_source_not_per_plan() {
        let r = resolver();
        let a = r.built_dir();
        assert!(a.starts_with("/nonexistent/built"), "{}", a.display());
        assert_eq!(a, r.clone().built_dir());
        let other_image = Resolver {
            image_id: "sha256:def".into(),
            ..r.clone()
        };
        assert_ne!(a, other_image.built_dir(), "another interpreter build");
        let other_index = Resolver {
            index_url: Some("http://mirror/simple".into()),
            ..r.clone()
        };
        assert_ne!(a, other_index.built_dir(), "another index: another sdist");
        let other_links = Resolver {
            find_links: vec![PathBuf::from("/wheels")],
            ..r.clone()
        };
        assert_ne!(a, other_links.built_dir());
        // Another service (another repo's build code) never sees this one's built wheels.
        let other_scope = Resolver {
            scope: "p/web".into(),
            ..r.clone()
        };
        assert_ne!(a, other_scope.built_dir(), "another service");
        let other_project = Resolver {
            scope: "q/api".into(),
            ..r.clone()
        };
        assert_ne!(a, other_project.built_dir(), "another project");
        // The plan is not part of it: a changed requirements file finds the same built wheels.
        let other_minor = Resolver {
            python: (3, 12),
            ..r.clone()
        };
        assert_eq!(
            a,
            other_minor.built_dir(),
            "the image id alone names the interpreter"
        );
    }

    /// The resolver's output dir is written by the repo's build code: a wheel name there that
    /// is a symlink (to a host file, say the CA key) is never followed into the cache.
    #[test]
    fn a_symlinked_wheel_in_the_output_is_not_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let r = Resolver {
            cache_dir: tmp.path().join("cache"),
            ..resolver()
        };
        let out = tmp.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let secret = tmp.path().join("ca.key");
        std::fs::write(&secret, "PRIVATE KEY").unwrap();
        std::os::unix::fs::symlink(&secret, out.join("evil-1.0-py3-none-any.whl")).unwrap();
        std::fs::write(out.join("good-1.0-py3-none-any.whl"), "wheel").unwrap();
        let dir = r.built_dir();
        let (events, _rx) = Events::channel();
        r.keep_built(
            &[
                "evil-1.0-py3-none-any.whl".into(),
                "good-1.0-py3-none-any.whl".into(),
            ],
            &out,
            &dir,
            &events,
        )
        .unwrap();
        assert_eq!(built_wheels(&dir), ["good-1.0-py3-none-any.whl"]);
        assert!(!dir.join("evil-1.0-py3-none-any.whl").exists());
    }

    #[test]
    fn created_wheel_lines_are_read_across_chunks() {
        let mut c = CreatedWheels::default();
        c.push("Building wheels for collected packages: tinygreet\n  Building wheel for tinygreet (pyproject.toml): started\n");
        c.push("  Created wheel for tinygreet: filename=tinygreet-1.0-py3-none-");
        c.push("any.whl size=1234 sha256=abc\n  Stored in directory: /iac/scratch\n");
        c.push("Saved /iac/out/flask-3.1.3-py3-none-any.whl\n");
        c.push("  Created wheel for evil: filename=../../etc/x-1-py3-none-any.whl size=1\n");
        c.push("  Created wheel for last: filename=last-2.0-cp311-cp311-linux_x86_64.whl size=9");
        assert_eq!(
            c.finish(),
            [
                "tinygreet-1.0-py3-none-any.whl",
                "last-2.0-cp311-cp311-linux_x86_64.whl"
            ]
        );
        assert_eq!(created_wheel("Created wheel for x: no file"), None);
        assert!(!is_wheel_file_name(".x-1-py3-none-any.whl.tmp-1"));
        assert!(!is_wheel_file_name("x-1-py3-none-any.tar.gz"));
    }

    #[test]
    fn wheels_built_from_source_are_kept_and_offered_again() {
        let tmp = tempfile::tempdir().unwrap();
        let r = Resolver {
            cache_dir: tmp.path().join("cache"),
            ..resolver()
        };
        let out = tmp.path().join("out");
        std::fs::create_dir(&out).unwrap();
        for f in [
            "tinygreet-1.0-py3-none-any.whl",
            "flask-3.1.3-py3-none-any.whl",
        ] {
            std::fs::write(out.join(f), f).unwrap();
        }
        let dir = r.built_dir();
        assert!(built_wheels(&dir).is_empty(), "nothing kept yet");
        let (events, mut rx) = Events::channel();
        r.keep_built(
            &[
                "tinygreet-1.0-py3-none-any.whl".into(),
                "missing-1.0-py3-none-any.whl".into(),
            ],
            &out,
            &dir,
            &events,
        )
        .unwrap();
        drop(events);
        assert_eq!(built_wheels(&dir), ["tinygreet-1.0-py3-none-any.whl"]);
        assert_eq!(
            std::fs::read_to_string(dir.join("tinygreet-1.0-py3-none-any.whl")).unwrap(),
            "tinygreet-1.0-py3-none-any.whl"
        );
        let mut said = Vec::new();
        while let Ok(e) = rx.try_recv() {
            said.push(e.message);
        }
        assert!(
            said.iter()
                .any(|m| m.contains("built from source and cached")
                    && m.contains("tinygreet-1.0")
                    && !m.contains("missing")),
            "{said:?}"
        );
        // Offered to the next run like a find-links directory, readable by the resolver's user.
        let staged =
            stage_find_links(std::slice::from_ref(&dir), &tmp.path().join("links")).unwrap();
        assert!(staged[0].join("tinygreet-1.0-py3-none-any.whl").is_file());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&r.cache_dir)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "the cache stays private");
    }

    #[test]
    fn cache_key_depends_on_the_plan_the_index_and_the_image() {
        let r = resolver();
        let req = |s: &str| IndexReq {
            requirement: s.into(),
            hashes: vec![],
        };
        let plan = DepPlan {
            requirements: vec![req("six")],
            ..DepPlan::default()
        };
        let a = r.cache_key(&plan);
        assert_eq!(a, r.cache_key(&plan.clone()));
        let mut other = plan.clone();
        other.requirements = vec![req("six==1.16")];
        assert_ne!(a, r.cache_key(&other));
        let mut moved = plan.clone();
        moved.local = vec!["six".into()];
        moved.requirements.clear();
        assert_ne!(a, r.cache_key(&moved), "the list a line is in counts");
        let other_index = Resolver {
            index_url: Some("http://mirror/simple".into()),
            ..r.clone()
        };
        assert_ne!(a, other_index.cache_key(&plan));
        let other_image = Resolver {
            image_id: "sha256:def".into(),
            ..r.clone()
        };
        assert_ne!(a, other_image.cache_key(&plan), "another interpreter build");
    }
}
