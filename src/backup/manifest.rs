//! The manifest written beside each backup: enough to check a copy without the
//! key (sha256, size) and to choose a backup without decrypting it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// `<cluster>-<member>-<time>.manifest.json`, beside `<…>.db.age`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// The backup file's name (no directory), so a manifest copied alone still says what it describes.
    pub file: String,
    /// sha256 of the ciphertext (the `.db.age` file), hex.
    pub sha256: String,
    pub ciphertext_size: u64,
    pub snapshot_size: u64,
    pub revision: i64,
    pub total_keys: u64,
    /// `snapshot status` hash of the plaintext snapshot.
    pub snapshot_hash: u64,
    pub etcd_version: String,
    pub cluster: String,
    pub member: String,
    /// RFC 3339, UTC.
    pub created: String,
    /// The recipients it was encrypted to, as configured (public keys only).
    pub recipients: Vec<String>,
    pub rampart_version: String,
}

/// The manifest of `file`: `x.db.age` → `x.manifest.json`; any other name gets
/// `.manifest.json` appended.
pub fn manifest_path(file: &Path) -> PathBuf {
    let name = file.file_name().unwrap_or_default().to_string_lossy();
    let base = name.strip_suffix(".db.age").unwrap_or(&name);
    file.with_file_name(format!("{base}.manifest.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_sits_beside_the_backup() {
        assert_eq!(
            manifest_path(Path::new("/b/c-m-20260101T000000Z.db.age")),
            Path::new("/b/c-m-20260101T000000Z.manifest.json")
        );
        assert_eq!(
            manifest_path(Path::new("copy.bin")),
            Path::new("copy.bin.manifest.json")
        );
    }
}
