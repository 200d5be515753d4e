//! kube-bench's test semantics (`check/test.go`, `check/check.go` `execute`), applied to
//! audit outputs that the emulation produced instead of a shell.
//!
//! Kept deliberately literal, quirks included: a flag "is found" when its text occurs
//! anywhere in the output (substring), values follow the first occurrence, booleans compare
//! case-insensitively, and a flag on the command line hides the config file. A self-check
//! that is stricter or laxer than kube-bench would disagree with it on installed hosts.

use super::benchmark::{BinOp, TestItem};
use super::jsonpath;

/// Where a test item's value came from, as in kube-bench's `auditUsed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Command,
    Config,
    Env,
}

/// The outputs kube-bench would have captured for one check on one host.
#[derive(Debug, Clone, Default)]
pub struct AuditOutputs {
    /// Output of `audit`.
    pub command: String,
    /// Output of `audit_config`; `None` when the check has no `audit_config`.
    pub config: Option<String>,
    /// The process environment (`KEY=VALUE` lines), for test items with `env`.
    pub env: String,
}

/// The result of one test item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemOutcome {
    pub pass: bool,
    /// The flag / path / env var was found in the output used.
    pub found: bool,
    /// The value found (empty when not found).
    pub value: String,
    /// What the test expects, in kube-bench's words.
    pub expected: String,
    pub source: Source,
    /// Set when the output could not be parsed (kube-bench fails the item).
    pub error: Option<String>,
}

impl ItemOutcome {
    /// The name the item was looked up by in its source (flag, jsonpath or env var).
    pub fn name<'a>(&self, t: &'a TestItem) -> &'a str {
        match self.source {
            Source::Command => &t.flag,
            Source::Config => &t.path,
            Source::Env => &t.env,
        }
    }
}

/// The result of all test items combined with the check's `bin_op`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub pass: bool,
    /// Items' expectations joined with " AND " / " OR ".
    pub expected: String,
    pub items: Vec<ItemOutcome>,
}

/// Runs every item as kube-bench's `Check.execute` does: the command output first; when the
/// item is not found there, the config output (if the check has one and it is non-empty);
/// then the environment (if the item names a variable).
pub fn execute(items: &[TestItem], bin_op: BinOp, multiple: bool, out: &AuditOutputs) -> Outcome {
    let mut results = Vec::with_capacity(items.len());
    for t in items {
        let mut r = execute_item(t, Source::Command, &out.command, multiple);
        if !r.found {
            if let Some(config) = out.config.as_deref().filter(|c| !c.is_empty()) {
                r = execute_item(t, Source::Config, config, multiple);
            }
        }
        if !r.found && !t.env.is_empty() {
            r = execute_item(t, Source::Env, &out.env, multiple);
        }
        results.push(r);
    }
    let (pass, sep) = match bin_op {
        BinOp::And => (results.iter().all(|r| r.pass), " AND "),
        BinOp::Or => (results.iter().any(|r| r.pass), " OR "),
    };
    let expected = results
        .iter()
        .map(|r| r.expected.as_str())
        .collect::<Vec<_>>()
        .join(sep);
    Outcome {
        pass,
        expected,
        items: results,
    }
}

/// `testItem.execute`: with `multiple`, every line must pass (stops at the first failure).
pub fn execute_item(t: &TestItem, source: Source, output: &str, multiple: bool) -> ItemOutcome {
    let s = output.trim_end_matches([' ', '\n']);
    let lines: Vec<&str> = if multiple {
        s.split('\n').collect()
    } else {
        vec![s]
    };
    let mut result = None;
    for line in lines {
        let r = evaluate(t, source, line);
        let failed = !r.pass;
        result = Some(r);
        if failed {
            break;
        }
    }
    result.expect("split yields at least one line")
}

/// `testItem.evaluate` on one piece of output.
pub fn evaluate(t: &TestItem, source: Source, s: &str) -> ItemOutcome {
    let name = match source {
        Source::Command => &t.flag,
        Source::Config => &t.path,
        Source::Env => &t.env,
    };
    let found = match source {
        Source::Command => Ok(flag_value(&t.flag, &t.op, s)),
        Source::Config => path_value(&t.path, s),
        Source::Env => Ok(env_value(&t.env, s)),
    };
    let (found, value) = match found {
        Ok(v) => (v.is_some(), v.unwrap_or_default()),
        Err(e) => {
            return ItemOutcome {
                pass: false,
                found: false,
                value: String::new(),
                expected: e.clone(),
                source,
                error: Some(e),
            }
        }
    };
    let (expected, pass) = if t.set {
        if found && !t.op.is_empty() {
            compare_op(&t.op, &value, &t.value, name)
        } else {
            (format!("'{name}' is present"), found)
        }
    } else {
        (format!("'{name}' is not present"), !found)
    };
    ItemOutcome {
        pass,
        found,
        value,
        expected,
        source,
        error: None,
    }
}

/// `flagTestItem.findValue`: `Some(value)` when `flag` occurs in `s`.
///
/// The value is what follows the first occurrence after `=` or `:` (regex
/// `(FLAG)(=|: *)*([^\s]*)`); failing that, for tests that compare, the next token of
/// `FLAG value`; failing that `true` for a `--bool-flag`, else the flag text itself.
pub fn flag_value(flag: &str, op: &str, s: &str) -> Option<String> {
    if s.is_empty() || flag.is_empty() {
        return None;
    }
    let at = s.find(flag)?;
    let mut rest = &s[at + flag.len()..];
    loop {
        if let Some(r) = rest.strip_prefix('=') {
            rest = r;
        } else if let Some(r) = rest.strip_prefix(':') {
            rest = r.trim_start_matches(' ');
        } else {
            break;
        }
    }
    let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    if end > 0 {
        return Some(rest[..end].to_string());
    }
    if !op.is_empty() {
        if let Some(v) = space_separated_value(flag, s) {
            return Some(v);
        }
    }
    Some(if flag.starts_with("--") {
        "true".to_string()
    } else {
        flag.to_string()
    })
}

/// `spaceSeparatedValue`: the first `FLAG<whitespace>token` where token does not start with `-`.
fn space_separated_value(flag: &str, s: &str) -> Option<String> {
    let mut from = 0;
    while let Some(i) = s[from..].find(flag) {
        let after = &s[from + i + flag.len()..];
        let trimmed = after.trim_start();
        if trimmed.len() < after.len() {
            let tok: &str = trimmed.split(char::is_whitespace).next().unwrap_or("");
            if !tok.is_empty() && !tok.starts_with('-') {
                return Some(tok.to_string());
            }
        }
        from += i + flag.len();
    }
    None
}

/// `pathTestItem.findValue`: parse `s` as JSON or YAML and resolve the jsonpath;
/// found when the result is non-empty.
pub fn path_value(path: &str, s: &str) -> Result<Option<String>, String> {
    let doc: serde_yaml::Value = serde_yaml::from_str(s)
        .map_err(|e| format!("failed to load YAML or JSON from the config: {e}"))?;
    let v = jsonpath::execute(path, &doc)
        .map_err(|e| format!("unable to parse path expression \"{path}\": {e}"))?;
    Ok(Some(v).filter(|v| !v.is_empty()))
}

/// `envTestItem.findValue`: the rest of the line after the first `ENV=`; found when non-empty.
pub fn env_value(env: &str, s: &str) -> Option<String> {
    if s.is_empty() || env.is_empty() {
        return None;
    }
    let key = format!("{env}=");
    let at = s.find(&key)?;
    let rest = &s[at + key.len()..];
    let v = rest.split('\n').next().unwrap_or("");
    Some(v.to_string()).filter(|v| !v.is_empty())
}

/// `compareOp`: (expected result in words, pass).
pub fn compare_op(op: &str, flag_val: &str, want: &str, name: &str) -> (String, bool) {
    let pattern: String;
    let pass;
    match op {
        "eq" | "noteq" => {
            let lower = flag_val.to_lowercase();
            let equal = if lower == "false" || lower == "true" {
                lower == want
            } else {
                flag_val == want
            };
            if op == "eq" {
                pattern = format!("'{name}' is equal to '{want}'");
                pass = equal;
            } else {
                pattern = format!("'{name}' is not equal to '{want}'");
                pass = !equal;
            }
        }
        "gt" | "gte" | "lt" | "lte" => {
            let (Ok(a), Ok(b)) = (flag_val.trim().parse::<i64>(), want.trim().parse::<i64>())
            else {
                return (
                    format!("Invalid Number(s) used for comparison: '{flag_val}' '{want}'"),
                    false,
                );
            };
            (pattern, pass) = match op {
                "gt" => (format!("'{name}' is greater than {want}"), a > b),
                "gte" => (format!("'{name}' is greater or equal to {want}"), a >= b),
                "lt" => (format!("'{name}' is lower than {want}"), a < b),
                _ => (format!("'{name}' is lower or equal to {want}"), a <= b),
            };
        }
        "has" => {
            pattern = format!("'{name}' has '{want}'");
            pass = flag_val.contains(want);
        }
        "nothave" => {
            pattern = format!("'{name}' does not have '{want}'");
            pass = !flag_val.contains(want);
        }
        "regex" => {
            pattern = format!("'{name}' matched by regex expression '{want}'");
            pass = match regex::Regex::new(want) {
                Ok(re) => re.is_match(flag_val),
                // kube-bench panics (MustCompile); a failed check is the honest equivalent.
                Err(_) => false,
            };
        }
        "valid_elements" => {
            pattern = format!("'{name}' contains valid elements from '{want}'");
            pass = all_elements_valid(&split_list(flag_val), &split_list(want));
        }
        "bitmask" => {
            let Ok(requested) = i64::from_str_radix(flag_val, 8) else {
                return (format!("Not numeric value - flag: {flag_val}"), false);
            };
            let Ok(max) = i64::from_str_radix(want, 8) else {
                return (format!("Not numeric value - flag: {want}"), false);
            };
            pattern =
                format!("{name} has permissions {flag_val}, expected {want} or more restrictive");
            pass = max & requested == requested;
        }
        _ => return (String::new(), false),
    }
    (pattern, pass)
}

/// `splitAndRemoveLastSeparator(s, ",")`.
fn split_list(s: &str) -> Vec<&str> {
    let clean = s.trim().trim_end_matches(',');
    if clean.is_empty() {
        return Vec::new();
    }
    clean.split(',').map(str::trim).collect()
}

/// `allElementsValid`: every element of `s` is in `t`; two empty lists are valid.
fn all_elements_valid(s: &[&str], t: &[&str]) -> bool {
    if s.is_empty() || t.is_empty() {
        return s.is_empty() && t.is_empty();
    }
    s.iter().all(|e| t.contains(e))
}

#[cfg(test)]
#[path = "semantics_tests.rs"]
mod tests;
