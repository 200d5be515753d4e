//! The library's modules import each other in one direction only: no two
//! sibling modules (at any depth) reach each other, directly or round a
//! longer loop. A child may use its parent's items and a parent its
//! children's; anything else between two modules is an edge between the
//! siblings that contain them, and those edges must form no cycle.
//!
//! Read from the source text (comments dropped): `crate::a::b` and
//! `super::x` paths, `use` groups included. It once found `render` ↔
//! `backup`, `pki::init` ↔ `pki::material` and `backup::signals` ↔
//! `backup::snapshot`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

/// Every library source file and its module path (`src/a/b.rs` → a::b).
fn modules(src: &Path) -> BTreeMap<Module, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap();
            let mut parts: Vec<String> = rel
                .iter()
                .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
                .collect();
            // The binary's own crate: `crate::` means something else there.
            if parts[0] == "main" || parts[0] == "cli" {
                continue;
            }
            if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
                parts.pop();
            }
            out.insert(parts, path);
        }
    }
    out
}

/// The code without comments (doc links name modules they do not import).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path the code names from `crate::` or `super::`, as segments
/// relative to the crate root; `use` groups are expanded one level deep
/// (`use super::{a, b::c}` → super::a, super::b::c).
fn paths(module: &Module, is_mod_rs: bool, code: &str) -> Vec<Module> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let ident = |i: usize| -> (String, usize) {
        let mut j = i;
        while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_') {
            j += 1;
        }
        (code[i..j].to_string(), j)
    };
    for (start, root) in [("crate::", None), ("super::", Some(()))] {
        let mut from = 0;
        while let Some(pos) = code[from..].find(start) {
            let at = from + pos;
            from = at + start.len();
            if at > 0
                && (bytes[at - 1].is_ascii_alphanumeric()
                    || bytes[at - 1] == b'_'
                    || bytes[at - 1] == b':')
            {
                continue;
            }
            // The base: the crate root, or the parent (a mod.rs file is its
            // module, so its `super` is one level up from the module).
            let mut base: Module = if root.is_none() {
                Vec::new()
            } else {
                let mut m = module.clone();
                let _ = is_mod_rs;
                m.pop();
                m
            };
            let mut i = from;
            // Further `super::` hops.
            while root.is_some() && code[i..].starts_with("super::") {
                base.pop();
                i += "super::".len();
            }
            let mut segs = base.clone();
            loop {
                if code[i..].starts_with('{') {
                    // A group: each item, one level.
                    let end = code[i..].find('}').map_or(code.len(), |e| i + e);
                    for item in code[i + 1..end].split(',') {
                        let item = item.trim();
                        let mut s = segs.clone();
                        s.extend(
                            item.split("::")
                                .map(|p| p.trim().trim_start_matches('{').to_string())
                                .take_while(|p| {
                                    !p.is_empty()
                                        && p.chars().all(|c| c.is_alphanumeric() || c == '_')
                                }),
                        );
                        out.push(s);
                    }
                    break;
                }
                let (name, j) = ident(i);
                if name.is_empty() {
                    out.push(segs.clone());
                    break;
                }
                segs.push(name);
                if code[j..].starts_with("::") {
                    i = j + 2;
                } else {
                    out.push(segs.clone());
                    break;
                }
            }
        }
    }
    out
}

/// The longest prefix of `path` that is a module.
fn resolve(path: &Module, known: &BTreeMap<Module, PathBuf>) -> Module {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| known.contains_key(p))
        .unwrap_or_default()
}

#[test]
fn sibling_modules_never_import_each_other_in_a_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let known = modules(&src);
    // (from sibling, to sibling) → one file-level example.
    let mut edges: BTreeMap<(Module, Module), String> = BTreeMap::new();
    for (module, file) in &known {
        let text = code(&std::fs::read_to_string(file).unwrap());
        let is_mod_rs = file.ends_with("mod.rs");
        for p in paths(module, is_mod_rs, &text) {
            let target = resolve(&p, &known);
            let common = module
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            // Parent and child may use each other's items.
            if common == module.len() || common == target.len() {
                continue;
            }
            let from = module[..=common].to_vec();
            let to = target[..=common].to_vec();
            edges
                .entry((from, to))
                .or_insert_with(|| format!("{} uses {}", module.join("::"), p.join("::")));
        }
    }
    // A cycle: some edge (a, b) with a path back from b to a.
    let mut next: BTreeMap<&Module, BTreeSet<&Module>> = BTreeMap::new();
    for (a, b) in edges.keys() {
        next.entry(a).or_default().insert(b);
    }
    let mut cycles = Vec::new();
    for ((a, b), why) in &edges {
        let mut seen = BTreeSet::new();
        let mut stack = vec![b];
        let mut back = None;
        while let Some(m) = stack.pop() {
            if m == a {
                back = Some(());
                break;
            }
            if seen.insert(m) {
                stack.extend(next.get(m).into_iter().flatten().copied());
            }
        }
        if back.is_some() {
            cycles.push(format!("{} -> {}: {why}", a.join("::"), b.join("::")));
        }
    }
    assert!(
        cycles.is_empty(),
        "modules in a circle:\n{}",
        cycles.join("\n")
    );
    // The check sees the whole library.
    assert!(known.len() > 80, "{} modules", known.len());
    assert!(edges.len() > 50, "{} edges", edges.len());
}
