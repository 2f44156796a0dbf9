//! The shipped calibration corpus (calibration/*.jsonl, built by scripts/build_calibration.py):
//! every line has the agreed schema, the languages are covered, and no record overlaps the eval
//! sets in ../shared/data (calibration text that contains test text would flatter the quantized
//! model on exactly the segments its quality is measured on).
//!
//! The normalization and overlap rules are implemented here independently of the Python
//! script (calibration/README.md, "Dedupe against the eval sets"):
//! - normalize: NFKC, case folding, whitespace runs to one space, trimmed;
//! - a record field overlaps when its normalized text equals a normalized eval segment, contains
//!   one of >= 12 characters, shares a 13-word n-gram with any segment, or (spaces removed)
//!   shares a 20-character n-gram with a segment written in Han/Kana/Hangul.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use hy_quant::runner::prompt::LANGUAGES;
use serde_json::Value;

const CONTAIN_MIN_CHARS: usize = 12;
const WORD_NGRAM: usize = 13;
const CJK_CHAR_NGRAM: usize = 20;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn eval_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data")
}

/// NFKC, then case folding, then whitespace runs -> one space. Python's `str.casefold` is full
/// case folding; lowercasing plus the full-folding cases below agrees with it on everything but
/// polytonic Greek and Cherokee, which neither the corpus nor the eval sets use.
fn normalize(s: &str) -> String {
    let mut nfkc = tokenizers::NormalizedString::from(s);
    nfkc.nfkc();
    let mut folded = String::with_capacity(nfkc.get().len());
    for c in nfkc.get().chars() {
        match c {
            'ß' | 'ẞ' => folded.push_str("ss"),
            'ς' => folded.push('σ'),
            _ => folded.extend(c.to_lowercase()),
        }
    }
    folded.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0x20000..=0x2FA1F
        | 0x3040..=0x30FF | 0x31F0..=0x31FF
        | 0x1100..=0x11FF | 0x3130..=0x318F | 0xAC00..=0xD7AF)
}

/// Byte ranges of the `n`-word windows of a normalized string (words are single-space
/// separated there, so a window is a slice).
fn word_windows(norm: &str, n: usize) -> Vec<&str> {
    if norm.is_empty() {
        return Vec::new();
    }
    let mut starts = vec![0];
    let mut ends = Vec::new();
    for (i, b) in norm.bytes().enumerate() {
        if b == b' ' {
            ends.push(i);
            starts.push(i + 1);
        }
    }
    ends.push(norm.len());
    (0..starts.len().saturating_sub(n - 1))
        .map(|i| &norm[starts[i]..ends[i + n - 1]])
        .collect()
}

/// The `n`-character windows of `s` with spaces removed (returned as owned string + offsets).
fn char_windows(norm: &str, n: usize) -> (String, Vec<(usize, usize)>) {
    let squeezed: String = norm.chars().filter(|&c| c != ' ').collect();
    let bounds: Vec<usize> = squeezed
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(squeezed.len()))
        .collect();
    let count = bounds.len().saturating_sub(n);
    let windows = (0..count).map(|i| (bounds[i], bounds[i + n])).collect();
    (squeezed, windows)
}

/// One overlap rule: the id of a segment the normalized text overlaps.
type Rule = fn(&EvalIndex, &str) -> Option<usize>;

struct Segment {
    origin: String,
    raw: String,
    norm: String,
}

#[derive(Default)]
struct EvalIndex {
    segments: Vec<Segment>,
    exact: HashMap<String, usize>,
    by_prefix: HashMap<String, Vec<usize>>,
    words: HashMap<String, usize>,
    chars: HashMap<String, usize>,
}

impl EvalIndex {
    fn add(&mut self, origin: String, raw: &str) {
        let norm = normalize(raw);
        if norm.is_empty() {
            return;
        }
        let id = self.segments.len();
        self.exact.entry(norm.clone()).or_insert(id);
        if norm.chars().count() >= CONTAIN_MIN_CHARS {
            let prefix: String = norm.chars().take(CONTAIN_MIN_CHARS).collect();
            self.by_prefix.entry(prefix).or_default().push(id);
        }
        for w in word_windows(&norm, WORD_NGRAM) {
            self.words.entry(w.to_string()).or_insert(id);
        }
        if norm.chars().any(is_cjk) {
            let (s, windows) = char_windows(&norm, CJK_CHAR_NGRAM);
            for (a, b) in windows {
                self.chars.entry(s[a..b].to_string()).or_insert(id);
            }
        }
        self.segments.push(Segment {
            origin,
            raw: raw.to_string(),
            norm,
        });
    }

    fn load(dir: &Path) -> EvalIndex {
        assert!(
            dir.is_dir(),
            "eval sets folder {} is missing: the overlap check cannot run without it",
            dir.display()
        );
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "tsv"))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no *.tsv eval sets in {}", dir.display());
        let mut index = EvalIndex::default();
        for f in &files {
            let text = std::fs::read_to_string(f)
                .unwrap_or_else(|e| panic!("reading {}: {e}", f.display()));
            let name = f.file_name().unwrap().to_string_lossy().to_string();
            for (i, line) in text.lines().enumerate() {
                for (col, seg) in line.split('\t').enumerate() {
                    index.add(format!("{name}:{} column {}", i + 1, col + 1), seg);
                }
            }
        }
        assert!(
            index.segments.len() > 1000,
            "suspiciously few eval segments"
        );
        index
    }

    /// The first rule `text` breaks and the eval segment it overlaps.
    fn overlap(&self, text: &str) -> Option<(&'static str, &Segment)> {
        let norm = normalize(text);
        let rules: [(&'static str, Rule); 4] = [
            ("equals", Self::equal_to),
            ("contains", Self::containing),
            ("shares a 13-word n-gram with", Self::sharing_words),
            ("shares a 20-character n-gram with", Self::sharing_chars),
        ];
        rules
            .iter()
            .find_map(|(name, rule)| rule(self, &norm).map(|id| (*name, &self.segments[id])))
    }

    fn equal_to(&self, norm: &str) -> Option<usize> {
        self.exact.get(norm).copied()
    }

    fn containing(&self, norm: &str) -> Option<usize> {
        let bounds: Vec<usize> = norm
            .char_indices()
            .map(|(i, _)| i)
            .chain(std::iter::once(norm.len()))
            .collect();
        for k in 0..bounds.len().saturating_sub(CONTAIN_MIN_CHARS) {
            let (start, end) = (bounds[k], bounds[k + CONTAIN_MIN_CHARS]);
            if let Some(ids) = self.by_prefix.get(&norm[start..end]) {
                if let Some(&id) = ids
                    .iter()
                    .find(|&&id| norm[start..].starts_with(&self.segments[id].norm))
                {
                    return Some(id);
                }
            }
        }
        None
    }

    fn sharing_words(&self, norm: &str) -> Option<usize> {
        word_windows(norm, WORD_NGRAM)
            .into_iter()
            .find_map(|w| self.words.get(w).copied())
    }

    fn sharing_chars(&self, norm: &str) -> Option<usize> {
        let (s, windows) = char_windows(norm, CJK_CHAR_NGRAM);
        windows
            .into_iter()
            .find_map(|(a, b)| self.chars.get(&s[a..b]).copied())
    }
}

/// One parsed corpus line: kind, (field name, language, text) of each text field.
struct Record {
    kind: &'static str,
    fields: Vec<(&'static str, String, String)>,
}

/// Parses one JSONL line against the fixed schema; Err says what is wrong.
fn parse_record(line: &str) -> Result<Record, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let obj = v.as_object().ok_or("not a JSON object")?;
    let kind = obj
        .get("kind")
        .and_then(Value::as_str)
        .ok_or("no string \"kind\"")?;
    let (kind, keys, fields): (&'static str, &[&str], Vec<(&'static str, &str)>) = match kind {
        "text" => (
            "text",
            &["kind", "lang", "text", "source"],
            vec![("text", "lang")],
        ),
        "pair" => (
            "pair",
            &["kind", "src_lang", "tgt_lang", "src", "tgt", "source"],
            vec![("src", "src_lang"), ("tgt", "tgt_lang")],
        ),
        other => return Err(format!("unknown kind {other:?}")),
    };
    let have: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
    let want: BTreeSet<&str> = keys.iter().copied().collect();
    if have != want {
        return Err(format!("keys {have:?}, expected {want:?}"));
    }
    for k in keys {
        match obj[*k].as_str() {
            Some(s) if !s.trim().is_empty() => {}
            _ => return Err(format!("\"{k}\" is not a non-empty string")),
        }
    }
    let known = |code: &str| LANGUAGES.iter().any(|(c, _, _)| *c == code);
    let mut out = Vec::new();
    for (field, lang_key) in fields {
        let lang = obj[lang_key].as_str().unwrap_or_default();
        if !known(lang) {
            return Err(format!(
                "\"{lang_key}\" {lang:?} is not a language code of runner::prompt::LANGUAGES"
            ));
        }
        out.push((
            field,
            lang.to_string(),
            obj[field].as_str().unwrap_or_default().to_string(),
        ));
    }
    if kind == "pair" && out[0].1 == out[1].1 {
        return Err("pair with src_lang == tgt_lang".into());
    }
    Ok(Record { kind, fields: out })
}

/// Overlap findings for one corpus file's content, as "file:line field rule eval-segment".
fn overlaps_in(name: &str, content: &str, index: &EvalIndex) -> Vec<String> {
    let mut found = Vec::new();
    for (i, line) in content.lines().enumerate() {
        let Ok(rec) = parse_record(line) else {
            continue; // schema errors are reported by the schema test
        };
        for (field, _, text) in &rec.fields {
            if let Some((rule, seg)) = index.overlap(text) {
                found.push(format!(
                    "{name}:{} \"{field}\" {rule} eval segment {}: {:?}",
                    i + 1,
                    seg.origin,
                    seg.raw
                ));
            }
            // A record of grouped short sentences (Tatoeba, grouped messages) must not carry a
            // test segment as one of its lines either: the whole-field rules would miss a short
            // one (under 12 characters) hidden among the others.
            for (l, text_line) in text.split('\n').enumerate().filter(|_| text.contains('\n')) {
                if let Some(id) = index.equal_to(&normalize(text_line)) {
                    let seg = &index.segments[id];
                    found.push(format!(
                        "{name}:{} \"{field}\" line {} equals eval segment {}: {:?}",
                        i + 1,
                        l + 1,
                        seg.origin,
                        seg.raw
                    ));
                }
            }
        }
    }
    found
}

fn corpus_files() -> Vec<(String, String)> {
    let dir = repo_root().join("calibration");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no calibration/*.jsonl");
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p)
                .unwrap_or_else(|e| panic!("{} is not UTF-8 text: {e}", p.display()));
            (
                format!("calibration/{}", p.file_name().unwrap().to_string_lossy()),
                text,
            )
        })
        .collect()
}

#[test]
fn every_line_has_the_schema_and_languages_are_covered() {
    let mut errors = Vec::new();
    // lang -> kind -> records
    let mut coverage: BTreeMap<String, BTreeMap<&str, usize>> = BTreeMap::new();
    let mut records = 0;
    for (name, content) in corpus_files() {
        assert!(content.ends_with('\n'), "{name}: last line has no newline");
        for (i, line) in content.lines().enumerate() {
            match parse_record(line) {
                Ok(rec) => {
                    records += 1;
                    let langs: BTreeSet<&String> = rec.fields.iter().map(|f| &f.1).collect();
                    for lang in langs {
                        *coverage
                            .entry(lang.clone())
                            .or_default()
                            .entry(rec.kind)
                            .or_default() += 1;
                    }
                }
                Err(e) => errors.push(format!("{name}:{}: {e}", i + 1)),
            }
        }
    }
    assert!(
        errors.is_empty(),
        "{} malformed calibration lines, first ones:\n{}",
        errors.len(),
        errors[..errors.len().min(20)].join("\n")
    );
    assert!(records >= 1000, "only {records} calibration records");
    let both = |lang: &str| {
        coverage.get(lang).is_some_and(|k| {
            k.get("text").is_some_and(|&n| n > 0) && k.get("pair").is_some_and(|&n| n > 0)
        })
    };
    for lang in ["zh", "en"] {
        assert!(
            both(lang),
            "{lang} lacks text or pair records: {coverage:?}"
        );
    }
    let others = coverage
        .keys()
        .filter(|l| !["zh", "en"].contains(&l.as_str()) && both(l))
        .count();
    assert!(
        others >= 6,
        "only {others} languages besides zh and en have both kinds: {coverage:?}"
    );
}

#[test]
fn no_record_overlaps_the_eval_sets() {
    let index = EvalIndex::load(&eval_dir());
    let mut found = Vec::new();
    for (name, content) in corpus_files() {
        found.extend(overlaps_in(&name, &content, &index));
    }
    assert!(
        found.is_empty(),
        "{} calibration fields overlap the eval sets in {} (rebuild with \
         scripts/build_calibration.py, which drops them):\n{}",
        found.len(),
        eval_dir().display(),
        found[..found.len().min(30)].join("\n")
    );
}

/// The detector must fire on planted overlaps of each kind, or the test above proves nothing.
#[test]
fn overlap_detector_catches_planted_overlaps() {
    let index = EvalIndex::load(&eval_dir());
    // Segments of the real eval sets to plant: a long English one, a long CJK one, a short one.
    let english = index
        .segments
        .iter()
        .filter(|s| !s.norm.chars().any(is_cjk))
        .max_by_key(|s| (s.norm.split(' ').count(), s.origin.clone()))
        .expect("an English segment");
    assert!(english.norm.split(' ').count() > WORD_NGRAM + 2);
    let cjk = index
        .segments
        .iter()
        .filter(|s| s.norm.chars().filter(|&c| is_cjk(c)).count() > CJK_CHAR_NGRAM + 4)
        .max_by_key(|s| (s.norm.chars().count(), s.origin.clone()))
        .expect("a CJK segment");
    let short = index
        .segments
        .iter()
        .find(|s| s.norm.chars().count() < CONTAIN_MIN_CHARS && s.norm.chars().count() >= 2)
        .expect("a short segment");

    let wrap = |s: &str| format!("Unrelated lead-in text about something else. {s} And a tail.");
    // 13 words from the middle of the English segment, shouted and re-spaced.
    let words: Vec<&str> = english.raw.split_whitespace().collect();
    let middle = words[1..1 + WORD_NGRAM].join("   ").to_uppercase();
    // 20 CJK characters from the CJK segment with spaces between them (defeats "contains").
    let chars: Vec<char> = cjk.norm.chars().filter(|&c| c != ' ').collect();
    let spaced: String = chars[2..2 + CJK_CHAR_NGRAM]
        .iter()
        .map(|c| format!("{c} "))
        .collect();
    // The whole CJK segment in full-width/compatibility spelling NFKC undoes: ASCII -> full width.
    let fullwidth: String = cjk
        .raw
        .chars()
        .map(|c| match c {
            '!'..='~' => char::from_u32(c as u32 - 0x21 + 0xFF01).unwrap(),
            _ => c,
        })
        .collect();

    let cases: Vec<(&str, Rule, String)> = vec![
        (
            "equals",
            EvalIndex::equal_to,
            format!("  {}\n", short.raw.to_uppercase()),
        ),
        (
            "contains",
            EvalIndex::containing,
            wrap(&english.raw.to_uppercase()),
        ),
        ("contains", EvalIndex::containing, wrap(&fullwidth)),
        ("13-word n-gram", EvalIndex::sharing_words, wrap(&middle)),
        (
            "20-character n-gram",
            EvalIndex::sharing_chars,
            wrap(&spaced),
        ),
    ];
    for (name, rule, text) in &cases {
        assert!(
            rule(&index, &normalize(text)).is_some(),
            "planted overlap not caught by the {name} rule: {text:?}"
        );
        assert!(index.overlap(text).is_some());
    }
    // A clean text passes; 12 of the 13 words do not make a 13-word n-gram.
    assert!(index
        .overlap("A sentence that is in no eval set at all, surely.")
        .is_none());
    let near_miss = words[1..WORD_NGRAM].join(" ");
    assert!(index.sharing_words(&normalize(&near_miss)).is_none());

    // The file scanner names file:line and the segment.
    let planted = format!(
        "{}\n{}\n",
        serde_json::json!({"kind": "text", "lang": "en", "text": "Clean line of text here.", "source": "t"}),
        serde_json::json!({"kind": "pair", "src_lang": "en", "tgt_lang": "zh",
                           "src": "Something new.", "tgt": wrap(&cjk.raw), "source": "t"}),
    );
    let found = overlaps_in("planted.jsonl", &planted, &index);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("planted.jsonl:2 \"tgt\" contains eval segment ")
            && found[0].contains(&cjk.origin),
        "{}",
        found[0]
    );
    // A short segment as one line of a grouped record: no whole-field rule sees it.
    let grouped = format!(
        "Our first clean sentence here.\n{}\nAnd a last clean one.",
        short.raw
    );
    assert!(index.overlap(&grouped).is_none(), "{grouped:?}");
    let planted = format!(
        "{}\n",
        serde_json::json!({"kind": "text", "lang": "en", "text": grouped, "source": "t"})
    );
    let found = overlaps_in("grouped.jsonl", &planted, &index);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("grouped.jsonl:1 \"text\" line 2 equals eval segment "),
        "{}",
        found[0]
    );
}

#[test]
fn normalization_matches_the_script() {
    // Values computed with the script's normalize() (Python: NFKC, casefold, whitespace).
    assert_eq!(
        normalize("  Straße\tＡＢＣ\u{3000}ﬁle  "),
        "strasse abc file"
    );
    assert_eq!(normalize("ΣΊΣΥΦΟΣ ς"), "σίσυφοσ σ");
    assert_eq!(
        normalize("Ｄｅｂｉａｎ　软件包\n\n说明"),
        "debian 软件包 说明"
    );
    assert_eq!(word_windows("a b c", 2), vec!["a b", "b c"]);
    assert!(word_windows("a b", 3).is_empty());
    let (s, w) = char_windows("一二 三四", 3);
    assert_eq!(
        w.iter().map(|&(a, b)| &s[a..b]).collect::<Vec<_>>(),
        vec!["一二三", "二三四"]
    );
}
