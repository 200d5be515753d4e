//! The receiver against streams good and bad: what it stores, what it
//! refuses, and that a refusal leaves nothing behind but the member's lock.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;

use time::macros::datetime;

use super::*;
use crate::backup::protocol::VERSION;
use crate::digest::sha256_hex;

const NOW: OffsetDateTime = datetime!(2026-06-30 12:00 UTC);
const LOCK: &str = ".prod-cp1-lock";

fn request(dir: &Path) -> ReceiveRequest {
    ReceiveRequest {
        cluster: "prod".into(),
        member: "cp1".into(),
        dir: dir.to_path_buf(),
        retention: RetentionPolicy {
            count: Some(2),
            max_age_days: None,
        },
    }
}

/// `prod-cp1-<stamp>.db.age` taken `hours` before [`NOW`].
fn name(hours: i64) -> String {
    let t = NOW - time::Duration::hours(hours);
    format!("prod-cp1-{}.db.age", t.format(names::STAMP).unwrap())
}

fn manifest(file: &str, cluster: &str, member: &str, content: &[u8]) -> Manifest {
    Manifest {
        file: file.into(),
        sha256: sha256_hex(content),
        ciphertext_size: content.len() as u64,
        snapshot_size: 1000,
        revision: 7,
        total_keys: 3,
        snapshot_hash: 42,
        etcd_version: "3.5.0".into(),
        cluster: cluster.into(),
        member: member.into(),
        created: "2026-06-30T12:00:00Z".into(),
        recipients: vec!["age1x".into()],
        rampart_version: "0.1.0".into(),
    }
}

/// Some ciphertext that differs per seed and is larger than one 1 MiB buffer.
fn content(seed: u8) -> Vec<u8> {
    (0..(1 << 20) + 4099u32)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A stream as `push` sends it, with `m` as the manifest and `size` in the header.
fn stream_with(file: &str, m: &[u8], size: u64, content: &[u8]) -> Vec<u8> {
    let mut s = Header {
        version: VERSION,
        file: file.into(),
        manifest_size: m.len() as u64,
        size,
    }
    .line();
    s.extend_from_slice(m);
    s.extend_from_slice(content);
    s
}

/// A well-formed stream of `file` with `content`.
fn stream(file: &str, content: &[u8]) -> Vec<u8> {
    let m = serde_json::to_vec(&manifest(file, "prod", "cp1", content)).unwrap();
    stream_with(file, &m, content.len() as u64, content)
}

fn run(dir: &Path, bytes: &[u8]) -> Result<ReceiveReport, ReceiveError> {
    receive(&request(dir), bytes, NOW)
}

/// Every name in `dir`, hidden ones too.
fn listing(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn manifest_name(file: &str) -> String {
    file.replace(".db.age", ".manifest.json")
}

#[test]
fn a_good_stream_is_stored_atomically_with_private_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("new/backups");
    let file = name(0);
    let data = content(1);
    let report = run(&dir, &stream(&file, &data)).unwrap();
    assert_eq!(
        report,
        ReceiveReport {
            file: file.clone(),
            sha256: sha256_hex(&data),
            size: data.len() as u64,
            already_stored: false,
            pruned: vec![],
        }
    );
    assert_eq!(listing(&dir), set(&[LOCK, &file, &manifest_name(&file)]));
    assert_eq!(fs::read(dir.join(&file)).unwrap(), data);
    let m: Manifest =
        serde_json::from_slice(&fs::read(dir.join(manifest_name(&file))).unwrap()).unwrap();
    assert_eq!(m, manifest(&file, "prod", "cp1", &data));
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(&file)), 0o600);
    assert_eq!(mode(&dir.join(manifest_name(&file))), 0o600);
    // The report is one JSON line, as `push` reads it.
    let json = serde_json::to_string(&report).unwrap();
    assert!(json.contains("\"alreadyStored\":false"), "{json}");
}

#[test]
fn a_stream_cut_anywhere_stores_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let file = name(0);
    let data = content(2);
    let full = stream(&file, &data);
    let header_len = full.iter().position(|b| *b == b'\n').unwrap() + 1;
    let body = full.len() - data.len();
    for cut in [
        0,
        10,
        header_len - 1,
        header_len,
        header_len + 5,
        body,
        body + 1,
        body + (1 << 20),
        full.len() - 1,
    ] {
        let dir = tmp.path().join(format!("cut{cut}"));
        let err = run(&dir, &full[..cut]).unwrap_err();
        match &err {
            ReceiveError::Header { .. } => assert!(cut < header_len, "{cut}: {err}"),
            ReceiveError::Truncated { what, got, .. } => {
                let want = if cut < body {
                    "the manifest"
                } else {
                    "the backup"
                };
                assert_eq!(*what, want, "{cut}");
                assert!(*got < full.len() as u64);
            }
            other => panic!("cut at {cut}: {other}"),
        }
        assert!(err.to_string().contains("nothing was stored") || cut < header_len);
        // Up to the ciphertext, not even the dir is made; after, only the lock.
        if cut < body {
            assert!(!dir.exists(), "{cut}");
        } else {
            assert_eq!(listing(&dir), set(&[LOCK]), "{cut}");
        }
    }
}

#[test]
fn trailing_bytes_and_a_wrong_sha256_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let file = name(0);
    let data = content(3);

    let mut longer = stream(&file, &data);
    longer.push(b'x');
    let err = run(dir, &longer).unwrap_err();
    assert!(matches!(err, ReceiveError::Trailing { .. }), "{err}");
    assert_eq!(listing(dir), set(&[LOCK]));

    let mut flipped = data.clone();
    flipped[12345] ^= 1;
    let m = serde_json::to_vec(&manifest(&file, "prod", "cp1", &data)).unwrap();
    let err = run(dir, &stream_with(&file, &m, data.len() as u64, &flipped)).unwrap_err();
    match &err {
        ReceiveError::ShaMismatch {
            file: f,
            actual,
            expected,
        } => {
            assert_eq!(f, &file);
            assert_eq!(actual, &sha256_hex(&flipped));
            assert_eq!(expected, &sha256_hex(&data));
        }
        other => panic!("{other}"),
    }
    assert_eq!(listing(dir), set(&[LOCK]));
}

#[test]
fn only_this_members_own_names_are_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("never");
    let data = content(4);
    let stamp = &name(0)["prod-cp1-".len()..];
    for file in [
        format!("prod-cp2-{stamp}"),
        format!("dev-cp1-{stamp}"),
        format!("prod-cp1-x-{stamp}"),
        format!("../prod-cp1-{stamp}"),
        format!("sub/prod-cp1-{stamp}"),
        format!("prod-cp1-{stamp}/../../../etc/cron.d/x"),
        format!(".prod-cp1-{stamp}"),
        format!("prod-cp1-{stamp}.tmp"),
        "prod-cp1-latest.db.age".to_string(),
        String::new(),
    ] {
        let err = run(&dir, &stream(&file, &data)).unwrap_err();
        match &err {
            ReceiveError::Name { file: f, .. } => assert_eq!(f, &file),
            other => panic!("{file}: {other}"),
        }
        assert!(err.to_string().contains("may only send cp1's own backups"));
    }
    assert!(!dir.exists());
}

#[test]
fn a_manifest_must_describe_the_announced_backup() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("never");
    let file = name(0);
    let data = content(5);
    let size = data.len() as u64;
    let json = |m: &Manifest| serde_json::to_vec(m).unwrap();
    let good = manifest(&file, "prod", "cp1", &data);
    let mut sha = good.clone();
    sha.sha256 = "../etc".into();
    let cases: Vec<(Vec<u8>, u64, &str)> = vec![
        (b"not json".to_vec(), size, "not a manifest"),
        (b"{}".to_vec(), size, "not a manifest"),
        (
            json(&manifest(&file, "prod", "cp2", &data)),
            size,
            "member \"cp2\"",
        ),
        (
            json(&manifest(&file, "dev", "cp1", &data)),
            size,
            "cluster \"dev\"",
        ),
        (
            json(&manifest(&name(1), "prod", "cp1", &data)),
            size,
            "names file",
        ),
        (json(&good), size - 1, "the header"),
        (json(&sha), size, "not 64 hex digits"),
    ];
    for (m, size, want) in cases {
        let err = run(&dir, &stream_with(&file, &m, size, &data[..size as usize])).unwrap_err();
        assert!(
            matches!(err, ReceiveError::Manifest { .. }) && err.to_string().contains(want),
            "{err} (want {want})"
        );
    }
    assert!(!dir.exists());
}

#[test]
fn names_in_the_forced_command_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    for (cluster, member) in [
        ("prod", ""),
        ("prod", "../x"),
        ("a/b", "cp1"),
        (".", "cp1"),
        ("prod", "cp\n1"),
    ] {
        let mut req = request(tmp.path());
        req.cluster = cluster.into();
        req.member = member.into();
        let err = receive(&req, &b""[..], NOW).unwrap_err();
        assert!(matches!(err, ReceiveError::Command { .. }), "{err}");
    }
    assert!(listing(tmp.path()).is_empty());
}

#[test]
fn a_resend_is_success_and_other_content_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let file = name(0);
    let data = content(6);
    run(dir, &stream(&file, &data)).unwrap();
    let stored = listing(dir);

    let again = run(dir, &stream(&file, &data)).unwrap();
    assert!(again.already_stored);
    assert_eq!(again.sha256, sha256_hex(&data));
    assert_eq!(listing(dir), stored);

    let other = content(7);
    let err = run(dir, &stream(&file, &other)).unwrap_err();
    match &err {
        ReceiveError::Conflict { existing, sent, .. } => {
            assert_eq!(existing, &sha256_hex(&data));
            assert_eq!(sent, &sha256_hex(&other));
        }
        other => panic!("{other}"),
    }
    assert_eq!(fs::read(dir.join(&file)).unwrap(), data);
    assert_eq!(listing(dir), stored);

    // A receive stopped between its two renames left the ciphertext alone:
    // the re-send completes it with its manifest.
    fs::remove_file(dir.join(manifest_name(&file))).unwrap();
    assert!(run(dir, &stream(&file, &data)).unwrap().already_stored);
    assert_eq!(listing(dir), stored);
}

#[test]
fn retention_prunes_this_members_backups_only() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Other members' and clusters' backups, older than all of cp1's, a
    // manifest-less file of cp1's name claimed by another member's manifest,
    // and hand-made files: none of them are cp1's to prune.
    let stamp = |h: i64| name(h)["prod-cp1-".len()..].to_string();
    let mut others = vec![
        format!("prod-cp2-{}", stamp(100)),
        format!("dev-cp1-{}", stamp(100)),
        format!("prod-cp1-x-{}", stamp(100)),
        "notes.txt".to_string(),
        format!("prod-cp1-{}.bak", stamp(100)),
    ];
    for f in &others {
        fs::write(dir.join(f), b"x").unwrap();
    }
    // Names alone are ambiguous when names contain dashes (cluster `a`,
    // member `b-c` vs cluster `a-b`, member `c`): where a manifest says the
    // backup is another member's, it is not pruned as this one's.
    let foreign = name(90);
    fs::write(dir.join(&foreign), b"y").unwrap();
    fs::write(
        dir.join(manifest_name(&foreign)),
        serde_json::to_vec(&manifest(&foreign, "prod", "cp2", b"y")).unwrap(),
    )
    .unwrap();
    others.extend([foreign.clone(), manifest_name(&foreign)]);

    let files: Vec<String> = [30, 20, 10].iter().map(|h| name(*h)).collect();
    let mut pruned = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let r = run(dir, &stream(f, &content(i as u8))).unwrap();
        pruned.extend(r.pruned);
    }
    assert_eq!(pruned, vec![files[0].clone()]);
    let mut want: BTreeSet<String> = others.into_iter().collect();
    want.insert(LOCK.into());
    for f in &files[1..] {
        want.insert(f.clone());
        want.insert(manifest_name(f));
    }
    assert_eq!(listing(dir), want);
}

#[test]
fn the_newest_good_backup_survives_any_age_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let mut req = request(tmp.path());
    req.retention = RetentionPolicy {
        count: None,
        max_age_days: Some(1),
    };
    let old = name(24 * 40);
    let older = name(24 * 50);
    receive(&req, &stream(&older, &content(1))[..], NOW).unwrap();
    let r = receive(&req, &stream(&old, &content(2))[..], NOW).unwrap();
    assert_eq!(r.pruned, vec![older]);
    assert_eq!(
        listing(tmp.path()),
        set(&[LOCK, &old, &manifest_name(&old)])
    );
}

#[test]
fn a_dead_receives_temp_files_go_and_other_members_stay() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let file = name(0);
    let stale = [
        format!(".{}.tmp", name(5)),
        format!(".{}.tmp", manifest_name(&name(5))),
    ];
    let stamp = &name(5)["prod-cp1-".len()..];
    let theirs = format!(".prod-cp1-x-{stamp}.tmp");
    for f in stale.iter().chain([&theirs]) {
        fs::write(dir.join(f), b"partial").unwrap();
    }
    run(dir, &stream(&file, &content(8))).unwrap();
    assert_eq!(
        listing(dir),
        set(&[LOCK, &file, &manifest_name(&file), &theirs])
    );
}

#[test]
fn a_second_receive_of_the_member_is_refused_while_one_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let req = request(dir);
    let held = MemberLock::take(&req, &names::prefix("prod", "cp1")).unwrap();
    let file = name(0);
    let err = run(dir, &stream(&file, &content(9))).unwrap_err();
    assert!(matches!(err, ReceiveError::Busy { .. }), "{err}");
    assert_eq!(listing(dir), set(&[LOCK]));
    // Another member is not held up.
    let mut cp2 = request(dir);
    cp2.member = "cp2".into();
    let f2 = file.replace("cp1", "cp2");
    let m = serde_json::to_vec(&manifest(&f2, "prod", "cp2", &content(9))).unwrap();
    receive(
        &cp2,
        &stream_with(&f2, &m, content(9).len() as u64, &content(9))[..],
        NOW,
    )
    .unwrap();
    drop(held);
    run(dir, &stream(&file, &content(9))).unwrap();
}
