//! Retention applied to a backup dir: finding one member's backups there and
//! deleting what [`to_prune`] picks, each with its manifest. The job runs it on
//! the member's own dir after each backup; `agent receive` runs it on the
//! target's dir after each copy, where many members' backups sit side by side.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use super::{manifest_path, names, to_prune, BackupError, Candidate, Manifest, RetentionPolicy};

/// Applies `policy` to the backups of `cluster`/`member` in `dir`; returns what
/// was deleted. Files of other members or clusters, and anything hand-made,
/// are not ours to delete: a file counts only when its name is this member's
/// and, where its manifest is readable, the manifest names this member too (a
/// name alone is ambiguous when names contain dashes: cluster `a`, member
/// `b-c` vs cluster `a-b`, member `c`).
pub(crate) fn prune_dir(
    dir: &Path,
    cluster: &str,
    member: &str,
    policy: &RetentionPolicy,
    now: OffsetDateTime,
) -> Result<Vec<PathBuf>, BackupError> {
    let prefix = names::prefix(cluster, member);
    let entries = fs::read_dir(dir).map_err(BackupError::io("list", dir))?;
    let mut candidates = Vec::new();
    for entry in entries {
        let entry = entry.map_err(BackupError::io("list", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(created) = names::created(&name, &prefix) else {
            continue;
        };
        let path = entry.path();
        let manifest = fs::read(manifest_path(&path))
            .ok()
            .and_then(|b| serde_json::from_slice::<Manifest>(&b).ok());
        if manifest
            .as_ref()
            .is_some_and(|m| m.cluster != cluster || m.member != member)
        {
            continue;
        }
        candidates.push(Candidate {
            path,
            created,
            good: manifest.is_some(),
        });
    }
    let doomed = to_prune(&candidates, policy, now);
    for path in &doomed {
        fs::remove_file(path).map_err(BackupError::io("delete the old backup", path))?;
        let m = manifest_path(path);
        match fs::remove_file(&m) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(BackupError::io("delete the old manifest", &m)(e)),
        }
    }
    Ok(doomed)
}
