//! [`LogTail`]: the last lines of a container's log, saved with a deployment when its pod is
//! replaced or destroyed, and the caps on them. Events carry it to the history store.

use serde::{Deserialize, Serialize};

/// Lines of a container's log kept when its pod is replaced or destroyed.
pub const LOG_TAIL_LINES: usize = 200;

/// Bytes of one saved log tail at most (the newest are kept).
pub const LOG_TAIL_BYTES: usize = 64 * 1024;

/// The last lines of one container's log, saved when its pod was replaced or destroyed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogTail {
    /// The service.
    pub service: String,
    /// The container's name.
    pub container: String,
    /// `app` or `sidecar`.
    pub role: String,
    /// Why it was saved: `replaced`, `removed` or `destroyed`.
    pub reason: String,
    /// RFC 3339 with milliseconds.
    pub saved_at: String,
    /// The lines, oldest first (at most [`LOG_TAIL_LINES`], [`LOG_TAIL_BYTES`]).
    pub lines: Vec<String>,
    /// Older lines were left out to respect those caps.
    pub truncated: bool,
}

impl LogTail {
    /// Keeps the newest lines of `text` within [`LOG_TAIL_LINES`] and [`LOG_TAIL_BYTES`];
    /// `truncated` says whether anything was left out.
    pub fn cap(text: &str) -> (Vec<String>, bool) {
        let all: Vec<&str> = text.lines().collect();
        let mut kept = Vec::new();
        let mut bytes = 0usize;
        for line in all.iter().rev() {
            if kept.len() == LOG_TAIL_LINES || bytes + line.len() + 1 > LOG_TAIL_BYTES {
                break;
            }
            bytes += line.len() + 1;
            kept.push(line.to_string());
        }
        let truncated = kept.len() < all.len();
        kept.reverse();
        (kept, truncated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_tail_keeps_the_newest_lines_within_both_caps() {
        let text: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        let (lines, truncated) = LogTail::cap(&text);
        assert!(truncated);
        assert_eq!(lines.len(), LOG_TAIL_LINES);
        assert_eq!(lines.last().unwrap(), "line 999");
        assert_eq!(lines[0], format!("line {}", 1000 - LOG_TAIL_LINES));

        let long = "x".repeat(LOG_TAIL_BYTES / 2);
        let text = format!("{long}\n{long}\n{long}\nlast\n");
        let (lines, truncated) = LogTail::cap(&text);
        assert!(truncated);
        assert_eq!(lines.len(), 2, "one long line and `last` fit");
        assert_eq!(lines[1], "last");

        let (lines, truncated) = LogTail::cap("a\nb\n");
        assert_eq!(lines, vec!["a", "b"]);
        assert!(!truncated);
    }
}
