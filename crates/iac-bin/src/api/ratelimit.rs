//! The failed-authentication limit of the admin API ([`FailureLimiter`]): a client that fails
//! authentication `[serve] auth_failure_limit` times within `auth_failure_window` is refused
//! with 429 and a `Retry-After` for one window, whatever credential it then presents — so
//! guessing tokens costs a window per `auth_failure_limit` guesses, and the Supabase verifier is
//! not asked while the client waits.
//!
//! A client is its IP address on TCP (IPv6 by its /64, which one host usually holds whole) and
//! its uid on the Unix socket. What counts as a failure: a missing, malformed, invalid or
//! expired credential (401), a valid one the verifier refuses (403), a socket peer of another
//! uid — not an unreachable auth provider (503), and not a project the caller may not use
//! (that caller did authenticate). A success does not wipe earlier failures. At most
//! [`MAX_CLIENTS`] clients are remembered; when full, the idle ones are forgotten first.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Clients remembered at once.
pub const MAX_CLIENTS: usize = 4096;

/// Whom failures are counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// An IPv4 address, or the /64 of an IPv6 address (host bits zeroed).
    Ip(IpAddr),
    /// A Unix socket peer's uid (`None`: unreadable credentials).
    Uid(Option<u32>),
}

impl ClientKey {
    /// The key of a TCP client: IPv4 (also when IPv4-mapped) as is, IPv6 by its /64.
    pub fn of_ip(ip: IpAddr) -> ClientKey {
        match ip {
            IpAddr::V4(v4) => ClientKey::Ip(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey::Ip(IpAddr::V4(v4)),
                None => {
                    let net = u128::from(v6) & !((1u128 << 64) - 1);
                    ClientKey::Ip(IpAddr::V6(net.into()))
                }
            },
        }
    }
}

#[derive(Debug, Default)]
struct Client {
    /// Failures within the current window, oldest first.
    failures: VecDeque<Instant>,
    /// Refused until then.
    blocked_until: Option<Instant>,
}

impl Client {
    fn last_activity(&self) -> Option<Instant> {
        self.failures.back().copied().max(self.blocked_until)
    }
}

/// Counts authentication failures per client; see the module docs.
#[derive(Debug)]
pub struct FailureLimiter {
    /// Failures allowed within `window`; 0 turns the limit off.
    limit: u32,
    window: Duration,
    clients: Mutex<HashMap<ClientKey, Client>>,
}

impl FailureLimiter {
    /// A limiter allowing `limit` failures per client within `window` (0 turns it off).
    pub fn new(limit: u32, window: Duration) -> Self {
        FailureLimiter {
            limit,
            window,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The configured limit and window.
    pub fn limits(&self) -> (u32, Duration) {
        (self.limit, self.window)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ClientKey, Client>> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long `key` must still wait, if it is refused now.
    pub fn blocked(&self, key: &ClientKey, now: Instant) -> Option<Duration> {
        if self.limit == 0 {
            return None;
        }
        let until = self.lock().get(key)?.blocked_until?;
        (until > now).then(|| until - now)
    }

    /// Records a failure of `key`; returns how long it is now refused when this failure reached
    /// the limit.
    pub fn failed(&self, key: ClientKey, now: Instant) -> Option<Duration> {
        if self.limit == 0 {
            return None;
        }
        let mut clients = self.lock();
        if !clients.contains_key(&key) && clients.len() >= MAX_CLIENTS {
            self.forget_idle(&mut clients, now);
        }
        let c = clients.entry(key).or_default();
        if c.blocked_until.is_some_and(|u| u <= now) {
            c.blocked_until = None;
        }
        while c
            .failures
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            c.failures.pop_front();
        }
        c.failures.push_back(now);
        if c.failures.len() >= self.limit as usize {
            c.failures.clear();
            c.blocked_until = Some(now + self.window);
            return Some(self.window);
        }
        None
    }

    /// Drops clients with nothing inside the window; if still full, the longest idle one.
    fn forget_idle(&self, clients: &mut HashMap<ClientKey, Client>, now: Instant) {
        clients.retain(|_, c| {
            c.blocked_until.is_some_and(|u| u > now)
                || c.failures
                    .back()
                    .is_some_and(|t| now.duration_since(*t) < self.window)
        });
        if clients.len() >= MAX_CLIENTS
            && let Some(oldest) = clients
                .iter()
                .min_by_key(|(_, c)| c.last_activity())
                .map(|(k, _)| *k)
        {
            clients.remove(&oldest);
        }
    }

    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> ClientKey {
        ClientKey::of_ip(s.parse().unwrap())
    }

    #[test]
    fn the_limit_th_failure_in_a_window_blocks_the_client_for_one_window() {
        let l = FailureLimiter::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        assert_eq!(l.failed(a, t0), None);
        assert_eq!(l.failed(a, t0 + Duration::from_secs(1)), None);
        assert_eq!(l.blocked(&a, t0 + Duration::from_secs(2)), None);
        assert_eq!(
            l.failed(a, t0 + Duration::from_secs(2)),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            l.blocked(&a, t0 + Duration::from_secs(12)),
            Some(Duration::from_secs(50))
        );
        // Another client is not affected.
        assert_eq!(
            l.blocked(&ip("192.0.2.2"), t0 + Duration::from_secs(12)),
            None
        );
        // After the window the client starts afresh.
        let later = t0 + Duration::from_secs(62);
        assert_eq!(l.blocked(&a, later), None);
        assert_eq!(l.failed(a, later), None);
        assert_eq!(l.blocked(&a, later), None);
    }

    #[test]
    fn failures_older_than_the_window_do_not_count() {
        let l = FailureLimiter::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        for i in 0..10 {
            // Two failures per window, never three.
            assert_eq!(l.failed(a, t0 + Duration::from_secs(6 * i)), None, "{i}");
        }
    }

    #[test]
    fn zero_turns_the_limit_off() {
        let l = FailureLimiter::new(0, Duration::from_secs(10));
        let t0 = Instant::now();
        for _ in 0..100 {
            assert_eq!(l.failed(ip("192.0.2.1"), t0), None);
        }
        assert_eq!(l.blocked(&ip("192.0.2.1"), t0), None);
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(ip("2001:db8:1:2:aaaa::1"), ip("2001:db8:1:2:bbbb::2"));
        assert_ne!(ip("2001:db8:1:2::1"), ip("2001:db8:1:3::1"));
        assert_eq!(ip("::ffff:192.0.2.1"), ip("192.0.2.1"));
        assert_ne!(ClientKey::Uid(Some(1000)), ClientKey::Uid(Some(1001)));
    }

    #[test]
    fn memory_is_bounded_and_idle_clients_go_first() {
        let l = FailureLimiter::new(2, Duration::from_secs(10));
        let t0 = Instant::now();
        let blocked = ip("10.255.255.255");
        l.failed(blocked, t0);
        l.failed(blocked, t0);
        let later = t0 + Duration::from_secs(5);
        for i in 0..(MAX_CLIENTS as u32 + 100) {
            l.failed(ClientKey::Uid(Some(i)), later);
        }
        assert!(l.remembered() <= MAX_CLIENTS, "{}", l.remembered());
        // A flood of new clients evicts the least recently active ones, never a blocked one
        // (its activity lasts until its block ends).
        assert_eq!(
            l.blocked(&blocked, later),
            Some(Duration::from_secs(5)),
            "a flood of other clients does not lift a block"
        );
        let after = t0 + Duration::from_secs(30);
        l.failed(ip("10.0.0.1"), after);
        assert!(l.remembered() <= MAX_CLIENTS);
        assert_eq!(l.remembered(), 1, "everything idle was forgotten");
    }
}
