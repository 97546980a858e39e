//! Summaries of benchmark samples.

/// Median, minimum and maximum of `v` (not empty).
pub fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    let med = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    (med, s[0], s[n - 1])
}

#[cfg(test)]
mod tests {
    #[test]
    fn median_and_spread() {
        assert_eq!(super::stats(&[3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(super::stats(&[4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
    }
}
