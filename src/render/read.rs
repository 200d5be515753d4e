//! Reads back a bundle written by [`write_bundle`](super::write_bundle): the
//! inverse, so checks (`rampart cis check --bundle DIR`) judge exactly what was written.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::bundle::{Bundle, Contents, Dir, File, HostBundle, Service};
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
    #[error("{}: mode `{mode}` is not octal", path.display())]
    Mode { path: PathBuf, mode: String },
    #[error("{} holds no host bundle (no <host>/manifest.json); write one with `rampart render --out`", path.display())]
    Empty { path: PathBuf },
}

#[derive(Deserialize)]
struct RawManifest {
    host: String,
    services: Vec<Service>,
    dirs: Vec<RawDir>,
    files: Vec<RawEntry>,
}

#[derive(Deserialize)]
struct RawDir {
    path: String,
    mode: String,
    owner: String,
    group: String,
}

#[derive(Deserialize)]
struct RawEntry {
    path: String,
    mode: String,
    owner: String,
    group: String,
    secret: bool,
    services: Vec<Service>,
}

/// Reads every `<dir>/<host>/manifest.json` and the files it lists.
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
        let m: RawManifest =
            serde_json::from_slice(&text).map_err(|source| ReadBundleError::Manifest {
                path: mpath.clone(),
                source,
            })?;
        let mode = |s: &str| {
            u32::from_str_radix(s, 8).map_err(|_| ReadBundleError::Mode {
                path: mpath.clone(),
                mode: s.to_string(),
            })
        };
        let mut hb = HostBundle {
            services: m.services,
            ..HostBundle::default()
        };
        for d in m.dirs {
            hb.dirs.push(Dir {
                mode: mode(&d.mode)?,
                path: d.path,
                owner: d.owner,
                group: d.group,
            });
        }
        for e in m.files {
            let local = host_dir.join(e.path.trim_start_matches('/'));
            let bytes = std::fs::read(&local).map_err(io(&local))?;
            hb.files.push(File {
                mode: mode(&e.mode)?,
                path: e.path,
                owner: e.owner,
                group: e.group,
                contents: if e.secret {
                    Contents::Secret(Secret::new(bytes))
                } else {
                    Contents::Plain(bytes)
                },
                services: e.services,
            });
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
