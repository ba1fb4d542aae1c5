//! The `terraform` provisioner: applies a [`iac_core::Stack`] with Terraform (or OpenTofu) and the
//! kreuzwerker/docker provider.
//!
//! Shape (DESIGN §6): the Terraform code is a real, readable module in `infra/` (`main.tf`,
//! `variables.tf`, `outputs.tf`, `versions.tf`, `for_each` over a `services` variable). iac renders
//! only *data*: [`render_tfvars`] is a pure function `Stack → terraform.tfvars.json`. Before every
//! run the module (the copy embedded in this binary, or [`TerraformConfig::module_source`]) and the
//! tfvars are written atomically into `<work_root>/<project>/terraform/`, and [`check_declared`]
//! verifies offline — by parsing the module's HCL — that every key the tfvars sets is declared, with
//! the declared type (Terraform silently drops unknown object attributes, so a mismatch between the
//! renderer and a tweaked module would otherwise go unnoticed).
//!
//! Then it drives `<binary> init`, `plan -out`, `show -json <planfile>`, `apply <planfile>`,
//! `output -json` (and `destroy`), all with `-input=false -no-color`, in that directory. Every
//! stdout/stderr line becomes a [`iac_core::DeployEvent`] (attributed to a service when the line
//! names one of its resources, e.g. `docker_container.app["api"]: Creating...`). A failing step is a
//! [`iac_core::ProvisionError::Tool`] naming the step, its exit code and the last lines of its stderr.
//! Endpoints come from `output -json`; `diff` maps the plan's `resource_changes` to per-service
//! [`iac_core::Change`]s.
//!
//! **No health gating, no per-service rollback.** Terraform applies the whole configuration at
//! once; there is no point where one service's new pair can be probed before its old pair is
//! removed. [`TerraformProvisioner`]'s `apply` therefore returns every service with `health: None` and
//! the Deployer probes afterwards; an unhealthy service stays deployed (fix and redeploy, or
//! use the `docker` provisioner when rollback matters). Services the stack asks to keep
//! ([`iac_core::Stack::keep`], they failed to prepare) keep their previously applied entry in the tfvars,
//! so Terraform leaves their containers alone.
//!
//! **Hardening.** Each container's privileges (capabilities, `no-new-privileges`) and memory limit
//! travel in the tfvars (`security`, `memory_mib`) and `main.tf` applies them
//! (`capabilities`, `security_opts`, `memory`/`memory_swap`); open memory limits are filled from
//! [`TerraformConfig::limits`]. The kreuzwerker/docker provider has no pids limit on
//! `docker_container`, so a pids limit is refused here rather than silently dropped (use the
//! `docker` provisioner for one). The sidecar installs the pod's packet filter as with the docker
//! provisioner, but nothing checks it before Terraform reports the apply done.
//!
//! **Secrets on disk.** The tfvars hold the services' environment values: they are written 0600
//! (temp file with the mode set, then renamed), and the work directory — where Terraform also
//! keeps its state and plan files, which hold the same values — is kept 0700.

use super::{ContainerLimits, with_limits};

mod config;
mod declared;
mod runner;
mod tf_json;
mod tfvars;

pub use config::TerraformConfig;
pub use declared::check_declared;
pub use runner::TerraformProvisioner;
pub use tf_json::{OutputService, Outputs, changes_from_plan, parse_outputs};
pub use tfvars::{
    TfApp, TfMount, TfNetwork, TfPort, TfSecurity, TfService, TfSidecar, Tfvars, render_tfvars,
    tfvars_json,
};

/// The module in `infra/`, embedded so a lone `iac` binary can deploy with Terraform.
pub const EMBEDDED_MODULE: &[(&str, &str)] = &[
    ("main.tf", include_str!("../../../../../infra/main.tf")),
    (
        "outputs.tf",
        include_str!("../../../../../infra/outputs.tf"),
    ),
    (
        "variables.tf",
        include_str!("../../../../../infra/variables.tf"),
    ),
    (
        "versions.tf",
        include_str!("../../../../../infra/versions.tf"),
    ),
];

/// The variables file Terraform loads automatically (so `terraform plan` by hand in the work
/// directory sees exactly what iac applied).
pub const TFVARS_FILE: &str = "terraform.tfvars.json";
/// `iac plan` renders here (passed with `-var-file`) so a plan never changes what `apply` wrote.
pub const DIFF_TFVARS_FILE: &str = "iac-diff.tfvars.json";
/// Saved plans of `apply` and of `diff`.
pub const PLAN_FILE: &str = "iac.tfplan";
/// Saved plan of `diff` (kept apart so a diff never replaces the plan `apply` runs).
pub const DIFF_PLAN_FILE: &str = "iac-diff.tfplan";
/// The provider host used when the config names none.
pub use crate::engine::DEFAULT_DOCKER_HOST;

#[cfg(test)]
mod tests;
