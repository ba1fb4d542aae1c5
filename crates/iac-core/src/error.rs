//! Errors: one `thiserror` enum per stage, wrapped by the top-level [`Error`]. Messages name the
//! input and say what was expected; none contains a secret.

use std::path::PathBuf;

/// An invalid service or project name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid name {name:?}: it {why}")]
pub struct NameError {
    pub name: String,
    pub why: String,
}

/// A slug that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid slug {input:?}: expected {expected}")]
pub struct SlugError {
    pub input: String,
    pub expected: String,
}

/// A repos file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ReposFileError {
    #[error("cannot read repos file {file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("repos file is not valid {format}{}: {message}", line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    Syntax {
        format: &'static str,
        line: Option<usize>,
        message: String,
    },
    #[error("repos file: expected {expected}")]
    Shape { expected: String },
    #[error("repos file item {index}{}: expected {expected}", line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    Item {
        index: usize,
        line: Option<usize>,
        expected: String,
    },
    #[error("{file}: {inner}")]
    InFile {
        file: String,
        inner: Box<ReposFileError>,
    },
}

impl ReposFileError {
    /// Prefixes the error with the file it came from.
    pub fn in_file(self, path: &std::path::Path) -> Self {
        ReposFileError::InFile {
            file: path.display().to_string(),
            inner: Box::new(self),
        }
    }
}

/// Fetching a source tree failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{slug}: {why}")]
    Unsupported { slug: String, why: String },
    #[error("GET {url}: {message}")]
    Http {
        url: String,
        status: Option<u16>,
        message: String,
    },
    #[error("refusing archive entry {entry:?}: {why}")]
    Unsafe { entry: String, why: String },
    #[error("archive exceeds the {what} limit of {limit}")]
    TooLarge { what: String, limit: u64 },
    #[error("git {url}: {message}")]
    Git { url: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tarball fetch failed ({tarball}); git clone failed too ({git})")]
    Fallback {
        tarball: Box<FetchError>,
        git: Box<FetchError>,
    },
    /// The whole fetch took longer than its configured total deadline (`[fetch] deadline`).
    #[error(
        "fetching {slug} exceeded its deadline of {secs} s ([fetch] deadline); the transfer was stopped"
    )]
    Deadline { slug: String, secs: u64 },
}

impl FetchError {
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> FetchError {
        let path = path.into();
        move |source| FetchError::Io { path, source }
    }
}

/// Working out how to run a repository's main() failed.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error("no entry point found in {dir}; rules tried, in order:\n{}", tried.iter().map(|t| format!("  - {t}")).collect::<Vec<_>>().join("\n"))]
    NotFound { dir: PathBuf, tried: Vec<String> },
    #[error("{rule}: ambiguous, candidates are {}; {hint}", candidates.join(", "))]
    Ambiguous {
        rule: String,
        candidates: Vec<String>,
        hint: String,
    },
    #[error("invalid entrypoint override {value:?} (from {origin}): expected {expected}")]
    InvalidOverride {
        value: String,
        origin: String,
        expected: String,
    },
    #[error("cannot parse {file}: {message}")]
    Parse { file: PathBuf, message: String },
    #[error(
        "{file} asks for Python {constraint}, which none of the versions iac can provide ({available}) satisfies"
    )]
    PythonVersion {
        file: PathBuf,
        constraint: String,
        available: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Building an image failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("docker engine: {0}")]
    Engine(String),
    #[error("image build for {service} failed: {message}")]
    Build { service: String, message: String },
    #[error("template {name}: {message}")]
    Template { name: String, message: String },
    #[error("build context: {0}")]
    Context(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Issuing or reading certificates failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation: {0}")]
    Generate(String),
    #[error("{path}: {why}")]
    Invalid { path: PathBuf, why: String },
    #[error("{0}")]
    Refused(String),
}

/// Rendering a sidecar config failed.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error("sidecar template: {0}")]
    Template(String),
    #[error("sidecar config for {service}: {why}")]
    Invalid { service: String, why: String },
}

/// Provisioning failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("docker engine: {0}")]
    Engine(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{tool} {step} failed{}: {message}", code.map(|c| format!(" (exit {c})")).unwrap_or_default())]
    Tool {
        tool: String,
        step: String,
        code: Option<i32>,
        message: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// Talking to an agent (through its Envoy) failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot connect to {addr}: {message}")]
    Connect { addr: String, message: String },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("rpc failed ({code}): {message}")]
    Rpc { code: String, message: String },
    #[error("{0}")]
    NotFound(String),
}

/// Authentication or authorization failed. [`AuthError::status`] maps it to HTTP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing Authorization: Bearer token")]
    Missing,
    #[error("malformed credentials: {0}")]
    Malformed(String),
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("auth provider unavailable: {0}")]
    Unavailable(String),
}

impl AuthError {
    /// 401 for bad credentials, 403 for a valid identity without permission, 503 when the
    /// identity provider could not be asked (fail closed).
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Forbidden(_) => 403,
            AuthError::Unavailable(_) => 503,
            _ => 401,
        }
    }
}

/// Anything a deploy can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Slug(#[from] SlugError),
    #[error(transparent)]
    Repos(#[from] ReposFileError),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("fetch: {0}")]
    Fetch(#[from] FetchError),
    #[error("entry: {0}")]
    Entry(#[from] EntryError),
    #[error("build: {0}")]
    Build(#[from] BuildError),
    #[error("certs: {0}")]
    Pki(#[from] PkiError),
    #[error("sidecar: {0}")]
    Sidecar(#[from] SidecarError),
    #[error("provision: {0}")]
    Provision(#[from] ProvisionError),
    #[error("probe: {0}")]
    Probe(#[from] ProbeError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}
