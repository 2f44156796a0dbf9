#!/usr/bin/env python3
"""Generate golden BLEU / chrF values with sacrebleu 2.6.0.

Writes ``tests/data/metrics_golden.json`` which is consumed by
``tests/metrics_golden.rs``. Usage (from the repository root)::

    pip install sacrebleu==2.6.0
    python3 scripts/make_metric_goldens.py

Everything is deterministic (fixed ``random.Random`` seed); re-running the
script with the same sacrebleu / Python / ``regex`` versions reproduces the
file byte for byte.

Besides metric values the file holds a few Unicode tables as seen by Python
(``str.isspace``, ``str.lower``, the ``regex`` module's ``\\p{P}``/``\\p{S}``/
``\\p{N}`` classes and sacrebleu's ``zh`` "is Chinese char" predicate) so the
Rust port can be checked code point by code point.
"""

import json
import logging
import os
import random
import sys
import unicodedata

import regex
import sacrebleu
from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.tokenizers.tokenizer_zh import TokenizerZh

assert sacrebleu.__version__ == "2.6.0", sacrebleu.__version__
logging.getLogger("sacrebleu").setLevel(logging.ERROR)

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data",
                   "metrics_golden.json")

# --------------------------------------------------------------------------
# Text material
# --------------------------------------------------------------------------

EN = [
    "The quick brown fox jumps over the lazy dog.",
    "\"Hello, world!\" she said, smiling.",
    "It costs $5.00, i.e. 3,000 yen (approx.) in 2024.",
    "The U.S. economy grew 2.5% in Q3; analysts expected 2.1%.",
    "State-of-the-art models don't always win: see Table 3.",
    "Tom &amp; Jerry watched &quot;Casablanca&quot; at 8 p.m.",
    "Use &lt;b&gt; tags for bold text &amp;amp; never &gt;&gt; nest them.",
    "He paid 1,234.56 euros for 12 apples - a steal!",
    "Between 1990-2000 the population rose by 10-15 percent.",
    "Call me at +1 (555) 123-4567, or e-mail me@example.com.",
    "Visit https://example.com/path?a=1&b=2 for details.",
    "Wait... what?! That's impossible -- isn't it?",
    "She said: \u201cI\u2019ll be back\u2026\u201d \u2014 and left.",
    "C++ and C# are programming languages; so is Python 3.11.",
    "The temperature dropped to -5 degrees at 6:30 a.m.",
    "<skipped> This line had a skipped marker.",
    "Numbers like 3.14, 2.71 and 1.41 are irrational-ish.",
    "A \u00e9t\u00e9 tr\u00e8s chaud \u00e0 Paris, n'est-ce pas?",
    "Die Stra\u00dfe ist GESCHLOSSEN, sagte der Polizist.",
    "\u0395\u039b\u039b\u0397\u039d\u0399\u039a\u0391 \u039a\u0391\u0399 \u039f\u0394\u039f\u03a3 \u03a3\u03a4\u0397 \u0391\u0398\u0397\u039d\u0391.",
    "\u0130stanbul is a big city; IZMIR is smaller.",
    "It's 100\u00b0C, \u00a9 2023 ACME\u2122 Inc. \u2013 all rights reserved.",
    "Tabs\tand  double  spaces   are  here ",
    "Non\u00a0breaking\u00a0spaces and\u2003em spaces\u3000too.",
    "Prices: \u20ac10, \u00a35, \u00a5300 and 5\u00a2 (cheap).",
    "Math: 2+2=4, 3*3=9, 10/2=5 and x^2 > 0.",
    "The end.",
    "Final sentence without a period",
    "[citation needed] {curly} |pipe| ~tilde~ `backtick` _under_",
    "Dots.in.the.middle and commas,in,between 1.000,5 units.",
]

ZH = [
    "\u4eca\u5929\u5929\u6c14\u5f88\u597d\uff0c\u6211\u4eec\u53bb\u516c\u56ed\u6563\u6b65\u5427\u3002",
    "\u4ed6\u8bf4\uff1a\u201c\u6211\u660e\u5929\u4f1a\u6765\u3002\u201d",
    "\u8fd9\u672c\u4e66\u300a\u4e09\u4f53\u300b\u5f88\u6709\u540d\uff01",
    "2024\u5e74\u7ecf\u6d4e\u589e\u957f\u4e865.2%\u3002",
    "\u6211\u559c\u6b22\u5403\u82f9\u679c\u3001\u9999\u8549\u548c\u6a59\u5b50\u3002",
    "\u4f60\u53eb\u4ec0\u4e48\u540d\u5b57\uff1f",
    "\u8bf7\u8bbf\u95ee www.example.com \u83b7\u53d6\u66f4\u591a\u4fe1\u606f\u3002",
    "\u6df1\u5ea6\u5b66\u4e60\uff08Deep Learning\uff09\u662f\u673a\u5668\u5b66\u4e60\u7684\u4e00\u4e2a\u5206\u652f\u3002",
    "\u4ef7\u683c\u662f\uff11\uff12\uff13\u5143\uff0c\u4e0d\u8d35\u3002",
    "\u3007\u4e00\u4e8c\u4e09\uff0c\u3400\u4db5\u4db6\u4e0e\u9fa5\u9fa6\u9fbb\u9fbc\u9fff\u3002",
    "\u6269\u5c55B\uff1a\U00020000\U0002a6d6\uff0c\u517c\u5bb9\uff1a\uf900\ufa2d\ufa30\ufad9\U0002f800\U0002fa1d\u3002",
    "\u90e8\u9996\u2e80\u2f00\u2ff0\u2ffb\uff0c\u6ce8\u97f3\u3105\u3106\u31a0\uff0c\u7b14\u753b\u31c0\u3002",
    "\u7b26\u53f7\u2600\u2601\u2702\u2764\u3220\u3300\ufe10\ufe30\u3002",
    "\u7834\u6298\u53f7\u2014\u2014\u7701\u7565\u53f7\u2026\u2026\u6b27\u5143\u20ac\u7bad\u5934\u2192\u5706\u2460\u25a0\u2a6d\u2a6e\u3002",
    "\u534a\u89d2\u7247\u5047\u540d\uff71\uff72\uff73\u548c\u5168\u89d2\uff21\uff22\uff23\uff01",
    "\u65e9\u4e0a8:30\u5f00\u4f1a\uff0c\u4e0b\u53483.5\u5c0f\u65f6\u540e\u7ed3\u675f\u3002",
    "\u4ed6\u5728\u5317\u4eac\u5927\u5b66\u5b66\u4e60\u8ba1\u7b97\u673a\u79d1\u5b66\u3002",
    "\u8fd9\u662f\u4e00\u4e2a\u6d4b\u8bd5 test \u53e5\u5b50, with English words.",
    "\u6570\u5b573,000\u548c3.14\u4ee5\u53ca1990-2000\u5e74\u3002",
    "\u3000\u524d\u540e\u6709\u5168\u89d2\u7a7a\u683c\u3000",
    "\u5f15\u53f7\u300c\u6d4b\u8bd5\u300d\u548c\u300e\u6d4b\u8bd5\u300f\u4ee5\u53ca\u3010\u6ce8\u3011\u3002",
    "\u6211\u4eec\u2001\u4f7f\u7528\u2002\u5404\u79cd\u7a7a\u683c\u3002",
]

JAKO = [
    "\u3053\u308c\u306f\u30da\u30f3\u3067\u3059\u3002",
    "\u6771\u4eac\u306f\u65e5\u672c\u306e\u9996\u90fd\u3067\u3059\u3002",
    "\u79c1\u306f\u5bff\u53f8\u304c\u5927\u597d\u304d\u3067\u3059\uff01",
    "\u300c\u304a\u306f\u3088\u3046\u300d\u3068\u5f7c\u5973\u306f\u8a00\u3063\u305f\u3002",
    "\u30b3\u30f3\u30d4\u30e5\u30fc\u30bf\u30fc\u3092\u4f7f\u3063\u3066\u3044\u307e\u3059\u3002",
    "\ud55c\uad6d\uc5b4\ub294 \uc544\ub984\ub2e4\uc6b4 \uc5b8\uc5b4\uc785\ub2c8\ub2e4.",
    "\uc11c\uc6b8\uc740 \ub300\ud55c\ubbfc\uad6d\uc758 \uc218\ub3c4\uc785\ub2c8\ub2e4.",
    "\uc800\ub294 \uae40\uce58\ub97c \uc88b\uc544\ud569\ub2c8\ub2e4!",
    "\u5927\u97d3\u6c11\u570b \ub300\ud55c\ubbfc\uad6d 2024\ub144.",
    "\u30ab\u30bf\u30ab\u30ca\u3068\u3072\u3089\u304c\u306a\u3001\u305d\u3057\u3066\u6f22\u5b57\u3002",
]

MIXED = [
    "\u6211\u7528 Python \u5199\u4ee3\u7801\u3002",
    "GPU \u663e\u5b58\u4e0d\u8db3\uff08out of memory\uff09\uff01",
    "\u4e0b\u8f7d\u5730\u5740\uff1ahttps://example.com/a.zip",
    "\u6a21\u578b HY-MT 1.5 \u652f\u6301 33 \u79cd\u8bed\u8a00\u3002",
    "\u4ed6\u8bf4 \"OK\"\uff0c\u7136\u540e\u8d70\u4e86\u3002",
    "Llama-3 \u548c Qwen2 \u90fd\u662f\u5927\u6a21\u578b\u3002",
    "\u91cf\u5316\u5230 4-bit \u540e BLEU \u4e0b\u964d\u4e86 0.3 \u5206\u3002",
    "Tom &amp; Jerry \u662f\u4e00\u90e8\u52a8\u753b\u7247\u3002",
    "\u6e29\u5ea6\u662f -5\u00b0C\uff0c\u98ce\u901f 10m/s\u3002",
    "\u300a\u54c8\u5229\u00b7\u6ce2\u7279\u300b(Harry Potter) \u5f88\u597d\u770b\u3002",
]

EDGE_WS = [
    "  leading spaces",
    "trailing spaces   ",
    "tab\tseparated\ttokens",
    "line-\nbreak inside and\nnewline",
    "unit\x1fseparator\x1cfile\x1dgroup\x1erecord",
    "nel\x85char and ls\u2028ps\u2029end",
    "zero\u200bwidth\u200bspace is not space",
    "narrow\u202fnbsp\u205fmedium math space",
    "ogham\u1680space mark",
    "",
    " ",
    "\t",
]

SYNONYMS = {
    "quick": "fast", "big": "large", "said": "stated", "the": "a",
    "is": "was", "and": "&", "very": "really", "grew": "rose",
}


def perturb(line, rng):
    """Deterministically produce a plausible 'system output' from a reference."""
    op = rng.randrange(9)
    if op == 0:
        return line
    toks = line.split(" ")
    if op == 1 and len(toks) > 1:
        del toks[rng.randrange(len(toks))]
    elif op == 2 and len(toks) > 2:
        i = rng.randrange(len(toks) - 1)
        toks[i], toks[i + 1] = toks[i + 1], toks[i]
    elif op == 3:
        toks = [SYNONYMS.get(t.lower(), t) for t in toks]
    elif op == 4:
        return line.lower()
    elif op == 5:
        return "".join(c for c in line if c not in ".,!?;:\u3002\uff0c\uff01\uff1f")
    elif op == 6:
        n = max(1, len(line) // 2)
        return line[:n]
    elif op == 7:
        # character level edits (good for CJK): drop / duplicate a char
        if len(line) > 2:
            i = rng.randrange(len(line))
            return line[:i] + line[i + 1:] if rng.random() < 0.5 else line[:i] + line[i] + line[i:]
        return line
    else:
        return line.upper()
    return " ".join(toks)


def make_corpus(name, refs, rng, n_extra_refs=0):
    hyps = [perturb(r, rng) for r in refs]
    streams = [list(refs)]
    for _ in range(n_extra_refs):
        streams.append([perturb(r, rng) for r in refs])
    return {"name": name, "hyps": hyps, "refs": streams}


def build_corpora():
    rng = random.Random(20240601)
    corpora = [
        make_corpus("en", EN, rng),
        make_corpus("en_3refs", EN, rng, n_extra_refs=2),
        make_corpus("zh", ZH, rng),
        make_corpus("zh_2refs", ZH, rng, n_extra_refs=1),
        make_corpus("ja_ko", JAKO, rng),
        make_corpus("mixed", MIXED, rng),
        make_corpus("ws", EDGE_WS, rng),
        {"name": "identical", "hyps": EN[:10], "refs": [EN[:10]]},
        {"name": "all_empty_hyps", "hyps": [""] * 5, "refs": [EN[:5]]},
        {"name": "all_empty_refs", "hyps": EN[:4], "refs": [[""] * 4]},
        {"name": "some_empty",
         "hyps": ["", "The cat sat.", "", "A dog barked loudly .", "x"],
         "refs": [["Nothing here.", "The cat sat.", "", "", "y"]]},
        {"name": "short",
         "hyps": ["Yes", "No way", "Go now !", "a b", "hello"],
         "refs": [["Yes", "No way", "Go now!", "a c", "hello there"]]},
        {"name": "short_3gram_only",
         "hyps": ["one two three", "four five six"],
         "refs": [["one two three", "four five six"]]},
        {"name": "tie_ref_len",
         # hyp has 4 tokens, refs have 3 and 5 -> tie, smaller chosen
         "hyps": ["a b c d", "w x y z q", "p"],
         "refs": [["a b c", "w x y z", "p q r"], ["a b c d e", "w x y z q r", "p"]]},
        {"name": "ref_f_tie",
         # chrF: both references give F = 0 for segment 0 but different
         # statistics; sacrebleu keeps the first (strict >).
         "hyps": ["aaa", "the cat sat"],
         "refs": [["xyz", "the cat sat"], ["qwerty uiop", "the cat sat down"]]},
        {"name": "no_match", "hyps": ["aaa bbb ccc", "ddd"], "refs": [["xxx yyy", "zzz www vvv"]]},
        {"name": "single", "hyps": ["The cat is on the mat."],
         "refs": [["There is a cat on the mat."], ["The cat sits on the mat."]]},
        {"name": "repeated_ngrams",
         "hyps": ["the the the the the the the", "to be or not to be to be"],
         "refs": [["the cat is on the mat", "to be or not to be"],
                  ["there is a cat on the mat", "be or not be"]]},
        {"name": "entities",
         "hyps": ["&amp;quot; &quot;&amp;&lt;&gt; &apos;", "a&b &amp c", "&gt;&lt;"],
         "refs": [["&quot; \"& < > &apos;", "a & b & c", "> <"]]},
        {"name": "unicode_case",
         "hyps": ["\u0130STANBUL \u039f\u0394\u039f\u03a3 STRASSE \u1e9e",
                  "\u03a3\u0399\u03a3\u03a5\u03a6\u039f\u03a3 \u03a3",
                  "\u0391\u03a3 \u03a3\u03a3 \u0391\u03a3\u0391"],
         "refs": [["i\u0307stanbul \u03bf\u03b4\u03bf\u03c2 stra\u00dfe \u00df",
                   "\u03c3\u03b9\u03c3\u03c5\u03c6\u03bf\u03c2 \u03c3",
                   "\u03b1\u03c2 \u03c3\u03c2 \u03b1\u03c3\u03b1"]]},
    ]
    return corpora


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

def fstr(x):
    """Floats are stored as shortest round-trip decimal strings (Python
    ``repr``): serde_json's default float parser is not correctly rounded
    (last-ulp errors) and would hide or fake bit-level differences."""
    return repr(float(x))


def num(x):
    """JSON-friendly count (keep ints as ints; add-k may make them floats)."""
    if isinstance(x, float):
        return x
    return int(x)


def bleu_result(score):
    # NB: for add-k smoothing sacrebleu reports the *smoothed* counts/totals
    # (k added for orders >= 2), exactly as recorded here.
    return {
        "score": fstr(score.score),
        "counts": [num(c) for c in score.counts],
        "totals": [num(t) for t in score.totals],
        "prec": [fstr(p) for p in score.precisions],
        "bp": fstr(score.bp),
        "sys_len": int(score.sys_len),
        "ref_len": int(score.ref_len),
    }


SMOOTHINGS = [
    ("exp", None), ("none", None), ("floor", None), ("floor", 0.3),
    ("add-k", None), ("add-k", 2), ("add-k", 0.5),
]
TOKENIZERS = ["13a", "zh", "intl", "char", "none"]


def ranges_of(pred):
    out = []
    start = None
    for cp in range(0x110000):
        ok = (0xD800 <= cp <= 0xDFFF) is False and pred(chr(cp))
        if ok and start is None:
            start = cp
        elif not ok and start is not None:
            out.append([start, cp - 1])
            start = None
    if start is not None:
        out.append([start, 0x10FFFF])
    return out


def unicode_tables():
    p_re = regex.compile(r"\p{P}")
    s_re = regex.compile(r"\p{S}")
    n_re = regex.compile(r"\p{N}")
    is_zh = TokenizerZh._is_chinese_char.__wrapped__
    lower = []
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        c = chr(cp)
        lc = c.lower()
        if lc != c:
            lower.append([cp, lc])
    return {
        "python": sys.version.split()[0],
        "unidata_version": unicodedata.unidata_version,
        "regex_version": regex.__version__,
        "isspace": [cp for cp in range(0x110000) if chr(cp).isspace()],
        "lower": lower,
        "assigned": ranges_of(lambda c: unicodedata.category(c) != "Cn"),
        "regex_P": ranges_of(lambda c: p_re.match(c) is not None),
        "regex_S": ranges_of(lambda c: s_re.match(c) is not None),
        "regex_N": ranges_of(lambda c: n_re.match(c) is not None),
        "zh_is_chinese": ranges_of(is_zh),
    }


def main():
    corpora = build_corpora()
    out = {
        "sacrebleu_version": sacrebleu.__version__,
        "corpora": corpora,
        "tokenize": {},
        "bleu_stats": [],
        "bleu_corpus": [],
        "bleu_sentence": [],
        "chrf_stats": [],
        "chrf_corpus": [],
        "chrf_sentence": [],
    }

    # ---- tokenizer outputs on every distinct line (after BLEU's rstrip) ----
    lines = []
    seen = set()
    for c in corpora:
        for line in c["hyps"] + [r for s in c["refs"] for r in s]:
            if line not in seen:
                seen.add(line)
                lines.append(line)
    out["tokenize"] = {"lines": lines}
    for tok in TOKENIZERS:
        if tok == "none":
            continue  # identity; keeps the file small
        m = BLEU(tokenize=tok)
        # BLEU applies the tokenizer to ``line.rstrip()``
        out["tokenize"][tok] = [m.tokenizer(line.rstrip()) for line in lines]

    # ---- BLEU per-segment sufficient statistics ----
    for c in corpora:
        for tok in TOKENIZERS:
            for lc in (False, True):
                m = BLEU(tokenize=tok, lowercase=lc)
                stats = m._extract_corpus_statistics(c["hyps"], c["refs"])
                out["bleu_stats"].append({
                    "c": c["name"], "tok": tok, "lc": lc,
                    "stats": [[int(x) for x in s] for s in stats],
                })

    # ---- corpus BLEU: every tokenizer x smoothing, plus lowercase / effective order ----
    # Short keys keep the file small: c=corpus, tok=tokenizer, sm/sv=smooth
    # method/value, lc=lowercase, eff=effective order, sig=signature.
    combos = [(sm, sv, False, False) for sm, sv in SMOOTHINGS]
    combos += [("exp", None, True, False), ("floor", 0.3, True, False)]
    combos += [("exp", None, False, True), ("none", None, False, True),
               ("floor", None, False, True), ("add-k", None, True, True)]
    for c in corpora:
        for tok in TOKENIZERS:
            for sm, sv, lc, eff in combos:
                m = BLEU(tokenize=tok, smooth_method=sm, smooth_value=sv,
                         lowercase=lc, effective_order=eff)
                s = m.corpus_score(c["hyps"], c["refs"])
                case = {"c": c["name"], "tok": tok, "sm": sm, "sv": sv, "lc": lc,
                        "eff": eff, "sig": str(m.get_signature())}
                if c["name"] in ("en", "en_3refs"):
                    case["sig_short"] = m.get_signature().format(short=True)
                case.update(bleu_result(s))
                out["bleu_corpus"].append(case)

    # ---- sentence BLEU (sacrebleu.sentence_bleu: effective order on by default) ----
    rng = random.Random(7)
    for c in corpora:
        n = len(c["hyps"])
        idxs = list(range(n)) if n <= 5 else sorted(rng.sample(range(n), 5))
        for k, i in enumerate(idxs):
            refs = [s[i] for s in c["refs"]]
            for tok in (TOKENIZERS[k % 5], TOKENIZERS[(k + 2) % 5]):
                for sm, sv, eff in [("exp", None, True), ("none", None, True),
                                    ("floor", None, True), ("add-k", None, True),
                                    ("exp", None, False)]:
                    s = sacrebleu.sentence_bleu(c["hyps"][i], refs, smooth_method=sm,
                                                smooth_value=sv, tokenize=tok,
                                                use_effective_order=eff)
                    m = BLEU(tokenize=tok, smooth_method=sm, smooth_value=sv,
                             effective_order=eff)
                    m.sentence_score(c["hyps"][i], refs)
                    case = {"c": c["name"], "seg": i, "tok": tok, "sm": sm, "sv": sv,
                            "lc": False, "eff": eff}
                    if k == 0:  # signatures are already covered by bleu_corpus
                        case["sig"] = str(m.get_signature())
                    case.update(bleu_result(s))
                    out["bleu_sentence"].append(case)

    # ---- chrF / chrF++ ----
    chrf_cfgs = [
        dict(char_order=6, word_order=0, beta=2, lowercase=False, whitespace=False, eps_smoothing=False),
        dict(char_order=6, word_order=2, beta=2, lowercase=False, whitespace=False, eps_smoothing=False),
        dict(char_order=6, word_order=0, beta=2, lowercase=True, whitespace=False, eps_smoothing=False),
        dict(char_order=6, word_order=2, beta=2, lowercase=True, whitespace=True, eps_smoothing=False),
        dict(char_order=6, word_order=0, beta=2, lowercase=False, whitespace=True, eps_smoothing=False),
        dict(char_order=6, word_order=2, beta=2, lowercase=False, whitespace=False, eps_smoothing=True),
        dict(char_order=6, word_order=0, beta=1, lowercase=False, whitespace=False, eps_smoothing=False),
        dict(char_order=4, word_order=1, beta=3, lowercase=False, whitespace=False, eps_smoothing=False),
    ]
    for c in corpora:
        for ci, cfg in enumerate(chrf_cfgs):
            m = CHRF(**cfg)
            s = m.corpus_score(c["hyps"], c["refs"])
            case = dict(cfg)
            case.update({
                "c": c["name"], "score": fstr(s.score), "name": s.name,
                "signature": str(m.get_signature()),
                "signature_short": m.get_signature().format(short=True),
            })
            out["chrf_corpus"].append(case)
            if ci < 4:
                m2 = CHRF(**cfg)
                stats = m2._extract_corpus_statistics(c["hyps"], c["refs"])
                st = dict(cfg)
                st.update({"c": c["name"], "stats": [[int(x) for x in s] for s in stats]})
                out["chrf_stats"].append(st)

    rng = random.Random(11)
    for c in corpora:
        n = len(c["hyps"])
        idxs = list(range(n)) if n <= 5 else sorted(rng.sample(range(n), 5))
        for i in idxs:
            refs = [s[i] for s in c["refs"]]
            for cfg in chrf_cfgs[:2] + chrf_cfgs[3:4] + chrf_cfgs[5:6]:
                m = CHRF(**cfg)
                s = m.sentence_score(c["hyps"][i], refs)
                case = dict(cfg)
                case.update({"c": c["name"], "seg": i, "score": fstr(s.score),
                             "signature": str(m.get_signature())})
                out["chrf_sentence"].append(case)

    out["unicode"] = unicode_tables()

    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=True, separators=(",", ":"))
        f.write("\n")
    n = {k: len(v) for k, v in out.items() if isinstance(v, (list, dict))}
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes): {n}")


if __name__ == "__main__":
    main()
