//! BLEU (Papineni et al., 2002) exactly as sacrebleu 2.6.0 computes it.
//!
//! Port of `sacrebleu/metrics/bleu.py` (`BLEU.compute_bleu`,
//! `_get_closest_ref_len`, `_extract_reference_info`,
//! `_compute_segment_statistics`), `sacrebleu/metrics/helpers.py`
//! (`extract_all_word_ngrams`) and `sacrebleu/utils.py` (`my_log`).
//!
//! Pipeline per segment: optional lowercasing, `rstrip`, tokenizer, Python
//! whitespace split, n-grams of order 1..=4. References of one segment are
//! merged by taking, for each n-gram, the maximum count over references; the
//! reference length is the one closest to the hypothesis length (ties go to
//! the shorter reference). Segment statistics are summed over the corpus and
//! the score is computed once from the sums.

use std::collections::HashMap;
use std::fmt;
use std::iter::Sum;
use std::ops::{Add, AddAssign};

use super::tokenize::{py_lower, py_rstrip, py_split, BleuTokenizer};
use super::{check_corpus, MetricError, SACREBLEU_VERSION};

/// BLEU's maximum n-gram order (sacrebleu's `MAX_NGRAM_ORDER`; fixed here).
pub const MAX_NGRAM_ORDER: usize = 4;

/// Smoothing methods of sacrebleu (Chen & Cherry, 2014).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Smoothing {
    /// `exp` (default): NIST/mteval-v13a geometric smoothing; the k-th order
    /// with zero matches gets precision `100 / (2^k * total)`.
    #[default]
    Exp,
    /// `floor`: zero-match orders get precision `100 * value / total`
    /// (sacrebleu default value 0.1, see [`Smoothing::FLOOR_DEFAULT`]).
    Floor(f64),
    /// `add-k`: add `value` to matches and totals of orders >= 2
    /// (sacrebleu default value 1, see [`Smoothing::ADD_K_DEFAULT`]).
    AddK(f64),
    /// `none`: no smoothing.
    None,
}

impl Smoothing {
    /// sacrebleu's default value for `floor`.
    pub const FLOOR_DEFAULT: f64 = 0.1;
    /// sacrebleu's default value for `add-k`.
    pub const ADD_K_DEFAULT: f64 = 1.0;

    /// Build from sacrebleu's `smooth_method` / `smooth_value` pair; `None`
    /// for the value selects sacrebleu's default (ignored for `exp`/`none`).
    pub fn from_method(method: &str, value: Option<f64>) -> Result<Self, MetricError> {
        match method {
            "exp" => Ok(Smoothing::Exp),
            "none" => Ok(Smoothing::None),
            "floor" => Ok(Smoothing::Floor(value.unwrap_or(Self::FLOOR_DEFAULT))),
            "add-k" => Ok(Smoothing::AddK(value.unwrap_or(Self::ADD_K_DEFAULT))),
            other => Err(MetricError::UnknownSmoothing(other.to_string())),
        }
    }

    /// sacrebleu's method name (`exp`, `floor`, `add-k`, `none`).
    pub fn method(&self) -> &'static str {
        match self {
            Smoothing::Exp => "exp",
            Smoothing::Floor(_) => "floor",
            Smoothing::AddK(_) => "add-k",
            Smoothing::None => "none",
        }
    }

    /// The signature fragment: `exp`, `none`, `floor[0.10]`, `add-k[1.00]`
    /// (value formatted like Python's `{:.2f}`).
    pub fn signature(&self) -> String {
        match self {
            Smoothing::Exp | Smoothing::None => self.method().to_string(),
            Smoothing::Floor(v) | Smoothing::AddK(v) => format!("{}[{:.2}]", self.method(), v),
        }
    }
}

/// BLEU configuration (sacrebleu's `BLEU(...)` arguments that are supported).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BleuConfig {
    /// Tokenizer applied to hypotheses and references (default `13a`).
    pub tokenizer: BleuTokenizer,
    /// Smoothing (default [`Smoothing::Exp`]).
    pub smoothing: Smoothing,
    /// Lowercase hypotheses and references before tokenizing (`case:lc`).
    pub lowercase: bool,
    /// Only average over n-gram orders the hypothesis has (`eff:yes`);
    /// off for corpus BLEU, on for sentence BLEU (see [`BleuConfig::sentence`]).
    pub effective_order: bool,
}

impl Default for BleuConfig {
    /// sacrebleu's corpus BLEU defaults: `13a`, `exp`, mixed case, no
    /// effective order.
    fn default() -> Self {
        BleuConfig {
            tokenizer: BleuTokenizer::Tok13a,
            smoothing: Smoothing::Exp,
            lowercase: false,
            effective_order: false,
        }
    }
}

impl BleuConfig {
    /// Defaults of `sacrebleu.sentence_bleu`: like [`Default`] but with
    /// `effective_order = true`.
    pub fn sentence() -> Self {
        BleuConfig {
            effective_order: true,
            ..Self::default()
        }
    }

    /// sacrebleu's reproducibility signature, e.g.
    /// `nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0`.
    /// `nrefs` is the number of reference streams.
    pub fn signature(&self, nrefs: usize) -> String {
        self.format_signature(nrefs, false)
    }

    /// Short form, e.g. `#:1|c:mixed|e:no|tok:13a|s:exp|v:2.6.0`.
    pub fn signature_short(&self, nrefs: usize) -> String {
        self.format_signature(nrefs, true)
    }

    fn format_signature(&self, nrefs: usize, short: bool) -> String {
        let k = |long: &'static str, abbr: &'static str| if short { abbr } else { long };
        format!(
            "{}:{}|{}:{}|{}:{}|tok:{}|{}:{}|{}:{}",
            k("nrefs", "#"),
            nrefs,
            k("case", "c"),
            if self.lowercase { "lc" } else { "mixed" },
            k("eff", "e"),
            if self.effective_order { "yes" } else { "no" },
            self.tokenizer.name(),
            k("smooth", "s"),
            self.smoothing.signature(),
            k("version", "v"),
            SACREBLEU_VERSION,
        )
    }

    /// sacrebleu's `BLEU._preprocess_segment`: optional lowercase, `rstrip`,
    /// tokenize.
    pub fn preprocess(&self, sent: &str) -> String {
        if self.lowercase {
            self.tokenizer.tokenize(py_rstrip(&py_lower(sent)))
        } else {
            self.tokenizer.tokenize(py_rstrip(sent))
        }
    }

    /// Sufficient statistics of one segment against its references (one
    /// string per reference; at least one is expected, with none the
    /// reference length is 0 and nothing matches).
    pub fn segment_stats<R: AsRef<str>>(&self, hyp: &str, refs: &[R]) -> BleuStats {
        let ref_lines: Vec<String> = refs.iter().map(|r| self.preprocess(r.as_ref())).collect();
        let ref_toks: Vec<Vec<&str>> = ref_lines.iter().map(|r| py_split(r).collect()).collect();

        // Reference n-grams: max count over references for each n-gram.
        let mut ref_ngrams: HashMap<&[&str], u64> = HashMap::new();
        for toks in &ref_toks {
            for (ngram, count) in count_ngrams(toks) {
                let e = ref_ngrams.entry(ngram).or_insert(0);
                *e = (*e).max(count);
            }
        }
        let ref_lens: Vec<u64> = ref_toks.iter().map(|t| t.len() as u64).collect();

        let hyp_line = self.preprocess(hyp);
        let hyp_toks: Vec<&str> = py_split(&hyp_line).collect();
        let hyp_len = hyp_toks.len() as u64;

        let mut stats = BleuStats {
            sys_len: hyp_len,
            ref_len: closest_ref_len(hyp_len, &ref_lens),
            ..BleuStats::default()
        };
        for (ngram, count) in count_ngrams(&hyp_toks) {
            let n = ngram.len() - 1;
            stats.total[n] += count;
            if let Some(&rc) = ref_ngrams.get(ngram) {
                stats.correct[n] += count.min(rc);
            }
        }
        stats
    }

    /// Score from (summed) sufficient statistics with this configuration's
    /// smoothing and effective-order setting.
    pub fn score_from_stats(&self, stats: &BleuStats) -> BleuScore {
        compute_bleu(stats, self.smoothing, self.effective_order)
    }
}

/// Counts of all n-grams of order 1..=4 (sacrebleu's `extract_all_word_ngrams`).
fn count_ngrams<'a, 'b>(toks: &'a [&'b str]) -> HashMap<&'a [&'b str], u64> {
    let mut map = HashMap::new();
    for n in 1..=MAX_NGRAM_ORDER {
        for w in toks.windows(n) {
            *map.entry(w).or_insert(0) += 1;
        }
    }
    map
}

/// sacrebleu's `_get_closest_ref_len`: the reference length with the smallest
/// absolute difference to `hyp_len`; on ties the shorter one. Returns 0 for
/// no references (sacrebleu would return -1, which cannot happen with its
/// input checks).
pub fn closest_ref_len(hyp_len: u64, ref_lens: &[u64]) -> u64 {
    let mut best: Option<(u64, u64)> = None; // (diff, len)
    for &len in ref_lens {
        let diff = hyp_len.abs_diff(len);
        best = match best {
            None => Some((diff, len)),
            Some((bd, bl)) if diff < bd || (diff == bd && len < bl) => Some((diff, len)),
            keep => keep,
        };
    }
    best.map_or(0, |(_, len)| len)
}

/// Per-segment (or summed) BLEU sufficient statistics, in sacrebleu's order
/// `[sys_len, ref_len, correct[0..4], total[0..4]]` (see [`BleuStats::to_array`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BleuStats {
    /// Hypothesis length in tokens.
    pub sys_len: u64,
    /// Closest reference length in tokens.
    pub ref_len: u64,
    /// Clipped n-gram matches for orders 1..=4.
    pub correct: [u64; MAX_NGRAM_ORDER],
    /// Hypothesis n-gram counts for orders 1..=4.
    pub total: [u64; MAX_NGRAM_ORDER],
}

impl BleuStats {
    /// sacrebleu's flat layout `[sys_len, ref_len, correct x4, total x4]`.
    pub fn to_array(&self) -> [u64; 2 + 2 * MAX_NGRAM_ORDER] {
        let mut a = [0; 2 + 2 * MAX_NGRAM_ORDER];
        a[0] = self.sys_len;
        a[1] = self.ref_len;
        a[2..2 + MAX_NGRAM_ORDER].copy_from_slice(&self.correct);
        a[2 + MAX_NGRAM_ORDER..].copy_from_slice(&self.total);
        a
    }

    /// Inverse of [`BleuStats::to_array`].
    pub fn from_array(a: &[u64; 2 + 2 * MAX_NGRAM_ORDER]) -> Self {
        let mut s = BleuStats {
            sys_len: a[0],
            ref_len: a[1],
            ..Default::default()
        };
        s.correct.copy_from_slice(&a[2..2 + MAX_NGRAM_ORDER]);
        s.total.copy_from_slice(&a[2 + MAX_NGRAM_ORDER..]);
        s
    }
}

impl AddAssign<&BleuStats> for BleuStats {
    fn add_assign(&mut self, o: &BleuStats) {
        self.sys_len += o.sys_len;
        self.ref_len += o.ref_len;
        for i in 0..MAX_NGRAM_ORDER {
            self.correct[i] += o.correct[i];
            self.total[i] += o.total[i];
        }
    }
}

impl AddAssign for BleuStats {
    fn add_assign(&mut self, o: BleuStats) {
        *self += &o;
    }
}

impl Add for BleuStats {
    type Output = BleuStats;
    fn add(mut self, o: BleuStats) -> BleuStats {
        self += &o;
        self
    }
}

impl<'a> Sum<&'a BleuStats> for BleuStats {
    fn sum<I: Iterator<Item = &'a BleuStats>>(iter: I) -> Self {
        iter.fold(BleuStats::default(), |mut acc, s| {
            acc += s;
            acc
        })
    }
}

impl Sum for BleuStats {
    fn sum<I: Iterator<Item = BleuStats>>(iter: I) -> Self {
        iter.fold(BleuStats::default(), |acc, s| acc + s)
    }
}

/// A BLEU score with its components (sacrebleu's `BLEUScore`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BleuScore {
    /// BLEU in [0, 100].
    pub score: f64,
    /// Raw clipped matches per order. NB: for [`Smoothing::AddK`] sacrebleu
    /// reports these *after* adding k to orders >= 2; here they stay raw
    /// (the precisions do include the smoothing).
    pub counts: [u64; MAX_NGRAM_ORDER],
    /// Raw hypothesis n-gram totals per order (same add-k caveat).
    pub totals: [u64; MAX_NGRAM_ORDER],
    /// (Smoothed) n-gram precisions in percent.
    pub precisions: [f64; MAX_NGRAM_ORDER],
    /// Brevity penalty.
    pub bp: f64,
    /// Total hypothesis length.
    pub sys_len: u64,
    /// Total (closest) reference length.
    pub ref_len: u64,
}

impl BleuScore {
    /// `sys_len / ref_len` (0 when `ref_len` is 0), as sacrebleu's `ratio`.
    pub fn ratio(&self) -> f64 {
        if self.ref_len == 0 {
            0.0
        } else {
            self.sys_len as f64 / self.ref_len as f64
        }
    }
}

impl fmt::Display for BleuScore {
    /// sacrebleu's `BLEUScore.format()` without signature, e.g.
    /// `BLEU = 59.90 85.1/74.4/65.0/58.8 (BP = 0.854 ratio = 0.864 hyp_len = 323 ref_len = 374)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.precisions;
        write!(
            f,
            "BLEU = {:.2} {:.1}/{:.1}/{:.1}/{:.1} (BP = {:.3} ratio = {:.3} hyp_len = {} ref_len = {})",
            self.score,
            p[0],
            p[1],
            p[2],
            p[3],
            self.bp,
            self.ratio(),
            self.sys_len,
            self.ref_len
        )
    }
}

/// sacrebleu's `my_log`: natural log with `log(0) = -9999999999`.
fn my_log(x: f64) -> f64 {
    if x == 0.0 {
        -9_999_999_999.0
    } else {
        x.ln()
    }
}

/// sacrebleu's `BLEU.compute_bleu` for `max_ngram_order = 4`, replicating
/// its floating-point operation order.
pub fn compute_bleu(stats: &BleuStats, smoothing: Smoothing, effective_order: bool) -> BleuScore {
    let (sys_len, ref_len) = (stats.sys_len, stats.ref_len);
    let mut bp = 1.0;
    if sys_len < ref_len {
        bp = if sys_len > 0 {
            (1.0 - ref_len as f64 / sys_len as f64).exp()
        } else {
            0.0
        };
    }

    let mut result = BleuScore {
        score: 0.0,
        counts: stats.correct,
        totals: stats.total,
        precisions: [0.0; MAX_NGRAM_ORDER],
        bp,
        sys_len,
        ref_len,
    };

    // Early stop if there are no matches at all (sacrebleu #141).
    if stats.correct.iter().all(|&c| c == 0) {
        return result;
    }

    let mut smooth_mteval = 1.0_f64;
    let mut eff_order = MAX_NGRAM_ORDER;
    for n in 1..=MAX_NGRAM_ORDER {
        let mut correct = stats.correct[n - 1] as f64;
        let mut total = stats.total[n - 1] as f64;
        if let Smoothing::AddK(k) = smoothing {
            if n > 1 {
                correct += k;
                total += k;
            }
        }
        if total == 0.0 {
            break;
        }
        if effective_order {
            eff_order = n;
        }
        if correct == 0.0 {
            match smoothing {
                Smoothing::Exp => {
                    smooth_mteval *= 2.0;
                    result.precisions[n - 1] = 100.0 / (smooth_mteval * total);
                }
                Smoothing::Floor(v) => result.precisions[n - 1] = 100.0 * v / total,
                Smoothing::AddK(_) | Smoothing::None => {}
            }
        } else {
            result.precisions[n - 1] = 100.0 * correct / total;
        }
    }

    // Python: sum([...]) left to right, then / eff_order.
    let log_sum = result.precisions[..eff_order]
        .iter()
        .fold(0.0, |acc, &p| acc + my_log(p));
    result.score = bp * (log_sum / eff_order as f64).exp();
    result
}

/// Per-segment statistics of a corpus. `refs` holds one `Vec` per reference
/// stream, each with one segment per hypothesis (sacrebleu's layout).
pub fn corpus_bleu_stats<H: AsRef<str>, R: AsRef<str>>(
    hyps: &[H],
    refs: &[Vec<R>],
    cfg: &BleuConfig,
) -> Result<Vec<BleuStats>, MetricError> {
    check_corpus(hyps.len(), refs)?;
    let mut seg_refs: Vec<&str> = Vec::with_capacity(refs.len());
    Ok(hyps
        .iter()
        .enumerate()
        .map(|(i, h)| {
            seg_refs.clear();
            seg_refs.extend(refs.iter().map(|s| s[i].as_ref()));
            cfg.segment_stats(h.as_ref(), &seg_refs)
        })
        .collect())
}

/// Corpus BLEU (sacrebleu's `BLEU(...).corpus_score(hyps, refs)`).
///
/// `refs` holds one `Vec` per reference stream, each with one segment per
/// hypothesis. An empty string is a (zero-length) reference, as in
/// sacrebleu; variable numbers of references per segment (sacrebleu's
/// `None` entries) are not supported.
pub fn corpus_bleu<H: AsRef<str>, R: AsRef<str>>(
    hyps: &[H],
    refs: &[Vec<R>],
    cfg: &BleuConfig,
) -> Result<BleuScore, MetricError> {
    let stats: BleuStats = corpus_bleu_stats(hyps, refs, cfg)?.iter().sum();
    Ok(cfg.score_from_stats(&stats))
}

/// Sentence BLEU (sacrebleu's `BLEU(...).sentence_score(hyp, refs)`): one
/// hypothesis against one or more references. Use [`BleuConfig::sentence`]
/// for `sacrebleu.sentence_bleu`'s defaults (effective order on).
pub fn sentence_bleu<R: AsRef<str>>(
    hyp: &str,
    refs: &[R],
    cfg: &BleuConfig,
) -> Result<BleuScore, MetricError> {
    if refs.is_empty() {
        return Err(MetricError::NoReferences);
    }
    Ok(cfg.score_from_stats(&cfg.segment_stats(hyp, refs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(sys: u64, rf: u64, c: [u64; 4], t: [u64; 4]) -> BleuStats {
        BleuStats {
            sys_len: sys,
            ref_len: rf,
            correct: c,
            total: t,
        }
    }

    #[test]
    fn closest_ref_len_prefers_shorter_on_tie() {
        assert_eq!(closest_ref_len(4, &[3, 5]), 3);
        assert_eq!(closest_ref_len(4, &[5, 3]), 3);
        assert_eq!(closest_ref_len(4, &[6, 5, 2]), 5);
        assert_eq!(closest_ref_len(0, &[]), 0);
    }

    #[test]
    fn perfect_match_is_100() {
        let cfg = BleuConfig::default();
        let s = sentence_bleu("the cat sat on the mat", &["the cat sat on the mat"], &cfg).unwrap();
        // exp(mean(log(100))) is not exactly 100 in f64; sacrebleu prints the same
        assert_eq!(s.score, 100.00000000000004);
        assert_eq!(s.counts, [6, 5, 4, 3]);
        assert_eq!(s.totals, [6, 5, 4, 3]);
        assert_eq!(s.bp, 1.0);
    }

    #[test]
    fn brevity_penalty_and_zero_hyp() {
        // sys_len 0 -> bp 0; no matches -> score 0
        let r = compute_bleu(&stats(0, 5, [0; 4], [0; 4]), Smoothing::Exp, false);
        assert_eq!((r.score, r.bp), (0.0, 0.0));
        let r = compute_bleu(
            &stats(5, 10, [5, 4, 3, 2], [5, 4, 3, 2]),
            Smoothing::Exp,
            false,
        );
        assert_eq!(r.bp, (1.0f64 - 2.0).exp());
        assert!((r.score - 100.0 * (-1.0f64).exp()).abs() < 1e-12);
    }

    #[test]
    fn smoothing_variants() {
        // two unigrams matched of 3, nothing else
        let s = stats(3, 3, [2, 0, 0, 0], [3, 2, 1, 0]);
        let exp = compute_bleu(&s, Smoothing::Exp, false);
        assert_eq!(exp.precisions[1], 100.0 / (2.0 * 2.0));
        assert_eq!(exp.precisions[2], 100.0 / (4.0 * 1.0));
        assert_eq!(exp.precisions[3], 0.0); // total 0 -> break
        assert!(exp.score < 1e-300); // log(0) floor drags non-eff score to 0
        let eff = compute_bleu(&s, Smoothing::Exp, true);
        let expected = ((100.0f64 * 2.0 / 3.0).ln() + 25.0f64.ln() + 25.0f64.ln()) / 3.0;
        assert!((eff.score - expected.exp()).abs() < 1e-12);
        let floor = compute_bleu(&s, Smoothing::Floor(0.1), true);
        assert_eq!(floor.precisions[1], 100.0 * 0.1 / 2.0);
        // add-k never breaks for n > 1: the empty 4-gram order gets k/k = 100%
        let addk = compute_bleu(&s, Smoothing::AddK(1.0), false);
        assert_eq!(addk.precisions[1], 100.0 * 1.0 / 3.0);
        assert_eq!(addk.precisions[3], 100.0);
        assert_eq!(addk.counts, [2, 0, 0, 0]); // raw counts reported
        let none = compute_bleu(&s, Smoothing::None, true);
        assert_eq!(none.score, 0.0);
    }

    #[test]
    fn signatures() {
        let mut cfg = BleuConfig::default();
        assert_eq!(
            cfg.signature(1),
            "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"
        );
        cfg.smoothing = Smoothing::from_method("floor", None).unwrap();
        cfg.lowercase = true;
        cfg.tokenizer = BleuTokenizer::Zh;
        assert_eq!(
            cfg.signature(2),
            "nrefs:2|case:lc|eff:no|tok:zh|smooth:floor[0.10]|version:2.6.0"
        );
        cfg.smoothing = Smoothing::AddK(0.125);
        cfg.effective_order = true;
        assert_eq!(
            cfg.signature_short(3),
            "#:3|c:lc|e:yes|tok:zh|s:add-k[0.12]|v:2.6.0"
        );
        assert!(Smoothing::from_method("bogus", None).is_err());
    }

    #[test]
    fn stats_array_roundtrip_and_sum() {
        let a = stats(3, 4, [3, 2, 1, 0], [3, 2, 1, 0]);
        let b = stats(1, 2, [1, 0, 0, 0], [1, 0, 0, 0]);
        assert_eq!(BleuStats::from_array(&a.to_array()), a);
        assert_eq!(a.to_array(), [3, 4, 3, 2, 1, 0, 3, 2, 1, 0]);
        let s: BleuStats = [a, b].iter().sum();
        assert_eq!(s, stats(4, 6, [4, 2, 1, 0], [4, 2, 1, 0]));
    }

    #[test]
    fn corpus_input_errors() {
        let cfg = BleuConfig::default();
        let empty: [&str; 0] = [];
        assert_eq!(
            corpus_bleu(&empty, &[Vec::<&str>::new()], &cfg),
            Err(MetricError::EmptyCorpus)
        );
        assert_eq!(
            corpus_bleu(&["a"], &Vec::<Vec<&str>>::new(), &cfg),
            Err(MetricError::NoReferences)
        );
        assert_eq!(
            corpus_bleu(&["a", "b"], &[vec!["a", "b"], vec!["a"]], &cfg),
            Err(MetricError::RefLengthMismatch {
                stream: 1,
                expected: 2,
                got: 1
            })
        );
    }

    #[test]
    fn display_like_sacrebleu() {
        let s = compute_bleu(
            &stats(323, 374, [275, 218, 171, 137], [323, 293, 263, 233]),
            Smoothing::Exp,
            false,
        );
        assert_eq!(
            s.to_string(),
            "BLEU = 59.90 85.1/74.4/65.0/58.8 (BP = 0.854 ratio = 0.864 hyp_len = 323 ref_len = 374)"
        );
    }
}
