//! Every backend op, one test body each, run on the CPU backend always and on the CUDA backend
//! in `#[ignore]`d tests (CI has no GPU; run them on a GPU machine with
//! `cargo test --release --test backend_ops -- --ignored --test-threads=1 --nocapture`).
//! Each body compares the backend against a reference computed here on the host (f64 sums
//! over the same 16-bit-rounded inputs), and prints its largest error.

use hy_quant::backend::cuda::{probe, CudaOptions, GemvKernel};
use hy_quant::backend::{
    gptq_linear_on_host, AttnShape, Backend, BackendHessian, CpuBackend, CudaBackend, Device,
    DeviceChoice, GptqHost, GptqWeight, HalfKind, LinearJob, PrefillMath,
};
use hy_quant::dtype::DType;
use hy_quant::export::gptq_v1;
use hy_quant::quant::gptq::{gptq_quantize, output_error, ActOrder, GptqConfig, SweepPlan};
use hy_quant::quant::grid::GridFit;
use hy_quant::quant::{QuantScheme, QuantizedLinear, Weight};
use hy_quant::rng::SplitMix64;
use hy_quant::runner::forward::Rope;

/// The largest |a - b| over two equally long outputs.
fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

fn randn(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut r = SplitMix64(seed);
    (0..n).map(|_| r.normal() as f32 * scale).collect()
}

fn halves(kind: HalfKind, v: &[f32]) -> Vec<u16> {
    v.iter().map(|&x| kind.from_f32(x)).collect()
}

fn max_abs_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(&g, &w)| {
            assert!(g.is_finite(), "non-finite output {g} (want {w})");
            (g as f64 - w).abs()
        })
        .fold(0.0, f64::max)
}

fn report(op: &str, b: &impl Backend, err: f64, tol: f64) {
    println!(
        "{op:<28} {:<40} max err {err:.3e} (tol {tol:.0e})",
        b.name()
    );
    assert!(
        err <= tol,
        "{op} on {}: max err {err:e} > {tol:e}",
        b.name()
    );
}

// ---------------------------------------------------------------- test bodies

fn rms_norm_body<B: Backend>(b: &B) {
    for (rows, dim, seed) in [(7usize, 896usize, 1u64), (24, 128, 2), (1, 4096, 3)] {
        let x = randn(seed, rows * dim, 2.0);
        let w = randn(seed + 100, dim, 1.0);
        let eps = 1e-6f32;
        let want: Vec<f64> = x
            .chunks(dim)
            .flat_map(|row| {
                let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / dim as f64;
                let inv = 1.0 / (ms + eps as f64).sqrt();
                row.iter()
                    .zip(&w)
                    .map(move |(&v, &g)| v as f64 * inv * g as f64)
                    .collect::<Vec<_>>()
            })
            .collect();
        let (xd, wd) = (b.upload(&x).unwrap(), b.upload(&w).unwrap());
        let mut out = b.zeros::<f32>(rows * dim).unwrap();
        b.rms_norm(&xd, &wd, eps, &mut out).unwrap();
        let got = b.download(&out).unwrap();
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        report(
            &format!("rms_norm {rows}x{dim}"),
            b,
            max_abs_err(&got, &want) / scale,
            1e-5,
        );
    }
}

fn rope_body<B: Backend>(b: &B) {
    let (heads, hd) = (4usize, 128usize);
    // Plain base, and HunYuan's dynamic-alpha base (rope_theta * alpha^(d/(d-2)), alpha 1000).
    let hunyuan = 10000.0f64 * 1000f64.powf(hd as f64 / (hd as f64 - 2.0));
    for base in [10000.0f64, 1_000_000.0, hunyuan] {
        let rope = Rope::new(base, hd);
        let positions: Vec<u32> = vec![0, 1, 7, 100, 2047, 8191];
        let rows = positions.len();
        let x = randn(base as u64, rows * heads * hd, 1.0);
        let half = hd / 2;
        let mut want = vec![0f64; x.len()];
        for (r, &p) in positions.iter().enumerate() {
            for h in 0..heads {
                let o = r * heads * hd + h * hd;
                for i in 0..half {
                    let a = (p as f32 * rope.inv_freq[i]) as f64;
                    let (c, s) = (a.cos() as f32 as f64, a.sin() as f32 as f64);
                    let (x0, x1) = (x[o + i] as f64, x[o + i + half] as f64);
                    want[o + i] = x0 * c - x1 * s;
                    want[o + i + half] = x1 * c + x0 * s;
                }
            }
        }
        let mut xd = b.upload(&x).unwrap();
        let pd = b.upload(&positions).unwrap();
        let fd = b.upload(&rope.inv_freq).unwrap();
        b.rope(&mut xd, &pd, &fd, hd).unwrap();
        let got = b.download(&xd).unwrap();
        report(
            &format!("rope base {base:.3e}"),
            b,
            max_abs_err(&got, &want),
            2e-6,
        );
    }
}

fn silu_mul_body<B: Backend>(b: &B) {
    let n = 10_007;
    let g = randn(5, n, 4.0);
    let u = randn(6, n, 1.0);
    let want: Vec<f64> = g
        .iter()
        .zip(&u)
        .map(|(&g, &u)| g as f64 / (1.0 + (-g as f64).exp()) * u as f64)
        .collect();
    let (gd, ud) = (b.upload(&g).unwrap(), b.upload(&u).unwrap());
    let mut out = b.zeros::<f32>(n).unwrap();
    b.silu_mul(&gd, &ud, &mut out).unwrap();
    let got = b.download(&out).unwrap();
    report("silu_mul", b, max_abs_err(&got, &want), 1e-5);
}

/// `silu_mul_fused` over a [rows, 2 * inter] gate|up buffer: bit-identical to `silu_mul` on
/// the split halves (same arithmetic), and to the host reference within 1e-5.
fn silu_mul_fused_body<B: Backend>(b: &B) {
    for (rows, inter) in [(1usize, 384usize), (7, 1000), (16, 33)] {
        let gu = randn(rows as u64 * 31 + inter as u64, rows * 2 * inter, 3.0);
        let (mut g, mut u) = (Vec::new(), Vec::new());
        for row in gu.chunks(2 * inter) {
            g.extend_from_slice(&row[..inter]);
            u.extend_from_slice(&row[inter..]);
        }
        let want: Vec<f64> = g
            .iter()
            .zip(&u)
            .map(|(&g, &u)| g as f64 / (1.0 + (-g as f64).exp()) * u as f64)
            .collect();
        let mut out = b.zeros::<f32>(rows * inter).unwrap();
        b.silu_mul_fused(&b.upload(&gu).unwrap(), inter, &mut out)
            .unwrap();
        let got = b.download(&out).unwrap();
        let mut split = b.zeros::<f32>(rows * inter).unwrap();
        b.silu_mul(&b.upload(&g).unwrap(), &b.upload(&u).unwrap(), &mut split)
            .unwrap();
        assert_eq!(
            got,
            b.download(&split).unwrap(),
            "silu_mul_fused vs silu_mul {rows}x{inter} on {}",
            b.name()
        );
        report(
            &format!("silu_mul_fused {rows}x{inter}"),
            b,
            max_abs_err(&got, &want),
            1e-5,
        );
    }
    let gu = b.upload(&[0f32; 12]).unwrap();
    let mut out = b.zeros::<f32>(4).unwrap();
    let err = b.silu_mul_fused(&gu, 4, &mut out).unwrap_err();
    assert!(err.to_string().contains("silu_mul_fused"), "{err}");
    let err = b.silu_mul_fused(&gu, 5, &mut out).unwrap_err();
    assert!(err.to_string().contains("silu_mul_fused"), "{err}");
}

/// The fused decoder ops against the ops they replace, on the same backend:
/// `add_rms_norm_half` (with and without the add) = `add` + `rms_norm` + `to_half`,
/// `silu_mul_fused_half` = `silu_mul_fused` + `to_half` (both bit for bit: the same
/// arithmetic, block size and reduction), and `qkv_rope_norm` = `split_cols` x3 + `rope` x2
/// (+ `rms_norm` x2): bit for bit on the CPU; on the GPU within 2e-6 of the largest value
/// (the compiler may contract the rotation's products differently in the two kernels).
fn fused_ops_body<B: Backend>(b: &B) {
    let eps = 1e-6f32;
    for kind in [HalfKind::BF16, HalfKind::F16] {
        for (rows, dim) in [(1usize, 896usize), (7, 4096), (3, 100)] {
            let seed = rows as u64 * 7 + dim as u64;
            let (x, y) = (
                randn(seed, rows * dim, 2.0),
                randn(seed + 1, rows * dim, 1.0),
            );
            let w = b.upload(&randn(seed + 2, dim, 0.5)).unwrap();
            let yd = b.upload(&y).unwrap();
            for add in [true, false] {
                let mut x1 = b.upload(&x).unwrap();
                let mut a = b.zeros::<f32>(rows * dim).unwrap();
                let mut want = b.zeros::<u16>(rows * dim).unwrap();
                if add {
                    b.add(&mut x1, &yd).unwrap();
                }
                b.rms_norm(&x1, &w, eps, &mut a).unwrap();
                b.to_half(&a, kind, &mut want).unwrap();
                let mut x2 = b.upload(&x).unwrap();
                let mut got = b.zeros::<u16>(rows * dim).unwrap();
                b.add_rms_norm_half(&mut x2, add.then_some(&yd), &w, eps, kind, &mut got)
                    .unwrap();
                let what = format!("add_rms_norm_half add={add} {rows}x{dim} {kind:?}");
                assert_eq!(
                    b.download(&x2).unwrap(),
                    b.download(&x1).unwrap(),
                    "{what}: x on {}",
                    b.name()
                );
                assert_eq!(
                    b.download(&got).unwrap(),
                    b.download(&want).unwrap(),
                    "{what}: out on {}",
                    b.name()
                );
            }
        }
        for (rows, inter) in [(1usize, 384usize), (9, 1000)] {
            let gu = b
                .upload(&randn(rows as u64 + inter as u64, rows * 2 * inter, 3.0))
                .unwrap();
            let mut act = b.zeros::<f32>(rows * inter).unwrap();
            let mut want = b.zeros::<u16>(rows * inter).unwrap();
            b.silu_mul_fused(&gu, inter, &mut act).unwrap();
            b.to_half(&act, kind, &mut want).unwrap();
            let mut got = b.zeros::<u16>(rows * inter).unwrap();
            b.silu_mul_fused_half(&gu, inter, kind, &mut got).unwrap();
            assert_eq!(
                b.download(&got).unwrap(),
                b.download(&want).unwrap(),
                "silu_mul_fused_half {rows}x{inter} {kind:?} on {}",
                b.name()
            );
        }
    }
    let exact = b.name() == "cpu";
    for (rows, heads, kv_heads, head_dim, norm) in [
        (1usize, 4usize, 2usize, 32usize, true),
        (5, 8, 2, 128, true),
        (3, 4, 4, 64, false),
        (2, 28, 4, 128, true),
    ] {
        let shape = AttnShape {
            heads,
            kv_heads,
            head_dim,
            max_len: 8192,
        };
        let (qw, kvw) = (shape.q_width(), shape.kv_width());
        let width = qw + 2 * kvw;
        let seed = (rows * heads * head_dim) as u64;
        let qkv = b.upload(&randn(seed, rows * width, 1.5)).unwrap();
        let mut r = SplitMix64(seed);
        let pos: Vec<u32> = (0..rows).map(|_| (r.next_u64() % 6000) as u32).collect();
        let pos = b.upload(&pos).unwrap();
        let inv_freq = b.upload(&Rope::new(1e6, head_dim).inv_freq).unwrap();
        let (qn, kn) = (
            b.upload(&randn(seed + 1, head_dim, 0.5)).unwrap(),
            b.upload(&randn(seed + 2, head_dim, 0.5)).unwrap(),
        );
        let qk_norm = norm.then_some((&qn, &kn));
        // The unfused ops.
        let (mut q, mut k, mut v) = (
            b.zeros::<f32>(rows * qw).unwrap(),
            b.zeros::<f32>(rows * kvw).unwrap(),
            b.zeros::<f32>(rows * kvw).unwrap(),
        );
        b.split_cols(&qkv, rows, width, 0, &mut q).unwrap();
        b.split_cols(&qkv, rows, width, qw, &mut k).unwrap();
        b.split_cols(&qkv, rows, width, qw + kvw, &mut v).unwrap();
        b.rope(&mut q, &pos, &inv_freq, head_dim).unwrap();
        b.rope(&mut k, &pos, &inv_freq, head_dim).unwrap();
        if let Some((qn, kn)) = qk_norm {
            let (mut q2, mut k2) = (
                b.zeros::<f32>(rows * qw).unwrap(),
                b.zeros::<f32>(rows * kvw).unwrap(),
            );
            b.rms_norm(&q, qn, eps, &mut q2).unwrap();
            b.rms_norm(&k, kn, eps, &mut k2).unwrap();
            (q, k) = (q2, k2);
        }
        let (mut fq, mut fk, mut fv) = (
            b.zeros::<f32>(rows * qw).unwrap(),
            b.zeros::<f32>(rows * kvw).unwrap(),
            b.zeros::<f32>(rows * kvw).unwrap(),
        );
        b.qkv_rope_norm(
            &qkv, &pos, &inv_freq, &shape, qk_norm, eps, &mut fq, &mut fk, &mut fv,
        )
        .unwrap();
        let what = format!(
            "qkv_rope_norm {rows} rows {heads}/{kv_heads} heads of {head_dim}, norm {norm}"
        );
        assert_eq!(
            b.download(&fv).unwrap(),
            b.download(&v).unwrap(),
            "{what}: v on {}",
            b.name()
        );
        for (name, got, want) in [("q", &fq, &q), ("k", &fk, &k)] {
            let (got, want) = (b.download(got).unwrap(), b.download(want).unwrap());
            if exact {
                assert_eq!(got, want, "{what}: {name}");
            } else {
                let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
                let want: Vec<f64> = want.iter().map(|&x| x as f64).collect();
                let err = max_abs_err(&got, &want) / scale;
                assert!(
                    err <= 2e-6,
                    "{what}: {name} rel err {err:e} on {}",
                    b.name()
                );
            }
        }
    }
    // Shapes that do not fit are errors naming the op.
    let shape = AttnShape {
        heads: 2,
        kv_heads: 1,
        head_dim: 32,
        max_len: 16,
    };
    let qkv = b.zeros::<f32>(128).unwrap();
    let pos = b.upload(&[0u32]).unwrap();
    let inv_freq = b.zeros::<f32>(16).unwrap();
    let (mut q, mut k, mut v) = (
        b.zeros::<f32>(64).unwrap(),
        b.zeros::<f32>(32).unwrap(),
        b.zeros::<f32>(31).unwrap(),
    );
    let err = b
        .qkv_rope_norm(
            &qkv, &pos, &inv_freq, &shape, None, eps, &mut q, &mut k, &mut v,
        )
        .unwrap_err();
    assert!(err.to_string().contains("qkv_rope_norm: v"), "{err}");
    let odd = AttnShape {
        head_dim: 31,
        ..shape
    };
    let err = b
        .qkv_rope_norm(
            &qkv, &pos, &inv_freq, &odd, None, eps, &mut q, &mut k, &mut v,
        )
        .unwrap_err();
    assert!(err.to_string().contains("head_dim 31"), "{err}");
    let mut x = b.zeros::<f32>(10).unwrap();
    let mut out = b.zeros::<u16>(10).unwrap();
    let err = b
        .add_rms_norm_half(
            &mut x,
            None,
            &b.zeros::<f32>(4).unwrap(),
            eps,
            HalfKind::BF16,
            &mut out,
        )
        .unwrap_err();
    assert!(err.to_string().contains("add_rms_norm_half"), "{err}");
    report("fused ops vs unfused", b, 0.0, 0.0);
}

/// `split_cols` copies column blocks exactly (q|k|v widths of a GQA layer, an odd width, one
/// row and many rows) and rejects blocks past the source's last column.
fn split_cols_body<B: Backend>(b: &B) {
    for (rows, parts) in [
        (1usize, vec![128usize, 64, 64]),
        (13, vec![4096, 1024, 1024]),
        (5, vec![7, 1, 30]),
    ] {
        let cols: usize = parts.iter().sum();
        let src: Vec<f32> = (0..rows * cols).map(|i| i as f32 * 0.5 - 3.0).collect();
        let sd = b.upload(&src).unwrap();
        let mut col0 = 0;
        for &w in &parts {
            let mut dst = b.zeros::<f32>(rows * w).unwrap();
            b.split_cols(&sd, rows, cols, col0, &mut dst).unwrap();
            let want: Vec<f32> = src
                .chunks(cols)
                .flat_map(|r| r[col0..col0 + w].to_vec())
                .collect();
            assert_eq!(
                b.download(&dst).unwrap(),
                want,
                "split_cols {rows}x{cols} [{col0}, {}) on {}",
                col0 + w,
                b.name()
            );
            col0 += w;
        }
    }
    let sd = b.upload(&[0f32; 20]).unwrap();
    let mut dst = b.zeros::<f32>(8).unwrap();
    let err = b.split_cols(&sd, 2, 10, 7, &mut dst).unwrap_err();
    assert!(err.to_string().contains("split_cols"), "{err}");
    let err = b.split_cols(&sd, 3, 10, 0, &mut dst).unwrap_err();
    assert!(err.to_string().contains("split_cols"), "{err}");
    let mut empty = b.zeros::<f32>(0).unwrap();
    b.split_cols(&b.zeros::<f32>(0).unwrap(), 0, 10, 0, &mut empty)
        .unwrap();
    report("split_cols (exact)", b, 0.0, 0.0);
}

fn embedding_body<B: Backend>(b: &B) {
    let (vocab, hidden) = (300usize, 96usize);
    for kind in [HalfKind::BF16, HalfKind::F16] {
        let table = halves(kind, &randn(7, vocab * hidden, 0.5));
        let ids: Vec<u32> = vec![0, 299, 17, 17, 150];
        let want: Vec<f32> = ids
            .iter()
            .flat_map(|&t| {
                table[t as usize * hidden..(t as usize + 1) * hidden]
                    .iter()
                    .map(|&h| kind.to_f32(h))
            })
            .collect();
        let (td, idd) = (b.upload(&table).unwrap(), b.upload(&ids).unwrap());
        let mut out = b.zeros::<f32>(ids.len() * hidden).unwrap();
        b.embedding(&td, kind, hidden, &idd, &mut out).unwrap();
        assert_eq!(b.download(&out).unwrap(), want, "{kind:?} on {}", b.name());
    }
    report("embedding (exact)", b, 0.0, 0.0);
}

fn argmax_body<B: Backend>(b: &B) {
    let cols = 151_936; // Qwen2.5's vocabulary
    let rows = 7;
    let mut x = randn(8, rows * cols, 3.0);
    // Row 1: a tie between two maxima; the first wins.
    x[cols + 500] = 100.0;
    x[cols + 90_000] = 100.0;
    // Row 2: the maximum is the last element.
    x[3 * cols - 1] = 1000.0;
    // Row 3: NaNs are never chosen.
    x[3 * cols + 5] = f32::NAN;
    // Row 4: the runner-up sits in another thread's stride than the maximum, and a NaN.
    x[4 * cols + 7] = 50.0;
    x[4 * cols + 8] = 49.5;
    x[4 * cols + 9] = f32::NAN;
    // Row 5: nothing above -inf (index 0, margin NaN as on the host).
    x[5 * cols..6 * cols].fill(f32::NEG_INFINITY);
    // Row 6: the maximum and runner-up in the same thread's stride (256 apart).
    x[6 * cols + 1000] = 70.0;
    x[6 * cols + 1256] = 69.0;
    let (want, want_margin): (Vec<u32>, Vec<f32>) = x
        .chunks(cols)
        .map(|row| {
            // The plain definition, written out: first maximum; margin to the best other.
            let (mut best, mut top) = (0usize, f32::NEG_INFINITY);
            for (i, &v) in row.iter().enumerate() {
                if v > top {
                    top = v;
                    best = i;
                }
            }
            let second = row
                .iter()
                .enumerate()
                .filter(|&(i, v)| i != best && !v.is_nan())
                .fold(f32::NEG_INFINITY, |m, (_, &v)| m.max(v));
            (best as u32, top - second)
        })
        .unzip();
    assert_eq!(want[1], 500);
    assert_eq!(want_margin[1], 0.0);
    assert_eq!((want[4], want_margin[4]), (7, 0.5));
    assert_eq!(want[5], 0);
    let xd = b.upload(&x).unwrap();
    let mut out = b.zeros::<u32>(rows).unwrap();
    let mut margin = b.zeros::<f32>(rows).unwrap();
    b.argmax(&xd, cols, &mut out, &mut margin).unwrap();
    assert_eq!(b.download(&out).unwrap(), want, "on {}", b.name());
    let got_margin = b.download(&margin).unwrap();
    for (r, (g, w)) in got_margin.iter().zip(&want_margin).enumerate() {
        // `==`: a zero margin's sign may differ on the GPU (ties between +0 and -0).
        assert!(
            g == w || (g.is_nan() && w.is_nan()),
            "row {r}: margin {g} vs {w} on {}",
            b.name()
        );
    }
    let err = b.argmax(&xd, cols, &mut out, &mut b.zeros::<f32>(3).unwrap());
    assert!(err.unwrap_err().to_string().contains("argmax: margin"));
    report("argmax (exact)", b, 0.0, 0.0);
}

/// Uploads and downloads round-trip exactly, small (direct copies) and large (the GPU stages
/// them through pinned buffers in 32 MiB chunks: sizes straddle the chunk and threshold).
fn copies_body<B: Backend>(b: &B) {
    for len in [
        0usize,
        3,
        (4 << 20) / 4 - 1,
        (4 << 20) / 4 + 5,
        (70 << 20) / 4 + 13,
    ] {
        let v: Vec<f32> = (0..len).map(|i| (i as f32) * 0.5 - 7.0).collect();
        assert_eq!(
            b.download(&b.upload(&v).unwrap()).unwrap(),
            v,
            "f32 x {len}"
        );
    }
    let bytes: Vec<u8> = (0..(33usize << 20) + 7)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    assert_eq!(b.download(&b.upload(&bytes).unwrap()).unwrap(), bytes);
    // A download after queued work sees its result (stream order).
    let mut x = b.upload(&vec![1f32; 9 << 20]).unwrap();
    let y = b.upload(&vec![2f32; 9 << 20]).unwrap();
    b.add(&mut x, &y).unwrap();
    assert!(b.download(&x).unwrap().iter().all(|&v| v == 3.0));
    report("upload/download round trips (exact)", b, 0.0, 0.0);
}

fn to_half_body<B: Backend>(b: &B) {
    let mut x = randn(9, 4096, 10.0);
    // Ties, subnormals, overflow, infinities.
    x.extend_from_slice(&[
        1.0 + 1.0 / 2048.0,
        1.0 + 3.0 / 2048.0,
        1.0 + 1.0 / 256.0,
        6e-8,
        1e-40,
        70000.0,
        -1e30,
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.0,
        -0.0,
    ]);
    for kind in [HalfKind::BF16, HalfKind::F16] {
        let want = halves(kind, &x);
        let xd = b.upload(&x).unwrap();
        let mut out = b.zeros::<u16>(x.len()).unwrap();
        b.to_half(&xd, kind, &mut out).unwrap();
        assert_eq!(b.download(&out).unwrap(), want, "{kind:?} on {}", b.name());
        // And back: every 16-bit pattern widened exactly (NaN patterns stay NaN).
        let all: Vec<u16> = (0..=u16::MAX).collect();
        let mut wide = b.zeros::<f32>(all.len()).unwrap();
        b.widen_half(&b.upload(&all).unwrap(), kind, &mut wide)
            .unwrap();
        for (&bits, got) in all.iter().zip(b.download(&wide).unwrap()) {
            let want = kind.to_f32(bits);
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "widen_half {kind:?} {bits:#06x}: {got} vs {want} on {}",
                b.name()
            );
        }
    }
    report("to_half, widen_half (exact)", b, 0.0, 0.0);
}

/// Host reference `x . w^T` over 16-bit values, f64 sums, and the per-output scale
/// sum |x_i w_i| the error is measured against.
fn matmul_ref(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> (Vec<f64>, Vec<f64>) {
    let mut y = vec![0f64; m * n];
    let mut mag = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let (mut s, mut a) = (0f64, 0f64);
            for t in 0..k {
                let p = x[i * k + t] as f64 * w[j * k + t] as f64;
                s += p;
                a += p.abs();
            }
            y[i * n + j] = s;
            mag[i * n + j] = a;
        }
    }
    (y, mag)
}

fn rel_err(got: &[f32], want: &[f64], mag: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want.iter().zip(mag))
        .map(|(&g, (&w, &a))| {
            assert!(g.is_finite(), "non-finite output {g}");
            (g as f64 - w).abs() / a.max(1e-30)
        })
        .fold(0.0, f64::max)
}

fn gemm_body<B: Backend>(b: &B) {
    let (n, k) = (96usize, 320usize);
    for kind in [HalfKind::BF16, HalfKind::F16] {
        for m in [1usize, 5, 33] {
            let xh = halves(kind, &randn(10 + m as u64, m * k, 1.0));
            let wh = halves(kind, &randn(11, n * k, 0.05));
            let xf: Vec<f32> = xh.iter().map(|&h| kind.to_f32(h)).collect();
            let wf: Vec<f32> = wh.iter().map(|&h| kind.to_f32(h)).collect();
            let (want, mag) = matmul_ref(&xf, &wf, m, n, k);
            let (xd, wd) = (b.upload(&xh).unwrap(), b.upload(&wh).unwrap());
            let mut out = b.zeros::<f32>(m * n).unwrap();
            b.gemm(&xd, &wd, kind, m, n, k, &mut out).unwrap();
            let got = b.download(&out).unwrap();
            // f32 accumulation of k exact products: a few ulps of the magnitude.
            report(
                &format!("gemm {kind:?} m={m}"),
                b,
                rel_err(&got, &want, &mag),
                1e-5,
            );
        }
    }
}

/// A quantized linear with random levels, half-representable scales and valid zeros;
/// `act_order` assigns groups through a permutation (as desc_act checkpoints do).
#[allow(clippy::too_many_arguments)]
fn sample_linear(
    bits: u8,
    gs: i64,
    sym: bool,
    act_order: bool,
    n: usize,
    k: usize,
    kind: HalfKind,
    seed: u64,
) -> QuantizedLinear {
    let scheme = QuantScheme::new(bits, gs, sym).unwrap();
    let maxq = scheme.maxq();
    let groups = scheme.num_groups(k);
    let glen = scheme.group_len(k);
    let mut r = SplitMix64(seed);
    let mut perm: Vec<usize> = (0..k).collect();
    if act_order {
        for i in (1..k).rev() {
            let j = (r.next_u64() % (i as u64 + 1)) as usize;
            perm.swap(i, j);
        }
    }
    QuantizedLinear {
        scheme,
        out_features: n,
        in_features: k,
        q: (0..n * k)
            .map(|_| (r.next_u64() % (maxq as u64 + 1)) as u8)
            .collect(),
        scales: (0..groups * n)
            .map(|_| kind.round(0.002 + r.unit() as f32 * 0.02))
            .collect(),
        zeros: (0..groups * n)
            .map(|_| {
                if sym {
                    1 << (bits - 1)
                } else {
                    1 + (r.next_u64() % maxq as u64) as u32
                }
            })
            .collect(),
        g_idx: perm.iter().map(|&p| (p / glen) as u32).collect(),
    }
}

fn gptq_body<B: Backend>(b: &B) {
    let n = 128usize;
    let mut worst = 0f64;
    // k = 264 is not a multiple of 32: the GPU's prefill takes its CUDA-core fallback.
    for (bits, gs, sym, act_order, kind, k) in [
        (4u8, 128i64, true, false, HalfKind::BF16, 512usize),
        (4, 32, false, false, HalfKind::F16, 512),
        (4, -1, true, false, HalfKind::F16, 512),
        (4, 64, true, true, HalfKind::BF16, 512),
        (8, 128, true, false, HalfKind::F16, 512),
        (8, 32, false, true, HalfKind::BF16, 512),
        (4, 8, true, false, HalfKind::BF16, 264),
        (8, 8, false, true, HalfKind::F16, 264),
    ] {
        let ql = sample_linear(bits, gs, sym, act_order, n, k, kind, bits as u64 * 31 + 7);
        let w = upload_sample(b, &ql, kind);
        assert_eq!(w.g_idx.is_some(), act_order);
        // The weight a loader reconstructs, rounded to the model dtype.
        let wq: Vec<u16> = halves(kind, &ql.dequantize());
        let mut deq = b.zeros::<u16>(n * k).unwrap();
        b.dequantize_gptq(&w, &mut deq).unwrap();
        assert_eq!(
            b.download(&deq).unwrap(),
            wq,
            "dequantize {bits}-bit g{gs} sym={sym} act_order={act_order} on {}",
            b.name()
        );
        let wf: Vec<f32> = wq.iter().map(|&h| kind.to_f32(h)).collect();
        for m in [1usize, 3, 16, 17, 70] {
            let xh = halves(kind, &randn(100 + m as u64, m * k, 1.0));
            let xf: Vec<f32> = xh.iter().map(|&h| kind.to_f32(h)).collect();
            let (want, mag) = matmul_ref(&xf, &wf, m, n, k);
            let xd = b.upload(&xh).unwrap();
            let mut out = b.zeros::<f32>(m * n).unwrap();
            b.gemm_gptq(&xd, &w, m, &mut out).unwrap();
            let fused = b.download(&out).unwrap();
            let e = rel_err(&fused, &want, &mag);
            // Dequantize-then-GEMM on the same backend (cuBLAS on the GPU).
            let mut out2 = b.zeros::<f32>(m * n).unwrap();
            b.gemm(&xd, &deq, kind, m, n, k, &mut out2).unwrap();
            let via_gemm = b.download(&out2).unwrap();
            let via: Vec<f64> = via_gemm.iter().map(|&v| v as f64).collect();
            let e2 = rel_err(&fused, &via, &mag);
            assert!(
                e <= 1e-5 && e2 <= 2e-5,
                "gptq {bits}-bit g{gs} sym={sym} act_order={act_order} m={m} on {}: vs f64 {e:e}, vs dequantize+gemm {e2:e}",
                b.name()
            );
            worst = worst.max(e).max(e2);
        }
    }
    report("gptq w4/w8 a16 (all cases)", b, worst, 2e-5);
}

/// `kv_append` then `attention` over 16-bit caches of both kinds: the caches hold exactly
/// `HalfKind::from_f32` of the keys and values (ties planted to check round-to-nearest-even),
/// and attention matches an f64 host reference over those rounded values.
fn attention_body<B: Backend>(b: &B) {
    for kind in [HalfKind::BF16, HalfKind::F16] {
        for (heads, kv_heads, hd) in [(8usize, 2usize, 128usize), (14, 2, 64), (4, 4, 256)] {
            attention_case(b, kind, heads, kv_heads, hd);
        }
    }
}

fn attention_case<B: Backend>(b: &B, kind: HalfKind, heads: usize, kv_heads: usize, hd: usize) {
    let shape = AttnShape {
        heads,
        kv_heads,
        head_dim: hd,
        max_len: 1100,
    };
    let (qd, kvd) = (shape.q_width(), shape.kv_width());
    let n_slots = 3;
    let lens = [5usize, 1, 1024];
    let mut k_cache = b.zeros::<u16>(n_slots * shape.max_len * kvd).unwrap();
    let mut v_cache = b.zeros::<u16>(n_slots * shape.max_len * kvd).unwrap();
    // Host copies of what the cache holds (rounded to `kind`).
    let mut hk = vec![vec![0f32; shape.max_len * kvd]; n_slots];
    let mut hv = hk.clone();
    let (mut slots, mut positions) = (Vec::new(), Vec::new());
    for (s, &len) in lens.iter().enumerate() {
        for p in 0..len {
            slots.push(s as u32);
            positions.push(p as u32);
        }
    }
    let rows = slots.len();
    let mut kn = randn(hd as u64, rows * kvd, 1.0);
    let mut vn = randn(hd as u64 + 1, rows * kvd, 1.0);
    // Exact ties between two neighbours of `kind` (1 + half an ulp: rounds down to even;
    // 1 + 3 half ulps: up to even), a value just above a tie, and a negative tie.
    let half_ulp = match kind {
        HalfKind::BF16 => 2f32.powi(-8),
        HalfKind::F16 => 2f32.powi(-11),
    };
    let planted = [
        1.0 + half_ulp,
        1.0 + 3.0 * half_ulp,
        1.0 + half_ulp * 1.0001,
        -(2.0 + 2.0 * half_ulp),
    ];
    kn[..4].copy_from_slice(&planted);
    vn[kvd..kvd + 4].copy_from_slice(&planted);
    assert_eq!(kind.round(planted[0]), 1.0);
    assert_eq!(kind.round(planted[1]), 1.0 + 4.0 * half_ulp);
    let mut want_k = vec![0u16; n_slots * shape.max_len * kvd];
    let mut want_v = want_k.clone();
    for r in 0..rows {
        let (s, p) = (slots[r] as usize, positions[r] as usize);
        for j in 0..kvd {
            let (kb, vb) = (
                kind.from_f32(kn[r * kvd + j]),
                kind.from_f32(vn[r * kvd + j]),
            );
            let at = (s * shape.max_len + p) * kvd + j;
            (want_k[at], want_v[at]) = (kb, vb);
            hk[s][p * kvd + j] = kind.to_f32(kb);
            hv[s][p * kvd + j] = kind.to_f32(vb);
        }
    }
    let (sd, pd) = (b.upload(&slots).unwrap(), b.upload(&positions).unwrap());
    let (kd, vd) = (b.upload(&kn).unwrap(), b.upload(&vn).unwrap());
    b.kv_append(&kd, &vd, &sd, &pd, &shape, kind, &mut k_cache, &mut v_cache)
        .unwrap();
    assert!(
        b.download(&k_cache).unwrap() == want_k && b.download(&v_cache).unwrap() == want_v,
        "kv_append {kind:?} on {}: the caches are not HalfKind::from_f32 of k/v",
        b.name()
    );
    // Queries: a prefill of slot 0 (every position), slot 1's only token, and the last
    // tokens of slot 2's long context.
    let qrows: Vec<(u32, u32)> = (0..5)
        .map(|p| (0, p))
        .chain([(1, 0)])
        .chain((1020..1024).map(|p| (2, p)))
        .collect();
    let q = randn(hd as u64 + 2, qrows.len() * qd, 1.0);
    let scale = 1.0 / (hd as f64).sqrt();
    let group = heads / kv_heads;
    let mut want = vec![0f64; qrows.len() * qd];
    for (r, &(s, p)) in qrows.iter().enumerate() {
        for h in 0..heads {
            let kvh = h / group;
            let qh = &q[r * qd + h * hd..r * qd + (h + 1) * hd];
            let scores: Vec<f64> = (0..=p as usize)
                .map(|j| {
                    let kr = &hk[s as usize][j * kvd + kvh * hd..j * kvd + (kvh + 1) * hd];
                    qh.iter()
                        .zip(kr)
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum::<f64>()
                        * scale
                })
                .collect();
            let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - mx).exp()).collect();
            let sum: f64 = e.iter().sum();
            for d in 0..hd {
                want[r * qd + h * hd + d] = e
                    .iter()
                    .enumerate()
                    .map(|(j, w)| w * hv[s as usize][j * kvd + kvh * hd + d] as f64)
                    .sum::<f64>()
                    / sum;
            }
        }
    }
    let qs: Vec<u32> = qrows.iter().map(|r| r.0).collect();
    let qp: Vec<u32> = qrows.iter().map(|r| r.1).collect();
    let (qsd, qpd) = (b.upload(&qs).unwrap(), b.upload(&qp).unwrap());
    let qdev = b.upload(&q).unwrap();
    let mut out = b.zeros::<f32>(qrows.len() * qd).unwrap();
    b.attention(
        &qdev, &k_cache, &v_cache, kind, &qsd, &qpd, &shape, &mut out,
    )
    .unwrap();
    let got = b.download(&out).unwrap();
    report(
        &format!("attention {kind:?} h{heads}/kv{kv_heads} d{hd}"),
        b,
        max_abs_err(&got, &want),
        2e-5,
    );
}

/// CPU and CUDA attention over the same 16-bit caches (written by each backend's own
/// `kv_append`), compared directly: decode rows over a long context (the split path) and a
/// prefill, both half kinds. The caches must be bit-identical; the outputs agree to f32
/// rounding (online vs two-pass softmax, summation order).
#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_cuda_matches_cpu_backend() {
    let (cpu, gpu) = (CpuBackend::new(), cuda());
    let shape = AttnShape {
        heads: 32,
        kv_heads: 8,
        head_dim: 128,
        max_len: 2048,
    };
    let (qd, kvd) = (shape.q_width(), shape.kv_width());
    // Slot 0: 2000 positions, slot 1: 7.
    let (slots, positions): (Vec<u32>, Vec<u32>) = (0..2000u32)
        .map(|p| (0, p))
        .chain((0..7).map(|p| (1, p)))
        .unzip();
    let rows = slots.len();
    let k = randn(41, rows * kvd, 2.0);
    let v = randn(42, rows * kvd, 1.0);
    // Decode rows of both slots, then slot 1's whole prefill.
    let (qs, qp): (Vec<u32>, Vec<u32>) = [(0u32, 1999u32), (1, 6)]
        .into_iter()
        .chain((0..7).map(|p| (1, p)))
        .unzip();
    let q = randn(43, qs.len() * qd, 1.0);
    fn run<B: Backend>(
        b: &B,
        kind: HalfKind,
        shape: &AttnShape,
        kv: (&[f32], &[f32], &[u32], &[u32]),
        query: (&[f32], &[u32], &[u32]),
    ) -> (Vec<u16>, Vec<u16>, Vec<f32>) {
        let len = 2 * shape.max_len * shape.kv_width();
        let (mut kc, mut vc) = (b.zeros::<u16>(len).unwrap(), b.zeros::<u16>(len).unwrap());
        let up32 = |x: &[f32]| b.upload(x).unwrap();
        let upu = |x: &[u32]| b.upload(x).unwrap();
        b.kv_append(
            &up32(kv.0),
            &up32(kv.1),
            &upu(kv.2),
            &upu(kv.3),
            shape,
            kind,
            &mut kc,
            &mut vc,
        )
        .unwrap();
        let mut out = b.zeros::<f32>(query.0.len()).unwrap();
        b.attention(
            &up32(query.0),
            &kc,
            &vc,
            kind,
            &upu(query.1),
            &upu(query.2),
            shape,
            &mut out,
        )
        .unwrap();
        (
            b.download(&kc).unwrap(),
            b.download(&vc).unwrap(),
            b.download(&out).unwrap(),
        )
    }
    for kind in [HalfKind::BF16, HalfKind::F16] {
        let kv = (&k[..], &v[..], &slots[..], &positions[..]);
        let query = (&q[..], &qs[..], &qp[..]);
        let (ck, cv, co) = run(&cpu, kind, &shape, kv, query);
        let (gk, gv, go) = run(&gpu, kind, &shape, kv, query);
        assert!(ck == gk && cv == gv, "{kind:?}: kv_append caches differ");
        let err = max_abs_diff(&co, &go);
        println!("cuda vs cpu attention {kind:?}: max err {err:e}");
        assert!(
            err <= 2e-5,
            "{kind:?}: cuda vs cpu attention max err {err:e}"
        );
    }
}

fn shape_errors_body<B: Backend>(b: &B) {
    let x = b.upload(&[1.0f32; 10]).unwrap();
    let w = b.upload(&[1.0f32; 4]).unwrap();
    let mut out = b.zeros::<f32>(10).unwrap();
    let err = b.rms_norm(&x, &w, 1e-6, &mut out).unwrap_err();
    assert!(err.to_string().contains("rms_norm"), "{err}");
    let xh = b.upload(&[0u16; 6]).unwrap();
    let wh = b.upload(&[0u16; 6]).unwrap();
    let mut o = b.zeros::<f32>(5).unwrap();
    let err = b
        .gemm(&xh, &wh, HalfKind::BF16, 2, 2, 3, &mut o)
        .unwrap_err();
    assert!(err.to_string().contains("gemm"), "{err}");
    let bad_shape = AttnShape {
        heads: 3,
        kv_heads: 2,
        head_dim: 64,
        max_len: 4,
    };
    let err = b
        .attention(
            &x,
            &xh,
            &xh,
            HalfKind::BF16,
            &b.zeros(0).unwrap(),
            &b.zeros(0).unwrap(),
            &bad_shape,
            &mut out,
        )
        .unwrap_err();
    assert!(err.to_string().contains("heads"), "{err}");
    report("shape errors", b, 0.0, 0.0);
}

fn add_gather_body<B: Backend>(b: &B) {
    let (rows, width) = (6usize, 100usize);
    let x = randn(31, rows * width, 1.0);
    let y = randn(32, rows * width, 1.0);
    let bias = randn(33, width, 1.0);
    let mut xd = b.upload(&x).unwrap();
    b.add(&mut xd, &b.upload(&y).unwrap()).unwrap();
    b.add_bias(&mut xd, &b.upload(&bias).unwrap()).unwrap();
    let want: Vec<f32> = (0..rows * width)
        .map(|i| x[i] + y[i] + bias[i % width])
        .collect();
    let got = b.download(&xd).unwrap();
    assert_eq!(got, want, "add/add_bias on {}", b.name());
    let idx = vec![5u32, 0, 5, 2];
    let mut out = b.zeros::<f32>(idx.len() * width).unwrap();
    b.gather_rows(&xd, width, &b.upload(&idx).unwrap(), &mut out)
        .unwrap();
    let want: Vec<f32> = idx
        .iter()
        .flat_map(|&r| got[r as usize * width..(r as usize + 1) * width].to_vec())
        .collect();
    assert_eq!(
        b.download(&out).unwrap(),
        want,
        "gather_rows on {}",
        b.name()
    );
    report("add, add_bias, gather_rows (exact)", b, 0.0, 0.0);
}

/// The decoder on the backend (`runner::backend_model`) against the CPU reference runner
/// (f32 activations) and against itself on the CPU backend, full precision and GPTQ int4, with
/// batched greedy decoding and slot refill (3 prompts, 2 slots).
fn runner_body<B: Backend>(b: &B) {
    use hy_quant::model::synth::{synth, Preset, SynthOptions};
    use hy_quant::model::Checkpoint;
    use hy_quant::progress::Silent;
    use hy_quant::quant::pipeline::{quantize, Method, QuantizeOptions};
    use hy_quant::runner::backend_model::{generate_on, BackendModel};
    use hy_quant::runner::{generate, GenerateOptions, Model};
    let tmp = tempfile::tempdir().unwrap();
    let fp = tmp.path().join("tiny");
    synth(
        &SynthOptions {
            preset: Preset::Tiny,
            dtype: DType::BF16,
            seed: 5,
            out: fp.clone(),
            force: false,
        },
        &Silent,
    )
    .unwrap();
    let q4 = tmp.path().join("q4");
    quantize(
        &QuantizeOptions {
            model: fp.clone(),
            out: q4.clone(),
            method: Method::Rtn,
            scheme: QuantScheme::new(4, 32, true).unwrap(),
            force: false,
            max_shard_bytes: 5_000_000_000,
            command: vec!["test".into()],
            gptq: None,
        },
        &Silent,
    )
    .unwrap();
    let mut r = SplitMix64(77);
    let prompts: Vec<Vec<u32>> = [5usize, 9, 3]
        .iter()
        .map(|&n| (0..n).map(|_| (r.next_u64() % 1024) as u32).collect())
        .collect();
    let opts = GenerateOptions {
        max_new_tokens: 6,
        max_batch: 2,
        stop_ids: Vec::new(),
        keep_first_logits: true,
    };
    let rel = |a: &[f32], w: &[f32]| -> f64 {
        let scale = w.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
        a.iter()
            .zip(w)
            .map(|(x, y)| (x - y).abs() as f64)
            .fold(0.0, f64::max)
            / scale
    };
    let mut worst_vs_ref = 0f64;
    let mut worst_vs_cpu_backend = 0f64;
    for dir in [&fp, &q4] {
        let reference = Model::load(&Checkpoint::open(dir).unwrap()).unwrap();
        let (want, _) = generate(&reference, &prompts, &opts).unwrap();
        let ckpt = Checkpoint::open(dir).unwrap();
        let layers = ckpt.arch.num_layers();
        let model = BackendModel::load(b, &ckpt).unwrap();
        assert!(model.weight_bytes > 0);
        let (got, stats, kv_bytes) = generate_on(b, &model, &prompts, &opts).unwrap();
        assert_eq!(stats.generated_tokens, 18);
        // Keys and values of every layer, 2 slots of (longest prompt 9 + 6 new + 1)
        // positions, 2 bytes each (the model's 16-bit type).
        let kv_width = model.dims.kv_heads * model.dims.head_dim;
        assert_eq!(kv_bytes, (2 * layers * 2 * 16 * kv_width * 2) as u64);
        let cpu = CpuBackend::new();
        let cpu_model = BackendModel::load(&cpu, &Checkpoint::open(dir).unwrap()).unwrap();
        let (on_cpu, _, _) = generate_on(&cpu, &cpu_model, &prompts, &opts).unwrap();
        let one_at_a_time = GenerateOptions {
            max_batch: 1,
            ..opts.clone()
        };
        let (sequential, _, _) = generate_on(&cpu, &cpu_model, &prompts, &one_at_a_time).unwrap();
        let mut same_tokens = 0;
        for i in 0..prompts.len() {
            // Batching and slot reuse do not change the CPU backend's results at all.
            assert_eq!(on_cpu[i].token_ids, sequential[i].token_ids, "prompt {i}");
            let g = got[i].first_logits.as_ref().unwrap();
            worst_vs_ref = worst_vs_ref.max(rel(g, want[i].first_logits.as_ref().unwrap()));
            worst_vs_cpu_backend =
                worst_vs_cpu_backend.max(rel(g, on_cpu[i].first_logits.as_ref().unwrap()));
            same_tokens += got[i]
                .token_ids
                .iter()
                .zip(&on_cpu[i].token_ids)
                .take_while(|(a, b)| a == b)
                .count();
        }
        println!(
            "runner {} on {}: weights {} B, KV cache {kv_bytes} B, greedy tokens equal to the CPU backend's (prefix) {same_tokens}/18",
            dir.file_name().unwrap().to_string_lossy(),
            b.name(),
            model.weight_bytes
        );
    }
    // The backends' f32 keys and values differ in the last bits (GEMM summation order), and
    // the 16-bit KV cache rounds them: a value next to a half-way point can land one bf16 ulp
    // (2^-8 relative) apart, which moves the logits by ~2e-3 (1.9e-3 measured on the H200
    // with the 16-bit cache; 6.1e-4 with the f32 one). Greedy tokens still agree (printed).
    report(
        "runner first logits vs CPU backend",
        b,
        worst_vs_cpu_backend,
        5e-3,
    );
    // 16-bit linear inputs and KV cache vs the reference runner's f32 activations and cache.
    report("runner first logits vs f32 runner", b, worst_vs_ref, 5e-2);
}

/// RTN through the backend is byte-identical to `quant::rtn::Rtn` on the CPU: levels, scales
/// and zeros, every scheme and scale dtype, with planted edge cases (all-zero groups,
/// all-positive groups whose asymmetric zero would be 0, exact .5 ties, outliers).
fn rtn_body<B: Backend>(b: &B) {
    use hy_quant::quant::rtn::Rtn;
    use hy_quant::quant::{QuantMethod, Weight};
    let (n, k) = (64usize, 512usize);
    let mut data = randn(21, n * k, 0.02);
    data[..128].iter_mut().for_each(|v| *v = 0.0);
    data[k..k + 128].iter_mut().for_each(|v| *v = v.abs());
    for (i, v) in data[2 * k..3 * k].iter_mut().enumerate() {
        *v = (i % 16) as f32 * 0.5 - 4.0;
    }
    data[3 * k + 7] = 40.0;
    data[4 * k + 9] = -1e-30;
    let mut cases = 0;
    for store in [DType::BF16, DType::F16, DType::F32] {
        for (bits, gs) in [(4u8, 128i64), (4, 32), (8, 128), (4, -1), (8, -1)] {
            for sym in [true, false] {
                let scheme = QuantScheme::new(bits, gs, sym).unwrap();
                let w = Weight {
                    name: "model.layers.0.mlp.up_proj.weight",
                    data: &data,
                    out_features: n,
                    in_features: k,
                    scale_dtype: store,
                };
                let want = Rtn { scheme }.quantize(&w).unwrap();
                let got = b.quantize_rtn(&scheme, &w).unwrap();
                assert!(
                    got == want,
                    "rtn {bits}-bit g{gs} sym={sym} store={store} differs on {}",
                    b.name()
                );
                cases += 1;
            }
        }
    }
    // A scale that overflows f16 is the CPU's error, naming the tensor.
    let big = vec![1e6f32; 8 * 64];
    let w = Weight {
        name: "layers.0.q",
        data: &big,
        out_features: 8,
        in_features: 64,
        scale_dtype: DType::F16,
    };
    let scheme = QuantScheme::new(4, 32, true).unwrap();
    let err = b.quantize_rtn(&scheme, &w).unwrap_err();
    assert!(err.to_string().contains("layers.0.q") && err.to_string().contains("overflows"));
    report(&format!("rtn byte-identical ({cases} cases)"), b, 0.0, 0.0);
}

/// Calibration-like inputs (gptq.rs tests' generator): a few dominant directions, uneven
/// channel scales, outlier channels, and a weight with a few large entries; `dead` input
/// columns are all zero.
fn gptq_problem(
    seed: u64,
    n: usize,
    k: usize,
    rows: usize,
    strength: f64,
    dead: &[usize],
) -> (Vec<f32>, Vec<f32>) {
    let mut rng = SplitMix64(seed);
    let dirs = 5;
    let a: Vec<f64> = (0..dirs * k).map(|_| rng.normal()).collect();
    let chan: Vec<f64> = (0..k).map(|_| 0.3 + 1.2 * rng.unit()).collect();
    let mut x = vec![0f32; rows * k];
    for r in 0..rows {
        let z: Vec<f64> = (0..dirs)
            .map(|d| rng.normal() * [8.0, 5.0, 3.0, 2.0, 1.5][d] * strength)
            .collect();
        for c in 0..k {
            let mut v = rng.normal() * chan[c];
            for d in 0..dirs {
                v += z[d] * a[d * k + c];
            }
            if c % 61 == 7 {
                v *= 1.0 + 9.0 * strength;
            }
            x[r * k + c] = if dead.contains(&c) { 0.0 } else { v as f32 };
        }
    }
    let w: Vec<f32> = (0..n * k)
        .map(|_| {
            let v = rng.normal() * 0.04;
            (if rng.unit() < 0.01 { v * 6.0 } else { v }) as f32
        })
        .collect();
    (w, x)
}

/// H = 2/n Σ xxᵀ on the backend, fed in uneven batches.
fn backend_hessian<B: Backend>(b: &B, x: &[f32], k: usize) -> BackendHessian<B> {
    let rows = x.len() / k;
    let mut h = BackendHessian::new(b, k).unwrap();
    let cuts = [
        0,
        1.min(rows),
        (rows / 2).max(1).min(rows),
        rows * 3 / 4,
        rows,
    ];
    for w in cuts.windows(2) {
        let (r0, r1) = (w[0], w[1].max(w[0]));
        if r1 > r0 {
            let xd = b.upload(&x[r0 * k..r1 * k]).unwrap();
            h.add(b, &xd, r1 - r0).unwrap();
        }
    }
    assert_eq!(h.nsamples, rows);
    h
}

/// `hessian_add`: the running average 2/n Σ xxᵀ over uneven batches, against an f64 sum on
/// the host (relative to the largest entry), exactly symmetric.
fn hessian_body<B: Backend>(b: &B) {
    for (k, rows, seed) in [(300usize, 1500usize, 1u64), (128, 4096, 2), (512, 700, 3)] {
        let (_, x) = gptq_problem(seed, 8, k, rows, 1.0, &[5]);
        let h = backend_hessian(b, &x, k);
        let got = b.download(&h.h).unwrap();
        let mut want = vec![0f64; k * k];
        for r in 0..rows {
            let xr = &x[r * k..(r + 1) * k];
            for i in 0..k {
                let xi = xr[i] as f64;
                for j in 0..k {
                    want[i * k + j] += xi * xr[j] as f64;
                }
            }
        }
        want.iter_mut().for_each(|v| *v *= 2.0 / rows as f64);
        for i in 0..k {
            for j in 0..i {
                assert_eq!(got[i * k + j], got[j * k + i], "not symmetric at [{i},{j}]");
            }
        }
        assert_eq!(got[5 * k + 5], 0.0, "dead column");
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        report(
            &format!("hessian_add {rows}x{k}"),
            b,
            max_abs_err(&got, &want) / scale,
            1e-5,
        );
    }
}

/// `hessian_add_half`: the same running average from 16-bit inputs, against an f64 sum over
/// the same rounded values.
fn hessian_half_body<B: Backend>(b: &B) {
    // Wide inputs exercise the GPU's banded product (2 bands from 2048 columns, 4 from 8192,
    // the last band partial); too slow for the host reference on CI, so GPU only.
    let mut shapes = vec![
        (256usize, 1200usize, HalfKind::BF16),
        (256, 1200, HalfKind::F16),
    ];
    if b.name().starts_with("cuda") {
        shapes.extend([(2100, 96, HalfKind::BF16), (8200, 24, HalfKind::F16)]);
    }
    for (k, rows, kind) in shapes {
        let (_, x) = gptq_problem(61, 8, k, rows, 0.5, &[]);
        let xh = halves(kind, &x);
        let mut h = BackendHessian::new(b, k).unwrap();
        let cut = rows * 5 / 12;
        for (r0, r1) in [(0usize, cut), (cut, cut + 1), (cut + 1, rows)] {
            let xd = b.upload(&xh[r0 * k..r1 * k]).unwrap();
            h.add_half(b, &xd, kind, r1 - r0).unwrap();
        }
        let got = b.download(&h.h).unwrap();
        let xr: Vec<f64> = xh.iter().map(|&v| kind.to_f32(v) as f64).collect();
        let mut want = vec![0f64; k * k];
        for r in 0..rows {
            let row = &xr[r * k..(r + 1) * k];
            for i in 0..k {
                for j in 0..k {
                    want[i * k + j] += row[i] * row[j];
                }
            }
        }
        want.iter_mut().for_each(|v| *v *= 2.0 / rows as f64);
        for i in 0..k {
            for j in 0..i {
                assert_eq!(got[i * k + j], got[j * k + i], "not symmetric at [{i},{j}]");
            }
        }
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        report(
            &format!("hessian_add_half {kind:?} {rows}x{k}"),
            b,
            max_abs_err(&got, &want) / scale,
            1e-5,
        );
    }
}

/// `attention_prefill`: causal GQA attention of whole sequences against an f64 host
/// reference (relative to the largest output).
fn attention_prefill_body<B: Backend>(b: &B) {
    for (heads, kv_heads, hd, samples, seqlen) in [
        (8usize, 2usize, 64usize, 2usize, 70usize),
        (4, 4, 128, 1, 33),
        (14, 2, 64, 3, 17),
    ] {
        let shape = AttnShape {
            heads,
            kv_heads,
            head_dim: hd,
            max_len: seqlen,
        };
        let rows = samples * seqlen;
        let (qd, kvd) = (heads * hd, kv_heads * hd);
        let q = randn(71 + heads as u64, rows * qd, 1.0);
        let k = randn(72, rows * kvd, 1.0);
        let v = randn(73, rows * kvd, 1.0);
        let scale = 1.0 / (hd as f64).sqrt();
        let mut want = vec![0f64; rows * qd];
        for s in 0..samples {
            for h in 0..heads {
                let g = h / (heads / kv_heads);
                for i in 0..seqlen {
                    let qi = &q[(s * seqlen + i) * qd + h * hd..][..hd];
                    let sc: Vec<f64> = (0..=i)
                        .map(|j| {
                            let kj = &k[(s * seqlen + j) * kvd + g * hd..][..hd];
                            qi.iter()
                                .zip(kj)
                                .map(|(a, b)| *a as f64 * *b as f64)
                                .sum::<f64>()
                                * scale
                        })
                        .collect();
                    let m = sc.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
                    let e: Vec<f64> = sc.iter().map(|x| (x - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for d in 0..hd {
                        want[(s * seqlen + i) * qd + h * hd + d] = (0..=i)
                            .map(|j| e[j] / z * v[(s * seqlen + j) * kvd + g * hd + d] as f64)
                            .sum();
                    }
                }
            }
        }
        let (qb, kb, vb) = (
            b.upload(&q).unwrap(),
            b.upload(&k).unwrap(),
            b.upload(&v).unwrap(),
        );
        let mag = want.iter().fold(0f64, |a, v| a.max(v.abs()));
        // f32 must match the f64 reference closely; TF32 (10-bit mantissa inputs) to ~1e-3.
        for (math, tol) in [(PrefillMath::F32, 1e-5), (PrefillMath::Tf32, 4e-3)] {
            let mut out = b.zeros::<f32>(rows * qd).unwrap();
            b.attention_prefill(&qb, &kb, &vb, samples, seqlen, &shape, math, &mut out)
                .unwrap();
            let got = b.download(&out).unwrap();
            report(
                &format!(
                    "attention_prefill {math:?} h{heads}/kv{kv_heads} d{hd} {samples}x{seqlen}"
                ),
                b,
                max_abs_err(&got, &want) / mag,
                tol,
            );
        }
    }
}

fn gptq_cfg(bits: u8, gs: i64, sym: bool, act_order: ActOrder, block: usize) -> GptqConfig {
    GptqConfig {
        act_order,
        block_size: block,
        ..GptqConfig::new(QuantScheme::new(bits, gs, sym).unwrap())
    }
}

fn weight_of(data: &[f32], n: usize, k: usize, store: DType) -> Weight<'_> {
    Weight {
        name: "model.layers.0.mlp.down_proj.weight",
        data,
        out_features: n,
        in_features: k,
        scale_dtype: store,
    }
}

/// `gptq_inverse_factor`: UᵀU (P H Pᵀ + λI) = I (f64 check on the host), upper with a
/// positive diagonal; a singular H is retried with more damping; an indefinite one is an
/// error naming the tensor and the dampings tried.
fn inverse_factor_body<B: Backend>(b: &B) {
    let (k, rows) = (320usize, 900usize);
    let (_, x) = gptq_problem(11, 8, k, rows, 1.0, &[3, 200]);
    let h = backend_hessian(b, &x, k);
    let host = h.to_host(b).unwrap();
    let mut worst: f64 = 0.0;
    for ao in [ActOrder::None, ActOrder::Permute] {
        let cfg = gptq_cfg(4, 128, true, ao, 128);
        let diag: Vec<f64> = (0..k).map(|i| host.h[i * k + i]).collect();
        let plan = SweepPlan::new(&diag, &cfg);
        let f = b
            .gptq_inverse_factor(&h.h, k, &plan, cfg.damp, "t.weight")
            .unwrap();
        assert_eq!((f.retries, f.damp_used), (0, cfg.damp));
        let u = b.download(&f.u).unwrap();
        let lambda = cfg.damp * plan.mean_diag;
        // A = P H Pᵀ + λI with dead diagonals 1.
        let a = |i: usize, j: usize| -> f64 {
            let (pi, pj) = (plan.perm[i], plan.perm[j]);
            let mut v = host.h[pi * k + pj];
            if i == j {
                if plan.dead[pi] {
                    v = 1.0;
                }
                v += lambda;
            }
            v
        };
        for i in 0..k {
            assert!(u[i * k + i] > 0.0);
            for j in 0..i {
                assert_eq!(u[i * k + j], 0.0, "U not upper at [{i},{j}]");
            }
        }
        // (Uᵀ U A)[i][j] = Σ_r U[r][i] (U A)[r][j].
        let ua: Vec<f64> = (0..k * k)
            .map(|idx| {
                let (r, j) = (idx / k, idx % k);
                (r..k).map(|c| u[r * k + c] as f64 * a(c, j)).sum()
            })
            .collect();
        for i in 0..k {
            for j in 0..k {
                let v: f64 = (0..=i).map(|r| u[r * k + i] as f64 * ua[r * k + j]).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                worst = worst.max((v - want).abs());
            }
        }
    }
    report("gptq_inverse_factor UᵀUA = I", b, worst, 2e-4);

    // Singular H (two equal columns): 1e-17 of damping is below f64 resolution at 4, so the
    // first attempt fails and a larger damping succeeds.
    let k = 64;
    let mut hs = vec![0f32; k * k];
    for i in 0..k {
        hs[i * k + i] = 4.0;
    }
    hs[1] = 4.0;
    hs[k] = 4.0;
    let hd = b.upload(&hs).unwrap();
    let cfg = GptqConfig {
        damp: 1e-17,
        ..gptq_cfg(4, 32, true, ActOrder::None, 128)
    };
    let diag: Vec<f64> = (0..k).map(|i| hs[i * k + i] as f64).collect();
    let plan = SweepPlan::new(&diag, &cfg);
    let f = b
        .gptq_inverse_factor(&hd, k, &plan, cfg.damp, "t.weight")
        .unwrap();
    assert!(f.retries >= 1, "no retry on {}", b.name());
    let want = 1e-17 * 10f64.powi(f.retries as i32);
    assert!((f.damp_used - want).abs() < 1e-6 * want, "{}", f.damp_used);
    // Indefinite: no damping up to 100 x mean(diag) fixes it.
    hs[2 * k + 3] = 1e6;
    hs[3 * k + 2] = 1e6;
    let hd = b.upload(&hs).unwrap();
    let err = b
        .gptq_inverse_factor(&hd, k, &plan, 0.01, "layers.0.mlp.down_proj.weight")
        .err()
        .expect("indefinite Hessian must fail")
        .to_string();
    assert!(
        err.contains("layers.0.mlp.down_proj") && err.contains("Cholesky") && err.contains("100.0"),
        "{err}"
    );
    report("gptq_inverse_factor retries", b, 0.0, 0.0);
}

/// The GPTQ cases the solver tests run: schemes, act-order modes, block sizes that do and do
/// not divide the group size, scale dtypes, dead columns.
fn gptq_cases() -> Vec<(GptqConfig, DType)> {
    vec![
        (gptq_cfg(4, 128, true, ActOrder::None, 128), DType::BF16),
        (gptq_cfg(4, 32, false, ActOrder::Permute, 128), DType::BF16),
        (
            gptq_cfg(4, 64, true, ActOrder::StaticGroups, 128),
            DType::F16,
        ),
        (gptq_cfg(8, -1, true, ActOrder::None, 128), DType::BF16),
        (gptq_cfg(4, 32, false, ActOrder::None, 48), DType::F32),
        (gptq_cfg(4, 256, true, ActOrder::Permute, 64), DType::BF16),
        // --clip-search: dynamic groups fitted inside the sweep kernel (one starting in the
        // middle of a block), and up-front groups fitted on the host.
        (
            clipped(gptq_cfg(4, 128, true, ActOrder::None, 128)),
            DType::BF16,
        ),
        (
            clipped(gptq_cfg(4, 64, false, ActOrder::None, 48)),
            DType::F16,
        ),
        (
            clipped(gptq_cfg(8, 32, true, ActOrder::StaticGroups, 128)),
            DType::BF16,
        ),
    ]
}

fn clipped(cfg: GptqConfig) -> GptqConfig {
    GptqConfig {
        grid_fit: GridFit::ClipSearch,
        ..cfg
    }
}

/// Levels that differ, as a fraction.
fn level_diff(a: &QuantizedLinear, b: &QuantizedLinear) -> f64 {
    let d = a.q.iter().zip(&b.q).filter(|(x, y)| x != y).count();
    d as f64 / a.q.len() as f64
}

/// `gptq_quantize` on the backend against gptq.rs on the host (same f32 Hessian, widened):
/// output error within 1% and fewer than 1% of the levels different (a rounding tie can flip
/// on the GPU, whose Cholesky and trailing GEMM sum in another order); g_idx identical; GPTQ
/// beats RTN. On the CPU backend the result is identical.
fn gptq_solve_body<B: Backend>(b: &B) {
    use hy_quant::quant::rtn::Rtn;
    use hy_quant::quant::QuantMethod;
    let (n, k, rows) = (96usize, 512usize, 1024usize);
    let (w, x) = gptq_problem(21, n, k, rows, 0.5, &[0, 77, 300]);
    let h = backend_hessian(b, &x, k);
    let host = h.to_host(b).unwrap();
    let (mut worst_err, mut worst_diff): (f64, f64) = (0.0, 0.0);
    for (cfg, store) in gptq_cases() {
        let wt = weight_of(&w, n, k, store);
        let got = b.gptq_quantize(&wt, &h.h, h.nsamples, &cfg).unwrap();
        let want = gptq_quantize(&wt, &host, &cfg).unwrap();
        assert_eq!(got.linear.g_idx, want.linear.g_idx, "{cfg:?}");
        assert_eq!((got.retries, got.damp_used), (want.retries, want.damp_used));
        let e_got = output_error(&w, &got.linear.dequantize(), &host);
        let e_want = output_error(&w, &want.linear.dequantize(), &host);
        let rtn = Rtn { scheme: cfg.scheme }.quantize(&wt).unwrap();
        let e_rtn = output_error(&w, &rtn.dequantize(), &host);
        let rel = (e_got - e_want).abs() / e_want;
        let diff = level_diff(&got.linear, &want.linear);
        println!(
            "  {} {:?} {:?} block {} {store}: error {e_got:.4e} vs cpu {e_want:.4e} (rtn {e_rtn:.4e}), levels differ {:.4}%, loss {:.4e} vs {:.4e}",
            cfg.scheme, cfg.act_order, cfg.grid_fit, cfg.block_size, 100.0 * diff, got.loss, want.loss
        );
        assert!(e_got < 0.8 * e_rtn, "GPTQ no better than RTN: {cfg:?}");
        // Dead columns are zero.
        let deq = got.linear.dequantize();
        for r in 0..n {
            for c in [0usize, 77, 300] {
                assert_eq!(deq[r * k + c], 0.0);
            }
        }
        worst_err = worst_err.max(rel);
        worst_diff = worst_diff.max(diff);
    }
    report("gptq_quantize: output error rel", b, worst_err, 1e-2);
    report("gptq_quantize: levels differing", b, worst_diff, 1e-2);
}

/// `gptq_linear` (on the GPU: device-resident sweep, packing, dequantization, RTN and
/// statistics) against `gptq_linear_on_host` on the same backend (the solve, then the host's
/// pack, loader dequantization, RTN and error formulas): the same packed bytes and 16-bit
/// weight, statistics equal up to f64 summation order. Weights that are exactly 16-bit (the
/// device path) and ones that are not (the upload path), every scheme of `gptq_cases`.
fn gptq_linear_body<B: Backend>(b: &B) {
    let (n, k, rows) = (96usize, 512usize, 1024usize);
    let (w, x) = gptq_problem(23, n, k, rows, 0.5, &[0, 77, 300]);
    let h = backend_hessian(b, &x, k);
    let mut worst: f64 = 0.0;
    for exact in [true, false] {
        for (half, store_of_case) in [(HalfKind::BF16, false), (HalfKind::F16, true)] {
            let data: Vec<f32> = if exact {
                w.iter().map(|&v| half.round(v)).collect()
            } else {
                w.clone()
            };
            let w16 = b.upload(&halves(half, &data)).unwrap();
            for (cfg, store) in gptq_cases() {
                let store = if store_of_case { store } else { DType::BF16 };
                let wt = weight_of(&data, n, k, store);
                let job = LinearJob {
                    weight: &wt,
                    w16: &w16,
                    half,
                    exact16: exact,
                    h: &h.h,
                    h_version: None,
                    nsamples: h.nsamples,
                    cfg: &cfg,
                };
                let got = b.gptq_linear(&job).unwrap();
                let want = gptq_linear_on_host(b, &job).unwrap();
                let what = format!("{cfg:?} {half:?} exact16={exact}");
                assert_eq!(got.packed.qweight, want.packed.qweight, "qweight {what}");
                assert_eq!(got.packed.qzeros, want.packed.qzeros, "qzeros {what}");
                assert_eq!(got.packed.scales, want.packed.scales, "scales {what}");
                assert_eq!(got.packed.g_idx, want.packed.g_idx, "g_idx {what}");
                assert_eq!(
                    b.download(&got.deq16).unwrap(),
                    b.download(&want.deq16).unwrap(),
                    "deq16 {what}"
                );
                assert_eq!((got.retries, got.damp_used), (want.retries, want.damp_used));
                let rel = |a: f64, c: f64| (a - c).abs() / c.abs().max(1e-30);
                for (a, c) in [
                    (got.output_err_sq, want.output_err_sq),
                    (got.rtn_output_err_sq, want.rtn_output_err_sq),
                    (got.error.rel_fro, want.error.rel_fro),
                    (got.error.max_abs, want.error.max_abs),
                ] {
                    worst = worst.max(rel(a, c));
                }
                assert!(got.output_err_sq < got.rtn_output_err_sq, "{what}");
                assert!(got.phases.iter().all(|p| p.1 >= 0.0));
            }
        }
    }
    report("gptq_linear vs host composition (stats)", b, worst, 1e-9);

    // Linears sharing one Hessian version may share its factorization: the same results as
    // factoring for each, in either order and after another Hessian was used in between.
    let (w2, _) = gptq_problem(29, n, k, rows, 0.5, &[]);
    let other = backend_hessian(b, &x[..(rows / 2) * k], k);
    let cfg = gptq_cfg(4, 128, true, ActOrder::None, 128);
    let solve = |data: &[f32], hs: &BackendHessian<B>, version: Option<u64>| {
        let wt = weight_of(data, n, k, DType::BF16);
        let w16 = b.upload(&halves(HalfKind::BF16, data)).unwrap();
        let job = LinearJob {
            weight: &wt,
            w16: &w16,
            half: HalfKind::BF16,
            exact16: false,
            h: &hs.h,
            h_version: version,
            nsamples: hs.nsamples,
            cfg: &cfg,
        };
        b.gptq_linear(&job).unwrap().packed
    };
    let v = Some(h.version);
    let shared = [
        solve(&w, &h, v),
        solve(&w2, &h, v),
        solve(&w, &other, Some(other.version)),
        solve(&w2, &h, v),
    ];
    let fresh = [
        solve(&w, &h, None),
        solve(&w2, &h, None),
        solve(&w, &other, None),
        solve(&w2, &h, None),
    ];
    for (i, (a, c)) in shared.iter().zip(&fresh).enumerate() {
        assert_eq!(a.qweight, c.qweight, "shared factor, job {i}");
        assert_eq!(a.scales, c.scales, "shared factor, job {i}");
    }
    assert_ne!(
        shared[0].qweight, shared[2].qweight,
        "another Hessian, another result"
    );
}

/// `gptq_output_errors` against gptq.rs `output_errors` on the same (widened) Hessian: the
/// GPTQ and RTN candidates, a zero candidate (error 1) and the weight itself (error 0).
fn output_errors_body<B: Backend>(b: &B) {
    use hy_quant::quant::gptq::output_errors;
    use hy_quant::quant::rtn::Rtn;
    use hy_quant::quant::QuantMethod;
    let (n, k, rows) = (128usize, 384usize, 800usize);
    let (w, x) = gptq_problem(51, n, k, rows, 0.5, &[4]);
    let h = backend_hessian(b, &x, k);
    let host = h.to_host(b).unwrap();
    let wt = weight_of(&w, n, k, DType::BF16);
    let cfg = gptq_cfg(4, 128, true, ActOrder::None, 128);
    let g = b.gptq_quantize(&wt, &h.h, h.nsamples, &cfg).unwrap();
    let gq = g.linear.dequantize();
    let rq = Rtn { scheme: cfg.scheme }
        .quantize(&wt)
        .unwrap()
        .dequantize();
    let zero = vec![0f32; n * k];
    let cands: [&[f32]; 4] = [&gq, &rq, &zero, &w];
    let got = b.gptq_output_errors(&w, &cands, &h.h, k).unwrap();
    let want = output_errors(&w, &cands, &host);
    let mut worst: f64 = 0.0;
    for (a, e) in got.iter().zip(&want) {
        worst = worst.max(if *e == 0.0 {
            a.abs()
        } else {
            (a - e).abs() / e
        });
    }
    assert_eq!(got[3], 0.0);
    report("gptq_output_errors (relative)", b, worst, 1e-4);
}

// ---------------------------------------------------------------- CPU and CUDA runs

fn cuda() -> CudaBackend {
    match CudaBackend::new(&CudaOptions::default()) {
        Ok(b) => {
            b.warm_up().unwrap();
            b
        }
        Err(e) => panic!("no CUDA backend: {e}\n{}", probe::describe()),
    }
}

macro_rules! both {
    ($($body:ident => $cpu:ident, $gpu:ident;)*) => {$(
        #[test]
        fn $cpu() {
            $body(&CpuBackend::new());
        }

        #[test]
        #[ignore = "needs a CUDA GPU"]
        fn $gpu() {
            $body(&cuda());
        }
    )*};
}

both! {
    rms_norm_body => rms_norm_cpu, rms_norm_cuda;
    rope_body => rope_cpu, rope_cuda;
    silu_mul_body => silu_mul_cpu, silu_mul_cuda;
    silu_mul_fused_body => silu_mul_fused_cpu, silu_mul_fused_cuda;
    split_cols_body => split_cols_cpu, split_cols_cuda;
    fused_ops_body => fused_ops_cpu, fused_ops_cuda;
    embedding_body => embedding_cpu, embedding_cuda;
    argmax_body => argmax_cpu, argmax_cuda;
    to_half_body => to_half_cpu, to_half_cuda;
    copies_body => copies_cpu, copies_cuda;
    gemm_body => gemm_cpu, gemm_cuda;
    gptq_body => gptq_cpu, gptq_cuda;
    attention_body => attention_cpu, attention_cuda;
    shape_errors_body => shape_errors_cpu, shape_errors_cuda;
    rtn_body => rtn_cpu, rtn_cuda;
    gptq_linear_body => gptq_linear_cpu, gptq_linear_cuda;
    add_gather_body => add_gather_cpu, add_gather_cuda;
    runner_body => runner_cpu, runner_cuda;
    hessian_body => hessian_cpu, hessian_cuda;
    attention_prefill_body => attention_prefill_cpu, attention_prefill_cuda;
    hessian_half_body => hessian_half_cpu, hessian_half_cuda;
    inverse_factor_body => gptq_inverse_factor_cpu, gptq_inverse_factor_cuda;
    gptq_solve_body => gptq_solve_cpu, gptq_solve_cuda;
    output_errors_body => gptq_output_errors_cpu, gptq_output_errors_cuda;
}

/// `record` queues nothing; each `replay` runs the recorded work again on the buffers'
/// current contents (the GPU), or nothing was recorded at all (the CPU: `None`).
fn graph_replays_body<B: Backend>(b: &B) -> bool {
    let mut x = b.upload(&[1.0f32, 2.0, 3.0]).unwrap();
    let mut y = b.upload(&[0.5f32, 0.25, 2.0]).unwrap();
    let graph = b.record(&mut || b.add(&mut x, &y)).unwrap();
    b.synchronize().unwrap();
    assert_eq!(
        b.download(&x).unwrap(),
        [1.0, 2.0, 3.0],
        "record ran the work"
    );
    let Some(graph) = graph else {
        return false;
    };
    for _ in 0..3 {
        b.replay(&graph).unwrap();
    }
    assert_eq!(b.download(&x).unwrap(), [2.5, 2.75, 9.0]);
    b.write(&mut y, &[1.0, -1.0, 0.0]).unwrap();
    b.replay(&graph).unwrap();
    assert_eq!(b.download(&x).unwrap(), [3.5, 1.75, 9.0]);
    let err = b.write(&mut y, &[1.0]).unwrap_err();
    assert!(err.to_string().contains("write"), "{err}");
    true
}

#[test]
fn graph_replays_cpu() {
    assert!(!graph_replays_body(&CpuBackend::new()));
}

/// On the legacy default stream recording is a clear error; on the backend's own stream
/// (`CudaOptions::own_stream`, the default unless HYQ_CUDA_GRAPHS=0) it records and replays.
#[test]
#[ignore = "needs a CUDA GPU"]
fn graph_replays_cuda() {
    let legacy = CudaBackend::new(&CudaOptions {
        own_stream: false,
        ..CudaOptions::default()
    })
    .unwrap();
    match legacy.record(&mut || Ok(())) {
        Err(e) => assert!(e.to_string().contains("own stream"), "{e}"),
        Ok(_) => panic!("recorded on the legacy stream"),
    }
    let own = CudaBackend::new(&CudaOptions {
        own_stream: true,
        ..CudaOptions::default()
    })
    .unwrap();
    assert!(graph_replays_body(&own));
    // The rest of the backend works on its own stream too.
    copies_body(&own);
    argmax_body(&own);
}

/// The CPU backend's GPTQ solve is gptq.rs itself (bit-identical); checked here once so the
/// 1% tolerances of `gptq_solve_body` only ever absorb GPU rounding.
#[test]
fn gptq_solve_on_cpu_backend_is_gptq_rs() {
    let b = CpuBackend::new();
    let (n, k, rows) = (64usize, 256usize, 600usize);
    let (w, x) = gptq_problem(31, n, k, rows, 1.0, &[9]);
    let h = backend_hessian(&b, &x, k);
    let host = h.to_host(&b).unwrap();
    for (cfg, store) in gptq_cases() {
        let wt = weight_of(&w, n, k, store);
        let got = b.gptq_quantize(&wt, &h.h, h.nsamples, &cfg).unwrap();
        assert_eq!(got, gptq_quantize(&wt, &host, &cfg).unwrap(), "{cfg:?}");
    }
}

/// CUDA and CPU backends compared directly: the Hessian (relative to its largest entry) and
/// GPTQ on the same inputs (each backend with its own Hessian).
#[test]
#[ignore = "needs a CUDA GPU"]
fn gptq_cuda_matches_cpu_backend() {
    let (cpu, gpu) = (CpuBackend::new(), cuda());
    let (n, k, rows) = (256usize, 1024usize, 2048usize);
    let (w, x) = gptq_problem(41, n, k, rows, 0.5, &[]);
    let hc = backend_hessian(&cpu, &x, k);
    let hg = backend_hessian(&gpu, &x, k);
    let (a, g) = (cpu.download(&hc.h).unwrap(), gpu.download(&hg.h).unwrap());
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
    let herr = a
        .iter()
        .zip(&g)
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .fold(0f64, f64::max)
        / scale;
    println!("hessian cuda vs cpu: max rel err {herr:.3e}");
    assert!(herr <= 1e-5, "{herr}");
    let host = hc.to_host(&cpu).unwrap();
    for (cfg, store) in gptq_cases() {
        let wt = weight_of(&w, n, k, store);
        let c = cpu.gptq_quantize(&wt, &hc.h, hc.nsamples, &cfg).unwrap();
        let t = std::time::Instant::now();
        let q = gpu.gptq_quantize(&wt, &hg.h, hg.nsamples, &cfg).unwrap();
        let secs = t.elapsed().as_secs_f64();
        let (ec, eg) = (
            output_error(&w, &c.linear.dequantize(), &host),
            output_error(&w, &q.linear.dequantize(), &host),
        );
        let diff = level_diff(&c.linear, &q.linear);
        println!(
            "  {} {:?} {:?} block {}: cuda {eg:.4e} cpu {ec:.4e}, levels differ {:.4}% ({secs:.3} s)",
            cfg.scheme,
            cfg.act_order,
            cfg.grid_fit,
            cfg.block_size,
            100.0 * diff
        );
        assert_eq!(c.linear.g_idx, q.linear.g_idx);
        assert!((eg - ec).abs() <= 1e-2 * ec, "{cfg:?}: {eg} vs {ec}");
        assert!(diff < 1e-2, "{cfg:?}: {diff}");
    }
}

/// `quantize --method rtn --device cuda` writes the same model files, byte for byte, as the
/// CPU path (tiny synthetic HunYuan model; manifest.json differs only in timings/command).
#[test]
#[ignore = "needs a CUDA GPU"]
fn quantize_rtn_on_cuda_is_byte_identical_to_cpu() {
    use hy_quant::model::synth::{synth, Preset, SynthOptions};
    use hy_quant::progress::Silent;
    use hy_quant::quant::pipeline::{quantize_on, Method, QuantizeOptions};
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("tiny");
    synth(
        &SynthOptions {
            preset: Preset::Tiny,
            dtype: DType::BF16,
            seed: 5,
            out: model.clone(),
            force: false,
        },
        &Silent,
    )
    .unwrap();
    let cpu = Device::Cpu(CpuBackend::new());
    let gpu = Device::Cuda(Box::new(cuda()));
    for (bits, gs, sym) in [(4u8, 128i64, true), (4, 32, false), (8, -1, true)] {
        let files = |device: &Device, name: &str| {
            let out = tmp.path().join(format!("{name}-{bits}-{gs}-{sym}"));
            let opts = QuantizeOptions {
                model: model.clone(),
                out: out.clone(),
                method: Method::Rtn,
                scheme: QuantScheme::new(bits, gs, sym).unwrap(),
                force: false,
                max_shard_bytes: 5_000_000_000,
                command: vec!["test".into()],
                gptq: None,
            };
            quantize_on(&opts, device, &Silent).unwrap();
            let mut files = std::collections::BTreeMap::new();
            for e in std::fs::read_dir(&out).unwrap() {
                let p = e.unwrap().path();
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                if name != "manifest.json" {
                    files.insert(name, std::fs::read(&p).unwrap());
                }
            }
            files
        };
        let (a, b) = (files(&cpu, "cpu"), files(&gpu, "cuda"));
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (name, bytes) in &a {
            assert!(
                bytes == &b[name],
                "{name} differs ({bits}-bit g{gs} sym={sym})"
            );
        }
        println!(
            "quantize --device cuda {bits}-bit g{gs} sym={sym}: {} files byte-identical to the CPU's",
            a.len()
        );
    }
}

/// Every decode kernel variant `set_gemv_kernel` accepts (the streaming kernel is the auto
/// choice for up to 16 rows per launch).
fn gemv_kernels() -> Vec<GemvKernel> {
    let stream = |unroll, k_warps, waves, cuda_cores| GemvKernel::Stream {
        unroll,
        k_warps,
        waves,
        cuda_cores,
        tiled: false,
        reg_cap: 0,
        prefetch: 0,
        fold: false,
    };
    vec![
        GemvKernel::Step,
        stream(4, 1, 1, false),
        stream(8, 1, 1, false),
        stream(8, 2, 1, false),
        stream(4, 2, 2, false),
        stream(8, 1, 3, false),
        stream(4, 1, 1, true),
        stream(8, 2, 1, true),
    ]
}

/// `gemm_gptq` of `m` rows of `x` through `w` with the K slice forced to `qps` (None: the
/// automatic one), run twice: the first output, after checking the second is bit-identical.
fn gemv_twice(
    b: &CudaBackend,
    x: &<CudaBackend as Backend>::Buf<u16>,
    w: &GptqWeight<CudaBackend>,
    m: usize,
    qps: Option<usize>,
    what: &str,
) -> Vec<f32> {
    b.set_gemv_quads_per_split(qps);
    let mut out = b.zeros::<f32>(m * w.out_features).unwrap();
    b.gemm_gptq(x, w, m, &mut out).unwrap();
    let first = b.download(&out).unwrap();
    b.gemm_gptq(x, w, m, &mut out).unwrap();
    let again = b.download(&out).unwrap();
    b.set_gemv_quads_per_split(None);
    assert!(
        first
            .iter()
            .zip(&again)
            .all(|(a, c)| a.to_bits() == c.to_bits()),
        "{what}: two runs differ"
    );
    first
}

/// A random GPTQ v1 linear (`sample_linear`: asymmetric, sequential groups of `gs`) on `b`
/// that the decode kernels take, and its dequantized weight (the `kind`-rounded values) for
/// host references.
fn decode_weight(
    b: &CudaBackend,
    bits: u8,
    gs: i64,
    kind: HalfKind,
    n: usize,
    k: usize,
    seed: u64,
) -> (GptqWeight<CudaBackend>, Vec<f32>) {
    let ql = sample_linear(bits, gs, false, false, n, k, kind, seed);
    let w = upload_sample(b, &ql, kind);
    assert!(w.g_idx.is_none());
    assert!(
        b.describe_gemv(&w, 1).unwrap().is_some(),
        "w{bits} g{gs} {n}x{k}: no decode kernel"
    );
    let wf: Vec<f32> = halves(kind, &ql.dequantize())
        .iter()
        .map(|&h| kind.to_f32(h))
        .collect();
    (w, wf)
}

/// The decode kernels (m <= 64 rows, sequential groups), each at every K split size it can be
/// given (1 to 128 quads of packed rows per block: a partial ring turn of one warp to many
/// turns, one group per step or several), for int4/int8, g16/g32/g64/g128/per-channel,
/// f16/bf16, 1 to 16 rows and 40/64, N a multiple of the 128-column block or not (96, 160),
/// K an odd number of quads (1056 = 33 x 32): against the f64 host reference like
/// `gptq_body`, and bit-identical when run twice.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gptq_gemv_splits_cuda() {
    let b = cuda();
    let mut worst = 0f64;
    for (bits, gs, kind, n, k) in [
        (4u8, 128i64, HalfKind::BF16, 96usize, 2048usize),
        (4, 32, HalfKind::F16, 96, 2048),
        (4, 64, HalfKind::BF16, 96, 2048),
        (4, -1, HalfKind::F16, 96, 2048),
        (8, 128, HalfKind::BF16, 96, 2048),
        (8, 16, HalfKind::F16, 96, 2048),
        (4, 32, HalfKind::BF16, 160, 1056),
        (8, 64, HalfKind::F16, 160, 1088),
    ] {
        let (w, wf) = decode_weight(&b, bits, gs, kind, n, k, 40 + bits as u64);
        for m in (1usize..=16).chain([40, 64]) {
            let xh = halves(kind, &randn(300 + m as u64, m * k, 1.0));
            let xf: Vec<f32> = xh.iter().map(|&h| kind.to_f32(h)).collect();
            let (want, mag) = matmul_ref(&xf, &wf, m, n, k);
            let xd = b.upload(&xh).unwrap();
            for kernel in gemv_kernels() {
                b.set_gemv_kernel(Some(kernel)).unwrap();
                for qps in [
                    None,
                    Some(1usize),
                    Some(3),
                    Some(4),
                    Some(8),
                    Some(16),
                    Some(32),
                    Some(64),
                    Some(128),
                ] {
                    let what = format!(
                        "w{bits} g{gs} {kind:?} {n}x{k} m={m} {} split {qps:?}",
                        kernel.label()
                    );
                    let first = gemv_twice(&b, &xd, &w, m, qps, &what);
                    let e = rel_err(&first, &want, &mag);
                    assert!(e <= 1e-5, "{what}: max rel err {e:e}");
                    worst = worst.max(e);
                }
            }
            b.set_gemv_kernel(None).unwrap();
        }
    }
    report(
        "gptq decode kernels, all variants and K splits",
        &b,
        worst,
        1e-5,
    );
}

/// A streaming decode variant of the register-cap / column-tiled layout experiments: tensor
/// cores, one wave (`GemvKernel::Stream`).
fn stream_variant(unroll: usize, k_warps: usize, tiled: bool, reg_cap: u8) -> GemvKernel {
    GemvKernel::Stream {
        unroll,
        k_warps,
        waves: 1,
        cuda_cores: false,
        tiled,
        reg_cap,
        prefetch: 0,
        fold: false,
    }
}

/// The ring-4 tensor-core streaming kernel with an L2 prefetch `d` quads ahead (an experiment).
fn prefetch_variant(k_warps: usize, d: u8) -> GemvKernel {
    GemvKernel::Stream {
        unroll: 4,
        k_warps,
        waves: 1,
        cuda_cores: false,
        tiled: false,
        reg_cap: 0,
        prefetch: d,
        fold: false,
    }
}

/// The bulk-copy decode kernel (an experiment, sm_90): `stages` stages per K warp group,
/// `tiled`: reading the column-tiled weight.
fn bulk_variant(stages: usize, k_warps: usize, tiled: bool) -> GemvKernel {
    GemvKernel::Bulk {
        stages,
        k_warps,
        waves: 1,
        tiled,
    }
}

/// The host side of `CudaBackend::tiled_qweight` for a [rows, n] packed weight: column tile t
/// (128 columns) holds packed row r of its columns at ints (t * rows + r) * 128.
fn tile_qweight_host(q: &[i32], n: usize) -> Vec<i32> {
    let rows = q.len() / n;
    let mut tiled = Vec::with_capacity(q.len());
    for t in 0..n / 128 {
        for r in 0..rows {
            tiled.extend_from_slice(&q[r * n + t * 128..r * n + (t + 1) * 128]);
        }
    }
    tiled
}

#[test]
fn gemv_kernel_labels() {
    assert_eq!(GemvKernel::Step.label(), "step");
    assert_eq!(stream_variant(4, 2, false, 0).label(), "s4k2w1");
    assert_eq!(stream_variant(4, 2, true, 0).label(), "s4k2w1t");
    assert_eq!(stream_variant(4, 2, false, 3).label(), "s4k2w1c3");
    assert_eq!(stream_variant(4, 1, true, 4).label(), "s4k1w1tc4");
    assert!(stream_variant(8, 2, true, 0).is_tiled());
    assert!(!stream_variant(4, 2, false, 3).is_tiled());
    assert!(!GemvKernel::Step.is_tiled());
}

/// `tiled_qweight` (the `gptq_tile_qweight` kernel) against the host repack of the downloaded
/// packed weight: int4/int8, one to 32 column tiles, K not a multiple of 128; a clean error
/// when N is not a multiple of 128.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gptq_tile_qweight_cuda() {
    let b = cuda();
    for (bits, gs, n, k) in [
        (4u8, 128i64, 128usize, 256usize),
        (4, 32, 384, 1056),
        (8, 64, 256, 1088),
        (8, 128, 1024, 2048),
        (4, 128, 4096, 1024),
    ] {
        let (w, _) = decode_weight(&b, bits, gs, HalfKind::BF16, n, k, 7);
        let want = tile_qweight_host(&b.download(&w.qweight).unwrap(), n);
        let tiled = b.tiled_qweight(&w).unwrap();
        assert!(
            b.download(&tiled).unwrap() == want,
            "w{bits} {n}x{k}: tiled copy differs from the host repack"
        );
        println!(
            "tiled_qweight w{bits} {n}x{k}: {} ints as the host repacks them",
            want.len()
        );
    }
    let (w, _) = decode_weight(&b, 4, 64, HalfKind::F16, 96, 2048, 7);
    let err = b
        .tiled_qweight(&w)
        .err()
        .expect("N = 96 has no column-tiled copy")
        .to_string();
    assert!(err.contains("multiple of 128"), "{err}");
}

/// The decode experiments (kernels/gptq.cu, GEMV_STREAM_EXPERIMENTS, GEMV_BULK_KERNEL) compute
/// exactly what the production streaming kernel computes: at every forced K split size (so the
/// same K slices and the same summation order) each register-capped, column-tiled,
/// prefetching and bulk-copy variant (the last on sm_90 only) gives output
/// bit-identical to its base variant (same ring and K warps), for int4/int8, f16/bf16, g16 to
/// per-channel, 1 to 8 rows, 1 to 3 column blocks (and N = 96: capped only), K an odd number
/// of quads; at the automatic split (which follows each variant's occupancy) all within 1e-5 of
/// the f64 host reference. Also the clean errors of variants that do not exist or are called
/// the wrong way.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gptq_gemv_experiments_cuda() {
    let b = cuda();
    let s = stream_variant;
    let pf = prefetch_variant;
    let bulk = bulk_variant;
    let missing = [
        bulk(6, 2, false),
        bulk(4, 3, true),
        s(8, 2, false, 3),
        s(4, 2, true, 2),
        pf(2, 12),
        GemvKernel::Stream {
            unroll: 8,
            k_warps: 2,
            waves: 1,
            cuda_cores: false,
            tiled: false,
            reg_cap: 0,
            prefetch: 16,
            fold: false,
        },
        GemvKernel::Stream {
            unroll: 4,
            k_warps: 2,
            waves: 1,
            cuda_cores: false,
            tiled: true,
            reg_cap: 0,
            prefetch: 16,
            fold: false,
        },
        GemvKernel::Stream {
            unroll: 4,
            k_warps: 1,
            waves: 1,
            cuda_cores: true,
            tiled: true,
            reg_cap: 0,
            prefetch: 0,
            fold: false,
        },
    ];
    for v in missing {
        assert!(
            b.set_gemv_kernel(Some(v)).is_err(),
            "{} accepted",
            v.label()
        );
    }
    // (base variant, its experiments)
    let families = [
        (
            s(4, 2, false, 0),
            vec![
                s(4, 2, false, 3),
                s(4, 2, false, 4),
                s(4, 2, true, 0),
                s(4, 2, true, 3),
                s(4, 2, true, 4),
                pf(2, 8),
                pf(2, 16),
                pf(2, 32),
                bulk(4, 2, false),
                bulk(8, 2, false),
                bulk(4, 2, true),
                bulk(8, 2, true),
            ],
        ),
        (
            s(4, 1, false, 0),
            vec![
                s(4, 1, false, 3),
                s(4, 1, true, 0),
                pf(1, 16),
                bulk(4, 1, false),
                bulk(8, 1, false),
                bulk(4, 1, true),
                bulk(8, 1, true),
                bulk(2, 1, false),
            ],
        ),
        (s(8, 2, false, 0), vec![s(8, 2, true, 0)]),
        (s(8, 1, false, 0), vec![s(8, 1, true, 0)]),
    ];
    let (mut worst, mut identical) = (0f64, 0usize);
    for (bits, gs, kind, n, k) in [
        (4u8, 128i64, HalfKind::BF16, 256usize, 2048usize),
        (4, 32, HalfKind::F16, 384, 1056),
        (4, -1, HalfKind::BF16, 128, 4096),
        (4, 64, HalfKind::F16, 96, 2048),
        (8, 128, HalfKind::F16, 256, 2048),
        (8, 64, HalfKind::BF16, 128, 1088),
        (8, 16, HalfKind::BF16, 384, 1024),
        (8, -1, HalfKind::F16, 256, 4096),
    ] {
        let (w, wf) = decode_weight(&b, bits, gs, kind, n, k, 60 + bits as u64);
        let tiled = (n % 128 == 0).then(|| b.tiled_qweight(&w).unwrap());
        for m in 1usize..=8 {
            let xh = halves(kind, &randn(500 + m as u64, m * k, 1.0));
            let xf: Vec<f32> = xh.iter().map(|&h| kind.to_f32(h)).collect();
            let (want, mag) = matmul_ref(&xf, &wf, m, n, k);
            let xd = b.upload(&xh).unwrap();
            let run = |kernel: GemvKernel, qps: Option<usize>| {
                b.set_gemv_kernel(Some(kernel)).unwrap();
                b.set_gemv_quads_per_split(qps);
                let mut out = b.zeros::<f32>(m * n).unwrap();
                let done = match (&tiled, kernel.is_tiled()) {
                    (Some(t), true) => b.gemm_gptq_tiled(&xd, &w, t, m, &mut out),
                    _ => b.gemm_gptq(&xd, &w, m, &mut out),
                };
                b.set_gemv_quads_per_split(None);
                done.map(|()| b.download(&out).unwrap())
            };
            for (base, experiments) in &families {
                for qps in [None, Some(1usize), Some(3), Some(8), Some(32), Some(128)] {
                    let reference = run(*base, qps).unwrap();
                    for &v in experiments {
                        let what = format!(
                            "w{bits} g{gs} {kind:?} {n}x{k} m={m} {} (base {}) split {qps:?}",
                            v.label(),
                            base.label()
                        );
                        let got = run(v, qps);
                        if v.is_tiled() && tiled.is_none() {
                            let err = got.unwrap_err().to_string();
                            assert!(err.contains("multiple of 128"), "{what}: {err}");
                            continue;
                        }
                        let got = got.unwrap_or_else(|e| panic!("{what}: {e}"));
                        if qps.is_some() {
                            assert!(
                                got.iter()
                                    .zip(&reference)
                                    .all(|(a, c)| a.to_bits() == c.to_bits()),
                                "{what}: not bit-identical to {}",
                                base.label()
                            );
                            identical += 1;
                        }
                        let e = rel_err(&got, &want, &mag);
                        assert!(e <= 1e-5, "{what}: max rel err {e:e}");
                        worst = worst.max(e);
                    }
                }
            }
            // Wrong calls are errors: a tiled kernel without the tiled copy, the copy with a
            // kernel that does not read it.
            if let Some(t) = &tiled {
                let mut out = b.zeros::<f32>(m * n).unwrap();
                b.set_gemv_kernel(Some(s(4, 2, true, 0))).unwrap();
                assert!(b.gemm_gptq(&xd, &w, m, &mut out).is_err());
                b.set_gemv_kernel(Some(s(4, 2, false, 3))).unwrap();
                assert!(b.gemm_gptq_tiled(&xd, &w, t, m, &mut out).is_err());
            }
        }
    }
    b.set_gemv_kernel(None).unwrap();
    println!(
        "decode experiments: {identical} forced-split runs bit-identical to their base variant"
    );
    report(
        "gptq decode experiments (capped, tiled, prefetching, bulk copy), all K splits",
        &b,
        worst,
        1e-5,
    );
}

/// CPU and CUDA agree with each other, not only with the host reference: a decode-shaped GPTQ
/// product and attention, compared directly.
#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_matches_cpu_backend() {
    let (cpu, gpu) = (CpuBackend::new(), cuda());
    let (n, k, m) = (256usize, 1024usize, 4usize);
    let kind = HalfKind::BF16;
    let ql = sample_linear(4, 128, true, false, n, k, kind, 99);
    let xh = halves(kind, &randn(5, m * k, 1.0));
    let c = {
        let w = upload_sample(&cpu, &ql, kind);
        let mut o = cpu.zeros::<f32>(m * n).unwrap();
        cpu.gemm_gptq(&cpu.upload(&xh).unwrap(), &w, m, &mut o)
            .unwrap();
        o
    };
    let g = {
        let w = upload_sample(&gpu, &ql, kind);
        let mut o = gpu.zeros::<f32>(m * n).unwrap();
        gpu.gemm_gptq(&gpu.upload(&xh).unwrap(), &w, m, &mut o)
            .unwrap();
        gpu.download(&o).unwrap()
    };
    let scale = c.iter().fold(0f32, |a, v| a.max(v.abs()));
    let err = max_abs_diff(&c, &g);
    println!("cuda vs cpu gemm_gptq: max err {err:e} (scale {scale})");
    assert!(err <= 1e-5 * scale);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_memory_is_counted() {
    let b = cuda();
    println!("{}", probe::describe());
    let before = b.memory();
    let buf = b.zeros::<f32>(16 << 20).unwrap(); // 64 MiB
    let during = b.memory();
    assert_eq!(
        during.allocated_bytes - before.allocated_bytes,
        64 << 20,
        "{during:?}"
    );
    assert!(during.peak_allocated_bytes >= 64 << 20);
    assert!(
        during.device_used_delta.unwrap() >= 60 << 20,
        "cuMemGetInfo delta {during:?}"
    );
    drop(buf);
    let after = b.memory();
    assert_eq!(after.allocated_bytes, before.allocated_bytes);
    assert_eq!(after.peak_allocated_bytes, during.peak_allocated_bytes);
    println!("memory: before {before:?}\n        during {during:?}\n        after  {after:?}");
}

/// The kernels build with NVRTC for Hopper and Ampere (the production files and the decode
/// experiments' module); needs only libnvrtc (no GPU), e.g. the `nvidia-cuda-nvrtc` wheel's
/// lib/ on LD_LIBRARY_PATH.
#[test]
#[ignore = "needs libnvrtc"]
fn kernels_compile_with_nvrtc() {
    let verbose = std::env::var_os("HY_QUANT_PTXAS_VERBOSE").is_some();
    for cc in [(9, 0), (8, 0)] {
        let extra: &[&str] = if verbose {
            &["--ptxas-options=-v"]
        } else {
            &[]
        };
        let built = hy_quant::backend::cuda::compile::compile_all_with(cc, extra).unwrap();
        for (name, size, log) in &built {
            println!("sm_{}{} {name}: {size} bytes", cc.0, cc.1);
            if verbose {
                println!("{log}");
            }
        }
        // ALL and the decode experiments' module.
        assert_eq!(built.len(), 6);
    }
}

/// Without a driver (CI, this project's dev machines) `auto` falls back to the CPU with a
/// reason and `cuda` is a clean error; with one, both open the GPU.
#[test]
fn device_selection_never_panics() {
    let auto = Device::select(DeviceChoice::Auto).unwrap();
    let cuda = Device::select(DeviceChoice::Cuda);
    match probe::device_count() {
        Ok(n) if n > 0 => {
            assert!(auto.device.is_cuda(), "{:?}", auto.note);
            assert!(cuda.is_ok());
        }
        _ => {
            assert!(!auto.device.is_cuda());
            let note = auto.note.expect("auto says why it fell back");
            assert!(note.contains("CPU") && note.contains("cuda:"), "{note}");
            let err = cuda.err().expect("--device cuda must fail without a GPU");
            assert!(err.to_string().starts_with("cuda: "), "{err}");
            println!("fallback note: {note}");
        }
    }
    let cpu = Device::select(DeviceChoice::Cpu).unwrap();
    assert_eq!(cpu.device.name(), "cpu");
    assert!(cpu.note.is_none());
}

/// Per-call device times on the GPU (CUDA events, median of 20 after 3 warm-ups) for
/// docs/cuda.md; checks the full-size fused GPTQ results against cuBLAS on the dequantized
/// weight.
#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_timings() {
    use std::time::Instant;
    let b = cuda();
    // Median of 20 after 3 warm-ups: device time (CUDA events) and host wall time per call
    // (launch and allocation overhead included).
    let time = |f: &mut dyn FnMut()| -> f64 {
        for _ in 0..3 {
            f();
        }
        b.synchronize().unwrap();
        let mut dev: Vec<f64> = (0..20)
            .map(|_| {
                b.time_ms(&mut || {
                    f();
                    Ok(())
                })
                .unwrap() as f64
                    * 1e3
            })
            .collect();
        let mut host: Vec<f64> = (0..20)
            .map(|_| {
                let s = Instant::now();
                f();
                b.synchronize().unwrap();
                s.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        dev.sort_by(|a, b| a.partial_cmp(b).unwrap());
        host.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!("  (host wall per call {:.1} us)", host[10]);
        dev[10]
    };
    let (n, k) = (4096usize, 4096usize);
    let kind = HalfKind::BF16;
    for bits in [4u8, 8] {
        let ql = sample_linear(bits, 128, true, false, n, k, kind, 1);
        let w = upload_sample(&b, &ql, kind);
        let mut deq = b.zeros::<u16>(n * k).unwrap();
        b.dequantize_gptq(&w, &mut deq).unwrap();
        for m in [1usize, 4, 16, 64, 512] {
            let x = b.upload(&halves(kind, &randn(3, m * k, 1.0))).unwrap();
            let mut out = b.zeros::<f32>(m * n).unwrap();
            let fused = time(&mut || b.gemm_gptq(&x, &w, m, &mut out).unwrap());
            let mut out2 = b.zeros::<f32>(m * n).unwrap();
            let dense = time(&mut || b.gemm(&x, &deq, kind, m, n, k, &mut out2).unwrap());
            // Full-size shapes are checked too: fused vs dequantize-then-cuBLAS.
            let (f, d) = (b.download(&out).unwrap(), b.download(&out2).unwrap());
            let scale = d.iter().fold(0f32, |a, v| a.max(v.abs()));
            let err = max_abs_diff(&f, &d);
            assert!(
                err <= 1e-4 * scale,
                "w{bits} m={m}: fused vs cuBLAS max err {err} (scale {scale})"
            );
            let gbs = w.bytes() as f64 / fused / 1e3;
            println!(
                "timing gemm_gptq w{bits} {n}x{k} m={m:<4} fused {fused:8.1} us ({gbs:6.1} GB/s of packed weight, {:7.2} TFLOP/s) | cuBLAS bf16 on the dequantized weight {dense:8.1} us",
                2.0 * (m * n * k) as f64 / fused / 1e6
            );
        }
    }
    let shape = AttnShape {
        heads: 32,
        kv_heads: 8,
        head_dim: 128,
        max_len: 4096,
    };
    let slots = 16usize;
    let kv_kind = HalfKind::BF16;
    let kc = b
        .upload(&halves(
            kv_kind,
            &randn(1, slots * shape.max_len * shape.kv_width(), 1.0),
        ))
        .unwrap();
    let vc = b
        .upload(&halves(
            kv_kind,
            &randn(2, slots * shape.max_len * shape.kv_width(), 1.0),
        ))
        .unwrap();
    for rows in [1usize, 16] {
        let q = b.upload(&randn(3, rows * shape.q_width(), 1.0)).unwrap();
        let s = b.upload(&(0..rows as u32).collect::<Vec<_>>()).unwrap();
        let p = b.upload(&vec![4095u32; rows]).unwrap();
        let mut out = b.zeros::<f32>(rows * shape.q_width()).unwrap();
        let t = time(&mut || {
            b.attention(&q, &kc, &vc, kv_kind, &s, &p, &shape, &mut out)
                .unwrap()
        });
        let bytes = rows * 2 * 4096 * shape.kv_width() * 2;
        println!(
            "timing attention h32/kv8 d128 ctx 4096, {rows} decode rows: {t:8.1} us ({:.0} GB/s of KV read)",
            bytes as f64 / t / 1e3
        );
    }
    println!("memory after timings: {:?}", b.memory());
}

/// `ql` packed as GPTQ v1 in `kind` and uploaded to `b` (what a loader gives the backend).
fn upload_sample<B: Backend>(b: &B, ql: &QuantizedLinear, kind: HalfKind) -> GptqWeight<B> {
    let dtype = match kind {
        HalfKind::BF16 => DType::BF16,
        HalfKind::F16 => DType::F16,
    };
    let packed = gptq_v1::pack(ql, dtype);
    let scales: Vec<u16> = packed
        .scales
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let host = GptqHost {
        name: "test.linear",
        scheme: ql.scheme,
        in_features: ql.in_features,
        out_features: ql.out_features,
        qweight: &packed.qweight,
        qzeros: &packed.qzeros,
        scales: &scales,
        half: kind,
        g_idx: &packed.g_idx,
    };
    GptqWeight::upload(b, &host).unwrap()
}

/// A random GPTQ v1 linear (`sample_linear`: int`bits` g128 sym, no act-order) on `b`.
fn random_gptq<B: Backend>(b: &B, bits: u8, n: usize, k: usize, seed: u64) -> GptqWeight<B> {
    let kind = HalfKind::BF16;
    let ql = sample_linear(bits, 128, true, false, n, k, kind, seed);
    upload_sample(b, &ql, kind)
}

/// Device time of one call of `f` in microseconds, as a decode step sees it: the median of
/// `samples` CUDA-event timings after 3 warm-ups, each preceded by a 256 MiB read (argmax over
/// zeros) so that the weight comes from HBM, not from the 50+ MB L2 the previous call filled.
fn cold_call_us(b: &CudaBackend, samples: usize, f: &mut dyn FnMut()) -> f64 {
    let cols = 1usize << 18;
    let flush = b.zeros::<f32>(256 * cols).unwrap();
    let mut idx = b.zeros::<u32>(256).unwrap();
    let mut margin = b.zeros::<f32>(256).unwrap();
    for _ in 0..3 {
        f();
    }
    let mut t: Vec<f64> = (0..samples)
        .map(|_| {
            b.argmax(&flush, cols, &mut idx, &mut margin).unwrap();
            b.time_ms(&mut || {
                f();
                Ok(())
            })
            .unwrap() as f64
                * 1e3
        })
        .collect();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    t[samples / 2]
}

/// The linears of one HY-MT 7B decoder layer as the runner calls them
/// (src/runner/backend_model.rs: q, k, v, o, gate, up, down, each its own GEMM):
/// (name, out_features N, in_features K, calls per layer).
const LAYER_7B: [(&str, usize, usize, usize); 4] = [
    ("q_proj, o_proj", 4096, 4096, 2),
    ("k_proj, v_proj", 1024, 4096, 2),
    ("gate_proj, up_proj", 14336, 4096, 2),
    ("down_proj", 4096, 14336, 1),
];

/// What fusing the linears that share an input would buy at m = 1 (a measurement for the
/// decode target, not a runner feature yet): one launch over q|k|v (6144 x 4096) and one over
/// gate|up (28672 x 4096) against the separate launches of `decode_step_bench`, W4A16 g128 and
/// cuBLAS bf16, cold L2. Prints the per-layer estimate (qkv + o + gate|up + down). Run alone:
/// `./backend_ops --ignored --nocapture --test-threads=1 --exact decode_fused_shapes_bench`
#[test]
#[ignore = "needs a CUDA GPU"]
fn decode_fused_shapes_bench() {
    let b = cuda();
    let kind = HalfKind::BF16;
    let samples = 30;
    // (name, n, k, launches per layer)
    let shapes: [(&str, usize, usize, usize); 4] = [
        ("q|k|v", 6144, 4096, 1),
        ("o_proj", 4096, 4096, 1),
        ("gate|up", 28672, 4096, 1),
        ("down_proj", 4096, 14336, 1),
    ];
    let (mut t16_sum, mut t4_sum) = (0f64, 0f64);
    for (si, &(name, n, k, calls)) in shapes.iter().enumerate() {
        let w4 = random_gptq(&b, 4, n, k, 31 + si as u64);
        let mut dense = b.zeros::<u16>(n * k).unwrap();
        b.dequantize_gptq(&w4, &mut dense).unwrap();
        let x = b.upload(&halves(kind, &randn(5, k, 1.0))).unwrap();
        let mut out = b.zeros::<f32>(n).unwrap();
        let t16 = cold_call_us(&b, samples, &mut || {
            b.gemm(&x, &dense, kind, 1, n, k, &mut out).unwrap()
        });
        let t4 = cold_call_us(&b, samples, &mut || {
            b.gemm_gptq(&x, &w4, 1, &mut out).unwrap()
        });
        println!(
            "fused {name} ({n} x {k}) m=1: bf16 {t16:.1} us, W4A16 {t4:.1} us ({:.0} GB/s, {:.2}x)",
            w4.bytes() as f64 / (t4 * 1e-6) / 1e9,
            t16 / t4
        );
        t16_sum += calls as f64 * t16;
        t4_sum += calls as f64 * t4;
    }
    println!(
        "fused layer m=1 (qkv, o, gate|up, down): bf16 {t16_sum:.1} us, W4A16 {t4_sum:.1} us ({:.2}x)",
        t16_sum / t4_sum
    );
    assert!(t4_sum > 0.0 && t16_sum > 0.0);
}

/// Issue 4's decode benchmark: per linear of a HY-MT 7B layer (hidden 4096, intermediate
/// 14336, 32 heads / 8 kv heads of 128) at m = 1 and 16 rows, cuBLAS bf16 (`gemm` on the
/// dequantized weight) against W8A16 and W4A16 g128 (`gemm_gptq`), cold L2 (see
/// `cold_call_us`), with the bytes each reads over a device-to-device copy's bandwidth as the
/// roofline. Prints markdown tables for docs/perf.md. Run alone:
/// `./backend_ops --ignored --nocapture --test-threads=1 decode_step`
#[test]
#[ignore = "needs a CUDA GPU"]
fn decode_step_bench() {
    let b = cuda();
    let kind = HalfKind::BF16;
    let samples = 30;
    let copy_bw = copy_bandwidth(&b);
    println!(
        "decode_step on {}: device-to-device copy of 1 GiB: {:.0} GB/s (read + written)",
        b.name(),
        copy_bw / 1e9
    );
    // times[m][shape] = (bf16 us, w8 us, w4 us); bytes[shape] = (bf16, w8, w4).
    let ms = [1usize, 16];
    let mut times = vec![vec![(0f64, 0f64, 0f64); LAYER_7B.len()]; ms.len()];
    let mut bytes = vec![(0f64, 0f64, 0f64); LAYER_7B.len()];
    for (si, &(name, n, k, _)) in LAYER_7B.iter().enumerate() {
        let w8 = random_gptq(&b, 8, n, k, 11 + si as u64);
        let w4 = random_gptq(&b, 4, n, k, 17 + si as u64);
        // The dense weight is W4's dequantization (realistic values, no host generation).
        let mut dense = b.zeros::<u16>(n * k).unwrap();
        b.dequantize_gptq(&w4, &mut dense).unwrap();
        bytes[si] = ((n * k * 2) as f64, w8.bytes() as f64, w4.bytes() as f64);
        for (mi, &m) in ms.iter().enumerate() {
            let x = b
                .upload(&halves(kind, &randn(3 + m as u64, m * k, 1.0)))
                .unwrap();
            let mut out = b.zeros::<f32>(m * n).unwrap();
            let mut reference = b.zeros::<f32>(m * n).unwrap();
            let t16 = cold_call_us(&b, samples, &mut || {
                b.gemm(&x, &dense, kind, m, n, k, &mut out).unwrap()
            });
            let t8 = cold_call_us(&b, samples, &mut || {
                b.gemm_gptq(&x, &w8, m, &mut out).unwrap()
            });
            let t4 = cold_call_us(&b, samples, &mut || {
                b.gemm_gptq(&x, &w4, m, &mut out).unwrap()
            });
            // W4 at full size against cuBLAS on the same dequantized weight.
            b.gemm(&x, &dense, kind, m, n, k, &mut reference).unwrap();
            b.gemm_gptq(&x, &w4, m, &mut out).unwrap();
            let (f, d) = (b.download(&out).unwrap(), b.download(&reference).unwrap());
            let scale = d.iter().fold(0f32, |a, v| a.max(v.abs()));
            let err = max_abs_diff(&f, &d);
            assert!(
                err <= 1e-4 * scale,
                "{name} m={m}: W4A16 vs cuBLAS max err {err} (scale {scale})"
            );
            times[mi][si] = (t16, t8, t4);
        }
    }
    let roof = |bytes: f64, us: f64| 100.0 * bytes / copy_bw / (us * 1e-6);
    let gbs = |bytes: f64, us: f64| bytes / (us * 1e-6) / 1e9;
    for (mi, &m) in ms.iter().enumerate() {
        println!("\nHY-MT 7B decode, m = {m} (bf16 activations; device times, cold L2, median of {samples})\n");
        println!("| linear (N x K) | bf16 cuBLAS us (GB/s) | W8A16 us (GB/s, % roofline, x bf16) | W4A16 us (GB/s, % roofline, x bf16) |");
        println!("|---|---|---|---|");
        let mut total = (0f64, 0f64, 0f64);
        let mut total_bytes = (0f64, 0f64, 0f64);
        let row = |label: String,
                   (t16, t8, t4): (f64, f64, f64),
                   (b16, b8, b4): (f64, f64, f64)| {
            println!(
                "| {label} | {t16:.1} ({:.0}) | {t8:.1} ({:.0}, {:.0}%, {:.2}x) | {t4:.1} ({:.0}, {:.0}%, {:.2}x) |",
                gbs(b16, t16),
                gbs(b8, t8),
                roof(b8, t8),
                t16 / t8,
                gbs(b4, t4),
                roof(b4, t4),
                t16 / t4,
            );
        };
        for (si, &(name, n, k, calls)) in LAYER_7B.iter().enumerate() {
            let t = times[mi][si];
            let by = bytes[si];
            row(format!("{name} ({n} x {k})"), t, by);
            let c = calls as f64;
            total = (total.0 + c * t.0, total.1 + c * t.1, total.2 + c * t.2);
            total_bytes = (
                total_bytes.0 + c * by.0,
                total_bytes.1 + c * by.1,
                total_bytes.2 + c * by.2,
            );
        }
        row(
            "**layer** (q, k, v, o, gate, up, down)".to_string(),
            total,
            total_bytes,
        );
    }
    println!("\nroofline = bytes of the weight (packed tensors for W8/W4: qweight, qzeros, scales) / copy bandwidth");
}

/// Tuning data for `gemv_quads_per_split`: the decode kernel's time at each K slice size
/// (quads of packed rows per block) for the 7B shapes, next to the automatic choice.
#[test]
#[ignore = "needs a CUDA GPU"]
fn decode_step_split_sweep() {
    let b = cuda();
    let kind = HalfKind::BF16;
    for &(name, n, k, _) in LAYER_7B.iter() {
        for bits in [4u8, 8] {
            let w = random_gptq(&b, bits, n, k, 5);
            for m in [1usize, 16] {
                let x = b.upload(&halves(kind, &randn(7, m * k, 1.0))).unwrap();
                let mut out = b.zeros::<f32>(m * n).unwrap();
                b.set_gemv_quads_per_split(None);
                let auto = cold_call_us(&b, 20, &mut || b.gemm_gptq(&x, &w, m, &mut out).unwrap());
                let mut line = format!("sweep {name} {n}x{k} w{bits} m={m}: auto {auto:.1} us |");
                for qps in [4usize, 8, 16, 32, 64, 128] {
                    b.set_gemv_quads_per_split(Some(qps));
                    let t = cold_call_us(&b, 20, &mut || b.gemm_gptq(&x, &w, m, &mut out).unwrap());
                    line += &format!(" {qps}: {t:.1}");
                }
                b.set_gemv_quads_per_split(None);
                println!("{line}");
            }
        }
    }
}

/// Tuning data for the decode kernel choice (the constants at the top of
/// src/backend/cuda/gptq_linear.rs): per 7B layer shape, bits and rows, the cold-L2 time and
/// read bandwidth of every variant (`step` = STREAM_MAX_ROWS below m; `s<U>k<KW>w<W>` =
/// streaming kernel with STREAM_UNROLL = U, STREAM_K_WARPS = KW, STREAM_WAVES = W; `c...` the
/// same on CUDA cores, i.e. STREAM_CUDA_CORE_MAX_ROWS >= m, only differs from `s...` for
/// m <= 4, and m = 4 always runs with a ring of 4), next to
/// the automatic choice (with its launch) and bf16 cuBLAS on the dequantized weight. Run alone:
/// `./backend_ops --ignored --nocapture --test-threads=1 --exact decode_gemv_variant_sweep`
#[test]
#[ignore = "needs a CUDA GPU"]
fn decode_gemv_variant_sweep() {
    let b = cuda();
    let kind = HalfKind::BF16;
    let stream = |unroll, k_warps, waves, cuda_cores| GemvKernel::Stream {
        unroll,
        k_warps,
        waves,
        cuda_cores,
        tiled: false,
        reg_cap: 0,
        prefetch: 0,
        fold: false,
    };
    let variants = [
        GemvKernel::Step,
        stream(4, 1, 1, false),
        stream(8, 1, 1, false),
        stream(8, 1, 2, false),
        stream(8, 1, 4, false),
        stream(4, 1, 2, false),
        stream(8, 2, 1, false),
        stream(4, 2, 1, false),
        stream(4, 1, 1, true),
        stream(8, 1, 1, true),
        stream(8, 2, 1, true),
    ];
    let mut totals: Vec<(String, f64)> = Vec::new();
    for &(name, n, k, calls) in LAYER_7B.iter() {
        let w4 = random_gptq(&b, 4, n, k, 5);
        let mut dense = b.zeros::<u16>(n * k).unwrap();
        b.dequantize_gptq(&w4, &mut dense).unwrap();
        for bits in [4u8, 8] {
            let w = if bits == 4 {
                None
            } else {
                Some(random_gptq(&b, bits, n, k, 6))
            };
            let w = w.as_ref().unwrap_or(&w4);
            let bytes = w.bytes() as f64;
            for m in [1usize, 2, 4, 8, 16] {
                let x = b.upload(&halves(kind, &randn(7, m * k, 1.0))).unwrap();
                let mut out = b.zeros::<f32>(m * n).unwrap();
                let gbs = |us: f64| bytes / (us * 1e-6) / 1e9;
                let t16 = cold_call_us(&b, 20, &mut || {
                    b.gemm(&x, &dense, kind, m, n, k, &mut out).unwrap()
                });
                b.set_gemv_kernel(None).unwrap();
                let plan = b.describe_gemv(w, m).unwrap().unwrap_or_default();
                let auto = cold_call_us(&b, 20, &mut || b.gemm_gptq(&x, w, m, &mut out).unwrap());
                println!(
                    "variants {name} {n}x{k} w{bits} m={m}: bf16 {t16:.1} us | auto {auto:.1} us ({:.0} GB/s, {:.2}x bf16) [{plan}]",
                    gbs(auto),
                    t16 / auto
                );
                let mut add = |label: &str, t: f64| {
                    let key = format!("w{bits} m={m} {label}");
                    match totals.iter_mut().find(|(kk, _)| *kk == key) {
                        Some(e) => e.1 += calls as f64 * t,
                        None => totals.push((key, calls as f64 * t)),
                    }
                };
                add("bf16", t16);
                add("auto", auto);
                let mut line = String::from("   ");
                for v in variants {
                    b.set_gemv_kernel(Some(v)).unwrap();
                    let t = cold_call_us(&b, 20, &mut || b.gemm_gptq(&x, w, m, &mut out).unwrap());
                    line += &format!(" {}: {t:.1} ({:.0})", v.label(), gbs(t));
                    add(&v.label(), t);
                }
                b.set_gemv_kernel(None).unwrap();
                println!("{line}");
            }
        }
    }
    println!(
        "\nper layer (q, k, v, o, gate, up, down), us (bf16 = cuBLAS on the dequantized weight):"
    );
    for (key, t) in totals {
        println!("layer {key}: {t:.1}");
    }
}

/// Timings for the decode experiments (docs/cuda.md, "Profiled"): register caps and the
/// column-tiled weight layout, on the 7B layer shapes, int4 and int8, m = 1, 2, 4, 8. Per
/// linear, the cold-L2 time in us and read bandwidth in GB/s of bf16 cuBLAS (on the dequantized
/// int4 weight), the automatic choice (with its launch), and each variant: s4k2w1 (the
/// production choice), capped at 3 and 4 blocks of 256 threads per SM (`c3`, `c4`), tiled
/// (`t`), tiled and capped, s8k2w1 tiled and s4k1w1 tiled. At m = 1 it also prints each
/// variant's launch; the K split follows the occupancy, so a capped kernel gets more splits.
/// Per-layer sums come at the end. Run alone:
/// `./backend_ops --ignored --nocapture --test-threads=1 --exact decode_gemv_layout_sweep`
#[test]
#[ignore = "needs a CUDA GPU"]
fn decode_gemv_layout_sweep() {
    let b = cuda();
    let kind = HalfKind::BF16;
    let s = stream_variant;
    let variants = [
        s(4, 2, false, 0),
        s(4, 2, false, 3),
        s(4, 2, false, 4),
        s(4, 2, true, 0),
        s(4, 2, true, 3),
        s(4, 2, true, 4),
        s(8, 2, true, 0),
        s(4, 1, true, 0),
    ];
    let ms = [1usize, 2, 4, 8];
    let bits_all = [4u8, 8];
    // layer[bits][m][column]: columns bf16, auto, then the variants.
    let cols = 2 + variants.len();
    let mut layer = vec![vec![vec![0f64; cols]; ms.len()]; bits_all.len()];
    for &(name, n, k, calls) in LAYER_7B.iter() {
        let w4 = random_gptq(&b, 4, n, k, 5);
        let w8 = random_gptq(&b, 8, n, k, 6);
        let mut dense = b.zeros::<u16>(n * k).unwrap();
        b.dequantize_gptq(&w4, &mut dense).unwrap();
        let weights = [
            (&w4, b.tiled_qweight(&w4).unwrap()),
            (&w8, b.tiled_qweight(&w8).unwrap()),
        ];
        for (mi, &m) in ms.iter().enumerate() {
            let x = b.upload(&halves(kind, &randn(7, m * k, 1.0))).unwrap();
            let mut out = b.zeros::<f32>(m * n).unwrap();
            let t16 = cold_call_us(&b, 20, &mut || {
                b.gemm(&x, &dense, kind, m, n, k, &mut out).unwrap()
            });
            for (bi, (w, tiled)) in weights.iter().enumerate() {
                let bits = bits_all[bi];
                let gbs = |us: f64| w.bytes() as f64 / (us * 1e-6) / 1e9;
                b.set_gemv_kernel(None).unwrap();
                let plan = b.describe_gemv(w, m).unwrap().unwrap_or_default();
                let auto = cold_call_us(&b, 20, &mut || b.gemm_gptq(&x, w, m, &mut out).unwrap());
                let mut times = vec![t16, auto];
                let mut line = format!(
                    "layout {name} {n}x{k} w{bits} m={m}: bf16 {t16:.1} | auto {auto:.1} ({:.0}) [{plan}] |",
                    gbs(auto)
                );
                let mut launches = Vec::new();
                for v in variants {
                    b.set_gemv_kernel(Some(v)).unwrap();
                    if m == 1 {
                        let p = b.describe_gemv(w, m).unwrap().unwrap_or_default();
                        launches.push(format!("{}: {p}", v.label()));
                    }
                    let t = cold_call_us(&b, 20, &mut || {
                        if v.is_tiled() {
                            b.gemm_gptq_tiled(&x, w, tiled, m, &mut out).unwrap()
                        } else {
                            b.gemm_gptq(&x, w, m, &mut out).unwrap()
                        }
                    });
                    line += &format!(" {}: {t:.1} ({:.0})", v.label(), gbs(t));
                    times.push(t);
                }
                b.set_gemv_kernel(None).unwrap();
                println!("{line}");
                for l in launches {
                    println!("    {l}");
                }
                for (sum, t) in layer[bi][mi].iter_mut().zip(&times) {
                    *sum += calls as f64 * t;
                }
            }
        }
    }
    let labels: Vec<String> = ["bf16".to_string(), "auto".to_string()]
        .into_iter()
        .chain(variants.iter().map(|v| v.label()))
        .collect();
    println!("\nper 7B layer (q, k, v, o, gate, up, down), us, cold L2, median of 20 (bf16 = cuBLAS on the dequantized weight):\n");
    println!("| | {} |", labels.join(" | "));
    println!("|---{}|", "|---".repeat(labels.len()));
    for (bi, &bits) in bits_all.iter().enumerate() {
        for (mi, &m) in ms.iter().enumerate() {
            let row: Vec<String> = layer[bi][mi].iter().map(|t| format!("{t:.1}")).collect();
            println!("| w{bits} m={m} | {} |", row.join(" | "));
        }
    }
}

/// Per-op times of the GPTQ path at HY-MT 7B shapes (one 4096-token chunk; a layer at
/// 128 x 2048 calibration tokens has 64 chunks), for docs/gpu-gptq.md and the 60 s budget.
/// Device times by CUDA events; `gptq_quantize` and `gptq_output_errors` by the host clock
/// (they include host work and transfers).
#[test]
#[ignore = "needs a CUDA GPU"]
fn gptq_cuda_timings() {
    let b = cuda();
    let kind = HalfKind::BF16;
    let chunk = 4096usize;
    for k in [4096usize, 14336] {
        let x = halves(kind, &randn(1, chunk * k, 1.0));
        let xd = b.upload(&x).unwrap();
        let mut h = BackendHessian::new(&b, k).unwrap();
        h.add_half(&b, &xd, kind, chunk).unwrap();
        // Five calls per timing (the first calls after a launch pay clock ramp-up).
        let ms = b
            .time_ms(&mut || (0..5).try_for_each(|_| h.add_half(&b, &xd, kind, chunk)))
            .unwrap()
            / 5.0;
        println!("hessian_add_half {chunk}x{k} (bf16): {ms:.3} ms per chunk");
        let xf = b.upload(&randn(2, chunk * k, 1.0)).unwrap();
        let ms = b
            .time_ms(&mut || (0..5).try_for_each(|_| h.add(&b, &xf, chunk)))
            .unwrap()
            / 5.0;
        println!("hessian_add {chunk}x{k} (f32): {ms:.3} ms per chunk");
        // GPTQ of the linear reading this input at 7B: q/k/v/o/gate/up read 4096, down 14336.
        let n = if k == 4096 { 14336 } else { 4096 };
        let w = randn(3, n * k, 0.02);
        let wt = weight_of(&w, n, k, DType::BF16);
        let cfg = gptq_cfg(4, 128, true, ActOrder::None, 128);
        b.gptq_quantize(&wt, &h.h, h.nsamples, &cfg).unwrap();
        let t = std::time::Instant::now();
        let out = b.gptq_quantize(&wt, &h.h, h.nsamples, &cfg).unwrap();
        println!(
            "gptq_quantize {n}x{k} int4 g128: {:.3} s (retries {})",
            t.elapsed().as_secs_f64(),
            out.retries
        );
        let deq = out.linear.dequantize();
        let t = std::time::Instant::now();
        let e = b.gptq_output_errors(&w, &[&deq], &h.h, k).unwrap();
        println!(
            "gptq_output_errors {n}x{k}: {:.3} s ({:.3e})",
            t.elapsed().as_secs_f64(),
            e[0]
        );
    }
    let shape = AttnShape {
        heads: 32,
        kv_heads: 8,
        head_dim: 128,
        max_len: 2048,
    };
    let (samples, seqlen) = (2usize, 2048usize);
    let rows = samples * seqlen;
    let q = b.upload(&randn(4, rows * shape.q_width(), 1.0)).unwrap();
    let k = b.upload(&randn(5, rows * shape.kv_width(), 1.0)).unwrap();
    let v = b.upload(&randn(6, rows * shape.kv_width(), 1.0)).unwrap();
    let mut o = b.zeros::<f32>(rows * shape.q_width()).unwrap();
    for math in [PrefillMath::F32, PrefillMath::Tf32] {
        b.attention_prefill(&q, &k, &v, samples, seqlen, &shape, math, &mut o)
            .unwrap();
        let ms = b
            .time_ms(&mut || b.attention_prefill(&q, &k, &v, samples, seqlen, &shape, math, &mut o))
            .unwrap();
        println!(
            "attention_prefill {math:?} h32/kv8 d128 {samples}x{seqlen}: {ms:.3} ms per chunk"
        );
    }
    println!("memory: {:?}", b.memory());
}

/// The asynchronous decode variants the tests and the sweep run (`GemvKernel::Async`).
fn async_kernels() -> Vec<GemvKernel> {
    let mut v = Vec::new();
    for fold in [false, true] {
        for (depth, k_warps, waves) in [
            (4, 2, 1),
            (8, 1, 1),
            (8, 2, 1),
            (16, 1, 1),
            (16, 2, 1),
            (8, 2, 2),
        ] {
            v.push(GemvKernel::Async {
                depth,
                k_warps,
                waves,
                fold,
            });
        }
    }
    v
}

#[test]
fn gemv_kernel_labels_parse_back() {
    let mut all = gemv_kernels();
    all.extend(async_kernels());
    all.extend(fold_stream_kernels());
    all.extend([
        prefetch_variant(2, 8),
        prefetch_variant(1, 32),
        bulk_variant(4, 2, false),
        bulk_variant(8, 1, false),
    ]);
    for k in all {
        assert_eq!(GemvKernel::parse(&k.label()).unwrap(), k, "{}", k.label());
    }
    assert_eq!(
        GemvKernel::parse("a8k2w1f").unwrap(),
        GemvKernel::Async {
            depth: 8,
            k_warps: 2,
            waves: 1,
            fold: true
        }
    );
    for bad in [
        "",
        "x4k1w1",
        "s4k1",
        "s4w1",
        "a8k2w1ff",
        "sfk1w1",
        "c4k2w1f",
        "s4k2w1ff",
        "step2",
        "s4k2w1p",
        "c4k1w1p8",
        "s4k2w1p999",
    ] {
        let e = GemvKernel::parse(bad).unwrap_err().to_string();
        assert!(
            e.contains("HYQ_GEMV_KERNEL") && e.contains(bad),
            "{bad}: {e}"
        );
    }
}

/// The folded streaming decode kernels (`GemvKernel::Stream` with `fold`, an experiment).
fn fold_stream_kernels() -> Vec<GemvKernel> {
    ["s4k2w1f", "s4k1w1f", "s8k2w1f"]
        .iter()
        .map(|l| GemvKernel::parse(l).unwrap())
        .collect()
}

/// The asynchronous decode kernels (`GemvKernel::Async`: int4, up to 8 rows; scales applied
/// per group, so the weights are not rounded to half first) and the folded streaming ones
/// (`fold_stream_kernels`, the same math), each at several K splits, for
/// g32/g64/g128/per-channel, f16/bf16, 1 to 8 rows, N a multiple of the 128-column block or
/// not, K an odd number of quads: against the f64 product with the exact weights
/// s * (q - z) (tolerance 1e-5 of sum |w x|, as the other decode kernels against theirs;
/// folded kernels 5e-5, see `fold_fits`), and bit-identical when run twice. Rows above 8 and
/// int8 fall back to the automatic kernel, and a folded streaming kernel where the fold does
/// not fit (per-channel groups of 2048) to its unfolded production twin (each checked against its own
/// reference elsewhere).
#[test]
#[ignore = "needs a CUDA GPU"]
fn gptq_gemv_async_cuda() {
    let b = cuda();
    let (mut worst, mut worst_fold) = (0f64, 0f64);
    for (gs, kind, n, k) in [
        (128i64, HalfKind::BF16, 96usize, 2048usize),
        (128, HalfKind::F16, 256, 2048),
        (32, HalfKind::F16, 96, 2048),
        (64, HalfKind::BF16, 96, 2048),
        (-1, HalfKind::F16, 96, 2048),
        (-1, HalfKind::BF16, 128, 2048),
        (32, HalfKind::BF16, 160, 1056),
    ] {
        let ql = sample_linear(4, gs, false, false, n, k, kind, 77);
        let w = upload_sample(&b, &ql, kind);
        let exact = ql.dequantize();
        for m in 1usize..=8 {
            let xh = halves(kind, &randn(500 + m as u64, m * k, 1.0));
            let xf: Vec<f32> = xh.iter().map(|&h| kind.to_f32(h)).collect();
            let (want, mag) = matmul_ref(&xf, &exact, m, n, k);
            let xd = b.upload(&xh).unwrap();
            for kernel in async_kernels().into_iter().chain(fold_stream_kernels()) {
                b.set_gemv_kernel(Some(kernel)).unwrap();
                let plan = b.describe_gemv(&w, m).unwrap().unwrap();
                let folded = plan.contains("_fold");
                if plan.starts_with("gptq_gemv_stream_w4_m8_") && !folded {
                    assert!(gs == -1, "{plan}: fold not taken");
                    continue;
                }
                assert!(
                    plan.starts_with("gptq_gemv_async_w4_m8_")
                        || plan.starts_with("gptq_gemv_stream_w4_m8_"),
                    "{plan}"
                );
                for qps in [
                    None,
                    Some(1usize),
                    Some(3),
                    Some(4),
                    Some(8),
                    Some(32),
                    Some(128),
                ] {
                    let what = format!("g{gs} {kind:?} {n}x{k} m={m} {plan} split {qps:?}");
                    let first = gemv_twice(&b, &xd, &w, m, qps, &what);
                    let e = rel_err(&first, &want, &mag);
                    let tol = if folded { 5e-5 } else { 1e-5 };
                    assert!(e <= tol, "{what}: max rel err {e:e} (tol {tol:e})");
                    if folded {
                        worst_fold = worst_fold.max(e);
                    } else {
                        worst = worst.max(e);
                    }
                }
            }
        }
        // 9 rows and more take the automatic kernel.
        for kernel in [async_kernels()[0], fold_stream_kernels()[0]] {
            b.set_gemv_kernel(Some(kernel)).unwrap();
            let plan = b.describe_gemv(&w, 12).unwrap().unwrap();
            assert!(!plan.contains("async") && !plan.contains("fold"), "{plan}");
        }
        b.set_gemv_kernel(None).unwrap();
    }
    // f16 per-channel groups are too long to fold: the unfolded kernel runs.
    report("gptq async decode kernels", &b, worst, 1e-5);
    report(
        "gptq async and streaming decode, folded",
        &b,
        worst_fold,
        5e-5,
    );
}

/// The device-to-device copy bandwidth (bytes read + written per second, as KINDS.md's
/// 4.3 TB/s counts): the roofline divisor of the decode benches.
fn copy_bandwidth(b: &CudaBackend) -> f64 {
    let copy_bytes = 1usize << 30;
    let src = b.zeros::<u8>(copy_bytes).unwrap();
    let mut dst = b.zeros::<u8>(copy_bytes).unwrap();
    let us = cold_call_us(b, 20, &mut || b.copy_device(&src, &mut dst).unwrap());
    2.0 * copy_bytes as f64 / (us * 1e-6)
}

/// The asynchronous decode kernels against the production streaming one and cuBLAS bf16 on
/// the 7B layer's shapes, W4A16 g128, m = 1, 4, 8, cold L2, median of 20: per linear (us,
/// GB/s) and per layer, both with separate linears (q, k, v, o, gate, up, down) and with the
/// runner's fused ones (q|k|v, o, gate|up, down), as % of the copy roofline and x bf16. Each
/// variant's output is checked against cuBLAS on the dequantized weight (to 1% of the largest
/// output: a sanity bound, the weights' bf16 rounding differs). Run alone:
/// `./backend_ops --ignored --nocapture --test-threads=1 --exact decode_async_sweep`
#[test]
#[ignore = "needs a CUDA GPU"]
fn decode_async_sweep() {
    let b = cuda();
    let kind = HalfKind::BF16;
    let copy_bw = copy_bandwidth(&b);
    println!(
        "decode_async_sweep on {}: copy {:.0} GB/s",
        b.name(),
        copy_bw / 1e9
    );
    // (name, n, k, launches in a separate layer, launches in a fused layer)
    let shapes: [(&str, usize, usize, usize, usize); 6] = [
        ("q/o", 4096, 4096, 2, 1),
        ("k/v", 1024, 4096, 2, 0),
        ("gate/up", 14336, 4096, 2, 0),
        ("down", 4096, 14336, 1, 1),
        ("q|k|v", 6144, 4096, 0, 1),
        ("gate|up", 28672, 4096, 0, 1),
    ];
    let mut variants = vec![GemvKernel::parse("s4k2w1").unwrap()];
    variants.extend(async_kernels());
    // totals[(m, label)] = (separate us, fused us, separate bytes, fused bytes)
    let mut totals: Vec<(usize, String, [f64; 4])> = Vec::new();
    for (si, &(name, n, k, sep, fused)) in shapes.iter().enumerate() {
        let w = random_gptq(&b, 4, n, k, 40 + si as u64);
        let bytes = w.bytes() as f64;
        let mut dense = b.zeros::<u16>(n * k).unwrap();
        b.dequantize_gptq(&w, &mut dense).unwrap();
        for m in [1usize, 4, 8] {
            let x = b
                .upload(&halves(kind, &randn(9 + m as u64, m * k, 1.0)))
                .unwrap();
            let mut out = b.zeros::<f32>(m * n).unwrap();
            let mut reference = b.zeros::<f32>(m * n).unwrap();
            b.gemm(&x, &dense, kind, m, n, k, &mut reference).unwrap();
            let want = b.download(&reference).unwrap();
            let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
            let mut add = |label: &str, t: f64, bytes: f64| {
                let i = match totals.iter().position(|(mm, l, _)| *mm == m && l == label) {
                    Some(i) => i,
                    None => {
                        totals.push((m, label.to_string(), [0.0; 4]));
                        totals.len() - 1
                    }
                };
                let e = &mut totals[i].2;
                e[0] += sep as f64 * t;
                e[1] += fused as f64 * t;
                e[2] += sep as f64 * bytes;
                e[3] += fused as f64 * bytes;
            };
            let t16 = cold_call_us(&b, 20, &mut || {
                b.gemm(&x, &dense, kind, m, n, k, &mut out).unwrap()
            });
            add("bf16", t16, (n * k * 2) as f64);
            let mut line = format!("{name} {n}x{k} m={m}: bf16 {t16:.1}");
            for &v in &variants {
                b.set_gemv_kernel(Some(v)).unwrap();
                b.gemm_gptq(&x, &w, m, &mut out).unwrap();
                let got = b.download(&out).unwrap();
                let err = max_abs_diff(&got, &want);
                // A sanity bound: the asynchronous kernels do not round the weights to bf16
                // first (~2^-9 each), so they differ from cuBLAS on the dequantized weight by
                // more than f32 rounding; gptq_gemv_async_cuda checks them exactly.
                assert!(
                    err <= 1e-2 * scale,
                    "{name} m={m} {}: err {err} (scale {scale})",
                    v.label()
                );
                let t = cold_call_us(&b, 20, &mut || b.gemm_gptq(&x, &w, m, &mut out).unwrap());
                line += &format!(" | {} {t:.1} ({:.0})", v.label(), bytes / (t * 1e-6) / 1e9);
                add(&v.label(), t, bytes);
            }
            b.set_gemv_kernel(None).unwrap();
            println!("{line}");
        }
    }
    let bf16 = |m: usize| {
        totals
            .iter()
            .find(|(mm, l, _)| *mm == m && l == "bf16")
            .unwrap()
            .2
    };
    println!("\n| m | kernel | separate layer us (% roofline, x bf16) | fused layer us (% roofline, x bf16) |");
    println!("|---|---|---|---|");
    for (m, label, [ts, tf, bs, bf]) in &totals {
        let base = bf16(*m);
        let roof = |bytes: f64, us: f64| 100.0 * bytes / copy_bw / (us * 1e-6);
        println!(
            "| {m} | {label} | {ts:.1} ({:.0}%, {:.2}x) | {tf:.1} ({:.0}%, {:.2}x) |",
            roof(*bs, *ts),
            base[0] / ts,
            roof(*bf, *tf),
            base[1] / tf
        );
    }
}

/// Decode GEMVs launched as programmatic dependent launches (`CudaOptions::pdl`, the default
/// on sm_90), and with `pdl_small` the small kernels too, wait for the kernel before them: a
/// decoder-like chain with no synchronization in between (x += y, RMS norm to 16 bits, GEMV
/// into y; then y to 16 bits, GEMV again; 12 rounds, each kernel's input written by the kernel
/// just before it) ends bit-identical with PDL off, on for the GEMVs, and on for all, for the
/// ring-4 streaming kernel (1 and 8 rows), the step kernel (12 rows), a prefetching
/// experiment, int4 and int8.
#[test]
#[ignore = "needs a CUDA GPU"]
fn pdl_chain_matches_cuda() {
    let open = |pdl: bool, pdl_small: bool| {
        CudaBackend::new(&CudaOptions {
            pdl,
            pdl_small,
            ..CudaOptions::default()
        })
        .unwrap()
    };
    let (on, off, all) = (open(true, false), open(false, false), open(true, true));
    assert!(!off.pdl() && !off.pdl_small() && !on.pdl_small());
    if on.compute_capability().0 >= 9 {
        assert!(
            on.pdl(),
            "sm_90 device without programmatic dependent launch"
        );
        assert!(all.pdl() && all.pdl_small());
    } else {
        println!("pdl_chain_matches_cuda: no PDL below sm_90, both runs launch plainly");
    }
    let kind = HalfKind::BF16;
    let d = 2048usize;
    let chain =
        |b: &CudaBackend, w: &GptqWeight<CudaBackend>, m: usize, kernel: Option<GemvKernel>| {
            b.set_gemv_kernel(kernel).unwrap();
            let mut x = b.upload(&randn(90 + m as u64, m * d, 1.0)).unwrap();
            let norm = b.upload(&randn(91, d, 0.2)).unwrap();
            let mut y = b.zeros::<f32>(m * d).unwrap();
            let mut h = b.zeros::<u16>(m * d).unwrap();
            for round in 0..12 {
                b.add_rms_norm_half(&mut x, (round > 0).then_some(&y), &norm, 1e-6, kind, &mut h)
                    .unwrap();
                b.gemm_gptq(&h, w, m, &mut y).unwrap();
                b.to_half(&y, kind, &mut h).unwrap();
                b.gemm_gptq(&h, w, m, &mut y).unwrap();
            }
            let out = (b.download(&x).unwrap(), b.download(&y).unwrap());
            b.set_gemv_kernel(None).unwrap();
            out
        };
    let mut runs = 0;
    for bits in [4u8, 8] {
        let ql = sample_linear(bits, 128, true, false, d, d, kind, 92);
        let (w_on, w_off) = (
            upload_sample(&on, &ql, kind),
            upload_sample(&off, &ql, kind),
        );
        let w_all = upload_sample(&all, &ql, kind);
        for m in [1usize, 8, 12] {
            let mut kernels = vec![None];
            if bits == 4 && m <= 8 {
                kernels.push(Some(prefetch_variant(2, 16)));
            }
            for kernel in kernels {
                let what = format!(
                    "int{bits} m={m} {}",
                    on.describe_gemv(&w_on, m).unwrap().unwrap_or_default()
                );
                let (xa, ya) = chain(&on, &w_on, m, kernel);
                let (xb, yb) = chain(&off, &w_off, m, kernel);
                let (xc, yc) = chain(&all, &w_all, m, kernel);
                assert!(ya.iter().all(|v| v.is_finite()), "{what}: not finite");
                let same =
                    |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
                assert!(
                    same(&xa, &xb) && same(&ya, &yb),
                    "{what}: PDL on and off differ"
                );
                assert!(
                    same(&xc, &xb) && same(&yc, &yb),
                    "{what}: PDL on for all kernels and off differ"
                );
                runs += 1;
            }
        }
    }
    println!(
        "pdl_chain_matches_cuda: {runs} chains bit-identical with PDL off, for the GEMVs, for all"
    );
}

/// How the decode kernel is fed, on the fused 7B layer (q|k|v, o, gate|up, down), W4A16 g128,
/// m = 1 and 8, cold L2, median of 20: cuBLAS bf16, the production kernel (`s4k2w1`), its
/// L2-prefetching variants (`s4k2w1p8`, `p16`, `p32`), its folded variants (`s4k2w1f`, ...),
/// the bulk-copy kernels (`b<stages>k<K warps>w1[t]`, sm_90) and the production kernel's
/// loads-only twin (`gemm_gptq_read_only`: the same grid and loads, no math), with a plain
/// read of the same bytes (`copy_device` of the packed weight, read + write counted) for scale.
/// Each real variant's output is checked against cuBLAS on the dequantized weight. Run alone:
/// `./backend_ops --ignored --nocapture --test-threads=1 --exact decode_feed_sweep`
#[test]
#[ignore = "needs a CUDA GPU"]
fn decode_feed_sweep() {
    let b = cuda();
    let kind = HalfKind::BF16;
    let copy_bw = copy_bandwidth(&b);
    println!(
        "decode_feed_sweep on {}: copy {:.0} GB/s",
        b.name(),
        copy_bw / 1e9
    );
    let shapes: [(&str, usize, usize); 4] = [
        ("q|k|v", 6144, 4096),
        ("o", 4096, 4096),
        ("gate|up", 28672, 4096),
        ("down", 4096, 14336),
    ];
    let mut variants: Vec<GemvKernel> = [None, Some(8u8), Some(16), Some(32)]
        .into_iter()
        .map(|p| {
            p.map_or_else(
                || GemvKernel::parse("s4k2w1").unwrap(),
                |d| prefetch_variant(2, d),
            )
        })
        .collect();
    variants.extend(fold_stream_kernels());
    if b.compute_capability().0 >= 9 {
        for (stages, k_warps, tiled) in [
            (4, 1, false),
            (4, 1, true),
            (8, 1, true),
            (4, 2, true),
            (8, 2, true),
            (2, 1, false),
            (2, 1, true),
            (2, 2, true),
        ] {
            variants.push(bulk_variant(stages, k_warps, tiled));
        }
    }
    let labels: Vec<String> = ["bf16".to_string()]
        .into_iter()
        .chain(variants.iter().map(|v| v.label()))
        .chain(["readonly".to_string(), "copy".to_string()])
        .collect();
    // totals[m index][label index] = (us, bytes)
    let ms = [1usize, 8];
    let mut totals = vec![vec![(0f64, 0f64); labels.len()]; ms.len()];
    for (si, &(name, n, k)) in shapes.iter().enumerate() {
        let w = random_gptq(&b, 4, n, k, 70 + si as u64);
        let bytes = w.bytes() as f64;
        let mut dense = b.zeros::<u16>(n * k).unwrap();
        b.dequantize_gptq(&w, &mut dense).unwrap();
        let mut copy_dst = b.zeros::<i32>(w.qweight.len()).unwrap();
        let tiled = b.tiled_qweight(&w).unwrap();
        for (mi, &m) in ms.iter().enumerate() {
            let x = b
                .upload(&halves(kind, &randn(19 + m as u64, m * k, 1.0)))
                .unwrap();
            let mut out = b.zeros::<f32>(m * n).unwrap();
            let mut reference = b.zeros::<f32>(m * n).unwrap();
            b.gemm(&x, &dense, kind, m, n, k, &mut reference).unwrap();
            let want = b.download(&reference).unwrap();
            let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
            let mut times = Vec::new();
            times.push((
                cold_call_us(&b, 20, &mut || {
                    b.gemm(&x, &dense, kind, m, n, k, &mut out).unwrap()
                }),
                (n * k * 2) as f64,
            ));
            for &v in &variants {
                b.set_gemv_kernel(Some(v)).unwrap();
                let call = |out: &mut <CudaBackend as Backend>::Buf<f32>| {
                    if v.is_tiled() {
                        b.gemm_gptq_tiled(&x, &w, &tiled, m, out).unwrap()
                    } else {
                        b.gemm_gptq(&x, &w, m, out).unwrap()
                    }
                };
                call(&mut out);
                let err = max_abs_diff(&b.download(&out).unwrap(), &want);
                // The folded kernels do not round the weights to bf16 first: a sanity bound
                // only (gptq_gemv_async_cuda checks them against the exact product).
                let tol = if v.label().ends_with('f') { 1e-2 } else { 1e-4 };
                assert!(
                    err <= tol * scale,
                    "{name} m={m} {}: err {err} (scale {scale})",
                    v.label()
                );
                times.push((cold_call_us(&b, 20, &mut || call(&mut out)), bytes));
            }
            b.set_gemv_kernel(None).unwrap();
            times.push((
                cold_call_us(&b, 20, &mut || {
                    b.gemm_gptq_read_only(&x, &w, m, &mut out).unwrap()
                }),
                bytes,
            ));
            let qbytes = (w.qweight.len() * 4 * 2) as f64; // read + written
            times.push((
                cold_call_us(&b, 20, &mut || {
                    b.copy_device(&w.qweight, &mut copy_dst).unwrap()
                }),
                qbytes,
            ));
            let mut line = format!("{name} {n}x{k} m={m}:");
            for (li, &(t, by)) in times.iter().enumerate() {
                line += &format!(
                    " | {} {t:.1} us ({:.0} GB/s)",
                    labels[li],
                    by / (t * 1e-6) / 1e9
                );
                totals[mi][li].0 += t;
                totals[mi][li].1 += by;
            }
            println!("{line}");
        }
    }
    println!("\n| m | kernel | fused layer us | GB/s | % copy roofline | x bf16 |");
    println!("|---|---|---|---|---|---|");
    for (mi, &m) in ms.iter().enumerate() {
        let base = totals[mi][0].0;
        for (li, label) in labels.iter().enumerate() {
            let (t, by) = totals[mi][li];
            println!(
                "| {m} | {label} | {t:.1} | {:.0} | {:.0}% | {:.2}x |",
                by / (t * 1e-6) / 1e9,
                100.0 * by / copy_bw / (t * 1e-6),
                base / t
            );
        }
    }
    println!("(copy: copy_device of qweight alone, bytes read + written; % roofline = bytes / copy bandwidth)");
}

/// One launch of each way of feeding the decode kernel on the gate|up shape (28672 x 4096,
/// W4A16 g128, m = 1), after a warm-up launch of each (kernel compilation, occupancy queries):
/// the production kernel, its loads-only twin and the bulk-copy kernels with the fewest and
/// the most stages per SM, for Nsight Compute (`scripts/gpu_fused_ops.sh BINDIR profile`).
/// Checks only that the real kernels agree with the production one to 1e-4.
#[test]
#[ignore = "needs a CUDA GPU"]
fn decode_feed_profile() {
    let b = cuda();
    let kind = HalfKind::BF16;
    let (n, k, m) = (28672usize, 4096usize, 1usize);
    let w = random_gptq(&b, 4, n, k, 72);
    let tiled = b.tiled_qweight(&w).unwrap();
    let x = b.upload(&halves(kind, &randn(20, m * k, 1.0))).unwrap();
    let mut out = b.zeros::<f32>(m * n).unwrap();
    let mut variants = vec![Some(GemvKernel::parse("s4k2w1").unwrap()), None];
    if b.compute_capability().0 >= 9 {
        variants.extend([
            Some(bulk_variant(4, 1, true)),
            Some(bulk_variant(8, 2, true)),
        ]);
    }
    let mut reference = None;
    for _pass in 0..2 {
        for v in &variants {
            b.set_gemv_kernel(*v).unwrap();
            match v {
                None => b.gemm_gptq_read_only(&x, &w, m, &mut out).unwrap(),
                Some(v) if v.is_tiled() => b.gemm_gptq_tiled(&x, &w, &tiled, m, &mut out).unwrap(),
                Some(_) => b.gemm_gptq(&x, &w, m, &mut out).unwrap(),
            }
            if v.is_some() {
                let got = b.download(&out).unwrap();
                let want = reference.get_or_insert_with(|| got.clone());
                let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
                assert!(max_abs_diff(&got, want) <= 1e-4 * scale);
            }
        }
    }
    b.set_gemv_kernel(None).unwrap();
}
