//! Command-line arguments (clap derive): every command, flag and environment variable.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "rampart",
    version,
    about = "Bootstrap hardened Kubernetes clusters over SSH and keep them healthy",
    propagate_version = true
)]
pub struct Cli {
    /// More detail on stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate an inventory and print what it describes (no state, no network).
    Check(InventoryArgs),
    /// Create or update the cluster state dir: CAs, certificates, keys, kubeconfigs.
    Init(InitArgs),
    /// Render every host's hardened files into a directory (`<out>/<host>/<path>` + manifest.json).
    Render(RenderArgs),
    /// Certificates of the cluster.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Tenant users.
    #[command(subcommand)]
    Users(UsersCommand),
    /// CIS Kubernetes Benchmark self-check.
    #[command(subcommand)]
    Cis(CisCommand),
    /// Show, per host, what `apply` would change: files (diffs, secrets redacted), services.
    Plan(PlanArgs),
    /// Install the rendered bundle on the hosts over SSH and start the services in order.
    Apply(ApplyArgs),
    /// Audit the live cluster over SSH, read-only: CIS checks on what runs, drift from the
    /// rendered files, health, backups and certificate expiry.
    Verify(VerifyArgs),
    /// Rotate a CA, the service-account key or the encryption-at-rest key
    /// across the fleet, with an overlap (resumable, rollback-able).
    #[command(subcommand)]
    Rotate(RotateCommand),
    /// Host keys and locks.
    #[command(subcommand)]
    Hosts(HostsCommand),
    /// Encrypted etcd backups.
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Jobs rampart runs on the hosts themselves (started by systemd, not by hand).
    #[command(subcommand, hide = true)]
    Agent(AgentCommand),
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Run the backup job on the etcd members now, and show what they hold afterwards.
    Now(BackupHostsArgs),
    /// Every backup on every member: time, size, revision, keys, sha256; last run and next run.
    List(BackupHostsArgs),
    /// Copy backups to this machine (`DIR/<member>/`), each checked against its manifest's sha256.
    Pull {
        #[command(flatten)]
        hosts: BackupHostsArgs,
        /// Where the copies go.
        #[arg(long)]
        to: PathBuf,
        /// Only each member's newest backup.
        #[arg(long)]
        latest: bool,
    },
    /// Decrypt a backup in a stream and check it: sha256 against the manifest beside it, then etcd's snapshot status.
    Verify {
        /// The backup (`<cluster>-<member>-<time>.db.age`).
        file: PathBuf,
        /// age identity file or unencrypted SSH private key (repeat for several).
        #[arg(short, long, required = true)]
        identity: Vec<PathBuf>,
        /// etcdctl to read the snapshot with (etcdutl is preferred when on PATH).
        #[arg(long, default_value = "etcdctl")]
        etcdctl: PathBuf,
        /// Where the decrypted copy goes while it is checked (needs room for
        /// the snapshot; default: $TMPDIR, else /tmp).
        #[arg(long)]
        scratch_dir: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Restore every etcd member from one backup: verify it here, plan, stop the
    /// apiservers and etcd, move the data dirs aside, restore, start, check.
    Restore(Box<RestoreArgs>),
}

/// `rampart backup restore`: destructive, planned first.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup (`<cluster>-<member>-<time>.db.age`); its manifest is read from beside it.
    /// Not needed for --rollback, nor for --resume once every member restored.
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub inv: InventoryArgs,
    /// age identity file or unencrypted SSH private key that decrypts the backup (repeat for
    /// several); it never leaves this machine.
    #[arg(long)]
    pub identity: Vec<PathBuf>,
    /// Where the admin side keeps the restore's plan (default: ~/.local/share/rampart/<cluster>).
    #[arg(long, env = "RAMPART_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Verify the backup, read the hosts, print the plan; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Go ahead without asking (the restore stops the cluster).
    #[arg(long)]
    pub yes: bool,
    /// Continue the interrupted restore ID from what each member's journal records.
    #[arg(long, value_name = "ID", conflicts_with = "rollback")]
    pub resume: Option<String>,
    /// Put back the data dirs restore ID moved aside (the restored ones are kept aside).
    #[arg(long, value_name = "ID")]
    pub rollback: Option<String>,
    /// etcdctl to check the backup with here (etcdutl is preferred when on PATH).
    #[arg(long, default_value = "etcdctl")]
    pub etcdctl: PathBuf,
    /// Where the decrypted copy goes while the restore runs (0700 dir, removed on exit).
    #[arg(long)]
    pub scratch_dir: Option<PathBuf>,
    /// Hosts worked on at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// Trust and record host keys never seen before (trust on first use).
    #[arg(long)]
    pub accept_new_host_keys: bool,
}

#[derive(Debug, Args)]
pub struct BackupHostsArgs {
    #[command(flatten)]
    pub inv: InventoryArgs,
    /// Only these members (comma-separated inventory names).
    #[arg(long, value_delimiter = ',')]
    pub hosts: Option<Vec<String>>,
    /// Hosts worked on at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Take, encrypt and prune etcd snapshots on this member (rampart-backup.service).
    Snapshot {
        /// The job's config, written by `apply`.
        #[arg(long, default_value = "/etc/rampart/backup.yaml")]
        config: PathBuf,
    },
    /// Store one backup a member sends on stdin (on the backup target, as the forced command
    /// of that member's push key in authorized_keys); prints what was stored as JSON.
    Receive {
        /// The cluster the backup must come from.
        #[arg(long)]
        cluster: String,
        /// The only member whose backups this may store.
        #[arg(long)]
        member: String,
        /// Where the backups go (created 0700).
        #[arg(long)]
        dir: PathBuf,
        /// Keep at most this many of the member's backups here (default: all).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        keep: Option<u32>,
        /// Delete the member's backups older than this here (the newest is always kept).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        max_age_days: Option<u32>,
    },
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub state: StateArgs,
    /// Only these hosts (comma-separated inventory names).
    #[arg(long, value_delimiter = ',')]
    pub hosts: Option<Vec<String>>,
    #[command(flatten)]
    pub phases: PhaseArgs,
}

/// How apply's phases run: for `plan`, `apply` and the commands that roll
/// out with them (`certs renew`, `rotate ca`).
#[derive(Debug, Args)]
pub struct PhaseArgs {
    /// Phases to leave out, comma-separated (connect, lock and facts always run).
    #[arg(long, value_delimiter = ',', value_parser = skippable_phases())]
    pub skip_phases: Vec<String>,
    /// Hosts worked on at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// Trust and record host keys never seen before (trust on first use). Changed keys are always refused.
    #[arg(long)]
    pub accept_new_host_keys: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The inventory file.
    #[arg(short, long, env = "RAMPART_INVENTORY")]
    pub inventory: PathBuf,
    /// The cluster state dir (default: ~/.local/share/rampart/<cluster name>).
    #[arg(long, env = "RAMPART_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// age identity file that unlocks the state dir (else: RAMPART_PASSPHRASE or a prompt).
    #[arg(long, env = "RAMPART_IDENTITY")]
    pub identity: Option<PathBuf>,
    #[command(flatten)]
    pub read: ReadArgs,
    /// A member whose newest backup is older than this many hours is a warning.
    #[arg(long, default_value_t = 48)]
    pub backup_max_age_hours: u32,
    /// Other CIS definitions (a kube-bench checks digest) instead of the built-in catalogue.
    #[arg(long, env = "RAMPART_CIS_BENCHMARK")]
    pub benchmark: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = VerifyOutput::Table)]
    pub output: VerifyOutput,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VerifyOutput {
    Table,
    Json,
    /// JUnit XML: a test suite per host, a test case per finding.
    Junit,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub plan: PlanArgs,
    /// Compute and print the plan, change nothing (the same plan `apply` executes).
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub enum HostsCommand {
    /// Show each host's SSH key fingerprint and pin the accepted ones in the known_hosts file.
    Trust {
        #[command(flatten)]
        inv: InventoryArgs,
        /// Only these hosts (comma-separated inventory names).
        #[arg(long, value_delimiter = ',')]
        hosts: Option<Vec<String>>,
        /// Pin unknown keys without asking (review the fingerprints printed).
        #[arg(long)]
        yes: bool,
    },
    /// Clear a host's apply lock left by a run that is gone.
    Unlock {
        #[command(flatten)]
        inv: InventoryArgs,
        /// The host (inventory name).
        host: String,
    },
}

#[derive(Debug, Args)]
pub struct InventoryArgs {
    /// The inventory file.
    #[arg(short, long, env = "RAMPART_INVENTORY")]
    pub inventory: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct StateArgs {
    #[command(flatten)]
    pub inv: InventoryArgs,
    /// The cluster state dir (default: ~/.local/share/rampart/<cluster name>).
    #[arg(long, env = "RAMPART_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// age identity file that unlocks the state dir (else: RAMPART_PASSPHRASE or a prompt).
    #[arg(long, env = "RAMPART_IDENTITY")]
    pub identity: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub state: StateArgs,
    /// Issue a new service-account key or encryption-at-rest key when it is
    /// missing from the state dir although the cluster exists. Only when the
    /// old one is lost for good: with a new encryption key the Secrets stored
    /// in etcd cannot be read, with a new service-account key every token in
    /// use stops working.
    #[arg(long)]
    pub replace_lost: bool,
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    #[command(flatten)]
    pub state: StateArgs,
    /// Where to write the bundle; it holds private keys in plaintext (files 0600).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// The certificate catalogue: name, CA, subject, SANs, expiry, status.
    List(StateArgsNoUnlock),
    /// Every certificate installed on the hosts (files, kubeconfigs, the
    /// kubelet's rotated one): expiry, chain to the state dir's CAs, drift.
    /// Exit 0 all well, 12 something expires within --warn-days, 13 expired,
    /// not chaining, or not what the state dir holds.
    Check(CertsCheckArgs),
    /// Reissue leaf certificates (new keys) and roll them out with apply's
    /// phases: etcd members one at a time behind cluster health, control
    /// planes one at a time behind /readyz.
    Renew(RenewArgs),
}

/// `rampart certs check`.
#[derive(Debug, Args)]
pub struct CertsCheckArgs {
    #[command(flatten)]
    pub state: StateArgs,
    #[command(flatten)]
    pub read: ReadArgs,
}

/// Which hosts `verify` and `certs check` read, how many at once, and when
/// a certificate's end is near.
#[derive(Debug, Args)]
pub struct ReadArgs {
    /// Only these hosts (comma-separated inventory names).
    #[arg(long, value_delimiter = ',')]
    pub hosts: Option<Vec<String>>,
    /// Hosts read at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// A certificate that expires within this many days is a warning (exit 12).
    #[arg(long, default_value_t = 30)]
    pub warn_days: u32,
}

/// How a rollout's `apply` runs, for the commands that roll out state-dir changes.
#[derive(Debug, Args)]
pub struct RolloutArgs {
    /// Print the plan; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Go ahead without asking.
    #[arg(long)]
    pub yes: bool,
    #[command(flatten)]
    pub phases: PhaseArgs,
}

/// `rampart certs renew`.
#[derive(Debug, Args)]
pub struct RenewArgs {
    /// Leaves to renew, by catalogue name (`rampart certs list`).
    #[arg(conflicts_with_all = ["expiring_within", "all"])]
    pub names: Vec<String>,
    #[command(flatten)]
    pub state: StateArgs,
    /// Every leaf that expires within this many days (`30` or `30d`).
    #[arg(long, value_name = "DAYS", value_parser = parse_days, conflicts_with = "all")]
    pub expiring_within: Option<u32>,
    /// Every leaf.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub rollout: RolloutArgs,
}

#[derive(Debug, Subcommand)]
pub enum RotateCommand {
    /// Replace a CA: trust old + new everywhere, reissue its leaves under the
    /// new one, drop the old one; each step rolled out and journaled.
    Ca(RotateCaArgs),
    /// Replace the service-account signing key: verify with old + new
    /// everywhere, sign with the new one, drop the old one once every token
    /// it signed has expired (security.serviceAccountTokenMaxHours).
    ServiceAccountKey(RotateRunArgs),
    /// Replace the encryption-at-rest key: decrypt with old + new
    /// everywhere, encrypt with the new one, rewrite every Secret the old
    /// one encrypts (found by scanning etcd), drop it once a scan finds none.
    EncryptionKey(RotateRunArgs),
}

/// Which CA `rotate ca` replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CaArg {
    Kubernetes,
    Etcd,
    FrontProxy,
}

/// `rampart rotate ca`.
#[derive(Debug, Args)]
pub struct RotateCaArgs {
    /// The CA to replace.
    #[arg(long, value_enum)]
    pub ca: CaArg,
    #[command(flatten)]
    pub run: RotateRunArgs,
}

/// What every rotation takes: the cluster, which run, how to roll out.
#[derive(Debug, Args)]
pub struct RotateRunArgs {
    #[command(flatten)]
    pub state: StateArgs,
    /// Continue rotation ID from what the hosts' journals and the state dir record.
    #[arg(long, value_name = "ID", conflicts_with = "rollback")]
    pub resume: Option<String>,
    /// Undo rotation ID, step by step (not after it finished).
    #[arg(long, value_name = "ID")]
    pub rollback: Option<String>,
    #[command(flatten)]
    pub rollout: RolloutArgs,
}

/// `30` or `30d`: a number of days.
fn parse_days(s: &str) -> Result<u32, String> {
    s.strip_suffix('d')
        .unwrap_or(s)
        .parse()
        .map_err(|_| format!("`{s}` is not a number of days (e.g. 30 or 30d)"))
}

#[derive(Debug, Args)]
pub struct StateArgsNoUnlock {
    #[command(flatten)]
    pub inv: InventoryArgs,
    /// The cluster state dir (default: ~/.local/share/rampart/<cluster name>).
    #[arg(long, env = "RAMPART_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Issue a client certificate for a tenant user and print a kubeconfig for it.
    Kubeconfig {
        /// The user, as named in `tenants[].members[].user`.
        name: String,
        #[command(flatten)]
        state: StateArgs,
        /// Write the kubeconfig here (0600) instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CisCommand {
    /// Evaluate a rendered bundle (`rampart render --out DIR`) against the CIS checks.
    Check {
        /// A directory written by `rampart render`.
        #[arg(long)]
        bundle: PathBuf,
        /// Other check definitions: a kube-bench checks digest (checks.json). Without it,
        /// the CIS v1.12 catalogue built into rampart is used.
        #[arg(long, env = "RAMPART_CIS_BENCHMARK")]
        benchmark: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// `apply`'s skippable phases with their titles: read off the phase list, so
/// `--help`, what is accepted and the run order cannot disagree.
fn skippable_phases() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(
        rampart::actions::apply::phase_catalogue()
            .into_iter()
            .filter(|p| p.skippable)
            .map(|p| clap::builder::PossibleValue::new(p.name).help(p.title)),
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Cli;

    /// The `rampart …` lines of the shell blocks in README.md and docs/, as
    /// a user would type them: optional `[…]` groups included (those with a
    /// `…` in them left out), placeholders filled in.
    fn documented_invocations() -> Vec<(String, String)> {
        let root = env!("CARGO_MANIFEST_DIR");
        let mut files = vec![format!("{root}/README.md")];
        for e in std::fs::read_dir(format!("{root}/docs")).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_some_and(|x| x == "md") {
                files.push(path.display().to_string());
            }
        }
        let mut found = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let mut in_shell = false;
            for (n, line) in text.lines().enumerate() {
                let t = line.trim();
                if let Some(lang) = t.strip_prefix("```") {
                    in_shell = !in_shell && matches!(lang, "sh" | "bash" | "shell" | "console");
                    continue;
                }
                let Some(cmd) = t.strip_prefix("$ ").or(Some(t)).filter(|_| in_shell) else {
                    continue;
                };
                if !cmd.starts_with("rampart ") {
                    continue;
                }
                // The command itself: not its comment, pipe or redirection.
                let cmd = [" #", " |", " >", " 2>", " &&", " ;"]
                    .iter()
                    .filter_map(|sep| cmd.find(sep))
                    .min()
                    .map_or(cmd, |end| &cmd[..end]);
                found.push((format!("{file}:{}", n + 1), fill_in(cmd)));
            }
        }
        found
    }

    fn fill_in(cmd: &str) -> String {
        let mut out = String::new();
        let mut rest = cmd;
        while let Some(open) = rest.find('[') {
            out.push_str(&rest[..open]);
            let close = open + rest[open..].find(']').expect("an optional group ends");
            let group = &rest[open + 1..close];
            if !group.contains('…') {
                out.push_str(group);
            }
            rest = &rest[close + 1..];
        }
        out.push_str(rest);
        out.split_whitespace()
            .map(|w| match w {
                "FILE" => "prod-cp1-20261130T060000Z.db.age",
                "KEY" => "backup.key",
                "ID" => "20261130T150000Z",
                "N" => "4",
                "HOST" => "cp1",
                "INVENTORY" => "inv.yaml",
                w => w,
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// A newcomer copied the docs' commands and some did not run (a missing
    /// `-i`, an old flag): every documented invocation parses.
    #[test]
    fn every_documented_command_line_parses() {
        let found = documented_invocations();
        assert!(found.len() > 20, "too few found: {found:?}");
        let bad: Vec<String> = found
            .iter()
            .filter_map(|(at, cmd)| {
                let err = Cli::try_parse_from(cmd.split_whitespace()).err()?;
                Some(format!("{at}: {cmd}\n{err}"))
            })
            .collect();
        assert!(bad.is_empty(), "{}", bad.join("\n"));
    }
}
