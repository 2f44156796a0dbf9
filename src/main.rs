//! The `hy-quant` binary: argument parsing and printing only; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use hy_quant::backend::{Device, DeviceChoice};
use hy_quant::calib::CalibOptions;
use hy_quant::dtype::DType;
use hy_quant::model::hub::resolve_model;
use hy_quant::model::synth::{self, Preset, SynthOptions};
use hy_quant::progress::Console;
use hy_quant::quant::gptq::ActOrder;
use hy_quant::quant::gptq_pipeline::GptqSettings;
use hy_quant::quant::grid::GridFit;
use hy_quant::quant::pipeline::{self, Method, QuantizeOptions};
use hy_quant::quant::QuantScheme;

#[derive(Parser)]
#[command(
    name = "hy-quant",
    version,
    about = "Quantize translation LLMs (HY-MT, Llama, Qwen2) and measure what it costs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Quantize every linear layer and write a GPTQ v1 checkpoint.
    Quantize(QuantizeArgs),
    /// Write a random-weight checkpoint with a real model's names, shapes and sharding.
    Synth(SynthArgs),
    /// Turn a GGUF file into a Hugging Face checkpoint directory (safetensors + tokenizer).
    Convert {
        #[arg(long = "from-gguf")]
        from_gguf: PathBuf,
        /// bf16 | f16
        #[arg(long, default_value = "bf16")]
        dtype: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        force: bool,
    },
    /// Print architecture, dtype, size and quantization settings of a checkpoint.
    Inspect {
        dir: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write the full-precision weights a GPTQ loader reconstructs from a quantized checkpoint.
    Dequantize {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        force: bool,
    },
    /// Re-hash an output directory against its manifest.json; exit 1 on any mismatch.
    Verify {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Translate test sets with the original and quantized models; report BLEU/chrF drift
    /// (paired bootstrap 95% intervals), size on disk and peak memory.
    Eval(EvalArgs),
    /// Translate with the CPU reference runner (greedy, batched).
    Translate(TranslateArgs),
}

#[derive(Args)]
struct EvalArgs {
    /// The full-precision model.
    #[arg(long)]
    original: PathBuf,
    /// One or more quantized versions of it.
    #[arg(long, num_args = 1.., required = true)]
    quantized: Vec<PathBuf>,
    /// Test set(s): TSV, `source<TAB>reference` per line; language pair from `name.en-zh.tsv`.
    #[arg(long, num_args = 1.., required = true)]
    testset: Vec<PathBuf>,
    #[arg(long)]
    src: Option<String>,
    #[arg(long)]
    tgt: Option<String>,
    /// Only the first N pairs of each test set.
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[arg(long, default_value_t = 1000)]
    bootstrap: usize,
    #[arg(long, default_value_t = 12345)]
    seed: u64,
    /// Directory for eval.json, eval.md and hypotheses.
    #[arg(long, default_value = "eval-out")]
    out: PathBuf,
    /// Reuse the hypotheses an earlier (possibly interrupted) run left in --out for the same
    /// model files, test set, languages, decoding settings and device.
    #[arg(long)]
    resume: bool,
    #[arg(long)]
    json: bool,
    /// cpu (the f32 reference runner), cuda (the GPU runner; adds the VRAM report), or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Args)]
struct TranslateArgs {
    /// Model directory (full precision or GPTQ v1) or Hugging Face id.
    #[arg(long)]
    model: String,
    /// Target language code (zh, en, fr, ...); default: en for Chinese text, else zh.
    #[arg(long)]
    to: Option<String>,
    /// Source language code; default: guessed (zh if the text has CJK characters, else en).
    #[arg(long)]
    from: Option<String>,
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Sequences decoded together.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Read segments from a file (one per line; a TSV's first column) instead of arguments.
    #[arg(long)]
    input: Option<PathBuf>,
    /// With --input: only the first N segments.
    #[arg(long)]
    limit: Option<usize>,
    /// Debug: write prompts, ids, outputs and first-step logits to this directory
    /// (read by scripts/check_runner_with_transformers.py).
    #[arg(long)]
    dump_logits: Option<PathBuf>,
    /// Print one JSON object per segment.
    #[arg(long)]
    json: bool,
    /// cpu (the f32 reference runner), cuda (the GPU runner: 16-bit linear inputs), or auto
    /// (CUDA when a driver and GPU are usable, else the CPU).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Text to translate (one or more segments).
    text: Vec<String>,
}

#[derive(Args)]
struct QuantizeArgs {
    /// Model directory or Hugging Face id (resolved through the local hub cache).
    #[arg(long)]
    model: String,
    /// Output directory (written as <out>.hyq-partial, renamed when complete).
    #[arg(long)]
    out: PathBuf,
    /// rtn | gptq (awq is not implemented yet)
    #[arg(long, default_value = "rtn")]
    method: String,
    /// 4 or 8.
    #[arg(long, default_value_t = 4)]
    bits: u8,
    /// Input columns per group: 32, 64, 128, ... or -1 for one group per row.
    #[arg(long, default_value_t = 128, allow_negative_numbers = true)]
    group_size: i64,
    /// Symmetric grid (default; the only one vLLM's marlin kernels take).
    #[arg(long, conflicts_with = "asym")]
    sym: bool,
    /// Asymmetric grid with a zero point per group.
    #[arg(long)]
    asym: bool,
    /// Replace --out even if it was not written by hy-quant.
    #[arg(long)]
    force: bool,
    /// Largest shard when the input is sharded, e.g. 5GB, 500MB or a byte count.
    #[arg(long, default_value = "5GB")]
    max_shard_size: String,
    /// Print a JSON summary on stdout at the end.
    #[arg(long)]
    json: bool,
    /// GPTQ: calibration corpus, a .jsonl/.txt file or a directory of them. Default: the
    /// multilingual corpus bundled in the binary (calibration/README.md).
    #[arg(long)]
    calib: Option<PathBuf>,
    /// GPTQ: calibration sequences drawn from the corpus.
    #[arg(long, default_value_t = 128)]
    calib_samples: usize,
    /// GPTQ: tokens per calibration sequence (documents are packed back to back).
    #[arg(long, default_value_t = 2048)]
    calib_seqlen: usize,
    /// GPTQ: seed of the calibration sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// GPTQ: damping, as a fraction of the mean Hessian diagonal (raised x10 automatically
    /// when the Cholesky fails; the manifest says so).
    #[arg(long, default_value_t = 0.01, allow_negative_numbers = true)]
    damp: f64,
    /// GPTQ: solve columns in decreasing Hessian-diagonal order. `static-groups` (the
    /// default) keeps g_idx trivial (groups fitted before the sweep, AngelSlim/AutoGPTQ
    /// static_groups); `permute` writes the permutation in g_idx (desc_act); `none` solves in
    /// column order. Bare --act-order = permute.
    #[arg(long, value_name = "MODE", num_args = 0..=1, default_missing_value = "permute")]
    act_order: Option<String>,
    /// GPTQ: fit each group's range by searching 80 shrunk ranges for the smallest
    /// sum |w - q|^2.5 (the GPTQ reference quantizer's mse option); `off` fits min/max.
    /// Default on (docs/quality.md: with static groups it is what keeps translation quality).
    #[arg(long, value_name = "on|off", num_args = 0..=1, default_missing_value = "on",
          value_parser = clap::builder::BoolishValueParser::new())]
    clip_search: Option<bool>,
    /// GPTQ: continue an interrupted run of the same command from its last finished layer.
    #[arg(long)]
    resume: bool,
    /// Where the linears are quantized: cpu, cuda, or auto (CUDA when a driver and GPU are
    /// usable, else the CPU). RTN's output is byte-identical either way; GPTQ's agrees to
    /// rounding (its GPU forward rounds GEMM inputs to 16 bits; docs/gpu-gptq.md).
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Args)]
struct SynthArgs {
    /// Only hunyuan-dense for now.
    #[arg(long, default_value = "hunyuan-dense")]
    arch: String,
    /// tiny | hy-mt1.5-1.8b | hy-mt1.5-7b
    #[arg(long)]
    preset: String,
    /// bf16 | f16 | f32
    #[arg(long, default_value = "bf16")]
    dtype: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    force: bool,
}

fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, mult) = [
        ("GB", 1e9),
        ("MB", 1e6),
        ("KB", 1e3),
        ("GiB", (1u64 << 30) as f64),
        ("MiB", (1u64 << 20) as f64),
    ]
    .iter()
    .find_map(|(suf, m)| s.strip_suffix(suf).map(|n| (n, *m)))
    .unwrap_or((s, 1.0));
    let n: f64 = num
        .trim()
        .parse()
        .with_context(|| format!("--max-shard-size {s:?}: expected e.g. 5GB"))?;
    if n <= 0.0 {
        bail!("--max-shard-size must be positive");
    }
    Ok((n * mult) as u64)
}

/// `--act-order` when the flag is not given: with the clip search, the setting that met the
/// quality bar on every calibration draw measured (docs/quality.md).
const DEFAULT_ACT_ORDER: &str = "static-groups";

fn run_quantize(a: QuantizeArgs) -> Result<()> {
    let model = resolve_model(&a.model)?;
    let opts = QuantizeOptions {
        model,
        out: a.out,
        method: Method::parse(&a.method)?,
        scheme: QuantScheme::new(a.bits, a.group_size, !a.asym)?,
        force: a.force,
        max_shard_bytes: parse_size(&a.max_shard_size)?,
        command: std::env::args().collect(),
        gptq: None,
    };
    let _ = a.sym;
    let mut opts = opts;
    if opts.method == Method::Gptq {
        let act_order = match a.act_order.as_deref().unwrap_or(DEFAULT_ACT_ORDER) {
            "none" => ActOrder::None,
            "permute" => ActOrder::Permute,
            "static-groups" => ActOrder::StaticGroups,
            other => {
                return Err(hy_quant::Error::Flag {
                    flag: "--act-order".into(),
                    msg: format!("{other:?}; expected none, permute or static-groups"),
                }
                .into())
            }
        };
        opts.gptq = Some(GptqSettings {
            calib: a.calib.clone(),
            calib_opts: CalibOptions {
                samples: a.calib_samples,
                seqlen: a.calib_seqlen,
                seed: a.seed,
            },
            damp: a.damp,
            act_order,
            grid_fit: if a.clip_search.unwrap_or(true) {
                GridFit::ClipSearch
            } else {
                GridFit::MinMax
            },
            resume: a.resume,
            // Test hook (like HYQ_FAULT): the backend layer loop on the CPU backend.
            backend_loop: std::env::var_os("HYQ_BACKEND_LOOP").is_some_and(|v| v == "1"),
        });
    } else if a.calib.is_some()
        || a.resume
        || a.act_order.as_deref().is_some_and(|m| m != "none")
        || a.clip_search == Some(true)
    {
        return Err(hy_quant::Error::Flag {
            flag: "--method".into(),
            msg: format!(
                "--calib, --act-order, --clip-search and --resume apply to --method gptq, not {}",
                a.method
            ),
        }
        .into());
    }
    let choice = a.device.parse::<DeviceChoice>()?;
    let selection = Device::select(choice)?;
    if let Some(note) = &selection.note {
        eprintln!("{note}");
    }
    let report = pipeline::quantize_on(&opts, &selection.device, &Console::new())?;
    let m = &report.manifest;
    if a.json {
        let worst = m
            .tensors
            .iter()
            .map(|t| t.error.rel_fro)
            .fold(0.0, f64::max);
        let summary = serde_json::json!({
            "out": report.out_dir,
            "method": m.method, "bits": m.bits, "group_size": m.group_size, "sym": m.sym,
            "linears": m.tensors.len(),
            "worst_rel_fro_error": worst,
            "output_bytes": m.outputs.iter().map(|o| o.bytes).sum::<u64>(),
            "input_bytes": m.inputs.iter().map(|o| o.bytes).sum::<u64>(),
            "wall_seconds": m.wall_seconds,
            "phases": m.phases,
            "calibrated": calibrated_summary(m).map(|c| serde_json::json!({
                "mean_output_rel_error": c.0,
                "mean_rtn_output_rel_error": c.1,
                "damping_raised": c.2,
                "resumed_layers": c.3,
            })),
        });
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        let out_bytes: u64 = m.outputs.iter().map(|o| o.bytes).sum();
        let in_bytes: u64 = m.inputs.iter().map(|o| o.bytes).sum();
        let mean_err =
            m.tensors.iter().map(|t| t.error.rel_fro).sum::<f64>() / m.tensors.len().max(1) as f64;
        println!(
            "wrote {} ({} linears, {:.2} GB -> {:.2} GB, mean rel. error {:.4}) in {:.1}s",
            report.out_dir.display(),
            m.tensors.len(),
            in_bytes as f64 / 1e9,
            out_bytes as f64 / 1e9,
            mean_err,
            m.wall_seconds
        );
        if let Some(c) = calibrated_summary(m) {
            println!(
                "output error on the calibration inputs (mean over linears): {} {:.4}, RTN {:.4}; \
                 damping raised for {} linear(s); {} layer(s) taken from an interrupted run",
                m.method, c.0, c.1, c.2, c.3
            );
        }
    }
    Ok(())
}

/// (mean output error, mean RTN output error, linears whose damping was raised, resumed
/// layers) of a calibrated run.
fn calibrated_summary(m: &hy_quant::manifest::Manifest) -> Option<(f64, f64, usize, usize)> {
    let cal = m.calibration.as_ref()?;
    let errs: Vec<_> = m
        .tensors
        .iter()
        .filter_map(|t| t.calibrated.as_ref())
        .collect();
    let n = errs.len().max(1) as f64;
    Some((
        errs.iter().map(|e| e.output_rel_error).sum::<f64>() / n,
        errs.iter().map(|e| e.rtn_output_rel_error).sum::<f64>() / n,
        errs.iter().filter(|e| e.damp_retries > 0).count(),
        cal.resumed_layers,
    ))
}

fn run_synth(a: SynthArgs) -> Result<()> {
    if a.arch != "hunyuan-dense" {
        bail!("--arch {:?}: only hunyuan-dense is synthesized", a.arch);
    }
    let dtype = DType::from_torch_name(&a.dtype)
        .with_context(|| format!("--dtype {:?}: expected bf16, f16 or f32", a.dtype))?;
    let out = synth::synth(
        &SynthOptions {
            preset: Preset::parse(&a.preset)?,
            dtype,
            seed: a.seed,
            out: a.out,
            force: a.force,
        },
        &Console::new(),
    )?;
    println!("wrote {}", out.display());
    Ok(())
}

fn run_translate(a: TranslateArgs) -> Result<()> {
    use hy_quant::runner::prompt::guess_source;
    use hy_quant::runner::translator::{write_logit_dump, Prompt, Translator};
    let mut segments = a.text.clone();
    if let Some(path) = &a.input {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        segments.extend(
            text.lines()
                .map(|l| l.split('\t').next().unwrap_or("").trim().to_string())
                .filter(|l| !l.is_empty())
                .take(a.limit.unwrap_or(usize::MAX)),
        );
    }
    if segments.is_empty() {
        bail!("nothing to translate: pass text or --input FILE");
    }
    let model = resolve_model(&a.model)?;
    let t0 = std::time::Instant::now();
    let selection = Device::select(a.device.parse::<DeviceChoice>()?)?;
    if let Some(note) = &selection.note {
        eprintln!("{note}");
    }
    let mut tr = Translator::load_on(&model, selection.device)?;
    eprintln!(
        "loaded {} ({:?}, {}, {:.2} GB of weights on {}) in {:.1}s",
        model.display(),
        tr.engine.kind(),
        tr.engine
            .quant()
            .map(|q| q.to_string())
            .unwrap_or_else(|| "full precision".into()),
        tr.engine.weight_bytes() as f64 / 1e9,
        tr.engine.device_name(),
        t0.elapsed().as_secs_f64()
    );
    tr.options.max_new_tokens = a.max_new_tokens;
    tr.options.max_batch = a.batch_size;
    tr.options.keep_first_logits = a.dump_logits.is_some();
    let prompts: Vec<Prompt> = segments
        .iter()
        .map(|s| Prompt {
            text: s.clone(),
            source_lang: a.from.clone(),
            target_lang: a.to.clone().unwrap_or_else(|| {
                let src = a.from.as_deref().unwrap_or_else(|| guess_source(s));
                if src == "zh" { "en" } else { "zh" }.to_string()
            }),
        })
        .collect();
    let outputs = tr.translate_batch(&prompts)?;
    for (p, o) in prompts.iter().zip(&outputs) {
        if a.json {
            let j = serde_json::json!({"source": p.text, "target_lang": p.target_lang, "translation": o.text,
                "n_prompt_tokens": o.n_prompt_tokens, "n_generated": o.token_ids.len(), "finish": format!("{:?}", o.finish)});
            println!("{j}");
        } else {
            println!("{}", o.text);
        }
    }
    let s = &tr.last_stats;
    eprintln!(
        "{} segments: {} prompt + {} generated tokens in {:.1}s ({:.2} generated tokens/s overall; \
         steps with prefill {:.1}s, decode-only steps {:.2} tokens/s; batch {})",
        prompts.len(),
        s.prompt_tokens,
        s.generated_tokens,
        s.seconds,
        s.tokens_per_second(),
        s.prefill_step_seconds,
        s.decode_tokens_per_second(),
        a.batch_size
    );
    if s.graph_replays > 0 || s.graph_note.is_some() {
        eprintln!(
            "CUDA graphs: {} decode steps replayed{}",
            s.graph_replays,
            s.graph_note
                .as_ref()
                .map(|n| format!("; not recorded: {n}"))
                .unwrap_or_default()
        );
    }
    if let Some(dir) = &a.dump_logits {
        write_logit_dump(dir, &model, &tr, &prompts, &outputs)?;
        eprintln!("wrote {}", dir.display());
    }
    Ok(())
}

fn run(cli: Cli) -> Result<bool> {
    match cli.command {
        Command::Quantize(a) => run_quantize(a)?,
        Command::Synth(a) => run_synth(a)?,
        Command::Translate(a) => run_translate(a)?,
        Command::Eval(a) => {
            let opts = hy_quant::eval::run::EvalOptions {
                original: a.original,
                quantized: a.quantized,
                testsets: a.testset,
                src: a.src,
                tgt: a.tgt,
                limit: a.limit,
                max_new_tokens: a.max_new_tokens,
                batch: a.batch_size,
                bootstrap_samples: a.bootstrap,
                seed: a.seed,
                out_dir: a.out.clone(),
                device: a.device.parse()?,
                resume: a.resume,
            };
            let report = hy_quant::eval::run::eval(&opts, &Console::new())?;
            if let Some(note) = &report.device_note {
                eprintln!("{note}");
            }
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.markdown());
                println!("(eval.json, eval.md and hypotheses in {})", a.out.display());
            }
        }
        Command::Inspect { dir, json } => {
            let r = hy_quant::inspect::inspect(&dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{r}");
            }
        }
        Command::Convert {
            from_gguf,
            dtype,
            out,
            force,
        } => {
            let opts = hy_quant::convert::ConvertOptions {
                dtype: dtype.parse().map_err(|e| anyhow::anyhow!("--dtype: {e}"))?,
                force,
                max_shard_bytes: None,
            };
            let r = hy_quant::convert::convert_gguf(&from_gguf, &out, &opts)?;
            println!(
                "wrote {} ({}, {} tensors, {:.2} GB)",
                r.out_dir.display(),
                r.architecture,
                r.tensors_written,
                r.bytes_written as f64 / 1e9
            );
        }
        Command::Dequantize { model, out, force } => {
            let out = hy_quant::dequantize::dequantize(&model, &out, force, &Console::new())?;
            println!("wrote {}", out.display());
        }
        Command::Verify { dir, json } => {
            let r = hy_quant::manifest::verify(&dir)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"checked": r.checked, "problems": r.problems})
                );
            } else {
                for p in &r.problems {
                    println!("MISMATCH {p}");
                }
                println!(
                    "{} files checked, {} problem(s)",
                    r.checked,
                    r.problems.len()
                );
            }
            return Ok(r.problems.is_empty());
        }
    }
    Ok(true)
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            let mut msg = format!("error: {e}");
            for cause in e.chain().skip(1) {
                let cause = cause.to_string();
                if !msg.contains(&cause) {
                    msg.push_str(&format!("\n  caused by: {cause}"));
                }
            }
            eprintln!("{msg}");
            ExitCode::from(2)
        }
    }
}
