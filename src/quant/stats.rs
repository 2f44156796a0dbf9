//! Error of a quantized weight against the original, as recorded in the manifest.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorStats {
    /// ||W - Wq||_F / ||W||_F.
    pub rel_fro: f64,
    /// max |W - Wq|.
    pub max_abs: f64,
}

impl ErrorStats {
    /// Computed in f64 over fixed chunks summed in order, so the result does not depend on the
    /// number of threads.
    pub fn between(original: &[f32], dequantized: &[f32]) -> Self {
        const CHUNK: usize = 1 << 14;
        let parts: Vec<(f64, f64, f64)> = original
            .par_chunks(CHUNK)
            .zip(dequantized.par_chunks(CHUNK))
            .map(|(a, b)| {
                let (mut err, mut norm, mut max_abs) = (0f64, 0f64, 0f64);
                for (&x, &y) in a.iter().zip(b) {
                    let d = x as f64 - y as f64;
                    err += d * d;
                    norm += x as f64 * x as f64;
                    max_abs = max_abs.max(d.abs());
                }
                (err, norm, max_abs)
            })
            .collect();
        let (err, norm, max_abs) = parts.into_iter().fold((0.0, 0.0, 0.0), |acc, p| {
            (acc.0 + p.0, acc.1 + p.1, f64::max(acc.2, p.2))
        });
        ErrorStats {
            rel_fro: if norm > 0.0 {
                (err / norm).sqrt()
            } else {
                err.sqrt()
            },
            max_abs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        let s = ErrorStats::between(&[3.0, 4.0], &[3.0, 3.0]);
        assert!((s.rel_fro - 0.2).abs() < 1e-12);
        assert_eq!(s.max_abs, 1.0);
    }
}
