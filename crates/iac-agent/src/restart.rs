//! Restarting an app that died: the policy (which exits are restarted), the back-off between
//! restarts (Kubernetes' CrashLoopBackOff: 10 s doubling to 5 min, forgotten after 10 min of
//! running), and the record HealthCheck reports (restart count, the last exit and when, the
//! back-off being waited out).
//!
//! Pure: the supervisor feeds it exits and times and does the waiting and spawning itself.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::ValueEnum;

use crate::restart_record::{Saved, SavedExit};
use crate::state::ChildState;

/// Default first delay before restarting a dead app.
pub const DEFAULT_BACKOFF: &str = "10s";
/// Default longest delay.
pub const DEFAULT_BACKOFF_MAX: &str = "5m";
/// Default run time after which the back-off starts again from the first delay.
pub const DEFAULT_RESET_AFTER: &str = "10m";

/// Which exits of the app are followed by a restart (`--restart`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RestartPolicy {
    /// Every exit of something that should be running: any failure, and a clean exit of an app
    /// that serves a port. A job (no declared port) that exits 0 is done and stays done.
    Auto,
    /// Never: the exit is reported and the agent keeps serving HealthCheck (pod mode, where the
    /// orchestrator restarts the whole task, always behaves like this).
    Never,
}

impl RestartPolicy {
    /// Whether `state` (a final state of the app) is followed by a restart.
    pub fn restarts(self, state: &ChildState, app_port: Option<u16>) -> bool {
        match self {
            RestartPolicy::Never => false,
            RestartPolicy::Auto => {
                state.is_final()
                    && !(app_port.is_none() && *state == ChildState::Exited { code: 0 })
            }
        }
    }
}

/// The back-off timing (`--restart-backoff`, `--restart-backoff-max`, `--restart-reset-after`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first restart of a crash series.
    pub initial: Duration,
    /// The delay doubles up to this.
    pub max: Duration,
    /// A run at least this long ends the series: the next crash waits `initial` again.
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(300),
            reset_after: Duration::from_secs(600),
        }
    }
}

impl Backoff {
    /// The delay before restart number `n` of a series (1-based): `initial · 2^(n-1)`, at most
    /// `max`.
    pub fn delay(&self, n: u32) -> Duration {
        let doublings = n.saturating_sub(1).min(31);
        self.initial
            .checked_mul(1u32 << doublings)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

/// How the previous run of the app ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastExit {
    /// Its final state (exit code, signal, or spawn failure).
    pub state: ChildState,
    /// When it ended.
    pub at: SystemTime,
    /// How long it had run.
    pub ran: Duration,
}

/// What HealthCheck reports about restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestartStatus {
    /// Restarts so far (starts after the first).
    pub restarts: u32,
    /// How the last run that ended, ended.
    pub last_exit: Option<LastExit>,
    /// While waiting to restart: when the next start is due, and the delay being waited out.
    pub pending: Option<(Instant, Duration)>,
}

impl RestartStatus {
    /// Human text for HealthCheck's detail while a restart is pending, e.g. `restarting in 8.2s
    /// (back-off 20s after 2 crashes in a row)`; `None` when none is.
    pub fn pending_note(&self, now: Instant) -> Option<String> {
        let (at, delay) = self.pending?;
        Some(format!(
            "restarting in {:.1}s (back-off {}, restart {})",
            at.saturating_duration_since(now).as_secs_f64(),
            humantime::format_duration(delay),
            self.restarts + 1
        ))
    }
}

/// The crash series: the supervisor tells it about every exit it will restart, and it answers
/// with the delay and keeps the [`RestartStatus`].
#[derive(Debug, Clone)]
pub struct Tracker {
    backoff: Backoff,
    /// Crashes in the current series (reset by a run of `reset_after`).
    series: u32,
    status: RestartStatus,
}

impl Tracker {
    /// A tracker with no crash yet, using `backoff` for the delays.
    pub fn new(backoff: Backoff) -> Self {
        Tracker {
            backoff,
            series: 0,
            status: RestartStatus::default(),
        }
    }

    /// The app ended in `state` after running `ran`, and will be restarted: records it and
    /// returns the delay to wait before starting it again (due at `now + delay`).
    pub fn exited(
        &mut self,
        state: ChildState,
        ran: Duration,
        at: SystemTime,
        now: Instant,
    ) -> Duration {
        if ran >= self.backoff.reset_after {
            self.series = 0;
        }
        self.series = self.series.saturating_add(1);
        let delay = self.backoff.delay(self.series);
        self.status.last_exit = Some(LastExit { state, at, ran });
        self.status.pending = Some((now + delay, delay));
        delay
    }

    /// A tracker carrying on from `saved`, the record of this container's previous agent: the
    /// app about to start is a restart (the container was restarted under it), the crash
    /// series goes on, the last exit is the one that agent saw.
    pub fn resume(backoff: Backoff, saved: &Saved) -> Self {
        Tracker {
            backoff,
            series: saved.series,
            status: RestartStatus {
                restarts: saved.restarts.saturating_add(1),
                last_exit: saved.last_exit.as_ref().map(|e| LastExit {
                    state: e.state.clone(),
                    at: UNIX_EPOCH + Duration::from_millis(e.at_ms),
                    ran: Duration::from_millis(e.ran_ms),
                }),
                pending: None,
            },
        }
    }

    /// The app ended in `state` after running `ran` and is not restarted by this agent (it is
    /// stopping: a stop signal, its pod network gone): kept as the last exit for the record.
    pub fn stopped(&mut self, state: ChildState, ran: Duration, at: SystemTime) {
        self.status.pending = None;
        self.status.last_exit = Some(LastExit { state, at, ran });
    }

    /// What [`crate::restart_record`] keeps of this tracker.
    pub fn saved(&self) -> Saved {
        Saved {
            restarts: self.status.restarts,
            series: self.series,
            last_exit: self.status.last_exit.as_ref().map(|e| SavedExit {
                state: e.state.clone(),
                at_ms: e
                    .at
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0),
                ran_ms: e.ran.as_millis() as u64,
            }),
        }
    }

    /// No restart follows any more (the agent is stopping): nothing is pending.
    pub fn ended(&mut self) {
        self.status.pending = None;
    }

    /// The pending restart happened.
    pub fn restarted(&mut self) {
        self.status.pending = None;
        self.status.restarts = self.status.restarts.saturating_add(1);
    }

    /// Restarts so far, the last exit and a pending restart, as HealthCheck reports them.
    pub fn status(&self) -> &RestartStatus {
        &self.status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_restarts_what_should_be_running() {
        let auto = RestartPolicy::Auto;
        let done = ChildState::Exited { code: 0 };
        assert!(!auto.restarts(&done, None), "a finished job stays done");
        assert!(auto.restarts(&done, Some(8000)), "a server that exits 0");
        assert!(auto.restarts(&ChildState::Exited { code: 1 }, None));
        assert!(auto.restarts(&ChildState::Signaled { signal: 9 }, None));
        let spawn = ChildState::SpawnFailed {
            error: "x".into(),
            program: "p".into(),
            code: 127,
        };
        assert!(auto.restarts(&spawn, None));
        assert!(!auto.restarts(&ChildState::Running { pid: 3 }, None));
        assert!(!RestartPolicy::Never.restarts(&ChildState::Exited { code: 1 }, None));
    }

    #[test]
    fn delays_double_to_the_cap() {
        let b = Backoff::default();
        let secs: Vec<u64> = (1..=8).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(secs, [10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(300));
        let tiny = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(250),
            reset_after: Duration::from_secs(1),
        };
        assert_eq!(tiny.delay(1), Duration::from_millis(100));
        assert_eq!(tiny.delay(2), Duration::from_millis(200));
        assert_eq!(tiny.delay(3), Duration::from_millis(250));
    }

    #[test]
    fn a_long_run_resets_the_series() {
        let b = Backoff::default();
        let mut t = Tracker::new(b);
        let now = Instant::now();
        let at = SystemTime::now();
        let crash = ChildState::Exited { code: 1 };
        assert_eq!(
            t.exited(crash.clone(), Duration::from_secs(1), at, now),
            Duration::from_secs(10)
        );
        t.restarted();
        assert_eq!(
            t.exited(crash.clone(), Duration::from_secs(1), at, now),
            Duration::from_secs(20)
        );
        t.restarted();
        assert_eq!(
            t.exited(crash.clone(), Duration::from_secs(1), at, now),
            Duration::from_secs(40)
        );
        t.restarted();
        // Ten minutes up: the next crash starts a new series.
        assert_eq!(
            t.exited(crash.clone(), Duration::from_secs(600), at, now),
            Duration::from_secs(10)
        );
        assert_eq!(t.status().restarts, 3);
        let last = t.status().last_exit.clone().unwrap();
        assert_eq!(last.state, crash);
        assert_eq!(last.ran, Duration::from_secs(600));
        assert_eq!(
            t.status().pending,
            Some((now + Duration::from_secs(10), Duration::from_secs(10)))
        );
        let note = t.status().pending_note(now).unwrap();
        assert_eq!(note, "restarting in 10.0s (back-off 10s, restart 4)");
        t.ended();
        assert_eq!(t.status().pending_note(now), None);
    }

    #[test]
    fn a_resumed_tracker_counts_the_container_restart_and_keeps_the_series() {
        let b = Backoff::default();
        let mut t = Tracker::new(b);
        let now = Instant::now();
        let crash = ChildState::Exited { code: 1 };
        t.exited(crash, Duration::from_secs(1), SystemTime::now(), now);
        t.restarted();
        t.exited(
            ChildState::Exited { code: 2 },
            Duration::from_secs(1),
            SystemTime::now(),
            now,
        );
        t.restarted();
        // The container is stopped: the app ends by SIGTERM, and that is the last exit kept.
        let at = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        t.stopped(
            ChildState::Signaled { signal: 15 },
            Duration::from_secs(7),
            at,
        );
        assert_eq!(t.status().pending, None);
        let saved = t.saved();
        assert_eq!((saved.restarts, saved.series), (2, 2));
        // The next agent of the same container.
        let mut r = Tracker::resume(b, &saved);
        assert_eq!(
            r.status().restarts,
            3,
            "the container restart restarted the app"
        );
        let last = r.status().last_exit.clone().unwrap();
        assert_eq!(last.state, ChildState::Signaled { signal: 15 });
        assert_eq!((last.at, last.ran), (at, Duration::from_secs(7)));
        // The series goes on: the next quick crash waits the third delay.
        let d = r.exited(
            ChildState::Exited { code: 1 },
            Duration::from_secs(1),
            SystemTime::now(),
            now,
        );
        assert_eq!(d, Duration::from_secs(40));
    }
}
