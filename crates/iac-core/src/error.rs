//! Errors: one `thiserror` enum per stage, wrapped by the top-level [`Error`]. Messages name the
//! input and say what was expected; none contains a secret.

use std::path::PathBuf;

/// An invalid service or project name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid name {name:?}: it {why}")]
pub struct NameError {
    /// The name as given.
    pub name: String,
    /// What is wrong with it (completes "it …").
    pub why: String,
}

/// A slug that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid slug {input:?}: expected {expected}")]
pub struct SlugError {
    /// The slug as given.
    pub input: String,
    /// The grammar it should follow.
    pub expected: String,
}

/// A repos file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ReposFileError {
    /// The file could not be read.
    #[error("cannot read repos file {file}: {source}")]
    Read {
        /// The repos file.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid YAML/JSON.
    #[error("repos file is not valid {format}{}: {message}", line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    Syntax {
        /// `YAML` or `JSON`.
        format: &'static str,
        /// Where, when the parser says.
        line: Option<usize>,
        /// The parser's message.
        message: String,
    },
    /// The document is not a list of items.
    #[error("repos file: expected {expected}")]
    Shape {
        /// What the document should be.
        expected: String,
    },
    /// One item is invalid.
    #[error("repos file item {index}{}: expected {expected}", line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    Item {
        /// 1-based position of the item.
        index: usize,
        /// Its line, when known.
        line: Option<usize>,
        /// What the item should have been.
        expected: String,
    },
    /// Another error, prefixed with the file it came from ([`ReposFileError::in_file`]).
    #[error("{file}: {inner}")]
    InFile {
        /// The repos file.
        file: String,
        /// The error.
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
    /// The slug cannot be fetched this way.
    #[error("{slug}: {why}")]
    Unsupported {
        /// The slug.
        slug: String,
        /// Why it cannot be fetched.
        why: String,
    },
    /// An HTTP request failed or answered an error status.
    #[error("GET {url}: {message}")]
    Http {
        /// The URL (never with credentials).
        url: String,
        /// The status, when the server answered.
        status: Option<u16>,
        /// What went wrong.
        message: String,
    },
    /// An archive entry that extraction refuses (absolute, `..`, a link out of the tree, a device).
    #[error("refusing archive entry {entry:?}: {why}")]
    Unsafe {
        /// The entry's path in the archive.
        entry: String,
        /// Why it is refused.
        why: String,
    },
    /// A size or file-count cap was exceeded.
    #[error("archive exceeds the {what} limit of {limit}")]
    TooLarge {
        /// Which cap (bytes, files, …).
        what: String,
        /// The configured limit.
        limit: u64,
    },
    /// A git clone/fetch failed.
    #[error("git {url}: {message}")]
    Git {
        /// The clone URL.
        url: String,
        /// What git said.
        message: String,
    },
    /// A local file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Both the archive and the git fallback failed.
    #[error("tarball fetch failed ({tarball}); git clone failed too ({git})")]
    Fallback {
        /// The archive's error.
        tarball: Box<FetchError>,
        /// The clone's error.
        git: Box<FetchError>,
    },
    /// An API-originated fetch (or any fetch with `[fetch] refuse_private = "always"`) named a
    /// host that resolves to a loopback, private, link-local or otherwise local address. Refused
    /// before any connection is made, with the same message whatever the port's state.
    #[error(
        "refused: {slug} resolves to a private or local address; allow it with [fetch] allow_private_hosts"
    )]
    Refused {
        /// The slug (or URL) that was refused.
        slug: String,
    },
    /// Listing a repository's branches and tags failed (the slug, and why).
    #[error("listing the branches and tags of {slug}: {source}")]
    Refs {
        /// The slug.
        slug: String,
        /// What failed.
        source: Box<FetchError>,
    },
    /// The whole fetch took longer than its configured total deadline (`[fetch] deadline`).
    #[error(
        "fetching {slug} exceeded its deadline of {secs} s ([fetch] deadline); the transfer was stopped"
    )]
    Deadline {
        /// The slug.
        slug: String,
        /// The deadline, in seconds.
        secs: u64,
    },
}

impl FetchError {
    /// A `map_err` adapter: an I/O error on `path` as [`FetchError::Io`].
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> FetchError {
        let path = path.into();
        move |source| FetchError::Io { path, source }
    }
}

/// Working out how to run a repository's main() failed.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// No rule matched: the tree and every rule tried, in order.
    #[error("no entry point found in {dir}; rules tried, in order:\n{}", tried.iter().map(|t| format!("  - {t}")).collect::<Vec<_>>().join("\n"))]
    NotFound {
        /// The source tree.
        dir: PathBuf,
        /// Every rule tried, in order, with why it did not match.
        tried: Vec<String>,
    },
    /// A rule matched several candidates.
    #[error("{rule}: ambiguous, candidates are {}; {hint}", candidates.join(", "))]
    Ambiguous {
        /// The rule.
        rule: String,
        /// What it found.
        candidates: Vec<String>,
        /// How to choose (e.g. an `entrypoint` override).
        hint: String,
    },
    /// An entrypoint override that cannot be used.
    #[error("invalid entrypoint override {value:?} (from {origin}): expected {expected}")]
    InvalidOverride {
        /// The override as given.
        value: String,
        /// Where it came from (repos file, Dockerfile label, pyproject).
        origin: String,
        /// What was expected.
        expected: String,
    },
    /// A project file (pyproject.toml, Procfile, …) that does not parse: the file and why.
    #[error("cannot parse {file}: {message}")]
    Parse {
        /// The file.
        file: PathBuf,
        /// Why it does not parse.
        message: String,
    },
    /// The repository asks for a Python version no base image provides.
    #[error(
        "{file} asks for Python {constraint}, which none of the versions iac can provide ({available}) satisfies"
    )]
    PythonVersion {
        /// The file that says so.
        file: PathBuf,
        /// Its constraint.
        constraint: String,
        /// The versions iac provides.
        available: String,
    },
    /// A local file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The app's port is one the sidecar uses ([`crate::MeshPorts::reserved`]).
    #[error(
        "{service}: app port {port} (from {from}) is a port the sidecar uses; expected any port but {reserved}"
    )]
    ReservedPort {
        /// The service.
        service: String,
        /// The port.
        port: u16,
        /// Where the port comes from: a repo file and line, or the service's `env: PORT`.
        from: String,
        /// The reserved ports and what each is.
        reserved: String,
    },
}

/// Building an image failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The Docker engine failed or could not be reached.
    #[error("docker engine: {0}")]
    Engine(String),
    /// The build of `service`'s image failed: the engine's (or pip's) message.
    #[error("image build for {service} failed: {message}")]
    Build {
        /// The service.
        service: String,
        /// The engine's (or pip's) message and the build output's tail.
        message: String,
    },
    /// The Dockerfile template is unreadable or does not render.
    #[error("template {name}: {message}")]
    Template {
        /// The template.
        name: String,
        /// Why it cannot be used.
        message: String,
    },
    /// The build context could not be assembled (caps, unreadable files, the agent binary).
    #[error("build context: {0}")]
    Context(String),
    /// A local file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Issuing or reading certificates failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A certificate or key file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Generating a key or certificate failed.
    #[error("certificate generation: {0}")]
    Generate(String),
    /// A certificate or key file that is not usable: the file and why.
    #[error("{path}: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why it is not usable.
        why: String,
    },
    /// An operation the configuration does not allow (e.g. managing an external CA).
    #[error("{0}")]
    Refused(String),
}

/// Rendering a sidecar config failed.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    /// The sidecar template is unreadable or does not render.
    #[error("sidecar template: {0}")]
    Template(String),
    /// The config rendered for `service` is not valid.
    #[error("sidecar config for {service}: {why}")]
    Invalid {
        /// The service.
        service: String,
        /// Why it is not usable.
        why: String,
    },
}

/// Provisioning failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The Docker engine failed or could not be reached (the caller may retry later).
    #[error("docker engine: {0}")]
    Engine(String),
    /// The engine refused because of the objects' state (a name in use, a project busy): the caller's request conflicts, retrying unchanged will not help.
    #[error("{0}")]
    Conflict(String),
    /// An external tool (terraform/tofu) failed a step.
    #[error("{tool} {step} failed{}: {message}", code.map(|c| format!(" (exit {c})")).unwrap_or_default())]
    Tool {
        /// The binary.
        tool: String,
        /// `init`, `plan`, `apply`, …
        step: String,
        /// Its exit code, when it exited.
        code: Option<i32>,
        /// The last lines of its stderr.
        message: String,
    },
    /// A local file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The stack or the tool's output is not usable as it is.
    #[error("{0}")]
    Invalid(String),
}

/// A service's release command did not succeed, so its new pods were not started.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReleaseError {
    /// The command ran and ended unsuccessfully: a non-zero exit or a signal.
    #[error("release command `{command}` ({origin}) {status}; last output:\n{tail}")]
    Failed {
        /// The command, as one line.
        command: String,
        /// Where it is declared, e.g. `Procfile line 2 (release)`.
        origin: String,
        /// How it ended, e.g. `exited with code 3`, `was killed by signal 9 (SIGKILL)`.
        status: String,
        /// The last lines of its output (bounded).
        tail: String,
    },
    /// The command was still running at its deadline and was stopped.
    #[error(
        "release command `{command}` ({origin}) did not finish within {timeout} (release_timeout) and was stopped; last output:\n{tail}"
    )]
    Deadline {
        /// The command, as one line.
        command: String,
        /// Where it is declared.
        origin: String,
        /// The deadline, e.g. `10m`.
        timeout: String,
        /// The last lines of its output (bounded).
        tail: String,
    },
    /// The one-off container could not be created, started or watched.
    #[error("release command `{command}`: {message}")]
    Engine {
        /// The command, as one line.
        command: String,
        /// What failed.
        message: String,
    },
    /// The deploy target cannot run release commands.
    #[error(
        "the {provisioner} provisioner cannot run release commands; {service} declares `{command}` ({origin}). Deploy it with the docker provisioner, or remove the release step"
    )]
    Unsupported {
        /// The provisioner's name.
        provisioner: String,
        /// The service.
        service: String,
        /// The command, as one line.
        command: String,
        /// Where it is declared.
        origin: String,
    },
}

/// Talking to an agent (through its Envoy) failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProbeError {
    /// No connection to the service's Envoy at `addr`.
    #[error("cannot connect to {addr}: {message}")]
    Connect {
        /// The address dialed.
        addr: String,
        /// Why the connection failed.
        message: String,
    },
    /// The TLS handshake or the client identity failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// The RPC answered an error status (gRPC `code`).
    #[error("rpc failed ({code}): {message}")]
    Rpc {
        /// The gRPC status code.
        code: String,
        /// The status message.
        message: String,
    },
    /// The agent does not know what was asked for.
    #[error("{0}")]
    NotFound(String),
}

/// Authentication or authorization failed. [`AuthError::status`] maps it to HTTP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credentials were sent.
    #[error("missing Authorization: Bearer token")]
    Missing,
    /// The credentials are not a bearer token iac can read.
    #[error("malformed credentials: {0}")]
    Malformed(String),
    /// The token's signature or claims do not verify.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The token's `exp` has passed.
    #[error("token expired")]
    Expired,
    /// The token's `nbf` is in the future.
    #[error("token not valid yet")]
    NotYetValid,
    /// A valid identity without the role or user id the server requires.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The identity provider could not be asked: requests fail closed (503).
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
    /// A slug does not parse.
    #[error(transparent)]
    Slug(#[from] SlugError),
    /// The repos file is unusable.
    #[error(transparent)]
    Repos(#[from] ReposFileError),
    /// A service or project name is invalid.
    #[error(transparent)]
    Name(#[from] NameError),
    /// Fetching a source failed.
    #[error("fetch: {0}")]
    Fetch(#[from] FetchError),
    /// Resolving an entry point failed.
    #[error("entry: {0}")]
    Entry(#[from] EntryError),
    /// Building an image failed.
    #[error("build: {0}")]
    Build(#[from] BuildError),
    /// Issuing certificates failed.
    #[error("certs: {0}")]
    Pki(#[from] PkiError),
    /// Rendering a sidecar config failed.
    #[error("sidecar: {0}")]
    Sidecar(#[from] SidecarError),
    /// Provisioning failed.
    #[error("provision: {0}")]
    Provision(#[from] ProvisionError),
    /// A release command failed.
    #[error("release: {0}")]
    Release(#[from] ReleaseError),
    /// Talking to an agent failed.
    #[error("probe: {0}")]
    Probe(#[from] ProbeError),
    /// Authentication or authorization failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// A sandbox cannot be deployed or removed as asked.
    #[error("sandbox: {0}")]
    Sandbox(String),
    /// A local file operation failed (configs, the deploy lock).
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}
