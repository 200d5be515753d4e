//! Maps YAML paths (`hosts[2].address`) to line numbers in the source text.
//!
//! serde gives us typed values but forgets where they came from; this index
//! walks the same text once with yaml-rust2's marked events so every problem
//! can name its line.

use std::collections::HashMap;

/// Line (1-based) of every mapping key and sequence item, by YAML path.
#[derive(Debug, Default)]
pub struct PositionIndex {
    lines: HashMap<String, usize>,
}

impl PositionIndex {
    /// Builds the index; text that does not parse gives an empty index.
    pub fn new(_text: &str) -> Self {
        // Filled in by the inventory work: see docs/inventory.md.
        PositionIndex::default()
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
