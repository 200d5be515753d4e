//! The backup files of a host: on etcd members the scheduled job (its config,
//! units, directory and, with a backup target, the member's push key); on the
//! backup target the receiving account, its `authorized_keys` and the folder
//! the copies go to.
//!
//! The target's `authorized_keys` holds one line per member, each tied by a
//! forced command to `rampart agent receive --member <that member>`: a
//! member's key can add that member's backups and do nothing else.

use crate::backup::{AgentConfig, RetentionPolicy, PUSH_KEY_PATH, RAMPART_PATH};
use crate::inventory::{Host, Inventory};
use crate::pki::Pki;

use super::builder::Builder;
use super::{Contents, RenderError, Service, SystemUser};

/// The scheduled job on an etcd member, when the inventory has `backups:`.
/// Hosts hold recipients only, never an identity.
pub(super) fn member(
    b: &mut Builder,
    inv: &Inventory,
    pki: &Pki,
    host: &Host,
) -> Result<(), RenderError> {
    let (Some(config), Some((service, timer))) = (
        AgentConfig::from_inventory(inv, host),
        super::backup_units::units(inv, host)?,
    ) else {
        return Ok(());
    };
    b.dir("/etc/rampart", 0o700, "root");
    if let Some(target) = &config.target {
        if target.host_keys.is_empty() {
            return Err(RenderError::TargetHostKeyUnknown {
                host: target.host.clone(),
            });
        }
        let key = pki
            .push_keys
            .get(&host.name)
            .ok_or_else(|| RenderError::MissingPushKey {
                member: host.name.clone(),
            })?;
        b.secret(PUSH_KEY_PATH, key.private.clone(), &[Service::Backups]);
    }
    b.config(
        crate::backup::CONFIG_PATH,
        config.to_yaml(),
        &[Service::Backups],
    );
    b.config(crate::backup::SERVICE_PATH, service, &[Service::Backups]);
    b.config(crate::backup::TIMER_PATH, timer, &[Service::Backups]);
    // systemd refuses a unit whose ReadWritePaths= does not exist.
    b.dir(&config.dir.display().to_string(), 0o700, "root");
    Ok(())
}

/// The receiving side on the backup target. The home, `.ssh` and
/// `authorized_keys` belong to root, so the account cannot change which keys
/// may log in or what they may run; only the backup folder is its own.
pub(super) fn target(b: &mut Builder, inv: &Inventory, pki: &Pki) -> Result<(), RenderError> {
    let Some(t) = inv.backups.as_ref().and_then(|b| b.target.as_ref()) else {
        return Ok(());
    };
    let home = home(&t.user);
    b.user(SystemUser {
        name: t.user.clone(),
        home: home.clone(),
    });
    b.dir(&home, 0o755, "root");
    b.dir(&format!("{home}/.ssh"), 0o755, "root");
    b.dir(&t.path, 0o700, &t.user);
    let retention = RetentionPolicy::from(&t.retention);
    let mut lines = String::new();
    for (member, key) in &pki.push_keys {
        let line = crate::backup::authorized_keys_line(
            RAMPART_PATH,
            &inv.cluster.name,
            member,
            &t.path,
            &retention,
            &key.public,
        )
        .map_err(|reason| RenderError::Unwritable {
            host: t.host.clone(),
            what: "the backup target's authorized_keys",
            reason,
        })?;
        lines.push_str(&line);
        lines.push('\n');
    }
    let text = format!(
        "# Rendered by rampart for cluster {}: one forced command per etcd member.\n# Edits are overwritten on the next apply.\n{lines}",
        inv.cluster.name
    );
    b.file(
        &format!("{home}/.ssh/authorized_keys"),
        0o644,
        Contents::Plain(text.into_bytes()),
        &[],
    );
    Ok(())
}

/// The receiving account's home: fixed, so the plan never depends on what
/// `/etc/passwd` says.
pub fn home(user: &str) -> String {
    format!("/var/lib/{user}")
}
