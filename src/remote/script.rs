//! The POSIX `sh` scripts rampart runs on hosts, built as pure strings.
//!
//! Scripts are data: the same text runs over SSH and, in tests, on this
//! machine under a scratch root. Every host path is written `"$R"'/etc/…'`
//! where `R` is `$ROOT` (empty on real hosts). Values are quoted with `shlex`,
//! never interpolated raw. Outputs are tab-separated lines parsed by
//! `crate::plan::facts`; the golden tests in this module pin the texts.

use std::fmt::Write as _;

/// Header of every script: strict mode and the root prefix.
pub(crate) const PRELUDE: &str = "set -eu\nR=\"${ROOT:-}\"\n";

/// Shell-quotes one word (a path, a user name, an owner string).
pub fn quote(word: &str) -> String {
    shlex::try_quote(word)
        .map(|q| q.into_owned())
        // Only a NUL byte fails; no rampart path or name contains one.
        .unwrap_or_else(|_| "''".into())
}

/// `"$R"'/etc/x'`: a host path under the root prefix.
pub(crate) fn at(path: &str) -> String {
    format!("\"$R\"{}", quote(path))
}

/// What to ask a host before planning.
#[derive(Debug, Clone, Default)]
pub struct FactsRequest {
    /// Files whose mode, owner and sha256 are wanted.
    pub files: Vec<String>,
    /// Directories whose mode and owner are wanted.
    pub dirs: Vec<String>,
    /// systemd units (`etcd.service`, `rampart-backup.timer`) whose state is wanted.
    pub services: Vec<String>,
    /// (name, absolute path, version flag) of binaries to look for.
    pub binaries: Vec<(String, String, String)>,
    /// Users that must exist.
    pub users: Vec<String>,
    /// The host's record of what rampart installed last time.
    pub record: String,
    /// Where free disk space is measured.
    pub disk: String,
    /// Kernel settings (dotted keys) whose value in effect is wanted.
    pub sysctls: Vec<String>,
    /// Large files (binaries) whose mode, owner and sha256 are wanted; their
    /// sha256 comes from the host's digest cache while the file is unchanged.
    pub cached: Vec<String>,
}

/// The host's digest cache of the binaries rampart installed: lines of
/// `sha256\t<size> <mtime> <ctime> <inode>\t<path>` (times in ns).
pub const DIGESTS: &str = "/var/lib/rampart/digests";

/// One round trip that tells the planner everything it needs: hashes (not
/// contents) of the files rampart manages, service states, binaries, ports,
/// clock, disk, OS. Lines: `kind\tfield…`.
pub fn facts(req: &FactsRequest) -> String {
    let mut s = String::from(PRELUDE);
    s.push_str("set +e\n");
    s.push_str("if [ -r \"$R/etc/os-release\" ]; then . \"$R/etc/os-release\"; fi\n");
    s.push_str("printf 'os\\t%s\\t%s\\n' \"${ID:-unknown}\" \"${VERSION_ID:-}\"\n");
    s.push_str("printf 'time\\t%s\\n' \"$(date +%s)\"\n");
    s.push_str(
        "printf 'systemd\\t%s\\n' \"$(systemctl --version 2>/dev/null | awk 'NR==1{print $2}')\"\n",
    );
    let _ = writeln!(
        s,
        "printf 'disk\\t%s\\n' \"$(df -Pk {} 2>/dev/null | awk 'NR==2{{print $4}}')\"",
        at(&req.disk)
    );
    s.push_str(
        "printf 'listen\\t%s\\n' $(ss -Hltn 2>/dev/null | awk '{n=split($4,a,\":\"); print a[n]}' | sort -un)\n",
    );
    // Active swap areas: /proc/swaps lists them under a header line.
    s.push_str("printf 'swap\\t%s\\n' \"$(awk 'NR > 1' /proc/swaps 2>/dev/null | wc -l)\"\n");
    for (name, path, flag) in &req.binaries {
        let _ = writeln!(
            s,
            "if [ -x {p} ]; then printf 'bin\\t%s\\t%s\\n' {n} \"$({p} {f} 2>&1 | head -n1)\"; else printf 'bin\\t%s\\t-\\n' {n}; fi",
            p = at(path),
            n = quote(name),
            f = flag.split_whitespace().map(quote).collect::<Vec<_>>().join(" "),
        );
    }
    for user in &req.users {
        let _ = writeln!(
            s,
            "if id -u {u} >/dev/null 2>&1; then printf 'user\\t%s\\tyes\\n' {u}; else printf 'user\\t%s\\tno\\n' {u}; fi",
            u = quote(user)
        );
    }
    for svc in &req.services {
        let _ = writeln!(
            s,
            "printf 'svc\\t%s\\t%s\\t%s\\n' {u} \"$(systemctl is-active {u} 2>/dev/null)\" \"$(systemctl is-enabled {u} 2>/dev/null)\"",
            u = quote(svc)
        );
    }
    if !req.services.is_empty() {
        // When each unit last became active, in one call: a service older
        // than an input file missed the restart of a run that was cut short.
        let units: Vec<String> = req.services.iter().map(|u| quote(u)).collect();
        let _ = writeln!(
            s,
            "systemctl show --timestamp=unix -p Id -p ActiveEnterTimestamp -- {} 2>/dev/null | awk 'BEGIN {{ RS = \"\"; FS = \"\\n\" }} {{ id = \"\"; t = \"\"; for (i = 1; i <= NF; i++) {{ if ($i ~ /^Id=/) id = substr($i, 4); else if ($i ~ /^ActiveEnterTimestamp=/) t = substr($i, 22) }} if (id != \"\") printf \"since\\t%s\\t%s\\n\", id, t }}'",
            units.join(" ")
        );
    }
    for key in &req.sysctls {
        // A value with several numbers is tab-separated in /proc/sys: keep
        // the fields apart from ours by turning tabs into spaces.
        let _ = writeln!(
            s,
            "k={k}; p={p}; if [ -r \"$p\" ]; then v=$(tr '\\t' ' ' < \"$p\"); if [ -w \"$p\" ]; then w=rw; else w=ro; fi; printf 'sysctl\\t%s\\t%s\\t%s\\n' \"$k\" \"$v\" \"$w\"; else printf 'sysctl\\t%s\\t-\\tro\\n' \"$k\"; fi",
            k = quote(key),
            p = at(&crate::layout::proc_path(key)),
        );
    }
    // Units an unfinished restore holds stopped (see crate::restore::script).
    let _ = writeln!(
        s,
        "for f in {}/*; do if [ -f \"$f\" ]; then printf 'hold\\t%s\\t%s\\n' \"${{f##*/}}\" \"$(cut -f1 \"$f\")\"; fi; done",
        at(crate::layout::HOLD_DIR)
    );
    let _ = writeln!(
        s,
        "if [ -f {r} ]; then printf 'record\\t%s\\n' \"$(base64 -w0 < {r})\"; fi",
        r = at(&req.record)
    );
    // Relative names from "$R/" so the output never carries the root prefix.
    s.push_str("cd \"$R/\"\n");
    let rel = |paths: &[String]| -> String {
        paths
            .iter()
            .map(|p| quote(p.trim_start_matches('/')))
            .collect::<Vec<_>>()
            .join(" ")
    };
    if !req.dirs.is_empty() {
        let _ = writeln!(
            s,
            "stat -c 'dir\t%a\t%U\t%G\t%F\t%n' -- {} 2>/dev/null",
            rel(&req.dirs)
        );
    }
    if !req.files.is_empty() {
        let files = rel(&req.files);
        let _ = writeln!(
            s,
            "stat -c 'stat\t%a\t%U\t%G\t%F\t%Y\t%n' -- {files} 2>/dev/null"
        );
        let _ = writeln!(s, "sha256sum -- {files} 2>/dev/null | sed 's/^/sha\t/'");
    }
    if !req.cached.is_empty() {
        let files = rel(&req.cached);
        let _ = writeln!(
            s,
            "stat -c 'stat\t%a\t%U\t%G\t%F\t%Y\t%n' -- {files} 2>/dev/null"
        );
        // A binary is hashed again only when its size, mtime, ctime or inode
        // moved since the cached line was written (any write, rename over it
        // or chmod moves the ctime, and nobody can set that back); one changed
        // in the last 2 s is not cached (a write in the same tick would not
        // show). The cache is rewritten only after a miss.
        let _ = writeln!(
            s,
            "C={c}; now=$(date +%s); new=; miss=0\nfor p in {files}; do\n  st=$(stat -c '%s %.9Y %.9Z %i' -- \"$p\" 2>/dev/null) || continue\n  sha=$(awk -F '\\t' -v k=\"$st\" -v p=\"$p\" '$2 == k && $3 == p {{ print $1; exit }}' \"$C\" 2>/dev/null)\n  keep=1\n  if [ -z \"$sha\" ]; then\n    miss=1; sha=$(sha256sum -- \"$p\" | cut -d' ' -f1)\n    set -- $st; c=${{3%.*}}; [ $((now - c)) -gt 2 ] || keep=0\n  fi\n  printf 'sha\\t%s  %s\\n' \"$sha\" \"$p\"\n  [ $keep = 0 ] || new=\"$new$sha\t$st\t$p\n\"\ndone\nif [ $miss = 1 ] && [ -d \"${{C%/*}}\" ]; then (umask 077; printf '%s' \"$new\" > \"$C.new\" && mv -f \"$C.new\" \"$C\") 2>/dev/null || true; fi",
            c = at(DIGESTS)
        );
    }
    s.push_str("echo end\n");
    s
}

/// The temp file a new version is staged in: same directory (so the rename is
/// atomic), hidden, recognisable.
pub fn staged_path(path: &str) -> String {
    match path.rsplit_once('/') {
        Some((dir, name)) => format!("{dir}/.{name}.rampart-new"),
        None => format!(".{path}.rampart-new"),
    }
}

/// One file to stage: its bytes follow on stdin, `size` of them.
#[derive(Debug, Clone)]
pub struct Staged {
    pub path: String,
    pub mode: u32,
    pub owner: String,
    pub group: String,
    pub size: u64,
}

/// Writes each file's bytes (concatenated on stdin, in order) to its staged
/// path with mode and owner set, then fsyncs them. Nothing at a real path
/// changes: a connection that drops here leaves only `.rampart-new` files,
/// which the commit refuses unless their sha256 matches.
pub fn stage(files: &[Staged]) -> String {
    let mut s = String::from(PRELUDE);
    s.push_str(
        "put() {\n  d=$(dirname \"$R$1\")\n  [ -d \"$d\" ] || (umask 022; mkdir -p \"$d\")\n  t=\"$d/.$(basename \"$1\").rampart-new\"\n  staged=\"$staged $t\"\n  rm -f \"$t\"\n  (umask 077; dd of=\"$t\" bs=65536 count=\"$5\" iflag=fullblock,count_bytes status=none)\n  [ \"$(stat -c %s \"$t\")\" = \"$5\" ] || { echo \"upload of $1 ended early\" >&2; exit 4; }\n  chown \"$3:$4\" \"$t\"\n  chmod \"$2\" \"$t\"\n}\n",
    );
    // A dropped connection (EOF on stdin, SIGHUP or SIGPIPE) must not leave
    // staged copies behind: every exit but the successful one removes them.
    s.push_str(
        "staged=\nok=0\n# shellcheck disable=SC2086\ntrap '[ \"$ok\" = 1 ] || rm -f $staged' EXIT\ntrap 'exit 1' HUP INT TERM PIPE\n",
    );
    for f in files {
        let _ = writeln!(
            s,
            "put {} {:04o} {} {} {}",
            quote(&f.path),
            f.mode,
            quote(&f.owner),
            quote(&f.group),
            f.size
        );
    }
    s.push_str(
        "# shellcheck disable=SC2086\n[ -z \"$staged\" ] || sync $staged\nok=1\necho staged\n",
    );
    s
}

/// A path's mode and owner: a directory to create or fix, or a file whose
/// contents are right but whose mode or owner are not.
#[derive(Debug, Clone)]
pub struct Attrs {
    pub path: String,
    pub mode: u32,
    pub owner: String,
    pub group: String,
}

/// What the commit step does.
#[derive(Debug, Clone, Default)]
pub struct Commit {
    /// Staged files to move into place: (path, sha256 the staged copy must have).
    pub install: Vec<(String, String)>,
    /// Files rampart installed before and no longer manages.
    pub remove: Vec<String>,
    /// System accounts to create first: directories may belong to them.
    pub users: Vec<crate::layout::SystemUser>,
    /// Directories to create or fix (mode, owner).
    pub dirs: Vec<Attrs>,
    /// Files to fix in place (mode, owner), contents unchanged.
    pub fix: Vec<Attrs>,
    /// Where previous versions go (`/var/lib/rampart/backup/<timestamp>`).
    pub backup_dir: String,
}

/// Checks every staged file's sha256 first (all or nothing), then for each
/// file keeps the old version under the backup dir and renames the new one in
/// place, then fsyncs the directories so the renames survive a power cut.
pub fn commit(c: &Commit) -> String {
    let mut s = String::from(PRELUDE);
    let _ = writeln!(s, "B={}", at(&c.backup_dir));
    if !c.install.is_empty() {
        // Relative to "$R/": a quoted heredoc does not expand `$R`.
        s.push_str("if ! (cd \"$R/\" && sha256sum -c --quiet --status) <<'EOF'\n");
        for (path, sha) in &c.install {
            let _ = writeln!(s, "{sha}  {}", staged_path(path).trim_start_matches('/'));
        }
        s.push_str("EOF\nthen echo 'staged files are incomplete or missing: upload again' >&2; exit 3; fi\n");
    }
    s.push_str(
        "keep() {\n  [ -e \"$R$1\" ] || return 0\n  (umask 077; mkdir -p \"$B$(dirname \"$1\")\")\n  cp -a \"$R$1\" \"$B$1\"\n}\n",
    );
    s.push_str("synced=\n");
    // `*` (not `!`) keeps the account usable by public key even where sshd
    // does not use PAM, while no password can ever match it.
    for u in &c.users {
        let _ = writeln!(
            s,
            "id -u {n} >/dev/null 2>&1 || useradd --system --user-group --no-create-home --home-dir {h} --shell /bin/sh --password '*' --comment 'rampart backup receiver' {n} || exit 5",
            n = quote(&u.name),
            h = quote(&u.home),
        );
    }
    for d in &c.dirs {
        let _ = writeln!(
            s,
            "mkdir -p {p}; chown {o}:{g} {p}; chmod {m:04o} {p}",
            p = at(&d.path),
            o = quote(&d.owner),
            g = quote(&d.group),
            m = d.mode
        );
    }
    for (path, _) in &c.install {
        let _ = writeln!(
            s,
            "keep {q}; mv -f {t} {p}; synced=\"$synced $(dirname {p})\"",
            q = quote(path),
            t = at(&staged_path(path)),
            p = at(path)
        );
    }
    for f in &c.fix {
        let _ = writeln!(
            s,
            "chown {o}:{g} {p}; chmod {m:04o} {p}",
            p = at(&f.path),
            o = quote(&f.owner),
            g = quote(&f.group),
            m = f.mode
        );
    }
    for path in &c.remove {
        let _ = writeln!(
            s,
            "keep {q}; rm -f {p}; synced=\"$synced $(dirname {p})\"",
            q = quote(path),
            p = at(path)
        );
    }
    s.push_str("# shellcheck disable=SC2086\n[ -z \"$synced\" ] || sync $synced\necho committed\n");
    s
}

/// Takes the host lock. Prints `locked` and then keeps running (holding the
/// `flock`) until stdin closes, which happens when rampart finishes or its
/// connection dies, so an interrupted run never leaves a lock behind. A lock
/// held by someone else prints `busy\t<owner line>` and exits.
pub fn lock(path: &str, owner: &str) -> String {
    let mut s = String::from(PRELUDE);
    let _ = writeln!(s, "L={}", at(path));
    s.push_str("(umask 077; mkdir -p \"$(dirname \"$L\")\")\nexec 9>>\"$L\"\n");
    s.push_str("if ! flock -n 9; then printf 'busy\\t%s\\n' \"$(head -n1 \"$L\")\"; exit 0; fi\n");
    let _ = writeln!(
        s,
        "printf '%s\\tpid=%s\\tsince=%s\\n' {} \"$$\" \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\" > \"$L\"",
        quote(owner)
    );
    s.push_str("echo locked\nexec cat >/dev/null\n");
    s
}

/// Ends the process holding the host lock (for `rampart hosts unlock`).
pub fn unlock(path: &str) -> String {
    let mut s = String::from(PRELUDE);
    let _ = writeln!(s, "L={}", at(path));
    s.push_str("[ -f \"$L\" ] || { echo free; exit 0; }\nexec 9>>\"$L\"\nif flock -n 9; then echo free; exit 0; fi\n");
    s.push_str("pid=$(sed -n 's/.*\\tpid=\\([0-9]*\\).*/\\1/p' \"$L\" | head -n1)\n");
    s.push_str(
        "[ -n \"$pid\" ] && kill \"$pid\" 2>/dev/null || true\nflock -w 10 9 && echo released\n",
    );
    s
}

/// Prints `file\t<path>\t<base64>` for each readable path: the old contents
/// of updated plain files, for diffs. Only asked for when a plan has updates,
/// so a no-op run never reads file contents, only their hashes.
pub fn fetch(paths: &[String]) -> String {
    let mut s = String::from(PRELUDE);
    for p in paths {
        let _ = writeln!(
            s,
            "if [ -f {a} ]; then printf 'file\\t%s\\t%s\\n' {q} \"$(base64 -w0 < {a})\"; fi",
            a = at(p),
            q = quote(p)
        );
    }
    s
}

/// `systemctl` with fixed arguments over whole unit names (`etcd.service`).
pub fn systemctl(verb: &str, units: &[&str]) -> String {
    let mut s = String::from(PRELUDE);
    s.push_str("systemctl ");
    s.push_str(verb);
    for unit in units {
        s.push(' ');
        s.push_str(&quote(unit));
    }
    s.push('\n');
    s
}

/// `systemd-analyze verify` of installed unit files: catches what systemd
/// would reject before anything is started.
pub fn verify_units(paths: &[String]) -> String {
    let mut s = String::from(PRELUDE);
    s.push_str("systemd-analyze verify");
    for p in paths {
        s.push(' ');
        s.push_str(&at(p));
    }
    s.push('\n');
    s
}

/// Runs `cmd` (already quoted) until it succeeds or `seconds` pass; prints its
/// last output either way. Health gates poll on the host, not over many round trips.
pub fn poll(cmd: &str, seconds: u32) -> String {
    poll_after("", cmd, seconds)
}

/// [`poll`] after `first` (script lines, each ending in a newline), which
/// must succeed: an action and the wait for its effect in one round trip.
pub fn poll_after(first: &str, cmd: &str, seconds: u32) -> String {
    let mut s = format!("{PRELUDE}{first}");
    let _ = writeln!(
        s,
        "end=$(( $(date +%s) + {seconds} ))\nwhile :; do\n  if out=$({cmd} 2>&1); then printf '%s\\n' \"$out\"; exit 0; fi\n  if [ \"$(date +%s)\" -ge \"$end\" ]; then printf '%s\\n' \"$out\" >&2; exit 1; fi\n  sleep 1\ndone"
    );
    s
}

/// The client URL of the etcd member on the host at `address`, over its
/// own loopback.
pub fn etcd_loopback(address: std::net::IpAddr) -> &'static str {
    match address {
        std::net::IpAddr::V4(_) => "https://127.0.0.1:2379",
        std::net::IpAddr::V6(_) => "https://[::1]:2379",
    }
}

/// etcdctl (v3 API) from `etcd_dir` on an etcd member, talking to
/// `endpoint` over mTLS with the health-check client certificate rampart
/// installs there, each command bounded by `timeout_secs`. Every script
/// that asks a member something uses it.
pub fn member_etcdctl(etcd_dir: &str, endpoint: &str, timeout_secs: u32) -> String {
    const PKI: &str = "/etc/kubernetes/pki/etcd";
    let etcdctl = format!("{}/etcdctl", etcd_dir.trim_end_matches('/'));
    format!(
        "env ETCDCTL_API=3 {} --endpoints={endpoint} --cacert={PKI}/ca.crt --cert={PKI}/healthcheck-client.crt --key={PKI}/healthcheck-client.key --command-timeout={timeout_secs}s",
        quote(&etcdctl)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the facts script under a scratch root; returns the sha lines.
    fn facts_shas(root: &std::path::Path, cached: &[&str]) -> Vec<String> {
        let req = FactsRequest {
            cached: cached.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(facts(&req))
            .env("ROOT", root)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("sha\t"))
            .map(String::from)
            .collect()
    }

    /// A no-op apply once re-hashed every binary on every host; now the
    /// host's digest cache answers while a binary is unchanged, and any
    /// change to it (same size and mtime included) is seen.
    #[test]
    fn binaries_are_hashed_once_until_they_change() {
        let root = tempfile::tempdir().unwrap();
        let bin = root.path().join("usr/local/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(root.path().join("var/lib/rampart")).unwrap();
        let kubelet = bin.join("kubelet");
        std::fs::write(&kubelet, b"v1").unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        let set_old = |p: &std::path::Path| {
            std::fs::File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(old)
                .unwrap()
        };
        set_old(&kubelet);
        let want = |b: &[u8]| {
            vec![format!(
                "sha\t{}  usr/local/bin/kubelet",
                crate::digest::sha256_hex(b)
            )]
        };
        let cache = root.path().join("var/lib/rampart/digests");
        // ctime is fresh: hashed, reported, not cached yet.
        assert_eq!(
            facts_shas(root.path(), &["/usr/local/bin/kubelet"]),
            want(b"v1")
        );
        assert!(std::fs::read_to_string(&cache)
            .unwrap_or_default()
            .is_empty());
        std::thread::sleep(std::time::Duration::from_millis(3100));
        assert_eq!(
            facts_shas(root.path(), &["/usr/local/bin/kubelet"]),
            want(b"v1")
        );
        let line = std::fs::read_to_string(&cache).unwrap();
        assert!(line.ends_with("\tusr/local/bin/kubelet\n"), "{line:?}");
        // The cache answers: a lie planted in it is believed while the stamps match...
        std::fs::write(
            &cache,
            line.replacen(&crate::digest::sha256_hex(b"v1"), &"0".repeat(64), 1),
        )
        .unwrap();
        assert_eq!(
            facts_shas(root.path(), &["/usr/local/bin/kubelet"]),
            vec![format!("sha\t{}  usr/local/bin/kubelet", "0".repeat(64))]
        );
        // ...and never once the file changed, even with its size and mtime kept.
        std::fs::write(&kubelet, b"v2").unwrap();
        set_old(&kubelet);
        assert_eq!(
            facts_shas(root.path(), &["/usr/local/bin/kubelet"]),
            want(b"v2")
        );
        // A missing binary has no sha line.
        std::fs::remove_file(&kubelet).unwrap();
        assert!(facts_shas(root.path(), &["/usr/local/bin/kubelet"]).is_empty());
    }

    #[test]
    fn staged_path_is_hidden_beside_the_file() {
        assert_eq!(
            staged_path("/etc/kubernetes/pki/ca.key"),
            "/etc/kubernetes/pki/.ca.key.rampart-new"
        );
    }

    #[test]
    fn paths_are_quoted_under_the_root_prefix() {
        assert_eq!(at("/etc/a b"), "\"$R\"'/etc/a b'");
        assert_eq!(at("/etc/kubernetes"), "\"$R\"/etc/kubernetes");
    }

    #[test]
    fn stage_script_is_stable() {
        let s = stage(&[Staged {
            path: "/etc/kubernetes/admin.conf".into(),
            mode: 0o600,
            owner: "root".into(),
            group: "root".into(),
            size: 42,
        }]);
        insta::assert_snapshot!(s);
    }

    #[test]
    fn commit_script_is_stable() {
        let s = commit(&Commit {
            install: vec![("/etc/kubernetes/admin.conf".into(), "ab".repeat(32))],
            remove: vec!["/etc/kubernetes/old.yaml".into()],
            fix: vec![Attrs {
                path: "/etc/kubernetes/pki/ca.crt".into(),
                mode: 0o600,
                owner: "root".into(),
                group: "root".into(),
            }],
            users: vec![crate::layout::SystemUser {
                name: "rampart-backup".into(),
                home: "/var/lib/rampart-backup".into(),
            }],
            dirs: vec![Attrs {
                path: "/var/lib/etcd".into(),
                mode: 0o700,
                owner: "etcd".into(),
                group: "etcd".into(),
            }],
            backup_dir: "/var/lib/rampart/backup/20261122T120000Z".into(),
        });
        insta::assert_snapshot!(s);
    }
}
