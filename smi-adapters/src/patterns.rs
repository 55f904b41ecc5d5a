//! What a match may say, checked at the input: the meshes evaluate patterns with RE2 (Envoy,
//! Istio's validation in Go's `regexp`, Consul) and header names as HTTP tokens.
//!
//! A pattern Rust's `regex` accepts is not always RE2, and the difference is not always an
//! error: `[a-z&&[^aeiou]]` is a class intersection here, while RE2 reads it as a class of
//! `a-z&[^aeiou` followed by a literal `]`. Istio's validation accepts that pattern, and Envoy
//! then matches something else than what the spec said. So only the common dialect is
//! accepted, and the error names what is not RE2.

use regex_syntax::ast::{
    self, AssertionKind, Ast, ClassSetBinaryOp, ClassSetItem, Flag, HexLiteralKind, LiteralKind,
};

/// The longest pattern accepted (Envoy bounds a regex's compiled size; a spec needs far less).
pub const MAX_PATTERN: usize = 1_024;

/// Checks that `pattern` is a regular expression RE2 reads exactly as Rust's `regex` does.
pub fn check_re2(pattern: &str) -> Result<(), String> {
    if pattern.len() > MAX_PATTERN {
        return Err(format!("is longer than {MAX_PATTERN} characters"));
    }
    let parsed = ast::parse::Parser::new()
        .parse(pattern)
        .map_err(|e| format!("not a valid regular expression: {}", e.kind()))?;
    ast::visit(&parsed, Re2Only)?;
    regex::Regex::new(pattern).map_err(|e| format!("not a valid regular expression: {e}"))?;
    Ok(())
}

struct Re2Only;

impl ast::Visitor for Re2Only {
    type Output = ();
    type Err = String;

    fn finish(self) -> Result<(), String> {
        Ok(())
    }

    fn visit_pre(&mut self, a: &Ast) -> Result<(), String> {
        match a {
            Ast::Assertion(a) => match a.kind {
                AssertionKind::StartLine
                | AssertionKind::EndLine
                | AssertionKind::StartText
                | AssertionKind::EndText
                | AssertionKind::WordBoundary
                | AssertionKind::NotWordBoundary => Ok(()),
                _ => Err("uses a word-boundary form RE2 does not have (only \\b and \\B)".into()),
            },
            Ast::Flags(f) => flags(&f.flags),
            Ast::Group(g) => match &g.kind {
                ast::GroupKind::NonCapturing(f) => flags(f),
                _ => Ok(()),
            },
            Ast::Literal(l) => literal(l),
            _ => Ok(()),
        }
    }

    fn visit_class_set_item_pre(&mut self, item: &ClassSetItem) -> Result<(), String> {
        match item {
            ClassSetItem::Bracketed(_) => {
                Err("nests a character class inside another, which RE2 does not have".into())
            }
            ClassSetItem::Literal(l) => literal(l),
            _ => Ok(()),
        }
    }

    fn visit_class_set_binary_op_pre(&mut self, _op: &ClassSetBinaryOp) -> Result<(), String> {
        Err(
            "uses a class set operation (&&, -- or ~~), which RE2 reads as literal characters"
                .into(),
        )
    }
}

fn flags(f: &ast::Flags) -> Result<(), String> {
    for item in &f.items {
        if let ast::FlagsItemKind::Flag(flag) = &item.kind {
            match flag {
                Flag::CaseInsensitive
                | Flag::MultiLine
                | Flag::DotMatchesNewLine
                | Flag::SwapGreed => {}
                Flag::Unicode | Flag::CRLF | Flag::IgnoreWhitespace => {
                    return Err("uses a flag RE2 does not have (only i, m, s and U)".into());
                }
            }
        }
    }
    Ok(())
}

fn literal(l: &ast::Literal) -> Result<(), String> {
    match &l.kind {
        LiteralKind::HexFixed(HexLiteralKind::UnicodeShort | HexLiteralKind::UnicodeLong)
        | LiteralKind::HexBrace(HexLiteralKind::UnicodeShort | HexLiteralKind::UnicodeLong) => {
            Err("uses \\u or \\U escapes, which RE2 does not have (write \\x{...})".into())
        }
        _ => Ok(()),
    }
}

/// Checks an HTTP header name (an RFC 9110 token: letters, digits and ``!#$%&'*+-.^_`|~``).
pub fn check_header_name(name: &str) -> Result<(), String> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() {
        return Err("a header name must not be empty".into());
    }
    if name.len() > 256 || !name.bytes().all(token) {
        return Err(format!(
            "{name:?} is not an HTTP header name (letters, digits and !#$%&'*+-.^_`|~, at most 256)"
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_the_dialect_rust_and_re2_share_is_accepted() {
        for ok in [
            "/api/.*",
            "^/reviews/[0-9]+$",
            r"(?i)firefox",
            r"\bword\b",
            r"[[:alpha:]]+",
            r"\x{263a}",
            r"\pL+",
            "(?P<id>[0-9]+)",
        ] {
            assert!(check_re2(ok).is_ok(), "{ok}: {:?}", check_re2(ok));
        }
        for (bad, why) in [
            ("[a-z&&[^aeiou]]+", "class set operation"),
            ("[a-z--b]", "class set operation"),
            ("[a[bc]]", "nests a character class"),
            (r"\<word\>", "word-boundary"),
            (r"\b{start}x", "word-boundary"),
            ("(?x) a b", "flag"),
            ("(?u)x", "flag"),
            (r"\u263a", "\\u or \\U"),
            ("(", "not a valid regular expression"),
        ] {
            let e = check_re2(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(
            check_re2(&"a".repeat(MAX_PATTERN + 1))
                .unwrap_err()
                .contains("longer")
        );
    }

    #[test]
    fn header_names_are_tokens() {
        assert!(check_header_name("x-canary").is_ok());
        assert!(check_header_name("X_Debug.1").is_ok());
        for bad in ["", "x canary", "x:y", ":authority", "x\ny", "é"] {
            assert!(check_header_name(bad).is_err(), "{bad:?}");
        }
    }
}
