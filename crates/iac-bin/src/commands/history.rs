//! `iac history [--project P] [--limit N] [--json]` (newest first) and `iac history show ID
//! [--json]` (everything recorded: outcome per service with stage timings, events, saved log
//! tails, the repos file), read from the configured deployment history (`[history]`).

use std::process::ExitCode;

use anyhow::Context;
use iac_core::ProjectName;
use iac_core::history::{HistoryEntry, HistoryQuery, HistorySummary, MAX_PAGE, rfc3339_millis};

use crate::config::IacConfig;
use crate::output::{self, safe};

/// `iac history`: the newest `limit` records (of `project`, else of every project).
pub async fn history_list(
    cfg: IacConfig,
    project: Option<&str>,
    limit: usize,
    json: bool,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        (1..=MAX_PAGE).contains(&limit),
        "--limit {limit}: expected 1 to {MAX_PAGE}"
    );
    let project = project
        .map(|p| ProjectName::new(p).with_context(|| format!("--project {p:?}")))
        .transpose()?;
    let store = cfg.history.open(&cfg.state_dir).await?;
    super::record::settle_interrupted(store.as_ref(), project.as_ref()).await;
    let page = store
        .list(&HistoryQuery {
            project,
            limit,
            cursor: None,
        })
        .await?;
    if json {
        println!("{}", serde_json::to_string(&page)?);
    } else {
        print!("{}", render_list(&page.items));
    }
    Ok(ExitCode::SUCCESS)
}

/// `iac history show ID`.
pub async fn history_show(cfg: IacConfig, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let store = cfg.history.open(&cfg.state_dir).await?;
    super::record::settle_interrupted(store.as_ref(), None).await;
    let Some(entry) = store.get(id).await? else {
        anyhow::bail!(
            "no deployment {id:?} in the history ({}); `iac history` lists the recorded ones",
            iac_core::history::redact_url(&cfg.history.url)
        );
    };
    if json {
        println!("{}", serde_json::to_string(&entry)?);
    } else {
        print!("{}", render_entry(&entry));
    }
    Ok(ExitCode::SUCCESS)
}

/// How long a record took, when both ends parse (`12.3s`, `2m 5s`).
fn took(started: &str, finished: Option<&str>) -> Option<String> {
    let ms = rfc3339_millis(finished?).ok()? - rfc3339_millis(started).ok()?;
    let ms = u64::try_from(ms).ok()?;
    Some(if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        humantime::format_duration(std::time::Duration::from_secs(ms / 1000)).to_string()
    })
}

/// The table of `iac history`.
pub fn render_list(items: &[HistorySummary]) -> String {
    if items.is_empty() {
        return "no deployments recorded\n".to_string();
    }
    let mut out = format!(
        "{:<36}  {:<16} {:<7}  {:<11}  {:<20} {:<24} {:>7}  SERVICES\n",
        "ID", "PROJECT", "KIND", "STATUS", "WHO", "STARTED", "TOOK"
    );
    for s in items {
        out.push_str(&format!(
            "{:<36}  {:<16} {:<7}  {:<11}  {:<20} {:<24} {:>7}  {}\n",
            s.id,
            s.project.as_str(),
            s.kind.as_str(),
            s.status.as_str(),
            safe(&s.who),
            s.started_at,
            took(&s.started_at, s.finished_at.as_deref()).unwrap_or_else(|| "-".into()),
            safe(&s.services.join(", ")),
        ));
    }
    out
}

/// The detail of `iac history show`.
pub fn render_entry(e: &HistoryEntry) -> String {
    let s = &e.summary;
    let mut out = format!("{} {}\n", s.kind.as_str(), s.id);
    out.push_str(&format!("  project:  {}\n", s.project));
    out.push_str(&format!("  status:   {}\n", s.status.as_str()));
    out.push_str(&format!("  who:      {} ({})\n", safe(&s.who), s.origin));
    out.push_str(&format!("  started:  {}\n", s.started_at));
    if let Some(f) = &s.finished_at {
        let t = took(&s.started_at, Some(f))
            .map(|t| format!(" (took {t})"))
            .unwrap_or_default();
        out.push_str(&format!("  finished: {f}{t}\n"));
    }
    if let Some(err) = &e.error {
        let code = e
            .error_code
            .as_deref()
            .map(|c| format!("[{c}] "))
            .unwrap_or_default();
        out.push_str(&format!("  error:    {code}{}\n", safe(err)));
    }
    if !e.outcomes.is_empty() {
        out.push_str("services:\n");
        for o in &e.outcomes {
            let stages: Vec<String> = o
                .stages
                .iter()
                .map(|t| {
                    format!(
                        "{} {}ms{}",
                        t.stage.as_str(),
                        t.millis,
                        if t.ok { "" } else { " FAILED" }
                    )
                })
                .collect();
            out.push_str(&format!(
                "  {:<16} {:<6} {:<9} {}\n",
                o.service,
                if o.ok { "ok" } else { "FAILED" },
                o.action.as_deref().unwrap_or("-"),
                stages.join(", ")
            ));
            if let Some(err) = &o.error {
                out.push_str(&format!("  {:<16} error: {}\n", "", safe(err)));
            }
        }
    } else if !s.services.is_empty() {
        out.push_str(&format!("services: {}\n", s.services.join(", ")));
    }
    if !e.removed.is_empty() {
        out.push_str(&format!("removed: {}\n", safe(&e.removed.join(", "))));
    }
    out.push_str(&format!("events ({}):\n", e.events.len()));
    for ev in &e.events {
        out.push_str(&format!("  {}\n", output::plain_line(ev)));
    }
    for t in &e.log_tails {
        out.push_str(&format!(
            "log tail: {} {} ({}, {} at {}), {} line(s){}:\n",
            t.service,
            t.role,
            t.container,
            t.reason,
            t.saved_at,
            t.lines.len(),
            if t.truncated {
                ", older lines left out"
            } else {
                ""
            }
        ));
        for l in &t.lines {
            out.push_str(&format!("  | {}\n", safe(l)));
        }
    }
    if let Some(r) = &e.repos {
        out.push_str("repos file:\n");
        for l in r.lines() {
            out.push_str(&format!("  | {}\n", safe(l)));
        }
    }
    out
}
