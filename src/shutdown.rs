//! Graceful shutdown: SIGINT / SIGTERM (or a caller, e.g. the demo or a test) set one flag that
//! every loop checks. The flag only *requests* shutdown; the worker then drains in order (stop
//! fetching, finish queued batches, flush the producer, commit) — see `worker::run`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Default)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Also requests shutdown on SIGINT and SIGTERM.
    pub fn on_signals(self) -> Result<Self> {
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(sig, self.0.clone())
                .map_err(|e| Error::Config(format!("cannot install signal handler: {e}")))?;
        }
        Ok(self)
    }

    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
