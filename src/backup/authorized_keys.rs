//! The backup target's `authorized_keys` line for one member's push key: the
//! key may run `rampart agent receive` for that member and nothing else.

use super::RetentionPolicy;
use crate::remote::script::quote;

/// The target's `authorized_keys` line for one member's push key:
///
/// `restrict,command="<rampart> agent receive --cluster C --member M --dir D [--keep N] [--max-age-days N]" <key> rampart-backup-push:C/M`
///
/// `restrict` takes away forwarding, ptys and the rest; the forced command
/// replaces whatever the client asks to run. Each word is shell-quoted (sshd
/// runs the command with the user's shell) and then `"` is escaped as `\"`
/// for the option's quotes, the only escape sshd knows there. Of the key,
/// only its type and base64 blob are kept (its comment is replaced).
///
/// # Panics
/// When an argument holds a control character (a newline would end the line
/// and start another, unrestricted one) or `public_key` does not start with
/// a key type and a base64 blob (options in front of it would be read as the
/// key): inventory validation and key generation rule both out.
pub fn authorized_keys_line(
    rampart: &str,
    cluster: &str,
    member: &str,
    dir: &str,
    retention: &RetentionPolicy,
    public_key: &str,
) -> Result<String, String> {
    for (what, v) in [
        ("rampart", rampart),
        ("cluster", cluster),
        ("member", member),
        ("dir", dir),
        ("public key", public_key),
    ] {
        if v.chars().any(char::is_control) {
            return Err(format!(
                "the {what} {v:?} of an authorized_keys line holds a control character"
            ));
        }
    }
    let Some((kind, blob)) = key_fields(public_key) else {
        return Err(format!(
            "push key {public_key:?} is not an OpenSSH public key line (`type base64 [comment]`)"
        ));
    };
    let mut words: Vec<String> = [
        rampart,
        "agent",
        "receive",
        "--cluster",
        cluster,
        "--member",
        member,
        "--dir",
        dir,
    ]
    .iter()
    .map(|w| w.to_string())
    .collect();
    if let Some(n) = retention.count {
        words.extend(["--keep".into(), n.to_string()]);
    }
    if let Some(n) = retention.max_age_days {
        words.extend(["--max-age-days".into(), n.to_string()]);
    }
    let command = words.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" ");
    Ok(format!(
        "restrict,command=\"{}\" {kind} {blob} rampart-backup-push:{cluster}/{member}",
        command.replace('"', "\\\"")
    ))
}

/// The type and blob of `type base64 [comment]`, by their shape alone: that
/// is what keeps the line one option list, one key and one comment. Whether
/// the key is a valid one is for sshd to say (and rampart generated it).
fn key_fields(public_key: &str) -> Option<(&str, &str)> {
    let mut fields = public_key.split_whitespace();
    let (kind, blob) = (fields.next()?, fields.next()?);
    let kind_ok = kind
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-@.".contains(&b));
    let blob_ok = blob
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
    (kind_ok && blob_ok).then_some((kind, blob))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAemfYYiosEQp2ulnyRc1kBtVdYZEgJGQsMSm+IR6reH";

    fn keep(count: Option<u32>, max_age_days: Option<u32>) -> RetentionPolicy {
        RetentionPolicy {
            count,
            max_age_days,
        }
    }

    #[test]
    fn plain_names_give_a_plain_line() {
        let line = authorized_keys_line(
            "/usr/local/bin/rampart",
            "prod",
            "cp1",
            "/var/backups/rampart",
            &keep(Some(14), Some(30)),
            &format!("{KEY} root@admin"),
        )
        .unwrap();
        assert_eq!(
            line,
            format!(
                "restrict,command=\"/usr/local/bin/rampart agent receive --cluster prod --member cp1 \
                 --dir /var/backups/rampart --keep 14 --max-age-days 30\" {KEY} rampart-backup-push:prod/cp1"
            )
        );
        let line = authorized_keys_line("/r", "c", "m", "/d", &keep(None, None), KEY).unwrap();
        assert!(
            line.starts_with(
                "restrict,command=\"/r agent receive --cluster c --member m --dir /d\" "
            ),
            "{line}"
        );
        let line = authorized_keys_line("/r", "c", "m", "/d", &keep(None, Some(7)), KEY).unwrap();
        assert!(line.contains("--dir /d --max-age-days 7\" "), "{line}");
    }

    /// sshd's reading of a quoted option (`opt_dequote` in auth-options.c):
    /// `\"` is a quote, every other backslash is itself.
    fn sshd_dequote(s: &str) -> (String, &str) {
        let body = s.strip_prefix('"').expect("opening quote");
        let mut out = String::new();
        let mut chars = body.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' if chars.peek().map(|&(_, n)| n) == Some('"') => {
                    chars.next();
                    out.push('"');
                }
                '"' => return (out, &body[i + 1..]),
                c => out.push(c),
            }
        }
        panic!("no closing quote in {s}");
    }

    #[test]
    fn awkward_words_survive_sshd_and_the_shell() {
        let dir = r#"/srv/my backups/"q" \ $HOME `id` 'x'\"#;
        let member = r#"cp"1\"#;
        let line = authorized_keys_line(
            "/opt/ram part",
            "prod",
            member,
            dir,
            &keep(Some(3), None),
            KEY,
        )
        .unwrap();
        let rest = line.strip_prefix("restrict,command=").unwrap();
        let (command, tail) = sshd_dequote(rest);
        assert_eq!(
            tail,
            format!(" {KEY} rampart-backup-push:prod/{member}"),
            "{line}"
        );
        let words = shlex::split(&command).expect("the shell can parse it");
        assert_eq!(
            words,
            [
                "/opt/ram part",
                "agent",
                "receive",
                "--cluster",
                "prod",
                "--member",
                member,
                "--dir",
                dir,
                "--keep",
                "3"
            ]
        );
    }

    #[test]
    fn a_newline_cannot_start_a_second_line() {
        let err = authorized_keys_line(
            "/r",
            "prod",
            &format!("cp1\n{KEY} evil"),
            "/d",
            &keep(None, None),
            KEY,
        )
        .unwrap_err();
        assert!(err.contains("control character"), "{err}");
    }

    #[test]
    fn a_key_line_is_taken_by_its_shape() {
        assert_eq!(key_fields(&format!("{KEY} root@admin")), key_fields(KEY));
        assert_eq!(
            key_fields("ssh-ed25519 AAAAFAKEcp1"),
            Some(("ssh-ed25519", "AAAAFAKEcp1"))
        );
        for bad in [
            "",
            "ssh-ed25519",
            "restrict ssh-ed25519 AAAA",
            "command=\"sh\" ssh-ed25519 AAAA",
            "ssh-ed25519 AAAA\"x",
        ] {
            assert_eq!(key_fields(bad), None, "{bad}");
        }
    }

    #[test]
    fn options_in_front_of_the_key_are_refused() {
        let key = format!("no-restrict,command=\"sh\" {KEY}");
        let err = authorized_keys_line("/r", "c", "m", "/d", &keep(None, None), &key).unwrap_err();
        assert!(err.contains("not an OpenSSH public key line"), "{err}");
    }
}
