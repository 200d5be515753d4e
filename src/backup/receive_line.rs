//! TEMPORARY: replaced by the receiver module's `authorized_keys_line`.
use super::RetentionPolicy;

pub fn authorized_keys_line(
    rampart: &str,
    cluster: &str,
    member: &str,
    dir: &str,
    retention: &RetentionPolicy,
    public_key: &str,
) -> String {
    let mut cmd =
        format!("{rampart} agent receive --cluster {cluster} --member {member} --dir {dir}");
    if let Some(n) = retention.count {
        cmd.push_str(&format!(" --keep {n}"));
    }
    if let Some(d) = retention.max_age_days {
        cmd.push_str(&format!(" --max-age-days {d}"));
    }
    let key: Vec<&str> = public_key.split_whitespace().take(2).collect();
    format!(
        "restrict,command=\"{cmd}\" {} rampart-backup-push:{cluster}/{member}",
        key.join(" ")
    )
}
