//! `iac-core`: the domain of iac and the pipeline that runs it.
//!
//! Owns the domain types (slugs, service specs, sources, entries, stacks, events, reports), the
//! stage traits every backend implements (see [`stages`]), the pure planner ([`plan::plan`]) and the
//! [`Deployer`] that runs the stages per service with bounded parallelism. There is deliberately no
//! Docker, HTTP or child-process code in this crate: that lives behind the traits in `iac-backends`.

#![warn(missing_docs)]

pub mod addr;
pub mod deployer;
pub use iac_duration as duration;
pub mod egress;
pub mod entry;
pub mod error;
pub mod event;
pub mod expose;
pub mod fault;
pub mod fsutil;
pub mod health;
pub mod history;
pub mod image;
pub mod labels;
pub mod log_tail;
pub mod lossy;
pub mod mesh;
pub mod name;
pub mod plan;
pub mod refs;
pub mod report;
pub mod repos;
pub mod sandbox;
pub mod settle;
pub mod shell;
pub mod slug;
pub mod source;
pub mod stack;
pub mod stage;
pub mod stages;
pub mod trace_context;

pub use deployer::{
    DeployOptions, Deployer, DesiredStack, PlanOutcome, RenderedService, SandboxRecord,
    SandboxTarget, Stages,
};
pub use egress::{EgressMode, EgressPolicy, EgressRule};
pub use entry::{
    BuildStep, Candidate, DEFAULT_APP_PORT, Entry, Language, PythonVersion, ReleaseCommand,
};
pub use error::*;
pub use event::{DeployEvent, EventLevel, EventReceiver, Events, Stage};
pub use expose::{EdgeBind, Expose, edge_url};
pub use health::{HealthReport, HealthState, LogLine, LogQuery, ProbeTarget, Restarts};
pub use image::{BuildSpec, ImageRef};
pub use mesh::{CertPaths, IssuedCerts, Mesh, MeshPorts, MeshService};
pub use name::{ProjectName, ServiceName};
pub use refs::RefList;
pub use report::{DeployReport, ServiceReport, StageTiming};
pub use repos::{
    InstallSelection, MAX_REPLICAS, ReposFile, ReposFormat, ServiceSpec, load_repos_file,
    normalize_names, parse_repos_file,
};
pub use sandbox::{SandboxCopy, SandboxName};
pub use slug::{Forge, Slug};
pub use source::Source;
pub use stack::{
    Action, Applied, AppliedService, Change, ContainerSpec, Limits, Mount, NetworkMode,
    NetworkSpec, PodFilter, PortPublish, Privileges, RestartPolicy, Role, RunningService,
    ServiceStack, Stack,
};
pub use stages::*;
