//! Which backups to delete: a pure function of the list, the policy and the time.
//!
//! Rules, in order:
//! - the newest *good* backup (one with a readable manifest) is never deleted,
//!   whatever its age: an old backup beats none when etcd dies after a long outage;
//! - other good backups go when they are beyond the `count` newest good ones or
//!   older than `max_age_days`;
//! - a bad backup (no or unreadable manifest) goes once a newer good one exists;
//!   while none does, bad ones are all there is and are left for a human to judge.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::inventory::Retention;

/// How many backups to keep and for how long (either or both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetentionPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_days: Option<u32>,
}

impl Default for RetentionPolicy {
    /// The inventory's default.
    fn default() -> Self {
        RetentionPolicy {
            count: Some(28),
            max_age_days: None,
        }
    }
}

impl From<&Retention> for RetentionPolicy {
    fn from(r: &Retention) -> Self {
        RetentionPolicy {
            count: r.count,
            max_age_days: r.max_age_days,
        }
    }
}

/// One backup found in the backup dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub path: PathBuf,
    pub created: OffsetDateTime,
    /// Its manifest is there and readable.
    pub good: bool,
}

/// The backups to delete, oldest first.
pub fn to_prune(
    candidates: &[Candidate],
    policy: &RetentionPolicy,
    now: OffsetDateTime,
) -> Vec<PathBuf> {
    let mut sorted: Vec<&Candidate> = candidates.iter().collect();
    // Newest first; ties broken by path so the result does not depend on input order.
    sorted.sort_by(|a, b| b.created.cmp(&a.created).then(b.path.cmp(&a.path)));
    let newest_good = sorted.iter().find(|c| c.good).map(|c| c.created);
    let too_old = |c: &Candidate| {
        policy
            .max_age_days
            .is_some_and(|d| now - c.created > Duration::days(i64::from(d)))
    };
    let mut good_seen = 0u32;
    let mut prune = Vec::new();
    for c in sorted {
        let delete = if c.good {
            good_seen += 1;
            good_seen > 1 && (policy.count.is_some_and(|n| good_seen > n) || too_old(c))
        } else {
            newest_good.is_some_and(|t| c.created < t)
        };
        if delete {
            prune.push(c.path.clone());
        }
    }
    prune.reverse();
    prune
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-06-30 12:00 UTC);

    /// `(name, age in days, good)`.
    type Listing<'a> = &'a [(&'a str, i64, bool)];
    /// `(case, listing, policy, expected deletions)`.
    type Case<'a> = (&'a str, Listing<'a>, RetentionPolicy, &'a [&'a str]);

    fn cands(list: &[(&str, i64, bool)]) -> Vec<Candidate> {
        list.iter()
            .map(|&(name, days, good)| Candidate {
                path: PathBuf::from(name),
                created: NOW - Duration::days(days),
                good,
            })
            .collect()
    }

    #[test]
    fn table() {
        let p = |count, max_age_days| RetentionPolicy {
            count,
            max_age_days,
        };
        #[rustfmt::skip]
        let cases: &[Case] = &[
            ("count keeps the newest n", &[("a", 4, true), ("b", 3, true), ("c", 2, true), ("d", 1, true)], p(Some(3), None), &["a"]),
            ("count not reached", &[("a", 2, true), ("b", 1, true)], p(Some(3), None), &[]),
            ("input order does not matter", &[("d", 1, true), ("a", 4, true), ("c", 2, true), ("b", 3, true)], p(Some(2), None), &["a", "b"]),
            ("age", &[("a", 10, true), ("b", 8, true), ("c", 2, true)], p(None, Some(7)), &["a", "b"]),
            ("exactly max age is kept", &[("a", 7, true), ("b", 1, true)], p(None, Some(7)), &[]),
            ("both: count prunes", &[("a", 3, true), ("b", 2, true), ("c", 1, true)], p(Some(2), Some(30)), &["a"]),
            ("both: age prunes", &[("a", 40, true), ("b", 2, true), ("c", 1, true)], p(Some(5), Some(30)), &["a"]),
            ("newest good kept although too old", &[("a", 90, true), ("b", 60, true)], p(None, Some(7)), &["a"]),
            ("newest good kept with count 1 and newer bad ones", &[("a", 5, true), ("b", 1, false)], p(Some(1), Some(2)), &[]),
            ("only bad: nothing deleted", &[("a", 90, false), ("b", 60, false)], p(Some(1), Some(7)), &[]),
            ("bad older than the newest good go", &[("a", 3, false), ("b", 2, true), ("c", 1, false)], p(Some(10), None), &["a"]),
            ("bad do not count towards count", &[("a", 3, true), ("b", 2, false), ("c", 1, true)], p(Some(2), None), &["b"]),
            ("empty", &[], p(Some(1), Some(1)), &[]),
        ];
        for (name, list, policy, want) in cases {
            let got = to_prune(&cands(list), policy, NOW);
            let want: Vec<PathBuf> = want.iter().map(PathBuf::from).collect();
            assert_eq!(got, want, "{name}");
        }
    }
}
