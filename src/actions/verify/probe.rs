//! The read-only probe `verify` runs on each host, right after the facts
//! script in the same round trip: the running processes' real command lines
//! (`/proc/PID/cmdline` of each unit's main PID), unit states, stat of the
//! paths kube-bench looks at, the public files it reads (certificates, unit
//! files, the kubelet config), the health commands, and the backup job's
//! state. Every line starts with `v\t`; binary and free-form values are
//! base64. Nothing here writes to the host.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use base64::Engine;

use crate::remote::script::{at, quote};

/// What to ask one host.
#[derive(Debug, Clone, Default)]
pub struct ProbeRequest {
    /// Units whose state and main process are read (`etcd.service`, …).
    pub units: Vec<String>,
    /// Paths whose stat is wanted if they exist (kube-bench's file roles).
    pub stat: Vec<String>,
    /// Directories listed with everything below them (`find`), stat only.
    pub find: Vec<String>,
    /// Public files (never keys) and the sha256 the bundle has for each: a
    /// file is sent back only when the host's copy differs, so a host as
    /// rendered answers with hashes alone.
    pub read: Vec<(String, String)>,
    /// `(name, unit, command)`: run only while `unit` is active; its status
    /// and output are reported.
    pub health: Vec<(String, String, String)>,
    /// The backup job's list script (see `actions::backup`), when the host
    /// holds backups.
    pub backups: Option<String>,
    /// Files rampart does not render that hold certificates beside a key
    /// (the kubelet's rotated client certificate): only their certificate
    /// blocks are sent back, never the key.
    pub certs: Vec<String>,
}

/// Where systemd units rampart could have installed live; every unit file
/// there with one of these prefixes is listed, so extra ones show up.
const UNIT_DIR: &str = "/etc/systemd/system";
const UNIT_PREFIXES: [&str; 4] = ["etcd", "kube", "containerd", "rampart-backup"];

/// Reads `$shown` (`systemctl show` of several units: blocks of `Key=value`
/// lines, a blank line between units) in the current shell: a `unit` line
/// per block, the main process's argv and environment when it runs, and
/// `$active` extended with each active unit.
const UNIT_BLOCKS: &str = r#"id=; props=; pid=0; st=
flush() {
  if [ -n "$id" ]; then
    printf 'v\tunit\t%s\t%s\n' "$id" "$props"
    if [ "$st" = active ]; then active="$active$id "; fi
    if [ "$pid" -gt 0 ] 2>/dev/null && [ -r "/proc/$pid/cmdline" ]; then
      printf 'v\tcmdline\t%s\t%s\n' "$id" "$(base64 -w0 < "/proc/$pid/cmdline")"
      printf 'v\tenviron\t%s\t%s\n' "$id" "$(base64 -w0 < "/proc/$pid/environ")"
    fi
  fi
  id=; props=; pid=0; st=
}
while IFS= read -r l; do
  case "$l" in
    '') flush ;;
    Id=*) id=${l#Id=} ;;
    *)
      props="$props $l"
      case "$l" in MainPID=*) pid=${l#MainPID=} ;; ActiveState=*) st=${l#ActiveState=} ;; esac
      ;;
  esac
done <<SHOWN
$shown
SHOWN
flush
"#;

/// The probe script (POSIX sh, GNU coreutils and findutils).
pub fn script(req: &ProbeRequest) -> String {
    let mut s = String::from("set +e\nR=\"${ROOT:-}\"\n");
    // One `systemctl show` for every unit (each call is a round trip to
    // PID 1, slow on a busy host); its blocks are read in this shell, which
    // remembers the active units for the health commands below.
    s.push_str("active=' '\n");
    if !req.units.is_empty() {
        let units: Vec<String> = req.units.iter().map(|u| quote(u)).collect();
        let _ = writeln!(
            s,
            "shown=$(systemctl show -p Id -p ActiveState -p SubState -p Result -p MainPID -p NRestarts -- {} 2>/dev/null)",
            units.join(" ")
        );
        s.push_str(UNIT_BLOCKS);
    }
    let prefixes: Vec<String> = UNIT_PREFIXES
        .iter()
        .map(|p| format!("{}/{p}*", at(UNIT_DIR)))
        .collect();
    let _ = writeln!(
        s,
        "for f in {}; do if [ -f \"$f\" ]; then printf 'v\\tunitfile\\t%s\\n' \"${{f##*/}}\"; fi; done",
        prefixes.join(" ")
    );
    // Relative names from "$R/", as the facts script does.
    s.push_str("cd \"$R/\"\n");
    let rel = |p: &String| quote(p.trim_start_matches('/'));
    // One stat for every path (a missing one is only a line on stderr): a
    // process per path is what makes a probe slow on a busy host.
    if !req.stat.is_empty() {
        let paths: Vec<String> = req.stat.iter().map(rel).collect();
        let _ = writeln!(
            s,
            "stat -c 'v\tstat\t%a\t%U\t%G\t%F\t%n' -- {} 2>/dev/null",
            paths.join(" ")
        );
    }
    for p in &req.find {
        let _ = writeln!(
            s,
            "find {} -printf 'v\\tfound\\t%m\\t%u\\t%g\\t%y\\t%p\\n' 2>/dev/null",
            rel(p)
        );
    }
    if !req.read.is_empty() {
        // sha256sum prints `<sha>  <path>`; awk passes on the paths whose
        // line is not the expected one; only those are read.
        let paths: Vec<String> = req.read.iter().map(|(p, _)| rel(p)).collect();
        let want: Vec<String> = req
            .read
            .iter()
            .map(|(p, sha)| format!("{sha}  {}", p.trim_start_matches('/')))
            .collect();
        // The expected lines come in on fd 3 from a quoted here-document,
        // which the shell takes literally (paths never hold a newline).
        let _ = writeln!(
            s,
            "sha256sum -- {} 2>/dev/null | awk 'BEGIN {{ while ((getline l < \"/dev/fd/3\") > 0) ok[l] = 1 }} !($0 in ok) {{ sub(/^[0-9a-f]+  /, \"\"); print }}' 3<<'WANT' | while IFS= read -r p; do printf 'v\\tfile\\t%s\\t%s\\n' \"$p\" \"$(base64 -w0 < \"$p\")\"; done\n{}\nWANT",
            paths.join(" "),
            want.join("\n")
        );
    }
    for p in &req.certs {
        let _ = writeln!(
            s,
            "if [ -r {f} ]; then printf 'v\\tcerts\\t%s\\t%s\\n' {f} \"$(sed -n '/-----BEGIN CERTIFICATE-----/,/-----END CERTIFICATE-----/p' {f} | base64 -w0)\"; fi",
            f = rel(p)
        );
    }
    for (name, unit, cmd) in &req.health {
        let _ = writeln!(
            s,
            "case \"$active\" in *' '{u}' '*) o=$( ( {cmd} ) 2>&1 ); st=$? ;; *) o=; st=- ;; esac; printf 'v\\thealth\\t%s\\t%s\\t%s\\n' {n} \"$st\" \"$(printf '%s' \"$o\" | base64 -w0)\"",
            u = quote(unit),
            n = quote(name),
        );
    }
    if let Some(list) = &req.backups {
        let _ = writeln!(
            s,
            "( {} ) 2>/dev/null | while IFS= read -r l; do printf 'v\\tbackup\\t%s\\n' \"$l\"; done",
            list.trim_end()
        );
    }
    s.push_str("echo 'v\tend'\n");
    s
}

/// A unit's state as `systemctl show` says it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitState {
    pub active: String,
    pub sub: String,
    pub result: String,
    pub main_pid: u32,
    pub restarts: u32,
}

/// A file or directory's stat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub mode: u32,
    pub owner: String,
    pub group: String,
    pub is_dir: bool,
}

/// A health command's outcome: None when its unit was not active.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub ok: Option<bool>,
    pub output: String,
}

/// What one host answered.
#[derive(Debug, Clone, Default)]
pub struct Probe {
    pub units: BTreeMap<String, UnitState>,
    /// Unit → argv of its main process.
    pub argv: BTreeMap<String, Vec<String>>,
    /// Unit → `KEY=VALUE` of its main process's environment.
    pub environ: BTreeMap<String, Vec<(String, String)>>,
    pub unit_files: Vec<String>,
    pub entries: BTreeMap<String, Entry>,
    pub files: BTreeMap<String, Vec<u8>>,
    pub health: BTreeMap<String, Health>,
    /// The backup list script's own lines, for `actions::backup::parse_list`.
    pub backups: Option<String>,
    /// Path → the certificate blocks of a [`ProbeRequest::certs`] file.
    pub cert_files: BTreeMap<String, Vec<u8>>,
}

/// Why a probe's output was refused.
#[derive(Debug, thiserror::Error)]
#[error("probe output line {line}: {reason}")]
pub struct ProbeError {
    pub line: usize,
    pub reason: String,
}

/// Parses the probe's lines (other lines, such as the facts script's, are
/// skipped). Output without the final `v\tend` is truncated and refused.
pub fn parse(text: &str) -> Result<Probe, ProbeError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut p = Probe::default();
    let mut ended = false;
    let mut backups = String::new();
    for (i, line) in text.lines().enumerate() {
        let Some(rest) = line.strip_prefix("v\t") else {
            continue;
        };
        let err = |reason: &str| ProbeError {
            line: i + 1,
            reason: reason.to_string(),
        };
        let decode = |v: &str| b64.decode(v).map_err(|_| err("not base64"));
        let cols: Vec<&str> = rest.split('\t').collect();
        match cols.as_slice() {
            ["unit", unit, props] => {
                p.units.insert(unit.to_string(), unit_state(props));
            }
            ["cmdline", unit, v] => {
                let argv = decode(v)?
                    .split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                p.argv.insert(unit.to_string(), argv);
            }
            ["environ", unit, v] => {
                let env = decode(v)?
                    .split(|b| *b == 0)
                    .filter_map(|kv| {
                        let kv = String::from_utf8_lossy(kv);
                        let (k, v) = kv.split_once('=')?;
                        Some((k.to_string(), v.to_string()))
                    })
                    .collect();
                p.environ.insert(unit.to_string(), env);
            }
            ["unitfile", name] => p.unit_files.push(name.to_string()),
            ["stat", mode, owner, group, kind, path] => {
                p.entries.insert(
                    format!("/{path}"),
                    entry(mode, owner, group, *kind == "directory", &err)?,
                );
            }
            ["found", mode, owner, group, kind, path] => {
                p.entries.insert(
                    format!("/{path}"),
                    entry(mode, owner, group, *kind == "d", &err)?,
                );
            }
            ["file", path, v] => {
                p.files.insert(format!("/{path}"), decode(v)?);
            }
            ["certs", path, v] => {
                p.cert_files.insert(format!("/{path}"), decode(v)?);
            }
            ["health", name, status, v] => {
                let ok = match *status {
                    "-" => None,
                    s => Some(s == "0"),
                };
                let output = String::from_utf8_lossy(&decode(v)?).into_owned();
                p.health.insert(name.to_string(), Health { ok, output });
            }
            ["backup", ..] => {
                backups.push_str(&rest["backup\t".len()..]);
                backups.push('\n');
            }
            ["end"] => ended = true,
            _ => return Err(err("unexpected line")),
        }
    }
    if !ended {
        return Err(ProbeError {
            line: text.lines().count(),
            reason: "output ended early (no end line)".into(),
        });
    }
    p.backups = (!backups.is_empty()).then_some(backups);
    Ok(p)
}

fn entry(
    mode: &str,
    owner: &str,
    group: &str,
    is_dir: bool,
    err: &dyn Fn(&str) -> ProbeError,
) -> Result<Entry, ProbeError> {
    Ok(Entry {
        mode: u32::from_str_radix(mode, 8).map_err(|_| err("bad mode"))?,
        owner: owner.to_string(),
        group: group.to_string(),
        is_dir,
    })
}

/// `ActiveState=active SubState=running …` (systemctl's lines joined by spaces).
fn unit_state(props: &str) -> UnitState {
    let mut u = UnitState::default();
    for kv in props.split_whitespace() {
        match kv.split_once('=') {
            Some(("ActiveState", v)) => u.active = v.into(),
            Some(("SubState", v)) => u.sub = v.into(),
            Some(("Result", v)) => u.result = v.into(),
            Some(("MainPID", v)) => u.main_pid = v.parse().unwrap_or(0),
            Some(("NRestarts", v)) => u.restarts = v.parse().unwrap_or(0),
            _ => {}
        }
    }
    u
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The script runs here under a scratch root (systemctl answers nothing
    /// for units it does not know) and its output parses back.
    #[test]
    fn script_reads_a_scratch_root_and_parses() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc/kubernetes/pki")).unwrap();
        std::fs::create_dir_all(root.join("etc/systemd/system")).unwrap();
        std::fs::write(root.join("etc/kubernetes/pki/ca.crt"), "PEM").unwrap();
        std::fs::write(root.join("etc/kubernetes/pki/same.crt"), "SAME").unwrap();
        std::fs::write(root.join("etc/systemd/system/kube-extra.service"), "").unwrap();
        let cert = "-----BEGIN CERTIFICATE-----\nQUJD\n-----END CERTIFICATE-----\n";
        std::fs::write(
            root.join("etc/kubernetes/pki/both.pem"),
            format!("{cert}-----BEGIN EC PRIVATE KEY-----\nSECRET\n-----END EC PRIVATE KEY-----\n"),
        )
        .unwrap();
        let req = ProbeRequest {
            units: vec!["rampart-nonexistent.service".into()],
            stat: vec!["/etc/kubernetes".into(), "/nope".into()],
            find: vec!["/etc/kubernetes/pki".into()],
            read: vec![
                ("/etc/kubernetes/pki/ca.crt".into(), "0".repeat(64)),
                (
                    "/etc/kubernetes/pki/same.crt".into(),
                    crate::digest::sha256_hex(b"SAME"),
                ),
                ("/nope".into(), "0".repeat(64)),
            ],
            health: vec![(
                "x".into(),
                "rampart-nonexistent.service".into(),
                "true".into(),
            )],
            backups: Some("echo 'a\tb'\necho end".into()),
            certs: vec!["/etc/kubernetes/pki/both.pem".into(), "/nope.pem".into()],
        };
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script(&req))
            .env("ROOT", root)
            .output()
            .unwrap();
        let p = parse(&String::from_utf8_lossy(&out.stdout)).unwrap();
        assert_eq!(p.unit_files, ["kube-extra.service"]);
        assert!(p.entries["/etc/kubernetes"].is_dir);
        assert!(!p.entries["/etc/kubernetes/pki/ca.crt"].is_dir);
        assert!(p.entries.contains_key("/etc/kubernetes/pki"));
        assert!(!p.entries.contains_key("/nope"));
        // Sent back: the file that differs from the bundle, not the one that matches.
        assert_eq!(p.files["/etc/kubernetes/pki/ca.crt"], b"PEM");
        assert!(!p.files.contains_key("/etc/kubernetes/pki/same.crt"));
        assert_eq!(p.health["x"].ok, None);
        assert_eq!(p.backups.as_deref(), Some("a\tb\nend\n"));
        assert!(p.argv.is_empty());
        // A certificate beside its key: the certificate comes back, the key never.
        assert_eq!(
            p.cert_files["/etc/kubernetes/pki/both.pem"],
            cert.as_bytes()
        );
        assert!(!p.cert_files.contains_key("/nope.pem"));
    }

    #[test]
    fn parse_refuses_truncated_output_and_reads_units() {
        assert!(parse("v\tunit\tetcd.service\tActiveState=active\n").is_err());
        let p = parse(
            "os\tdebian\nv\tunit\tetcd.service\tActiveState=failed SubState=failed Result=exit-code MainPID=0 NRestarts=3 \nv\tcmdline\tetcd.service\tZXRjZABhAGI=\nv\tend\n",
        )
        .unwrap();
        let u = &p.units["etcd.service"];
        assert_eq!(
            (u.active.as_str(), u.result.as_str(), u.restarts),
            ("failed", "exit-code", 3)
        );
        assert_eq!(p.argv["etcd.service"], ["etcd", "a", "b"]);
    }
}
