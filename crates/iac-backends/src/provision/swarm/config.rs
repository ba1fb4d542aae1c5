//! `[swarm]` in `iac.toml`: [`SwarmConfig`], its validation (errors name the key), the settings
//! every service spec carries, and the registry logins (push, and what the nodes get).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::super::ContainerLimits;
use super::spec::SwarmSettings;
use crate::engine::RegistryAuth;
use crate::secret::Secret;

/// `[swarm]` in `iac.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SwarmConfig {
    /// How long a task of a rolling update is watched before the update moves on; a task failing
    /// within it rolls the update back (`"5s"`).
    #[serde(with = "iac_core::duration")]
    pub update_monitor: Duration,
    /// Time between SIGTERM and SIGKILL when a task stops.
    #[serde(with = "iac_core::duration")]
    pub stop_grace: Duration,
    /// HEALTHCHECK: how often the agent is asked, how long one answer may take, after how many
    /// misses a task is unhealthy, and how long after the start misses do not count.
    #[serde(with = "iac_core::duration")]
    pub health_interval: Duration,
    /// How long one check may take before it counts as a miss.
    #[serde(with = "iac_core::duration")]
    pub health_timeout: Duration,
    /// Misses in a row that make a task unhealthy.
    pub health_retries: u32,
    /// How long after a task starts misses do not count.
    #[serde(with = "iac_core::duration")]
    pub health_start_period: Duration,
    /// How long a create or update may take to converge (all tasks running and healthy, or the
    /// update rolled back) before the service is reported failed.
    #[serde(with = "iac_core::duration")]
    pub converge_deadline: Duration,
    /// How long iac's own mTLS check of each task may take (iac sets it from `health_deadline`).
    #[serde(with = "iac_core::duration")]
    pub health_deadline: Duration,
    /// Services applied at the same time.
    pub parallelism: usize,
    /// cgroup limits; a task's container gets the app's and the sidecar's together.
    pub limits: ContainerLimits,
    /// `HOST:PORT` of a registry every node can pull from: pod images are pushed there and
    /// services run them by digest. Without it only a single-node swarm is accepted (its engine
    /// has the images it built).
    pub registry: Option<String>,
    /// Login for `registry` (both or neither): used for the push, on the manager only — unless
    /// no pull login is set, when it is also what the nodes get.
    pub registry_username: Option<String>,
    /// The push login's password.
    pub registry_password: Option<Secret>,
    /// A read-only login for `registry` (both or neither): sent with service creates and
    /// updates so every node can pull, in place of the push login. Which rights a login has is
    /// the registry's to enforce.
    pub registry_pull_username: Option<String>,
    /// The pull login's password.
    pub registry_pull_password: Option<Secret>,
}

impl Default for SwarmConfig {
    fn default() -> Self {
        let s = SwarmSettings::default();
        SwarmConfig {
            update_monitor: s.update_monitor,
            stop_grace: s.stop_grace,
            health_interval: s.health_interval,
            health_timeout: s.health_timeout,
            health_retries: s.health_retries,
            health_start_period: s.health_start_period,
            converge_deadline: Duration::from_secs(180),
            health_deadline: Duration::from_secs(60),
            parallelism: 4,
            limits: ContainerLimits::default(),
            registry: None,
            registry_username: None,
            registry_password: None,
            registry_pull_username: None,
            registry_pull_password: None,
        }
    }
}

impl SwarmConfig {
    /// The settings that go into every service spec (and its hash).
    pub fn settings(&self) -> SwarmSettings {
        SwarmSettings {
            update_monitor: self.update_monitor,
            stop_grace: self.stop_grace,
            health_interval: self.health_interval,
            health_timeout: self.health_timeout,
            health_retries: self.health_retries,
            health_start_period: self.health_start_period,
            registry: self.registry.clone(),
        }
    }

    /// The registry login (the push login), when one is configured.
    pub fn registry_auth(&self) -> Option<RegistryAuth> {
        login(
            &self.registry,
            &self.registry_username,
            &self.registry_password,
        )
    }

    /// The login every node gets with service creates and updates: the pull login when one is
    /// set; otherwise the push login, with a warning to show (the nodes then hold a credential
    /// that can push).
    pub fn node_auth(&self) -> (Option<RegistryAuth>, Option<String>) {
        if let Some(pull) = login(
            &self.registry,
            &self.registry_pull_username,
            &self.registry_pull_password,
        ) {
            return (Some(pull), None);
        }
        match self.registry_auth() {
            Some(push) => {
                let warning = format!(
                    "every node of the swarm gets registry {}'s login {:?}, which can push; set \
                     [swarm] registry_pull_username/registry_pull_password to a read-only login \
                     so nodes get only that",
                    push.server, push.username
                );
                (Some(push), Some(warning))
            }
            None => (None, None),
        }
    }

    /// A config error names the key.
    pub fn validate(&self) -> Result<(), String> {
        self.limits.validate("swarm")?;
        if self.health_retries == 0 {
            return Err("swarm.health_retries = 0: expected at least 1".into());
        }
        for (key, d) in [
            ("health_interval", self.health_interval),
            ("health_timeout", self.health_timeout),
        ] {
            // The engine refuses HEALTHCHECK durations under 1 ms.
            if d < Duration::from_millis(1) {
                return Err(format!("swarm.{key} = {d:?}: expected at least 1ms"));
            }
        }
        if let Some(r) = &self.registry
            && (r.is_empty() || r.contains('/') || r.contains(char::is_whitespace))
        {
            return Err(format!(
                "swarm.registry = {r:?}: expected HOST:PORT of a registry (no scheme, no path)"
            ));
        }
        match (
            &self.registry,
            self.registry_username.is_some(),
            self.registry_password.is_some(),
        ) {
            (None, true, _) | (None, _, true) => {
                return Err(
                    "swarm.registry_username/registry_password are set but swarm.registry is not; expected registry = \"HOST:PORT\" they log in to"
                        .into(),
                );
            }
            (Some(_), true, false) => {
                return Err(
                    "swarm.registry_username is set without swarm.registry_password; expected both or neither"
                        .into(),
                );
            }
            (Some(_), false, true) => {
                return Err(
                    "swarm.registry_password is set without swarm.registry_username; expected both or neither"
                        .into(),
                );
            }
            _ => {}
        }
        if self.registry_username.as_deref() == Some("") {
            return Err(
                "swarm.registry_username is empty; expected a user name or no login at all".into(),
            );
        }
        match (
            &self.registry,
            self.registry_pull_username.as_deref(),
            self.registry_pull_password.is_some(),
        ) {
            (None, Some(_), _) | (None, _, true) => Err(
                "swarm.registry_pull_username/registry_pull_password are set but swarm.registry is not; expected registry = \"HOST:PORT\" they log in to"
                    .into(),
            ),
            (Some(_), Some(_), false) => Err(
                "swarm.registry_pull_username is set without swarm.registry_pull_password; expected both or neither"
                    .into(),
            ),
            (Some(_), None, true) => Err(
                "swarm.registry_pull_password is set without swarm.registry_pull_username; expected both or neither"
                    .into(),
            ),
            (_, Some(""), _) => Err(
                "swarm.registry_pull_username is empty; expected a user name or no pull login at all"
                    .into(),
            ),
            _ => Ok(()),
        }
    }
}

/// A login for `registry` when all three parts are there.
fn login(
    registry: &Option<String>,
    username: &Option<String>,
    password: &Option<Secret>,
) -> Option<RegistryAuth> {
    match (registry, username, password) {
        (Some(server), Some(username), Some(password)) => Some(RegistryAuth {
            server: server.clone(),
            username: username.clone(),
            password: password.clone(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validation_names_the_key() {
        SwarmConfig::default().validate().unwrap();
        let bad = SwarmConfig {
            health_retries: 0,
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("swarm.health_retries"));
        let bad = SwarmConfig {
            registry: Some("http://reg:5000/x".into()),
            ..Default::default()
        };
        let e = bad.validate().unwrap_err();
        assert!(
            e.contains("swarm.registry") && e.contains("HOST:PORT"),
            "{e}"
        );
        let bad = SwarmConfig {
            limits: ContainerLimits {
                app_pids: -1,
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .contains("swarm.limits.app_pids")
        );
    }

    #[test]
    fn a_registry_login_needs_both_halves_and_a_registry() {
        let with = |registry: Option<&str>, user: Option<&str>, pass: Option<&str>| SwarmConfig {
            registry: registry.map(String::from),
            registry_username: user.map(String::from),
            registry_password: pass.map(Secret::from),
            ..Default::default()
        };
        let ok = with(Some("reg:5000"), Some("ci"), Some("pw"));
        ok.validate().unwrap();
        let auth = ok.registry_auth().unwrap();
        assert_eq!(
            (auth.server.as_str(), auth.username.as_str()),
            ("reg:5000", "ci")
        );
        assert_eq!(auth.password.expose(), "pw");
        with(Some("reg:5000"), None, None).validate().unwrap();
        assert_eq!(with(Some("reg:5000"), None, None).registry_auth(), None);
        for (cfg, want) in [
            (with(None, Some("ci"), Some("pw")), "swarm.registry is not"),
            (
                with(Some("reg:5000"), Some("ci"), None),
                "without swarm.registry_password",
            ),
            (
                with(Some("reg:5000"), None, Some("pw")),
                "without swarm.registry_username",
            ),
            (
                with(Some("reg:5000"), Some(""), Some("pw")),
                "swarm.registry_username is empty",
            ),
        ] {
            let e = cfg.validate().unwrap_err();
            assert!(e.contains(want), "{e}");
        }
        // The password never shows (`iac config show` serializes the config).
        let shown = serde_json::to_string(&ok).unwrap();
        assert!(
            !shown.contains("\"pw\"") && shown.contains("[redacted]"),
            "{shown}"
        );
        assert!(!format!("{ok:?}").contains("\"pw\""));
        // The registry is part of every service's spec hash; the login is not.
        assert_eq!(ok.settings().registry.as_deref(), Some("reg:5000"));
        assert_eq!(ok.settings(), with(Some("reg:5000"), None, None).settings());
    }

    #[test]
    fn nodes_get_the_pull_login_and_the_push_login_only_with_a_warning() {
        let cfg = |pull: Option<(&str, &str)>| SwarmConfig {
            registry: Some("reg:5000".into()),
            registry_username: Some("pusher".into()),
            registry_password: Some(Secret::from("push-pw")),
            registry_pull_username: pull.map(|p| p.0.to_string()),
            registry_pull_password: pull.map(|p| Secret::from(p.1)),
            ..Default::default()
        };
        let with_pull = cfg(Some(("puller", "pull-pw")));
        with_pull.validate().unwrap();
        let (auth, warning) = with_pull.node_auth();
        let auth = auth.unwrap();
        assert_eq!(
            (auth.server.as_str(), auth.username.as_str()),
            ("reg:5000", "puller")
        );
        assert_eq!(auth.password.expose(), "pull-pw");
        assert_eq!(warning, None);
        // The push keeps the push login.
        assert_eq!(with_pull.registry_auth().unwrap().username, "pusher");

        let (auth, warning) = cfg(None).node_auth();
        assert_eq!(auth.unwrap().username, "pusher");
        let w = warning.unwrap();
        assert!(
            w.contains("can push")
                && w.contains("registry_pull_username")
                && !w.contains("push-pw"),
            "{w}"
        );
        assert_eq!(SwarmConfig::default().node_auth(), (None, None));

        for (c, want) in [
            (
                SwarmConfig {
                    registry: None,
                    registry_pull_username: Some("p".into()),
                    registry_pull_password: Some(Secret::from("x")),
                    ..Default::default()
                },
                "swarm.registry is not",
            ),
            (
                SwarmConfig {
                    registry_pull_password: None,
                    ..cfg(Some(("p", "x")))
                },
                "without swarm.registry_pull_password",
            ),
            (
                SwarmConfig {
                    registry_pull_username: None,
                    ..cfg(Some(("p", "x")))
                },
                "without swarm.registry_pull_username",
            ),
            (cfg(Some(("", "x"))), "registry_pull_username is empty"),
        ] {
            let e = c.validate().unwrap_err();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn config_reads_durations_and_refuses_unknown_keys() {
        let c: SwarmConfig =
            serde_json::from_str(r#"{"update_monitor":"10s","registry":"reg:5000"}"#).unwrap();
        assert_eq!(c.update_monitor, Duration::from_secs(10));
        assert_eq!(c.registry.as_deref(), Some("reg:5000"));
        assert_eq!(c.health_retries, 3);
        assert!(serde_json::from_str::<SwarmConfig>(r#"{"replicas":2}"#).is_err());
    }
}
