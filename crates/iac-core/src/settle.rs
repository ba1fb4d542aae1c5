//! The settle window: a created or replaced service is healthy only once its entry has been
//! running for the whole window (`health_settle`), so an entry that crashes right after starting
//! is not reported healthy. The window is counted from when the entry started, as the agent
//! reports it (`HealthReport::uptime_ms`), not from when iac first saw it SERVING: a service that
//! has already been up for the window when it first answers is not waited on at all, and one that
//! just started is held only for what is left. An agent that does not report its uptime is held
//! for the whole window after its first SERVING answer (the conservative reading).

use std::time::Duration;

use tokio::time::Instant;

use crate::event::{Events, Stage};
use crate::health::{HealthReport, HealthState, ProbeTarget};
use crate::stages::HealthProber;

/// How much of `window` is left, given the entry's reported uptime (`None`: not reported) and the
/// time since iac's first SERVING answer from it (used only when the uptime is not reported).
pub fn remaining(
    window: Duration,
    uptime: Option<Duration>,
    since_first_serving: Duration,
) -> Duration {
    window.saturating_sub(uptime.unwrap_or(since_first_serving))
}

/// Holds `first` (the prober's first answer for a created or replaced service) until the entry
/// has been up for `window`: while the latest answer is SERVING and part of the window is left,
/// waits that part and asks again. Returns the last answer (its `attempts` summed over every
/// check), which is SERVING only if the entry stayed up. A non-SERVING `first`, or a zero window,
/// comes back unchanged. The extra waiting is bounded by `target.deadline`: an entry that keeps
/// reporting less uptime than the window after that (it was restarted) is reported UNKNOWN.
pub async fn settle(
    prober: &dyn HealthProber,
    target: &ProbeTarget,
    first: HealthReport,
    window: Duration,
    events: &Events,
) -> HealthReport {
    let first_serving = Instant::now();
    let mut h = first;
    let mut waited = false;
    loop {
        if !h.is_serving() || window.is_zero() {
            return h;
        }
        let left = remaining(window, h.uptime(), first_serving.elapsed());
        if left.is_zero() {
            if !waited {
                events.debug(
                    Stage::Health,
                    format!(
                        "SERVING and up {} already, past the {} settle window: no wait",
                        show(h.uptime().unwrap_or_default()),
                        show(window)
                    ),
                );
            }
            return h;
        }
        if first_serving.elapsed() + left > window + target.deadline {
            return HealthReport {
                state: HealthState::Unknown,
                detail: format!(
                    "SERVING, but not up for the whole {} settle window within the {} deadline (up {}: it was restarted)",
                    show(window),
                    show(target.deadline),
                    show(h.uptime().unwrap_or_default())
                ),
                ..h
            };
        }
        let up = match h.uptime() {
            Some(u) => format!("up {}", show(u)),
            None => "uptime not reported".to_string(),
        };
        events.info(
            Stage::Health,
            format!(
                "SERVING ({up}); checking again in {} that it stays up ({} settle window)",
                show(left),
                show(window)
            ),
        );
        tokio::time::sleep(left).await;
        waited = true;
        let again = prober.check(target).await;
        h = HealthReport {
            attempts: h.attempts + again.attempts,
            ..again
        };
    }
}

fn show(d: Duration) -> String {
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::name::ServiceName;
    use crate::stages::MockHealthProber;

    fn target() -> ProbeTarget {
        ProbeTarget {
            service: ServiceName::new("web").unwrap(),
            addr: "127.0.0.1:4".parse().unwrap(),
            deadline: Duration::from_secs(45),
        }
    }

    fn answer(state: HealthState, uptime_ms: Option<u64>) -> HealthReport {
        HealthReport {
            uptime_ms,
            ..HealthReport::new(
                ServiceName::new("web").unwrap(),
                state,
                (state == HealthState::NotServing).then_some(1),
                "d".into(),
                1,
            )
        }
    }

    /// A prober that answers from `script` in order and records when (paused clock) it was asked.
    fn scripted(script: Vec<HealthReport>) -> (MockHealthProber, Arc<Mutex<Vec<Instant>>>) {
        let asked = Arc::new(Mutex::new(Vec::new()));
        let log = asked.clone();
        let answers = Mutex::new(script.into_iter());
        let mut p = MockHealthProber::new();
        p.expect_check().returning(move |_| {
            log.lock().unwrap().push(Instant::now());
            answers
                .lock()
                .unwrap()
                .next()
                .expect("asked more often than scripted")
        });
        (p, asked)
    }

    #[test]
    fn the_remainder_counts_from_the_reported_uptime_else_from_the_first_answer() {
        let w = Duration::from_secs(3);
        let s = Duration::from_millis;
        assert_eq!(remaining(w, Some(s(1200)), s(0)), s(1800));
        assert_eq!(remaining(w, Some(s(3000)), s(0)), s(0));
        assert_eq!(remaining(w, Some(s(9000)), s(0)), s(0));
        // Reported uptime wins over iac's own clock (a restart resets it).
        assert_eq!(remaining(w, Some(s(100)), s(2500)), s(2900));
        assert_eq!(remaining(w, None, s(0)), w);
        assert_eq!(remaining(w, None, s(1000)), s(2000));
        assert_eq!(remaining(Duration::ZERO, Some(s(5)), s(0)), s(0));
    }

    #[tokio::test(start_paused = true)]
    async fn an_entry_up_longer_than_the_window_is_not_waited_on() {
        let (p, asked) = scripted(vec![]);
        let t0 = Instant::now();
        let first = answer(HealthState::Serving, Some(4_000));
        let h = settle(
            &p,
            &target(),
            first.clone(),
            Duration::from_secs(3),
            &Events::discard(),
        )
        .await;
        assert_eq!(h, first);
        assert_eq!(t0.elapsed(), Duration::ZERO, "no wait at all");
        assert!(asked.lock().unwrap().is_empty(), "no second check");
    }

    #[tokio::test(start_paused = true)]
    async fn an_entry_that_just_started_is_held_for_the_remainder_only() {
        let (p, asked) = scripted(vec![answer(HealthState::Serving, Some(3_001))]);
        let t0 = Instant::now();
        let h = settle(
            &p,
            &target(),
            answer(HealthState::Serving, Some(1_200)),
            Duration::from_secs(3),
            &Events::discard(),
        )
        .await;
        assert!(h.is_serving(), "{h:?}");
        assert_eq!(h.attempts, 2, "attempts of both checks");
        let asked = asked.lock().unwrap();
        assert_eq!(asked.len(), 1);
        assert_eq!(
            asked[0] - t0,
            Duration::from_millis(1_800),
            "the remainder, not the window"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_entry_that_crashes_inside_the_window_fails_the_settle() {
        let (p, _) = scripted(vec![answer(HealthState::NotServing, Some(700))]);
        let h = settle(
            &p,
            &target(),
            answer(HealthState::Serving, Some(500)),
            Duration::from_secs(3),
            &Events::discard(),
        )
        .await;
        assert_eq!(h.state, HealthState::NotServing);
        assert_eq!(h.exit_code, Some(1));
        assert_eq!(h.attempts, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_reported_uptime_the_whole_window_is_waited_once() {
        let (p, asked) = scripted(vec![answer(HealthState::Serving, None)]);
        let t0 = Instant::now();
        let h = settle(
            &p,
            &target(),
            answer(HealthState::Serving, None),
            Duration::from_secs(3),
            &Events::discard(),
        )
        .await;
        assert!(h.is_serving());
        let asked = asked.lock().unwrap();
        assert_eq!(
            asked.len(),
            1,
            "one re-check, then settled by iac's own clock"
        );
        assert_eq!(asked[0] - t0, Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_restarted_entry_is_held_until_it_has_been_up_for_the_window() {
        // Up 2 s, then (restarted) up 0.5 s, then up 3 s: waits 1 s, then 2.5 s.
        let (p, asked) = scripted(vec![
            answer(HealthState::Serving, Some(500)),
            answer(HealthState::Serving, Some(3_000)),
        ]);
        let t0 = Instant::now();
        let h = settle(
            &p,
            &target(),
            answer(HealthState::Serving, Some(2_000)),
            Duration::from_secs(3),
            &Events::discard(),
        )
        .await;
        assert!(h.is_serving());
        assert_eq!(h.attempts, 3);
        let asked = asked.lock().unwrap();
        assert_eq!(asked[0] - t0, Duration::from_secs(1));
        assert_eq!(asked[1] - t0, Duration::from_millis(3_500));
    }

    #[tokio::test(start_paused = true)]
    async fn an_entry_that_never_stays_up_for_the_window_gives_up_at_the_deadline() {
        let mut p = MockHealthProber::new();
        p.expect_check()
            .returning(|_| answer(HealthState::Serving, Some(100)));
        let mut t = target();
        t.deadline = Duration::from_secs(10);
        let t0 = Instant::now();
        let h = settle(
            &p,
            &t,
            answer(HealthState::Serving, Some(100)),
            Duration::from_secs(3),
            &Events::discard(),
        )
        .await;
        assert_eq!(h.state, HealthState::Unknown, "{h:?}");
        assert!(h.detail.contains("settle window"), "{}", h.detail);
        assert!(
            t0.elapsed() <= Duration::from_secs(13),
            "bounded by window + deadline"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn not_serving_or_no_window_comes_back_unchanged() {
        let (p, asked) = scripted(vec![]);
        let down = answer(HealthState::Unreachable, None);
        let w = Duration::from_secs(3);
        assert_eq!(
            settle(&p, &target(), down.clone(), w, &Events::discard()).await,
            down
        );
        let up = answer(HealthState::Serving, Some(1));
        assert_eq!(
            settle(
                &p,
                &target(),
                up.clone(),
                Duration::ZERO,
                &Events::discard()
            )
            .await,
            up
        );
        assert!(asked.lock().unwrap().is_empty());
    }
}
