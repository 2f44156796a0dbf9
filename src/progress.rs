//! Progress reporting: an indicatif bar (bytes, steps, ETA) on a terminal, one plain line per
//! step otherwise (CI logs), nothing for library users who pass `Silent`.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Receives progress events from long-running library calls.
pub trait Progress: Sync {
    /// A phase of `steps` steps covering `bytes` bytes of input begins.
    fn begin(&self, phase: &str, steps: u64, bytes: u64);
    /// One step finished after consuming `bytes`; `what` names it (e.g. "layer 3").
    fn step(&self, bytes: u64, what: &str);
    fn end(&self);
}

/// Discards everything.
pub struct Silent;

impl Progress for Silent {
    fn begin(&self, _: &str, _: u64, _: u64) {}
    fn step(&self, _: u64, _: &str) {}
    fn end(&self) {}
}

struct PhaseState {
    phase: String,
    steps: u64,
    done: u64,
    bytes: u64,
    bytes_done: u64,
    started: Instant,
    last_line: Option<Instant>,
    bar: Option<ProgressBar>,
}

/// Bars on a TTY, log lines on stderr otherwise.
pub struct Console {
    tty: bool,
    state: Mutex<Option<PhaseState>>,
}

impl Console {
    pub fn new() -> Self {
        Console {
            tty: std::io::stderr().is_terminal(),
            state: Mutex::new(None),
        }
    }
}

impl Default for Console {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress for Console {
    fn begin(&self, phase: &str, steps: u64, bytes: u64) {
        let bar = if self.tty {
            let bar = ProgressBar::with_draw_target(Some(bytes), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>9} [{bar:30}] {binary_bytes}/{binary_total_bytes} {msg} ({binary_bytes_per_sec}, eta {eta})",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(phase.to_string());
            Some(bar)
        } else {
            eprintln!(
                "[hy-quant] {phase}: {steps} steps, {:.1} MB",
                bytes as f64 / 1e6
            );
            None
        };
        *self.state.lock().expect("progress lock") = Some(PhaseState {
            phase: phase.to_string(),
            steps,
            done: 0,
            bytes,
            bytes_done: 0,
            started: Instant::now(),
            last_line: None,
            bar,
        });
    }

    fn step(&self, bytes: u64, what: &str) {
        let mut guard = self.state.lock().expect("progress lock");
        let Some(st) = guard.as_mut() else { return };
        st.done += 1;
        st.bytes_done += bytes;
        match &st.bar {
            Some(bar) => {
                bar.set_message(format!("{what} ({}/{})", st.done, st.steps));
                bar.inc(bytes);
            }
            None => {
                // Plain logs: at most one line a second, plus the last step.
                let due = st
                    .last_line
                    .is_none_or(|t| t.elapsed().as_secs_f64() >= 1.0);
                if !due && st.done < st.steps {
                    return;
                }
                st.last_line = Some(Instant::now());
                let secs = st.started.elapsed().as_secs_f64();
                let eta = if st.bytes_done > 0 {
                    secs * (st.bytes.saturating_sub(st.bytes_done)) as f64 / st.bytes_done as f64
                } else {
                    0.0
                };
                eprintln!(
                    "[hy-quant] {} {}/{} {what}: {:.1}/{:.1} MB, {secs:.1}s, eta {eta:.0}s",
                    st.phase,
                    st.done,
                    st.steps,
                    st.bytes_done as f64 / 1e6,
                    st.bytes as f64 / 1e6
                );
            }
        }
    }

    fn end(&self) {
        if let Some(st) = self.state.lock().expect("progress lock").take() {
            if let Some(bar) = st.bar {
                bar.finish_and_clear();
            }
        }
    }
}
