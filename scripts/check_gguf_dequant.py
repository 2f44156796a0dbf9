#!/usr/bin/env python3
"""Compare every tensor of a `hy-quant convert --from-gguf` output against gguf-py.

gguf-py (`pip install gguf numpy`) is llama.cpp's own Python package: `gguf.GGUFReader` parses
the file and `gguf.quants.dequantize` dequantizes the blocks in numpy, independently of our Rust
code. Its float32 result is rounded to the output dtype here (bf16: round-to-nearest-even on the
float32 bit pattern; f16: numpy's astype, also round-to-nearest-even) and compared bit for bit
with the safetensors written by hy-quant. Names are mapped and llama's Q/K row permutation is
undone here with an independent table / numpy reshape.

usage: check_gguf_dequant.py MODEL.gguf CONVERTED_DIR
exit status 0 iff every tensor matches bit for bit and no tensor is missing or extra.
"""
import json
import re
import struct
import sys
from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

LAYER_MAP = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_q_norm": "self_attn.query_layernorm",
    "attn_k_norm": "self_attn.key_layernorm",
}
TOP_MAP = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def hf_name(name):
    if name in TOP_MAP:
        return TOP_MAP[name]
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", name)
    if not m or m.group(2) not in LAYER_MAP:
        return None
    return f"model.layers.{m.group(1)}.{LAYER_MAP[m.group(2)]}.{m.group(3)}"


def read_safetensors(path):
    """{name: (dtype, shape, raw uint16 array)} without any float conversion."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__", None)
    base = 8 + n
    out = {}
    for k, v in header.items():
        a, b = v["data_offsets"]
        assert v["dtype"] in ("BF16", "F16"), v["dtype"]
        out[k] = (v["dtype"], v["shape"], np.frombuffer(raw, dtype="<u2", count=(b - a) // 2, offset=base + a))
    return out, meta


def to_bf16_bits(x):
    """float32 -> bf16 bits, round-to-nearest-even; NaN -> quiet NaN keeping the sign."""
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return rounded


def to_f16_bits(x):
    return x.astype(np.float32).astype(np.float16).view(np.uint16)


def as_f32(bits, dtype):
    if dtype == "BF16":
        return (bits.astype(np.uint32) << 16).view(np.float32)
    return bits.view(np.float16).astype(np.float32)


def ordered(bits):
    """uint16 float bits -> integers ordered like the floats (for ulp distances)."""
    b = bits.astype(np.int32)
    return np.where(b & 0x8000, -(b & 0x7FFF), b)


def main():
    gguf_path, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    reader = GGUFReader(gguf_path)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    n_head = int(reader.fields[f"{arch}.attention.head_count"].parts[-1][0])
    kv_field = reader.fields.get(f"{arch}.attention.head_count_kv")
    n_kv = int(kv_field.parts[-1][0]) if kv_field else n_head

    index = out_dir / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    ours = {}
    for f in files:
        t, meta = read_safetensors(out_dir / f)
        assert meta == {"format": "pt"}, f"{f}: __metadata__ is {meta}"
        ours.update(t)

    compared = identical = 0
    worst_ulp, worst_abs, worst_name = 0, 0.0, None
    by_type = {}
    seen = set()
    failures = []
    for t in reader.tensors:
        name = hf_name(t.name)
        if name is None:
            print(f"skip {t.name} (no HF counterpart)")
            continue
        seen.add(name)
        if name not in ours:
            failures.append(f"{name} missing from output")
            continue
        dtype, shape, bits = ours[name]
        ref = dequantize(t.data, t.tensor_type).astype(np.float32)
        # gguf-py gives the row-major (torch) shape: reversed ggml dims
        want_shape = [int(d) for d in reversed(list(t.shape))]
        ref = ref.reshape(want_shape)
        if arch == "llama" and re.fullmatch(r"blk\.\d+\.attn_[qk]\.(weight|bias)", t.name):
            heads = n_head if ".attn_q." in t.name else n_kv
            rows = want_shape[0]
            rest = want_shape[1:]
            ref = ref.reshape(heads, rows // heads // 2, 2, *rest).swapaxes(1, 2).reshape(want_shape)
        if list(shape) != want_shape:
            failures.append(f"{name}: shape {shape} != {want_shape}")
            continue
        ref_bits = (to_bf16_bits if dtype == "BF16" else to_f16_bits)(ref.ravel())
        compared += 1
        tname = t.tensor_type.name
        c = by_type.setdefault(tname, [0, 0])
        c[0] += 1
        same = np.array_equal(ref_bits, bits)
        if same:
            identical += 1
            c[1] += 1
        else:
            ulp = int(np.abs(ordered(ref_bits) - ordered(bits)).max())
            diff = np.flatnonzero(ref_bits != bits)
            failures.append(f"{name} ({tname}): {diff.size} values differ, max {ulp} ulp, first at {diff[0]}")
            if ulp > worst_ulp:
                worst_ulp, worst_name = ulp, name
        ours_f, ref_f = as_f32(bits, dtype), as_f32(ref_bits, dtype)
        with np.errstate(invalid="ignore"):
            d = float(np.nanmax(np.abs(ours_f - ref_f))) if ours_f.size else 0.0
        worst_abs = max(worst_abs, d)

    extra = sorted(set(ours) - seen)
    if extra:
        failures.append(f"tensors in output but not in GGUF: {extra[:5]}...")
    print(f"gguf: {gguf_path}  arch={arch}  output={out_dir} ({', '.join(files)})")
    for k, (n, ok) in sorted(by_type.items()):
        print(f"  {k:6s}: {ok}/{n} tensors bit-identical")
    print(f"tensors compared: {compared}, bit-identical: {identical}, in output: {len(ours)}")
    print(f"max ulp diff: {worst_ulp}{f' ({worst_name})' if worst_name else ''}; max |diff| after rounding: {worst_abs:g}")
    for f in failures[:20]:
        print("FAIL", f)
    sys.exit(0 if not failures and compared == len(ours) else 1)


if __name__ == "__main__":
    main()
