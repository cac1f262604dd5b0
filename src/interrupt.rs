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

/// A multi-threaded runtime for one command.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// Runs `work` with SIGINT and SIGTERM turned into `interrupt`. The runtime ends without
/// waiting for blocking work an interrupted run left behind (a `juju run` whose answer nobody
/// needs any more): by then the run has put everything back.
pub fn block_on_interruptible<T>(
    interrupt: &Interrupt,
    work: impl std::future::Future<Output = T>,
) -> std::io::Result<T> {
    let rt = runtime()?;
    let out = rt.block_on(async {
        interrupt.on_signals()?;
        Ok::<_, std::io::Error>(work.await)
    });
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    out
}
