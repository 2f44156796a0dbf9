//! Calibrated GPTQ, layer by layer (Frantar et al. 2022, "GPTQ: Accurate Post-Training
//! Quantization for Generative Pre-trained Transformers", §4 and Algorithm 1; the sequential
//! layer loop follows the structure of IST-DASLab/gptq `llama.py`, no code taken).
//!
//! For each decoder layer i, with X the calibration hidden states entering it:
//! 1. H = 2/n Σ xxᵀ of the q/k/v input (RMSNorm(X)); solve q, k, v.
//! 2. Attention with the *quantized* q/k/v; its output is o_proj's input: H, solve o.
//! 3. Residual; RMSNorm; H of the gate/up input; solve gate, up.
//! 4. silu(gate)·up with the quantized gate/up: H of down's input; solve down.
//! 5. The layer's output with every linear quantized is layer i+1's input.
//!
//! That is "true sequential" order: each group is solved against inputs that already carry
//! the error of the groups before it, so later linears compensate for it. After each layer
//! its packed tensors go to the resume store; the output files are assembled from the store
//! once every layer is done.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::{json, Value};

use crate::calib::{self, CalibOptions, CalibSet, Corpus, Renderer};
use crate::dtype::{to_f32, DType};
use crate::error::{Error, Result};
use crate::export::gptq_v1::{self, PackedGptq};
use crate::manifest::{CalibratedError, CalibrationRecord, TensorRecord};
use crate::model::arch::LinearKind;
use crate::model::Checkpoint;
use crate::progress::Progress;
use crate::quant::calib_forward::{
    add_residual, attention, check_finite, load_layer, mlp_act, normed, ForwardDims, LayerWeights,
};
use crate::quant::gptq::{
    gptq_quantize, output_errors, ActOrder, GptqConfig, GptqOutcome, Hessian,
};
use crate::quant::grid::GridFit;
use crate::quant::pipeline::Timer;
use crate::quant::resume::{LinearResult, ResumeStore};
use crate::quant::rtn::Rtn;
use crate::quant::stats::ErrorStats;
use crate::quant::{QuantMethod, QuantScheme, QuantizedLinear, Weight};
use crate::runner::prompt::ChatTemplate;
use crate::runner::tokenizer::TextTokenizer;

/// Tokens per forward chunk (rounded to whole samples): bounds the activation memory of
/// one step and fixes the order Hessians are accumulated in.
const CHUNK_TOKENS: usize = 4096;
/// Largest size of the stored down_proj inputs of one layer; above it they are recomputed.
const MAX_STORED_ACT_BYTES: usize = 2 << 30;

/// Flags of `--method gptq`.
#[derive(Clone, Debug)]
pub struct GptqSettings {
    /// `--calib`: a .jsonl/.txt file or a directory of them; `None` = the bundled corpus.
    pub calib: Option<PathBuf>,
    pub calib_opts: CalibOptions,
    /// `--damp`: relative damping of the Hessian diagonal.
    pub damp: f64,
    pub act_order: ActOrder,
    /// `--clip-search`: how each group's range is fitted.
    pub grid_fit: GridFit,
    /// `--resume`: continue a compatible partial output instead of starting over.
    pub resume: bool,
    /// Run the layer loop through the `Backend` ops (gptq_backend.rs) even on the CPU
    /// backend; `--device cuda` always does. For tests of that loop on machines without a
    /// GPU; the CLI leaves it off, so `--device cpu` is the f64 CPU pipeline.
    pub backend_loop: bool,
}

impl GptqSettings {
    pub fn check(&self) -> Result<()> {
        self.calib_opts.check()?;
        if !(self.damp.is_finite() && self.damp >= 0.0 && self.damp < 1.0) {
            return Err(Error::flag(
                "--damp",
                format!("{} is outside [0, 1); the usual value is 0.01", self.damp),
            ));
        }
        Ok(())
    }

    pub(crate) fn config(&self, scheme: QuantScheme) -> GptqConfig {
        let mut cfg = GptqConfig::new(scheme);
        cfg.damp = self.damp;
        cfg.act_order = self.act_order;
        cfg.grid_fit = self.grid_fit;
        cfg
    }
}

pub fn act_order_name(a: ActOrder) -> &'static str {
    match a {
        ActOrder::None => "none",
        ActOrder::Permute => "permute",
        ActOrder::StaticGroups => "static-groups",
    }
}

/// The finished layer loop: where the packed layers are and what the manifest records.
pub struct CalibratedRun {
    pub store: ResumeStore,
    pub record: CalibrationRecord,
}

/// Loads the corpus and packs the calibration batch for this model.
pub fn calibration_batch(ckpt: &Checkpoint, settings: &GptqSettings) -> Result<(Corpus, CalibSet)> {
    let corpus = match &settings.calib {
        Some(path) => Corpus::load(path)?,
        None => Corpus::bundled()?,
    };
    let tokenizer = TextTokenizer::from_dir(&ckpt.dir)?;
    let template = ChatTemplate::detect(&ckpt.dir, ckpt.arch.kind, Some(&tokenizer))?;
    let set = calib::build(
        &corpus,
        &Renderer {
            tokenizer: &tokenizer,
            template: &template,
        },
        &settings.calib_opts,
    )?;
    Ok((corpus, set))
}

/// Fault injection for the resume tests: `HYQ_FAULT=<point>` kills the process (SIGABRT, no
/// unwinding, no cleanup: what `kill -9` does) when it reaches `<point>`.
pub(crate) fn fault_point(point: &str) {
    if std::env::var("HYQ_FAULT").is_ok_and(|p| p == point) {
        eprintln!("HYQ_FAULT: aborting at {point}");
        std::process::abort();
    }
}

/// Everything the output depends on, for the resume check.
pub(crate) fn fingerprint(
    ckpt: &Checkpoint,
    scheme: &QuantScheme,
    settings: &GptqSettings,
    corpus: &Corpus,
) -> Result<Value> {
    let identity = ckpt.identity()?;
    Ok(json!({
        "tool": format!("hy-quant {}", env!("CARGO_PKG_VERSION")),
        "model_config_sha256": identity["model_config_sha256"],
        "model_shards": identity["model_shards"],
        "bits": scheme.bits,
        "group_size": scheme.group_size_i64(),
        "sym": scheme.sym,
        "damp": settings.damp,
        "act_order": act_order_name(settings.act_order),
        "grid_fit": settings.grid_fit,
        "calib_files": corpus.files.iter().map(|(_, sha)| sha.clone()).collect::<Vec<_>>(),
        "calib_samples": settings.calib_opts.samples,
        "calib_seqlen": settings.calib_opts.seqlen,
        "seed": settings.calib_opts.seed,
    }))
}

/// Embedding rows of the calibration tokens: [samples * seqlen, hidden].
pub(crate) fn embed(ckpt: &Checkpoint, tokens: &[u32]) -> Result<Vec<f32>> {
    let name = ckpt.arch.embed_tokens().name;
    let view = ckpt.tensor(&name)?;
    let dtype = view.float_dtype()?;
    let hidden = ckpt.config.hidden_size;
    let rows = view.info.shape.first().copied().unwrap_or(0);
    if view.info.shape != [rows, hidden] {
        return Err(Error::tensor(
            &name,
            format!(
                "has shape {:?}, expected [vocab, {hidden}]",
                view.info.shape
            ),
        ));
    }
    if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= rows) {
        return Err(Error::Tokenizer {
            path: ckpt.dir.join("tokenizer.json"),
            msg: format!(
                "calibration token id {bad} is beyond the {rows} embedding rows: tokenizer and model do not match"
            ),
        });
    }
    let row_bytes = hidden * dtype.size();
    let mut h = vec![0f32; tokens.len() * hidden];
    h.par_chunks_mut(hidden)
        .zip(tokens.par_iter())
        .for_each(|(dst, &t)| {
            let src = &view.bytes[t as usize * row_bytes..(t as usize + 1) * row_bytes];
            dst.copy_from_slice(&to_f32(dtype, src));
        });
    ckpt.release(&name);
    check_finite(&h, 0, "token embeddings")?;
    Ok(h)
}

/// Solves groups of linears against their Hessian and swaps in the quantized weights.
pub(crate) struct GroupSolver {
    pub(crate) layer: usize,
    pub(crate) scheme: QuantScheme,
    pub(crate) cfg: GptqConfig,
    pub(crate) scale_dtype: DType,
    pub(crate) prefixes: Vec<(LinearKind, String)>,
    pub(crate) results: Vec<LinearResult>,
    /// Debugging / reference checks: write each group's calibration inputs and original
    /// weights here (see `dump_target`).
    pub(crate) dump: Option<PathBuf>,
}

/// `HYQ_DUMP_LAYER_INPUTS=DIR:L1,L2,...` makes the GPTQ run write, for the listed layers,
/// every group's calibration inputs X and original weights to `DIR/layerL.GROUP.safetensors`
/// (`scripts/check_gptq_real_layers.py` runs the PyTorch reference on them).
fn dump_target(layer: usize) -> Option<PathBuf> {
    let spec = std::env::var("HYQ_DUMP_LAYER_INPUTS").ok()?;
    let (dir, layers) = spec.rsplit_once(':')?;
    layers
        .split(',')
        .any(|l| l.trim().parse::<usize>().ok() == Some(layer))
        .then(|| PathBuf::from(dir))
}

/// The f32 weight a GPTQ loader reconstructs from packed tensors.
pub(crate) fn dequantize_packed(
    name: &str,
    scheme: &QuantScheme,
    packed: &PackedGptq,
    scale_dtype: DType,
    out_features: usize,
    in_features: usize,
) -> Result<Vec<f32>> {
    let scales = to_f32(scale_dtype, &packed.scales);
    let ql: QuantizedLinear = gptq_v1::unpack(
        name,
        scheme,
        &packed.qweight,
        &packed.qzeros,
        &scales,
        &packed.g_idx,
        out_features,
        in_features,
    )?;
    Ok(ql.dequantize())
}

impl GroupSolver {
    /// The solver of `layer`, results empty.
    pub(crate) fn new(
        ckpt: &Checkpoint,
        layer: usize,
        scheme: &QuantScheme,
        settings: &GptqSettings,
        scale_dtype: DType,
        dump: Option<PathBuf>,
    ) -> Self {
        GroupSolver {
            layer,
            scheme: *scheme,
            cfg: settings.config(*scheme),
            scale_dtype,
            prefixes: ckpt
                .arch
                .layer_linears(layer)
                .into_iter()
                .map(|s| (s.kind, s.prefix))
                .collect(),
            results: Vec::new(),
            dump,
        }
    }

    fn dumping(&self) -> bool {
        self.dump.is_some()
    }

    /// Writes the group's inputs `x` ([rows, in]) and original weights.
    fn dump_group(&self, kinds: &[LinearKind], x: &[f32], lw: &LayerWeights) -> Result<()> {
        use safetensors::tensor::{Dtype, TensorView};
        let Some(dir) = &self.dump else {
            return Ok(());
        };
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let k = lw.linear(kinds[0]).in_features;
        let mut owned = vec![(
            "x".to_string(),
            vec![x.len() / k, k],
            bytemuck::cast_slice::<f32, u8>(x).to_vec(),
        )];
        for &kind in kinds {
            let l = lw.linear(kind);
            owned.push((
                format!("{}.weight", self.prefix(kind)),
                vec![l.out_features, l.in_features],
                bytemuck::cast_slice::<f32, u8>(&l.weight).to_vec(),
            ));
        }
        let views: Vec<(String, TensorView<'_>)> = owned
            .iter()
            .map(|(n, s, b)| {
                (
                    n.clone(),
                    TensorView::new(Dtype::F32, s.clone(), b).expect("sizes match"),
                )
            })
            .collect();
        let group = format!("{:?}", kinds[0].input_group()).to_lowercase();
        let path = dir.join(format!("layer{}.{group}.safetensors", self.layer));
        let bytes =
            safetensors::tensor::serialize(views, None).map_err(|e| Error::Safetensors {
                path: path.clone(),
                msg: e.to_string(),
            })?;
        std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))
    }

    fn prefix(&self, kind: LinearKind) -> &str {
        &self
            .prefixes
            .iter()
            .find(|(k, _)| *k == kind)
            .expect("every kind has a prefix")
            .1
    }

    fn solve(
        &mut self,
        kinds: &[LinearKind],
        h: &Hessian,
        lw: &mut LayerWeights,
        clock: &mut Timer,
    ) -> Result<()> {
        let cfg = self.cfg.clone();
        self.solve_with(
            kinds,
            lw,
            clock,
            |w| gptq_quantize(w, h, &cfg),
            |w, candidates| Ok(output_errors(w, candidates, h)),
        )
    }

    /// `solve` with the GPTQ step and the output-error statistics (`gptq::output_errors`
    /// of the candidates against the original weight) supplied, a backend's.
    pub(crate) fn solve_with(
        &mut self,
        kinds: &[LinearKind],
        lw: &mut LayerWeights,
        clock: &mut Timer,
        mut gptq: impl FnMut(&Weight<'_>) -> Result<GptqOutcome>,
        mut errors: impl FnMut(&[f32], &[&[f32]]) -> Result<Vec<f64>>,
    ) -> Result<()> {
        for &kind in kinds {
            let prefix = self.prefix(kind).to_string();
            let name = format!("{prefix}.weight");
            let lin = lw.linear(kind);
            let (n_out, k_in) = (lin.out_features, lin.in_features);
            let weight = Weight {
                name: &name,
                data: &lin.weight,
                out_features: n_out,
                in_features: k_in,
                scale_dtype: self.scale_dtype,
            };
            let t = std::time::Instant::now();
            let outcome = gptq(&weight)?;
            // A backend that reports where its solve went (the GPU's device parts) gets them
            // as separate phases; the remainder stays "solve".
            let parts: f64 = outcome.phases.iter().map(|p| p.1).sum();
            for &(phase, secs) in &outcome.phases {
                clock.add(phase, secs);
            }
            clock.add("solve", (t.elapsed().as_secs_f64() - parts).max(0.0));
            let packed = clock.time("pack", || gptq_v1::pack(&outcome.linear, self.scale_dtype));
            // The forward continues with exactly what a loader will reconstruct.
            let deq = clock.time("dequantize", || {
                dequantize_packed(&name, &self.scheme, &packed, self.scale_dtype, n_out, k_in)
            })?;
            let rtn = clock.time("stats: rtn", || -> Result<_> {
                Ok(Rtn {
                    scheme: self.scheme,
                }
                .quantize(&weight)?
                .dequantize())
            })?;
            let errs = clock.time("stats: output error", || errors(&lin.weight, &[&deq, &rtn]))?;
            let error = clock.time("stats: weight error", || {
                ErrorStats::between(&lin.weight, &deq)
            });
            let calibrated = CalibratedError {
                output_rel_error: errs[0].sqrt(),
                rtn_output_rel_error: errs[1].sqrt(),
                damp_used: outcome.damp_used,
                damp_retries: outcome.retries,
            };
            lw.linear_mut(kind).weight = deq;
            self.results.push(LinearResult {
                prefix,
                packed,
                record: TensorRecord {
                    name,
                    shape: vec![n_out, k_in],
                    error,
                    calibrated: Some(calibrated),
                },
            });
        }
        Ok(())
    }
}

/// Runs one decoder layer over the calibration batch `h` ([rows, hidden], whole samples of
/// `seqlen` rows), in place. With a solver, each group of linears is quantized as soon as
/// its inputs are known (true-sequential); without one, the layer's current weights are used
/// as they are (replaying finished layers on resume). Both paths do the same arithmetic in
/// the same chunks, so their outputs are bit-identical.
fn run_layer(
    dims: &ForwardDims,
    lw: &mut LayerWeights,
    h: &mut [f32],
    seqlen: usize,
    mut solver: Option<&mut GroupSolver>,
    need_output: bool,
    clock: &mut Timer,
) -> Result<()> {
    let (hidden, layer, eps) = (dims.hidden, lw.layer, dims.eps);
    let chunk = (CHUNK_TOKENS / seqlen).max(1) * seqlen * hidden;
    let dumping = solver.as_ref().is_some_and(|s| s.dumping());
    let mut dumped: Vec<f32> = Vec::new();

    if let Some(s) = solver.as_deref_mut() {
        let mut hs = Hessian::new(hidden);
        for c in h.chunks(chunk) {
            let a = clock.time("forward", || normed(c, &lw.input_norm, eps));
            check_finite(&a, layer, "attention input (after input_layernorm)")?;
            clock.time("hessian", || hs.add_batch(&a, a.len() / hidden));
            if dumping {
                dumped.extend_from_slice(&a);
            }
        }
        let qkv = [LinearKind::Q, LinearKind::K, LinearKind::V];
        s.dump_group(&qkv, &std::mem::take(&mut dumped), lw)?;
        s.solve(&qkv, &hs, lw, clock)?;
    }

    let mut attn = Vec::new();
    let mut h_o = solver.is_some().then(|| Hessian::new(dims.q_dim()));
    for c in h.chunks(chunk) {
        let at = clock.time("forward", || {
            let a = normed(c, &lw.input_norm, eps);
            attention(dims, lw, &a, seqlen)
        });
        check_finite(&at, layer, "attention output")?;
        if let Some(hs) = h_o.as_mut() {
            clock.time("hessian", || hs.add_batch(&at, at.len() / dims.q_dim()));
        }
        attn.push(at);
    }
    if let (Some(s), Some(hs)) = (solver.as_deref_mut(), h_o.as_ref()) {
        if dumping {
            s.dump_group(&[LinearKind::O], &attn.concat(), lw)?;
        }
        s.solve(&[LinearKind::O], hs, lw, clock)?;
    }
    drop(h_o);
    for (c, at) in h.chunks_mut(chunk).zip(&attn) {
        let y = clock.time("forward", || lw.linear(LinearKind::O).forward(at));
        add_residual(c, &y, layer, "attention residual")?;
    }
    drop(attn);

    let mut acts: Vec<Vec<f32>> = Vec::new();
    if let Some(s) = solver {
        let mut hs = Hessian::new(hidden);
        for c in h.chunks(chunk) {
            let m = clock.time("forward", || normed(c, &lw.post_norm, eps));
            check_finite(&m, layer, "MLP input (after post_attention_layernorm)")?;
            clock.time("hessian", || hs.add_batch(&m, m.len() / hidden));
            if dumping {
                dumped.extend_from_slice(&m);
            }
        }
        let gate_up = [LinearKind::Gate, LinearKind::Up];
        s.dump_group(&gate_up, &std::mem::take(&mut dumped), lw)?;
        s.solve(&gate_up, &hs, lw, clock)?;
        drop(hs);
        let store = need_output && h.len() / hidden * dims.intermediate * 4 <= MAX_STORED_ACT_BYTES;
        let mut hs = Hessian::new(dims.intermediate);
        for c in h.chunks(chunk) {
            let act = clock.time("forward", || mlp_act(lw, &normed(c, &lw.post_norm, eps)));
            check_finite(&act, layer, "MLP activation")?;
            clock.time("hessian", || {
                hs.add_batch(&act, act.len() / dims.intermediate)
            });
            if dumping {
                dumped.extend_from_slice(&act);
            }
            if store {
                acts.push(act);
            }
        }
        s.dump_group(&[LinearKind::Down], &std::mem::take(&mut dumped), lw)?;
        s.solve(&[LinearKind::Down], &hs, lw, clock)?;
    }
    if need_output {
        for (i, c) in h.chunks_mut(chunk).enumerate() {
            let y = clock.time("forward", || {
                let act = match acts.get(i) {
                    Some(a) => std::borrow::Cow::Borrowed(a),
                    None => std::borrow::Cow::Owned(mlp_act(lw, &normed(c, &lw.post_norm, eps))),
                };
                lw.linear(LinearKind::Down).forward(&act)
            });
            add_residual(c, &y, layer, "layer output")?;
        }
    }
    Ok(())
}

/// Replaces the linears of `lw` (layer `layer`, original weights) by the quantized weights a
/// finished run stored, as a loader reconstructs them: the input of replaying that layer.
pub(crate) fn restore_quantized_layer(
    ckpt: &Checkpoint,
    store: &ResumeStore,
    layer: usize,
    scheme: &QuantScheme,
    scale_dtype: DType,
    lw: &mut LayerWeights,
) -> Result<()> {
    let stored = store.load_layer(layer)?;
    for spec in ckpt.arch.layer_linears(layer) {
        let r = stored
            .iter()
            .find(|r| r.prefix == spec.prefix)
            .ok_or_else(|| Error::Resume {
                path: store.dir().to_path_buf(),
                msg: format!("progress of layer {layer} lacks {}", spec.prefix),
            })?;
        lw.linear_mut(spec.kind).weight = dequantize_packed(
            &spec.weight_name(),
            scheme,
            &r.packed,
            scale_dtype,
            spec.out_features,
            spec.in_features,
        )?;
    }
    Ok(())
}

/// Quantizes every decoder layer with GPTQ into the resume store under `partial`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_layers(
    ckpt: &Checkpoint,
    scheme: &QuantScheme,
    settings: &GptqSettings,
    scale_dtype: DType,
    partial: &Path,
    progress: &dyn Progress,
    clock: &mut Timer,
) -> Result<CalibratedRun> {
    settings.check()?;
    let (corpus, set) = clock.time("calibration data", || calibration_batch(ckpt, settings))?;
    let fp = fingerprint(ckpt, scheme, settings, &corpus)?;
    let store = ResumeStore::open(partial, &fp, settings.resume)?;
    let n = ckpt.arch.num_layers();
    let done = store.finished_layers(n);
    let dims = ForwardDims::of(&ckpt.arch)?;
    let mut h = clock.time("read", || embed(ckpt, &set.tokens))?;

    let layer_bytes: u64 = (0..n)
        .map(|l| {
            ckpt.arch
                .layer_linears(l)
                .iter()
                .filter_map(|s| {
                    ckpt.info(&s.weight_name())
                        .map(|i| (i.end - i.start) as u64)
                })
                .sum::<u64>()
        })
        .sum::<u64>()
        / n.max(1) as u64;
    progress.begin("gptq", n as u64, layer_bytes * n as u64);
    // With every layer finished there is nothing to replay.
    let replay_until = if done == n { 0 } else { done };
    for layer in 0..n {
        if layer < done && layer >= replay_until {
            progress.step(layer_bytes, &format!("layer {layer} (resumed)"));
            continue;
        }
        let mut lw = clock.time("read", || load_layer(ckpt, layer))?;
        let last = layer + 1 == n;
        if layer < done {
            // Replay a finished layer with its stored quantized weights.
            clock.time("read", || {
                restore_quantized_layer(ckpt, &store, layer, scheme, scale_dtype, &mut lw)
            })?;
            if !last {
                run_layer(&dims, &mut lw, &mut h, set.seqlen, None, true, clock)?;
            }
            progress.step(layer_bytes, &format!("layer {layer} (resumed)"));
            continue;
        }
        let mut solver = GroupSolver::new(
            ckpt,
            layer,
            scheme,
            settings,
            scale_dtype,
            dump_target(layer),
        );
        run_layer(
            &dims,
            &mut lw,
            &mut h,
            set.seqlen,
            Some(&mut solver),
            !last,
            clock,
        )?;
        debug_assert_eq!(solver.layer, layer);
        clock.time("write", || store.save_layer(layer, &solver.results))?;
        fault_point(&format!("after-layer-{layer}"));
        progress.step(layer_bytes, &format!("layer {layer}"));
    }
    progress.end();
    Ok(CalibratedRun {
        store,
        record: calibration_record(&corpus, &set, settings, done),
    })
}

/// The manifest's record of a calibrated run (both layer loops).
pub(crate) fn calibration_record(
    corpus: &Corpus,
    set: &CalibSet,
    settings: &GptqSettings,
    resumed_layers: usize,
) -> CalibrationRecord {
    CalibrationRecord {
        corpus: corpus.files.clone(),
        samples: set.samples,
        seqlen: set.seqlen,
        seed: settings.calib_opts.seed,
        documents: set.documents,
        pairs: set.pairs,
        damp: settings.damp,
        act_order: act_order_name(settings.act_order).into(),
        grid_fit: settings.grid_fit,
        resumed_layers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::synth::{synth, Preset, SynthOptions};
    use crate::progress::Silent;
    use crate::runner::forward::{rms_norm, Model, SeqStep};

    /// The calibration forward (whole sequences, GEMMs, per-head attention) computes the same
    /// hidden states as the runner (KV cache, token by token): checked through the logits.
    #[test]
    fn calibration_forward_matches_the_runner() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tiny");
        synth(
            &SynthOptions {
                preset: Preset::Tiny,
                dtype: DType::BF16,
                seed: 5,
                out: dir.clone(),
                force: false,
            },
            &Silent,
        )
        .unwrap();
        let ckpt = Checkpoint::open(&dir).unwrap();
        let (samples, seqlen) = (2, 40);
        let mut rng = crate::rng::SplitMix64(3);
        let tokens: Vec<u32> = (0..samples * seqlen)
            .map(|_| (rng.next_u64() % 1000) as u32)
            .collect();
        let dims = ForwardDims::of(&ckpt.arch).unwrap();
        let mut h = embed(&ckpt, &tokens).unwrap();
        let mut clock = Timer::new();
        for layer in 0..ckpt.arch.num_layers() {
            let mut lw = load_layer(&ckpt, layer).unwrap();
            run_layer(&dims, &mut lw, &mut h, seqlen, None, true, &mut clock).unwrap();
        }
        let model = Model::load(&ckpt).unwrap();
        let norm = load_vector(&ckpt, "model.norm.weight");
        let head = ckpt
            .tensor("model.embed_tokens.weight")
            .unwrap()
            .to_f32_finite()
            .unwrap();
        for s in 0..samples {
            let mut cache = model.new_cache();
            let ids = &tokens[s * seqlen..(s + 1) * seqlen];
            let want = model
                .forward(&mut [SeqStep {
                    tokens: ids,
                    cache: &mut cache,
                }])
                .unwrap()
                .remove(0);
            let mut last =
                h[((s + 1) * seqlen - 1) * dims.hidden..(s + 1) * seqlen * dims.hidden].to_vec();
            rms_norm(&mut last, &norm, dims.eps);
            let got: Vec<f32> = head
                .chunks(dims.hidden)
                .map(|row| row.iter().zip(&last).map(|(a, b)| a * b).sum())
                .collect();
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = got
                .iter()
                .zip(&want)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                worst <= 1e-4 * scale,
                "sample {s}: max diff {worst} (scale {scale})"
            );
        }
    }

    fn load_vector(ckpt: &Checkpoint, name: &str) -> Vec<f32> {
        ckpt.tensor(name).unwrap().to_f32_finite().unwrap()
    }
}
