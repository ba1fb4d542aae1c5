//! The repos file: a YAML or JSON list of slugs (strings) or `{slug, name?, entrypoint?, env?,
//! expose?, replicas?, extras?, groups?, egress?}` maps, optionally wrapped as `{project?, egress?,
//! services: [...]}` (a project's `egress` items apply to every service; see [`crate::egress`]). Produces [`ServiceSpec`]s with
//! deterministic, de-duplicated DNS-safe service names. Errors name the item (and its line when it
//! can be found) and say what was expected.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::egress::{EgressRule, merge_rules};
use crate::error::ReposFileError;
use crate::expose::Expose;
use crate::name::{ProjectName, ServiceName};
use crate::slug::Slug;

/// One service to deploy, as the repos file (or an API call) describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// The service name (derived from the repo name unless given).
    pub name: ServiceName,
    /// Where its source comes from.
    pub slug: Slug,
    /// `module:function` (called) or a command line (run as argv); overrides entry detection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<String>,
    /// Extra environment for the app.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Whether (and where) the app is published on the host without a client certificate
    /// (see [`crate::expose`]).
    #[serde(default, skip_serializing_if = "Expose::is_auto")]
    pub expose: Expose,
    /// How many copies run (Swarm tasks, Kubernetes pods); the docker and terraform provisioners
    /// run one pair whatever it says, and warn when it says more. 1..=[`MAX_REPLICAS`], default 1.
    #[serde(default = "one_replica", skip_serializing_if = "is_one_replica")]
    pub replicas: u32,
    /// Extras and dependency groups of a Python app to install besides its main dependencies
    /// (serialized as the repos file spells them: `extras`, `groups`, each only when non-empty).
    #[serde(flatten, default)]
    pub install: InstallSelection,
    /// Destinations the app may reach outside the mesh (`host:port`, `*.suffix:port`), the
    /// project's items included; enforced unless `[mesh] egress = "open"`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<EgressRule>,
}

/// What a Python app installs besides its main dependency set: extras (`[project.optional-
/// dependencies]`, Poetry extras) and dependency groups (dev/test groups, PEP 735). Repos-file
/// keys `extras:` and `groups:`, lists of package-style names, normalized (PEP 685).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct InstallSelection {
    /// Extras of the project to install (`redis` → `[project.optional-dependencies] redis`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extras: Vec<String>,
    /// Dependency groups to install besides the main set (`dev`, `test`, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

impl InstallSelection {
    /// Nothing asked for.
    pub fn is_empty(&self) -> bool {
        self.extras.is_empty() && self.groups.is_empty()
    }
}

/// A repos-file `extras`/`groups` value: a list of names (see [`normalize_names`]).
fn name_list(key: &str, v: &Value) -> Result<Vec<String>, String> {
    let expected = || {
        format!(
            "`{key}` to be a list of names (letters, digits, '-', '_', '.'), got {}",
            match v {
                Value::Array(_) => "a list with something else in it".to_string(),
                other => kind(other).to_string(),
            }
        )
    };
    let items = v.as_array().ok_or_else(expected)?;
    let names = items
        .iter()
        .map(|i| i.as_str().map(str::to_string).ok_or_else(expected))
        .collect::<Result<Vec<_>, _>>()?;
    normalize_names(key, &names)
}

/// Extras or group names like `redis` or `dev-tools` (letters, digits, `-`, `_`, `.`; starting
/// and ending with a letter or digit; at most 100 characters), normalized to lowercase with `-`
/// (PEP 685) and de-duplicated. `key` names the setting in the error.
pub fn normalize_names(key: &str, names: &[String]) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for name in names {
        let b = name.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 100
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
        if !ok {
            return Err(format!(
                "`{key}` to be a list of names (letters, digits, '-', '_', '.'), got {name:?}"
            ));
        }
        let mut norm = String::new();
        let mut sep = false;
        for c in name.chars() {
            if matches!(c, '-' | '_' | '.') {
                sep = true;
                continue;
            }
            if sep {
                norm.push('-');
            }
            sep = false;
            norm.push(c.to_ascii_lowercase());
        }
        if !out.contains(&norm) {
            out.push(norm);
        }
    }
    Ok(out)
}

/// A repos-file `egress` value: a list of `host:port` / `*.suffix:port` strings.
pub fn egress_list(v: &Value) -> Result<Vec<EgressRule>, String> {
    let items = v.as_array().ok_or_else(|| {
        format!(
            "`egress` to be a list of \"host:port\" or \"*.suffix:port\" strings, got {}",
            kind(v)
        )
    })?;
    let texts = items
        .iter()
        .map(|i| {
            i.as_str().map(str::to_string).ok_or_else(|| {
                format!(
                    "`egress` items to be \"host:port\" or \"*.suffix:port\" strings, got {}",
                    kind(i)
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    crate::egress::parse_rules(&texts).map_err(|e| format!("`egress` items to be valid: {e}"))
}

/// The most replicas one service may ask for.
pub const MAX_REPLICAS: u32 = 100;

fn one_replica() -> u32 {
    1
}

fn is_one_replica(n: &u32) -> bool {
    *n == 1
}

/// What a parsed repos file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReposFile {
    /// The project the file names, if any.
    pub project: Option<ProjectName>,
    /// Its services, in file order (each one's `egress` includes the project's items).
    pub services: Vec<ServiceSpec>,
    /// The project's `egress` items (already merged into every service's list).
    pub egress: Vec<EgressRule>,
    /// `sandbox: NAME`: the services are sandbox copies of the project's baseline services of
    /// the same names ([`crate::sandbox`]), not the baseline itself.
    pub sandbox: Option<crate::sandbox::SandboxName>,
    /// `ttl: 2h` (a sandbox only): after it, the next deploy or `iac gc` removes the sandbox.
    pub ttl: Option<std::time::Duration>,
}

/// The syntax to parse. `Auto` picks JSON when the text starts with `[` or `{` and parses as JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReposFormat {
    /// YAML.
    Yaml,
    /// JSON.
    Json,
    /// Decide from the text.
    Auto,
}

impl ReposFormat {
    /// From a file name's extension (`.json` → JSON, `.yaml`/`.yml` → YAML, else auto).
    pub fn from_path(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => ReposFormat::Json,
            Some("yaml" | "yml") => ReposFormat::Yaml,
            _ => ReposFormat::Auto,
        }
    }
}

/// Reads and parses a repos file; relative `path:` slugs are resolved against the file's directory.
pub fn load_repos_file(path: &Path) -> Result<ReposFile, ReposFileError> {
    let text = std::fs::read_to_string(path).map_err(|e| ReposFileError::Read {
        file: path.display().to_string(),
        source: e,
    })?;
    let mut parsed =
        parse_repos_file(&text, ReposFormat::from_path(path)).map_err(|e| e.in_file(path))?;
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let base = std::fs::canonicalize(base).unwrap_or_else(|_| base.to_path_buf());
    for s in &mut parsed.services {
        s.slug = s.slug.clone().resolve_relative(&base);
    }
    Ok(parsed)
}

/// Parses repos-file text.
pub fn parse_repos_file(text: &str, format: ReposFormat) -> Result<ReposFile, ReposFileError> {
    let root = parse_value(text, format)?;
    let mut sandbox = None;
    let mut ttl = None;
    let (project, project_egress, items) = match root {
        Value::Array(items) => (None, Vec::new(), items),
        Value::Object(mut map) => {
            for key in map.keys() {
                if !["project", "services", "egress", "sandbox", "ttl"].contains(&key.as_str()) {
                    return Err(ReposFileError::Shape {
                        expected: format!(
                            "a list of services, or a map with keys `project`, `sandbox`, `ttl`, `egress` and `services` (unknown key {key:?})"
                        ),
                    });
                }
            }
            sandbox = match map.remove("sandbox") {
                None | Some(Value::Null) => None,
                Some(Value::String(n)) => {
                    Some(crate::sandbox::SandboxName::new(&n).map_err(|e| {
                        ReposFileError::Shape {
                            expected: format!("`sandbox` to be a sandbox name: {e}"),
                        }
                    })?)
                }
                Some(other) => {
                    return Err(ReposFileError::Shape {
                        expected: format!("`sandbox` to be a string, got {}", kind(&other)),
                    });
                }
            };
            ttl = match map.remove("ttl") {
                None | Some(Value::Null) => None,
                Some(Value::String(t)) => {
                    Some(
                        crate::duration::parse(&t).map_err(|e| ReposFileError::Shape {
                            expected: format!("`ttl` to be a duration such as \"2h\": {e}"),
                        })?,
                    )
                }
                Some(other) => {
                    return Err(ReposFileError::Shape {
                        expected: format!(
                            "`ttl` to be a duration string such as \"2h\", got {}",
                            kind(&other)
                        ),
                    });
                }
            };
            if ttl.is_some() && sandbox.is_none() {
                return Err(ReposFileError::Shape {
                    expected: "`ttl` only beside `sandbox` (a baseline does not expire)".into(),
                });
            }
            let project = match map.remove("project") {
                None | Some(Value::Null) => None,
                Some(Value::String(p)) => {
                    Some(ProjectName::new(&p).map_err(|e| ReposFileError::Shape {
                        expected: format!("`project` to be a DNS label: {e}"),
                    })?)
                }
                Some(other) => {
                    return Err(ReposFileError::Shape {
                        expected: format!("`project` to be a string, got {}", kind(&other)),
                    });
                }
            };
            let egress = match map.remove("egress") {
                None | Some(Value::Null) => Vec::new(),
                Some(v) => egress_list(&v).map_err(|expected| ReposFileError::Shape {
                    expected: format!("in the project's `egress`: {expected}"),
                })?,
            };
            match map.remove("services") {
                Some(Value::Array(items)) => (project, egress, items),
                Some(other) => {
                    return Err(ReposFileError::Shape {
                        expected: format!("`services` to be a list, got {}", kind(&other)),
                    });
                }
                None => {
                    return Err(ReposFileError::Shape {
                        expected: "a `services` list".into(),
                    });
                }
            }
        }
        Value::Null => (None, Vec::new(), Vec::new()),
        other => {
            return Err(ReposFileError::Shape {
                expected: format!("a list of services, got {}", kind(&other)),
            });
        }
    };
    if items.is_empty() {
        return Err(ReposFileError::Shape {
            expected: "at least one service".into(),
        });
    }

    struct Raw {
        slug: Slug,
        name: Option<ServiceName>,
        entrypoint: Option<String>,
        env: BTreeMap<String, String>,
        expose: Expose,
        replicas: u32,
        install: InstallSelection,
        egress: Vec<EgressRule>,
    }
    let mut raws = Vec::with_capacity(items.len());
    let mut search_from = 0usize;
    for (i, item) in items.into_iter().enumerate() {
        let index = i + 1;
        let slug_text = match &item {
            Value::String(s) => Some(s.clone()),
            Value::Object(m) => m.get("slug").and_then(Value::as_str).map(str::to_string),
            _ => None,
        };
        let line = slug_text
            .as_deref()
            .and_then(|s| find_line(text, s, &mut search_from));
        let fail = |expected: String| ReposFileError::Item {
            index,
            line,
            expected,
        };
        let raw = match item {
            Value::String(s) => Raw {
                slug: s
                    .parse()
                    .map_err(|e: crate::error::SlugError| fail(e.to_string()))?,
                name: None,
                entrypoint: None,
                env: BTreeMap::new(),
                expose: Expose::Auto,
                replicas: 1,
                install: InstallSelection::default(),
                egress: Vec::new(),
            },
            Value::Object(map) => {
                let mut slug = None;
                let mut name = None;
                let mut entrypoint = None;
                let mut env = BTreeMap::new();
                let mut expose = Expose::Auto;
                let mut replicas = 1;
                let mut install = InstallSelection::default();
                let mut egress = Vec::new();
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("slug", Value::String(s)) => {
                            slug = Some(s.parse::<Slug>().map_err(|e| fail(e.to_string()))?)
                        }
                        ("name", Value::String(n)) => {
                            let n = ServiceName::new(&n)
                                .map_err(|e| fail(format!("`name` to be a DNS label: {e}")))?;
                            crate::sandbox::check_baseline_name(&n)
                                .map_err(|e| fail(format!("`name` to be a service name: {e}")))?;
                            name = Some(n)
                        }
                        ("entrypoint", Value::String(e)) if !e.trim().is_empty() => {
                            entrypoint = Some(e.trim().to_string())
                        }
                        ("env", Value::Object(m)) => {
                            for (ek, ev) in m {
                                if !valid_env_key(&ek) {
                                    return Err(fail(format!(
                                        "env key {ek:?} to be [A-Za-z_][A-Za-z0-9_]*"
                                    )));
                                }
                                let ev = match ev {
                                    Value::String(s) => s,
                                    Value::Number(n) => n.to_string(),
                                    Value::Bool(b) => b.to_string(),
                                    other => {
                                        return Err(fail(format!(
                                            "env value of {ek} to be a string, number or bool, got {}",
                                            kind(&other)
                                        )));
                                    }
                                };
                                // The container's environment is NUL-separated on every engine.
                                if ev.contains('\0') {
                                    return Err(fail(format!(
                                        "env value of {ek} to have no NUL byte"
                                    )));
                                }
                                env.insert(ek, ev);
                            }
                            check_restart_env(&env).map_err(fail)?;
                        }
                        ("env", Value::Null) => {}
                        ("expose", v) => expose = Expose::from_value(&v).map_err(fail)?,
                        ("replicas", Value::Null) => {}
                        ("replicas", v) => {
                            // `3` or `3.0` (a whole number however it is written).
                            replicas = v
                                .as_u64()
                                .or_else(|| {
                                    v.as_f64()
                                        .filter(|f| f.fract() == 0.0 && (0.0..=1e15).contains(f))
                                        .map(|f| f as u64)
                                })
                                .and_then(|n| u32::try_from(n).ok())
                                .filter(|n| (1..=MAX_REPLICAS).contains(n))
                                .ok_or_else(|| {
                                    fail(format!(
                                        "`replicas` to be a whole number from 1 to {MAX_REPLICAS}, got {}",
                                        match &v {
                                            Value::Number(n) => n.to_string(),
                                            other => kind(other).to_string(),
                                        }
                                    ))
                                })?;
                        }
                        ("extras" | "groups", Value::Null) => {}
                        ("extras", v) => install.extras = name_list("extras", &v).map_err(fail)?,
                        ("groups", v) => install.groups = name_list("groups", &v).map_err(fail)?,
                        ("egress", Value::Null) => {}
                        ("egress", v) => egress = egress_list(&v).map_err(fail)?,
                        (key @ ("slug" | "name" | "entrypoint" | "env"), other) => {
                            let want = if key == "env" {
                                "a map"
                            } else {
                                "a non-empty string"
                            };
                            return Err(fail(format!(
                                "`{key}` to be {want}, got {}",
                                kind(&other)
                            )));
                        }
                        (other, _) => {
                            return Err(fail(format!(
                                "only the keys slug, name, entrypoint, env, expose, replicas, extras, groups, egress (unknown key {other:?})"
                            )));
                        }
                    }
                }
                let slug = slug.ok_or_else(|| fail("a `slug` key".into()))?;
                Raw {
                    slug,
                    name,
                    entrypoint,
                    env,
                    expose,
                    replicas,
                    install,
                    egress,
                }
            }
            other => {
                return Err(fail(format!(
                    "a slug string or a map {{slug, name?, entrypoint?, env?, expose?, replicas?, extras?, groups?, egress?}}, got {}",
                    kind(&other)
                )));
            }
        };
        raws.push((index, line, raw));
    }

    // Names: explicit names first (must be unique), then derived names de-duplicated in file order
    // with -2, -3, … so the result depends only on the file.
    let mut taken = BTreeSet::new();
    for (index, line, raw) in &raws {
        if let Some(n) = &raw.name
            && !taken.insert(n.clone())
        {
            return Err(ReposFileError::Item {
                index: *index,
                line: *line,
                expected: format!("a unique service name; {n:?} is used by an earlier item"),
            });
        }
    }
    // Two edges on one host address would fail at provisioning; say so here, naming both items.
    for (j, (index, line, raw)) in raws.iter().enumerate() {
        let Expose::On(b) = raw.expose else { continue };
        let Some(port) = b.port else { continue };
        let clash = raws[..j]
            .iter()
            .find(|(_, _, earlier)| match earlier.expose {
                Expose::On(e) => {
                    e.port == Some(port)
                        && (e.host == b.host || e.host.is_unspecified() || b.host.is_unspecified())
                }
                _ => false,
            });
        if let Some((earlier, _, _)) = clash {
            return Err(ReposFileError::Item {
                index: *index,
                line: *line,
                expected: format!(
                    "a free host port in `expose`; {b} is already exposed by item {earlier}"
                ),
            });
        }
    }
    let mut services = Vec::with_capacity(raws.len());
    for (index, line, raw) in raws {
        let name = match raw.name {
            Some(n) => n,
            None => {
                let base = raw
                    .slug
                    .default_service_name()
                    .ok_or_else(|| ReposFileError::Item {
                        index,
                        line,
                        expected: format!(
                            "a `name`: no DNS label can be derived from repository name {:?}",
                            raw.slug.repo_name()
                        ),
                    })?;
                dedup(base, &mut taken)
            }
        };
        services.push(ServiceSpec {
            name,
            slug: raw.slug,
            entrypoint: raw.entrypoint,
            env: raw.env,
            expose: raw.expose,
            replicas: raw.replicas,
            install: raw.install,
            egress: merge_rules(&project_egress, &raw.egress),
        });
    }
    Ok(ReposFile {
        project,
        services,
        egress: project_egress,
        sandbox,
        ttl,
    })
}

fn dedup(base: ServiceName, taken: &mut BTreeSet<ServiceName>) -> ServiceName {
    if taken.insert(base.clone()) {
        return base;
    }
    for n in 2.. {
        let suffix = format!("-{n}");
        let mut stem = base.as_str().to_string();
        stem.truncate(crate::name::MAX_LABEL - suffix.len());
        let stem = stem.trim_end_matches('-');
        let candidate =
            ServiceName::new(&format!("{stem}{suffix}")).expect("derived label stays valid");
        if taken.insert(candidate.clone()) {
            return candidate;
        }
    }
    unreachable!("an unbounded counter always finds a free name")
}

/// The agent's restart settings a service may set in its `env` (`iac-agent --restart*`, read
/// from these variables): checked here, so a bad value is an error naming the item rather than
/// an agent that cannot start (and a container the engine restarts in a loop).
fn check_restart_env(env: &BTreeMap<String, String>) -> Result<(), String> {
    if let Some(v) = env.get("IAC_RESTART")
        && !matches!(v.as_str(), "auto" | "never")
    {
        return Err(format!("env IAC_RESTART to be auto or never, got {v:?}"));
    }
    let duration = |key: &str| -> Result<Option<std::time::Duration>, String> {
        env.get(key)
            .map(|v| {
                crate::duration::parse(v)
                    .map_err(|_| format!("env {key} to be a duration such as 10s or 5m, got {v:?}"))
            })
            .transpose()
    };
    let first = duration("IAC_RESTART_BACKOFF")?;
    let longest = duration("IAC_RESTART_BACKOFF_MAX")?;
    duration("IAC_RESTART_RESET_AFTER")?;
    if first.is_some_and(|d| d.is_zero()) {
        return Err("env IAC_RESTART_BACKOFF to be longer than 0s".into());
    }
    let first = first.unwrap_or(std::time::Duration::from_secs(10));
    if let Some(longest) = longest
        && longest < first
    {
        return Err(format!(
            "env IAC_RESTART_BACKOFF_MAX to be at least the first delay ({})",
            humantime::format_duration(first)
        ));
    }
    Ok(())
}

fn valid_env_key(k: &str) -> bool {
    let mut chars = k.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

fn parse_value(text: &str, format: ReposFormat) -> Result<Value, ReposFileError> {
    let json = |t: &str| {
        serde_json::from_str::<Value>(t).map_err(|e| ReposFileError::Syntax {
            format: "JSON",
            line: Some(e.line()),
            message: e.to_string(),
        })
    };
    let yaml = |t: &str| {
        yaml_serde::from_str::<Value>(t).map_err(|e| ReposFileError::Syntax {
            format: "YAML",
            line: e.location().map(|l| l.line()),
            message: e.to_string(),
        })
    };
    match format {
        ReposFormat::Json => json(text),
        ReposFormat::Yaml => yaml(text),
        ReposFormat::Auto => {
            let t = text.trim_start();
            if t.starts_with('[') || t.starts_with('{') {
                json(text).or_else(|_| yaml(text))
            } else {
                yaml(text)
            }
        }
    }
}

/// 1-based line of the first occurrence of `needle` at or after byte `from`; advances `from`.
fn find_line(text: &str, needle: &str, from: &mut usize) -> Option<usize> {
    let needle = needle.trim();
    if needle.is_empty() || *from > text.len() {
        return None;
    }
    let pos = text[*from..].find(needle)? + *from;
    *from = pos + needle.len();
    Some(text[..pos].matches('\n').count() + 1)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_settings_in_env_are_taken_when_valid() {
        let text = "- slug: gh:a/b\n  env: {IAC_RESTART: never, IAC_RESTART_BACKOFF: 10m, IAC_RESTART_RESET_AFTER: 1h}\n- slug: gh:a/c\n  env: {IAC_RESTART_BACKOFF: 1s, IAC_RESTART_BACKOFF_MAX: 2s}\n";
        let r = parse_repos_file(text, ReposFormat::Auto).unwrap();
        assert_eq!(r.services[0].env["IAC_RESTART_BACKOFF"], "10m");
        assert_eq!(r.services[1].env["IAC_RESTART_BACKOFF_MAX"], "2s");
    }

    #[test]
    fn egress_lists_per_project_and_service_merge_and_bad_items_are_named() {
        let text = "project: shop\negress: [\"*.pypi.org:443\", \"files.pythonhosted.org:443\"]\nservices:\n- gh:a/plain\n- slug: gh:a/cart\n  egress: [\"api.stripe.com:443\", \"*.pypi.org:443\"]\n";
        let r = parse_repos_file(text, ReposFormat::Yaml).unwrap();
        let list = |s: &ServiceSpec| s.egress.iter().map(|r| r.to_string()).collect::<Vec<_>>();
        // Sorted by host, de-duplicated.
        assert_eq!(
            list(&r.services[0]),
            ["files.pythonhosted.org:443", "*.pypi.org:443"]
        );
        assert_eq!(
            list(&r.services[1]),
            [
                "api.stripe.com:443",
                "files.pythonhosted.org:443",
                "*.pypi.org:443"
            ]
        );
        assert_eq!(r.egress.len(), 2);
        // Round trip through the API's `services` shape.
        let json = serde_json::to_string(&r.services[1]).unwrap();
        assert!(json.contains(r#""egress":["api.stripe.com:443""#), "{json}");
        assert_eq!(
            serde_json::from_str::<ServiceSpec>(&json).unwrap(),
            r.services[1]
        );
        // Nothing said: nothing allowed (the list is empty; the mode decides what that means).
        let r = parse_repos_file("- gh:a/b\n", ReposFormat::Yaml).unwrap();
        assert!(r.services[0].egress.is_empty());

        let err = parse_repos_file(
            "- gh:a/b\n- slug: gh:a/c\n  egress: [\"ok.example:443\", \"https://bad.example\"]\n",
            ReposFormat::Yaml,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("item 2")
                && err.contains("\"https://bad.example\"")
                && err.contains("without a scheme"),
            "{err}"
        );
        let err = parse_repos_file(
            "- slug: gh:a/c\n  egress: api.example:443\n",
            ReposFormat::Yaml,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`egress` to be a list"), "{err}");
        let err = parse_repos_file(
            "egress: [\"*:443\"]\nservices: [gh:a/b]\n",
            ReposFormat::Yaml,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("project's `egress`") && err.contains("\"*:443\""),
            "{err}"
        );
        let err = parse_repos_file("- slug: gh:a/c\n  egress: [443]\n", ReposFormat::Yaml)
            .unwrap_err()
            .to_string();
        assert!(err.contains("strings, got a number"), "{err}");
    }

    #[test]
    fn the_starter_repos_file_in_templates_parses_with_its_egress_lists() {
        let text = include_str!("../../../templates/repos.yaml");
        let r = parse_repos_file(text, ReposFormat::Yaml).unwrap();
        assert_eq!(r.egress.len(), 2);
        let worker = r
            .services
            .iter()
            .find(|s| s.name.as_str() == "worker")
            .unwrap();
        assert_eq!(worker.egress.len(), 3, "{:?}", worker.egress);
    }

    fn names(r: &ReposFile) -> Vec<&str> {
        r.services.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn yaml_strings_and_maps() {
        let text = "- gh:octo/api#v1\n- slug: gl:grp/sub/worker\n  name: jobs\n  entrypoint: worker.main:run\n  env:\n    LEVEL: debug\n    N: 3\n- path:examples/hello\n";
        let r = parse_repos_file(text, ReposFormat::Yaml).unwrap();
        assert_eq!(names(&r), ["api", "jobs", "hello"]);
        assert_eq!(r.services[1].entrypoint.as_deref(), Some("worker.main:run"));
        assert_eq!(r.services[1].env["N"], "3");
        assert!(r.project.is_none());
    }

    #[test]
    fn expose_forms() {
        use crate::expose::EdgeBind;
        let text = "- gh:a/plain\n- slug: gh:a/off\n  expose: false\n- slug: gh:a/auto\n  expose: true\n- slug: gh:a/fixed\n  expose: 8081\n- slug: gh:a/public\n  expose: \"0.0.0.0:8082\"\n- slug: gh:a/again\n  expose: \"127.0.0.2:8081\"\n";
        let r = parse_repos_file(text, ReposFormat::Yaml).unwrap();
        let lo = EdgeBind::loopback();
        let got: Vec<Expose> = r.services.iter().map(|s| s.expose).collect();
        assert_eq!(
            got,
            [
                Expose::Auto,
                Expose::Off,
                Expose::On(lo),
                Expose::On(EdgeBind {
                    port: Some(8081),
                    ..lo
                }),
                Expose::On(EdgeBind {
                    host: "0.0.0.0".parse().unwrap(),
                    port: Some(8082)
                }),
                Expose::On(EdgeBind {
                    host: "127.0.0.2".parse().unwrap(),
                    port: Some(8081)
                }),
            ]
        );
        // A ServiceSpec round-trips through JSON (the admin API's `services` shape).
        for s in &r.services {
            let json = serde_json::to_string(s).unwrap();
            let back: ServiceSpec = serde_json::from_str(&json).unwrap();
            assert_eq!(&back, s, "{json}");
            assert_eq!(json.contains("expose"), !s.expose.is_auto(), "{json}");
        }
    }

    #[test]
    fn extras_and_groups_are_name_lists_normalized() {
        let text =
            "- gh:a/one\n- slug: gh:a/two\n  extras: [Redis, redis]\n  groups: [dev_tools]\n";
        let r = parse_repos_file(text, ReposFormat::Yaml).unwrap();
        assert!(r.services[0].install.is_empty());
        assert_eq!(r.services[1].install.extras, ["redis"]);
        assert_eq!(r.services[1].install.groups, ["dev-tools"]);
        let json = serde_json::to_value(&r.services).unwrap();
        assert!(
            json[0].get("extras").is_none() && json[0].get("groups").is_none(),
            "nothing asked is not written"
        );
        assert_eq!(json[1]["extras"], serde_json::json!(["redis"]));
        let back: Vec<ServiceSpec> = serde_json::from_value(json).unwrap();
        assert_eq!(back, r.services, "round-trips in the repos file's spelling");
        for (bad, needle) in [
            ("extras: redis", "`extras` to be a list of names"),
            ("groups: [\"a b\"]", "got \"a b\""),
            ("groups: [1]", "`groups` to be a list of names"),
            ("extras: [\"-x\"]", "got \"-x\""),
        ] {
            let text = format!("- slug: gh:a/b\n  {bad}\n");
            let err = parse_repos_file(&text, ReposFormat::Yaml)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("item 1") && err.contains(needle),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn replicas_default_to_one_and_are_bounded() {
        let text = "- gh:a/one\n- slug: gh:a/three\n  replicas: 3\n";
        let r = parse_repos_file(text, ReposFormat::Yaml).unwrap();
        assert_eq!(
            r.services.iter().map(|s| s.replicas).collect::<Vec<_>>(),
            [1, 3]
        );
        let json = serde_json::to_value(&r.services).unwrap();
        assert!(json[0].get("replicas").is_none(), "1 is not written");
        assert_eq!(json[1]["replicas"], 3);
        let back: Vec<ServiceSpec> = serde_json::from_value(json).unwrap();
        assert_eq!(back, r.services);
        // A whole number however written (JSON Schema's `integer`); null is the default.
        for (ok, want) in [("3.0", 3), ("null", 1), ("100", 100)] {
            let text = format!("- slug: gh:a/b\n  replicas: {ok}\n");
            let r = parse_repos_file(&text, ReposFormat::Yaml).unwrap();
            assert_eq!(r.services[0].replicas, want, "{ok}");
        }
        for bad in ["0", "101", "1.5", "-2", "three", "100.5", "1e300"] {
            let text = format!("- slug: gh:a/b\n  replicas: {bad}\n");
            let e = parse_repos_file(&text, ReposFormat::Yaml)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("item 1 (line 1)")
                    && e.contains("`replicas` to be a whole number from 1 to 100"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn json_and_wrapped_form() {
        let text = r#"{"project": "shop", "services": ["gh:a/cart", {"slug": "bb:b/cart#x"}]}"#;
        let r = parse_repos_file(text, ReposFormat::Auto).unwrap();
        assert_eq!(r.project.as_ref().unwrap().as_str(), "shop");
        assert_eq!(names(&r), ["cart", "cart-2"]);
    }

    #[test]
    fn dedup_respects_explicit_names_and_is_deterministic() {
        let text = "- gh:a/svc\n- slug: gh:b/other\n  name: svc-2\n- gh:c/svc\n- gh:d/SVC\n";
        let r = parse_repos_file(text, ReposFormat::Yaml).unwrap();
        assert_eq!(names(&r), ["svc", "svc-2", "svc-3", "svc-4"]);
        let again = parse_repos_file(text, ReposFormat::Yaml).unwrap();
        assert_eq!(r, again);
    }

    #[test]
    fn errors_name_item_and_line() {
        let cases: &[(&str, &str)] = &[
            ("- gh:a/b\n- nope:x/y\n", "item 2 (line 2)"),
            (
                "- gh:a/b\n- slug: gh:a/c\n  bogus: 1\n",
                "unknown key \"bogus\"",
            ),
            ("- 42\n", "a slug string or a map"),
            ("- name: x\n", "a `slug` key"),
            ("- slug: gh:a/b\n  name: Bad_Name\n", "DNS label"),
            (
                "- slug: gh:a/b\n  name: x\n- slug: gh:a/c\n  name: x\n",
                "unique service name",
            ),
            ("- slug: gh:a/b\n  env: [1]\n", "`env` to be a map"),
            ("- slug: gh:a/b\n  env:\n    1BAD: x\n", "env key"),
            ("- slug: gh:a/b\n  env:\n    K: [x]\n", "env value of K"),
            (
                "- slug: gh:a/b\n  env:\n    K: \"a\\0b\"\n",
                "env value of K to have no NUL byte",
            ),
            (
                "- slug: gh:a/b\n  env:\n    IAC_RESTART: always\n",
                "expected env IAC_RESTART to be auto or never",
            ),
            (
                "- slug: gh:a/b\n  env:\n    IAC_RESTART_BACKOFF: 10\n",
                "env IAC_RESTART_BACKOFF to be a duration",
            ),
            (
                "- slug: gh:a/b\n  env:\n    IAC_RESTART_BACKOFF: 0s\n",
                "longer than 0s",
            ),
            (
                "- slug: gh:a/b\n  env:\n    IAC_RESTART_BACKOFF_MAX: 5s\n",
                "at least the first delay (10s)",
            ),
            ("- slug: gh:a/b\n  expose: 0\n", "`expose` to be"),
            ("- slug: gh:a/b\n  expose: nope\n", "item 1 (line 1)"),
            (
                "- slug: gh:a/b\n  expose: 8081\n- slug: gh:a/c\n  expose: \"0.0.0.0:8081\"\n",
                "already exposed by item 1",
            ),
            ("[]", "at least one service"),
            ("{\"services\": 3}", "`services` to be a list"),
            ("{\"servces\": []}", "unknown key \"servces\""),
            ("\"gh:a/b\"", "a list of services"),
            ("- gh:a/b\n  - : :\n", "YAML"),
        ];
        for (text, needle) in cases {
            let e = parse_repos_file(text, ReposFormat::Auto)
                .expect_err(text)
                .to_string();
            assert!(
                e.contains(needle),
                "{text:?}: {e:?} should contain {needle:?}"
            );
        }
        let e = parse_repos_file("[\"gh:a/b\",]", ReposFormat::Json)
            .unwrap_err()
            .to_string();
        assert!(e.contains("JSON") && e.contains("line 1"), "{e}");
    }

    #[test]
    fn load_resolves_relative_paths_and_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("repos.yml");
        std::fs::write(&f, "- path:apps/hello\n").unwrap();
        let r = load_repos_file(&f).unwrap();
        let Slug::Path { dir: d } = &r.services[0].slug else {
            panic!()
        };
        assert!(d.is_absolute() && d.ends_with("apps/hello"), "{d:?}");
        std::fs::write(&f, "- gh:a\n").unwrap();
        let e = load_repos_file(&f).unwrap_err().to_string();
        assert!(e.contains("repos.yml") && e.contains("item 1"), "{e}");
        let e = load_repos_file(&dir.path().join("missing.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.yaml"), "{e}");
    }

    #[test]
    fn a_sandbox_file_names_its_sandbox_and_ttl_and_baseline_names_avoid_the_copy_infix() {
        let r = parse_repos_file(
            "sandbox: feat\nttl: 2h\nservices:\n  - slug: gh:acme/cart#feature-x\n",
            ReposFormat::Yaml,
        )
        .unwrap();
        assert_eq!(r.sandbox.unwrap().as_str(), "feat");
        assert_eq!(r.ttl, Some(std::time::Duration::from_secs(7200)));
        assert_eq!(r.services[0].name.as_str(), "cart");
        let plain = parse_repos_file("- gh:acme/cart\n", ReposFormat::Yaml).unwrap();
        assert!(plain.sandbox.is_none() && plain.ttl.is_none());
        for (text, want) in [
            (
                "sandbox: Feat\nservices: [gh:a/b]\n",
                "`sandbox` to be a sandbox name",
            ),
            (
                "sandbox: [x]\nservices: [gh:a/b]\n",
                "`sandbox` to be a string",
            ),
            (
                "sandbox: f\nttl: 5\nservices: [gh:a/b]\n",
                "`ttl` to be a duration string",
            ),
            (
                "sandbox: f\nttl: soon\nservices: [gh:a/b]\n",
                "`ttl` to be a duration",
            ),
            (
                "ttl: 1h\nservices: [gh:a/b]\n",
                "`ttl` only beside `sandbox`",
            ),
            (
                "services:\n  - slug: gh:a/b\n    name: b--sb-x\n",
                "names sandbox copies",
            ),
        ] {
            let e = parse_repos_file(text, ReposFormat::Yaml)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    proptest::proptest! {
        #[test]
        fn parser_never_panics(s in "\\PC{0,200}") {
            let _ = parse_repos_file(&s, ReposFormat::Auto);
        }
        #[test]
        fn parser_never_panics_yamlish(s in "(- (gh|path|gl):[a-z/#]{0,10}\n|  [a-z]{1,5}: [a-z:]{0,6}\n|- [{}\\[\\]]\n){0,8}") {
            let _ = parse_repos_file(&s, ReposFormat::Yaml);
        }
    }
}
