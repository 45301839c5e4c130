//! Progress bars on the terminal (stderr) for long work: bytes, throughput and ETA.
//! Hidden when stderr is not a terminal or when `--json` output is requested; warnings are
//! printed either way.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kura_imaging::flow::{RestoreObserver, RestoreStep};
use kura_imaging::progress::{NoProgress, Progress};
use std::sync::OnceLock;

pub struct Bar {
    bar: ProgressBar,
}

pub enum Unit {
    Bytes,
    Chunks,
}

impl Bar {
    pub fn new(message: &str, unit: Unit, visible: bool) -> Bar {
        let target = if visible { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
        let bar = ProgressBar::with_draw_target(None, target);
        let template = match unit {
            Unit::Bytes => "{msg:10} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            Unit::Chunks => "{msg:10} [{bar:40}] {pos}/{len} chunks {per_sec} ETA {eta}",
        };
        bar.set_style(ProgressStyle::with_template(template).expect("valid template").progress_chars("=> "));
        bar.set_message(message.to_string());
        Bar { bar }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Progress for Bar {
    fn set_total(&self, total: u64) {
        self.bar.set_length(total);
        self.bar.set_position(0);
    }

    fn advance(&self, n: u64) {
        self.bar.inc(n);
    }

    fn warn(&self, message: &str) {
        self.bar.suspend(|| eprintln!("warning: {message}"));
    }
}

/// A restore on the terminal: the write pass as a bar, shown once the preflight passed (which is
/// quiet), and the backup GPT fix-up said on stderr.
pub struct RestoreBar {
    visible: bool,
    bar: OnceLock<Bar>,
}

impl RestoreBar {
    pub fn new(visible: bool) -> RestoreBar {
        RestoreBar { visible, bar: OnceLock::new() }
    }

    pub fn finish(&self) {
        if let Some(b) = self.bar.get() {
            b.finish();
        }
    }
}

impl RestoreObserver for RestoreBar {
    fn checking(&self) -> &dyn Progress {
        &NoProgress
    }

    fn writing(&self) -> &dyn Progress {
        self.bar.get_or_init(|| Bar::new("restore", Unit::Bytes, self.visible))
    }

    fn step(&self, step: &RestoreStep<'_>) {
        if let RestoreStep::MovedBackupGpt { .. } = step {
            match self.bar.get() {
                Some(b) => b.bar.suspend(|| eprintln!("{step}")),
                None => eprintln!("{step}"),
            }
        }
    }
}
