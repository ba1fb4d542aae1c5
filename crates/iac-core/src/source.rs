//! [`Source`]: a fetched source tree on disk, with the commit and content digest it came from.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A source tree ready to read. `dir` lives in the fetch cache (or is the `path:` directory itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// The tree's root.
    pub dir: PathBuf,
    /// Resolved commit sha, when known (git clone, or a tarball whose ref was a sha).
    pub commit: Option<String>,
    /// `sha256:<hex>` over the tree's contents (or the archive's bytes): the cache and image key.
    pub digest: String,
    /// How it was obtained, for humans: "tarball https://…", "git clone (tarball: 404)", "cache hit".
    pub origin: String,
}
