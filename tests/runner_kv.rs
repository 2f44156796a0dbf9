//! KV cache and batching invariants on the `synth --preset tiny` HunYuan checkpoint: feeding
//! tokens through the cache in any split, or stacked with other sequences, gives the logits of
//! one full forward; continuous-batched greedy decoding gives each prompt's solo decoding.

use std::path::PathBuf;

use hy_quant::dtype::DType;
use hy_quant::model::synth::{synth, Preset, SynthOptions};
use hy_quant::model::Checkpoint;
use hy_quant::progress::Silent;
use hy_quant::runner::{generate, GenerateOptions, Model, SeqStep};

fn tiny() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny");
    synth(
        &SynthOptions {
            preset: Preset::Tiny,
            dtype: DType::BF16,
            seed: 3,
            out: dir.clone(),
            force: false,
        },
        &Silent,
    )
    .unwrap();
    (tmp, dir)
}

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn seq(n: usize, salt: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i * 131 + salt * 17 + 3) % 1024)
        .collect()
}

#[test]
fn prefill_then_decode_equals_full_forward() {
    let (_tmp, dir) = tiny();
    let model = Model::load(&Checkpoint::open(&dir).unwrap()).unwrap();
    let toks = seq(9, 1);
    let full = {
        let mut c = model.new_cache();
        model
            .forward(&mut [SeqStep {
                tokens: &toks,
                cache: &mut c,
            }])
            .unwrap()
            .remove(0)
    };
    for split in [vec![8, 1], vec![1; 9], vec![3, 3, 3], vec![4, 5]] {
        let mut c = model.new_cache();
        let mut at = 0;
        let mut last = Vec::new();
        for n in &split {
            last = model
                .forward(&mut [SeqStep {
                    tokens: &toks[at..at + n],
                    cache: &mut c,
                }])
                .unwrap()
                .remove(0);
            at += n;
        }
        assert_eq!(c.len(), toks.len());
        let e = max_rel(&last, &full);
        assert!(e < 1e-5, "split {split:?}: rel. error {e}");
    }
}

#[test]
fn stacked_sequences_equal_solo_runs() {
    let (_tmp, dir) = tiny();
    let model = Model::load(&Checkpoint::open(&dir).unwrap()).unwrap();
    let a = seq(7, 2);
    let b = seq(3, 5);
    let c = seq(10, 9);
    let solo = |t: &[u32]| {
        let mut cache = model.new_cache();
        model
            .forward(&mut [SeqStep {
                tokens: t,
                cache: &mut cache,
            }])
            .unwrap()
            .remove(0)
    };
    let (sa, sb, sc) = (solo(&a), solo(&b), solo(&c));
    // Step 1: a and c prefill part of their prompts, b all of it; step 2: the rest, mixed.
    let (mut ca, mut cb, mut cc) = (model.new_cache(), model.new_cache(), model.new_cache());
    model
        .forward(&mut [
            SeqStep {
                tokens: &a[..6],
                cache: &mut ca,
            },
            SeqStep {
                tokens: &b,
                cache: &mut cb,
            },
            SeqStep {
                tokens: &c[..2],
                cache: &mut cc,
            },
        ])
        .unwrap();
    let out = model
        .forward(&mut [
            SeqStep {
                tokens: &c[2..],
                cache: &mut cc,
            },
            SeqStep {
                tokens: &a[6..],
                cache: &mut ca,
            },
        ])
        .unwrap();
    assert!(max_rel(&out[0], &sc) < 1e-5);
    assert!(max_rel(&out[1], &sa) < 1e-5);
    // b had no new tokens in step 2; its step-1 logits are checked through a fresh run.
    let mut cb2 = model.new_cache();
    let o = model
        .forward(&mut [
            SeqStep {
                tokens: &b,
                cache: &mut cb2,
            },
            SeqStep {
                tokens: &[],
                cache: &mut cb,
            },
        ])
        .unwrap();
    assert!(max_rel(&o[0], &sb) < 1e-5);
    assert!(o[1].is_empty());
}

#[test]
fn continuous_batching_matches_one_at_a_time() {
    let (_tmp, dir) = tiny();
    let model = Model::load(&Checkpoint::open(&dir).unwrap()).unwrap();
    let prompts: Vec<Vec<u32>> = (0..5).map(|i| seq(2 + 3 * i, i as u32)).collect();
    // Stop on one id so some sequences end early and free their slot.
    let base = GenerateOptions {
        max_new_tokens: 6,
        max_batch: 1,
        stop_ids: vec![],
        keep_first_logits: false,
    };
    let (solo, _) = generate(&model, &prompts, &base).unwrap();
    let stop = solo[1].token_ids[2];
    let opts1 = GenerateOptions {
        stop_ids: vec![stop],
        ..base.clone()
    };
    let (one, _) = generate(&model, &prompts, &opts1).unwrap();
    let (batched, stats) = generate(
        &model,
        &prompts,
        &GenerateOptions {
            max_batch: 2,
            ..opts1.clone()
        },
    )
    .unwrap();
    for (i, (x, y)) in one.iter().zip(&batched).enumerate() {
        assert_eq!(x.token_ids, y.token_ids, "prompt {i}");
        assert_eq!(x.finish, y.finish, "prompt {i}");
        assert_eq!(y.n_prompt_tokens, prompts[i].len());
    }
    assert!(
        one.iter().any(|g| g.token_ids.len() < 6),
        "the stop id never fired"
    );
    assert!(stats.generated_tokens > 0 && stats.forward_calls < 30);
}
