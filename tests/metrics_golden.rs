//! Golden tests: BLEU / chrF / tokenizers against sacrebleu 2.6.0.
//!
//! `tests/data/metrics_golden.json` is produced by
//! `scripts/make_metric_goldens.py`. Floats are compared to 1e-9 absolute,
//! integer statistics and signatures exactly.

use std::collections::HashMap;
use std::sync::LazyLock;

use hy_quant::eval::metrics::tokenize::{
    intl_classes, is_py_whitespace, is_zh_chinese_char, py_lower, py_rstrip, BleuTokenizer,
};
use hy_quant::eval::metrics::{
    corpus_bleu, corpus_bleu_stats, corpus_chrf, corpus_chrf_stats, sentence_bleu, sentence_chrf,
    BleuConfig, BleuStats, ChrfConfig, ChrfStats, Smoothing,
};
use regex::Regex;
use serde_json::Value;

const TOL: f64 = 1e-9;

static GOLDEN: LazyLock<Value> = LazyLock::new(|| {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/metrics_golden.json"
    );
    let text = std::fs::read_to_string(path).expect("read metrics_golden.json");
    serde_json::from_str(&text).expect("parse metrics_golden.json")
});

struct Corpus {
    hyps: Vec<String>,
    refs: Vec<Vec<String>>,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn corpora() -> HashMap<String, Corpus> {
    GOLDEN["corpora"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let refs = c["refs"].as_array().unwrap().iter().map(strings).collect();
            (
                c["name"].as_str().unwrap().to_string(),
                Corpus {
                    hyps: strings(&c["hyps"]),
                    refs,
                },
            )
        })
        .collect()
}

/// Collects mismatches and the largest float deviation seen.
#[derive(Default)]
struct Checker {
    errors: Vec<String>,
    max_diff: f64,
    floats: usize,
}

impl Checker {
    fn float(&mut self, what: impl Fn() -> String, got: f64, want: f64) {
        self.floats += 1;
        let d = (got - want).abs();
        if d > self.max_diff {
            self.max_diff = d;
        }
        if d.is_nan() || d > TOL {
            self.errors
                .push(format!("{}: got {got:?}, want {want:?}", what()));
        }
    }

    fn eq<T: PartialEq + std::fmt::Debug>(&mut self, what: impl Fn() -> String, got: T, want: T) {
        if got != want {
            self.errors
                .push(format!("{}: got {got:?}, want {want:?}", what()));
        }
    }

    fn finish(self, name: &str, cases: usize) {
        eprintln!(
            "{name}: {cases} cases, {} float comparisons, max abs diff {:e}",
            self.floats, self.max_diff
        );
        assert!(cases > 0, "{name}: no cases");
        assert!(
            self.errors.is_empty(),
            "{name}: {} mismatches, first ones:\n{}",
            self.errors.len(),
            self.errors[..self.errors.len().min(25)].join("\n")
        );
    }
}

/// Golden floats are stored as Python `repr` strings (serde_json's default
/// float parser is not correctly rounded; Rust's `str::parse` is).
fn fv(v: &Value) -> f64 {
    match v {
        Value::String(s) => s.parse().unwrap(),
        other => other.as_f64().unwrap(),
    }
}

fn bleu_cfg(case: &Value) -> BleuConfig {
    let method = case["sm"].as_str().unwrap();
    BleuConfig {
        tokenizer: case["tok"].as_str().unwrap().parse().unwrap(),
        smoothing: Smoothing::from_method(method, case["sv"].as_f64()).unwrap(),
        lowercase: case["lc"].as_bool().unwrap(),
        effective_order: case["eff"].as_bool().unwrap(),
    }
}

fn chrf_cfg(case: &Value) -> ChrfConfig {
    ChrfConfig {
        char_order: case["char_order"].as_u64().unwrap() as usize,
        word_order: case["word_order"].as_u64().unwrap() as usize,
        beta: case["beta"].as_u64().unwrap() as u32,
        lowercase: case["lowercase"].as_bool().unwrap(),
        whitespace: case["whitespace"].as_bool().unwrap(),
        eps_smoothing: case["eps_smoothing"].as_bool().unwrap(),
    }
}

fn u64s(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

/// Compare a BLEU result with a sacrebleu record. sacrebleu reports add-k
/// smoothed counts/totals (k added for orders >= 2); ours are raw.
fn check_bleu(
    ck: &mut Checker,
    label: &str,
    cfg: &BleuConfig,
    got: &hy_quant::eval::metrics::BleuScore,
    want: &Value,
) {
    let l = || label.to_string();
    ck.float(|| format!("{} score", l()), got.score, fv(&want["score"]));
    ck.float(|| format!("{} bp", l()), got.bp, fv(&want["bp"]));
    ck.eq(
        || format!("{} sys_len", l()),
        got.sys_len,
        want["sys_len"].as_u64().unwrap(),
    );
    ck.eq(
        || format!("{} ref_len", l()),
        got.ref_len,
        want["ref_len"].as_u64().unwrap(),
    );
    let prec = want["prec"].as_array().unwrap();
    let counts = want["counts"].as_array().unwrap();
    let totals = want["totals"].as_array().unwrap();
    // sacrebleu's early exit (no matches at all) happens before add-k.
    let add_k = match cfg.smoothing {
        Smoothing::AddK(k) if got.counts.iter().any(|&c| c > 0) => k,
        _ => 0.0,
    };
    for n in 0..4 {
        ck.float(
            || format!("{} precision[{n}]", l()),
            got.precisions[n],
            fv(&prec[n]),
        );
        let k = if n > 0 { add_k } else { 0.0 };
        // exact: small integers (+ k) are exactly representable
        ck.eq(
            || format!("{} counts[{n}]", l()),
            got.counts[n] as f64 + k,
            counts[n].as_f64().unwrap(),
        );
        ck.eq(
            || format!("{} totals[{n}]", l()),
            got.totals[n] as f64 + k,
            totals[n].as_f64().unwrap(),
        );
    }
}

#[test]
fn tokenizers_match_sacrebleu() {
    let t = &GOLDEN["tokenize"];
    let lines = strings(&t["lines"]);
    let mut ck = Checker::default();
    let mut n = 0;
    for tok in BleuTokenizer::ALL {
        let want = if tok == BleuTokenizer::None {
            // identity: not stored in the golden file
            lines.iter().map(|l| py_rstrip(l).to_string()).collect()
        } else {
            strings(&t[tok.name()])
        };
        assert_eq!(want.len(), lines.len());
        for (line, w) in lines.iter().zip(&want) {
            n += 1;
            ck.eq(
                || format!("{tok} on {line:?}"),
                tok.tokenize(py_rstrip(line)),
                w.clone(),
            );
        }
    }
    ck.finish("tokenize", n);
}

#[test]
fn bleu_segment_stats_match_sacrebleu() {
    let corpora = corpora();
    let cases = GOLDEN["bleu_stats"].as_array().unwrap();
    let mut ck = Checker::default();
    for case in cases {
        let c = &corpora[case["c"].as_str().unwrap()];
        let cfg = BleuConfig {
            tokenizer: case["tok"].as_str().unwrap().parse().unwrap(),
            lowercase: case["lc"].as_bool().unwrap(),
            ..Default::default()
        };
        let got = corpus_bleu_stats(&c.hyps, &c.refs, &cfg).unwrap();
        let want = case["stats"].as_array().unwrap();
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let w: [u64; 10] = u64s(w).try_into().unwrap();
            ck.eq(|| format!("{} seg {i}", case["c"]), g.to_array(), w);
            ck.eq(
                || format!("{} seg {i} from_array", case["c"]),
                BleuStats::from_array(&w),
                *g,
            );
        }
    }
    ck.finish("bleu_stats", cases.len());
}

#[test]
fn corpus_bleu_matches_sacrebleu() {
    let corpora = corpora();
    let cases = GOLDEN["bleu_corpus"].as_array().unwrap();
    let mut ck = Checker::default();
    for case in cases {
        let c = &corpora[case["c"].as_str().unwrap()];
        let cfg = bleu_cfg(case);
        let label = format!("{} {}", case["c"], case["sig"]);
        let got = corpus_bleu(&c.hyps, &c.refs, &cfg).unwrap();
        check_bleu(&mut ck, &label, &cfg, &got, case);
        ck.eq(
            || format!("{label} signature"),
            cfg.signature(c.refs.len()),
            case["sig"].as_str().unwrap().to_string(),
        );
        if let Some(short) = case.get("sig_short") {
            ck.eq(
                || format!("{label} short signature"),
                cfg.signature_short(c.refs.len()),
                short.as_str().unwrap().to_string(),
            );
        }
    }
    ck.finish("bleu_corpus", cases.len());
}

#[test]
fn sentence_bleu_matches_sacrebleu() {
    let corpora = corpora();
    let cases = GOLDEN["bleu_sentence"].as_array().unwrap();
    let mut ck = Checker::default();
    for case in cases {
        let c = &corpora[case["c"].as_str().unwrap()];
        let i = case["seg"].as_u64().unwrap() as usize;
        let refs: Vec<&str> = c.refs.iter().map(|s| s[i].as_str()).collect();
        let cfg = bleu_cfg(case);
        let label = format!("{} seg {i} {:?}", case["c"], cfg);
        let got = sentence_bleu(&c.hyps[i], &refs, &cfg).unwrap();
        check_bleu(&mut ck, &label, &cfg, &got, case);
        if let Some(sig) = case.get("sig") {
            ck.eq(
                || format!("{label} signature"),
                cfg.signature(refs.len()),
                sig.as_str().unwrap().to_string(),
            );
        }
    }
    ck.finish("bleu_sentence", cases.len());
}

#[test]
fn chrf_segment_stats_match_sacrebleu() {
    let corpora = corpora();
    let cases = GOLDEN["chrf_stats"].as_array().unwrap();
    let mut ck = Checker::default();
    for case in cases {
        let c = &corpora[case["c"].as_str().unwrap()];
        let cfg = chrf_cfg(case);
        let got = corpus_chrf_stats(&c.hyps, &c.refs, &cfg).unwrap();
        let want = case["stats"].as_array().unwrap();
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            ck.eq(
                || format!("{} {:?} seg {i}", case["c"], cfg),
                g.clone(),
                ChrfStats(u64s(w)),
            );
        }
    }
    ck.finish("chrf_stats", cases.len());
}

#[test]
fn corpus_chrf_matches_sacrebleu() {
    let corpora = corpora();
    let cases = GOLDEN["chrf_corpus"].as_array().unwrap();
    let mut ck = Checker::default();
    for case in cases {
        let c = &corpora[case["c"].as_str().unwrap()];
        let cfg = chrf_cfg(case);
        let label = format!("{} {}", case["c"], case["signature"]);
        let got = corpus_chrf(&c.hyps, &c.refs, &cfg).unwrap();
        ck.float(|| label.clone(), got.score, fv(&case["score"]));
        ck.eq(
            || format!("{label} name"),
            got.name(),
            case["name"].as_str().unwrap().to_string(),
        );
        ck.eq(
            || format!("{label} signature"),
            cfg.signature(c.refs.len()),
            case["signature"].as_str().unwrap().to_string(),
        );
        ck.eq(
            || format!("{label} short signature"),
            cfg.signature_short(c.refs.len()),
            case["signature_short"].as_str().unwrap().to_string(),
        );
    }
    ck.finish("chrf_corpus", cases.len());
}

#[test]
fn sentence_chrf_matches_sacrebleu() {
    let corpora = corpora();
    let cases = GOLDEN["chrf_sentence"].as_array().unwrap();
    let mut ck = Checker::default();
    for case in cases {
        let c = &corpora[case["c"].as_str().unwrap()];
        let i = case["seg"].as_u64().unwrap() as usize;
        let refs: Vec<&str> = c.refs.iter().map(|s| s[i].as_str()).collect();
        let cfg = chrf_cfg(case);
        let label = format!("{} seg {i} {}", case["c"], case["signature"]);
        let got = sentence_chrf(&c.hyps[i], &refs, &cfg).unwrap();
        ck.float(|| label.clone(), got.score, fv(&case["score"]));
        ck.eq(
            || format!("{label} signature"),
            cfg.signature(refs.len()),
            case["signature"].as_str().unwrap().to_string(),
        );
    }
    ck.finish("chrf_sentence", cases.len());
}

// ---------------------------------------------------------------------------
// Code point level checks of the Python primitives the metrics rely on.
// ---------------------------------------------------------------------------

fn ranges(v: &Value) -> Vec<(u32, u32)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let r = u64s(r);
            (r[0] as u32, r[1] as u32)
        })
        .collect()
}

fn in_ranges(r: &[(u32, u32)], cp: u32) -> bool {
    r.iter().any(|&(lo, hi)| lo <= cp && cp <= hi)
}

fn all_chars() -> impl Iterator<Item = char> {
    (0u32..=0x10FFFF).filter_map(char::from_u32)
}

#[test]
fn python_isspace_table() {
    let want: Vec<u32> = u64s(&GOLDEN["unicode"]["isspace"])
        .into_iter()
        .map(|x| x as u32)
        .collect();
    let got: Vec<u32> = all_chars()
        .filter(|&c| is_py_whitespace(c))
        .map(|c| c as u32)
        .collect();
    assert_eq!(got, want);
}

#[test]
fn zh_chinese_char_table() {
    let want = ranges(&GOLDEN["unicode"]["zh_is_chinese"]);
    let bad: Vec<String> = all_chars()
        .filter(|&c| is_zh_chinese_char(c) != in_ranges(&want, c as u32))
        .map(|c| format!("U+{:04X}", c as u32))
        .collect();
    assert!(bad.is_empty(), "zh range mismatches: {bad:?}");
}

#[test]
fn python_lower_table() {
    let u = &GOLDEN["unicode"];
    let assigned = ranges(&u["assigned"]);
    let lower: HashMap<u32, String> = u["lower"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_u64().unwrap() as u32,
                p[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut bad = Vec::new();
    let mut newer = Vec::new();
    for c in all_chars() {
        let want = lower
            .get(&(c as u32))
            .cloned()
            .unwrap_or_else(|| c.to_string());
        let got = py_lower(&c.to_string());
        if got != want {
            if in_ranges(&assigned, c as u32) {
                bad.push(format!("U+{:04X}", c as u32));
            } else {
                newer.push(format!("U+{:04X}", c as u32));
            }
        }
    }
    eprintln!(
        "lowercase differs only for {} code points unassigned in Python's Unicode {}: {:?}",
        newer.len(),
        u["unidata_version"],
        newer
    );
    assert!(
        bad.is_empty(),
        "lowercase mismatches on assigned chars: {bad:?}"
    );
}

/// The `intl` tokenizer's `\p{P}`, `\p{S}`, `\p{N}` classes equal those of
/// the Python `regex` module sacrebleu used for the goldens, code point by
/// code point. Also checks that the raw Rust classes only miss characters
/// that are unassigned in Rust's (older) Unicode tables.
#[test]
fn intl_unicode_classes_match_python_regex() {
    let u = &GOLDEN["unicode"];
    let mut report = Vec::new();
    let (p, s, n) = intl_classes();
    for (key, class) in [("regex_P", p), ("regex_S", s), ("regex_N", n)] {
        let want = ranges(&u[key]);
        let re = Regex::new(&format!("^{class}$")).unwrap();
        let mut buf = [0u8; 4];
        let bad: Vec<String> = all_chars()
            .filter(|&c| re.is_match(c.encode_utf8(&mut buf)) != in_ranges(&want, c as u32))
            .map(|c| format!("U+{:04X}", c as u32))
            .collect();
        if !bad.is_empty() {
            report.push(format!("{key}: {bad:?}"));
        }
    }
    let unassigned = Regex::new(r"^\p{Cn}$").unwrap();
    for (key, pat) in [
        ("regex_P", r"^\p{P}$"),
        ("regex_S", r"^\p{S}$"),
        ("regex_N", r"^\p{N}$"),
    ] {
        let want = ranges(&u[key]);
        let re = Regex::new(pat).unwrap();
        let mut buf = [0u8; 4];
        for c in all_chars() {
            let ch = c.encode_utf8(&mut buf);
            if re.is_match(ch) != in_ranges(&want, c as u32) && !unassigned.is_match(ch) {
                report.push(format!(
                    "{key}: raw class differs on assigned U+{:04X}",
                    c as u32
                ));
            }
        }
    }
    assert!(
        report.is_empty(),
        "Rust regex vs Python regex {} class mismatches:\n{}",
        u["regex_version"],
        report.join("\n")
    );
}
