//! The mesh as the sidecar renderer sees it: which services exist, how peers are addressed, which
//! ports the sidecar uses and where its certificates are. Pure data; [`crate::SidecarRenderer`]
//! turns it into one Envoy config per service.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::egress::EgressPolicy;
use crate::name::{ProjectName, ServiceName};
use crate::sandbox::SandboxCopy;

/// Certificate files: a CA bundle, a certificate and its key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CertPaths {
    /// The CA bundle peers are verified against.
    pub ca: PathBuf,
    /// The certificate.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

impl CertPaths {
    /// Where every sidecar finds its certificates inside its container.
    pub fn in_container() -> CertPaths {
        CertPaths {
            ca: "/etc/iac/certs/ca.pem".into(),
            cert: "/etc/iac/certs/cert.pem".into(),
            key: "/etc/iac/certs/key.pem".into(),
        }
    }
}

/// Certificates issued for a service, plus a fingerprint that changes whenever any of them does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCerts {
    /// Host paths of the files.
    pub paths: CertPaths,
    /// Changes whenever any of the files does (part of the spec hash).
    pub fingerprint: String,
}

/// Ports and addresses a sidecar uses. Defaults are the production layout; tests remap them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshPorts {
    /// Address the inbound mTLS listener binds (`0.0.0.0` in a container).
    pub inbound_bind: String,
    /// The inbound mTLS listener's port.
    pub inbound: u16,
    /// The outbound listener on loopback the app dials peers through.
    pub outbound: u16,
    /// The agent's gRPC port on loopback.
    pub agent: u16,
    /// Prometheus stats listener on loopback.
    pub stats: u16,
    /// The edge listener (plain HTTP to the app, no client certificate), bound like `inbound`
    /// in services that have an edge; the host reaches it through a published port.
    pub edge: u16,
    /// Envoy admin socket (a pipe, never TCP).
    pub admin_socket: String,
    /// The egress listener on loopback (HTTP CONNECT, HTTP proxying, TLS by SNI) the app's
    /// `HTTPS_PROXY`/`HTTP_PROXY` point at, in pods whose egress is controlled.
    #[serde(default = "default_egress_port")]
    pub egress: u16,
}

/// The egress listener's default port.
pub const DEFAULT_EGRESS_PORT: u16 = 15002;

fn default_egress_port() -> u16 {
    DEFAULT_EGRESS_PORT
}

impl Default for MeshPorts {
    fn default() -> Self {
        MeshPorts {
            inbound_bind: "0.0.0.0".into(),
            inbound: 15000,
            outbound: 15001,
            agent: 50051,
            stats: 9901,
            edge: 15080,
            admin_socket: "/tmp/envoy-admin.sock".into(),
            egress: DEFAULT_EGRESS_PORT,
        }
    }
}

/// The port the agent answers Kubernetes' probes on (`iac-agent --health-listen`) in a pod
/// rendered for Kubernetes.
pub const HEALTH_PROBE_PORT: u16 = 15021;

impl MeshPorts {
    /// Every TCP port the sidecar side of a pod uses, with what it is, by port: Envoy's
    /// listeners (inbound mTLS, outbound, edge, stats), the agent's gRPC port and its probe port
    /// ([`HEALTH_PROBE_PORT`]). Envoy's admin is a unix socket, no port. The app shares the pod's
    /// network namespace: an app port among these would take the sidecar's port, or send the
    /// sidecar's traffic for the app to a listener of its own (the edge to the outbound
    /// listener, say).
    pub fn reserved(&self) -> Vec<(u16, &'static str)> {
        let mut v = vec![
            (self.inbound, "inbound mTLS"),
            (self.outbound, "outbound"),
            (self.egress, "egress"),
            (self.edge, "edge"),
            (self.stats, "stats"),
            (self.agent, "agent gRPC"),
            (HEALTH_PROBE_PORT, "health probe"),
        ];
        v.sort();
        v.dedup_by_key(|(p, _)| *p);
        v
    }

    /// The reserved ports as text: `9901 (stats), 15000 (inbound mTLS), …`.
    pub fn reserved_list(&self) -> String {
        self.reserved()
            .iter()
            .map(|(p, what)| format!("{p} ({what})"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One member of the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshService {
    /// The service.
    pub name: ServiceName,
    /// How peers reach it: the DNS alias on the project network (its name), or an IP in tests.
    pub address: String,
    /// Its inbound mTLS port as peers dial it.
    pub port: u16,
    /// The app's own HTTP port, if it declares one (inbound non-gRPC traffic goes there).
    pub app_port: Option<u16>,
    /// Whether its sidecar serves the edge listener (needs `app_port`; see [`crate::expose`]).
    #[serde(default)]
    pub edge: bool,
    /// Where its app may connect outside the mesh (its sidecar's egress listener).
    #[serde(default)]
    pub egress: EgressPolicy,
    /// Set when it is a sandbox copy of a baseline service (its name is then
    /// [`crate::sandbox::copy_name`]): peers route to it only requests that pick its sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxCopy>,
}

/// Every service of a project as their sidecars see each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mesh {
    /// The project.
    pub project: ProjectName,
    /// Its services.
    pub services: Vec<MeshService>,
    /// The sidecar port layout.
    pub ports: MeshPorts,
    /// Certificate paths as the sidecar sees them.
    pub certs: CertPaths,
}

impl Mesh {
    /// The member named `name`.
    pub fn service(&self, name: &ServiceName) -> Option<&MeshService> {
        self.services.iter().find(|s| &s.name == name)
    }

    /// Every baseline member except `name`, in name order (sandbox copies are reached only
    /// through the routes of the service they copy: [`Mesh::copies_of`]).
    pub fn peers_of(&self, name: &ServiceName) -> Vec<&MeshService> {
        let mut v: Vec<_> = self
            .services
            .iter()
            .filter(|s| &s.name != name && s.sandbox.is_none())
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The sandbox copies of the baseline service `name`, by sandbox name.
    pub fn copies_of(&self, name: &ServiceName) -> Vec<&MeshService> {
        let mut v: Vec<_> = self
            .services
            .iter()
            .filter(|s| s.sandbox.as_ref().is_some_and(|c| &c.of == name))
            .collect();
        v.sort_by(|a, b| a.sandbox.cmp(&b.sandbox));
        v
    }

    /// The same mesh without any sandbox copy: what the baseline's spec hashes are computed
    /// from, so deploying or removing a sandbox never makes a baseline pod "changed".
    pub fn baseline(&self) -> Mesh {
        let mut m = self.clone();
        m.services.retain(|s| s.sandbox.is_none());
        m
    }
}
