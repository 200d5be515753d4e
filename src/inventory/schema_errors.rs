//! Every schema problem of an inventory at once.
//!
//! serde stops at the first unknown field or wrong type, so an inventory with
//! an `adress:` typo and a `role:` typo once showed only the first. When the
//! first attempt fails, the document is read as a YAML value and
//! deserialized again and again, each time without the node that failed,
//! until it goes through or no node can be taken away: every problem found
//! on the way is reported, each with its YAML path.

use std::collections::HashMap;

use serde_yaml::Value;

use super::schema::RawInventory;

/// How many problems one inventory may report before the search stops.
const MAX: usize = 100;

/// One schema problem: its YAML path (`hosts[1].adress`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaProblem {
    pub path: String,
    pub message: String,
}

/// The schema problems of `text` beyond the first; `first` is the path of
/// the one serde already reported. Empty when the text is not a YAML value
/// (its syntax error is the whole story).
pub fn more(text: &str, first: &str) -> Vec<SchemaProblem> {
    let Ok(mut doc) = serde_yaml::from_str::<Value>(text) else {
        return Vec::new();
    };
    let mut found: Vec<SchemaProblem> = Vec::new();
    let mut removed: Vec<String> = Vec::new();
    // Sequence items taken away, by the original path of their sequence:
    // the items after them moved up, and paths must name them as written.
    let mut gone: HashMap<String, Vec<usize>> = HashMap::new();
    while found.len() < MAX {
        let err = match serde_path_to_error::deserialize::<_, RawInventory>(doc.clone()) {
            Ok(_) => break,
            Err(e) => e,
        };
        let segments: Vec<Segment> = err.path().iter().map(Segment::from).collect();
        let path = original(&segments, &gone);
        let message = clean(&err.inner().to_string());
        // A field missing because an earlier problem took its bad value away
        // is that problem again: not reported. Either way the node missing
        // it goes, and the search carries on past it.
        let echo = message.starts_with("missing field")
            && removed.iter().any(|r| r.starts_with(&format!("{path}.")));
        if !echo && path != first && !found.iter().any(|f| f.path == path && f.message == message) {
            found.push(SchemaProblem {
                path: path.clone(),
                message,
            });
        }
        if segments.is_empty() || !remove(&mut doc, &segments) {
            break;
        }
        if let Some(Segment::Index(_)) = segments.last() {
            let parent = original(&segments[..segments.len() - 1], &gone);
            let index = path
                .rsplit_once('[')
                .and_then(|(_, i)| i.trim_end_matches(']').parse().ok())
                .unwrap_or(0);
            let list = gone.entry(parent).or_default();
            list.push(index);
            list.sort_unstable();
        }
        removed.push(path);
    }
    found
}

/// The path of `segments` in the document as written: indices counted
/// with the items `gone` from before them.
fn original(segments: &[Segment], gone: &HashMap<String, Vec<usize>>) -> String {
    let mut path = String::new();
    for seg in segments {
        match seg {
            Segment::Index(i) => {
                let mut index = *i;
                for g in gone.get(&path).into_iter().flatten() {
                    if *g <= index {
                        index += 1;
                    }
                }
                path.push_str(&format!("[{index}]"));
            }
            Segment::Key(k) => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
            }
            Segment::Other => path.push_str(".?"),
        }
    }
    path
}

/// serde_yaml prefixes its own, coarser path (`hosts[0]: …`): ours is kept.
fn clean(msg: &str) -> String {
    match msg.split_once(": ") {
        Some((prefix, rest)) if !prefix.contains(char::is_whitespace) => rest.to_string(),
        _ => msg.to_string(),
    }
}

enum Segment {
    Index(usize),
    Key(String),
    Other,
}

impl From<&serde_path_to_error::Segment> for Segment {
    fn from(s: &serde_path_to_error::Segment) -> Self {
        match s {
            serde_path_to_error::Segment::Seq { index } => Segment::Index(*index),
            serde_path_to_error::Segment::Map { key } => Segment::Key(key.clone()),
            _ => Segment::Other,
        }
    }
}

/// Removes the node at `path` from `doc`; false when there is none.
fn remove(doc: &mut Value, path: &[Segment]) -> bool {
    match path {
        [] => false,
        [last] => match (last, doc) {
            (Segment::Index(i), Value::Sequence(s)) if *i < s.len() => {
                s.remove(*i);
                true
            }
            (Segment::Key(k), Value::Mapping(m)) => m.remove(k.as_str()).is_some(),
            _ => false,
        },
        [first, rest @ ..] => {
            let child = match (first, doc) {
                (Segment::Index(i), Value::Sequence(s)) => s.get_mut(*i),
                (Segment::Key(k), Value::Mapping(m)) => m.get_mut(k.as_str()),
                _ => None,
            };
            child.is_some_and(|c| remove(c, rest))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_typo_is_found_not_only_the_first() {
        let text = "cluster: {name: t, kubernetesVersion: \"1.34\", apiEndpont: x}\nhosts:\n  - name: cp1\n    adress: 10.0.0.1\n    roles: [etcd]\n  - name: cp2\n    address: 10.0.0.2\n    role: [etcd]\n    labels: [a]\n";
        let found = more(text, "cluster.apiEndpont");
        let paths: Vec<&str> = found.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            ["hosts[0].adress", "hosts[1].role", "hosts[1].labels"],
            "{found:?}"
        );
        assert!(
            found[0].message.starts_with("unknown field `adress`"),
            "{found:?}"
        );
        assert!(found[2].message.starts_with("invalid type"), "{found:?}");
    }
}
