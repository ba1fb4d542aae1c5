//! `apt.txt` / `Aptfile` (the Heroku and Railpack convention): Debian packages an app needs
//! natively — headers and libraries its source distributions build against (`libpq-dev`,
//! `libyaml-dev`, `gcc`) — one per line, `#` comments. Pure: text in, validated names out; every
//! line that is not a Debian package name (optionally `=version`) is refused naming the file and
//! line (Heroku's `.deb` URLs included: iac installs from the base image's Debian mirror only).
//! [`super::apt_base`] installs them into a derived base image.

use std::path::Path;

/// Files read, the first that exists.
pub const FILES: &[&str] = &["apt.txt", "Aptfile"];

/// Most packages one file may list.
const MAX_PACKAGES: usize = 200;
/// Largest file read.
const MAX_BYTES: u64 = 64 * 1024;

/// The packages of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptPackages {
    /// `apt.txt` or `Aptfile`.
    pub file: &'static str,
    /// Sorted and de-duplicated (`name` or `name=version`).
    pub packages: Vec<String>,
}

/// Reads the first of [`FILES`] at the root of `dir`; `Ok(None)` when there is none.
pub fn read(dir: &Path) -> Result<Option<AptPackages>, String> {
    let Some(file) = FILES.iter().copied().find(|f| dir.join(f).is_file()) else {
        return Ok(None);
    };
    let path = dir.join(file);
    let meta = std::fs::symlink_metadata(&path).map_err(|e| format!("{file}: {e}"))?;
    if !meta.is_file() || meta.len() > MAX_BYTES {
        return Err(format!(
            "{file}: expected a regular file of at most {MAX_BYTES} bytes listing Debian packages"
        ));
    }
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("{file}: {e} (expected UTF-8 text)"))?;
    parse(file, &text).map(Some)
}

/// Parses the text of `file`.
pub fn parse(file: &'static str, text: &str) -> Result<AptPackages, String> {
    let mut packages = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        // Aptfiles sometimes list several names on a line.
        for word in line.split_whitespace() {
            check(word).map_err(|why| format!("{file}:{}: {word:?}: {why}", i + 1))?;
            packages.push(word.to_string());
        }
    }
    packages.sort();
    packages.dedup();
    if packages.len() > MAX_PACKAGES {
        return Err(format!(
            "{file}: {} packages; expected at most {MAX_PACKAGES}",
            packages.len()
        ));
    }
    Ok(AptPackages { file, packages })
}

/// A Debian package name (policy §5.6.1: lowercase letters, digits, `+`, `-`, `.`; at least two
/// characters, starting with a letter or digit), optionally `=version` (policy §5.6.12: digits
/// first, then letters, digits, `.`, `+`, `~`, `-`, with an optional `epoch:`).
fn check(word: &str) -> Result<(), String> {
    const EXPECTED: &str = "expected a Debian package name (lowercase letters, digits, '+', '-', '.'; at least 2 characters, starting with a letter or digit), optionally =version";
    if word.contains("://") || word.ends_with(".deb") {
        return Err(format!(
            "{EXPECTED}; .deb files and URLs are not installed (only packages from the base image's Debian mirror)"
        ));
    }
    let (name, version) = match word.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (word, None),
    };
    let b = name.as_bytes();
    let name_ok = b.len() >= 2
        && b.len() <= 100
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'+' | b'-' | b'.')
        });
    if !name_ok {
        return Err(EXPECTED.into());
    }
    if let Some(v) = version {
        let (epoch, rest) = match v.split_once(':') {
            Some((e, r)) => (Some(e), r),
            None => (None, v),
        };
        let epoch_ok = epoch.is_none_or(|e| !e.is_empty() && e.bytes().all(|c| c.is_ascii_digit()));
        let rb = rest.as_bytes();
        let rest_ok = !rb.is_empty()
            && rb.len() <= 100
            && rb[0].is_ascii_digit()
            && rb
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'+' | b'~' | b'-'));
        if !(epoch_ok && rest_ok) {
            return Err(format!(
                "version {v:?} is not a Debian version ([epoch:]upstream[-revision], starting with a digit)"
            ));
        }
    }
    Ok(())
}

/// Debian packages (bookworm) that provide common headers source distributions need.
const HEADER_PACKAGES: &[(&str, &str)] = &[
    ("Python.h", "python3-dev"),
    ("ffi.h", "libffi-dev"),
    ("yaml.h", "libyaml-dev"),
    ("libpq-fe.h", "libpq-dev"),
    ("pg_config.h", "libpq-dev"),
    ("mysql.h", "default-libmysqlclient-dev"),
    ("mysql/mysql.h", "default-libmysqlclient-dev"),
    ("openssl/ssl.h", "libssl-dev"),
    ("openssl/opensslv.h", "libssl-dev"),
    ("zlib.h", "zlib1g-dev"),
    ("jpeglib.h", "libjpeg-dev"),
    ("png.h", "libpng-dev"),
    ("libxml/xpath.h", "libxml2-dev"),
    ("libxml/xmlversion.h", "libxml2-dev"),
    ("libxslt/xslt.h", "libxslt1-dev"),
    ("lber.h", "libldap2-dev"),
    ("ldap.h", "libldap2-dev"),
    ("sasl/sasl.h", "libsasl2-dev"),
    ("sqlite3.h", "libsqlite3-dev"),
    ("krb5.h", "libkrb5-dev"),
    ("gmp.h", "libgmp-dev"),
    ("sndfile.h", "libsndfile1-dev"),
    ("portaudio.h", "portaudio19-dev"),
];

/// What to add to apt.txt for a missing C header `header` (`yaml.h`, `libxml/xpath.h`).
pub fn suggest_for_header(header: &str) -> String {
    match HEADER_PACKAGES.iter().find(|(h, _)| *h == header) {
        Some((_, pkg)) => {
            format!("add the Debian package that provides it to apt.txt (for {header}: `{pkg}`)")
        }
        None => format!(
            "add the Debian package that provides it to apt.txt (`apt-file search {header}` names it; usually a lib…-dev package)"
        ),
    }
}

/// What to add to apt.txt for a library the linker did not find (`-lfoo`).
pub fn suggest_for_library(lib: &str) -> String {
    format!(
        "add the Debian package with its development files to apt.txt (for -l{lib}: usually `lib{lib}-dev`; `apt-file search lib{lib}.so` names it)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_comments_and_versions() {
        let got = parse(
            "apt.txt",
            "# native build deps\nlibpq-dev\nlibyaml-dev=0.2.5-1   # pinned\n\ngcc g++\nlibpq-dev\npython3.11-dev\nlibxml2-dev=2:2.9.14+dfsg-1.3~deb12u1\n",
        )
        .unwrap();
        assert_eq!(got.file, "apt.txt");
        assert_eq!(
            got.packages,
            [
                "g++",
                "gcc",
                "libpq-dev",
                "libxml2-dev=2:2.9.14+dfsg-1.3~deb12u1",
                "libyaml-dev=0.2.5-1",
                "python3.11-dev"
            ]
        );
    }

    #[test]
    fn anything_else_is_refused_naming_file_and_line() {
        let cases = [
            ("libpq-dev\nLibPQ\n", "Aptfile:2: \"LibPQ\""),
            ("x\n", "Aptfile:1: \"x\""),
            ("libpq-dev;rm\n", "Debian package name"),
            ("$(id)\n", "Debian package name"),
            ("-o\n", "Debian package name"),
            (
                "https://example.com/x.deb\n",
                ".deb files and URLs are not installed",
            ),
            ("libfoo=latest\n", "is not a Debian version"),
            ("libfoo=1.0;ls\n", "is not a Debian version"),
            ("libfoo:amd64\n", "Debian package name"),
        ];
        for (text, needle) in cases {
            let err = parse("Aptfile", text).unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err}");
            assert!(err.starts_with("Aptfile:"), "{err}");
        }
        let many: String = (0..201).map(|i| format!("pkg{i}\n")).collect();
        assert!(parse("apt.txt", &many).unwrap_err().contains("at most 200"));
    }

    #[test]
    fn suggestions_name_a_package() {
        assert!(suggest_for_header("yaml.h").contains("`libyaml-dev`"));
        assert!(suggest_for_header("Python.h").contains("`python3-dev`"));
        assert!(suggest_for_header("weird.h").contains("apt-file search weird.h"));
        assert!(suggest_for_library("pq").contains("`libpq-dev`"));
    }

    #[test]
    fn read_takes_apt_txt_first() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read(d.path()).unwrap(), None);
        std::fs::write(d.path().join("Aptfile"), "libffi-dev\n").unwrap();
        assert_eq!(read(d.path()).unwrap().unwrap().file, "Aptfile");
        std::fs::write(d.path().join("apt.txt"), "libyaml-dev\n").unwrap();
        let got = read(d.path()).unwrap().unwrap();
        assert_eq!(
            (got.file, got.packages),
            ("apt.txt", vec!["libyaml-dev".to_string()])
        );
    }
}
