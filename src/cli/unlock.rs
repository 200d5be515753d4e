//! How the state dir is unlocked: an age identity file, a passphrase from the
//! environment, or a prompt on the terminal (the only place rampart prompts).

use std::io::IsTerminal;

use anyhow::{bail, Result};
use rampart::pki::{StateDir, Unlock};

use super::args::StateArgs;

/// `--identity`/`RAMPART_IDENTITY`, else `RAMPART_PASSPHRASE`, else a prompt.
/// A new state dir asks for the passphrase twice.
pub fn resolve(args: &StateArgs, dir: &StateDir) -> Result<Unlock> {
    if let Some(path) = &args.identity {
        return Ok(Unlock::Identity(path.clone()));
    }
    if let Ok(p) = std::env::var("RAMPART_PASSPHRASE") {
        if p.is_empty() {
            bail!("RAMPART_PASSPHRASE is empty");
        }
        return Ok(Unlock::Passphrase(p.into()));
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "the state dir {} needs unlocking: pass --identity FILE (an age identity, e.g. from \
             `age-keygen -o FILE`) or set RAMPART_PASSPHRASE",
            dir.root().display()
        );
    }
    let new = !dir.state_key_path().exists();
    let first = rpassword::prompt_password(format!("passphrase for {}: ", dir.root().display()))?;
    if new {
        let again = rpassword::prompt_password("again: ")?;
        if first != again {
            bail!("the passphrases differ; nothing was written");
        }
    }
    Ok(Unlock::Passphrase(first.into()))
}
