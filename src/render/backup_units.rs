//! `rampart-backup.service` and `rampart-backup.timer` for one etcd member.
//!
//! Pure, like the rest of `render`; the bundle places them at
//! [`crate::backup::SERVICE_PATH`] and [`crate::backup::TIMER_PATH`] next to
//! the config at [`crate::backup::CONFIG_PATH`], and must create the backup
//! dir (0700 root:root):
//! `ProtectSystem=strict` makes everything else read-only, and systemd refuses to
//! start a unit whose `ReadWritePaths=` does not exist.

use serde::Serialize;

use super::templates::{render, BACKUP_SERVICE, BACKUP_TIMER};
use super::RenderError;
use crate::backup::{AgentConfig, CONFIG_PATH, RAMPART_PATH};
use crate::inventory::Host;
use crate::inventory::Inventory;

#[derive(Serialize)]
struct Ctx<'a> {
    host: &'a str,
    cluster: &'a str,
    /// The rampart binary `apply` uploads to the hosts.
    bin: String,
    config: &'a str,
    dir: String,
    schedule: &'a str,
    randomized_delay: &'a str,
}

/// The (service, timer) pair for `host`, or None when backups are off or the
/// host runs no etcd (exactly when [`AgentConfig::from_inventory`] is None).
pub fn units(inv: &Inventory, host: &Host) -> Result<Option<(String, String)>, RenderError> {
    let (Some(b), Some(cfg)) = (&inv.backups, AgentConfig::from_inventory(inv, host)) else {
        return Ok(None);
    };
    let ctx = Ctx {
        host: &host.name,
        cluster: &inv.cluster.name,
        // Where apply installs rampart, whatever binaries.dir says.
        bin: RAMPART_PATH.to_string(),
        config: CONFIG_PATH,
        dir: cfg.dir.display().to_string(),
        schedule: &b.schedule,
        randomized_delay: &b.randomized_delay,
    };
    Ok(Some((
        render(BACKUP_SERVICE, &ctx)?,
        render(BACKUP_TIMER, &ctx)?,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn timer_carries_the_inventory_schedule() {
        let inv = crate::inventory::parse(
            r#"
cluster: {name: prod, kubernetesVersion: "1.34"}
hosts:
  - {name: cp1, address: 10.0.0.1, roles: [etcd, control-plane]}
  - {name: w1, address: 10.0.0.2, roles: [worker]}
backups:
  schedule: daily
  randomizedDelay: 1h
  dir: /srv/etcd-backups
  recipients: [age1jyqgnpk7g9dmlvchtnq05q5dek9wsatdywuums8780kt2f7lt5nqfqjtz9]
"#,
            Path::new("i.yaml"),
        )
        .unwrap()
        .inventory;
        let (service, timer) = units(&inv, inv.host("cp1").unwrap()).unwrap().unwrap();
        assert!(timer.contains("\nOnCalendar=daily\n"), "{timer}");
        assert!(timer.contains("\nRandomizedDelaySec=1h\n"), "{timer}");
        assert!(timer.contains("\nPersistent=true\n"), "{timer}");
        assert!(
            service.contains("\nReadWritePaths=/srv/etcd-backups\n"),
            "{service}"
        );
        assert!(
            service.contains(
                "\nExecStart=/usr/local/bin/rampart agent snapshot --config /etc/rampart/backup.yaml\n"
            ),
            "{service}"
        );
        assert!(units(&inv, inv.host("w1").unwrap()).unwrap().is_none());
    }
}
