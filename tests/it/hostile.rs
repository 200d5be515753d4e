//! Hostile inventory values against what rampart renders for root-run
//! systemd units.
//!
//! Validation refuses such values; these tests go around it (they set the
//! validated model's fields directly) to prove the second line of defence:
//! rendered through the escaping layer (`render::systemd`), a value either
//! arrives whole as what it was meant to be (one argument of a command, a
//! description) or the render fails. It never adds a directive, never
//! splits or joins an argument, never becomes a specifier or a variable.
//!
//! Units are read back with [`parse_unit`] and [`split_command`], which
//! follow systemd.syntax(7) and systemd.service(5) ("Command lines");
//! `lab::hostile` checks the same units against systemd itself.

use std::collections::BTreeMap;

use rampart::inventory::Inventory;
use rampart::render::{self, Bundle};

use crate::render::{fake_pki, inventory, HA};

/// Values an attacker or a careless generator could put in a string field.
pub const HOSTILE: &[&str] = &[
    "\nExecStartPre=/bin/sh -c 'touch /tmp/pwned'",
    "\r\nExecStartPre=/bin/sh -c id",
    "x\nProtectHome=no",
    "a b",
    "a\tb",
    "\"quoted\"",
    "'single'",
    "trailing\\",
    "back\\slash",
    "%h%n%i",
    "100%",
    "$HOME",
    "${PATH}",
    "$$",
    "; /bin/sh -c id",
    "`id`",
    "$(id)",
    "nul\0byte",
    "\u{7f}del",
    "\u{1b}[31mred",
    "ünïcødé",
    "-rf",
    "--privileged=true",
];

/// A unit as systemd reads it: (section, key, value) in file order.
pub fn parse_unit(text: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut lines = text.split('\n');
    while let Some(first) = lines.next() {
        let mut line = first.to_string();
        // A backslash at the end joins the next line, itself replaced by a space.
        while line.trim_end().ends_with('\\') && !line.trim_start().starts_with(['#', ';']) {
            let trimmed = line.trim_end();
            line = format!("{} ", &trimmed[..trimmed.len() - 1]);
            match lines.next() {
                Some(next) if next.trim_start().starts_with(['#', ';']) => continue,
                Some(next) => line.push_str(next),
                None => break,
            }
        }
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
            continue;
        }
        if l.starts_with('[') && l.ends_with(']') {
            section = l[1..l.len() - 1].to_string();
            continue;
        }
        let (k, v) = l.split_once('=').unwrap_or((l, ""));
        out.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
    }
    out
}

/// A command line's argv as systemd builds it: specifiers (`%%`) first,
/// then words split at unquoted whitespace with quotes removed and C escapes
/// undone, then `$$` as `$` (no variable is set where these units run).
pub fn split_command(value: &str) -> Vec<String> {
    let value = value.replace("%%", "\u{0}PCT\u{0}");
    assert!(
        !value.contains('%'),
        "a specifier survives in a command line: {value:?}"
    );
    let value = value.replace("\u{0}PCT\u{0}", "%");
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                in_word = true;
                let e = chars.next().expect("an escape ends the line");
                match e {
                    'n' => word.push('\n'),
                    't' => word.push('\t'),
                    'r' => word.push('\r'),
                    's' => word.push(' '),
                    'x' => {
                        let hex: String = [chars.next().unwrap(), chars.next().unwrap()]
                            .iter()
                            .collect();
                        let byte = u8::from_str_radix(&hex, 16).unwrap();
                        // Multi-byte characters arrive as several \x escapes.
                        let mut bytes = vec![byte];
                        while byte >= 0x80 && chars.peek() == Some(&'\\') {
                            let mut look = chars.clone();
                            look.next();
                            if look.next() != Some('x') {
                                break;
                            }
                            chars.next();
                            chars.next();
                            let hex: String = [chars.next().unwrap(), chars.next().unwrap()]
                                .iter()
                                .collect();
                            bytes.push(u8::from_str_radix(&hex, 16).unwrap());
                            if std::str::from_utf8(&bytes).is_ok() {
                                break;
                            }
                        }
                        word.push_str(&String::from_utf8_lossy(&bytes));
                    }
                    other => word.push(other),
                }
            }
            '"' | '\'' if quote.is_none() => {
                in_word = true;
                quote = Some(c);
            }
            q if Some(q) == quote => quote = None,
            c if c.is_whitespace() && quote.is_none() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    assert!(quote.is_none(), "an unclosed quote: {value:?}");
    if in_word {
        words.push(word);
    }
    words.into_iter().map(|w| w.replace("$$", "$")).collect()
}

/// The units of a bundle: (host, path) → text.
fn units(bundle: &Bundle) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    for (host, hb) in &bundle.hosts {
        for f in &hb.files {
            if f.path.starts_with("/etc/systemd/system/") {
                out.insert(
                    (host.clone(), f.path.clone()),
                    String::from_utf8(f.contents.bytes().to_vec()).unwrap(),
                );
            }
        }
    }
    out
}

/// A field of the inventory that reaches units, and how to set it.
pub struct Field {
    pub name: &'static str,
    /// A value of it that appears nowhere else in a rendered bundle.
    pub marker: &'static str,
    pub set: fn(&mut Inventory, &str),
}

pub const FIELDS: &[Field] = &[
    Field {
        name: "binaries.dir",
        marker: "/opt/markerbin",
        set: |inv, v| inv.binaries.dir = v.into(),
    },
    Field {
        name: "binaries.etcdDir",
        marker: "/opt/markeretcd",
        set: |inv, v| inv.binaries.etcd_dir = v.into(),
    },
    Field {
        name: "cluster.name",
        marker: "markercluster",
        set: |inv, v| inv.cluster.name = v.into(),
    },
    Field {
        name: "backups.dir",
        marker: "/srv/markerbackups",
        set: |inv, v| inv.backups.as_mut().unwrap().dir = v.into(),
    },
    Field {
        name: "backups.schedule",
        marker: "*-*-* 01:23:45",
        set: |inv, v| inv.backups.as_mut().unwrap().schedule = v.into(),
    },
    Field {
        name: "backups.randomizedDelay",
        marker: "17min",
        set: |inv, v| inv.backups.as_mut().unwrap().randomized_delay = v.into(),
    },
];

/// The HA inventory with backups, every field set to its marker.
pub fn marked() -> Inventory {
    let yaml = format!(
        "{HA}backups:\n  recipients: [age1jyqgnpk7g9dmlvchtnq05q5dek9wsatdywuums8780kt2f7lt5nqfqjtz9]\n"
    );
    let mut inv = inventory(&yaml);
    for f in FIELDS {
        (f.set)(&mut inv, f.marker);
    }
    inv
}

/// What a unit should be with `field` set to `value`: the marked render's
/// directives, with their values (a command line as its argv) the marker
/// replaced by the value.
fn expected(unit: &str, field: &Field, value: &str) -> Vec<(String, String, Vec<String>)> {
    actual(unit)
        .into_iter()
        .map(|(s, k, words)| {
            let words = words
                .into_iter()
                .map(|w| w.replace(field.marker, value))
                .collect();
            (s, k, words)
        })
        .collect()
}

/// A unit's directives as systemd reads them: a command line as its argv,
/// any other value with its specifiers' `%%` read as `%`.
fn actual(unit: &str) -> Vec<(String, String, Vec<String>)> {
    parse_unit(unit)
        .into_iter()
        .map(|(s, k, v)| {
            let words = if k == "ExecStart" {
                split_command(&v)
            } else {
                vec![v.replace("%%", "%")]
            };
            (s, k, words)
        })
        .collect()
}

/// Every hostile value in every field either renders to units with exactly
/// the directives and argv rampart meant, or is refused by the render.
#[test]
fn hostile_values_never_change_a_units_directives_or_argv() {
    let base = marked();
    let pki = fake_pki(&base);
    let baseline = units(&render::render(&base, &pki).unwrap());
    let mut rendered = 0;
    let mut refused = 0;
    for field in FIELDS {
        for value in HOSTILE {
            let mut inv = base.clone();
            (field.set)(&mut inv, value);
            let bundle = match render::render(&inv, &pki) {
                Ok(b) => b,
                Err(e) => {
                    refused += 1;
                    let msg = e.to_string();
                    assert!(!msg.is_empty(), "{}={value:?}", field.name);
                    continue;
                }
            };
            rendered += 1;
            let now = units(&bundle);
            assert_eq!(
                now.keys().collect::<Vec<_>>(),
                baseline.keys().collect::<Vec<_>>(),
                "{}={value:?}: other unit files",
                field.name
            );
            for (at, unit) in &now {
                assert_eq!(
                    actual(unit),
                    expected(&baseline[at], field, value),
                    "{}={value:?}: {}:{} reads differently than meant:\n{unit}",
                    field.name,
                    at.0,
                    at.1
                );
            }
        }
    }
    // Both outcomes happen: values that fit a command line are carried
    // whole, values that cannot be a path or a schedule are refused.
    assert!(
        rendered > 0 && refused > 0,
        "{rendered} rendered, {refused} refused"
    );
    eprintln!(
        "hostile: {} values x {} fields: {rendered} rendered and read back as meant, {refused} refused",
        HOSTILE.len(),
        FIELDS.len()
    );
}

/// The parser agrees with the examples of systemd.service(5).
#[test]
fn command_lines_split_as_systemd_splits_them() {
    assert_eq!(
        split_command("/bin/echo one two"),
        ["/bin/echo", "one", "two"]
    );
    assert_eq!(
        split_command("/bin/echo \"one two\" 'three four'"),
        ["/bin/echo", "one two", "three four"]
    );
    assert_eq!(
        split_command("/bin/echo a\\sb 100%% $$x"),
        ["/bin/echo", "a b", "100%", "$x"]
    );
    assert_eq!(
        parse_unit("[Service]\nExecStart=/bin/a \\\n  --b \\\n  --c\n# c\nUser=x\n"),
        [
            (
                "Service".to_string(),
                "ExecStart".to_string(),
                "/bin/a    --b    --c".to_string()
            ),
            ("Service".to_string(), "User".to_string(), "x".to_string()),
        ]
    );
}
