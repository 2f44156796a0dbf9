//! sacrebleu-compatible BLEU tokenizers (`13a`, `zh`, `intl`, `char`, `none`)
//! and the few Python `str` primitives (whitespace splitting, stripping,
//! lowercasing) the metrics depend on.
//!
//! Ported from sacrebleu 2.6.0: `sacrebleu/tokenizers/tokenizer_13a.py`,
//! `tokenizer_re.py`, `tokenizer_zh.py`, `tokenizer_intl.py`,
//! `tokenizer_char.py` and `tokenizer_none.py`.
//!
//! # Python compatibility notes
//!
//! * Whitespace is Python's `str.isspace()` (see [`is_py_whitespace`]), which
//!   unlike Rust's [`char::is_whitespace`] includes the ASCII separators
//!   U+001C..=U+001F.
//! * Lowercasing uses Rust's [`str::to_lowercase`] (full Unicode mapping,
//!   final-sigma aware, like Python's `str.lower()`). Python 3.11 ships the
//!   Unicode 14.0 database; for characters *assigned after* Unicode 14.0 the
//!   Rust mapping may lowercase a letter that Python leaves unchanged. This is
//!   inherent to sacrebleu too (its result depends on the Python version).
//! * The `intl` tokenizer uses Rust `regex` Unicode classes `\p{P}`, `\p{S}`,
//!   `\P{N}` (Unicode 16 in `regex-syntax` 0.8) extended by the handful of
//!   code points Unicode 17 added to them, so that they equal the classes of
//!   Python's `regex` 2026.x (Unicode 17); checked code point by code point in
//!   `tests/metrics_golden.rs`. With an older Python `regex` (older Unicode),
//!   sacrebleu itself would treat those new characters as letters.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use regex::Regex;

use super::MetricError;

/// Python's `str.isspace()` for a single character (Python 3.11 / Unicode 14;
/// the `White_Space`-like set has been stable across Unicode versions).
///
/// This is Unicode `White_Space` (what [`char::is_whitespace`] implements)
/// plus the C0 separators U+001C..=U+001F, which CPython treats as
/// whitespace because of their bidirectional class (B/S).
#[inline]
pub fn is_py_whitespace(c: char) -> bool {
    matches!(
        c,
        '\t' | '\n'
            | '\u{0B}'
            | '\u{0C}'
            | '\r'
            | '\u{1C}'..='\u{1F}'
            | ' '
            | '\u{85}'
            | '\u{A0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200A}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202F}'
            | '\u{205F}'
            | '\u{3000}'
    )
}

/// Python's `str.split()` (no argument): splits on runs of Python whitespace
/// and drops empty pieces.
pub fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_py_whitespace).filter(|t| !t.is_empty())
}

/// Python's `' '.join(s.split())`: collapse whitespace runs to one ASCII
/// space and trim both ends.
pub fn py_normalize_spaces(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, tok) in py_split(s).enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(tok);
    }
    out
}

/// Python's `str.strip()` (no argument).
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_whitespace)
}

/// Python's `str.rstrip()` (no argument).
pub fn py_rstrip(s: &str) -> &str {
    s.trim_end_matches(is_py_whitespace)
}

/// Python's `str.lower()` (see the module docs for the Unicode-version caveat).
pub fn py_lower(s: &str) -> String {
    s.to_lowercase()
}

/// The tokenizers sacrebleu's BLEU offers that need no external model
/// (`ja-mecab`, `ko-mecab` and the SentencePiece ones are not ported).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BleuTokenizer {
    /// `13a`: mteval-v13a.pl tokenization (sacrebleu's default). See [`tokenize_13a`].
    #[default]
    Tok13a,
    /// `zh`: split CJK characters, then `13a`-style regexes. See [`tokenize_zh`].
    Zh,
    /// `intl`: mteval-v14 international tokenization. See [`tokenize_intl`].
    Intl,
    /// `char`: every character is a token. See [`tokenize_char`].
    Char,
    /// `none`: no tokenization (whitespace split only). See [`tokenize_none`].
    None,
}

impl BleuTokenizer {
    /// All supported tokenizers.
    pub const ALL: [BleuTokenizer; 5] = [
        BleuTokenizer::Tok13a,
        BleuTokenizer::Zh,
        BleuTokenizer::Intl,
        BleuTokenizer::Char,
        BleuTokenizer::None,
    ];

    /// The name sacrebleu uses on the command line and in the signature
    /// (`tok:13a`).
    pub fn name(self) -> &'static str {
        match self {
            BleuTokenizer::Tok13a => "13a",
            BleuTokenizer::Zh => "zh",
            BleuTokenizer::Intl => "intl",
            BleuTokenizer::Char => "char",
            BleuTokenizer::None => "none",
        }
    }

    /// Tokenize one line; returns a string whose tokens are separated by
    /// whitespace (BLEU then applies [`py_split`]).
    pub fn tokenize(self, line: &str) -> String {
        match self {
            BleuTokenizer::Tok13a => tokenize_13a(line),
            BleuTokenizer::Zh => tokenize_zh(line),
            BleuTokenizer::Intl => tokenize_intl(line),
            BleuTokenizer::Char => tokenize_char(line),
            BleuTokenizer::None => tokenize_none(line).into_owned(),
        }
    }
}

impl fmt::Display for BleuTokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BleuTokenizer {
    type Err = MetricError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "13a" => Ok(BleuTokenizer::Tok13a),
            "zh" => Ok(BleuTokenizer::Zh),
            "intl" => Ok(BleuTokenizer::Intl),
            "char" => Ok(BleuTokenizer::Char),
            "none" => Ok(BleuTokenizer::None),
            other => Err(MetricError::UnknownTokenizer(other.to_string())),
        }
    }
}

// ---------------------------------------------------------------------------
// TokenizerRegexp (sacrebleu/tokenizers/tokenizer_re.py): shared by 13a and zh
// ---------------------------------------------------------------------------

/// The four language-dependent substitutions of mteval-v13a, applied in order.
struct RegexpRules {
    /// Python: `([\{-\~\[-\` -\&\(-\+\:-\@\/])` -> ` \1 `
    /// i.e. `{|}~`, ``[\]^_` ``, space..`&`, `(`..`+`, `:`..`@`, `/`.
    punct: Regex,
    /// `([^0-9])([\.,])` -> `\1 \2 `: period/comma not preceded by a digit.
    not_after_digit: Regex,
    /// `([\.,])([^0-9])` -> ` \1 \2`: period/comma not followed by a digit.
    not_before_digit: Regex,
    /// `([0-9])(-)` -> `\1 \2 `: dash preceded by a digit.
    dash_after_digit: Regex,
}

static REGEXP_RULES: LazyLock<RegexpRules> = LazyLock::new(|| RegexpRules {
    punct: Regex::new(r"([\x7B-\x7E\x5B-\x60\x20-\x26\x28-\x2B\x3A-\x40/])").unwrap(),
    not_after_digit: Regex::new(r"([^0-9])([.,])").unwrap(),
    not_before_digit: Regex::new(r"([.,])([^0-9])").unwrap(),
    dash_after_digit: Regex::new(r"([0-9])(-)").unwrap(),
});

/// sacrebleu's `TokenizerRegexp.__call__`: the regex post-processing shared
/// by `13a` and `zh`, followed by whitespace normalisation.
pub fn regexp_post_tokenize(line: &str) -> String {
    let r = &*REGEXP_RULES;
    let line = r.punct.replace_all(line, " ${1} ");
    let line = r.not_after_digit.replace_all(&line, "${1} ${2} ");
    let line = r.not_before_digit.replace_all(&line, " ${1} ${2}");
    let line = r.dash_after_digit.replace_all(&line, "${1} ${2} ");
    py_normalize_spaces(&line)
}

/// `13a` (sacrebleu/tokenizers/tokenizer_13a.py): drop `<skipped>`, join
/// `-\n` hyphenation, newlines to spaces, unescape `&quot;`, `&amp;`, `&lt;`,
/// `&gt;` (sequentially, in that order), pad with one space on each side and
/// run [`regexp_post_tokenize`].
pub fn tokenize_13a(line: &str) -> String {
    let mut line = line
        .replace("<skipped>", "")
        .replace("-\n", "")
        .replace('\n', " ");
    if line.contains('&') {
        line = line
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    regexp_post_tokenize(&format!(" {line} "))
}

/// Code point ranges (inclusive) that sacrebleu's `zh` tokenizer treats as
/// "Chinese characters" and surrounds with spaces.
///
/// This reproduces the *effective* behaviour of `_UCODE_RANGES` in
/// `sacrebleu/tokenizers/tokenizer_zh.py`, including two quirks: the entries
/// written `(u'\u20000', u'\u2a6d6')` and `(u'\u2f800', u'\u2fa1d')` are
/// two-character strings (`\u2000`+`0`, ...), and Python's string comparison
/// turns them into U+2001..=U+2A6D (general punctuation, currency, arrows,
/// math operators, ...) and U+2F81..=U+2FA1. The real Extension B and
/// Compatibility Supplement blocks (U+20000.., U+2F800..) are therefore *not*
/// split.
pub const ZH_CHINESE_RANGES: [(u32, u32); 22] = [
    (0x3400, 0x4DB5), // CJK Unified Ideographs Extension A, release 3.0
    (0x4E00, 0x9FA5), // CJK Unified Ideographs, release 1.1
    (0x9FA6, 0x9FBB), // CJK Unified Ideographs, release 4.1
    (0xF900, 0xFA2D), // CJK Compatibility Ideographs, release 1.1
    (0xFA30, 0xFA6A), // CJK Compatibility Ideographs, release 3.2
    (0xFA70, 0xFAD9), // CJK Compatibility Ideographs, release 4.1
    (0x2001, 0x2A6D), // quirk: '\u20000'..'\u2a6d6' compared as strings
    (0x2F81, 0x2FA1), // quirk: '\u2f800'..'\u2fa1d' compared as strings
    (0xFF00, 0xFFEF), // full width ASCII/punctuation, half width kana, Hangul
    (0x2E80, 0x2EFF), // CJK Radicals Supplement
    (0x3000, 0x303F), // CJK punctuation marks
    (0x31C0, 0x31EF), // CJK strokes
    (0x2F00, 0x2FDF), // Kangxi Radicals
    (0x2FF0, 0x2FFF), // Ideographic description characters
    (0x3100, 0x312F), // Bopomofo
    (0x31A0, 0x31BF), // Bopomofo extended
    (0xFE10, 0xFE1F), // vertical forms
    (0xFE30, 0xFE4F), // CJK compatibility forms
    (0x2600, 0x26FF), // miscellaneous symbols
    (0x2700, 0x27BF), // dingbats
    (0x3200, 0x32FF), // enclosed CJK letters and months
    (0x3300, 0x33FF), // CJK compatibility
];

/// sacrebleu's `TokenizerZh._is_chinese_char` (see [`ZH_CHINESE_RANGES`]).
pub fn is_zh_chinese_char(c: char) -> bool {
    let cp = c as u32;
    ZH_CHINESE_RANGES
        .iter()
        .any(|&(lo, hi)| lo <= cp && cp <= hi)
}

/// `zh` (sacrebleu/tokenizers/tokenizer_zh.py): strip the line, surround
/// every [`is_zh_chinese_char`] with spaces, then [`regexp_post_tokenize`]
/// (no `13a` unescaping or padding).
pub fn tokenize_zh(line: &str) -> String {
    let line = py_strip(line);
    let mut spaced = String::with_capacity(line.len() * 2);
    for c in line.chars() {
        if is_zh_chinese_char(c) {
            spaced.push(' ');
            spaced.push(c);
            spaced.push(' ');
        } else {
            spaced.push(c);
        }
    }
    regexp_post_tokenize(&spaced)
}

/// The three substitutions of `TokenizerV14International`.
struct IntlRules {
    /// `(\P{N})(\p{P})` -> `\1 \2 `: punctuation preceded by a non-digit.
    punct_after_non_number: Regex,
    /// `(\p{P})(\P{N})` -> ` \1 \2`: punctuation followed by a non-digit.
    punct_before_non_number: Regex,
    /// `(\p{S})` -> ` \1 `: symbols.
    symbol: Regex,
}

/// Code points that are `P` / `S` / `N` in Unicode 17.0 (as used by Python's
/// `regex` 2026.x, which sacrebleu's `intl` tokenizer runs on) but still
/// unassigned in the Unicode 16.0 tables of `regex-syntax` 0.8. Adding them
/// to the classes is harmless once the Rust tables catch up.
const INTL_EXTRA_P: &str = r"\x{10ED0}";
const INTL_EXTRA_S: &str = concat!(
    r"\x{20C1}\x{2B96}\x{FBC3}-\x{FBD2}\x{FD90}-\x{FD91}\x{FDC8}-\x{FDCE}\x{10ED1}-\x{10ED8}",
    r"\x{1CCFA}-\x{1CCFC}\x{1CEBA}-\x{1CED0}\x{1CEE0}-\x{1CEF0}\x{1F6D8}\x{1F777}-\x{1F77A}",
    r"\x{1F8D0}-\x{1F8D8}\x{1FA54}-\x{1FA57}\x{1FA8A}\x{1FA8E}\x{1FAC8}\x{1FACD}\x{1FAEA}",
    r"\x{1FAEF}\x{1FBFA}",
);
const INTL_EXTRA_N: &str = r"\x{11DE0}-\x{11DE9}\x{16FF4}-\x{16FF6}";

/// Python `regex`'s `\p{P}` (Unicode 17).
fn intl_class_p() -> String {
    format!(r"[\p{{P}}{INTL_EXTRA_P}]")
}

/// Python `regex`'s `\p{S}` (Unicode 17).
fn intl_class_s() -> String {
    format!(r"[\p{{S}}{INTL_EXTRA_S}]")
}

/// Python `regex`'s `\p{N}` (Unicode 17).
fn intl_class_n() -> String {
    format!(r"[\p{{N}}{INTL_EXTRA_N}]")
}

static INTL_RULES: LazyLock<IntlRules> = LazyLock::new(|| {
    let (p, s) = (intl_class_p(), intl_class_s());
    let not_n = format!(r"[^\p{{N}}{INTL_EXTRA_N}]");
    IntlRules {
        punct_after_non_number: Regex::new(&format!("({not_n})({p})")).unwrap(),
        punct_before_non_number: Regex::new(&format!("({p})({not_n})")).unwrap(),
        symbol: Regex::new(&format!("({s})")).unwrap(),
    }
});

/// The character classes the `intl` tokenizer uses, as regex source
/// (`(P, S, N)`), exposed so tests can check them against Python's `regex`.
pub fn intl_classes() -> (String, String, String) {
    (intl_class_p(), intl_class_s(), intl_class_n())
}

/// `intl` (sacrebleu/tokenizers/tokenizer_intl.py, after mteval-v14.pl):
/// separate Unicode punctuation unless it sits between digits, and separate
/// every Unicode symbol. No padding, so a sentence-final `2024.` stays intact
/// (faithful to mteval-v14).
pub fn tokenize_intl(line: &str) -> String {
    let r = &*INTL_RULES;
    let line = r.punct_after_non_number.replace_all(line, "${1} ${2} ");
    let line = r.punct_before_non_number.replace_all(&line, " ${1} ${2}");
    let line = r.symbol.replace_all(&line, " ${1} ");
    py_normalize_spaces(&line)
}

/// `char` (sacrebleu/tokenizers/tokenizer_char.py): join all characters
/// (whitespace included) with single spaces.
pub fn tokenize_char(line: &str) -> String {
    let mut out = String::with_capacity(line.len() * 2);
    for (i, c) in line.chars().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// `none` (sacrebleu/tokenizers/tokenizer_none.py): identity.
pub fn tokenize_none(line: &str) -> Cow<'_, str> {
    Cow::Borrowed(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_name_roundtrip() {
        for t in BleuTokenizer::ALL {
            assert_eq!(t.name().parse::<BleuTokenizer>().unwrap(), t);
        }
        assert!("ja-mecab".parse::<BleuTokenizer>().is_err());
        assert_eq!(BleuTokenizer::default(), BleuTokenizer::Tok13a);
    }

    #[test]
    fn python_whitespace() {
        assert!(is_py_whitespace('\u{1F}'));
        assert!(!'\u{1F}'.is_whitespace());
        assert!(!is_py_whitespace('\u{200B}'));
        assert_eq!(
            py_split(" a\u{3000}b\u{1C}c\t\n ").collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(py_strip("\u{A0} x y \u{85}"), "x y");
        assert_eq!(py_rstrip(" x \n"), " x");
    }

    #[test]
    fn thirteen_a() {
        assert_eq!(
            tokenize_13a("Hello, world! It costs $5.00 (approx.)."),
            "Hello , world ! It costs $ 5.00 ( approx . ) ."
        );
        // entities are unescaped sequentially: &amp;lt; -> &lt; -> <
        assert_eq!(tokenize_13a("a&amp;lt;b &quot;q&quot;"), "a < b \" q \"");
        assert_eq!(
            tokenize_13a("1990-2000 state-of-the-art"),
            "1990 - 2000 state-of-the-art"
        );
        assert_eq!(tokenize_13a("3,000 and 2.5."), "3,000 and 2.5 .");
        assert_eq!(tokenize_13a("<skipped>x-\ny\nz"), "xy z");
        assert_eq!(tokenize_13a("don't"), "don't");
    }

    #[test]
    fn zh_quirky_ranges() {
        assert!(is_zh_chinese_char('中'));
        assert!(is_zh_chinese_char('\u{2014}')); // em dash, via the U+2001..U+2A6D quirk
        assert!(!is_zh_chinese_char('\u{2000}'));
        assert!(is_zh_chinese_char('\u{2A6D}'));
        assert!(!is_zh_chinese_char('\u{2A6E}'));
        assert!(!is_zh_chinese_char('\u{20000}')); // real Extension B is not split
        assert!(!is_zh_chinese_char('\u{4DB6}'));
        assert!(!is_zh_chinese_char('こ'));
        assert_eq!(
            tokenize_zh("  我爱Python，2024年。"),
            "我 爱 Python ， 2024 年 。"
        );
        assert_eq!(tokenize_zh("价格3.5元"), "价 格 3.5 元");
    }

    #[test]
    fn intl_and_char_and_none() {
        assert_eq!(
            tokenize_intl("Hello, world! 3.14 €5"),
            "Hello , world ! 3.14 € 5"
        );
        // a number followed by a sentence-final period keeps it (mteval-v14 bug)
        assert_eq!(tokenize_intl("in 2024."), "in 2024.");
        assert_eq!(tokenize_char("ab c"), "a b   c");
        assert_eq!(tokenize_none(" a  b "), " a  b ");
    }
}
