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
//! * an app is started only once its sidecar has loaded the pod's packet filter **since its
//!   current start** ([`gate_start`]): the sidecar script writes
//!   [`FILTER_INSTALLED_PREFIX`]… to its stderr once `nft` loaded the ruleset, before Envoy
//!   starts — the same line the docker provisioner waits for before it starts an app — so after
//!   a reboot no app runs a moment in a namespace without its filter;
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
    /// Not yet: look again shortly (the sidecar has not loaded the pod filter yet).
    Wait(String),
}

/// What the sidecar writes to its stderr once its pod filter is loaded (the same as
/// `iac_core::plan::FILTER_INSTALLED_PREFIX`; the agent does not depend on iac-core, a test in
/// iac-backends asserts they are equal).
pub const FILTER_INSTALLED_PREFIX: &str = "iac-sidecar: pod filter installed: ";

/// What the sidecar's log since its current start says about the pod filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterSeen {
    /// The line is there: the filter is in.
    Loaded,
    /// No such line yet.
    NotYet,
    /// The log cannot be read back (a log driver without read-back), with the engine's answer.
    Unreadable(String),
    /// Reading the log failed for another reason (a timeout, a 5xx, a sidecar gone): nothing
    /// is known, so the app waits and the keeper looks again.
    ReadFailed(String),
}

impl FilterSeen {
    /// What an error reading the sidecar's log says: only the engine's "this log driver does
    /// not support reading" means it never can be read back (then the app starts unconfirmed);
    /// anything else is a failure to look again after.
    pub fn from_log_error(e: String) -> FilterSeen {
        if e.contains("does not support reading") {
            FilterSeen::Unreadable(e)
        } else {
            FilterSeen::ReadFailed(e)
        }
    }

    /// Reads the sidecar's log text since its current start.
    pub fn from_log(log: &str) -> FilterSeen {
        if log
            .lines()
            .any(|l| l.trim_start().starts_with(FILTER_INSTALLED_PREFIX))
        {
            FilterSeen::Loaded
        } else {
            FilterSeen::NotYet
        }
    }
}

/// The gate on [`Decision::Start`]: start only once the sidecar's pod filter is in. A log that
/// cannot be read back does not keep the pod down for good: the app is started and the reason
/// says the filter was not confirmed. Any other decision passes unchanged.
pub fn gate_start(decision: Decision, filter: &FilterSeen) -> Decision {
    let Decision::Start(why) = decision else {
        return decision;
    };
    match filter {
        FilterSeen::Loaded => Decision::Start(format!("{why}; its pod filter is in")),
        FilterSeen::NotYet => Decision::Wait(
            "its sidecar runs but has not loaded the pod filter since it started".into(),
        ),
        FilterSeen::ReadFailed(e) => Decision::Wait(format!(
            "its sidecar's log could not be read to confirm the pod filter ({e})"
        )),
        FilterSeen::Unreadable(e) => Decision::Start(format!(
            "{why}; its pod filter is not confirmed: the sidecar's log cannot be read back ({e})"
        )),
    }
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

impl Stamp {
    /// Seconds and nanoseconds since the Unix epoch, as the engine's `since=` parameter takes
    /// them (`1765129812.123456789`).
    pub fn unix(&self) -> String {
        let [y, m, d, hh, mm, ss, ns] = self.0;
        // Days from civil (H. Hinnant's algorithm), for the proleptic Gregorian calendar.
        let (y, m, d) = (i64::from(y), i64::from(m), i64::from(d));
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        let secs = days * 86_400 + i64::from(hh) * 3600 + i64::from(mm) * 60 + i64::from(ss);
        format!("{secs}.{ns:09}")
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
    fn stamps_convert_to_unix_time() {
        assert_eq!(at("1970-01-01T00:00:01Z").unwrap().unix(), "1.000000000");
        assert_eq!(
            at("2026-12-07T17:50:12.5Z").unwrap().unix(),
            "1796665812.500000000"
        );
        assert_eq!(
            at("2000-03-01T00:00:00Z").unwrap().unix(),
            "951868800.000000000"
        );
    }

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
    fn an_app_is_started_only_once_its_sidecar_loaded_the_pod_filter() {
        let app = seen(
            false,
            "2026-12-07T10:00:00Z",
            "cannot join network of a non running container",
        );
        let sidecar = seen(true, "2026-12-07T10:00:05Z", "");
        let start = || decide(&sidecar, &app, false);
        // The sidecar's stderr since its start: the line comes before Envoy's own.
        let log = "[warn] something\niac-sidecar: pod filter installed: inbound tcp/15000 only\n[info] envoy starting\n";
        assert_eq!(FilterSeen::from_log(log), FilterSeen::Loaded);
        match gate_start(start(), &FilterSeen::from_log(log)) {
            Decision::Start(why) => assert!(why.ends_with("its pod filter is in"), "{why}"),
            other => panic!("{other:?}"),
        }
        // Not yet (nft still loading, or a line that merely mentions it).
        for log in [
            "",
            "iac-sidecar: loading the pod filter\n",
            "x iac-sidecar: pod filter installed: \n",
        ] {
            assert_eq!(FilterSeen::from_log(log), FilterSeen::NotYet, "{log:?}");
            assert!(matches!(
                gate_start(start(), &FilterSeen::from_log(log)),
                Decision::Wait(_)
            ));
        }
        // A log that cannot be read back: started, and the reason says so.
        match gate_start(
            start(),
            &FilterSeen::Unreadable("logging driver none".into()),
        ) {
            Decision::Start(why) => assert!(why.contains("not confirmed"), "{why}"),
            other => panic!("{other:?}"),
        }
        // Any other error reading the log: nothing is known, the app waits.
        for e in ["reading the log timed out after 30s", "engine answered 500"] {
            match gate_start(start(), &FilterSeen::from_log_error(e.into())) {
                Decision::Wait(why) => assert!(why.contains(e), "{why}"),
                other => panic!("{e}: {other:?}"),
            }
        }
        assert!(matches!(
            FilterSeen::from_log_error("configured logging driver does not support reading".into()),
            FilterSeen::Unreadable(_)
        ));
        // Other decisions pass through.
        let stopped = seen(false, "2026-12-07T10:00:06Z", "");
        assert!(matches!(
            gate_start(decide(&sidecar, &stopped, false), &FilterSeen::NotYet),
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
