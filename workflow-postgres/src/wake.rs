//! LISTEN/NOTIFY as a wake-up hint. Writes that make work due send a
//! notification on the store's channel when they commit; a background task
//! listens and bumps a counter that idle claims wait on. Notifications can be
//! lost (a dropped connection, a restart): claims never rely on them, they
//! only cut the wait before the next poll.

use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::watch;

/// Starts the listener on `pool` (its own, of one connection) for `channel`.
/// The returned receiver changes on every notification and after every
/// reconnect (what was sent meanwhile is unknown). The task ends when every
/// receiver is gone or `pool` is closed.
pub(crate) fn spawn(pool: PgPool, channel: String) -> watch::Receiver<u64> {
    let (tx, rx) = watch::channel(0u64);
    tokio::spawn(async move {
        let bump = |tx: &watch::Sender<u64>| tx.send_modify(|n| *n = n.wrapping_add(1));
        loop {
            let listener = async {
                let mut listener = PgListener::connect_with(&pool).await?;
                listener.listen(&channel).await?;
                Ok::<_, sqlx::Error>(listener)
            };
            let mut listener = tokio::select! {
                _ = tx.closed() => return,
                listener = listener => match listener {
                    Ok(listener) => listener,
                    Err(_) if pool.is_closed() => return,
                    Err(err) => {
                        tracing::debug!(error = %err, "LISTEN failed; polling only, retrying in 1 s");
                        tokio::select! {
                            _ = tx.closed() => return,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        }
                    }
                },
            };
            bump(&tx);
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    received = listener.try_recv() => match received {
                        Ok(Some(_)) => bump(&tx),
                        // Reconnected (and listening again): anything sent
                        // in between is lost, so look now.
                        Ok(None) => bump(&tx),
                        Err(_) if pool.is_closed() => return,
                        Err(err) => {
                            tracing::debug!(error = %err, "LISTEN connection failed; reconnecting");
                            break;
                        }
                    },
                }
            }
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    });
    rx
}
