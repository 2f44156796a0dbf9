//! One forward step of a `BackendModel`: the buffers it runs in (`StepBuffers`, sized for the
//! step's rows) and the ops it queues (`BackendModel::run_step`). Nothing inside allocates or
//! copies between host and device, so a decode step can be recorded once and replayed
//! (`DecodeGraphs`, a CUDA graph per batch size).

use crate::backend::Backend;
use crate::error::{Error, Result};

use super::{BackendCache, BackendModel, Group};

/// Every buffer one step of `rows` token rows, `last` of them producing logits, reads or
/// writes: the inputs (written by `write_inputs`), the activations, the logits and the
/// device-side greedy picks. Buffers only some paths use are empty when no layer takes them.
pub struct StepBuffers<B: Backend> {
    pub rows: usize,
    pub last: usize,
    ids: B::Buf<u32>,
    slots: B::Buf<u32>,
    positions: B::Buf<u32>,
    last_rows: B::Buf<u32>,
    h: B::Buf<f32>,
    a: B::Buf<f32>,
    a16: B::Buf<u16>,
    q: B::Buf<f32>,
    qn: B::Buf<f32>,
    k: B::Buf<f32>,
    kn: B::Buf<f32>,
    v: B::Buf<f32>,
    attn: B::Buf<f32>,
    attn16: B::Buf<u16>,
    o: B::Buf<f32>,
    qkv: B::Buf<f32>,
    gu: B::Buf<f32>,
    gate: B::Buf<f32>,
    up: B::Buf<f32>,
    act: B::Buf<f32>,
    act16: B::Buf<u16>,
    last_h: B::Buf<f32>,
    normed: B::Buf<f32>,
    normed16: B::Buf<u16>,
    /// [last, vocab].
    pub logits: B::Buf<f32>,
    /// `Backend::argmax` of the logits: token and margin per last row.
    pub pick: B::Buf<u32>,
    pub margin: B::Buf<f32>,
}

impl<B: Backend> StepBuffers<B> {
    pub fn new(
        b: &B,
        model: &BackendModel<B>,
        rows: usize,
        last: usize,
        max_len: usize,
    ) -> Result<Self> {
        let shape = model.attn_shape(max_len);
        let (t, qd, kvd, hid, inter) = (
            rows,
            shape.q_width(),
            shape.kv_width(),
            model.dims.hidden,
            model.intermediate,
        );
        let fuse_ops = model.fuse_ops;
        let layers = &model.layers;
        let sized = |needed: bool, len: usize| if needed { len } else { 0 };
        let unfused_qk_norm = layers
            .iter()
            .any(|l| l.qk_norm.is_some() && !(fuse_ops && l.qkv.is_fused()));
        let any_fused_qkv = layers.iter().any(|l| l.qkv.is_fused());
        let any_fused_gu = layers.iter().any(|l| l.gate_up.is_fused());
        let all_fused_gu = layers.iter().all(|l| l.gate_up.is_fused());
        Ok(StepBuffers {
            rows,
            last,
            ids: b.zeros(t)?,
            slots: b.zeros(t)?,
            positions: b.zeros(t)?,
            last_rows: b.zeros(last)?,
            h: b.zeros(t * hid)?,
            a: b.zeros(sized(!fuse_ops, t * hid))?,
            a16: b.zeros(t * hid)?,
            q: b.zeros(t * qd)?,
            qn: b.zeros(sized(unfused_qk_norm, t * qd))?,
            k: b.zeros(t * kvd)?,
            kn: b.zeros(sized(unfused_qk_norm, t * kvd))?,
            v: b.zeros(t * kvd)?,
            attn: b.zeros(t * qd)?,
            attn16: b.zeros(t * qd)?,
            o: b.zeros(t * hid)?,
            qkv: b.zeros(sized(any_fused_qkv, t * (qd + 2 * kvd)))?,
            gu: b.zeros(sized(any_fused_gu, t * 2 * inter))?,
            gate: b.zeros(sized(!all_fused_gu, t * inter))?,
            up: b.zeros(sized(!all_fused_gu, t * inter))?,
            act: b.zeros(sized(!(fuse_ops && all_fused_gu), t * inter))?,
            act16: b.zeros(t * inter)?,
            last_h: b.zeros(last * hid)?,
            normed: b.zeros(last * hid)?,
            normed16: b.zeros(last * hid)?,
            logits: b.zeros(last * model.dims.vocab)?,
            pick: b.zeros(last)?,
            margin: b.zeros(last)?,
        })
    }

    /// Copies a step's inputs into the buffers `run_step` reads (checked by the caller:
    /// `BackendModel::forward_on_device` and `generate_on`).
    pub fn write_inputs(
        &mut self,
        b: &B,
        tokens: &[u32],
        slots: &[u32],
        positions: &[u32],
        last_rows: &[u32],
    ) -> Result<()> {
        if tokens.len() != self.rows || last_rows.len() != self.last {
            return Err(Error::Runner {
                msg: format!(
                    "step buffers for {} rows ({} last) given {} tokens ({} last rows)",
                    self.rows,
                    self.last,
                    tokens.len(),
                    last_rows.len()
                ),
            });
        }
        b.write(&mut self.ids, tokens)?;
        b.write(&mut self.slots, slots)?;
        b.write(&mut self.positions, positions)?;
        b.write(&mut self.last_rows, last_rows)
    }
}

impl<B: Backend> BackendModel<B> {
    /// Queues one forward step over `step`'s inputs: embedding, every layer (writing the
    /// rows' keys and values into `cache`), the final norm and the logits of the last rows,
    /// and with `picks` the greedy picks (`step.pick`, `step.margin`).
    pub fn run_step(
        &self,
        b: &B,
        cache: &mut BackendCache<B>,
        step: &mut StepBuffers<B>,
        picks: bool,
    ) -> Result<()> {
        let d = &self.dims;
        let t = step.rows;
        let shape = self.attn_shape(cache.max_len);
        let (qd, kvd, hid, inter) = (
            shape.q_width(),
            shape.kv_width(),
            d.hidden,
            self.intermediate,
        );
        let fuse_ops = self.fuse_ops;
        let StepBuffers {
            rows: _,
            last: n,
            ids,
            slots: sl,
            positions: pos,
            last_rows,
            h,
            a,
            a16,
            q,
            qn,
            k,
            kn,
            v,
            attn,
            attn16,
            o,
            qkv,
            gu,
            gate,
            up,
            act,
            act16,
            last_h,
            normed,
            normed16,
            logits,
            pick,
            margin,
        } = step;
        let n = *n;
        b.embedding(&self.embed, self.half, hid, ids, h)?;
        if let (true, Some(first)) = (fuse_ops, self.layers.first()) {
            // Later layers get their normed input from the previous layer's last add.
            b.add_rms_norm_half(
                &mut *h,
                None,
                &first.input_norm,
                d.eps,
                self.half,
                &mut *a16,
            )?;
        }
        for (li, layer) in self.layers.iter().enumerate() {
            if !fuse_ops {
                b.rms_norm(&*h, &layer.input_norm, d.eps, &mut *a)?;
                b.to_half(&*a, self.half, &mut *a16)?;
            }
            let qk_norm = layer.qk_norm.as_ref().map(|(qw, kw)| (qw, kw));
            let (qa, ka) = match &layer.qkv {
                Group::Fused(lin) if fuse_ops => {
                    // One launch for q|k|v, one for the split, RoPE and QK-norm.
                    lin.forward(b, &*a16, t, &mut *qkv)?;
                    b.qkv_rope_norm(
                        &*qkv,
                        &*pos,
                        &self.inv_freq,
                        &shape,
                        qk_norm,
                        d.eps,
                        &mut *q,
                        &mut *k,
                        &mut *v,
                    )?;
                    (&*q, &*k)
                }
                group => {
                    match group {
                        Group::Fused(lin) => {
                            // One launch for q|k|v, then each part copied out dense
                            // ([t, qd + 2 kvd]).
                            lin.forward(b, &*a16, t, &mut *qkv)?;
                            let width = qd + 2 * kvd;
                            b.split_cols(&*qkv, t, width, 0, &mut *q)?;
                            b.split_cols(&*qkv, t, width, qd, &mut *k)?;
                            b.split_cols(&*qkv, t, width, qd + kvd, &mut *v)?;
                        }
                        Group::Separate(ls) => {
                            for (lin, out) in ls.iter().zip([&mut *q, &mut *k, &mut *v]) {
                                lin.forward(b, &*a16, t, out)?;
                            }
                        }
                    }
                    b.rope(&mut *q, &*pos, &self.inv_freq, d.head_dim)?;
                    b.rope(&mut *k, &*pos, &self.inv_freq, d.head_dim)?;
                    match qk_norm {
                        // HunYuan: RMSNorm over each head AFTER RoPE.
                        Some((qw, kw)) => {
                            b.rms_norm(&*q, qw, d.eps, &mut *qn)?;
                            b.rms_norm(&*k, kw, d.eps, &mut *kn)?;
                            (&*qn, &*kn)
                        }
                        None => (&*q, &*k),
                    }
                }
            };
            b.kv_append(
                ka,
                &*v,
                &*sl,
                &*pos,
                &shape,
                self.half,
                &mut cache.k[li],
                &mut cache.v[li],
            )?;
            b.attention(
                qa,
                &cache.k[li],
                &cache.v[li],
                self.half,
                &*sl,
                &*pos,
                &shape,
                &mut *attn,
            )?;
            b.to_half(&*attn, self.half, &mut *attn16)?;
            layer.o.forward(b, &*attn16, t, &mut *o)?;
            if fuse_ops {
                b.add_rms_norm_half(
                    &mut *h,
                    Some(&*o),
                    &layer.post_norm,
                    d.eps,
                    self.half,
                    &mut *a16,
                )?;
            } else {
                b.add(&mut *h, &*o)?;
                b.rms_norm(&*h, &layer.post_norm, d.eps, &mut *a)?;
                b.to_half(&*a, self.half, &mut *a16)?;
            }
            match &layer.gate_up {
                Group::Fused(lin) if fuse_ops => {
                    lin.forward(b, &*a16, t, &mut *gu)?;
                    b.silu_mul_fused_half(&*gu, inter, self.half, &mut *act16)?;
                }
                Group::Fused(lin) => {
                    lin.forward(b, &*a16, t, &mut *gu)?;
                    b.silu_mul_fused(&*gu, inter, &mut *act)?;
                    b.to_half(&*act, self.half, &mut *act16)?;
                }
                Group::Separate(ls) => {
                    for (lin, out) in ls.iter().zip([&mut *gate, &mut *up]) {
                        lin.forward(b, &*a16, t, out)?;
                    }
                    b.silu_mul(&*gate, &*up, &mut *act)?;
                    b.to_half(&*act, self.half, &mut *act16)?;
                }
            }
            layer.down.forward(b, &*act16, t, &mut *o)?;
            match self.layers.get(li + 1) {
                Some(next) if fuse_ops => b.add_rms_norm_half(
                    &mut *h,
                    Some(&*o),
                    &next.input_norm,
                    d.eps,
                    self.half,
                    &mut *a16,
                )?,
                _ => b.add(&mut *h, &*o)?,
            }
        }
        b.gather_rows(h, hid, last_rows, last_h)?;
        b.rms_norm(last_h, &self.final_norm, d.eps, normed)?;
        b.to_half(normed, self.half, normed16)?;
        match &self.lm_head {
            Some(head) => head.forward(b, normed16, n, logits)?,
            None => b.gemm(normed16, &self.embed, self.half, n, d.vocab, hid, logits)?,
        }
        if picks {
            b.argmax(logits, d.vocab, pick, margin)?;
        }
        Ok(())
    }
}
