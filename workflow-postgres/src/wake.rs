//! LISTEN/NOTIFY as a wake-up hint. Writes that make work due send a
//! notification on the store's channel when they commit; a background task
//! listens and bumps a counter that idle claims wait on. Notifications can be
//! lost (a dropped connection, a restart): claims never rely on them, they
//! only cut the wait before the next poll.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use tokio::sync::{broadcast, mpsc, watch};
use workflow_core::InstanceId;

/// After this long with no notification, the listener sends one to its own
/// channel (through the store's pool): a connection that a NAT or a load
/// balancer dropped without a reset delivers nothing and reports nothing,
/// and every wake-up from other processes would be lost from then on.
pub(crate) const QUIET: Duration = Duration::from_secs(30);

/// How long that notification may take to come back before the connection
/// counts as gone and a new one listens.
pub(crate) const ECHO: Duration = Duration::from_secs(10);

/// The payload of that notification: a check, not a wake-up. (Wake-ups
/// carry none.)
const PING: &str = "ping";

/// How the payload of a cancel's notification starts: the cancelled
/// instances' ids follow, separated by commas.
const CANCEL: &str = "cancel:";

/// How the payload of a wake-up for the instances of some workflows
/// starts: their names follow, one per line. A wake-up with no payload is
/// for any workflow (and what older versions send).
const DUE: &str = "due:";

/// What the next wake-up says became due, gathered from the writes that
/// committed since the last one was sent.
#[derive(Debug, Default)]
struct Due {
    /// Something of any workflow (an event, a woken parent, a release).
    any: bool,
    /// Instances of these workflows (new ones).
    workflows: BTreeSet<String>,
}

/// The wake-ups to send: writes ask ([`Wakes::ask`]), one task sends
/// ([`notifier`]), writes made while one is sent folding into the next.
/// The task ends when this is dropped, with the store.
#[derive(Debug)]
pub(crate) struct Wakes {
    due: Arc<Mutex<Due>>,
    /// Holds one wake-up asked for and not yet taken.
    asked: mpsc::Sender<()>,
}

impl Wakes {
    /// Asks for a wake-up, for instances of `workflow` or (`None`) for
    /// anything; called once the work is committed.
    pub(crate) fn ask(&self, workflow: Option<&str>) {
        {
            let mut due = self.due.lock().unwrap_or_else(PoisonError::into_inner);
            match workflow {
                Some(name) if !due.any => {
                    if !due.workflows.contains(name) {
                        due.workflows.insert(name.to_owned());
                    }
                }
                Some(_) => {}
                None => due.any = true,
            }
        }
        // Full: one is asked for already, and takes this one's workflow.
        let _ = self.asked.try_send(());
    }
}

/// The payload of the next wake-up asked of `asked`; `None` once the
/// store is gone.
async fn next(due: &Mutex<Due>, asked: &mut mpsc::Receiver<()>) -> Option<String> {
    loop {
        asked.recv().await?;
        let due = std::mem::take(&mut *due.lock().unwrap_or_else(PoisonError::into_inner));
        // Asked for after the last payload took its workflow already:
        // nothing to say (an empty payload wakes everyone).
        if due.any || !due.workflows.is_empty() {
            return Some(due_payload(&due));
        }
    }
}

fn due_payload(due: &Due) -> String {
    if due.any || due.workflows.is_empty() {
        return String::new();
    }
    let names: Vec<&str> = due.workflows.iter().map(String::as_str).collect();
    let payload = format!("{DUE}{}", names.join("\n"));
    // Too many to name: a wake-up for anything.
    if payload.len() > MAX_PAYLOAD {
        return String::new();
    }
    payload
}

/// Sends a NOTIFY on `channel` (wakes idle claimers in every process) for
/// each wake-up asked of `wakes`.
///
/// Not from inside the data transactions: PostgreSQL serializes the commits
/// of every notifying transaction on the server, each holding a lock
/// through its WAL flush, which would cap starts and wake-ups at about one
/// per fsync across all processes. This one commits without waiting for
/// its flush (`synchronous_commit` off for it alone): a NOTIFY lost to a
/// crash only delays a pick-up until the next poll. Ends when the store
/// is dropped.
pub(crate) fn notifier(pool: PgPool, channel: String) -> Wakes {
    let (asked, mut asks) = mpsc::channel(1);
    let wakes = Wakes {
        due: Arc::default(),
        asked,
    };
    let due = Arc::clone(&wakes.due);
    tokio::spawn(async move {
        while let Some(payload) = next(&due, &mut asks).await {
            let sent = sqlx::query(
                "SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, $2)",
            )
            .bind(&channel)
            .bind(&payload)
            .execute(&pool)
            .await;
            if let Err(err) = sent {
                // Claimers poll anyway: this only delays a pick-up.
                tracing::debug!(error = %err, "NOTIFY failed");
            }
        }
    });
    wakes
}

/// The workflows this process's claims on the store have asked for: a
/// wake-up for others' instances (another service sharing the schema)
/// wakes no claimer here.
#[derive(Debug, Default)]
pub(crate) struct Interest(RwLock<HashSet<String>>);

impl Interest {
    /// Notes the workflows a claim asks for.
    pub(crate) fn note(&self, workflows: &[String]) {
        let known = self.0.read().unwrap_or_else(PoisonError::into_inner);
        if workflows.iter().all(|w| known.contains(w)) {
            return;
        }
        drop(known);
        let mut known = self.0.write().unwrap_or_else(PoisonError::into_inner);
        known.extend(workflows.iter().cloned());
    }

    /// Whether a wake-up with `payload` concerns a claimer here. Before
    /// any claim, every one does: what runs here is not known yet (a
    /// caller of `Store::wakeups` of its own, say).
    fn wants(&self, payload: &str) -> bool {
        let Some(names) = payload.strip_prefix(DUE) else {
            return true;
        };
        let known = self.0.read().unwrap_or_else(PoisonError::into_inner);
        known.is_empty() || names.split('\n').any(|name| known.contains(name))
    }
}

/// The longest payload sent: PostgreSQL takes up to 8,000 bytes.
const MAX_PAYLOAD: usize = 7_900;

/// The payloads that announce `ids` cancelled, as few as fit.
pub(crate) fn cancel_payloads(ids: &[String]) -> Vec<String> {
    let mut payloads = Vec::new();
    let mut payload = String::from(CANCEL);
    for id in ids {
        if payload.len() > CANCEL.len() && payload.len() + 1 + id.len() > MAX_PAYLOAD {
            payloads.push(std::mem::replace(&mut payload, String::from(CANCEL)));
        }
        if payload.len() > CANCEL.len() {
            payload.push(',');
        }
        payload.push_str(id);
    }
    if payload.len() > CANCEL.len() {
        payloads.push(payload);
    }
    payloads
}

/// The listening task, to stop it.
#[derive(Clone)]
pub(crate) struct Listening {
    stop: watch::Sender<bool>,
    /// Closed when the task has ended.
    ended: watch::Receiver<()>,
}

impl Listening {
    /// Stops the task and waits (a few seconds at most) for its connection
    /// to close.
    pub(crate) async fn close(&self) {
        self.stop.send_replace(true);
        let mut ended = self.ended.clone();
        let _ = tokio::time::timeout(Duration::from_secs(5), ended.changed()).await;
    }
}

/// Returns once the store asks the task to stop.
async fn stop_asked(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

/// Starts the listener for `channel`, on connections of its own made with
/// `connect` (waiting `acquire_timeout` at most for one); `echo_pool` sends
/// the checks. The returned receiver changes on every notification and
/// after every reconnect (what was sent meanwhile is unknown). The task
/// ends when every receiver is gone or the store closes it.
pub(crate) fn spawn(
    connect: PgConnectOptions,
    acquire_timeout: Duration,
    echo_pool: PgPool,
    channel: String,
    cancels: broadcast::Sender<InstanceId>,
    interest: Arc<Interest>,
) -> (watch::Receiver<u64>, Listening) {
    let (tx, rx) = watch::channel(0u64);
    let (stop, mut stopped) = watch::channel(false);
    let (ended_tx, ended) = watch::channel(());
    tokio::spawn(async move {
        let _ended = ended_tx;
        let bump = |tx: &watch::Sender<u64>| tx.send_modify(|n| *n = n.wrapping_add(1));
        // Said once an outage: polling alone (behind a pooler in
        // transaction mode, say) slows every pick-up to the poll interval,
        // which an operator must be able to see, but not every second.
        let mut failing = false;
        loop {
            // A pool of its own for each connection: a listener dropped on
            // a dead flow sends UNLISTEN on it and holds it until TCP gives
            // up (minutes), which would keep its successor from connecting.
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .max_lifetime(None)
                .idle_timeout(None)
                .acquire_timeout(acquire_timeout)
                .connect_lazy_with(connect.clone());
            let listener = async {
                let mut listener = PgListener::connect_with(&pool).await?;
                listener.listen(&channel).await?;
                Ok::<_, sqlx::Error>(listener)
            };
            let mut listener = tokio::select! {
                _ = tx.closed() => return,
                _ = stop_asked(&mut stopped) => return,
                listener = listener => match listener {
                    Ok(listener) => {
                        if std::mem::take(&mut failing) {
                            tracing::info!("LISTEN works again: wake-ups and cancels are heard at once");
                        }
                        listener
                    }
                    Err(err) => {
                        if std::mem::replace(&mut failing, true) {
                            tracing::debug!(error = %err, "LISTEN failed; polling only, retrying in 1 s");
                        } else {
                            tracing::warn!(error = %err, "LISTEN failed: new work and cancels from other processes are seen at the poll interval until it works again (retried every second)");
                        }
                        tokio::select! {
                            _ = tx.closed() => return,
                            _ = stop_asked(&mut stopped) => return,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        }
                    }
                },
            };
            bump(&tx);
            let mut pinged = false;
            loop {
                let wait = if pinged { ECHO } else { QUIET };
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = stop_asked(&mut stopped) => {
                        drop(listener);
                        let _ = tokio::time::timeout(Duration::from_secs(2), pool.close()).await;
                        return;
                    }
                    received = tokio::time::timeout(wait, listener.try_recv()) => match received {
                        Ok(Ok(Some(note))) => {
                            pinged = false;
                            if let Some(ids) = note.payload().strip_prefix(CANCEL) {
                                // No receiver (no worker here) is no error.
                                // A cancel that made work due sends a
                                // wake-up of its own.
                                for id in ids.split(',').filter(|id| !id.is_empty()) {
                                    let _ = cancels.send(InstanceId::from(id));
                                }
                            } else if note.payload() != PING && interest.wants(note.payload()) {
                                bump(&tx);
                            }
                        }
                        // Reconnected (and listening again): anything sent
                        // in between is lost, so look now.
                        Ok(Ok(None)) => {
                            pinged = false;
                            bump(&tx);
                        }
                        Ok(Err(err)) => {
                            tracing::debug!(error = %err, "LISTEN connection failed; reconnecting");
                            break;
                        }
                        Err(_) if pinged => {
                            tracing::warn!(
                                "LISTEN connection silent (a notification sent to it did not come back); reconnecting"
                            );
                            break;
                        }
                        Err(_) => {
                            pinged = true;
                            // On a task of its own: a pool that hangs must
                            // not hold up the listening.
                            let (echo_pool, channel) = (echo_pool.clone(), channel.clone());
                            tokio::spawn(async move {
                                let ping = sqlx::query("SELECT pg_notify($1, $2)")
                                    .bind(channel)
                                    .bind(PING)
                                    .execute(&echo_pool);
                                if let Ok(Err(err)) = tokio::time::timeout(ECHO, ping).await {
                                    tracing::debug!(error = %err, "pinging the LISTEN connection failed");
                                }
                            });
                        }
                    },
                }
            }
            // Left behind, not awaited: its connection may be dead.
            drop(listener);
            drop(pool);
            // What was sent meanwhile is lost: look now.
            bump(&tx);
            tokio::select! {
                _ = tx.closed() => return,
                _ = stop_asked(&mut stopped) => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    });
    (rx, Listening { stop, ended })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wake-up names the workflows of new instances, one per line; a
    /// wake-up for anything, or for more than a payload can name, names
    /// none, and every claimer hears it.
    #[test]
    fn wake_ups_name_their_workflows_or_none() {
        let named = |names: &[&str]| Due {
            any: false,
            workflows: names.iter().map(|n| n.to_string()).collect(),
        };
        let payload = due_payload(&named(&["b", "a"]));
        assert_eq!(payload, "due:a\nb");
        let interest = Interest::default();
        assert!(interest.wants(&payload), "nothing known to run here yet");
        interest.note(&["b".into()]);
        assert!(interest.wants(&payload));
        assert!(!interest.wants(&due_payload(&named(&["c"]))));
        assert!(interest.wants(""), "a wake-up for anything");
        let mut any = named(&["a"]);
        any.any = true;
        assert_eq!(due_payload(&any), "");
        let many: Vec<String> = (0..2_000).map(|n| format!("workflow-{n}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(due_payload(&named(&many)), "");
    }

    /// Two asks that one payload answers leave no second, empty one behind
    /// (which would wake every claimer of every process).
    #[tokio::test]
    async fn asks_answered_together_send_one_wake_up() {
        let (asked, mut asks) = mpsc::channel(1);
        let wakes = Wakes {
            due: Arc::default(),
            asked,
        };
        // The notifier took the first ask and is about to read what is
        // due when the second comes: it leaves another ask behind.
        wakes.ask(Some("a"));
        asks.recv().await.unwrap();
        wakes.ask(Some("b"));
        let due = std::mem::take(&mut *wakes.due.lock().unwrap());
        assert_eq!(due_payload(&due), "due:a\nb");
        let again =
            tokio::time::timeout(Duration::from_millis(50), next(&wakes.due, &mut asks)).await;
        assert!(again.is_err(), "a second wake-up: {again:?}");
        wakes.ask(None);
        assert_eq!(next(&wakes.due, &mut asks).await.unwrap(), "");
    }

    /// Ids go out in as few payloads as PostgreSQL takes, each whole.
    #[test]
    fn cancels_are_packed_under_the_payload_limit() {
        let ids: Vec<String> = (0..500).map(|n| format!("{n:036}")).collect();
        let payloads = cancel_payloads(&ids);
        assert_eq!(payloads.len(), 3);
        let mut back = Vec::new();
        for payload in &payloads {
            assert!(payload.len() <= MAX_PAYLOAD, "{}", payload.len());
            let list = payload.strip_prefix(CANCEL).expect("prefix");
            back.extend(list.split(',').map(str::to_owned));
        }
        assert_eq!(back, ids);
        assert!(cancel_payloads(&[]).is_empty());
    }
}
