//! The restore plan: who is restored, with which tool, from what, in which
//! order. Computed purely from the inventory, the verified snapshot's
//! metadata and each host's facts; `--dry-run` prints the very value a run
//! executes, and the run keeps a copy beside the state dir for `--resume`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::journal::Step;
use super::{pre_restore_dir, rolled_back_dir, DATA_DIR};
use crate::inventory::Inventory;
use crate::render::https_url;

/// What the verified backup is, as the plan shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotMeta {
    /// The backup file as given.
    pub file: String,
    /// sha256 of the ciphertext (checked against the manifest when there is one).
    pub sha256: String,
    /// sha256 of the decrypted snapshot: every upload is checked against it.
    pub plaintext_sha256: String,
    pub snapshot_size: u64,
    pub revision: i64,
    /// `snapshot status`'s totalKey (keys of every kept revision).
    pub total_keys: u64,
    /// From the manifest: when the snapshot was taken (RFC 3339), by which
    /// member, of which cluster, with which etcd.
    pub created: Option<String>,
    /// Seconds between `created` and the plan.
    pub age_seconds: Option<i64>,
    pub member: Option<String>,
    pub cluster: Option<String>,
    pub etcd_version: Option<String>,
    /// A manifest was beside the file and everything matched it.
    pub manifest: bool,
}

/// Which offline tool restores on a member: `etcdutl` (etcd ≥ 3.5, where the
/// offline commands moved) or `etcdctl` with `ETCDCTL_API=3` (3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tool {
    Etcdctl,
    Etcdutl,
}

impl Tool {
    pub fn binary(self) -> &'static str {
        match self {
            Tool::Etcdctl => "etcdctl",
            Tool::Etcdutl => "etcdutl",
        }
    }
}

/// What one host said before the restore (`script::facts`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreFacts {
    /// `3.4.23` from `etcd --version`; None when there is no etcd binary.
    pub etcd_version: Option<String>,
    pub etcdctl: bool,
    pub etcdutl: bool,
    /// etcd.service is installed (systemd's LoadState is `loaded`).
    pub etcd_unit: bool,
    pub etcd_active: bool,
    pub apiserver_unit: bool,
    pub apiserver_active: bool,
    /// `/var/lib/etcd` exists.
    pub data_dir: bool,
    /// `/var/lib/etcd.pre-restore-<id>` exists.
    pub pre_restore: bool,
    /// The steps this host's journal of the restore records.
    pub journal: Vec<Step>,
}

impl RestoreFacts {
    /// Parses the facts script's `kind\tvalue…` lines; it must end with `end`.
    pub fn parse(text: &str) -> Result<RestoreFacts, String> {
        let mut f = RestoreFacts::default();
        let mut journal = String::new();
        let mut ended = false;
        for line in text.lines() {
            let cols: Vec<&str> = line.split('\t').collect();
            match cols.as_slice() {
                ["etcd", v] => f.etcd_version = parse_version_line(v),
                ["etcdctl", v] => f.etcdctl = *v == "yes",
                ["etcdutl", v] => f.etcdutl = *v == "yes",
                ["unit", name, load, active] => {
                    let loaded = *load == "loaded";
                    let running = matches!(*active, "active" | "activating" | "reloading");
                    match *name {
                        "etcd" => (f.etcd_unit, f.etcd_active) = (loaded, running),
                        "kube-apiserver" => {
                            (f.apiserver_unit, f.apiserver_active) = (loaded, running)
                        }
                        _ => {}
                    }
                }
                ["datadir", v] => f.data_dir = *v == "yes",
                ["moved", v] => f.pre_restore = *v == "yes",
                ["journal", rest @ ..] => {
                    journal.push_str(&rest.join("\t"));
                    journal.push('\n');
                }
                ["end"] => ended = true,
                _ => {}
            }
        }
        if !ended {
            return Err("the restore facts script ended early".into());
        }
        f.journal = crate::engine::runbook::parse_journal(&journal);
        Ok(f)
    }
}

/// `etcd Version: 3.4.23` → `3.4.23`.
fn parse_version_line(line: &str) -> Option<String> {
    let v = line.trim().strip_prefix("etcd Version:")?.trim();
    minor(v).map(|_| v.to_string())
}

/// (major, minor) of `3.4.23`.
pub fn minor(version: &str) -> Option<(u32, u32)> {
    let mut it = version.trim_start_matches('v').split('.');
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// One etcd member's part of the restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberPlan {
    pub name: String,
    pub address: String,
    /// `https://<address>:2380`, advertised to the restored cluster.
    pub peer_url: String,
    pub etcd_version: String,
    pub tool: Tool,
    /// Whether `/var/lib/etcd` existed (it is moved aside, never deleted).
    pub data_dir: bool,
    pub moved_to: String,
    pub etcd_active: bool,
    /// Steps the member's journal already records (a resumed restore skips them).
    pub done: Vec<Step>,
}

impl MemberPlan {
    pub fn has(&self, step: Step) -> bool {
        self.done.contains(&step)
    }
}

/// Everything a restore does, as data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestorePlan {
    /// UTC `YYYYmmddTHHMMSSZ` of the run: names journals and moved-aside dirs.
    pub id: String,
    pub cluster: String,
    /// `--initial-cluster`, from the inventory (not from the snapshot: the
    /// member set may have changed since the backup).
    pub initial_cluster: String,
    /// `<cluster>-restore-<id>`: a fresh token, so no member of the old
    /// cluster can ever join the restored one.
    pub token: String,
    pub snapshot: SnapshotMeta,
    pub members: Vec<MemberPlan>,
    /// Hosts with a kube-apiserver unit: their control plane is held stopped
    /// for the whole restore, whether it ran or not (nothing may start it).
    #[serde(default)]
    pub control_planes: Vec<String>,
    /// Hosts whose kube-apiserver was running: started last, with their
    /// controller-manager and scheduler.
    pub apiservers: Vec<String>,
    /// The steps, in order, as printed.
    pub steps: Vec<String>,
    /// True when this plan continues an interrupted restore.
    pub resumed: bool,
}

/// Why a restore or rollback cannot start; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("the restore cannot start; nothing was changed:{}", list(.0))]
    Problems(Vec<(String, String)>),
    #[error(
        "the inventory has no etcd members; a restore needs at least one host with the `etcd` role"
    )]
    NoMembers,
}

fn list(items: &[(String, String)]) -> String {
    items
        .iter()
        .map(|(h, m)| format!("\n  - {h}: {m}"))
        .collect()
}

/// The plan of a new restore `id`. Every member must run etcd ≥ 3.4 with its
/// offline tool, from a unit `rampart apply` installed, and not be older
/// than the etcd that took the snapshot.
pub fn plan_restore(
    inv: &Inventory,
    snapshot: SnapshotMeta,
    facts: &BTreeMap<String, RestoreFacts>,
    id: &str,
) -> Result<RestorePlan, PlanError> {
    let members: Vec<_> = inv.etcd_members().collect();
    if members.is_empty() {
        return Err(PlanError::NoMembers);
    }
    let initial_cluster = members
        .iter()
        .map(|m| format!("{}={}", m.name, https_url(m.address, 2380)))
        .collect::<Vec<_>>()
        .join(",");
    let mut problems = Vec::new();
    let mut planned = Vec::new();
    let empty = RestoreFacts::default();
    for m in &members {
        let f = facts.get(&m.name).unwrap_or(&empty);
        let mut problem = |msg: String| problems.push((m.name.clone(), msg));
        let dir = inv.binaries.etcd_dir.trim_end_matches('/');
        let Some(version) = f.etcd_version.clone() else {
            problem(format!(
                "no etcd at {dir}/etcd (or it printed no version); install etcd 3.4 or later"
            ));
            continue;
        };
        let Some(v) = minor(&version) else { continue };
        if v < (3, 4) {
            problem(format!(
                "etcd {version} is too old to restore with; upgrade to 3.4 or later"
            ));
            continue;
        }
        let tool = if v >= (3, 5) && f.etcdutl {
            Tool::Etcdutl
        } else if f.etcdctl {
            // etcdctl of 3.5 still restores (deprecated), so a 3.5 host
            // without etcdutl is not refused.
            Tool::Etcdctl
        } else {
            problem(format!(
                "neither {dir}/etcdutl nor {dir}/etcdctl is there; install etcd's client tools"
            ));
            continue;
        };
        if !f.etcd_unit {
            problem(
                "etcd.service is not installed; run `rampart apply` with this inventory first"
                    .into(),
            );
        }
        if f.pre_restore {
            problem(format!(
                "{} already exists; wait a second and run the restore again",
                pre_restore_dir(id)
            ));
        }
        if let Some(from) = snapshot.etcd_version.as_deref().and_then(minor) {
            if from > v {
                problem(format!(
                    "the snapshot comes from etcd {}, this member runs {version}; upgrade etcd first",
                    snapshot.etcd_version.as_deref().unwrap_or_default()
                ));
            }
        }
        planned.push(MemberPlan {
            name: m.name.clone(),
            address: m.address.to_string(),
            peer_url: https_url(m.address, 2380),
            etcd_version: version,
            tool,
            data_dir: f.data_dir,
            moved_to: pre_restore_dir(id),
            etcd_active: f.etcd_active,
            done: vec![],
        });
    }
    if !problems.is_empty() {
        return Err(PlanError::Problems(problems));
    }
    let apiservers: Vec<String> = inv
        .hosts
        .iter()
        .filter(|h| facts.get(&h.name).is_some_and(|f| f.apiserver_active))
        .map(|h| h.name.clone())
        .collect();
    let control_planes = control_planes(inv, facts, &apiservers);
    let mut plan = RestorePlan {
        id: id.to_string(),
        cluster: inv.cluster.name.clone(),
        token: format!("{}-restore-{id}", inv.cluster.name),
        initial_cluster,
        snapshot,
        members: planned,
        control_planes,
        apiservers,
        steps: vec![],
        resumed: false,
    };
    plan.steps = restore_steps(&plan);
    Ok(plan)
}

/// A saved plan continued: each member's `done` comes from its journal now.
/// Every member of the saved plan must still be in the inventory.
pub fn plan_resume(
    inv: &Inventory,
    saved: &RestorePlan,
    facts: &BTreeMap<String, RestoreFacts>,
) -> Result<RestorePlan, PlanError> {
    let mut plan = saved.clone();
    let mut problems = Vec::new();
    for m in &mut plan.members {
        if inv.host(&m.name).is_none() {
            problems.push((
                m.name.clone(),
                "is in the restore's plan but not in the inventory; resume with the inventory the restore started with".into(),
            ));
            continue;
        }
        m.done = facts
            .get(&m.name)
            .map(|f| f.journal.clone())
            .unwrap_or_default();
        if m.has(Step::RolledBack) {
            problems.push((
                m.name.clone(),
                format!(
                    "restore {} was rolled back here; start a new restore",
                    plan.id
                ),
            ));
        }
    }
    if !problems.is_empty() {
        return Err(PlanError::Problems(problems));
    }
    plan.resumed = true;
    plan.steps = restore_steps(&plan);
    Ok(plan)
}

fn restore_steps(p: &RestorePlan) -> Vec<String> {
    // Members a step still has to run on (a resumed plan skips the others).
    let pending = |step: Step| -> Option<String> {
        let n: Vec<&str> = p
            .members
            .iter()
            .filter(|m| !m.has(step))
            .map(|m| m.name.as_str())
            .collect();
        (!n.is_empty()).then(|| n.join(", "))
    };
    let all: Vec<&str> = p.members.iter().map(|m| m.name.as_str()).collect();
    let all = all.join(", ");
    let mut s = stop_steps(&p.control_planes, &all);
    if let Some(on) = pending(Step::MovedAside) {
        s.push(format!(
            "move {DATA_DIR} aside to {} on {on} (never deleted)",
            pre_restore_dir(&p.id)
        ));
    }
    if let Some(on) = pending(Step::Restored) {
        s.push(format!(
            "upload the snapshot (0600) and restore it with --initial-cluster-token {} on {on}; the upload is removed after",
            p.token
        ));
    }
    s.push(format!("start etcd on {all} together; wait for health"));
    s.push(format!(
        "check revision ≥ {} and the live keys against the snapshot",
        p.snapshot.revision
    ));
    s.extend(start_steps(&p.control_planes, &p.apiservers, &all));
    s
}

/// Hosts whose control plane a restore or rollback holds: every host with a
/// kube-apiserver unit, and those whose apiserver runs.
fn control_planes(
    inv: &Inventory,
    facts: &BTreeMap<String, RestoreFacts>,
    apiservers: &[String],
) -> Vec<String> {
    inv.hosts
        .iter()
        .filter(|h| {
            apiservers.contains(&h.name) || facts.get(&h.name).is_some_and(|f| f.apiserver_unit)
        })
        .map(|h| h.name.clone())
        .collect()
}

/// How a restore and a rollback begin, as printed.
fn stop_steps(control_planes: &[String], members: &str) -> Vec<String> {
    let mut s = Vec::new();
    if !control_planes.is_empty() {
        s.push(format!(
            "hold and stop kube-scheduler, kube-controller-manager and kube-apiserver on {}",
            control_planes.join(", ")
        ));
    }
    s.push(format!(
        "hold and stop the backup job and etcd on {members} (followers first, the leader last)"
    ));
    s.push("check on every host that nothing held has run since it stopped".into());
    s
}

/// How they end, as printed.
fn start_steps(control_planes: &[String], apiservers: &[String], members: &str) -> Vec<String> {
    let mut s = Vec::new();
    if !apiservers.is_empty() {
        s.push(format!(
            "start kube-apiserver (a new process behind /readyz), kube-controller-manager and kube-scheduler on {}, one host at a time",
            apiservers.join(", ")
        ));
    }
    let idle: Vec<&str> = control_planes
        .iter()
        .filter(|h| !apiservers.contains(h))
        .map(String::as_str)
        .collect();
    if !idle.is_empty() {
        s.push(format!(
            "release the control plane on {} (it was not running; `rampart apply` starts it)",
            idle.join(", ")
        ));
    }
    s.push(format!("release the backup job on {members}"));
    s
}

/// One member's part of a rollback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RollbackMember {
    pub name: String,
    /// The data dir that comes back.
    pub restore_from: String,
    /// Where the current (restored) data dir goes, when there is one.
    pub set_aside_to: Option<String>,
}

/// Everything a rollback does, as data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RollbackPlan {
    /// The restore rolled back.
    pub id: String,
    /// This rollback's UTC stamp (names the set-aside dirs).
    pub stamp: String,
    pub members: Vec<RollbackMember>,
    /// As [`RestorePlan::control_planes`].
    #[serde(default)]
    pub control_planes: Vec<String>,
    /// Started last: those of the restore's plan, else those running now.
    pub apiservers: Vec<String>,
    pub steps: Vec<String>,
}

/// Rolls restore `id` back on every etcd member of the inventory: each must
/// still hold `/var/lib/etcd.pre-restore-<id>`.
pub fn plan_rollback(
    inv: &Inventory,
    id: &str,
    stamp: &str,
    facts: &BTreeMap<String, RestoreFacts>,
    saved: Option<&RestorePlan>,
) -> Result<RollbackPlan, PlanError> {
    let names: Vec<String> = match saved {
        Some(p) => p.members.iter().map(|m| m.name.clone()).collect(),
        None => inv.etcd_members().map(|h| h.name.clone()).collect(),
    };
    if names.is_empty() {
        return Err(PlanError::NoMembers);
    }
    let empty = RestoreFacts::default();
    let mut problems = Vec::new();
    let mut members = Vec::new();
    for n in &names {
        let f = facts.get(n).unwrap_or(&empty);
        if !f.pre_restore {
            problems.push((
                n.clone(),
                format!(
                    "{} is not there, so there is nothing to roll back to",
                    pre_restore_dir(id)
                ),
            ));
            continue;
        }
        members.push(RollbackMember {
            name: n.clone(),
            restore_from: pre_restore_dir(id),
            set_aside_to: f.data_dir.then(|| rolled_back_dir(stamp)),
        });
    }
    if !problems.is_empty() {
        return Err(PlanError::Problems(problems));
    }
    let mut apiservers: Vec<String> = saved.map(|p| p.apiservers.clone()).unwrap_or_default();
    for h in &inv.hosts {
        if facts.get(&h.name).is_some_and(|f| f.apiserver_active) && !apiservers.contains(&h.name) {
            apiservers.push(h.name.clone());
        }
    }
    let mut control_planes = control_planes(inv, facts, &apiservers);
    for h in saved
        .map(|p| p.control_planes.as_slice())
        .unwrap_or_default()
    {
        if !control_planes.contains(h) {
            control_planes.push(h.clone());
        }
    }
    let all = names.join(", ");
    let mut steps = stop_steps(&control_planes, &all);
    steps.push(format!(
        "move {DATA_DIR} aside to {} (never deleted) and put {} back, on {all}",
        rolled_back_dir(stamp),
        pre_restore_dir(id)
    ));
    steps.push(format!("start etcd on {all} together; wait for health"));
    steps.extend(start_steps(&control_planes, &apiservers, &all));
    Ok(RollbackPlan {
        id: id.to_string(),
        stamp: stamp.to_string(),
        members,
        control_planes,
        apiservers,
        steps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_facts() {
        let f = RestoreFacts::parse(
            "etcd\tetcd Version: 3.4.23\netcdctl\tyes\netcdutl\tno\nunit\tetcd\tloaded\tactive\nunit\tkube-apiserver\tnot-found\tinactive\ndatadir\tyes\nmoved\tno\njournal\tstarted\t2026-11-30T15:00:00Z\nend\n",
        )
        .unwrap();
        assert_eq!(f.etcd_version.as_deref(), Some("3.4.23"));
        assert!(f.etcdctl && !f.etcdutl && f.etcd_unit && f.etcd_active);
        assert!(!f.apiserver_unit && !f.apiserver_active);
        assert_eq!(f.journal, vec![Step::Started]);
        assert!(RestoreFacts::parse("etcd\t-\n").is_err());
        assert_eq!(minor("3.5.17"), Some((3, 5)));
    }
}
