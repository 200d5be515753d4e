//! The `sh` scripts of a restore, built as pure strings like those of
//! [`crate::remote::script`] (same prelude, same `"$R"` root prefix, same
//! quoting), so engine tests run them under a scratch root and the golden
//! tests below pin their text.
//!
//! Every script that finishes a step appends it to the member's journal
//! itself, in the same run: the journal never claims a step that did not
//! happen on that host.

use std::fmt::Write as _;

use super::journal::Step;
use super::plan::{MemberPlan, Tool};
use super::{journal_path, pre_restore_dir, rolled_back_dir, upload_path, DATA_DIR};
use crate::layout::HOLD_DIR;
use crate::remote::script::{at, member_etcdctl, quote, staged_path, PRELUDE};

/// Prelude plus `note STEP`: appends `STEP\t<UTC time>` to the journal of
/// restore `id` (see [`crate::engine::runbook::journal_prelude`]).
fn header(id: &str) -> String {
    crate::engine::runbook::journal_prelude(super::RUNBOOK, id)
}

/// One round trip before planning: etcd's version, its tools, the units,
/// the data dirs and the journal of restore `id`.
pub fn facts(etcd_dir: &str, id: &str) -> String {
    let dir = etcd_dir.trim_end_matches('/');
    let mut s = String::from(PRELUDE);
    s.push_str("set +e\n");
    let _ = writeln!(s, "E={}", at(dir));
    s.push_str("if [ -x \"$E/etcd\" ]; then printf 'etcd\\t%s\\n' \"$(\"$E/etcd\" --version 2>&1 | head -n1)\"; else printf 'etcd\\t-\\n'; fi\n");
    for tool in ["etcdctl", "etcdutl"] {
        let _ = writeln!(
            s,
            "if [ -x \"$E/{tool}\" ]; then printf '{tool}\\tyes\\n'; else printf '{tool}\\tno\\n'; fi"
        );
    }
    s.push_str("for u in etcd kube-apiserver; do printf 'unit\\t%s\\t%s\\t%s\\n' \"$u\" \"$(systemctl show -p LoadState --value \"$u.service\" 2>/dev/null)\" \"$(systemctl is-active \"$u.service\" 2>/dev/null)\"; done\n");
    let _ = writeln!(
        s,
        "if [ -e {} ]; then printf 'datadir\\tyes\\n'; else printf 'datadir\\tno\\n'; fi",
        at(DATA_DIR)
    );
    let _ = writeln!(
        s,
        "if [ -e {} ]; then printf 'moved\\tyes\\n'; else printf 'moved\\tno\\n'; fi",
        at(&pre_restore_dir(id))
    );
    let _ = writeln!(
        s,
        "if [ -f {j} ]; then sed 's/^/journal\\t/' {j}; fi",
        j = at(&journal_path(id))
    );
    s.push_str("echo end\n");
    s
}

/// Records `step` only (the start of a restore on a host).
pub fn note(id: &str, step: Step) -> String {
    let mut s = header(id);
    let _ = writeln!(s, "note {step}");
    s
}

/// Holds `units` stopped, then the journal line. Each unit's hold file goes
/// first (its `ConditionPathExists=!` then refuses every start: a
/// dependency, `Restart=`, an admin), then `systemctl stop` (a unit that is
/// not installed here is skipped), then the hold file records the restore and
/// the unit's last invocation id, which [`fence`] and [`start`] check.
pub fn hold_and_stop(id: &str, units: &[&str], step: Step) -> String {
    let mut s = header(id);
    let _ = writeln!(s, "H={}\n(umask 077; mkdir -p \"$H\")", at(HOLD_DIR));
    for u in units {
        let _ = writeln!(s, "printf '%s\\t\\n' {id} > \"$H\"/{}", quote(u));
    }
    s.push_str("sync \"$H\"\n");
    for u in units {
        let q = quote(u);
        let _ = writeln!(
            s,
            "if [ \"$(systemctl show -p LoadState --value {q})\" != not-found ]; then systemctl stop {q}; fi\nprintf '%s\\t%s\\n' {id} \"$(systemctl show -p InvocationID --value {q})\" > \"$H\"/{q}"
        );
    }
    let _ = writeln!(s, "sync \"$H\"\nnote {step}");
    s
}

/// Before any data moves: every unit this restore holds on the host still
/// has its hold, is stopped, and has not run since it was stopped (the same
/// invocation id as when it stopped). Fails naming each unit that is not.
pub fn fence(id: &str, units: &[&str]) -> String {
    let mut s = header(id);
    let _ = writeln!(s, "H={}\nbad=0", at(HOLD_DIR));
    for u in units {
        let q = quote(u);
        let _ = writeln!(
            s,
            "f=\"$H\"/{q}\nif [ ! -f \"$f\" ]; then echo \"{u} is not held (its hold file is gone)\" >&2; bad=1\nelse\n  was=$(cut -f2 \"$f\"); st=$(systemctl show -p ActiveState --value {q}); now=$(systemctl show -p InvocationID --value {q})\n  case \"$st\" in inactive|failed) ;; *) echo \"{u} is $st, although restore {id} stopped it\" >&2; bad=1;; esac\n  [ \"$now\" = \"$was\" ] || {{ echo \"{u} ran again after restore {id} stopped it (invocation $was, now $now)\" >&2; bad=1; }}\nfi"
        );
    }
    s.push_str("if [ $bad = 1 ]; then echo 'nothing was moved or restored; find what started it, then resume' >&2; exit 3; fi\n");
    s
}

/// Releases `unit`'s hold and starts it, then the journal line. With
/// `block`, the start waits for the unit to be up (Type=notify) and must have
/// made a new process: the same invocation id as when the restore stopped
/// it means it kept running from before, serving what it read before. Without
/// it (`--no-block`: etcd members wait for each other's quorum, so they start
/// together and the health gate waits) only the start is queued.
pub fn start(id: &str, unit: &str, step: Step, block: bool) -> String {
    let mut s = header(id);
    let q = quote(unit);
    let _ = writeln!(
        s,
        "H={}\nwas=$(cut -f2 \"$H\"/{q} 2>/dev/null || true)\nrm -f \"$H\"/{q}\nsync \"$H\" 2>/dev/null || true",
        at(HOLD_DIR)
    );
    if block {
        let _ = writeln!(
            s,
            "systemctl start {q}\nnow=$(systemctl show -p InvocationID --value {q})\nif [ -n \"$was\" ] && [ \"$now\" = \"$was\" ]; then echo \"{unit} was not started anew: it kept running from before restore {id} (invocation $was)\" >&2; exit 3; fi"
        );
    } else {
        let _ = writeln!(s, "systemctl start --no-block {q}");
    }
    let _ = writeln!(s, "note {step}");
    s
}

/// Releases the holds of `units` without starting them (the backup job runs
/// when its timer fires; a control plane that was not running stays so),
/// then the journal line.
pub fn release(id: &str, units: &[&str], step: Step) -> String {
    let mut s = header(id);
    let _ = writeln!(s, "H={}", at(HOLD_DIR));
    for u in units {
        let _ = writeln!(s, "rm -f \"$H\"/{}", quote(u));
    }
    let _ = writeln!(s, "sync \"$H\" 2>/dev/null || true\nnote {step}");
    s
}

/// Renames `/var/lib/etcd` to `/var/lib/etcd.pre-restore-<id>`. Never
/// deletes: when both exist (an earlier interrupted run), it stops and
/// asks for a human.
pub fn move_aside(id: &str) -> String {
    let mut s = header(id);
    let _ = writeln!(s, "D={}\nP={}", at(DATA_DIR), at(&pre_restore_dir(id)));
    s.push_str(
        "if [ -e \"$P\" ]; then\n  if [ -e \"$D\" ]; then echo \"both $D and $P exist; nothing was moved: check which one holds the data to keep, then resume or roll back\" >&2; exit 3; fi\nelif [ -e \"$D\" ]; then\n  mv \"$D\" \"$P\"\n  sync \"$(dirname \"$P\")\"\nfi\n",
    );
    s.push_str("note moved-aside\n");
    s
}

/// Restores the uploaded snapshot (staged by `remote::script::stage` at
/// `upload_path(id)`, 0600) into a scratch dir beside the data dir, checks it
/// offline with `snapshot status`, fixes owner and mode, then renames it to
/// `/var/lib/etcd`. The upload is removed on every exit. Prints
/// `status\t<snapshot status JSON of the restored db>`.
pub fn restore(
    id: &str,
    etcd_dir: &str,
    m: &MemberPlan,
    initial_cluster: &str,
    token: &str,
    sha256: &str,
) -> String {
    let dir = etcd_dir.trim_end_matches('/');
    let tool = match m.tool {
        Tool::Etcdutl => at(&format!("{dir}/etcdutl")),
        Tool::Etcdctl => format!("env ETCDCTL_API=3 {}", at(&format!("{dir}/etcdctl"))),
    };
    let mut s = header(id);
    let _ = writeln!(
        s,
        "S={}\nD={}\nT={}",
        at(&staged_path(&upload_path(id))),
        at(DATA_DIR),
        at(&format!("{DATA_DIR}.restoring-{id}"))
    );
    // The plaintext must not outlive this step, however it ends.
    s.push_str("trap 'rm -f \"$S\"' EXIT\ntrap 'exit 1' HUP INT TERM PIPE\n");
    s.push_str("[ -f \"$S\" ] || { echo \"the uploaded snapshot is missing; resume the restore to upload it again\" >&2; exit 3; }\n");
    let _ = writeln!(
        s,
        "printf '%s  %s\\n' {} \"$S\" | sha256sum -c --status || {{ echo \"the uploaded snapshot does not match the verified one; resume the restore to upload it again\" >&2; exit 3; }}",
        quote(sha256)
    );
    s.push_str("[ ! -e \"$D\" ] || { echo \"$D exists: it was not moved aside, so nothing is restored over it\" >&2; exit 3; }\n");
    // Only our own partial output of an interrupted run is removed here.
    s.push_str("rm -rf \"$T\"\n");
    let _ = writeln!(
        s,
        "{tool} snapshot restore \"$S\" --name {} --initial-cluster {} --initial-cluster-token {} --initial-advertise-peer-urls {} --data-dir \"$T\" >&2",
        quote(&m.name),
        quote(initial_cluster),
        quote(token),
        quote(&m.peer_url)
    );
    s.push_str("chown -R etcd:etcd \"$T\"\nchmod 700 \"$T\"\n");
    let _ = writeln!(
        s,
        "st=$({tool} snapshot status -w json \"$T/member/snap/db\")"
    );
    s.push_str("sync\nmv \"$T\" \"$D\"\nsync \"$(dirname \"$D\")\"\nrm -f \"$S\"\nprintf 'status\\t%s\\n' \"$st\"\nnote restored\n");
    s
}

/// Rollback on one member (etcd already stopped): the current data dir goes
/// to `/var/lib/etcd.rolled-back-<stamp>`, the pre-restore one comes back.
pub fn roll_back(id: &str, stamp: &str) -> String {
    let mut s = header(id);
    let _ = writeln!(
        s,
        "D={}\nP={}\nA={}",
        at(DATA_DIR),
        at(&pre_restore_dir(id)),
        at(&rolled_back_dir(stamp))
    );
    s.push_str("[ -e \"$P\" ] || { echo \"$P is gone: nothing to roll back to\" >&2; exit 3; }\n");
    s.push_str("[ ! -e \"$A\" ] || { echo \"$A exists already; wait a second and roll back again\" >&2; exit 3; }\n");
    s.push_str("if [ -e \"$D\" ]; then mv \"$D\" \"$A\"; fi\nmv \"$P\" \"$D\"\nsync \"$(dirname \"$D\")\"\nnote rolled-back\n");
    s
}

/// Prints `leader` when the local member leads its cluster (and nothing
/// when it does not, or when etcd does not answer). Stopping a leader while
/// its followers still run makes etcd try to hand leadership to a follower
/// that is stopping too: a 7 s stall, seen in most restores on the lab. So
/// followers stop first and the leader last.
pub fn is_leader(etcd_dir: &str, loopback: &str) -> String {
    let mut s = String::from(PRELUDE);
    s.push_str("set +e\n");
    let _ = writeln!(
        s,
        "out=$({} endpoint status -w json 2>/dev/null)",
        member_etcdctl(etcd_dir, loopback, 3)
    );
    s.push_str("me=$(printf '%s' \"$out\" | sed -n 's/.*\"member_id\":\\([0-9]*\\).*/\\1/p')\n");
    s.push_str("lead=$(printf '%s' \"$out\" | sed -n 's/.*\"leader\":\\([0-9]*\\).*/\\1/p')\n");
    s.push_str("if [ -n \"$me\" ] && [ \"$me\" = \"$lead\" ]; then echo leader; fi\n");
    s
}

/// Revision and live key count, through the local member with the
/// healthcheck client: `status\t<endpoint status JSON>` and
/// `count\t<get JSON>` (its `count` is every live key; one is returned).
pub fn check(etcd_dir: &str, loopback: &str) -> String {
    let mut s = String::from(PRELUDE);
    let _ = writeln!(
        s,
        "c() {{ {} \"$@\"; }}",
        member_etcdctl(etcd_dir, loopback, 15)
    );
    s.push_str(
        "st=$(c endpoint status -w json)\nn=$(c get '' --prefix --keys-only --limit=1 -w json)\n",
    );
    s.push_str("printf 'status\\t%s\\ncount\\t%s\\n' \"$st\" \"$n\"\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member() -> MemberPlan {
        MemberPlan {
            name: "cp1".into(),
            address: "10.0.0.11".into(),
            peer_url: "https://10.0.0.11:2380".into(),
            etcd_version: "3.4.23".into(),
            tool: Tool::Etcdctl,
            data_dir: true,
            moved_to: pre_restore_dir("20261130T150000Z"),
            etcd_active: true,
            done: vec![],
        }
    }

    #[test]
    fn restore_scripts_are_stable() {
        let id = "20261130T150000Z";
        let mut m = member();
        let ic = "cp1=https://10.0.0.11:2380,cp2=https://10.0.0.12:2380";
        let all = [
            ("facts", facts("/usr/bin", id)),
            (
                "stop",
                hold_and_stop(
                    id,
                    &["rampart-backup.service", "etcd.service"],
                    Step::StoppedEtcd,
                ),
            ),
            (
                "fence",
                fence(id, &["kube-apiserver.service", "etcd.service"]),
            ),
            ("start", start(id, "etcd.service", Step::StartedEtcd, false)),
            (
                "start_apiserver",
                start(id, "kube-apiserver.service", Step::StartedApiserver, true),
            ),
            (
                "release",
                release(id, &["rampart-backup.service"], Step::Done),
            ),
            ("move_aside", move_aside(id)),
            (
                "restore_34",
                restore(
                    id,
                    "/usr/bin",
                    &m,
                    ic,
                    "lab-restore-20261130T150000Z",
                    &"ab".repeat(32),
                ),
            ),
            ("roll_back", roll_back(id, "20261130T160000Z")),
            ("check", check("/usr/bin", "https://127.0.0.1:2379")),
            ("is_leader", is_leader("/usr/bin", "https://127.0.0.1:2379")),
        ];
        for (name, text) in all {
            insta::assert_snapshot!(format!("restore_{name}"), text);
        }
        m.tool = Tool::Etcdutl;
        insta::assert_snapshot!(
            "restore_restore_35",
            restore(
                id,
                "/usr/local/bin",
                &m,
                ic,
                "lab-restore-20261130T150000Z",
                &"ab".repeat(32)
            )
        );
    }
}
