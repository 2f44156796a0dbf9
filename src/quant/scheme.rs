//! What a quantized weight looks like: bit width, group size, symmetric or not.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Integer grid shared by every method (RTN, GPTQ, AWQ).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuantScheme {
    /// 4 or 8.
    pub bits: u8,
    /// Columns (input features) per group; `None` = one group per row (`group_size: -1`).
    pub group_size: Option<usize>,
    pub sym: bool,
}

impl QuantScheme {
    /// Validates flag values. `group_size` uses the GPTQ convention: -1 = per channel.
    pub fn new(bits: u8, group_size: i64, sym: bool) -> Result<Self> {
        if bits != 4 && bits != 8 {
            return Err(Error::flag(
                "--bits",
                format!("{bits} is not supported; expected 4 or 8"),
            ));
        }
        let group_size = match group_size {
            -1 => None,
            g if g >= 8 && g % 8 == 0 => Some(g as usize),
            g => {
                return Err(Error::flag(
                    "--group-size",
                    format!(
                    "{g} is not supported; expected -1 or a positive multiple of 8 (32, 64, 128)"
                ),
                ))
            }
        };
        Ok(QuantScheme {
            bits,
            group_size,
            sym,
        })
    }

    /// Largest integer level: 2^bits - 1.
    pub fn maxq(&self) -> u32 {
        (1u32 << self.bits) - 1
    }

    /// Values per packed int32 word.
    pub fn pack_factor(&self) -> usize {
        32 / self.bits as usize
    }

    /// Group length for a layer with `in_features` columns.
    pub fn group_len(&self, in_features: usize) -> usize {
        self.group_size.unwrap_or(in_features).min(in_features)
    }

    /// Number of groups G = ceil(K / group_len).
    pub fn num_groups(&self, in_features: usize) -> usize {
        in_features.div_ceil(self.group_len(in_features))
    }

    /// The `group_size` value GPTQ configs write (-1 for per channel).
    pub fn group_size_i64(&self) -> i64 {
        self.group_size.map(|g| g as i64).unwrap_or(-1)
    }

    /// Checks a linear of this shape can be stored in GPTQ v1 packing.
    pub fn check_shape(&self, tensor: &str, out_features: usize, in_features: usize) -> Result<()> {
        let pf = self.pack_factor();
        if in_features % pf != 0 || out_features % pf != 0 {
            return Err(Error::tensor(
                tensor,
                format!(
                    "shape [{out_features}, {in_features}] cannot be packed at {} bits: both dims must be multiples of {pf}",
                    self.bits
                ),
            ));
        }
        Ok(())
    }
}

impl std::fmt::Display for QuantScheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "int{} g{} {}",
            self.bits,
            self.group_size_i64(),
            if self.sym { "sym" } else { "asym" }
        )
    }
}
