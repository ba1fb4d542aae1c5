//! The app Dockerfile: [`DockerfileInputs`] (everything the template sees, derived from a
//! [`BuildSpec`] and the [`ImageConfig`]) and [`render_dockerfile`], a pure function over the
//! template text `infra/templates/app.Dockerfile.tmpl` (embedded; a `template_dir` can replace it).
//!
//! The template sees no environment from the repos file or the API: image metadata is readable by
//! whoever can pull the image, so that environment is the app container's, set at creation by the
//! provisioner (see [`iac_core::BuildSpec`]). The image's `ENV` holds only iac's own, publishable
//! settings (project, service, port, OpenTelemetry defaults).

use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, UndefinedBehavior, Value};
use serde::Serialize;

use iac_core::{BuildError, BuildSpec, Language};

use super::config::ImageConfig;
use iac_core::shell::{sh_join, sh_quote};

/// The built-in template, embedded at compile time.
pub const APP_DOCKERFILE_TEMPLATE: &str =
    include_str!("../../../../infra/templates/app.Dockerfile.tmpl");
/// File name of the template, in `infra/templates/` or a configured `template_dir`.
pub const APP_DOCKERFILE_NAME: &str = "app.Dockerfile.tmpl";
/// Where the agent listens inside the container (plaintext h2, loopback only: Envoy terminates TLS).
pub const AGENT_LISTEN: &str = "127.0.0.1:50051";
/// The virtualenv the template creates (and installs the OpenTelemetry SDK into).
pub const OTEL_VENV: &str = "/opt/iac/venv";
/// Build argument carrying the resolved base image.
pub const BASE_IMAGE_ARG: &str = "IAC_BASE_IMAGE";

/// A `KEY=value` pair for the template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyValue {
    /// The name (an env var or label key).
    pub key: String,
    /// The value, unescaped (the template quotes it).
    pub value: String,
}

/// Everything the template is rendered from. Build it with [`DockerfileInputs::new`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DockerfileInputs {
    /// The project (the `iac.project` label).
    pub project: String,
    /// The service (the `iac.service` label).
    pub service: String,
    /// `python` or `binary`.
    pub language: &'static str,
    /// The entry rule that matched (the `iac.entry-rule` label).
    pub entry_rule: String,
    /// The entry argv as a JSON array (the `iac.entry` label).
    pub entry_json: String,
    /// The configured base image of the entry's Python (`Entry::python`, else the default one):
    /// the default of the `IAC_BASE_IMAGE` build argument.
    pub base_image: String,
    /// `sha256:<hex>` of the source tree (the `iac.source-digest` label).
    pub source_digest: String,
    /// The uid the app runs as (`USER`); files it owns are chowned to it.
    pub uid: u32,
    /// Install the OpenTelemetry SDK from `wheels/otel/` (Python only).
    pub otel: bool,
    /// OpenTelemetry packages installed when `otel` is set (names from the wheelhouse).
    pub otel_packages: Vec<String>,
    /// `wheels/app/` holds the app's dependency wheels (Python with requirements or a package).
    pub app_wheels: bool,
    /// The port the app is told to listen on (`ENV PORT`, `EXPOSE`); `None` for a job.
    pub port: Option<u16>,
    /// Extra image labels (sorted).
    pub labels: Vec<KeyValue>,
    /// The exec-form `CMD` as a JSON array: `iac-agent … -- <argv>`.
    pub cmd_json: String,
    /// The directory the entry runs in: `/app`, or `/app/<Entry::workdir>`.
    pub workdir: String,
    /// The entry's build steps as shell lines for `RUN` (quoted; each `cd`s into its directory;
    /// steps that only warn end in `|| echo 'iac: warning: …' >&2`).
    pub build_steps: Vec<String>,
    /// The image's build key (the `iac.build-key` label): empty for the first render, which the
    /// key is computed over ([`super::key::build_key`]), then the key for the Dockerfile that is
    /// built.
    pub build_key: String,
}

/// `/app` or `/app/<rel>`, refusing what the resolver never produces (absolute, `..`, control
/// characters).
fn app_dir(rel: Option<&str>) -> Result<String, String> {
    match rel {
        None => Ok("/app".into()),
        Some(r) => {
            let r = r.trim_matches('/');
            if r.is_empty() {
                return Ok("/app".into());
            }
            if r.split('/').any(|c| c == ".." || c == "." || c.is_empty())
                || r.chars().any(char::is_control)
            {
                return Err(format!(
                    "working directory {r:?} is not a plain path inside the repo (expected e.g. `app` or `src/site`)"
                ));
            }
            Ok(format!("/app/{r}"))
        }
    }
}

/// One build step as a `RUN` shell line.
fn step_line(step: &iac_core::BuildStep) -> Result<String, String> {
    if step.argv.is_empty() || step.argv.iter().any(|a| a.contains(['\n', '\r'])) {
        return Err(format!(
            "build step from {} is empty or spans lines; expected one command",
            step.origin
        ));
    }
    let dir = app_dir(step.workdir.as_deref())?;
    let run = format!("cd {} && {}", sh_quote(&dir), sh_join(&step.argv));
    Ok(if step.warn_on_failure {
        let origin = step.origin.replace(['\n', '\r'], " ");
        format!(
            "{{ {run}; }} || echo {} >&2",
            sh_quote(&format!(
                "iac: warning: build step from {origin} failed (see its output above); the image is built without it"
            ))
        )
    } else {
        run
    })
}

impl DockerfileInputs {
    /// Derives the template inputs. `app_wheels` says whether the context will carry the app's
    /// dependency wheels (see [`super::wheels::AppDeps`]). Validates what would otherwise produce a
    /// broken Dockerfile (empty argv, bad label keys, newlines in label values).
    pub fn new(
        spec: &BuildSpec,
        config: &ImageConfig,
        app_wheels: bool,
    ) -> Result<Self, BuildError> {
        let service = spec.service.as_str();
        let fail = |message: String| BuildError::Build {
            service: service.to_string(),
            message,
        };
        if spec.entry.argv.is_empty() || spec.entry.argv[0].is_empty() {
            return Err(fail(format!(
                "entry (rule {}) has an empty command; expected at least a program to run",
                spec.entry.rule
            )));
        }
        if let Some(a) = spec.entry.argv.iter().find(|a| a.contains('\0')) {
            return Err(fail(format!("entry argument {a:?} contains a NUL byte")));
        }
        let python = spec.entry.language == Language::Python;
        let otel = python && config.otel;
        let base = config
            .python_images(spec.entry.python.as_ref().map(|p| p.version.as_str()))
            .map_err(&fail)?;
        let mut labels = Vec::with_capacity(config.labels.len());
        for (k, v) in &config.labels {
            if !is_label_key(k) {
                return Err(BuildError::Template {
                    name: APP_DOCKERFILE_NAME.into(),
                    message: format!(
                        "image label key {k:?} is invalid; expected [a-z0-9._-], e.g. iac.test"
                    ),
                });
            }
            check_value(v).map_err(|why| BuildError::Template {
                name: APP_DOCKERFILE_NAME.into(),
                message: format!("image label {k}: value {why}"),
            })?;
            labels.push(KeyValue {
                key: k.clone(),
                value: v.clone(),
            });
        }
        for p in &config.otel_packages {
            if p.is_empty()
                || !p
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.[],<>=!~".contains(c))
            {
                return Err(BuildError::Template {
                    name: APP_DOCKERFILE_NAME.into(),
                    message: format!(
                        "otel package {p:?} is not a plain requirement (name[extras] and version specifiers)"
                    ),
                });
            }
        }
        let mut cmd: Vec<String> = vec![
            "iac-agent".into(),
            "--listen".into(),
            AGENT_LISTEN.into(),
            "--user".into(),
            "app".into(),
        ];
        // What `opentelemetry-instrument` would do, done by the agent (no extra interpreter start).
        if otel && config.otel_instrument {
            cmd.extend(["--otel-auto-instrument".to_string(), OTEL_VENV.to_string()]);
        }
        cmd.push("--".into());
        cmd.extend(spec.entry.argv.iter().cloned());
        let workdir = app_dir(spec.entry.workdir.as_deref()).map_err(fail)?;
        let build_steps = spec
            .entry
            .build_steps
            .iter()
            .map(step_line)
            .collect::<Result<Vec<_>, _>>()
            .map_err(fail)?;
        Ok(DockerfileInputs {
            project: spec.project.as_str().to_string(),
            service: service.to_string(),
            language: spec.entry.language.as_str(),
            entry_rule: spec.entry.rule.replace(['\n', '\r'], " "),
            entry_json: serde_json::to_string(&spec.entry.argv).expect("a Vec<String> serializes"),
            base_image: base.image,
            source_digest: spec.source.digest.clone(),
            uid: config.app_uid,
            otel,
            otel_packages: if otel {
                config.otel_packages.clone()
            } else {
                Vec::new()
            },
            app_wheels: python && app_wheels,
            port: spec.entry.port,
            labels,
            cmd_json: serde_json::to_string(&cmd).expect("a Vec<String> serializes"),
            workdir,
            build_steps,
            build_key: String::new(),
        })
    }
}

impl DockerfileInputs {
    /// The template context (minijinja is built without its serde feature here).
    fn to_value(&self) -> Value {
        let pairs = |kv: &[KeyValue]| -> Value {
            kv.iter()
                .map(|p| {
                    Value::from_pairs([
                        ("key", Value::from(p.key.as_str())),
                        ("value", Value::from(p.value.as_str())),
                    ])
                })
                .collect()
        };
        Value::from_pairs([
            ("project", Value::from(self.project.as_str())),
            ("service", Value::from(self.service.as_str())),
            ("language", Value::from(self.language)),
            ("entry_rule", Value::from(self.entry_rule.as_str())),
            ("entry_json", Value::from(self.entry_json.as_str())),
            ("base_image", Value::from(self.base_image.as_str())),
            ("source_digest", Value::from(self.source_digest.as_str())),
            ("uid", Value::from(self.uid)),
            ("otel", Value::from(self.otel)),
            (
                "otel_packages",
                self.otel_packages.iter().map(String::as_str).collect(),
            ),
            ("app_wheels", Value::from(self.app_wheels)),
            ("port", Value::from(self.port)),
            ("labels", pairs(&self.labels)),
            ("cmd_json", Value::from(self.cmd_json.as_str())),
            ("workdir", Value::from(self.workdir.as_str())),
            ("build_key", Value::from(self.build_key.as_str())),
            (
                "build_steps",
                self.build_steps.iter().map(String::as_str).collect(),
            ),
        ])
    }
}

/// Whether a rendered Dockerfile labels its image with `key` itself (`iac.build-key="<key>"` in
/// a `LABEL`), as the built-in template does once the key is known. A replacement template
/// without it gets the label from the builder instead.
pub fn dockerfile_labels_key(dockerfile: &str, key: &str) -> bool {
    let label = format!("iac.build-key={}", dockerfile_quote(key.to_string()));
    let mut in_label = false;
    for line in dockerfile.lines() {
        let t = line.trim_start();
        if !in_label {
            in_label = t.get(..6).is_some_and(|w| w.eq_ignore_ascii_case("LABEL "));
        }
        if in_label && t.split_whitespace().any(|w| w == label) {
            return true;
        }
        // A LABEL goes on while its lines end in a backslash.
        in_label = in_label && t.trim_end().ends_with('\\');
    }
    false
}

/// Renders the Dockerfile. Pure: same template and inputs, same bytes.
pub fn render_dockerfile(template: &str, inputs: &DockerfileInputs) -> Result<String, BuildError> {
    let err = |e: minijinja::Error| BuildError::Template {
        name: APP_DOCKERFILE_NAME.into(),
        message: format!("{e:#}"),
    };
    let mut env = Environment::new();
    env.set_syntax(
        SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(true)
            .build()
            .map_err(err)?,
    );
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.add_filter("dq", dockerfile_quote);
    let tmpl = env.template_from_str(template).map_err(err)?;
    let out = tmpl.render(inputs.to_value()).map_err(err)?;
    if !out
        .lines()
        .any(|l| l.trim_start().to_ascii_uppercase().starts_with("FROM "))
    {
        return Err(BuildError::Template {
            name: APP_DOCKERFILE_NAME.into(),
            message: "the rendered Dockerfile has no FROM instruction".into(),
        });
    }
    Ok(out)
}

/// A Dockerfile double-quoted word: `\`, `"` and `$` escaped (no variable expansion).
fn dockerfile_quote(value: String) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if matches!(c, '\\' | '"' | '$') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

fn is_label_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-_".contains(c))
}

fn check_value(v: &str) -> Result<(), &'static str> {
    if v.contains(['\n', '\r']) {
        Err("contains a line break, which a Dockerfile cannot carry")
    } else if v.contains('\0') {
        Err("contains a NUL byte")
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_escapes_what_dockerfile_words_interpret() {
        assert_eq!(
            dockerfile_quote(r#"a "b" $HOME \x"#.into()),
            r#""a \"b\" \$HOME \\x""#
        );
        assert!(is_label_key("iac.test") && !is_label_key("Iac") && !is_label_key("a b"));
    }
}
