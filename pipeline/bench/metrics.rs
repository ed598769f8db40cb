//! Statistics the benchmark reports share.

/// Area under the ROC curve of `score` for telling positives from negatives
/// (the Mann-Whitney U statistic; ties count half). `None` without both classes.
pub fn auroc(items: &[(f64, bool)]) -> Option<f64> {
    let mut v: Vec<(f64, bool)> = items.iter().copied().filter(|x| x.0.is_finite()).collect();
    let pos = v.iter().filter(|x| x.1).count();
    let neg = v.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Sum of the positives' mid-ranks (1-based).
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1].0 == v[i].0 {
            j += 1;
        }
        let mid = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += mid * v[i..=j].iter().filter(|x| x.1).count() as f64;
        i = j + 1;
    }
    let u = rank_sum - (pos * (pos + 1)) as f64 / 2.0;
    Some(u / (pos * neg) as f64)
}

/// `num / den`, 0 when `den` is 0.
pub fn ratio(num: f64, den: f64) -> f64 {
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_of_perfect_random_and_inverted_scores() {
        let perfect = [(0.9, true), (0.8, true), (0.2, false), (0.1, false)];
        assert_eq!(auroc(&perfect), Some(1.0));
        let inverted: Vec<_> = perfect.iter().map(|&(s, y)| (s, !y)).collect();
        assert_eq!(auroc(&inverted), Some(0.0));
        let tied = [(0.5, true), (0.5, false), (0.5, true), (0.5, false)];
        assert_eq!(auroc(&tied), Some(0.5));
        // One positive above one of two negatives: 0.5.
        assert_eq!(auroc(&[(0.3, false), (0.5, true), (0.7, false)]), Some(0.5));
        assert_eq!(auroc(&[(0.3, true)]), None);
    }
}
