//! What `init` did, item by item: data the CLI prints (table or JSON) and the
//! material functions return, kept apart from both so neither imports the
//! other.

use serde::Serialize;

/// What `init` did with one item of the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Issuance {
    Reused,
    Issued,
    Reissued { reason: String },
}

/// What `init` did, in catalogue order (then `sa` and `encryption-key`). Data only:
/// the CLI prints it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct InitReport {
    pub entries: Vec<(String, Issuance)>,
}

impl InitReport {
    pub fn action(&self, name: &str) -> Option<&Issuance> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, a)| a)
    }
    /// Names of the entries whose action is not `Reused`.
    pub fn changed(&self) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|(_, a)| *a != Issuance::Reused)
            .map(|(n, _)| n.as_str())
            .collect()
    }
}
