//! Container images for the lab's real Kubernetes, made here from a static
//! binary of a Debian package (busybox-static, in the lab image): no
//! registry on the internet, nothing downloaded.
//!
//! - [`Image::build`] writes a one-layer OCI image (layer, config, manifest).
//! - [`Image::layout_tar`] packs it as an OCI image layout tarball, which
//!   `ctr images import` takes (the sandbox image, imported on every node).
//! - [`Registry`] serves images over the registry API (plain HTTP, read only)
//!   on the lab network: with `AlwaysPullImages` every pod's image is pulled,
//!   so a pod's image must come from a registry.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sha2::{Digest, Sha256};

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// One image: its blobs by digest, and its manifest.
pub struct Image {
    /// `name:tag` as pods and containerd name it (`10.77.0.1:5000/lab/busybox:1`).
    pub reference: String,
    pub manifest: Vec<u8>,
    pub blobs: BTreeMap<String, Vec<u8>>,
}

impl Image {
    /// An image whose root holds `busybox` as `/bin/busybox` plus the applet
    /// links `applets`, running `entrypoint` as uid:gid 65534 by default.
    pub fn build(reference: &str, busybox: &Path, applets: &[&str], entrypoint: &[&str]) -> Image {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::create_dir_all(root.join("tmp")).unwrap();
        std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
        for a in applets {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
        }
        let layer = dir.path().join("layer.tar");
        tar(Command::new("tar")
            .args([
                "--sort=name",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "--mtime=@0",
                "-C",
            ])
            .arg(&root)
            .arg("-cf")
            .arg(&layer)
            .arg("."));
        let layer = std::fs::read(layer).unwrap();
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": entrypoint, "User": "65534:65534", "WorkingDir": "/tmp"},
            "rootfs": {"type": "layers", "diff_ids": [digest(&layer)]},
        }))
        .unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digest(&config),
                "size": config.len(),
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": digest(&layer),
                "size": layer.len(),
            }],
        }))
        .unwrap();
        let mut blobs = BTreeMap::new();
        blobs.insert(digest(&layer), layer);
        blobs.insert(digest(&config), config);
        Image {
            reference: reference.to_string(),
            manifest,
            blobs,
        }
    }

    /// The image as an OCI layout tarball at `dest`, named for containerd.
    pub fn layout_tar(&self, dest: &Path) {
        let dir = tempfile::tempdir().unwrap();
        let blobs = dir.path().join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        let mut all = self.blobs.clone();
        all.insert(digest(&self.manifest), self.manifest.clone());
        for (d, bytes) in &all {
            std::fs::write(blobs.join(d.trim_start_matches("sha256:")), bytes).unwrap();
        }
        std::fs::write(
            dir.path().join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": MANIFEST_TYPE,
                "digest": digest(&self.manifest),
                "size": self.manifest.len(),
                "annotations": {"io.containerd.image.name": self.reference},
            }],
        });
        std::fs::write(
            dir.path().join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
        tar(Command::new("tar")
            .arg("-C")
            .arg(dir.path())
            .arg("-cf")
            .arg(dest)
            .args(["oci-layout", "index.json", "blobs"]));
    }

    /// `name` and `tag` of the reference, without the registry.
    fn name_and_tag(&self) -> (&str, &str) {
        let path = self.reference.split_once('/').map_or("", |(_, p)| p);
        path.rsplit_once(':').unwrap_or((path, "latest"))
    }
}

/// Runs a `tar` command, which must succeed.
fn tar(cmd: &mut Command) {
    let out = cmd.output().expect("tar runs");
    assert!(
        out.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A read-only registry (the distribution API's pull side) on `addr`,
/// serving until dropped. Each connection gets one response.
pub struct Registry {
    stop: Arc<AtomicBool>,
    addr: String,
    /// How many manifest requests it answered (a pull asks for one).
    pub pulls: Arc<std::sync::atomic::AtomicUsize>,
}

impl Registry {
    pub fn serve(addr: &str, images: Vec<Image>) -> Registry {
        let listener =
            TcpListener::bind(addr).unwrap_or_else(|e| panic!("registry on {addr}: {e}"));
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let pulls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let images = Arc::new(images);
        {
            let stop = stop.clone();
            let pulls = pulls.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            let images = images.clone();
                            let pulls = pulls.clone();
                            std::thread::spawn(move || {
                                let _ = answer(conn, &images, &pulls);
                            });
                        }
                        Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
                    }
                }
            });
        }
        Registry {
            stop,
            addr: addr.to_string(),
            pulls,
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn answer(
    conn: TcpStream,
    images: &[Image],
    pulls: &std::sync::atomic::AtomicUsize,
) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    // Headers are read and ignored; requests carry no body.
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
    }
    let found: Option<(&str, Vec<u8>, String)> = (|| {
        if path == "/v2/" || path == "/v2" {
            return Some(("application/json", b"{}".to_vec(), String::new()));
        }
        let rest = path.strip_prefix("/v2/")?;
        if let Some((name, reference)) = rest.split_once("/manifests/") {
            let img = images.iter().find(|i| {
                let (n, tag) = i.name_and_tag();
                n == name && (tag == reference || digest(&i.manifest) == reference)
            })?;
            pulls.fetch_add(1, Ordering::SeqCst);
            return Some((MANIFEST_TYPE, img.manifest.clone(), digest(&img.manifest)));
        }
        let (_, d) = rest.split_once("/blobs/")?;
        images
            .iter()
            .find_map(|i| i.blobs.get(d))
            .map(|b| ("application/octet-stream", b.clone(), d.to_string()))
    })();
    let mut w = conn;
    match found {
        Some((ctype, body, dig)) => {
            write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{}Connection: close\r\n\r\n",
                body.len(),
                if dig.is_empty() {
                    String::new()
                } else {
                    format!("Docker-Content-Digest: {dig}\r\n")
                }
            )?;
            if method != "HEAD" {
                w.write_all(&body)?;
            }
        }
        None => {
            w.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )?;
        }
    }
    w.flush()?;
    let _ = reader.read(&mut [0u8; 1]);
    Ok(())
}
