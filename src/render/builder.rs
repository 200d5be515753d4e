//! The bundle of one host while it is being built: files and dirs keyed by
//! path (a path added twice, e.g. `ca.crt` by two roles, keeps one copy and
//! feeds the union of services), and the system users it needs. Every role's
//! renderer (`host`, `backups`) adds to it.

use std::collections::BTreeMap;

use super::{Contents, Dir, File, HostBundle, Service, SystemUser};
use crate::pki::Issued;
use crate::secret::Secret;

/// Files and dirs of one host, keyed by path; a path added twice (e.g. `ca.crt`
/// by two roles) keeps one copy and feeds the union of services.
#[derive(Default)]
pub(crate) struct Builder {
    files: BTreeMap<String, File>,
    dirs: BTreeMap<String, Dir>,
    users: Vec<SystemUser>,
}

impl Builder {
    pub(super) fn file(&mut self, path: &str, mode: u32, contents: Contents, services: &[Service]) {
        if let Some(existing) = self.files.get_mut(path) {
            debug_assert_eq!(
                existing.contents, contents,
                "{path} rendered twice, differently"
            );
            existing.services.extend_from_slice(services);
            return;
        }
        self.files.insert(
            path.to_string(),
            File {
                path: path.to_string(),
                mode,
                owner: "root".into(),
                group: "root".into(),
                contents,
                services: services.to_vec(),
            },
        );
    }

    /// Unit files, configs and kubeconfigs: root:root 0600 (CIS 1.1.x, 4.1.x).
    pub(super) fn config(&mut self, path: &str, text: String, services: &[Service]) {
        self.file(path, 0o600, Contents::Plain(text.into_bytes()), services);
    }

    pub(super) fn secret(&mut self, path: &str, secret: Secret, services: &[Service]) {
        self.file(path, 0o600, Contents::Secret(secret), services);
    }

    /// A certificate and (when `key` is set) its key, as `<base>.crt` / `<base>.key`.
    /// Certificates are 0600 too: nothing but root reads them, and 0600 passes
    /// both CIS 1.1.20 (certs ≤ 644) and 1.1.21 (keys 600).
    pub(super) fn pair(&mut self, base: &str, issued: &Issued, services: &[Service]) {
        self.cert(&format!("{base}.crt"), &issued.cert_pem, services);
        self.secret(&format!("{base}.key"), issued.key_pem.clone(), services);
    }

    pub(super) fn cert(&mut self, path: &str, pem: &str, services: &[Service]) {
        self.file(
            path,
            0o600,
            Contents::Plain(pem.as_bytes().to_vec()),
            services,
        );
    }

    pub(super) fn user(&mut self, user: SystemUser) {
        self.users.push(user);
    }

    pub(super) fn dir(&mut self, path: &str, mode: u32, owner: &str) {
        self.dirs.insert(
            path.to_string(),
            Dir {
                path: path.to_string(),
                mode,
                owner: owner.into(),
                group: owner.into(),
            },
        );
    }

    /// The host's bundle: each file feeds only the services the host runs
    /// (ca.crt feeds the apiserver on a control plane, only the kubelet on
    /// a worker).
    pub(super) fn finish(self, services: Vec<Service>, receives_backups: bool) -> HostBundle {
        let files = self
            .files
            .into_values()
            .map(|mut f| {
                f.services.retain(|s| services.contains(s));
                f.services.sort();
                f.services.dedup();
                f
            })
            .collect();
        HostBundle {
            files,
            dirs: self.dirs.into_values().collect(),
            services,
            users: self.users,
            receives_backups,
        }
    }
}
