//! Weight arithmetic, all on integers.
//!
//! Input weights are in milli-units (`1` = 1000, `500m` = 500), so v1alpha1 quantities and
//! integer weights share one exact representation.

/// Integer percentages summing to exactly 100 by largest-remainder rounding: each backend gets
/// the floor of its exact share, and the points left go to the largest remainders (ties to the
/// earlier backend in name order, so the result does not depend on input order when the caller
/// sorts by name). A zero weight always gets 0. Returns `None` when every weight is zero.
pub fn percentages(weights: &[u64]) -> Option<Vec<u32>> {
    shares(weights, 100)
}

/// Like [`percentages`] for any total (e.g. 10,000 basis points).
pub fn shares(weights: &[u64], total: u32) -> Option<Vec<u32>> {
    let sum: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    if sum == 0 {
        return None;
    }
    let t = u128::from(total);
    let mut out: Vec<u32> = Vec::with_capacity(weights.len());
    let mut rem: Vec<(u128, usize)> = Vec::with_capacity(weights.len());
    for (i, &w) in weights.iter().enumerate() {
        let exact = u128::from(w) * t;
        // floor(exact / sum) <= total, so it fits.
        out.push((exact / sum) as u32);
        if w > 0 {
            rem.push((exact % sum, i));
        }
    }
    let given: u32 = out.iter().sum();
    let mut left = total - given;
    // Largest remainder first; among equal remainders the earlier index.
    rem.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, i) in rem {
        if left == 0 {
            break;
        }
        out[i] += 1;
        left -= 1;
    }
    Some(out)
}

/// Exact relative weights as small integers: the weights divided by their greatest common
/// divisor. `None` when every weight is zero, or when the reduced weights still exceed `max`
/// (the caller then falls back to [`shares`] with a diagnostic).
pub fn relative(weights: &[u64], max: u64) -> Option<Vec<u64>> {
    let g = weights.iter().fold(0u64, |g, &w| gcd(g, w));
    if g == 0 {
        return None;
    }
    let out: Vec<u64> = weights.iter().map(|w| w / g).collect();
    out.iter().all(|&w| w <= max).then_some(out)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn examples() {
        assert_eq!(percentages(&[900, 100]), Some(vec![90, 10]));
        assert_eq!(percentages(&[1000, 1000, 1000]), Some(vec![34, 33, 33]));
        assert_eq!(percentages(&[1, 0, 1]), Some(vec![50, 0, 50]));
        assert_eq!(percentages(&[0, 0]), None);
        // 1 in 1000 rounds to 0 points: the caller warns about it.
        assert_eq!(percentages(&[999, 1]), Some(vec![100, 0]));
        assert_eq!(relative(&[500, 1500], 1_000_000), Some(vec![1, 3]));
        assert_eq!(relative(&[0, 0], 1_000_000), None);
        assert_eq!(relative(&[1, 2_000_000], 1_000_000), None);
    }

    proptest! {
        #[test]
        fn percentages_sum_to_100_keep_zeros_and_stay_within_a_point(
            weights in prop::collection::vec(0u64..5_000_000, 1..12)
        ) {
            let sum: u64 = weights.iter().sum();
            match percentages(&weights) {
                None => prop_assert_eq!(sum, 0),
                Some(p) => {
                    prop_assert_eq!(p.iter().sum::<u32>(), 100);
                    for (w, p) in weights.iter().zip(&p) {
                        if *w == 0 {
                            prop_assert_eq!(*p, 0);
                        }
                        let exact = *w as f64 * 100.0 / sum as f64;
                        prop_assert!((f64::from(*p) - exact).abs() < 1.0, "{} vs {}", p, exact);
                    }
                }
            }
        }

        #[test]
        fn relative_weights_keep_exact_ratios(weights in prop::collection::vec(0u64..100_000, 1..8)) {
            if let Some(r) = relative(&weights, u64::MAX) {
                for i in 0..weights.len() {
                    for j in 0..weights.len() {
                        prop_assert_eq!(
                            u128::from(weights[i]) * u128::from(r[j]),
                            u128::from(weights[j]) * u128::from(r[i])
                        );
                    }
                }
            } else {
                prop_assert!(weights.iter().all(|&w| w == 0));
            }
        }
    }
}
