//! Maps YAML paths (`hosts[2].address`) to line numbers in the source text.
//!
//! serde gives us typed values but forgets where they came from; this index
//! walks the same text once with yaml-rust2's marked events so every problem
//! can name its line. Paths use the syntax of [`super::Problem::path`]:
//! mapping keys joined with `.`, sequence items as `[i]`.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Line (1-based) of every mapping key and sequence item, by YAML path.
#[derive(Debug, Default)]
pub struct PositionIndex {
    lines: HashMap<String, usize>,
    /// Keys given twice in one mapping (path, line of the second): YAML
    /// keeps one silently, so an inventory with them is refused.
    pub duplicates: Vec<(String, usize)>,
}

impl PositionIndex {
    /// Builds the index; text that does not parse gives the part read before the error.
    pub fn new(text: &str) -> Self {
        let mut walker = Walker::default();
        // A syntax error is reported by serde with its own location; the partial
        // index is still useful, so the error is deliberately dropped here.
        let _ = Parser::new_from_str(text).load(&mut walker, false);
        PositionIndex {
            lines: walker.lines,
            duplicates: walker.duplicates,
        }
    }

    /// The line of `path`, or of its nearest ancestor that has one.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(l) = self.lines.get(p) {
                return Some(*l);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

/// An open collection while walking the event stream.
enum Frame {
    Mapping {
        path: String,
        /// The path of the value that comes next, once its key has been read.
        pending_value: Option<String>,
    },
    Sequence {
        path: String,
        next: usize,
    },
}

#[derive(Default)]
struct Walker {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
    duplicates: Vec<(String, usize)>,
}

impl Walker {
    /// Where a node that starts now sits, recording its line when it is a key or an item.
    /// Returns `None` for a mapping key (a key names a path, it has no path of its own).
    fn place(&mut self, key_text: Option<&str>, line: usize) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Sequence { path, next }) => {
                let item = format!("{path}[{next}]");
                *next += 1;
                self.lines.entry(item.clone()).or_insert(line);
                Some(item)
            }
            Some(Frame::Mapping {
                path,
                pending_value,
            }) => match pending_value.take() {
                Some(value_path) => Some(value_path),
                None => {
                    // Complex (non-scalar) keys never occur in an inventory; give them a
                    // placeholder so the walk stays in step.
                    let key = key_text.unwrap_or("?");
                    let key_path = if path.is_empty() {
                        key.to_string()
                    } else {
                        format!("{path}.{key}")
                    };
                    // Paths are absolute: one seen before is this mapping's key again.
                    if key_text.is_some() && self.lines.contains_key(&key_path) {
                        self.duplicates.push((key_path.clone(), line));
                    }
                    self.lines.entry(key_path.clone()).or_insert(line);
                    *pending_value = Some(key_path);
                    None
                }
            },
        }
    }

    /// A collection starting as a key gets a throwaway path; its value follows it.
    fn open(&mut self, line: usize, make: impl FnOnce(String) -> Frame) {
        let path = self.place(None, line).unwrap_or_else(|| "?".to_string());
        self.stack.push(make(path));
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::Scalar(text, ..) => {
                self.place(Some(&text), line);
            }
            Event::Alias(_) => {
                self.place(Some("*alias"), line);
            }
            Event::MappingStart(..) => self.open(line, |path| Frame::Mapping {
                path,
                pending_value: None,
            }),
            Event::SequenceStart(..) => self.open(line, |path| Frame::Sequence { path, next: 0 }),
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
cluster:
  name: demo
  apiEndpoint: 10.0.0.10:6443
hosts:
  - name: cp1
    address: 10.0.0.11
    roles: [etcd, control-plane]
  - name: cp2
    address: 10.0.0.12
    roles:
      - etcd
      - control-plane
    ssh:
      identityFile: ~/.ssh/id
  -
    name: w1
binaries:
  sha256:
    kubelet: abc
";

    #[test]
    fn keys_are_located_at_their_key() {
        let idx = PositionIndex::new(TEXT);
        assert_eq!(idx.line_of("cluster"), Some(1));
        assert_eq!(idx.line_of("cluster.apiEndpoint"), Some(3));
        assert_eq!(idx.line_of("hosts"), Some(4));
        assert_eq!(idx.line_of("binaries.sha256.kubelet"), Some(19));
    }

    #[test]
    fn sequence_items_are_located_at_the_item() {
        let idx = PositionIndex::new(TEXT);
        assert_eq!(idx.line_of("hosts[0]"), Some(5));
        assert_eq!(idx.line_of("hosts[1]"), Some(8));
        assert_eq!(idx.line_of("hosts[1].roles[1]"), Some(12));
        assert_eq!(idx.line_of("hosts[1].ssh.identityFile"), Some(14));
        assert_eq!(idx.line_of("hosts[0].roles[1]"), Some(7));
        // An item whose content starts on the next line is located at its content.
        assert_eq!(idx.line_of("hosts[2].name"), Some(16));
    }

    #[test]
    fn missing_paths_fall_back_to_the_nearest_ancestor() {
        let idx = PositionIndex::new(TEXT);
        assert_eq!(idx.line_of("hosts[1].ssh.port"), Some(13));
        assert_eq!(idx.line_of("hosts[0].labels.zone"), Some(5));
        assert_eq!(idx.line_of("security.tls"), None);
    }

    #[test]
    fn flow_mappings_and_nested_sequences_are_walked() {
        let idx = PositionIndex::new("a: {b: 1, c: [x, {d: 2}]}\ne:\n- - f\n");
        assert_eq!(idx.line_of("a.c[1].d"), Some(1));
        assert_eq!(idx.line_of("e"), Some(2));
        assert_eq!(idx.line_of("e[0][0]"), Some(3));
    }

    #[test]
    fn duplicate_keys_are_found_at_every_level() {
        let idx = PositionIndex::new(
            "a: 1\nb:\n  x: 1\n  x: 2\na: 3\nl:\n  - {k: 1, k: 2}\n  - {k: 1}\n",
        );
        assert_eq!(
            idx.duplicates,
            [
                ("b.x".to_string(), 4),
                ("a".to_string(), 5),
                ("l[0].k".to_string(), 7)
            ]
        );
    }

    #[test]
    fn bad_yaml_keeps_what_was_read() {
        let idx = PositionIndex::new("a: 1\nb: [\n");
        assert_eq!(idx.line_of("a"), Some(1));
    }
}
