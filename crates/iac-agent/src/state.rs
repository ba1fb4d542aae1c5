//! The supervised child's lifecycle state, its wait-status decoding, and the exit code the agent
//! reports for it (HealthCheck) and finally exits with.

use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// When the current run of the child started and when it ended, for the uptime HealthCheck
/// reports. Set by the supervisor, read by the gRPC service; a restart starts it afresh.
#[derive(Debug, Default)]
pub struct Clock {
    times: Mutex<(Option<Instant>, Option<Instant>)>,
}

impl Clock {
    fn lock(&self) -> std::sync::MutexGuard<'_, (Option<Instant>, Option<Instant>)> {
        self.times.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The child was spawned (only the first call of a run counts).
    pub fn start(&self) {
        let mut t = self.lock();
        if t.0.is_none() {
            t.0 = Some(Instant::now());
        }
    }

    /// The child was spawned again: a new run, its uptime counted from now.
    pub fn restart(&self) {
        *self.lock() = (Some(Instant::now()), None);
    }

    /// The child is gone (only the first call of a run counts).
    pub fn end(&self) {
        let mut t = self.lock();
        if t.1.is_none() {
            t.1 = Some(Instant::now());
        }
    }

    /// How long the current run has lasted (until now, or until it ended); zero before it
    /// started.
    pub fn uptime(&self) -> Duration {
        match *self.lock() {
            (Some(s), Some(e)) => e.saturating_duration_since(s),
            (Some(s), None) => s.elapsed(),
            (None, _) => Duration::ZERO,
        }
    }
}

/// Where the child is in its life.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum ChildState {
    /// Before the spawn attempt (never observable through gRPC: the server starts after it).
    Starting,
    /// The entry has been spawned and has not exited.
    Running {
        /// Its process id (in the container's PID namespace).
        pid: i32,
    },
    /// The entry exited with a status (on its own, or after handling a forwarded signal).
    Exited {
        /// Its exit status (0..=255).
        code: i32,
    },
    /// The entry was killed by a signal.
    Signaled {
        /// The signal number (15 for SIGTERM, 9 for SIGKILL, ...).
        signal: i32,
    },
    /// The program could not be executed (not found, not executable, privilege drop refused...).
    SpawnFailed {
        /// The OS error, as text.
        error: String,
        /// The program (argv\[0\]) that could not be run.
        program: String,
        /// 127 when the program was not found, 126 otherwise (as shells report it).
        code: i32,
    },
}

impl ChildState {
    /// The state after `program` failed to spawn with `err`; the code follows the shell convention.
    pub fn spawn_failed(program: &str, err: &io::Error) -> Self {
        ChildState::SpawnFailed {
            error: err.to_string(),
            program: program.to_owned(),
            code: if err.kind() == io::ErrorKind::NotFound {
                127
            } else {
                126
            },
        }
    }

    /// Decodes a `waitpid` status; `None` for stop/continue notifications (not requested, but
    /// harmless to ignore).
    pub fn from_wait_status(status: i32) -> Option<Self> {
        if libc::WIFEXITED(status) {
            Some(ChildState::Exited {
                code: libc::WEXITSTATUS(status),
            })
        } else if libc::WIFSIGNALED(status) {
            Some(ChildState::Signaled {
                signal: libc::WTERMSIG(status),
            })
        } else {
            None
        }
    }

    /// SERVING while running or after a clean exit.
    pub fn is_serving(&self) -> bool {
        matches!(
            self,
            ChildState::Running { .. } | ChildState::Exited { code: 0 }
        )
    }

    /// The child is gone for good (or never started).
    pub fn is_final(&self) -> bool {
        !matches!(self, ChildState::Starting | ChildState::Running { .. })
    }

    /// The child's pid while it runs.
    pub fn pid(&self) -> Option<i32> {
        match self {
            ChildState::Running { pid } => Some(*pid),
            _ => None,
        }
    }

    /// The exit code once final: the child's own, 128+N for signal N, 127/126 for a failed spawn.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            ChildState::Starting | ChildState::Running { .. } => None,
            ChildState::Exited { code } => Some(*code),
            ChildState::Signaled { signal } => Some(128 + signal),
            ChildState::SpawnFailed { code, .. } => Some(*code),
        }
    }

    /// One line for HealthCheck's detail, e.g. `running (pid 7)` or `exited with code 1`.
    pub fn detail(&self) -> String {
        match self {
            ChildState::Starting => "starting".to_owned(),
            ChildState::Running { pid } => format!("running (pid {pid})"),
            ChildState::Exited { code } => format!("exited with code {code}"),
            ChildState::Signaled { signal } => format!("killed by signal {signal}"),
            ChildState::SpawnFailed { error, program, .. } => {
                format!("spawn failed: {error}: {program}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_wait_statuses() {
        // Linux encoding: exit code in bits 8..16, terminating signal in the low 7 bits.
        assert_eq!(
            ChildState::from_wait_status(3 << 8),
            Some(ChildState::Exited { code: 3 })
        );
        assert_eq!(
            ChildState::from_wait_status(0),
            Some(ChildState::Exited { code: 0 })
        );
        assert_eq!(
            ChildState::from_wait_status(libc::SIGKILL),
            Some(ChildState::Signaled { signal: 9 })
        );
        // Stopped by SIGSTOP: 0x7f in the low byte.
        assert_eq!(
            ChildState::from_wait_status((libc::SIGSTOP << 8) | 0x7f),
            None
        );
    }

    #[test]
    fn spawn_failure_codes() {
        let nf = io::Error::from_raw_os_error(libc::ENOENT);
        let st = ChildState::spawn_failed("python", &nf);
        assert_eq!(st.exit_code(), Some(127));
        assert_eq!(
            st.detail(),
            "spawn failed: No such file or directory (os error 2): python"
        );
        let denied = io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(
            ChildState::spawn_failed("./app", &denied).exit_code(),
            Some(126)
        );
    }

    #[test]
    fn clock_measures_the_run() {
        let c = Clock::default();
        assert_eq!(c.uptime(), Duration::ZERO);
        c.start();
        std::thread::sleep(Duration::from_millis(20));
        c.end();
        let ran = c.uptime();
        assert!(ran >= Duration::from_millis(20), "{ran:?}");
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(c.uptime(), ran, "uptime stops when the child ends");
        c.start();
        assert_eq!(c.uptime(), ran, "a second start does not reset it");
        c.restart();
        assert!(c.uptime() < ran, "a restart does");
    }

    #[test]
    fn finality_and_serving() {
        assert!(!ChildState::Starting.is_final());
        assert!(!ChildState::Running { pid: 1 }.is_final());
        assert!(ChildState::Exited { code: 0 }.is_final());
        assert!(ChildState::Exited { code: 0 }.is_serving());
        assert!(!ChildState::Exited { code: 2 }.is_serving());
        assert!(!ChildState::Signaled { signal: 15 }.is_serving());
        assert_eq!(ChildState::Signaled { signal: 15 }.exit_code(), Some(143));
    }
}
