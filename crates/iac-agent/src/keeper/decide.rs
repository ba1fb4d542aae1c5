//! What the keeper does about one pod (pure): given the engine's view of a sidecar and of the
//! app that lives in its network namespace, start the app, restart it, wait and look again, or
//! leave it alone — with the reason, which the keeper logs.
//!
//! The rules keep the keeper out of everyone else's way:
//! * nothing happens while the sidecar is not running (the app could not join its namespace);
//! * an app that is not running is started only when its **last start failed** (the engine
//!   records the error on the container: moby's restore after an engine restart or a reboot
//!   tries an app before its sidecar runs, fails with "cannot join network of a non running
//!   container" and never tries again). An app stopped by a person, by `iac destroy` or by a
//!   deploy that is replacing it has no such error and is left alone, as `unless-stopped` does;
//!   an app created but never started (a deploy waiting for the pod filter) too;
//! * a running app that started before its sidecar's current start lives in the sidecar's old
//!   namespace. Its agent notices and ends the container (`--follow-pod-network`), which the
//!   engine restarts: the keeper waits `recheck` first and restarts it only when it is still
//!   stale then.

use std::cmp::Ordering;

/// A container's state as the engine reports it (`GET /containers/{id}/json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// `State.Running`.
    pub running: bool,
    /// `State.StartedAt`; `None` when never started (the engine's zero time).
    pub started_at: Option<Stamp>,
    /// `State.Error`: why the last start failed; empty when it did not.
    pub error: String,
}

/// What to do about one app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Start the app (it is not running and its last start failed).
    Start(String),
    /// Restart the app (it runs in a namespace its sidecar left behind).
    Restart(String),
    /// Look again after the recheck delay (the app's agent should end it by itself first).
    Recheck(String),
    /// Nothing to do.
    Leave(String),
}

/// The decision for an app and its sidecar. `rechecking`: this is the look again after
/// [`Decision::Recheck`].
pub fn decide(sidecar: &Seen, app: &Seen, rechecking: bool) -> Decision {
    if !sidecar.running {
        return Decision::Leave("its sidecar is not running".into());
    }
    if !app.running {
        if app.error.is_empty() {
            return Decision::Leave(
                "stopped without a failed start (a person, a deploy or destroy stopped it); left alone"
                    .into(),
            );
        }
        return Decision::Start(format!(
            "its last start failed ({}) and its sidecar is running now",
            app.error
        ));
    }
    match (app.started_at, sidecar.started_at) {
        (Some(a), Some(s)) if a.cmp(&s) == Ordering::Less => {
            let why = "it started before its sidecar's current start (in the sidecar's old network namespace)";
            if rechecking {
                Decision::Restart(format!("{why}, and still is"))
            } else {
                Decision::Recheck(why.into())
            }
        }
        _ => Decision::Leave("running in its sidecar's namespace".into()),
    }
}

/// A point in time as the engine writes it (RFC 3339 in UTC, `2026-12-07T17:50:12.1234Z`),
/// comparable: (year, month, day, hour, minute, second, nanosecond). The engine trims trailing
/// zeros of the fraction, so the strings themselves do not sort.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp(pub [u32; 7]);

impl Stamp {
    /// Parses the engine's time; `Ok(None)` for its zero time (`0001-01-01T00:00:00Z`: never).
    pub fn parse(s: &str) -> Result<Option<Stamp>, String> {
        let bad = || format!("time {s:?}: expected RFC 3339 in UTC such as 2026-12-07T17:50:12.5Z");
        let body = s.strip_suffix('Z').ok_or_else(bad)?;
        let (date, time) = body.split_once('T').ok_or_else(bad)?;
        let (hms, frac) = match time.split_once('.') {
            Some((h, f)) => (h, f),
            None => (time, ""),
        };
        let num = |t: &str| t.parse::<u32>().map_err(|_| bad());
        let d: Vec<&str> = date.split('-').collect();
        let t: Vec<&str> = hms.split(':').collect();
        if d.len() != 3
            || t.len() != 3
            || frac.len() > 9
            || !frac.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        let nanos = if frac.is_empty() {
            0
        } else {
            num(frac)? * 10u32.pow(9 - frac.len() as u32)
        };
        let v = [
            num(d[0])?,
            num(d[1])?,
            num(d[2])?,
            num(t[0])?,
            num(t[1])?,
            num(t[2])?,
            nanos,
        ];
        if v[0] <= 1 {
            return Ok(None);
        }
        Ok(Some(Stamp(v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Option<Stamp> {
        Stamp::parse(s).unwrap()
    }

    fn seen(running: bool, started: &str, error: &str) -> Seen {
        Seen {
            running,
            started_at: at(started),
            error: error.into(),
        }
    }

    const NEVER: &str = "0001-01-01T00:00:00Z";

    #[test]
    fn times_compare_as_times_not_as_strings() {
        assert!(at("2026-12-07T17:50:12.1Z") < at("2026-12-07T17:50:12.123Z"));
        assert!(at("2026-12-07T17:50:12Z") < at("2026-12-07T17:50:12.000000001Z"));
        assert!(at("2026-12-07T23:59:59.9Z") < at("2026-12-08T00:00:00Z"));
        assert_eq!(at(NEVER), None);
        for bad in [
            "",
            "2026-12-07",
            "2026-12-07T17:50:12+01:00",
            "2026-12-07T17:50:12.1234567890Z",
            "x-y-zT1:2:3Z",
        ] {
            let e = Stamp::parse(bad).unwrap_err();
            assert!(e.contains("expected RFC 3339"), "{bad}: {e}");
        }
    }

    #[test]
    fn an_app_whose_start_failed_is_started_once_its_sidecar_runs() {
        let app = seen(
            false,
            "2026-12-07T10:00:00Z",
            "cannot join network of a non running container: 1f2e",
        );
        let sidecar = seen(true, "2026-12-07T10:00:05Z", "");
        match decide(&sidecar, &app, false) {
            Decision::Start(why) => assert!(why.contains("cannot join network"), "{why}"),
            other => panic!("{other:?}"),
        }
        let down = seen(false, "2026-12-07T09:00:00Z", "");
        assert!(matches!(decide(&down, &app, false), Decision::Leave(_)));
    }

    #[test]
    fn an_app_stopped_without_a_failed_start_is_left_alone() {
        let sidecar = seen(true, "2026-12-07T10:00:05Z", "");
        // Stopped by a person or by a deploy that is removing it.
        let stopped = seen(false, "2026-12-07T10:00:06Z", "");
        assert!(matches!(
            decide(&sidecar, &stopped, false),
            Decision::Leave(_)
        ));
        // Created, never started: a deploy waits for the pod filter before starting it.
        let created = seen(false, NEVER, "");
        assert!(matches!(
            decide(&sidecar, &created, true),
            Decision::Leave(_)
        ));
    }

    #[test]
    fn an_app_older_than_its_sidecar_is_rechecked_then_restarted() {
        let sidecar = seen(true, "2026-12-07T10:00:05.5Z", "");
        let stale = seen(true, "2026-12-07T10:00:05.25Z", "");
        assert!(matches!(
            decide(&sidecar, &stale, false),
            Decision::Recheck(_)
        ));
        assert!(matches!(
            decide(&sidecar, &stale, true),
            Decision::Restart(_)
        ));
        let fresh = seen(true, "2026-12-07T10:00:06Z", "");
        assert!(matches!(decide(&sidecar, &fresh, true), Decision::Leave(_)));
    }
}
