//! Validation of the names that cross site boundaries: site names, namespaces, service names,
//! label keys and trust domains. Every check returns an error that names the offending field.

use crate::error::InvalidField;

/// Longest DNS-1123 label.
const MAX_LABEL: usize = 63;

/// Checks a DNS-1123 label (Kubernetes names of namespaces and services, and multimesh site
/// names): 1 to 63 characters of `a-z`, `0-9` and `-`, starting and ending alphanumeric.
pub fn dns_label(field: &str, value: &str) -> Result<(), InvalidField> {
    let bad = |why: &str| Err(InvalidField::new(field, value, why));
    if value.is_empty() {
        return bad("must not be empty");
    }
    if value.len() > MAX_LABEL {
        return bad("must be at most 63 characters");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return bad("must contain only lower-case letters, digits and '-'");
    }
    if value.starts_with('-') || value.ends_with('-') {
        return bad("must start and end with a letter or digit");
    }
    Ok(())
}

/// Whether `s` is a DNS-1123 label (the test of [`dns_label`], without the reason).
pub fn is_dns_label(s: &str) -> bool {
    dns_label("", s).is_ok()
}

/// Whether `s` is a DNS-1123 subdomain (Kubernetes object names): dot-separated labels, at most
/// 253 characters.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Checks a SPIFFE trust domain: a lower-case DNS name of labels joined by dots.
pub fn trust_domain(field: &str, value: &str) -> Result<(), InvalidField> {
    if value.is_empty() || value.len() > 255 {
        return Err(InvalidField::new(
            field,
            value,
            "must be 1 to 255 characters",
        ));
    }
    for label in value.split('.') {
        dns_label(field, label).map_err(|_| {
            InvalidField::new(
                field,
                value,
                "must be dot-separated DNS labels (a-z, 0-9, '-')",
            )
        })?;
    }
    Ok(())
}

/// Checks a label key (optionally prefixed `dns.name/`) or value, Kubernetes style: at most 63
/// characters of alphanumerics, `-`, `_` and `.`; values may be empty.
pub fn label(field: &str, key: &str, value: &str) -> Result<(), InvalidField> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        trust_domain(field, p)
            .map_err(|_| InvalidField::new(field, key, "label key prefix must be a DNS name"))?;
    }
    let ok = |s: &str, allow_empty: bool| {
        (allow_empty || !s.is_empty())
            && s.len() <= MAX_LABEL
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && s.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
            && s.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric())
    };
    if !ok(name, false) {
        return Err(InvalidField::new(
            field,
            key,
            "label key must be 1-63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric",
        ));
    }
    if !ok(value, true) {
        return Err(InvalidField::new(
            &format!("{field}[{key}]"),
            value,
            "label value must be at most 63 alphanumerics, '-', '_' or '.'",
        ));
    }
    Ok(())
}

/// Checks a `host:port` address (host may be a DNS name, an IPv4 address or a bracketed IPv6).
pub fn host_port(field: &str, value: &str) -> Result<(), InvalidField> {
    let bad = || {
        Err(InvalidField::new(
            field,
            value,
            "must be HOST:PORT with a port in 1..=65535",
        ))
    };
    let Some((host, port)) = value.rsplit_once(':') else {
        return bad();
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return bad(),
    }
    if host.is_empty() || host.len() > 255 || host.contains(char::is_whitespace) {
        return bad();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        for ok in ["a", "payment", "site-1", "0abc"] {
            assert!(dns_label("name", ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "Payment", "a_b", "a.b", &"x".repeat(64)] {
            let err = dns_label("name", bad).unwrap_err();
            assert_eq!(err.field, "name");
        }
    }

    #[test]
    fn trust_domains() {
        assert!(trust_domain("td", "multimesh.test").is_ok());
        assert!(trust_domain("td", "a..b").is_err());
        assert!(trust_domain("td", "").is_err());
    }

    #[test]
    fn labels() {
        assert!(label("labels", "app", "web").is_ok());
        assert!(label("labels", "multimesh.io/tier", "").is_ok());
        assert!(label("labels", "bad key", "x").is_err());
        assert!(label("labels", "k", "bad value!").is_err());
    }

    #[test]
    fn addresses() {
        assert!(host_port("address", "127.0.0.1:7001").is_ok());
        assert!(host_port("address", "site-a.example:443").is_ok());
        assert!(host_port("address", "[::1]:80").is_ok());
        assert!(host_port("address", "nohost").is_err());
        assert!(host_port("address", "h:0").is_err());
        assert!(host_port("address", "h:70000").is_err());
    }
}
