//! [`DockerImageBuilder`]: the default [`ImageBuilder`], over the Docker engine API (bollard).
//!
//! `planned()` is pure (files only, no engine): it renders the Dockerfile and derives the build key
//! and tag. `build()` reuses an image whose `iac.build-key` label matches; otherwise it resolves the
//! base image of the entry's Python (`Entry::python`, else `images.default_python`): configured →
//! offline equivalent → built on demand by the [`BaseImageMaker`] when one is set (the `iac`
//! binary's bootstrap recipe) → an error naming `iac bootstrap --python X.Y`. It has the app's
//! dependencies resolved into wheels by the confined [`Resolver`] container on that base (no
//! repo-influenced input reaches pip on the host), writes the capped context tar to a temp file,
//! and streams it to the engine. The image build itself is confined too: no network (everything
//! it installs is in the context), memory and CPU limits (`images.build_memory_mib`,
//! `images.build_cpus`) and a process limit (`images.build_pids`, the `pids.max` of a cgroup
//! iac makes as the build's parent: [`super::cgroup`]). The engine's build output comes back as
//! [`Stage::Build`] events, kept in a bounded [`OutputTail`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bollard::query_parameters::{
    BuildImageOptionsBuilder, ListImagesOptionsBuilder, TagImageOptionsBuilder,
};
use futures::StreamExt;

use iac_core::{BuildError, BuildSpec, Events, ImageBuilder, ImageRef, Language, Stage};

use super::apt_base;
use super::aptfile::{self, AptPackages};
use super::base::BaseImageMaker;
use super::cgroup::{self, BuildCgroup};
use super::config::{ImageConfig, PythonChoice, parse_minor};
use super::context::{ContextInputs, agent_error, build_context, elf_interpreter};
use super::dockerfile::{
    APP_DOCKERFILE_NAME, APP_DOCKERFILE_TEMPLATE, BASE_IMAGE_ARG, DockerfileInputs,
    dockerfile_labels_key, render_dockerfile,
};
use super::key::{FileDigests, build_key, image_tag, wheel_listing};
use super::lockfile::Selection;
use super::resolver::Resolver;
use super::wheels::{AppDeps, tail};
use crate::engine::DockerEngine;
use crate::output_tail::OutputTail;

/// Label holding the build key on every image this builder makes.
pub const LABEL_BUILD_KEY: &str = "iac.build-key";
/// Label naming the base image a build actually used.
pub const LABEL_BASE_IMAGE: &str = "iac.base-image";

/// Builds app images on a Docker engine. Cheap to share (`Arc`); builds run concurrently.
pub struct DockerImageBuilder {
    engine: DockerEngine,
    config: ImageConfig,
    template: String,
    digests: FileDigests,
    /// Builds a missing Python base image on demand (none: the error names bootstrap).
    maker: Option<Arc<dyn BaseImageMaker>>,
    /// One on-demand base build at a time in this process (the recipe also locks across processes).
    making: tokio::sync::Mutex<()>,
    /// The Envoy image of the resolver's index proxy when `[images.resolver] proxy_image` is
    /// unset (the wiring passes the sidecar's).
    proxy_image: Option<String>,
}

/// Everything `planned()` derives, reused by `build()`.
struct Plan {
    image: ImageRef,
    dockerfile: String,
    deps: AppDeps,
    /// The app's Debian packages (apt.txt / Aptfile), installed into a derived base image.
    apt: Option<AptPackages>,
    otel_wheels: Option<PathBuf>,
    agent: PathBuf,
    python: PythonChoice,
}

impl DockerImageBuilder {
    /// Builds on `engine` (see [`crate::engine::DockerEngine::connect`]). Reads the template
    /// override now, so a bad `template_dir` fails early.
    pub fn new(engine: DockerEngine, config: ImageConfig) -> Result<Self, BuildError> {
        let template = match &config.template_dir {
            Some(dir) => {
                let p = dir.join(APP_DOCKERFILE_NAME);
                std::fs::read_to_string(&p).map_err(|e| BuildError::Template {
                    name: p.display().to_string(),
                    message: format!("cannot read the template override: {e}; expected {APP_DOCKERFILE_NAME} in images.template_dir"),
                })?
            }
            None => APP_DOCKERFILE_TEMPLATE.to_string(),
        };
        config
            .available_pythons()
            .and_then(|_| config.resolver.validate())
            .and_then(|_| config.validate_build_limits())
            .map_err(|message| BuildError::Template {
                name: "[images]".into(),
                message,
            })?;
        Ok(DockerImageBuilder {
            engine,
            config,
            template,
            digests: FileDigests::default(),
            maker: None,
            making: tokio::sync::Mutex::new(()),
            proxy_image: None,
        })
    }

    /// The Envoy image the resolver's index proxy runs when `[images.resolver] proxy_image` is
    /// unset (the wiring passes the sidecar image it resolved).
    pub fn with_proxy_image(mut self, image: impl Into<String>) -> Self {
        self.proxy_image = Some(image.into());
        self
    }

    /// The network of the apt base build. Debian packages' maintainer scripts are Debian's, not
    /// the repo's (the repo names validated packages only), and a classic build cannot use the
    /// index proxy: with the `proxy` resolver network it is the host's, as before.
    fn apt_network(&self) -> &str {
        match self.config.resolver.network.as_str() {
            super::resolver::PROXY_NETWORK => "host",
            other => other,
        }
    }

    /// Builds missing Python base images (and their wheelhouses) on demand with `maker`.
    pub fn with_base_maker(mut self, maker: Arc<dyn BaseImageMaker>) -> Self {
        self.maker = Some(maker);
        self
    }

    /// The Python (minor and base images) a spec builds on.
    fn python_for(&self, spec: &BuildSpec) -> Result<PythonChoice, BuildError> {
        self.config
            .python_images(spec.entry.python.as_ref().map(|p| p.version.as_str()))
            .map_err(|message| BuildError::Build {
                service: spec.service.as_str().to_string(),
                message,
            })
    }

    /// The `[images]` settings the builder was made with.
    pub fn config(&self) -> &ImageConfig {
        &self.config
    }

    /// The Dockerfile a spec renders to (what `iac inspect` can show).
    pub fn dockerfile(&self, spec: &BuildSpec) -> Result<String, BuildError> {
        Ok(self.plan(spec)?.dockerfile)
    }

    fn plan(&self, spec: &BuildSpec) -> Result<Plan, BuildError> {
        let python_app = spec.entry.language == Language::Python;
        let deps = if python_app {
            AppDeps::detect(
                &spec.source.dir,
                Some(&spec.entry),
                &Selection {
                    extras: spec.install.extras.clone(),
                    groups: spec.install.groups.clone(),
                },
            )?
        } else {
            AppDeps::none()
        };
        let apt = if python_app {
            aptfile::read(&spec.source.dir).map_err(|message| BuildError::Build {
                service: spec.service.as_str().to_string(),
                message,
            })?
        } else {
            None
        };
        let mut inputs = DockerfileInputs::new(spec, &self.config, deps.needed())?;
        // The key is a hash over the Dockerfile rendered without it; the Dockerfile that is built
        // carries it in its own LABEL (no extra layer for a build-time label).
        let unkeyed = render_dockerfile(&self.template, &inputs)?;
        let agent = self.config.agent_binary_path();
        let agent_digest = self
            .digests
            .digest(&agent)
            .map_err(|e| agent_error(&agent, e))?;
        let python = self.python_for(spec)?;
        let (otel_wheels, listing) = if inputs.otel {
            let dir = self.config.wheelhouse_for(&python);
            let listing = wheel_listing(&dir).map_err(|e| match python.is_default {
                true => e,
                false => BuildError::Context(format!(
                    "{e} (the wheelhouse of Python {v}: `iac bootstrap --python {v}` fills it; a deploy does so on demand)",
                    v = python.version
                )),
            })?;
            (Some(dir), listing)
        } else {
            (None, Vec::new())
        };
        // Extras and groups change the installed dependencies without changing the source or the
        // Dockerfile: part of the key (only when asked for, so other keys stay as they were).
        let source_digest = if spec.install.is_empty() || !python_app {
            spec.source.digest.clone()
        } else {
            format!(
                "{} extras={} groups={}",
                spec.source.digest,
                spec.install.extras.join(","),
                spec.install.groups.join(",")
            )
        };
        let key = build_key(&source_digest, &unkeyed, &agent_digest, &listing);
        inputs.build_key = key.clone();
        let dockerfile = render_dockerfile(&self.template, &inputs)?;
        let tag = image_tag(
            &self.config.tag_prefix,
            spec.project.as_str(),
            spec.service.as_str(),
            &key,
        );
        Ok(Plan {
            image: ImageRef {
                id: String::new(),
                tag,
                key,
                reused: false,
            },
            dockerfile,
            deps,
            apt,
            otel_wheels,
            agent,
            python,
        })
    }

    /// An image already built with this key: by tag first, else by label (then re-tagged).
    async fn existing(&self, tag: &str, key: &str) -> Result<Option<String>, BuildError> {
        if let Some(img) = self.engine.image(tag).await?
            && img.labels.get(LABEL_BUILD_KEY).map(String::as_str) == Some(key)
        {
            return Ok(Some(img.id));
        }
        let filters = HashMap::from([("label", vec![format!("{LABEL_BUILD_KEY}={key}")])]);
        let found = self
            .engine
            .docker()
            .list_images(Some(
                ListImagesOptionsBuilder::new().filters(&filters).build(),
            ))
            .await
            .map_err(|e| {
                BuildError::Engine(format!("listing images with {LABEL_BUILD_KEY}={key}: {e}"))
            })?;
        let Some(img) = found.into_iter().next() else {
            return Ok(None);
        };
        let (repo, t) = tag.rsplit_once(':').expect("image tags have a ':'");
        self.engine
            .docker()
            .tag_image(
                &img.id,
                Some(TagImageOptionsBuilder::new().repo(repo).tag(t).build()),
            )
            .await
            .map_err(|e| BuildError::Engine(format!("tagging {} as {tag}: {e}", img.id)))?;
        Ok(Some(img.id))
    }

    /// The configured base image of `python` if the engine has it, else the offline equivalent,
    /// else (with a [`BaseImageMaker`]) the offline equivalent built now.
    async fn resolve_base(
        &self,
        spec: &BuildSpec,
        python: &PythonChoice,
        events: &Events,
    ) -> Result<String, BuildError> {
        if let Some(found) = self.present_base(python, events).await? {
            return Ok(found);
        }
        let (configured, offline) = (&python.image, &python.offline_image);
        let missing = if offline.is_empty() || offline == configured {
            format!(
                "base image {configured} (Python {}) is not on this Docker engine",
                python.version
            )
        } else {
            format!(
                "base image {configured} (Python {}) is not on this Docker engine, nor is its offline equivalent {offline}",
                python.version
            )
        };
        if self.maker.is_some() && !offline.is_empty() {
            self.make_base(spec, python, &missing, events).await?;
            if let Some(found) = self.present_base(python, events).await? {
                return Ok(found);
            }
        }
        Err(BuildError::Build {
            service: spec.service.as_str().to_string(),
            message: format!(
                "{missing}; run `iac bootstrap{}` (or `make bootstrap` in an iac checkout) to pull it or build the offline equivalent",
                if python.is_default {
                    String::new()
                } else {
                    format!(" --python {}", python.version)
                }
            ),
        })
    }

    /// The configured image of `python` or its offline equivalent, whichever the engine has.
    async fn present_base(
        &self,
        python: &PythonChoice,
        events: &Events,
    ) -> Result<Option<String>, BuildError> {
        let (configured, offline) = (&python.image, &python.offline_image);
        match self.engine.first_present(&[configured, offline]).await? {
            Some(found) if found == configured => return Ok(Some(configured.clone())),
            Some(found) => {
                events.info(
                    Stage::Build,
                    format!("base image {configured} is not on this engine; using its offline equivalent {found}"),
                );
                return Ok(Some(found.to_string()));
            }
            None => {}
        }
        Ok(None)
    }

    /// Runs the [`BaseImageMaker`] for `python` (one at a time), saying what is built and why.
    async fn make_base(
        &self,
        spec: &BuildSpec,
        python: &PythonChoice,
        why: &str,
        events: &Events,
    ) -> Result<(), BuildError> {
        let Some(maker) = &self.maker else {
            return Ok(());
        };
        let _one = self.making.lock().await;
        // Another build may have made it while this one waited.
        let wheels_ready = !self.config.otel || has_wheels(&self.config.wheelhouse_for(python));
        if wheels_ready && self.present_base(python, events).await?.is_some() {
            return Ok(());
        }
        let asked = spec
            .entry
            .python
            .as_ref()
            .map(|p| format!(" (asked for by {})", p.source))
            .unwrap_or_default();
        events.info(
            Stage::Build,
            format!(
                "Python {}{asked}: {why}; building {} and its wheelhouse {} now with iac's bootstrap recipe (once: later builds reuse them)",
                python.version,
                python.offline_image,
                self.config.wheelhouse_for(python).display()
            ),
        );
        let t = Instant::now();
        maker
            .make(python, events)
            .await
            .map_err(|e| BuildError::Build {
                service: spec.service.as_str().to_string(),
                message: format!(
                    "building the base image {} of Python {} on demand failed: {e}",
                    python.offline_image, python.version
                ),
            })?;
        events.info(
            Stage::Build,
            format!(
                "Python {} base image {} ready ({:.1?})",
                python.version,
                python.offline_image,
                t.elapsed()
            ),
        );
        Ok(())
    }
}

#[async_trait]
impl ImageBuilder for DockerImageBuilder {
    fn planned(&self, spec: &BuildSpec) -> Result<ImageRef, BuildError> {
        Ok(self.plan(spec)?.image)
    }

    async fn build(&self, spec: &BuildSpec, events: &Events) -> Result<ImageRef, BuildError> {
        let events = events.for_service(&spec.service);
        let service = spec.service.as_str();
        let started = Instant::now();
        let python = self.python_for(spec)?;
        // A Python's wheelhouse is made with its base image: without it there is no build key yet.
        if spec.entry.language == Language::Python
            && self.config.otel
            && !has_wheels(&self.config.wheelhouse_for(&python))
            && self.maker.is_some()
        {
            let why = format!(
                "its wheelhouse {} is missing",
                self.config.wheelhouse_for(&python).display()
            );
            self.make_base(spec, &python, &why, &events).await?;
        }
        let plan = self.plan(spec)?;
        let mut image = plan.image;
        if let Some(id) = self.existing(&image.tag, &image.key).await? {
            events.info(
                Stage::Build,
                format!(
                    "reusing {} (build key {} unchanged)",
                    image.tag,
                    &image.key[7..19]
                ),
            );
            return Ok(ImageRef {
                id,
                reused: true,
                ..image
            });
        }
        let mut base = self.resolve_base(spec, &plan.python, &events).await?;
        if let Some(apt) = &plan.apt {
            // Native build dependencies: installed into a derived base (with network) that the
            // resolver and the offline image build both start from.
            let base_id = self
                .engine
                .image(&base)
                .await
                .map_err(|e| apt_base::build_error(service, format!("inspecting {base}: {e}")))?
                .map(|i| i.id)
                .unwrap_or_else(|| base.clone());
            base = apt_base::ensure(
                &self.engine,
                &base,
                &base_id,
                apt,
                self.apt_network(),
                &self.config.labels,
                &events,
            )
            .await
            .map_err(|m| apt_base::build_error(service, m))?;
        }

        if let Ok(bytes) = std::fs::read(&plan.agent)
            && let Some(interp) = elf_interpreter(&bytes)
        {
            events.warn(
                Stage::Build,
                format!(
                    "agent binary {} is dynamically linked ({interp}); it may not start on {base}. Build it static with scripts/build-agent.sh",
                    plan.agent.display()
                ),
            );
        }

        let app_wheels = if plan.deps.needed() {
            let image_id = self
                .engine
                .image(&base)
                .await
                .map_err(|e| BuildError::Build {
                    service: service.to_string(),
                    message: format!("inspecting the base image {base}: {e}"),
                })?
                .map(|i| i.id)
                .unwrap_or_else(|| base.clone());
            let mut find_links = vec![self.config.wheelhouse_for(&plan.python)];
            find_links.extend(self.config.resolver.find_links.iter().cloned());
            let resolver = Resolver {
                image: base.clone(),
                image_id,
                config: self.config.resolver.clone(),
                pip_args: self.config.pip_args.clone(),
                index_url: self.config.pip_index_url.clone(),
                extra_index_urls: self.config.pip_extra_index_urls.clone(),
                pass_env: self.config.pip_pass_env.clone(),
                // The bootstrap wheelhouse (setuptools, wheel, the OTel SDK) serves builds offline.
                find_links,
                cache_dir: self.config.app_wheel_cache_path(),
                scope: format!("{}/{service}", spec.project),
                python: parse_minor(&plan.python.version).map_err(|message| BuildError::Build {
                    service: service.to_string(),
                    message,
                })?,
                labels: self.config.labels.clone(),
                proxy_image: self
                    .config
                    .resolver
                    .proxy_image
                    .clone()
                    .or_else(|| self.proxy_image.clone()),
            };
            Some(
                resolver
                    .prepare(
                        self.engine.docker(),
                        service,
                        &spec.source.dir,
                        &plan.deps,
                        &events,
                    )
                    .await?,
            )
        } else {
            None
        };

        let t = Instant::now();
        let ctx = {
            let dockerfile = plan.dockerfile.clone();
            let source_dir = spec.source.dir.clone();
            let agent = plan.agent.clone();
            let otel = plan.otel_wheels.clone();
            let app = app_wheels.clone();
            let source_name = format!("{} ({})", spec.source.origin, spec.source.dir.display());
            let max_bytes = self.config.max_context_bytes;
            tokio::task::spawn_blocking(move || {
                build_context(&ContextInputs {
                    dockerfile: &dockerfile,
                    source_dir: &source_dir,
                    source_name: &source_name,
                    agent_binary: &agent,
                    otel_wheels: otel.as_deref(),
                    app_wheels: app.as_deref(),
                    max_bytes,
                })
            })
            .await
            .map_err(|e| BuildError::Context(format!("context task failed: {e}")))??
        };
        for skipped in &ctx.skipped {
            events.warn(
                Stage::Build,
                format!(
                    "left out of the image (not a file, dir or link): {}",
                    skipped.display()
                ),
            );
        }
        events.info(
            Stage::Build,
            format!(
                "building {} from {base}: context {} files, {:.1} MB ({:.1?})",
                image.tag,
                ctx.files,
                ctx.bytes as f64 / 1e6,
                t.elapsed()
            ),
        );

        // The built-in template labels the image itself, build key included. A replacement
        // template that does not (no `build_key` in its LABEL) gets the labels from the builder,
        // at the cost of one more layer commit.
        let labels: HashMap<String, String> = if dockerfile_labels_key(&plan.dockerfile, &image.key)
        {
            HashMap::new()
        } else {
            let mut l: HashMap<String, String> = self.config.labels.clone().into_iter().collect();
            l.insert(LABEL_BUILD_KEY.into(), image.key.clone());
            l
        };
        let buildargs = HashMap::from([(BASE_IMAGE_ARG.to_string(), base.clone())]);
        // Confined: everything the build installs is in the context, so it gets no network; repo
        // build steps (collectstatic, declared RUN steps) get bounded memory and CPU.
        let memory = self.config.build_memory_bytes();
        // Processes: the steps run under a cgroup of iac's holding `pids.max` (the build API
        // has no pids limit of its own); without one, the build goes on and says so.
        let cgroup = self.build_cgroup().await;
        let docker = match &cgroup {
            Ok(cg) => {
                events.debug(
                    Stage::Build,
                    format!(
                        "build steps run under cgroup {} (pids.max {})",
                        cg.dir().display(),
                        self.config.build_pids
                    ),
                );
                cgroup::with_cgroup_parent(self.engine.docker(), &cg.parent())
            }
            Err(why) => {
                events.warn(
                    Stage::Build,
                    format!(
                        "image build of {} without a process limit (images.build_pids): {why}",
                        image.tag
                    ),
                );
                self.engine.docker().clone()
            }
        };
        let opts = BuildImageOptionsBuilder::new()
            .dockerfile("Dockerfile")
            .t(&image.tag)
            .labels(&labels)
            .buildargs(&buildargs)
            .rm(true)
            .forcerm(true)
            .networkmode("none")
            .memory(memory)
            .memswap(memory)
            .cpuperiod(100_000)
            .cpuquota(100_000 * self.config.build_cpus as i32)
            .build();
        // Streamed from the temp file: a context is never held in memory whole.
        let body = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(ctx.file));
        let mut stream = docker.build_image(opts, None, Some(bollard::body_try_stream(body)));
        // What the repo's steps print is bounded: a tail for the error, a budget of events.
        let mut output = OutputTail::new(64 * 1024, 5000);
        let mut run_steps = RunSteps::default();
        let mut built_id = None;
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(text) = info.stream.as_deref().or(info.status.as_deref()) {
                        output.push_as_events(text.as_bytes(), &events, Stage::Build, "");
                        run_steps.push(text);
                    }
                    if let Some(id) = info.aux.and_then(|a| a.id) {
                        built_id = Some(id);
                    }
                }
                Err(e) => {
                    let message = match e {
                        bollard::errors::Error::DockerStreamError { error } => error,
                        other => other.to_string(),
                    };
                    output.finish_as_events(&events, Stage::Build, "");
                    let text = output.text();
                    let out = tail(&text, 20);
                    let message = match in_image_missing(&text) {
                        Some(pkg) => format!(
                            "{message}\nthe in-image build needs {pkg}, which the resolver did not fetch: a dependency only the app's setup.py or a dynamic pyproject declares is not known before the build. List it in requirements.txt or in [project] dependencies"
                        ),
                        None => message,
                    };
                    events.error(
                        Stage::Build,
                        format!("build of {} failed: {message}", image.tag),
                    );
                    drop(stream);
                    if let Ok(cg) = cgroup {
                        self.end_cgroup(cg, run_steps.ran, &events).await;
                    }
                    return Err(BuildError::Build {
                        service: service.to_string(),
                        message: if out.is_empty() {
                            format!("docker build of {}: {message}", image.tag)
                        } else {
                            format!(
                                "docker build of {}: {message}\nlast build output:\n{out}",
                                image.tag
                            )
                        },
                    });
                }
            }
        }
        drop(stream);
        if let Ok(cg) = cgroup {
            self.end_cgroup(cg, run_steps.ran, &events).await;
        }
        let id = match built_id {
            Some(id) => id,
            None => {
                let missing = |why: String| BuildError::Build {
                    service: service.to_string(),
                    message: format!(
                        "the build reported success but {} is not there: {why}\nlast build output:\n{}",
                        image.tag,
                        output.last_lines(20)
                    ),
                };
                self.engine
                    .image(&image.tag)
                    .await
                    .map_err(|e| missing(e.to_string()))?
                    .ok_or_else(|| missing("the engine has no such image".into()))?
                    .id
            }
        };
        events.info(
            Stage::Build,
            format!("built {} in {:.1?}", image.tag, started.elapsed()),
        );
        image.id = id;
        Ok(image)
    }
}

impl DockerImageBuilder {
    /// A cgroup with `pids.max = images.build_pids` for one build, or why there is none.
    async fn build_cgroup(&self) -> Result<BuildCgroup, String> {
        let (driver, version) = self
            .engine
            .cgroup_setup()
            .await
            .map_err(|e| e.to_string())?;
        let layout = cgroup::Layout::of(driver, version)?;
        let pids = self.config.build_pids;
        tokio::task::spawn_blocking(move || {
            BuildCgroup::create(&layout.root(), layout.hierarchies().as_deref(), pids)
        })
        .await
        .map_err(|e| format!("creating the build cgroup: {e}"))?
    }

    /// Removes a build's cgroup (explicitly, once the build's stream is over) and warns when a
    /// `RUN` step ran (`ran_steps`) but not in it (an engine on another host or in another
    /// cgroup namespace): then its limit did not apply. Cached steps and metadata steps start
    /// no process, so they prove nothing either way.
    async fn end_cgroup(&self, cg: BuildCgroup, ran_steps: bool, events: &Events) {
        if ran_steps && cg.peak() == Some(0) {
            events.warn(
                Stage::Build,
                format!(
                    "the engine ran no build step under {} (an engine on another host or in another cgroup namespace?): images.build_pids did not apply",
                    cg.dir().display()
                ),
            );
        }
        if let Err(e) = cg.remove().await {
            events.warn(Stage::Build, e);
        }
    }
}

/// Whether a build ran a `RUN` step (rather than taking it from the cache), read from the
/// classic builder's output: `Step N/M : RUN …` then ` ---> Running in <id>`.
#[derive(Debug, Default)]
struct RunSteps {
    /// The last step header seen was a `RUN`.
    in_run: bool,
    /// A `RUN` step ran in a container.
    ran: bool,
}

impl RunSteps {
    fn push(&mut self, text: &str) {
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("Step ") {
                self.in_run = rest.split_once(" : ").is_some_and(|(_, ins)| {
                    ins.trim_start().to_ascii_uppercase().starts_with("RUN ")
                });
            } else if self.in_run && line.trim_start().starts_with("---> Running in ") {
                self.ran = true;
            }
        }
    }
}

/// Whether `dir` holds at least one wheel.
fn has_wheels(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|rd| {
        rd.filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().ends_with(".whl"))
    })
}

/// The package an offline pip inside the build could not find, from the build output.
fn in_image_missing(output: &str) -> Option<String> {
    output.lines().find_map(|l| {
        l.split_once("No matching distribution found for ")
            .map(|(_, rest)| rest.trim().to_string())
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_a_run_step_that_ran_counts() {
        let mut r = super::RunSteps::default();
        r.push("Step 5/19 : RUN groupadd app\n ---> Using cache\n ---> b3ca6424541b\n");
        r.push("Step 17/19 : LABEL iac.project=\"p\"\n");
        r.push(" ---> Running in de67a105ce3c\n");
        assert!(
            !r.ran,
            "cached RUN and a LABEL's container start no process"
        );
        r.push("Step 16/19 : RUN if [ -s x ]; then pip install; fi");
        r.push("\n ---> Running in 6e893268bc5a\n");
        assert!(r.ran);
    }

    use super::*;

    #[test]
    fn in_image_missing_names_what_offline_pip_could_not_find() {
        let out = "Step 9/12 : RUN if [ -s /tmp/iac-wheels/app/iac-local.txt ]\nProcessing /app\nERROR: Could not find a version that satisfies the requirement flask (from evilpkg) (from versions: none)\nERROR: No matching distribution found for flask\n";
        assert_eq!(in_image_missing(out).as_deref(), Some("flask"));
        assert_eq!(in_image_missing("Step 1/2 : FROM x\n"), None);
    }
}
