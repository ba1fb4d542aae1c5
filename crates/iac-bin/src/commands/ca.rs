//! `iac ca init|show|rotate`: the development CA under `[pki] secrets_dir`.

use std::process::ExitCode;

use iac_backends::pki::DevCa;

use crate::cli::CaAction;
use crate::config::IacConfig;

/// `iac ca init|show|rotate`.
pub fn ca_command(cfg: &IacConfig, action: CaAction, json: bool) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        cfg.pki.external.is_none(),
        "[pki.external] is configured: certificates are issued outside iac, there is no CA to manage"
    );
    let ca = DevCa::new(cfg.pki.clone());
    let info = match action {
        CaAction::Init => {
            let outcome = ca.init()?;
            if !json {
                println!("{outcome:?}");
            }
            ca.show()?
        }
        CaAction::Show => ca.show()?,
        CaAction::Rotate => ca.rotate()?,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        println!("{info}");
    }
    Ok(ExitCode::SUCCESS)
}
