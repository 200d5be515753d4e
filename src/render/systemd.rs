//! The one escaping layer for values written into systemd unit files
//! (systemd.syntax(7); systemd.service(5), "Command lines"; systemd.unit(5),
//! "Specifiers"). Templates pass every value through one of two tera filters:
//!
//! - `exec`: a value inside a word of a command line (`ExecStart=`): what
//!   systemd would read as a word separator, a quote, an escape or a line
//!   end is written as a C escape (`\s`, `\"`, `\\`, `\n`, `\xNN`), `%` as
//!   `%%` (a specifier) and `$` as `$$` (an environment variable), so the
//!   argument systemd passes is exactly the value;
//! - `setting`: a value of a free-text setting (`Description=`, a comment):
//!   `%` as `%%`; a control character or a trailing backslash (which would
//!   end or continue the line) is a render error, as those settings take no
//!   escapes;
//! - `path` (a command's executable, which systemd refuses with any special
//!   character; `ReadWritePaths=`, a list split at spaces) and `calendar`
//!   (`OnCalendar=`): the value must be what the setting takes, a plain
//!   absolute path or a calendar expression as validation defines them, or
//!   rendering fails.
//!
//! Validation keeps such characters out of every value that reaches a unit
//! (paths, names, schedules); this layer makes it impossible by construction
//! for one that got through to change a unit's directives or a command's argv.

use std::collections::HashMap;
use std::fmt::Write as _;

use tera::{Result, Value};

/// `value` as (part of) one command-line word; see the module docs. A NUL
/// cannot be part of any program argument: such a value is refused.
pub fn exec_word(value: &str) -> std::result::Result<String, Unwritable> {
    if value.contains('\0') {
        return Err(Unwritable(format!(
            "{:?} holds a NUL, which no program argument can",
            cut(value)
        )));
    }
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '%' => out.push_str("%%"),
            '$' => out.push_str("$$"),
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\'' => out.push_str("\\'"),
            ' ' => out.push_str("\\s"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            ';' => out.push_str("\\x3b"),
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "\\x{b:02x}");
                }
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Why a value cannot be a setting's value.
#[derive(Debug, PartialEq, Eq)]
pub struct Unwritable(pub String);

/// `value` as a setting's value; see the module docs.
pub fn setting_value(value: &str) -> std::result::Result<String, Unwritable> {
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(Unwritable(format!(
            "{:?} holds the control character {c:?}, which would end or break the line",
            cut(value)
        )));
    }
    if value.ends_with('\\') {
        return Err(Unwritable(format!(
            "{:?} ends in a backslash, which would join the next line to it",
            cut(value)
        )));
    }
    Ok(value.replace('%', "%%"))
}

fn cut(s: &str) -> String {
    s.chars().take(60).collect()
}

fn text(value: &Value, filter: &str) -> Result<String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(tera::Error::msg(format!(
            "the {filter} filter takes a string, not {other}"
        ))),
    }
}

/// The `exec` tera filter.
pub fn exec_filter(value: &Value, _: &HashMap<String, Value>) -> Result<Value> {
    exec_word(&text(value, "exec")?)
        .map(Value::String)
        .map_err(|Unwritable(why)| tera::Error::msg(why))
}

/// The `path` tera filter: a plain absolute path (see
/// [`crate::inventory::is_host_path`]) or a render error.
pub fn path_filter(value: &Value, _: &HashMap<String, Value>) -> Result<Value> {
    only(
        value,
        "path",
        crate::inventory::is_host_path,
        "a plain absolute path",
    )
}

/// The `calendar` tera filter: one calendar expression (see
/// [`crate::inventory::is_calendar_spec`]) or a render error.
pub fn calendar_filter(value: &Value, _: &HashMap<String, Value>) -> Result<Value> {
    only(
        value,
        "calendar",
        crate::inventory::is_calendar_spec,
        "a calendar expression",
    )
}

/// `value` unchanged when `is` accepts it (nothing in it needs escaping),
/// else a render error saying it is not `what`.
fn only(value: &Value, filter: &str, is: fn(&str) -> bool, what: &str) -> Result<Value> {
    let s = text(value, filter)?;
    if is(&s) {
        Ok(Value::String(s))
    } else {
        Err(tera::Error::msg(format!("{:?} is not {what}", cut(&s))))
    }
}

/// The `setting` tera filter.
pub fn setting_filter(value: &Value, _: &HashMap<String, Value>) -> Result<Value> {
    setting_value(&text(value, "setting")?)
        .map(Value::String)
        .map_err(|Unwritable(why)| tera::Error::msg(why))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_words_keep_their_bytes() {
        let word = |v: &str| exec_word(v).unwrap();
        assert_eq!(word("/usr/local/bin/etcd"), "/usr/local/bin/etcd");
        assert_eq!(
            word("/opt/x\nExecStartPre=/bin/sh -c 'id'"),
            "/opt/x\\nExecStartPre=/bin/sh\\s-c\\s\\'id\\'"
        );
        assert_eq!(
            word("50%\\$HOME\"a;b\x1b"),
            "50%%\\\\$$HOME\\\"a\\x3bb\\x1b"
        );
        assert!(exec_word("a\0b").is_err());
    }

    #[test]
    fn settings_refuse_what_would_break_the_line() {
        assert_eq!(setting_value("daily").unwrap(), "daily");
        assert_eq!(setting_value("%h and 100%").unwrap(), "%%h and 100%%");
        assert!(setting_value("daily\nExecStartPre=/bin/sh").is_err());
        assert!(setting_value("/srv/backups\\").is_err());
        assert!(setting_value("a\rb").is_err());
        assert!(setting_value("a\0b").is_err());
    }
}
