//! `iac bootstrap`: makes this Docker engine hold every image the configuration names, from any
//! directory, with nothing but the installed `iac` (and `iac-agent`).
//!
//! The recipe — `scripts/bootstrap-images.sh` and the files of `scripts/images/` — is compiled
//! into the binary (`include_str!` and `build.rs`). A run writes it into a private temporary
//! directory (0700, removed afterwards) and runs it with bash, handing it the configured image
//! names, wheelhouse, pip and engine (`[images]`, `[sidecar]`, `[docker] docker_host`). The
//! recipe prints one line per image (kept / from the official image / built offline, with size
//! and time) and for the wheelhouse. The agent is not built here: it is looked up like the image
//! builder does ([`crate::config::default_agent_binary`]) and reported with its version.
//!
//! `--check` changes nothing: it reports, per image, whether it is present and what a run would
//! do, plus the wheelhouse and the agent, and exits 1 when a run would have work to do.
//!
//! Python base images: a run ensures the default Python's (`images.default_python`, 3.11) and,
//! with `--python X.Y`, the others (`images.pythons`: 3.13 from Debian trixie, 3.14 from Debian
//! unstable) with their wheelhouses. `--swarm-node` adds the Swarm node image (Debian's Docker
//! engine and registry in a container; `$IAC_SWARM_NODE_IMAGE`, else [`SWARM_NODE_IMAGE`]) that the
//! multi-node tests run as worker nodes. [`crate::recipe::RecipeMaker`] runs the same recipe from a deploy, on demand,
//! when a build needs a Python base image the engine does not have (`--only-python --python X.Y`).

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;

use iac_backends::engine::DockerEngine;

use crate::config::IacConfig;
use crate::recipe::{RECIPE_FILES, recipe_env, write_recipe};
use crate::wiring::connect_engine;

/// What `iac bootstrap` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Report only.
    pub check: bool,
    /// Never `docker pull`.
    pub no_pull: bool,
    /// Rebuild the offline images and the wheelhouse.
    pub rebuild: bool,
    /// Also the base images (and wheelhouses) of these Python minors.
    pub pythons: Vec<String>,
    /// Also the Swarm node image.
    pub swarm_node: bool,
}

/// The Swarm node image the recipe builds with `--swarm-node` (unless `$IAC_SWARM_NODE_IMAGE`).
pub const SWARM_NODE_IMAGE: &str = "iac/swarm-node:bookworm";

fn swarm_node_image() -> String {
    std::env::var("IAC_SWARM_NODE_IMAGE").unwrap_or_else(|_| SWARM_NODE_IMAGE.to_string())
}

/// The recipe's arguments for `opts` (the agent is never built by it here).
fn recipe_args(opts: &Options) -> Vec<String> {
    let mut args = vec!["--skip-agent".to_string()];
    if opts.no_pull {
        args.push("--no-pull".into());
    }
    if opts.rebuild {
        args.push("--rebuild".into());
    }
    for v in &opts.pythons {
        args.extend(["--python".to_string(), v.clone()]);
    }
    if opts.swarm_node {
        args.push("--swarm-node".into());
    }
    args
}

/// `iac bootstrap [--check] [--no-pull] [--rebuild]`.
pub async fn run(cfg: &IacConfig, opts: Options) -> anyhow::Result<ExitCode> {
    for v in &opts.pythons {
        cfg.images
            .python_images(Some(v))
            .map_err(|e| anyhow::anyhow!("--python {v}: {e}"))?;
    }
    if opts.check {
        return check(cfg, &opts.pythons, opts.swarm_node).await;
    }
    let dir = tempfile::Builder::new()
        .prefix("iac-bootstrap-")
        .tempdir()
        .context("create a private directory for the image recipe")?;
    let script = write_recipe(dir.path())?;
    println!(
        "bootstrap: recipe of iac {} ({} files) in {}",
        env!("CARGO_PKG_VERSION"),
        RECIPE_FILES.len() + 1,
        dir.path().display()
    );
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg(&script).args(recipe_args(&opts));
    recipe_env(cfg, &mut cmd);
    cmd.current_dir(dir.path());
    let started = Instant::now();
    let status = cmd.status().await.context(
        "run bash (the image recipe needs bash, the docker CLI and, to build, mmdebstrap)",
    )?;
    let agent = agent_line(cfg).await;
    println!("{agent}");
    if !status.success() {
        anyhow::bail!(
            "the image recipe failed ({status}) after {:.1}s; its log is above",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn mb(bytes: u64) -> String {
    format!("{} MB", bytes / 1_000_000)
}

/// One image pair: the line to print and whether a run would have to act.
async fn image_line(
    engine: &DockerEngine,
    what: &str,
    tag: &str,
    official: &str,
) -> anyhow::Result<(String, bool)> {
    if let Some(img) = engine.image(tag).await? {
        let size = img.size;
        return Ok((format!("{what:<8} {tag:<32} present   {}", mb(size)), false));
    }
    if let Some(img) = engine.image(official).await? {
        let size = img.size;
        return Ok((
            format!(
                "{what:<8} {tag:<32} absent    the official {official} is present ({}): a run tags it as {tag}",
                mb(size)
            ),
            true,
        ));
    }
    Ok((
        format!("{what:<8} {tag:<32} absent    a run pulls {official}, else builds {tag} offline"),
        true,
    ))
}

async fn check(cfg: &IacConfig, pythons: &[String], swarm_node: bool) -> anyhow::Result<ExitCode> {
    let mut work = false;
    let engine = match connect_engine(cfg).await {
        Ok(engine) => engine,
        Err(e) => {
            println!("engine   unreachable: {e:#}");
            println!("{}", agent_line(cfg).await);
            return Ok(ExitCode::from(1));
        }
    };
    match engine.version().await {
        Ok(v) => println!("engine   {v} ({})", engine.shown_host()),
        Err(e) => {
            println!("engine   unreachable: {e}");
            println!("{}", agent_line(cfg).await);
            return Ok(ExitCode::from(1));
        }
    }
    for (what, tag, official) in [
        (
            "python",
            &cfg.images.offline_base_image,
            &cfg.images.base_image,
        ),
        ("envoy", &cfg.sidecar.offline_image, &cfg.sidecar.image),
    ] {
        let (line, todo) = image_line(&engine, what, tag, official).await?;
        println!("{line}");
        work |= todo;
    }
    for (v, images) in &cfg.images.pythons {
        let what = format!("python{v}");
        let (line, todo) = image_line(&engine, &what, &images.offline_image, &images.image).await?;
        if pythons.contains(v) || !todo {
            println!("{line}");
            work |= todo;
        } else {
            println!(
                "{what:<8} {:<32} absent    built on demand by the first deploy that needs Python {v} (or `iac bootstrap --python {v}`)",
                images.offline_image
            );
        }
    }
    if swarm_node {
        let tag = swarm_node_image();
        let line = match engine.image(&tag).await? {
            Some(img) => format!("{:<8} {tag:<32} present   {}", "node", mb(img.size)),
            None => {
                work = true;
                format!(
                    "{:<8} {tag:<32} absent    a run builds it offline (mmdebstrap bookworm docker.io)",
                    "node"
                )
            }
        };
        println!("{line}");
    }
    let wh = cfg.images.wheelhouse_path();
    let wheels = std::fs::read_dir(&wh)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "whl"))
                .count()
        })
        .unwrap_or(0);
    if wh.join(".iac-wheelhouse").exists() && wheels > 0 {
        println!("wheels   {:<32} present   {wheels} wheels", wh.display());
    } else {
        println!(
            "wheels   {:<32} absent    a run downloads the OpenTelemetry wheels",
            wh.display()
        );
        work = true;
    }
    let agent = agent_line(cfg).await;
    work |= !agent.contains("(expected)");
    println!("{agent}");
    if work {
        println!("bootstrap --check: a run has work to do (see above)");
        Ok(ExitCode::from(1))
    } else {
        println!("bootstrap --check: everything is present");
        Ok(ExitCode::SUCCESS)
    }
}

/// `agent    PATH  iac-agent X (expected)` or what is wrong with it.
async fn agent_line(cfg: &IacConfig) -> String {
    let path = cfg.images.agent_binary_path();
    if !path.is_file() {
        return format!(
            "agent    {:<32} missing   install iac-agent next to iac or on PATH, or set [images] agent_binary",
            path.display()
        );
    }
    let out = tokio::process::Command::new(&path)
        .arg("--version")
        .output()
        .await;
    let version = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Ok(o) => {
            return format!(
                "agent    {:<32} broken    --version failed: {}",
                path.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        Err(e) => {
            return format!(
                "agent    {:<32} broken    cannot run it: {e}",
                path.display()
            );
        }
    };
    let want = concat!("iac-agent ", env!("CARGO_PKG_VERSION"));
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    if version == want {
        format!(
            "agent    {:<32} present   {version} (expected), {}",
            path.display(),
            mb(size)
        )
    } else {
        format!(
            "agent    {:<32} mismatch  it says {version:?}, this iac expects {want:?}",
            path.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::SCRIPT;

    #[test]
    fn the_recipe_downloads_wheels_for_the_same_targets_as_the_builder() {
        let dir = tempfile::tempdir().unwrap();
        let script = write_recipe(dir.path()).unwrap();
        for v in [(3, 11), (3, 13), (3, 14)] {
            let out = std::process::Command::new("bash")
                .arg(&script)
                .args(["--print-pip-target", &format!("{}.{}", v.0, v.1)])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let got: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string)
                .collect();
            assert_eq!(got, iac_backends::build::wheels::pip_target(v), "{v:?}");
        }
    }

    #[test]
    fn the_options_become_recipe_flags() {
        assert_eq!(recipe_args(&Options::default()), ["--skip-agent"]);
        let opts = Options {
            check: false,
            no_pull: true,
            rebuild: true,
            pythons: vec!["3.14".into()],
            swarm_node: true,
        };
        assert_eq!(
            recipe_args(&opts),
            [
                "--skip-agent",
                "--no-pull",
                "--rebuild",
                "--python",
                "3.14",
                "--swarm-node"
            ]
        );
        // The flag is one the recipe knows (it rejects unknown options before doing anything).
        let dir = tempfile::tempdir().unwrap();
        let script = write_recipe(dir.path()).unwrap();
        let help = std::process::Command::new("bash")
            .arg(&script)
            .arg("--help")
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&help.stdout).contains("--swarm-node"));
    }

    #[test]
    fn the_recipe_gets_every_configured_python_image() {
        let mut cfg = IacConfig::default();
        cfg.images.pythons.get_mut("3.14").unwrap().offline_image = "mine/py:3.14".into();
        let mut cmd = tokio::process::Command::new("true");
        recipe_env(&cfg, &mut cmd);
        let envs: std::collections::BTreeMap<String, String> = cmd
            .as_std()
            .get_envs()
            .filter_map(|(k, v)| {
                Some((
                    k.to_string_lossy().into_owned(),
                    v?.to_string_lossy().into_owned(),
                ))
            })
            .collect();
        assert_eq!(envs["IAC_PYTHON_VERSION"], "3.11");
        assert_eq!(envs["IAC_PYTHON_IMAGE"], "iac/python:3.11-bookworm");
        assert_eq!(envs["IAC_PYTHON_IMAGE_3_14"], "mine/py:3.14");
        assert_eq!(envs["IAC_PYTHON_OFFICIAL_3_14"], "python:3.14-slim");
        assert_eq!(envs["IAC_PYTHON_IMAGE_3_13"], "iac/python:3.13-trixie");
    }

    #[test]
    fn the_recipe_is_complete_and_lands_where_the_script_looks() {
        let names: Vec<&str> = RECIPE_FILES.iter().map(|(n, _)| *n).collect();
        // Every file the script names under $HERE is embedded.
        for line in SCRIPT.lines() {
            for part in line.split("$HERE/").skip(1) {
                let name: String = part
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || "-._".contains(*c))
                    .collect();
                assert!(names.contains(&name.as_str()), "{name} is not embedded");
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let script = write_recipe(dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(&script).unwrap(), SCRIPT);
        for (name, bytes) in RECIPE_FILES {
            assert_eq!(
                &std::fs::read(dir.path().join("scripts/images").join(name)).unwrap(),
                bytes
            );
        }
    }
}
