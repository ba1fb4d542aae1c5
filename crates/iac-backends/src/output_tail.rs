//! [`OutputTail`]: bounded memory for output a repo controls (the engine's build stream, the
//! dependency resolver's pip output).
//!
//! A repo's build step can print gigabytes, in one line or in many. What iac keeps of it is
//! bounded three ways: a partial line waiting for its newline is cut at [`MAX_LINE_BYTES`], the
//! retained tail (for the error message) holds at most `tail_bytes`, and at most `event_lines`
//! lines become debug events (then one note says how much more there was). Everything else is
//! counted and dropped.

use std::collections::VecDeque;

use iac_core::{Events, Stage};

/// Longest line kept (longer lines are cut, with a note of how much was cut).
pub const MAX_LINE_BYTES: usize = 4096;

/// The tail of a stream of output, in lines, with bounded memory.
#[derive(Debug)]
pub struct OutputTail {
    /// Bytes of the current line not yet ended by a newline (at most [`MAX_LINE_BYTES`]).
    pending: Vec<u8>,
    /// Bytes of the current line dropped past [`MAX_LINE_BYTES`].
    pending_cut: usize,
    lines: VecDeque<String>,
    held: usize,
    tail_bytes: usize,
    event_lines: usize,
    /// Lines seen (complete, non-empty).
    pub total_lines: u64,
    /// Bytes seen.
    pub total_bytes: u64,
    noted: bool,
}

impl OutputTail {
    /// Keeps the last `tail_bytes` of lines and emits at most `event_lines` as events.
    pub fn new(tail_bytes: usize, event_lines: usize) -> Self {
        OutputTail {
            pending: Vec::new(),
            pending_cut: 0,
            lines: VecDeque::new(),
            held: 0,
            tail_bytes,
            event_lines,
            total_lines: 0,
            total_bytes: 0,
            noted: false,
        }
    }

    /// Feeds a chunk; each completed line goes to `line(text, events_left)` which decides how to
    /// report it (`events_left` is false once the event budget is spent).
    pub fn push(&mut self, chunk: &[u8], mut line: impl FnMut(&str, bool)) {
        self.total_bytes += chunk.len() as u64;
        let mut rest = chunk;
        while !rest.is_empty() {
            match rest.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.take(&rest[..i]);
                    rest = &rest[i + 1..];
                    self.finish_line(&mut line);
                }
                None => {
                    self.take(rest);
                    rest = &[];
                }
            }
        }
    }

    /// Ends the stream: a last line without a newline counts too.
    pub fn finish(&mut self, mut line: impl FnMut(&str, bool)) {
        if !self.pending.is_empty() || self.pending_cut > 0 {
            self.finish_line(&mut line);
        }
    }

    fn take(&mut self, bytes: &[u8]) {
        let room = MAX_LINE_BYTES.saturating_sub(self.pending.len());
        let n = bytes.len().min(room);
        self.pending.extend_from_slice(&bytes[..n]);
        self.pending_cut += bytes.len() - n;
    }

    fn finish_line(&mut self, line: &mut impl FnMut(&str, bool)) {
        let mut text = String::from_utf8_lossy(&self.pending)
            .trim_end()
            .to_string();
        if self.pending_cut > 0 {
            text.push_str(&format!(" [… {} more bytes cut]", self.pending_cut));
        }
        self.pending.clear();
        self.pending_cut = 0;
        if text.trim().is_empty() {
            return;
        }
        self.total_lines += 1;
        let within = self.total_lines as usize <= self.event_lines;
        line(&text, within);
        self.held += text.len() + 1;
        self.lines.push_back(text);
        while self.held > self.tail_bytes && self.lines.len() > 1 {
            if let Some(old) = self.lines.pop_front() {
                self.held -= old.len() + 1;
            }
        }
    }

    /// Emits each line as a debug event (lines starting with `Step ` as info, the engine's build
    /// steps) while the budget lasts, then one warning saying the rest is not shown.
    pub fn push_as_events(&mut self, chunk: &[u8], events: &Events, stage: Stage, prefix: &str) {
        let mut over = false;
        self.push(chunk, |l, within| {
            emit(events, stage, prefix, l, within, &mut over)
        });
        self.note_over(over, events, stage);
    }

    /// [`Self::finish`] with the same reporting as [`Self::push_as_events`].
    pub fn finish_as_events(&mut self, events: &Events, stage: Stage, prefix: &str) {
        let mut over = false;
        self.finish(|l, within| emit(events, stage, prefix, l, within, &mut over));
        self.note_over(over, events, stage);
    }

    fn note_over(&mut self, over: bool, events: &Events, stage: Stage) {
        if over && !self.noted {
            self.noted = true;
            events.warn(
                stage,
                format!(
                    "output past {} lines is not shown (only its last {} KiB is kept, for errors)",
                    self.event_lines,
                    self.tail_bytes / 1024
                ),
            );
        }
    }

    /// The last `n` lines kept.
    pub fn last_lines(&self, n: usize) -> String {
        let skip = self.lines.len().saturating_sub(n);
        self.lines
            .iter()
            .skip(skip)
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Every line kept, joined (at most about `tail_bytes`).
    pub fn text(&self) -> String {
        self.last_lines(self.lines.len())
    }

    /// Bytes held now (lines plus the partial line): what the bounds are about.
    pub fn held_bytes(&self) -> usize {
        self.held + self.pending.len()
    }
}

fn emit(events: &Events, stage: Stage, prefix: &str, l: &str, within: bool, over: &mut bool) {
    if !within {
        *over = true;
        return;
    }
    if l.starts_with("Step ") {
        events.info(stage, format!("{prefix}{l}"));
    } else {
        events.debug(stage, format!("{prefix}{l}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_chunks_and_a_last_line_without_newline() {
        let mut t = OutputTail::new(1024, 100);
        let mut seen = Vec::new();
        t.push(b"Step 1/2 : FR", |l, _| seen.push(l.to_string()));
        t.push(b"OM x\n\nhello\nwor", |l, _| seen.push(l.to_string()));
        t.finish(|l, _| seen.push(l.to_string()));
        assert_eq!(seen, ["Step 1/2 : FROM x", "hello", "wor"]);
        assert_eq!(t.total_lines, 3);
        assert_eq!(t.last_lines(2), "hello\nwor");
    }

    #[test]
    fn memory_stays_bounded_for_a_flood_of_lines_and_for_one_endless_line() {
        let mut t = OutputTail::new(16 * 1024, 10);
        let mut events = 0;
        let line = vec![b'x'; 1000];
        for _ in 0..20_000 {
            t.push(&line, |_, within| events += within as usize);
            t.push(b"\n", |_, within| events += within as usize);
            assert!(t.held_bytes() <= 16 * 1024 + MAX_LINE_BYTES + 1024);
        }
        assert_eq!(events, 10, "only the event budget becomes events");
        assert_eq!(t.total_lines, 20_000);
        assert!(t.text().len() <= 16 * 1024 + 1024);

        let mut one = OutputTail::new(16 * 1024, 10);
        for _ in 0..10_000 {
            one.push(&[b'y'; 10_000], |_, _| {});
        }
        assert!(one.held_bytes() <= MAX_LINE_BYTES);
        one.finish(|_, _| {});
        let kept = one.text();
        assert!(
            kept.len() < MAX_LINE_BYTES + 64 && kept.ends_with("more bytes cut]"),
            "{}",
            &kept[kept.len() - 40..]
        );
        assert_eq!(one.total_bytes, 100_000_000);
    }

    #[test]
    fn invalid_utf8_is_replaced_not_an_error() {
        let mut t = OutputTail::new(1024, 10);
        t.push(b"caf\xe9\n", |_, _| {});
        assert_eq!(t.text(), "caf\u{fffd}");
    }
}
