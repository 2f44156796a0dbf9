//! Block dequantization of ggml tensor data to f32.
//!
//! Block layouts are the `block_*` structs of ggml `ggml/src/ggml-common.h`; the dequantization
//! formulas are those of the `dequantize_row_*` functions in `ggml/src/ggml-quants.c`. gguf-py
//! `gguf/quants.py` implements the same formulas independently in numpy, and
//! `scripts/check_gguf_dequant.py` compares this code against it tensor by tensor. The code is a
//! reimplementation from those facts, written so that each f32 operation happens in the same
//! order as in ggml (no fused multiply-add), which makes the results bit-identical.
//!
//! Every block struct is `#[repr(C)]` with only byte-array fields (alignment 1), so a byte slice
//! of any alignment can be viewed as a slice of blocks; `f16` fields are kept as `[u8; 2]` and
//! decoded little-endian.

use half::{bf16, f16};
use rayon::prelude::*;

use super::reader::GgmlType;

#[derive(Debug, thiserror::Error)]
pub enum DequantError {
    #[error("tensor '{tensor}': ggml type {ggml_type} cannot be dequantized by hy-quant (supported: {supported})")]
    Unsupported {
        tensor: String,
        ggml_type: GgmlType,
        supported: String,
    },
    #[error("tensor '{tensor}': {ggml_type} data is {got} bytes, expected {expected} for {n_elements} elements")]
    Size {
        tensor: String,
        ggml_type: GgmlType,
        got: usize,
        expected: usize,
        n_elements: usize,
    },
}

pub const SUPPORTED: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Bf16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];

const QK: usize = 32; // QK4_0 = QK4_1 = QK5_0 = QK5_1 = QK8_0
const QK_K: usize = 256;
const K_SCALE_SIZE: usize = 12;

#[inline]
fn h(b: [u8; 2]) -> f32 {
    f16::from_bits(u16::from_le_bytes(b)).to_f32()
}

/// Declares a block struct made only of byte arrays and lets bytemuck view bytes as it.
macro_rules! byte_block {
    ($(#[$m:meta])* $name:ident { $($field:ident : [u8; $n:expr]),* $(,)? } = $size:expr) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Clone, Copy)]
        pub struct $name { $(pub $field: [u8; $n]),* }
        const _: () = assert!(std::mem::size_of::<$name>() == $size);
        const _: () = assert!(std::mem::align_of::<$name>() == 1);
        // SAFETY: repr(C), only u8-array fields, so no padding, alignment 1, every bit
        // pattern valid (the asserts above check size and alignment).
        unsafe impl bytemuck::Zeroable for $name {}
        unsafe impl bytemuck::Pod for $name {}
    };
}

byte_block!(
    /// `block_q4_0`: d, 16 bytes of nibbles (element j low nibble, j+16 high nibble).
    BlockQ4_0 { d: [u8; 2], qs: [u8; QK / 2] } = 18
);
byte_block!(
    /// `block_q4_1`: d, m, nibbles as Q4_0; value = q*d + m.
    BlockQ4_1 { d: [u8; 2], m: [u8; 2], qs: [u8; QK / 2] } = 20
);
byte_block!(
    /// `block_q5_0`: d, 32 high bits (u32 LE), low nibbles as Q4_0; value = (q - 16)*d.
    BlockQ5_0 { d: [u8; 2], qh: [u8; 4], qs: [u8; QK / 2] } = 22
);
byte_block!(
    /// `block_q5_1`: d, m, high bits, low nibbles; value = q*d + m.
    BlockQ5_1 { d: [u8; 2], m: [u8; 2], qh: [u8; 4], qs: [u8; QK / 2] } = 24
);
byte_block!(
    /// `block_q8_0`: d, 32 signed bytes; value = q*d.
    BlockQ8_0 { d: [u8; 2], qs: [u8; QK] } = 34
);
byte_block!(
    /// `block_q2_K`: 16 (scale | min << 4) bytes, 2-bit quants, super-block d and dmin.
    BlockQ2K { scales: [u8; QK_K / 16], qs: [u8; QK_K / 4], d: [u8; 2], dmin: [u8; 2] } = 84
);
byte_block!(
    /// `block_q3_K`: high-bit mask, low 2 bits, 16 packed 6-bit scales in 12 bytes, d.
    BlockQ3K { hmask: [u8; QK_K / 8], qs: [u8; QK_K / 4], scales: [u8; 12], d: [u8; 2] } = 110
);
byte_block!(
    /// `block_q4_K`: d, dmin, 8 packed 6-bit (scale, min) pairs in 12 bytes, 4-bit quants.
    BlockQ4K { d: [u8; 2], dmin: [u8; 2], scales: [u8; K_SCALE_SIZE], qs: [u8; QK_K / 2] } = 144
);
byte_block!(
    /// `block_q5_K`: as Q4_K plus one high bit per element in `qh`.
    BlockQ5K {
        d: [u8; 2],
        dmin: [u8; 2],
        scales: [u8; K_SCALE_SIZE],
        qh: [u8; QK_K / 8],
        qs: [u8; QK_K / 2],
    } = 176
);
byte_block!(
    /// `block_q6_K`: low 4 bits, high 2 bits, 16 signed 8-bit scales, d.
    BlockQ6K { ql: [u8; QK_K / 2], qh: [u8; QK_K / 4], scales: [u8; QK_K / 16], d: [u8; 2] } = 210
);

fn dq_q4_0(b: &BlockQ4_0, y: &mut [f32]) {
    let d = h(b.d);
    for j in 0..QK / 2 {
        let x0 = (b.qs[j] & 0x0F) as i32 - 8;
        let x1 = (b.qs[j] >> 4) as i32 - 8;
        y[j] = x0 as f32 * d;
        y[j + QK / 2] = x1 as f32 * d;
    }
}

fn dq_q4_1(b: &BlockQ4_1, y: &mut [f32]) {
    let (d, m) = (h(b.d), h(b.m));
    for j in 0..QK / 2 {
        y[j] = (b.qs[j] & 0x0F) as f32 * d + m;
        y[j + QK / 2] = (b.qs[j] >> 4) as f32 * d + m;
    }
}

fn dq_q5_0(b: &BlockQ5_0, y: &mut [f32]) {
    let d = h(b.d);
    let qh = u32::from_le_bytes(b.qh);
    for j in 0..QK / 2 {
        // bit j of qh is the 5th bit of element j, bit j+16 that of element j+16
        let hi0 = ((qh >> j) & 1) as u8;
        let hi1 = ((qh >> (j + 16)) & 1) as u8;
        let x0 = ((b.qs[j] & 0x0F) | (hi0 << 4)) as i32 - 16;
        let x1 = ((b.qs[j] >> 4) | (hi1 << 4)) as i32 - 16;
        y[j] = x0 as f32 * d;
        y[j + QK / 2] = x1 as f32 * d;
    }
}

fn dq_q5_1(b: &BlockQ5_1, y: &mut [f32]) {
    let (d, m) = (h(b.d), h(b.m));
    let qh = u32::from_le_bytes(b.qh);
    for j in 0..QK / 2 {
        let hi0 = ((qh >> j) & 1) as u8;
        let hi1 = ((qh >> (j + 16)) & 1) as u8;
        let x0 = (b.qs[j] & 0x0F) | (hi0 << 4);
        let x1 = (b.qs[j] >> 4) | (hi1 << 4);
        y[j] = x0 as f32 * d + m;
        y[j + QK / 2] = x1 as f32 * d + m;
    }
}

fn dq_q8_0(b: &BlockQ8_0, y: &mut [f32]) {
    let d = h(b.d);
    for (y, &q) in y.iter_mut().zip(&b.qs) {
        *y = (q as i8) as f32 * d;
    }
}

fn dq_q2_k(b: &BlockQ2K, y: &mut [f32]) {
    let (d, dmin) = (h(b.d), h(b.dmin));
    // Two halves of 128 elements, each reading 32 bytes of qs four times (shift 0,2,4,6);
    // every 16 elements have their own 4-bit scale and 4-bit min.
    let mut is = 0;
    for half in 0..2 {
        let q = &b.qs[half * 32..half * 32 + 32];
        for j in 0..4 {
            let shift = 2 * j;
            for part in 0..2 {
                let sc = b.scales[is];
                is += 1;
                let dl = d * (sc & 0x0F) as f32;
                let ml = dmin * (sc >> 4) as f32;
                let base = half * 128 + j * 32 + part * 16;
                for l in 0..16 {
                    let v = (q[part * 16 + l] >> shift) & 3;
                    y[base + l] = dl * v as f32 - ml;
                }
            }
        }
    }
}

/// The 16 6-bit scales of a Q3_K block: low 4 bits in bytes 0..8 (low then high nibbles),
/// high 2 bits in bytes 8..12 (scale i uses bits 2*(i/4) of byte 8 + i%4).
fn q3k_scales(s: &[u8; 12]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        let lo = if i < 8 { s[i] & 0x0F } else { s[i - 8] >> 4 };
        let hi = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
        *o = ((lo | (hi << 4)) as i8).wrapping_sub(32);
    }
    out
}

fn dq_q3_k(b: &BlockQ3K, y: &mut [f32]) {
    let d_all = h(b.d);
    let scales = q3k_scales(&b.scales);
    let mut is = 0;
    let mut m: u8 = 1;
    for half in 0..2 {
        let q = &b.qs[half * 32..half * 32 + 32];
        for j in 0..4 {
            let shift = 2 * j;
            for part in 0..2 {
                let dl = d_all * scales[is] as f32;
                is += 1;
                let base = half * 128 + j * 32 + part * 16;
                for l in 0..16 {
                    let k = part * 16 + l;
                    let low = ((q[k] >> shift) & 3) as i32;
                    let sub = if b.hmask[k] & m != 0 { 0 } else { 4 };
                    y[base + l] = dl * (low - sub) as f32;
                }
            }
            m = m.wrapping_shl(1);
        }
    }
}

/// Scale and min `j` (0..8) of a Q4_K/Q5_K block (`get_scale_min_k4` in ggml-quants.c):
/// j < 4: low 6 bits of bytes j and j+4; j >= 4: a nibble of byte j+4 plus the top two bits
/// of bytes j-4 (scale) and j (min).
#[inline]
fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

fn dq_q4_k(b: &BlockQ4K, y: &mut [f32]) {
    let (d, dmin) = (h(b.d), h(b.dmin));
    for c in 0..4 {
        // 64 elements per chunk: 32 low nibbles then 32 high nibbles of the same 32 bytes.
        let q = &b.qs[c * 32..c * 32 + 32];
        let (sc1, m1) = scale_min_k4(2 * c, &b.scales);
        let (sc2, m2) = scale_min_k4(2 * c + 1, &b.scales);
        let (d1, mn1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, mn2) = (d * sc2 as f32, dmin * m2 as f32);
        for l in 0..32 {
            y[c * 64 + l] = d1 * (q[l] & 0x0F) as f32 - mn1;
            y[c * 64 + 32 + l] = d2 * (q[l] >> 4) as f32 - mn2;
        }
    }
}

fn dq_q5_k(b: &BlockQ5K, y: &mut [f32]) {
    let (d, dmin) = (h(b.d), h(b.dmin));
    for c in 0..4 {
        let ql = &b.qs[c * 32..c * 32 + 32];
        let (u1, u2) = (1u8 << (2 * c), 2u8 << (2 * c));
        let (sc1, m1) = scale_min_k4(2 * c, &b.scales);
        let (sc2, m2) = scale_min_k4(2 * c + 1, &b.scales);
        let (d1, mn1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, mn2) = (d * sc2 as f32, dmin * m2 as f32);
        for l in 0..32 {
            let hi1 = if b.qh[l] & u1 != 0 { 16 } else { 0 };
            let hi2 = if b.qh[l] & u2 != 0 { 16 } else { 0 };
            y[c * 64 + l] = d1 * ((ql[l] & 0x0F) + hi1) as f32 - mn1;
            y[c * 64 + 32 + l] = d2 * ((ql[l] >> 4) + hi2) as f32 - mn2;
        }
    }
}

fn dq_q6_k(b: &BlockQ6K, y: &mut [f32]) {
    let d = h(b.d);
    for half in 0..2 {
        let ql = &b.ql[half * 64..half * 64 + 64];
        let qh = &b.qh[half * 32..half * 32 + 32];
        let sc = &b.scales[half * 8..half * 8 + 8];
        let y = &mut y[half * 128..half * 128 + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

/// Blocks per parallel work item: large enough to amortize scheduling, small enough to spread
/// a single 1 MB tensor over all cores.
const BLOCKS_PER_TASK: usize = 1024;

fn run_blocks<B: bytemuck::Pod + Sync>(
    data: &[u8],
    out: &mut [f32],
    per_block: usize,
    f: fn(&B, &mut [f32]),
) {
    let blocks: &[B] = bytemuck::cast_slice(data);
    out.par_chunks_mut(per_block * BLOCKS_PER_TASK)
        .zip(blocks.par_chunks(BLOCKS_PER_TASK))
        .for_each(|(ys, bs)| {
            for (y, b) in ys.chunks_exact_mut(per_block).zip(bs) {
                f(b, y);
            }
        });
}

fn run_scalar<const N: usize>(data: &[u8], out: &mut [f32], f: fn([u8; N]) -> f32) {
    const CHUNK: usize = 1 << 16;
    out.par_chunks_mut(CHUNK)
        .zip(data.par_chunks(CHUNK * N))
        .for_each(|(ys, bs)| {
            for (y, b) in ys.iter_mut().zip(bs.chunks_exact(N)) {
                let mut a = [0u8; N];
                a.copy_from_slice(b);
                *y = f(a);
            }
        });
}

/// Dequantizes `data` (the raw bytes of one tensor of type `ty` with `out.len()` elements)
/// into `out`. `tensor` only names the tensor in errors.
pub fn dequantize(
    tensor: &str,
    ty: GgmlType,
    data: &[u8],
    out: &mut [f32],
) -> Result<(), DequantError> {
    if !SUPPORTED.contains(&ty) {
        return Err(DequantError::Unsupported {
            tensor: tensor.into(),
            ggml_type: ty,
            supported: SUPPORTED
                .iter()
                .map(|t| t.name())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let n = out.len();
    let bs = ty.block_size() as usize;
    let expected = if n % bs == 0 {
        n / bs * ty.type_size() as usize
    } else {
        usize::MAX
    };
    if data.len() != expected {
        return Err(DequantError::Size {
            tensor: tensor.into(),
            ggml_type: ty,
            got: data.len(),
            expected,
            n_elements: n,
        });
    }
    match ty {
        GgmlType::F32 => run_scalar::<4>(data, out, f32::from_le_bytes),
        GgmlType::F16 => run_scalar::<2>(data, out, h),
        GgmlType::Bf16 => run_scalar::<2>(data, out, |b| {
            bf16::from_bits(u16::from_le_bytes(b)).to_f32()
        }),
        GgmlType::Q4_0 => run_blocks(data, out, QK, dq_q4_0),
        GgmlType::Q4_1 => run_blocks(data, out, QK, dq_q4_1),
        GgmlType::Q5_0 => run_blocks(data, out, QK, dq_q5_0),
        GgmlType::Q5_1 => run_blocks(data, out, QK, dq_q5_1),
        GgmlType::Q8_0 => run_blocks(data, out, QK, dq_q8_0),
        GgmlType::Q2K => run_blocks(data, out, QK_K, dq_q2_k),
        GgmlType::Q3K => run_blocks(data, out, QK_K, dq_q3_k),
        GgmlType::Q4K => run_blocks(data, out, QK_K, dq_q4_k),
        GgmlType::Q5K => run_blocks(data, out, QK_K, dq_q5_k),
        GgmlType::Q6K => run_blocks(data, out, QK_K, dq_q6_k),
        _ => unreachable!("checked against SUPPORTED above"),
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)]
mod tests {
    //! Hand-built blocks; each expected value is worked out from the layout comments above
    //! (ggml-common.h / ggml-quants.c), not by running the code under test.
    use super::*;

    fn f16b(v: f32) -> [u8; 2] {
        f16::from_f32(v).to_bits().to_le_bytes()
    }
    fn deq(ty: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
        let mut out = vec![f32::NAN; n];
        dequantize("t", ty, bytes, &mut out).unwrap();
        out
    }

    #[test]
    fn q8_0() {
        let mut b = f16b(0.5).to_vec();
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let y = deq(GgmlType::Q8_0, &b, 32);
        for (i, v) in y.iter().enumerate() {
            assert_eq!(*v, (i as f32 - 16.0) * 0.5);
        }
    }

    #[test]
    fn q4_0_and_q4_1() {
        // qs[j] = low nibble j%16, high nibble 15 - j%16
        let qs: Vec<u8> = (0..16u8).map(|j| j | ((15 - j) << 4)).collect();
        let mut b = f16b(2.0).to_vec();
        b.extend(&qs);
        let y = deq(GgmlType::Q4_0, &b, 32);
        for j in 0..16 {
            assert_eq!(y[j], (j as f32 - 8.0) * 2.0);
            assert_eq!(y[j + 16], ((15 - j) as f32 - 8.0) * 2.0);
        }
        let mut b = f16b(2.0).to_vec();
        b.extend(f16b(-1.5));
        b.extend(&qs);
        let y = deq(GgmlType::Q4_1, &b, 32);
        for j in 0..16 {
            assert_eq!(y[j], j as f32 * 2.0 - 1.5);
            assert_eq!(y[j + 16], (15 - j) as f32 * 2.0 - 1.5);
        }
    }

    #[test]
    fn q5_0_and_q5_1() {
        // all nibbles 0x3 (low) / 0x5 (high); high bit set for elements 1 and 17 only
        let qh: u32 = (1 << 1) | (1 << 17);
        let mut b = f16b(0.25).to_vec();
        b.extend(qh.to_le_bytes());
        b.extend([0x53u8; 16]);
        let y = deq(GgmlType::Q5_0, &b, 32);
        assert_eq!(y[0], (3.0 - 16.0) * 0.25);
        assert_eq!(y[1], (19.0 - 16.0) * 0.25);
        assert_eq!(y[16], (5.0 - 16.0) * 0.25);
        assert_eq!(y[17], (21.0 - 16.0) * 0.25);
        let mut b = f16b(0.25).to_vec();
        b.extend(f16b(1.0));
        b.extend(qh.to_le_bytes());
        b.extend([0x53u8; 16]);
        let y = deq(GgmlType::Q5_1, &b, 32);
        assert_eq!(y[0], 3.0 * 0.25 + 1.0);
        assert_eq!(y[1], 19.0 * 0.25 + 1.0);
        assert_eq!(y[16], 5.0 * 0.25 + 1.0);
        assert_eq!(y[17], 21.0 * 0.25 + 1.0);
    }

    /// 12 scale bytes encoding 6-bit (scale, min) pairs sc[j], mn[j] for j in 0..8.
    fn pack_k4(sc: [u8; 8], mn: [u8; 8]) -> [u8; 12] {
        let mut q = [0u8; 12];
        for j in 0..4 {
            q[j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6);
            q[j + 4] = (mn[j] & 63) | ((mn[j + 4] >> 4) << 6);
            q[j + 8] = (sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4);
        }
        q
    }

    #[test]
    fn k4_scale_packing() {
        let sc = [1, 2, 63, 4, 17, 33, 63, 0];
        let mn = [5, 0, 7, 62, 48, 3, 1, 63];
        let q = pack_k4(sc, mn);
        for j in 0..8 {
            assert_eq!(scale_min_k4(j, &q), (sc[j], mn[j]), "j={j}");
        }
    }

    #[test]
    fn q4_k() {
        let sc = [1, 2, 3, 4, 5, 6, 7, 40];
        let mn = [0, 1, 2, 3, 4, 5, 6, 50];
        let mut b = f16b(0.5).to_vec();
        b.extend(f16b(0.125));
        b.extend(pack_k4(sc, mn));
        // byte l of chunk c: low nibble = l % 16, high nibble = c
        for c in 0..4u8 {
            b.extend((0..32u8).map(|l| (l % 16) | (c << 4)));
        }
        let y = deq(GgmlType::Q4K, &b, 256);
        for c in 0..4 {
            for l in 0..32 {
                let (s1, m1) = (sc[2 * c] as f32, mn[2 * c] as f32);
                let (s2, m2) = (sc[2 * c + 1] as f32, mn[2 * c + 1] as f32);
                assert_eq!(y[c * 64 + l], 0.5 * s1 * (l % 16) as f32 - 0.125 * m1);
                assert_eq!(y[c * 64 + 32 + l], 0.5 * s2 * c as f32 - 0.125 * m2);
            }
        }
    }

    #[test]
    fn q5_k() {
        let sc = [3; 8];
        let mn = [1; 8];
        let mut b = f16b(1.0).to_vec();
        b.extend(f16b(0.5));
        b.extend(pack_k4(sc, mn));
        // qh: element c*64 + l (low half) uses bit 2c, c*64+32+l uses bit 2c+1.
        // set bit 0 for l even, bit 3 for every l
        b.extend((0..32u8).map(|l| if l % 2 == 0 { 0x01 | 0x08 } else { 0x08 }));
        b.extend([0x21u8; 128]); // low nibble 1, high nibble 2
        let y = deq(GgmlType::Q5K, &b, 256);
        for c in 0..4 {
            for l in 0..32 {
                let hi_lo = if c == 0 && l % 2 == 0 { 16.0 } else { 0.0 };
                let hi_hi = if c == 1 { 16.0 } else { 0.0 };
                assert_eq!(y[c * 64 + l], 3.0 * (1.0 + hi_lo) - 0.5, "c={c} l={l}");
                assert_eq!(y[c * 64 + 32 + l], 3.0 * (2.0 + hi_hi) - 0.5, "c={c} l={l}");
            }
        }
    }

    #[test]
    fn q6_k() {
        // ql: first half bytes 0..32 = 0x21 (q1 low 1, q3 low 2), 32..64 = 0x43 (q2 3, q4 4)
        let mut ql = [0u8; 128];
        for half in 0..2 {
            ql[half * 64..half * 64 + 32].fill(0x21);
            ql[half * 64 + 32..half * 64 + 64].fill(0x43);
        }
        // qh byte = bits (q1:1, q2:2, q3:0, q4:3) -> 0b11_00_10_01
        let qh = [0b1100_1001u8; 64];
        let scales: [i8; 16] = [1, -2, 3, -4, 5, -6, 7, -8, 2, 2, 2, 2, -1, -1, -1, -1];
        let mut b = ql.to_vec();
        b.extend(qh);
        b.extend(scales.iter().map(|&s| s as u8));
        b.extend(f16b(0.5));
        let y = deq(GgmlType::Q6K, &b, 256);
        let q = [1 + 16 - 32, 3 + 32 - 32, 2 - 32, 4 + 48 - 32];
        for half in 0..2 {
            for l in 0..32 {
                for (k, qk) in q.iter().enumerate() {
                    let s = scales[half * 8 + l / 16 + 2 * k] as f32;
                    assert_eq!(y[half * 128 + 32 * k + l], 0.5 * s * *qk as f32);
                }
            }
        }
    }

    #[test]
    fn q2_k() {
        let mut scales = [0u8; 16];
        for (i, s) in scales.iter_mut().enumerate() {
            *s = (i as u8 % 16) | (((15 - i) as u8) << 4);
        }
        // qs byte value = 0b11_10_01_00: shift 0 -> 0, 2 -> 1, 4 -> 2, 6 -> 3
        let mut b = scales.to_vec();
        b.extend([0b1110_0100u8; 64]);
        b.extend(f16b(0.5));
        b.extend(f16b(0.25));
        let y = deq(GgmlType::Q2K, &b, 256);
        for i in 0..256 {
            let group = i / 16; // scale index
            let j = (i % 128) / 32; // shift step
            let s = &scales[group];
            let want = 0.5 * (s & 15) as f32 * j as f32 - 0.25 * (s >> 4) as f32;
            assert_eq!(y[i], want, "i={i}");
        }
    }

    #[test]
    fn q3_k() {
        // scale i (6-bit, then minus 32): choose sc6[i] = 32 + i - 8 -> effective i - 8
        let sc6: Vec<u8> = (0..16).map(|i| (32 + i - 8) as u8).collect();
        let mut s = [0u8; 12];
        for i in 0..16 {
            let lo = sc6[i] & 15;
            let hi = sc6[i] >> 4;
            if i < 8 {
                s[i] |= lo;
            } else {
                s[i - 8] |= lo << 4;
            }
            s[8 + i % 4] |= hi << (2 * (i / 4));
        }
        assert_eq!(
            q3k_scales(&s).to_vec(),
            (0..16).map(|i| i as i8 - 8).collect::<Vec<_>>()
        );
        // hmask: bit m (shift step j of half) set only for even k -> subtract 0, else 4
        let hmask: Vec<u8> = (0..32)
            .map(|k| if k % 2 == 0 { 0xFF } else { 0x00 })
            .collect();
        let mut b = hmask.clone();
        b.extend([0b1110_0100u8; 64]); // low bits 0,1,2,3 for shifts 0,2,4,6
        b.extend(s);
        b.extend(f16b(2.0));
        let y = deq(GgmlType::Q3K, &b, 256);
        for i in 0..256 {
            let group = i / 16;
            let j = (i % 128) / 32;
            let k = i % 32;
            let sub = if k % 2 == 0 { 0 } else { 4 };
            let want = 2.0 * (group as f32 - 8.0) * (j as i32 - sub) as f32;
            assert_eq!(y[i], want, "i={i}");
        }
    }

    #[test]
    fn floats_and_errors() {
        let b: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(deq(GgmlType::F32, &b, 2), vec![1.5, -2.0]);
        let b: Vec<u8> = [f16b(0.1), f16b(-3.0)].concat();
        assert_eq!(
            deq(GgmlType::F16, &b, 2),
            vec![f16::from_f32(0.1).to_f32(), -3.0]
        );
        let b: Vec<u8> = [bf16::from_f32(1.0e30), bf16::from_f32(-0.5)]
            .iter()
            .flat_map(|v| v.to_bits().to_le_bytes())
            .collect();
        assert_eq!(
            deq(GgmlType::Bf16, &b, 2),
            vec![bf16::from_f32(1.0e30).to_f32(), -0.5]
        );
        let mut out = vec![0f32; 32];
        let e = dequantize("blk.0.x", GgmlType::Q8_0, &[0u8; 33], &mut out).unwrap_err();
        assert!(e.to_string().contains("blk.0.x") && e.to_string().contains("34"));
        let e = dequantize(
            "blk.1.y",
            GgmlType::Iq2Xxs,
            &[0u8; 66],
            &mut vec![0f32; 256],
        )
        .unwrap_err();
        assert!(e.to_string().contains("blk.1.y") && e.to_string().contains("IQ2_XXS"));
    }

    #[test]
    fn many_blocks_parallel_matches_serial() {
        // 3000 Q8_0 blocks (crosses BLOCKS_PER_TASK) with distinct scales
        let mut b = Vec::new();
        for i in 0..3000u32 {
            b.extend(f16b((i % 97) as f32 * 0.01));
            b.extend((0..32).map(|j| ((i + j) % 256) as u8));
        }
        let y = deq(GgmlType::Q8_0, &b, 3000 * 32);
        for i in [0usize, 1023, 1024, 2999] {
            let d = f16::from_f32((i % 97) as f32 * 0.01).to_f32();
            for j in 0..32 {
                let q = ((i as u32 + j as u32) % 256) as u8 as i8;
                assert_eq!(y[i * 32 + j], q as f32 * d);
            }
        }
    }
}
