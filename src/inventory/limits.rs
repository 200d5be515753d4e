//! Bounds on what an inventory may cost before it is parsed for real.
//!
//! Inventories are often generated, and YAML can be made to cost far more
//! than its size: a sequence nested 100,000 deep once took the YAML parser
//! over 20 s, and a 1 MB string anchored once and aliased 1,000 times grew to
//! 2.9 GB in memory. One linear pass over the event stream, stopping at the
//! first bound crossed, keeps every later pass bounded: the text's size, the
//! nesting depth, and how much the aliases add when expanded.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};

/// Largest inventory file: 10,000 hosts fit in a quarter of it.
pub const MAX_BYTES: usize = 4 << 20;
/// Deepest nesting of mappings and sequences (an inventory needs 6).
pub const MAX_DEPTH: usize = 64;
/// What aliases may add when expanded, in bytes of scalars (an inventory
/// needs none; anchors for shared SSH settings are a few hundred bytes).
pub const MAX_ALIAS_BYTES: u64 = 1 << 20;

/// An inventory over one of the bounds; nothing was parsed past it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitError {
    #[error("is {bytes} bytes; an inventory may be at most {MAX_BYTES} bytes")]
    TooLarge { bytes: usize },
    #[error("nests deeper than {MAX_DEPTH} levels at line {line}")]
    TooDeep { line: usize },
    #[error("aliases expand to more than {MAX_ALIAS_BYTES} bytes by line {line} (an anchor repeated too often)")]
    Aliases { line: usize },
}

/// Checks `text` against the bounds. A YAML syntax error ends the pass
/// quietly: the real parse reports it, with its location.
pub fn check(text: &str) -> Result<(), LimitError> {
    if text.len() > MAX_BYTES {
        return Err(LimitError::TooLarge { bytes: text.len() });
    }
    let mut parser = Parser::new_from_str(text);
    let mut depth = 0usize;
    // Expanded scalar bytes of each anchor, and of the anchored collections
    // still open (anchor id, bytes so far, depth it opened at).
    let mut sizes: HashMap<usize, u64> = HashMap::new();
    let mut open: Vec<(usize, u64, usize)> = Vec::new();
    let mut expanded = 0u64;
    loop {
        let (ev, mark) = match parser.next_token() {
            Ok(next) => next,
            // The scanner stops deep flow nesting itself, before emitting it.
            Err(e) if e.info().contains("recursion limit") => {
                return Err(LimitError::TooDeep {
                    line: e.marker().line(),
                })
            }
            Err(_) => return Ok(()),
        };
        let grow = |open: &mut Vec<(usize, u64, usize)>, n: u64| {
            for frame in open.iter_mut() {
                frame.1 = frame.1.saturating_add(n);
            }
        };
        match ev {
            Event::StreamEnd => return Ok(()),
            Event::Scalar(value, _, anchor, _) => {
                let n = value.len() as u64;
                grow(&mut open, n);
                if anchor > 0 {
                    sizes.insert(anchor, n);
                }
            }
            Event::Alias(id) => {
                let n = sizes.get(&id).copied().unwrap_or(0).max(1);
                expanded = expanded.saturating_add(n);
                if expanded > MAX_ALIAS_BYTES {
                    return Err(LimitError::Aliases { line: mark.line() });
                }
                grow(&mut open, n);
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(LimitError::TooDeep { line: mark.line() });
                }
                if anchor > 0 {
                    open.push((anchor, 0, depth));
                }
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if open.last().is_some_and(|f| f.2 == depth) {
                    let (anchor, bytes, _) = open.pop().expect("just checked");
                    sizes.insert(anchor, bytes);
                }
                depth = depth.saturating_sub(1);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ordinary_inventory_is_within_bounds() {
        let text = "common: &ssh {user: admin, port: 22}\nhosts:\n  - {name: a, ssh: *ssh}\n  - {name: b, ssh: *ssh}\n";
        assert_eq!(check(text), Ok(()));
        // Syntax errors are the parser's to report.
        assert_eq!(check("a: [\n"), Ok(()));
    }

    #[test]
    fn deep_nesting_stops_at_the_bound() {
        // It stops reading at level 65, whatever follows.
        let text = format!("a: {}", "[".repeat(100_000));
        assert_eq!(check(&text), Err(LimitError::TooDeep { line: 1 }));
        let block: String = (0..70)
            .map(|i| format!("{}k{i}:\n", "  ".repeat(i)))
            .collect();
        assert!(matches!(check(&block), Err(LimitError::TooDeep { .. })));
    }

    #[test]
    fn alias_expansion_is_bounded() {
        let big = "x".repeat(100_000);
        let mut text = format!("big: &a \"{big}\"\nuse: [");
        text += &vec!["*a"; 100].join(", ");
        text += "]\n";
        assert!(matches!(check(&text), Err(LimitError::Aliases { line: 2 })));
        // Nested anchors count what they expand to.
        let mut laughs = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            laughs += &format!(
                "l{i}: &l{i} [{}]\n",
                vec![
                    if i == 1 {
                        "*a".to_string()
                    } else {
                        format!("*l{}", i - 1)
                    };
                    10
                ]
                .join(", ")
            );
        }
        assert!(matches!(check(&laughs), Err(LimitError::Aliases { .. })));
    }

    #[test]
    fn size_is_bounded() {
        let text = "#".repeat(MAX_BYTES + 1);
        assert_eq!(
            check(&text),
            Err(LimitError::TooLarge {
                bytes: MAX_BYTES + 1
            })
        );
    }
}
