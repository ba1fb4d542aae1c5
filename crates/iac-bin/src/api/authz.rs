//! Per-project authorization of the admin API: who may read, deploy to and destroy which
//! project. Authentication (who the caller is) is the middleware's (`routes::authenticate`);
//! this module owns what that caller may do.
//!
//! The rules, in order (the first that matches allows; nothing matching denies):
//! 1. the **operator** — the Unix socket's peer with the server's own uid — may do everything;
//! 2. a token whose `role` is **`service_role`** (the configured service-role key, a legacy
//!    service-role JWT) may do everything;
//! 3. **`[serve.projects.<name>]`** (and `[serve.projects."*"]`, which covers every project)
//!    lists who may `read` (deployments, services, logs) and who may `deploy` (which implies
//!    read and destroy); an entry is a user id (the JWT `sub`, a UUID) or an email address (the
//!    token's `email` claim, compared without regard to case);
//! 4. **`[serve] project_claim`** (e.g. `"app_metadata.projects"`) names a claim of the token
//!    listing the projects the user may deploy to (and so read and destroy). Claims the user can
//!    write themselves (`user_metadata`) are refused as a source of grants.
//!
//! A user let in by `[supabase] allowed_user_ids` or `allowed_roles` alone reaches no project
//! until one of 3. or 4. grants it: deny by default. [`AccessPolicy::allows`] is the pure
//! decision; [`AccessPolicy::check`] is the same as the API's 403.

use std::collections::BTreeMap;

use iac_core::{Principal, ProjectName};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::ServeConfig;
use super::error::ApiError;

/// The key of `[serve.projects]` that covers every project.
pub const EVERY_PROJECT: &str = "*";

/// The role whose tokens keep full access (service-role keys).
pub const SERVICE_ROLE: &str = "service_role";

/// `[serve.projects.<name>]`: who may do what in one project (`"*"`: in every project).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProjectGrant {
    /// User ids (JWT `sub`) or email addresses that may read the project: its deployments,
    /// running services and logs.
    pub read: Vec<String>,
    /// User ids or email addresses that may deploy to the project and destroy it (and read it).
    pub deploy: Vec<String>,
}

/// What a request does to a project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// See its deployments, services and logs.
    Read,
    /// Deploy to it.
    Deploy,
    /// Remove everything it runs (granted with `deploy`).
    Destroy,
}

impl Action {
    fn phrase(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Deploy => "deploy to",
            Action::Destroy => "destroy",
        }
    }
}

/// Who is calling, as the authentication middleware established it; attached to every
/// authenticated request (HTTP and gRPC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The Unix socket's peer with the server's own uid: the operator (the CLI). Full access.
    Operator(Principal),
    /// A bearer credential the [`iac_core::AuthVerifier`] accepted.
    Token(Principal),
}

impl Caller {
    /// The authenticated subject, whichever way it came in.
    pub fn principal(&self) -> &Principal {
        match self {
            Caller::Operator(p) | Caller::Token(p) => p,
        }
    }
}

/// One entry of a `read`/`deploy` list.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Who {
    User(Uuid),
    /// Lowercased.
    Email(String),
}

impl Who {
    fn parse(entry: &str) -> Result<Who, &'static str> {
        if entry.trim() != entry || entry.is_empty() {
            return Err("is empty or has surrounding spaces");
        }
        if let Some((local, domain)) = entry.split_once('@') {
            let ok = !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !entry.chars().any(|c| c.is_whitespace() || c.is_control());
            return if ok {
                Ok(Who::Email(entry.to_lowercase()))
            } else {
                Err("is not an email address")
            };
        }
        Uuid::parse_str(entry)
            .map(Who::User)
            .map_err(|_| "is neither a user id nor an email address")
    }

    fn matches(&self, p: &Principal) -> bool {
        match self {
            Who::User(id) => Uuid::parse_str(&p.subject).is_ok_and(|s| s == *id),
            Who::Email(e) => p
                .email
                .as_deref()
                .is_some_and(|pe| !pe.is_empty() && pe.to_lowercase() == *e),
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Grants {
    read: Vec<Who>,
    deploy: Vec<Who>,
}

/// A `[serve]` authorization setting that cannot work; the message names the key and what was
/// expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct PolicyError(pub String);

/// The checked form of `[serve.projects]` and `[serve] project_claim`.
#[derive(Debug, Clone, Default)]
pub struct AccessPolicy {
    /// Project name (or `*`) → its grants.
    projects: BTreeMap<String, Grants>,
    /// Dotted path of the claim listing the projects a token may deploy to.
    project_claim: Option<String>,
}

impl AccessPolicy {
    /// Checks `[serve.projects]` and `[serve] project_claim`; every problem is reported, each
    /// naming its key.
    pub fn from_config(cfg: &ServeConfig) -> Result<AccessPolicy, PolicyError> {
        let mut problems = Vec::new();
        let mut projects = BTreeMap::new();
        for (name, grant) in &cfg.projects {
            let table = if name == EVERY_PROJECT {
                "[serve.projects.\"*\"]".to_string()
            } else {
                format!("[serve.projects.{name}]")
            };
            if name != EVERY_PROJECT
                && let Err(e) = ProjectName::new(name)
            {
                problems.push(format!(
                    "{table}: {name:?} is not a project name ({e}); expected a project name such as \"demo\", or \"*\" for every project"
                ));
                continue;
            }
            if grant.read.is_empty() && grant.deploy.is_empty() {
                problems.push(format!(
                    "{table} grants nothing: expected user ids or email addresses in `read` or `deploy`"
                ));
                continue;
            }
            let mut parse = |key: &str, entries: &[String]| -> Vec<Who> {
                let mut out = Vec::new();
                for (i, entry) in entries.iter().enumerate() {
                    match Who::parse(entry) {
                        Ok(w) => out.push(w),
                        Err(why) => problems.push(format!(
                            "{table} {key}[{i}] = {entry:?} {why}: expected a user id (the JWT `sub`, a UUID such as \"2f1c…\") or an email address"
                        )),
                    }
                }
                out
            };
            let grants = Grants {
                read: parse("read", &grant.read),
                deploy: parse("deploy", &grant.deploy),
            };
            projects.insert(name.clone(), grants);
        }
        let project_claim = match cfg.project_claim.as_deref() {
            None => None,
            Some(path) => match check_claim_path(path) {
                Ok(()) => Some(path.to_string()),
                Err(why) => {
                    problems.push(format!("[serve] project_claim = {path:?}: {why}"));
                    None
                }
            },
        };
        if cfg.auth_failure_window.is_zero() {
            problems.push(
                "[serve] auth_failure_window = \"0s\": expected a duration greater than zero, such as \"1m\""
                    .to_string(),
            );
        }
        if problems.is_empty() {
            Ok(AccessPolicy {
                projects,
                project_claim,
            })
        } else {
            Err(PolicyError(problems.join("\n  ")))
        }
    }

    /// Whether `caller` may do `action` to `project`; see the module docs for the rules.
    pub fn allows(&self, caller: &Caller, project: &ProjectName, action: Action) -> bool {
        let p = match caller {
            Caller::Operator(_) => return true,
            Caller::Token(p) => p,
        };
        if p.role == SERVICE_ROLE {
            return true;
        }
        let listed = [project.as_str(), EVERY_PROJECT]
            .iter()
            .filter_map(|name| self.projects.get(*name))
            .any(|g| {
                let deploy = g.deploy.iter().any(|w| w.matches(p));
                match action {
                    Action::Read => deploy || g.read.iter().any(|w| w.matches(p)),
                    Action::Deploy | Action::Destroy => deploy,
                }
            });
        listed || self.claim_grants(p, project)
    }

    /// [`AccessPolicy::allows`], or the 403 that names the project and what was refused.
    pub fn check(
        &self,
        caller: &Caller,
        project: &ProjectName,
        action: Action,
    ) -> Result<(), ApiError> {
        if self.allows(caller, project, action) {
            return Ok(());
        }
        let p = caller.principal();
        let who = match p.email.as_deref().filter(|e| !e.is_empty()) {
            Some(e) => format!("user {} ({e})", p.subject),
            None => format!("{} {}", p.role, p.subject),
        };
        let sources = match &self.project_claim {
            Some(c) => format!(
                "[serve.projects.{project}], [serve.projects.\"*\"] nor the token's `{c}` claim"
            ),
            None => format!("[serve.projects.{project}] nor [serve.projects.\"*\"]"),
        };
        let needed = match action {
            Action::Read => "read or deploy",
            Action::Deploy | Action::Destroy => "deploy",
        };
        Err(ApiError::new(
            403,
            "project_forbidden",
            format!(
                "{who} may not {} project {project}: neither {sources} grants it {needed}",
                action.phrase()
            ),
        ))
    }

    /// Whether the token's `project_claim` lists `project`.
    fn claim_grants(&self, p: &Principal, project: &ProjectName) -> bool {
        let Some(path) = &self.project_claim else {
            return false;
        };
        match p.claim(path) {
            Some(serde_json::Value::Array(items)) => {
                items.iter().any(|v| v.as_str() == Some(project.as_str()))
            }
            _ => false,
        }
    }
}

/// A claim path is dotted segments of `[A-Za-z0-9_-]`, and not under `user_metadata` (which
/// Supabase lets every user write for themselves).
fn check_claim_path(path: &str) -> Result<(), String> {
    let segments: Vec<&str> = path.split('.').collect();
    if segments.iter().any(|s| {
        s.is_empty()
            || !s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    }) {
        return Err(
            "expected a dotted claim path such as \"app_metadata.projects\" (segments of letters, digits, `_` and `-`)"
                .to_string(),
        );
    }
    if segments[0] == "user_metadata" {
        return Err(
            "every user can write their own user_metadata, so it cannot grant projects; expected a claim only the server side sets, such as \"app_metadata.projects\""
                .to_string(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ALICE: &str = "11111111-1111-4111-8111-111111111111";
    const BOB: &str = "22222222-2222-4222-8222-222222222222";

    fn user(sub: &str, email: Option<&str>, claims: serde_json::Value) -> Caller {
        Caller::Token(Principal {
            subject: sub.into(),
            role: "authenticated".into(),
            email: email.map(str::to_string),
            method: "test".into(),
            claims: claims.as_object().cloned().unwrap_or_default(),
        })
    }

    fn project(name: &str) -> ProjectName {
        ProjectName::new(name).unwrap()
    }

    fn policy(projects: &[(&str, &[&str], &[&str])], claim: Option<&str>) -> AccessPolicy {
        let cfg = ServeConfig {
            projects: projects
                .iter()
                .map(|(name, read, deploy)| {
                    (
                        name.to_string(),
                        ProjectGrant {
                            read: read.iter().map(|s| s.to_string()).collect(),
                            deploy: deploy.iter().map(|s| s.to_string()).collect(),
                        },
                    )
                })
                .collect(),
            project_claim: claim.map(str::to_string),
            ..ServeConfig::default()
        };
        AccessPolicy::from_config(&cfg).unwrap()
    }

    const ALL: [Action; 3] = [Action::Read, Action::Deploy, Action::Destroy];

    #[test]
    fn nothing_configured_denies_every_user_and_admits_operator_and_service_role() {
        let p = AccessPolicy::from_config(&ServeConfig::default()).unwrap();
        let alice = user(ALICE, Some("alice@example.test"), json!({}));
        let service = Caller::Token(Principal {
            subject: "service_role".into(),
            role: SERVICE_ROLE.into(),
            email: None,
            method: "sb_secret key".into(),
            claims: Default::default(),
        });
        let operator = Caller::Operator(Principal {
            subject: "uid:0".into(),
            role: "local".into(),
            email: None,
            method: "unix socket peer uid".into(),
            claims: Default::default(),
        });
        for a in ALL {
            assert!(!p.allows(&alice, &project("demo"), a), "{a:?}");
            assert!(p.allows(&service, &project("demo"), a), "{a:?}");
            assert!(p.allows(&operator, &project("demo"), a), "{a:?}");
        }
        let e = p
            .check(&alice, &project("demo"), Action::Deploy)
            .unwrap_err();
        assert_eq!((e.status, e.code.as_str()), (403, "project_forbidden"));
        assert!(
            e.message.contains("deploy to project demo") && e.message.contains(ALICE),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_role_named_local_over_a_token_is_not_the_operator() {
        let p = policy(&[], None);
        let fake = Caller::Token(Principal {
            subject: ALICE.into(),
            role: "local".into(),
            email: None,
            method: "jwt".into(),
            claims: Default::default(),
        });
        assert!(!p.allows(&fake, &project("demo"), Action::Read));
    }

    #[test]
    fn read_grants_read_only_and_deploy_grants_everything_in_that_project_only() {
        let p = policy(&[("demo", &[BOB], &[ALICE])], None);
        let alice = user(ALICE, None, json!({}));
        let bob = user(BOB, None, json!({}));
        for a in ALL {
            assert!(p.allows(&alice, &project("demo"), a), "{a:?}");
            assert!(!p.allows(&alice, &project("other"), a), "{a:?}");
            assert!(!p.allows(&bob, &project("other"), a), "{a:?}");
        }
        assert!(p.allows(&bob, &project("demo"), Action::Read));
        assert!(!p.allows(&bob, &project("demo"), Action::Deploy));
        assert!(!p.allows(&bob, &project("demo"), Action::Destroy));
        let e = p
            .check(&bob, &project("demo"), Action::Destroy)
            .unwrap_err();
        assert!(e.message.contains("grants it deploy"), "{}", e.message);
    }

    #[test]
    fn user_ids_and_emails_match_without_regard_to_case_and_only_exactly() {
        let p = policy(
            &[("demo", &[], &["Alice@Example.TEST", &ALICE.to_uppercase()])],
            None,
        );
        assert!(p.allows(
            &user(BOB, Some("alice@example.test"), json!({})),
            &project("demo"),
            Action::Deploy
        ));
        assert!(p.allows(
            &user(ALICE, None, json!({})),
            &project("demo"),
            Action::Deploy
        ));
        for (sub, email) in [
            (BOB, Some("alice@example.test.evil")),
            (BOB, Some("xalice@example.test")),
            (BOB, Some("")),
            (BOB, None),
            ("11111111-1111-4111-8111-111111111112", None),
        ] {
            assert!(
                !p.allows(&user(sub, email, json!({})), &project("demo"), Action::Read),
                "{sub} {email:?}"
            );
        }
    }

    #[test]
    fn the_star_entry_covers_every_project() {
        let p = policy(&[("*", &[BOB], &[ALICE])], None);
        for name in ["demo", "other"] {
            assert!(p.allows(
                &user(ALICE, None, json!({})),
                &project(name),
                Action::Destroy
            ));
            assert!(p.allows(&user(BOB, None, json!({})), &project(name), Action::Read));
            assert!(!p.allows(&user(BOB, None, json!({})), &project(name), Action::Deploy));
        }
    }

    #[test]
    fn the_project_claim_grants_deploy_to_the_projects_it_lists() {
        let p = policy(&[], Some("app_metadata.projects"));
        let carol = user(
            BOB,
            None,
            json!({"app_metadata": {"projects": ["shop", "blog"]}}),
        );
        for a in ALL {
            assert!(p.allows(&carol, &project("shop"), a), "{a:?}");
            assert!(!p.allows(&carol, &project("demo"), a), "{a:?}");
        }
        // Anything but an array of names grants nothing.
        for claims in [
            json!({"app_metadata": {"projects": "shop"}}),
            json!({"app_metadata": {"projects": [["shop"]]}}),
            json!({"app_metadata": {"projects": ["*"]}}),
            json!({"user_metadata": {"projects": ["shop"]}}),
            json!({}),
        ] {
            assert!(
                !p.allows(
                    &user(BOB, None, claims.clone()),
                    &project("shop"),
                    Action::Read
                ),
                "{claims}"
            );
        }
        // Without project_claim the same token gets nothing.
        assert!(!policy(&[], None).allows(&carol, &project("shop"), Action::Read));
        let e = p
            .check(&carol, &project("demo"), Action::Deploy)
            .unwrap_err();
        assert!(e.message.contains("app_metadata.projects"), "{}", e.message);
    }

    fn errors(cfg: ServeConfig) -> String {
        AccessPolicy::from_config(&cfg).unwrap_err().to_string()
    }

    fn with_project(name: &str, read: &[&str], deploy: &[&str]) -> ServeConfig {
        ServeConfig {
            projects: [(
                name.to_string(),
                ProjectGrant {
                    read: read.iter().map(|s| s.to_string()).collect(),
                    deploy: deploy.iter().map(|s| s.to_string()).collect(),
                },
            )]
            .into(),
            ..ServeConfig::default()
        }
    }

    #[test]
    fn bad_entries_are_named_with_what_was_expected() {
        let e = errors(with_project("Demo", &[ALICE], &[]));
        assert!(
            e.contains("[serve.projects.Demo]") && e.contains("expected a project name"),
            "{e}"
        );
        let e = errors(with_project("demo", &[], &[]));
        assert!(e.contains("[serve.projects.demo] grants nothing"), "{e}");
        let e = errors(with_project(
            "demo",
            &[ALICE],
            &["alice", " bob@x.test", "a@b@c"],
        ));
        for want in [
            "[serve.projects.demo] deploy[0] = \"alice\" is neither a user id nor an email address",
            "deploy[1] = \" bob@x.test\" is empty or has surrounding spaces",
            "deploy[2] = \"a@b@c\" is not an email address",
            "expected a user id (the JWT `sub`",
        ] {
            assert!(e.contains(want), "{want}: {e}");
        }
        let e = errors(with_project("*", &["nobody"], &[]));
        assert!(e.contains("[serve.projects.\"*\"] read[0]"), "{e}");
        for (claim, want) in [
            (
                "user_metadata.projects",
                "every user can write their own user_metadata",
            ),
            ("app_metadata..projects", "expected a dotted claim path"),
            ("", "expected a dotted claim path"),
            ("app metadata", "expected a dotted claim path"),
        ] {
            let e = errors(ServeConfig {
                project_claim: Some(claim.into()),
                ..ServeConfig::default()
            });
            assert!(
                e.contains(&format!("[serve] project_claim = {claim:?}")) && e.contains(want),
                "{claim}: {e}"
            );
        }
        let e = errors(ServeConfig {
            auth_failure_window: std::time::Duration::ZERO,
            ..ServeConfig::default()
        });
        assert!(e.contains("[serve] auth_failure_window"), "{e}");
        // Good entries pass.
        AccessPolicy::from_config(&with_project("demo", &["ops@example.test"], &[ALICE])).unwrap();
    }
}
