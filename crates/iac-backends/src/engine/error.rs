//! [`EngineError`]: one failed engine request — what was attempted, the HTTP status when the
//! engine answered, and what it said — and its mapping into the stage errors of `iac-core`.

use iac_core::{BuildError, ProvisionError};

/// One failed engine request: what was attempted and what the engine said.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{op}: {message}")]
pub struct EngineError {
    /// e.g. `create container demo-web`.
    pub op: String,
    /// HTTP status from the engine, when it answered.
    pub status: Option<u16>,
    /// What the engine (or the client, when the engine did not answer) said.
    pub message: String,
}

impl EngineError {
    /// An error for the request `op`.
    pub fn new(op: impl Into<String>, status: Option<u16>, message: impl Into<String>) -> Self {
        EngineError {
            op: op.into(),
            status,
            message: message.into(),
        }
    }

    /// Maps a bollard error: the engine's HTTP status and message when it answered, else the
    /// client's description (connection refused, timeout, …).
    pub(crate) fn from_bollard(op: impl Into<String>, e: bollard::errors::Error) -> Self {
        match e {
            bollard::errors::Error::DockerResponseServerError {
                status_code,
                message,
            } => EngineError::new(op, Some(status_code), message),
            other => EngineError::new(op, None, other.to_string()),
        }
    }

    /// The engine answered 404 (no such container, network or image).
    pub fn is_not_found(&self) -> bool {
        self.status == Some(404)
    }
}

impl From<EngineError> for ProvisionError {
    /// The engine's 409 (a name in use, an object in the wrong state) is a
    /// [`ProvisionError::Conflict`]; every other failure is [`ProvisionError::Engine`].
    fn from(e: EngineError) -> Self {
        if e.status == Some(409) {
            ProvisionError::Conflict(format!("docker engine: {e}"))
        } else {
            ProvisionError::Engine(e.to_string())
        }
    }
}

impl From<EngineError> for BuildError {
    fn from(e: EngineError) -> Self {
        BuildError::Engine(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_engine_conflict_is_a_provision_conflict_and_the_rest_engine_errors() {
        let conflict = EngineError::new("create container demo-web", Some(409), "name in use");
        match ProvisionError::from(conflict) {
            ProvisionError::Conflict(m) => {
                assert_eq!(m, "docker engine: create container demo-web: name in use")
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        for status in [None, Some(404), Some(500)] {
            let e = EngineError::new("start container x", status, "boom");
            assert!(
                matches!(ProvisionError::from(e), ProvisionError::Engine(_)),
                "{status:?}"
            );
        }
        assert!(EngineError::new("inspect image x", Some(404), "no such image").is_not_found());
    }
}
