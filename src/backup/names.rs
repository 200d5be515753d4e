//! Backup file names, `<cluster>-<member>-<YYYYmmddTHHMMSSZ>.db.age`: made by
//! the job, read back by retention, and checked by `agent receive`, where a
//! name is the only thing that says whose backup a file is.

use time::format_description::FormatItem;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

/// The ciphertext's suffix; the manifest's is `.manifest.json` (see [`super::manifest_path`]).
pub(crate) const SUFFIX: &str = ".db.age";
/// The UTC time in a name.
pub(crate) const STAMP: &[FormatItem<'static>] =
    format_description!("[year][month][day]T[hour][minute][second]Z");

/// The job's private work dir inside the backup dir (removed on any ending).
pub(crate) const WORK: &str = ".work";

/// `t` as RFC 3339 in UTC, whole seconds: manifests' and last runs' times.
pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .expect("0 ns is valid")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("UTC time formats")
}

/// `<cluster>-<member>-`: what every backup of that member starts with.
pub(crate) fn prefix(cluster: &str, member: &str) -> String {
    format!("{cluster}-{member}-")
}

/// When the backup `name` was taken, if `name` is exactly `<prefix><stamp>.db.age`.
/// The stamp must be the canonical 16 characters the job writes (it is formatted
/// back and compared), so no sign, padding or separator can slip through.
pub(crate) fn created(name: &str, prefix: &str) -> Option<OffsetDateTime> {
    let stamp = name.strip_prefix(prefix)?.strip_suffix(SUFFIX)?;
    let t = PrimitiveDateTime::parse(stamp, STAMP).ok()?;
    (t.format(STAMP).ok()? == stamp).then(|| t.assume_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn only_canonical_names_of_the_prefix_have_a_time() {
        let p = prefix("prod", "cp1");
        assert_eq!(
            created("prod-cp1-20260102T030405Z.db.age", &p),
            Some(datetime!(2026-01-02 03:04:05 UTC))
        );
        for bad in [
            "prod-cp2-20260102T030405Z.db.age",
            "prod-cp1-20260102T030405Z.db.age.tmp",
            "prod-cp1-20260102T030405Z.manifest.json",
            "prod-cp1-2026012T030405Z.db.age",
            "prod-cp1-+20260102T030405Z.db.age",
            "prod-cp1-20261302T030405Z.db.age",
            "prod-cp1-20260102T030405Z/x.db.age",
            "prod-cp1-../20260102T030405Z.db.age",
            "xprod-cp1-20260102T030405Z.db.age",
        ] {
            assert_eq!(created(bad, &p), None, "{bad}");
        }
    }
}
