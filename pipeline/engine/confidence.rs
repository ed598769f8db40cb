//! Token confidence as Marco-o1 defines it, from raw logits.

use super::Token;

/// How many logits the confidence normalizes over.
pub const TOP_K: usize = 5;

/// The `k` largest logits as `(token, logit)`, largest first; ties keep the lower id.
/// One pass over the vocabulary with a tiny insertion buffer (k = 5).
pub fn top_k_logits(logits: &[f32], k: usize) -> Vec<(Token, f32)> {
    let mut top: Vec<(Token, f32)> = Vec::with_capacity(k + 1);
    for (i, &l) in logits.iter().enumerate() {
        if l.is_nan() {
            continue;
        }
        if top.len() == k && l <= top[k - 1].1 {
            continue;
        }
        let pos = top.iter().position(|&(_, v)| l > v).unwrap_or(top.len());
        top.insert(pos, (i as Token, l));
        if top.len() > k {
            top.pop();
        }
    }
    top
}

/// `c = exp(l_chosen) / sum_{k in top5} exp(l_k)`, computed stably.
///
/// If the chosen token is outside the top 5 its own logit is still the
/// numerator, so the value stays in (0, 1] (it is then below the 5th share).
pub fn confidence(chosen_logit: f32, top: &[(Token, f32)]) -> f32 {
    let Some(&(_, max)) = top.first() else {
        return 1.0;
    };
    let m = max.max(chosen_logit);
    let denom: f64 = top.iter().map(|&(_, l)| ((l - m) as f64).exp()).sum();
    let num = ((chosen_logit - m) as f64).exp();
    let c = (num / denom) as f32;
    // exp underflow for absurdly low logits would give 0; the definition is strictly positive.
    c.clamp(f32::MIN_POSITIVE, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_and_truncates() {
        let l = [0.5, 3.0, -1.0, 2.0, 3.0, 1.0, 0.0];
        let t = top_k_logits(&l, 5);
        assert_eq!(t, vec![(1, 3.0), (4, 3.0), (3, 2.0), (5, 1.0), (0, 0.5)]);
    }

    #[test]
    fn confidence_matches_hand_computed_values() {
        // logits 2,1,0,-1,-2: c(top) = e^2 / (e^2+e^1+1+e^-1+e^-2)
        let top = vec![(0, 2.0), (1, 1.0), (2, 0.0), (3, -1.0), (4, -2.0)];
        let denom = 2f64.exp() + 1f64.exp() + 1.0 + (-1f64).exp() + (-2f64).exp();
        assert!((confidence(2.0, &top) as f64 - 2f64.exp() / denom).abs() < 1e-6);
        assert!((confidence(0.0, &top) as f64 - 1.0 / denom).abs() < 1e-6);
        // 0.6364086 by hand
        assert!((confidence(2.0, &top) - 0.636_408_6).abs() < 1e-6);
    }

    #[test]
    fn equal_logits_give_one_fifth() {
        let top = vec![(0, 1.0), (1, 1.0), (2, 1.0), (3, 1.0), (4, 1.0)];
        assert!((confidence(1.0, &top) - 0.2).abs() < 1e-6);
    }

    #[test]
    fn chosen_outside_top5_keeps_own_numerator() {
        let top = vec![(0, 5.0), (1, 4.0), (2, 3.0), (3, 2.0), (4, 1.0)];
        let c = confidence(-3.0, &top);
        let denom: f64 = [5.0f64, 4.0, 3.0, 2.0, 1.0].iter().map(|x| x.exp()).sum();
        assert!((c as f64 - (-3f64).exp() / denom).abs() < 1e-9);
        assert!(c > 0.0 && c < confidence(1.0, &top));
    }

    #[test]
    fn log_probabilities_give_the_same_value() {
        // Shifting every logit by a constant (log-softmax) leaves c unchanged.
        let top = vec![(0, 2.0), (1, 1.5), (2, 0.2), (3, -0.1), (4, -3.0)];
        let shifted: Vec<_> = top.iter().map(|&(t, l)| (t, l - 7.25)).collect();
        assert!((confidence(1.5, &top) - confidence(1.5 - 7.25, &shifted)).abs() < 1e-6);
    }

    #[test]
    fn large_logits_are_stable() {
        let top = vec![(0, 1000.0), (1, 999.0), (2, 998.0), (3, 997.0), (4, 996.0)];
        let c = confidence(1000.0, &top);
        assert!(c.is_finite() && c > 0.5 && c <= 1.0);
    }
}
