//! The host inventory: parse the YAML, validate it, and hand out a typed [`Inventory`].
//!
//! Loading never touches the network. Every semantic problem is collected and
//! reported together, each with its YAML path and line, before anything else runs.

pub mod limits;
mod model;
mod position;
mod ranges;
mod schema;
mod schema_errors;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use model::*;
pub use position::PositionIndex;
pub use schema::RawInventory;
pub use validate::calendar::is_calendar_spec;
pub use validate::{
    is_host_path, validate, validate_with, Disk, LocalFiles, DEFAULT_CIPHER_SUITES,
    SUPPORTED_MINORS,
};

/// How bad a [`Problem`] is: errors stop the run, warnings are printed and the run goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Warning,
    Error,
}

/// One thing wrong with the inventory, located by its YAML path (`hosts[2].address`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Problem {
    pub severity: Severity,
    pub path: String,
    /// 1-based line of the offending node, when the source text is known.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        match self.line {
            Some(line) => write!(f, "{level}: {} (line {line}): {}", self.path, self.message),
            None => write!(f, "{level}: {}: {}", self.path, self.message),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("cannot read inventory {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Bad YAML, an unknown field or a value of the wrong type: serde stops at the first.
    #[error("{}: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    /// Over a bound on size, nesting or aliases: nothing else was read.
    #[error("{}", path.display())]
    Limits {
        path: PathBuf,
        #[source]
        source: limits::LimitError,
    },
    #[error("{}: {} found\n{}", path.display(), crate::words::count(problems.len(), "problem"), render_problems(problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

/// Problems printed at most: a generated inventory can have 100,000, and
/// the first ones say what is wrong.
pub const MAX_PROBLEMS_SHOWN: usize = 100;

fn render_problems(problems: &[Problem]) -> String {
    let mut lines: Vec<String> = problems
        .iter()
        .take(MAX_PROBLEMS_SHOWN)
        .map(|p| format!("  {p}"))
        .collect();
    if problems.len() > MAX_PROBLEMS_SHOWN {
        lines.push(format!(
            "  … and {} more",
            problems.len() - MAX_PROBLEMS_SHOWN
        ));
    }
    lines.join("\n")
}

/// A valid inventory together with the warnings found while validating it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub inventory: Inventory,
    pub warnings: Vec<Problem>,
}

/// Reads, parses and validates an inventory file.
pub fn load(path: &Path) -> Result<Loaded, InventoryError> {
    let text = std::fs::read_to_string(path).map_err(|source| InventoryError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// Parses and validates inventory text; `path` is used in messages and to resolve
/// relative file references (identity files, artifacts) against the inventory's folder.
pub fn parse(text: &str, path: &Path) -> Result<Loaded, InventoryError> {
    parse_with(text, path, &Disk)
}

/// [`parse`] with local files (SSH identity files) checked by `files` instead of the disk.
pub fn parse_with(
    text: &str,
    path: &Path,
    files: &dyn LocalFiles,
) -> Result<Loaded, InventoryError> {
    limits::check(text).map_err(|source| InventoryError::Limits {
        path: path.to_path_buf(),
        source,
    })?;
    let positions = PositionIndex::new(text);
    // A key given twice is kept once by YAML, silently: refused, every one.
    if !positions.duplicates.is_empty() {
        return Err(InventoryError::Invalid {
            path: path.to_path_buf(),
            problems: positions
                .duplicates
                .iter()
                .map(|(at, line)| Problem {
                    severity: Severity::Error,
                    path: at.clone(),
                    line: Some(*line),
                    message: "this key is given twice in one mapping; YAML would keep only one of them silently".into(),
                })
                .collect(),
        });
    }
    let raw: RawInventory = {
        let de = serde_yaml::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let mut message = syntax_message(&e);
            // serde stops at the first problem; the others are found too.
            for more in schema_errors::more(text, &e.path().to_string()) {
                let line = positions
                    .line_of(&more.path)
                    .map(|l| format!(" (line {l})"))
                    .unwrap_or_default();
                message.push_str(&format!("\n{}{line}: {}", more.path, more.message));
            }
            InventoryError::Syntax {
                path: path.to_path_buf(),
                message,
            }
        })?
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let (inventory, mut problems) = validate_with(&raw, base, files);
    for p in &mut problems {
        p.line = positions.line_of(&p.path);
    }
    // Errors first, each group in file order (stable: checks on one line keep their order).
    problems.sort_by_key(|p| (std::cmp::Reverse(p.severity), p.line.unwrap_or(usize::MAX)));
    let (errors, warnings): (Vec<_>, Vec<_>) = problems
        .into_iter()
        .partition(|p| p.severity == Severity::Error);
    match inventory {
        Some(inventory) if errors.is_empty() => Ok(Loaded {
            inventory,
            warnings,
        }),
        _ => {
            let mut all = errors;
            all.extend(warnings);
            Err(InventoryError::Invalid {
                path: path.to_path_buf(),
                problems: all,
            })
        }
    }
}

/// `hosts[1].roles (line 12, column 5): invalid type: …; see docs/inventory.md`
fn syntax_message(e: &serde_path_to_error::Error<serde_yaml::Error>) -> String {
    let inner = e.inner();
    let path = e.path().to_string();
    let mut msg = inner.to_string();
    let mut loc = String::new();
    if let Some(l) = inner.location() {
        // serde_yaml appends "at line L column C" itself; we print the location once, our way.
        let theirs = format!(" at line {} column {}", l.line(), l.column());
        if let Some(m) = msg.strip_suffix(&theirs) {
            msg = m.to_string();
        }
        // A YAML scanner error names its own lines ("… while scanning a quoted scalar at
        // line 3"): leave it whole rather than add a second, different location.
        if !msg.contains(" at line ") {
            loc = format!(" (line {}, column {})", l.line(), l.column());
        }
    }
    // serde_yaml also prefixes its own (parent) path: `hosts[0]: unknown field …`;
    // ours is more precise, so drop theirs. A path has no spaces; a message does.
    if let Some((prefix, rest)) = msg.split_once(": ") {
        if !prefix.contains(char::is_whitespace) {
            msg = rest.to_string();
        }
    }
    let hint = if loc.is_empty() {
        ""
    } else {
        "; fields and types are listed in docs/inventory.md"
    };
    if path == "." || path.is_empty() {
        format!("{}{loc}{hint}", msg.trim())
    } else {
        format!("{path}{loc}: {}{hint}", msg.trim())
    }
}

/// One etcd and control-plane host, for unit tests; `binaries` sets
/// `binaries.dir` (where a test puts stand-in tools).
#[cfg(test)]
pub(crate) fn one_host(binaries: Option<&std::path::Path>) -> Inventory {
    let dir = binaries.map_or(String::new(), |d| {
        format!("binaries: {{dir: {}}}\n", d.display())
    });
    parse(
        &format!(
            "cluster: {{name: t, kubernetesVersion: \"1.34\"}}\n{dir}hosts:\n  - {{name: cp1, address: 10.0.0.1, roles: [etcd, control-plane]}}\n"
        ),
        std::path::Path::new("i.yaml"),
    )
    .unwrap()
    .inventory
}
