//! The benchmark definition: the checks and the file roles kube-bench substitutes into
//! audits, as serde types.
//!
//! Two sources parse into the same [`Benchmark`]: rampart's own catalogue of CIS v1.12
//! (`catalogue.yaml`, built in, [`Benchmark::builtin`]) and a kube-bench checks digest
//! (`checks.json`, [`Benchmark::load`]) for `--benchmark PATH`, so other definitions can be
//! evaluated without a rebuild. A test keeps the two equal for cis-1.12.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// Why a benchmark file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum BenchmarkError {
    #[error(
        "cannot read benchmark {path}; omit --benchmark to use the built-in CIS 1.12 catalogue"
    )]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("benchmark {path} is not a kube-bench checks digest (at {at})")]
    Parse {
        path: PathBuf,
        at: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Where a benchmark's definitions came from, for the report.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Origin {
    /// `catalogue.yaml`, compiled into rampart.
    #[default]
    Builtin,
    /// A file given with `--benchmark`.
    File(PathBuf),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Builtin => f.write_str("built into rampart"),
            Origin::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A whole benchmark: the checks in document order and kube-bench's file roles.
#[derive(Debug, Clone, Deserialize)]
pub struct Benchmark {
    /// e.g. `cis-1.12`.
    pub benchmark: String,
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub source_commit: String,
    /// Set by the loader, not read from the definitions.
    #[serde(skip)]
    pub origin: Origin,
    /// Role name (`apiserverconf`, `kubeletconf`, …) → candidate paths.
    #[serde(default)]
    pub roles: BTreeMap<String, Role>,
    pub checks: Vec<Check>,
}

/// A kube-bench file role (`$kubeletconf`, …): the candidates it probes, in order.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Role {
    #[serde(default)]
    pub candidates: Vec<String>,
    /// One path, or (for `adminconf`) a list of paths that are all checked.
    pub default: OneOrMany,
}

/// A JSON value that is either one string or a list of strings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn first(&self) -> Option<&str> {
        match self {
            OneOrMany::One(s) => Some(s),
            OneOrMany::Many(v) => v.first().map(String::as_str),
        }
    }
}

/// One recommendation of the benchmark, with kube-bench's tests for it.
#[derive(Debug, Clone, Deserialize)]
pub struct Check {
    pub id: String,
    pub text: String,
    /// `master`, `etcd`, `controlplane`, `node` or `policies`.
    pub target: Target,
    /// "(Automated)" in the CIS text; equal to kube-bench's `scored`.
    pub automated: bool,
    #[serde(default)]
    pub scored: bool,
    /// kube-bench's `type`: `manual` and `skip` are never run.
    #[serde(default, rename = "type")]
    pub check_type: String,
    #[serde(default)]
    pub tests: Vec<TestItem>,
    #[serde(default)]
    pub bin_op: BinOp,
    /// Each line of audit output is tested on its own (all must pass).
    #[serde(default)]
    pub use_multiple_values: bool,
    /// kube-bench's shell audit, when the definitions carry one (never run here; the
    /// built-in catalogue leaves it out: `audit_emulation` says what it reads).
    #[serde(default)]
    pub audit: Option<String>,
    #[serde(default)]
    pub audit_config: Option<String>,
    /// What the audit reads; a check without one has no audit.
    #[serde(default)]
    pub audit_emulation: Emulation,
    #[serde(default)]
    pub audit_config_emulation: Option<Emulation>,
    /// The kube-bench role of the file a file check is about (`apiserverconf`, …).
    #[serde(default)]
    pub file_role: Option<String>,
    #[serde(default)]
    pub remediation: Option<String>,
}

/// The node type a check is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Master,
    Etcd,
    Controlplane,
    Node,
    Policies,
}

/// How tests combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BinOp {
    #[default]
    And,
    Or,
}

/// One kube-bench `test_item`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct TestItem {
    #[serde(default)]
    pub flag: String,
    /// A jsonpath into the config file (`{.authentication.anonymous.enabled}`).
    #[serde(default)]
    pub path: String,
    /// An environment variable of the process (etcd's `ETCD_*`).
    #[serde(default)]
    pub env: String,
    #[serde(default = "yes")]
    pub set: bool,
    /// `eq`, `noteq`, `gt`, `gte`, `lt`, `lte`, `has`, `nothave`, `regex`,
    /// `valid_elements`, `bitmask`, or empty (presence only).
    #[serde(default)]
    pub op: String,
    #[serde(default)]
    pub value: String,
}

fn yes() -> bool {
    true
}

/// What the audit shell command reads, in data form (`audit_emulation.kind`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Emulation {
    /// `ps -ef | grep PATTERN`: every process whose line contains the pattern.
    PsEfGrep { process: String, pattern: String },
    /// `ps -fC NAME`: processes whose command name is exactly NAME.
    #[serde(rename = "ps_fC")]
    PsFc { process: String },
    /// `stat -c FORMAT $role`, printing `if_missing` when the file is absent.
    Stat {
        role: String,
        format: String,
        #[serde(default)]
        if_missing: String,
    },
    /// `find $role -name GLOB | xargs stat -c FORMAT`.
    FindStat {
        role: String,
        name_glob: String,
        format: String,
    },
    /// `find DIR [-name GLOB] | xargs stat -c FORMAT`.
    PkiFind {
        default_path: String,
        #[serde(default)]
        name_glob: Option<String>,
        format: String,
    },
    /// stat of etcd's `--data-dir` (or the `etcddatadir` role).
    EtcdDataDir { format: String },
    /// stat of every existing admin kubeconfig.
    AdminConf {
        default_paths: Vec<String>,
        format: String,
    },
    /// stat of the kubelet's client CA file.
    KubeletCafile { role: String, format: String },
    /// The providers line of the apiserver's encryption config.
    EncryptionProviders { process: String },
    /// `cat $role` of a kubelet config file.
    KubeletConfig { role: String },
    /// `cat $role` of a kube-proxy file.
    ProxyConfig { role: String },
    /// Needs a running API server.
    Kubectl,
    /// Reads /var/lib/cni on a live node.
    CniFiles {
        #[serde(default)]
        format: String,
    },
    /// No audit at all.
    #[default]
    None,
    /// A kind this version does not know: reported as not evaluable.
    #[serde(other)]
    Unknown,
}

/// rampart's own catalogue of the CIS v1.12 checks (facts and kube-bench's semantics;
/// no kube-bench shell or prose).
const CATALOGUE: &str = include_str!("catalogue.yaml");

impl Benchmark {
    /// The built-in CIS v1.12 catalogue, parsed once. It is compiled in and a unit test
    /// parses it, so a parse failure here is a build defect, not a user error.
    pub fn builtin() -> &'static Benchmark {
        static BUILTIN: OnceLock<Benchmark> = OnceLock::new();
        BUILTIN.get_or_init(|| {
            let de = serde_yaml::Deserializer::from_str(CATALOGUE);
            serde_path_to_error::deserialize(de).unwrap_or_else(|e| {
                panic!(
                    "built-in catalogue.yaml does not parse at {}: {e}",
                    e.path()
                )
            })
        })
    }

    /// Reads a kube-bench checks digest (`checks.json`).
    pub fn load(path: &Path) -> Result<Benchmark, BenchmarkError> {
        let text = std::fs::read_to_string(path).map_err(|source| BenchmarkError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut b = Self::parse(&text, path)?;
        b.origin = Origin::File(path.to_path_buf());
        Ok(b)
    }

    /// Parses the digest text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Benchmark, BenchmarkError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| BenchmarkError::Parse {
            path: path.to_path_buf(),
            at: e.path().to_string(),
            source: e.into_inner(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalogue_parses() {
        let b = Benchmark::builtin();
        assert_eq!(b.benchmark, "cis-1.12");
        assert_eq!(b.origin, Origin::Builtin);
        assert_eq!(b.checks.len(), 131);
        assert!(b
            .checks
            .iter()
            .all(|c| c.audit.is_none() && c.remediation.is_none()));
        // No audit kind the evaluator does not know.
        assert!(!b
            .checks
            .iter()
            .any(|c| c.audit_emulation == Emulation::Unknown));
        let c = b.checks.iter().find(|c| c.id == "1.2.10").unwrap();
        assert_eq!(c.bin_op, BinOp::Or);
        assert!(!c.tests[1].set);
        assert_eq!(b.roles["kubeletsvc"].candidates.len(), 7);
    }
}
