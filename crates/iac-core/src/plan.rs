//! The pure planner: prepared services in, [`Stack`] out. Same inputs, same stack, same hashes —
//! golden-tested. Container layout per service (DESIGN §4):
//!
//! * `<project>-<svc>-envoy`: the sidecar, owner of the pod's network namespace (the pattern of
//!   Kubernetes' pause container): on the project network with alias `<svc>`, publishing its
//!   inbound port 15000 on `127.0.0.1:<ephemeral>` and, for a service with an edge, its edge port
//!   15080 where the [`EdgeBind`] says; Envoy's config and the service's certificates mounted
//!   read-only;
//! * `<project>-<svc>`: the app (PID 1 `iac-agent`), joining the sidecar's network namespace
//!   (`container:<sidecar>`), so a restarted app comes back at the same address, behind the same
//!   filter, with the same Envoy.
//!
//! Both drop every capability and set `no-new-privileges`; each gets back only what it needs
//! ([`app_privileges`], [`sidecar_privileges`]); both restart with the engine
//! ([`RestartPolicy::UnlessStopped`]: after a crash of their PID 1, an engine restart or a
//! reboot). The sidecar's command ([`sidecar_command`]) first installs the pod's packet filter
//! ([`pod_filter_rules`]: from outside the pod only the inbound mTLS port is reachable, whatever
//! the app binds) — before the app container exists — then gives up NET_ADMIN and supervises
//! Envoy with no capabilities, restarting it when it dies, while it keeps the namespace.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::egress::{ENVOY_EGRESS_GID, EgressPolicy, proxy_env};
use crate::expose::EdgeBind;
use crate::fsutil::sha256_tagged;
use crate::mesh::{CertPaths, IssuedCerts, MeshPorts};
use crate::name::{ProjectName, ServiceName};
use crate::stack::*;

/// Where the app's agent keeps its restart record (`iac-agent --restart-state`): a root-only
/// directory of the container's own writable layer.
pub const AGENT_RESTART_STATE: &str = "/var/lib/iac-agent/restarts.json";

/// Where the sidecar's config is mounted inside the Envoy container.
pub const ENVOY_CONFIG_IN_CONTAINER: &str = "/etc/envoy/envoy.yaml";
/// Default port handed to apps in `PORT` when they declare none (the one constant, defined with
/// [`crate::Entry`]).
pub use crate::entry::DEFAULT_APP_PORT;
/// The nftables table (family `inet`: IPv4 and IPv6) the sidecar installs in the pod.
pub const POD_FILTER_TABLE: &str = "iac_pod";
/// Exit code of the sidecar command when the filter cannot be installed (`EX_CONFIG`).
pub const POD_FILTER_EXIT: u8 = 78;

/// The pod's packet filter, as an `nft -f` ruleset. Inbound, only `inbound_port`/tcp is accepted
/// from outside the pod, plus `edge_port`/tcp when the service has an edge — and that only from
/// the addresses in the set `edge_sources`, which [`sidecar_command`] fills with the network's
/// gateway (where the host's published port comes from), so peers on the project network cannot
/// use the edge to skip the mesh's certificates. Loopback (Envoy ↔ app ↔ agent), replies to the
/// pod's own connections (conntrack's reply direction only: a connection someone else opened to
/// the pod before the filter was loaded is not "established" traffic to let through) and the ICMP that IPv4/IPv6 need to work (neighbour discovery, errors)
/// pass; every other TCP connection is reset, everything else dropped. Outbound is not filtered
/// (see [`pod_filter_rules_with_egress`] for pods whose egress is controlled).
/// Loading it replaces any earlier copy of the table atomically (a restarted sidecar re-installs it).
pub fn pod_filter_rules(inbound_port: u16, edge_port: Option<u16>) -> String {
    pod_filter_rules_with_egress(inbound_port, edge_port, false)
}

/// The outbound chain of a pod whose egress is controlled: what leaves the pod other than on
/// loopback is only Envoy's (sockets of group [`ENVOY_EGRESS_GID`], which only the sidecar's
/// command can give a process: the app has no SETGID), replies to connections made to the pod,
/// TCP resets and the ICMP that IPv4/IPv6 need. Everything else the app sends gets "no route to
/// host" (an ICMP host-unreachable from the filter itself, so clients fail at once).
fn egress_chain() -> String {
    format!(
        "  chain output {{
    type filter hook output priority filter; policy accept;
    oifname \"lo\" accept
    ct direction reply accept
    meta skgid {ENVOY_EGRESS_GID} accept
    tcp flags & rst == rst accept
    icmpv6 type {{ destination-unreachable, packet-too-big, time-exceeded, parameter-problem, nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert, mld-listener-report, mld2-listener-report }} accept
    icmp type {{ destination-unreachable, time-exceeded, parameter-problem }} accept
    reject with icmpx type host-unreachable
  }}
"
    )
}

/// [`pod_filter_rules`], plus, when `egress` is set, the outbound chain of `egress_chain`.
pub fn pod_filter_rules_with_egress(
    inbound_port: u16,
    edge_port: Option<u16>,
    egress: bool,
) -> String {
    let out = if egress {
        egress_chain()
    } else {
        String::new()
    };
    let (edge_set, edge_rule) = match edge_port {
        Some(port) => (
            "  set edge_sources {\n    type ipv4_addr\n  }\n".to_string(),
            format!("    ip saddr @edge_sources tcp dport {port} accept\n"),
        ),
        None => (String::new(), String::new()),
    };
    format!(
        "table inet {POD_FILTER_TABLE}
delete table inet {POD_FILTER_TABLE}
table inet {POD_FILTER_TABLE} {{
{edge_set}  chain input {{
    type filter hook input priority filter; policy drop;
    iifname \"lo\" accept
    ct state established,related ct direction reply accept
    tcp dport {inbound_port} accept
{edge_rule}    icmpv6 type {{ destination-unreachable, packet-too-big, time-exceeded, parameter-problem, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert }} accept
    icmp type {{ destination-unreachable, time-exceeded, parameter-problem }} accept
    meta l4proto tcp reject with tcp reset
  }}
{out}}}
"
    )
}

/// What the sidecar writes to its stderr once `nft` has loaded the pod's filter (atomically: the
/// whole ruleset or nothing) and before Envoy starts: the provisioner waits for this line in the
/// sidecar's log. It starts with [`FILTER_INSTALLED_PREFIX`].
pub fn filter_installed_line(inbound_port: u16) -> String {
    format!("{FILTER_INSTALLED_PREFIX}inbound tcp/{inbound_port} only")
}

/// The start of [`filter_installed_line`].
pub const FILTER_INSTALLED_PREFIX: &str = "iac-sidecar: pod filter installed: ";

/// The shell lines that load [`pod_filter_rules`] (exiting [`POD_FILTER_EXIT`] when nft cannot).
/// With an edge, they first read the pod's IPv4 default gateway from `/proc/net/route`
/// (little-endian hex) and load it into the table's `edge_sources` set in the same nft batch, so
/// the filter never exists without its one admitted host (the provisioner's "filter in place"
/// check implies the host is admitted). Without a default route nobody is admitted (the message
/// says so). Without an edge the lines are exactly what they were before edges existed.
fn filter_load_script(inbound_port: u16, edge_port: Option<u16>, egress: bool) -> String {
    let rules = pod_filter_rules_with_egress(inbound_port, edge_port, egress);
    let fail = format!(
        "{{ echo \"iac-sidecar: nft could not install the pod's packet filter (the sidecar needs CAP_NET_ADMIN)\" >&2; exit {POD_FILTER_EXIT}; }}"
    );
    let installed = format!("echo \"{}\" >&2\n", filter_installed_line(inbound_port));
    let Some(edge_port) = edge_port else {
        return format!("nft -f - <<'IAC_RULES' || {fail}\n{rules}IAC_RULES\n{installed}");
    };
    // Everything here runs in the sidecar's one shell (builtins only, no `cut`/`cat` processes):
    // each process started in a container costs an exec through the container's filesystem.
    format!(
        "host=
gw=
if [ -r /proc/net/route ]; then
  while read -r ifc dst gwx rest; do
    if [ \"$dst\" = 00000000 ] && [ \"$gwx\" != 00000000 ]; then gw=$gwx; break; fi
  done < /proc/net/route
fi
case $gw in
  [0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F])
    b4=${{gw%??????}}; r=${{gw#??}}; b3=${{r%????}}; r=${{r#??}}; b2=${{r%??}}; b1=${{r#??}}
    host=\"$((0x$b1)).$((0x$b2)).$((0x$b3)).$((0x$b4))\" ;;
esac
{{ printf '%s' {rules}
  [ -z \"$host\" ] || echo \"add element inet {POD_FILTER_TABLE} edge_sources {{ $host }}\"
}} | nft -f - || {fail}
{installed}if [ -n \"$host\" ]; then
  echo \"iac-sidecar: edge tcp/{edge_port} admitted from the host ($host) only\" >&2
else
  echo \"iac-sidecar: the pod has no default route: the edge port tcp/{edge_port} admits nobody\" >&2
fi
",
        rules = crate::shell::sh_quote(&rules)
    )
}

/// First delay before the sidecar restarts an Envoy that died; it doubles up to
/// [`ENVOY_RESTART_MAX_SECS`], and starts again from here after a run of a minute.
pub const ENVOY_RESTART_FIRST_SECS: u32 = 1;
/// Longest delay before the sidecar restarts Envoy.
pub const ENVOY_RESTART_MAX_SECS: u32 = 30;
/// What the sidecar writes to its stderr when Envoy died and is restarted (followed by the exit
/// status and the delay).
pub const ENVOY_RESTART_PREFIX: &str = "iac-sidecar: envoy exited with status ";

/// What the sidecar writes to its stderr when it restarts Envoy on SIGHUP (a reload: the
/// config file changed, e.g. new sandbox routes, and `envoy --mode validate` accepted it).
pub const ENVOY_RELOAD_LINE: &str =
    "iac-sidecar: reloading envoy (SIGHUP): restarting it with its config file as it is now";

/// What the sidecar writes to its stderr when `envoy --mode validate` refused the config file a
/// SIGHUP asked it to load (followed by Envoy's last lines); the running Envoy is left alone.
pub const ENVOY_RELOAD_REFUSED_LINE: &str = "iac-sidecar: reload refused: envoy --mode validate failed on the config file; the running envoy keeps its config";

/// Where the sidecar's supervisor writes the outcome of the last SIGHUP (`restarted`, or
/// `refused: <Envoy's last lines>`), for [`sidecar_reload_script`] to read: inside the sidecar
/// container, written temp + rename.
pub const RELOAD_STATUS_FILE: &str = "/tmp/iac-sidecar-reload";

/// The second stage of the sidecar's command: runs as the sidecar container's PID 1 for its whole
/// life, holding the pod's network namespace, and supervises Envoy (`"$@"`, already wrapped in
/// `setpriv` with no capabilities): SIGTERM/SIGINT are forwarded and end it; an Envoy that dies
/// by itself is started again after 1 s, doubling to 30 s, back to 1 s after a minute of running.
/// SIGHUP is a reload: the config file as it is now is first checked by the same command with
/// `--mode validate` (same user, same files); accepted, Envoy is stopped and started again at
/// once with it (the pod's network namespace and the app are not touched); refused, the running
/// Envoy is left alone and [`ENVOY_RELOAD_REFUSED_LINE`] is logged. Either way the outcome goes
/// to [`RELOAD_STATUS_FILE`].
/// A SIGTERM that lands between a child's start and `pid=$!` (the trap sees no pid yet) is
/// acted on right after: the child is stopped at once, never waited on for good. A SIGHUP that
/// lands while Envoy is down (the back-off sleep) ends the sleep: Envoy starts at once with the
/// config as it is now and `restarted` is written; one that lands during a validation is acted
/// on before the next wait, never lost.
/// Builtins only between starts (no process per restart besides Envoy's and the sleep).
pub fn envoy_supervisor_script() -> String {
    format!(
        "# {marker}
pid=
stop=
reload=
pending=
trap 'stop=1; [ -z \"$pid\" ] || kill -TERM \"$pid\" 2>/dev/null || :' TERM INT
trap 'reload=1' HUP
status() {{ printf '%s\\n' \"$1\" > {status}.tmp && mv -f {status}.tmp {status} || :; }}
delay={first}
while :; do
  read -r up rest < /proc/uptime
  started=${{up%.*}}
  restart=
  \"$@\" &
  pid=$!
  [ -z \"$stop\" ] || kill -TERM \"$pid\" 2>/dev/null || :
  if [ -n \"$pending\" ]; then
    pending=
    echo \"{reload_line}\" >&2
    status restarted
  fi
  while :; do
    if [ -n \"$reload\" ] && [ -z \"$stop\" ] && [ -z \"$restart\" ]; then
      reload=
      if out=$(\"$@\" --mode validate 2>&1); then
        restart=1
        kill -TERM \"$pid\" 2>/dev/null || :
      else
        echo \"{refused_line}\" >&2
        printf '%s\\n' \"$out\" | tail -n 5 >&2
        status \"{refused}$(printf '%s\\n' \"$out\" | tail -n 3 | tr '\\n' ' ')\"
      fi
    fi
    code=0
    wait \"$pid\" || code=$?
    kill -0 \"$pid\" 2>/dev/null || break
  done
  pid=
  [ -z \"$stop\" ] || exit 0
  if [ -n \"$restart\" ]; then
    echo \"{reload_line}\" >&2
    status restarted
    continue
  fi
  read -r up rest < /proc/uptime
  [ $(( ${{up%.*}} - started )) -lt 60 ] || delay={first}
  echo \"{prefix}$code; restarting it in ${{delay}}s\" >&2
  sleep \"$delay\" &
  pid=$!
  [ -z \"$stop\" ] || kill -TERM \"$pid\" 2>/dev/null || :
  [ -n \"$reload\" ] || wait \"$pid\" || :
  kill -TERM \"$pid\" 2>/dev/null || :
  pid=
  [ -z \"$stop\" ] || exit 0
  if [ -n \"$reload\" ]; then
    reload=
    pending=1
    continue
  fi
  delay=$(( delay * 2 ))
  [ \"$delay\" -le {max} ] || delay={max}
done
",
        marker = SUPERVISOR_MARKER,
        first = ENVOY_RESTART_FIRST_SECS,
        max = ENVOY_RESTART_MAX_SECS,
        prefix = ENVOY_RESTART_PREFIX,
        reload_line = ENVOY_RELOAD_LINE,
        refused_line = ENVOY_RELOAD_REFUSED_LINE,
        refused = RELOAD_REFUSED,
        status = RELOAD_STATUS_FILE,
    )
}

/// The first line of [`envoy_supervisor_script`] (a comment): [`sidecar_reload_script`] looks
/// for it in the supervisor's command line to tell a supervisor that validates and answers a
/// reload from one made by an older iac, which restarts Envoy on SIGHUP without either.
pub const SUPERVISOR_MARKER: &str =
    "iac-sidecar-supervisor: validates reloads, answers in the status file";

/// What [`sidecar_reload_script`] prints last when the reload worked.
pub const RELOAD_OK: &str = "ok";
/// The prefix of what [`sidecar_reload_script`] prints when Envoy refused the new config (the
/// running Envoy kept the old one).
pub const RELOAD_REFUSED: &str = "refused: ";
/// The prefix of what [`sidecar_reload_script`] prints when the reload left the sidecar without
/// a working Envoy (or its supervisor never answered).
pub const RELOAD_UNHEALTHY: &str = "unhealthy: ";

/// The script a provisioner runs inside a running sidecar (`sh -c SCRIPT iac-reload PID URL`,
/// PID 1 on Docker, `URL` the stats listener's `/stats/prometheus`) to reload its Envoy and learn
/// how it went: it sends SIGHUP to the supervisor ([`envoy_supervisor_script`]), waits (at most
/// 30 s) for the outcome in [`RELOAD_STATUS_FILE`], then for the restarted Envoy to answer on its
/// stats listener (at most 15 s). A supervisor made by an older iac (no [`SUPERVISOR_MARKER`] in
/// its command line) restarts Envoy on SIGHUP without validating or answering: the script then
/// gives it a second and goes by the stats listener alone (a config Envoy refuses shows as
/// unhealthy there). A sidecar image without `curl` is reported unhealthy, naming it. It prints one line: [`RELOAD_OK`], [`RELOAD_REFUSED`]`…` or
/// [`RELOAD_UNHEALTHY`]`…`, and exits 0 in every case.
pub fn sidecar_reload_script() -> String {
    format!(
        "f={status}
command -v curl >/dev/null 2>&1 || {{ echo \"{unhealthy}the sidecar image has no curl to check the reloaded envoy's stats listener\"; exit 0; }}
rm -f \"$f\"
if ! tr '\\0' ' ' < /proc/\"$1\"/cmdline | grep -qF '{marker}'; then
  kill -HUP \"$1\" || {{ echo \"{unhealthy}cannot signal the sidecar's supervisor (pid $1)\"; exit 0; }}
  sleep 1
else
kill -HUP \"$1\" || {{ echo \"{unhealthy}cannot signal the sidecar's supervisor (pid $1)\"; exit 0; }}
i=0
while [ ! -s \"$f\" ]; do
  i=$((i + 1))
  [ \"$i\" -le 300 ] || {{ echo \"{unhealthy}the sidecar's supervisor did not answer the reload within 30 s\"; exit 0; }}
  sleep 0.1
done
s=$(cat \"$f\")
case \"$s\" in
  restarted) ;;
  *) echo \"$s\"; exit 0 ;;
esac
fi
i=0
until curl -sf -o /dev/null --max-time 1 \"$2\"; do
  i=$((i + 1))
  [ \"$i\" -le 150 ] || {{ echo \"{unhealthy}envoy restarted with the new config but did not answer on its stats listener within 15 s\"; exit 0; }}
  sleep 0.1
done
echo {ok}
",
        status = RELOAD_STATUS_FILE,
        unhealthy = RELOAD_UNHEALTHY,
        ok = RELOAD_OK,
        marker = SUPERVISOR_MARKER,
    )
}

/// The sidecar container's command: a POSIX shell script that installs [`pod_filter_rules`]
/// (failing with exit code [`POD_FILTER_EXIT`] and a message naming the missing tool when it
/// cannot; with an edge, the host is admitted to it in the same batch), then gives up NET_ADMIN
/// (its bounding set, through `setpriv`) and becomes the Envoy supervisor
/// ([`envoy_supervisor_script`]), which starts `envoy_argv` through `setpriv` with no
/// capabilities left (inheritable, ambient and bounding sets cleared, so not even a root Envoy
/// regains any), as the owner of `key_file` when that is not root (the key is 0600 and the
/// sidecar has no DAC_OVERRIDE). The supervisor stays PID 1: it holds the pod's network namespace
/// while Envoy is restarted. With `egress` (the pod's egress is controlled), the filter gets the
/// outbound chain and Envoy runs with the group [`ENVOY_EGRESS_GID`], the only one allowed out.
pub fn sidecar_command(
    inbound_port: u16,
    edge_port: Option<u16>,
    egress: bool,
    key_file: &str,
    envoy_argv: &[String],
) -> Vec<String> {
    let (root_gid, gid) = if egress {
        (
            format!("--regid={ENVOY_EGRESS_GID} --clear-groups "),
            ENVOY_EGRESS_GID.to_string(),
        )
    } else {
        (String::new(), "\"$gid\"".to_string())
    };
    let script = format!(
        "set -eu
for tool in nft setpriv stat; do
  command -v \"$tool\" >/dev/null 2>&1 || {{ echo \"iac-sidecar: $tool is missing from this image; the pod's packet filter cannot be installed (rebuild the Envoy image with scripts/bootstrap-images.sh)\" >&2; exit {POD_FILTER_EXIT}; }}
done
{load}supervisor=\"$1\"
key=\"$2\"
shift 2
ids=$(stat -c '%u %g' \"$key\")
uid=${{ids% *}}
gid=${{ids#* }}
if [ \"$uid\" = 0 ]; then
  exec setpriv --bounding-set=-net_admin -- /bin/sh -c \"$supervisor\" iac-sidecar setpriv {root_gid}--inh-caps=-all --ambient-caps=-all --bounding-set=-all -- \"$@\"
fi
exec setpriv --bounding-set=-net_admin -- /bin/sh -c \"$supervisor\" iac-sidecar setpriv --reuid=\"$uid\" --regid={gid} --clear-groups --inh-caps=-all --ambient-caps=-all --bounding-set=-all -- \"$@\"
",
        load = filter_load_script(inbound_port, edge_port, egress)
    );
    let mut cmd = vec![
        "/bin/sh".to_string(),
        "-c".into(),
        script,
        "iac-sidecar".into(),
        envoy_supervisor_script(),
        key_file.to_string(),
    ];
    cmd.extend(envoy_argv.iter().cloned());
    cmd
}

/// The app container: PID 1 is `iac-agent` as root, which switches to the app's user
/// (SETUID, SETGID) and signals that user's processes (KILL). Nothing else.
pub fn app_privileges() -> Privileges {
    Privileges {
        no_new_privileges: true,
        cap_drop: vec!["ALL".into()],
        cap_add: vec!["KILL".into(), "SETGID".into(), "SETUID".into()],
    }
}

/// The sidecar container: NET_ADMIN to install the pod's packet filter, SETPCAP to empty its
/// bounding set afterwards, SETUID/SETGID to switch to the key's owner. [`sidecar_command`] drops
/// all of them before Envoy starts; the app container never has any of them.
pub fn sidecar_privileges() -> Privileges {
    Privileges {
        no_new_privileges: true,
        cap_drop: vec!["ALL".into()],
        cap_add: vec![
            "NET_ADMIN".into(),
            "SETGID".into(),
            "SETPCAP".into(),
            "SETUID".into(),
        ],
    }
}

/// Everything [`plan`] needs: the prepared services and the project's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanInput {
    /// The project.
    pub project: ProjectName,
    /// The project's network name.
    pub network: String,
    /// The sidecar image.
    pub envoy_image: String,
    /// OTLP endpoint handed to apps; `None` → the stdout exporter.
    pub otel_endpoint: Option<String>,
    /// The services to run.
    pub services: Vec<PlannedService>,
    /// Services whose running containers are left alone (they failed to prepare).
    pub keep: Vec<ServiceName>,
    /// Set for a sandbox deploy: every service is a copy in this sandbox (named
    /// [`crate::sandbox::copy_name`]); its containers carry [`crate::sandbox::LABEL_SANDBOX`],
    /// its app `IAC_SANDBOX`, and the stack is scoped to the sandbox.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<crate::sandbox::SandboxName>,
}

/// One prepared service, as [`plan`] needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedService {
    /// The service.
    pub name: ServiceName,
    /// Image tag (content-addressed).
    pub image: String,
    /// Host path of the rendered Envoy config, and the digest of its contents.
    pub envoy_config: PathBuf,
    /// Digest of the rendered config (part of the spec hash).
    pub envoy_config_digest: String,
    /// Host paths of the service's certificates.
    pub certs: IssuedCerts,
    /// The app's own port, when it declares one (`PORT`).
    pub app_port: Option<u16>,
    /// Extra environment from the repos file.
    pub env: BTreeMap<String, String>,
    /// Where the sidecar's edge listener is published on the host; `None`: no edge.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edge: Option<EdgeBind>,
    /// The repos file's `replicas` (1 unless it says otherwise).
    pub replicas: u32,
    /// Where the app may connect outside the mesh.
    #[serde(default)]
    pub egress: EgressPolicy,
}

/// Envoy's worker threads per sidecar. Envoy's own default is one per hardware thread of the
/// host, whatever the container may use: on a 64-core host every sidecar would start 64 workers
/// (and as many connection pools per upstream). Two, like Istio's default proxy concurrency, is
/// plenty for a sidecar's traffic.
pub const ENVOY_CONCURRENCY: u32 = 2;

/// How Envoy is started for a service (after the pod filter on Docker; by the agent on Swarm; as
/// the pod's second container on Kubernetes): the config at [`ENVOY_CONFIG_IN_CONTAINER`],
/// [`ENVOY_CONCURRENCY`] workers, warnings only, the project as its cluster and the service as its
/// node.
pub fn envoy_argv(project: &ProjectName, svc: &ServiceName) -> Vec<String> {
    vec![
        "envoy".into(),
        "-c".into(),
        ENVOY_CONFIG_IN_CONTAINER.into(),
        "--concurrency".into(),
        ENVOY_CONCURRENCY.to_string(),
        "--log-level".into(),
        "warn".into(),
        "--service-cluster".into(),
        project.to_string(),
        "--service-node".into(),
        svc.to_string(),
    ]
}

/// `<project>-<service>`: the app container.
pub fn app_container_name(project: &ProjectName, svc: &ServiceName) -> String {
    format!("{project}-{svc}")
}

/// `<project>-<service>-envoy`: the sidecar container.
pub fn envoy_container_name(project: &ProjectName, svc: &ServiceName) -> String {
    format!("{project}-{svc}-envoy")
}

/// The network name for a project: `<network>` shared by the project's containers.
pub fn plan(input: &PlanInput) -> Stack {
    let project = &input.project;
    let base_labels = |role: Role, svc: Option<&ServiceName>| {
        let mut l = match svc {
            Some(s) => crate::labels::service_labels(project.as_str(), s.as_str()),
            None => crate::labels::project_labels(project.as_str()),
        };
        l.insert(LABEL_ROLE.to_string(), role.to_string());
        if let (Some(sb), Some(_)) = (&input.sandbox, svc) {
            l.insert(crate::sandbox::LABEL_SANDBOX.to_string(), sb.to_string());
        }
        l
    };
    let ports = MeshPorts::default();
    // Never through the egress proxy: the project's services (by their DNS aliases).
    let mut mesh_names: Vec<String> = input.services.iter().map(|s| s.name.to_string()).collect();
    mesh_names.sort();
    let mut services: Vec<ServiceStack> = input
        .services
        .iter()
        .map(|s| {
            let app_name = app_container_name(project, &s.name);
            let mut env = BTreeMap::new();
            env.insert(
                "PORT".into(),
                s.app_port.unwrap_or(DEFAULT_APP_PORT).to_string(),
            );
            // A declared port gates readiness: the agent answers SERVING only once the app
            // accepts connections on it (and NOT_SERVING if the app exits).
            if let Some(port) = s.app_port {
                env.insert("IAC_APP_PORT".into(), port.to_string());
            }
            // The app joins the sidecar's namespace: when the sidecar container is restarted into
            // a new one, the agent ends the app's container so the engine restarts it there.
            env.insert("IAC_FOLLOW_POD_NETWORK".into(), "1".into());
            // Restart counts outlive a restart of the container (its own layer keeps the
            // file; a new pod starts without it).
            env.insert("IAC_RESTART_STATE".into(), AGENT_RESTART_STATE.into());
            env.insert("IAC_PROJECT".into(), project.to_string());
            env.insert("IAC_SERVICE".into(), s.name.to_string());
            if let Some(sb) = &input.sandbox {
                env.insert("IAC_SANDBOX".into(), sb.to_string());
            }
            env.insert(
                "IAC_MESH_OUTBOUND".into(),
                format!("http://127.0.0.1:{}", ports.outbound),
            );
            env.insert("OTEL_SERVICE_NAME".into(), s.name.to_string());
            env.insert(
                "OTEL_RESOURCE_ATTRIBUTES".into(),
                format!("service.namespace={project},deployment.environment=iac"),
            );
            match &input.otel_endpoint {
                Some(ep) => {
                    env.insert("OTEL_EXPORTER_OTLP_ENDPOINT".into(), ep.clone());
                    for k in [
                        "OTEL_TRACES_EXPORTER",
                        "OTEL_METRICS_EXPORTER",
                        "OTEL_LOGS_EXPORTER",
                    ] {
                        env.insert(k.into(), "otlp".into());
                    }
                }
                None => {
                    // No collector: nothing is exported. (Printing spans to stdout would swamp
                    // the app's own log lines in `iac logs` and the saved tails once the
                    // instrumentations trace every request; baggage propagates without an
                    // exporter. `env: {OTEL_TRACES_EXPORTER: console}` brings it back.)
                    env.insert("OTEL_TRACES_EXPORTER".into(), "none".into());
                    env.insert("OTEL_METRICS_EXPORTER".into(), "none".into());
                    env.insert("OTEL_LOGS_EXPORTER".into(), "none".into());
                }
            }
            // A controlled pod's only way out is the sidecar's egress listener: pip, requests,
            // httpx, curl and friends find it in the standard proxy variables.
            if s.egress.is_controlled() {
                env.extend(proxy_env(ports.egress, &mesh_names));
            }
            env.extend(s.env.iter().map(|(k, v)| (k.clone(), v.clone())));
            let envoy_name = envoy_container_name(project, &s.name);
            let app = ContainerSpec {
                name: app_name,
                image: s.image.clone(),
                cmd: Vec::new(),
                env,
                labels: base_labels(Role::App, Some(&s.name)),
                // The sidecar's namespace: created (and filtered) before the app.
                network: NetworkMode::Container {
                    name: envoy_name.clone(),
                },
                mounts: Vec::new(),
                ports: Vec::new(),
                stop_timeout_secs: 10,
                privileges: app_privileges(),
                limits: Limits::default(),
                restart: RestartPolicy::UnlessStopped,
            };
            let inside = CertPaths::in_container();
            let ro = |source: &PathBuf, target: &PathBuf| Mount {
                source: source.clone(),
                target: target.clone(),
                read_only: true,
            };
            let envoy = ContainerSpec {
                name: envoy_name,
                image: input.envoy_image.clone(),
                cmd: sidecar_command(
                    ports.inbound,
                    s.edge.map(|_| ports.edge),
                    s.egress.is_controlled(),
                    &inside.key.display().to_string(),
                    &envoy_argv(project, &s.name),
                ),
                // The official image's entrypoint would switch to uid 101 unless ENVOY_UID=0; the
                // sidecar command picks Envoy's user itself (the owner of the 0600 key).
                env: BTreeMap::from([("ENVOY_UID".to_string(), "0".to_string())]),
                labels: base_labels(Role::Envoy, Some(&s.name)),
                network: NetworkMode::Network {
                    name: input.network.clone(),
                    aliases: vec![s.name.to_string()],
                },
                mounts: vec![
                    ro(&s.envoy_config, &PathBuf::from(ENVOY_CONFIG_IN_CONTAINER)),
                    ro(&s.certs.paths.ca, &inside.ca),
                    ro(&s.certs.paths.cert, &inside.cert),
                    ro(&s.certs.paths.key, &inside.key),
                ],
                ports: std::iter::once(PortPublish {
                    container_port: ports.inbound,
                    host_ip: "127.0.0.1".into(),
                    host_port: None,
                })
                .chain(s.edge.map(|bind| PortPublish {
                    container_port: ports.edge,
                    host_ip: bind.host.to_string(),
                    host_port: bind.port,
                }))
                .collect(),
                stop_timeout_secs: 5,
                privileges: sidecar_privileges(),
                limits: Limits::default(),
                restart: RestartPolicy::UnlessStopped,
            };
            #[derive(Serialize)]
            struct HashInput<'a> {
                app: &'a ContainerSpec,
                envoy: &'a ContainerSpec,
                envoy_config_digest: &'a str,
                certs: &'a str,
            }
            let hash_input = HashInput {
                app: &app,
                envoy: &envoy,
                envoy_config_digest: &s.envoy_config_digest,
                certs: &s.certs.fingerprint,
            };
            let json = serde_json::to_vec(&hash_input).expect("plain data serializes");
            let spec_hash = sha256_tagged(&json).trim_start_matches("sha256:")[..16].to_string();
            let mut app = app;
            let mut envoy = envoy;
            app.labels.insert(LABEL_SPEC_HASH.into(), spec_hash.clone());
            envoy
                .labels
                .insert(LABEL_SPEC_HASH.into(), spec_hash.clone());
            ServiceStack {
                service: s.name.clone(),
                app,
                envoy,
                spec_hash,
                replicas: s.replicas,
                pod_filter: Some(PodFilter {
                    table: POD_FILTER_TABLE.to_string(),
                    inbound_port: ports.inbound,
                }),
                egress: s.egress.clone(),
            }
        })
        .collect();
    services.sort_by(|a, b| a.service.cmp(&b.service));
    let mut keep = input.keep.clone();
    keep.sort();
    keep.dedup();
    Stack {
        project: project.clone(),
        network: NetworkSpec {
            name: input.network.clone(),
            labels: base_labels(Role::Network, None),
        },
        services,
        keep,
        repair: BTreeMap::new(),
        sandbox: input.sandbox.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample_input() -> PlanInput {
        let svc = |n: &str, port: Option<u16>| PlannedService {
            name: ServiceName::new(n).unwrap(),
            image: format!("iac/demo-{n}:0123456789ab"),
            envoy_config: format!("/state/demo/services/{n}/envoy.yaml").into(),
            envoy_config_digest: format!("sha256:{n}-config"),
            certs: IssuedCerts {
                paths: CertPaths {
                    ca: "/secrets/ca.pem".into(),
                    cert: format!("/secrets/demo/{n}.pem").into(),
                    key: format!("/secrets/demo/{n}.key").into(),
                },
                fingerprint: format!("sha256:{n}-certs"),
            },
            app_port: port,
            env: [("GREETING".to_string(), "hi".to_string())].into(),
            edge: port.map(|_| EdgeBind::loopback()),
            replicas: 1,
            egress: Default::default(),
        };
        PlanInput {
            project: ProjectName::new("demo").unwrap(),
            network: "iacnet".into(),
            envoy_image: "iac/envoy:1.40".into(),
            otel_endpoint: None,
            services: vec![svc("web", Some(8000)), svc("api", None)],
            keep: vec![ServiceName::new("broken").unwrap()],
            sandbox: None,
        }
    }

    #[test]
    fn golden_stack() {
        let stack = plan(&sample_input());
        let got = serde_json::to_string_pretty(&stack).unwrap() + "\n";
        let golden =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/stack.json");
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
            std::fs::write(&golden, &got).unwrap();
        }
        let want = std::fs::read_to_string(&golden)
            .expect("golden file (run with UPDATE_GOLDEN=1 to create)");
        assert_eq!(
            got, want,
            "plan() output changed; review and re-run with UPDATE_GOLDEN=1"
        );
    }

    #[test]
    fn pods_are_hardened_and_the_sidecar_filters_before_envoy_starts() {
        let stack = plan(&sample_input());
        for s in &stack.services {
            assert_eq!(s.app.privileges, app_privileges());
            assert_eq!(s.envoy.privileges, sidecar_privileges());
            assert!(s.app.privileges.no_new_privileges && s.envoy.privileges.no_new_privileges);
            assert_eq!(s.app.privileges.cap_drop, ["ALL"]);
            assert!(
                !s.app.privileges.cap_add.iter().any(|c| c == "NET_ADMIN"),
                "the app never gets NET_ADMIN"
            );
            assert_eq!(
                s.pod_filter,
                Some(PodFilter {
                    table: "iac_pod".into(),
                    inbound_port: 15000
                })
            );
            let cmd = &s.envoy.cmd;
            assert_eq!(&cmd[..2], ["/bin/sh", "-c"]);
            assert_eq!(cmd[3], "iac-sidecar");
            assert_eq!(cmd[4], envoy_supervisor_script());
            assert_eq!(
                cmd[5], "/etc/iac/certs/key.pem",
                "Envoy runs as the key's owner"
            );
            assert_eq!(&cmd[6..9], ["envoy", "-c", ENVOY_CONFIG_IN_CONTAINER]);
            let script = &cmd[2];
            let filter = script.find("nft -f -").expect("installs the filter");
            let exec = script
                .find("exec setpriv --bounding-set=-net_admin -- /bin/sh -c \"$supervisor\"")
                .expect("gives up NET_ADMIN, then supervises Envoy");
            assert!(filter < exec, "filter first, then Envoy");
            assert!(script.starts_with("set -eu\n"));
            assert!(script.contains("--bounding-set=-all"));
            // The pod: the sidecar owns the namespace, the address and the ports; the app joins.
            assert_eq!(
                s.app.network,
                NetworkMode::Container {
                    name: s.envoy.name.clone()
                }
            );
            assert_eq!(
                s.envoy.network,
                NetworkMode::Network {
                    name: "iacnet".into(),
                    aliases: vec![s.service.to_string()]
                }
            );
            assert!(s.app.ports.is_empty());
            assert_eq!(s.envoy.ports[0].container_port, 15000);
            assert_eq!(s.published(15000), s.envoy.ports.first());
            assert_eq!(s.app.restart, RestartPolicy::UnlessStopped);
            assert_eq!(s.envoy.restart, RestartPolicy::UnlessStopped);
            let edge = (s.service.as_str() == "web").then_some(15080);
            assert!(script.contains(&pod_filter_rules(15000, edge)));
            assert_eq!(script.contains("edge_sources"), edge.is_some());
        }
        let rules = pod_filter_rules(15000, None);
        assert!(rules.contains("policy drop;"));
        assert!(rules.contains("tcp dport 15000 accept"));
        assert!(rules.contains("iifname \"lo\" accept"));
        assert!(rules.contains("ct state established,related ct direction reply accept"));
        assert_eq!(
            rules.matches(" accept").count(),
            5,
            "nothing else is let in:\n{rules}"
        );
        assert!(!rules.contains("edge"));
        // With an edge: one more port, and only from the set the sidecar fills with the gateway.
        let rules = pod_filter_rules(15000, Some(15080));
        assert_eq!(rules.matches(" accept").count(), 6, "{rules}");
        assert!(rules.contains("ip saddr @edge_sources tcp dport 15080 accept"));
        assert!(
            rules
                .lines()
                .filter(|l| l.contains("15080"))
                .all(|l| l.contains("ip saddr @edge_sources")),
            "the edge port is open to the gateway only:\n{rules}"
        );
    }

    #[test]
    fn controlled_egress_filters_the_pods_output_and_gives_the_app_proxy_variables() {
        use crate::egress::{EgressPolicy, EgressRule};
        let mut input = sample_input();
        let rule: EgressRule = "api.example.com:443".parse().unwrap();
        input.services[1].egress = EgressPolicy::Allow(vec![rule.clone()]);
        let stack = plan(&input);
        let api = stack
            .services
            .iter()
            .find(|s| s.service.as_str() == "api")
            .unwrap();
        let web = stack
            .services
            .iter()
            .find(|s| s.service.as_str() == "web")
            .unwrap();
        assert_eq!(api.egress, EgressPolicy::Allow(vec![rule]));
        assert_eq!(api.app.env["HTTPS_PROXY"], "http://127.0.0.1:15002");
        assert_eq!(api.app.env["http_proxy"], "http://127.0.0.1:15002");
        assert_eq!(api.app.env["NO_PROXY"], "localhost,127.0.0.1,::1,api,web");
        let script = &api.envoy.cmd[2];
        assert!(script.contains(&pod_filter_rules_with_egress(15000, None, true)));
        assert!(script.contains("setpriv --regid=1337 --clear-groups --inh-caps=-all"));
        assert!(script.contains("--reuid=\"$uid\" --regid=1337 --clear-groups"));
        // Open (the sample's web): no variables, no output chain, Envoy keeps the key's group.
        assert!(!web.app.env.contains_key("HTTPS_PROXY"));
        let script = &web.envoy.cmd[2];
        assert!(!script.contains("chain output"));
        assert!(script.contains("--regid=\"$gid\""));
        // A service's own env still wins (an operator can point a client elsewhere).
        input.services[1]
            .env
            .insert("NO_PROXY".into(), "custom".into());
        let stack = plan(&input);
        let api = stack
            .services
            .iter()
            .find(|s| s.service.as_str() == "api")
            .unwrap();
        assert_eq!(api.app.env["NO_PROXY"], "custom");
    }

    #[test]
    fn the_egress_chain_lets_out_only_envoys_group_replies_and_icmp() {
        let rules = pod_filter_rules_with_egress(15000, Some(15080), true);
        let chain = rules.split("chain output").nth(1).expect("an output chain");
        assert!(chain.contains("type filter hook output priority filter; policy accept;"));
        let accepts: Vec<&str> = chain
            .lines()
            .map(str::trim)
            .filter(|l| l.ends_with(" accept"))
            .collect();
        assert_eq!(
            accepts.len(),
            6,
            "loopback, replies, Envoy's group, resets, ICMPv6, ICMP: {chain}"
        );
        assert!(accepts.contains(&"oifname \"lo\" accept"));
        assert!(accepts.contains(&"ct direction reply accept"));
        assert!(accepts.contains(&"meta skgid 1337 accept"));
        assert!(!chain.contains("echo-request"), "no ping out: {chain}");
        assert!(
            chain
                .trim_end()
                .trim_end_matches('}')
                .trim_end()
                .ends_with("reject with icmpx type host-unreachable\n  }")
                || chain.contains("    reject with icmpx type host-unreachable\n  }"),
            "everything else has no route: {chain}"
        );
        // Without egress the rules are exactly what they were.
        assert_eq!(
            pod_filter_rules_with_egress(15000, Some(15080), false),
            pod_filter_rules(15000, Some(15080))
        );
        assert!(!pod_filter_rules(15000, None).contains("output"));
    }

    #[test]
    fn an_edge_is_published_where_its_bind_says() {
        let mut input = sample_input();
        input.services[1].edge = Some(EdgeBind {
            host: "0.0.0.0".parse().unwrap(),
            port: Some(8081),
        });
        let stack = plan(&input);
        let ports = |name: &str| {
            stack
                .services
                .iter()
                .find(|s| s.service.as_str() == name)
                .unwrap()
                .envoy
                .ports
                .clone()
        };
        assert_eq!(
            ports("web"),
            [
                PortPublish {
                    container_port: 15000,
                    host_ip: "127.0.0.1".into(),
                    host_port: None
                },
                PortPublish {
                    container_port: 15080,
                    host_ip: "127.0.0.1".into(),
                    host_port: None
                }
            ]
        );
        assert_eq!(
            ports("api")[1],
            PortPublish {
                container_port: 15080,
                host_ip: "0.0.0.0".into(),
                host_port: Some(8081)
            }
        );
        // The mesh port stays on loopback whatever the edge does.
        assert_eq!(ports("api")[0].host_ip, "127.0.0.1");
        let mut no_edge = sample_input();
        no_edge.services[0].edge = None;
        assert_eq!(plan(&no_edge).services[1].envoy.ports.len(), 1);
    }

    /// The script that admits the host reads the gateway the way a pod sees it and loads it in
    /// the same nft batch as the rules.
    #[test]
    fn the_edge_admits_the_default_gateway_in_the_same_batch() {
        let script = filter_load_script(15000, Some(15080), false);
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        // A stand-in `nft` that keeps the batch it was fed, and a route table with a gateway.
        let nft = dir.join("nft");
        std::fs::write(
            &nft,
            format!(
                "#!/bin/sh\n[ \"$*\" = \"-f -\" ] || exit 9\ncat > {}/nft.in\n",
                dir.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&nft, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let route = dir.join("route");
        let run = |table: &str| {
            std::fs::write(&route, table).unwrap();
            let out = std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(format!(
                    "set -eu\n{}",
                    script.replace("/proc/net/route", &route.display().to_string())
                ))
                .env("PATH", format!("{}:/usr/bin:/bin", dir.display()))
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            let batch = std::fs::read_to_string(dir.join("nft.in")).unwrap();
            (batch, String::from_utf8_lossy(&out.stderr).into_owned())
        };
        let (batch, stderr) = run(
            "Iface\tDestination\tGateway \tFlags\neth0\t000013AC\t00000000\t0001\neth0\t00000000\t010013AC\t0003\n",
        );
        assert_eq!(
            batch,
            format!(
                "{}add element inet iac_pod edge_sources {{ 172.19.0.1 }}\n",
                pod_filter_rules(15000, Some(15080))
            ),
            "rules and the gateway, one batch"
        );
        assert!(stderr.contains("(172.19.0.1) only"), "{stderr}");
        // No default route: the rules alone, nobody admitted.
        let (batch, stderr) =
            run("Iface\tDestination\tGateway \tFlags\neth0\t000013AC\t00000000\t0001\n");
        assert_eq!(batch, pod_filter_rules(15000, Some(15080)));
        assert!(stderr.contains("admits nobody"), "{stderr}");
        // A gateway that is not 8 hex digits is no gateway (not a shell arithmetic error).
        let (batch, stderr) =
            run("Iface\tDestination\tGateway \tFlags\neth0\t00000000\t01$(x)AC\t0003\n");
        assert_eq!(batch, pod_filter_rules(15000, Some(15080)));
        assert!(stderr.contains("admits nobody"), "{stderr}");
        // An unreadable route table likewise.
        let unreadable = script.replace("/proc/net/route", "/nonexistent/route");
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("set -eu\n{unreadable}"))
            .env("PATH", format!("{}:/usr/bin:/bin", dir.display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("admits nobody"));
        // Without an edge the lines are what they were before edges existed.
        assert!(filter_load_script(15000, None, false).starts_with("nft -f - <<'IAC_RULES' || {"));
        assert!(!filter_load_script(15000, None, false).contains("/proc/net/route"));
    }

    /// The sidecar's PID 1 restarts an Envoy that dies (backing off), and ends with it on SIGTERM,
    /// also while waiting to restart it.
    #[test]
    fn the_supervisor_restarts_envoy_and_stops_on_sigterm() {
        let tmp = tempfile::tempdir().unwrap();
        let runs = tmp.path().join("runs");
        let log = tmp.path().join("stderr");
        // A stand-in Envoy that dies at once, counting its runs.
        let mut child = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(envoy_supervisor_script())
            .args(["iac-sidecar", "/bin/sh", "-c"])
            .arg(format!("echo run >> {}; exit 3", runs.display()))
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let count = || {
            std::fs::read_to_string(&runs)
                .map(|s| s.lines().count())
                .unwrap_or(0)
        };
        let err = || std::fs::read_to_string(&log).unwrap_or_default();
        let t0 = std::time::Instant::now();
        while count() < 2 || !err().contains("restarting it in 2s") {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(10),
                "restarted in time: {}",
                err()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(
            t0.elapsed() >= std::time::Duration::from_millis(900),
            "the first restart waits 1s: {:?}",
            t0.elapsed()
        );
        // Now waiting 2 s before the third run: SIGTERM ends it at once.
        let stop = std::time::Instant::now();
        // SAFETY: kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
        let status = child.wait().unwrap();
        assert!(status.success(), "{status:?}");
        assert!(stop.elapsed() < std::time::Duration::from_secs(2));
        let err = err();
        assert!(
            err.contains(&format!("{ENVOY_RESTART_PREFIX}3; restarting it in 1s")),
            "{err}"
        );
        // A running Envoy gets the SIGTERM itself.
        let mut child = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(envoy_supervisor_script())
            .args(["iac-sidecar", "/bin/sh", "-c"])
            .arg(format!(
                "trap 'echo term >> {0}; exit 0' TERM; echo up >> {0}; while :; do sleep 0.05; done",
                runs.display()
            ))
            .spawn()
            .unwrap();
        let before = count();
        while count() == before {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // SAFETY: as above.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
        assert!(child.wait().unwrap().success());
        assert!(
            std::fs::read_to_string(&runs)
                .unwrap()
                .ends_with("up\nterm\n")
        );
    }

    /// SIGHUP through the reload script: a config `--mode validate` accepts restarts Envoy with
    /// it ("ok" once the stats listener answers); one it refuses leaves the running Envoy alone
    /// and says why.
    #[test]
    fn a_reload_is_validated_first_and_says_how_it_went() {
        let tmp = tempfile::tempdir().unwrap();
        let runs = tmp.path().join("runs");
        let config = tmp.path().join("envoy.yaml");
        let status = tmp.path().join("reload-status");
        let status = status.to_str().unwrap();
        std::fs::write(&config, "good v1").unwrap();
        // A stand-in Envoy: `--mode validate` accepts a config holding "good"; otherwise it
        // records the config it runs with and runs until SIGTERM.
        let standin = format!(
            "if [ \"${{1:-}}\" = validate ]; then grep -q good {c} || {{ echo \"bad config: $(cat {c})\" >&2; exit 1; }}; exit 0; fi
grep -q crash {c} && exit 3
echo \"up $(cat {c})\" >> {r}
trap 'exit 0' TERM
while :; do sleep 0.05; done",
            c = config.display(),
            r = runs.display()
        );
        let mut child = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(envoy_supervisor_script().replace(RELOAD_STATUS_FILE, status))
            .args(["iac-sidecar", "/bin/sh", "-c", &standin])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let lines = || {
            std::fs::read_to_string(&runs)
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        let t0 = std::time::Instant::now();
        while lines().is_empty() {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(10),
                "envoy started"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // The stats listener of the "restarted Envoy".
        let stats = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/stats/prometheus", stats.local_addr().unwrap());
        std::thread::spawn(move || {
            for conn in stats.incoming() {
                use std::io::{Read, Write};
                let mut conn = conn.unwrap();
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
            }
        });
        let reload = || {
            let out = std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(sidecar_reload_script().replace(RELOAD_STATUS_FILE, status))
                .args(["iac-reload", &child.id().to_string(), &url])
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        std::fs::write(&config, "good v2").unwrap();
        assert_eq!(reload(), RELOAD_OK);
        assert_eq!(lines(), ["up good v1", "up good v2"]);
        std::fs::write(&config, "broken v3").unwrap();
        let said = reload();
        assert!(
            said.starts_with(RELOAD_REFUSED) && said.contains("bad config: broken v3"),
            "{said}"
        );
        assert_eq!(
            lines(),
            ["up good v1", "up good v2"],
            "the running envoy stays"
        );
        std::fs::write(&config, "good v4").unwrap();
        assert_eq!(reload(), RELOAD_OK);
        assert_eq!(lines(), ["up good v1", "up good v2", "up good v4"]);
        // A config Envoy validates but dies on: the supervisor is in its back-off (1 s, 2 s,
        // 4 s …). A reload then starts Envoy at once and answers; it is not lost in the sleep.
        std::fs::write(&config, "good crash v5").unwrap();
        assert_eq!(reload(), RELOAD_OK, "restarted; the stand-in stats answer");
        std::thread::sleep(std::time::Duration::from_millis(1500));
        std::fs::write(&config, "good v6").unwrap();
        assert_eq!(reload(), RELOAD_OK);
        assert_eq!(
            lines(),
            ["up good v1", "up good v2", "up good v4", "up good v6"]
        );
        // SAFETY: kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
        assert!(child.wait().unwrap().success());

        // A supervisor made by an older iac restarts Envoy on SIGHUP and writes no status: the
        // reload goes by the stats listener, not by a status that never comes.
        std::fs::write(&config, "good v7").unwrap();
        let legacy = "pid=\ntrap '[ -z \"$pid\" ] || kill -TERM \"$pid\"' HUP\ntrap 'kill -TERM \"$pid\"; exit 0' TERM\nwhile :; do \"$@\" & pid=$!; wait \"$pid\"; while kill -0 \"$pid\" 2>/dev/null; do wait \"$pid\"; done; done";
        let mut child = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(legacy)
            .args(["iac-sidecar", "/bin/sh", "-c", &standin])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        while lines().len() < 5 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::fs::write(&config, "good v8").unwrap();
        // (Had it waited for a status, it would say "unhealthy: … did not answer".)
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(sidecar_reload_script().replace(RELOAD_STATUS_FILE, status))
            .args(["iac-reload", &child.id().to_string(), &url])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), RELOAD_OK);
        while lines().len() < 6 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(lines()[4..], ["up good v7", "up good v8"]);
        // SAFETY: kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
        child.wait().unwrap();
    }

    #[test]
    fn pure_and_order_independent() {
        let a = plan(&sample_input());
        let mut input = sample_input();
        input.services.reverse();
        assert_eq!(plan(&input), a);
    }

    #[test]
    fn hash_tracks_every_input_that_matters() {
        let base = plan(&sample_input()).services[0].spec_hash.clone();
        let tweaks: [fn(&mut PlanInput); 6] = [
            |i| i.services[1].image = "iac/demo-api:other".into(),
            |i| i.services[1].envoy_config_digest = "sha256:changed".into(),
            |i| i.services[1].certs.fingerprint = "sha256:rotated".into(),
            |i| {
                i.services[1].env.insert("X".into(), "1".into());
            },
            |i| i.envoy_image = "envoyproxy/envoy:v1.40.0".into(),
            |i| i.otel_endpoint = Some("http://collector:4317".into()),
        ];
        for (n, t) in tweaks.iter().enumerate() {
            let mut input = sample_input();
            t(&mut input);
            let stack = plan(&input);
            let api = stack
                .services
                .iter()
                .find(|s| s.service.as_str() == "api")
                .unwrap();
            assert_ne!(api.spec_hash, base, "tweak {n} must change the api hash");
            let web = stack
                .services
                .iter()
                .find(|s| s.service.as_str() == "web")
                .unwrap();
            let web_base = plan(&sample_input()).services[1].spec_hash.clone();
            if n < 4 {
                assert_eq!(web.spec_hash, web_base, "tweak {n} must not change web");
            }
        }
    }
}
