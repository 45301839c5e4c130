//! Progress reporting from the pipelines to whoever drives them (a CLI bar, a server job).

/// Receives progress events. Implementations must be cheap: they are called once per chunk.
pub trait Progress: Send + Sync {
    /// The pipeline knows how many bytes it will process in total.
    fn set_total(&self, _bytes: u64) {}
    /// `bytes` more bytes have been processed.
    fn advance(&self, _bytes: u64) {}
    /// A non-fatal problem worth telling the operator (e.g. a filesystem captured raw).
    fn warn(&self, _message: &str) {}
}

/// Discards all progress.
pub struct NoProgress;
impl Progress for NoProgress {}
