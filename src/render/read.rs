//! Reads back a bundle written by [`write_bundle`](super::write_bundle): the
//! inverse, so checks (`rampart cis check --bundle DIR`) judge exactly what was written.

use std::path::{Path, PathBuf};

use super::bundle::{Bundle, Contents, File, HostBundle, Manifest};
use crate::secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum ReadBundleError {
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a rampart manifest", path.display())]
    Manifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{} does not match its manifest (sha256 {actual}, manifest says {expected}); render again", path.display())]
    Changed {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{} holds no host bundle (no <host>/manifest.json); write one with `rampart render --out`", path.display())]
    Empty { path: PathBuf },
}

/// Reads every `<dir>/<host>/manifest.json` and the files it lists, each checked
/// against the manifest's sha256.
pub fn read_bundle(dir: &Path) -> Result<Bundle, ReadBundleError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ReadBundleError::Io { path, source }
    };
    let mut bundle = Bundle::default();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("manifest.json").is_file())
        .collect();
    entries.sort();
    for host_dir in entries {
        let mpath = host_dir.join("manifest.json");
        let text = std::fs::read(&mpath).map_err(io(&mpath))?;
        let m: Manifest =
            serde_json::from_slice(&text).map_err(|source| ReadBundleError::Manifest {
                path: mpath.clone(),
                source,
            })?;
        let mut hb = HostBundle {
            services: m.services,
            dirs: m.dirs,
            files: Vec::with_capacity(m.files.len()),
            users: m.users,
            receives_backups: m.receives_backups,
        };
        for e in m.files {
            let local = host_dir.join(e.path.trim_start_matches('/'));
            let bytes = std::fs::read(&local).map_err(io(&local))?;
            let file = File {
                mode: e.mode,
                path: e.path,
                owner: e.owner,
                group: e.group,
                contents: if e.secret {
                    Contents::Secret(Secret::new(bytes))
                } else {
                    Contents::Plain(bytes)
                },
                services: e.services,
            };
            let actual = file.sha256();
            if actual != e.sha256 {
                return Err(ReadBundleError::Changed {
                    path: local,
                    expected: e.sha256,
                    actual,
                });
            }
            hb.files.push(file);
        }
        bundle.hosts.insert(m.host, hb);
    }
    if bundle.hosts.is_empty() {
        return Err(ReadBundleError::Empty {
            path: dir.to_path_buf(),
        });
    }
    Ok(bundle)
}
