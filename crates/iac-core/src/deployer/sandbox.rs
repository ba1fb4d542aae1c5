//! Sandboxes in the deploy pipeline ([`crate::sandbox`]): what the control plane keeps between
//! deploys, and the steps a sandbox adds.
//!
//! * `<state_dir>/mesh.json`: the baseline's mesh members as its last deploy rendered them. A
//!   sandbox deploy renders against it (it builds nothing of the baseline) and refuses services
//!   it does not list.
//! * `<state_dir>/sandboxes/<name>.json`: one [`SandboxRecord`] per sandbox (its copies as mesh
//!   members, when it was made, when its `ttl` ends). Every deploy renders every sidecar against
//!   the baseline plus every recorded sandbox, so a baseline deploy keeps the sandboxes' routes.
//! * After a deploy (baseline or sandbox) or a sandbox's removal, the sidecars of members this
//!   deploy did not prepare are rendered again; the configs that changed are written and those
//!   sidecars reloaded ([`crate::Provisioner::reload_sidecars`]): their Envoy checks the new
//!   config and restarts with it, their app container is not touched. A config Envoy refuses,
//!   or a reload that leaves the sidecar unhealthy, gets the previous file back (reloaded again
//!   in the second case). After any apply, a pod that keeps running its old version (rolled
//!   back, or never applied) gets its old config file back (`restore_kept_configs`).
//! * Expired sandboxes are removed by the next deploy of the project (under its lock) and by
//!   [`Deployer::gc`].

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::Error;
use crate::event::{Events, Stage};
use crate::expose::Expose;
use crate::fsutil::write_atomic_if_changed;
use crate::mesh::{CertPaths, Mesh, MeshPorts, MeshService};
use crate::name::ServiceName;
use crate::repos::ServiceSpec;
use crate::sandbox::{SandboxCopy, SandboxName, copy_name};
use crate::stack::Action;
use serde::{Deserialize, Serialize};

use super::Deployer;

/// A sandbox deploy: which sandbox, and its `ttl`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SandboxTarget {
    /// The sandbox.
    pub name: SandboxName,
    /// After how long the next deploy or `iac gc` removes it (from this deploy on).
    #[serde(default)]
    pub ttl: Option<std::time::Duration>,
}

/// What a sandbox is, as the control plane keeps it between deploys
/// (`<state_dir>/sandboxes/<name>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxRecord {
    /// Its name.
    pub name: SandboxName,
    /// The copies, as mesh members (their names are copy names).
    pub services: Vec<MeshService>,
    /// When it was first deployed (seconds since the Unix epoch).
    pub created_unix: u64,
    /// When it expires (seconds since the Unix epoch), if it has a `ttl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_unix: Option<u64>,
}

impl SandboxRecord {
    /// Whether its ttl has passed at `now_unix`.
    pub fn expired(&self, now_unix: u64) -> bool {
        self.expires_unix.is_some_and(|t| t <= now_unix)
    }
}

/// A sidecar config a deploy rewrote, with what the file held before (`None`: no file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Rewritten {
    pub(super) service: ServiceName,
    pub(super) before: Option<Vec<u8>>,
}

/// Seconds since the Unix epoch, now.
pub(super) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn io_error(path: PathBuf) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { path, source }
}

impl Deployer {
    fn baseline_record_path(&self) -> PathBuf {
        self.opts.state_dir.join("mesh.json")
    }

    fn sandbox_dir(&self) -> PathBuf {
        self.opts.state_dir.join("sandboxes")
    }

    fn sandbox_record_path(&self, name: &SandboxName) -> PathBuf {
        self.sandbox_dir().join(format!("{name}.json"))
    }

    /// After the whole project was destroyed: its baseline and sandbox records go too, so a
    /// later sandbox deploy is refused (no baseline) and a later baseline renders no routes to
    /// copies that are gone. Missing records are fine.
    pub(super) fn forget_mesh_records(&self) -> std::io::Result<()> {
        match std::fs::remove_file(self.baseline_record_path()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        match std::fs::remove_dir_all(self.sandbox_dir()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The baseline's mesh members as its last deploy recorded them; `None` before any deploy.
    pub(super) fn read_baseline(&self) -> Result<Option<Vec<MeshService>>, Error> {
        let path = self.baseline_record_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Error::Sandbox(format!(
                    "{}: not a baseline mesh record ({e}); deploy the baseline again to rewrite it",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(path)(e)),
        }
    }

    /// Records the baseline's members after a baseline deploy.
    pub(super) fn write_baseline(&self, members: &[MeshService]) -> Result<(), Error> {
        let path = self.baseline_record_path();
        let json = serde_json::to_vec_pretty(members).expect("plain data serializes");
        write_atomic_if_changed(&path, &json, Some(0o600))
            .map(|_| ())
            .map_err(io_error(path))
    }

    /// Every recorded sandbox of the project, by name (expired ones included).
    pub fn sandboxes(&self) -> Result<Vec<SandboxRecord>, Error> {
        let dir = self.sandbox_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error(dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_error(dir.clone()))?;
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(io_error(path.clone()))?;
            let record: SandboxRecord = serde_json::from_slice(&bytes).map_err(|e| {
                Error::Sandbox(format!(
                    "{}: not a sandbox record ({e}); remove the file to forget that sandbox",
                    path.display()
                ))
            })?;
            out.push(record);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Writes a sandbox's record (creating the sandboxes directory).
    pub(super) fn write_sandbox(&self, record: &SandboxRecord) -> Result<(), Error> {
        let path = self.sandbox_record_path(&record.name);
        crate::fsutil::create_private_dir(&self.sandbox_dir())
            .map_err(io_error(self.sandbox_dir()))?;
        let json = serde_json::to_vec_pretty(record).expect("plain data serializes");
        crate::fsutil::write_atomic(&path, &json, Some(0o600)).map_err(io_error(path))
    }

    fn forget_sandbox(&self, name: &SandboxName) -> Result<(), Error> {
        let path = self.sandbox_record_path(name);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(path)(e)),
        }
    }

    /// The specs of a sandbox deploy as the pipeline runs them: each service renamed to its
    /// copy's name ([`copy_name`]), its edge (if any) on loopback at a port the engine picks
    /// (a fixed `expose:` port belongs to the baseline). Refuses a service the baseline does
    /// not have, naming the ones it has.
    pub(super) fn sandbox_specs(
        &self,
        target: &SandboxTarget,
        specs: &[ServiceSpec],
    ) -> Result<Vec<ServiceSpec>, Error> {
        // Checked before anything else: a backend that ignores `Stack::sandbox` would read the
        // copies as the whole project and remove the baseline.
        if !self.stages.provisioner.runs_sandboxes() {
            return Err(Error::Sandbox(format!(
                "sandbox {}: the {} provisioner does not run sandboxes; expected the docker provisioner",
                target.name,
                self.stages.provisioner.name()
            )));
        }
        let baseline = self.read_baseline()?.ok_or_else(|| {
            Error::Sandbox(format!(
                "project {} has no baseline deploy recorded ({} is missing); deploy the baseline before sandbox {}",
                self.opts.project,
                self.baseline_record_path().display(),
                target.name
            ))
        })?;
        let known: Vec<&str> = baseline
            .iter()
            .filter(|m| m.sandbox.is_none())
            .map(|m| m.name.as_str())
            .collect();
        let mut out = Vec::with_capacity(specs.len());
        for spec in specs {
            if !known.contains(&spec.name.as_str()) {
                return Err(Error::Sandbox(format!(
                    "sandbox {} names service {}, which project {} does not run; expected one of: {}",
                    target.name,
                    spec.name,
                    self.opts.project,
                    known.join(", ")
                )));
            }
            let mut copy = spec.clone();
            copy.name = copy_name(&spec.name, &target.name)?;
            if matches!(copy.expose, Expose::On(_)) {
                copy.expose = Expose::Auto;
            }
            out.push(copy);
        }
        Ok(out)
    }

    /// The members this deploy does not prepare but renders against: for a baseline deploy,
    /// every recorded sandbox's copies; for a sandbox deploy, the recorded baseline and every
    /// other sandbox's copies (this sandbox's are prepared again).
    pub(super) fn recorded_members(&self) -> Result<Vec<MeshService>, Error> {
        let mut out = Vec::new();
        if self.opts.sandbox.is_some() {
            out.extend(self.read_baseline()?.unwrap_or_default());
            out.retain(|m| m.sandbox.is_none());
        }
        let this = self.opts.sandbox.as_ref().map(|t| &t.name);
        for record in self.sandboxes()? {
            if Some(&record.name) != this {
                out.extend(record.services);
            }
        }
        Ok(out)
    }

    /// Marks the mesh members of a sandbox deploy's prepared services as copies.
    pub(super) fn mark_copies(&self, members: &mut [MeshService]) {
        let Some(t) = &self.opts.sandbox else { return };
        for m in members {
            if let Some(c) = crate::sandbox::parse_copy(m.name.as_str()) {
                m.sandbox = Some(SandboxCopy {
                    of: c.of,
                    sandbox: t.name.clone(),
                });
            }
        }
    }

    /// Renders the sidecar of every member in `members` (those this deploy did not prepare)
    /// against `mesh`, writes the configs that changed, and returns those members with the
    /// config each had before (`None`: it had none). A member that fails to render keeps its
    /// old config, with a warning.
    pub(super) fn rerender(
        &self,
        mesh: &Mesh,
        members: &[ServiceName],
        events: &Events,
    ) -> Vec<Rewritten> {
        let mut changed = Vec::new();
        for name in members {
            let config = match self.stages.sidecar.render(mesh, name) {
                Ok(c) => c,
                Err(e) => {
                    events.for_service(name).warn(
                        Stage::Render,
                        format!("its sidecar keeps its routes: rendering them again failed: {e}"),
                    );
                    continue;
                }
            };
            let path = self.envoy_config_path(name);
            let before = std::fs::read(&path).ok();
            match write_atomic_if_changed(&path, config.as_bytes(), Some(0o644)) {
                Ok(true) => changed.push(Rewritten {
                    service: name.clone(),
                    before,
                }),
                Ok(false) => {}
                Err(e) => events.for_service(name).warn(
                    Stage::Render,
                    format!("its sidecar keeps its routes: {}: {e}", path.display()),
                ),
            }
        }
        changed
    }

    /// Puts back the config `service` had before this deploy rewrote it (temp + rename); says
    /// so when that fails too.
    pub(super) fn restore_config(&self, service: &ServiceName, before: &[u8], events: &Events) {
        let path = self.envoy_config_path(service);
        if let Err(e) = crate::fsutil::write_atomic(&path, before, Some(0o644)) {
            events.for_service(service).error(
                Stage::Render,
                format!(
                    "restoring its previous sidecar config failed: {}: {e}; the file holds the new one",
                    path.display()
                ),
            );
        }
    }

    /// After an apply: a service whose new pods did not take over (rolled back, or not
    /// applied at all: a failed release, a failed apply) runs its old pods, if any, and gets
    /// its old sidecar config file back, so its Envoy loads the old one at its next restart or
    /// reload, not the version that did not make it.
    pub(super) fn restore_kept_configs(
        &self,
        rewritten: &[Rewritten],
        reports: &[crate::report::ServiceReport],
        events: &Events,
    ) {
        for r in rewritten {
            let Some(before) = &r.before else { continue };
            let kept = reports
                .iter()
                .find(|rep| rep.service == r.service)
                .is_none_or(|rep| matches!(rep.action, None | Some(Action::RolledBack)));
            if kept {
                self.restore_config(&r.service, before, events);
                events.for_service(&r.service).info(
                    Stage::Render,
                    "its previous sidecar config is restored (its new pods did not take over)",
                );
            }
        }
    }

    /// Reloads the sidecars whose configs `rerender` changed, saying what happened. A config
    /// Envoy refuses is replaced by the previous one again (the running Envoy never left it); a
    /// reload that leaves a sidecar unhealthy gets the previous config back and is reloaded once
    /// more with it. Both are warnings: the deploy's own services stand.
    pub(super) async fn reload(&self, changed: &[Rewritten], events: &Events) {
        if changed.is_empty() {
            return;
        }
        let names: Vec<ServiceName> = changed.iter().map(|c| c.service.clone()).collect();
        let outcomes = match self
            .stages
            .provisioner
            .reload_sidecars(&self.opts.project, &names, events)
            .await
        {
            Ok(o) => o,
            Err(e) => {
                events.warn(
                    Stage::Provision,
                    format!("sidecars keep their old routes until reloaded: {e}"),
                );
                return;
            }
        };
        let mut again = Vec::new();
        for r in outcomes {
            let svc_events = events.for_service(&r.service);
            let before = changed
                .iter()
                .find(|c| c.service == r.service)
                .and_then(|c| c.before.as_deref());
            match r.outcome {
                crate::ReloadOutcome::Reloaded => svc_events.info(
                    Stage::Provision,
                    "sidecar reloaded with the new sandbox routes",
                ),
                crate::ReloadOutcome::NotRunning => svc_events.debug(
                    Stage::Provision,
                    "sidecar not running: it loads the new routes when it starts",
                ),
                crate::ReloadOutcome::Refused(why) => {
                    if let Some(before) = before {
                        self.restore_config(&r.service, before, events);
                    }
                    svc_events.warn(
                        Stage::Provision,
                        format!(
                            "its sidecar refused the new routes (envoy --mode validate: {why}); \
                             it runs on with its previous config, which is restored"
                        ),
                    );
                }
                crate::ReloadOutcome::Unhealthy(why) => {
                    if let Some(before) = before {
                        self.restore_config(&r.service, before, events);
                        again.push(r.service.clone());
                    }
                    svc_events.warn(
                        Stage::Provision,
                        format!(
                            "its sidecar did not come back healthy with the new routes ({why}); \
                             its previous config is restored and reloaded"
                        ),
                    );
                }
            }
        }
        if again.is_empty() {
            return;
        }
        match self
            .stages
            .provisioner
            .reload_sidecars(&self.opts.project, &again, events)
            .await
        {
            Ok(outcomes) => {
                for r in outcomes {
                    let e = events.for_service(&r.service);
                    match r.outcome {
                        crate::ReloadOutcome::Reloaded | crate::ReloadOutcome::NotRunning => {
                            e.info(Stage::Provision, "sidecar back on its previous config")
                        }
                        crate::ReloadOutcome::Refused(why)
                        | crate::ReloadOutcome::Unhealthy(why) => e.error(
                            Stage::Provision,
                            format!(
                                "its sidecar is not healthy on its previous config either: {why}"
                            ),
                        ),
                    }
                }
            }
            Err(e) => events.error(
                Stage::Provision,
                format!("reloading the previous sidecar configs: {e}"),
            ),
        }
    }

    /// After an apply: records what now runs (the baseline's members, or this sandbox's
    /// copies with their ttl), then renders the recorded members' sidecars again and reloads
    /// the ones whose routes changed. Failures here are warnings: the apply stands.
    pub(super) async fn after_apply(
        &self,
        context: &super::prepare::MeshContext,
        applied: &crate::stack::Applied,
        events: &Events,
    ) {
        // What now runs the new spec: applied without an error and not rolled back (a rolled
        // back or failed replace leaves the old pair serving, with the old record).
        let ok = |m: &&MeshService| {
            applied
                .services
                .iter()
                .any(|a| a.service == m.name && a.error.is_none() && a.action != Action::RolledBack)
        };
        let recorded = match &self.opts.sandbox {
            Some(t) => {
                let now = now_unix();
                let created = self
                    .sandboxes()
                    .ok()
                    .and_then(|all| all.into_iter().find(|r| r.name == t.name))
                    .map_or(now, |r| r.created_unix);
                self.write_sandbox(&SandboxRecord {
                    name: t.name.clone(),
                    services: context.prepared.iter().filter(ok).cloned().collect(),
                    created_unix: created,
                    expires_unix: t.ttl.map(|d| now.saturating_add(d.as_secs())),
                })
            }
            None => {
                let mut members: Vec<MeshService> =
                    context.prepared.iter().filter(ok).cloned().collect();
                // Every service that still runs as it did stays recorded as it was: kept ones
                // (they failed before provisioning), a failed or rolled-back replace, and any
                // other the apply did not remove. Only what the apply removed is dropped.
                let old = self.read_baseline().ok().flatten().unwrap_or_default();
                let have: Vec<ServiceName> = members.iter().map(|m| m.name.clone()).collect();
                members.extend(
                    old.into_iter()
                        .filter(|m| !have.contains(&m.name) && !applied.removed.contains(&m.name)),
                );
                members.sort_by(|a, b| a.name.cmp(&b.name));
                self.write_baseline(&members)
            }
        };
        if let Err(e) = recorded {
            events.warn(Stage::Deploy, format!("recording the project's mesh: {e}"));
        }
        let changed = self.rerender(&context.mesh, &context.recorded, events);
        self.reload(&changed, events).await;
    }

    /// The mesh of the recorded members alone (for re-rendering after a sandbox is removed).
    fn recorded_mesh(&self, members: Vec<MeshService>) -> Mesh {
        Mesh {
            project: self.opts.project.clone(),
            services: members,
            ports: MeshPorts::default(),
            certs: CertPaths::in_container(),
        }
    }

    /// Removes sandbox `name`: its copies (through the provisioner), its record, and its routes
    /// from every other sidecar (re-rendered and reloaded). The baseline's containers are not
    /// touched.
    pub async fn destroy_sandbox(
        &self,
        name: &SandboxName,
        events: &Events,
    ) -> Result<Vec<String>, Error> {
        let _lock = self.lock(events).await?;
        self.destroy_sandbox_locked(name, events).await
    }

    async fn destroy_sandbox_locked(
        &self,
        name: &SandboxName,
        events: &Events,
    ) -> Result<Vec<String>, Error> {
        let removed = self
            .stages
            .provisioner
            .destroy_sandbox(&self.opts.project, name, events)
            .await?;
        self.forget_sandbox(name)?;
        let mut members = self.read_baseline()?.unwrap_or_default();
        members.retain(|m| m.sandbox.is_none());
        for r in self.sandboxes()? {
            members.extend(r.services);
        }
        let names: Vec<ServiceName> = members.iter().map(|m| m.name.clone()).collect();
        let mesh = self.recorded_mesh(members);
        let changed = self.rerender(&mesh, &names, events);
        self.reload(&changed, events).await;
        events.info(Stage::Destroy, format!("sandbox {name} removed"));
        Ok(removed)
    }

    /// Removes every sandbox whose ttl has passed, under the project's lock.
    pub async fn gc(&self, events: &Events) -> Result<Vec<SandboxName>, Error> {
        let _lock = self.lock(events).await?;
        self.gc_locked(events).await
    }

    /// [`Deployer::gc`] with the lock already held (a deploy starts with it).
    pub(super) async fn gc_locked(&self, events: &Events) -> Result<Vec<SandboxName>, Error> {
        let now = now_unix();
        let mut gone = Vec::new();
        let mut failed = Vec::new();
        for r in self.sandboxes()? {
            if r.expired(now) {
                events.info(
                    Stage::Destroy,
                    format!("sandbox {} expired (its ttl passed): removing it", r.name),
                );
                // One that cannot be removed now does not keep the others.
                match self.destroy_sandbox_locked(&r.name, events).await {
                    Ok(_) => gone.push(r.name),
                    Err(e) => failed.push(format!("{}: {e}", r.name)),
                }
            }
        }
        if failed.is_empty() {
            Ok(gone)
        } else {
            Err(Error::Sandbox(format!(
                "removing expired sandboxes{}: {}",
                if gone.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (removed {})",
                        gone.iter()
                            .map(|n| n.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                },
                failed.join("; ")
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_expire_at_their_ttl_only() {
        let mut r = SandboxRecord {
            name: SandboxName::new("feat").unwrap(),
            services: Vec::new(),
            created_unix: 100,
            expires_unix: None,
        };
        assert!(!r.expired(u64::MAX));
        r.expires_unix = Some(200);
        assert!(!r.expired(199));
        assert!(r.expired(200));
    }
}
