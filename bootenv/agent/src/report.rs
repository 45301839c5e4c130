//! Telling the operator: every line goes to the console at once and is queued for the engine,
//! which gets the queue with the progress counters in `POST /jobs/{id}/progress` every few
//! seconds (a background thread) and at each step. Lines logged before the network is up are
//! kept (bounded) and sent once it is.

use kura_imaging::progress::Progress;
use kura_protocol::client::Client;
use kura_protocol::jobs::{Progress as Report, PROGRESS_LOG_LINES};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Most lines queued for the engine; older ones are dropped (and counted) beyond it.
pub const QUEUE_CAP: usize = 2000;
/// The engine keeps at most this many lines of one progress request.
pub const LINES_PER_POST: usize = PROGRESS_LOG_LINES;
pub const INTERVAL: Duration = Duration::from_secs(3);

pub struct Reporter {
    engine: OnceLock<(Client, i64)>,
    done: AtomicU64,
    /// `u64::MAX` while unknown.
    total: AtomicU64,
    lines: Mutex<(VecDeque<String>, u64)>,
}

impl Default for Reporter {
    fn default() -> Self {
        Reporter {
            engine: OnceLock::new(),
            done: AtomicU64::new(0),
            total: AtomicU64::new(u64::MAX),
            lines: Mutex::new((VecDeque::new(), 0)),
        }
    }
}

impl Reporter {
    pub fn log(&self, line: impl Into<String>) {
        let line = line.into();
        println!("kura-agent: {line}");
        let mut q = self.lines.lock().expect("lock");
        if q.0.len() >= QUEUE_CAP {
            q.0.pop_front();
            q.1 += 1;
        }
        q.0.push_back(line);
    }

    /// From now on, lines and progress go to job `job` on the engine.
    pub fn connect(&self, client: Client, job: i64) {
        let _ = self.engine.set((client, job));
    }

    pub fn client(&self) -> Option<&Client> {
        self.engine.get().map(|(c, _)| c)
    }

    /// Sends the counters and the queued lines (in requests of at most [`LINES_PER_POST`]).
    /// Lines are dropped from the queue only once the engine took them.
    pub fn flush(&self) -> Result<(), kura_protocol::ProtocolError> {
        let Some((client, job)) = self.engine.get() else { return Ok(()) };
        loop {
            let (note, lines) = {
                let mut q = self.lines.lock().expect("lock");
                let note = (q.1 > 0).then(|| format!("({} earlier lines were dropped)", q.1));
                q.1 = 0;
                let lines: Vec<String> = q.0.iter().take(LINES_PER_POST - 1).cloned().collect();
                (note, lines)
            };
            let total = self.total.load(Ordering::Relaxed);
            let report = Report {
                done: self.done.load(Ordering::Relaxed),
                total: (total != u64::MAX).then_some(total),
                log: note.iter().chain(&lines).cloned().collect(),
            };
            client.progress(*job, &report)?;
            let mut q = self.lines.lock().expect("lock");
            let sent = lines.len().min(q.0.len());
            q.0.drain(..sent);
            if q.0.is_empty() {
                return Ok(());
            }
        }
    }

    /// Posts progress every [`INTERVAL`] until the returned guard is dropped.
    pub fn ticker(self: &Arc<Self>) -> Ticker {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let me = self.clone();
        let handle = std::thread::spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(INTERVAL) {
                if let Err(e) = me.flush() {
                    println!("kura-agent: could not send progress to the engine: {e}");
                }
            }
        });
        Ticker { stop: Some(tx), handle: Some(handle) }
    }
}

/// Stops the progress thread when dropped (and waits for it).
pub struct Ticker {
    stop: Option<std::sync::mpsc::Sender<()>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Progress for Reporter {
    fn set_total(&self, bytes: u64) {
        self.total.store(bytes, Ordering::Relaxed);
        self.done.store(0, Ordering::Relaxed);
    }

    fn advance(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
    }

    fn warn(&self, message: &str) {
        self.log(format!("warning: {message}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_is_bounded() {
        let r = Reporter::default();
        for i in 0..QUEUE_CAP + 5 {
            r.log(format!("line {i}"));
        }
        let q = r.lines.lock().unwrap();
        assert_eq!(q.0.len(), QUEUE_CAP);
        assert_eq!(q.1, 5);
        assert_eq!(q.0.front().map(String::as_str), Some("line 5"));
        drop(q);
        assert!(r.flush().is_ok(), "not connected: nothing to send");
        r.set_total(10);
        r.advance(4);
        assert_eq!(r.done.load(Ordering::Relaxed), 4);
    }
}
