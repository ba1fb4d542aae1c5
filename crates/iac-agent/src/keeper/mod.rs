//! Keeper mode (`iac-agent --keeper PROJECT`): one long-lived container per project, started by
//! the engine itself (`unless-stopped`), holding the engine's socket, that brings back the pods
//! an engine restart or a host reboot leaves down.
//!
//! Moby restores containers in no particular order and never tries again an app container
//! (network mode `container:<sidecar>`) it tried to start before its sidecar was running. The
//! keeper follows the engine's `start` events of the project's iac-managed containers (and looks
//! at every pod when it starts, and again whenever it reconnects to the events): when a sidecar is
//! running and its app's last start failed, it starts the app — once the sidecar's log since its
//! current start says its pod filter is loaded ([`decide::gate_start`]); when an app still runs in the
//! namespace its restarted sidecar left behind after `--keeper-recheck`, it restarts it
//! ([`mod@decide`] has the rules). It only ever starts and restarts containers labelled
//! `iac.managed-by=iac`, `iac.project=PROJECT`, `iac.role=app` whose sidecar is labelled the same
//! with `iac.role=envoy`; it never creates, stops or removes anything. It logs every action on
//! stderr (`docker logs`), and backs off on errors: a failed start is tried again after 1 s,
//! doubling to `--keeper-backoff-max`; a lost event stream is followed again after 1 s, doubling
//! to 30 s, then everything is looked at again. Every engine call is bounded
//! ([`engine::CALL_TIMEOUT`]): a wedged engine is an error and a back-off, never a hang.

pub mod decide;
pub mod engine;

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::log::log;
use decide::{Decision, FilterSeen, Seen, Stamp, decide, gate_start};
use engine::{Engine, demux_log, query_escape};

/// The label values the keeper relies on (the same as `iac_core::stack`; the agent does not
/// depend on iac-core).
/// The label on everything iac created.
pub const LABEL_MANAGED: &str = "iac.managed-by";
/// Its value.
pub const MANAGED_BY: &str = "iac";
/// The label naming an object's project.
pub const LABEL_PROJECT: &str = "iac.project";
/// The label saying what an object is for (`app`, `envoy`).
pub const LABEL_ROLE: &str = "iac.role";

/// How the keeper runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The project whose pods it keeps (`--keeper PROJECT`).
    pub project: String,
    /// The engine it talks to (its Unix socket).
    pub engine: Engine,
    /// How long a running app left in its sidecar's old namespace gets to end by itself.
    pub recheck: Duration,
    /// The longest delay between two tries of a failed start.
    pub backoff_max: Duration,
}

/// One app the keeper looks at again later.
#[derive(Debug, Clone, Copy)]
struct Pending {
    due: Instant,
    rechecking: bool,
    failures: u32,
}

enum Note {
    /// The event stream is (again) followed: look at everything.
    Connected,
    /// A container of the project started.
    Started { id: String, role: String },
}

/// Runs the keeper until SIGTERM or SIGINT; returns the exit code.
pub async fn run(opts: Options) -> i32 {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            log(format!("keeper: cannot handle signals: {e}"));
            return crate::supervisor::EXIT_SETUP_FAILED;
        }
    };
    log(format!(
        "keeper: keeping the pods of project {} on {} (recheck {}, back-off up to {})",
        opts.project,
        opts.engine.socket.display(),
        humantime::format_duration(opts.recheck),
        humantime::format_duration(opts.backoff_max)
    ));
    let (tx, mut rx) = mpsc::channel::<Note>(256);
    tokio::spawn(follow_events(opts.engine.clone(), opts.project.clone(), tx));
    let mut pending: BTreeMap<String, Pending> = BTreeMap::new();
    loop {
        let next = pending.values().map(|p| p.due).min();
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            note = rx.recv() => match note {
                None => {
                    log("keeper: the event follower ended; stopping");
                    return 1;
                }
                Some(Note::Connected) => {
                    match list_apps(&opts).await {
                        Ok(apps) => {
                            for app in apps {
                                look_at(&opts, &app, false, &mut pending).await;
                            }
                        }
                        Err(e) => log(format!("keeper: cannot list the project's apps: {e}")),
                    }
                }
                Some(Note::Started { id, role }) if role == "envoy" => {
                    match apps_of_sidecar(&opts, &id).await {
                        Ok(apps) => {
                            for app in apps {
                                look_at(&opts, &app, false, &mut pending).await;
                            }
                        }
                        Err(e) => log(format!("keeper: sidecar {} started, but its apps cannot be listed: {e}", short(&id))),
                    }
                }
                Some(Note::Started { id, .. }) => {
                    pending.remove(&id);
                }
            },
            _ = sleep => {
                let now = Instant::now();
                let due: Vec<(String, Pending)> = pending
                    .iter()
                    .filter(|(_, p)| p.due <= now)
                    .map(|(id, p)| (id.clone(), *p))
                    .collect();
                for (id, p) in due {
                    pending.remove(&id);
                    look_at_again(&opts, &id, p, &mut pending).await;
                }
            }
        }
    }
    log("keeper: stopping (signal)");
    0
}

/// Follows the engine's `start` events of the project's managed containers, sending
/// [`Note::Connected`] each time the stream is (re)established; reconnects with a back-off.
async fn follow_events(engine: Engine, project: String, tx: mpsc::Sender<Note>) {
    let filters = serde_json::json!({
        "type": ["container"],
        "event": ["start"],
        "label": [format!("{LABEL_MANAGED}={MANAGED_BY}"), format!("{LABEL_PROJECT}={project}")],
    });
    let path = format!("/events?filters={}", query_escape(&filters.to_string()));
    let mut delay = Duration::from_secs(1);
    loop {
        let lost = match engine.stream(&path).await {
            Ok((200, mut body)) => {
                if tx.send(Note::Connected).await.is_err() {
                    return;
                }
                let connected = Instant::now();
                let mut buf: Vec<u8> = Vec::new();
                let why = loop {
                    match body.next().await {
                        Ok(Some(piece)) => {
                            buf.extend_from_slice(&piece);
                            while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                                let line: Vec<u8> = buf.drain(..=end).collect();
                                if let Some(note) = event_note(&line)
                                    && tx.send(note).await.is_err()
                                {
                                    return;
                                }
                            }
                            if buf.len() > 1 << 20 {
                                break "an event line over 1 MiB".to_string();
                            }
                        }
                        Ok(None) => break "the engine ended the event stream".to_string(),
                        Err(e) => break e,
                    }
                };
                if connected.elapsed() > Duration::from_secs(60) {
                    delay = Duration::from_secs(1);
                }
                why
            }
            Ok((status, _)) => format!("the engine answered {status} to GET /events"),
            Err(e) => e,
        };
        log(format!(
            "keeper: not following the engine's events ({lost}); again in {}",
            humantime::format_duration(delay)
        ));
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// The note one event line makes (a container start with its role), if any.
fn event_note(line: &[u8]) -> Option<Note> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    if v["Action"] != "start" {
        return None;
    }
    let id = v["Actor"]["ID"].as_str()?.to_string();
    let role = v["Actor"]["Attributes"][LABEL_ROLE]
        .as_str()
        .unwrap_or_default()
        .to_string();
    Some(Note::Started { id, role })
}

/// The ids of the project's managed app containers (every state).
async fn list_apps(opts: &Options) -> Result<Vec<String>, String> {
    Ok(app_listing(opts)
        .await?
        .into_iter()
        .map(|(id, _)| id)
        .collect())
}

/// The project's managed app containers living in the namespace of sidecar `id`.
async fn apps_of_sidecar(opts: &Options, sidecar: &str) -> Result<Vec<String>, String> {
    Ok(app_listing(opts)
        .await?
        .into_iter()
        .filter(|(_, mode)| mode.strip_prefix("container:") == Some(sidecar))
        .map(|(id, _)| id)
        .collect())
}

/// (id, network mode) of every managed app container of the project.
async fn app_listing(opts: &Options) -> Result<Vec<(String, String)>, String> {
    let filters = serde_json::json!({
        "label": [
            format!("{LABEL_MANAGED}={MANAGED_BY}"),
            format!("{LABEL_PROJECT}={}", opts.project),
            format!("{LABEL_ROLE}=app"),
        ],
    });
    let path = format!(
        "/containers/json?all=1&filters={}",
        query_escape(&filters.to_string())
    );
    let list = opts
        .engine
        .call("GET", &path)
        .await?
        .json("listing the project's apps")?;
    Ok(list
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| {
                    Some((
                        c["Id"].as_str()?.to_string(),
                        c["HostConfig"]["NetworkMode"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default())
}

/// A container inspected: its name, labels, network mode and state.
struct Inspected {
    name: String,
    network_mode: String,
    seen: Seen,
    labels: serde_json::Value,
}

async fn inspect(opts: &Options, id: &str) -> Result<Option<Inspected>, String> {
    let what = format!("inspecting container {}", short(id));
    let reply = opts
        .engine
        .call("GET", &format!("/containers/{}/json", query_escape(id)))
        .await?;
    if reply.status == 404 {
        return Ok(None); // removed meanwhile: nothing to keep
    }
    let v = reply.json(&what)?;
    let state = &v["State"];
    Ok(Some(Inspected {
        name: v["Name"]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        network_mode: v["HostConfig"]["NetworkMode"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        seen: Seen {
            running: state["Running"].as_bool().unwrap_or(false),
            started_at: Stamp::parse(state["StartedAt"].as_str().unwrap_or_default())
                .map_err(|e| format!("{what}: State.StartedAt: {e}"))?,
            error: state["Error"].as_str().unwrap_or_default().to_string(),
        },
        labels: v["Config"]["Labels"].clone(),
    }))
}

/// The stderr of sidecar `id` since `since` (its current start), as text. An engine whose log
/// driver cannot read logs back answers an error, returned as such.
async fn sidecar_log_since(opts: &Options, id: &str, since: Stamp) -> Result<String, String> {
    let path = format!(
        "/containers/{}/logs?stdout=0&stderr=1&since={}",
        query_escape(id),
        since.unix()
    );
    let reply = opts.engine.call("GET", &path).await?;
    if reply.status != 200 {
        return Err(format!(
            "reading the log of sidecar {}: the engine answered {}: {}",
            short(id),
            reply.status,
            String::from_utf8_lossy(&reply.body).trim()
        ));
    }
    Ok(demux_log(&reply.body))
}

/// Whether `labels` make a container of this project with `role` that iac manages.
fn ours(opts: &Options, labels: &serde_json::Value, role: &str) -> bool {
    labels[LABEL_MANAGED] == MANAGED_BY
        && labels[LABEL_PROJECT] == opts.project.as_str()
        && labels[LABEL_ROLE] == role
}

async fn look_at_again(
    opts: &Options,
    id: &str,
    p: Pending,
    pending: &mut BTreeMap<String, Pending>,
) {
    look_at_with(opts, id, p.rechecking, p.failures, pending).await
}

async fn look_at(
    opts: &Options,
    id: &str,
    rechecking: bool,
    pending: &mut BTreeMap<String, Pending>,
) {
    let failures = pending.get(id).map_or(0, |p| p.failures);
    look_at_with(opts, id, rechecking, failures, pending).await
}

/// Looks at app `id` and its sidecar, and acts on [`decide`]'s answer.
async fn look_at_with(
    opts: &Options,
    id: &str,
    rechecking: bool,
    failures: u32,
    pending: &mut BTreeMap<String, Pending>,
) {
    let retry = |pending: &mut BTreeMap<String, Pending>, why: String| {
        let delay = backoff(failures, opts.backoff_max);
        log(format!(
            "keeper: {why}; trying again in {}",
            humantime::format_duration(delay)
        ));
        pending.insert(
            id.to_string(),
            Pending {
                due: Instant::now() + delay,
                rechecking,
                failures: failures + 1,
            },
        );
    };
    let app = match inspect(opts, id).await {
        Ok(Some(a)) => a,
        Ok(None) => return, // removed meanwhile: nothing to keep
        Err(e) => return retry(pending, e),
    };
    if !ours(opts, &app.labels, "app") {
        return;
    }
    let Some(sidecar_id) = app.network_mode.strip_prefix("container:") else {
        return;
    };
    let sidecar = match inspect(opts, sidecar_id).await {
        Ok(Some(s)) => s,
        Ok(None) => return,
        Err(e) => return retry(pending, format!("{}: its sidecar: {e}", app.name)),
    };
    if !ours(opts, &sidecar.labels, "envoy") {
        return;
    }
    let mut decision = decide(&sidecar.seen, &app.seen, rechecking);
    if matches!(decision, Decision::Start(_)) {
        let filter = match sidecar.seen.started_at {
            Some(at) => match sidecar_log_since(opts, sidecar_id, at).await {
                Ok(log) => FilterSeen::from_log(&log),
                Err(e) => FilterSeen::from_log_error(e),
            },
            None => FilterSeen::NotYet,
        };
        decision = gate_start(decision, &filter);
    }
    match decision {
        Decision::Leave(_) => {
            pending.remove(id);
        }
        Decision::Wait(why) => {
            let delay = backoff(failures, opts.backoff_max);
            log(format!(
                "keeper: {}: not starting yet: {why}; looking again in {}",
                app.name,
                humantime::format_duration(delay)
            ));
            pending.insert(
                id.to_string(),
                Pending {
                    due: Instant::now() + delay,
                    rechecking,
                    failures: failures + 1,
                },
            );
        }
        Decision::Recheck(why) => {
            log(format!(
                "keeper: {}: {why}; looking again in {}",
                app.name,
                humantime::format_duration(opts.recheck)
            ));
            pending.insert(
                id.to_string(),
                Pending {
                    due: Instant::now() + opts.recheck,
                    rechecking: true,
                    failures,
                },
            );
        }
        Decision::Start(why) => {
            log(format!("keeper: starting {}: {why}", app.name));
            match opts
                .engine
                .call("POST", &format!("/containers/{}/start", query_escape(id)))
                .await
            {
                Ok(r) if r.status == 204 || r.status == 304 => {
                    log(format!("keeper: started {}", app.name));
                    pending.remove(id);
                }
                Ok(r) => retry(
                    pending,
                    format!(
                        "starting {} failed: the engine answered {}: {}",
                        app.name,
                        r.status,
                        String::from_utf8_lossy(&r.body).trim()
                    ),
                ),
                Err(e) => retry(pending, format!("starting {} failed: {e}", app.name)),
            }
        }
        Decision::Restart(why) => {
            log(format!("keeper: restarting {}: {why}", app.name));
            match opts
                .engine
                .call(
                    "POST",
                    &format!("/containers/{}/restart?t=10", query_escape(id)),
                )
                .await
            {
                Ok(r) if r.status == 204 => {
                    log(format!("keeper: restarted {}", app.name));
                    pending.remove(id);
                }
                Ok(r) => retry(
                    pending,
                    format!(
                        "restarting {} failed: the engine answered {}: {}",
                        app.name,
                        r.status,
                        String::from_utf8_lossy(&r.body).trim()
                    ),
                ),
                Err(e) => retry(pending, format!("restarting {} failed: {e}", app.name)),
            }
        }
    }
}

/// The delay after `failures` failed tries: 1 s doubling, at most `max`.
fn backoff(failures: u32, max: Duration) -> Duration {
    Duration::from_secs(1)
        .saturating_mul(1u32.checked_shl(failures.min(20)).unwrap_or(u32::MAX))
        .min(max)
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_max() {
        let max = Duration::from_secs(60);
        let seq: Vec<u64> = (0..8).map(|n| backoff(n, max).as_secs()).collect();
        assert_eq!(seq, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(backoff(1000, max), max);
    }

    #[test]
    fn only_start_events_make_notes() {
        let line = br#"{"Type":"container","Action":"start","Actor":{"ID":"abc","Attributes":{"iac.role":"envoy"}}}"#;
        match event_note(line) {
            Some(Note::Started { id, role }) => {
                assert_eq!((id.as_str(), role.as_str()), ("abc", "envoy"))
            }
            _ => panic!("a start note"),
        }
        assert!(event_note(br#"{"Action":"die","Actor":{"ID":"abc"}}"#).is_none());
        assert!(event_note(b"not json").is_none());
    }
}
