//! A small YAML emitter for rendered resources. It quotes every string that a YAML 1.1 parser
//! (such as the one behind `kubectl`) could read as something else — `yes`, `on`, `null`,
//! `0755`, `1e3`, a leading `*` — which general-purpose emitters written for YAML 1.2 leave bare.
//! Output is deterministic: keys in the order of the (sorted) JSON maps.

use serde_json::Value;

/// Multi-document YAML, each document introduced by `---`.
pub fn documents(docs: &[Value]) -> String {
    let mut out = String::new();
    for d in docs {
        out.push_str("---\n");
        node(d, 0, &mut out);
    }
    out
}

fn pad(n: usize, out: &mut String) {
    out.extend(std::iter::repeat_n(' ', n));
}

/// Writes `v` as the value of a block at `indent` (the caller already wrote the line prefix for
/// scalars and empty containers).
fn node(v: &Value, indent: usize, out: &mut String) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                pad(indent, out);
                entry(k, x, indent, out);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for x in a {
                pad(indent, out);
                item(x, indent, out);
            }
        }
        _ => {
            out.push_str(&scalar(v));
            out.push('\n');
        }
    }
}

/// `key: value` with the key already indented.
fn entry(k: &str, x: &Value, indent: usize, out: &mut String) {
    out.push_str(&string(k));
    out.push(':');
    match x {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            node(x, indent + 2, out);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            node(x, indent, out);
        }
        _ => {
            out.push(' ');
            out.push_str(&scalar(x));
            out.push('\n');
        }
    }
}

/// `- value` with the dash already indented.
fn item(x: &Value, indent: usize, out: &mut String) {
    out.push_str("- ");
    match x {
        Value::Object(m) if !m.is_empty() => {
            for (i, (k, y)) in m.iter().enumerate() {
                if i > 0 {
                    pad(indent + 2, out);
                }
                entry(k, y, indent + 2, out);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for (i, y) in a.iter().enumerate() {
                if i > 0 {
                    pad(indent + 2, out);
                }
                item(y, indent + 2, out);
            }
        }
        _ => {
            out.push_str(&scalar(x));
            out.push('\n');
        }
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => string(s),
        Value::Array(_) => "[]".into(),
        Value::Object(_) => "{}".into(),
    }
}

/// A string, bare when no YAML 1.1 or 1.2 parser could read it as anything else.
fn string(s: &str) -> String {
    const WORDS: [&str; 14] = [
        "y", "n", "yes", "no", "true", "false", "on", "off", "null", "~", "nan", "inf", ".nan",
        ".inf",
    ];
    let lower = s.to_ascii_lowercase();
    let bare = !s.is_empty()
        && !WORDS.contains(&lower.as_str())
        && !WORDS.contains(&lower.trim_start_matches(['+', '-', '.']))
        && !s.starts_with(|c: char| c.is_ascii_digit() || "-+.?:,[]{}#&*!|>'\"%@`= ".contains(c))
        && !s.ends_with([' ', ':'])
        && !s.contains(": ")
        && !s.contains(" #")
        && s.chars().all(|c| !c.is_control());
    if bare {
        s.to_string()
    } else {
        // A JSON string is a valid double-quoted YAML scalar.
        Value::String(s.to_string()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ambiguous_strings_are_quoted_and_the_output_reads_back_the_same() {
        let v = json!({
            "plain": "reviews-v1.shop.svc.cluster.local",
            "tricky": ["yes", "No", "on", "null", "~", "0755", "1e3", "-1", ".5", "", "a: b",
                       "*star", "x #y", "trailing:", "multi\nline", "/api/.*", ".*Firefox.*"],
            "nested": [{"a": 1, "b": [true, {"c": []}]}, [1, 2]],
            "empty": {},
        });
        let text = documents(std::slice::from_ref(&v));
        assert!(text.contains("- \"yes\"\n"), "{text}");
        assert!(
            text.contains("- \"/api/.*\"\n") || text.contains("- /api/.*\n"),
            "{text}"
        );
        let back: Value = serde_norway::from_str(text.trim_start_matches("---\n")).unwrap();
        assert_eq!(back, v, "{text}");
    }
}
