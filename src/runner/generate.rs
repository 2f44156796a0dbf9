//! Batched greedy decoding with continuous batching: up to `max_batch` sequences are active;
//! each step runs the prompts of newly admitted sequences (prefill) together with the last
//! token of every decoding sequence through one forward call, and a finished slot is refilled
//! from the queue at once.

use std::time::Instant;

use crate::error::{Error, Result};
use crate::runner::forward::{KvCache, Model, SeqStep};

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// Sequences decoded together.
    pub max_batch: usize,
    /// Generation ends when one of these is produced (it is not part of the output).
    pub stop_ids: Vec<u32>,
    /// Keep the full logits of the first generated position (for comparisons).
    pub keep_first_logits: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 256,
            max_batch: 8,
            stop_ids: Vec::new(),
            keep_first_logits: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token was produced.
    Stop,
    /// `max_new_tokens` reached.
    Length,
}

#[derive(Clone, Debug)]
pub struct Generation {
    /// Generated ids, stop token excluded.
    pub token_ids: Vec<u32>,
    pub n_prompt_tokens: usize,
    pub finish: FinishReason,
    /// Logits that chose the first generated token, if asked for.
    pub first_logits: Option<Vec<f32>>,
    /// Top-1 minus top-2 logit at every generated position (near ties explain divergences
    /// between implementations).
    pub margins: Vec<f32>,
}

impl Generation {
    /// Nothing generated yet for a prompt of `n_prompt_tokens` tokens.
    pub(crate) fn start(n_prompt_tokens: usize) -> Self {
        Generation {
            token_ids: Vec::new(),
            n_prompt_tokens,
            finish: FinishReason::Length,
            first_logits: None,
            margins: Vec::new(),
        }
    }

    /// Takes a step's greedy pick: its margin is recorded; a stop id ends the generation, any
    /// other token is appended (counted in `stats`) and ends it at `max_new_tokens`. True when
    /// the generation is finished.
    pub(crate) fn accept(
        &mut self,
        tok: u32,
        margin: f32,
        opts: &GenerateOptions,
        stats: &mut GenerateStats,
    ) -> bool {
        self.margins.push(margin);
        if opts.stop_ids.contains(&tok) {
            self.finish = FinishReason::Stop;
            return true;
        }
        self.token_ids.push(tok);
        stats.generated_tokens += 1;
        if self.token_ids.len() >= opts.max_new_tokens {
            self.finish = FinishReason::Length;
            return true;
        }
        false
    }
}

#[derive(Clone, Debug, Default)]
pub struct GenerateStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub forward_calls: usize,
    pub seconds: f64,
    /// Wall time of steps that prefilled at least one prompt.
    pub prefill_step_seconds: f64,
    /// Wall time and tokens of steps that only decoded.
    pub decode_step_seconds: f64,
    pub decode_step_tokens: usize,
    /// Decode steps replayed from a recorded CUDA graph (`LoadOptions::graphs`).
    pub graph_replays: usize,
    /// Why decode steps were not recorded although graphs were asked for.
    pub graph_note: Option<String>,
}

impl GenerateStats {
    /// Generated tokens per second of wall time (prefill included in the time).
    pub fn tokens_per_second(&self) -> f64 {
        self.generated_tokens as f64 / self.seconds.max(1e-9)
    }

    /// Tokens per second of the decode-only steps (no prompt processing in them).
    pub fn decode_tokens_per_second(&self) -> f64 {
        self.decode_step_tokens as f64 / self.decode_step_seconds.max(1e-9)
    }
}

/// Index of the largest logit (first one on ties, as torch.argmax) and its margin over the
/// runner-up.
pub fn argmax_with_margin(logits: &[f32]) -> (u32, f32) {
    let (mut best, mut top, mut second) = (0usize, f32::NEG_INFINITY, f32::NEG_INFINITY);
    for (i, &v) in logits.iter().enumerate() {
        if v > top {
            second = top;
            top = v;
            best = i;
        } else if v > second {
            second = v;
        }
    }
    (best as u32, top - second)
}

struct Active {
    index: usize,
    cache: KvCache,
    /// Tokens to feed on the next step: the prompt at first, then the last generated token.
    pending: Vec<u32>,
    out: Generation,
}

/// Greedy continuation of every prompt. Results are in prompt order.
pub fn generate(
    model: &Model,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
) -> Result<(Vec<Generation>, GenerateStats)> {
    let start = Instant::now();
    let mut stats = GenerateStats::default();
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        return Err(Error::Runner {
            msg: format!("prompt {i} has no tokens"),
        });
    }
    let mut results: Vec<Option<Generation>> = vec![None; prompts.len()];
    let mut queue = (0..prompts.len()).rev().collect::<Vec<_>>();
    let mut active: Vec<Active> = Vec::new();
    let max_batch = opts.max_batch.max(1);
    loop {
        while active.len() < max_batch {
            let Some(i) = queue.pop() else { break };
            stats.prompt_tokens += prompts[i].len();
            active.push(Active {
                index: i,
                cache: model.new_cache(),
                pending: prompts[i].clone(),
                out: Generation::start(prompts[i].len()),
            });
        }
        if active.is_empty() {
            break;
        }
        if opts.max_new_tokens == 0 {
            for a in active.drain(..) {
                results[a.index] = Some(a.out);
            }
            continue;
        }
        let step_start = Instant::now();
        let prefilling = active.iter().any(|a| a.out.margins.is_empty());
        let logits = {
            let mut steps: Vec<SeqStep<'_>> = active
                .iter_mut()
                .map(|a| SeqStep {
                    tokens: &a.pending,
                    cache: &mut a.cache,
                })
                .collect();
            model.forward(&mut steps)?
        };
        stats.forward_calls += 1;
        let dt = step_start.elapsed().as_secs_f64();
        if prefilling {
            stats.prefill_step_seconds += dt;
        } else {
            stats.decode_step_seconds += dt;
            stats.decode_step_tokens += active.len();
        }
        let mut still = Vec::with_capacity(active.len());
        for (mut a, lg) in active.drain(..).zip(logits) {
            let (tok, margin) = argmax_with_margin(&lg);
            if opts.keep_first_logits && a.out.first_logits.is_none() {
                a.out.first_logits = Some(lg);
            }
            if a.out.accept(tok, margin, opts, &mut stats) {
                results[a.index] = Some(a.out);
                continue;
            }
            a.pending.clear();
            a.pending.push(tok);
            still.push(a);
        }
        active = still;
    }
    stats.seconds = start.elapsed().as_secs_f64();
    Ok((
        results
            .into_iter()
            .map(|r| r.expect("every prompt finishes"))
            .collect(),
        stats,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_stops_on_stop_ids_and_at_the_length_limit() {
        let opts = GenerateOptions {
            max_new_tokens: 2,
            stop_ids: vec![7],
            ..GenerateOptions::default()
        };
        let mut stats = GenerateStats::default();
        let mut g = Generation::start(5);
        assert!(!g.accept(3, 0.5, &opts, &mut stats));
        assert!(g.accept(4, 0.25, &opts, &mut stats));
        assert_eq!(
            (g.token_ids.clone(), g.finish),
            (vec![3, 4], FinishReason::Length)
        );
        let mut s = Generation::start(1);
        assert!(s.accept(7, 1.0, &opts, &mut stats));
        assert_eq!((s.token_ids.len(), s.finish), (0, FinishReason::Stop));
        assert_eq!(s.margins, [1.0]);
        assert_eq!(stats.generated_tokens, 2);
    }

    #[test]
    fn argmax_takes_first_of_ties_and_reports_margin() {
        assert_eq!(argmax_with_margin(&[0.0, 2.0, 1.5, 2.0]), (1, 0.0));
        let (i, m) = argmax_with_margin(&[3.0, 1.0, 2.5]);
        assert_eq!(i, 0);
        assert!((m - 0.5).abs() < 1e-6);
    }
}
