//! Stopping: SIGINT / SIGTERM (or a caller: the demo, a test, a stage that hit something it
//! cannot handle) set one flag that every loop checks. The flag only *requests* a stop; the
//! worker then drains in order (stop fetching, finish what was consumed, wait for its
//! acknowledgements, commit) — see `worker::run`. A second signal exits at once.
//!
//! A stop can carry a *fatal* reason (a partition that cannot make progress, a producer that
//! failed for good): the worker then still drains what it can, and exits non-zero with it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// Exit code after a second SIGINT/SIGTERM cut the drain short.
pub const FORCED_EXIT_CODE: i32 = 130;

#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// A stop was asked for: by a caller, a fatal error, or a signal.
    requested: Arc<AtomicBool>,
    /// A SIGINT/SIGTERM arrived. Kept apart from `requested`: after a fatal error the first
    /// signal must not count as the second (which exits at once, 130) — the drain it would cut
    /// short is the one that reports the fatal error (exit code 3).
    signalled: Arc<AtomicBool>,
    fatal: Arc<Mutex<Option<String>>>,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Also requests a stop on SIGINT and SIGTERM; a second one exits the process at once with
    /// [`FORCED_EXIT_CODE`] (whatever is still in flight is re-processed after a restart).
    pub fn on_signals(self) -> Result<Self> {
        let err = |e: std::io::Error| Error::Config(format!("cannot install signal handler: {e}"));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            // Registered first, so it sees the flag as it was *before* this signal set it.
            signal_hook::flag::register_conditional_shutdown(
                sig,
                FORCED_EXIT_CODE,
                self.signalled.clone(),
            )
            .map_err(err)?;
            signal_hook::flag::register(sig, self.signalled.clone()).map_err(err)?;
            signal_hook::flag::register(sig, self.requested.clone()).map_err(err)?;
        }
        Ok(self)
    }

    pub fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
    }

    /// Requests a stop because of something that cannot be handled; the first reason is kept.
    pub fn fail(&self, reason: impl Into<String>) {
        let mut f = self.fatal.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            let reason = reason.into();
            tracing::error!("fatal: {reason}; stopping");
            *f = Some(reason);
        }
        drop(f);
        self.request();
    }

    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// The reason of the first [`Shutdown::fail`], if any.
    pub fn fatal(&self) -> Option<String> {
        self.fatal.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fatal_stop_is_not_a_signal() {
        let s = Shutdown::new();
        s.fail("partition 2 stuck");
        assert!(s.is_requested());
        assert!(
            !s.signalled.load(Ordering::SeqCst),
            "the first SIGTERM after a fatal error must not be taken for the second"
        );
    }

    #[test]
    fn the_first_fatal_reason_is_kept_and_requests_a_stop() {
        let s = Shutdown::new();
        assert!(!s.is_requested() && s.fatal().is_none());
        s.fail("partition 2 stuck");
        s.fail("later");
        assert!(s.is_requested());
        assert_eq!(s.fatal().as_deref(), Some("partition 2 stuck"));
    }
}
