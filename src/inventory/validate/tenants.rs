//! The `tenants` list: namespaces with quota, container limits, network policy
//! switches and RBAC members.

use std::collections::BTreeMap;

use super::{is_dns_label, Problems};
use crate::inventory::model::*;
use crate::inventory::schema::*;

pub(super) fn tenants(raw: &[RawTenant], p: &mut Problems) -> Vec<Tenant> {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    raw.iter()
        .enumerate()
        .map(|(i, t)| {
            let at = format!("tenants[{i}]");
            namespace(&t.namespace, &at, p);
            if let Some(first) = seen.insert(&t.namespace, i) {
                p.error(
                    format!("{at}.namespace"),
                    format!("duplicate tenant `{}` (also tenants[{first}])", t.namespace),
                );
            }
            let n = t.network.clone().unwrap_or_default();
            Tenant {
                namespace: t.namespace.clone(),
                quota: quota(t.quota.clone().unwrap_or_default(), &at, p),
                limits: limits(t.limits.clone().unwrap_or_default(), &at, p),
                allow_dns: n.allow_dns.unwrap_or(true),
                allow_same_namespace: n.allow_same_namespace.unwrap_or(false),
                members: members(&t.members, &at, p),
            }
        })
        .collect()
}

fn namespace(ns: &str, at: &str, p: &mut Problems) {
    if !is_dns_label(ns) {
        p.error(
            format!("{at}.namespace"),
            format!("`{ns}` is not a valid namespace name: use lowercase letters, digits and '-' (at most 63)"),
        );
    } else if ns.starts_with("kube-") || ns == "default" {
        p.error(
            format!("{at}.namespace"),
            format!("`{ns}` is a system namespace, not a tenant; pick another name"),
        );
    }
}

fn members(raw: &[RawMember], at: &str, p: &mut Problems) -> Vec<Member> {
    let mut seen: Vec<Subject> = Vec::new();
    raw.iter()
        .enumerate()
        .filter_map(|(j, m)| {
            let at = format!("{at}.members[{j}]");
            let member = member(m, &at, p)?;
            if seen.contains(&member.subject) {
                p.error(
                    at,
                    "this user or group is already a member of the tenant: give each one role",
                );
                return None;
            }
            seen.push(member.subject.clone());
            Some(member)
        })
        .collect()
}

fn member(m: &RawMember, at: &str, p: &mut Problems) -> Option<Member> {
    let role = match m.role.as_str() {
        "admin" => Some(TenantRole::Admin),
        "edit" => Some(TenantRole::Edit),
        "view" => Some(TenantRole::View),
        other => {
            p.error(
                format!("{at}.role"),
                format!("unknown tenant role `{other}` (expected admin, edit or view)"),
            );
            None
        }
    };
    let subject = match (&m.user, &m.group) {
        (Some(u), None) => Some(Subject::User(u.clone())),
        (None, Some(g)) => Some(Subject::Group(g.clone())),
        _ => {
            p.error(at, "give exactly one of `user` or `group`");
            None
        }
    };
    if let Some(Subject::Group(name) | Subject::User(name)) = &subject {
        if name.trim().is_empty() {
            p.error(at, "the user or group name is empty");
            return None;
        }
        // Names go into certificates, RoleBindings and kubeconfigs: no
        // control characters, and no blanks around them (" system:masters"
        // would slip past the check below and read the same in a listing).
        if name.trim() != name || name.chars().any(char::is_control) || name.len() > 253 {
            p.error(
                at,
                format!(
                    "`{}` is not a usable name: no control characters, no spaces at either end, at most 253 bytes",
                    name
                ),
            );
            return None;
        }
        if name.starts_with("system:") {
            p.error(
                at,
                format!("`{name}` is reserved for Kubernetes itself; name a person or a team"),
            );
        }
    }
    Some(Member {
        subject: subject?,
        role: role?,
    })
}

fn quota(q: RawQuota, at: &str, p: &mut Problems) -> Quota {
    let at = format!("{at}.quota");
    let quota = Quota {
        requests_cpu: q.requests_cpu.unwrap_or_else(|| "4".into()),
        requests_memory: q.requests_memory.unwrap_or_else(|| "8Gi".into()),
        limits_cpu: q.limits_cpu.unwrap_or_else(|| "8".into()),
        limits_memory: q.limits_memory.unwrap_or_else(|| "16Gi".into()),
        pods: q.pods.unwrap_or(50),
    };
    if quota.pods == 0 {
        p.error(
            format!("{at}.pods"),
            "0 pods leaves the tenant unusable; give at least 1",
        );
    }
    ordered(
        p,
        &at,
        &[
            ("requestsCpu", &quota.requests_cpu),
            ("limitsCpu", &quota.limits_cpu),
        ],
    );
    ordered(
        p,
        &at,
        &[
            ("requestsMemory", &quota.requests_memory),
            ("limitsMemory", &quota.limits_memory),
        ],
    );
    quota
}

fn limits(l: RawLimits, at: &str, p: &mut Problems) -> Limits {
    let at = format!("{at}.limits");
    let limits = Limits {
        default_cpu: l.default_cpu.unwrap_or_else(|| "500m".into()),
        default_memory: l.default_memory.unwrap_or_else(|| "512Mi".into()),
        default_request_cpu: l.default_request_cpu.unwrap_or_else(|| "100m".into()),
        default_request_memory: l.default_request_memory.unwrap_or_else(|| "128Mi".into()),
        max_cpu: l.max_cpu.unwrap_or_else(|| "2".into()),
        max_memory: l.max_memory.unwrap_or_else(|| "4Gi".into()),
    };
    ordered(
        p,
        &at,
        &[
            ("defaultRequestCpu", &limits.default_request_cpu),
            ("defaultCpu", &limits.default_cpu),
            ("maxCpu", &limits.max_cpu),
        ],
    );
    ordered(
        p,
        &at,
        &[
            ("defaultRequestMemory", &limits.default_request_memory),
            ("defaultMemory", &limits.default_memory),
            ("maxMemory", &limits.max_memory),
        ],
    );
    limits
}

/// Each quantity parses, and each is no larger than the next (request ≤ limit ≤ max):
/// Kubernetes would reject the object otherwise, long after rampart ran.
fn ordered(p: &mut Problems, at: &str, fields: &[(&str, &String)]) {
    let values: Vec<Option<f64>> = fields
        .iter()
        .map(|(field, s)| {
            let v = quantity(s);
            if v.is_none() {
                p.error(
                    format!("{at}.{field}"),
                    format!("`{s}` is not a Kubernetes quantity (e.g. 500m, 2, 512Mi, 4Gi)"),
                );
            }
            v
        })
        .collect();
    for i in 1..fields.len() {
        if let (Some(a), Some(b)) = (values[i - 1], values[i]) {
            if a > b {
                let ((fa, va), (fb, vb)) = (fields[i - 1], fields[i]);
                p.error(
                    format!("{at}.{fa}"),
                    format!("{va} is more than {fb} ({vb})"),
                );
            }
        }
    }
}

/// A non-negative Kubernetes resource quantity (`100m`, `1.5`, `512Mi`, `1e3`), as a number.
pub(super) fn quantity(s: &str) -> Option<f64> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return None;
    }
    let n: f64 = number.parse().ok()?;
    let multiplier = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp => {
            let e: i32 = exp.strip_prefix(['e', 'E'])?.parse().ok()?;
            10f64.powi(e)
        }
    };
    Some(n * multiplier)
}

#[cfg(test)]
mod tests {
    use super::quantity;

    #[test]
    fn quantities() {
        assert_eq!(quantity("500m"), Some(0.5));
        assert_eq!(quantity("2"), Some(2.0));
        assert_eq!(quantity("1.5Gi"), Some(1.5 * 1024.0 * 1024.0 * 1024.0));
        assert_eq!(quantity("1e3"), Some(1000.0));
        assert_eq!(quantity("512MB"), None);
        assert_eq!(quantity("-1"), None);
        assert_eq!(quantity(""), None);
        assert_eq!(quantity("1.2.3"), None);
    }
}
