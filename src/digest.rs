//! sha256 as rampart uses it everywhere: hex, and for files streamed in
//! 1 MiB reads so a binary or a backup never sits in memory whole.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

/// The hex sha256 and size of a file.
pub fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), total))
}

/// The hex sha256 of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// sha256 of large local files (the artifacts, rampart itself) remembered
/// between runs, so a no-op `apply` does not read gigabytes to learn nothing
/// changed. An entry is trusted only while the file's device, inode, size,
/// mtime and ctime (nanoseconds) are those seen when it was hashed: any write,
/// rename over it or chmod changes the ctime, which no user can set back.
///
/// A cache is a speed-up, never a source of truth: one that cannot be read
/// or written is ignored and every file is hashed.
#[derive(Debug, Default)]
pub struct DigestCache {
    path: Option<std::path::PathBuf>,
    entries: std::collections::BTreeMap<String, CacheEntry>,
    dirty: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct CacheEntry {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    sha256: String,
}

impl CacheEntry {
    fn same_stamps(&self, other: &CacheEntry) -> bool {
        (self.dev, self.ino, self.size, self.mtime_ns, self.ctime_ns)
            == (
                other.dev,
                other.ino,
                other.size,
                other.mtime_ns,
                other.ctime_ns,
            )
    }
}

/// Files changed this recently are hashed but not remembered: a write in
/// the same clock tick as the hashing would leave the stamps unchanged (the
/// "racy" case git's index guards against the same way).
const RACY_NS: i128 = 2_000_000_000;

impl DigestCache {
    /// The cache at `$RAMPART_CACHE_DIR/digests.json`, else
    /// `$XDG_CACHE_HOME/rampart/…`, else `~/.cache/rampart/…`.
    pub fn open_default() -> DigestCache {
        let dir = std::env::var_os("RAMPART_CACHE_DIR")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                std::env::var_os("XDG_CACHE_HOME")
                    .map(|d| std::path::PathBuf::from(d).join("rampart"))
            })
            .or_else(|| {
                std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache/rampart"))
            });
        match dir {
            Some(d) => DigestCache::open(&d.join("digests.json")),
            None => DigestCache::default(),
        }
    }

    pub fn open(path: &Path) -> DigestCache {
        let entries = std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        DigestCache {
            path: Some(path.to_path_buf()),
            entries,
            dirty: false,
        }
    }

    /// The hex sha256 and size of `path`, from the cache when its stamps match.
    pub fn sha256_file(&mut self, path: &Path) -> std::io::Result<(String, u64)> {
        use std::os::unix::fs::MetadataExt;
        let key = std::fs::canonicalize(path)?.to_string_lossy().into_owned();
        let stamp = |m: &std::fs::Metadata, sha256: String| CacheEntry {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
            sha256,
        };
        let before = std::fs::metadata(path)?;
        let now = stamp(&before, String::new());
        if let Some(e) = self.entries.get(&key) {
            if e.same_stamps(&now) {
                return Ok((e.sha256.clone(), e.size));
            }
        }
        let (sha, size) = sha256_file(path)?;
        let after = stamp(&std::fs::metadata(path)?, sha.clone());
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        // Remembered only when nothing moved while hashing and it is not racy.
        if after.size == size
            && after.same_stamps(&now)
            && wall - after.ctime_ns.max(after.mtime_ns) > RACY_NS
        {
            self.entries.insert(key, after);
            self.dirty = true;
        }
        Ok((sha, size))
    }

    /// Writes the cache back (0600, atomically), dropping files that are
    /// gone; failures are ignored.
    pub fn save(&mut self) {
        let Some(path) = &self.path else { return };
        if !self.dirty {
            return;
        }
        self.entries.retain(|p, _| Path::new(p).exists());
        let Ok(bytes) = serde_json::to_vec(&self.entries) else {
            return;
        };
        let Some(dir) = path.parent() else { return };
        let _ = std::fs::create_dir_all(dir);
        let tmp = path.with_extension(format!("json.{}", std::process::id()));
        let written = {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .and_then(|mut f| f.write_all(&bytes))
        };
        if written.is_ok() && std::fs::rename(&tmp, path).is_ok() {
            self.dirty = false;
        } else {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn age(path: &Path, secs: u64) {
        let t = std::time::SystemTime::now() - std::time::Duration::from_secs(secs);
        let f = std::fs::File::options().write(true).open(path).unwrap();
        f.set_modified(t).unwrap();
    }

    #[test]
    fn cached_digests_follow_every_change_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kubelet");
        let cache_path = dir.path().join("cache/digests.json");
        std::fs::write(&file, b"one").unwrap();
        age(&file, 10);
        let mut cache = DigestCache::open(&cache_path);
        let one = cache.sha256_file(&file).unwrap();
        assert_eq!(one, (sha256_hex(b"one"), 3));
        // ctime was just set by set_modified: too recent to remember.
        assert!(cache.entries.is_empty());
        std::thread::sleep(std::time::Duration::from_millis(2100));
        assert_eq!(cache.sha256_file(&file).unwrap(), one);
        assert_eq!(cache.entries.len(), 1);
        cache.save();
        let mode = std::fs::metadata(&cache_path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);

        // A new run reads the cache: a stale entry would answer "one".
        let mut again = DigestCache::open(&cache_path);
        assert_eq!(again.sha256_file(&file).unwrap(), one);
        // Same size, mtime set back: the ctime still moved.
        std::fs::write(&file, b"two").unwrap();
        age(&file, 10);
        assert_eq!(again.sha256_file(&file).unwrap().0, sha256_hex(b"two"));
        // A cache that is not JSON is no cache.
        std::fs::write(&cache_path, b"{not json").unwrap();
        let mut broken = DigestCache::open(&cache_path);
        assert_eq!(broken.sha256_file(&file).unwrap().0, sha256_hex(b"two"));
    }
}
