//! Who runs a history record, and whether that process provably died without finishing it.
//!
//! Every record is started with its [`RunOwner`]: the host (hostname and, when the host has one,
//! `/etc/machine-id`), the boot id (`/proc/sys/kernel/random/boot_id`), the pid namespace, the
//! pid and the process's start time in clock ticks since boot (`/proc/<pid>/stat` field 22,
//! which defeats pid reuse). A `running` record whose owner is on this host and provably dead —
//! the host rebooted since (boot id differs), or the pid is gone, a zombie, or now another
//! process (start time differs) — is finished as [`HistoryStatus::Interrupted`] by
//! [`mark_interrupted`]. A record owned by another host, another pid namespace (a container
//! beside this one) or with no owner (written before owners were kept) is left alone: nothing
//! here can prove it dead.
//!
//! [`judge`] is the pure decision; [`ProcessView`] is the I/O it needs, [`LocalProcesses`]
//! reads it from `/proc`.

use serde::{Deserialize, Serialize};

use super::{HistoryError, HistoryFinish, HistoryStatus, HistoryStore};
use crate::name::ProjectName;

/// The error code of an interrupted record ([`HistoryFinish::error_code`]).
pub const INTERRUPTED_CODE: &str = "interrupted";

/// The process that started a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOwner {
    /// The hostname.
    pub host: String,
    /// `/etc/machine-id`, when the host has one (two hosts with one hostname differ here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<String>,
    /// `/proc/sys/kernel/random/boot_id` when the record was started.
    pub boot_id: String,
    /// The pid namespace (`readlink /proc/self/ns/pid`), when readable: a pid means something
    /// only inside its namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_ns: Option<String>,
    /// The process id.
    pub pid: u32,
    /// The process's start time, clock ticks after boot (`/proc/<pid>/stat` field 22).
    pub start_ticks: u64,
}

/// What this host is, as [`RunOwner`] records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostIdentity {
    /// The hostname.
    pub host: String,
    /// `/etc/machine-id`, when there is one.
    pub machine_id: Option<String>,
    /// The current boot id.
    pub boot_id: String,
    /// This process's pid namespace, when readable.
    pub pid_ns: Option<String>,
}

/// A process as `/proc` shows it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessState {
    /// No such pid.
    Gone,
    /// Exited, not yet reaped by its parent.
    Zombie,
    /// Cannot be told here (`/proc` hides it: `hidepid`, `ProtectProc=invisible`, another
    /// error than "no such file"): never taken for dead.
    Unreadable,
    /// Alive, started this many clock ticks after boot.
    Alive {
        /// `/proc/<pid>/stat` field 22.
        start_ticks: u64,
    },
}

/// What [`judge`] concludes about a running record's owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The owner still runs: the record is really running.
    Alive,
    /// The owner provably died; the reason says how it is known.
    Dead(String),
    /// Nothing here can tell (another host or pid namespace, or no owner recorded).
    Unknown,
}

/// The decision: is the owner of a `running` record provably dead? `process` is asked about
/// the owner's pid only when the owner is on this host, in this boot and pid namespace.
pub fn judge(
    owner: Option<&RunOwner>,
    here: &HostIdentity,
    process: impl FnOnce(u32) -> ProcessState,
) -> Verdict {
    let Some(o) = owner else {
        return Verdict::Unknown;
    };
    if o.host != here.host {
        return Verdict::Unknown;
    }
    if let (Some(a), Some(b)) = (&o.machine_id, &here.machine_id)
        && a != b
    {
        return Verdict::Unknown;
    }
    if o.boot_id != here.boot_id {
        // A hostname alone does not name a machine (cloned VMs, `hostname: iac` in compose): a
        // boot id that differs means a reboot only when both machine ids say it is this machine.
        let same_machine =
            matches!((&o.machine_id, &here.machine_id), (Some(a), Some(b)) if a == b);
        if !same_machine {
            return Verdict::Unknown;
        }
        return Verdict::Dead(format!(
            "host {} rebooted since it started (boot id {} then, {} now)",
            o.host, o.boot_id, here.boot_id
        ));
    }
    if o.pid_ns != here.pid_ns {
        return Verdict::Unknown;
    }
    match process(o.pid) {
        ProcessState::Gone => {
            Verdict::Dead(format!("its process (pid {} on {}) is gone", o.pid, o.host))
        }
        ProcessState::Zombie => Verdict::Dead(format!(
            "its process (pid {} on {}) has exited",
            o.pid, o.host
        )),
        ProcessState::Alive { start_ticks } if start_ticks != o.start_ticks => {
            Verdict::Dead(format!(
                "its process (pid {} on {}) is gone; that pid is now another process (started at tick {start_ticks}, not {})",
                o.pid, o.host, o.start_ticks
            ))
        }
        ProcessState::Alive { .. } => Verdict::Alive,
        ProcessState::Unreadable => Verdict::Unknown,
    }
}

/// The I/O [`judge`] needs: who this host is and how a pid stands.
pub trait ProcessView: Send + Sync {
    /// This host, or `None` when it cannot be read (then nothing is judged).
    fn identity(&self) -> Option<HostIdentity>;
    /// How `pid` stands now.
    fn process(&self, pid: u32) -> ProcessState;
}

/// [`ProcessView`] from this host's `/proc`.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalProcesses;

fn read_trimmed(path: &str) -> Option<String> {
    let s = std::fs::read_to_string(path).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// The state letter and start time (field 22) of a `/proc/<pid>/stat` line. The command name
/// (field 2) is in parentheses and may hold spaces or `)`: fields are counted after the last `)`.
pub fn parse_stat(stat: &str) -> Option<(char, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Field 3 is the state; field 22 is 19 further on.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

impl ProcessView for LocalProcesses {
    fn identity(&self) -> Option<HostIdentity> {
        Some(HostIdentity {
            host: read_trimmed("/proc/sys/kernel/hostname")?,
            machine_id: read_trimmed("/etc/machine-id"),
            boot_id: read_trimmed("/proc/sys/kernel/random/boot_id")?,
            pid_ns: std::fs::read_link("/proc/self/ns/pid")
                .ok()
                .map(|p| p.to_string_lossy().into_owned()),
        })
    }

    fn process(&self, pid: u32) -> ProcessState {
        let stat = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(s) => s,
            // Only "no such file" means no such pid; EACCES and friends say nothing.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return ProcessState::Gone,
            Err(_) => return ProcessState::Unreadable,
        };
        match parse_stat(&stat) {
            None => ProcessState::Unreadable,
            Some(('Z' | 'X', _)) => ProcessState::Zombie,
            Some((_, start_ticks)) => ProcessState::Alive { start_ticks },
        }
    }
}

impl RunOwner {
    /// This process, as `view` sees it; `None` when the host cannot be identified (a record
    /// without an owner is never judged).
    pub fn current(view: &dyn ProcessView) -> Option<RunOwner> {
        let here = view.identity()?;
        let pid = std::process::id();
        let ProcessState::Alive { start_ticks } = view.process(pid) else {
            return None;
        };
        Some(RunOwner {
            host: here.host,
            machine_id: here.machine_id,
            boot_id: here.boot_id,
            pid_ns: here.pid_ns,
            pid,
            start_ticks,
        })
    }
}

/// A `running` record and its owner ([`HistoryStore::running`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningRecord {
    /// The record's id.
    pub id: String,
    /// Its project.
    pub project: ProjectName,
    /// Who started it; `None` for records written before owners were kept.
    pub owner: Option<RunOwner>,
}

/// Finishes as [`HistoryStatus::Interrupted`] every `running` record (of `project`, else of
/// every project) whose owner [`judge`] finds provably dead; returns their ids. A record that
/// finished meanwhile is left as it is (the store only changes a record still `running`).
pub async fn mark_interrupted(
    store: &dyn HistoryStore,
    project: Option<&ProjectName>,
    view: &dyn ProcessView,
    finished_at: &str,
) -> Result<Vec<String>, HistoryError> {
    let running = store.running(project).await?;
    if running.is_empty() {
        return Ok(Vec::new());
    }
    let Some(here) = view.identity() else {
        return Ok(Vec::new());
    };
    let mut marked = Vec::new();
    for r in running {
        let Verdict::Dead(why) = judge(r.owner.as_ref(), &here, |pid| view.process(pid)) else {
            continue;
        };
        let finish = HistoryFinish {
            status: HistoryStatus::Interrupted,
            finished_at: finished_at.to_string(),
            outcomes: Vec::new(),
            report: None,
            removed: Vec::new(),
            error: Some(format!(
                "interrupted: it never finished, {why}; the next deploy converges on what is really there"
            )),
            error_code: Some(INTERRUPTED_CODE.to_string()),
        };
        if store.finish_if_running(&r.id, &finish).await? {
            tracing::info!(record = %r.id, project = %r.project, "history record interrupted: {why}");
            marked.push(r.id);
        }
    }
    Ok(marked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn here() -> HostIdentity {
        HostIdentity {
            host: "box".into(),
            machine_id: Some("m1".into()),
            boot_id: "boot-1".into(),
            pid_ns: Some("pid:[4026531836]".into()),
        }
    }

    fn owner() -> RunOwner {
        RunOwner {
            host: "box".into(),
            machine_id: Some("m1".into()),
            boot_id: "boot-1".into(),
            pid_ns: Some("pid:[4026531836]".into()),
            pid: 4242,
            start_ticks: 1000,
        }
    }

    fn never(_: u32) -> ProcessState {
        panic!("the process table is not asked")
    }

    #[test]
    fn the_owner_alive_with_its_start_time_is_alive() {
        let v = judge(Some(&owner()), &here(), |pid| {
            assert_eq!(pid, 4242);
            ProcessState::Alive { start_ticks: 1000 }
        });
        assert_eq!(v, Verdict::Alive);
    }

    #[test]
    fn a_gone_zombie_or_reused_pid_is_dead() {
        for (state, words) in [
            (ProcessState::Gone, "is gone"),
            (ProcessState::Zombie, "has exited"),
            (
                ProcessState::Alive { start_ticks: 2000 },
                "now another process",
            ),
        ] {
            match judge(Some(&owner()), &here(), |_| state) {
                Verdict::Dead(why) => {
                    assert!(why.contains(words), "{why}");
                    assert!(why.contains("pid 4242 on box"), "{why}");
                }
                v => panic!("{state:?}: {v:?}"),
            }
        }
    }

    #[test]
    fn a_new_boot_is_dead_without_asking_about_the_pid() {
        let mut h = here();
        h.boot_id = "boot-2".into();
        match judge(Some(&owner()), &h, never) {
            Verdict::Dead(why) => assert!(why.contains("rebooted"), "{why}"),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn another_host_machine_or_pid_namespace_or_no_owner_is_left_alone() {
        let mut other_host = owner();
        other_host.host = "elsewhere".into();
        // Another host rebooted too: still not ours to judge.
        other_host.boot_id = "boot-9".into();
        assert_eq!(judge(Some(&other_host), &here(), never), Verdict::Unknown);
        let mut other_machine = owner();
        other_machine.machine_id = Some("m2".into());
        other_machine.boot_id = "boot-9".into();
        assert_eq!(
            judge(Some(&other_machine), &here(), never),
            Verdict::Unknown
        );
        let mut other_ns = owner();
        other_ns.pid_ns = Some("pid:[1]".into());
        assert_eq!(judge(Some(&other_ns), &here(), never), Verdict::Unknown);
        assert_eq!(judge(None, &here(), never), Verdict::Unknown);
    }

    /// The review's case: two control planes with the same hostname and no machine id (cloned
    /// VMs, `hostname: iac` in compose) sharing one PostgreSQL history. A boot id that differs
    /// is another machine as likely as a reboot, so nothing is judged.
    #[test]
    fn a_new_boot_id_without_matching_machine_ids_is_left_alone() {
        let mut h = here();
        h.boot_id = "boot-2".into();
        for (theirs, ours) in [(None, None), (Some("m1"), None), (None, Some("m1"))] {
            let mut o = owner();
            o.machine_id = theirs.map(Into::into);
            let mut h = h.clone();
            h.machine_id = ours.map(Into::into);
            assert_eq!(
                judge(Some(&o), &h, never),
                Verdict::Unknown,
                "{theirs:?} {ours:?}"
            );
        }
    }

    /// A pid `/proc` will not show (hidepid, ProtectProc=invisible) is not a dead one.
    #[test]
    fn an_unreadable_process_is_left_alone() {
        assert_eq!(
            judge(Some(&owner()), &here(), |_| ProcessState::Unreadable),
            Verdict::Unknown
        );
    }

    #[test]
    fn stat_lines_parse_past_odd_command_names() {
        let line = "4242 (we) ird (name)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 18446744073709551615";
        assert_eq!(parse_stat(line), Some(('S', 987654)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) Z 0"), None);
    }

    #[test]
    fn this_process_is_alive_by_its_own_proc_entry() {
        let view = LocalProcesses;
        let me = RunOwner::current(&view).expect("linux /proc is readable");
        let here = view.identity().unwrap();
        assert_eq!(judge(Some(&me), &here, |p| view.process(p)), Verdict::Alive);
        // A pid far above pid_max is gone.
        assert_eq!(view.process(u32::MAX - 1), ProcessState::Gone);
    }
}
