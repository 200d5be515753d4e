//! Rewriting Secrets through the API so the key that encrypts now encrypts
//! them. Pure; the script runs on a control-plane host with kubectl.
//!
//! An update the apiserver stores anew even when nothing changed: its
//! storage layer writes a value back whenever the key that decrypted it is
//! not the one that encrypts (the value is "stale"), which is what
//! `kubectl get … -o json | kubectl replace -f -` relies on. rampart does
//! the same, but only for the Secrets the etcd scan found under the old
//! key, in batches of one namespace and at most [`BATCH`] names, so a
//! rewrite of 10,000 Secrets is 20-odd kubectl pairs, not 10,000, and a
//! run stopped half way starts again from a fresh scan with what is left.
//!
//! The batches of one script run at once: kubectl sends one request at a
//! time (a GET per name, a PUT per item), so one pair after another moved
//! about 5 Secrets a second on a real apiserver; the apiserver, not the
//! client, should be what bounds a rewrite.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::inventory::Inventory;
use crate::remote::script::quote;

/// Names per `kubectl get | kubectl replace` pair.
pub const BATCH: usize = 500;

/// Where etcd keeps Secrets: `/registry/secrets/<namespace>/<name>`.
const SECRETS: &str = "/registry/secrets/";

/// The Secrets among the scan's etcd `keys`, by namespace, and the keys
/// that are not a Secret (the EncryptionConfiguration rampart renders
/// covers Secrets only: anything else was encrypted by another config).
pub fn secrets(keys: &[String]) -> (BTreeMap<String, Vec<String>>, Vec<String>) {
    let mut by_ns: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut other = Vec::new();
    for k in keys {
        match k.strip_prefix(SECRETS).and_then(|r| r.split_once('/')) {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => by_ns
                .entry(ns.to_string())
                .or_default()
                .push(name.to_string()),
            _ => other.push(k.clone()),
        }
    }
    (by_ns, other)
}

/// One script that rewrites `batch` (namespace, names), every batch at
/// once, and waits for them all. Prints `rewritten <n>` per batch (a line
/// each, shorter than a pipe's atomic write), and `failed <namespace>` for
/// a batch kubectl refused (a conflict with a concurrent writer, say: that writer stored
/// the Secret under the new key already, and the next scan tells).
pub fn script(inv: &Inventory, batch: &[(String, Vec<String>)]) -> String {
    let kubectl = format!("{}/kubectl", inv.binaries.dir.trim_end_matches('/'));
    let mut s = format!(
        "K() {{ {} --kubeconfig /etc/kubernetes/admin.conf \"$@\"; }}\n\
         rewrite() {{\n\
         \x20 ns=$1; n=$2; shift 2\n\
         \x20 if list=$(K get secrets --namespace \"$ns\" --ignore-not-found -o json \"$@\") && \\\n\
         \x20    printf '%s' \"$list\" | K replace -f - >/dev/null; then echo \"rewritten $n\"; else echo \"failed $ns\"; fi\n\
         }}\n",
        quote(&kubectl)
    );
    for (ns, names) in batch {
        let quoted: Vec<String> = names.iter().map(|n| quote(n)).collect();
        let _ = writeln!(
            s,
            "rewrite {} {} {} &",
            quote(ns),
            names.len(),
            quoted.join(" ")
        );
    }
    s.push_str("wait\n");
    s
}

/// Splits the Secrets into batches of at most `size` names, one namespace each.
pub fn batches(by_ns: &BTreeMap<String, Vec<String>>, size: usize) -> Vec<(String, Vec<String>)> {
    by_ns
        .iter()
        .flat_map(|(ns, names)| names.chunks(size).map(|c| (ns.clone(), c.to_vec())))
        .collect()
}

/// (Secrets rewritten, namespaces whose batch failed) from the script's output.
pub fn parse(text: &str) -> (u64, Vec<String>) {
    let mut done = 0;
    let mut failed = Vec::new();
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("rewritten", n)) => done += n.trim().parse::<u64>().unwrap_or(0),
            Some(("failed", ns)) => failed.push(ns.to_string()),
            _ => {}
        }
    }
    (done, failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_secrets_are_grouped_the_rest_is_named() {
        let keys: Vec<String> = [
            "/registry/secrets/a/s1",
            "/registry/secrets/b/s2",
            "/registry/secrets/a/s3",
            "/registry/configmaps/a/c",
            "/registry/secrets/x",
        ]
        .map(String::from)
        .into();
        let (by_ns, other) = secrets(&keys);
        assert_eq!(by_ns["a"], ["s1", "s3"]);
        assert_eq!(by_ns["b"], ["s2"]);
        assert_eq!(other, ["/registry/configmaps/a/c", "/registry/secrets/x"]);
        let b = batches(&by_ns, 1);
        assert_eq!(b.len(), 3);
        assert_eq!(b[0], ("a".to_string(), vec!["s1".to_string()]));
    }

    /// The script under sh against a stand-in kubectl that logs its
    /// arguments (a line in one write: the batches run at once) and fails
    /// `replace` for one namespace: hostile names stay
    /// single arguments, a failed batch is named, the rest counted.
    #[test]
    fn the_script_rewrites_in_batches_and_names_failures() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let kubectl = dir.path().join("kubectl");
        std::fs::write(
            &kubectl,
            format!(
                "#!/bin/sh\nline=$(printf '[%s]' \"$@\"); echo \"$line\" >> {log}\n\
                 case \"$3\" in\n\
                 \x20 get) echo \"{{\\\"kind\\\":\\\"List\\\",\\\"ns\\\":\\\"$6\\\"}}\" ;;\n\
                 \x20 replace) ! grep -q '\"ns\":\"bad\"' ;;\n\
                 esac\n",
                log = log.display(),
            ),
        )
        .unwrap();
        std::fs::set_permissions(&kubectl, std::fs::Permissions::from_mode(0o755)).unwrap();
        let inv = crate::inventory::one_host(Some(dir.path()));
        let batch = vec![
            (
                "ok".to_string(),
                vec!["a".to_string(), "b; touch /tmp/pwned".to_string()],
            ),
            ("bad".to_string(), vec!["c".to_string()]),
        ];
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script(&inv, &batch))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(parse(&text), (2, vec!["bad".to_string()]), "{text}");
        let log = std::fs::read_to_string(&log).unwrap();
        assert!(
            log.contains("[get][secrets][--namespace][ok][--ignore-not-found][-o][json][a][b; touch /tmp/pwned]"),
            "{log}"
        );
    }
}
