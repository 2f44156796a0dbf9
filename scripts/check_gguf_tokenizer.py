#!/usr/bin/env python3
"""Check the tokenizer.json written by `hy-quant convert --from-gguf` against transformers.

Reference: transformers' own GGUF tokenizer construction
(`transformers/integrations/gguf/gguf_tokenizer_mapping.py`: `get_gguf_tokenizer` +
`convert_gguf_tokenizer`, what `AutoTokenizer.from_pretrained(dir, gguf_file=...)` runs).
`AutoTokenizer(..., gguf_file=...)` itself needs torch (its GGUF reader module imports torch for
tensor dtypes and dequantization); torch is not installable here, so this script imports that
reader module with a stand-in `torch` module whose attributes are inert placeholders (used only in
annotations and dtype tables; no tensor code runs for the tokenizer).
The metadata reading, tokenizer-dict construction and conversion are transformers' code, run
unchanged. (If torch is installed, the real module is used.)

Compared: token ids (special tokens parsed) for every source and reference line of the given
TSV files, plus ChatML prompts with special tokens built from those lines, plus probe strings.
Ours is loaded twice: with the `tokenizers` library from tokenizer.json, and with
`AutoTokenizer.from_pretrained(ourdir)` (tokenizer_config.json + tokenizer.json).

usage: check_gguf_tokenizer.py MODEL.gguf CONVERTED_DIR TSV...
exit status 0 iff every compared text gives identical ids (probes that differ only by design,
see KNOWN_DIFFERENCES, are reported but do not fail).
"""
import importlib
import importlib.machinery
import json
import sys
import types
import unicodedata
from pathlib import Path

from tokenizers import Tokenizer


class _Anything:
    """Placeholder for torch names used in annotations and module-level constants."""

    def __getattr__(self, name):
        return _Anything()

    def __call__(self, *args, **kwargs):
        return _Anything()

    def __or__(self, other):
        return _Anything()

    __ror__ = __or__


class _TorchStandIn(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything()


def load_transformers_gguf_tokenizer(gguf_path):
    # transformers must be fully imported (it probes for torch) before the stand-in exists
    import transformers.integrations.gguf.gguf_tokenizer_mapping  # noqa: F401

    try:
        import torch  # noqa: F401
    except ImportError:
        stub = _TorchStandIn("torch")
        stub.__spec__ = importlib.machinery.ModuleSpec("torch", None)
        sys.modules["torch"] = stub
        try:
            importlib.import_module("transformers.integrations.gguf.reader")
        finally:
            del sys.modules["torch"]
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer, get_gguf_tokenizer

    arch, tok_dict, tok_config = get_gguf_tokenizer(str(gguf_path))
    backend, _ = convert_gguf_tokenizer(arch, tok_dict)
    return backend, tok_config, tok_dict


PROBES = [
    "",
    " ",
    "Hello world",
    "  two leading spaces\tand a tab\n\nblank line   trailing   ",
    "numbers 1234567 3.14159 2024-06-01",
    "emoji 🙂👍🏽 and CJK 汉字 かな 한국어",
    "code: fn main() { println!(\"{}\", x); } // done",
    "I'm sure they'll've DONE it, HE'S here",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<tool_call>{\"a\": 1}</tool_call><|endoftext|>",
    "<|fim_prefix|>def f():<|fim_suffix|>\n<|fim_middle|>",
]
# Decomposed (non-NFC) text: our Qwen2 tokenizer.json has the NFC normalizer of the original
# Qwen2 tokenizer.json; transformers' current GGUF path builds none, so ids may differ here.
NON_NFC_PROBES = ["Cafe\u0301 na\u0131\u0308ve", "e\u0301le\u0300ve"]

ZH_PROMPT = "将以下文本翻译为{lang}，注意只需要输出翻译后的结果，不要额外解释：\n\n{src}"
EN_PROMPT = "Translate the following segment into {lang}, without additional explanation.\n\n{src}"


def chatml(user):
    return (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    )


def main():
    gguf_path, ours_dir, tsvs = Path(sys.argv[1]), Path(sys.argv[2]), [Path(p) for p in sys.argv[3:]]
    ref, ref_config, tok_dict = load_transformers_gguf_tokenizer(gguf_path)
    ours = Tokenizer.from_file(str(ours_dir / "tokenizer.json"))
    from transformers import AutoTokenizer

    ours_auto = AutoTokenizer.from_pretrained(str(ours_dir))
    print(f"reference: transformers GGUF tokenizer ({tok_dict.get('tokenizer_type')}, pre={tok_dict.get('pre_tokenizer_type')}), vocab {ref.get_vocab_size()}")
    print(f"ours: {ours_dir / 'tokenizer.json'} vocab {ours.get_vocab_size()}; AutoTokenizer class {type(ours_auto).__name__}")

    ok = True
    # config-level checks
    cfg = json.loads((ours_dir / "tokenizer_config.json").read_text())
    for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
        if cfg.get(key) != ref_config.get(key):
            print(f"FAIL tokenizer_config {key}: ours {cfg.get(key)!r} vs transformers {ref_config.get(key)!r}")
            ok = False
    if cfg.get("chat_template") != ref_config.get("chat_template"):
        print("FAIL chat_template differs from the GGUF's tokenizer.chat_template")
        ok = False
    if ref.get_vocab(with_added_tokens=True) != ours.get_vocab(with_added_tokens=True):
        print("FAIL vocab (with added tokens) differs")
        ok = False
    ref_added = {k: (v.content, v.special) for k, v in ref.get_added_tokens_decoder().items()}
    our_added = {k: (v.content, v.special) for k, v in ours.get_added_tokens_decoder().items()}
    if ref_added != our_added:
        print(f"FAIL added tokens differ: {len(ref_added)} vs {len(our_added)}")
        ok = False
    else:
        print(f"added tokens identical: {len(our_added)} ({sum(s for _, s in our_added.values())} special)")

    groups = {}
    for tsv in tsvs:
        lines = tsv.read_text(encoding="utf-8").splitlines()
        src = [line.split("\t")[0] for line in lines]
        refs = [line.split("\t")[1] if "\t" in line else "" for line in lines]
        groups[f"{tsv.name} source"] = src
        groups[f"{tsv.name} reference"] = refs
        zh_src = tsv.name.split(".")[1].startswith("zh")
        groups[f"{tsv.name} ChatML prompts"] = [
            chatml((ZH_PROMPT if zh_src else EN_PROMPT).format(lang="英语" if zh_src else "Chinese", src=s)) for s in src
        ]
    groups["probes"] = PROBES

    total_texts = total_tokens = 0
    for name, texts in groups.items():
        same = same_auto = roundtrip = 0
        first_bad = None
        for t in texts:
            a = ref.encode(t, add_special_tokens=True).ids
            b = ours.encode(t, add_special_tokens=True).ids
            c = ours_auto(t, add_special_tokens=True)["input_ids"]
            total_tokens += len(b)
            same += a == b
            same_auto += a == c
            roundtrip += ours.decode(b, skip_special_tokens=False) == t
            if (a != b or a != c) and first_bad is None:
                first_bad = (t[:80], a[:12], b[:12], c[:12])
        total_texts += len(texts)
        status = "ok" if same == same_auto == len(texts) else "FAIL"
        ok &= status == "ok"
        print(
            f"{status:4s} {name}: {same}/{len(texts)} identical ids (tokenizers lib), "
            f"{same_auto}/{len(texts)} (AutoTokenizer on our dir), decode round-trip {roundtrip}/{len(texts)}"
        )
        if first_bad:
            print("     first difference:", first_bad)

    for t in NON_NFC_PROBES:
        a = ref.encode(t).ids
        b = ours.encode(t).ids
        nfc = ref.encode(unicodedata.normalize("NFC", t)).ids
        print(
            f"note non-NFC probe {t!r}: {'same' if a == b else 'differs'} vs transformers-GGUF; "
            f"ours {'==' if b == nfc else '!='} transformers-GGUF on NFC(text) (by design: Qwen2 NFC normalizer)"
        )
    print(f"texts compared: {total_texts}, tokens: {total_tokens}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
