//! The first phases of every command on hosts: `connect` and `lock`. A
//! command's state embeds a [`Reach`] (which hosts, how to reach them,
//! whether to lock them, and the fleet once connected) and these phases fill
//! it, like any other phase fills its part of the state.

use super::error::PhaseError;
use super::fleet::{Connector, Env, Fleet};
use super::phase::Phase;
use crate::inventory::Host;
use crate::remote::BoxFuture;

/// Which hosts a run works on, how to reach them and whether it locks them.
pub struct Reach<'c> {
    pub hosts: Vec<Host>,
    pub connector: &'c dyn Connector,
    /// `Some((lock file, owner))`: take the host lock (a run that changes
    /// hosts); None: only read (plan, `--dry-run`).
    pub lock: Option<(&'static str, String)>,
    /// Filled by [`Connect`].
    pub fleet: Fleet,
}

impl<'c> Reach<'c> {
    pub fn new(hosts: Vec<Host>, connector: &'c dyn Connector) -> Self {
        Reach {
            hosts,
            connector,
            lock: None,
            fleet: Fleet::default(),
        }
    }
}

/// A command state that embeds a [`Reach`].
pub trait Reaches<'c>: Send {
    fn reach(&self) -> &Reach<'c>;
    fn reach_mut(&mut self) -> &mut Reach<'c>;
}

/// `connect`: every selected host, at most `--concurrency` at once; every
/// host that cannot be reached or trusted is named.
pub struct Connect;

impl<'c, S: Reaches<'c>> Phase<S> for Connect {
    fn name(&self) -> &'static str {
        "connect"
    }
    fn title(&self) -> &'static str {
        "connect"
    }
    fn skippable(&self) -> bool {
        false
    }
    fn hosts(&self, s: &S) -> usize {
        s.reach().hosts.len()
    }
    fn run<'a>(&'a self, env: &'a Env<'a>, s: &'a mut S) -> BoxFuture<'a, Result<(), PhaseError>> {
        Box::pin(async move {
            let fleet = {
                let r = s.reach();
                let hosts: Vec<&Host> = r.hosts.iter().collect();
                Fleet::connect(env, &hosts, r.connector).await?
            };
            s.reach_mut().fleet = fleet;
            Ok(())
        })
    }
}

/// `lock`: the host lock on every host, or on none (a run that only reads
/// takes no lock).
pub struct Lock;

impl<'c, S: Reaches<'c>> Phase<S> for Lock {
    fn name(&self) -> &'static str {
        "lock"
    }
    fn title(&self) -> &'static str {
        "lock the hosts"
    }
    fn skippable(&self) -> bool {
        false
    }
    fn hosts(&self, s: &S) -> usize {
        let r = s.reach();
        if r.lock.is_some() {
            r.fleet.members().len()
        } else {
            0
        }
    }
    fn run<'a>(&'a self, env: &'a Env<'a>, s: &'a mut S) -> BoxFuture<'a, Result<(), PhaseError>> {
        Box::pin(async move {
            let r = s.reach_mut();
            let Some((path, owner)) = r.lock.clone() else {
                return Ok(());
            };
            r.fleet.lock(env, path, &owner).await
        })
    }
}
