//! RTN quantization throughput on the HY-MT1.5-1.8B shape (random weights from `synth`):
//! GB/s of bf16 weights in, end to end (read, quantize, pack, hash, write).
//!
//!     cargo bench --bench rtn_throughput [-- PRESET]      (default preset hy-mt1.5-1.8b)
//!
//! The synthesized model is cached under target/bench-data/. Results go in docs/perf.md.

use std::path::PathBuf;
use std::time::Instant;

use hy_quant::dtype::DType;
use hy_quant::model::synth::{synth, Preset, SynthOptions};
use hy_quant::progress::Silent;
use hy_quant::quant::pipeline::{quantize, Method, QuantizeOptions};
use hy_quant::quant::QuantScheme;

fn main() {
    let preset_name = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| "hy-mt1.5-1.8b".into());
    let preset = Preset::parse(&preset_name).expect("known preset");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    std::fs::create_dir_all(&root).expect("create bench dir");
    let model = root.join(format!("synth-{preset_name}"));
    if !model.join("config.json").exists() {
        let t = Instant::now();
        synth(
            &SynthOptions {
                preset,
                dtype: DType::BF16,
                seed: 0,
                out: model.clone(),
                force: true,
            },
            &Silent,
        )
        .expect("synth");
        eprintln!(
            "synthesized {} in {:.1}s",
            model.display(),
            t.elapsed().as_secs_f64()
        );
    }
    let threads = rayon::current_num_threads();
    println!("preset {preset_name}, {threads} threads");
    println!(
        "{:<14} {:>10} {:>10} {:>10}",
        "scheme", "GB in", "seconds", "GB/s"
    );
    for (bits, gs) in [(4u8, 128i64), (8, 128), (4, -1)] {
        let out = root.join(format!("q-{preset_name}-{bits}-{gs}"));
        let opts = QuantizeOptions {
            model: model.clone(),
            out,
            method: Method::Rtn,
            scheme: QuantScheme::new(bits, gs, true).expect("scheme"),
            force: true,
            max_shard_bytes: 5_000_000_000,
            command: vec!["bench".into()],
            gptq: None,
        };
        let t = Instant::now();
        let report = quantize(&opts, &Silent).expect("quantize");
        let secs = t.elapsed().as_secs_f64();
        let gb: f64 = report
            .manifest
            .inputs
            .iter()
            .map(|f| f.bytes as f64)
            .sum::<f64>()
            / 1e9;
        println!(
            "{:<14} {:>10.2} {:>10.2} {:>10.3}",
            format!("int{bits} g{gs}"),
            gb,
            secs,
            gb / secs
        );
        for p in &report.manifest.phases {
            println!("    {:<16} {:>8.2}s", p.phase, p.seconds);
        }
    }
}
