//! Paired bootstrap resampling over per-segment sufficient statistics, after
//! sacrebleu's `paired-bs` test (`sacrebleu/significance.py`:
//! `_paired_bs_test`, `estimate_ci`, `_compute_p_value`).
//!
//! Each resample draws `n` segment indices with replacement (the *same*
//! indices for baseline and system), sums both systems' statistics over them
//! and recomputes the corpus scores. Reported are the mean and 95% interval
//! of the system score, of the baseline score and of the delta
//! `system - baseline`, and sacrebleu's p-value.
//!
//! # Randomness
//!
//! Indices come from a small built-in xoshiro256** generator seeded through
//! splitmix64 from a `u64` (default 12345, sacrebleu's default seed), with
//! Lemire's unbiased bounded sampling. Results are deterministic for a seed
//! and platform independent, but they do **not** reproduce numpy's
//! `default_rng` stream, so individual resampled values differ from
//! sacrebleu's (the statistics agree in distribution only).

use super::bleu::{BleuConfig, BleuStats};
use super::chrf::{ChrfConfig, ChrfStats};
use super::MetricError;

/// A corpus-level metric whose score is a function of summed per-segment
/// statistics (implemented by [`BleuConfig`] and [`ChrfConfig`]).
pub trait CorpusMetric {
    /// Per-segment sufficient statistics.
    type Stats: Clone;
    /// The additive identity.
    fn zero_stats(&self) -> Self::Stats;
    /// `acc += s`.
    fn add_stats(&self, acc: &mut Self::Stats, s: &Self::Stats);
    /// Corpus score from summed statistics.
    fn score_stats(&self, s: &Self::Stats) -> f64;

    /// Corpus score of a list of segment statistics.
    fn corpus_score(&self, segments: &[Self::Stats]) -> f64 {
        let mut acc = self.zero_stats();
        for s in segments {
            self.add_stats(&mut acc, s);
        }
        self.score_stats(&acc)
    }
}

impl CorpusMetric for BleuConfig {
    type Stats = BleuStats;
    fn zero_stats(&self) -> BleuStats {
        BleuStats::default()
    }
    fn add_stats(&self, acc: &mut BleuStats, s: &BleuStats) {
        *acc += s;
    }
    fn score_stats(&self, s: &BleuStats) -> f64 {
        self.score_from_stats(s).score
    }
}

impl CorpusMetric for ChrfConfig {
    type Stats = ChrfStats;
    fn zero_stats(&self) -> ChrfStats {
        ChrfStats::zeros(self)
    }
    fn add_stats(&self, acc: &mut ChrfStats, s: &ChrfStats) {
        *acc += s;
    }
    fn score_stats(&self, s: &ChrfStats) -> f64 {
        self.f_score(s)
    }
}

/// Bootstrap settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootstrapConfig {
    /// Number of resamples (sacrebleu's default for `paired-bs`: 1000).
    pub n_samples: usize,
    /// PRNG seed (sacrebleu's default `SACREBLEU_SEED` is 12345).
    pub seed: u64,
}

impl Default for BootstrapConfig {
    fn default() -> Self {
        BootstrapConfig {
            n_samples: 1000,
            seed: 12345,
        }
    }
}

/// Mean and 95% interval of resampled values.
///
/// The bounds are sacrebleu's order statistics: with `n` sorted values,
/// `lower = v[n / 40]`, `upper = v[n - n / 40 - 1]` (2.5% / 97.5%).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConfidenceInterval {
    /// Mean of the resampled values.
    pub mean: f64,
    /// Lower 2.5% bound.
    pub lower: f64,
    /// Upper 97.5% bound.
    pub upper: f64,
}

impl ConfidenceInterval {
    /// Half the interval width: the `± x` sacrebleu prints after `μ`.
    pub fn half_width(&self) -> f64 {
        0.5 * (self.upper - self.lower)
    }

    /// Whether `x` lies in `[lower, upper]`.
    pub fn contains(&self, x: f64) -> bool {
        self.lower <= x && x <= self.upper
    }

    /// From unsorted samples (must be non-empty and NaN-free).
    pub fn from_samples(samples: &[f64]) -> Self {
        assert!(!samples.is_empty(), "no bootstrap samples");
        let mut v = samples.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        let lower_idx = n / 40;
        let upper_idx = n - lower_idx - 1;
        ConfidenceInterval {
            mean: v.iter().sum::<f64>() / n as f64,
            lower: v[lower_idx],
            upper: v[upper_idx],
        }
    }
}

/// Result of [`paired_bootstrap`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PairedBootstrap {
    /// Baseline corpus score on the full test set.
    pub baseline_score: f64,
    /// System corpus score on the full test set.
    pub system_score: f64,
    /// `system_score - baseline_score`.
    pub delta: f64,
    /// Baseline score over resamples.
    pub baseline: ConfidenceInterval,
    /// System score over resamples.
    pub system: ConfidenceInterval,
    /// `system - baseline` over resamples (paired: same indices).
    pub delta_ci: ConfidenceInterval,
    /// sacrebleu's paired-bs p-value: with `d_i = |sys_i - base_i|` per
    /// resample and `c = #{i : d_i - mean(d) > |delta|}`, `p = (c + 1) / (n + 1)`.
    /// Note that, as in sacrebleu, two *identical* systems get the minimum
    /// `1 / (n + 1)` (a zero difference is "not attributed to chance"), so
    /// judge "no difference" by [`PairedBootstrap::delta_ci`] instead.
    pub p_value: f64,
    /// Number of resamples.
    pub n_samples: usize,
    /// Seed used.
    pub seed: u64,
}

/// xoshiro256** (Blackman & Vigna), seeded with splitmix64.
#[derive(Clone, Debug)]
pub struct Xoshiro256StarStar {
    s: [u64; 4],
}

impl Xoshiro256StarStar {
    /// Seed the four state words with consecutive splitmix64 outputs.
    pub fn new(seed: u64) -> Self {
        let mut sm = crate::rng::SplitMix64(seed);
        let s = [sm.next_u64(), sm.next_u64(), sm.next_u64(), sm.next_u64()];
        Xoshiro256StarStar { s }
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform integer in `0..n` (Lemire's multiply-shift with rejection,
    /// unbiased). `n` must be > 0.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        let mut m = (self.next_u64() as u128) * (n as u128);
        if (m as u64) < n {
            let threshold = n.wrapping_neg() % n;
            while (m as u64) < threshold {
                m = (self.next_u64() as u128) * (n as u128);
            }
        }
        (m >> 64) as u64
    }
}

/// Bootstrap 95% interval of one system's corpus score (sacrebleu's
/// `corpus_score(..., n_bootstrap=N)`).
pub fn bootstrap_ci<M: CorpusMetric>(
    metric: &M,
    stats: &[M::Stats],
    cfg: &BootstrapConfig,
) -> Result<ConfidenceInterval, MetricError> {
    check_bootstrap(stats.len(), cfg)?;
    let mut rng = Xoshiro256StarStar::new(cfg.seed);
    let n = stats.len();
    let scores: Vec<f64> = (0..cfg.n_samples)
        .map(|_| {
            let mut acc = metric.zero_stats();
            for _ in 0..n {
                metric.add_stats(&mut acc, &stats[rng.below(n as u64) as usize]);
            }
            metric.score_stats(&acc)
        })
        .collect();
    Ok(ConfidenceInterval::from_samples(&scores))
}

fn check_bootstrap(n: usize, cfg: &BootstrapConfig) -> Result<(), MetricError> {
    if n == 0 {
        return Err(MetricError::EmptyCorpus);
    }
    if cfg.n_samples == 0 {
        return Err(MetricError::InvalidConfig(
            "bootstrap needs n_samples > 0".into(),
        ));
    }
    Ok(())
}

/// Paired bootstrap resampling of `system` against `baseline` (per-segment
/// statistics of the same test set, same order).
pub fn paired_bootstrap<M: CorpusMetric>(
    metric: &M,
    baseline: &[M::Stats],
    system: &[M::Stats],
    cfg: &BootstrapConfig,
) -> Result<PairedBootstrap, MetricError> {
    if baseline.len() != system.len() {
        return Err(MetricError::SystemLengthMismatch {
            baseline: baseline.len(),
            system: system.len(),
        });
    }
    let n = baseline.len();
    check_bootstrap(n, cfg)?;

    let baseline_score = metric.corpus_score(baseline);
    let system_score = metric.corpus_score(system);

    let mut rng = Xoshiro256StarStar::new(cfg.seed);
    let mut bl_scores = Vec::with_capacity(cfg.n_samples);
    let mut sys_scores = Vec::with_capacity(cfg.n_samples);
    for _ in 0..cfg.n_samples {
        let mut bl = metric.zero_stats();
        let mut sys = metric.zero_stats();
        for _ in 0..n {
            let i = rng.below(n as u64) as usize;
            metric.add_stats(&mut bl, &baseline[i]);
            metric.add_stats(&mut sys, &system[i]);
        }
        bl_scores.push(metric.score_stats(&bl));
        sys_scores.push(metric.score_stats(&sys));
    }

    let deltas: Vec<f64> = sys_scores
        .iter()
        .zip(&bl_scores)
        .map(|(s, b)| s - b)
        .collect();

    // sacrebleu `_paired_bs_test` + `_compute_p_value`.
    let real_diff = (baseline_score - system_score).abs();
    let abs_diffs: Vec<f64> = deltas.iter().map(|d| d.abs()).collect();
    let mean_abs = abs_diffs.iter().sum::<f64>() / abs_diffs.len() as f64;
    let c = abs_diffs
        .iter()
        .filter(|&&d| d - mean_abs > real_diff)
        .count();
    let p_value = (c + 1) as f64 / (cfg.n_samples + 1) as f64;

    Ok(PairedBootstrap {
        baseline_score,
        system_score,
        delta: system_score - baseline_score,
        baseline: ConfidenceInterval::from_samples(&bl_scores),
        system: ConfidenceInterval::from_samples(&sys_scores),
        delta_ci: ConfidenceInterval::from_samples(&deltas),
        p_value,
        n_samples: cfg.n_samples,
        seed: cfg.seed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::metrics::{corpus_bleu_stats, corpus_chrf_stats};

    #[test]
    fn splitmix_and_xoshiro_reference_values() {
        // splitmix64 from state 0: first output is the published 0xe220a8397b1dcdaf.
        let mut s = crate::rng::SplitMix64(0);
        assert_eq!(s.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(s.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        // xoshiro256** with state [1, 2, 3, 4]: reference outputs 11520, 0, 1509978240.
        let mut x = Xoshiro256StarStar { s: [1, 2, 3, 4] };
        assert_eq!(x.next_u64(), 11520);
        assert_eq!(x.next_u64(), 0);
        assert_eq!(x.next_u64(), 1509978240);
    }

    #[test]
    fn below_is_in_range_and_covers() {
        let mut r = Xoshiro256StarStar::new(1);
        let mut seen = [0usize; 7];
        for _ in 0..7000 {
            seen[r.below(7) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| c > 850 && c < 1150), "{seen:?}");
    }

    #[test]
    fn ci_order_statistics() {
        let v: Vec<f64> = (0..1000).rev().map(|x| x as f64).collect();
        let ci = ConfidenceInterval::from_samples(&v);
        assert_eq!((ci.lower, ci.upper, ci.mean), (25.0, 974.0, 499.5));
        assert_eq!(ci.half_width(), 474.5);
    }

    fn corpus(n: usize) -> (Vec<String>, Vec<String>, Vec<String>) {
        let words = [
            "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
        ];
        let mut refs = Vec::new();
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for i in 0..n {
            let s: Vec<&str> = (0..8)
                .map(|j| words[(i * 7 + j * 3) % words.len()])
                .collect();
            refs.push(s.join(" "));
            // good: one word changed; bad: half the words changed
            let mut g = s.clone();
            g[i % 8] = "zulu";
            good.push(g.join(" "));
            let mut b = s.clone();
            for (j, w) in b.iter_mut().enumerate() {
                if (i + j) % 2 == 0 {
                    *w = "xray";
                }
            }
            bad.push(b.join(" "));
        }
        (refs, good, bad)
    }

    #[test]
    fn identical_systems_delta_ci_is_zero() {
        let (refs, good, _) = corpus(60);
        let cfg = BleuConfig::default();
        let st = corpus_bleu_stats(&good, &[refs], &cfg).unwrap();
        let r = paired_bootstrap(&cfg, &st, &st, &BootstrapConfig::default()).unwrap();
        assert_eq!(r.delta, 0.0);
        assert!(r.delta_ci.contains(0.0));
        assert_eq!((r.delta_ci.lower, r.delta_ci.upper), (0.0, 0.0));
        assert_eq!(r.baseline, r.system);
        // sacrebleu's formula: identical systems get the minimum p-value
        assert_eq!(r.p_value, 1.0 / 1001.0);
        assert!(r.system.contains(r.system_score));
    }

    #[test]
    fn clearly_better_system_excludes_zero_and_is_deterministic() {
        let (refs, good, bad) = corpus(80);
        let refs = vec![refs];
        let cfg = BleuConfig::default();
        let bl = corpus_bleu_stats(&bad, &refs, &cfg).unwrap();
        let sys = corpus_bleu_stats(&good, &refs, &cfg).unwrap();
        let bs = BootstrapConfig::default();
        let r = paired_bootstrap(&cfg, &bl, &sys, &bs).unwrap();
        assert!(r.delta > 20.0, "{r:?}");
        assert!(r.delta_ci.lower > 0.0 && !r.delta_ci.contains(0.0), "{r:?}");
        assert!(r.p_value < 0.01, "{r:?}");
        assert!(r.system.lower > r.baseline.upper, "{r:?}");
        // deterministic for a seed, different for another one
        assert_eq!(r, paired_bootstrap(&cfg, &bl, &sys, &bs).unwrap());
        let r2 = paired_bootstrap(&cfg, &bl, &sys, &BootstrapConfig { seed: 7, ..bs }).unwrap();
        assert_ne!(r.delta_ci, r2.delta_ci);
        assert_eq!(r.delta, r2.delta);
        // swapped roles: delta CI entirely negative
        let r3 = paired_bootstrap(&cfg, &sys, &bl, &bs).unwrap();
        assert!(r3.delta_ci.upper < 0.0);
        assert_eq!(r3.p_value, r.p_value);
    }

    #[test]
    fn works_for_chrf_and_single_system_ci() {
        let (refs, good, bad) = corpus(40);
        let refs = vec![refs];
        let cfg = ChrfConfig::chrf_plus_plus();
        let bl = corpus_chrf_stats(&bad, &refs, &cfg).unwrap();
        let sys = corpus_chrf_stats(&good, &refs, &cfg).unwrap();
        let bs = BootstrapConfig {
            n_samples: 200,
            seed: 3,
        };
        let r = paired_bootstrap(&cfg, &bl, &sys, &bs).unwrap();
        assert!(r.delta_ci.lower > 0.0, "{r:?}");
        let ci = bootstrap_ci(&cfg, &sys, &bs).unwrap();
        assert!(ci.lower <= ci.mean && ci.mean <= ci.upper);
        assert!(ci.contains(r.system_score));
        assert!(ci.upper - ci.lower > 0.0);
    }

    #[test]
    fn input_errors() {
        let cfg = BleuConfig::default();
        let a = vec![BleuStats::default(); 3];
        let b = vec![BleuStats::default(); 2];
        let bs = BootstrapConfig::default();
        assert!(matches!(
            paired_bootstrap(&cfg, &a, &b, &bs),
            Err(MetricError::SystemLengthMismatch { .. })
        ));
        assert_eq!(
            paired_bootstrap(&cfg, &[], &[], &bs),
            Err(MetricError::EmptyCorpus)
        );
        assert!(bootstrap_ci(
            &cfg,
            &a,
            &BootstrapConfig {
                n_samples: 0,
                seed: 1
            }
        )
        .is_err());
    }
}
