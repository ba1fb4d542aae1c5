//! OpenAPI schemas of the admin API's bodies. Request types are the real ones; the response
//! schemas mirror `iac-core`'s domain types (which do not depend on utoipa) field for field. The
//! mirrors derive `Deserialize` with `deny_unknown_fields` so a test can round-trip real values
//! through them: when a core type gains or loses a field, that test fails and the document is
//! updated instead of silently drifting.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// `POST /deploy` body: exactly one of `slugs` or `services`. Its OpenAPI schema is written by
/// hand ([`deploy_request_schema`]): a `oneOf` of the two shapes, with the slug and name
/// grammars as patterns, so that what the document calls valid is what the server accepts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// Repos-file items: slug strings (`gh:owner/repo#ref`, `git+https://…`, `path:DIR`) or
    /// `{slug, name?, entrypoint?, env?, expose?, replicas?, extras?, groups?, egress?}` maps. Service names are derived and de-duplicated.
    pub slugs: Option<Vec<serde_json::Value>>,
    /// Services with explicit names (unique DNS labels).
    pub services: Option<Vec<ServiceSpecSchema>>,
    /// Project (DNS label); the server's default when absent.
    pub project: Option<String>,
    /// Destinations every service of the request may reach outside the mesh (`host:port`,
    /// `*.suffix:port`), added to each service's own `egress`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<String>>,
    /// Deploy the services as copies in this sandbox (a DNS label) beside the project's
    /// baseline; every service must exist in the baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// With `sandbox`: after this long (`2h`, `30m`) the next deploy or `iac gc` removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

/// A `sandbox` value: a DNS label short enough for `<service>--sb-<sandbox>` to stay one.
pub const SANDBOX_PATTERN: &str = "^[a-z0-9]([a-z0-9-]{0,55}[a-z0-9])?$";

/// An `egress` item: `host:port` or `*.suffix:port` as `iac_core::egress` parses it — DNS labels
/// of 1-63 letters, digits and inner `-`, an optional trailing dot, a port 1-65535 without
/// leading zeros (with [`EGRESS_ITEM_MAX_LEN`] keeping the name within 253 characters).
pub const EGRESS_ITEM_PATTERN: &str = "^(\\*\\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\\.?:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})$";

/// The longest `egress` item the document admits: a name of 253 characters and `:1`.
pub const EGRESS_ITEM_MAX_LEN: usize = 255;

/// A DNS label (service and project names).
pub const DNS_LABEL_PATTERN: &str = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$";

/// A `project` value: a DNS label, or empty for the server's default.
pub const PROJECT_PATTERN: &str = "^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)?$";

/// The remote slugs an API caller may name, as a pattern (a subset of the slug grammar that
/// always parses and always yields a service name): `gh:`/`bb:` OWNER/REPO, `gl:` GROUP[/…]/REPO,
/// `git+https://HOST/PATH`, each with an optional `#REF`. Local slugs (`path:`, `git+file:`) are
/// documented in the description: they are refused unless `[serve] allow_local_sources`.
pub const REMOTE_SLUG_PATTERN: &str = concat!(
    "^(",
    "(gh|bb):[A-Za-z0-9][A-Za-z0-9_.-]{0,38}/[A-Za-z0-9][A-Za-z0-9_-]{0,99}",
    "|gl:[A-Za-z0-9][A-Za-z0-9_.-]{0,62}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,62}){0,4}/[A-Za-z0-9][A-Za-z0-9_-]{0,99}",
    "|git\\+https://[a-z0-9]([a-z0-9.-]{0,62}[a-z0-9])?(:[0-9]{1,5})?(/[A-Za-z0-9][A-Za-z0-9_.-]{0,62}){0,4}/[A-Za-z0-9][A-Za-z0-9_-]{0,99}",
    ")(#[A-Za-z0-9][A-Za-z0-9_-]{0,62})?$"
);

/// An `expose` string an API caller may send: a port 1-65535, or a loopback address with a port
/// (`127.x.y.z:PORT`, `[::1]:PORT`, port 0: automatic), written canonically (no leading zeros).
pub const EXPOSE_LOOPBACK_PATTERN: &str = concat!(
    "^((6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})",
    "|(127(\\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}|\\[::1\\])",
    ":(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}|0))$"
);

/// The schema of a slug an API caller may name (`POST /deploy`, `GET /refs`).
pub fn slug_schema() -> serde_json::Value {
    serde_json::json!({
        "type": "string",
        "pattern": REMOTE_SLUG_PATTERN,
        "description": "A remote slug: `gh:OWNER/REPO[#REF]`, `gl:GROUP[/SUBGROUP…]/REPO[#REF]`, `bb:OWNER/REPO[#REF]`, `git+https://HOST/PATH[#REF]`. `path:DIR` and `git+file:///PATH[#REF]` name directories on the server's host and are refused (403 `local_source_refused`) unless the operator set `[serve] allow_local_sources = true`.",
        "example": "gh:acme/hello#main"
    })
}

/// An env value: any text without a NUL byte (a process environment cannot carry one).
pub const NO_NUL_PATTERN: &str = "^[^\\u0000]*$";

/// The OpenAPI schema of [`DeployRequest`].
pub fn deploy_request_schema() -> serde_json::Value {
    let slug = slug_schema();
    // The two shapes are read by different code (a repos-file item vs `ServiceSpec`), which
    // differ in what they take for `null` and for non-string env values; the schemas say so.
    let env_key = serde_json::json!({"pattern": "^[A-Za-z_][A-Za-z0-9_]{0,62}$"});
    let item_env = serde_json::json!({
        "type": ["object", "null"],
        "description": "Extra environment of the app (numbers and booleans are written as text).",
        "propertyNames": env_key,
        "additionalProperties": {
            "oneOf": [
                {"type": "string", "pattern": NO_NUL_PATTERN},
                {"type": ["number", "boolean"]}
            ]
        }
    });
    let service_env = serde_json::json!({
        "type": "object",
        "description": "Extra environment of the app.",
        "propertyNames": env_key,
        "additionalProperties": {"type": "string", "pattern": NO_NUL_PATTERN}
    });
    let entry_text = "`module:function` or a command line; overrides entry detection.";
    let item_entrypoint = serde_json::json!({
        "type": "string",
        "pattern": "\\S",
        "description": entry_text
    });
    let service_entrypoint = serde_json::json!({
        "type": ["string", "null"],
        "pattern": "\\S",
        "description": entry_text
    });
    // API callers may publish an app only on the server's loopback (see `check_expose`).
    let expose = serde_json::json!({
        "description": "Publish the app on the server's loopback without a client certificate: `true` (automatic port), `false` (no edge), a port 1-65535, or \"127.x.y.z:PORT\" / \"[::1]:PORT\" (port 0: automatic). Absent: an automatic loopback port when the service has an HTTP port. Non-loopback addresses are refused (403 `public_expose_refused`).",
        "oneOf": [
            {"type": "boolean"},
            {"type": "integer", "minimum": 1, "maximum": 65535},
            {"type": "string", "pattern": EXPOSE_LOOPBACK_PATTERN}
        ]
    });
    let item_expose = serde_json::json!({
        "oneOf": [expose.clone(), {"type": "null"}]
    });
    let replicas = serde_json::json!({
        "oneOf": [
            {"type": "integer", "minimum": 1, "maximum": iac_core::MAX_REPLICAS},
            {"type": "null"}
        ],
        "description": "Copies to run where the provisioner runs several (Swarm); default 1 (also when null)."
    });
    let names = |what: &str| {
        serde_json::json!({
            "oneOf": [
                {
                    "type": "array",
                    "items": {
                        "type": "string",
                        "pattern": "^[A-Za-z0-9]([A-Za-z0-9._-]{0,98}[A-Za-z0-9])?$"
                    }
                },
                {"type": "null"}
            ],
            "description": what
        })
    };
    let egress = serde_json::json!({
        "oneOf": [
            {
                "type": "array",
                "maxItems": iac_core::egress::MAX_EGRESS_RULES,
                "items": {
                    "type": "string",
                    "pattern": EGRESS_ITEM_PATTERN,
                    "maxLength": EGRESS_ITEM_MAX_LEN
                }
            },
            {"type": "null"}
        ],
        "description": "Destinations the app may reach outside the mesh, through its sidecar: `host:port` or `*.suffix:port` (every name under the suffix, not the suffix itself; never an IPv4 address after `*.`). Nothing else is reachable unless the server runs with `[mesh] egress = \"open\"`."
    });
    let extras = names("Extras of a Python app to install besides its main dependencies.");
    let groups = names("Dependency groups of a Python app to install (dev, test, …).");
    let name = serde_json::json!({
        "type": "string",
        "pattern": DNS_LABEL_PATTERN,
        "description": "Service name (DNS label); explicit names must be unique in the request."
    });
    let project = serde_json::json!({
        "type": ["string", "null"],
        "pattern": PROJECT_PATTERN,
        "description": "Project (DNS label); the server's default when absent, null or empty."
    });
    let sandbox = serde_json::json!({
        "type": ["string", "null"],
        "pattern": SANDBOX_PATTERN,
        "description": "Deploy the services as copies in this sandbox beside the project's baseline (each named like a baseline service, which must exist). Requests with `x-iac-sandbox: <sandbox>` or the baggage member `iac-sandbox=<sandbox>` reach the copies; everything else the baseline."
    });
    let ttl = serde_json::json!({
        "type": ["string", "null"],
        "description": "With `sandbox`: a duration (`2h`, `30m`) after which the next deploy or `iac gc` removes the sandbox."
    });
    let item_map = serde_json::json!({
        "type": "object",
        "required": ["slug"],
        "additionalProperties": false,
        "properties": {
            "slug": slug,
            "name": name,
            "entrypoint": item_entrypoint,
            "env": item_env,
            "expose": item_expose,
            "replicas": replicas,
            "extras": extras,
            "groups": groups,
            "egress": egress
        }
    });
    let service = serde_json::json!({
        "type": "object",
        "required": ["name", "slug"],
        "additionalProperties": false,
        "properties": {
            "name": name,
            "slug": slug,
            "entrypoint": service_entrypoint,
            "env": service_env,
            "expose": item_expose,
            "replicas": replicas,
            "extras": extras,
            "groups": groups,
            "egress": egress
        }
    });
    serde_json::json!({
        "description": "Exactly one of `slugs` (names derived from the repository names, de-duplicated) or `services` (explicit, unique names).",
        "oneOf": [
            {
                "type": "object",
                "title": "by slugs",
                "required": ["slugs"],
                "additionalProperties": false,
                "properties": {
                    "slugs": {
                        "type": "array",
                        "minItems": 1,
                        "uniqueItems": true,
                        "items": {"oneOf": [slug, item_map]},
                        "description": "Repos-file items: slug strings or `{slug, name?, entrypoint?, env?, expose?, replicas?, extras?, groups?, egress?}` maps."
                    },
                    "project": project,
                    "egress": egress,
                    "sandbox": sandbox,
                    "ttl": ttl
                }
            },
            {
                "type": "object",
                "title": "by services",
                "required": ["services"],
                "additionalProperties": false,
                "properties": {
                    "services": {
                        "type": "array",
                        "minItems": 1,
                        "uniqueItems": true,
                        "description": "Services with explicit names; two services with the same name are refused with 409 `duplicate_service_name` (JSON Schema cannot express uniqueness by a property).",
                        "items": service
                    },
                    "project": project,
                    "egress": egress,
                    "sandbox": sandbox,
                    "ttl": ttl
                }
            }
        ],
        "example": {"slugs": ["gh:acme/hello#main"], "project": "demo"}
    })
}

/// A few slugs of every remote shape that match [`REMOTE_SLUG_PATTERN`] (tests and docs).
pub fn remote_slug_examples() -> &'static [&'static str] {
    &[
        "gh:acme/hello",
        "gh:a.b-c/R_e-po#v1",
        "bb:o/r#main",
        "gl:group/sub/repo#feature-1",
        "git+https://git.example.com/team/repo",
        "git+https://h:8443/r#abc123",
    ]
}

impl utoipa::PartialSchema for DeployRequest {
    /// A placeholder: utoipa's schema model has no `propertyNames` (nor keeps unknown keys), so
    /// the served document puts [`deploy_request_schema`] in its place (`routes::document`).
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new().build().into()
    }
}

impl utoipa::ToSchema for DeployRequest {
    fn name() -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed("DeployRequest")
    }
}

/// `POST /destroy` body (optional).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DestroyRequest {
    /// Project (DNS label); the server's default when absent.
    #[schema(pattern = "^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)?$")]
    pub project: Option<String>,
}

/// `POST /destroy` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DestroyResponse {
    /// The project whose objects were removed.
    pub project: String,
    /// Names of the removed containers/networks.
    pub removed: Vec<String>,
}

/// `?project=`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ProjectQuery {
    /// Project (DNS label); the server's default when absent.
    #[param(pattern = "^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)?$")]
    pub project: Option<String>,
}

/// `?project=&limit=&cursor=` of `GET /deployments`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeploymentsQuery {
    /// Only this project (DNS label); every project the caller may read when absent.
    #[param(pattern = "^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)?$")]
    pub project: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page (a positive whole number as text; empty: the first).
    #[param(pattern = "^([1-9][0-9]{0,17})?$")]
    pub cursor: Option<String>,
}

/// `?slug=` of `GET /refs`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RefsQuery {
    /// The repository as a slug (`gh:owner/repo`, `git+https://…`; `path:`/`git+file:` only
    /// with `[serve] allow_local_sources`). A `#REF` is accepted and ignored.
    pub slug: String,
}

/// `GET /refs` answer (mirrors `iac_core::RefList`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefListSchema {
    /// Branch names, sorted.
    pub branches: Vec<String>,
    /// Tag names, sorted.
    pub tags: Vec<String>,
    /// The branch `HEAD` points at; null when `HEAD` is detached or unborn.
    pub default: Option<String>,
}

/// `?follow=&tail=&project=`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Keep the stream open and send new lines as they come.
    pub follow: Option<bool>,
    /// Send the last N buffered lines first (0 or absent: all buffered lines).
    pub tail: Option<u32>,
    /// Project (DNS label); the server's default when absent.
    #[param(pattern = "^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)?$")]
    pub project: Option<String>,
}

/// `GET /health` answer. Always 200 while the process serves: `status` is `ok`, or `degraded`
/// when the container engine does not answer. Open to everyone, so it names no version.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HealthResponse {
    /// `ok` or `degraded`.
    pub status: String,
    /// Seconds since `iac serve` started.
    pub uptime_secs: u64,
    /// Whether the container engine answers.
    pub engine: EngineHealth,
    /// Deploys running now.
    pub running_deployments: usize,
}

/// The container engine as `GET /health` sees it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EngineHealth {
    /// The engine answered a ping just now.
    pub reachable: bool,
    /// `answers`, or why the engine is unreachable (never its version).
    pub detail: String,
}

// ---- mirrors of iac-core types (documentation only; see the module docs) ----

/// A service to deploy, named (`iac_core::ServiceSpec` with the slug as text).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ServiceSpec)]
pub struct ServiceSpecSchema {
    /// DNS label.
    pub name: String,
    /// `gh:owner/repo[#ref]`, `gl:…`, `bb:…`, `git+https://…`, `git+file:///…`, `path:DIR`.
    pub slug: String,
    /// `module:function` or a command line; overrides entry detection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<String>,
    /// Extra environment of the app.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Publish the app on the server's loopback: `true`, `false`, a port or `"127.0.0.1:PORT"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub expose: Option<serde_json::Value>,
    /// Copies to run (1 to 100, default 1) where the provisioner runs several (Swarm). Passed to
    /// the repos-file parser as sent, which decides (a whole number, `3` or `3.0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u64>)]
    pub replicas: Option<serde_json::Number>,
    /// Extras of a Python app to install besides its main dependencies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extras: Option<Vec<String>>,
    /// Dependency groups of a Python app to install (dev, test, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
    /// Destinations the app may reach outside the mesh: `host:port` or `*.suffix:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<String>>,
}

/// One progress event (`iac_core::DeployEvent`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = DeployEvent)]
pub struct DeployEventSchema {
    /// RFC 3339 UTC with milliseconds.
    pub ts: String,
    /// The service the event is about; absent for project-wide events.
    pub service: Option<String>,
    /// fetch, resolve, build, certs, render, plan, provision, health, destroy, deploy.
    pub stage: String,
    /// debug, info, warn, error.
    pub level: String,
    /// Human-readable text of the event.
    pub message: String,
    /// W3C traceparent of the deploy span the event belongs to (only when iac exports traces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// Health of one service (`iac_core::HealthReport`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = HealthReport)]
pub struct HealthReportSchema {
    /// The service probed.
    pub service: String,
    /// SERVING, NOT_SERVING, UNKNOWN, UNREACHABLE.
    pub state: String,
    /// The entry's exit code, when it has exited (as its agent reported it).
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// The agent's detail, e.g. `running (pid 7)`, or why the probe failed.
    pub detail: String,
    /// Probes made before this answer.
    pub attempts: u32,
    /// How long the entry has run (ms), as its agent said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_ms: Option<u64>,
    /// TCP ports the app listens on, as its agent saw them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listening_ports: Vec<u16>,
    /// The port the sidecar routes the app's traffic to (`$PORT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_port: Option<u16>,
    /// The app listens elsewhere and its agent forwards `app_port` there: the app's port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarded_to: Option<u16>,
}

/// Time spent in one stage.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = StageTiming)]
pub struct StageTimingSchema {
    /// fetch, resolve, build, certs, render, plan, provision, health, destroy, deploy.
    pub stage: String,
    /// Wall time spent in the stage, in milliseconds.
    pub millis: u64,
    /// Whether the stage succeeded.
    pub ok: bool,
}

/// Outcome for one service (`iac_core::ServiceReport`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ServiceReport)]
pub struct ServiceReportSchema {
    /// The service name (from the slug, or given).
    pub service: String,
    /// The repo slug the service was deployed from.
    pub slug: String,
    /// Whether every stage of this service succeeded.
    pub ok: bool,
    /// The stages run for this service, in order.
    pub stages: Vec<StageTimingSchema>,
    /// The commit the source was fetched at, when the source has one.
    pub commit: Option<String>,
    /// The app image (name:tag) built or reused.
    pub image: Option<String>,
    /// True when an image with the same content hash already existed and was not rebuilt.
    pub image_reused: Option<bool>,
    /// How main() is run: language, kind, argv, why (which rule matched).
    #[schema(value_type = Option<Object>)]
    pub entry: Option<serde_json::Value>,
    /// create, replace, keep, remove.
    #[schema(value_type = Option<Object>)]
    pub action: Option<serde_json::Value>,
    /// Host address of the service's Envoy mTLS listener.
    pub endpoint: Option<String>,
    /// Where a person opens the app on the host (no client certificate): the edge's URL.
    pub url: Option<String>,
    /// The health probe's last answer, when the service got that far.
    pub health: Option<HealthReportSchema>,
    /// Things that need attention but did not fail the deploy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Why this service failed; absent when it succeeded.
    pub error: Option<String>,
    /// The stage that failed (see `stages`).
    pub failed_stage: Option<String>,
}

/// Outcome of a deploy (`iac_core::DeployReport`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = DeployReport)]
pub struct DeployReportSchema {
    /// The project deployed.
    pub project: String,
    /// Whether every service succeeded and nothing failed project-wide.
    pub ok: bool,
    /// One report per service asked for.
    pub services: Vec<ServiceReportSchema>,
    /// Services of the project that were not asked for and were removed.
    pub removed: Vec<String>,
    /// A project-wide failure (plan, network, removal), apart from per-service errors.
    pub error: Option<String>,
    /// Wall time of the whole deploy, in milliseconds.
    pub millis: u64,
}

/// One line of the deploy stream: `{"type": "event", …DeployEvent}` for every event, then
/// `{"type": "report", …DeployReport}` (or `{"type": "error", "code", "message"}` when the deploy
/// could not run) as the last line. In SSE mode the same objects are the `data` of events named
/// `event`, `report` and `error`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
#[schema(as = DeployStreamItem)]
pub enum StreamItemSchema {
    /// A progress event (`"type": "event"`).
    Event(DeployEventSchema),
    /// The final report (`"type": "report"`), the last line of a deploy that ran.
    Report(DeployReportSchema),
    /// The deploy could not run (`"type": "error"`); the last line.
    Error(crate::api::error::ErrorBody),
}

/// A running service with its fresh health (`ServiceStatus`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ServiceStatus)]
pub struct ServiceStatusSchema {
    /// The service name.
    pub service: String,
    /// Host address of the service's Envoy mTLS listener.
    pub endpoint: Option<String>,
    /// Host address of the service's edge listener (plain HTTP to the app), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge: Option<String>,
    /// `http://<edge>/`: where a person opens the app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Hash of the service's rendered spec; a deploy with the same hash leaves it unchanged.
    pub spec_hash: String,
    /// The app image (name:tag) the container runs.
    pub image: String,
    /// Engine state of the app container (running, exited, …).
    pub state: String,
    /// A health probe made for this request.
    pub health: HealthReportSchema,
}

/// One log line (`iac_core::LogLine`); a stream that fails ends with `{"error": {…}}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = LogLine)]
pub struct LogLineSchema {
    /// The service the line came from.
    pub service: String,
    /// When the agent read the line: RFC 3339 UTC with milliseconds.
    pub ts: String,
    /// stdout or stderr.
    pub stream: String,
    /// The line, without its newline (long lines cut by the agent).
    pub msg: String,
}

/// Per service outcome of a finished deployment (`iac_core::history::ServiceOutcome`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ServiceOutcome)]
pub struct ServiceOutcomeSchema {
    /// The service name.
    pub service: String,
    /// Whether the service's deploy succeeded.
    pub ok: bool,
    /// create, replace, repair, unchanged, remove.
    pub action: Option<String>,
    /// Why it failed; absent when it succeeded.
    pub error: Option<String>,
    /// The stages run for it, in order.
    pub stages: Vec<StageTimingSchema>,
}

/// The last lines of a container's log, saved when its pod was replaced or destroyed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = LogTail)]
pub struct LogTailSchema {
    /// The service the container belonged to.
    pub service: String,
    /// The container's name.
    pub container: String,
    /// app or sidecar.
    pub role: String,
    /// replaced, removed or destroyed.
    pub reason: String,
    /// When the tail was saved, just before the container went away: RFC 3339 UTC.
    pub saved_at: String,
    /// Oldest first; at most 200 lines and 64 KiB.
    pub lines: Vec<String>,
    /// Older lines were left out.
    pub truncated: bool,
}

/// A deployment or destroy (`GET /deployments/{id}`), from the deployment history.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Deployment)]
pub struct DeploymentSchema {
    /// The deployment's id, as used in `/deployments/{id}`.
    pub id: String,
    /// The project it ran on.
    pub project: String,
    /// deploy or destroy.
    pub kind: String,
    /// running, succeeded, failed, error or interrupted (its process died while it ran).
    pub status: String,
    /// http, grpc or cli.
    pub origin: String,
    /// The caller's subject (and email), or `cli:<user>`.
    pub who: String,
    /// The services asked for (deploy) or the project's services (destroy).
    pub services: Vec<String>,
    /// When it started: RFC 3339 UTC.
    pub started_at: String,
    /// When it finished: RFC 3339 UTC; absent while it runs.
    pub finished_at: Option<String>,
    /// The services asked for (JSON), or the CLI's repos file.
    pub repos: Option<String>,
    /// The newest events (at most `max_events_per_deployment`).
    pub events: Vec<DeployEventSchema>,
    /// Older events left out of `events`.
    pub events_dropped: u64,
    /// One outcome per service, once it finished.
    pub outcomes: Vec<ServiceOutcomeSchema>,
    /// Removed services (deploy) or objects (destroy).
    pub removed: Vec<String>,
    /// Last output of the containers it replaced or removed.
    pub log_tails: Vec<LogTailSchema>,
    /// The deploy report, once a deploy finished.
    pub report: Option<DeployReportSchema>,
    /// Why it could not run, when `status` is `error`.
    pub error: Option<crate::api::error::ErrorBody>,
}

/// A deployment in a listing.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = DeploymentSummary)]
pub struct DeploymentSummarySchema {
    /// The deployment's id, as used in `/deployments/{id}`.
    pub id: String,
    /// The project it ran on.
    pub project: String,
    /// deploy or destroy.
    pub kind: String,
    /// running, succeeded, failed, error or interrupted (its process died while it ran).
    pub status: String,
    /// http, grpc or cli.
    pub origin: String,
    /// The caller's subject (and email), or `cli:<user>`.
    pub who: String,
    /// The services asked for (deploy) or the project's services (destroy).
    pub services: Vec<String>,
    /// When it started: RFC 3339 UTC.
    pub started_at: String,
    /// When it finished: RFC 3339 UTC; absent while it runs.
    pub finished_at: Option<String>,
}

/// One page of `GET /deployments`, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = DeploymentPage)]
pub struct DeploymentPageSchema {
    /// Newest first.
    pub deployments: Vec<DeploymentSummarySchema>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}
