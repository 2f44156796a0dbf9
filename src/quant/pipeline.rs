//! The quantize command: stream a checkpoint layer by layer, quantize every linear, and write
//! a GPTQ v1 checkpoint into a staged directory that only becomes `--out` when complete.
//!
//! Memory stays at about one linear in f32 (plus the output buffers of one layer): input
//! tensors are read through mmap and output shards are written as tensors are produced.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::Value;

use crate::backend::{CpuBackend, Device};
use crate::dtype::DType;
use crate::error::{Error, IoContext, Result};
use crate::export::gptq_v1;
use crate::io::st_writer::index_json;
use crate::io::staged_dir::write_file;
use crate::io::{plan_shards, FileDigest, PlannedTensor, ShardPlan, ShardWriter, StagedDir};
use crate::manifest::{Manifest, PhaseTime, TensorRecord, MANIFEST_FILE};
use crate::model::checkpoint::INDEX_FILE;
use crate::model::Checkpoint;
use crate::progress::Progress;
use crate::quant::gptq::ActOrder;
use crate::quant::gptq_backend::WRITER_STOPPED;
use crate::quant::gptq_pipeline::{run_layers, GptqSettings};
use crate::quant::resume::{LinearResult, RESUME_DIR};
use crate::quant::rtn::{Rtn, RtnOn};
use crate::quant::stats::ErrorStats;
use crate::quant::{QuantMethod, QuantScheme, Weight};

/// Which algorithm solves each linear.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Rtn,
    /// Calibrated GPTQ (`gptq_pipeline`); needs `QuantizeOptions::gptq`.
    Gptq,
}

impl Method {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "rtn" => Ok(Method::Rtn),
            "gptq" => Ok(Method::Gptq),
            "awq" => Err(Error::flag(
                "--method",
                format!("{s} is not implemented yet in this build; available: rtn, gptq"),
            )),
            _ => Err(Error::flag(
                "--method",
                format!("unknown method {s:?}; expected rtn, gptq or awq"),
            )),
        }
    }
}

pub struct QuantizeOptions {
    pub model: PathBuf,
    pub out: PathBuf,
    pub method: Method,
    pub scheme: QuantScheme,
    pub force: bool,
    /// Largest data size of one output shard when the input was sharded.
    pub max_shard_bytes: u64,
    /// argv recorded in the manifest.
    pub command: Vec<String>,
    /// Calibration and solver settings; required by `Method::Gptq`.
    pub gptq: Option<GptqSettings>,
}

pub struct QuantizeReport {
    pub out_dir: PathBuf,
    pub manifest: Manifest,
}

/// A unit of streaming work: copy one tensor as is, or quantize one decoder layer.
enum Unit {
    Copy(String),
    /// Quantize the layer's linears, then copy its other tensors (norms, biases) in order.
    Layer {
        layer: usize,
        copies: Vec<String>,
    },
}

/// Wall time per phase, in the order phases first ran.
pub(crate) struct Timer {
    pub(crate) phases: Vec<PhaseTime>,
    mark: Instant,
}

impl Timer {
    /// Adds `seconds` to `phase` without moving the lap mark (for phases measured inside a
    /// lap).
    pub(crate) fn add(&mut self, phase: &str, seconds: f64) {
        match self.phases.iter_mut().find(|p| p.phase == phase) {
            Some(p) => p.seconds += seconds,
            None => self.phases.push(PhaseTime {
                phase: phase.to_string(),
                seconds,
            }),
        }
    }

    /// Runs `f`, charging its time to `phase`.
    pub(crate) fn time<T>(&mut self, phase: &str, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        self.add(phase, t.elapsed().as_secs_f64());
        out
    }

    pub(crate) fn new() -> Self {
        Timer {
            phases: Vec::new(),
            mark: Instant::now(),
        }
    }
    fn lap(&mut self, phase: &str) {
        let now = Instant::now();
        self.add(phase, (now - self.mark).as_secs_f64());
        self.mark = now;
    }
}

/// Dtype scales are stored in: the model's half type (f16 for an f32 model; vLLM's GPTQ
/// kernels require half activations).
pub fn scale_dtype(model: DType) -> DType {
    match model {
        DType::BF16 => DType::BF16,
        _ => DType::F16,
    }
}

pub fn quantize(opts: &QuantizeOptions, progress: &dyn Progress) -> Result<QuantizeReport> {
    quantize_on(opts, &Device::Cpu(CpuBackend::new()), progress)
}

/// `quantize` with the linears solved on `device` (output byte-identical to the CPU's).
pub fn quantize_on(
    opts: &QuantizeOptions,
    device: &Device,
    progress: &dyn Progress,
) -> Result<QuantizeReport> {
    let started = Instant::now();
    let mut timer = Timer::new();
    let ckpt = Checkpoint::open(&opts.model)?;
    ckpt.validate()?;
    let scale_dtype = scale_dtype(ckpt.model_dtype()?);
    let gptq = match (opts.method, &opts.gptq) {
        (Method::Rtn, _) => None,
        (Method::Gptq, Some(g)) => {
            g.check()?;
            Some(g)
        }
        (Method::Gptq, None) => {
            return Err(Error::flag(
                "--calib",
                "--method gptq needs a calibration corpus (a .jsonl/.txt file or a directory)",
            ))
        }
    };
    let method: Box<dyn QuantMethod + '_> = match device {
        Device::Cpu(_) => Box::new(Rtn {
            scheme: opts.scheme,
        }),
        Device::Cuda(backend) => Box::new(RtnOn {
            backend: backend.as_ref(),
            scheme: opts.scheme,
        }),
    };
    for layer in 0..ckpt.arch.num_layers() {
        for lin in ckpt.arch.layer_linears(layer) {
            opts.scheme
                .check_shape(&lin.weight_name(), lin.out_features, lin.in_features)?;
        }
    }
    let resume = gptq.is_some_and(|g| g.resume);
    let mut staged = StagedDir::prepare_resumable(&opts.out, opts.force, &[&opts.model], resume)?;

    let (units, planned) = plan_outputs(&ckpt, &opts.scheme, scale_dtype)?;
    let shards = plan_shards(planned, opts.max_shard_bytes, !ckpt.sharded);
    timer.lap("plan");

    // Input hashes are computed on a side thread while the main work streams.
    let input_files = input_file_names(&ckpt)?;
    let hash_inputs = || {
        input_files
            .iter()
            .map(|rel| FileDigest::of(&ckpt.dir, rel))
            .collect::<Result<Vec<_>>>()
    };
    let hasher_panicked = || Error::Io {
        path: ckpt.dir.clone(),
        source: std::io::Error::other("input hashing thread panicked"),
    };

    // GPTQ with the layer loop on a backend (CUDA; the CPU backend through the test hook):
    // the output files are written by a thread while the loop runs, each layer as soon as it
    // is in the resume store. The CPU pipeline solves every layer first and assembles after.
    let overlapped = gptq.filter(|g| matches!(device, Device::Cuda(_)) || g.backend_loop);
    let mut stream_clock = Timer::new();
    let (calibrated, inputs, streamed) = if let Some(g) = overlapped {
        // Shards of an interrupted earlier assembly are rewritten from scratch.
        staged.clear_except(&[RESUME_DIR])?;
        let staged_path = staged.path().to_path_buf();
        let (run, inputs, streamed, tail) = std::thread::scope(|scope| {
            let hasher = scope.spawn(hash_inputs);
            let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, Vec<LinearResult>)>(2);
            let (ckpt, units, shards) = (&ckpt, &units, shards.clone());
            let staged_path = &staged_path;
            let writer = scope.spawn(move || {
                let mut clock = Timer::new();
                let mut produce = |layer: usize, _: &mut Timer| -> Result<Vec<LinearResult>> {
                    match rx.recv() {
                        Ok((l, stored)) if l == layer => {
                            in_layer_order(ckpt, layer, stored, staged_path)
                        }
                        Ok((l, _)) => Err(Error::Runner {
                            msg: format!("output writer expected layer {layer}, got {l}"),
                        }),
                        Err(_) => Err(Error::Runner {
                            msg: format!("the layer loop stopped before layer {layer}"),
                        }),
                    }
                };
                let r = stream_units(
                    ckpt,
                    units,
                    shards,
                    &mut produce,
                    staged_path,
                    &crate::progress::Silent,
                    &mut clock,
                );
                (r, clock)
            });
            let args = (ckpt, &opts.scheme, g, scale_dtype, staged_path.as_path());
            let run = match device {
                Device::Cpu(backend) => crate::quant::gptq_backend::run_layers_on(
                    backend,
                    args.0,
                    args.1,
                    args.2,
                    args.3,
                    args.4,
                    progress,
                    &mut timer,
                    Some(&tx),
                ),
                Device::Cuda(backend) => crate::quant::gptq_backend::run_layers_on(
                    backend.as_ref(),
                    args.0,
                    args.1,
                    args.2,
                    args.3,
                    args.4,
                    progress,
                    &mut timer,
                    Some(&tx),
                ),
            };
            drop(tx);
            let t = Instant::now();
            let (streamed, clock) = writer.join().unwrap_or_else(|_| {
                (
                    Err(Error::Runner {
                        msg: "the output writer panicked".into(),
                    }),
                    Timer::new(),
                )
            });
            let tail = t.elapsed().as_secs_f64();
            let inputs = hasher.join().map_err(|_| hasher_panicked());
            stream_clock = clock;
            (run, inputs, streamed, tail)
        });
        let run = match (run, streamed) {
            (Ok(run), Ok(streamed)) => {
                staged.keep_on_error();
                timer.add("write (after the layer loop)", tail);
                (run, Ok(streamed))
            }
            (Ok(_), Err(e)) => return Err(keep_progress(&mut staged, &ckpt, e)),
            // A loop stopped because the writer did: the writer's error says why.
            (Err(Error::Runner { msg }), Err(e)) if msg == WRITER_STOPPED => {
                return Err(keep_progress(&mut staged, &ckpt, e))
            }
            (Err(e), _) => return Err(keep_progress(&mut staged, &ckpt, e)),
        };
        // The writer's phases ran on their own thread, alongside the loop.
        for p in std::mem::take(&mut stream_clock.phases) {
            timer.add(&format!("{} (overlapped)", p.phase), p.seconds);
        }
        timer.mark = Instant::now();
        (Some(run.0), inputs, run.1)
    } else {
        // GPTQ: every layer is solved into the resume store first; the files are assembled
        // from it below. Progress survives an error (or kill) from here on.
        let calibrated = match gptq {
            None => None,
            Some(g) => {
                let run = match device {
                    Device::Cpu(_) => run_layers(
                        &ckpt,
                        &opts.scheme,
                        g,
                        scale_dtype,
                        staged.path(),
                        progress,
                        &mut timer,
                    ),
                    Device::Cuda(_) => unreachable!("CUDA GPTQ takes the overlapped path"),
                };
                match run {
                    Ok(run) => {
                        staged.keep_on_error();
                        staged.clear_except(&[RESUME_DIR])?;
                        Some(run)
                    }
                    Err(e) => return Err(keep_progress(&mut staged, &ckpt, e)),
                }
            }
        };
        timer.mark = Instant::now();
        let mut produce = |layer: usize, clock: &mut Timer| -> Result<Vec<LinearResult>> {
            match &calibrated {
                Some(run) => {
                    let stored = clock.time("read", || run.store.load_layer(layer))?;
                    in_layer_order(&ckpt, layer, stored, run.store.dir())
                }
                None => rtn_layer(&ckpt, layer, method.as_ref(), scale_dtype, clock),
            }
        };
        let (inputs, streamed) = std::thread::scope(|scope| {
            let hasher = scope.spawn(hash_inputs);
            let streamed = stream_units(
                &ckpt,
                &units,
                shards.clone(),
                &mut produce,
                staged.path(),
                progress,
                &mut stream_clock,
            );
            let inputs = hasher.join().map_err(|_| hasher_panicked());
            (inputs, streamed)
        });
        (calibrated, inputs, streamed)
    };
    let (mut outputs, tensors) = streamed?;
    let inputs = inputs??;
    // The streaming phases, then whatever was left waiting for the input-hashing thread.
    let streamed_secs = (Instant::now() - timer.mark).as_secs_f64();
    let inner: f64 = stream_clock.phases.iter().map(|p| p.seconds).sum();
    for p in stream_clock.phases {
        timer.add(&p.phase, p.seconds);
    }
    timer.add("hash inputs (wait)", (streamed_secs - inner).max(0.0));
    timer.mark = Instant::now();
    let method_name = match opts.method {
        Method::Rtn => method.name(),
        Method::Gptq => "gptq",
    };
    let calibration = match calibrated {
        Some(run) => {
            run.store.remove()?;
            Some(run.record)
        }
        None => None,
    };

    // Companion files, config with quantization_config, index.
    for src in ckpt.companion_files()? {
        let name = src
            .file_name()
            .expect("file has a name")
            .to_string_lossy()
            .into_owned();
        let dst = staged.path().join(&name);
        std::fs::copy(&src, &dst).at(&dst)?;
        std::fs::File::open(&dst)
            .and_then(|f| f.sync_all())
            .at(&dst)?;
        outputs.push(FileDigest::of(staged.path(), &name)?);
    }
    let mut config = ckpt.config.raw.clone();
    config.insert(
        "quantization_config".into(),
        gptq_v1::quantization_config(
            &opts.scheme,
            method_name,
            gptq.map_or(0.01, |g| g.damp),
            gptq.is_some_and(|g| g.act_order == ActOrder::Permute),
            gptq.is_some_and(|g| g.act_order == ActOrder::StaticGroups),
        ),
    );
    write_json(
        staged.path(),
        "config.json",
        &Value::Object(config),
        &mut outputs,
    )?;
    if ckpt.sharded {
        write_json(
            staged.path(),
            INDEX_FILE,
            &index_json(&shards),
            &mut outputs,
        )?;
    }
    outputs.sort_by(|a, b| a.path.cmp(&b.path));
    timer.lap("finalize");

    let mut manifest = Manifest {
        tool: "hy-quant".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        command: opts.command.clone(),
        method: method_name.into(),
        bits: opts.scheme.bits,
        group_size: opts.scheme.group_size_i64(),
        sym: opts.scheme.sym,
        format: "gptq-v1".into(),
        input_dir: std::fs::canonicalize(&opts.model).unwrap_or_else(|_| opts.model.clone()),
        inputs,
        outputs,
        tensors,
        phases: Vec::new(),
        wall_seconds: 0.0,
        calibration,
    };
    timer.lap("finalize");
    manifest.phases = timer.phases;
    manifest.wall_seconds = started.elapsed().as_secs_f64();
    write_file(
        &staged.path().join(MANIFEST_FILE),
        &manifest.to_json_bytes(),
    )?;
    let out_dir = staged.commit()?;
    Ok(QuantizeReport { out_dir, manifest })
}

fn write_json(dir: &Path, name: &str, value: &Value, outputs: &mut Vec<FileDigest>) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).expect("JSON value serializes");
    bytes.push(b'\n');
    write_file(&dir.join(name), &bytes)?;
    outputs.push(FileDigest::of(dir, name)?);
    Ok(())
}

/// Files of the input that the manifest records: config, index, shards, companions.
fn input_file_names(ckpt: &Checkpoint) -> Result<Vec<String>> {
    let mut names = vec!["config.json".to_string()];
    if ckpt.dir.join(INDEX_FILE).is_file() && ckpt.sharded {
        names.push(INDEX_FILE.to_string());
    }
    for p in ckpt.shard_paths() {
        names.push(
            p.file_name()
                .expect("shard has a name")
                .to_string_lossy()
                .into_owned(),
        );
    }
    for p in ckpt.companion_files()? {
        names.push(
            p.file_name()
                .expect("file has a name")
                .to_string_lossy()
                .into_owned(),
        );
    }
    names.sort();
    names.dedup();
    Ok(names)
}

fn copy_planned(ckpt: &Checkpoint, name: &str) -> Result<PlannedTensor> {
    let info = ckpt
        .info(name)
        .ok_or_else(|| Error::tensor(name, "missing from the checkpoint"))?;
    Ok(PlannedTensor {
        name: name.to_string(),
        dtype: info.dtype_name.clone(),
        shape: info.shape.clone(),
        nbytes: info.end - info.start,
    })
}

/// The streaming order and the full list of output tensors, in write order.
fn plan_outputs(
    ckpt: &Checkpoint,
    scheme: &QuantScheme,
    scale_dtype: DType,
) -> Result<(Vec<Unit>, Vec<PlannedTensor>)> {
    let arch = &ckpt.arch;
    let mut quantized: BTreeSet<String> = BTreeSet::new();
    for layer in 0..arch.num_layers() {
        for lin in arch.layer_linears(layer) {
            quantized.insert(lin.weight_name());
        }
    }
    let mut units = Vec::new();
    let mut planned = Vec::new();
    let mut global: Vec<String> = Vec::new();
    let mut per_layer: Vec<Vec<String>> = vec![Vec::new(); arch.num_layers()];
    for name in ckpt.tensor_names() {
        if quantized.contains(name) {
            continue;
        }
        let layer = name
            .strip_prefix("model.layers.")
            .and_then(|rest| rest.split('.').next())
            .and_then(|i| i.parse::<usize>().ok())
            .filter(|i| *i < arch.num_layers());
        match layer {
            Some(i) => per_layer[i].push(name.to_string()),
            None => global.push(name.to_string()),
        }
    }
    // Embeddings first, then layers, then the rest (final norm, lm_head, extras) by name.
    let embed = arch.embed_tokens().name;
    units.push(Unit::Copy(embed.clone()));
    planned.push(copy_planned(ckpt, &embed)?);
    for (layer, copies) in per_layer.into_iter().enumerate() {
        for lin in arch.layer_linears(layer) {
            planned.extend(gptq_v1::planned_tensors(
                &lin.prefix,
                scheme,
                lin.out_features,
                lin.in_features,
                scale_dtype,
            ));
        }
        for name in &copies {
            planned.push(copy_planned(ckpt, name)?);
        }
        units.push(Unit::Layer { layer, copies });
    }
    for name in global.into_iter().filter(|n| *n != embed) {
        planned.push(copy_planned(ckpt, &name)?);
        units.push(Unit::Copy(name));
    }
    Ok((units, planned))
}

/// Receives tensors in plan order and spreads them over the shard writers.
struct ShardSink<'a> {
    dir: &'a Path,
    pending: std::vec::IntoIter<ShardPlan>,
    current: Option<ShardWriter>,
    done: Vec<FileDigest>,
}

impl ShardSink<'_> {
    fn write(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        if self.current.as_ref().is_none_or(|w| w.is_full()) {
            if let Some(w) = self.current.take() {
                self.done.push(w.finish()?);
            }
            let plan = self
                .pending
                .next()
                .ok_or_else(|| Error::tensor(name, "internal: no shard planned for this tensor"))?;
            self.current = Some(ShardWriter::create(self.dir, plan)?);
        }
        self.current
            .as_mut()
            .expect("writer open")
            .write(name, bytes)
    }

    fn finish(mut self) -> Result<Vec<FileDigest>> {
        if let Some(w) = self.current.take() {
            self.done.push(w.finish()?);
        }
        if let Some(p) = self.pending.next() {
            return Err(Error::tensor(
                &p.file_name,
                "internal: shard planned but never written",
            ));
        }
        Ok(self.done)
    }
}

/// Quantizes one layer's linears with RTN.
fn rtn_layer(
    ckpt: &Checkpoint,
    layer: usize,
    method: &dyn QuantMethod,
    scale_dtype: DType,
    clock: &mut Timer,
) -> Result<Vec<LinearResult>> {
    let mut out = Vec::new();
    for lin in ckpt.arch.layer_linears(layer) {
        let name = lin.weight_name();
        let view = ckpt.tensor(&name)?;
        let data = clock.time("read", || view.to_f32_finite())?;
        ckpt.release(&name);
        let weight = Weight {
            name: &name,
            data: &data,
            out_features: lin.out_features,
            in_features: lin.in_features,
            scale_dtype,
        };
        let ql = clock.time("quantize", || method.quantize(&weight))?;
        let error = clock.time("stats", || ErrorStats::between(&data, &ql.dequantize()));
        let packed = clock.time("pack", || gptq_v1::pack(&ql, scale_dtype));
        out.push(LinearResult {
            prefix: lin.prefix.clone(),
            packed,
            record: TensorRecord {
                name,
                shape: vec![lin.out_features, lin.in_features],
                error,
                calibrated: None,
            },
        });
    }
    Ok(out)
}

/// Wraps an error of the GPTQ layer loop: when layers were finished, the partial directory
/// is kept and the message says how to continue.
/// A layer's stored results in the order its files list them, all seven present.
fn in_layer_order(
    ckpt: &Checkpoint,
    layer: usize,
    mut stored: Vec<LinearResult>,
    dir: &Path,
) -> Result<Vec<LinearResult>> {
    let order: Vec<String> = ckpt
        .arch
        .layer_linears(layer)
        .into_iter()
        .map(|s| s.prefix)
        .collect();
    stored.sort_by_key(|r| order.iter().position(|p| *p == r.prefix));
    if stored.iter().map(|r| &r.prefix).ne(order.iter()) {
        return Err(Error::Resume {
            path: dir.to_path_buf(),
            msg: format!("progress of layer {layer} does not hold its seven linears"),
        });
    }
    Ok(stored)
}

fn keep_progress(staged: &mut StagedDir, ckpt: &Checkpoint, e: Error) -> Error {
    let dir = staged.path().join(RESUME_DIR);
    let done = (0..ckpt.arch.num_layers())
        .take_while(|l| dir.join(format!("layer-{l:05}.safetensors")).is_file())
        .count();
    if done == 0 {
        return e;
    }
    staged.keep_on_error();
    Error::Interrupted {
        partial: staged.path().to_path_buf(),
        layers: done,
        source: Box::new(e),
    }
}

fn stream_units(
    ckpt: &Checkpoint,
    units: &[Unit],
    shards: Vec<ShardPlan>,
    produce: &mut dyn FnMut(usize, &mut Timer) -> Result<Vec<LinearResult>>,
    dir: &Path,
    progress: &dyn Progress,
    clock: &mut Timer,
) -> Result<(Vec<FileDigest>, Vec<TensorRecord>)> {
    let mut sink = ShardSink {
        dir,
        pending: shards.into_iter(),
        current: None,
        done: Vec::new(),
    };
    let mut records = Vec::new();
    let total: u64 = ckpt.weight_bytes();
    progress.begin("write", units.len() as u64, total);
    for unit in units {
        match unit {
            Unit::Copy(name) => {
                let view = ckpt.tensor(name)?;
                if view.info.dtype.is_some_and(|d| d.is_float()) {
                    clock.time("read", || view.check_finite())?;
                }
                clock.time("write", || sink.write(name, view.bytes))?;
                progress.step(view.bytes.len() as u64, name);
                ckpt.release(name);
            }
            Unit::Layer { layer, copies } => {
                let mut bytes_in: u64 = ckpt
                    .arch
                    .layer_linears(*layer)
                    .iter()
                    .filter_map(|l| {
                        ckpt.info(&l.weight_name())
                            .map(|i| (i.end - i.start) as u64)
                    })
                    .sum();
                for lin in produce(*layer, clock)? {
                    let (p, packed) = (&lin.prefix, &lin.packed);
                    clock.time("write", || -> Result<()> {
                        sink.write(
                            &format!("{p}.g_idx"),
                            &crate::dtype::i32_bytes(&packed.g_idx),
                        )?;
                        sink.write(
                            &format!("{p}.qweight"),
                            &crate::dtype::i32_bytes(&packed.qweight),
                        )?;
                        sink.write(
                            &format!("{p}.qzeros"),
                            &crate::dtype::i32_bytes(&packed.qzeros),
                        )?;
                        sink.write(&format!("{p}.scales"), &packed.scales)
                    })?;
                    records.push(lin.record);
                }
                for name in copies {
                    let view = ckpt.tensor(name)?;
                    if view.info.dtype.is_some_and(|d| d.is_float()) {
                        clock.time("read", || view.check_finite())?;
                    }
                    bytes_in += view.bytes.len() as u64;
                    clock.time("write", || sink.write(name, view.bytes))?;
                    ckpt.release(name);
                }
                progress.step(bytes_in, &format!("layer {layer}"));
                crate::quant::gptq_pipeline::fault_point(&format!("assembled-layer-{layer}"));
            }
        }
    }
    progress.end();
    let digests = clock.time("write", || sink.finish())?;
    Ok((digests, records))
}
