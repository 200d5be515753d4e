//! Tests of [`super`]: the encryption stream, etcd's checksum, following a
//! growing file.

use super::*;
/// Not a multiple of age's 64 KiB chunks nor of the 1 MiB pipe buffers.
fn input() -> Vec<u8> {
    (0..3_500_017u32).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn encryptor(id: &age::x25519::Identity) -> age::Encryptor {
    let r = id.to_public();
    age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient)).unwrap()
}

#[test]
fn encrypt_stream_round_trips_and_hashes_the_ciphertext() {
    let id = age::x25519::Identity::generate();
    let plain = input();
    let (plain_bytes, out, sha, size) =
        encrypt_stream(encryptor(&id), &plain[..], Vec::new()).unwrap();
    assert_eq!(plain_bytes, plain.len() as u64);
    assert_eq!(size, out.len() as u64);
    assert_eq!(sha, hex::encode(Sha256::digest(&out)));
    assert_eq!(age::decrypt(&id, &out).unwrap(), plain);
}

/// Fails every write after `ok` bytes, like a full disk.
#[derive(Debug)]
struct FullAfter {
    ok: usize,
}
impl Write for FullAfter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.ok == 0 {
            return Err(io::Error::other("disk full (test)"));
        }
        let n = buf.len().min(self.ok);
        self.ok -= n;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_write_error_fails_the_stream_with_that_error() {
    let id = age::x25519::Identity::generate();
    let plain = input();
    for ok in [0, 100, 2 << 20] {
        let e = encrypt_stream(encryptor(&id), &plain[..], FullAfter { ok })
            .expect_err("the write error is reported");
        assert_eq!(e.to_string(), "disk full (test)", "after {ok} bytes");
    }
}

#[test]
fn a_read_error_fails_the_stream_with_that_error() {
    let id = age::x25519::Identity::generate();
    let plain = input();
    let failing = (&plain[..]).chain(FailingRead);
    let e = encrypt_stream(encryptor(&id), failing, Vec::new())
        .expect_err("the read error is reported");
    assert_eq!(e.to_string(), "bad sector (test)");
}

/// Feeds `data` in pieces of the given sizes, in turn; checks that it is
/// complete only after the last piece.
fn etcd_sum(data: &[u8], sizes: &[usize]) -> Option<Result<(), String>> {
    let mut sum = EtcdSum::default();
    let mut rest = data;
    for &size in sizes.iter().cycle() {
        assert!(!sum.complete(), "complete with {} bytes left", rest.len());
        let n = size.min(rest.len());
        sum.feed(&rest[..n]);
        rest = &rest[n..];
        if rest.is_empty() {
            break;
        }
    }
    assert_eq!(sum.complete(), matches!(sum.clone().finish(), Some(Ok(()))));
    sum.finish()
}

/// A database as etcd streams it: pages, then the sha256 of the pages.
fn with_checksum(pages: usize) -> Vec<u8> {
    let mut db: Vec<u8> = (0..pages * 4096).map(|i| (i % 253) as u8).collect();
    let sum = Sha256::digest(&db);
    db.extend_from_slice(&sum);
    db
}

#[test]
fn etcd_sum_checks_the_checksum_at_the_end_however_the_reads_fall() {
    let db = with_checksum(3);
    for sizes in [&[1][..], &[7, 31, 32, 33], &[4096], &[5000, 3], &[1 << 20]] {
        assert_eq!(etcd_sum(&db, sizes), Some(Ok(())), "{sizes:?}");
    }
    let mut bad = db.clone();
    bad[100] ^= 1;
    assert!(matches!(etcd_sum(&bad, &[4096]), Some(Err(_))));
    let mut bad_sum = db.clone();
    *bad_sum.last_mut().unwrap() ^= 1;
    assert!(matches!(etcd_sum(&bad_sum, &[33]), Some(Err(_))));
}

#[test]
fn etcd_sum_reports_a_snapshot_without_checksum() {
    let db = with_checksum(2);
    assert_eq!(etcd_sum(&db[..db.len() - 32], &[100]), None);
    assert_eq!(etcd_sum(&db[..20], &[100]), None);
    assert_eq!(etcd_sum(&[], &[100]), None);
}

/// A stand-in for `etcdctl snapshot save $2`: copies $1 into `$2.part` in
/// 64 KiB appends 2 ms apart (after `$PRE`, shell run first), then renames
/// it, like etcdctl 3.4; with `FAIL_AT=n` it stops after n appends, says
/// why on stderr and exits 1.
const SAVE: &str = r#"set -e
src=$1; out=$2.part; eval "$PRE"; : >> "$out"
n=$(( ($(stat -c %s "$src") + 65535) / 65536 )); i=0
while [ $i -lt $n ]; do
  if [ "$i" = "${FAIL_AT:-x}" ]; then echo "Error: rpc error: stream reset (test)" >&2; exit 1; fi
  dd if="$src" of="$out" bs=65536 skip=$i seek=$i count=1 conv=notrunc status=none
  i=$((i+1)); sleep 0.002
done
sleep "${FSYNC:-0}"; mv "$out" "$2""#;

fn save_with(
    data: &[u8],
    env: &[(&str, &str)],
) -> (
    Result<Saved, BackupError>,
    tempfile::TempDir,
    age::x25519::Identity,
) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("stream");
    fs::write(&src, data).unwrap();
    let plain = dir.path().join("snap.db");
    let mut save = Command::new("sh");
    save.args(["-c", SAVE, "sh"]).arg(&src).arg(&plain);
    for (k, v) in env {
        save.env(k, v);
    }
    // `snapshot status`: says whether it read the whole snapshot while
    // the stand-in was still "fsyncing" (before the rename).
    let mut status = Command::new("sh");
    status
        .args([
            "-c",
            r#"cmp -s /proc/self/fd/0 "$1" && test -e "$2.part" && echo early"#,
            "sh",
        ])
        .arg(&src)
        .arg(&plain);
    let id = age::x25519::Identity::generate();
    let recipients: Vec<Box<dyn age::Recipient + Send>> = vec![Box::new(id.to_public())];
    let dest = dir.path().join("out.db.age");
    let r = save_encrypting(save, &plain, &dest, &recipients, &mut status);
    (r, dir, id)
}

#[test]
fn save_encrypting_follows_the_growing_file_and_checks_etcds_checksum() {
    let db = with_checksum(150); // 600 KiB: ten appends
    let (saved, dir, id) = save_with(&db, &[("FSYNC", "0.5")]);
    let saved = saved.unwrap();
    assert!(saved.checked);
    let status = saved.status.take().wait_with_output().unwrap();
    assert_eq!(
        text(&status.stdout),
        "early\n",
        "status did not start as soon as the checksum said the snapshot was complete"
    );
    assert_eq!(saved.snapshot_size, db.len() as u64);
    let ct = fs::read(dir.path().join("out.db.age")).unwrap();
    assert_eq!(saved.ciphertext_size, ct.len() as u64);
    assert_eq!(saved.sha256, hex::encode(Sha256::digest(&ct)));
    assert_eq!(age::decrypt(&id, &ct).unwrap(), db);
}

#[test]
fn save_encrypting_reports_a_snapshot_without_checksum_unchecked() {
    let db = with_checksum(20);
    let (saved, _dir, _) = save_with(&db[..db.len() - 32], &[]);
    assert!(!saved.unwrap().checked);
}

#[test]
fn save_encrypting_reports_etcdctls_failure() {
    let db = with_checksum(150);
    let (saved, _dir, _) = save_with(&db, &[("FAIL_AT", "4")]);
    match saved {
        Err(BackupError::Etcdctl { stderr, .. }) => {
            assert!(stderr.contains("stream reset (test)"), "{stderr}")
        }
        other => panic!("{:?}", other.err()),
    }
}

/// A writer that sets the file's size first and fills it in later: what
/// was read early (zeros) is not what the file ends up holding, and
/// etcd's checksum says so.
#[test]
fn save_encrypting_refuses_what_etcds_checksum_does_not_match() {
    let db = with_checksum(150);
    let pre = format!("truncate -s {} \"$2.part\"", db.len());
    let (saved, _dir, _) = save_with(&db, &[("PRE", &pre)]);
    match saved {
        Err(BackupError::SnapshotChanged { reason, .. }) => {
            assert!(reason.contains("etcd's checksum"), "{reason}")
        }
        other => panic!("{:?}", other.err()),
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

struct FailingRead;
impl Read for FailingRead {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::Error::other("bad sector (test)"))
    }
}
