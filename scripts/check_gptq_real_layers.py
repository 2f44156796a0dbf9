#!/usr/bin/env python3
"""Compare hy-quant's GPTQ on real layers with the PyTorch reference (scripts/gptq_reference.py).

hy-quant writes, for chosen layers, each group's calibration inputs X and original weights when
run with HYQ_DUMP_LAYER_INPUTS=DIR:L1,L2 (see src/quant/gptq_pipeline.rs). This script runs the
reference GPTQ on exactly those X and W with the same settings and compares the relative output
error ||XW^T - XQ^T|| / ||XW^T|| with the one hy-quant recorded in the output's manifest.json.

  check_gptq_real_layers.py --dump DIR --quantized OUT_DIR [--max-rel-diff 0.02]

Exit status 1 when any linear differs by more than --max-rel-diff (relative).
"""
import argparse
import glob
import json
import math
import os
import sys
import time

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gptq_reference as ref  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dump", required=True)
    p.add_argument("--quantized", required=True)
    p.add_argument("--max-rel-diff", type=float, default=0.02)
    a = p.parse_args()
    m = json.load(open(os.path.join(a.quantized, "manifest.json")))
    cal = m["calibration"]
    act = {"none": "none", "permute": "permute", "static-groups": "static"}[cal["act_order"]]
    # manifests from before --clip-search have no grid_fit: min/max
    clip = {"min-max": False, "clip-search": True}[cal.get("grid_fit", "min-max")]
    ours = {t["name"]: t["calibrated"] for t in m["tensors"]}
    rows = []
    worst = 0.0
    for path in sorted(glob.glob(os.path.join(a.dump, "layer*.safetensors"))):
        t = load_file(path)
        x = t.pop("x").float()
        H = ref.hessian(x)
        for name, w in sorted(t.items()):
            t0 = time.time()
            r = ref.gptq(w.float(), H, m["bits"], m["group_size"], m["sym"], act, cal["damp"], clip=clip)
            ref_err = math.sqrt(ref.output_error(w, r["wq"], H))
            o = ours[name]
            diff = o["output_rel_error"] / ref_err - 1.0
            worst = max(worst, abs(diff))
            rows.append((name, x.shape[0], ref_err, o["output_rel_error"], diff, o["rtn_output_rel_error"], time.time() - t0))
    print(f"{'linear':45s} {'rows':>6s} {'reference':>10s} {'hy-quant':>10s} {'diff':>8s} {'RTN':>8s} {'ref s':>6s}")
    for n, r, e_ref, e_ours, d, e_rtn, s in rows:
        print(f"{n:45s} {r:6d} {e_ref:10.5f} {e_ours:10.5f} {d*100:7.2f}% {e_rtn:8.5f} {s:6.1f}")
    print(f"act order {act}, clip search {clip}")
    print(f"{len(rows)} linears; worst relative difference {worst*100:.2f}% (limit {a.max_rel_diff*100:.0f}%)")
    sys.exit(0 if rows and worst <= a.max_rel_diff else 1)


if __name__ == "__main__":
    main()
