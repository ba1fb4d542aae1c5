//! The labels iac puts on what it creates, the one home for them: the keys, the value that marks
//! an object as iac's ([`MANAGED_BY`]), and the sets every container, network, image, Swarm
//! object and Kubernetes object starts from. The provisioners, the builder, the renders and the
//! engine layer all take them from here, and "is this ours?" is answered by [`is_managed`].

use std::collections::BTreeMap;

/// Label naming an object's project.
pub const LABEL_PROJECT: &str = "iac.project";
/// Label naming the service a container belongs to.
pub const LABEL_SERVICE: &str = "iac.service";
/// Label holding the hash of the spec a container was created from.
pub const LABEL_SPEC_HASH: &str = "iac.spec-hash";
/// Label saying what an object is for ([`Role`](crate::stack::Role)).
pub const LABEL_ROLE: &str = "iac.role";
/// Label set on every container and network iac created (value `iac`).
pub const LABEL_MANAGED: &str = "iac.managed-by";

/// The value of [`LABEL_MANAGED`] on everything iac created.
pub const MANAGED_BY: &str = "iac";

/// `iac.managed-by=iac`, as an engine label filter takes it.
pub fn managed_filter() -> String {
    format!("{LABEL_MANAGED}={MANAGED_BY}")
}

/// Adds `iac.managed-by=iac` to a label set (whatever it said before): done at create time by
/// whoever creates the object, never baked into an image.
pub fn mark_managed<M: Extend<(String, String)>>(labels: &mut M) {
    labels.extend([(LABEL_MANAGED.to_string(), MANAGED_BY.to_string())]);
}

/// The labels of an object of `project` that belongs to no one service (a network, a secret).
pub fn project_labels(project: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED.to_string(), MANAGED_BY.to_string()),
        (LABEL_PROJECT.to_string(), project.to_string()),
    ])
}

/// The labels of an object of one service of `project`.
pub fn service_labels(project: &str, service: &str) -> BTreeMap<String, String> {
    let mut l = project_labels(project);
    l.insert(LABEL_SERVICE.to_string(), service.to_string());
    l
}

/// Whether labels (as the engine reports them) mark an object as iac's.
pub fn is_managed<'a>(mut get: impl FnMut(&str) -> Option<&'a str>) -> bool {
    get(LABEL_MANAGED) == Some(MANAGED_BY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_filter_and_test_agree() {
        let l = service_labels("demo", "web");
        assert_eq!(l["iac.managed-by"], "iac");
        assert_eq!(l["iac.project"], "demo");
        assert_eq!(l["iac.service"], "web");
        assert!(is_managed(|k| l.get(k).map(String::as_str)));
        assert!(!project_labels("demo").contains_key(LABEL_SERVICE));
        assert_eq!(managed_filter(), "iac.managed-by=iac");
        let foreign = BTreeMap::from([(LABEL_MANAGED.to_string(), "someone".to_string())]);
        assert!(!is_managed(|k| foreign.get(k).map(String::as_str)));
        let mut h = std::collections::HashMap::from([(LABEL_MANAGED.to_string(), "x".to_string())]);
        mark_managed(&mut h);
        assert_eq!(h[LABEL_MANAGED], MANAGED_BY);
    }
}
