//! Stopping a run early and cleanly: a signal (or the daemon, or a test) triggers the
//! interrupt; the run stops what it is doing, puts scales back, records a `failed` statefile
//! naming the reason, and releases its lock.

use std::sync::{Arc, OnceLock};

use tokio_util::sync::CancellationToken;

#[derive(Clone, Default, Debug)]
pub struct Interrupt {
    token: CancellationToken,
    reason: Arc<OnceLock<String>>,
}

impl Interrupt {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stops the run; the first reason given is the one reported.
    pub fn trigger(&self, reason: impl Into<String>) {
        let _ = self.reason.set(reason.into());
        self.token.cancel();
    }

    pub fn reason(&self) -> Option<String> {
        self.reason.get().cloned()
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    pub async fn triggered(&self) {
        self.token.cancelled().await
    }

    /// Triggers on SIGINT and SIGTERM. A second signal while cleaning up is reported and
    /// otherwise ignored: leaving now would leave applications scaled down.
    pub fn on_signals(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let name = tokio::select! {
                    _ = int.recv() => "SIGINT",
                    _ = term.recv() => "SIGTERM",
                };
                if me.is_triggered() {
                    eprintln!("{name}: still cleaning up (putting scales back); please wait");
                } else {
                    eprintln!(
                        "{name}: stopping; putting scales back and recording the backup as failed"
                    );
                    me.trigger(format!("interrupted by {name}"));
                }
            }
        });
        Ok(())
    }
}
