//! The signal a service stops on.

/// Completes on Ctrl-C (SIGINT) or SIGTERM, the stop signal of systemd,
/// Docker and Kubernetes: the future to give
/// [`Engine::run_until`](crate::Engine::run_until).
///
/// ```no_run
/// # async fn doc(engine: workflow_core::Engine) -> workflow_core::Result<()> {
/// engine.run_until(workflow_core::shutdown_signal()).await?;
/// # Ok(()) }
/// ```
///
/// A second signal while the shutdown goes on (a store that does not
/// answer, a handler that blocks its thread), or after it, ends the
/// process at once, with exit code 130 (SIGINT) or 143 (SIGTERM), as a
/// second Ctrl-C ends most tools: once a handler is installed, the signal
/// no longer kills the process by itself.
///
/// Without a handler, a process does not stop gracefully. It dies at once
/// on SIGTERM, and its instances wait out their leases (30 s) before
/// another process resumes them; run as PID 1 in a container, the usual
/// case, it ignores SIGTERM altogether until the orchestrator kills it
/// after its own grace period (30 s on Kubernetes).
///
/// On other platforms than Unix, only Ctrl-C. Should a listener fail to
/// install (it does not on Linux), that signal is not waited for, and it
/// is logged.
pub async fn shutdown_signal() {
    let mut signals = Signals::new();
    let name = signals.next().await;
    tracing::info!(
        signal = name,
        "shutting down; a second signal ends the process at once"
    );
    // The same listeners: a second signal sent at once is not missed.
    tokio::spawn(async move {
        let name = signals.next().await;
        tracing::warn!(
            signal = name,
            "second signal: exiting without waiting for the shutdown"
        );
        // 128 + the signal's number, as a shell reports a process it ended.
        std::process::exit(if name == "SIGTERM" { 143 } else { 130 });
    });
}

/// Listeners for Ctrl-C and SIGTERM, installed once.
struct Signals {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let listen = |kind: SignalKind, name: &str| match signal(kind) {
                Ok(listener) => Some(listener),
                Err(err) => {
                    tracing::error!(error = %err, signal = name, "cannot listen for the signal");
                    None
                }
            };
            Signals {
                interrupt: listen(SignalKind::interrupt(), "SIGINT"),
                terminate: listen(SignalKind::terminate(), "SIGTERM"),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// The name of the next signal to arrive.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            async fn recv(listener: &mut Option<tokio::signal::unix::Signal>) {
                match listener {
                    Some(listener) => {
                        listener.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                () = recv(&mut self.interrupt) => "SIGINT",
                () = recv(&mut self.terminate) => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            if let Err(err) = tokio::signal::ctrl_c().await {
                tracing::error!(error = %err, "cannot listen for Ctrl-C");
                std::future::pending::<()>().await;
            }
            "SIGINT"
        }
    }
}
