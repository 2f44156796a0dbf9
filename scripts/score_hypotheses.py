#!/usr/bin/env python3
"""Score saved hypothesis files against a reference with sacrebleu 2.6.0: corpus BLEU/chrF of
a baseline and of each system, and the system-minus-baseline delta with a paired-bootstrap 95%
interval (1000 resamples of segment indices, Python `random.Random(12345)`).

Used when an `hy-quant eval` run was cut short after writing its hypotheses (eval-out/hyp/*.txt):
the same numbers `eval` would print, up to the bootstrap's random stream.

With `--ratio-to OTHER.txt` (e.g. the RTN int4 hypotheses) it also prints each system's drift as
a share of OTHER's drift, delta(system) / delta(OTHER), with a 95% percentile interval from the
same paired resamples (each resample scores base, OTHER and the system on the same segments):
issue 5's "GPTQ drift at most half of RTN's" as an estimate with its uncertainty. The ratio is
only meaningful where OTHER's own drift is clearly non-zero (its interval excludes 0).

  score_hypotheses.py --ref TESTSET.tsv --limit N --tokenize zh|13a [--ratio-to RTN.txt] BASE.txt SYSTEM.txt [...]
"""
import argparse
import random

from sacrebleu.metrics import BLEU, CHRF


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ref", required=True, help="TSV test set (reference in column 2)")
    p.add_argument("--limit", type=int)
    p.add_argument("--tokenize", default="13a")
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--ratio-to", help="hypotheses whose drift the systems' drifts are divided by")
    p.add_argument("base")
    p.add_argument("systems", nargs="+")
    a = p.parse_args()
    refs = [l.rstrip("\n").split("\t")[1] for l in open(a.ref, encoding="utf-8")][: a.limit]

    def read(path):
        lines = [l.rstrip("\n") for l in open(path, encoding="utf-8")]
        if len(lines) != len(refs):
            raise SystemExit(f"{path}: {len(lines)} lines, expected {len(refs)}")
        return lines

    base = read(a.base)
    rng = random.Random(12345)
    n = len(refs)
    samples = [[rng.randrange(n) for _ in range(n)] for _ in range(a.resamples)]
    lo_i, hi_i = int(0.025 * a.resamples) - 1, int(0.975 * a.resamples) - 1
    for name, m in [("BLEU", BLEU(tokenize=a.tokenize)), ("chrF", CHRF())]:
        def stats(hyps):
            return [m._extract_corpus_statistics([h], [[r]])[0] for h, r in zip(hyps, refs)]

        def score(st, idx):
            tot = [sum(st[i][k] for i in idx) for k in range(len(st[0]))]
            return m._compute_score_from_stats(tot).score

        bs = stats(base)
        full = range(n)
        print(f"{name}: baseline {a.base} {score(bs, full):.2f}")
        if a.ratio_to:
            rs = stats(read(a.ratio_to))
            rd_full = score(rs, full) - score(bs, full)
            rd = [score(rs, s) - score(bs, s) for s in samples]
        for sp in a.systems:
            hyps = read(sp)
            ss = stats(hyps)
            d = score(ss, full) - score(bs, full)
            ds = sorted(score(ss, s) - score(bs, s) for s in samples)
            lo, hi = ds[lo_i], ds[hi_i]
            changed = sum(x != y for x, y in zip(hyps, base)) / n
            star = " *" if lo > 0 or hi < 0 else ""
            line = f"  {sp}: {score(ss, full):.2f}  delta {d:+.2f} [{lo:+.2f}, {hi:+.2f}]{star}  changed {changed:.0%}"
            if a.ratio_to:
                ratios = sorted(
                    (score(ss, s) - score(bs, s)) / r if r != 0 else float("inf")
                    for s, r in zip(samples, rd)
                )
                line += (f"  share of {a.ratio_to}'s drift {100 * d / rd_full:.0f}% "
                         f"[{100 * ratios[lo_i]:.0f}%, {100 * ratios[hi_i]:.0f}%]")
            print(line)


if __name__ == "__main__":
    main()
