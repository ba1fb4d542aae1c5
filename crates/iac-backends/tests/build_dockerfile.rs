//! Golden tests of the app Dockerfile render (`infra/templates/app.Dockerfile.tmpl` through
//! `iac_backends::build::render_dockerfile`): a pure function, so the bytes are pinned here.
//! Update the snapshots with `INSTA_UPDATE=always cargo test -p iac-backends --test build_dockerfile`
//! and review the diff.

use std::collections::BTreeMap;
use std::path::PathBuf;

use iac_backends::build::dockerfile::{APP_DOCKERFILE_TEMPLATE, dockerfile_labels_key};
use iac_backends::build::{DockerfileInputs, ImageConfig, render_dockerfile};
use iac_core::{BuildError, BuildSpec, Entry, Language, ProjectName, ServiceName, Source};

fn spec(language: Language, argv: &[&str], port: Option<u16>) -> BuildSpec {
    BuildSpec {
        project: ProjectName::new("shop").unwrap(),
        service: ServiceName::new("api").unwrap(),
        source: Source {
            dir: PathBuf::from("/nonexistent/src"),
            commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
            digest: "sha256:5eed000000000000000000000000000000000000000000000000000000000000"
                .into(),
            origin: "test".into(),
        },
        entry: Entry {
            language,
            rule: "main.py".into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            why: "root main.py".into(),
            port,
            ..Default::default()
        },
        install: Default::default(),
    }
}

fn config() -> ImageConfig {
    ImageConfig {
        labels: BTreeMap::from([("iac.test".into(), "golden".into())]),
        ..ImageConfig::default()
    }
}

#[test]
fn python_app_with_dependencies_and_port() {
    let spec = spec(
        Language::Python,
        &["python", "/app/main.py", "--greeting", "it's \"quoted\""],
        Some(8000),
    );
    let mut inputs = DockerfileInputs::new(&spec, &config(), true).unwrap();
    let unkeyed = render_dockerfile(APP_DOCKERFILE_TEMPLATE, &inputs).unwrap();
    let key = "sha256:4b3e000000000000000000000000000000000000000000000000000000000000";
    assert!(!dockerfile_labels_key(&unkeyed, key), "{unkeyed}");
    inputs.build_key = key.into();
    let out = render_dockerfile(APP_DOCKERFILE_TEMPLATE, &inputs).unwrap();
    assert!(
        dockerfile_labels_key(&out, key),
        "the image labels its own key:\n{out}"
    );
    assert!(!dockerfile_labels_key(&out, "sha256:other"));
    insta::assert_snapshot!("python_app", out);
    assert_eq!(
        out,
        render_dockerfile(APP_DOCKERFILE_TEMPLATE, &inputs).unwrap(),
        "pure: same inputs, same bytes"
    );
}

#[test]
fn python_app_without_otel_or_dependencies() {
    let cfg = ImageConfig {
        otel: false,
        ..config()
    };
    let inputs = DockerfileInputs::new(
        &spec(Language::Python, &["python", "/app"], None),
        &cfg,
        false,
    )
    .unwrap();
    let out = render_dockerfile(APP_DOCKERFILE_TEMPLATE, &inputs).unwrap();
    assert!(
        !out.contains("wheels/"),
        "no wheel steps without otel or deps:\n{out}"
    );
    assert!(!out.contains("opentelemetry"), "{out}");
    assert!(
        out.contains(
            r#"CMD ["iac-agent","--listen","127.0.0.1:50051","--user","app","--","python","/app"]"#
        ),
        "{out}"
    );
}

#[test]
fn binary_app_skips_pip() {
    let inputs = DockerfileInputs::new(
        &spec(Language::Binary, &["/app/main"], None),
        &config(),
        true,
    )
    .unwrap();
    let out = render_dockerfile(APP_DOCKERFILE_TEMPLATE, &inputs).unwrap();
    insta::assert_snapshot!("binary_app", out);
    assert!(
        !out.contains("pip "),
        "binary entries install nothing with pip:\n{out}"
    );
}

#[test]
fn invalid_inputs_are_refused_with_the_reason() {
    let cfg = config();
    let err = DockerfileInputs::new(&spec(Language::Python, &[], None), &cfg, false).unwrap_err();
    assert!(
        matches!(&err, BuildError::Build { service, message } if service == "api" && message.contains("empty command")),
        "{err}"
    );
    let two_lines = ImageConfig {
        labels: BTreeMap::from([("iac.note".into(), "two\nlines".into())]),
        ..ImageConfig::default()
    };
    let err = DockerfileInputs::new(
        &spec(Language::Python, &["python"], None),
        &two_lines,
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("iac.note") && err.contains("line break"),
        "{err}"
    );
    let bad_label = ImageConfig {
        labels: BTreeMap::from([("Bad Key".into(), "x".into())]),
        ..ImageConfig::default()
    };
    let err = DockerfileInputs::new(
        &spec(Language::Python, &["python"], None),
        &bad_label,
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("Bad Key"), "{err}");
}

#[test]
fn template_errors_name_the_template() {
    let inputs =
        DockerfileInputs::new(&spec(Language::Python, &["python"], None), &config(), false)
            .unwrap();
    let err = render_dockerfile("FROM {{ no_such_variable }}\n", &inputs)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("app.Dockerfile.tmpl") && err.contains("undefined"),
        "{err}"
    );
    let err = render_dockerfile("RUN true\n", &inputs)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no FROM"), "{err}");
}

#[test]
fn build_steps_and_workdir_from_the_entry() {
    let mut spec = spec(
        Language::Python,
        &[
            "sh",
            "-c",
            "exec python -m gunicorn --bind 127.0.0.1:${PORT:-8000} site.wsgi",
        ],
        Some(8000),
    );
    spec.entry.workdir = Some("app".into());
    spec.entry.build_steps = vec![
        iac_core::BuildStep {
            argv: vec![
                "python".into(),
                "manage.py".into(),
                "collectstatic".into(),
                "--noinput".into(),
            ],
            workdir: Some("app".into()),
            warn_on_failure: true,
            origin: "app/site/settings.py (STATIC_ROOT)".into(),
        },
        iac_core::BuildStep {
            argv: vec![
                "sh".into(),
                "-c".into(),
                "echo it's built > built.txt".into(),
            ],
            workdir: None,
            warn_on_failure: false,
            origin: "render.yaml line 6 (buildCommand)".into(),
        },
    ];
    let inputs = DockerfileInputs::new(&spec, &config(), true).unwrap();
    let out = render_dockerfile(APP_DOCKERFILE_TEMPLATE, &inputs).unwrap();
    assert!(
        out.contains(
            "RUN { cd '/app/app' && 'python' 'manage.py' 'collectstatic' '--noinput'; } || echo 'iac: warning: build step from app/site/settings.py (STATIC_ROOT) failed (see its output above); the image is built without it' >&2\n"
        ),
        "{out}"
    );
    assert!(
        out.contains("RUN cd '/app' && 'sh' '-c' 'echo it'\\''s built > built.txt'\n"),
        "{out}"
    );
    // Steps run after the app is installed, and the entry runs from its folder.
    let copy = out.find("COPY --chown").unwrap();
    assert!(out.find("RUN { cd '/app/app'").unwrap() > copy);
    assert!(out.contains("WORKDIR /app/app\nCMD "), "{out}");

    spec.entry.workdir = Some("../etc".into());
    let err = DockerfileInputs::new(&spec, &config(), true).unwrap_err();
    assert!(err.to_string().contains("\"../etc\""), "{err}");
}

/// The variables of every `ENV` instruction of a Dockerfile (continuation lines joined).
fn env_keys(dockerfile: &str) -> Vec<String> {
    let joined = dockerfile.replace("\\\n", " ");
    let mut keys = Vec::new();
    for line in joined.lines() {
        let Some(rest) = line.trim_start().strip_prefix("ENV ") else {
            continue;
        };
        // `K=v` words; values are double-quoted without spaces or plain words here.
        for word in rest.split_whitespace() {
            let (k, _) = word
                .split_once('=')
                .unwrap_or_else(|| panic!("ENV word {word:?} is not K=v in:\n{line}"));
            keys.push(k.to_string());
        }
    }
    keys
}

#[test]
fn the_image_env_holds_only_iac_settings_never_the_services_env() {
    // What an image may publish: iac's own settings, the same for every deployment of a repo.
    let allowed = [
        "LANG",
        "PATH",
        "PYTHONUNBUFFERED",
        "PYTHONDONTWRITEBYTECODE",
        "PIP_DISABLE_PIP_VERSION_CHECK",
        "PIP_NO_CACHE_DIR",
        "VIRTUAL_ENV",
        "IAC_PROJECT",
        "IAC_SERVICE",
        "PORT",
        "OTEL_SERVICE_NAME",
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_PROPAGATORS",
        "OTEL_TRACES_EXPORTER",
        "OTEL_METRICS_EXPORTER",
        "OTEL_LOGS_EXPORTER",
    ];
    for (language, port) in [(Language::Python, Some(8000)), (Language::Binary, None)] {
        let inputs =
            DockerfileInputs::new(&spec(language, &["/app/main"], port), &config(), true).unwrap();
        let out = render_dockerfile(APP_DOCKERFILE_TEMPLATE, &inputs).unwrap();
        let keys = env_keys(&out);
        assert!(keys.contains(&"IAC_SERVICE".to_string()), "{keys:?}\n{out}");
        for k in &keys {
            assert!(
                allowed.contains(&k.as_str()),
                "ENV {k} is not one of iac's publishable settings:\n{out}"
            );
        }
    }
    // The template has no `env` to render at all: a replacement template asking for it fails
    // instead of baking the service's environment into the image.
    let inputs =
        DockerfileInputs::new(&spec(Language::Python, &["python"], None), &config(), false)
            .unwrap();
    let err = render_dockerfile(
        "FROM scratch\n{% for e in env %}ENV {{ e.key }}={{ e.value }}\n{% endfor %}",
        &inputs,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("undefined"), "{err}");
}
