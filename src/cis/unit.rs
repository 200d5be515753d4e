//! Reading a rendered systemd unit the way systemd would start it: the command line of
//! `ExecStart=` (continuations joined, quotes and `${VAR}` resolved) and the environment
//! the process gets. That is what `ps -ef` and `/proc/PID/environ` show kube-bench.

use std::collections::BTreeMap;

/// What the self-check needs from one `.service` file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unit {
    /// argv of the last non-empty `ExecStart=` (variables not yet expanded).
    pub exec_start: Option<Vec<String>>,
    /// `Environment=` assignments in order.
    pub environment: Vec<(String, String)>,
    /// `EnvironmentFile=` paths (a leading `-` removed).
    pub environment_files: Vec<String>,
    /// `User=`, when set.
    pub user: Option<String>,
    /// The unit has `LoadCredential=` / `SetCredential=`, so systemd sets `CREDENTIALS_DIRECTORY`.
    pub has_credentials: bool,
}

/// Parses the `[Service]` section of a unit file.
pub fn parse(text: &str) -> Unit {
    let mut unit = Unit::default();
    let mut section = String::new();
    for line in logical_lines(text) {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        if section != "Service" {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "ExecStart" if value.is_empty() => unit.exec_start = None,
            "ExecStart" => {
                let cmd = value.trim_start_matches(['-', '@', ':', '+', '!']);
                unit.exec_start = Some(split_words(cmd));
            }
            "Environment" if value.is_empty() => unit.environment.clear(),
            "Environment" => {
                for word in split_words(value) {
                    if let Some((k, v)) = word.split_once('=') {
                        unit.environment.push((k.to_string(), v.to_string()));
                    }
                }
            }
            "EnvironmentFile" => unit
                .environment_files
                .push(value.trim_start_matches('-').to_string()),
            "User" => unit.user = Some(value.to_string()),
            "LoadCredential" | "LoadCredentialEncrypted" | "SetCredential" => {
                unit.has_credentials = true
            }
            _ => {}
        }
    }
    unit
}

/// Lines with `\`-continuations joined (by a space, as systemd does) and comments dropped.
fn logical_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending: Option<String> = None;
    for raw in text.lines() {
        let trimmed = raw.trim();
        if trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        let (body, continues) = match raw.strip_suffix('\\') {
            Some(b) => (b, true),
            None => (raw, false),
        };
        let joined = match pending.take() {
            Some(mut p) => {
                p.push(' ');
                p.push_str(body.trim_start());
                p
            }
            None => body.to_string(),
        };
        if continues {
            pending = Some(joined);
        } else {
            out.push(joined);
        }
    }
    out.extend(pending);
    out
}

/// Splits a command line into words: whitespace separates, `"…"` and `'…'` group,
/// `\` escapes the next character outside single quotes.
pub fn split_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('\''), c) => cur.push(c),
            (_, '\\') => {
                in_word = true;
                cur.extend(chars.next());
            }
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => {
                in_word = true;
                quote = Some(c);
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

/// Expands `${NAME}` anywhere in a word and `$NAME` as a whole word (which then splits on
/// whitespace), as systemd does for `ExecStart=`; unset variables expand to nothing.
pub fn expand(argv: &[String], env: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    for word in argv {
        if let Some(name) = word.strip_prefix('$').filter(|n| is_name(n)) {
            if let Some(v) = env.get(name) {
                out.extend(v.split_whitespace().map(str::to_string));
            }
            continue;
        }
        let mut w = String::new();
        let mut rest = word.as_str();
        while let Some(i) = rest.find('$') {
            w.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            if let Some(a) = after.strip_prefix('$') {
                w.push('$');
                rest = a;
            } else if let Some((name, tail)) =
                after.strip_prefix('{').and_then(|a| a.split_once('}'))
            {
                w.push_str(env.get(name).map(String::as_str).unwrap_or(""));
                rest = tail;
            } else {
                w.push('$');
                rest = after;
            }
        }
        w.push_str(rest);
        out.push(w);
    }
    out
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses an `EnvironmentFile=`: `KEY=VALUE` lines, `#`/`;` comments, optional quotes.
pub fn parse_env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            (k.trim().to_string(), v.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNIT: &str = "[Unit]\nDescription=etcd\n# ExecStart=/bin/false\n\n[Service]\nUser=etcd\n\
        Environment=\"ETCD_NAME=cp1\" GOMAXPROCS=2\nLoadCredential=server.key:/etc/kubernetes/pki/etcd/server.key\n\
        ExecStart=/usr/local/bin/etcd \\\n  --name=cp1 \\\n  # not a comment inside a continuation? it is dropped\n  \
        --key-file=${CREDENTIALS_DIRECTORY}/server.key \\\n  --initial-cluster \"a=https://x:2380,b=https://y:2380\"\n";

    #[test]
    fn exec_start_joins_continuations_and_keeps_quoted_words() {
        let u = parse(UNIT);
        assert_eq!(
            u.exec_start.unwrap(),
            vec![
                "/usr/local/bin/etcd",
                "--name=cp1",
                "--key-file=${CREDENTIALS_DIRECTORY}/server.key",
                "--initial-cluster",
                "a=https://x:2380,b=https://y:2380",
            ]
        );
        assert_eq!(u.user.as_deref(), Some("etcd"));
        assert!(u.has_credentials);
        assert_eq!(
            u.environment,
            vec![
                ("ETCD_NAME".to_string(), "cp1".to_string()),
                ("GOMAXPROCS".to_string(), "2".to_string())
            ]
        );
    }

    #[test]
    fn expand_resolves_braced_and_whole_word_variables() {
        let env = BTreeMap::from([
            (
                "CREDENTIALS_DIRECTORY".to_string(),
                "/run/credentials/etcd.service".to_string(),
            ),
            ("ARGS".to_string(), "--a=1 --b=2".to_string()),
        ]);
        let argv: Vec<String> = [
            "etcd",
            "--key=${CREDENTIALS_DIRECTORY}/k",
            "$ARGS",
            "${NOPE}x",
            "$$y",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            expand(&argv, &env),
            vec![
                "etcd",
                "--key=/run/credentials/etcd.service/k",
                "--a=1",
                "--b=2",
                "x",
                "$y"
            ]
        );
    }

    #[test]
    fn empty_exec_start_resets_and_prefixes_are_stripped() {
        let u = parse("[Service]\nExecStart=/bin/a\nExecStart=\nExecStart=-/bin/b --x\n");
        assert_eq!(u.exec_start.unwrap(), vec!["/bin/b", "--x"]);
    }

    #[test]
    fn env_files_parse_quotes_and_comments() {
        let e = parse_env_file("# c\nETCD_AUTO_TLS=false\nX=\"a b\"\n");
        assert_eq!(e[0], ("ETCD_AUTO_TLS".into(), "false".into()));
        assert_eq!(e[1], ("X".into(), "a b".into()));
    }
}
