//! `rampart certs renew`: reissue leaves (new keys) under the CA that signs
//! now, in one state-dir transaction, then roll them out with one `apply`
//! (which locks the hosts): etcd members one at a time behind cluster
//! health, control planes one at a time behind `/readyz`. Every kubeconfig
//! that embeds a renewed certificate is rendered again with it.
//!
//! Renewal needs no journal of its own: once the state dir holds the new
//! certificates, `apply` converges the hosts to them, so a rollout cut
//! short is finished by `rampart apply` (the error says so).

use serde::Serialize;
use time::OffsetDateTime;

use crate::actions::apply::ApplyOptions;
use crate::engine::{Cancel, Connector, Env, Prompt, Reporter};
use crate::inventory::Inventory;
use crate::pki::renew::{self, Selection};
use crate::pki::{StateDir, Unlock};

use super::phases::roll_out;
use super::{Rollout, RotateError};

/// One leaf a renewal reissues.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RenewLeaf {
    pub name: String,
    /// Its current end (RFC 3339); None when it is missing.
    pub not_after: Option<String>,
}

/// What `certs renew` does, as data (`--dry-run` prints it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RenewPlan {
    pub leaves: Vec<RenewLeaf>,
    /// Keys are always new: a renewal that kept them would not help after
    /// a key leaked, and nothing on a host pins a leaf's key.
    pub new_keys: bool,
}

/// The leaves `selection` picks, with their current expiry.
pub fn plan(
    inv: &Inventory,
    dir: &StateDir,
    selection: &Selection,
    now: OffsetDateTime,
) -> Result<RenewPlan, RotateError> {
    let rfc = &time::format_description::well_known::Rfc3339;
    let leaves = renew::select(inv, dir, selection, now)?
        .into_iter()
        .map(|(name, t)| RenewLeaf {
            name,
            not_after: t.and_then(|t| t.format(rfc).ok()),
        })
        .collect();
    Ok(RenewPlan {
        leaves,
        new_keys: true,
    })
}

/// What a renewal did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Renewed {
    pub renewed: Vec<String>,
    /// Hosts whose files changed in the rollout.
    pub hosts_changed: usize,
}

/// Everything a renewal needs besides the plan.
pub struct RenewRequest<'r> {
    pub dir: StateDir,
    pub unlock: &'r Unlock,
    /// How the rollout's `apply` runs; it takes the hosts' lock.
    pub apply: ApplyOptions,
    pub now: OffsetDateTime,
}

/// Asks, reissues the planned leaves, rolls them out.
pub async fn execute(
    inv: &Inventory,
    plan: &RenewPlan,
    req: RenewRequest<'_>,
    connector: &dyn Connector,
    prompt: &dyn Prompt,
    reporter: &dyn Reporter,
    cancel: &Cancel,
) -> Result<Renewed, RotateError> {
    let names: Vec<String> = plan.leaves.iter().map(|l| l.name.clone()).collect();
    if names.is_empty() {
        return Ok(Renewed {
            renewed: names,
            hosts_changed: 0,
        });
    }
    let question = format!(
        "renew {} and restart what uses them",
        crate::words::count(names.len(), "certificate")
    );
    if !prompt.confirm(&question) {
        return Err(RotateError::NotConfirmed);
    }
    let renewed = renew::renew(inv, &req.dir, req.unlock, &names, req.now)?;
    let env = Env {
        inv,
        reporter,
        cancel,
        concurrency: req.apply.concurrency,
    };
    let rollout = Rollout {
        dir: req.dir,
        unlock: req.unlock,
        connector,
        options: ApplyOptions {
            hosts: None,
            lock: true,
            ..req.apply
        },
    };
    match roll_out(&env, &rollout, req.now).await {
        Ok(hosts_changed) => Ok(Renewed {
            renewed,
            hosts_changed,
        }),
        Err(cause) => Err(RotateError::Unfinished {
            renewed: renewed.len(),
            cause: Box::new(cause),
        }),
    }
}
