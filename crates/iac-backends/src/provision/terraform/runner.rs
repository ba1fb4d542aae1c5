//! The driver: [`TerraformProvisioner`] writes the module and tfvars into the project's work
//! directory and runs `init`/`plan`/`show`/`apply`/`output`/`destroy`, streaming every line as an
//! event; implements [`Provisioner`]. With an engine connection ([`TerraformProvisioner::with_engine`])
//! it saves the last log lines of the containers a run is about to destroy (replaced, removed,
//! destroyed: the names come from the previous run's outputs) for the deployment history.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use iac_core::fsutil::{FileLock, write_atomic};
use iac_core::{
    Action, Applied, AppliedService, Change, EventLevel, Events, HealthProber, ProjectName,
    ProvisionError, Provisioner, RunningService, ServiceName, Stack, Stage,
};

use super::*;

/// Applies stacks with Terraform/OpenTofu. See the module docs.
#[derive(Clone)]
pub struct TerraformProvisioner {
    cfg: TerraformConfig,
    /// Where the log tails of containers about to be destroyed are read; `None`: not saved.
    engine: Option<Arc<dyn crate::engine::Engine>>,
}

impl std::fmt::Debug for TerraformProvisioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TerraformProvisioner")
            .field("cfg", &self.cfg)
            .field("engine", &self.engine.is_some())
            .finish()
    }
}

/// Where and for whom a Terraform run happens.
struct RunCtx<'a> {
    dir: &'a Path,
    stage: Stage,
    events: &'a Events,
    /// Service names output lines may be attributed to.
    services: &'a [String],
}

/// What one Terraform run printed.
struct RunOutput {
    stdout: String,
}

impl TerraformProvisioner {
    /// A provisioner with the given `[terraform]` settings; nothing runs yet.
    pub fn new(cfg: TerraformConfig) -> Self {
        TerraformProvisioner { cfg, engine: None }
    }

    /// Reads, through `engine` (the engine the provider's containers run on), the last log
    /// lines of every container a run destroys, and saves them with the deployment.
    pub fn with_engine(mut self, engine: Arc<dyn crate::engine::Engine>) -> Self {
        self.engine = Some(engine);
        self
    }

    /// Saves the log tails of the app and sidecar containers `outputs` names for `services`
    /// (all of them when `None`), giving `reason`. Without an engine, or a sink that collects
    /// tails, nothing.
    async fn save_log_tails(
        &self,
        outputs: &Outputs,
        services: Option<&[&ServiceName]>,
        reason: &str,
        events: &Events,
    ) {
        let Some(engine) = &self.engine else { return };
        if !events.wants_log_tails() {
            return;
        }
        for (svc, out) in &outputs.services {
            if services.is_some_and(|only| !only.iter().any(|s| s.as_str() == svc)) {
                continue;
            }
            for (name, role) in [
                (&out.app_container_name, "app"),
                (&out.envoy_container_name, "sidecar"),
            ] {
                let Some(name) = name else { continue };
                let of = crate::provision::tails::TailOf {
                    id: name,
                    name,
                    service: svc,
                    role,
                };
                crate::provision::tails::save_container_tail(engine.as_ref(), &of, reason, events)
                    .await;
            }
        }
    }

    /// The `[terraform]` settings it was made with.
    pub fn config(&self) -> &TerraformConfig {
        &self.cfg
    }

    /// `<work_root>/<project>/terraform`.
    pub fn work_dir(&self, project: &ProjectName) -> PathBuf {
        self.cfg.work_root.join(project.as_str()).join("terraform")
    }

    /// The module's files: `(file name, contents)`, sorted by name.
    pub fn module_files(&self) -> Result<Vec<(String, String)>, ProvisionError> {
        let Some(dir) = &self.cfg.module_source else {
            return Ok(EMBEDDED_MODULE
                .iter()
                .map(|(n, t)| (n.to_string(), t.to_string()))
                .collect());
        };
        let io = |source| ProvisionError::Io {
            path: dir.clone(),
            source,
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !(name.ends_with(".tf") || name == ".terraform.lock.hcl")
                || !entry.file_type().map_err(io)?.is_file()
            {
                continue;
            }
            let text =
                std::fs::read_to_string(entry.path()).map_err(|source| ProvisionError::Io {
                    path: entry.path(),
                    source,
                })?;
            files.push((name, text));
        }
        if !files.iter().any(|(n, _)| n.ends_with(".tf")) {
            return Err(ProvisionError::Invalid(format!(
                "terraform module_source {} contains no .tf file; expected a copy of iac's infra/ module",
                dir.display()
            )));
        }
        files.sort();
        Ok(files)
    }

    /// Renders and checks the tfvars for `stack`, then writes the module and the tfvars (as
    /// `tfvars_name`) into the work dir, atomically. Returns the work dir.
    fn prepare(&self, stack: &Stack, tfvars_name: &str) -> Result<PathBuf, ProvisionError> {
        self.cfg
            .limits
            .validate("terraform")
            .map_err(ProvisionError::Invalid)?;
        let stack = &with_limits(stack, &self.cfg.limits);
        let dir = self.work_dir(&stack.project);
        let files = self.module_files()?;
        let previous = if stack.keep.is_empty() {
            None
        } else {
            read_tfvars(&dir.join(TFVARS_FILE))?
        };
        let tfvars = render_tfvars(stack, previous.as_ref(), &self.cfg.docker_host)?;
        let json = tfvars_json(&tfvars);
        let value: Value = serde_json::from_str(&json).expect("just rendered");
        check_declared(&value, &files)?;
        // 0700 (an existing dir tightened, a symlink or another uid's dir refused): Terraform's
        // state and plan files in it hold the services' environment values.
        iac_core::fsutil::create_private_dir(&dir).map_err(|source| ProvisionError::Io {
            path: dir.clone(),
            source,
        })?;
        let wanted: BTreeSet<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        // Module files from an earlier module_source that this one no longer has.
        for entry in std::fs::read_dir(&dir).map_err(|source| ProvisionError::Io {
            path: dir.clone(),
            source,
        })? {
            let entry = entry.map_err(|source| ProvisionError::Io {
                path: dir.clone(),
                source,
            })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tf") && !wanted.contains(name.as_str()) {
                std::fs::remove_file(entry.path()).map_err(|source| ProvisionError::Io {
                    path: entry.path(),
                    source,
                })?;
            }
        }
        for (name, text) in &files {
            write_if_changed(&dir.join(name), text.as_bytes())?;
        }
        write_secret_if_changed(&dir.join(tfvars_name), json.as_bytes())?;
        Ok(dir)
    }

    /// Runs `<binary> <args>` in `dir`, streaming its lines as events. `capture_only`: stdout is
    /// machine output (JSON) and is not streamed.
    async fn run(
        &self,
        cx: &RunCtx<'_>,
        step: &str,
        args: &[String],
        capture_only: bool,
    ) -> Result<RunOutput, ProvisionError> {
        let RunCtx {
            dir,
            stage,
            events,
            services,
        } = *cx;
        let tool = self.cfg.binary.clone();
        events.debug(
            stage,
            format!("{tool} {} (in {})", args.join(" "), dir.display()),
        );
        let mut cmd = tokio::process::Command::new(&tool);
        cmd.args(args)
            .current_dir(dir)
            .env("TF_IN_AUTOMATION", "1")
            .env("TF_INPUT", "0")
            .env("CHECKPOINT_DISABLE", "1")
            .envs(self.cfg.extra_env.iter().map(|(k, v)| (k, v.expose())))
            .envs(iac_core::trace_context::env())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| ProvisionError::Tool {
            tool: tool.clone(),
            step: step.to_string(),
            code: None,
            message: format!(
                "cannot run {tool:?} in {}: {e}; install Terraform or OpenTofu, or set the terraform provisioner's `binary`",
                dir.display()
            ),
        })?;
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let tail_len = self.cfg.error_tail_lines.max(1);
        let err_tail: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
        let out_events = events.clone();
        let out_services = services.to_vec();
        let out_task = async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut all = String::new();
            while let Ok(Some(line)) = lines.next_line().await {
                if !capture_only && !line.trim().is_empty() {
                    emit_line(&out_events, stage, &out_services, EventLevel::Info, &line);
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        };
        let err_events = events.clone();
        let err_services = services.to_vec();
        let tail = err_tail.clone();
        let err_task = async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.trim().is_empty() {
                    continue;
                }
                let level = if line.trim_start().starts_with("Error") {
                    EventLevel::Error
                } else {
                    EventLevel::Warn
                };
                emit_line(&err_events, stage, &err_services, level, &line);
                let mut t = tail.lock().expect("not poisoned");
                t.push(line);
                if t.len() > tail_len {
                    t.remove(0);
                }
            }
        };
        let (stdout, ()) = tokio::join!(out_task, err_task);
        let status = child.wait().await.map_err(|e| ProvisionError::Tool {
            tool: tool.clone(),
            step: step.to_string(),
            code: None,
            message: format!("waiting for {tool}: {e}"),
        })?;
        if !status.success() {
            let tail = err_tail.lock().expect("not poisoned").join("\n");
            let message = if tail.is_empty() {
                let out_tail: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
                let from = out_tail.len().saturating_sub(tail_len);
                if out_tail.is_empty() {
                    format!("{tool} {step} printed nothing", step = args.join(" "))
                } else {
                    out_tail[from..].join("\n")
                }
            } else {
                tail
            };
            let code = status.code();
            events.error(
                stage,
                format!(
                    "{tool} {step} failed ({})",
                    code.map_or("killed by a signal".into(), |c| format!("exit {c}"))
                ),
            );
            return Err(ProvisionError::Tool {
                tool,
                step: step.to_string(),
                code,
                message,
            });
        }
        Ok(RunOutput { stdout })
    }

    fn init_args(&self) -> Vec<String> {
        let mut args = vec![
            "init".to_string(),
            "-input=false".into(),
            "-no-color".into(),
        ];
        if let Some(p) = &self.cfg.plugin_dir {
            args.push(format!("-plugin-dir={}", p.display()));
        }
        args
    }

    /// init → plan -out → show -json: the changes the saved plan makes.
    async fn plan_changes(
        &self,
        cx: &RunCtx<'_>,
        stack: &Stack,
        plan_file: &str,
        var_file: Option<&str>,
    ) -> Result<Vec<Change>, ProvisionError> {
        self.run(cx, "init", &self.init_args(), false).await?;
        let mut plan = vec![
            "plan".to_string(),
            "-input=false".into(),
            "-no-color".into(),
        ];
        if let Some(f) = var_file {
            plan.push(format!("-var-file={f}"));
        }
        plan.push(format!("-out={plan_file}"));
        self.run(cx, "plan", &plan, false).await?;
        let show = ["show", "-json", "-no-color", plan_file].map(String::from);
        let out = self.run(cx, "show", &show, true).await?;
        let json: Value = serde_json::from_str(out.stdout.trim()).map_err(|e| {
            ProvisionError::Invalid(format!(
                "`{} show -json {plan_file}` did not print JSON: {e}",
                self.cfg.binary
            ))
        })?;
        let services: Vec<ServiceName> = stack.services.iter().map(|s| s.service.clone()).collect();
        changes_from_plan(&json, &services)
    }

    async fn outputs(&self, cx: &RunCtx<'_>) -> Result<Outputs, ProvisionError> {
        let args = ["output", "-json", "-no-color"].map(String::from);
        let out = self.run(cx, "output", &args, true).await?;
        parse_outputs(&out.stdout)
    }

    /// Serializes iac's runs in one project's work dir (`<work_root>/<project>/terraform.lock`):
    /// a concurrent `iac plan` must not re-init or rewrite the module under a running apply.
    /// Held until the returned file is dropped.
    async fn lock(
        &self,
        project: &ProjectName,
        events: &Events,
        stage: Stage,
    ) -> Result<FileLock, ProvisionError> {
        let path = self
            .cfg
            .work_root
            .join(project.as_str())
            .join("terraform.lock");
        FileLock::acquire(&path, |holder| {
            events.info(
                stage,
                format!(
                    "waiting for another terraform run of project {project} ({}; {holder})",
                    path.display()
                ),
            );
        })
        .await
        .map_err(|source| ProvisionError::Io {
            path: path.clone(),
            source,
        })
    }

    /// Whether Terraform has ever run for this project (a state file or an initialized dir).
    fn has_state(dir: &Path) -> bool {
        dir.join("terraform.tfstate").exists() || dir.join(".terraform").is_dir()
    }
}

/// Like [`write_if_changed`] for a file holding secrets: 0600 (set on the temp file before the
/// rename), and rewritten when an earlier version has looser permissions even if the bytes match.
fn write_secret_if_changed(path: &Path, bytes: &[u8]) -> Result<(), ProvisionError> {
    use std::os::unix::fs::PermissionsExt;
    let private = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o777 == 0o600)
        .unwrap_or(false);
    if private && std::fs::read(path).ok().as_deref() == Some(bytes) {
        return Ok(());
    }
    write_atomic(path, bytes, Some(0o600)).map_err(|source| ProvisionError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<(), ProvisionError> {
    if std::fs::read(path).ok().as_deref() == Some(bytes) {
        return Ok(());
    }
    write_atomic(path, bytes, Some(0o644)).map_err(|source| ProvisionError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn read_tfvars(path: &Path) -> Result<Option<Tfvars>, ProvisionError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
            ProvisionError::Invalid(format!(
                "{}: cannot read the previously applied tfvars (needed to keep services that failed to prepare): {e}",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ProvisionError::Io { path: path.to_path_buf(), source }),
    }
}

/// Emits one line of Terraform output, attributed to a service when it names one of its
/// resources (`…["<service>"]…`).
fn emit_line(events: &Events, stage: Stage, services: &[String], level: EventLevel, line: &str) {
    let svc = line.split("[\"").skip(1).find_map(|rest| {
        let key = rest.split("\"]").next()?;
        services.iter().find(|s| s.as_str() == key)
    });
    match svc.and_then(|s| ServiceName::new(s).ok()) {
        Some(name) => events.for_service(&name).emit(stage, level, line),
        None => events.emit(stage, level, line),
    }
}

fn service_names(stack: &Stack) -> Vec<String> {
    stack
        .services
        .iter()
        .map(|s| s.service.to_string())
        .chain(stack.keep.iter().map(|s| s.to_string()))
        .collect()
}

#[async_trait]
impl Provisioner for TerraformProvisioner {
    fn name(&self) -> &'static str {
        "terraform"
    }

    async fn diff(&self, stack: &Stack) -> Result<Vec<Change>, ProvisionError> {
        let events = Events::discard();
        let _lock = self.lock(&stack.project, &events, Stage::Plan).await?;
        let dir = self.prepare(stack, DIFF_TFVARS_FILE)?;
        let names = service_names(stack);
        let cx = RunCtx {
            dir: &dir,
            stage: Stage::Plan,
            events: &events,
            services: &names,
        };
        let result = self
            .plan_changes(&cx, stack, DIFF_PLAN_FILE, Some(DIFF_TFVARS_FILE))
            .await;
        let _ = std::fs::remove_file(dir.join(DIFF_PLAN_FILE));
        let _ = std::fs::remove_file(dir.join(DIFF_TFVARS_FILE));
        result
    }

    async fn apply(
        &self,
        stack: &Stack,
        _gate: Arc<dyn HealthProber>,
        events: &Events,
    ) -> Result<Applied, ProvisionError> {
        let _lock = self.lock(&stack.project, events, Stage::Provision).await?;
        crate::provision::warn_single_copy(stack, "terraform", events);
        let dir = self.prepare(stack, TFVARS_FILE)?;
        events.info(
            Stage::Provision,
            format!(
                "terraform: {} service(s) rendered into {} (no per-service health gate: terraform applies all at once)",
                stack.services.len(),
                dir.join(TFVARS_FILE).display()
            ),
        );
        let names = service_names(stack);
        let cx = RunCtx {
            dir: &dir,
            stage: Stage::Provision,
            events,
            services: &names,
        };
        let changes = self.plan_changes(&cx, stack, PLAN_FILE, None).await?;
        // What this apply destroys (a replaced pair goes before its new one is created): its
        // logs first, by the names the previous apply's outputs give.
        for (action, reason) in [(Action::Replace, "replaced"), (Action::Remove, "removed")] {
            let doomed: Vec<&ServiceName> = changes
                .iter()
                .filter(|c| c.action == action)
                .map(|c| &c.service)
                .collect();
            if doomed.is_empty() || self.engine.is_none() || !events.wants_log_tails() {
                continue;
            }
            match self.outputs(&cx).await {
                Ok(before) => {
                    self.save_log_tails(&before, Some(&doomed), reason, events)
                        .await
                }
                Err(e) => events.warn(
                    Stage::Provision,
                    format!("could not save the last log lines of the {reason} containers: {e}"),
                ),
            }
        }
        let apply = [
            "apply",
            "-input=false",
            "-no-color",
            "-auto-approve",
            PLAN_FILE,
        ]
        .map(String::from);
        let applied = self.run(&cx, "apply", &apply, false).await;
        let _ = std::fs::remove_file(dir.join(PLAN_FILE));
        applied?;
        let outputs = self.outputs(&cx).await?;
        let mut result = Applied::default();
        for s in &stack.services {
            let change = changes.iter().find(|c| c.service == s.service);
            let action = change.map_or(Action::Unchanged, |c| c.action);
            let out = outputs.services.get(s.service.as_str());
            let endpoint = out.and_then(OutputService::endpoint);
            let error = match (out, endpoint) {
                (_, Some(_)) => None,
                (None, None) => Some(format!(
                    "terraform output \"services\" has no entry for {}",
                    s.service
                )),
                (Some(_), None) => Some(format!(
                    "terraform output \"services\"[{:?}] has no host address for the mesh port (host_ip/host_port)",
                    s.service.as_str()
                )),
            };
            result.services.push(AppliedService {
                service: s.service.clone(),
                action,
                endpoint,
                edge: out.and_then(OutputService::edge),
                health: None,
                error,
            });
        }
        result.removed = changes
            .iter()
            .filter(|c| c.action == Action::Remove)
            .map(|c| c.service.clone())
            .collect::<Vec<_>>();
        Ok(result)
    }

    async fn destroy(
        &self,
        project: &ProjectName,
        events: &Events,
    ) -> Result<Vec<String>, ProvisionError> {
        let dir = self.work_dir(project);
        if !Self::has_state(&dir) {
            events.info(
                Stage::Destroy,
                format!(
                    "terraform: nothing to destroy for project {project} (no state in {})",
                    dir.display()
                ),
            );
            return Ok(Vec::new());
        }
        let _lock = self.lock(project, events, Stage::Destroy).await?;
        if !dir.join(TFVARS_FILE).exists() && !dir.join("terraform.tfstate").exists() {
            // Only `iac plan` ran here (it never writes the applied tfvars): nothing was applied.
            events.info(
                Stage::Destroy,
                format!("terraform: nothing to destroy for project {project} (never applied)"),
            );
            return Ok(Vec::new());
        }
        if !dir.join(TFVARS_FILE).exists() {
            return Err(ProvisionError::Invalid(format!(
                "{} is missing, but terraform needs the variables of the last apply to destroy project {project}; \
                 restore it or run `terraform destroy` in {} yourself",
                dir.join(TFVARS_FILE).display(),
                dir.display()
            )));
        }
        // Bring the module up to date (a newer iac may ship a newer one); the tfvars stay as applied.
        for (name, text) in self.module_files()? {
            write_if_changed(&dir.join(&name), text.as_bytes())?;
        }
        let names: Vec<String> = read_tfvars(&dir.join(TFVARS_FILE))?
            .map(|t| t.services.into_keys().collect())
            .unwrap_or_default();
        let cx = RunCtx {
            dir: &dir,
            stage: Stage::Destroy,
            events,
            services: &names,
        };
        if !dir.join(".terraform").is_dir() {
            self.run(&cx, "init", &self.init_args(), false).await?;
        }
        let before = self.outputs(&cx).await?;
        self.save_log_tails(&before, None, "destroyed", events)
            .await;
        let args = ["destroy", "-input=false", "-no-color", "-auto-approve"].map(String::from);
        self.run(&cx, "destroy", &args, false).await?;
        let mut removed = Vec::new();
        for s in before.services.values() {
            removed.extend(s.envoy_container_name.clone());
            removed.extend(s.app_container_name.clone());
        }
        removed.extend(before.network_name);
        Ok(removed)
    }

    async fn running(&self, project: &ProjectName) -> Result<Vec<RunningService>, ProvisionError> {
        let dir = self.work_dir(project);
        if !Self::has_state(&dir) {
            return Ok(Vec::new());
        }
        let events = Events::discard();
        let cx = RunCtx {
            dir: &dir,
            stage: Stage::Health,
            events: &events,
            services: &[],
        };
        let outputs = self.outputs(&cx).await?;
        outputs
            .services
            .into_iter()
            .map(|(name, s)| {
                let service = ServiceName::new(&name).map_err(|e| {
                    ProvisionError::Invalid(format!(
                        "terraform output names service {name:?}, which is invalid: {e}"
                    ))
                })?;
                Ok(RunningService {
                    endpoint: s.endpoint(),
                    edge: s.edge(),
                    spec_hash: s.spec_hash.clone().unwrap_or_default(),
                    image: s.image.clone().unwrap_or_default(),
                    // Terraform's state, not a live inspect: must_run = true means it was running
                    // when last applied.
                    state: "running".into(),
                    sandbox: None,
                    service,
                })
            })
            .collect()
    }
}
