//! Envoy renderer: golden files for a 3-service mesh (UPDATE_GOLDEN=1 rewrites them), structural
//! checks on the parsed YAML, input validation, template overrides, and `envoy --mode validate`
//! with the real Envoy on every rendered config (several meshes, with and without app ports,
//! remapped ports, DNS and IP peers, egress controlled).
//!
//! Envoy is required when IAC_REQUIRE_ENVOY=1 (CI); otherwise a missing binary skips the
//! validation test with a loud message.

use std::path::{Path, PathBuf};

use iac_backends::pki::{DevCa, PkiConfig};
use iac_backends::sidecar::envoy_bin;
use iac_backends::sidecar::{EnvoyConfig, EnvoyRenderer};
use iac_core::{
    CertPaths, EgressPolicy, Mesh, MeshPorts, MeshService, ProjectName, ServiceName,
    SidecarRenderer,
};
use yaml_serde::Value as Yaml;

fn svc(name: &str) -> ServiceName {
    ServiceName::new(name).unwrap()
}

fn member(name: &str, address: &str, port: u16, app_port: Option<u16>) -> MeshService {
    MeshService {
        name: svc(name),
        address: address.into(),
        port,
        app_port,
        edge: false,
        egress: Default::default(),
        sandbox: None,
    }
}

/// The production layout: three services, DNS peers, in-container cert paths; `web` has an edge.
fn shop_mesh() -> Mesh {
    Mesh {
        project: ProjectName::new("shop").unwrap(),
        services: vec![
            MeshService {
                edge: true,
                ..member("web", "web", 15000, Some(3000))
            },
            member("api", "api", 15000, Some(8080)),
            member("worker", "worker", 15000, None),
        ],
        ports: MeshPorts::default(),
        certs: CertPaths::in_container(),
    }
}

/// The shop mesh with egress controlled: `api` may reach two names, a suffix and an address
/// (two on port 80), `worker` and `web` nothing at all.
fn shop_mesh_with_egress() -> Mesh {
    let mut m = shop_mesh();
    for s in &mut m.services {
        s.egress = if s.name.as_str() == "api" {
            EgressPolicy::Allow(
                iac_core::egress::parse_rules(&[
                    "api.stripe.com:443",
                    "*.pypi.org:443",
                    "10.0.0.7:443",
                    "mirror.internal:80",
                    "*.debian.org:80",
                ])
                .unwrap(),
            )
        } else {
            EgressPolicy::Allow(Vec::new())
        };
    }
    m
}

/// The shop mesh with sandboxes: `api` has copies in sandboxes `feat` and `zz-other`, `web`
/// (the one with an edge) a copy in `feat`.
fn shop_mesh_with_sandboxes() -> Mesh {
    let mut m = shop_mesh();
    for (of, sb, app_port) in [
        ("api", "feat", 8080),
        ("api", "zz-other", 8080),
        ("web", "feat", 3000),
    ] {
        let sandbox = iac_core::SandboxName::new(sb).unwrap();
        let name = iac_core::sandbox::copy_name(&svc(of), &sandbox).unwrap();
        m.services.push(MeshService {
            sandbox: Some(iac_core::SandboxCopy {
                of: svc(of),
                sandbox,
            }),
            ..member(name.as_str(), name.as_str(), 15000, Some(app_port))
        });
    }
    m
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn check_golden(name: &str, actual: &str) {
    let path = golden_dir().join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(golden_dir()).unwrap();
        std::fs::write(&path, actual).unwrap();
        eprintln!("updated {}", path.display());
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    if expected != actual {
        let diff: Vec<String> = expected
            .lines()
            .zip(actual.lines())
            .enumerate()
            .filter(|(_, (e, a))| e != a)
            .take(10)
            .map(|(i, (e, a))| format!("line {}:\n  golden: {e}\n  actual: {a}", i + 1))
            .collect();
        panic!(
            "{} differs from the render ({} vs {} lines); first differences:\n{}\nrun with UPDATE_GOLDEN=1 if the change is intended",
            path.display(),
            expected.lines().count(),
            actual.lines().count(),
            diff.join("\n")
        );
    }
}

#[test]
fn golden_three_service_mesh() {
    let r = EnvoyRenderer::default();
    let mesh = shop_mesh();
    for name in ["api", "web", "worker"] {
        let yaml = r.render(&mesh, &svc(name)).unwrap();
        check_golden(&format!("envoy_shop_{name}.yaml"), &yaml);
    }
}

#[test]
fn golden_egress_listener() {
    let r = EnvoyRenderer::default();
    let mesh = shop_mesh_with_egress();
    for name in ["api", "worker"] {
        let yaml = r.render(&mesh, &svc(name)).unwrap();
        check_golden(&format!("envoy_shop_egress_{name}.yaml"), &yaml);
    }
}

#[test]
fn golden_sandbox_routes() {
    let r = EnvoyRenderer::default();
    let mesh = shop_mesh_with_sandboxes();
    for name in ["web", "worker", "api--sb-feat"] {
        let yaml = r.render(&mesh, &svc(name)).unwrap();
        check_golden(&format!("envoy_shop_sandbox_{name}.yaml"), &yaml);
    }
}

/// The routes of one outbound virtual host, as (header name, matcher kind, value, cluster).
fn vhost_routes(cfg: &Yaml, vhost: &str) -> Vec<(String, String, String, String)> {
    let vhosts = get(hcm(listener(cfg, "outbound")), "route_config.virtual_hosts");
    let vh = vhosts
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| s(get(v, "name")) == vhost)
        .unwrap_or_else(|| panic!("no virtual host {vhost}"));
    routes_of(get(vh, "routes"))
}

/// The three routes to the app that end a route list (edge or inbound): a valid
/// `x-iac-sandbox` and no `baggage` → `baggage` set to the member; with a `baggage` → the member
/// appended; anything else → as it came.
fn app_routes_copy_the_header_into_baggage(routes: &[Yaml]) {
    assert!(routes.len() >= 3, "{routes:?}");
    let app = &routes[routes.len() - 3..];
    let mut added = Vec::new();
    for (i, r) in app.iter().enumerate() {
        assert_eq!(s(get(r, "match.prefix")), "/");
        assert_eq!(s(get(r, "route.cluster")), "app");
        let headers = r.get("match").and_then(|m| m.get("headers"));
        if i == 2 {
            assert!(
                headers.is_none(),
                "the last app route takes anything: {r:?}"
            );
        } else {
            let h = headers.unwrap().as_sequence().unwrap();
            assert_eq!(s(get(&h[0], "name")), "x-iac-sandbox");
            assert_eq!(
                s(get(&h[0], "string_match.safe_regex.regex")),
                iac_core::sandbox::sandbox_name_regex()
            );
            assert_eq!(s(get(&h[1], "name")), "baggage");
            assert_eq!(get(&h[1], "present_match").as_bool(), Some(true));
            assert_eq!(
                h[1].get("invert_match")
                    .and_then(Yaml::as_bool)
                    .unwrap_or(false),
                i == 0,
                "the first needs no baggage, the second one: {r:?}"
            );
        }
        added.push(
            r.get("request_headers_to_add")
                .and_then(Yaml::as_sequence)
                .and_then(|adds| {
                    adds.iter()
                        .find(|a| s(get(a, "header.key")) == "baggage")
                        .map(|a| {
                            assert_eq!(s(get(a, "append_action")), "OVERWRITE_IF_EXISTS_OR_ADD");
                            s(get(a, "header.value")).to_string()
                        })
                }),
        );
    }
    assert_eq!(
        added,
        [
            Some("iac-sandbox=%REQ(x-iac-sandbox)%".to_string()),
            Some("%REQ(baggage)%,iac-sandbox=%REQ(x-iac-sandbox)%".to_string()),
            None
        ]
    );
}

fn routes_of(routes: &Yaml) -> Vec<(String, String, String, String)> {
    routes
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| {
            let cluster = r
                .get("route")
                .and_then(|x| x.get("cluster"))
                .map(|c| s(c).to_string())
                .unwrap_or_default();
            match r.get("match").and_then(|m| m.get("headers")) {
                None => (String::new(), String::new(), String::new(), cluster),
                Some(h) => {
                    let h = &h.as_sequence().unwrap()[0];
                    let sm = get(h, "string_match");
                    let (kind, value) = if let Some(e) = sm.get("exact") {
                        ("exact", s(e).to_string())
                    } else {
                        ("safe_regex", s(get(sm, "safe_regex.regex")).to_string())
                    };
                    (s(get(h, "name")).to_string(), kind.into(), value, cluster)
                }
            }
        })
        .collect()
}

#[test]
fn sandbox_copies_get_header_and_baggage_routes_before_the_baseline() {
    let r = EnvoyRenderer::default();
    let mesh = shop_mesh_with_sandboxes();
    let cfg: Yaml = yaml_serde::from_str(&r.render(&mesh, &svc("worker")).unwrap()).unwrap();
    let api = vhost_routes(&cfg, "peer_api");
    let feat = iac_core::sandbox::baggage_regex(&iac_core::SandboxName::new("feat").unwrap());
    let other = iac_core::sandbox::baggage_regex(&iac_core::SandboxName::new("zz-other").unwrap());
    let t = |h: &str, k: &str, v: &str, c: &str| (h.into(), k.into(), v.to_string(), c.into());
    assert_eq!(
        api,
        vec![
            t("x-iac-sandbox", "exact", "feat", "peer_api--sb-feat"),
            t(
                "x-iac-sandbox",
                "exact",
                "zz-other",
                "peer_api--sb-zz-other"
            ),
            t("baggage", "safe_regex", &feat, "peer_api--sb-feat"),
            t("baggage", "safe_regex", &other, "peer_api--sb-zz-other"),
            t("", "", "", "peer_api"),
        ]
    );
    // Copies get no virtual host of their own.
    assert_eq!(vhost_routes(&cfg, "peer_web").len(), 3);
    let vhosts = get(
        hcm(listener(&cfg, "outbound")),
        "route_config.virtual_hosts",
    );
    assert!(
        vhosts
            .as_sequence()
            .unwrap()
            .iter()
            .all(|v| !s(get(v, "name")).contains("--sb-")),
        "copies are reached only through their baseline's routes"
    );
    // Each copy's cluster: mTLS to its own name, its certificate must name it in the project.
    for copy in ["api--sb-feat", "api--sb-zz-other", "web--sb-feat"] {
        let c = cluster(&cfg, &format!("peer_{copy}")).unwrap_or_else(|| panic!("{copy}"));
        let san = get(
            c,
            "transport_socket.typed_config.common_tls_context.validation_context.match_typed_subject_alt_names",
        );
        assert_eq!(
            s(get(&san.as_sequence().unwrap()[0], "matcher.exact")),
            format!("{copy}.shop")
        );
    }
    // The edge of web sends requests that pick a sandbox of web's to the copy, others to the app.
    let cfg: Yaml = yaml_serde::from_str(&r.render(&mesh, &svc("web")).unwrap()).unwrap();
    let edge = routes_of(get(
        &get(hcm(listener(&cfg, "edge")), "route_config.virtual_hosts")
            .as_sequence()
            .unwrap()[0],
        "routes",
    ));
    assert_eq!(edge.len(), 6, "{edge:?}");
    assert_eq!(
        edge[1],
        t("x-iac-sandbox", "exact", "feat", "peer_web--sb-feat")
    );
    assert_eq!(
        edge[2],
        t("baggage", "safe_regex", &feat, "peer_web--sb-feat")
    );
    // Then the app, with a valid x-iac-sandbox copied into baggage (for the copies of peers).
    app_routes_copy_the_header_into_baggage(
        get(
            &get(hcm(listener(&cfg, "edge")), "route_config.virtual_hosts")
                .as_sequence()
                .unwrap()[0],
            "routes",
        )
        .as_sequence()
        .unwrap(),
    );
    // A copy routes to its peers' copies too, but never to itself; it has no edge copies.
    let cfg: Yaml = yaml_serde::from_str(&r.render(&mesh, &svc("api--sb-feat")).unwrap()).unwrap();
    assert!(cluster(&cfg, "peer_api--sb-feat").is_none());
    assert!(cluster(&cfg, "peer_api--sb-zz-other").is_some());
    assert!(cluster(&cfg, "peer_web--sb-feat").is_some());
    assert_eq!(vhost_routes(&cfg, "peer_api").len(), 3);
}

#[test]
fn a_copy_named_unlike_what_it_copies_is_refused() {
    let mut mesh = shop_mesh_with_sandboxes();
    let last = mesh.services.last_mut().unwrap();
    last.sandbox = Some(iac_core::SandboxCopy {
        of: svc("api"),
        sandbox: iac_core::SandboxName::new("feat").unwrap(),
    });
    let e = EnvoyRenderer::default()
        .render(&mesh, &svc("worker"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("web--sb-feat") && e.contains("api--sb-feat"),
        "{e}"
    );
}

#[test]
fn the_egress_listener_admits_the_allowlist_by_authority_and_sni() {
    let r = EnvoyRenderer::default();
    let cfg: Yaml =
        yaml_serde::from_str(&r.render(&shop_mesh_with_egress(), &svc("api")).unwrap()).unwrap();
    let egress = listener(&cfg, "egress");
    assert_eq!(
        s(get(egress, "address.socket_address.address")),
        "127.0.0.1"
    );
    assert_eq!(
        get(egress, "address.socket_address.port_value").as_u64(),
        Some(15002)
    );
    let chains = get(egress, "filter_chains").as_sequence().unwrap();
    assert_eq!(chains.len(), 3, "SNI allowed, SNI refused, HTTP");
    // TLS by SNI: the port-443 names (never an address), wildcards kept.
    let names: Vec<&str> = get(&chains[0], "filter_chain_match.server_names")
        .as_sequence()
        .unwrap()
        .iter()
        .map(s)
        .collect();
    assert_eq!(names, ["*.pypi.org", "api.stripe.com"]);
    assert_eq!(
        get(&chains[0], "filters.0.typed_config.port_value").as_u64(),
        Some(443)
    );
    assert!(
        get(&chains[1], "filter_chain_match")
            .get("server_names")
            .is_none()
    );
    assert_eq!(
        get(&chains[1], "filters.0.typed_config.rules.policies")
            .as_mapping()
            .unwrap()
            .len(),
        0,
        "any other SNI is refused"
    );
    // HTTP: one RBAC policy per rule, by :authority; the shadow copy is the same.
    let http = get(&chains[2], "filters.0.typed_config");
    let rbac = get(http, "http_filters.0.typed_config");
    assert_eq!(get(rbac, "rules"), get(rbac, "shadow_rules"));
    let policies = get(rbac, "rules.policies").as_mapping().unwrap();
    let mut seen: Vec<(String, Vec<String>)> = policies
        .iter()
        .map(|(name, p)| {
            assert_eq!(get(p, "principals.0.any").as_bool(), Some(true));
            let matchers = get(p, "permissions.0.or_rules.rules")
                .as_sequence()
                .unwrap()
                .iter()
                .map(|m| {
                    assert_eq!(s(get(m, "header.name")), ":authority");
                    let sm = get(m, "header.string_match").as_mapping().unwrap();
                    assert_eq!(sm.get("ignore_case").and_then(Yaml::as_bool), Some(true));
                    let (k, v) = sm.iter().find(|(k, _)| s(k) != "ignore_case").unwrap();
                    format!("{}={}", s(k), s(v))
                })
                .collect();
            (s(name).to_string(), matchers)
        })
        .collect();
    seen.sort();
    let want: Vec<(String, Vec<String>)> = [
        (
            "*.debian.org:80",
            vec!["suffix=.debian.org:80", "suffix=.debian.org"],
        ),
        ("*.pypi.org:443", vec!["suffix=.pypi.org:443"]),
        ("10.0.0.7:443", vec!["exact=10.0.0.7:443"]),
        ("api.stripe.com:443", vec!["exact=api.stripe.com:443"]),
        (
            "mirror.internal:80",
            vec!["exact=mirror.internal:80", "exact=mirror.internal"],
        ),
    ]
    .into_iter()
    .map(|(n, m)| (n.to_string(), m.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(seen, want);
    // CONNECT and absolute URLs both go to the dynamic forward proxy, which resolves names.
    let routes = get(http, "route_config.virtual_hosts.0.routes")
        .as_sequence()
        .unwrap();
    assert!(
        routes[0]
            .get("match")
            .unwrap()
            .get("connect_matcher")
            .is_some()
    );
    assert_eq!(
        s(get(&routes[0], "route.upgrade_configs.0.upgrade_type")),
        "CONNECT"
    );
    assert_eq!(s(get(&routes[1], "route.cluster")), "egress");
    assert_eq!(
        s(get(http, "http_filters.1.name")),
        "envoy.filters.http.dynamic_forward_proxy"
    );
    for c in ["egress", "egress_sni"] {
        let c = cluster(&cfg, c).unwrap_or_else(|| panic!("cluster {c}"));
        assert_eq!(
            s(get(c, "cluster_type.name")),
            "envoy.clusters.dynamic_forward_proxy"
        );
    }

    // Nothing allowed: the listener is there and refuses everything.
    let cfg: Yaml =
        yaml_serde::from_str(&r.render(&shop_mesh_with_egress(), &svc("worker")).unwrap()).unwrap();
    let egress = listener(&cfg, "egress");
    let chains = get(egress, "filter_chains").as_sequence().unwrap();
    assert_eq!(chains.len(), 2, "no SNI is allowed");
    let rbac = get(
        &chains[1],
        "filters.0.typed_config.http_filters.0.typed_config",
    );
    assert_eq!(get(rbac, "rules.policies").as_mapping().unwrap().len(), 0);

    // Open (today's behaviour): no egress listener, no egress clusters.
    let cfg: Yaml = yaml_serde::from_str(&r.render(&shop_mesh(), &svc("api")).unwrap()).unwrap();
    let names: Vec<&str> = get(&cfg, "static_resources.listeners")
        .as_sequence()
        .unwrap()
        .iter()
        .map(|l| s(get(l, "name")))
        .collect();
    assert!(!names.contains(&"egress"), "{names:?}");
    assert!(cluster(&cfg, "egress").is_none());
}

#[test]
fn an_egress_port_that_clashes_is_refused_only_when_egress_is_controlled() {
    let r = EnvoyRenderer::default();
    let mut mesh = shop_mesh();
    mesh.ports.egress = mesh.ports.outbound;
    r.render(&mesh, &svc("api"))
        .expect("open: the egress port is unused");
    let mut mesh = shop_mesh_with_egress();
    mesh.ports.egress = mesh.ports.outbound;
    let err = r.render(&mesh, &svc("api")).unwrap_err().to_string();
    assert!(
        err.contains("ports outbound and egress are both 15001"),
        "{err}"
    );
}

#[test]
fn render_is_pure_and_order_independent() {
    let r = EnvoyRenderer::default();
    let mesh = shop_mesh();
    let mut shuffled = mesh.clone();
    shuffled.services.reverse();
    for name in ["api", "web", "worker"] {
        let a = r.render(&mesh, &svc(name)).unwrap();
        let b = r.render(&mesh, &svc(name)).unwrap();
        let c = r.render(&shuffled, &svc(name)).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c, "service order in the mesh must not change the render");
    }
}

fn get<'a>(v: &'a Yaml, path: &str) -> &'a Yaml {
    let mut cur = v;
    for part in path.split('.') {
        cur = match part.parse::<usize>() {
            Ok(i) => cur
                .get(i)
                .unwrap_or_else(|| panic!("no index {i} in {path}")),
            Err(_) => cur
                .get(part)
                .unwrap_or_else(|| panic!("no key {part} in {path}")),
        };
    }
    cur
}

fn s(v: &Yaml) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v:?}"))
}

fn listener<'a>(cfg: &'a Yaml, name: &str) -> &'a Yaml {
    get(cfg, "static_resources.listeners")
        .as_sequence()
        .unwrap()
        .iter()
        .find(|l| s(get(l, "name")) == name)
        .unwrap_or_else(|| panic!("no listener {name}"))
}

fn cluster<'a>(cfg: &'a Yaml, name: &str) -> Option<&'a Yaml> {
    get(cfg, "static_resources.clusters")
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| s(get(c, "name")) == name)
}

fn hcm(l: &Yaml) -> &Yaml {
    get(l, "filter_chains.0.filters.0.typed_config")
}

/// A route's RBAC override as `(policy, matcher kind, principal)`, one per policy; also checks
/// each policy is ALLOW for any permission and only an authenticated principal.
fn route_rbac(route: &Yaml) -> Vec<(String, &str, &str)> {
    let cfg = get(route, "typed_per_filter_config")
        .get("envoy.filters.http.rbac")
        .expect("an RBAC override on the route");
    assert_eq!(
        s(get(cfg, "@type")),
        "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
    );
    assert_eq!(s(get(cfg, "rbac.rules.action")), "ALLOW");
    get(cfg, "rbac.rules.policies")
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(name, policy)| {
            assert_eq!(get(policy, "permissions.0.any").as_bool(), Some(true));
            let principals = get(policy, "principals").as_sequence().unwrap();
            assert_eq!(principals.len(), 1, "{principals:?}");
            let m = get(&principals[0], "authenticated.principal_name")
                .as_mapping()
                .unwrap();
            assert_eq!(m.len(), 1, "{m:?}");
            let (kind, value) = m.iter().next().unwrap();
            (s(name).to_string(), s(kind), s(value))
        })
        .collect()
}

#[test]
fn structure_of_the_render() {
    let r = EnvoyRenderer::default();
    let cfg: Yaml = yaml_serde::from_str(&r.render(&shop_mesh(), &svc("api")).unwrap()).unwrap();

    // Admin only on a pipe.
    assert_eq!(
        s(get(&cfg, "admin.address.pipe.path")),
        "/tmp/envoy-admin.sock"
    );
    assert!(get(&cfg, "admin.address").get("socket_address").is_none());

    // Inbound: TLS with required client certs from the CA, h2 first.
    let inbound = listener(&cfg, "inbound_mtls");
    assert_eq!(s(get(inbound, "address.socket_address.address")), "0.0.0.0");
    assert_eq!(
        get(inbound, "address.socket_address.port_value").as_u64(),
        Some(15000)
    );
    let tls = get(inbound, "filter_chains.0.transport_socket.typed_config");
    assert_eq!(get(tls, "require_client_certificate").as_bool(), Some(true));
    assert_eq!(s(get(tls, "common_tls_context.alpn_protocols.0")), "h2");
    assert_eq!(
        s(get(
            tls,
            "common_tls_context.validation_context.trusted_ca.filename"
        )),
        "/etc/iac/certs/ca.pem"
    );
    assert_eq!(
        s(get(
            tls,
            "common_tls_context.tls_certificates.0.certificate_chain.filename"
        )),
        "/etc/iac/certs/cert.pem"
    );
    let routes = get(hcm(inbound), "route_config.virtual_hosts.0.routes")
        .as_sequence()
        .unwrap();
    assert_eq!(routes.len(), 4);
    assert_eq!(
        s(get(&routes[0], "match.prefix")),
        "/iac.controlplane.v1.ControlPlane/"
    );
    assert_eq!(s(get(&routes[0], "route.cluster")), "agent");
    app_routes_copy_the_header_into_baggage(routes);

    // Inbound RBAC: the ControlPlane route admits only the control plane, the app route only
    // services of this project, and anything that matches no route nobody.
    assert_eq!(
        route_rbac(&routes[0]),
        [(
            "control-plane".to_string(),
            "exact",
            "spiffe://iac/control-plane"
        )]
    );
    for r in &routes[1..] {
        assert_eq!(
            route_rbac(r),
            [("same-project".to_string(), "prefix", "spiffe://iac/shop/")]
        );
    }
    let filters = get(hcm(inbound), "http_filters").as_sequence().unwrap();
    let names: Vec<&str> = filters.iter().map(|f| s(get(f, "name"))).collect();
    assert_eq!(
        names,
        ["envoy.filters.http.rbac", "envoy.filters.http.router"],
        "RBAC runs before the router"
    );
    assert_eq!(s(get(&filters[0], "typed_config.rules.action")), "ALLOW");
    assert!(
        get(&filters[0], "typed_config.rules.policies")
            .as_mapping()
            .unwrap()
            .is_empty(),
        "no route, no access"
    );
    // XFCC: always Envoy's own, with the caller's URI SAN.
    assert_eq!(
        s(get(hcm(inbound), "forward_client_cert_details")),
        "SANITIZE_SET"
    );
    for field in ["subject", "uri", "dns"] {
        assert_eq!(
            get(
                hcm(inbound),
                &format!("set_current_client_cert_details.{field}")
            )
            .as_bool(),
            Some(true),
            "{field}"
        );
    }
    let app = cluster(&cfg, "app").expect("api declares a port");
    assert_eq!(
        get(
            app,
            "load_assignment.endpoints.0.lb_endpoints.0.endpoint.address.socket_address.port_value"
        )
        .as_u64(),
        Some(8080)
    );
    let agent = cluster(&cfg, "agent").unwrap();
    assert_eq!(
        get(
            agent,
            "load_assignment.endpoints.0.lb_endpoints.0.endpoint.address.socket_address.port_value"
        )
        .as_u64(),
        Some(50051)
    );
    assert!(
        agent.get("typed_extension_protocol_options").is_some(),
        "agent speaks h2c"
    );

    // Outbound: loopback, one virtual host per peer, routed to an mTLS cluster that checks the SAN.
    let outbound = listener(&cfg, "outbound");
    assert_eq!(
        s(get(outbound, "address.socket_address.address")),
        "127.0.0.1"
    );
    assert_eq!(
        get(outbound, "address.socket_address.port_value").as_u64(),
        Some(15001)
    );
    assert!(
        outbound
            .get("filter_chains")
            .unwrap()
            .get(0)
            .unwrap()
            .get("transport_socket")
            .is_none(),
        "plaintext from the app"
    );
    let vhosts = get(hcm(outbound), "route_config.virtual_hosts")
        .as_sequence()
        .unwrap();
    let names: Vec<&str> = vhosts.iter().map(|v| s(get(v, "name"))).collect();
    assert_eq!(
        names,
        ["peer_web", "peer_worker"],
        "peers in name order, never itself"
    );
    let domains: Vec<&str> = get(&vhosts[0], "domains")
        .as_sequence()
        .unwrap()
        .iter()
        .map(s)
        .collect();
    assert_eq!(domains, ["web", "web:15001", "web.shop", "web.shop:15001"]);
    let web = cluster(&cfg, "peer_web").unwrap();
    assert_eq!(s(get(web, "type")), "STRICT_DNS");
    let sock = get(
        web,
        "load_assignment.endpoints.0.lb_endpoints.0.endpoint.address.socket_address",
    );
    assert_eq!(
        (s(get(sock, "address")), get(sock, "port_value").as_u64()),
        ("web", Some(15000))
    );
    let up = get(web, "transport_socket.typed_config");
    assert_eq!(s(get(up, "sni")), "web");
    assert_eq!(s(get(up, "common_tls_context.alpn_protocols.0")), "h2");
    assert_eq!(
        s(get(
            up,
            "common_tls_context.validation_context.match_typed_subject_alt_names.0.san_type"
        )),
        "DNS"
    );
    assert_eq!(
        s(get(
            up,
            "common_tls_context.validation_context.match_typed_subject_alt_names.0.matcher.exact"
        )),
        "web.shop",
        "the peer must be web of this project, not any web"
    );
    assert_eq!(
        get(
            up,
            "common_tls_context.validation_context.match_typed_subject_alt_names"
        )
        .as_sequence()
        .unwrap()
        .len(),
        1,
        "one accepted name; any other SAN matcher would widen it"
    );
    assert_eq!(
        s(get(hcm(outbound), "forward_client_cert_details")),
        "SANITIZE"
    );
    assert_eq!(
        s(get(
            up,
            "common_tls_context.tls_certificates.0.private_key.filename"
        )),
        "/etc/iac/certs/key.pem"
    );
    assert!(cluster(&cfg, "peer_api").is_none(), "no cluster to itself");

    // Stats: loopback, exactly one route, to the admin pipe.
    let stats = listener(&cfg, "stats");
    assert_eq!(s(get(stats, "address.socket_address.address")), "127.0.0.1");
    assert_eq!(
        get(stats, "address.socket_address.port_value").as_u64(),
        Some(9901)
    );
    let routes = get(hcm(stats), "route_config.virtual_hosts.0.routes")
        .as_sequence()
        .unwrap();
    assert_eq!(routes.len(), 1);
    assert_eq!(s(get(&routes[0], "match.path")), "/stats/prometheus");
    let admin = cluster(&cfg, "admin").unwrap();
    assert_eq!(
        s(get(
            admin,
            "load_assignment.endpoints.0.lb_endpoints.0.endpoint.address.pipe.path"
        )),
        "/tmp/envoy-admin.sock"
    );

    // No listener anywhere binds the admin API to TCP, and only the inbound one binds beyond loopback.
    for l in get(&cfg, "static_resources.listeners")
        .as_sequence()
        .unwrap()
    {
        let addr = s(get(l, "address.socket_address.address"));
        if s(get(l, "name")) != "inbound_mtls" {
            assert_eq!(addr, "127.0.0.1", "listener {:?}", get(l, "name"));
        }
    }
}

#[test]
fn service_without_app_port_routes_only_the_agent() {
    let r = EnvoyRenderer::default();
    let cfg: Yaml = yaml_serde::from_str(&r.render(&shop_mesh(), &svc("worker")).unwrap()).unwrap();
    let routes = get(
        hcm(listener(&cfg, "inbound_mtls")),
        "route_config.virtual_hosts.0.routes",
    )
    .as_sequence()
    .unwrap();
    assert_eq!(routes.len(), 1);
    assert_eq!(s(get(&routes[0], "route.cluster")), "agent");
    assert_eq!(
        route_rbac(&routes[0]),
        [(
            "control-plane".to_string(),
            "exact",
            "spiffe://iac/control-plane"
        )]
    );
    assert!(cluster(&cfg, "app").is_none());
}

#[test]
fn edge_listener_reaches_only_the_app_without_a_certificate() {
    let r = EnvoyRenderer::default();
    let cfg: Yaml = yaml_serde::from_str(&r.render(&shop_mesh(), &svc("web")).unwrap()).unwrap();
    let edge = listener(&cfg, "edge");
    assert_eq!(s(get(edge, "address.socket_address.address")), "0.0.0.0");
    assert_eq!(
        get(edge, "address.socket_address.port_value").as_u64(),
        Some(15080)
    );
    let chain = get(edge, "filter_chains.0");
    assert!(
        chain.get("transport_socket").is_none(),
        "the edge is plain HTTP: {chain:?}"
    );
    let h = hcm(edge);
    assert_eq!(s(get(h, "forward_client_cert_details")), "SANITIZE");
    assert_eq!(s(get(h, "upgrade_configs.0.upgrade_type")), "websocket");
    let routes = get(h, "route_config.virtual_hosts.0.routes")
        .as_sequence()
        .unwrap();
    assert_eq!(routes.len(), 4, "{routes:?}");
    assert_eq!(
        s(get(&routes[0], "match.prefix")),
        "/iac.controlplane.v1.ControlPlane/"
    );
    assert_eq!(
        get(&routes[0], "direct_response.status").as_u64(),
        Some(404)
    );
    assert!(routes[0].get("route").is_none());
    app_routes_copy_the_header_into_baggage(routes);
    for r in &routes[1..] {
        assert_eq!(
            s(get(r, "request_headers_to_add.0.header.key")),
            "x-forwarded-client-cert"
        );
        assert_eq!(
            s(get(r, "request_headers_to_add.0.header.value")),
            "URI=spiffe://iac/ingress"
        );
    }
    // No route of the edge names the agent, anywhere.
    let text = yaml_serde::to_string(edge).unwrap();
    assert!(!text.contains("agent"), "{text}");
    // The mesh listener is unchanged: it still requires a client certificate.
    let inbound = listener(&cfg, "inbound_mtls");
    assert_eq!(
        get(
            inbound,
            "filter_chains.0.transport_socket.typed_config.require_client_certificate"
        )
        .as_bool(),
        Some(true)
    );
    // Services without an edge have no edge listener.
    for name in ["api", "worker"] {
        let cfg: Yaml = yaml_serde::from_str(&r.render(&shop_mesh(), &svc(name)).unwrap()).unwrap();
        let names: Vec<&str> = get(&cfg, "static_resources.listeners")
            .as_sequence()
            .unwrap()
            .iter()
            .map(|l| s(get(l, "name")))
            .collect();
        assert_eq!(names, ["inbound_mtls", "outbound", "stats"], "{name}");
    }
}

/// The edge trusts no caller about where a request came from: Envoy takes the peer from the
/// connection (no trusted hops, its address appended to an x-forwarded-for that starts empty),
/// and every x-envoy-*, x-forwarded-* and Forwarded header is removed before that. The mesh
/// listeners leave caller headers (tracing, baggage) alone.
#[test]
fn the_edge_trusts_no_forwarding_header_from_its_caller() {
    let r = EnvoyRenderer::default();
    let cfg: Yaml = yaml_serde::from_str(&r.render(&shop_mesh(), &svc("web")).unwrap()).unwrap();
    let h = hcm(listener(&cfg, "edge"));
    assert_eq!(get(h, "use_remote_address").as_bool(), Some(true));
    assert_eq!(get(h, "xff_num_trusted_hops").as_u64(), Some(0));
    assert_eq!(get(h, "skip_xff_append").as_bool(), Some(false));
    let ext = get(h, "early_header_mutation_extensions.0");
    assert_eq!(
        s(get(ext, "name")),
        "envoy.http.early_header_mutation.header_mutation"
    );
    let mutations = get(ext, "typed_config.mutations").as_sequence().unwrap();
    let prefixes: Vec<&str> = mutations
        .iter()
        .filter_map(|m| m.get("remove_on_match"))
        .map(|m| s(get(m, "key_matcher.prefix")))
        .collect();
    assert_eq!(prefixes, ["x-envoy-", "x-forwarded-"]);
    let removed: Vec<&str> = mutations
        .iter()
        .filter_map(|m| m.get("remove"))
        .map(s)
        .collect();
    assert_eq!(removed, ["forwarded"]);
    for name in ["inbound_mtls", "outbound"] {
        let h = hcm(listener(&cfg, name));
        for key in [
            "use_remote_address",
            "early_header_mutation_extensions",
            "xff_num_trusted_hops",
        ] {
            assert!(h.get(key).is_none(), "{name} sets {key}: {h:?}");
        }
    }
}

#[test]
fn ip_peers_are_static_and_remapped_ports_are_used() {
    let mesh = Mesh {
        project: ProjectName::new("t").unwrap(),
        services: vec![
            member("a", "127.0.0.1", 21000, None),
            member("b", "127.0.0.1", 21010, Some(21013)),
        ],
        ports: MeshPorts {
            inbound_bind: "127.0.0.1".into(),
            inbound: 21000,
            outbound: 21001,
            agent: 21002,
            stats: 21003,
            edge: 21005,
            admin_socket: "/tmp/x/admin.sock".into(),
            egress: 21006,
        },
        certs: CertPaths {
            ca: "/c/ca.pem".into(),
            cert: "/c/a.pem".into(),
            key: "/c/a.key".into(),
        },
    };
    let cfg: Yaml =
        yaml_serde::from_str(&EnvoyRenderer::default().render(&mesh, &svc("a")).unwrap()).unwrap();
    let inbound = listener(&cfg, "inbound_mtls");
    assert_eq!(
        s(get(inbound, "address.socket_address.address")),
        "127.0.0.1"
    );
    assert_eq!(
        get(inbound, "address.socket_address.port_value").as_u64(),
        Some(21000)
    );
    assert_eq!(
        get(
            listener(&cfg, "outbound"),
            "address.socket_address.port_value"
        )
        .as_u64(),
        Some(21001)
    );
    assert_eq!(
        get(listener(&cfg, "stats"), "address.socket_address.port_value").as_u64(),
        Some(21003)
    );
    let b = cluster(&cfg, "peer_b").unwrap();
    assert_eq!(s(get(b, "type")), "STATIC");
    assert!(b.get("dns_lookup_family").is_none());
    assert_eq!(
        get(
            b,
            "load_assignment.endpoints.0.lb_endpoints.0.endpoint.address.socket_address.port_value"
        )
        .as_u64(),
        Some(21010)
    );
    let domains: Vec<&str> = get(
        get(
            hcm(listener(&cfg, "outbound")),
            "route_config.virtual_hosts.0",
        ),
        "domains",
    )
    .as_sequence()
    .unwrap()
    .iter()
    .map(s)
    .collect();
    assert_eq!(domains, ["b", "b:21001", "b.t", "b.t:21001"]);
    assert_eq!(s(get(&cfg, "admin.address.pipe.path")), "/tmp/x/admin.sock");
    assert_eq!(
        s(get(
            listener(&cfg, "inbound_mtls"),
            "filter_chains.0.transport_socket.typed_config.common_tls_context.validation_context.trusted_ca.filename"
        )),
        "/c/ca.pem"
    );
}

#[test]
fn single_service_mesh_has_no_peers() {
    let mut mesh = shop_mesh();
    mesh.services.truncate(1);
    let cfg: Yaml =
        yaml_serde::from_str(&EnvoyRenderer::default().render(&mesh, &svc("web")).unwrap())
            .unwrap();
    assert!(
        get(
            hcm(listener(&cfg, "outbound")),
            "route_config.virtual_hosts"
        )
        .as_sequence()
        .unwrap()
        .is_empty()
    );
    let clusters: Vec<&str> = get(&cfg, "static_resources.clusters")
        .as_sequence()
        .unwrap()
        .iter()
        .map(|c| s(get(c, "name")))
        .collect();
    assert_eq!(clusters, ["agent", "app", "admin"]);
}

#[test]
fn invalid_inputs_are_named() {
    let r = EnvoyRenderer::default();
    let err = r
        .render(&shop_mesh(), &svc("nope"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nope") && err.contains("not a member"),
        "{err}"
    );

    let mut m = shop_mesh();
    m.services[1].app_port = Some(50051);
    let err = r.render(&m, &svc("api")).unwrap_err().to_string();
    assert!(
        err.contains("agent") && err.contains("app_port") && err.contains("50051"),
        "{err}"
    );

    let mut m = shop_mesh();
    m.ports.stats = m.ports.outbound;
    let err = r.render(&m, &svc("web")).unwrap_err().to_string();
    assert!(err.contains("outbound") && err.contains("stats"), "{err}");

    // An edge needs an app port to route to, and its own port.
    let mut m = shop_mesh();
    m.services[0].app_port = None;
    let err = r.render(&m, &svc("web")).unwrap_err().to_string();
    assert!(
        err.contains("web") && err.contains("edge") && err.contains("no app port"),
        "{err}"
    );
    let mut m = shop_mesh();
    m.ports.edge = m.ports.inbound;
    let err = r.render(&m, &svc("web")).unwrap_err().to_string();
    assert!(err.contains("inbound") && err.contains("edge"), "{err}");
    // ...but a service without an edge does not care about the edge port.
    assert!(r.render(&m, &svc("api")).is_ok());

    let mut m = shop_mesh();
    m.ports.inbound_bind = "localhost".into();
    assert!(
        r.render(&m, &svc("web"))
            .unwrap_err()
            .to_string()
            .contains("inbound_bind")
    );

    let mut m = shop_mesh();
    m.services[0].address = "bad host".into();
    let err = r.render(&m, &svc("api")).unwrap_err().to_string();
    assert!(err.contains("web") && err.contains("bad host"), "{err}");

    let mut m = shop_mesh();
    m.services.push(member("web", "web2", 15000, None));
    assert!(
        r.render(&m, &svc("api"))
            .unwrap_err()
            .to_string()
            .contains("twice")
    );
}

#[test]
fn quoting_keeps_odd_paths_intact() {
    let mut m = shop_mesh();
    m.certs.key = "/certs/a key: \"odd\" #1.pem".into();
    let cfg: Yaml =
        yaml_serde::from_str(&EnvoyRenderer::default().render(&m, &svc("api")).unwrap()).unwrap();
    let tls = get(
        listener(&cfg, "inbound_mtls"),
        "filter_chains.0.transport_socket.typed_config",
    );
    assert_eq!(
        s(get(
            tls,
            "common_tls_context.tls_certificates.0.private_key.filename"
        )),
        "/certs/a key: \"odd\" #1.pem"
    );
}

#[test]
fn template_override_dir() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("envoy.yaml.tmpl"),
        "custom: {{ service | q }}\npeers: {{ peers | length }}\n",
    )
    .unwrap();
    let r = EnvoyRenderer::new(&EnvoyConfig {
        template_dir: Some(dir.path().to_path_buf()),
    })
    .unwrap();
    assert_eq!(
        r.render(&shop_mesh(), &svc("api")).unwrap(),
        "custom: \"api\"\npeers: 2\n"
    );

    // A typo in an override is caught at render time, naming the template.
    std::fs::write(dir.path().join("envoy.yaml.tmpl"), "x: {{ servcie }}\n").unwrap();
    let r = EnvoyRenderer::new(&EnvoyConfig {
        template_dir: Some(dir.path().to_path_buf()),
    })
    .unwrap();
    let err = r.render(&shop_mesh(), &svc("api")).unwrap_err().to_string();
    assert!(err.contains("envoy.yaml.tmpl"), "{err}");

    // Output that is not a YAML mapping is refused.
    std::fs::write(dir.path().join("envoy.yaml.tmpl"), "- {{ service }}\n").unwrap();
    let r = EnvoyRenderer::new(&EnvoyConfig {
        template_dir: Some(dir.path().to_path_buf()),
    })
    .unwrap();
    assert!(
        r.render(&shop_mesh(), &svc("api"))
            .unwrap_err()
            .to_string()
            .contains("mapping")
    );

    // Syntax errors fail at construction.
    std::fs::write(dir.path().join("envoy.yaml.tmpl"), "{% if %}\n").unwrap();
    assert!(
        EnvoyRenderer::new(&EnvoyConfig {
            template_dir: Some(dir.path().to_path_buf())
        })
        .is_err()
    );
    // A missing override is an error naming the path.
    let missing = EnvoyRenderer::new(&EnvoyConfig {
        template_dir: Some(dir.path().join("nope")),
    })
    .unwrap_err()
    .to_string();
    assert!(missing.contains("nope"), "{missing}");
}

/// The real Envoy, or `None` (after a loud message) when it is absent and not required.
fn envoy_or_skip(test: &str) -> Option<PathBuf> {
    match envoy_bin::envoy_binary() {
        Some(p) => Some(p),
        None if std::env::var_os("IAC_REQUIRE_ENVOY")
            .is_some_and(|v| !v.is_empty() && v != "0") =>
        {
            panic!(
                "IAC_REQUIRE_ENVOY is set but no envoy binary was found (PATH or $IAC_ENVOY); run scripts/install-envoy.sh"
            )
        }
        None => {
            eprintln!(
                "\n!!!!! SKIPPING {test}: no `envoy` on PATH (set IAC_REQUIRE_ENVOY=1 to make this a failure; scripts/install-envoy.sh installs it) !!!!!\n"
            );
            None
        }
    }
}

#[test]
fn every_render_passes_envoy_validate() {
    let Some(envoy) = envoy_or_skip("every_render_passes_envoy_validate") else {
        return;
    };
    let version = envoy_bin::version(&envoy).unwrap();
    assert!(
        version.contains("/1.40."),
        "expected Envoy 1.40, got {version}"
    );

    // Envoy loads the certificate files during validation: issue real ones.
    let tmp = tempfile::tempdir().unwrap();
    let ca = DevCa::new(PkiConfig {
        secrets_dir: tmp.path().join("secrets"),
        ..PkiConfig::default()
    });
    let issued = ca
        .issue_blocking(&ProjectName::new("shop").unwrap(), &svc("api"))
        .unwrap();
    let certs = issued.paths.clone();

    let mut meshes: Vec<(&str, Mesh)> = Vec::new();
    let mut shop = shop_mesh();
    shop.certs = certs.clone();
    shop.ports.admin_socket = tmp.path().join("admin.sock").display().to_string();
    meshes.push(("shop", shop.clone()));

    let mut remapped = shop.clone();
    remapped.ports = MeshPorts {
        inbound_bind: "127.0.0.1".into(),
        inbound: 31000,
        outbound: 31001,
        agent: 31002,
        stats: 31003,
        edge: 31009,
        admin_socket: tmp.path().join("admin2.sock").display().to_string(),
        egress: 31010,
    };
    for (i, s) in remapped.services.iter_mut().enumerate() {
        s.address = "127.0.0.1".into();
        s.port = 31000 + 10 * i as u16;
        s.app_port = s.app_port.map(|_| 31004 + i as u16);
    }
    meshes.push(("remapped-ip-peers", remapped));

    let mut solo = shop.clone();
    solo.services = vec![member("solo", "solo", 15000, None)];
    meshes.push(("solo-no-app-port", solo));

    let mut ipv6 = shop.clone();
    ipv6.ports.inbound_bind = "::".into();
    ipv6.services[0].address = "::1".into();
    meshes.push(("ipv6", ipv6));

    let mut egress = shop_mesh_with_egress();
    egress.certs = certs.clone();
    egress.ports.admin_socket = tmp.path().join("admin3.sock").display().to_string();
    meshes.push(("egress", egress));

    let mut sandboxes = shop_mesh_with_sandboxes();
    sandboxes.certs = certs.clone();
    sandboxes.ports.admin_socket = tmp.path().join("admin4.sock").display().to_string();
    meshes.push(("sandboxes", sandboxes));

    let r = EnvoyRenderer::default();
    let mut checked = 0;
    for (label, mesh) in &meshes {
        for m in &mesh.services {
            let yaml = r.render(mesh, &m.name).unwrap();
            let path = tmp.path().join(format!("{label}-{}.yaml", m.name));
            std::fs::write(&path, &yaml).unwrap();
            envoy_bin::validate(&envoy, &path)
                .unwrap_or_else(|e| panic!("{label}/{}: {e}\n--- config ---\n{yaml}", m.name));
            checked += 1;
        }
    }
    assert_eq!(checked, 3 + 3 + 1 + 3 + 3 + 6);

    // And validation really checks: a broken config is rejected.
    let bad = tmp.path().join("bad.yaml");
    let yaml = r.render(&shop, &svc("api")).unwrap().replace(
        "require_client_certificate: true",
        "require_client_certificate: maybe",
    );
    std::fs::write(&bad, yaml).unwrap();
    let err = envoy_bin::validate(&envoy, &bad).unwrap_err().to_string();
    assert!(err.contains("validate failed"), "{err}");
}
