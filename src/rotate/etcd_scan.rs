//! Which key encrypts each value in etcd: the proof an encryption-at-rest
//! key can be dropped. Pure; the script runs on an etcd member.
//!
//! The apiserver prefixes every value it encrypts with
//! `k8s:enc:<provider>:v1:<key name>:` (`v2` for KMS v2). The scan pages
//! through the whole `/registry/` keyspace with etcdctl (`-w fields` quotes
//! each value on one line, so awk reads the prefix without decoding
//! anything), 1,000 keys a page, and reports on this machine only counts
//! per provider and key name, the Secrets stored in plain text, and the
//! etcd keys of the values a watched key name encrypts (what the rewrite
//! still has to do). No value leaves the host.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::inventory::{Host, Inventory};
use crate::remote::script::{etcd_loopback, member_etcdctl, quote};

/// Keys per etcdctl page.
pub const PAGE: usize = 1000;

/// What a scan found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Scan {
    /// `<provider>:<key name>` → values encrypted with it.
    pub encrypted: BTreeMap<String, u64>,
    /// Secrets stored without encryption (written before it was enabled).
    pub plain_secrets: u64,
    /// Every value read.
    pub values: u64,
    /// The etcd keys of the values the watched key name encrypts (not in
    /// plans: only the counts are).
    #[serde(skip)]
    pub watched: Vec<String>,
}

impl Scan {
    /// Values the key `name` (any provider) still encrypts.
    pub fn under(&self, name: &str) -> u64 {
        self.encrypted
            .iter()
            .filter(|(k, _)| k.split_once(':').is_some_and(|(_, n)| n == name))
            .map(|(_, n)| n)
            .sum()
    }
}

/// Pages through `/registry/` on `host`'s member, watching key name `watch`.
pub fn script(inv: &Inventory, host: &Host, watch: &str) -> String {
    let etcdctl = member_etcdctl(&inv.binaries.etcd_dir, etcd_loopback(host.address), 60);
    script_with(&etcdctl, watch, PAGE)
}

/// The scan with the etcdctl command `etcdctl` and `page` keys a page.
pub fn script_with(etcdctl: &str, watch: &str, page: usize) -> String {
    format!(
        r#"E() {{ {etcdctl} "$@"; }}
W={watch}
start=/registry/; last=
while :; do
  page=$(E get "$start" /registry0 --limit {page} -w fields) || exit 1
  printf '%s\n' "$page" | awk -v skip="$last" -v watch="$W" '
    /^"Key" : "/ {{ k = substr($0, 10, length($0) - 10); next }}
    /^"Value" : "/ {{
      if (k == skip) next
      v = substr($0, 12)
      if (v ~ /^k8s:enc:/) {{
        split(v, a, ":")
        print "enc\t" a[3] ":" a[5]
        if (a[5] == watch) print "watched\t" k
      }} else if (k ~ /^\/registry\/secrets\//) print "plain"
      else print "value"
    }}
    '
  more=$(printf '%s\n' "$page" | grep -c '^"More" : true')
  [ "$more" -gt 0 ] || break
  last=$(printf '%s\n' "$page" | grep '^"Key" : "' | tail -n 1)
  last=${{last#'"Key" : "'}}; last=${{last%'"'}}
  start=$last
done
"#,
        watch = quote(watch),
    )
}

/// Reads the scan's lines.
pub fn parse(text: &str) -> Scan {
    let mut s = Scan::default();
    for line in text.lines() {
        let mut f = line.splitn(2, '\t');
        match (f.next(), f.next()) {
            (Some("enc"), Some(label)) => {
                *s.encrypted.entry(label.to_string()).or_default() += 1;
                s.values += 1;
            }
            (Some("watched"), Some(key)) => s.watched.push(key.to_string()),
            (Some("plain"), None) => {
                s.plain_secrets += 1;
                s.values += 1;
            }
            (Some("value"), None) => s.values += 1,
            _ => {}
        }
    }
    s
}

/// A throwaway etcd on loopback (plain HTTP) for unit tests, stopped on
/// drop; None (the test skips) without Debian's etcd-server.
#[cfg(test)]
pub(crate) mod local_etcd {
    use std::process::{Child, Command, Output};

    pub struct LocalEtcd {
        child: Child,
        _dir: tempfile::TempDir,
        /// `env ETCDCTL_API=3 etcdctl --endpoints=<url>`.
        pub ctl: String,
        pub url: String,
    }

    impl LocalEtcd {
        /// Runs `script` under sh.
        pub fn sh(&self, script: &str) -> Output {
            Command::new("sh").arg("-c").arg(script).output().unwrap()
        }
    }

    impl Drop for LocalEtcd {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// A port nothing listens on now (the kernel's pick).
    fn free_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    /// Started on ports of its own, taking transactions of up to 1,000
    /// operations.
    pub fn start() -> Option<LocalEtcd> {
        let etcd = std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("etcd"))
                .find(|f| f.is_file())
        });
        let Some(etcd) = etcd else {
            eprintln!("skipped: no etcd binary (apt-get install etcd-server)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let url = format!("http://127.0.0.1:{}", free_port());
        let child = Command::new(etcd)
            .args(["--data-dir", dir.path().join("d").to_str().unwrap()])
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args([
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{}", free_port()),
            ])
            .args(["--max-txn-ops", "1000"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let e = LocalEtcd {
            child,
            _dir: dir,
            ctl: format!("env ETCDCTL_API=3 etcdctl --endpoints={url}"),
            url,
        };
        for _ in 0..100 {
            if e.sh(&format!("{} endpoint health", e.ctl)).status.success() {
                return Some(e);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("etcd did not start on {}", e.url);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The script under sh against a real etcd (Debian's etcd-server, on
    /// loopback without TLS), 3 keys a page so paging is exercised.
    #[test]
    fn the_script_pages_through_a_real_etcd() {
        let Some(etcd) = local_etcd::start() else {
            return;
        };
        let ctl = &etcd.ctl;
        let mut puts = String::new();
        for i in 0..7 {
            puts.push_str(&format!(
                "printf 'k8s:enc:secretbox:v1:old:\\000\\377\\\\\\n\\042x' | {ctl} put /registry/secrets/ns/old-{i}\n"
            ));
        }
        for i in 0..4 {
            puts.push_str(&format!(
                "printf 'k8s:enc:secretbox:v1:new:zz' | {ctl} put /registry/secrets/ns/new-{i}\n"
            ));
        }
        puts.push_str(&format!(
            "printf 'plain' | {ctl} put /registry/secrets/ns/plain\n"
        ));
        puts.push_str(&format!(
            "printf 'k8s\\000pb' | {ctl} put /registry/pods/ns/p\n"
        ));
        puts.push_str(&format!("printf 'x' | {ctl} put /other/k\n"));
        assert!(etcd.sh(&puts).status.success());
        let out = etcd.sh(&script_with(ctl, "old", 3));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let s = parse(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(s.under("old"), 7);
        assert_eq!(s.under("new"), 4);
        assert_eq!(s.plain_secrets, 1);
        assert_eq!(
            s.values, 13,
            "each value once, across pages; nothing outside /registry/"
        );
        assert_eq!(s.watched.len(), 7);
        assert!(s
            .watched
            .contains(&"/registry/secrets/ns/old-6".to_string()));
    }

    #[test]
    fn counts_are_per_provider_and_key_name() {
        let s = parse(
            "enc\tsecretbox:key1\nwatched\t/registry/secrets/a/b\nenc\tsecretbox:key1\nenc\taescbc:k2\nplain\nvalue\nmore\nnoise\n",
        );
        assert_eq!(s.encrypted["secretbox:key1"], 2);
        assert_eq!(s.under("key1"), 2);
        assert_eq!(s.under("k2"), 1);
        assert_eq!(s.under("key"), 0);
        assert_eq!((s.plain_secrets, s.values), (1, 5));
        assert_eq!(s.watched, ["/registry/secrets/a/b"]);
    }
}
