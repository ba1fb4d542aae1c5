//! What the CLI shows a person or a machine: live progress from [`DeployEvent`]s (indicatif on a
//! terminal, plain lines otherwise, NDJSON with `--json`) and the final reports.
//!
//! Text from repositories (commands, entry reasons, build output, errors quoting a repo's lines)
//! reaches the terminal only through [`safe`]: a Procfile cannot clear the screen, retitle the
//! window or hide text. JSON output needs nothing: serde escapes every control character.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::IsTerminal;

use iac_core::EventReceiver;
use iac_core::{DeployEvent, DeployReport, EventLevel, ServiceName};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// NDJSON events and a JSON result (`--json`).
    Json,
    /// Live progress bars (stderr is a terminal).
    Tty,
    /// One line per event (logs, pipes).
    Plain,
}

impl Mode {
    /// `Json` when asked for, else `Tty` when stderr is a terminal, else `Plain`.
    pub fn detect(json: bool) -> Mode {
        if json {
            Mode::Json
        } else if std::io::stderr().is_terminal() {
            Mode::Tty
        } else {
            Mode::Plain
        }
    }
}

/// Consumes events until the sender side is dropped.
pub async fn show_progress(mode: Mode, mut rx: EventReceiver) {
    let mp = MultiProgress::new();
    let mut bars: BTreeMap<ServiceName, ProgressBar> = BTreeMap::new();
    let style = ProgressStyle::with_template("{spinner:.cyan} {prefix:<20.bold} {wide_msg}")
        .expect("static template")
        .tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏✓");
    while let Some(ev) = rx.recv().await {
        match mode {
            Mode::Json => {
                if let Ok(line) = serde_json::to_string(&ev) {
                    println!("{line}");
                }
            }
            Mode::Plain => {
                if ev.level != EventLevel::Debug {
                    eprintln!("{}", plain_line(&ev));
                }
            }
            Mode::Tty => {
                if ev.level == EventLevel::Debug {
                    continue;
                }
                match &ev.service {
                    Some(svc) => {
                        let bar = bars.entry(svc.clone()).or_insert_with(|| {
                            let b = mp.add(ProgressBar::new_spinner());
                            b.set_style(style.clone());
                            b.set_prefix(svc.to_string());
                            b.enable_steady_tick(std::time::Duration::from_millis(120));
                            b
                        });
                        let msg = safe(first_line(&ev.message));
                        bar.set_message(format!("{:<9} {msg}", ev.stage.as_str()));
                        if matches!(ev.level, EventLevel::Warn | EventLevel::Error) {
                            let _ = mp.println(format!(
                                "  {svc}: {} {}",
                                ev.stage.as_str(),
                                safe(&ev.message)
                            ));
                        }
                    }
                    None => {
                        let _ = mp.println(format!("{} {}", ev.stage.as_str(), safe(&ev.message)));
                    }
                }
            }
        }
    }
    for (_, b) in bars {
        b.finish_and_clear();
    }
}

/// Whether `c` is shown escaped by [`safe`]: control characters (C0, DEL, C1) except newline
/// and tab, and the Unicode bidirectional controls that reorder what a terminal shows.
fn unsafe_char(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c, '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` with every character a terminal would act on instead of show (escape sequences, a
/// carriage return, a bell, bidi overrides) written as Rust escapes (`\u{1b}`); newlines and tabs
/// are kept. The one way the CLI prints text that comes from a repository.
pub fn safe(text: &str) -> Cow<'_, str> {
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// One event as `Mode::Plain` prints it: HH:MM:SS, service (`-` for none), ERROR/WARN, message.
pub fn plain_line(ev: &DeployEvent) -> String {
    let time = ev.ts.get(11..19).unwrap_or(&ev.ts);
    let svc = ev.service.as_ref().map(|s| s.as_str()).unwrap_or("-");
    let lvl = match ev.level {
        EventLevel::Error => " ERROR",
        EventLevel::Warn => " WARN",
        _ => "",
    };
    format!(
        "{time} {svc:<16} {:<9}{lvl} {}",
        ev.stage.as_str(),
        safe(&ev.message)
    )
}

/// The human summary of a deploy.
pub fn render_report(r: &DeployReport) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "project {}: {} ({} ms)\n",
        r.project,
        if r.ok {
            "all services healthy"
        } else {
            "FAILED"
        },
        r.millis
    ));
    for s in &r.services {
        let status = if s.ok { "ok" } else { "FAILED" };
        let health = s.health.as_ref().map(|h| h.state.as_str()).unwrap_or("-");
        let action = s.action.map(|a| a.as_str()).unwrap_or("-");
        out.push_str(&format!(
            "  {:<20} {:<7} {:<12} {:<12} {}\n",
            s.service.as_str(),
            status,
            action,
            health,
            safe(s.endpoint.as_deref().unwrap_or(""))
        ));
        if let Some(u) = &s.url {
            out.push_str(&format!("      url    {u}\n"));
        }
        if let Some(e) = &s.entry {
            out.push_str(&format!(
                "      entry  {} ({})\n",
                safe(&e.argv.join(" ")),
                safe(&e.rule)
            ));
        }
        if let Some(i) = &s.image {
            let reused = if s.image_reused == Some(true) {
                " (reused)"
            } else {
                ""
            };
            out.push_str(&format!("      image  {i}{reused}\n"));
        }
        for w in &s.warnings {
            out.push_str(&format!("      warn   {}\n", safe(w)));
        }
        if let Some(err) = &s.error {
            for (n, line) in err.lines().enumerate() {
                out.push_str(&format!(
                    "      {} {}\n",
                    if n == 0 { "error" } else { "     " },
                    safe(line)
                ));
            }
        }
    }
    for gone in &r.removed {
        out.push_str(&format!("  {:<20} removed\n", gone.as_str()));
    }
    if let Some(e) = &r.error {
        out.push_str(&format!("error: {}\n", safe(e)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use iac_core::{ProjectName, ServiceReport, Stage};

    #[test]
    fn safe_escapes_what_a_terminal_would_act_on() {
        assert!(matches!(safe("plain text\n\twith tab"), Cow::Borrowed(_)));
        assert_eq!(
            safe("web: python app.py \x1b]0;pwned\x07 \x1b[2J"),
            "web: python app.py \\u{1b}]0;pwned\\u{7} \\u{1b}[2J"
        );
        assert_eq!(safe("a\rb\x7fc\u{9b}d"), "a\\u{d}b\\u{7f}c\\u{9b}d");
        assert_eq!(safe("evil\u{202e}txt.py"), "evil\\u{202e}txt.py");
        assert_eq!(safe("two\nlines\tok"), "two\nlines\tok");
    }

    #[test]
    fn the_report_and_progress_lines_escape_repo_text() {
        let ev = DeployEvent {
            ts: "2026-11-25T17:00:01.123Z".into(),
            service: Some(ServiceName::new("web").unwrap()),
            stage: Stage::Resolve,
            level: EventLevel::Info,
            message: "platform:procfile → [\"sh\", \"-c\", \"\x1b]0;pwned\x07\x1b[2J\"]".into(),
            traceparent: None,
        };
        let line = plain_line(&ev);
        assert!(
            !line.contains('\x1b') && line.contains("\\u{1b}]0;pwned\\u{7}"),
            "{line}"
        );
        let mut s = ServiceReport::new(ServiceName::new("web").unwrap(), "path:/x".into());
        s.entry = Some(iac_core::Entry {
            rule: "platform:procfile".into(),
            argv: vec!["sh".into(), "-c".into(), "echo \x1b[2J".into()],
            ..Default::default()
        });
        s.warnings.push("listens on \x1b[31m5000".into());
        s.fail(Stage::Build, "Procfile line 1: \x1b]0;pwned\x07");
        let r = DeployReport {
            project: ProjectName::new("p").unwrap(),
            ok: false,
            services: vec![s],
            removed: vec![],
            error: Some("\x1b[2J".into()),
            millis: 5,
        };
        let text = render_report(&r);
        assert!(!text.contains('\x1b') && !text.contains('\x07'), "{text:?}");
        assert!(text.contains("echo \\u{1b}[2J"), "{text}");
        assert!(text.contains("\\u{1b}]0;pwned\\u{7}"), "{text}");
    }

    #[test]
    fn plain_lines_and_report() {
        let ev = DeployEvent {
            ts: "2026-11-25T17:00:01.123Z".into(),
            service: Some(ServiceName::new("web").unwrap()),
            stage: Stage::Build,
            level: EventLevel::Warn,
            message: "slow".into(),
            traceparent: None,
        };
        assert_eq!(
            plain_line(&ev),
            "17:00:01 web              build     WARN slow"
        );
        let mut s = ServiceReport::new(ServiceName::new("web").unwrap(), "path:/x".into());
        s.fail(Stage::Fetch, "boom\nsecond line");
        let r = DeployReport {
            project: ProjectName::new("p").unwrap(),
            ok: false,
            services: vec![s],
            removed: vec![ServiceName::new("old").unwrap()],
            error: None,
            millis: 5,
        };
        let mut r = r;
        r.services[0].url = Some("http://127.0.0.1:49153/".into());
        r.services[0]
            .warnings
            .push("web: the app listens on port 5000 but …".into());
        let text = render_report(&r);
        assert!(
            text.contains("      url    http://127.0.0.1:49153/\n"),
            "{text}"
        );
        assert!(
            text.contains("      warn   web: the app listens on port 5000"),
            "{text}"
        );
        assert!(text.contains("FAILED"));
        assert!(text.contains("error fetch: boom"));
        assert!(text.contains("second line"));
        assert!(text.contains("old") && text.contains("removed"));
    }
}
