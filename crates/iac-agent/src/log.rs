//! The agent's own log lines: one `iac-agent: …` line on stderr per message, next to the child's
//! output in `docker logs`. Every module logs through [`log`], so none depends on the supervisor
//! for it.

/// Logs one agent message on stderr (`docker logs` shows it next to the child's output). The line
/// goes out in one `write` so it does not interleave with the child's stderr being teed (`eprintln!`
/// writes piecewise).
pub fn log(msg: impl std::fmt::Display) {
    use std::io::Write;
    let line = format!("iac-agent: {msg}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}
