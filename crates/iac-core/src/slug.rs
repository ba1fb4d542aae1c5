//! Repository slugs: `gh:OWNER/REPO[#REF]`, `gl:GROUP[/SUBGROUP…]/REPO[#REF]`, `bb:OWNER/REPO[#REF]`,
//! `git+https://HOST/PATH[.git][#REF]`, `git+file:///ABS/PATH[#REF]` and `path:DIR`.
//!
//! Parsing never panics (there is a property test and a fuzz target); every error names the input
//! and says what was expected.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::SlugError;
use crate::name::ServiceName;

/// A hosted forge reachable by a short scheme. The host is configuration, not part of the slug.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Forge {
    /// GitHub (`gh:`).
    GitHub,
    /// GitLab (`gl:`).
    GitLab,
    /// Bitbucket (`bb:`).
    Bitbucket,
}

impl Forge {
    /// The slug scheme: `gh`, `gl` or `bb`.
    pub fn scheme(self) -> &'static str {
        match self {
            Forge::GitHub => "gh",
            Forge::GitLab => "gl",
            Forge::Bitbucket => "bb",
        }
    }
}

/// Where a service's source comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Slug {
    /// `gh:`, `gl:`, `bb:`. For GitLab `owner` may contain `/` (subgroups).
    Hosted {
        /// The forge.
        forge: Forge,
        /// Owner (user, organisation, group path).
        owner: String,
        /// Repository.
        repo: String,
        /// Branch, tag or commit (`#REF`); `None`: the default branch.
        reference: Option<String>,
    },
    /// `git+https://HOST/PATH` — `url` is the `https://…` part.
    GitHttps {
        /// The `https://…` URL.
        url: String,
        /// Branch, tag or commit; `None`: the default branch.
        reference: Option<String>,
    },
    /// `git+file:///ABS/PATH` — a local repository, cloned like a remote one.
    GitFile {
        /// Absolute path of the repository.
        path: PathBuf,
        /// Branch, tag or commit; `None`: the checked-out branch.
        reference: Option<String>,
    },
    /// `path:DIR` — a local working tree used as is (development).
    Path {
        /// The directory.
        dir: PathBuf,
    },
}

impl Slug {
    /// The `#REF` part, if any.
    pub fn reference(&self) -> Option<&str> {
        match self {
            Slug::Hosted { reference, .. }
            | Slug::GitHttps { reference, .. }
            | Slug::GitFile { reference, .. } => reference.as_deref(),
            Slug::Path { .. } => None,
        }
    }

    /// The repository's own name (last path segment, `.git` dropped), used to derive service names.
    pub fn repo_name(&self) -> String {
        fn last(s: &str) -> String {
            let s = s.trim_end_matches('/');
            let base = s.rsplit('/').next().unwrap_or(s);
            base.strip_suffix(".git").unwrap_or(base).to_string()
        }
        match self {
            Slug::Hosted { repo, .. } => repo.clone(),
            Slug::GitHttps { url, .. } => last(url),
            Slug::GitFile { path, .. } | Slug::Path { dir: path } => last(&path.to_string_lossy()),
        }
    }

    /// The service name this slug gets when the repos file does not name it.
    pub fn default_service_name(&self) -> Option<ServiceName> {
        ServiceName::derive(&self.repo_name())
    }

    /// `path:` slugs with a relative directory are resolved against `base` (the repos file's dir).
    pub fn resolve_relative(self, base: &std::path::Path) -> Slug {
        match self {
            Slug::Path { dir } if dir.is_relative() => Slug::Path {
                dir: base.join(dir),
            },
            other => other,
        }
    }
}

impl fmt::Display for Slug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = |r: &Option<String>| r.as_ref().map(|r| format!("#{r}")).unwrap_or_default();
        match self {
            Slug::Hosted {
                forge,
                owner,
                repo,
                reference,
            } => {
                write!(f, "{}:{owner}/{repo}{}", forge.scheme(), r(reference))
            }
            Slug::GitHttps { url, reference } => write!(f, "git+{url}{}", r(reference)),
            Slug::GitFile { path, reference } => {
                write!(f, "git+file://{}{}", path.display(), r(reference))
            }
            Slug::Path { dir } => write!(f, "path:{}", dir.display()),
        }
    }
}

impl FromStr for Slug {
    type Err = SlugError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |expected: &str| SlugError {
            input: input.to_string(),
            expected: expected.to_string(),
        };
        let s = input.trim();
        if s.is_empty() {
            return Err(err("a non-empty slug such as gh:owner/repo#ref"));
        }
        if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(err("no whitespace or control characters inside a slug"));
        }
        let (scheme, rest) = s
            .split_once(':')
            .ok_or_else(|| err("SCHEME:… with scheme gh, gl, bb, git+https, git+file or path"))?;
        match scheme {
            "gh" | "gl" | "bb" => {
                let forge = match scheme {
                    "gh" => Forge::GitHub,
                    "gl" => Forge::GitLab,
                    _ => Forge::Bitbucket,
                };
                let (path, reference) = split_ref(rest).map_err(|e| err(&e))?;
                let segs: Vec<&str> = path.split('/').collect();
                let shape = if forge == Forge::GitLab {
                    "gl:GROUP[/SUBGROUP…]/REPO[#REF]"
                } else if forge == Forge::GitHub {
                    "gh:OWNER/REPO[#REF]"
                } else {
                    "bb:OWNER/REPO[#REF]"
                };
                let count_ok = if forge == Forge::GitLab {
                    segs.len() >= 2
                } else {
                    segs.len() == 2
                };
                if !count_ok {
                    return Err(err(shape));
                }
                for seg in &segs {
                    check_segment(seg).map_err(|why| err(&format!("{shape}: {why}")))?;
                }
                let (owner, repo) = path.rsplit_once('/').expect("at least two segments");
                let repo = repo.trim_end_matches(".git");
                if repo.is_empty() {
                    return Err(err(&format!("{shape}: repository name is empty")));
                }
                // Checked again without the suffix: `...git` would otherwise become `..`.
                check_segment(repo).map_err(|why| err(&format!("{shape}: {why}")))?;
                Ok(Slug::Hosted {
                    forge,
                    owner: owner.to_string(),
                    repo: repo.to_string(),
                    reference,
                })
            }
            "git+https" => {
                let (url, reference) = split_ref(rest).map_err(|e| err(&e))?;
                let after = url
                    .strip_prefix("//")
                    .ok_or_else(|| err("git+https://HOST/PATH[.git][#REF]"))?;
                let (host, path) = after.split_once('/').ok_or_else(|| {
                    err("git+https://HOST/PATH[.git][#REF]: a path after the host")
                })?;
                if host.is_empty() || host.contains('@') {
                    return Err(err("git+https://HOST/PATH: a host without credentials"));
                }
                if path.trim_matches('/').is_empty() {
                    return Err(err(
                        "git+https://HOST/PATH: a repository path after the host",
                    ));
                }
                for seg in path.trim_end_matches('/').split('/') {
                    check_segment(seg)
                        .map_err(|why| err(&format!("git+https://HOST/PATH: {why}")))?;
                }
                Ok(Slug::GitHttps {
                    url: format!("https:{url}"),
                    reference,
                })
            }
            "git+file" => {
                let (url, reference) = split_ref(rest).map_err(|e| err(&e))?;
                let path = url
                    .strip_prefix("//")
                    .filter(|p| p.starts_with('/'))
                    .ok_or_else(|| err("git+file:///ABSOLUTE/PATH[#REF] (three slashes)"))?;
                if path.split('/').any(|c| c == "..") {
                    return Err(err("git+file:///ABSOLUTE/PATH without '..' components"));
                }
                if path.trim_matches('/').is_empty() {
                    return Err(err("git+file:///ABSOLUTE/PATH naming a repository"));
                }
                Ok(Slug::GitFile {
                    path: PathBuf::from(path),
                    reference,
                })
            }
            "path" => {
                if rest.is_empty() {
                    return Err(err("path:DIR with a directory"));
                }
                if rest.contains('#') {
                    return Err(err("path:DIR without #REF (a working tree has no ref)"));
                }
                Ok(Slug::Path {
                    dir: PathBuf::from(rest),
                })
            }
            other => Err(err(&format!(
                "a scheme of gh, gl, bb, git+https, git+file or path, not {other:?}"
            ))),
        }
    }
}

impl TryFrom<String> for Slug {
    type Error = SlugError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

fn split_ref(rest: &str) -> Result<(&str, Option<String>), String> {
    match rest.split_once('#') {
        None => Ok((rest, None)),
        Some((path, r)) => {
            check_ref(r)?;
            Ok((path, Some(r.to_string())))
        }
    }
}

/// A git ref name as `git check-ref-format` would accept it (branch, tag) or a hex sha.
fn check_ref(r: &str) -> Result<(), String> {
    if r.is_empty() {
        return Err("a ref after '#' (branch, tag or commit sha)".into());
    }
    if r.starts_with('-') || r.starts_with('/') || r.ends_with('/') || r.ends_with('.') {
        return Err(format!("a valid git ref after '#', not {r:?}"));
    }
    if r.contains("..") || r.contains("@{") || r.contains("//") || r.ends_with(".lock") {
        return Err(format!("a valid git ref after '#', not {r:?}"));
    }
    if r.chars()
        .any(|c| matches!(c, '~' | '^' | ':' | '?' | '*' | '[' | '\\' | '#'))
    {
        return Err(format!(
            "a valid git ref after '#' (no ~ ^ : ? * [ \\ #), not {r:?}"
        ));
    }
    Ok(())
}

fn check_segment(seg: &str) -> Result<(), String> {
    if seg.is_empty() {
        return Err("empty path segment".into());
    }
    if seg == "." || seg == ".." {
        return Err(format!("path segment {seg:?} is not allowed"));
    }
    if !seg
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "path segment {seg:?} may only contain A-Z a-z 0-9 - _ ."
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Slug {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn table_of_valid_slugs() {
        let cases: &[(&str, Slug)] = &[
            (
                "gh:octo/hello",
                Slug::Hosted {
                    forge: Forge::GitHub,
                    owner: "octo".into(),
                    repo: "hello".into(),
                    reference: None,
                },
            ),
            (
                "gh:octo/hello#v1.2.0",
                Slug::Hosted {
                    forge: Forge::GitHub,
                    owner: "octo".into(),
                    repo: "hello".into(),
                    reference: Some("v1.2.0".into()),
                },
            ),
            (
                "gh:octo/hello.git#main",
                Slug::Hosted {
                    forge: Forge::GitHub,
                    owner: "octo".into(),
                    repo: "hello".into(),
                    reference: Some("main".into()),
                },
            ),
            (
                "gl:grp/sub/deeper/svc#feature/x",
                Slug::Hosted {
                    forge: Forge::GitLab,
                    owner: "grp/sub/deeper".into(),
                    repo: "svc".into(),
                    reference: Some("feature/x".into()),
                },
            ),
            (
                "bb:team/repo_1#0123abcd",
                Slug::Hosted {
                    forge: Forge::Bitbucket,
                    owner: "team".into(),
                    repo: "repo_1".into(),
                    reference: Some("0123abcd".into()),
                },
            ),
            (
                "git+https://git.example.com/a/b.git#main",
                Slug::GitHttps {
                    url: "https://git.example.com/a/b.git".into(),
                    reference: Some("main".into()),
                },
            ),
            (
                "git+https://127.0.0.1:8080/x/y",
                Slug::GitHttps {
                    url: "https://127.0.0.1:8080/x/y".into(),
                    reference: None,
                },
            ),
            (
                "git+file:///srv/repos/app#v2",
                Slug::GitFile {
                    path: "/srv/repos/app".into(),
                    reference: Some("v2".into()),
                },
            ),
            (
                "path:./examples/hello",
                Slug::Path {
                    dir: "./examples/hello".into(),
                },
            ),
            (
                "  gh:a/b  ",
                Slug::Hosted {
                    forge: Forge::GitHub,
                    owner: "a".into(),
                    repo: "b".into(),
                    reference: None,
                },
            ),
        ];
        for (input, want) in cases {
            assert_eq!(&ok(input), want, "{input}");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "gh:octo/hello#v1",
            "gl:a/b/c",
            "bb:t/r#x",
            "git+https://h/a/b.git#m",
            "git+file:///r/a#t",
            "path:rel/dir",
        ] {
            assert_eq!(ok(s).to_string(), s);
            assert_eq!(ok(&ok(s).to_string()), ok(s));
        }
    }

    /// Found by the slug_parse fuzz target (10-minute run): the repository segment `...git` passed
    /// the segment check and became `..` once `.git` was stripped.
    #[test]
    fn a_repository_that_is_dots_once_dot_git_is_stripped_is_refused() {
        for s in [
            "gl:vsl/7lolamp/...git",
            "gh:o/...git",
            "bb:o/..git.git",
            "gh:o/.git.git",
        ] {
            let e = s.parse::<Slug>().unwrap_err().to_string();
            assert!(e.contains(s), "{s}: {e}");
        }
        assert_eq!(ok("gh:o/a.git.git").to_string(), "gh:o/a");
    }

    #[test]
    fn table_of_invalid_slugs() {
        let cases: &[(&str, &str)] = &[
            ("", "non-empty"),
            ("octo/hello", "SCHEME"),
            ("gh:octo", "gh:OWNER/REPO"),
            ("gh:a/b/c", "gh:OWNER/REPO"),
            ("gl:onlyone", "gl:GROUP"),
            ("gh:a/b#", "a ref after '#'"),
            ("gh:a/b#..x", "valid git ref"),
            ("gh:a/b#-x", "valid git ref"),
            ("gh:a/b#a~1", "valid git ref"),
            ("gl:a/../b", "not allowed"),
            ("gh:a/b c", "whitespace"),
            ("gh:a/b$", "may only contain"),
            ("svn:a/b", "not \"svn\""),
            ("git+https:/h/a", "git+https://HOST"),
            ("git+https://h", "a path after the host"),
            ("git+https://u:p@h/a", "without credentials"),
            ("git+file://relative/path", "three slashes"),
            ("git+file:///a/../b", "'..'"),
            ("path:", "with a directory"),
            ("path:x#main", "without #REF"),
        ];
        for (input, needle) in cases {
            let e = input.parse::<Slug>().expect_err(input).to_string();
            assert!(
                e.contains(needle),
                "{input:?}: {e:?} should mention {needle:?}"
            );
            assert!(
                e.contains(input.trim()),
                "{input:?}: error should quote the input: {e}"
            );
        }
    }

    #[test]
    fn repo_names_and_service_names() {
        assert_eq!(ok("gl:a/b/My.Svc#x").repo_name(), "My.Svc");
        assert_eq!(
            ok("gl:a/b/My.Svc#x")
                .default_service_name()
                .unwrap()
                .as_str(),
            "my-svc"
        );
        assert_eq!(ok("git+https://h/x/y.git").repo_name(), "y");
        assert_eq!(ok("git+file:///tmp/fixture-1/").repo_name(), "fixture-1");
        assert_eq!(ok("path:./examples/hello").repo_name(), "hello");
    }

    proptest::proptest! {
        #[test]
        fn parser_never_panics(s in "\\PC{0,64}") {
            let _ = s.parse::<Slug>();
        }

        #[test]
        fn parser_never_panics_on_slug_like(s in "(gh|gl|bb|git\\+https|git\\+file|path):[a-z./#:~@-]{0,30}") {
            if let Ok(slug) = s.parse::<Slug>() {
                // Whatever parses must print back to something that parses to the same slug.
                let again: Slug = slug.to_string().parse().unwrap();
                proptest::prop_assert_eq!(again, slug);
            }
        }
    }
}
