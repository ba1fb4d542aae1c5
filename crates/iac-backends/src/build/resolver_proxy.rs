//! [`IndexProxy`]: the dependency resolver's only way out when pip uses a package index.
//!
//! The resolver container runs repo-steered code (sdist PEP 517 hooks, build backends), so in
//! `[images.resolver] network = "proxy"` (the default) it gets no network of its own
//! (`--network none`: a loopback only). Its way out is an Envoy on the host's network (on hosts
//! like this one only the host network reaches the index) that listens on nothing but a Unix
//! socket in a per-run directory, and admits only the index hosts ([`allowlist`]): HTTP
//! CONNECT (https) and absolute-URL HTTP are checked by the authority they name, anything else
//! gets 403 and is logged (`iac-resolver-proxy refused …`). Inside the resolver a small relay
//! (Python, which every resolver image has: [`RELAY`]) listens on `127.0.0.1:`[`RELAY_PORT`] and
//! carries each connection to that socket; pip finds it through `HTTPS_PROXY`/`HTTP_PROXY`/
//! `PIP_PROXY`. A connection to anything else — the host's loopback services, another host or
//! port — either has no route (no network) or is refused by the proxy.
//!
//! The proxy container runs `--network host` as an unprivileged user with no capabilities, a
//! read-only root, memory and pids limits and `--disable-hot-restart` (two proxies on the host
//! network would otherwise share Envoy's abstract hot-restart socket). Its config is rendered
//! here, pure ([`render`]). One owner: [`IndexProxy::start`] creates it and waits for the socket,
//! [`IndexProxy::stop`] reads what it refused and removes it, and dropping an unstopped one
//! removes it too (a failed or cancelled resolve). An iac killed outright (SIGKILL) runs
//! neither: every proxy is labelled with its owner ([`LABEL_OWNER`]: host, boot, pid and the
//! pid's start time, [`iac_core::history::RunOwner`]), the next [`IndexProxy::start`] removes
//! the proxies whose owner is provably dead ([`orphans`]), and each proxy's command is wrapped in
//! coreutils `timeout` ([`ProxySpec::lifetime`]) so it ends by itself even when no iac runs
//! again (the proxy image needs `timeout`, as Envoy's Debian/Ubuntu-based images have).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType};
use bollard::query_parameters::{
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use futures::StreamExt;
use serde_json::json;

use iac_core::history::{LocalProcesses, ProcessView, RunOwner, Verdict, judge};

use super::resolver::ContainerGuard;

/// Where the relay listens inside the resolver container.
pub const RELAY_PORT: u16 = 3128;
/// Where the proxy's socket directory is mounted, in the resolver and in the proxy.
pub const SOCKET_DIR: &str = "/iac/proxy";
/// The socket's file name in it.
pub const SOCKET_NAME: &str = "proxy.sock";
/// Where the proxy's config directory is mounted in the proxy.
const CONFIG_DIR: &str = "/iac/proxy-config";
/// The marker of a refusal in the proxy's log.
pub const REFUSED: &str = "iac-resolver-proxy refused";
/// `iac.role` of the proxy container.
pub const PROXY_ROLE: &str = "resolver-proxy";
/// Label holding the proxy's owner (JSON [`RunOwner`]).
pub const LABEL_OWNER: &str = "iac.owner";

/// The relay run as the resolver's command: `python3 -I -c RELAY PORT SOCKET ARGV…` listens on
/// 127.0.0.1:PORT, carries every connection to the Unix socket, runs ARGV and exits with its
/// status.
pub const RELAY: &str = r#"import socket, subprocess, sys, threading
port, path, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(128)
def pump(a, b):
    try:
        while True:
            d = a.recv(65536)
            if not d:
                break
            b.sendall(d)
    except OSError:
        pass
    finally:
        try:
            b.shutdown(socket.SHUT_WR)
        except OSError:
            pass
def serve():
    while True:
        c, _ = srv.accept()
        u = socket.socket(socket.AF_UNIX)
        try:
            u.connect(path)
        except OSError:
            c.close()
            u.close()
            continue
        threading.Thread(target=pump, args=(c, u), daemon=True).start()
        threading.Thread(target=pump, args=(u, c), daemon=True).start()
threading.Thread(target=serve, daemon=True).start()
sys.exit(subprocess.call(argv))
"#;

/// The authorities (`host:port`, lower case) the proxy admits for a resolver with these
/// settings: the default index (`pypi.org:443` and its file host `files.pythonhosted.org:443`)
/// unless an index URL replaces it, every index, extra index and find-links URL (in the config
/// and in `pip_args`), and the operator's `allow_hosts` (`host` means port 443). A URL that
/// names no host is an error naming it.
pub fn allowlist(
    index_url: Option<&str>,
    extra_index_urls: &[String],
    pip_args: &[String],
    allow_hosts: &[String],
) -> Result<Vec<String>, String> {
    let mut urls: Vec<&str> = Vec::new();
    let mut replaced = index_url.is_some();
    urls.extend(index_url);
    urls.extend(extra_index_urls.iter().map(String::as_str));
    let mut args = pip_args.iter().peekable();
    while let Some(a) = args.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v)),
            _ => (a.as_str(), None),
        };
        let takes_url = matches!(
            flag,
            "-i" | "--index-url" | "--extra-index-url" | "-f" | "--find-links"
        );
        if !takes_url {
            continue;
        }
        let value = match inline {
            Some(v) => Some(v),
            None => args.next().map(String::as_str),
        };
        if let Some(v) = value {
            if matches!(flag, "-i" | "--index-url") {
                replaced = true;
            }
            if v.contains("://") {
                urls.push(v);
            }
        }
    }
    let mut out = Vec::new();
    if !replaced {
        out.push("pypi.org:443".to_string());
        out.push("files.pythonhosted.org:443".to_string());
    }
    for u in urls {
        // Local find-links (file://) need no network.
        if u.to_ascii_lowercase().starts_with("file:") {
            continue;
        }
        let parsed = reqwest::Url::parse(u).map_err(|e| {
            format!(
                "package index URL {:?}: {e}; expected an http(s) URL",
                super::config::redact_url_credentials(u)
            )
        })?;
        let host = parsed.host_str().filter(|h| !h.is_empty()).ok_or_else(|| {
            format!(
                "package index URL {:?} names no host; expected http(s)://HOST/…",
                super::config::redact_url_credentials(u)
            )
        })?;
        let port = parsed.port_or_known_default().unwrap_or(443);
        out.push(format!("{}:{port}", host.to_ascii_lowercase()));
    }
    for h in allow_hosts {
        out.push(authority(h)?);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// `host` or `host:port` from `[images.resolver] allow_hosts` as an authority (port 443 when
/// none is given).
pub(crate) fn authority(item: &str) -> Result<String, String> {
    let bad = || {
        format!(
            "images.resolver.allow_hosts item {item:?}: expected HOST or HOST:PORT (e.g. \"files.example.org\" or \"mirror.internal:8443\")"
        )
    };
    let (host, port) = match item.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad())?),
        None => (item, 443),
    };
    let valid = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    if !valid || port == 0 {
        return Err(bad());
    }
    Ok(format!("{}:{port}", host.to_ascii_lowercase()))
}

/// The proxy's Envoy configuration (JSON, which Envoy reads as YAML): one listener on the Unix
/// socket `socket`, HTTP/1 with CONNECT and absolute URLs, an RBAC allowlist of `allow` by
/// `:authority` (a request for the default port may omit it), a dynamic forward proxy, and an
/// access log line for every refusal.
pub fn render(allow: &[String], socket: &str) -> String {
    let mut matchers = Vec::new();
    for a in allow {
        matchers.push(json!({"header": {"name": ":authority", "string_match": {"exact": a, "ignore_case": true}}}));
        // Plain HTTP on port 80 names the host alone.
        if let Some(host) = a.strip_suffix(":80") {
            matchers.push(json!({"header": {"name": ":authority", "string_match": {"exact": host, "ignore_case": true}}}));
        }
    }
    let policies = if matchers.is_empty() {
        json!({})
    } else {
        json!({"index": {"permissions": [{"or_rules": {"rules": matchers}}], "principals": [{"any": true}]}})
    };
    let dns = json!({"name": "index", "dns_lookup_family": "V4_PREFERRED"});
    let log = |filter_value: &str, text: &str| {
        json!({
            "name": "envoy.access_loggers.stdout",
            "filter": {"metadata_filter": {"matcher": {
                "filter": "envoy.filters.http.rbac",
                "path": [{"key": "shadow_engine_result"}],
                "value": {"string_match": {"exact": filter_value}}
            }}},
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                "log_format": {"text_format_source": {"inline_string": text}}
            }
        })
    };
    let config = json!({
        "static_resources": {
            "listeners": [{
                "name": "index_proxy",
                "address": {"pipe": {"path": socket, "mode": 0o666}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "index_proxy",
                        "codec_type": "HTTP1",
                        // Python's http.client sends its CONNECT as HTTP/1.0.
                        "http_protocol_options": {"allow_absolute_url": true, "accept_http_10": true},
                        "access_log": [
                            log("denied", &format!("{REFUSED} destination=%REQ(:AUTHORITY)% method=%REQ(:METHOD)% (not a package index host)\n")),
                            log("allowed", "iac-resolver-proxy allowed destination=%REQ(:AUTHORITY)% method=%REQ(:METHOD)% code=%RESPONSE_CODE%\n"),
                        ],
                        "route_config": {
                            "name": "index_proxy",
                            "virtual_hosts": [{
                                "name": "index_proxy",
                                "domains": ["*"],
                                "routes": [
                                    {"match": {"connect_matcher": {}}, "route": {"cluster": "index", "timeout": "0s", "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}]}},
                                    {"match": {"prefix": "/"}, "route": {"cluster": "index", "timeout": "0s"}}
                                ]
                            }]
                        },
                        "http_filters": [
                            {"name": "envoy.filters.http.rbac", "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                                "rules": {"action": "ALLOW", "policies": policies.clone()},
                                "shadow_rules": {"action": "ALLOW", "policies": policies}
                            }},
                            {"name": "envoy.filters.http.dynamic_forward_proxy", "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_forward_proxy.v3.FilterConfig",
                                "dns_cache_config": dns.clone()
                            }},
                            {"name": "envoy.filters.http.router", "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                            }}
                        ]
                    }
                }]}]
            }],
            "clusters": [{
                "name": "index",
                "connect_timeout": "10s",
                "lb_policy": "CLUSTER_PROVIDED",
                "cluster_type": {
                    "name": "envoy.clusters.dynamic_forward_proxy",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig",
                        "dns_cache_config": dns
                    }
                }
            }]
        }
    });
    serde_json::to_string_pretty(&config).expect("a JSON value serializes")
}

/// The proxy of one resolver run. Create with [`IndexProxy::start`]; end with
/// [`IndexProxy::stop`] (dropping it removes the container as well).
pub struct IndexProxy {
    /// The proxy container: removed by [`IndexProxy::stop`], or when dropped.
    container: ContainerGuard,
    socket_dir: PathBuf,
}

/// What [`IndexProxy::start`] needs.
pub struct ProxySpec<'a> {
    /// The Envoy image (`iac/envoy:<version>` or the sidecar image).
    pub image: &'a str,
    /// A fresh directory of the run: the config and socket directories are made in it.
    pub dir: &'a Path,
    /// Admitted authorities ([`allowlist`]).
    pub allow: &'a [String],
    /// `uid:gid` the proxy runs as (the resolver's user: it must reach the socket).
    pub user: &'a str,
    /// Labels (the builder's, e.g. a test's `iac.test`).
    pub labels: HashMap<String, String>,
    /// The longest the proxy may run (the resolver's deadlines and a margin): its command runs
    /// under `timeout`, so a proxy whose iac was killed ends by itself.
    pub lifetime: Duration,
}

/// The proxy containers among `containers` (id and labels) whose owner `view` finds provably
/// dead, each with the reason. One without an owner label (or an unreadable one) is left
/// alone: nothing proves it dead.
pub fn orphans(
    containers: &[(String, HashMap<String, String>)],
    view: &dyn ProcessView,
) -> Vec<(String, String)> {
    let Some(here) = view.identity() else {
        return Vec::new();
    };
    containers
        .iter()
        .filter(|(_, l)| {
            l.get(super::resolver::LABEL_RESOLVER).map(String::as_str) == Some(PROXY_ROLE)
        })
        .filter_map(|(id, l)| {
            let owner: RunOwner = serde_json::from_str(l.get(LABEL_OWNER)?).ok()?;
            match judge(Some(&owner), &here, |pid| view.process(pid)) {
                Verdict::Dead(why) => Some((id.clone(), why)),
                Verdict::Alive | Verdict::Unknown => None,
            }
        })
        .collect()
}

/// Removes the index proxies left by iac processes that died without removing them (see
/// [`orphans`]); failures are logged, never fatal.
async fn remove_orphans(docker: &Docker) {
    let filters = HashMap::from([(
        "label".to_string(),
        vec![format!("{}={PROXY_ROLE}", super::resolver::LABEL_RESOLVER)],
    )]);
    let opts = bollard::query_parameters::ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let Ok(list) = docker.list_containers(Some(opts)).await else {
        return;
    };
    let containers: Vec<(String, HashMap<String, String>)> = list
        .into_iter()
        .filter_map(|c| Some((c.id?, c.labels.unwrap_or_default())))
        .collect();
    for (id, why) in orphans(&containers, &LocalProcesses) {
        let opts = RemoveContainerOptionsBuilder::default().force(true).build();
        match docker.remove_container(&id, Some(opts)).await {
            Ok(()) => {
                tracing::info!(container = %id, "removed a resolver index proxy whose iac died: {why}")
            }
            Err(e) => {
                tracing::warn!(container = %id, "removing a resolver index proxy whose iac died ({why}): {e}")
            }
        }
    }
}

/// The proxy's entrypoint: Envoy under `timeout` (SIGTERM at `lifetime`, SIGKILL 10 s later;
/// `timeout` passes a `docker stop`'s SIGTERM on to Envoy).
fn entrypoint(lifetime: Duration) -> Vec<String> {
    vec![
        "timeout".into(),
        "--kill-after=10".into(),
        format!("{}", lifetime.as_secs().max(1)),
        "envoy".into(),
    ]
}

impl IndexProxy {
    /// Removes dead owners' proxies ([`orphans`]), writes the config, starts the proxy and waits
    /// (up to 60 s) for its socket.
    pub async fn start(docker: &Docker, spec: ProxySpec<'_>) -> Result<IndexProxy, String> {
        remove_orphans(docker).await;
        let io = |what: &Path, e: std::io::Error| format!("{}: {e}", what.display());
        let config_dir = spec.dir.join("proxy-config");
        let socket_dir = spec.dir.join("proxy");
        for d in [&config_dir, &socket_dir] {
            std::fs::create_dir_all(d).map_err(|e| io(d, e))?;
        }
        let config = config_dir.join("envoy.yaml");
        let socket = format!("{SOCKET_DIR}/{SOCKET_NAME}");
        std::fs::write(&config, render(spec.allow, &socket)).map_err(|e| io(&config, e))?;
        {
            use std::os::unix::fs::PermissionsExt;
            let (uid, gid) = super::config::parse_user(spec.user)?;
            // The socket's directory belongs to the proxy's user (the resolver's, which
            // connects); when iac cannot chown (not root) it is open to everyone instead, inside
            // the private cache directory.
            let chowned = std::os::unix::fs::chown(&socket_dir, Some(uid), Some(gid)).is_ok();
            for (d, mode) in [
                (&config_dir, 0o755),
                (&socket_dir, if chowned { 0o700 } else { 0o777 }),
            ] {
                std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode))
                    .map_err(|e| io(d, e))?;
            }
            std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644))
                .map_err(|e| io(&config, e))?;
        }
        let bind = |source: &Path, target: &str, read_only: bool| Mount {
            target: Some(target.to_string()),
            source: Some(source.display().to_string()),
            typ: Some(MountType::BIND),
            read_only: Some(read_only),
            ..Default::default()
        };
        let mut labels = spec.labels;
        iac_core::labels::mark_managed(&mut labels);
        labels.insert(
            super::resolver::LABEL_RESOLVER.to_string(),
            PROXY_ROLE.to_string(),
        );
        if let Some(owner) = RunOwner::current(&LocalProcesses) {
            labels.insert(
                LABEL_OWNER.to_string(),
                serde_json::to_string(&owner).expect("an owner serializes"),
            );
        }
        let memory = 256 * 1024 * 1024;
        let body = ContainerCreateBody {
            image: Some(spec.image.to_string()),
            entrypoint: Some(entrypoint(spec.lifetime)),
            cmd: Some(vec![
                "-c".into(),
                format!("{CONFIG_DIR}/envoy.yaml"),
                "--disable-hot-restart".into(),
                "--log-level".into(),
                "warn".into(),
            ]),
            user: Some(spec.user.to_string()),
            labels: Some(labels),
            host_config: Some(HostConfig {
                network_mode: Some("host".into()),
                mounts: Some(vec![
                    bind(&config_dir, CONFIG_DIR, true),
                    bind(&socket_dir, SOCKET_DIR, false),
                ]),
                memory: Some(memory),
                memory_swap: Some(memory),
                pids_limit: Some(256),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges".into()]),
                readonly_rootfs: Some(true),
                tmpfs: Some(HashMap::from([(
                    "/tmp".to_string(),
                    "size=16m".to_string(),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = docker
            .create_container(
                None::<bollard::query_parameters::CreateContainerOptions>,
                body,
            )
            .await
            .map_err(|e| {
                format!(
                    "creating the resolver's index proxy from {}: {e}",
                    spec.image
                )
            })?;
        let proxy = IndexProxy {
            container: ContainerGuard {
                docker: docker.clone(),
                id: Some(created.id.clone()),
            },
            socket_dir: socket_dir.clone(),
        };
        docker
            .start_container(&created.id, None)
            .await
            .map_err(|e| {
                format!(
                    "starting the resolver's index proxy from {} (its image needs Envoy and coreutils `timeout`): {e}",
                    spec.image
                )
            })?;
        let socket = socket_dir.join(SOCKET_NAME);
        let started = Instant::now();
        while !socket.exists() {
            let running = docker
                .inspect_container(&created.id, None)
                .await
                .ok()
                .and_then(|c| c.state)
                .and_then(|s| s.running)
                .unwrap_or(false);
            if !running || started.elapsed() > Duration::from_secs(60) {
                let log = proxy.log().await;
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Err(format!(
                    "the resolver's index proxy ({}) {} before listening on its socket:\n{}",
                    spec.image,
                    if running { "took over 60 s" } else { "exited" },
                    tail.join("\n")
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(proxy)
    }

    /// The host directory holding the socket (mounted at [`SOCKET_DIR`] in the resolver).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The proxy's log so far (bounded: the last 2000 lines).
    async fn log(&self) -> String {
        let Some(id) = &self.container.id else {
            return String::new();
        };
        let opts = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .tail("2000")
            .build();
        let mut out = crate::output_tail::OutputTail::new(256 * 1024, 0);
        let mut logs = self.container.docker.logs(id, Some(opts));
        while let Some(Ok(chunk)) = logs.next().await {
            out.push(&chunk.into_bytes(), |_, _| {});
        }
        out.text()
    }

    /// Removes the proxy; returns its log (the last 2000 lines, each request it admitted or
    /// refused) and the requests it refused (`destination=… method=…`).
    pub async fn stop(self) -> (Vec<String>, Vec<String>) {
        // Envoy writes its access log in batches: stopped first (SIGTERM), it flushes them.
        if let Some(id) = &self.container.id {
            let opts = StopContainerOptionsBuilder::default().t(10).build();
            let _ = self.container.docker.stop_container(id, Some(opts)).await;
        }
        let log: Vec<String> = self.log().await.lines().map(str::to_string).collect();
        let refused = log
            .iter()
            .filter_map(|l| {
                l.split_once(REFUSED)
                    .map(|(_, rest)| rest.trim().to_string())
            })
            .collect();
        self.container.remove().await;
        (log, refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    /// A fake `/proc`: this host, and pid 10 alive since tick 500.
    struct View;
    impl ProcessView for View {
        fn identity(&self) -> Option<iac_core::history::HostIdentity> {
            Some(iac_core::history::HostIdentity {
                host: "h".into(),
                machine_id: Some("m".into()),
                boot_id: "b".into(),
                pid_ns: Some("ns".into()),
            })
        }
        fn process(&self, pid: u32) -> iac_core::history::ProcessState {
            match pid {
                10 => iac_core::history::ProcessState::Alive { start_ticks: 500 },
                _ => iac_core::history::ProcessState::Gone,
            }
        }
    }

    /// Only proxies whose owner is provably dead (pid gone, pid reused) are orphans; a live
    /// owner's, another host's, an unlabelled one and a non-proxy container are kept.
    #[test]
    fn only_proxies_of_dead_owners_are_orphans() {
        let owner = |host: &str, pid: u32, ticks: u64| {
            serde_json::to_string(&RunOwner {
                host: host.into(),
                machine_id: Some("m".into()),
                boot_id: "b".into(),
                pid_ns: Some("ns".into()),
                pid,
                start_ticks: ticks,
            })
            .unwrap()
        };
        let c = |id: &str, role: &str, o: Option<String>| {
            let mut l = HashMap::from([(
                super::super::resolver::LABEL_RESOLVER.to_string(),
                role.to_string(),
            )]);
            if let Some(o) = o {
                l.insert(LABEL_OWNER.to_string(), o);
            }
            (id.to_string(), l)
        };
        let list = [
            c("live", PROXY_ROLE, Some(owner("h", 10, 500))),
            c("gone", PROXY_ROLE, Some(owner("h", 11, 500))),
            c("reused", PROXY_ROLE, Some(owner("h", 10, 400))),
            c("elsewhere", PROXY_ROLE, Some(owner("other", 11, 500))),
            c("unlabelled", PROXY_ROLE, None),
            c("garbled", PROXY_ROLE, Some("{".into())),
            c("resolver", "resolver", Some(owner("h", 11, 500))),
        ];
        let got: Vec<String> = orphans(&list, &View)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(got, ["gone", "reused"]);
        assert!(orphans(&list, &View)[0].1.contains("pid 11"));
    }

    #[test]
    fn the_proxy_runs_under_a_timeout() {
        assert_eq!(
            entrypoint(Duration::from_secs(1200)),
            ["timeout", "--kill-after=10", "1200", "envoy"]
        );
        assert_eq!(entrypoint(Duration::ZERO)[2], "1", "never 0 (no limit)");
    }

    #[test]
    fn the_default_index_allows_pypi_and_its_file_host() {
        assert_eq!(
            allowlist(None, &[], &[], &[]).unwrap(),
            ["files.pythonhosted.org:443", "pypi.org:443"]
        );
    }

    #[test]
    fn configured_indexes_replace_the_default_and_add_their_hosts() {
        let got = allowlist(
            Some("https://op:s3cret@Mirror.Example/simple"),
            &s(&["http://extra.example:8080/simple"]),
            &s(&[
                "--find-links",
                "https://wheels.example/",
                "--prefer-binary",
                "--find-links=file:///opt/wheels",
            ]),
            &s(&["files.mirror.example", "blobs.example:8443"]),
        )
        .unwrap();
        assert_eq!(
            got,
            [
                "blobs.example:8443",
                "extra.example:8080",
                "files.mirror.example:443",
                "mirror.example:443",
                "wheels.example:443"
            ]
        );
        // An index URL in pip_args replaces the default too, in each spelling.
        for args in [
            s(&["-i", "http://127.0.0.1:9/simple"]),
            s(&["--index-url", "http://127.0.0.1:9/simple"]),
            s(&["--index-url=http://127.0.0.1:9/simple"]),
        ] {
            assert_eq!(
                allowlist(None, &[], &args, &[]).unwrap(),
                ["127.0.0.1:9"],
                "{args:?}"
            );
        }
        // Extra indexes alone keep the default.
        assert!(
            allowlist(None, &s(&["http://x.example/simple"]), &[], &[])
                .unwrap()
                .contains(&"pypi.org:443".to_string())
        );
    }

    #[test]
    fn bad_hosts_are_refused_naming_the_item() {
        for bad in ["", "a b", "host:0", "host:99999", "http://x", "x:y"] {
            let e = allowlist(None, &[], &[], &s(&[bad])).unwrap_err();
            assert!(
                e.contains("images.resolver.allow_hosts") && e.contains(bad),
                "{e}"
            );
        }
        let e = allowlist(Some("unix:///run/index.sock"), &[], &[], &[]).unwrap_err();
        assert!(
            e.contains("unix:///run/index.sock") && e.contains("names no host"),
            "{e}"
        );
        let e = allowlist(Some("https://u:pw@[bad/simple"), &[], &[], &[]).unwrap_err();
        assert!(!e.contains("pw"), "credentials redacted: {e}");
    }

    #[test]
    fn the_config_allows_exactly_the_list_on_the_socket() {
        let text = render(
            &s(&["127.0.0.1:8080", "deb.example:80"]),
            "/iac/proxy/proxy.sock",
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let listener = &v["static_resources"]["listeners"][0];
        assert_eq!(listener["address"]["pipe"]["path"], "/iac/proxy/proxy.sock");
        assert!(
            listener["address"].get("socket_address").is_none(),
            "no TCP port"
        );
        let hcm = &listener["filter_chains"][0]["filters"][0]["typed_config"];
        let rbac = &hcm["http_filters"][0]["typed_config"];
        assert_eq!(rbac["rules"], rbac["shadow_rules"]);
        let rules = &rbac["rules"]["policies"]["index"]["permissions"][0]["or_rules"]["rules"];
        let exact: Vec<&str> = rules
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["header"]["string_match"]["exact"].as_str().unwrap())
            .collect();
        assert_eq!(exact, ["127.0.0.1:8080", "deb.example:80", "deb.example"]);
        assert!(text.contains(REFUSED));
        // Nothing allowed: no policy at all (RBAC ALLOW with no policy admits nothing).
        let none: serde_json::Value = serde_json::from_str(&render(&[], "/s")).unwrap();
        let p = &none["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            ["http_filters"][0]["typed_config"]["rules"]["policies"];
        assert_eq!(p, &serde_json::json!({}));
    }
}
