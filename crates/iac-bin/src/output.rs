//! What the CLI shows a person or a machine: live progress from [`DeployEvent`]s (indicatif on a
//! terminal, plain lines otherwise, NDJSON with `--json`) and the final reports.

use std::collections::BTreeMap;
use std::io::IsTerminal;

use iac_core::EventReceiver;
use iac_core::{DeployEvent, DeployReport, EventLevel, ServiceName};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Json,
    Tty,
    Plain,
}

impl Mode {
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
                        let msg = first_line(&ev.message);
                        bar.set_message(format!("{:<9} {msg}", ev.stage.as_str()));
                        if matches!(ev.level, EventLevel::Warn | EventLevel::Error) {
                            let _ = mp.println(format!(
                                "  {svc}: {} {}",
                                ev.stage.as_str(),
                                ev.message
                            ));
                        }
                    }
                    None => {
                        let _ = mp.println(format!("{} {}", ev.stage.as_str(), ev.message));
                    }
                }
            }
        }
    }
    for (_, b) in bars {
        b.finish_and_clear();
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

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
        ev.message
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
            s.endpoint.as_deref().unwrap_or("")
        ));
        if let Some(u) = &s.url {
            out.push_str(&format!("      url    {u}\n"));
        }
        if let Some(e) = &s.entry {
            out.push_str(&format!("      entry  {} ({})\n", e.argv.join(" "), e.rule));
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
            out.push_str(&format!("      warn   {w}\n"));
        }
        if let Some(err) = &s.error {
            for (n, line) in err.lines().enumerate() {
                out.push_str(&format!(
                    "      {} {line}\n",
                    if n == 0 { "error" } else { "     " }
                ));
            }
        }
    }
    for gone in &r.removed {
        out.push_str(&format!("  {:<20} removed\n", gone.as_str()));
    }
    if let Some(e) = &r.error {
        out.push_str(&format!("error: {e}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use iac_core::{ProjectName, ServiceReport, Stage};

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
