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
/// answer, a handler that blocks its thread) ends the process at once,
/// with exit code 130, as a second Ctrl-C ends most tools: once a handler
/// is installed, the signal no longer kills the process by itself.
///
/// Without a handler, a process does not stop gracefully. It dies at once
/// on SIGTERM, and its instances wait out their leases (30 s) before
/// another process resumes them; run as PID 1 in a container, the usual
/// case, it ignores SIGTERM altogether until the orchestrator kills it
/// after its own grace period (30 s on Kubernetes).
///
/// On other platforms than Unix, only Ctrl-C. Should a handler fail to
/// install (it does not on Linux), that signal is not waited for, and it
/// is logged.
pub async fn shutdown_signal() {
    let name = first_signal().await;
    tracing::info!(
        signal = name,
        "shutting down; a second signal ends the process at once"
    );
    tokio::spawn(async {
        let name = first_signal().await;
        tracing::warn!(
            signal = name,
            "second signal: exiting without waiting for the shutdown"
        );
        std::process::exit(130);
    });
}

/// The name of the first of Ctrl-C and SIGTERM to arrive.
async fn first_signal() -> &'static str {
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    let interrupt = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = interrupt => "SIGINT",
        () = terminate => "SIGTERM",
    }
}
