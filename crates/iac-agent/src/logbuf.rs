//! The child's captured output: a line splitter per stream (long lines truncated with a marker,
//! invalid UTF-8 replaced lossily) and the bounded ring buffer that `StreamLogs` reads, with a
//! broadcast channel for followers.
//!
//! Invariants: the ring never holds more than `max_lines` lines nor more than `max_bytes` bytes of
//! message text; no stored message is longer than `max_line_bytes` plus the truncation marker.
//! Pushing a line and subscribing a follower happen under one lock, so a follower sees every line
//! exactly once: the backlog it was given, then live lines, with no gap and no duplicate.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use iac_proto::LogLine;
use tokio::sync::broadcast;

use crate::timefmt::rfc3339_millis;

/// Appended to a line that was cut at the per-line byte limit.
pub fn truncation_marker(max_line_bytes: usize) -> String {
    format!(" [iac-agent: line truncated at {max_line_bytes} bytes]")
}

/// Which of the child's pipes a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// The entry's standard output.
    Stdout,
    /// The entry's standard error.
    Stderr,
}

impl StreamKind {
    /// The name used on the wire (`LogLine.stream`): `stdout` or `stderr`.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::Stdout => "stdout",
            StreamKind::Stderr => "stderr",
        }
    }
}

/// One captured line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// When the agent read the line (not when the app wrote it).
    pub ts: SystemTime,
    /// The pipe the line came from.
    pub stream: StreamKind,
    /// The line without its newline, cut at `--max-line-bytes` (then ending in the cut marker).
    pub msg: String,
}

impl LogEntry {
    /// The gRPC `LogLine`, its timestamp as RFC 3339 with milliseconds.
    pub fn to_proto(&self) -> LogLine {
        LogLine {
            ts: rfc3339_millis(self.ts),
            stream: self.stream.as_str().to_owned(),
            msg: self.msg.clone(),
            service: String::new(),
        }
    }
}

/// Bounds of the ring buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingLimits {
    /// At most this many lines are kept (oldest dropped first). At least 1.
    pub max_lines: usize,
    /// At most this many bytes of message text are kept (oldest dropped first). At least 1.
    pub max_bytes: usize,
    /// Longer lines are cut to this many bytes (on a UTF-8 boundary) plus a marker. Clamped so
    /// that a cut line with its marker still fits in `max_bytes`.
    pub max_line_bytes: usize,
}

/// The smallest accepted `--ring-bytes`: room for a marked line with some text in it.
pub const MIN_RING_BYTES: usize = 256;

impl RingLimits {
    /// Validated limits; the error names the offending option and what it must be.
    pub fn new(max_lines: usize, max_bytes: usize, max_line_bytes: usize) -> Result<Self, String> {
        if max_lines == 0 {
            return Err("--ring-lines must be at least 1, got 0".into());
        }
        if max_bytes < MIN_RING_BYTES {
            return Err(format!(
                "--ring-bytes must be at least {MIN_RING_BYTES}, got {max_bytes}"
            ));
        }
        if max_line_bytes == 0 {
            return Err("--max-line-bytes must be at least 1, got 0".into());
        }
        // truncation_marker(n) is never longer than truncation_marker(max_bytes) for n <= max_bytes.
        let line_room = max_bytes - truncation_marker(max_bytes).len();
        Ok(Self {
            max_lines,
            max_bytes,
            max_line_bytes: max_line_bytes.min(line_room),
        })
    }
}

/// Turns a byte stream into lines. Lines end at `\n` (a trailing `\r` is dropped). A line longer than
/// `max_line_bytes` is emitted as soon as the limit is passed, cut on a character boundary and
/// marked; the rest of it, up to the next newline, is discarded.
#[derive(Debug)]
pub struct LineSplitter {
    max_line_bytes: usize,
    pending: Vec<u8>,
    discarding: bool,
}

impl LineSplitter {
    /// A splitter cutting lines at `max_line_bytes` (at least 1).
    pub fn new(max_line_bytes: usize) -> Self {
        Self {
            max_line_bytes: max_line_bytes.max(1),
            pending: Vec::new(),
            discarding: false,
        }
    }

    /// Feeds a chunk; complete (or cut) lines are appended to `out`.
    pub fn feed(&mut self, mut chunk: &[u8], out: &mut Vec<String>) {
        while !chunk.is_empty() {
            let newline = chunk.iter().position(|&b| b == b'\n');
            let (segment, rest, ends_line) = match newline {
                Some(i) => (&chunk[..i], &chunk[i + 1..], true),
                None => (chunk, &chunk[chunk.len()..], false),
            };
            chunk = rest;
            if self.discarding {
                if ends_line {
                    self.discarding = false;
                }
                continue;
            }
            // Never hold more than max_line_bytes + 1 bytes: one more than the limit proves a cut.
            let room = self.max_line_bytes + 1 - self.pending.len();
            let take = segment.len().min(room);
            self.pending.extend_from_slice(&segment[..take]);
            if self.pending.len() > self.max_line_bytes {
                out.push(self.finish_line(true));
                self.discarding = !ends_line;
            } else if ends_line {
                out.push(self.finish_line(false));
            }
        }
    }

    /// End of stream: the unterminated last line, if any.
    pub fn finish(&mut self) -> Option<String> {
        let had_partial = !self.pending.is_empty();
        self.discarding = false;
        had_partial.then(|| self.finish_line(false))
    }

    fn finish_line(&mut self, cut: bool) -> String {
        let raw = std::mem::take(&mut self.pending);
        let raw = if cut {
            &raw[..self.max_line_bytes]
        } else {
            &raw[..]
        };
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let mut line = String::from_utf8_lossy(raw).into_owned();
        // Lossy replacement can grow a line (1 invalid byte -> 3-byte U+FFFD): re-check the limit.
        if cut || line.len() > self.max_line_bytes {
            let mut end = self.max_line_bytes.min(line.len());
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            line.truncate(end);
            line.push_str(&truncation_marker(self.max_line_bytes));
        }
        line
    }
}

/// The ring buffer plus the live channel for followers.
#[derive(Debug)]
pub struct LogBuffer {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    limits: RingLimits,
    lines: VecDeque<Arc<LogEntry>>,
    bytes: usize,
    /// `None` once every producer has finished: no live line can arrive any more.
    live: Option<broadcast::Sender<Arc<LogEntry>>>,
    open_producers: usize,
    follow_capacity: usize,
}

/// What a `StreamLogs` call gets: the backlog and, when following, the live receiver.
#[derive(Debug)]
pub struct Subscription {
    /// Lines already in the buffer when the call came, oldest first (the requested tail; all of them for tail 0).
    pub backlog: Vec<Arc<LogEntry>>,
    /// `None` when not following, or when the output has already ended for good.
    pub live: Option<broadcast::Receiver<Arc<LogEntry>>>,
}

impl LogBuffer {
    /// `producers` is how many streams will call [`LogBuffer::producer_finished`] (2: stdout and
    /// stderr); `follow_capacity` is how many live lines a slow follower may fall behind before it
    /// skips ahead (it then receives a marker line instead of blocking the child).
    pub fn new(limits: RingLimits, producers: usize, follow_capacity: usize) -> Self {
        let (live, _) = broadcast::channel(follow_capacity.max(1));
        Self {
            inner: Mutex::new(Inner {
                limits,
                lines: VecDeque::new(),
                bytes: 0,
                live: (producers > 0).then_some(live),
                open_producers: producers,
                follow_capacity: follow_capacity.max(1),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the ring inconsistent beyond a miscount of
        // one line; keep serving logs rather than poisoning every later call.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores a line (evicting the oldest as needed) and hands it to live followers.
    pub fn push(&self, entry: LogEntry) {
        let entry = Arc::new(entry);
        let mut inner = self.lock();
        inner.bytes += entry.msg.len();
        inner.lines.push_back(Arc::clone(&entry));
        // Captured lines always fit (see RingLimits::new), so this never evicts the new line
        // itself unless a caller pushes a message longer than max_bytes.
        while inner.lines.len() > inner.limits.max_lines || inner.bytes > inner.limits.max_bytes {
            match inner.lines.pop_front() {
                Some(old) => inner.bytes -= old.msg.len(),
                None => break,
            }
        }
        if let Some(live) = &inner.live {
            // Err only means nobody is following right now.
            let _ = live.send(entry);
        }
    }

    /// `n` more producers will call [`LogBuffer::producer_finished`] (a restarted child's stdout
    /// and stderr). Live followers keep their stream as long as one producer is open; if every
    /// producer had already finished, new followers get a fresh live stream.
    pub fn producers_started(&self, n: usize) {
        let mut inner = self.lock();
        inner.open_producers += n;
        if inner.live.is_none() && n > 0 {
            inner.live = Some(broadcast::channel(inner.follow_capacity).0);
        }
    }

    /// One producer (stdout or stderr reader) reached end of stream. When all have, followers'
    /// streams end after the lines already sent to them.
    pub fn producer_finished(&self) {
        let mut inner = self.lock();
        inner.open_producers = inner.open_producers.saturating_sub(1);
        if inner.open_producers == 0 {
            inner.live = None;
        }
    }

    /// The last `tail` lines (0 = all buffered), and a live receiver when `follow` is set.
    pub fn subscribe(&self, tail: usize, follow: bool) -> Subscription {
        let inner = self.lock();
        let skip = if tail == 0 {
            0
        } else {
            inner.lines.len().saturating_sub(tail)
        };
        Subscription {
            backlog: inner.lines.iter().skip(skip).cloned().collect(),
            live: if follow {
                inner.live.as_ref().map(broadcast::Sender::subscribe)
            } else {
                None
            },
        }
    }

    /// (lines, bytes) currently buffered.
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.lines.len(), inner.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(max: usize, chunks: &[&[u8]]) -> Vec<String> {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, &mut out);
        }
        out.extend(s.finish());
        out
    }

    fn entry(msg: &str) -> LogEntry {
        LogEntry {
            ts: SystemTime::now(),
            stream: StreamKind::Stdout,
            msg: msg.to_owned(),
        }
    }

    fn msgs(entries: &[Arc<LogEntry>]) -> Vec<&str> {
        entries.iter().map(|e| e.msg.as_str()).collect()
    }

    #[test]
    fn splits_lines_across_chunks_and_keeps_partial_tail() {
        let out = split_all(100, &[b"hel", b"lo\nwor", b"ld\r\n\nlast"]);
        assert_eq!(out, ["hello", "world", "", "last"]);
    }

    #[test]
    fn no_partial_line_means_nothing_on_finish() {
        let out = split_all(100, &[b"a\nb\n"]);
        assert_eq!(out, ["a", "b"]);
    }

    #[test]
    fn long_line_is_cut_with_marker_and_rest_discarded() {
        let marker = truncation_marker(8);
        let out = split_all(8, &[b"0123456789abc", b"def\nnext\n"]);
        assert_eq!(out, [format!("01234567{marker}"), "next".to_owned()]);
        // Exactly the limit is not a cut.
        let out = split_all(8, &[b"01234567\n"]);
        assert_eq!(out, ["01234567"]);
        // A cut line without a newline at EOF is emitted once, not twice.
        let out = split_all(4, &[b"abcdefgh"]);
        assert_eq!(out, [format!("abcd{}", truncation_marker(4))]);
    }

    #[test]
    fn cut_respects_utf8_boundaries() {
        // "é" is 2 bytes: cutting at 3 bytes must not split the second "é".
        let out = split_all(3, &["éé\n".as_bytes()]);
        assert_eq!(out, [format!("é{}", truncation_marker(3))]);
    }

    #[test]
    fn invalid_utf8_is_replaced_lossily() {
        let out = split_all(100, &[b"ok \xff\xfe end\n"]);
        assert_eq!(out, ["ok \u{FFFD}\u{FFFD} end"]);
        // Replacement growth past the limit is cut too.
        let out = split_all(4, &[b"\xff\xff\n"]);
        assert_eq!(out, [format!("\u{FFFD}{}", truncation_marker(4))]);
    }

    #[test]
    fn ring_bounded_by_lines() {
        let buf = LogBuffer::new(RingLimits::new(3, 1 << 20, 100).unwrap(), 1, 16);
        for i in 0..10 {
            buf.push(entry(&format!("line {i}")));
        }
        let sub = buf.subscribe(0, false);
        assert_eq!(msgs(&sub.backlog), ["line 7", "line 8", "line 9"]);
        assert_eq!(buf.usage(), (3, 18));
    }

    #[test]
    fn ring_bounded_by_bytes() {
        let buf = LogBuffer::new(RingLimits::new(1000, 300, 100).unwrap(), 1, 16);
        let (a, b, c, d) = (
            "a".repeat(100),
            "b".repeat(100),
            "c".repeat(90),
            "d".repeat(10),
        );
        for m in [&a, &b, &c, &d] {
            buf.push(entry(m));
        }
        // 100+100+90+10 = 300: all fit exactly.
        assert_eq!(buf.usage(), (4, 300));
        buf.push(entry("e"));
        // 301 > 300: the oldest goes.
        assert_eq!(msgs(&buf.subscribe(0, false).backlog), [&b, &c, &d, "e"]);
        assert_eq!(buf.usage(), (4, 201));
    }

    #[test]
    fn cut_lines_with_marker_fit_the_byte_bound() {
        let limits = RingLimits::new(10, 300, 1 << 20).unwrap();
        assert!(limits.max_line_bytes < 300);
        let buf = LogBuffer::new(limits, 1, 16);
        let out = split_all(limits.max_line_bytes, &[&[b'x'; 1000], b"\n"]);
        assert_eq!(out.len(), 1);
        assert!(out[0].len() <= 300, "cut line is {} bytes", out[0].len());
        assert!(out[0].ends_with(&truncation_marker(limits.max_line_bytes)));
        buf.push(entry(&out[0]));
        assert_eq!(
            buf.usage().0,
            1,
            "a cut line must not be evicted by its own marker"
        );
    }

    #[test]
    fn limits_are_validated() {
        assert!(
            RingLimits::new(0, 1000, 1)
                .unwrap_err()
                .contains("--ring-lines")
        );
        let err = RingLimits::new(1, 10, 1).unwrap_err();
        assert!(err.contains("--ring-bytes") && err.contains("256"), "{err}");
        assert!(
            RingLimits::new(1, 1000, 0)
                .unwrap_err()
                .contains("--max-line-bytes")
        );
    }

    #[test]
    fn tail_returns_last_n_or_all() {
        let buf = LogBuffer::new(RingLimits::new(100, 1 << 20, 100).unwrap(), 1, 16);
        for i in 0..5 {
            buf.push(entry(&i.to_string()));
        }
        assert_eq!(msgs(&buf.subscribe(2, false).backlog), ["3", "4"]);
        assert_eq!(msgs(&buf.subscribe(0, false).backlog).len(), 5);
        assert_eq!(msgs(&buf.subscribe(50, false).backlog).len(), 5);
        assert!(buf.subscribe(2, false).live.is_none());
    }

    #[tokio::test]
    async fn follower_gets_backlog_then_live_without_gap_and_ends_when_producers_finish() {
        let buf = LogBuffer::new(RingLimits::new(100, 1 << 20, 100).unwrap(), 2, 16);
        buf.push(entry("before"));
        let mut sub = buf.subscribe(0, true);
        buf.push(entry("after"));
        assert_eq!(msgs(&sub.backlog), ["before"]);
        let live = sub.live.as_mut().expect("following");
        assert_eq!(live.recv().await.unwrap().msg, "after");
        buf.producer_finished();
        buf.push(entry("stderr still open"));
        assert_eq!(live.recv().await.unwrap().msg, "stderr still open");
        buf.producer_finished();
        assert!(matches!(
            live.recv().await,
            Err(broadcast::error::RecvError::Closed)
        ));
        // After the end, a follower only gets the backlog.
        assert!(buf.subscribe(0, true).live.is_none());
    }

    #[tokio::test]
    async fn slow_follower_lags_instead_of_blocking_producer() {
        let buf = LogBuffer::new(RingLimits::new(1000, 1 << 20, 100).unwrap(), 1, 4);
        let mut sub = buf.subscribe(0, true);
        for i in 0..20 {
            buf.push(entry(&i.to_string()));
        }
        let live = sub.live.as_mut().unwrap();
        assert!(matches!(
            live.recv().await,
            Err(broadcast::error::RecvError::Lagged(16))
        ));
        assert_eq!(live.recv().await.unwrap().msg, "16");
    }
}
