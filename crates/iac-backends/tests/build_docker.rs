//! `DockerImageBuilder` against the real Docker engine: builds fixture apps, checks labels and
//! layout, reuse by build key, new tags on change, offline base fallback and clear failures.
//!
//! Needs the engine and the bootstrap images (`make bootstrap` / scripts/bootstrap-images.sh):
//! skipped with a note when they are absent, unless `IAC_REQUIRE_DOCKER=1` (then they fail).
//! Nothing here touches the internet: the resolver container runs pip with `--no-index` against
//! the wheelhouse or a find-links directory the test makes. Every image and resolver container
//! carries `iac.test=<id>` and is removed by label, even on panic.
//! Run: `cargo test -p iac-backends --test build_docker -- --nocapture`

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListImagesOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveImageOptionsBuilder,
};
use iac_backends::build::{DockerImageBuilder, ImageConfig, LABEL_BUILD_KEY};
use iac_backends::engine::DockerEngine;
use iac_core::{
    BuildError, BuildSpec, Entry, Events, ImageBuilder, Language, ProjectName, ServiceName, Source,
};

/// A builder on the engine `DOCKER_HOST` names (else the local socket), as `iac` builds one.
async fn builder_for(cfg: ImageConfig) -> Result<DockerImageBuilder, iac_core::BuildError> {
    let engine = DockerEngine::connect(None, Duration::from_secs(300)).await?;
    DockerImageBuilder::new(engine, cfg)
}

const OFFLINE_BASE: &str = "iac/python:3.11-bookworm";

/// Removes every container and image labelled `iac.test=<id>` when dropped (also on panic).
struct Cleanup {
    id: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let id = self.id.clone();
        // Drop may run inside the test's runtime: clean up from a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(remove_images_labelled(&id));
        })
        .join();
    }
}

async fn remove_images_labelled(test_id: &str) {
    let Ok(docker) = Docker::connect_with_defaults() else {
        return;
    };
    let Ok(docker) = docker.negotiate_version().await else {
        return;
    };
    let filters = HashMap::from([("label", vec![format!("iac.test={test_id}")])]);
    if let Ok(containers) = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
    {
        for c in containers.into_iter().filter_map(|c| c.id) {
            let opts = RemoveContainerOptionsBuilder::new().force(true).build();
            if let Err(e) = docker.remove_container(&c, Some(opts)).await {
                eprintln!("cleanup: removing container {c}: {e}");
            }
        }
    }
    let Ok(images) = docker
        .list_images(Some(
            ListImagesOptionsBuilder::new()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
    else {
        return;
    };
    for img in images {
        // noprune: the unlabelled shared layers (base + OTel SDK + agent) are build cache that
        // every later build reuses; only what this test labelled is removed.
        let opts = RemoveImageOptionsBuilder::new()
            .force(true)
            .noprune(true)
            .build();
        match docker.remove_image(&img.id, Some(opts), None).await {
            Ok(_)
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => eprintln!("cleanup: removing {}: {e}", img.id),
        }
    }
}

/// The engine and the offline base image, or a skip (a failure with IAC_REQUIRE_DOCKER=1).
async fn engine() -> Option<Docker> {
    let required = std::env::var("IAC_REQUIRE_DOCKER").is_ok_and(|v| v == "1");
    let skip = |why: String| {
        assert!(!required, "IAC_REQUIRE_DOCKER=1 but {why}");
        eprintln!("SKIP: {why}");
        None
    };
    let docker = match Docker::connect_with_defaults() {
        Ok(d) => d,
        Err(e) => return skip(format!("no Docker engine: {e}")),
    };
    let docker = match docker.negotiate_version().await {
        Ok(d) => d,
        Err(e) => return skip(format!("Docker engine unreachable: {e}")),
    };
    if docker.inspect_image(OFFLINE_BASE).await.is_err() {
        return skip(format!(
            "{OFFLINE_BASE} is missing: run scripts/bootstrap-images.sh"
        ));
    }
    Some(docker)
}

fn wheelhouse() -> PathBuf {
    ImageConfig::default().wheelhouse_path()
}

fn test_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("b{}x{nanos:x}", std::process::id())
}

/// A static executable standing in for the agent (the real static one when it was built).
fn agent_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("IAC_TEST_AGENT_BINARY") {
        return PathBuf::from(p);
    }
    let real = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/x86_64-unknown-linux-gnu/release/iac-agent");
    if real.is_file() {
        return real;
    }
    PathBuf::from("/sbin/ldconfig")
}

fn config(test: &str, dir: &Path) -> ImageConfig {
    ImageConfig {
        // Absent everywhere: the offline equivalent is what gets used (and said so).
        base_image: format!("iac-test/absent-base:{test}"),
        offline_base_image: OFFLINE_BASE.into(),
        agent_binary: Some(agent_binary()),
        wheelhouse: Some(wheelhouse()),
        pip_args: vec!["--no-index".into()],
        app_wheel_cache: Some(dir.join("app-wheels")),
        labels: BTreeMap::from([("iac.test".into(), test.into())]),
        ..ImageConfig::default()
    }
}

fn spec(project: &str, service: &str, dir: &Path, digest: &str, argv: &[&str]) -> BuildSpec {
    BuildSpec {
        project: ProjectName::new(project).unwrap(),
        service: ServiceName::new(service).unwrap(),
        source: Source {
            dir: dir.to_path_buf(),
            commit: None,
            digest: digest.into(),
            origin: "test fixture".into(),
        },
        entry: Entry {
            language: Language::Python,
            rule: "main.py".into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            why: "root main.py".into(),
            ..Default::default()
        },
        install: Default::default(),
    }
}

fn drain(rx: &mut iac_core::EventReceiver) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push(e.message);
    }
    out
}

fn agent_is_real() -> bool {
    agent_binary().file_name().is_some_and(|n| n == "iac-agent")
}

/// Runs the image's own CMD detached (labelled) until `needle` shows in its logs; returns the logs.
fn run_cmd_until(image: &str, test: &str, needle: &str, within: Duration) -> String {
    let out = std::process::Command::new("docker")
        .args([
            "run",
            "-d",
            "--network",
            "none",
            "--label",
            &format!("iac.test={test}"),
            image,
        ])
        .output()
        .expect("docker CLI");
    assert!(
        out.status.success(),
        "docker run {image}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let deadline = Instant::now() + within;
    let mut logs = String::new();
    while Instant::now() < deadline {
        let out = std::process::Command::new("docker")
            .args(["logs", &id])
            .output()
            .expect("docker CLI");
        logs = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if logs.contains(needle) {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let _ = std::process::Command::new("docker")
        .args(["rm", "-f", &id])
        .output();
    logs
}

/// `docker run --rm --entrypoint <argv0> image argv[1..]` (labelled), returning stdout.
fn run_in(image: &str, test: &str, argv: &[&str]) -> String {
    let out = std::process::Command::new("docker")
        .args([
            "run",
            "--rm",
            "--network",
            "none",
            "--label",
            &format!("iac.test={test}"),
            "--entrypoint",
            argv[0],
            image,
        ])
        .args(&argv[1..])
        .output()
        .expect("docker CLI");
    assert!(
        out.status.success(),
        "{argv:?} in {image} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn builds_python_app_reuses_it_and_rebuilds_on_change() {
    let Some(docker) = engine().await else { return };
    let test = test_id();
    let _cleanup = Cleanup { id: test.clone() };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join(".git")).unwrap();
    std::fs::write(src.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
    std::fs::write(
        src.join("main.py"),
        "import os\nprint('hello from the fixture', os.environ.get('GREETING', '(no GREETING)'))\n",
    )
    .unwrap();
    let project = format!("p{test}");
    let builder = builder_for(config(&test, dir.path())).await.unwrap();
    let spec1 = spec(
        &project,
        "hello",
        &src,
        "sha256:fixture-v1",
        &["python", "/app/main.py"],
    );

    let planned = builder.planned(&spec1).unwrap();
    let (events, mut rx) = Events::channel();
    let t = Instant::now();
    let built = builder.build(&spec1, &events).await.unwrap();
    let first_build = t.elapsed();
    let messages = drain(&mut rx);
    assert!(!built.reused);
    assert_eq!(
        built.tag, planned.tag,
        "planned() predicts the tag build() makes"
    );
    assert_eq!(built.key, planned.key);
    assert!(
        built.tag.starts_with(&format!("iac/{project}-hello:")),
        "{}",
        built.tag
    );
    assert_eq!(built.tag.rsplit(':').next().unwrap(), &built.key[7..19]);
    assert!(
        messages
            .iter()
            .any(|m| m.contains("offline equivalent") && m.contains(OFFLINE_BASE)),
        "an event says the offline base was used: {messages:#?}"
    );
    assert!(
        messages.iter().any(|m| m.starts_with("Step ")),
        "build output streamed as events: {messages:#?}"
    );

    let img = docker.inspect_image(&built.tag).await.unwrap();
    assert_eq!(img.id.as_deref(), Some(built.id.as_str()));
    eprintln!(
        "built {} ({} MB) in {first_build:?}",
        built.tag,
        img.size.unwrap_or(0) / 1_000_000
    );
    let cfg = img.config.unwrap();
    let labels = cfg.labels.unwrap();
    assert_eq!(labels["iac.project"], project);
    assert_eq!(labels["iac.service"], "hello");
    assert_eq!(labels["iac.entry"], r#"["python","/app/main.py"]"#);
    assert_eq!(labels["iac.source-digest"], "sha256:fixture-v1");
    assert_eq!(labels[LABEL_BUILD_KEY], built.key);
    assert_eq!(labels["iac.base-image"], OFFLINE_BASE);
    assert_eq!(labels["iac.test"], test);
    let cmd = cfg.cmd.unwrap();
    assert_eq!(
        cmd,
        [
            "iac-agent",
            "--listen",
            "127.0.0.1:50051",
            "--user",
            "app",
            "--otel-auto-instrument",
            "/opt/iac/venv",
            "--",
            "python",
            "/app/main.py"
        ]
    );
    assert!(cfg.exposed_ports.unwrap().iter().any(|p| p == "50051/tcp"));
    // After the app's files, only the per-service metadata, each a layer commit on the classic
    // builder (what makes a rebuild slow): one LABEL (build key included, so the builder adds
    // none of its own), ENV, CMD; EXPOSE 50051 and WORKDIR /app are shared layers further up.
    let history = docker.image_history(&built.tag).await.unwrap();
    let app_copy = history
        .iter()
        .position(|h| h.created_by.contains("COPY") && h.created_by.contains(" in /app/"))
        .unwrap_or_else(|| panic!("no COPY of the app in {history:#?}"));
    let after: Vec<String> = history[..app_copy]
        .iter()
        .rev()
        .map(|h| {
            let by = h.created_by.trim_start_matches("/bin/sh -c #(nop) ").trim();
            by.split_whitespace().next().unwrap_or_default().to_string()
        })
        .collect();
    assert_eq!(after, ["LABEL", "ENV", "CMD"], "{history:#?}");

    // The layout: agent executable, app without .git, the non-root user, the OTel SDK, the env.
    let listing = run_in(
        &built.tag,
        &test,
        &["ls", "-la", "/usr/local/bin/iac-agent", "/app"],
    );
    assert!(
        listing.contains("-rwxr-xr-x") && listing.contains("iac-agent"),
        "{listing}"
    );
    assert!(
        listing.contains("main.py") && !listing.contains(".git"),
        "{listing}"
    );
    assert_eq!(
        run_in(&built.tag, &test, &["id", "-u", "app"]).trim(),
        "10001"
    );
    let ran = run_in(&built.tag, &test, &["python", "/app/main.py"]);
    assert_eq!(
        ran.trim(),
        "hello from the fixture (no GREETING)",
        "the image carries no service env (the container gets it at creation)"
    );
    let sdk = run_in(
        &built.tag,
        &test,
        &[
            "python",
            "-c",
            "import opentelemetry.sdk, sys; print(sys.version_info[:2])",
        ],
    );
    assert_eq!(sdk.trim(), "(3, 11)");
    // What the agent's --otel-auto-instrument /opt/iac/venv finds and sets (iac-agent's otel.rs),
    // done by hand: one sitecustomize.py, and with it on PYTHONPATH the SDK is configured (a
    // span reaches the console exporter; the API alone would drop it).
    let found = run_in(
        &built.tag,
        &test,
        &[
            "sh",
            "-c",
            "ls -d /opt/iac/venv/lib/python*/site-packages/opentelemetry/instrumentation/auto_instrumentation/sitecustomize.py",
        ],
    );
    let sitecustomize: Vec<&str> = found.lines().collect();
    assert_eq!(sitecustomize.len(), 1, "{found}");
    let auto_dir = sitecustomize[0].trim_end_matches("/sitecustomize.py");
    let traced = run_in(
        &built.tag,
        &test,
        &[
            "env",
            &format!("PYTHONPATH={auto_dir}:/app"),
            "OTEL_TRACES_EXPORTER=console",
            "python",
            "-c",
            "from opentelemetry import trace\n\
             with trace.get_tracer('t').start_as_current_span('iac-probe-span'): pass\n\
             trace.get_tracer_provider().force_flush()",
        ],
    );
    assert!(
        traced.contains("\"name\": \"iac-probe-span\"") && traced.contains(&project),
        "the auto-instrumented interpreter exports spans with the image's resource: {traced}"
    );
    if agent_is_real() {
        // The image's own CMD: the agent starts the entry as `app` and tees its output.
        let logs = run_cmd_until(
            &built.tag,
            &test,
            "hello from the fixture",
            Duration::from_secs(30),
        );
        assert!(
            logs.contains("hello from the fixture (no GREETING)"),
            "{logs}"
        );
    } else {
        eprintln!(
            "note: stand-in agent {}; the image's CMD is not run",
            agent_binary().display()
        );
    }

    // Unchanged inputs: reused, no build.
    let t = Instant::now();
    let again = builder.build(&spec1, &Events::discard()).await.unwrap();
    let reuse = t.elapsed();
    assert!(again.reused, "same build key → reused");
    assert_eq!(
        (again.id.as_str(), again.tag.as_str()),
        (built.id.as_str(), built.tag.as_str())
    );
    assert!(
        reuse < Duration::from_secs(3),
        "reuse took {reuse:?} (first build {first_build:?})"
    );
    eprintln!("first build {first_build:?}, reuse {reuse:?}");

    // A changed source: a new tag and a new image.
    std::fs::write(src.join("main.py"), "print('changed')\n").unwrap();
    let spec2 = spec(
        &project,
        "hello",
        &src,
        "sha256:fixture-v2",
        &["python", "/app/main.py"],
    );
    let changed = builder.build(&spec2, &Events::discard()).await.unwrap();
    assert!(!changed.reused);
    assert_ne!(changed.tag, built.tag);
    assert_ne!(changed.id, built.id);
    assert_eq!(
        run_in(&changed.tag, &test, &["python", "/app/main.py"]).trim(),
        "changed"
    );
}

#[tokio::test]
async fn builds_a_package_with_requirements_offline() {
    let Some(_docker) = engine().await else {
        return;
    };
    let test = test_id();
    let _cleanup = Cleanup { id: test.clone() };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("src/greeter")).unwrap();
    std::fs::write(
        src.join("pyproject.toml"),
        "[project]\nname = \"greeter\"\nversion = \"0.1.0\"\ndependencies = [\"packaging\"]\n\n[project.scripts]\ngreeter = \"greeter.cli:main\"\n\n[build-system]\nrequires = [\"setuptools>=61\"]\nbuild-backend = \"setuptools.build_meta\"\n",
    )
    .unwrap();
    std::fs::write(src.join("src/greeter/__init__.py"), "").unwrap();
    std::fs::write(
        src.join("src/greeter/cli.py"),
        "import idna, packaging\n\ndef main():\n    print('greeter', idna.encode('example.com').decode())\n",
    )
    .unwrap();
    std::fs::write(src.join("requirements.txt"), "idna\n").unwrap();
    let builder = builder_for(config(&test, dir.path())).await.unwrap();
    let spec = spec(
        &format!("p{test}"),
        "greeter",
        &src,
        "sha256:greeter-v1",
        &["greeter"],
    );
    let built = builder.build(&spec, &Events::discard()).await.unwrap();
    assert_eq!(
        run_in(&built.tag, &test, &["greeter"]).trim(),
        "greeter example.com"
    );
    assert!(
        !src.join("build").exists(),
        "the host build ran on a copy, not in the source tree"
    );
}

#[tokio::test]
async fn missing_requirement_is_a_build_error_naming_service_and_package() {
    let Some(_docker) = engine().await else {
        return;
    };
    let test = test_id();
    let _cleanup = Cleanup { id: test.clone() };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("main.py"), "print('x')\n").unwrap();
    std::fs::write(
        src.join("requirements.txt"),
        "iac-no-such-package-zzz==1.0\n",
    )
    .unwrap();
    let empty = dir.path().join("empty-index");
    std::fs::create_dir(&empty).unwrap();
    let mut cfg = config(&test, dir.path());
    cfg.resolver.find_links = vec![empty.clone()];
    let builder = builder_for(cfg).await.unwrap();
    let err = builder
        .build(
            &spec(
                &format!("p{test}"),
                "needy",
                &src,
                "sha256:needy",
                &["python", "/app/main.py"],
            ),
            &Events::discard(),
        )
        .await
        .unwrap_err();
    match &err {
        BuildError::Build { service, message } => {
            assert_eq!(service, "needy");
            assert!(message.contains("iac-no-such-package-zzz"), "{message}");
        }
        other => panic!("expected BuildError::Build, got {other:?}"),
    }
    assert!(err.to_string().contains("needy"), "{err}");
}

#[tokio::test]
async fn missing_base_images_tell_the_user_to_bootstrap() {
    let Some(_docker) = engine().await else {
        return;
    };
    let test = test_id();
    let _cleanup = Cleanup { id: test.clone() };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("main.py"), "print('x')\n").unwrap();
    let mut cfg = config(&test, dir.path());
    cfg.offline_base_image = format!("iac-test/absent-offline:{test}");
    let builder = builder_for(cfg).await.unwrap();
    let err = builder
        .build(
            &spec(
                &format!("p{test}"),
                "nobase",
                dir.path(),
                "sha256:nobase",
                &["python", "/app/main.py"],
            ),
            &Events::discard(),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nobase") && err.contains("make bootstrap") && err.contains("absent-base"),
        "{err}"
    );
}

#[tokio::test]
async fn failing_dockerfile_step_is_a_build_error_with_the_output() {
    let Some(docker) = engine().await else { return };
    let test = test_id();
    let _cleanup = Cleanup { id: test.clone() };
    let (_dir, builder, spec) = with_template(
        &test,
        "broken",
        "ARG IAC_BASE_IMAGE={{ base_image }}\nFROM ${IAC_BASE_IMAGE}\nLABEL iac.project={{ project | dq }}{% for l in labels %} {{ l.key }}={{ l.value | dq }}{% endfor %}\n\nRUN echo about to fail for {{ service }} && exit 3\n",
    )
    .await;
    let (events, mut rx) = Events::channel();
    let err = builder.build(&spec, &events).await.unwrap_err();
    let BuildError::Build { service, message } = &err else {
        panic!("expected BuildError::Build, got {err:?}")
    };
    assert_eq!(service, "broken");
    assert!(message.contains("returned a non-zero code: 3"), "{message}");
    assert!(
        message.contains("about to fail for broken"),
        "the error carries the build output: {message}"
    );
    assert!(
        drain(&mut rx).iter().any(|m| m.contains("failed")),
        "an error event was emitted"
    );
    let planned = builder.planned(&spec).unwrap();
    assert!(
        docker.inspect_image(&planned.tag).await.is_err(),
        "no image is tagged after a failed build"
    );
}

#[tokio::test]
async fn a_replacement_template_without_the_key_gets_it_from_the_builder() {
    let Some(docker) = engine().await else { return };
    let test = test_id();
    let _cleanup = Cleanup { id: test.clone() };
    // No `build_key` anywhere: the builder must label the image itself, or a later deploy could
    // never find the image again (it looks images up by that label).
    let (_dir, builder, spec) = with_template(
        &test,
        "custom",
        "ARG IAC_BASE_IMAGE={{ base_image }}\nFROM ${IAC_BASE_IMAGE}\nCMD [\"true\"]\n",
    )
    .await;
    let built = builder.build(&spec, &Events::discard()).await.unwrap();
    let labels = docker
        .inspect_image(&built.tag)
        .await
        .unwrap()
        .config
        .and_then(|c| c.labels)
        .unwrap_or_default();
    assert_eq!(labels.get(LABEL_BUILD_KEY), Some(&built.key), "{labels:?}");
    assert_eq!(labels.get("iac.test"), Some(&test), "{labels:?}");
    let again = builder.build(&spec, &Events::discard()).await.unwrap();
    assert!(again.reused && again.id == built.id, "{again:?}");
}

/// A builder whose app template is `template` (a replacement in its own `template_dir`), and
/// the spec of service `service` from a one-file source, both in the returned temp dir.
async fn with_template(
    test: &str,
    service: &str,
    template: &str,
) -> (tempfile::TempDir, DockerImageBuilder, BuildSpec) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("main.py"), "print('x')\n").unwrap();
    let templates = dir.path().join("templates");
    std::fs::create_dir(&templates).unwrap();
    std::fs::write(templates.join("app.Dockerfile.tmpl"), template).unwrap();
    let cfg = ImageConfig {
        template_dir: Some(templates),
        ..config(test, dir.path())
    };
    let builder = builder_for(cfg).await.unwrap();
    let spec = spec(
        &format!("p{test}"),
        service,
        &src,
        &format!("sha256:{service}"),
        &["python", "/app/main.py"],
    );
    (dir, builder, spec)
}

/// Writes `files` (path, content) under `dir`.
fn write_tree(dir: &Path, files: &[(&str, &str)]) {
    for (rel, text) in files {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
}

/// Python that writes `marker` (creating its directory): on the host if the host runs it, in
/// the build container when the image build does.
fn marker_code(marker: &Path, what: &str) -> String {
    format!(
        "import pathlib\nm = pathlib.Path({:?})\nm.parent.mkdir(parents=True, exist_ok=True)\nm.write_text({what:?})\n",
        marker.display().to_string()
    )
}

/// The attack of issue 9 item 1: a repo whose setup.py writes a file when executed. Deploying it
/// must not run it on the host; the image build (offline) builds and installs the package.
#[tokio::test]
async fn setup_py_runs_only_inside_the_image_build() {
    let Some(_docker) = engine().await else {
        return;
    };
    let test = test_id();
    let _cleanup = Cleanup { id: test.clone() };
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("host-marker/setup-py-ran");
    let src = dir.path().join("src");
    write_tree(
        &src,
        &[
            (
                "setup.py",
                &format!(
                    "{}from setuptools import setup\nsetup(name='evilpkg', version='1.0', py_modules=['evilmod'])\n",
                    marker_code(&marker, "setup.py ran")
                ),
            ),
            ("evilmod.py", "NAME = 'evilmod installed'\n"),
            ("requirements.txt", "idna\n"),
        ],
    );
    let builder = builder_for(config(&test, dir.path())).await.unwrap();
    let spec = spec(
        &format!("p{test}"),
        "evil",
        &src,
        "sha256:evil-setup-py",
        &["python", "-c", "import evilmod"],
    );
    let built = builder.build(&spec, &Events::discard()).await.unwrap();
    assert!(
        !marker.exists(),
        "setup.py ran on the host: {}",
        marker.display()
    );
    // Installed into the image's venv (-I: not importable from /app, the working directory).
    assert_eq!(
        run_in(
            &built.tag,
            &test,
            &[
                "python",
                "-I",
                "-c",
                "import evilmod, idna; print(evilmod.NAME)"
            ]
        )
        .trim(),
        "evilmod installed"
    );
    // …by a setup.py that did run, inside the build container.
    assert_eq!(
        run_in(&built.tag, &test, &["cat", &marker.display().to_string()]).trim(),
        "setup.py ran"
    );
}

/// The same with a PEP 517 build backend that lives in the repo (`backend-path`).
#[tokio::test]
async fn in_tree_build_backend_runs_only_inside_the_image_build() {
    let Some(_docker) = engine().await else {
        return;
    };
    let test = test_id();
    let _cleanup = Cleanup { id: test.clone() };
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("host-marker/backend-ran");
    let src = dir.path().join("src");
    write_tree(
        &src,
        &[
            (
                "pyproject.toml",
                "[build-system]\nrequires = [\"setuptools>=61\"]\nbuild-backend = \"evil_backend\"\nbackend-path = [\".\"]\n\n[project]\nname = \"evilbackend\"\nversion = \"1.0\"\ndependencies = [\"idna\"]\n\n[tool.setuptools]\npy-modules = [\"evilapp\"]\n",
            ),
            (
                "evil_backend.py",
                &format!(
                    "{}from setuptools.build_meta import *\n",
                    marker_code(&marker, "backend ran")
                ),
            ),
            ("evilapp.py", "import idna\nNAME = 'evilapp installed'\n"),
        ],
    );
    let builder = builder_for(config(&test, dir.path())).await.unwrap();
    let spec = spec(
        &format!("p{test}"),
        "backend",
        &src,
        "sha256:evil-backend",
        &["python", "-c", "import evilapp"],
    );
    let built = builder.build(&spec, &Events::discard()).await.unwrap();
    assert!(
        !marker.exists(),
        "the repo's build backend ran on the host: {}",
        marker.display()
    );
    assert_eq!(
        run_in(
            &built.tag,
            &test,
            &["python", "-I", "-c", "import evilapp; print(evilapp.NAME)"]
        )
        .trim(),
        "evilapp installed"
    );
    assert_eq!(
        run_in(&built.tag, &test, &["cat", &marker.display().to_string()]).trim(),
        "backend ran"
    );
}

/// `python3 -m pip` imports `pip` from its working directory first: the resolver must not run in
/// the repo (it never sees the repo at all), or a repo's `pip/` package would run.
#[tokio::test]
async fn a_repo_pip_package_is_never_imported_by_the_resolver() {
    let Some(_docker) = engine().await else {
        return;
    };
    let test = test_id();
    let _cleanup = Cleanup { id: test.clone() };
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("host-marker/pip-shadowed");
    let src = dir.path().join("src");
    let code = marker_code(&marker, "shadow pip ran");
    write_tree(
        &src,
        &[
            ("requirements.txt", "idna\n"),
            ("pip/__init__.py", &code),
            ("pip/__main__.py", &code),
            ("main.py", "import idna\nprint('ok')\n"),
        ],
    );
    let builder = builder_for(config(&test, dir.path())).await.unwrap();
    let spec = spec(
        &format!("p{test}"),
        "shadow",
        &src,
        "sha256:shadow-pip",
        &["python", "/app/main.py"],
    );
    let built = builder.build(&spec, &Events::discard()).await.unwrap();
    assert!(!marker.exists(), "the repo's pip/ ran on the host");
    assert_eq!(
        run_in(&built.tag, &test, &["python", "/app/main.py"]).trim(),
        "ok",
        "idna came from the resolver's wheels"
    );
}

/// Requirement lines that point pip elsewhere are refused before pip runs, naming file and line.
#[tokio::test]
async fn requirements_pointing_elsewhere_are_refused_with_file_and_line() {
    let Some(_docker) = engine().await else {
        return;
    };
    let test = test_id();
    let _cleanup = Cleanup { id: test.clone() };
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside.txt");
    std::fs::write(&outside, "idna\n").unwrap();
    let builder = builder_for(config(&test, dir.path())).await.unwrap();
    for (i, (text, at, needle)) in [
        (
            "idna\n--extra-index-url http://127.0.0.1:9/simple\n".to_string(),
            "requirements.txt:2",
            "--extra-index-url",
        ),
        (
            format!("-r {}\n", outside.display()),
            "requirements.txt:1",
            "absolute",
        ),
        (
            "-e ../../elsewhere\n".to_string(),
            "requirements.txt:1",
            "leaves the repository",
        ),
        // The bypass of the second review: it used to clear iac's --only-binary=:all: and make
        // host pip run an sdist's hooks as root.
        (
            "--only-binary=:none:\nsomepkg==1.0\n".to_string(),
            "requirements.txt:1",
            "--only-binary is not allowed",
        ),
        (
            "somepkg==1.0 \\\n  --no-binary=:all:\n".to_string(),
            "requirements.txt:1",
            "not allowed after a requirement",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let src = dir.path().join(format!("src{i}"));
        write_tree(
            &src,
            &[("requirements.txt", &text), ("main.py", "print(1)\n")],
        );
        let err = builder
            .build(
                &spec(
                    &format!("p{test}"),
                    "refused",
                    &src,
                    &format!("sha256:refused{i}"),
                    &["python", "/app/main.py"],
                ),
                &Events::discard(),
            )
            .await
            .unwrap_err();
        let BuildError::Build { service, message } = &err else {
            panic!("expected BuildError::Build, got {err:?}")
        };
        assert_eq!(service, "refused");
        assert!(
            message.contains(at) && message.contains(needle),
            "{text:?}: {message}"
        );
    }
}

/// Build contexts never carry `.git`, `.env*`, `.iac/` or what the repo's `.dockerignore` leaves
/// out: the image built from such a tree does not contain them.
#[tokio::test]
async fn images_hold_no_env_files_state_or_dockerignored_paths() {
    let Some(_docker) = engine().await else {
        return;
    };
    let test = test_id();
    let _cleanup = Cleanup { id: test.clone() };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_tree(
        &src,
        &[
            ("main.py", "print('hi')\n"),
            (".env", "SUPABASE_SERVICE_ROLE_KEY=leak\n"),
            (".env.production", "JWT=leak\n"),
            ("sub/.env", "X=leak\n"),
            (".iac/projects/p/state.json", "{}\n"),
            (".git/HEAD", "ref\n"),
            ("private/ca.key", "KEY\n"),
            ("logs/a.log", "x\n"),
            ("logs/keep.log", "kept\n"),
            (".dockerignore", "private\nlogs\n!logs/keep.log\n"),
        ],
    );
    let mut cfg = config(&test, dir.path());
    cfg.otel = false;
    let builder = builder_for(cfg).await.unwrap();
    let built = builder
        .build(
            &spec(
                &format!("p{test}"),
                "ctx",
                &src,
                "sha256:ctx",
                &["python", "/app/main.py"],
            ),
            &Events::discard(),
        )
        .await
        .unwrap();
    let listing = run_in(&built.tag, &test, &["find", "/app", "-mindepth", "1"]);
    let mut paths: Vec<&str> = listing.lines().collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "/app/.dockerignore",
            "/app/logs",
            "/app/logs/keep.log",
            "/app/main.py",
            "/app/sub"
        ],
        "{listing}"
    );
}

/// The context is capped: a tree over `max_context_bytes` is refused naming the source and cap.
#[tokio::test]
async fn a_context_over_the_cap_is_refused() {
    let Some(_docker) = engine().await else {
        return;
    };
    let test = test_id();
    let _cleanup = Cleanup { id: test.clone() };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_tree(&src, &[("main.py", "print(1)\n")]);
    std::fs::write(src.join("blob.bin"), vec![0u8; 3 << 20]).unwrap();
    let mut cfg = config(&test, dir.path());
    cfg.otel = false;
    cfg.max_context_bytes = 2 << 20;
    let builder = builder_for(cfg).await.unwrap();
    let err = builder
        .build(
            &spec(
                &format!("p{test}"),
                "huge",
                &src,
                "sha256:huge",
                &["python", "/app/main.py"],
            ),
            &Events::discard(),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("test fixture") && err.contains(&(2u64 << 20).to_string()),
        "{err}"
    );
}

/// A dependency that only exists as an sdist builds — in the resolver container, never on the
/// host: its setup.py records who ran it and what it could see, and the app imports the result.
#[tokio::test]
async fn sdist_only_dependencies_build_in_the_confined_resolver() {
    let Some(docker) = engine().await else {
        return;
    };
    let test = test_id();
    let _cleanup = Cleanup { id: test.clone() };
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("host-marker/sdist-ran");
    // A service on the host's loopback the build code must not reach (issue 22: the resolver
    // gets network only for the index; here, with --no-index, none at all).
    let loopback = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let loopback_port = loopback.local_addr().unwrap().port();
    // A local "index" (find-links dir) holding only sdistonly-1.0.tar.gz.
    let index = dir.path().join("index");
    std::fs::create_dir_all(&index).unwrap();
    let setup_py = format!(
        r#"import os, pathlib, socket
m = pathlib.Path({marker:?})
try:
    m.parent.mkdir(parents=True, exist_ok=True)
    m.write_text("sdist setup.py ran")
    wrote = True
except OSError:
    wrote = False
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=3).close()
    reached = True
except OSError:
    reached = False
pathlib.Path("sdistonly.py").write_text(
    "UID = %d\nWROTE_HOST_MARKER = %r\nENGINE_SOCKET = %r\nCARGO_ENV = %r\nHOST_LOOPBACK = %r\n"
    % (os.getuid(), wrote, os.path.exists("/var/run/docker.sock"), any(k.startswith("CARGO") for k in os.environ), reached)
)
from setuptools import setup
setup(name="sdistonly", version="1.0", py_modules=["sdistonly"])
"#,
        marker = marker.display().to_string(),
        port = loopback_port
    );
    {
        let f = std::fs::File::create(index.join("sdistonly-1.0.tar.gz")).unwrap();
        let gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        for (name, text) in [
            (
                "sdistonly-1.0/PKG-INFO",
                "Metadata-Version: 2.1\nName: sdistonly\nVersion: 1.0\n".to_string(),
            ),
            ("sdistonly-1.0/setup.py", setup_py),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(text.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            tar.append_data(&mut h, name, text.as_bytes()).unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap();
    }
    let src = dir.path().join("src");
    write_tree(
        &src,
        &[
            ("requirements.txt", "sdistonly\n"),
            ("main.py", "import sdistonly\nprint(sdistonly.UID)\n"),
        ],
    );
    let mut cfg = config(&test, dir.path());
    cfg.resolver.find_links = vec![index.clone()];
    let builder = builder_for(cfg).await.unwrap();
    let built = builder
        .build(
            &spec(
                &format!("p{test}"),
                "sdist",
                &src,
                "sha256:sdist",
                &["python", "/app/main.py"],
            ),
            &Events::discard(),
        )
        .await
        .unwrap();
    assert!(!marker.exists(), "the sdist's setup.py ran on the host");
    let got = run_in(
        &built.tag,
        &test,
        &[
            "python",
            "-I",
            "-c",
            "import sdistonly as s; print(s.UID, s.WROTE_HOST_MARKER, s.ENGINE_SOCKET, s.CARGO_ENV, s.HOST_LOOPBACK)",
        ],
    );
    assert_eq!(
        got.trim(),
        "65534 False False False False",
        "built by the unprivileged resolver user, with a read-only root, no engine socket, none of iac's environment and no way to the host's loopback"
    );
    drop(loopback);
    // The resolver container is gone.
    let filters = HashMap::from([("label", vec![format!("iac.test={test}")])]);
    let left = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .unwrap();
    assert!(
        left.iter().all(|c| c
            .labels
            .as_ref()
            .and_then(|l| l.get("iac.role"))
            .map(String::as_str)
            != Some("resolver")),
        "resolver containers left behind: {left:?}"
    );
}

/// A gzipped sdist `name-1.0.tar.gz` in `index` with the given files (under `name-1.0/`).
fn write_sdist(index: &Path, name: &str, files: &[(&str, &str)]) {
    std::fs::create_dir_all(index).unwrap();
    let f = std::fs::File::create(index.join(format!("{name}-1.0.tar.gz"))).unwrap();
    let gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let pkg_info = format!("Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n");
    for (rel, text) in std::iter::once(("PKG-INFO", pkg_info.as_str())).chain(files.iter().copied())
    {
        let mut h = tar::Header::new_gnu();
        h.set_size(text.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, format!("{name}-1.0/{rel}"), text.as_bytes())
            .unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap();
}

/// A uv virtual project (`[project]`, no `[build-system]`, two top-level packages that setuptools
/// would refuse as a flat layout): the image installs the locked main dependencies only — not the
/// project, not the dev group (whose package the index does not even have).
#[tokio::test]
async fn a_uv_virtual_project_installs_its_locked_dependencies_not_itself() {
    let Some(_docker) = engine().await else {
        return;
    };
    let test = test_id();
    let _cleanup = Cleanup { id: test.clone() };
    let dir = tempfile::tempdir().unwrap();
    let index = dir.path().join("index");
    write_sdist(
        &index,
        "pinned",
        &[
            (
                "setup.py",
                "from setuptools import setup\nsetup(name='pinned', version='1.0', py_modules=['pinned'])\n",
            ),
            ("pinned.py", "VERSION = '1.0'\n"),
        ],
    );
    let src = dir.path().join("src");
    write_tree(
        &src,
        &[
            (
                "pyproject.toml",
                "[project]\nname = \"flatapp\"\nversion = \"0.1.0\"\nrequires-python = \">=3.11\"\ndependencies = [\"pinned>=1\"]\n\n[dependency-groups]\ndev = [\"devonly\"]\n",
            ),
            (
                "uv.lock",
                "version = 1\nrevision = 2\nrequires-python = \">=3.11\"\n\n[[package]]\nname = \"devonly\"\nversion = \"9.9\"\nsource = { registry = \"https://pypi.org/simple\" }\n\n[[package]]\nname = \"flatapp\"\nversion = \"0.1.0\"\nsource = { virtual = \".\" }\ndependencies = [\n    { name = \"pinned\" },\n]\n\n[package.dev-dependencies]\ndev = [\n    { name = \"devonly\" },\n]\n\n[[package]]\nname = \"pinned\"\nversion = \"1.0\"\nsource = { registry = \"https://pypi.org/simple\" }\nsdist = { url = \"https://files.pythonhosted.org/packages/pinned-1.0.tar.gz\", hash = \"sha256:00\" }\n",
            ),
            // requirements.txt is not read: the lock comes first.
            ("requirements.txt", "devonly\n"),
            ("app/__init__.py", ""),
            ("lib/__init__.py", ""),
            (
                "main.py",
                "import importlib.metadata as m, pinned\ntry:\n    m.version('flatapp')\n    installed = True\nexcept m.PackageNotFoundError:\n    installed = False\nprint(pinned.VERSION, installed)\n",
            ),
        ],
    );
    let mut cfg = config(&test, dir.path());
    cfg.resolver.find_links = vec![index.clone()];
    let builder = builder_for(cfg).await.unwrap();
    let (events, mut rx) = Events::channel();
    let built = builder
        .build(
            &spec(
                &format!("p{test}"),
                "flatapp",
                &src,
                "sha256:flatapp",
                &["python", "/app/main.py"],
            ),
            &events,
        )
        .await;
    let said = drain(&mut rx).join("\n");
    let built = built.unwrap_or_else(|e| panic!("{e}\n{said}"));
    assert_eq!(
        run_in(&built.tag, &test, &["python", "/app/main.py"]).trim(),
        "1.0 False",
        "the locked dependency is installed, the virtual project is not"
    );
}

/// apt.txt: an sdist with a C extension against libyaml fails without it, naming what is missing
/// and apt.txt; a bad apt.txt is refused naming file and line. With `IAC_TEST_APT_MIRROR=1` (the
/// one part that reaches Debian's mirror, through the resolver's host network, as bootstrap does)
/// the packages go into a derived base image that the resolver compiles against and the app image
/// runs on, and a second build reuses it.
#[tokio::test]
async fn apt_txt_packages_build_an_sdist_against_a_debian_header() {
    let Some(docker) = engine().await else {
        return;
    };
    let test = test_id();
    let _cleanup = Cleanup { id: test.clone() };
    let dir = tempfile::tempdir().unwrap();
    let index = dir.path().join("index");
    write_sdist(
        &index,
        "yamlver",
        &[
            (
                "setup.py",
                "from setuptools import setup, Extension\nsetup(name='yamlver', version='1.0', ext_modules=[Extension('yamlver', ['yamlver.c'], libraries=['yaml'])])\n",
            ),
            (
                "yamlver.c",
                "#include <Python.h>\n#include <yaml.h>\nstatic PyObject *version(PyObject *s, PyObject *a) { return PyUnicode_FromString(yaml_get_version_string()); }\nstatic PyMethodDef M[] = {{\"version\", version, METH_NOARGS, \"\"}, {NULL, NULL, 0, NULL}};\nstatic struct PyModuleDef D = {PyModuleDef_HEAD_INIT, \"yamlver\", NULL, -1, M};\nPyMODINIT_FUNC PyInit_yamlver(void) { return PyModule_Create(&D); }\n",
            ),
        ],
    );
    let src = dir.path().join("src");
    write_tree(
        &src,
        &[
            ("requirements.txt", "yamlver\n"),
            ("main.py", "import yamlver\nprint(yamlver.version())\n"),
        ],
    );
    let mut cfg = config(&test, dir.path());
    cfg.resolver.find_links = vec![index.clone()];
    let builder = builder_for(cfg).await.unwrap();
    let spec_of = |digest: &str| {
        spec(
            &format!("p{test}"),
            "yamlver",
            &src,
            digest,
            &["python", "/app/main.py"],
        )
    };
    // Without apt.txt: the base image has no compiler, and the error says what to add.
    let err = builder
        .build(&spec_of("sha256:noapt"), &Events::discard())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("yamlver") && err.contains("C compiler") && err.contains("apt.txt"),
        "{err}"
    );
    // A bad apt.txt is refused before anything runs.
    std::fs::write(src.join("apt.txt"), "gcc\nlibyaml-dev; curl evil\n").unwrap();
    let err = builder
        .build(&spec_of("sha256:badapt"), &Events::discard())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("apt.txt:2: \"libyaml-dev;\""), "{err}");
    if std::env::var("IAC_TEST_APT_MIRROR").ok().as_deref() != Some("1") {
        eprintln!(
            "apt_txt_packages_build_an_sdist_against_a_debian_header: the apt-get part needs Debian's mirror; set IAC_TEST_APT_MIRROR=1 to run it"
        );
        return;
    }
    std::fs::write(
        src.join("apt.txt"),
        "# native build dependencies of yamlver\ngcc\npython3-dev\nlibyaml-dev\n",
    )
    .unwrap();
    let (events, mut rx) = Events::channel();
    let t = Instant::now();
    let built = builder.build(&spec_of("sha256:apt1"), &events).await;
    let first = t.elapsed();
    let said = drain(&mut rx).join("\n");
    let built = built.unwrap_or_else(|e| panic!("{e}\n{said}"));
    assert!(said.contains("apt.txt: building iac/apt-base:"), "{said}");
    assert_eq!(
        run_in(&built.tag, &test, &["python", "/app/main.py"]).trim(),
        "0.2.5",
        "the C extension built against bookworm's libyaml and runs"
    );
    let derived = docker
        .list_images(Some(
            ListImagesOptionsBuilder::new()
                .filters(&HashMap::from([
                    ("label", vec![format!("iac.test={test}")]),
                    ("reference", vec!["iac/apt-base".to_string()]),
                ]))
                .build(),
        ))
        .await
        .unwrap();
    assert_eq!(derived.len(), 1, "{derived:?}");
    assert_eq!(
        derived[0]
            .labels
            .get("iac.apt-base.packages")
            .map(String::as_str),
        Some("gcc libyaml-dev python3-dev")
    );
    // Nothing an app image would inherit and misread: the managed-by/role labels are set on
    // containers at create time only.
    for l in ["iac.managed-by", "iac.role"] {
        assert!(!derived[0].labels.contains_key(l), "{l} on {derived:?}");
    }
    // Another app change: the derived base is reused, not rebuilt.
    std::fs::write(
        src.join("main.py"),
        "import yamlver\nprint('v', yamlver.version())\n",
    )
    .unwrap();
    let (events, mut rx) = Events::channel();
    let t = Instant::now();
    let again = builder
        .build(&spec_of("sha256:apt2"), &events)
        .await
        .unwrap();
    let second = t.elapsed();
    let said = drain(&mut rx).join("\n");
    assert!(said.contains("already built"), "{said}");
    assert_eq!(
        run_in(&again.tag, &test, &["python", "/app/main.py"]).trim(),
        "v 0.2.5"
    );
    eprintln!("apt.txt build: first {first:.1?} (apt-get + compile), second {second:.1?}");
}

/// A flood of build output (a repo step printing far more than anyone reads) keeps iac's memory
/// bounded: measured as this process's peak RSS growth across the build.
#[tokio::test]
async fn a_flood_of_build_output_stays_in_bounded_memory() {
    let Some(_docker) = engine().await else {
        return;
    };
    let test = test_id();
    let _cleanup = Cleanup { id: test.clone() };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    // ~400 MB of output from a declared build step: 100 000 lines of 4 KB.
    write_tree(
        &src,
        &[
            ("main.py", "print(1)\n"),
            ("Procfile", "web: python main.py\n"),
        ],
    );
    let builder = builder_for(config(&test, dir.path())).await.unwrap();
    let mut s = spec(
        &format!("p{test}"),
        "flood",
        &src,
        "sha256:flood",
        &["python", "/app/main.py"],
    );
    s.entry.build_steps = vec![iac_core::BuildStep {
        argv: vec![
            "python3".into(),
            "-c".into(),
            "import sys; l = 'x' * 4000 + chr(10); [sys.stdout.write(l) for _ in range(100000)]; sys.exit(3)".into(),
        ],
        workdir: None,
        warn_on_failure: false,
        origin: "test flood".into(),
    }];
    let before = peak_rss_kib();
    let err = builder.build(&s, &Events::discard()).await.unwrap_err();
    let grown_mib = (peak_rss_kib().saturating_sub(before)) / 1024;
    let message = err.to_string();
    assert!(message.contains("last build output"), "{message}");
    assert!(
        message.len() < 200 * 1024,
        "the error keeps a tail, not the flood: {} bytes",
        message.len()
    );
    eprintln!("peak RSS grew {grown_mib} MiB over ~400 MB of build output");
    assert!(grown_mib < 150, "peak RSS grew {grown_mib} MiB");
}

/// Issue 22 (builds confined in time): a build that is dropped — as the deploy deadline drops
/// the work in flight — stops in the engine too: once the repo's endless RUN step is running,
/// the build future is aborted, and the step's container is gone moments later.
#[tokio::test]
async fn a_dropped_build_stops_in_the_engine() {
    let Some(_docker) = engine().await else {
        return;
    };
    let test = test_id();
    let _cleanup = Cleanup { id: test.clone() };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_tree(
        &src,
        &[
            ("main.py", "print(1)\n"),
            ("Procfile", "web: python main.py\n"),
        ],
    );
    let builder = builder_for(config(&test, dir.path())).await.unwrap();
    let mut s = spec(
        &format!("p{test}"),
        "endless",
        &src,
        "sha256:endless",
        &["python", "/app/main.py"],
    );
    let marker = format!("iac-endless-{test}");
    s.entry.build_steps = vec![iac_core::BuildStep {
        argv: vec![
            "python3".into(),
            "-c".into(),
            format!("import time; time.sleep(900)  # {marker}"),
        ],
        workdir: None,
        warn_on_failure: false,
        origin: "test endless step".into(),
    }];
    let running = |marker: &str| {
        let out = std::process::Command::new("docker")
            .args(["ps", "--no-trunc", "--format", "{{.ID}} {{.Command}}"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(marker))
            .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
            .collect::<Vec<_>>()
    };
    let build = tokio::spawn(async move { builder.build(&s, &Events::discard()).await });
    let started = Instant::now();
    while running(&marker).is_empty() {
        if build.is_finished() {
            panic!("the build ended before its step ran: {:?}", build.await);
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the endless step never started"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    build.abort();
    let dropped = Instant::now();
    loop {
        let left = running(&marker);
        if left.is_empty() {
            break;
        }
        if dropped.elapsed() > Duration::from_secs(60) {
            for id in &left {
                let _ = std::process::Command::new("docker")
                    .args(["rm", "-f", id])
                    .output();
            }
            panic!("the build's step still runs 60 s after the build was dropped: {left:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "the dropped build's step was gone {:.1?} after the drop",
        dropped.elapsed()
    );
}

/// This process's peak resident set (VmHWM), KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Makes the "3.13" base image by tagging the 3.11 one and its wheelhouse by copying the 3.11
/// wheels (the plumbing under test is the builder's, not Debian's), counting its calls.
struct TagMaker {
    calls: std::sync::atomic::AtomicUsize,
    fail: bool,
}

#[async_trait::async_trait]
impl iac_backends::build::BaseImageMaker for TagMaker {
    async fn make(
        &self,
        python: &iac_backends::build::PythonChoice,
        events: &Events,
    ) -> Result<(), String> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if self.fail {
            return Err("mmdebstrap: cannot reach the mirror".into());
        }
        events.info(
            iac_core::Stage::Build,
            format!("tag maker: {}", python.version),
        );
        let out = std::process::Command::new("docker")
            .args(["tag", OFFLINE_BASE, &python.offline_image])
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(())
    }
}

/// Untags `tag` when dropped (a tag of the shared base image carries no test label).
struct Untag(String);

impl Drop for Untag {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rmi", "--no-prune", &self.0])
            .output();
    }
}

#[tokio::test]
async fn a_missing_python_base_image_is_made_on_demand_once_and_used() {
    let Some(docker) = engine().await else {
        return;
    };
    let test = test_id();
    let _cleanup = Cleanup { id: test.clone() };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("main.py"), "print('x')\n").unwrap();
    let offline = format!("iac-test/py313:{test}");
    let _untag = Untag(offline.clone());
    // A wheelhouse of its own, so the 3.13 one next to it is this test's.
    let wh = dir.path().join("wheelhouse");
    std::fs::create_dir_all(&wh).unwrap();
    for e in std::fs::read_dir(wheelhouse()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), wh.join(e.file_name())).unwrap();
    }
    let mut cfg = config(&test, dir.path());
    cfg.wheelhouse = Some(wh.clone());
    cfg.pythons = BTreeMap::from([(
        "3.13".to_string(),
        iac_backends::build::PythonImages {
            image: format!("iac-test/absent-official-313:{test}"),
            offline_image: offline.clone(),
        },
    )]);
    let mut py313 = spec(
        &format!("p{test}"),
        "py313",
        dir.path(),
        "sha256:py313-a",
        &["python", "/app/main.py"],
    );
    py313.entry.python = Some(iac_core::PythonVersion {
        version: "3.13".into(),
        source: ".python-version line 1 pins 3.13".into(),
    });

    // Without a maker: the error names the Python and the bootstrap command that makes it.
    let plain = builder_for(cfg.clone()).await.unwrap();
    let err = plain
        .build(&py313, &Events::discard())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("iac bootstrap --python 3.13") && err.contains("wheelhouse-3.13"),
        "{err}"
    );

    // A maker that fails: the build fails naming what was being made and why it failed.
    let failing = Arc::new(TagMaker {
        calls: Default::default(),
        fail: true,
    });
    let builder = builder_for(cfg.clone())
        .await
        .unwrap()
        .with_base_maker(failing.clone());
    let err = builder
        .build(&py313, &Events::discard())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&offline)
            && err.contains("Python 3.13")
            && err.contains("cannot reach the mirror"),
        "{err}"
    );

    // A working maker: called once for the wheelhouse and image, said why, then used.
    let maker = Arc::new(TagMaker {
        calls: Default::default(),
        fail: false,
    });
    let builder = builder_for(cfg.clone())
        .await
        .unwrap()
        .with_base_maker(maker.clone());
    // The maker fills the wheelhouse as the recipe would (before the builder asks for it).
    let wh313 = dir.path().join("wheelhouse-3.13");
    std::fs::create_dir_all(&wh313).unwrap();
    for e in std::fs::read_dir(&wh).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), wh313.join(e.file_name())).unwrap();
    }
    let (events, mut rx) = Events::channel();
    let image = builder.build(&py313, &events).await.unwrap();
    let said = drain(&mut rx).join("\n");
    assert!(
        said.contains("Python 3.13 (asked for by .python-version line 1 pins 3.13)")
            && said.contains(&format!("building {offline}"))
            && said.contains("tag maker: 3.13"),
        "{said}"
    );
    let labels = docker
        .inspect_image(&image.tag)
        .await
        .unwrap()
        .config
        .and_then(|c| c.labels)
        .unwrap_or_default();
    assert_eq!(
        labels.get("iac.base-image").map(String::as_str),
        Some(offline.as_str())
    );
    // A second build on 3.13: the base is there, the maker is not called again.
    py313.source.digest = "sha256:py313-b".into();
    builder.build(&py313, &Events::discard()).await.unwrap();
    assert_eq!(maker.calls.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// A secret in a service's `env` (the repos file; the API parses the same way) never reaches
/// the image: not `Config.Env`, not a label, not a history line. The image is the same with or
/// without it (env changes do not rebuild), and the app container the plan creates — the same
/// create body the docker provisioner sends — does carry it.
#[tokio::test]
async fn a_services_env_secret_is_in_the_container_never_in_the_image() {
    let Some(docker) = engine().await else { return };
    let test = test_id();
    let _cleanup = Cleanup { id: test.clone() };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("main.py"), "print('vault')\n").unwrap();
    let secret = format!("s3cret-{test}");
    let repos = format!(
        "- slug: path:{}\n  name: vault\n  env:\n    DB_PASSWORD: {secret}\n- slug: path:{}\n  name: vault2\n",
        src.display(),
        src.display()
    );
    let file = iac_core::parse_repos_file(&repos, iac_core::ReposFormat::Yaml).unwrap();
    let with_env = &file.services[0];
    assert_eq!(with_env.env["DB_PASSWORD"], secret);
    let project = ProjectName::new(&format!("p{test}")).unwrap();
    let plain = spec(
        project.as_str(),
        "vault",
        &src,
        "sha256:fixture-vault",
        &["python", "/app/main.py"],
    );
    let build = BuildSpec::for_service(
        &project,
        with_env,
        plain.source.clone(),
        plain.entry.clone(),
    );
    assert_eq!(build, plain, "the build spec takes nothing from env");

    let builder = builder_for(config(&test, dir.path())).await.unwrap();
    let without_env = builder.planned(&plain).unwrap();
    let built = builder.build(&build, &Events::discard()).await.unwrap();
    assert_eq!(
        built.key, without_env.key,
        "env does not change the build key: changing it never rebuilds the image"
    );

    // Everything `docker image inspect` and `docker history` show, read through the API.
    let img = docker.inspect_image(&built.tag).await.unwrap();
    let cfg = img.config.clone().unwrap();
    let env = cfg.env.clone().unwrap_or_default();
    assert!(
        env.iter().any(|e| e.starts_with("IAC_SERVICE=")),
        "iac's own settings are there: {env:?}"
    );
    assert!(
        !env.iter()
            .any(|e| e.contains("DB_PASSWORD") || e.contains(&secret)),
        "Config.Env: {env:?}"
    );
    for (k, v) in cfg.labels.clone().unwrap_or_default() {
        assert!(
            !k.contains(&secret) && !v.contains(&secret),
            "label {k}={v}"
        );
    }
    let history = docker.image_history(&built.tag).await.unwrap();
    for h in &history {
        assert!(
            !h.created_by.contains(&secret) && !h.created_by.contains("DB_PASSWORD"),
            "history: {}",
            h.created_by
        );
    }
    let whole = serde_json::to_string(&img).unwrap();
    assert!(!whole.contains(&secret), "image inspect: {whole}");

    // The container: the plan puts the env into the app's ContainerSpec …
    let input = iac_core::plan::PlanInput {
        project: project.clone(),
        network: format!("iacnet-{test}"),
        envoy_image: "iac/envoy:1.40.0".into(),
        otel_endpoint: None,
        services: vec![iac_core::plan::PlannedService {
            name: with_env.name.clone(),
            image: built.tag.clone(),
            envoy_config: dir.path().join("envoy.yaml"),
            envoy_config_digest: "sha256:config".into(),
            certs: iac_core::IssuedCerts {
                paths: iac_core::CertPaths::in_container(),
                fingerprint: "sha256:certs".into(),
            },
            app_port: None,
            env: with_env.env.clone(),
            edge: None,
            replicas: 1,
            egress: Default::default(),
        }],
        keep: Vec::new(),
        sandbox: None,
    };
    let stack = iac_core::plan::plan(&input);
    let app = &stack.services[0].app;
    assert_eq!(app.env["DB_PASSWORD"], secret);
    assert_eq!(app.image, built.tag);
    // … and the engine creates the container with it (the provisioner's create body; only the
    // network is swapped for `none`, there being no sidecar here).
    let mut body = iac_backends::engine::create_body(app);
    body.labels
        .get_or_insert_with(Default::default)
        .insert("iac.test".into(), test.clone());
    let host = body.host_config.get_or_insert_with(Default::default);
    host.network_mode = Some("none".into());
    body.networking_config = None;
    let name = format!("{test}-vault");
    docker
        .create_container(
            Some(
                bollard::query_parameters::CreateContainerOptionsBuilder::new()
                    .name(&name)
                    .build(),
            ),
            body,
        )
        .await
        .unwrap();
    let created = docker.inspect_container(&name, None).await.unwrap();
    let container_env = created.config.unwrap().env.unwrap_or_default();
    assert!(
        container_env.contains(&format!("DB_PASSWORD={secret}")),
        "{container_env:?}"
    );
}

/// A PEP 503 "simple" index on the host's loopback serving the files in `dir`
/// (`/simple/<name>/` lists `<name>-*`, `/files/<file>` serves it); counts the requests it
/// answered. Returns its base URL (`http://127.0.0.1:PORT`).
async fn serve_index(
    dir: PathBuf,
) -> (
    String,
    Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    use axum::extract::{Path as UrlPath, State};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let hits = Arc::new(AtomicUsize::new(0));
    type St = (PathBuf, Arc<AtomicUsize>);
    async fn project(
        State((dir, hits)): State<St>,
        UrlPath(name): UrlPath<String>,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        hits.fetch_add(1, Ordering::SeqCst);
        // PEP 503 names: `-`, `_` and `.` alike, any case; files are `<name>-<version>…`.
        let prefix = format!("{}_", name.replace(['-', '.'], "_").to_lowercase());
        let mut links = String::new();
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let f = e.file_name().to_string_lossy().into_owned();
            if f.replace(['-', '.'], "_")
                .to_lowercase()
                .starts_with(&prefix)
            {
                links.push_str(&format!("<a href=\"/files/{f}\">{f}</a>\n"));
            }
        }
        if links.is_empty() {
            return (axum::http::StatusCode::NOT_FOUND, "no such project").into_response();
        }
        axum::response::Html(format!("<html><body>\n{links}</body></html>\n")).into_response()
    }
    async fn file(
        State((dir, hits)): State<St>,
        UrlPath(f): UrlPath<String>,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        hits.fetch_add(1, Ordering::SeqCst);
        match std::fs::read(dir.join(&f)) {
            Ok(b) if !f.contains('/') => b.into_response(),
            _ => axum::http::StatusCode::NOT_FOUND.into_response(),
        }
    }
    let app = axum::Router::new()
        .route("/simple/{name}/", axum::routing::get(project))
        .route("/files/{file}", axum::routing::get(file))
        .with_state((dir, hits.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (base, hits, task)
}

/// Issue 22 (the resolver's network): with a package index, the resolver container has no
/// network and reaches the index only through the allowlisting proxy. An sdist served by a
/// local index builds; its setup.py then tries a second listener on the host's loopback three
/// ways — through the proxy as plain HTTP, through the proxy as a CONNECT tunnel, and directly —
/// and each is refused (403, 403, no route); the listener never sees a connection, the index saw
/// pip's requests, the refusal is reported as an event, and no proxy container is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_is_reached_only_through_the_resolvers_allowlisting_proxy() {
    let Some(docker) = engine().await else {
        return;
    };
    let envoy = "iac/envoy:1.40.0";
    if docker.inspect_image(envoy).await.is_err() {
        assert!(
            std::env::var("IAC_REQUIRE_ENVOY").as_deref() != Ok("1"),
            "IAC_REQUIRE_ENVOY=1 but {envoy} is missing"
        );
        eprintln!("SKIP: {envoy} is missing (make test-deps)");
        return;
    }
    let test = test_id();
    let _cleanup = Cleanup { id: test.clone() };
    let dir = tempfile::tempdir().unwrap();
    // Another service on the host's loopback: not the index, so never to be reached.
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    other.set_nonblocking(true).unwrap();
    let other_port = other.local_addr().unwrap().port();
    let setup_py = format!(
        r#"import http.client, os, pathlib, socket, urllib.error, urllib.request
try:
    urllib.request.urlopen("http://127.0.0.1:{port}/steal", timeout=10).read()
    via_proxy = "reached"
except urllib.error.HTTPError as e:
    via_proxy = e.code
except OSError as e:
    via_proxy = "error: %s" % e
try:
    c = http.client.HTTPConnection("127.0.0.1", 3128, timeout=10)
    c.set_tunnel("127.0.0.1", {port})
    c.request("GET", "/steal")
    tunnel = "reached"
except OSError as e:
    tunnel = "403" if "403" in str(e) else "error: %s" % e
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=5).close()
    direct = "reached"
except OSError:
    direct = "refused"
pathlib.Path("proxied.py").write_text("RESULT = %r\n" % ((via_proxy, tunnel, direct),))
from setuptools import setup
setup(name="proxied", version="1.0", py_modules=["proxied"])
"#,
        port = other_port
    );
    let index = dir.path().join("index");
    write_sdist(&index, "proxied", &[("setup.py", setup_py.as_str())]);
    let (base, hits, server) = serve_index(index).await;
    let src = dir.path().join("src");
    write_tree(
        &src,
        &[
            ("requirements.txt", "proxied\n"),
            ("main.py", "import proxied\nprint(proxied.RESULT)\n"),
        ],
    );
    let mut cfg = config(&test, dir.path());
    cfg.pip_args = vec![];
    cfg.pip_index_url = Some(format!("{base}/simple"));
    cfg.resolver.proxy_image = Some(envoy.into());
    assert_eq!(cfg.resolver.network, "proxy", "the default");
    let builder = builder_for(cfg).await.unwrap();
    let (events, mut rx) = Events::channel();
    let built = builder
        .build(
            &spec(
                &format!("p{test}"),
                "proxied",
                &src,
                "sha256:proxied",
                &["python", "/app/main.py"],
            ),
            &events,
        )
        .await;
    drop(events);
    let said = drain(&mut rx);
    let built = built.unwrap_or_else(|e| panic!("{e}\nevents:\n{}", said.join("\n")));
    let got = run_in(
        &built.tag,
        &test,
        &[
            "python",
            "-I",
            "-c",
            "import proxied; print(proxied.RESULT)",
        ],
    );
    assert_eq!(
        got.trim(),
        "(403, '403', 'refused')",
        "the build hook reached another port of the host: {}",
        said.join("\n")
    );
    assert!(
        matches!(other.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "something connected to the other listener"
    );
    assert!(
        hits.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "pip fetched from the index through the proxy"
    );
    let refused = format!("refused destination=127.0.0.1:{other_port}");
    assert!(
        said.iter().any(|m| m.contains(&refused)),
        "the refusal is reported: {said:?}"
    );
    assert!(
        said.iter()
            .any(|m| m.contains("index proxy") && m.contains(&base.replace("http://", ""))),
        "the allowlist is said: {said:?}"
    );
    server.abort();
    let filters = HashMap::from([("label", vec![format!("iac.test={test}")])]);
    let left = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .unwrap();
    assert!(
        left.iter().all(|c| c
            .labels
            .as_ref()
            .and_then(|l| l.get("iac.role"))
            .is_none_or(|r| r != "resolver" && r != "resolver-proxy")),
        "resolver or proxy containers left behind: {left:?}"
    );
}

/// Issue 22 (builds confined): image builds get a process limit. A repo's build step forks
/// children (each waiting on a pipe) until the kernel refuses; under `images.build_pids = 64`
/// it gets fewer than 64 and EAGAIN — bounded by the limit, whatever the time or memory —, it
/// reports the count and the build fails on it. The build's cgroup is gone afterwards.
#[tokio::test]
async fn a_fork_bomb_in_a_build_step_stops_at_the_pids_limit() {
    let Some(_docker) = engine().await else {
        return;
    };
    let test = test_id();
    let _cleanup = Cleanup { id: test.clone() };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_tree(
        &src,
        &[
            ("main.py", "print(1)\n"),
            ("Procfile", "web: python main.py\n"),
        ],
    );
    let mut cfg = config(&test, dir.path());
    cfg.build_pids = 64;
    let builder = builder_for(cfg).await.unwrap();
    let mut s = spec(
        &format!("p{test}"),
        "forks",
        &src,
        "sha256:forks",
        &["python", "/app/main.py"],
    );
    // One line (a build step is one command): the program is exec'd from an escaped string.
    let bomb = "exec('import os, sys\\nr, w = os.pipe()\\nn = 0\\nwhy = \\'none\\'\\nwhile n < 5000:\\n    try:\\n        pid = os.fork()\\n    except OSError as e:\\n        why = e.strerror\\n        break\\n    if pid == 0:\\n        os.close(w)\\n        os.read(r, 1)\\n        os._exit(0)\\n    n += 1\\nos.close(w)\\nprint(\\'iac-forks: %d children, then: %s\\' % (n, why), flush=True)\\nsys.exit(3)\\n')";
    s.entry.build_steps = vec![iac_core::BuildStep {
        argv: vec!["python3".into(), "-c".into(), bomb.into()],
        workdir: None,
        warn_on_failure: false,
        origin: "test fork bomb".into(),
    }];
    let (events, mut rx) = Events::channel();
    let err = builder.build(&s, &events).await.unwrap_err().to_string();
    drop(events);
    let said = drain(&mut rx);
    let line = said
        .iter()
        .flat_map(|m| m.lines())
        .chain(err.lines())
        .find(|l| l.contains("iac-forks:") && !l.contains("print("))
        .unwrap_or_else(|| panic!("no report from the step: {err}\n{said:?}"))
        .to_string();
    let n: u32 = line
        .split("iac-forks: ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    eprintln!("{line}");
    assert!(
        n < 64 && line.contains("Resource temporarily unavailable"),
        "the step forked {n} children: {line}"
    );
    assert!(
        !said
            .iter()
            .any(|m| m.contains("without a process limit") || m.contains("did not apply")),
        "the limit was not applied here: {said:?}"
    );
    // This build's cgroup (other tests of this process build beside it, each with its own).
    let cgroup = said
        .iter()
        .find_map(|m| {
            m.strip_prefix("build steps run under cgroup ")
                .and_then(|r| r.split(" (pids.max 64)").next())
        })
        .unwrap_or_else(|| panic!("the build names its cgroup: {said:?}"));
    assert!(
        !Path::new(cgroup).exists(),
        "the build cgroup {cgroup} is left"
    );
    // On cgroup v1 the runtime made the parent in every controller hierarchy: none is left in
    // any of them (on v2 there is one hierarchy and this finds nothing more).
    let name = Path::new(cgroup).file_name().unwrap();
    let left: Vec<_> = std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|h| h.path().join(name))
        .filter(|d| d.exists())
        .collect();
    assert!(left.is_empty(), "the build cgroup is left in {left:?}");
}
