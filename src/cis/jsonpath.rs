//! The subset of Kubernetes jsonpath (client-go `util/jsonpath`, missing keys allowed) that
//! kube-bench's config tests use: `{.a.b.c}`, `{.list[*]}`, `{.list[0]}` and
//! `{range .list[:]}{}{','}{end}`, printed the way Go's `fmt.Fprint` prints values.

use serde_yaml::Value;

/// A parsed template piece.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Text(String),
    /// `{.a.b}`; empty steps = the current value (`{}` or `{@}`).
    Field(Vec<Step>),
    Range(Vec<Step>, Vec<Node>),
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    /// `[*]` or `[:]`.
    All,
    Index(usize),
}

/// Evaluates `template` against `doc`; missing keys print nothing.
pub fn execute(template: &str, doc: &Value) -> Result<String, String> {
    let nodes = parse(template)?;
    let mut out = String::new();
    run(&nodes, doc, &mut out);
    Ok(out)
}

fn parse(template: &str) -> Result<Vec<Node>, String> {
    let mut stack: Vec<(Vec<Step>, Vec<Node>)> = Vec::new();
    let mut current: Vec<Node> = Vec::new();
    let mut rest = template;
    while !rest.is_empty() {
        let Some(open) = rest.find('{') else {
            current.push(Node::Text(rest.to_string()));
            break;
        };
        if open > 0 {
            current.push(Node::Text(rest[..open].to_string()));
        }
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("unclosed action in {template:?}"))?
            + open;
        let action = rest[open + 1..close].trim();
        rest = &rest[close + 1..];
        if let Some(path) = action.strip_prefix("range ") {
            stack.push((steps(path.trim())?, std::mem::take(&mut current)));
        } else if action == "end" {
            let (steps, outer) = stack.pop().ok_or("{end} without {range}")?;
            let body = std::mem::replace(&mut current, outer);
            current.push(Node::Range(steps, body));
        } else if let Some(lit) = action
            .strip_prefix('\'')
            .and_then(|a| a.strip_suffix('\''))
            .or_else(|| action.strip_prefix('"').and_then(|a| a.strip_suffix('"')))
        {
            current.push(Node::Text(lit.to_string()));
        } else {
            current.push(Node::Field(steps(action)?));
        }
    }
    if !stack.is_empty() {
        return Err(format!("{{range}} without {{end}} in {template:?}"));
    }
    Ok(current)
}

fn steps(path: &str) -> Result<Vec<Step>, String> {
    let path = path.strip_prefix('@').unwrap_or(path);
    let path = path.strip_prefix('$').unwrap_or(path);
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, mut subs) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Step::Key(key.to_string()));
        }
        while let Some(s) = subs.strip_prefix('[') {
            let end = s
                .find(']')
                .ok_or_else(|| format!("unclosed [ in {path:?}"))?;
            let inner = &s[..end];
            out.push(match inner {
                "*" | ":" => Step::All,
                n => Step::Index(
                    n.parse()
                        .map_err(|_| format!("unsupported subscript [{n}] in {path:?}"))?,
                ),
            });
            subs = &s[end + 1..];
        }
    }
    Ok(out)
}

/// All values a path selects from `v` (several after `[*]`).
fn select<'a>(steps: &[Step], v: &'a Value) -> Vec<&'a Value> {
    let mut cur = vec![v];
    for step in steps {
        let mut next = Vec::new();
        for v in cur {
            match (step, v) {
                (Step::Key(k), Value::Mapping(m)) => next.extend(m.get(k.as_str())),
                (Step::All, Value::Sequence(s)) => next.extend(s.iter()),
                (Step::Index(i), Value::Sequence(s)) => next.extend(s.get(*i)),
                _ => {}
            }
        }
        cur = next;
    }
    cur
}

fn run(nodes: &[Node], v: &Value, out: &mut String) {
    for node in nodes {
        match node {
            Node::Text(t) => out.push_str(t),
            Node::Field(steps) => {
                let vals = select(steps, v);
                let printed: Vec<String> = vals.into_iter().filter_map(go_print).collect();
                out.push_str(&printed.join(" "));
            }
            Node::Range(steps, body) => {
                for item in select(steps, v) {
                    match item {
                        Value::Sequence(s) => s.iter().for_each(|e| run(body, e, out)),
                        other => run(body, other, out),
                    }
                }
            }
        }
    }
}

/// A value as Go's `fmt.Fprint` prints what yaml.v2 decoded; `None` for null.
fn go_print(v: &Value) -> Option<String> {
    Some(match v {
        Value::Null => return None,
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) => go_float(f),
            _ => n.to_string(),
        },
        Value::String(s) => s.clone(),
        Value::Sequence(s) => {
            let items: Vec<String> = s.iter().map(|e| go_print(e).unwrap_or_default()).collect();
            format!("[{}]", items.join(" "))
        }
        Value::Mapping(m) => {
            let mut items: Vec<String> = m
                .iter()
                .map(|(k, v)| {
                    let k = go_print(k).unwrap_or_default();
                    format!("{k}:{}", go_print(v).unwrap_or_else(|| "<nil>".into()))
                })
                .collect();
            items.sort();
            format!("map[{}]", items.join(" "))
        }
        Value::Tagged(t) => return go_print(&t.value),
    })
}

/// Go's `%v` for float64: shortest form, exponent from 1e21 up (and for tiny values).
fn go_float(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e21 {
        format!("{f:.0}")
    } else {
        format!("{f}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(y: &str) -> Value {
        serde_yaml::from_str(y).unwrap()
    }

    #[test]
    fn dotted_paths_print_scalars_like_go() {
        let d = doc("authentication:\n  anonymous:\n    enabled: false\nreadOnlyPort: 0\nqps: 5.5\nname: x\n");
        assert_eq!(
            execute("{.authentication.anonymous.enabled}", &d).unwrap(),
            "false"
        );
        assert_eq!(execute("{.readOnlyPort}", &d).unwrap(), "0");
        assert_eq!(execute("{.qps}", &d).unwrap(), "5.5");
        assert_eq!(execute("{.name}", &d).unwrap(), "x");
    }

    #[test]
    fn missing_keys_print_nothing() {
        let d = doc("a: {}\n");
        assert_eq!(execute("{.a.b.c}", &d).unwrap(), "");
        assert_eq!(execute("{.x[0]}", &d).unwrap(), "");
    }

    #[test]
    fn range_joins_with_trailing_separator() {
        let d = doc("tlsCipherSuites: [A, B]\n");
        let t = "{range .tlsCipherSuites[:]}{}{','}{end}";
        assert_eq!(execute(t, &d).unwrap(), "A,B,");
        assert_eq!(execute(t, &doc("x: 1\n")).unwrap(), "");
    }

    #[test]
    fn lists_and_maps_print_like_fmt() {
        let d = doc("l: [a, b]\nm: {b: 2, a: 1}\n");
        assert_eq!(execute("{.l}", &d).unwrap(), "[a b]");
        assert_eq!(execute("{.l[*]}", &d).unwrap(), "a b");
        assert_eq!(execute("{.m}", &d).unwrap(), "map[a:1 b:2]");
    }

    #[test]
    fn malformed_templates_are_errors() {
        assert!(execute("{range .a}", &doc("a: 1")).is_err());
        assert!(execute("{.a", &doc("a: 1")).is_err());
    }
}
