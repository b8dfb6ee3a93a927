//! The log lines a test produced (tests only).
//!
//! tracing caches, per call site, whether any subscriber listens. With a single dispatcher
//! registered it takes that one for the global default and, when a call site is first hit,
//! asks only the hitting thread's default: a call site first hit on another test's thread
//! (which has no subscriber) is then cached as never enabled, and a test capturing logs on its
//! own thread misses those lines. A second, silent dispatcher kept for the whole run makes
//! tracing ask every registered dispatcher instead.

use std::{
    io,
    sync::{Arc, Mutex, OnceLock},
};

use tracing::{Dispatch, subscriber::DefaultGuard, subscriber::NoSubscriber};

/// A log sink the test can read.
#[derive(Clone, Debug, Default)]
pub(crate) struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// Everything logged so far.
    pub(crate) fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Captures this thread's log lines, debug level and up, until the guard is dropped. A
/// current-thread runtime polls every task on this thread, so the lines of spawned tasks are
/// captured too.
pub(crate) fn capture() -> (Captured, DefaultGuard) {
    static SILENT: OnceLock<Dispatch> = OnceLock::new();
    SILENT.get_or_init(|| Dispatch::new(NoSubscriber::default()));
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    (captured, tracing::subscriber::set_default(subscriber))
}
