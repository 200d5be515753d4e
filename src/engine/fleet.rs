//! The fleet: the hosts of one run, connected (and, for a run that changes
//! them, locked), and the one way work fans out to them.
//!
//! [`each`] is the only place in rampart that runs work on several hosts at
//! once: bounded concurrency, cancellation checked before each host starts,
//! every host's outcome kept in inventory order, and every failure collected
//! so one report names every broken host. Connecting and locking are built on
//! it like any other work; apply, restore and the backup commands all use it.

use std::sync::Arc;

use futures::stream::{self, StreamExt};

use super::error::{ConnectError, PhaseError, StepError};
use super::report::{Cancel, Reporter};
use crate::inventory::{Host, Inventory};
use crate::remote::script;
use crate::remote::{BoxFuture, Held, Input, Output, Remote};

/// What every piece of work on hosts sees: the inventory, where progress
/// goes, the stop flag and how many hosts may be worked on at once.
pub struct Env<'a> {
    pub inv: &'a Inventory,
    pub reporter: &'a dyn Reporter,
    pub cancel: &'a Cancel,
    pub concurrency: usize,
}

/// Something [`each`] can work on: it names a host.
pub trait OnHost: Sync {
    fn host_name(&self) -> &str;
}

/// Something a script can run on: a host and its connection.
pub trait Reachable: OnHost {
    fn host(&self) -> &Host;
    fn remote(&self) -> &dyn Remote;
}

impl OnHost for Host {
    fn host_name(&self) -> &str {
        &self.name
    }
}

/// One connected host.
#[derive(Clone)]
pub struct ConnectedHost {
    pub host: Host,
    pub remote: Arc<dyn Remote>,
}

impl OnHost for ConnectedHost {
    fn host_name(&self) -> &str {
        &self.host.name
    }
}

impl Reachable for ConnectedHost {
    fn host(&self) -> &Host {
        &self.host
    }
    fn remote(&self) -> &dyn Remote {
        &*self.remote
    }
}

/// Opens a connection to a host (SSH in the CLI, local processes in tests).
pub trait Connector: Send + Sync {
    fn connect<'a>(
        &'a self,
        host: &'a Host,
    ) -> BoxFuture<'a, Result<Arc<dyn Remote>, ConnectError>>;
}

/// The connected hosts of a run, in inventory order, and the locks it holds.
#[derive(Default)]
pub struct Fleet {
    members: Vec<ConnectedHost>,
    locks: Vec<Box<dyn Held>>,
}

impl Fleet {
    /// Connects to `hosts`; every host that cannot be reached or trusted is
    /// named in the error, and none of the others is kept.
    pub async fn connect(
        env: &Env<'_>,
        hosts: &[&Host],
        connector: &dyn Connector,
    ) -> Result<Fleet, PhaseError> {
        let remotes = each(env, "connect", hosts.to_vec(), |h| {
            Box::pin(async move {
                env.reporter.step(&h.name, "connect");
                connector
                    .connect(h)
                    .await
                    .map_err(|e| StepError::connect(&h.name, e))
            })
        })
        .await?;
        let members = hosts
            .iter()
            .zip(remotes)
            .map(|(h, remote)| ConnectedHost {
                host: (*h).clone(),
                remote,
            })
            .collect();
        Ok(Fleet {
            members,
            locks: Vec::new(),
        })
    }

    /// A fleet of hosts connected elsewhere (tests, one-host commands).
    pub fn of(members: Vec<ConnectedHost>) -> Fleet {
        Fleet {
            members,
            locks: Vec::new(),
        }
    }

    pub fn members(&self) -> &[ConnectedHost] {
        &self.members
    }

    /// The members named in `hosts`, in inventory order.
    pub fn select<'a>(&'a self, hosts: &[String]) -> Vec<&'a ConnectedHost> {
        self.members
            .iter()
            .filter(|m| hosts.contains(&m.host.name))
            .collect()
    }

    /// Takes `lock` on every member, or on none: a busy host names its holder
    /// and how to clear a stale lock; the locks taken are released again.
    pub async fn lock(&mut self, env: &Env<'_>, lock: &str, owner: &str) -> Result<(), PhaseError> {
        let text = script::lock(lock, owner);
        let text = &text;
        let results = each_outcome(env, "lock", self.members.iter().collect(), |m| {
            Box::pin(async move {
                env.reporter.step(&m.host.name, "lock");
                match m.remote.hold(text).await? {
                    Ok((line, held)) if line == "locked" => Ok(held),
                    Ok((line, held)) => {
                        let _ = held.release().await;
                        let holder = line.strip_prefix("busy\t").unwrap_or(&line).to_string();
                        Err(StepError::Locked {
                            holder,
                            host: m.host.name.clone(),
                        })
                    }
                    Err(out) => Err(StepError::script("lock", &out)),
                }
            })
        })
        .await;
        let mut failures = Vec::new();
        for (host, r) in results {
            match r {
                Ok(held) => self.locks.push(held),
                Err(e) => failures.push((host, e)),
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            self.release().await;
            Err(PhaseError {
                phase: "lock",
                failures,
            })
        }
    }

    /// Ends the lock scripts on every host (also done when dropped, as the
    /// connections close).
    pub async fn release(&mut self) {
        for lock in self.locks.drain(..) {
            let _ = lock.release().await;
        }
    }
}

/// Runs `work` on each item with at most `env.concurrency` at once and
/// returns every result in input order, or a [`PhaseError`] naming every
/// host that failed (the others finished their work).
pub async fn each<'a, I, T, F>(
    env: &'a Env<'a>,
    phase: &'static str,
    items: Vec<&'a I>,
    work: F,
) -> Result<Vec<T>, PhaseError>
where
    I: OnHost + ?Sized,
    T: Send + 'a,
    F: Fn(&'a I) -> BoxFuture<'a, Result<T, StepError>>,
{
    let mut ok = Vec::new();
    let mut failures = Vec::new();
    for (host, r) in each_outcome(env, phase, items, work).await {
        match r {
            Ok(v) => ok.push(v),
            Err(e) => failures.push((host, e)),
        }
    }
    if failures.is_empty() {
        Ok(ok)
    } else {
        Err(PhaseError { phase, failures })
    }
}

/// [`each`], keeping every host's outcome (for work whose successes must be
/// undone when another host failed, like locks).
pub async fn each_outcome<'a, I, T, F>(
    env: &'a Env<'a>,
    phase: &'static str,
    items: Vec<&'a I>,
    work: F,
) -> Vec<(String, Result<T, StepError>)>
where
    I: OnHost + ?Sized,
    T: Send + 'a,
    F: Fn(&'a I) -> BoxFuture<'a, Result<T, StepError>>,
{
    // Futures are built up front and boxed (they are lazy: nothing runs
    // until polled), so the stream holds no closure types; that keeps the
    // whole future provably `Send` for the multi-threaded runtime.
    type Outcome<T> = (usize, String, Result<T, StepError>);
    let futures: Vec<BoxFuture<'a, Outcome<T>>> = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let work = work(item);
            let fut: BoxFuture<'a, Outcome<T>> = Box::pin(async move {
                let r = if env.cancel.is_cancelled() {
                    Err(StepError::Cancelled {
                        step: phase.to_string(),
                    })
                } else {
                    work.await
                };
                env.reporter.done(item.host_name());
                (i, item.host_name().to_string(), r)
            });
            fut
        })
        .collect();
    let mut results: Vec<Outcome<T>> = stream::iter(futures)
        .buffer_unordered(env.concurrency.max(1))
        .collect()
        .await;
    results.sort_by_key(|(i, _, _)| *i);
    results.into_iter().map(|(_, h, r)| (h, r)).collect()
}

/// Runs a script as one named step: reports it, checks cancellation first,
/// and turns a non-zero exit into [`StepError::Script`] with its first cause.
pub async fn step<T: Reachable + ?Sized>(
    env: &Env<'_>,
    t: &T,
    step: &str,
    script: &str,
    input: Input,
) -> Result<Output, StepError> {
    if env.cancel.is_cancelled() {
        return Err(StepError::Cancelled {
            step: step.to_string(),
        });
    }
    env.reporter.step(t.host_name(), step);
    let out = t.remote().run(script, input).await?;
    if out.success() {
        Ok(out)
    } else {
        Err(StepError::script(step, &out))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::engine::Silent;

    struct Item(&'static str);

    impl OnHost for Item {
        fn host_name(&self) -> &str {
            self.0
        }
    }

    fn inventory() -> Inventory {
        crate::inventory::parse(
            "cluster: {name: t, kubernetesVersion: \"1.34\"}\nhosts:\n  - {name: cp1, address: 10.0.0.1, roles: [etcd, control-plane]}\n",
            std::path::Path::new("i.yaml"),
        )
        .unwrap()
        .inventory
    }

    fn env<'a>(inv: &'a Inventory, cancel: &'a Cancel, concurrency: usize) -> Env<'a> {
        Env {
            inv,
            reporter: &Silent,
            cancel,
            concurrency,
        }
    }

    const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];

    /// Results come back in the order the hosts were given, whatever order
    /// they finished in; never more than `concurrency` run at once.
    #[tokio::test]
    async fn each_keeps_input_order_and_its_bound() {
        let inv = inventory();
        let cancel = Cancel::default();
        let env = env(&inv, &cancel, 2);
        let items: Vec<Item> = NAMES.into_iter().map(Item).collect();
        let (running, peak) = (&AtomicUsize::new(0), &AtomicUsize::new(0));
        let out = each(&env, "t", items.iter().collect(), |i| {
            Box::pin(async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                // The first hosts take longest: they finish last.
                let pos = NAMES.iter().position(|n| *n == i.0).unwrap() as u64;
                tokio::time::sleep(Duration::from_millis(40 - 8 * pos)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(i.0.to_uppercase())
            })
        })
        .await
        .unwrap();
        assert_eq!(out, ["A", "B", "C", "D", "E"]);
        assert_eq!(peak.load(Ordering::SeqCst), 2);
    }

    /// Every host that failed is named, in input order; the others finished.
    #[tokio::test]
    async fn each_names_every_failed_host() {
        let inv = inventory();
        let cancel = Cancel::default();
        let env = env(&inv, &cancel, 8);
        let items: Vec<Item> = NAMES.into_iter().map(Item).collect();
        let done = &AtomicUsize::new(0);
        let err = each(&env, "t", items.iter().collect(), |i| {
            Box::pin(async move {
                if i.0 == "b" || i.0 == "d" {
                    return Err(StepError::Check(format!("{} is broken", i.0)));
                }
                done.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
        })
        .await
        .unwrap_err();
        let failed: Vec<&str> = err.failures.iter().map(|(h, _)| h.as_str()).collect();
        assert_eq!((err.phase, failed), ("t", vec!["b", "d"]));
        assert_eq!(done.load(Ordering::SeqCst), 3);
        assert_eq!(
            err.to_string(),
            "phase t failed on 2 hosts:\n  - b: b is broken\n  - d: d is broken"
        );
    }

    /// A stop request lets the host in flight finish and starts no other.
    #[tokio::test]
    async fn a_cancelled_run_starts_no_more_hosts() {
        let inv = inventory();
        let cancel = Cancel::default();
        let env = env(&inv, &cancel, 1);
        let items: Vec<Item> = NAMES.into_iter().map(Item).collect();
        let started = &AtomicUsize::new(0);
        let c = &cancel;
        let err = each(&env, "t", items.iter().collect(), |_| {
            Box::pin(async move {
                started.fetch_add(1, Ordering::SeqCst);
                c.cancel();
                Ok(())
            })
        })
        .await
        .unwrap_err();
        assert_eq!(started.load(Ordering::SeqCst), 1);
        let cancelled: Vec<&str> = err.failures.iter().map(|(h, _)| h.as_str()).collect();
        assert_eq!(cancelled, ["b", "c", "d", "e"]);
        assert!(err.cancelled());
    }
}
