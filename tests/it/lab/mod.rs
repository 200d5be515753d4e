//! The local lab of real hosts (`tests/lab/testhosts.sh`, docs/lab.md): the
//! harness every lab test uses, and the lab's smoke tests.
//!
//! A lab is described by the `hosts.json` that `testhosts.sh up` writes; its
//! path comes from `RAMPART_LAB` (the flat lab) or `RAMPART_LAB_BASTION` (the
//! lab with `TH_BASTION=1`). The hosts are reachable only from inside the lab's
//! network namespace, so lab tests run there (`tests/run.sh` does it with
//! `testhosts.sh exec`), and [`main_lab`] refuses to hand out a lab the test is
//! not inside of. Without the variable the tests skip, unless `CI` is set: CI
//! always has the lab, so there a missing variable fails the test.
//!
//! Lab tests share the hosts: each one holds [`lock`] while it uses them.
//! Tests of the bastion lab are named `lab_bastion_*`; `tests/run.sh` runs them
//! on their own inside the bastion lab's namespace (`cargo test lab_bastion`)
//! and skips them in the main run (`--skip lab_bastion`).

// The harness is also the API for the `rampart apply` tests being written;
// not every item has a user yet.
#![allow(dead_code)]

mod apply;
mod backup;
mod backup_target;
mod certs;
mod encryption;
mod hostile;
mod kubernetes;
mod kubernetes_rotate;
mod oci;
mod restore;
mod rotate;
mod smoke;
mod verify;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::Deserialize;
use tempfile::TempDir;

/// One lab host.
#[derive(Debug, Clone)]
pub struct LabHost {
    /// Host name, e.g. `rl1` (also its hostname and its name in known_hosts).
    pub name: String,
    /// The address ssh connects to: on the operator network, or, behind the
    /// bastion, on the inner network (reached through the jump host).
    pub ip: String,
    /// The address the hosts reach each other on (the inner network with a
    /// bastion, where host 1 has a second address; else = `ip`). Inventories
    /// use it.
    pub cluster_ip: String,
    /// True for hosts only reachable through the bastion.
    pub behind_bastion: bool,
    /// The host's whole filesystem, seen from outside (overlayfs mount).
    pub root: PathBuf,
    /// Only what changed in the host compared with the base image (the upper dir).
    pub changes: PathBuf,
}

/// A running lab, read from the `hosts.json` of `testhosts.sh up`.
#[derive(Debug)]
pub struct Lab {
    pub hosts: Vec<LabHost>,
    /// The lab's private key (for root and for `sudo_user`).
    pub ssh_key: PathBuf,
    /// Host keys of every host (the bastion under both of its addresses).
    pub known_hosts: PathBuf,
    /// True for the `TH_BASTION=1` topology: `hosts[0]` is the jump host.
    pub bastion: bool,
    /// The jump host's address on the operator network (bastion labs only).
    pub bastion_address: Option<String>,
    /// Non-root login user with passwordless sudo (`deploy`).
    pub sudo_user: String,
    /// The operator network, e.g. `10.77.0.0/24`.
    pub net: String,
    /// The network the hosts talk on (the inner one with a bastion), e.g. `10.77.1.0/24`.
    pub cluster_net: String,
    /// The network namespace the tests must run in, e.g. `rl-lab`.
    pub netns: String,
    /// This side's address on the lab network (where a test can serve hosts).
    pub operator_ip: String,
    /// Brought up with `TH_KUBELET=1`: hosts can run kubelets and containers.
    pub kubelet: bool,
    /// Holds the ssh client config ([`Lab::ssh_cmd`]) and written inventories.
    tmp: TempDir,
}

#[derive(Deserialize)]
struct HostsJson {
    lab_netns: String,
    operator_ip: String,
    #[serde(default)]
    kubelet: bool,
    net: String,
    cluster_net: String,
    ssh_key: PathBuf,
    known_hosts: PathBuf,
    sudo_user: String,
    bastion: Option<BastionJson>,
    hosts: Vec<HostJson>,
}

#[derive(Deserialize)]
struct BastionJson {
    address: String,
}

#[derive(Deserialize)]
struct HostJson {
    name: String,
    ip: String,
    cluster_ip: String,
    behind_bastion: bool,
    root: PathBuf,
    changes: PathBuf,
}

/// The flat lab (`RAMPART_LAB`), or None when lab tests are to be skipped.
pub fn main_lab() -> Option<Lab> {
    from_env("RAMPART_LAB")
}

/// The bastion lab (`RAMPART_LAB_BASTION`), or None when lab tests are to be skipped.
pub fn bastion_lab() -> Option<Lab> {
    let lab = from_env("RAMPART_LAB_BASTION")?;
    assert!(
        lab.bastion,
        "RAMPART_LAB_BASTION names a lab without a bastion (bring it up with TH_BASTION=1)"
    );
    Some(lab)
}

/// Serialises lab tests: they share the hosts. A test that failed while
/// holding the lock does not poison the others.
pub fn lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `CI` set to anything but empty, `0` or `false`.
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

fn from_env(var: &str) -> Option<Lab> {
    match std::env::var_os(var).filter(|v| !v.is_empty()) {
        Some(path) => Some(Lab::load(Path::new(&path))),
        None if in_ci() => panic!(
            "{var} is not set, but CI is: in CI the lab tests must run against the lab \
             (bash tests/run.sh brings it up; RAMPART_NO_LAB=1 is for local runs only)"
        ),
        None => {
            eprintln!("lab tests skipped: {var} not set");
            None
        }
    }
}

impl Lab {
    /// Reads `hosts.json` and checks that this process runs inside the lab's
    /// network namespace (nothing outside it can reach the hosts, and nothing
    /// talking to lab addresses may run outside it).
    pub fn load(hosts_json: &Path) -> Lab {
        let text = std::fs::read_to_string(hosts_json).unwrap_or_else(|e| {
            panic!(
                "cannot read the lab description {}: {e} (is the lab up? testhosts.sh up 4)",
                hosts_json.display()
            )
        });
        let j: HostsJson = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "{}: not a testhosts.sh hosts.json: {e}",
                hosts_json.display()
            )
        });
        assert_in_netns(&j.lab_netns);
        let tmp = tempfile::tempdir().unwrap();
        // One client config for the target and the jump connection alike: with
        // -J, ssh passes -F (not -i/-o) on to the connection to the jump host.
        std::fs::write(
            tmp.path().join("ssh_config"),
            format!(
                "Host *\n  IdentityFile {}\n  IdentitiesOnly yes\n  UserKnownHostsFile {}\n  \
                 StrictHostKeyChecking yes\n  BatchMode yes\n  ConnectTimeout 5\n  LogLevel ERROR\n",
                j.ssh_key.display(),
                j.known_hosts.display()
            ),
        )
        .unwrap();
        Lab {
            hosts: j
                .hosts
                .into_iter()
                .map(|h| LabHost {
                    name: h.name,
                    ip: h.ip,
                    cluster_ip: h.cluster_ip,
                    behind_bastion: h.behind_bastion,
                    root: h.root,
                    changes: h.changes,
                })
                .collect(),
            ssh_key: j.ssh_key,
            known_hosts: j.known_hosts,
            bastion: j.bastion.is_some(),
            bastion_address: j.bastion.map(|b| b.address),
            sudo_user: j.sudo_user,
            net: j.net,
            cluster_net: j.cluster_net,
            netns: j.lab_netns,
            operator_ip: j.operator_ip,
            kubelet: j.kubelet,
            tmp,
        }
    }

    /// The OpenSSH client for `user@hosts[host]`, with the lab's key and host
    /// keys (`StrictHostKeyChecking=yes`, `BatchMode=yes`), through the jump
    /// host (`-J`) when `jump` is set; add the remote command with `.arg()`.
    pub fn ssh_cmd(&self, host: usize, user: &str, jump: bool) -> Command {
        let h = &self.hosts[host];
        let mut cmd = Command::new("ssh");
        cmd.arg("-F")
            .arg(self.tmp.path().join("ssh_config"))
            .arg("-i")
            .arg(&self.ssh_key)
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"]);
        if jump {
            let bastion = self
                .bastion_address
                .as_ref()
                .expect("a jump needs the bastion lab");
            cmd.arg("-J").arg(format!("root@{bastion}"));
        }
        cmd.arg(format!("{user}@{}", h.ip)).stdin(Stdio::null());
        cmd
    }

    /// Runs `cmd` (a shell command line) as root on `hosts[host]` (0-based;
    /// `hosts[0]` is `rl1`) over plain OpenSSH, through the jump host for hosts
    /// behind the bastion: checks host state independently of rampart.
    pub fn ssh(&self, host: usize, cmd: &str) -> Output {
        self.ssh_as("root", host, cmd)
    }

    /// [`Lab::ssh`] as another user (e.g. `sudo_user`).
    pub fn ssh_as(&self, user: &str, host: usize, cmd: &str) -> Output {
        self.ssh_cmd(host, user, self.hosts[host].behind_bastion)
            .arg("--")
            .arg(cmd)
            .output()
            .expect("ssh runs (openssh-client)")
    }

    /// [`Lab::ssh`] that must succeed; returns stdout, trimmed.
    pub fn ssh_ok(&self, host: usize, cmd: &str) -> String {
        let out = self.ssh(host, cmd);
        assert_success(&out, &format!("{}: {cmd}", self.hosts[host].name));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A rampart inventory for this lab (see [`InventorySpec`]): hosts 1..3 are
    /// `[etcd, control-plane]`, the rest `[worker]`, host 1 is the API endpoint,
    /// the SSH settings are the lab's key and known_hosts.
    pub fn inventory(&self, spec: &InventorySpec) -> String {
        let bastion = spec.bastion.unwrap_or(self.bastion);
        assert!(
            !bastion || self.bastion,
            "a bastion section needs the bastion lab"
        );
        let key = self.ssh_key.display();
        let mut y = format!(
            "# written by tests/it/lab for lab {netns}\n\
             cluster:\n  name: {name}\n  kubernetesVersion: \"{version}\"\n  \
             apiEndpoint: {api}:6443\n  serviceCidr: {services}\n  podCidr: {pods}\n  \
             nodeNetwork: {net}\n\
             ssh:\n  user: {user}\n",
            netns = self.netns,
            name = spec.cluster.as_deref().unwrap_or("lab"),
            version = spec.kubernetes_version.as_deref().unwrap_or("1.34"),
            api = self.hosts[0].cluster_ip,
            services = spec.ranges.as_ref().map_or("10.96.0.0/12", |r| &r.0),
            pods = spec.ranges.as_ref().map_or("10.244.0.0/16", |r| &r.1),
            net = self.cluster_net,
            user = if spec.sudo { &self.sudo_user } else { "root" },
        );
        if spec.sudo {
            y += "  become: sudo\n";
        }
        y += &format!(
            "  identityFile: {key}\n  knownHostsFile: {}\n",
            self.known_hosts.display()
        );
        if bastion {
            y += &format!(
                "  bastion:\n    address: {}\n    user: root\n    identityFile: {key}\n",
                self.bastion_address.as_ref().unwrap()
            );
        }
        y += "hosts:\n";
        for (i, h) in self.hosts.iter().enumerate() {
            let roles = if i < 3 {
                "[etcd, control-plane]"
            } else if spec.backup_target {
                "[worker, backup-target]"
            } else {
                "[worker]"
            };
            y += &format!(
                "  - name: {}\n    address: {}\n    roles: {roles}\n",
                h.name, h.cluster_ip
            );
        }
        if !spec.extra.is_empty() {
            y += &spec.extra;
            if !y.ends_with('\n') {
                y.push('\n');
            }
        }
        y
    }

    /// Writes [`Lab::inventory`] to a new file in the lab's temp dir.
    pub fn write_inventory(&self, spec: &InventorySpec) -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = self.tmp.path().join(format!("inventory-{n}.yaml"));
        std::fs::write(&path, self.inventory(spec)).unwrap();
        path
    }
}

/// Options of [`Lab::inventory`]; `InventorySpec::default()` is the plain lab.
#[derive(Debug, Clone, Default)]
pub struct InventorySpec {
    /// `cluster.name` (default `lab`).
    pub cluster: Option<String>,
    /// Log in as the lab's `deploy` user with `become: sudo` instead of root.
    pub sudo: bool,
    /// Write an `ssh.bastion` section (default: when the lab has a bastion).
    pub bastion: Option<bool>,
    /// YAML appended at the top level, e.g. `"security:\n  keyAlgorithm: ecdsa-p384\n"`.
    pub extra: String,
    /// The fourth host (the worker) is also the backup target.
    pub backup_target: bool,
    /// `cluster.kubernetesVersion` (default `1.34`).
    pub kubernetes_version: Option<String>,
    /// `cluster.serviceCidr` and `cluster.podCidr` (default `10.96.0.0/12`
    /// and `10.244.0.0/16`).
    pub ranges: Option<(String, String)>,
}

/// Panics unless this process is in network namespace `/run/netns/<netns>`.
fn assert_in_netns(netns: &str) {
    let lab = Path::new("/run/netns").join(netns);
    let ours = std::fs::metadata("/proc/self/ns/net").expect("/proc/self/ns/net");
    let theirs = std::fs::metadata(&lab).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: the lab is not up (testhosts.sh up 4)",
            lab.display()
        )
    });
    assert!(
        (ours.dev(), ours.ino()) == (theirs.dev(), theirs.ino()),
        "this test runs outside the lab's network namespace {netns}: run it with \
         `testhosts.sh exec cargo test …` (or `ip netns exec {netns} …`)"
    );
}

/// Panics with the command's output unless it exited 0.
pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs the rampart binary of this build with `args`, no stdin, and only the
/// `RAMPART_*` variables in `env` (inherited ones are removed).
pub fn rampart(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rampart"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("RAMPART_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("the rampart binary runs")
}

/// A cluster state dir made by `rampart init` in a temp dir, unlocked with an
/// age identity made by `age-keygen`.
pub struct Cluster {
    pub dir: TempDir,
    pub inventory: PathBuf,
    pub state_dir: PathBuf,
    pub identity: PathBuf,
}

impl Cluster {
    /// Writes `inventory_yaml`, makes an age identity and runs
    /// `rampart init -i inventory.yaml`, which must succeed.
    pub fn init(inventory_yaml: &str) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let inventory = dir.path().join("inventory.yaml");
        std::fs::write(&inventory, inventory_yaml).unwrap();
        let identity = dir.path().join("identity.txt");
        let keygen = Command::new("age-keygen")
            .arg("-o")
            .arg(&identity)
            .stdin(Stdio::null())
            .output()
            .expect("age-keygen runs (install age: tests/deps.sh)");
        assert_success(&keygen, "age-keygen");
        let c = Cluster {
            state_dir: dir.path().join("state"),
            dir,
            inventory,
            identity,
        };
        let inv = c.inventory.to_str().unwrap().to_string();
        assert_success(&c.run(&["init", "-i", &inv]), "rampart init");
        c
    }

    /// `RAMPART_INVENTORY`, `RAMPART_STATE_DIR` and `RAMPART_IDENTITY` for this cluster.
    pub fn env(&self) -> [(&'static str, &str); 3] {
        [
            ("RAMPART_INVENTORY", self.inventory.to_str().unwrap()),
            ("RAMPART_STATE_DIR", self.state_dir.to_str().unwrap()),
            ("RAMPART_IDENTITY", self.identity.to_str().unwrap()),
        ]
    }

    /// The inventory and the state dir's PKI, unlocked with the identity:
    /// for tests that sign a certificate the way rampart does.
    pub fn pki(&self) -> (rampart::inventory::Inventory, rampart::pki::Pki) {
        let inv = rampart::inventory::load(&self.inventory).unwrap().inventory;
        let dirs = rampart::pki::StateDir::new(&self.state_dir);
        let unlock = rampart::pki::Unlock::Identity(self.identity.clone());
        let pki = rampart::pki::load(&inv, &dirs, &unlock).unwrap();
        (inv, pki)
    }

    /// [`rampart`] with this cluster's [`Cluster::env`].
    pub fn run(&self, args: &[&str]) -> Output {
        rampart(args, &self.env())
    }
}
