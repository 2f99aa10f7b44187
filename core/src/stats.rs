//! Paired statistics for comparing two evaluations item by item.
//!
//! Both functions work on aggregates (counts, or a histogram of per-item
//! differences), never on the items themselves, so a 100,000-item
//! comparison holds a few hundred numbers at most.
//!
//! **Exact McNemar / sign test.** Of `n` paired items, `b` improved (A
//! failed, B passed) and `c` regressed. Under "no difference" each of the
//! `b + c` discordant items is an improvement with probability 1/2, so
//! `p = min(1, 2 · P(X ≤ min(b, c)))` with `X ~ Binomial(b + c, 1/2)`.
//! Worked example: 8 improvements, 2 regressions: `P(X ≤ 2) = (1 + 10 + 45)
//! / 2^10 = 56/1024`, so `p = 112/1024 = 0.109375`. With repeats, an item
//! "improved" when its pass fraction rose and "regressed" when it fell: the
//! same test is then the exact sign test on the paired fractions (with one
//! run per item the two are identical).
//!
//! **Paired bootstrap.** Resampling `n` items with replacement from the
//! per-item differences `d_i` is the same as drawing the multiplicity of
//! each distinct value from a multinomial over the value counts. We draw
//! that multinomial one value at a time with conditional binomials, so a
//! resample costs one draw per distinct value, not one per item. The
//! interval is the 2.5th and 97.5th percentile (linear interpolation) of
//! the resampled means; the RNG is ChaCha8 with a fixed seed, so equal
//! inputs give equal intervals.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Binomial, Distribution};
use serde::Serialize;
use statrs::distribution::{Binomial as BinomialDistribution, DiscreteCDF};

/// Resamples of every bootstrap.
pub const BOOTSTRAP_RESAMPLES: usize = 10_000;
/// The bootstrap's seed: fixed, so the same inputs give the same interval.
pub const BOOTSTRAP_SEED: u64 = 0x4173_7361_7921; // "Assay!"
/// Confidence of the intervals.
pub const CONFIDENCE: f64 = 0.95;

/// Two-sided exact p-value of McNemar's test (the sign test on discordant pairs).
pub fn mcnemar_exact(improvements: u64, regressions: u64) -> f64 {
    let discordant = improvements + regressions;
    if discordant == 0 {
        return 1.0;
    }
    let smaller = improvements.min(regressions);
    let tail = if discordant <= EXACT_TERMS_UP_TO {
        // Term by term: C(n, 0) / 2^n, then C(n, k) = C(n, k-1) (n-k+1) / k.
        // Exact to a few ulps (statrs' regularized beta loses ~1e-15 even
        // where the answer is exactly 1/2, which would make p = 0.999...).
        let n = discordant as f64;
        let mut term = 0.5f64.powi(discordant as i32);
        let mut sum = term;
        for k in 1..=smaller {
            term *= (n - k as f64 + 1.0) / k as f64;
            sum += term;
        }
        sum
    } else {
        BinomialDistribution::new(0.5, discordant)
            .expect("p = 0.5 is valid")
            .cdf(smaller)
    };
    (2.0 * tail).min(1.0)
}

/// Up to this many discordant pairs the binomial tail is summed term by
/// term (`0.5^1000` is still a normal `f64`); beyond, statrs' CDF.
const EXACT_TERMS_UP_TO: u64 = 1000;

/// A bootstrap confidence interval of a mean.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Interval {
    pub low: f64,
    pub high: f64,
}

/// Percentile interval of the mean of `n` items whose values are given as
/// a histogram (`(value, count)`, in a fixed order). `None` without items.
pub fn bootstrap_mean(histogram: &[(f64, u64)], resamples: usize, seed: u64) -> Option<Interval> {
    let total: u64 = histogram.iter().map(|(_, count)| count).sum();
    if total == 0 || resamples == 0 {
        return None;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut means = Vec::with_capacity(resamples);
    for _ in 0..resamples {
        // Items still to place, and the original count of the values not yet visited.
        let mut left = total;
        let mut unvisited = total;
        let mut sum = 0.0;
        for &(value, count) in histogram {
            if left == 0 {
                break;
            }
            let drawn = if count >= unvisited {
                left
            } else {
                Binomial::new(left, count as f64 / unvisited as f64)
                    .expect("a probability in [0, 1]")
                    .sample(&mut rng)
            };
            sum += drawn as f64 * value;
            left -= drawn;
            unvisited -= count;
        }
        means.push(sum / total as f64);
    }
    means.sort_by(f64::total_cmp);
    let tail = (1.0 - CONFIDENCE) / 2.0;
    Some(Interval {
        low: quantile(&means, tail),
        high: quantile(&means, 1.0 - tail),
    })
}

/// Linear interpolation between closest ranks (NumPy's default, "type 7").
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = q * (sorted.len() - 1) as f64;
    let below = rank.floor() as usize;
    let above = rank.ceil() as usize;
    sorted[below] + (sorted[above] - sorted[below]) * (rank - below as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2 * P(X <= 4000), X ~ Binomial(10000, 1/2), computed exactly with Python's fractions.
    const REFERENCE_6000_4000: f64 = 1.740_431_641_226_878_4e-89;

    #[test]
    fn mcnemar_worked_example() {
        // 8 improvements, 2 regressions: 2 * (C(10,0) + C(10,1) + C(10,2)) / 2^10.
        assert!((mcnemar_exact(8, 2) - 0.109375).abs() < 1e-12);
        assert!((mcnemar_exact(2, 8) - 0.109375).abs() < 1e-12);
        // 10 vs 0: 2 / 1024.
        assert!((mcnemar_exact(10, 0) - 0.001953125).abs() < 1e-12);
        // Balanced or nothing discordant: no evidence at all.
        assert_eq!(mcnemar_exact(5, 5), 1.0);
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        // 1 vs 0: a single discordant pair can never be significant.
        assert_eq!(mcnemar_exact(1, 0), 1.0);
        // Large n, the summed path and the statrs path: 600 vs 400 and 6,000 vs 4,000. Reference computed exactly outside the product
        // (Python: 2 * Fraction(sum(comb(1000, i) for i in range(401)), 2**1000)).
        let p = mcnemar_exact(600, 400);
        assert!((p / 2.728_464_156_066_018e-10 - 1.0).abs() < 1e-9, "{p}");
        // Python: the same over comb(10000, i) for i in range(4001).
        let p = mcnemar_exact(6000, 4000);
        assert!((p / REFERENCE_6000_4000 - 1.0).abs() < 1e-6, "{p}");
    }

    #[test]
    fn bootstrap_is_deterministic_and_matches_the_normal_approximation() {
        // 1,000 items: 300 improved (+1), 100 regressed (-1), 600 unchanged.
        let histogram = [(-1.0, 100), (0.0, 600), (1.0, 300)];
        let a = bootstrap_mean(&histogram, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED).unwrap();
        let b = bootstrap_mean(&histogram, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED).unwrap();
        assert_eq!(a, b, "same inputs, same interval");
        // mean 0.2, variance E[d^2] - mean^2 = 0.4 - 0.04 = 0.36, sd of the mean 0.6/sqrt(1000).
        let half = 1.959964 * 0.6 / 1000f64.sqrt();
        assert!((a.low - (0.2 - half)).abs() < 0.005, "{a:?}");
        assert!((a.high - (0.2 + half)).abs() < 0.005, "{a:?}");
        let other = bootstrap_mean(&histogram, BOOTSTRAP_RESAMPLES, 7).unwrap();
        assert_ne!(a, other, "the seed matters");
    }

    #[test]
    fn bootstrap_contains_the_true_difference_of_a_constructed_case() {
        // Paired scores with a true mean difference of exactly 0.1: every item's
        // difference is 0.1 plus a symmetric offset that cancels out.
        let histogram = [(-0.4, 250), (0.1, 500), (0.6, 250)];
        let interval = bootstrap_mean(&histogram, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED).unwrap();
        assert!(
            interval.low < 0.1 && 0.1 < interval.high,
            "{interval:?} contains 0.1"
        );
        assert!(
            interval.low > 0.0,
            "{interval:?}: 1,000 items show a real gain"
        );
        // A single value: no spread at all.
        let point = bootstrap_mean(&[(0.25, 40)], 100, 1).unwrap();
        assert_eq!(
            point,
            Interval {
                low: 0.25,
                high: 0.25
            }
        );
        assert_eq!(bootstrap_mean(&[], 100, 1), None);
    }
}
