//! [`RefList`]: the branches and tags a repository advertises, and what its `HEAD` points at —
//! what [`crate::SourceFetcher::list_refs`] returns (`GET /refs`, `iac refs`).

use serde::{Deserialize, Serialize};

/// The refs of one repository, short names sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefList {
    /// Branch names (`refs/heads/` stripped), sorted.
    pub branches: Vec<String>,
    /// Tag names (`refs/tags/` stripped, peeled `^{}` entries folded), sorted.
    pub tags: Vec<String>,
    /// The branch `HEAD` points at (short name); `None` when `HEAD` is detached, unborn or not
    /// advertised.
    pub default: Option<String>,
}

impl RefList {
    /// Builds the list from full ref names and the full name `HEAD` points at: names under
    /// `refs/heads/` become branches, under `refs/tags/` tags, anything else (`refs/pull/…`,
    /// `HEAD` itself) is left out. Sorted and deduplicated.
    pub fn from_full_names<'a>(
        names: impl IntoIterator<Item = &'a str>,
        head_target: Option<&str>,
    ) -> RefList {
        let mut list = RefList::default();
        for name in names {
            if let Some(b) = name.strip_prefix("refs/heads/") {
                list.branches.push(b.to_string());
            } else if let Some(t) = name.strip_prefix("refs/tags/") {
                list.tags.push(t.trim_end_matches("^{}").to_string());
            }
        }
        for v in [&mut list.branches, &mut list.tags] {
            v.sort();
            v.dedup();
        }
        list.default = head_target
            .and_then(|t| t.strip_prefix("refs/heads/"))
            .map(str::to_string);
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_splits_and_drops_other_namespaces() {
        let l = RefList::from_full_names(
            [
                "HEAD",
                "refs/heads/main",
                "refs/tags/v2",
                "refs/tags/v1",
                "refs/tags/v1^{}",
                "refs/heads/feature/x",
                "refs/pull/1/head",
                "refs/notes/commits",
            ],
            Some("refs/heads/main"),
        );
        assert_eq!(l.branches, ["feature/x", "main"]);
        assert_eq!(l.tags, ["v1", "v2"]);
        assert_eq!(l.default.as_deref(), Some("main"));
        let detached = RefList::from_full_names(["refs/heads/main"], Some("HEAD"));
        assert_eq!(detached.default, None);
    }
}
