//! YAML from outside (config files, SMI and Gateway API documents, route files): bounded
//! before any parser sees it, then parsed into typed values. The one place that knows which
//! YAML parser the project uses.

use serde::de::DeserializeOwned;

/// Largest input file read (bytes).
pub const MAX_FILE_BYTES: usize = 4 << 20;
/// Deepest nesting of flow collections (`[`, `{`) and of compact block sequences (`- - -`)
/// accepted in an input file; real resources nest a few levels. Checked in one linear pass
/// before the YAML parser sees the text: its scanner takes quadratic time on deep flow nesting
/// (40,000 levels took 6.7 s).
pub const MAX_NESTING: usize = 64;
/// Deepest indentation accepted (columns).
pub const MAX_INDENT: usize = 512;

/// Checks `text` against [`MAX_FILE_BYTES`], [`MAX_NESTING`] and [`MAX_INDENT`] in one pass;
/// the error names the line. It counts every bracket, in quoted scalars and comments too: a
/// scanner that tried to follow YAML's quoting could be led to skip what the parser reads, and
/// counting more only makes the bound stricter (real resources stay far below it).
pub fn check_bounds(text: &str) -> Result<(), String> {
    if text.len() > MAX_FILE_BYTES {
        return Err(format!(
            "is {} bytes; the most accepted is {MAX_FILE_BYTES}",
            text.len()
        ));
    }
    let mut flow = 0usize;
    for (n, line) in text.lines().enumerate() {
        let at = |what: String| format!("line {}: {what}", n + 1);
        let bytes = line.as_bytes();
        let indent = bytes.iter().take_while(|b| **b == b' ').count();
        if indent > MAX_INDENT {
            return Err(at(format!(
                "indented {indent} columns; the most accepted is {MAX_INDENT}"
            )));
        }
        let (mut i, mut compact) = (indent, 0);
        while bytes.get(i) == Some(&b'-') && matches!(bytes.get(i + 1), Some(b' ') | None) {
            compact += 1;
            i += 2;
            while bytes.get(i) == Some(&b' ') {
                i += 1;
            }
        }
        if compact > MAX_NESTING {
            return Err(at(format!(
                "nests {compact} block sequences on one line; the most accepted is {MAX_NESTING}"
            )));
        }
        for b in bytes {
            match b {
                b'[' | b'{' => {
                    flow += 1;
                    if flow > MAX_NESTING {
                        return Err(at(format!(
                            "nests flow collections more than {MAX_NESTING} deep"
                        )));
                    }
                }
                b']' | b'}' => flow = flow.saturating_sub(1),
                _ => {}
            }
        }
    }
    Ok(())
}

/// Checks the bounds, then parses `text` as one YAML document into `T`.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    check_bounds(text)?;
    serde_norway::from_str(text).map_err(|e| e.to_string())
}
