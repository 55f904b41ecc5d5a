//! Value types shared by several kinds (weights, ports, names) and their checks.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, Visitor};

use crate::diag::Diagnostic;
use crate::model::Origin;
use multimesh_core::names::is_dns_label;

/// A number or a string, as written: weights (SMI v1alpha1 takes quantities such as `500m`,
/// later versions integers) and `targetPort` (a number or a port name). Kept as written so the
/// check can say exactly what is wrong with it.
#[derive(Clone, Debug, PartialEq)]
pub enum Scalar {
    /// A non-negative integer.
    Unsigned(u64),
    /// A negative integer.
    Negative(i64),
    /// A number with a fraction or exponent.
    Fractional(f64),
    /// A string.
    Text(String),
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Unsigned(n) => write!(f, "{n}"),
            Scalar::Negative(n) => write!(f, "{n}"),
            Scalar::Fractional(n) => write!(f, "{n}"),
            Scalar::Text(s) => write!(f, "{s:?}"),
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number or a string")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Scalar, E> {
                Ok(Scalar::Unsigned(n))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Scalar, E> {
                Ok(u64::try_from(n).map_or(Scalar::Negative(n), Scalar::Unsigned))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Scalar, E> {
                Ok(Scalar::Fractional(n))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Scalar, E> {
                Ok(Scalar::Text(s.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses a Kubernetes quantity used as a v1alpha1 weight into milli-units: `1` → 1000,
/// `500m` → 500, `1.5` → 1500, `2k` → 2,000,000.
pub fn quantity_milli(v: &Scalar) -> Result<u64, String> {
    let text = match v {
        Scalar::Unsigned(n) => n.to_string(),
        Scalar::Negative(n) => n.to_string(),
        Scalar::Fractional(n) => n.to_string(),
        Scalar::Text(s) => s.trim().to_string(),
    };
    if text.starts_with('-') {
        return Err(format!("{text} is negative"));
    }
    let (num, scale_milli): (&str, u128) = if let Some(n) = text.strip_suffix('m') {
        (n, 1)
    } else if let Some(n) = text.strip_suffix('k') {
        (n, 1_000_000)
    } else if let Some(n) = text.strip_suffix('M') {
        (n, 1_000_000_000)
    } else {
        (text.as_str(), 1000)
    };
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(format!("{text:?} is not a quantity such as 1 or 500m"));
    }
    let digits = format!("{int}{frac}");
    let mantissa: u128 = digits
        .trim_start_matches('0')
        .parse::<u128>()
        .or_else(|e| {
            if digits.bytes().all(|b| b == b'0') {
                Ok(0)
            } else {
                Err(e)
            }
        })
        .map_err(|_| format!("{text:?} is out of range"))?;
    let div = 10u128
        .checked_pow(frac.len() as u32)
        .ok_or_else(|| format!("{text:?} has too many decimals"))?;
    let scaled = mantissa
        .checked_mul(scale_milli)
        .ok_or_else(|| format!("{text:?} is out of range"))?;
    if scaled % div != 0 {
        return Err(format!("{text:?} is finer than a milli-unit"));
    }
    u64::try_from(scaled / div).map_err(|_| format!("{text:?} is out of range"))
}

/// An integer weight (SMI v1alpha2+, Gateway API) in milli-units.
pub fn integer_weight(v: &Scalar) -> Result<u64, String> {
    match v {
        Scalar::Unsigned(n) => n
            .checked_mul(1000)
            .ok_or_else(|| format!("{n} is out of range")),
        Scalar::Negative(n) => Err(format!("{n} is negative")),
        Scalar::Fractional(n) => Err(format!(
            "{n} is fractional; this version takes integer weights (v1alpha1 takes quantities such as 500m)"
        )),
        Scalar::Text(s) => Err(format!(
            "{s:?} is a string; this version takes integer weights"
        )),
    }
}

/// A port number: 1 to 65535.
pub fn port(v: i64, field: &str, o: &Origin, d: &mut Vec<Diagnostic>) -> Option<u16> {
    match u16::try_from(v) {
        Ok(p) if p > 0 => Some(p),
        _ => {
            d.push(Diagnostic::error(
                o,
                field,
                format!("{v} is not a port number"),
            ));
            None
        }
    }
}

/// A service named from another object: a short name (a DNS label) in that object's namespace.
pub fn short_name(
    v: Option<&str>,
    field: &str,
    o: &Origin,
    d: &mut Vec<Diagnostic>,
) -> Option<String> {
    let message = match v {
        Some(s) if is_dns_label(s) => return Some(s.to_string()),
        Some(s) if s.contains('.') => {
            format!("{s:?} must be a short service name in the object's namespace")
        }
        Some(s) => format!("{s:?} is not a DNS label"),
        None => "is required".to_string(),
    };
    d.push(Diagnostic::error(o, field, message));
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn q(s: &str) -> Result<u64, String> {
        quantity_milli(&Scalar::Text(s.into()))
    }

    #[test]
    fn quantities_in_milli_units() {
        assert_eq!(q("1"), Ok(1000));
        assert_eq!(q("500m"), Ok(500));
        assert_eq!(q("1.5"), Ok(1500));
        assert_eq!(q("2k"), Ok(2_000_000));
        assert_eq!(quantity_milli(&Scalar::Fractional(0.25)), Ok(250));
        assert!(q("0.5m").unwrap_err().contains("finer than a milli-unit"));
        assert!(q("-1").unwrap_err().contains("negative"));
        assert!(q("1e3").unwrap_err().contains("not a quantity"));
        assert!(
            q("99999999999999999999999")
                .unwrap_err()
                .contains("out of range")
        );
    }

    #[test]
    fn integer_weights_say_what_is_wrong() {
        assert_eq!(integer_weight(&Scalar::Unsigned(3)), Ok(3000));
        assert!(
            integer_weight(&Scalar::Negative(-1))
                .unwrap_err()
                .contains("negative")
        );
        assert!(
            integer_weight(&Scalar::Fractional(0.5))
                .unwrap_err()
                .contains("fractional")
        );
        assert!(
            integer_weight(&Scalar::Text("5".into()))
                .unwrap_err()
                .contains("string")
        );
        assert!(
            integer_weight(&Scalar::Unsigned(u64::MAX))
                .unwrap_err()
                .contains("range")
        );
    }
}
