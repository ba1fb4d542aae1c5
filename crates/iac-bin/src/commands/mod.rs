//! One function per CLI command (`ca.rs`, `serve.rs` and `bootstrap.rs` for the larger ones, the
//! rest here). Each loads what it needs through [`crate::wiring`], reports
//! progress through [`crate::output`] and returns the process exit code: 0 success, 1 a service
//! or check failed, 2 bad input or configuration.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use futures::StreamExt;
use iac_core::deployer::SandboxTarget;
use iac_core::history::{HistoryFinish, HistoryKind, Recorder};
use iac_core::{DeployEvent, Events, LogQuery, ProjectName, ServiceSpec, Slug, load_repos_file};
use serde_json::json;

use crate::config::IacConfig;
use crate::output::{self, Mode, safe};
use crate::wiring::App;

pub mod bootstrap;
mod ca;
mod history;
mod record;
mod serve;

pub use ca::ca_command;
pub use history::{history_list, history_show};
pub use serve::serve;

/// File (under the state dir) naming the project the last deploy from this directory used.
const CURRENT_PROJECT: &str = "current-project";

/// Resolves the project: configuration/flag, then the repos file, then the last deploy from this
/// directory, then the directory's name.
pub fn resolve_project(
    cfg: &IacConfig,
    file_project: Option<&ProjectName>,
) -> anyhow::Result<ProjectName> {
    if let Some(p) = &cfg.project {
        return ProjectName::new(p).with_context(|| format!("--project / IAC_PROJECT {p:?}"));
    }
    if let Some(p) = file_project {
        return Ok(p.clone());
    }
    if let Ok(p) = std::fs::read_to_string(cfg.state_dir.join(CURRENT_PROJECT))
        && let Ok(p) = ProjectName::new(p.trim())
    {
        return Ok(p);
    }
    let cwd = std::env::current_dir().context("current directory")?;
    Ok(ProjectName::from_dir_name(
        &cwd.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    ))
}

fn load_specs(file: &Path) -> anyhow::Result<(Option<ProjectName>, Vec<ServiceSpec>)> {
    let parsed = load_repos_file(file)?;
    Ok((parsed.project, parsed.services))
}

/// The sandbox a deploy or plan targets: `--sandbox`/`--ttl` over the file's `sandbox:`/`ttl:`
/// (a flag naming another sandbox than the file is refused: the file was written for its own).
fn sandbox_target(
    file: &Path,
    flag: Option<iac_core::SandboxName>,
    ttl: Option<std::time::Duration>,
) -> anyhow::Result<Option<SandboxTarget>> {
    let parsed = load_repos_file(file)?;
    let name = match (flag, parsed.sandbox) {
        (Some(f), Some(in_file)) if f != in_file => anyhow::bail!(
            "--sandbox {f} but {} says `sandbox: {in_file}`; expected the same sandbox (or drop one of them)",
            file.display()
        ),
        (Some(f), _) => Some(f),
        (None, in_file) => in_file,
    };
    Ok(name.map(|name| SandboxTarget {
        name,
        ttl: ttl.or(parsed.ttl),
    }))
}

fn project_from_optional_file(
    cfg: &IacConfig,
    file: Option<&PathBuf>,
) -> anyhow::Result<ProjectName> {
    let fp = match file {
        Some(f) => load_repos_file(f)?.project,
        None => None,
    };
    resolve_project(cfg, fp.as_ref())
}

/// Runs `fut` while showing its events; returns its output once the progress display drained.
async fn with_progress<T>(json: bool, f: impl AsyncFnOnce(&Events) -> T) -> T {
    with_progress_recorded(json, None, f).await
}

/// [`with_progress`], every event also queued for `recorder` (the deployment history).
async fn with_progress_recorded<T>(
    json: bool,
    recorder: Option<&Recorder>,
    f: impl AsyncFnOnce(&Events) -> T,
) -> T {
    let (events, mut rx) = Events::channel();
    let (events, tails) = if recorder.is_some() {
        let (e, t) = events.with_log_tails();
        (e, Some(t))
    } else {
        (events, None)
    };
    let (show_tx, show_rx) =
        iac_core::lossy::channel(iac_core::event::DEFAULT_EVENT_BUFFER, DeployEvent::dropped);
    let shower = tokio::spawn(output::show_progress(Mode::detect(json), show_rx));
    let work = async move {
        let out = f(&events).await;
        drop(events);
        out
    };
    let forward = async move {
        while let Some(ev) = rx.recv().await {
            if let Some(r) = recorder {
                r.event(ev.clone());
            }
            show_tx.send(ev);
        }
    };
    let (out, ()) = tokio::join!(work, forward);
    if let (Some(r), Some(t)) = (recorder, tails) {
        r.log_tails(&t).await;
    }
    let _ = shower.await;
    out
}

/// `iac deploy`: deploys the repos file's services; exit 1 when any service failed.
pub async fn deploy(
    cfg: IacConfig,
    file: &Path,
    sandbox: Option<iac_core::SandboxName>,
    ttl: Option<std::time::Duration>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let (fp, specs) = load_specs(file)?;
    let target = sandbox_target(file, sandbox, ttl)?;
    let project = resolve_project(&cfg, fp.as_ref())?;
    let mut app = App::build(cfg, project.clone()).await?;
    app.deployer.set_sandbox(target.clone());
    let recorder = record::start(
        &app.cfg,
        &project,
        HistoryKind::Deploy,
        specs.iter().map(|s| s.name.to_string()).collect(),
        std::fs::read_to_string(file).ok(),
    )
    .await;
    let report = with_progress_recorded(json, recorder.as_ref(), async |events| {
        app.deployer.deploy(&specs, events).await
    })
    .await;
    let recorded = recorder.as_ref().map(|r| r.id().to_string());
    if let Some(r) = recorder {
        r.finish(HistoryFinish::from_report(
            &report,
            iac_core::event::now_rfc3339(),
        ))
        .await;
    }
    iac_core::fault::point("proved");
    let dir = app.cfg.project_dir(&project);
    // A sandbox's report is its own: last-deploy.json stays the baseline's.
    let last = match &target {
        Some(t) => dir.join(format!("last-deploy.sandbox-{}.json", t.name)),
        None => dir.join("last-deploy.json"),
    };
    iac_core::fsutil::write_atomic_if_changed(
        &app.cfg.state_dir.join(CURRENT_PROJECT),
        project.as_str().as_bytes(),
        Some(iac_core::fsutil::PRIVATE_FILE_MODE),
    )
    .with_context(|| format!("write {}", app.cfg.state_dir.display()))?;
    iac_core::fsutil::write_atomic(
        &last,
        &serde_json::to_vec_pretty(&report)?,
        Some(iac_core::fsutil::PRIVATE_FILE_MODE),
    )
    .with_context(|| format!("write {}", dir.display()))?;
    if json {
        println!(
            "{}",
            serde_json::to_string(&json!({ "report": report, "deployment_id": recorded }))?
        );
    } else {
        print!("{}", output::render_report(&report));
        if let Some(id) = recorded {
            println!("recorded as {id} (iac history show {id})");
        }
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `iac plan`: prints what a deploy would do to each service, changing nothing.
pub async fn plan(
    cfg: IacConfig,
    file: &Path,
    sandbox: Option<iac_core::SandboxName>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let (fp, specs) = load_specs(file)?;
    let target = sandbox_target(file, sandbox, None)?;
    let project = resolve_project(&cfg, fp.as_ref())?;
    let mut app = App::build(cfg, project.clone()).await?;
    app.deployer.set_sandbox(target.clone());
    let outcome =
        with_progress(json, async |events| app.deployer.plan(&specs, events).await).await?;
    if json {
        // One line, after the NDJSON events: the last line of stdout is the result.
        println!("{}", serde_json::to_string(&outcome)?);
    } else {
        match &target {
            Some(t) => println!(
                "project {project}, sandbox {} ({} provisioner; copies beside the baseline):",
                t.name,
                app.provisioner_name()
            ),
            None => println!(
                "project {project} ({} provisioner):",
                app.provisioner_name()
            ),
        }
        for c in &outcome.changes {
            let sign = match c.action {
                iac_core::Action::Create => "+",
                iac_core::Action::Replace | iac_core::Action::Repair => "~",
                iac_core::Action::Remove => "-",
                _ => "=",
            };
            println!(
                "  {sign} {:<20} {:<10} {}",
                c.service.as_str(),
                c.action.as_str(),
                safe(&c.reason)
            );
            if let Some(svc) = outcome
                .stack
                .services
                .iter()
                .find(|s| s.service == c.service)
                && c.action != iac_core::Action::Remove
            {
                println!(
                    "    {:<20} {:<10} {}",
                    "",
                    "egress",
                    safe(&svc.egress.summary())
                );
            }
            if let Some(r) = outcome.releases.get(&c.service) {
                let when = if matches!(
                    c.action,
                    iac_core::Action::Create | iac_core::Action::Replace
                ) {
                    "runs first"
                } else {
                    "not run (unchanged)"
                };
                println!(
                    "    {:<20} {:<10} {} [{}]: {when}",
                    "",
                    "release",
                    safe(&r.line()),
                    safe(&r.origin)
                );
            }
        }
        for f in &outcome.failures {
            println!(
                "  ! {:<20} {:<10} {}",
                f.service.as_str(),
                "error",
                safe(f.error.as_deref().unwrap_or(""))
            );
        }
    }
    Ok(if outcome.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `iac destroy`: removes every container and network of the project.
pub async fn destroy(
    cfg: IacConfig,
    file: Option<&PathBuf>,
    sandbox: Option<iac_core::SandboxName>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let project = project_from_optional_file(&cfg, file)?;
    let app = App::build(cfg, project.clone()).await?;
    let recorder = record::start(&app.cfg, &project, HistoryKind::Destroy, Vec::new(), None).await;
    let result = with_progress_recorded(json, recorder.as_ref(), async |events| match &sandbox {
        Some(name) => app.deployer.destroy_sandbox(name, events).await,
        None => app.deployer.destroy(events).await,
    })
    .await;
    if let Some(r) = recorder {
        let at = iac_core::event::now_rfc3339();
        r.finish(match &result {
            Ok(removed) => HistoryFinish::destroyed(removed.clone(), at),
            Err(e) => HistoryFinish::error(None, e.to_string(), at),
        })
        .await;
    }
    let removed = result?;
    let what = match &sandbox {
        Some(s) => format!("project {project}, sandbox {s}"),
        None => format!("project {project}"),
    };
    if json {
        println!(
            "{}",
            serde_json::to_string(
                &json!({ "project": project, "sandbox": sandbox, "removed": removed })
            )?
        );
    } else if removed.is_empty() {
        println!("{what}: nothing to remove");
    } else {
        println!("{what}: removed {}", removed.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

/// `iac gc`: removes the project's sandboxes whose ttl has passed.
pub async fn gc(cfg: IacConfig, file: Option<&PathBuf>, json: bool) -> anyhow::Result<ExitCode> {
    let project = project_from_optional_file(&cfg, file)?;
    let app = App::build(cfg, project.clone()).await?;
    let gone = with_progress(json, async |events| app.deployer.gc(events).await).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string(&json!({ "project": project, "removed_sandboxes": gone }))?
        );
    } else if gone.is_empty() {
        println!("project {project}: no expired sandbox");
    } else {
        let names: Vec<&str> = gone.iter().map(|s| s.as_str()).collect();
        println!(
            "project {project}: removed expired sandbox(es) {}",
            names.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `iac health`: probes every running service through its Envoy; exit 1 unless all are SERVING.
pub async fn health(
    cfg: IacConfig,
    file: Option<&PathBuf>,
    sandbox: Option<iac_core::SandboxName>,
    timeout: Option<std::time::Duration>,
    wait: Option<std::time::Duration>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let project = project_from_optional_file(&cfg, file)?;
    let timeout = timeout
        .unwrap_or(cfg.health_check_timeout)
        .max(std::time::Duration::from_millis(100));
    let app = App::build(cfg, project.clone()).await?;
    let until = wait.map(|w| tokio::time::Instant::now() + w);
    let (results, all_ok) = loop {
        let mut results = app.deployer.health(timeout).await?;
        if let Some(sb) = &sandbox {
            results.retain(|(r, _)| r.sandbox.as_ref() == Some(sb));
        }
        let all_ok = !results.is_empty() && results.iter().all(|(_, h)| h.is_serving());
        match until {
            Some(until) if !all_ok && tokio::time::Instant::now() < until => {
                tokio::time::sleep_until(
                    until.min(tokio::time::Instant::now() + std::time::Duration::from_millis(500)),
                )
                .await;
            }
            _ => break (results, all_ok),
        }
    };
    if json {
        let items: Vec<_> = results
            .iter()
            .map(|(r, h)| {
                json!({
                    "running": r,
                    "url": r.edge.map(iac_core::edge_url),
                    "health": h,
                    "warnings": h.port_warning().into_iter().collect::<Vec<_>>(),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string(
                &json!({ "project": project, "sandbox": sandbox, "ok": all_ok, "services": items })
            )?
        );
    } else if results.is_empty() {
        match &sandbox {
            Some(s) => println!("project {project}: sandbox {s} runs no copies"),
            None => println!("project {project}: no services running"),
        }
    } else {
        println!("project {project}:");
        for (r, h) in &results {
            let ep = r
                .endpoint
                .map(|e| e.to_string())
                .unwrap_or_else(|| "-".into());
            let code = h
                .exit_code
                .map(|c| format!(" exit={c}"))
                .unwrap_or_default();
            let sb = r
                .sandbox
                .as_ref()
                .map(|s| format!(" [sandbox {s}]"))
                .unwrap_or_default();
            println!(
                "  {:<20} {:<12} {:<22} {}{code}{sb}",
                r.service.as_str(),
                h.state.as_str(),
                ep,
                safe(&h.detail)
            );
            if let Some(edge) = r.edge {
                println!("      url    {}", iac_core::edge_url(edge));
            }
            if let Some(restarts) = &h.restarts {
                println!("      restarts {}", restarts.summary());
            }
            if let Some(w) = h.port_warning() {
                println!("      warn   {}", safe(&w));
            }
        }
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// How `iac logs` prints.
#[derive(Debug, Clone, Copy)]
pub struct LogsOptions {
    /// `--follow`: keep streaming until interrupted.
    pub follow: bool,
    /// `--tail`: lines of history first (0 = all buffered).
    pub tail: u32,
    /// Lines byte for byte, terminal sequences included.
    pub raw: bool,
    /// `--json`: one JSON object per line.
    pub json: bool,
}

/// One log line as `iac logs` prints it (without `--json`): prefixed with the service when
/// several are shown, escaped through [`safe`] unless `raw`.
pub fn log_line_text(line: &iac_core::LogLine, prefix: bool, raw: bool) -> String {
    let msg = if raw {
        std::borrow::Cow::Borrowed(line.msg.as_str())
    } else {
        safe(&line.msg)
    };
    if prefix {
        format!("{:<16} | {msg}", line.service.as_str())
    } else {
        msg.into_owned()
    }
}

/// `iac logs`: streams one service's (or every service's, prefixed) logs from the agents.
pub async fn logs(
    cfg: IacConfig,
    file: Option<&PathBuf>,
    service: Option<&str>,
    opts: LogsOptions,
) -> anyhow::Result<ExitCode> {
    let LogsOptions {
        follow,
        tail,
        raw,
        json,
    } = opts;
    let project = project_from_optional_file(&cfg, file)?;
    let app = App::build(cfg, project.clone()).await?;
    let running = app.deployer.stages().provisioner.running(&project).await?;
    let targets: Vec<_> = running
        .into_iter()
        .filter(|r| service.is_none_or(|s| r.service.as_str() == s))
        .collect();
    if targets.is_empty() {
        match service {
            Some(s) => bail!("service {s:?} is not running in project {project}"),
            None => bail!("no services running in project {project}"),
        }
    }
    let prefix = service.is_none();
    let query = LogQuery { follow, tail };
    let mut streams = Vec::new();
    for r in targets {
        match app.log_stream(&r, query).await {
            Ok(s) => streams.push(s),
            Err(e) => eprintln!("{}: {e}", r.service),
        }
    }
    if streams.is_empty() {
        bail!("could not reach any agent's log stream");
    }
    let mut merged = futures::stream::select_all(streams);
    while let Some(item) = merged.next().await {
        match item {
            Ok(line) if json => println!("{}", serde_json::to_string(&line)?),
            Ok(line) => println!("{}", log_line_text(&line, prefix, raw)),
            Err(e) => eprintln!("log stream error: {e}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A slug, or a directory given as a plain path.
fn parse_target(target: &str) -> anyhow::Result<Slug> {
    match target.parse::<Slug>() {
        Ok(s) => Ok(s.resolve_relative(&std::env::current_dir()?)),
        Err(e) => {
            let p = Path::new(target);
            if p.is_dir() {
                Ok(Slug::Path {
                    dir: std::fs::canonicalize(p)?,
                })
            } else {
                Err(anyhow::anyhow!("{e} (and {target:?} is not a directory)"))
            }
        }
    }
}

/// `iac inspect`: fetches and resolves one slug or directory and prints how it would run.
pub async fn inspect(
    cfg: IacConfig,
    target: &str,
    selection: &iac_backends::build::lockfile::Selection,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let slug = parse_target(target)?;
    let name = slug
        .default_service_name()
        .with_context(|| format!("no service name can be derived from {slug}"))?;
    let (fetcher, resolver) = crate::wiring::source_stages(&cfg)?;
    let source = fetcher
        .fetch(&slug, &Events::discard())
        .await
        .with_context(|| format!("fetch {slug}"))?;
    let entry = match resolver.resolve(&source, None) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {}", safe(&format!("{slug}: {e}")));
            return Ok(ExitCode::from(1));
        }
    };
    // The install plan, as the build would make it (Python apps; markers for the image's Python).
    let install = if entry.language == iac_core::Language::Python {
        let version = entry
            .python
            .as_ref()
            .map(|p| p.version.clone())
            .unwrap_or_else(|| cfg.images.default_python.clone());
        let minor = iac_backends::build::config::parse_minor(&version)
            .map_err(|e| anyhow::anyhow!("Python of {slug}: {e}"))?;
        let dir = source.dir.clone();
        let e = entry.clone();
        let selection = selection.clone();
        let plan = tokio::task::spawn_blocking(move || {
            iac_backends::build::install_report::InstallReport::of(&dir, &e, &selection, minor)
        })
        .await?;
        match plan {
            Ok(p) => Some(p),
            Err(why) => {
                eprintln!(
                    "error: {}",
                    safe(&format!("{slug}: app dependencies refused: {why}"))
                );
                return Ok(ExitCode::from(1));
            }
        }
    } else {
        None
    };
    if json {
        let v = json!({
            "service": name,
            "language": entry.language,
            "source": { "commit": source.commit, "digest": source.digest, "dir": source.dir },
            "entry": {
                "rule": entry.rule,
                "argv": entry.argv,
                "why": entry.why,
                "origin": entry.origin,
                "workdir": entry.workdir,
                "port": entry.port,
                "python": entry.python,
                "build_steps": entry.build_steps,
                "candidates": entry.candidates,
                "release": entry.release,
            },
            "install": install,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let mut text = inspect_text(name.as_ref(), &source, &entry);
        for (k, v) in install.iter().flat_map(|p| p.rows()) {
            text.push_str(&format!("{k:<10}{v}\n"));
        }
        print!("{}", safe(&text));
    }
    Ok(ExitCode::SUCCESS)
}

/// The human-readable `iac inspect` report: the chosen command and where it comes from, then
/// what the build adds and the runner-up candidates. Raw repo text: print it through [`safe`].
/// `iac refs SLUG`: the repository's branches, tags and default branch (JSON with `--json`, the
/// same shape as `GET /refs`).
pub async fn refs(cfg: IacConfig, slug: &str, json: bool) -> anyhow::Result<ExitCode> {
    let slug: iac_core::Slug = slug.parse()?;
    let (fetcher, _) = crate::wiring::source_stages(&cfg)?;
    let refs = fetcher.list_refs(&slug).await?;
    if json {
        println!("{}", serde_json::to_string(&refs)?);
    } else {
        print!("{}", refs_text(&refs));
    }
    Ok(ExitCode::SUCCESS)
}

/// The text of `iac refs`: the default branch, then branches and tags one per line. Names are
/// repo-controlled, so they go through [`safe`].
fn refs_text(refs: &iac_core::RefList) -> String {
    let mut out = format!(
        "default   {}\n",
        safe(
            refs.default
                .as_deref()
                .unwrap_or("- (HEAD is detached or unborn)")
        )
    );
    for (what, names) in [("branches", &refs.branches), ("tags", &refs.tags)] {
        out.push_str(&format!("{what} ({})\n", names.len()));
        for n in names {
            out.push_str(&format!("  {}\n", safe(n)));
        }
    }
    out
}

fn inspect_text(name: &str, source: &iac_core::Source, entry: &iac_core::Entry) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: &str| out.push_str(&format!("{k:<10}{v}\n"));
    line("service", name);
    line(
        "source",
        &format!("{} ({})", source.dir.display(), source.origin),
    );
    line("commit", source.commit.as_deref().unwrap_or("-"));
    line("digest", &source.digest);
    line("language", entry.language.as_str());
    line("rule", &entry.rule);
    line("argv", &entry.argv.join(" "));
    line("from", entry.origin.as_deref().unwrap_or("-"));
    line(
        "workdir",
        &format!("/app/{}", entry.workdir.as_deref().unwrap_or("")),
    );
    line(
        "port",
        &entry
            .port
            .map(|p| p.to_string())
            .unwrap_or_else(|| "- (not known from the command)".to_string()),
    );
    line(
        "python",
        &entry
            .python
            .as_ref()
            .map(|p| format!("{} ({})", p.version, p.source))
            .unwrap_or_else(|| "- (the repo does not say; the default image)".to_string()),
    );
    line("why", &entry.why);
    for (i, s) in entry.build_steps.iter().enumerate() {
        line(
            if i == 0 { "build" } else { "" },
            &format!(
                "{}{} [{}]{}",
                s.workdir
                    .as_deref()
                    .map(|w| format!("(in {w}/) "))
                    .unwrap_or_default(),
                s.argv.join(" "),
                s.origin,
                if s.warn_on_failure {
                    " (failure warns)"
                } else {
                    ""
                }
            ),
        );
    }
    if let Some(r) = &entry.release {
        line(
            "release",
            &format!(
                "{}{} [{}] (runs once per deploy, in the new image, before it takes traffic)",
                r.workdir
                    .as_deref()
                    .map(|w| format!("(in {w}/) "))
                    .unwrap_or_default(),
                r.argv.join(" "),
                r.origin
            ),
        );
    }
    for (i, c) in entry.candidates.iter().enumerate() {
        line(
            if i == 0 { "also" } else { "" },
            &format!("{}: {} — {}", c.rule, c.argv.join(" "), c.why),
        );
    }
    out
}

/// What both render targets start from: the repos file's specs, the project, and an app wired
/// without a container engine (a render builds and runs nothing).
async fn render_inputs(
    cfg: IacConfig,
    file: &Path,
    engine: crate::wiring::EngineUse,
) -> anyhow::Result<(Vec<ServiceSpec>, ProjectName, App)> {
    let (fp, specs) = load_specs(file)?;
    let project = resolve_project(&cfg, fp.as_ref())?;
    let app = App::build_with(cfg, project.clone(), engine).await?;
    Ok((specs, project, app))
}

/// `iac render --target files`: writes per service what a deploy would hand the provisioner.
pub async fn render(
    cfg: IacConfig,
    file: &Path,
    out: &Path,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let (specs, project, app) = render_inputs(cfg, file, crate::wiring::EngineUse::None).await?;
    let (rendered, failed) = with_progress(json, async |events| {
        app.deployer.render(&specs, events).await
    })
    .await;
    for r in &rendered {
        let dir = out.join(r.service.as_str());
        let w = |name: &str, bytes: &[u8], mode: Option<u32>| {
            iac_core::fsutil::write_atomic(&dir.join(name), bytes, mode)
                .with_context(|| format!("write {}", dir.join(name).display()))
        };
        w(
            "entry.json",
            &serde_json::to_vec_pretty(&json!({ "entry": r.entry, "image": r.image }))?,
            None,
        )?;
        w("envoy.yaml", r.envoy_yaml.as_bytes(), None)?;
        for (src, name, mode) in [
            (&r.certs.paths.ca, "certs/ca.pem", 0o644),
            (&r.certs.paths.cert, "certs/cert.pem", 0o644),
            (&r.certs.paths.key, "certs/key.pem", 0o600),
        ] {
            let bytes = std::fs::read(src).with_context(|| format!("read {}", src.display()))?;
            w(name, &bytes, Some(mode))?;
        }
        if !json {
            println!(
                "{}: {} → {}",
                r.service,
                safe(&r.entry.argv.join(" ")),
                dir.display()
            );
        }
    }
    for f in &failed {
        eprintln!(
            "{}: {}",
            f.service,
            safe(f.error.as_deref().unwrap_or("failed"))
        );
    }
    if json {
        let ok: Vec<_> = rendered.iter().map(|r| r.service.as_str()).collect();
        println!(
            "{}",
            serde_json::to_string(
                &json!({ "project": project, "rendered": ok, "failed": failed })
            )?
        );
    }
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// A render target's input: the desired stack with `[docker.limits]` filled in (the pods' limits
/// are the docker provisioner's on every target) and the content of every file its containers
/// mount (`mounted` lists them). A service with a release command is refused: rendered files
/// cannot run it before the service's new pods.
async fn desired_for_target(
    cfg: IacConfig,
    file: &Path,
    json: bool,
    target: &str,
    mounted: fn(&iac_core::Stack) -> Vec<PathBuf>,
    engine: crate::wiring::EngineUse,
) -> anyhow::Result<(
    ProjectName,
    iac_core::deployer::DesiredStack,
    std::collections::BTreeMap<PathBuf, Vec<u8>>,
)> {
    let limits = cfg.docker.limits;
    let (specs, project, app) = render_inputs(cfg, file, engine).await?;
    let mut desired = with_progress(json, async |events| {
        app.deployer.desired_stack(&specs, events).await
    })
    .await;
    if let Some((svc, r)) = desired.releases.iter().next() {
        anyhow::bail!(
            "{target} render: service {svc} declares the release command `{}` ({}), which rendered files cannot run before its new pods; deploy it with the docker provisioner, or remove the release step",
            safe(&r.line()),
            safe(&r.origin)
        );
    }
    desired.stack = iac_backends::provision::with_limits(&desired.stack, &limits);
    let mut files = std::collections::BTreeMap::new();
    for path in mounted(&desired.stack) {
        let bytes = match desired.envoy_configs.get(&path) {
            Some(config) => config.clone().into_bytes(),
            None => std::fs::read(&path).with_context(|| format!("read {}", path.display()))?,
        };
        files.insert(path, bytes);
    }
    Ok((project, desired, files))
}

/// Writes `files` (relative path, content, mode) into `parent/<project>/`: into a staging
/// directory first, then swapped in whole, so no stale file of an earlier render survives.
fn write_swapped<'a>(
    parent: &Path,
    project: &ProjectName,
    files: impl IntoIterator<Item = (&'a Path, &'a [u8], u32)>,
) -> anyhow::Result<PathBuf> {
    let dir = parent.join(project.as_str());
    let staging = parent.join(format!(".{project}.tmp"));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("remove {}", staging.display()))?;
    }
    for (rel, bytes, mode) in files {
        let path = staging.join(rel);
        iac_core::fsutil::write_atomic(&path, bytes, Some(mode))
            .with_context(|| format!("write {}", path.display()))?;
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    std::fs::rename(&staging, &dir)
        .with_context(|| format!("rename {} to {}", staging.display(), dir.display()))?;
    Ok(dir)
}

/// Prints the services a render left out, and says what the exit code is.
fn render_failures(failures: &[iac_core::ServiceReport]) -> ExitCode {
    for f in failures {
        eprintln!(
            "{}: {}",
            f.service,
            safe(f.error.as_deref().unwrap_or("failed"))
        );
    }
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `iac render --target kubernetes`: the desired stack as Kubernetes manifests under
/// `OUT/kubernetes/<project>/` (`00-namespace.yaml`, then one file per service).
pub async fn render_kubernetes(
    cfg: IacConfig,
    file: &Path,
    out: &Path,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use iac_backends::kubernetes::{self, KubernetesOptions};
    let (project, desired, files) = desired_for_target(
        cfg,
        file,
        json,
        "kubernetes",
        kubernetes::mounted_files,
        crate::wiring::EngineUse::None,
    )
    .await?;
    let manifests = kubernetes::render(&desired.stack, &files, &KubernetesOptions::default())?;
    // Secrets are inside: owner-only.
    let dir = write_swapped(
        &out.join("kubernetes"),
        &project,
        manifests
            .iter()
            .map(|m| (Path::new(&m.file), m.yaml.as_bytes(), 0o600)),
    )?;
    let code = render_failures(&desired.failures);
    let names: Vec<&str> = manifests.iter().map(|m| m.file.as_str()).collect();
    if json {
        println!(
            "{}",
            serde_json::to_string(&json!({
                "project": project,
                "dir": dir,
                "files": names,
                "failed": desired.failures,
            }))?
        );
    } else {
        println!(
            "wrote {} manifests to {} (apply with: kubectl apply -f {})",
            names.len(),
            dir.display(),
            dir.display()
        );
    }
    Ok(code)
}

/// `iac render --target compose`: the desired stack as a Compose project under
/// `OUT/compose/<project>/` (compose.yaml plus the files its containers mount), the docker
/// provisioner's pods for `docker-compose -p <project> up -d` — the eject path.
pub async fn render_compose(
    cfg: IacConfig,
    file: &Path,
    out: &Path,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use iac_backends::compose;
    let (project, desired, files) =
        // The engine says which sidecar image it has: the project runs what a deploy here would.
        desired_for_target(
            cfg,
            file,
            json,
            "compose",
            compose::mounted_files,
            crate::wiring::EngineUse::Images,
        )
        .await?;
    let rendered = compose::render(&desired.stack, &files)?;
    let dir = write_swapped(
        &out.join("compose"),
        &project,
        rendered
            .files
            .iter()
            .map(|f| (f.path.as_path(), f.bytes.as_slice(), f.mode)),
    )?;
    // Like the docker provisioner, Compose runs one pod per service (its containers are named).
    for s in desired.stack.services.iter().filter(|s| s.replicas > 1) {
        eprintln!(
            "{}: replicas: {} — a Compose project runs one pod per service, as the docker provisioner does (use --provisioner swarm or the kubernetes render for copies)",
            s.service, s.replicas
        );
    }
    let code = render_failures(&desired.failures);
    if json {
        println!(
            "{}",
            serde_json::to_string(&json!({
                "project": project,
                "dir": dir,
                "compose_file": dir.join(compose::COMPOSE_FILE),
                "services": desired.stack.services.iter().map(|s| s.service.as_str()).collect::<Vec<_>>(),
                "failed": desired.failures,
            }))?
        );
    } else {
        println!(
            "wrote a Compose project to {} (run with: docker-compose -p {project} -f {} up -d)",
            dir.display(),
            dir.join(compose::COMPOSE_FILE).display()
        );
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_are_escaped_unless_raw() {
        let line = iac_core::LogLine {
            service: iac_core::ServiceName::new("web").unwrap(),
            ts: "2026-12-07T00:00:00Z".into(),
            stream: "stdout".into(),
            msg: "hi\u{1b}]0;owned\u{7}\u{1b}[2J\tthere\u{202e}".into(),
        };
        let shown = log_line_text(&line, false, false);
        assert_eq!(shown, "hi\\u{1b}]0;owned\\u{7}\\u{1b}[2J\tthere\\u{202e}");
        let prefixed = log_line_text(&line, true, false);
        assert!(
            prefixed.starts_with("web              | hi\\u{1b}"),
            "{prefixed}"
        );
        assert_eq!(log_line_text(&line, false, true), line.msg);
    }
}
