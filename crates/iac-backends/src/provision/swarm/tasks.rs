//! A service's tasks, found through the Swarm API: which run, where each one's mTLS listener is
//! published (its node's address and the host port the engine chose for that task), and why the
//! others failed. The control plane (health, `iac logs`, the admin API) reaches every task there.
//!
//! Which address: on a swarm of several nodes, the task's node as the swarm knows it (the node's
//! `Status.Addr`, what it advertised), since the port is published on that node only. On a swarm of
//! one node, 127.0.0.1: the ports are on the engine iac talks to, and the address it advertised may
//! not be reachable from here (a VM-internal one, Docker Desktop's say). A node whose address is
//! unknown, unspecified or loopback is reached on 127.0.0.1 too.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use iac_core::ProvisionError;

use crate::engine::swarm::{SwarmEngine, Task, TaskState};

/// One running task and where its inbound port is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskEndpoint {
    /// Swarm's task id.
    pub task_id: String,
    /// The task's slot (replica number).
    pub slot: i64,
    /// The host address of its published inbound port, once the engine reports it.
    pub addr: Option<SocketAddr>,
}

/// What the tasks of a service look like now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskView {
    /// Tasks that should run and do (for a service with a HEALTHCHECK Swarm reports `running`
    /// only once it is healthy), by slot.
    pub running: Vec<TaskEndpoint>,
    /// The most recent failure of a task (state, error), if any.
    pub last_error: Option<String>,
}

/// Where a task on `node` is reached (`nodes`: every node of the swarm, id → address).
pub fn node_ip(nodes: &HashMap<String, IpAddr>, node: Option<&str>) -> IpAddr {
    let loopback = IpAddr::from([127, 0, 0, 1]);
    if nodes.len() <= 1 {
        return loopback;
    }
    node.and_then(|n| nodes.get(n))
        .copied()
        .filter(|ip| !ip.is_unspecified() && !ip.is_loopback())
        .unwrap_or(loopback)
}

/// Reads `tasks` (of one service): running ones with their endpoints (`nodes`: every node of the
/// swarm, id → address; see [`node_ip`]), and the newest error.
pub fn task_view(tasks: &[Task], nodes: &HashMap<String, IpAddr>, port: u16) -> TaskView {
    let mut view = TaskView::default();
    let mut newest_failure: Option<(String, String)> = None;
    for t in tasks {
        let status = t.status.as_ref();
        let state = status.and_then(|s| s.state);
        if t.desired_state == Some(TaskState::RUNNING) && state == Some(TaskState::RUNNING) {
            let published = status
                .and_then(|s| s.port_status.as_ref())
                .and_then(|p| p.ports.as_ref())
                .and_then(|ports| {
                    ports
                        .iter()
                        .find(|p| p.target_port == Some(i64::from(port)))
                        .and_then(|p| p.published_port)
                })
                .and_then(|p| u16::try_from(p).ok());
            let ip = node_ip(nodes, t.node_id.as_deref());
            view.running.push(TaskEndpoint {
                task_id: t.id.clone().unwrap_or_default(),
                slot: t.slot.unwrap_or_default(),
                addr: published.map(|p| SocketAddr::new(ip, p)),
            });
        } else if matches!(
            state,
            Some(TaskState::FAILED | TaskState::REJECTED | TaskState::SHUTDOWN)
        ) {
            let Some(err) = status
                .and_then(|s| s.err.clone().or_else(|| s.message.clone()))
                .filter(|e| !e.is_empty())
            else {
                continue;
            };
            let when = status
                .and_then(|s| s.timestamp.as_ref())
                .map(|t| format!("{t:?}"))
                .unwrap_or_default();
            let text = format!(
                "task {} {}: {err}",
                t.slot.unwrap_or_default(),
                state.map(|s| s.to_string()).unwrap_or_default()
            );
            if newest_failure.as_ref().is_none_or(|(w, _)| when > *w) {
                newest_failure = Some((when, text));
            }
        }
    }
    view.running.sort_by_key(|t| t.slot);
    view.last_error = newest_failure.map(|(_, t)| t);
    view
}

/// The tasks of service `service_id` and the addresses of the nodes.
pub async fn observe(
    engine: &dyn SwarmEngine,
    service_id: &str,
    port: u16,
) -> Result<TaskView, ProvisionError> {
    let tasks = engine.tasks(service_id).await?;
    let nodes = engine.node_addresses().await?;
    Ok(task_view(&tasks, &nodes, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::swarm::{EndpointPortConfig, PortStatus, TaskStatus};

    fn task(slot: i64, desired: TaskState, state: TaskState, port: Option<i64>) -> Task {
        Task {
            id: Some(format!("t{slot}")),
            slot: Some(slot),
            node_id: Some("n1".into()),
            desired_state: Some(desired),
            status: Some(TaskStatus {
                state: Some(state),
                port_status: port.map(|p| PortStatus {
                    ports: Some(vec![EndpointPortConfig {
                        target_port: Some(15000),
                        published_port: Some(p),
                        ..Default::default()
                    }]),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn running_tasks_with_their_ports() {
        let nodes = HashMap::from([("n1".to_string(), "127.0.0.1".parse().unwrap())]);
        let tasks = vec![
            task(2, TaskState::RUNNING, TaskState::RUNNING, Some(30002)),
            task(1, TaskState::RUNNING, TaskState::RUNNING, Some(30001)),
            task(1, TaskState::SHUTDOWN, TaskState::RUNNING, Some(30009)),
            task(3, TaskState::RUNNING, TaskState::STARTING, None),
        ];
        let v = task_view(&tasks, &nodes, 15000);
        let addrs: Vec<_> = v
            .running
            .iter()
            .map(|t| t.addr.unwrap().to_string())
            .collect();
        assert_eq!(addrs, ["127.0.0.1:30001", "127.0.0.1:30002"]);
        assert_eq!(v.last_error, None);
        // An unknown node is reached on loopback (a single-node swarm).
        let v = task_view(&tasks[..1], &HashMap::new(), 15000);
        assert_eq!(v.running[0].addr.unwrap().to_string(), "127.0.0.1:30002");
    }

    #[test]
    fn several_nodes_are_reached_at_each_task_node_address() {
        let nodes = HashMap::from([
            ("n1".to_string(), "10.213.0.2".parse().unwrap()),
            ("n2".to_string(), "10.213.0.3".parse().unwrap()),
            ("m".to_string(), "0.0.0.0".parse().unwrap()),
            ("lo".to_string(), "127.0.0.1".parse().unwrap()),
        ]);
        let mut tasks = vec![
            task(1, TaskState::RUNNING, TaskState::RUNNING, Some(30001)),
            task(2, TaskState::RUNNING, TaskState::RUNNING, Some(30002)),
            task(3, TaskState::RUNNING, TaskState::RUNNING, Some(30003)),
            task(4, TaskState::RUNNING, TaskState::RUNNING, Some(30004)),
            task(5, TaskState::RUNNING, TaskState::RUNNING, Some(30005)),
        ];
        tasks[1].node_id = Some("n2".into());
        tasks[2].node_id = Some("m".into());
        tasks[3].node_id = Some("lo".into());
        tasks[4].node_id = Some("gone".into());
        let addrs: Vec<_> = task_view(&tasks, &nodes, 15000)
            .running
            .iter()
            .map(|t| t.addr.unwrap().to_string())
            .collect();
        assert_eq!(
            addrs,
            [
                "10.213.0.2:30001",
                "10.213.0.3:30002",
                // unspecified, loopback or unknown: this host
                "127.0.0.1:30003",
                "127.0.0.1:30004",
                "127.0.0.1:30005",
            ]
        );
    }

    #[test]
    fn a_single_node_is_reached_on_loopback_whatever_it_advertised() {
        // Docker Desktop's VM address, or an engine advertising on its bridge: not for us to dial.
        let nodes = HashMap::from([("n1".to_string(), "192.168.65.3".parse().unwrap())]);
        let tasks = [task(1, TaskState::RUNNING, TaskState::RUNNING, Some(30001))];
        let v = task_view(&tasks, &nodes, 15000);
        assert_eq!(v.running[0].addr.unwrap().to_string(), "127.0.0.1:30001");
        assert_eq!(node_ip(&nodes, Some("n1")), IpAddr::from([127, 0, 0, 1]));
    }

    #[test]
    fn the_newest_failure_is_reported() {
        let mut old = task(1, TaskState::SHUTDOWN, TaskState::FAILED, None);
        let s = old.status.as_mut().unwrap();
        s.err = Some("task: non-zero exit (1)".into());
        s.timestamp = Some("2026-01-01T00:00:01Z".into());
        let mut new = old.clone();
        let s = new.status.as_mut().unwrap();
        s.err = Some("task: non-zero exit (3)".into());
        s.timestamp = Some("2026-01-01T00:00:09Z".into());
        let v = task_view(&[old, new], &HashMap::new(), 15000);
        assert!(v.running.is_empty());
        assert_eq!(
            v.last_error.as_deref(),
            Some("task 1 failed: task: non-zero exit (3)")
        );
    }
}
