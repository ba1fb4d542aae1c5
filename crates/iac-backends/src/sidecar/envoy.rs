//! The Envoy sidecar renderer: `(Mesh, service) → envoy.yaml`, a pure function rendered by
//! minijinja from `infra/templates/envoy.yaml.tmpl` (embedded; a template directory in
//! [`EnvoyConfig`] overrides it).
//!
//! Layout of the rendered config (ports from [`iac_core::MeshPorts`], defaults shown):
//!
//! | listener | address | what |
//! |---|---|---|
//! | `inbound_mtls` | `{inbound_bind}:15000` | TLS, client certificate from the CA required, ALPN h2 (+http/1.1); `/iac.controlplane.v1.ControlPlane/*` → cluster `agent` (127.0.0.1:50051, h2c), RBAC: only the control plane; everything else → cluster `app` (127.0.0.1:`app_port`, HTTP/1.1) when the service declares a port, RBAC: only services of the same project; no route → 403; `x-forwarded-client-cert` always replaced by Envoy's (subject, URI, DNS of the caller) |
//! | `outbound` | `127.0.0.1:15001` | plaintext h2/HTTP/1.1 from the app; authority `<peer>`, `<peer>:15001`, `<peer>.<project>` (and with the port) → cluster `peer_<peer>` = `<address>:<port>` over mTLS (SNI `<peer>`, peer DNS SAN `<peer>.<project>` verified, ALPN h2); before that, for each sandbox copy `<peer>--sb-<name>` of the peer, requests with `x-iac-sandbox: <name>` (first) or the baggage member `iac-sandbox=<name>` → cluster `peer_<peer>--sb-<name>` (same mTLS, SAN `<peer>--sb-<name>.<project>`) |
//! | `egress` (pods whose egress is controlled) | `127.0.0.1:15002` | the app's only way out (its `HTTPS_PROXY`/`HTTP_PROXY`): HTTP CONNECT and absolute-URL HTTP checked by authority against the service's allowlist (RBAC, one policy per rule; refused → 403, `http.egress.rbac.denied`, an `iac-egress refused` log line), TLS sent directly checked by SNI (port-443 rules); Envoy resolves names itself (dynamic forward proxy, clusters `egress`/`egress_sni`) |
//! | `stats` | `127.0.0.1:9901` | only `GET /stats/prometheus` → cluster `admin` (the admin unix socket); anything else 404 |
//! | `edge` (services with an edge only) | `{inbound_bind}:15080` | plain HTTP (h1/h2c, WebSocket upgrades), no client certificate: `/iac.controlplane.v1.ControlPlane/*` → 404, requests picking a sandbox in which this service has a copy → that copy (mTLS, as a peer), everything else → cluster `app`; the caller's `x-forwarded-client-cert` is dropped and the app sees `URI=spiffe://iac/ingress` ([`iac_core::expose::INGRESS_URI`]) |
//!
//! Admin itself listens only on the unix socket `admin_socket`.
//!
//! Inbound RBAC (`envoy.filters.http.rbac`, one policy per route) matches the verified client
//! certificate's URI SAN (`authenticated.principal_name`; Envoy tries every URI SAN, then every
//! DNS SAN, then the subject): the ControlPlane route admits exactly
//! [`CONTROL_PLANE_URI`](crate::pki::CONTROL_PLANE_URI), the app route admits the prefix
//! [`project_uri_prefix`](crate::pki::project_uri_prefix) of the mesh's project. The control
//! plane is not admitted on app routes: the prober and `iac logs` use only the ControlPlane API.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use iac_core::{EgressRule, Mesh, ServiceName, SidecarError, SidecarRenderer};
use minijinja::{Environment, UndefinedBehavior, Value};
use serde::{Deserialize, Serialize};

/// The template shipped with iac.
pub const DEFAULT_TEMPLATE: &str = include_str!("../../../../infra/templates/envoy.yaml.tmpl");
/// File name looked up in [`EnvoyConfig::template_dir`].
pub const TEMPLATE_NAME: &str = "envoy.yaml.tmpl";

/// `[sidecar]` configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct EnvoyConfig {
    /// A directory holding an `envoy.yaml.tmpl` that replaces the embedded template.
    pub template_dir: Option<PathBuf>,
}

/// Renders Envoy configs. Holds the parsed template; rendering does no I/O.
#[derive(Debug)]
pub struct EnvoyRenderer {
    env: Environment<'static>,
    origin: String,
}

impl Default for EnvoyRenderer {
    fn default() -> Self {
        EnvoyRenderer::from_template(
            DEFAULT_TEMPLATE.to_string(),
            "embedded envoy.yaml.tmpl".into(),
        )
        .expect("the embedded Envoy template parses")
    }
}

impl EnvoyRenderer {
    /// The embedded template, or `<template_dir>/envoy.yaml.tmpl` when configured.
    pub fn new(config: &EnvoyConfig) -> Result<EnvoyRenderer, SidecarError> {
        match &config.template_dir {
            None => Ok(EnvoyRenderer::default()),
            Some(dir) => {
                let path = dir.join(TEMPLATE_NAME);
                let source = std::fs::read_to_string(&path).map_err(|e| {
                    SidecarError::Template(format!(
                        "cannot read {}: {e} (expected an Envoy minijinja template)",
                        path.display()
                    ))
                })?;
                EnvoyRenderer::from_template(source, path.display().to_string())
            }
        }
    }

    /// A renderer for an explicit template source; `origin` names it in errors.
    pub fn from_template(source: String, origin: String) -> Result<EnvoyRenderer, SidecarError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .keep_trailing_newline(true)
                .build()
                .expect("default delimiters are valid"),
        );
        env.add_filter("q", quote);
        env.add_template_owned(TEMPLATE_NAME, source)
            .map_err(|e| SidecarError::Template(format!("{origin}: {e:#}")))?;
        Ok(EnvoyRenderer { env, origin })
    }

    /// The template context for `service`, after checking the mesh makes sense for it.
    pub fn context(mesh: &Mesh, service: &ServiceName) -> Result<Value, SidecarError> {
        let invalid = |why: String| SidecarError::Invalid {
            service: service.to_string(),
            why,
        };
        let me = mesh.service(service).ok_or_else(|| {
            invalid(format!(
                "not a member of the mesh of project {}",
                mesh.project
            ))
        })?;
        let p = &mesh.ports;
        let mut used: Vec<(&str, u16)> = vec![
            ("inbound", p.inbound),
            ("outbound", p.outbound),
            ("agent", p.agent),
            ("stats", p.stats),
        ];
        if let Some(app) = me.app_port {
            used.push(("app_port", app));
        }
        if me.egress.is_controlled() {
            used.push(("egress", p.egress));
        }
        if me.edge {
            if me.app_port.is_none() {
                return Err(invalid(
                    "it has an edge listener but no app port; expected an app port for the edge to route to".into(),
                ));
            }
            used.push(("edge", p.edge));
        }
        for (i, (name, port)) in used.iter().enumerate() {
            if *port == 0 {
                return Err(invalid(format!(
                    "port {name} is 0; expected a port number 1-65535"
                )));
            }
            if let Some((other, _)) = used[..i].iter().find(|(_, q)| q == port) {
                return Err(invalid(format!(
                    "ports {other} and {name} are both {port}; they share one network namespace and must differ"
                )));
            }
        }
        if p.inbound_bind.parse::<IpAddr>().is_err() {
            return Err(invalid(format!(
                "inbound_bind {:?} is not an IP address",
                p.inbound_bind
            )));
        }
        if p.admin_socket.is_empty() {
            return Err(invalid(
                "admin_socket is empty; expected a unix socket path".into(),
            ));
        }
        for (what, path) in [
            ("ca", &mesh.certs.ca),
            ("cert", &mesh.certs.cert),
            ("key", &mesh.certs.key),
        ] {
            if path.as_os_str().is_empty() {
                return Err(invalid(format!("certificate path {what} is empty")));
            }
        }
        let mut names = BTreeMap::new();
        for s in &mesh.services {
            if names.insert(s.name.as_str(), ()).is_some() {
                return Err(invalid(format!(
                    "service {} appears twice in the mesh",
                    s.name
                )));
            }
        }
        let peers: Vec<Value> = mesh
            .peers_of(service)
            .into_iter()
            .map(|peer| {
                if peer.address.trim().is_empty() || peer.address.contains(char::is_whitespace) {
                    return Err(invalid(format!(
                        "peer {} has an invalid address {:?}",
                        peer.name, peer.address
                    )));
                }
                if peer.port == 0 {
                    return Err(invalid(format!("peer {} has port 0", peer.name)));
                }
                Ok(obj([
                    ("name", Value::from(peer.name.as_str())),
                    ("address", Value::from(peer.address.as_str())),
                    ("port", Value::from(peer.port)),
                    (
                        "static",
                        Value::from(peer.address.parse::<IpAddr>().is_ok()),
                    ),
                    ("copies", copy_routes(mesh, &peer.name, service)),
                ]))
            })
            .collect::<Result<_, _>>()?;
        // Every copy a route names: of a peer, or (for the edge) of this service itself; never
        // this member, when it is a copy.
        let mut copy_clusters = Vec::new();
        let baseline_peers = mesh.peers_of(service).into_iter().map(|p| &p.name);
        for of in baseline_peers.chain(me.sandbox.is_none().then_some(&me.name)) {
            for c in mesh
                .copies_of(of)
                .into_iter()
                .filter(|c| &c.name != service)
            {
                if c.address.trim().is_empty() || c.address.contains(char::is_whitespace) {
                    return Err(invalid(format!(
                        "sandbox copy {} has an invalid address {:?}",
                        c.name, c.address
                    )));
                }
                if c.port == 0 {
                    return Err(invalid(format!("sandbox copy {} has port 0", c.name)));
                }
                copy_clusters.push(obj([
                    ("name", Value::from(c.name.as_str())),
                    ("address", Value::from(c.address.as_str())),
                    ("port", Value::from(c.port)),
                    ("static", Value::from(c.address.parse::<IpAddr>().is_ok())),
                ]));
            }
        }
        for s in &mesh.services {
            if let Some(c) = &s.sandbox
                && iac_core::sandbox::copy_name(&c.of, &c.sandbox)
                    .ok()
                    .as_ref()
                    != Some(&s.name)
            {
                return Err(invalid(format!(
                    "member {} says it copies {} in sandbox {}; expected it to be named {}{}{}",
                    s.name,
                    c.of,
                    c.sandbox,
                    c.of,
                    iac_core::sandbox::COPY_INFIX,
                    c.sandbox
                )));
            }
        }
        let self_copies = if me.sandbox.is_none() && me.edge {
            copy_routes(mesh, &me.name, service)
        } else {
            Value::from(Vec::<Value>::new())
        };
        let path = |p: &PathBuf| Value::from(p.to_string_lossy().into_owned());
        Ok(obj([
            ("project", Value::from(mesh.project.as_str())),
            ("service", Value::from(service.as_str())),
            ("inbound_bind", Value::from(p.inbound_bind.as_str())),
            ("inbound_port", Value::from(p.inbound)),
            ("outbound_port", Value::from(p.outbound)),
            ("agent_port", Value::from(p.agent)),
            ("stats_port", Value::from(p.stats)),
            (
                "app_port",
                me.app_port.map(Value::from).unwrap_or(Value::from(())),
            ),
            (
                "edge_port",
                if me.edge {
                    Value::from(p.edge)
                } else {
                    Value::from(())
                },
            ),
            ("edge_principal", Value::from(iac_core::expose::INGRESS_URI)),
            ("admin_socket", Value::from(p.admin_socket.as_str())),
            ("ca", path(&mesh.certs.ca)),
            ("cert", path(&mesh.certs.cert)),
            ("key", path(&mesh.certs.key)),
            (
                "control_plane_principal",
                Value::from(crate::pki::CONTROL_PLANE_URI),
            ),
            (
                "project_principal_prefix",
                Value::from(crate::pki::project_uri_prefix(mesh.project.as_str())),
            ),
            ("peers", Value::from(peers)),
            ("copy_clusters", Value::from(copy_clusters)),
            ("self_copies", self_copies),
            (
                "sandbox_header",
                Value::from(iac_core::sandbox::SANDBOX_HEADER),
            ),
            ("baggage_key", Value::from(iac_core::sandbox::BAGGAGE_KEY)),
            (
                "sandbox_name_regex",
                Value::from(iac_core::sandbox::sandbox_name_regex()),
            ),
            (
                "egress_port",
                if me.egress.is_controlled() {
                    Value::from(p.egress)
                } else {
                    Value::from(())
                },
            ),
            ("egress_rules", egress_rules(me.egress.rules())),
            ("egress_sni", egress_sni(me.egress.rules())),
        ]))
    }
}

impl SidecarRenderer for EnvoyRenderer {
    fn render(&self, mesh: &Mesh, service: &ServiceName) -> Result<String, SidecarError> {
        let ctx = EnvoyRenderer::context(mesh, service)?;
        let tmpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| SidecarError::Template(e.to_string()))?;
        let yaml = tmpl.render(ctx).map_err(|e| {
            SidecarError::Template(format!("{}: rendering for {service}: {e:#}", self.origin))
        })?;
        // A template (especially an override) must produce a YAML mapping; catch it here rather
        // than in a crash-looping container.
        match yaml_serde::from_str::<yaml_serde::Value>(&yaml) {
            Ok(yaml_serde::Value::Mapping(_)) => Ok(yaml),
            Ok(_) => Err(SidecarError::Template(format!(
                "{}: rendered output is not a YAML mapping",
                self.origin
            ))),
            Err(e) => Err(SidecarError::Template(format!(
                "{}: rendered output is not valid YAML: {e}",
                self.origin
            ))),
        }
    }
}

/// The allowlist as the template's RBAC policies: one per rule, named by the rule, matching the
/// request's `:authority` — `host:port` (CONNECT, or an absolute URL with a port), plus the bare
/// host for port 80 (an absolute `http://` URL without one); a `*.suffix` rule matches by suffix
/// (`.suffix:port`), which never matches the apex `suffix` itself.
fn egress_rules(rules: &[EgressRule]) -> Value {
    let matcher =
        |kind: &str, v: String| obj([("kind", Value::from(kind)), ("value", Value::from(v))]);
    Value::from(
        rules
            .iter()
            .map(|r| {
                let kind = if r.wildcard { "suffix" } else { "exact" };
                let host = if r.wildcard {
                    format!(".{}", r.host)
                } else {
                    r.host.clone()
                };
                let mut authorities = vec![matcher(kind, format!("{host}:{}", r.port))];
                if r.port == 80 {
                    authorities.push(matcher(kind, host));
                }
                obj([
                    ("name", Value::from(r.to_string())),
                    ("authorities", Value::from(authorities)),
                ])
            })
            .collect::<Vec<_>>(),
    )
}

/// Server names the egress listener's TLS chain admits: the hosts of the port-443 rules that are
/// names (an IP address is never an SNI), `*.suffix` as Envoy's wildcard server name.
fn egress_sni(rules: &[EgressRule]) -> Value {
    let mut names: Vec<String> = rules
        .iter()
        .filter(|r| r.port == 443 && r.host.parse::<IpAddr>().is_err())
        .map(EgressRule::host_pattern)
        .collect();
    names.sort();
    names.dedup();
    Value::from(names)
}

/// The sandbox routes to the copies of `of` (never to `except`, the member being rendered):
/// name, sandbox and the baggage regex of each, in sandbox order.
fn copy_routes(mesh: &Mesh, of: &ServiceName, except: &ServiceName) -> Value {
    Value::from(
        mesh.copies_of(of)
            .into_iter()
            .filter(|c| &c.name != except)
            .filter_map(|c| {
                let sb = &c.sandbox.as_ref()?.sandbox;
                Some(obj([
                    ("name", Value::from(c.name.as_str())),
                    ("sandbox", Value::from(sb.as_str())),
                    (
                        "baggage_regex",
                        Value::from(iac_core::sandbox::baggage_regex(sb)),
                    ),
                ]))
            })
            .collect::<Vec<_>>(),
    )
}

/// A template map from fixed keys.
fn obj<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    Value::from(
        pairs
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect::<BTreeMap<String, Value>>(),
    )
}

/// `q` filter: a value as a JSON string, which YAML reads verbatim.
fn quote(v: Value) -> String {
    let s = match v.as_str() {
        Some(s) => s.to_string(),
        None => v.to_string(),
    };
    serde_json::to_string(&s).expect("a string serializes")
}
