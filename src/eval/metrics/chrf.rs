//! chrF (Popović, 2015) and chrF++ (Popović, 2017) exactly as sacrebleu
//! 2.6.0 computes them.
//!
//! Port of `sacrebleu/metrics/chrf.py` (`_remove_punctuation`,
//! `_get_match_statistics`, `_compute_f_score`,
//! `_compute_segment_statistics`) and the character/word n-gram helpers of
//! `sacrebleu/metrics/helpers.py`.
//!
//! Per segment and order the statistics are `[hyp n-grams, ref n-grams,
//! matches]`; for several references the one with the highest sentence-level
//! F-score wins (first one on ties). Corpus statistics are summed and the
//! F-score is computed once from the sums. By default (sacrebleu's
//! `eps_smoothing=False`) precision and recall are averaged over the orders
//! where both hypothesis and reference have n-grams ("effective order",
//! `eff:yes` in the signature) before the F-beta combination.

use std::collections::HashMap;
use std::hash::Hash;
use std::ops::AddAssign;

use super::tokenize::{is_py_whitespace, py_lower, py_split};
use super::{check_corpus, MetricError, SACREBLEU_VERSION};

/// chrF configuration (sacrebleu's `CHRF(...)` arguments).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChrfConfig {
    /// Character n-gram order (default 6).
    pub char_order: usize,
    /// Word n-gram order: 0 for chrF (default), 2 for chrF++.
    pub word_order: usize,
    /// Recall weight beta (default 2).
    pub beta: u32,
    /// Lowercase hypotheses and references.
    pub lowercase: bool,
    /// Keep whitespace when extracting character n-grams (default: removed).
    pub whitespace: bool,
    /// chrF++.py/NLTK/Moses-style epsilon smoothing (average of per-order
    /// F-scores) instead of sacrebleu's default effective-order averaging.
    pub eps_smoothing: bool,
}

impl Default for ChrfConfig {
    /// sacrebleu's chrF defaults: `nc:6|nw:0`, beta 2, mixed case, whitespace
    /// removed, effective-order averaging.
    fn default() -> Self {
        ChrfConfig {
            char_order: 6,
            word_order: 0,
            beta: 2,
            lowercase: false,
            whitespace: false,
            eps_smoothing: false,
        }
    }
}

/// ASCII punctuation (Python's `string.punctuation`) used by chrF++'s word
/// splitting.
fn is_chrf_punct(c: char) -> bool {
    c.is_ascii_punctuation()
}

impl ChrfConfig {
    /// chrF++ (`word_order = 2`), otherwise defaults.
    pub fn chrf_plus_plus() -> Self {
        ChrfConfig {
            word_order: 2,
            ..Self::default()
        }
    }

    /// Total number of orders (`char_order + word_order`).
    pub fn order(&self) -> usize {
        self.char_order + self.word_order
    }

    /// Number of statistics per segment (`3 * order`).
    pub fn stats_len(&self) -> usize {
        3 * self.order()
    }

    /// The metric name sacrebleu prints: `chrF2`, `chrF2++`, ...
    pub fn name(&self) -> String {
        format!("chrF{}{}", self.beta, "+".repeat(self.word_order))
    }

    /// sacrebleu's signature, e.g.
    /// `nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:2.6.0`.
    pub fn signature(&self, nrefs: usize) -> String {
        self.format_signature(nrefs, false)
    }

    /// Short form, e.g. `#:1|c:mixed|e:yes|nc:6|nw:0|s:no|v:2.6.0`.
    pub fn signature_short(&self, nrefs: usize) -> String {
        self.format_signature(nrefs, true)
    }

    fn format_signature(&self, nrefs: usize, short: bool) -> String {
        let k = |long: &'static str, abbr: &'static str| if short { abbr } else { long };
        format!(
            "{}:{}|{}:{}|{}:{}|nc:{}|nw:{}|{}:{}|{}:{}",
            k("nrefs", "#"),
            nrefs,
            k("case", "c"),
            if self.lowercase { "lc" } else { "mixed" },
            k("eff", "e"),
            if self.eps_smoothing { "no" } else { "yes" },
            self.char_order,
            self.word_order,
            k("space", "s"),
            if self.whitespace { "yes" } else { "no" },
            k("version", "v"),
            SACREBLEU_VERSION,
        )
    }

    fn preprocess<'a>(&self, s: &'a str) -> std::borrow::Cow<'a, str> {
        if self.lowercase {
            std::borrow::Cow::Owned(py_lower(s))
        } else {
            std::borrow::Cow::Borrowed(s)
        }
    }

    /// Sufficient statistics of one segment: for the best reference (highest
    /// sentence F-score, first on ties), `[hyp, ref, match]` per order, char
    /// orders first. With no references all statistics are 0.
    pub fn segment_stats<R: AsRef<str>>(&self, hyp: &str, refs: &[R]) -> ChrfStats {
        let hyp = self.preprocess(hyp);
        let hyp_chars = self.chars_for_ngrams(&hyp);
        let hyp_words = remove_punctuation(&hyp);
        let hyp_ngrams = self.all_ngrams(&hyp_chars, &hyp_words);

        let mut best = ChrfStats::zeros(self);
        let mut best_f = -1.0;
        for r in refs {
            let r = self.preprocess(r.as_ref());
            let ref_chars = self.chars_for_ngrams(&r);
            let ref_words = remove_punctuation(&r);
            let ref_ngrams = self.all_ngrams(&ref_chars, &ref_words);

            let mut stats = Vec::with_capacity(self.stats_len());
            for (h, r) in hyp_ngrams.iter().zip(&ref_ngrams) {
                stats.extend_from_slice(&h.match_stats(r));
            }
            let stats = ChrfStats(stats);
            let f = self.f_score(&stats);
            if f > best_f {
                best_f = f;
                best = stats;
            }
        }
        best
    }

    /// Characters used for character n-grams: all Python whitespace removed
    /// unless `whitespace` is set.
    fn chars_for_ngrams(&self, s: &str) -> Vec<char> {
        if self.whitespace {
            s.chars().collect()
        } else {
            s.chars().filter(|&c| !is_py_whitespace(c)).collect()
        }
    }

    fn all_ngrams<'a, 'b>(
        &self,
        chars: &'a [char],
        words: &'a [&'b str],
    ) -> Vec<NgramCounts<'a, 'b>> {
        let mut out = Vec::with_capacity(self.order());
        for n in 1..=self.char_order {
            out.push(NgramCounts::Char(count_windows(chars, n)));
        }
        for n in 1..=self.word_order {
            out.push(NgramCounts::Word(count_windows(words, n)));
        }
        out
    }

    /// sacrebleu's `CHRF._compute_f_score` on (summed) statistics; returns
    /// the score in [0, 100].
    ///
    /// # Panics
    /// If `stats.0.len() != self.stats_len()`.
    pub fn f_score(&self, stats: &ChrfStats) -> f64 {
        let s = &stats.0;
        assert_eq!(s.len(), self.stats_len(), "chrF statistics length mismatch");
        let eps = 1e-16;
        let factor = (self.beta as f64) * (self.beta as f64);
        let mut score = 0.0;
        let mut effective_order = 0usize;
        let (mut avg_prec, mut avg_rec) = (0.0, 0.0);

        for i in 0..self.order() {
            let (n_hyp, n_ref, n_match) = (s[3 * i], s[3 * i + 1], s[3 * i + 2]);
            let prec = if n_hyp > 0 {
                n_match as f64 / n_hyp as f64
            } else {
                eps
            };
            let rec = if n_ref > 0 {
                n_match as f64 / n_ref as f64
            } else {
                eps
            };
            let denom = factor * prec + rec;
            score += if denom > 0.0 {
                (1.0 + factor) * prec * rec / denom
            } else {
                eps
            };
            if n_hyp > 0 && n_ref > 0 {
                avg_prec += prec;
                avg_rec += rec;
                effective_order += 1;
            }
        }

        if self.eps_smoothing {
            return 100.0 * score / self.order() as f64;
        }
        if effective_order == 0 {
            avg_prec = 0.0;
            avg_rec = 0.0;
        } else {
            avg_prec /= effective_order as f64;
            avg_rec /= effective_order as f64;
        }
        if avg_prec + avg_rec != 0.0 {
            let mut score = (1.0 + factor) * avg_prec * avg_rec;
            score /= factor * avg_prec + avg_rec;
            100.0 * score
        } else {
            0.0
        }
    }

    /// Score from (summed) statistics.
    pub fn score_from_stats(&self, stats: &ChrfStats) -> ChrfScore {
        ChrfScore {
            score: self.f_score(stats),
            char_order: self.char_order,
            word_order: self.word_order,
            beta: self.beta,
        }
    }

    fn validate(&self) -> Result<(), MetricError> {
        if self.order() == 0 {
            return Err(MetricError::InvalidConfig(
                "chrF needs char_order + word_order > 0".into(),
            ));
        }
        Ok(())
    }
}

/// sacrebleu's `CHRF._remove_punctuation`: whitespace-split words; a word of
/// two or more characters ending in ASCII punctuation is split off its last
/// character, otherwise one starting with ASCII punctuation is split after
/// its first character (so `(hi)` becomes `(hi` and `)`, sacrebleu #124).
fn remove_punctuation(sent: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for w in py_split(sent) {
        let mut it = w.chars();
        let first = it.next().expect("py_split yields non-empty words");
        let last = w.chars().next_back().unwrap();
        if it.next().is_none() {
            out.push(w); // single character
        } else if is_chrf_punct(last) {
            let cut = w.len() - last.len_utf8();
            out.push(&w[..cut]);
            out.push(&w[cut..]);
        } else if is_chrf_punct(first) {
            let cut = first.len_utf8();
            out.push(&w[..cut]);
            out.push(&w[cut..]);
        } else {
            out.push(w);
        }
    }
    out
}

fn count_windows<T: Eq + Hash>(items: &[T], n: usize) -> HashMap<&[T], u64> {
    let mut map = HashMap::new();
    if n > 0 {
        for w in items.windows(n) {
            *map.entry(w).or_insert(0) += 1;
        }
    }
    map
}

/// Counter of one n-gram order (character n-grams or word n-grams).
enum NgramCounts<'a, 'b> {
    Char(HashMap<&'a [char], u64>),
    Word(HashMap<&'a [&'b str], u64>),
}

impl NgramCounts<'_, '_> {
    /// sacrebleu's `_get_match_statistics`: `[hyp count (0 if the reference
    /// has no n-gram of this order), ref count, matches]`.
    fn match_stats(&self, reference: &Self) -> [u64; 3] {
        fn stats<K: Eq + Hash>(h: &HashMap<K, u64>, r: &HashMap<K, u64>) -> [u64; 3] {
            let mut hyp_count = 0;
            let mut match_count = 0;
            for (ng, &c) in h {
                hyp_count += c;
                if let Some(&rc) = r.get(ng) {
                    match_count += c.min(rc);
                }
            }
            let ref_count = r.values().sum();
            [
                if r.is_empty() { 0 } else { hyp_count },
                ref_count,
                match_count,
            ]
        }
        match (self, reference) {
            (NgramCounts::Char(h), NgramCounts::Char(r)) => stats(h, r),
            (NgramCounts::Word(h), NgramCounts::Word(r)) => stats(h, r),
            _ => unreachable!("orders are aligned"),
        }
    }
}

/// Per-segment (or summed) chrF statistics: `[hyp, ref, match]` for each
/// order, character orders 1..=`char_order` then word orders
/// 1..=`word_order` (sacrebleu's flat layout).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ChrfStats(pub Vec<u64>);

impl ChrfStats {
    /// All-zero statistics of the right length for `cfg`.
    pub fn zeros(cfg: &ChrfConfig) -> Self {
        ChrfStats(vec![0; cfg.stats_len()])
    }
}

impl AddAssign<&ChrfStats> for ChrfStats {
    /// Element-wise sum; an empty left-hand side adopts the right one's length.
    fn add_assign(&mut self, o: &ChrfStats) {
        if self.0.is_empty() {
            self.0 = vec![0; o.0.len()];
        }
        assert_eq!(self.0.len(), o.0.len(), "chrF statistics length mismatch");
        for (a, b) in self.0.iter_mut().zip(&o.0) {
            *a += b;
        }
    }
}

/// A chrF score (sacrebleu's `CHRFScore`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ChrfScore {
    /// chrF in [0, 100].
    pub score: f64,
    /// Character n-gram order.
    pub char_order: usize,
    /// Word n-gram order.
    pub word_order: usize,
    /// Beta.
    pub beta: u32,
}

impl ChrfScore {
    /// `chrF2`, `chrF2++`, ... as sacrebleu names it.
    pub fn name(&self) -> String {
        format!("chrF{}{}", self.beta, "+".repeat(self.word_order))
    }
}

/// Per-segment statistics of a corpus (`refs`: one `Vec` per reference
/// stream, one segment per hypothesis).
pub fn corpus_chrf_stats<H: AsRef<str>, R: AsRef<str>>(
    hyps: &[H],
    refs: &[Vec<R>],
    cfg: &ChrfConfig,
) -> Result<Vec<ChrfStats>, MetricError> {
    cfg.validate()?;
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

/// Corpus chrF / chrF++ (sacrebleu's `CHRF(...).corpus_score(hyps, refs)`).
pub fn corpus_chrf<H: AsRef<str>, R: AsRef<str>>(
    hyps: &[H],
    refs: &[Vec<R>],
    cfg: &ChrfConfig,
) -> Result<ChrfScore, MetricError> {
    let mut total = ChrfStats::zeros(cfg);
    for s in corpus_chrf_stats(hyps, refs, cfg)? {
        total += &s;
    }
    Ok(cfg.score_from_stats(&total))
}

/// Sentence chrF (sacrebleu's `CHRF(...).sentence_score(hyp, refs)`).
pub fn sentence_chrf<R: AsRef<str>>(
    hyp: &str,
    refs: &[R],
    cfg: &ChrfConfig,
) -> Result<ChrfScore, MetricError> {
    cfg.validate()?;
    if refs.is_empty() {
        return Err(MetricError::NoReferences);
    }
    Ok(cfg.score_from_stats(&cfg.segment_stats(hyp, refs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn punctuation_splitting_like_sacrebleu() {
        assert_eq!(
            remove_punctuation("(hi) \"quoted\" a, ,b . x.y é!"),
            ["(hi", ")", "\"quoted", "\"", "a", ",", ",", "b", ".", "x.y", "é", "!"]
        );
    }

    #[test]
    fn identical_is_100_and_disjoint_is_0() {
        for cfg in [ChrfConfig::default(), ChrfConfig::chrf_plus_plus()] {
            let s = sentence_chrf("Hello there, world!", &["Hello there, world!"], &cfg).unwrap();
            assert!((s.score - 100.0).abs() < 1e-12, "{}", s.score);
            let s = sentence_chrf("abc", &["xyz"], &cfg).unwrap();
            assert_eq!(s.score, 0.0);
        }
    }

    #[test]
    fn stats_layout() {
        let cfg = ChrfConfig {
            char_order: 2,
            word_order: 1,
            ..Default::default()
        };
        // hyp chars "abc" (whitespace removed from "ab c"), ref "abd"
        let s = cfg.segment_stats("ab c", &["abd"]);
        // char1: hyp 3, ref 3, match 2 (a, b); char2: hyp 2 (ab, bc), ref 2, match 1;
        // word1: hyp ["ab","c"], ref ["abd"], match 0
        assert_eq!(s.0, vec![3, 3, 2, 2, 2, 1, 2, 1, 0]);
        // empty reference: hyp count is reported as 0
        let s = cfg.segment_stats("ab", &[""]);
        assert_eq!(s.0, vec![0; 9]);
    }

    #[test]
    fn best_reference_wins() {
        let cfg = ChrfConfig::default();
        let one = cfg.segment_stats("the cat", &["a dog"]);
        let two = cfg.segment_stats("the cat", &["a dog", "the cat"]);
        assert_ne!(one, two);
        assert_eq!(two, cfg.segment_stats("the cat", &["the cat"]));
    }

    #[test]
    fn signature_and_name() {
        let cfg = ChrfConfig::chrf_plus_plus();
        assert_eq!(cfg.name(), "chrF2++");
        assert_eq!(
            cfg.signature(1),
            "nrefs:1|case:mixed|eff:yes|nc:6|nw:2|space:no|version:2.6.0"
        );
        let cfg = ChrfConfig {
            eps_smoothing: true,
            whitespace: true,
            lowercase: true,
            ..Default::default()
        };
        assert_eq!(
            cfg.signature_short(2),
            "#:2|c:lc|e:no|nc:6|nw:0|s:yes|v:2.6.0"
        );
    }

    #[test]
    fn zero_order_rejected() {
        let cfg = ChrfConfig {
            char_order: 0,
            word_order: 0,
            ..Default::default()
        };
        assert!(matches!(
            sentence_chrf("a", &["a"], &cfg),
            Err(MetricError::InvalidConfig(_))
        ));
    }
}
