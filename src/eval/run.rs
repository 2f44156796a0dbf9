//! `hy-quant eval`: translate test sets with the original and each quantized model (same
//! prompts, greedy), score them against the references, and report quality drift with paired
//! bootstrap confidence intervals, next to size on disk and peak memory.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use serde_json::Value;

use crate::backend::{Device, DeviceChoice};
use crate::error::{Error, IoContext, Result};
use crate::eval::memory;
use crate::eval::metrics::{
    corpus_bleu_stats, corpus_chrf_stats, paired_bootstrap, BleuConfig, BleuTokenizer,
    BootstrapConfig, ChrfConfig, CorpusMetric,
};
use crate::eval::reuse;
use crate::eval::testset::TestSet;
use crate::io::staged_dir::write_file;
use crate::model::{Checkpoint, ModelConfig};
use crate::progress::Progress;
use crate::runner::translator::{Prompt, Translator, VramReport};

pub struct EvalOptions {
    pub original: PathBuf,
    pub quantized: Vec<PathBuf>,
    pub testsets: Vec<PathBuf>,
    /// Source/target language; default from a file name like `name.en-zh.tsv`.
    pub src: Option<String>,
    pub tgt: Option<String>,
    /// First N pairs of each test set.
    pub limit: Option<usize>,
    pub max_new_tokens: usize,
    pub batch: usize,
    pub bootstrap_samples: usize,
    pub seed: u64,
    /// Where eval.json, eval.md and hypotheses go.
    pub out_dir: PathBuf,
    /// Where the decoder runs (each model gets a fresh backend, so its memory peaks are its
    /// own).
    pub device: DeviceChoice,
    /// Reuse hypotheses a previous (possibly interrupted) run wrote into `out_dir` for the
    /// same model files, test set, languages, decoding settings and device.
    pub resume: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Interval {
    pub delta: f64,
    pub lower: f64,
    pub upper: f64,
    pub p_value: f64,
}

impl Interval {
    /// True when the 95% interval of the delta excludes zero.
    pub fn significant(&self) -> bool {
        self.lower > 0.0 || self.upper < 0.0
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct SetResult {
    pub testset: String,
    pub src: String,
    pub tgt: String,
    pub segments: usize,
    pub bleu: f64,
    pub chrf: f64,
    /// Against the original; absent for the original itself.
    pub delta_bleu: Option<Interval>,
    pub delta_chrf: Option<Interval>,
    /// Fraction of segments whose output differs from the original's at all.
    pub changed_fraction: Option<f64>,
    pub generated_tokens: usize,
    pub seconds: f64,
    pub hypotheses_file: String,
    /// Taken from an earlier run's hypotheses (`--resume`) instead of translated now.
    pub reused: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct ModelResult {
    pub label: String,
    pub dir: PathBuf,
    /// "bf16", "gptq int4 g128 sym (rtn)", ...
    pub quantization: String,
    pub bytes_on_disk: u64,
    /// Bytes the runner holds for parameters.
    pub weight_bytes_resident: u64,
    /// Peak RSS of the process while this model was loaded and ran (CPU runner).
    pub peak_rss_bytes: Option<u64>,
    /// Device memory, when the decoder ran on the GPU.
    pub vram: Option<VramReport>,
    pub sets: Vec<SetResult>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    pub bleu_signature: Vec<String>,
    pub chrf_signature: String,
    pub bootstrap_samples: usize,
    pub seed: u64,
    pub device: String,
    /// Why `--device auto` ran on the CPU, when it did.
    pub device_note: Option<String>,
    pub models: Vec<ModelResult>,
}

/// Language pair from a file name like `ddtp.en-zh.tsv`.
pub fn langs_from_name(path: &Path) -> Option<(String, String)> {
    let stem = path.file_stem()?.to_str()?;
    let pair = stem.rsplit('.').next()?;
    let (s, t) = pair.split_once('-')?;
    let ok = |x: &str| (2..=3).contains(&x.len()) && x.chars().all(|c| c.is_ascii_lowercase());
    (ok(s) && ok(t)).then(|| (s.to_string(), t.to_string()))
}

/// sacrebleu's recommended BLEU tokenizer for a target language.
pub fn bleu_tokenizer_for(tgt: &str) -> BleuTokenizer {
    match tgt {
        "zh" => BleuTokenizer::Zh,
        "ja" | "ko" | "th" => BleuTokenizer::Char,
        _ => BleuTokenizer::Tok13a,
    }
}

fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir).at(dir)? {
        let m = e.at(dir)?.metadata().at(dir)?;
        if m.is_file() {
            total += m.len();
        }
    }
    Ok(total)
}

fn describe_quantization(cfg: &ModelConfig, dir: &Path) -> String {
    let dtype = cfg
        .dtype
        .map(|d| d.to_string())
        .unwrap_or_else(|| "unknown dtype".into());
    let Some(qc) = cfg.raw.get("quantization_config") else {
        return dtype;
    };
    let get = |k: &str| {
        qc.get(k)
            .map(|v| v.to_string().trim_matches('"').to_string())
            .unwrap_or_default()
    };
    let method = crate::manifest::Manifest::read(dir)
        .map(|m| format!(" ({})", m.method))
        .unwrap_or_default();
    let sym = if qc.get("sym").and_then(Value::as_bool) == Some(false) {
        "asym"
    } else {
        "sym"
    };
    format!(
        "{} int{} g{} {sym}{method}",
        get("quant_method"),
        get("bits"),
        get("group_size")
    )
}

/// Refuses a quantized directory whose base model is not `--original`'s.
pub fn check_same_base(original: &Checkpoint, other: &Checkpoint) -> Result<()> {
    let (a, b) = (&original.config, &other.config);
    let fields = [
        ("model_type", a.model_type == b.model_type),
        ("hidden_size", a.hidden_size == b.hidden_size),
        (
            "intermediate_size",
            a.intermediate_size == b.intermediate_size,
        ),
        (
            "num_hidden_layers",
            a.num_hidden_layers == b.num_hidden_layers,
        ),
        (
            "num_attention_heads",
            a.num_attention_heads == b.num_attention_heads,
        ),
        (
            "num_key_value_heads",
            a.num_key_value_heads == b.num_key_value_heads,
        ),
        ("head_dim", a.head_dim == b.head_dim),
        ("vocab_size", a.vocab_size == b.vocab_size),
    ];
    for (name, same) in fields {
        if !same {
            return Err(Error::config(
                &b.path,
                format!(
                    "`{name}` differs from the original model's ({}): not a quantization of it",
                    a.path.display()
                ),
            ));
        }
    }
    let embed = original.arch.embed_tokens().name;
    let (ea, eb) = (original.info(&embed), other.info(&embed));
    if ea.map(|i| &i.shape) != eb.map(|i| &i.shape) {
        return Err(Error::tensor(
            &embed,
            format!(
                "shape differs between {} and {}",
                a.path.display(),
                b.path.display()
            ),
        ));
    }
    Ok(())
}

fn interval<M: CorpusMetric>(
    m: &M,
    base: &[M::Stats],
    sys: &[M::Stats],
    cfg: &BootstrapConfig,
) -> Result<Interval>
where
    M::Stats: Clone,
{
    let r = paired_bootstrap(m, base, sys, cfg).map_err(|e| Error::Eval { msg: e.to_string() })?;
    Ok(Interval {
        delta: r.delta,
        lower: r.delta_ci.lower,
        upper: r.delta_ci.upper,
        p_value: r.p_value,
    })
}

pub fn eval(opts: &EvalOptions, progress: &dyn Progress) -> Result<EvalReport> {
    if opts.testsets.is_empty() {
        return Err(Error::flag("--testset", "give at least one TSV file"));
    }
    let mut sets = Vec::new();
    for path in &opts.testsets {
        let set = TestSet::read(path, opts.limit)?;
        let (src, tgt) = match (&opts.src, &opts.tgt, langs_from_name(path)) {
            (Some(s), Some(t), _) => (s.clone(), t.clone()),
            (s, t, Some((fs, ft))) => (s.clone().unwrap_or(fs), t.clone().unwrap_or(ft)),
            _ => {
                return Err(Error::flag(
                    "--src/--tgt",
                    format!("cannot tell the language pair of {}; name it like x.en-zh.tsv or pass --src and --tgt", path.display()),
                ))
            }
        };
        sets.push((set, src, tgt));
    }
    let original = Checkpoint::open(&opts.original)?;
    for q in &opts.quantized {
        check_same_base(&original, &Checkpoint::open(q)?)?;
    }
    drop(original);
    std::fs::create_dir_all(opts.out_dir.join("hyp")).at(&opts.out_dir)?;
    let chrf_cfg = ChrfConfig::default();
    let boot = BootstrapConfig {
        n_samples: opts.bootstrap_samples,
        seed: opts.seed,
    };
    let mut dirs = vec![opts.original.clone()];
    dirs.extend(opts.quantized.iter().cloned());
    let mut models: Vec<ModelResult> = Vec::new();
    let mut device_name = String::from("cpu");
    let mut device_note = None;
    // Per set, the original's outputs and sufficient statistics.
    let mut baseline: Vec<(Vec<String>, Vec<_>, Vec<_>)> = Vec::new();
    let total_segments: usize = sets.iter().map(|(s, _, _)| s.pairs.len()).sum();
    for (mi, dir) in dirs.iter().enumerate() {
        let label = if mi == 0 {
            "original".to_string()
        } else {
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| format!("model{mi}"))
        };
        memory::reset_peak_rss();
        let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
        let selection = Device::select(opts.device)?;
        if selection.note.is_some() {
            device_note = selection.note.clone();
        }
        let model_key = reuse::model_key(dir, &selection.device.name(), opts)?;
        let set_keys = sets
            .iter()
            .map(|(set, src, tgt)| reuse::set_key(&model_key, set, src, tgt))
            .collect::<Result<Vec<_>>>()?;
        let mut reused: Vec<Option<reuse::SetOutputs>> = vec![None; sets.len()];
        let mut model_stats = None;
        if opts.resume {
            for (si, (set, _, _)) in sets.iter().enumerate() {
                reused[si] = reuse::load_set(&opts.out_dir, &label, set, &set_keys[si]);
            }
            model_stats = reuse::load_model(&opts.out_dir, &label, &model_key);
        }
        let all_reused = reused.iter().all(Option::is_some) && model_stats.is_some();
        let mut tr = if all_reused {
            device_name = selection.device.name();
            None
        } else {
            let mut tr = Translator::load_on(dir, selection.device)?;
            device_name = tr.engine.device_name();
            tr.options.max_new_tokens = opts.max_new_tokens;
            tr.options.max_batch = opts.batch;
            Some(tr)
        };
        let mut result = ModelResult {
            label: label.clone(),
            dir: dir.clone(),
            quantization: describe_quantization(&cfg, dir),
            bytes_on_disk: dir_bytes(dir)?,
            weight_bytes_resident: tr.as_ref().map_or(0, |t| t.engine.weight_bytes()),
            peak_rss_bytes: None,
            vram: None,
            sets: Vec::new(),
        };
        let chunk_len = opts.batch.max(1) * 4;
        let total_chunks: usize = sets
            .iter()
            .map(|(s, _, _)| s.pairs.len().div_ceil(chunk_len))
            .sum();
        // Steps are chunks of segments; the "bytes" of the progress bar count segments.
        progress.begin(&label, total_chunks as u64, total_segments as u64);
        for (si, (set, src, tgt)) in sets.iter().enumerate() {
            let t0 = Instant::now();
            let mut hyps = Vec::with_capacity(set.pairs.len());
            let mut tokens = 0;
            let was_reused = reused[si].is_some();
            if let Some(r) = reused[si].take() {
                hyps = r.hyps;
                tokens = r.tokens;
                progress.step(
                    set.pairs.len().div_ceil(chunk_len) as u64,
                    &format!("{} (reused)", set.path.display()),
                );
            }
            let mut tr_ref = if was_reused { None } else { tr.as_mut() };
            for chunk in set.pairs.chunks(chunk_len).filter(|_| !was_reused) {
                let tr = tr_ref.as_deref_mut().ok_or_else(|| Error::Eval {
                    msg: "internal: no model loaded for a set to translate".into(),
                })?;
                let prompts: Vec<Prompt> = chunk
                    .iter()
                    .map(|p| Prompt {
                        text: p.source.clone(),
                        source_lang: Some(src.clone()),
                        target_lang: tgt.clone(),
                    })
                    .collect();
                for out in tr.translate_batch(&prompts)? {
                    tokens += out.token_ids.len();
                    hyps.push(out.text.replace(['\n', '\r'], " "));
                }
                progress.step(chunk.len() as u64, &format!("{}", set.path.display()));
            }
            let seconds = if was_reused {
                reuse::seconds_of(&opts.out_dir, &label, set)
            } else {
                t0.elapsed().as_secs_f64()
            };
            let refs = vec![set
                .pairs
                .iter()
                .map(|p| p.reference.clone())
                .collect::<Vec<_>>()];
            let bleu_cfg = BleuConfig {
                tokenizer: bleu_tokenizer_for(tgt),
                ..BleuConfig::default()
            };
            let metric_err =
                |e: crate::eval::metrics::MetricError| Error::Eval { msg: e.to_string() };
            let bstats = corpus_bleu_stats(&hyps, &refs, &bleu_cfg).map_err(metric_err)?;
            let cstats = corpus_chrf_stats(&hyps, &refs, &chrf_cfg).map_err(metric_err)?;
            let bleu = bleu_cfg.corpus_score(&bstats);
            let chrf = chrf_cfg.corpus_score(&cstats);
            let name = set
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let hyp_file = reuse::hyp_file(&label, set);
            if !was_reused {
                write_file(
                    &opts.out_dir.join(&hyp_file),
                    (hyps.join("\n") + "\n").as_bytes(),
                )?;
                reuse::save_set(&opts.out_dir, &label, set, &set_keys[si], tokens, seconds)?;
            }
            let (delta_bleu, delta_chrf, changed) = if mi == 0 {
                (None, None, None)
            } else {
                let (base_hyps, base_b, base_c) = &baseline[si];
                let changed = hyps.iter().zip(base_hyps).filter(|(a, b)| a != b).count() as f64
                    / hyps.len() as f64;
                (
                    Some(interval(&bleu_cfg, base_b, &bstats, &boot)?),
                    Some(interval(&chrf_cfg, base_c, &cstats, &boot)?),
                    Some(changed),
                )
            };
            if mi == 0 {
                baseline.push((hyps.clone(), bstats, cstats));
            }
            result.sets.push(SetResult {
                testset: name,
                src: src.clone(),
                tgt: tgt.clone(),
                segments: hyps.len(),
                bleu,
                chrf,
                delta_bleu,
                delta_chrf,
                changed_fraction: changed,
                generated_tokens: tokens,
                seconds,
                hypotheses_file: hyp_file,
                reused: was_reused,
            });
        }
        progress.end();
        match (tr, model_stats) {
            (Some(tr), _) => {
                result.peak_rss_bytes = memory::peak_rss_bytes();
                result.vram = tr.vram();
                let stats = reuse::ModelStats {
                    weight_bytes_resident: result.weight_bytes_resident,
                    peak_rss_bytes: result.peak_rss_bytes,
                    vram: result.vram,
                };
                reuse::save_model(&opts.out_dir, &label, &model_key, &stats)?;
            }
            (None, Some(stats)) => {
                result.weight_bytes_resident = stats.weight_bytes_resident;
                result.peak_rss_bytes = stats.peak_rss_bytes;
                result.vram = stats.vram;
            }
            (None, None) => {
                return Err(Error::Eval {
                    msg: "internal: no model loaded and no stored statistics".into(),
                })
            }
        }
        models.push(result);
    }
    let bleu_signature = sets
        .iter()
        .map(|(_, _, tgt)| {
            BleuConfig {
                tokenizer: bleu_tokenizer_for(tgt),
                ..BleuConfig::default()
            }
            .signature(1)
        })
        .collect();
    let report = EvalReport {
        bleu_signature,
        chrf_signature: chrf_cfg.signature(1),
        bootstrap_samples: opts.bootstrap_samples,
        seed: opts.seed,
        device: device_name,
        device_note,
        models,
    };
    let mut json = serde_json::to_vec_pretty(&report).expect("report serializes");
    json.push(b'\n');
    write_file(&opts.out_dir.join("eval.json"), &json)?;
    write_file(&opts.out_dir.join("eval.md"), report.markdown().as_bytes())?;
    Ok(report)
}

fn fmt_interval(i: &Option<Interval>) -> String {
    match i {
        None => "—".into(),
        Some(i) => format!(
            "{:+.2} [{:+.2}, {:+.2}]{}",
            i.delta,
            i.lower,
            i.upper,
            if i.significant() { " *" } else { "" }
        ),
    }
}

impl EvalReport {
    /// One table: a row per (model, test set).
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        s.push_str("| model | quantization | size on disk | weights resident | peak RSS | test set | BLEU | chrF | ΔBLEU [95% CI] | ΔchrF [95% CI] | changed |\n");
        s.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
        for m in &self.models {
            for r in &m.sets {
                s.push_str(&format!(
                    "| {} | {} | {:.2} GB | {:.2} GB | {} | {} ({}→{}, {}) | {:.2} | {:.2} | {} | {} | {} |\n",
                    m.label,
                    m.quantization,
                    m.bytes_on_disk as f64 / 1e9,
                    m.weight_bytes_resident as f64 / 1e9,
                    m.peak_rss_bytes.map(|b| format!("{:.2} GB", b as f64 / 1e9)).unwrap_or_else(|| "n/a".into()),
                    r.testset,
                    r.src,
                    r.tgt,
                    r.segments,
                    r.bleu,
                    r.chrf,
                    fmt_interval(&r.delta_bleu),
                    fmt_interval(&r.delta_chrf),
                    r.changed_fraction.map(|f| format!("{:.0}%", f * 100.0)).unwrap_or_else(|| "—".into()),
                ));
            }
        }
        s.push_str(&format!(
            "\nBLEU: {}\nchrF: {}\nΔ: paired bootstrap, {} resamples, seed {}; * = 95% interval excludes 0 (drift beyond noise).\n",
            self.bleu_signature.join(" ; "),
            self.chrf_signature,
            self.bootstrap_samples,
            self.seed
        ));
        if self.models.iter().any(|m| m.vram.is_some()) {
            s.push_str(&format!(
                "\nVRAM on {} (weights resident = bytes of the weights on the device; peaks since each model was loaded):\n\n",
                self.device
            ));
            s.push_str("| model | weights resident | allocator for weights | KV cache (last batch) | allocator peak | cuMemGetInfo peak delta |\n|---|---|---|---|---|---|\n");
            for m in &self.models {
                if let Some(v) = &m.vram {
                    let gb = |b: u64| format!("{:.3} GB", b as f64 / 1e9);
                    s.push_str(&format!(
                        "| {} | {} | {} | {} | {} | {} |\n",
                        m.label,
                        gb(v.weights_bytes),
                        gb(v.weights_allocated_bytes),
                        gb(v.kv_cache_bytes),
                        gb(v.peak_allocated_bytes),
                        gb(v.peak_device_delta_bytes)
                    ));
                }
            }
        }
        s
    }
}
