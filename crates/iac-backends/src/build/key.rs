//! Content addressing of images: the build key (sha256 over source digest, rendered Dockerfile,
//! agent digest and wheelhouse listing), the tag derived from it, and the small file-digest cache
//! that keeps `planned()` cheap when called for every service on every plan.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use iac_core::BuildError;

/// Hex characters of the key used in the image tag.
pub const TAG_KEY_LEN: usize = 12;

/// `sha256:<hex>` over every input that changes the image. Length-prefixed fields, so no two
/// different input sets hash the same bytes.
pub fn build_key(
    source_digest: &str,
    dockerfile: &str,
    agent_digest: &str,
    wheel_listing: &[String],
) -> String {
    let mut h = Sha256::new();
    let mut field = |name: &str, bytes: &[u8]| {
        h.update(name.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field("iac-build-key/v1", b"");
    field("source", source_digest.as_bytes());
    field("dockerfile", dockerfile.as_bytes());
    field("agent", agent_digest.as_bytes());
    field("wheelhouse", wheel_listing.join("\n").as_bytes());
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// `<prefix>/<project>-<service>:<first 12 hex of the key>`.
pub fn image_tag(prefix: &str, project: &str, service: &str, key: &str) -> String {
    let hex = key.strip_prefix("sha256:").unwrap_or(key);
    let short = &hex[..hex.len().min(TAG_KEY_LEN)];
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        format!("{project}-{service}:{short}")
    } else {
        format!("{prefix}/{project}-{service}:{short}")
    }
}

/// The `*.whl` files of a wheelhouse as sorted `name size` lines. A missing directory is an error
/// telling the user how to create it.
pub fn wheel_listing(dir: &Path) -> Result<Vec<String>, BuildError> {
    let rd = std::fs::read_dir(dir).map_err(|e| BuildError::Context(format!(
        "wheelhouse {}: {e}; run `make bootstrap` (scripts/bootstrap-images.sh) to download the OpenTelemetry wheels, or set images.wheelhouse",
        dir.display()
    )))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|source| BuildError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".whl") {
            continue;
        }
        let meta = entry.metadata().map_err(|source| BuildError::Io {
            path: entry.path(),
            source,
        })?;
        if meta.is_file() {
            out.push(format!("{name} {}", meta.len()));
        }
    }
    if out.is_empty() {
        return Err(BuildError::Context(format!(
            "wheelhouse {} has no wheels; run `make bootstrap` (scripts/bootstrap-images.sh) to download them",
            dir.display()
        )));
    }
    out.sort();
    Ok(out)
}

/// sha256 of files, remembered per (path, size, mtime) so repeated plans do not re-hash the agent.
#[derive(Debug, Default)]
pub struct FileDigests {
    seen: Mutex<HashMap<PathBuf, (u64, SystemTime, String)>>,
}

impl FileDigests {
    /// `sha256:<hex>` of the file at `path`.
    pub fn digest(&self, path: &Path) -> Result<String, std::io::Error> {
        let meta = std::fs::metadata(path)?;
        let mtime = meta.modified()?;
        if let Some((len, t, d)) = self.seen.lock().expect("digest cache lock").get(path)
            && *len == meta.len()
            && *t == mtime
        {
            return Ok(d.clone());
        }
        let mut h = Sha256::new();
        let mut f = std::fs::File::open(path)?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = std::io::Read::read(&mut f, &mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        let d = format!("sha256:{}", hex::encode(h.finalize()));
        self.seen
            .lock()
            .expect("digest cache lock")
            .insert(path.to_path_buf(), (meta.len(), mtime, d.clone()));
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_changes_with_every_input_and_tag_uses_its_prefix() {
        let base = build_key(
            "sha256:src",
            "FROM x\n",
            "sha256:agent",
            &["a.whl 1".into()],
        );
        assert!(base.starts_with("sha256:") && base.len() == 71);
        assert_eq!(
            base,
            build_key(
                "sha256:src",
                "FROM x\n",
                "sha256:agent",
                &["a.whl 1".into()]
            )
        );
        for other in [
            build_key(
                "sha256:src2",
                "FROM x\n",
                "sha256:agent",
                &["a.whl 1".into()],
            ),
            build_key(
                "sha256:src",
                "FROM y\n",
                "sha256:agent",
                &["a.whl 1".into()],
            ),
            build_key(
                "sha256:src",
                "FROM x\n",
                "sha256:agent2",
                &["a.whl 1".into()],
            ),
            build_key(
                "sha256:src",
                "FROM x\n",
                "sha256:agent",
                &["a.whl 2".into()],
            ),
            build_key(
                "sha256:srcFROM x\n",
                "",
                "sha256:agent",
                &["a.whl 1".into()],
            ),
        ] {
            assert_ne!(base, other);
        }
        let tag = image_tag("iac", "shop", "api", &base);
        assert_eq!(tag, format!("iac/shop-api:{}", &base[7..19]));
        assert_eq!(
            image_tag("", "shop", "api", "sha256:0123456789abcdef"),
            "shop-api:0123456789ab"
        );
    }

    #[test]
    fn wheel_listing_is_sorted_and_missing_dirs_say_how_to_fix() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("b-1.0-py3-none-any.whl"), b"bb").unwrap();
        std::fs::write(d.path().join("a-1.0-py3-none-any.whl"), b"a").unwrap();
        std::fs::write(d.path().join(".iac-wheelhouse"), b"stamp").unwrap();
        assert_eq!(
            wheel_listing(d.path()).unwrap(),
            vec!["a-1.0-py3-none-any.whl 1", "b-1.0-py3-none-any.whl 2"]
        );
        let err = wheel_listing(&d.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("make bootstrap") && err.contains("nope"),
            "{err}"
        );
    }

    #[test]
    fn file_digest_follows_content_changes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("agent");
        std::fs::write(&p, b"one").unwrap();
        let cache = FileDigests::default();
        let a = cache.digest(&p).unwrap();
        assert_eq!(a, iac_core::fsutil::sha256_tagged(b"one"));
        std::fs::write(&p, b"three").unwrap();
        assert_eq!(
            cache.digest(&p).unwrap(),
            iac_core::fsutil::sha256_tagged(b"three")
        );
    }
}
