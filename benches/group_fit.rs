//! Group-range fitting on one thread: `GroupParams::fit` (min/max) against `fit_clipped` (the
//! `--clip-search` shrink search, 80 candidate ranges per group), on a 4096 x 4096 weight of
//! Gaussian-ish values in groups of 128. Prints ns per weight; the host-side cost of
//! `--act-order static-groups --clip-search` is this times the linear's size divided by the
//! threads (docs/perf.md).
//!
//!     cargo bench --bench group_fit

use std::time::Instant;

use hy_quant::dtype::DType;
use hy_quant::quant::grid::{GridFit, GroupParams};
use hy_quant::quant::QuantScheme;
use hy_quant::rng::SplitMix64;

fn main() {
    let (rows, cols, glen) = (4096usize, 4096usize, 128usize);
    let mut rng = SplitMix64(7);
    let w: Vec<f32> = (0..rows * cols)
        .map(|_| (rng.normal() * 0.02) as f32)
        .collect();
    for bits in [4u8, 8] {
        let scheme = QuantScheme::new(bits, glen as i64, true).expect("scheme");
        for fit in [GridFit::MinMax, GridFit::ClipSearch] {
            let t = Instant::now();
            let mut check = 0f64;
            for g in w.chunks(glen) {
                let p = GroupParams::fit_with(g, &scheme, DType::BF16, "w", fit).expect("fit");
                check += p.scale as f64;
            }
            let secs = t.elapsed().as_secs_f64();
            println!(
                "int{bits} g{glen} {fit:?}: {:.2} ns/weight ({:.3} s for {} weights; checksum {check:.6e})",
                secs * 1e9 / w.len() as f64,
                secs,
                w.len()
            );
        }
    }
}
