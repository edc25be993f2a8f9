//! Waiting without memory: durable sleep, events, child workflows, fan-out.
//!
//! A wait longer than the engine's `suspend_after` threshold suspends the
//! instance: the handler is dropped, the worker freed, and the wake-up
//! condition stored. When it is due, any worker replays the handler from the
//! top; recorded steps return their results, and the wait finds its outcome.

use std::future::Future;

use chrono::{DateTime, Utc};
use futures_util::stream::{self, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::ctx::Ctx;
use crate::error::{BoxError, Error, Result};
use crate::id::InstanceId;
use crate::instance::ChildOptions;
use crate::status::Status;
use crate::step::StepOptions;
use crate::store::{format_millis, Millis, NewInstance, StepRow, Suspend};
use crate::workflow::{decode_named, Workflow};

impl<S> Ctx<S>
where
    S: Serialize + DeserializeOwned + Send + 'static,
{
    /// Sleeps durably for `duration`, measured from the first time this
    /// sleep is reached: a restart does not start it over. Long sleeps cost
    /// no memory: the instance is suspended and wakes on any worker.
    /// `name` follows the step-name rule of [`Ctx::step`].
    ///
    /// The instance's deadline ([`Workflow::TIMEOUT`], five minutes by
    /// default) keeps running meanwhile: a sleep that would end past it
    /// ends the instance `TimedOut` at the deadline instead (with a
    /// warning in the log). Give workflows that sleep long a `timeout`
    /// longer than their sleeps (`#[workflow(timeout = "7d")]`).
    pub async fn sleep(&self, name: &str, duration: std::time::Duration) -> Result<()> {
        let millis = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        self.sleep_to(name, self.run().now().saturating_add(millis))
            .await
    }

    /// The engine's time, read once and recorded as step `name`: every
    /// replay sees the same instant. Read the time this way for decisions
    /// a handler makes from it (`ctx.sleep_until("9am", ..)` from today's
    /// date, "is the offer still open?"): it is the engine's
    /// [`Clock`](crate::Clock), which a [`ManualClock`](crate::ManualClock)
    /// moves in tests, where `Utc::now()` in a step reads the system clock.
    /// `name` follows the step-name rule of [`Ctx::step`].
    pub async fn now(&self, name: &str) -> Result<DateTime<Utc>> {
        let engine = &self.run().engine;
        self.step_with(name, StepOptions::no_retry(), || async move {
            Ok::<_, BoxError>(engine.inner.clock.now())
        })
        .await
    }

    /// Sleeps durably until `at`. As [`Ctx::sleep`], it cannot outlast
    /// the instance's deadline.
    /// `name` follows the step-name rule of [`Ctx::step`].
    pub async fn sleep_until(&self, name: &str, at: DateTime<Utc>) -> Result<()> {
        self.sleep_to(name, at.timestamp_millis()).await
    }

    /// Sleeps until `at`, or until the time recorded as `name`.
    async fn sleep_to(&self, name: &str, at: Millis) -> Result<()> {
        let run = self.run();
        run.check()?;
        let (key, _) = run.next_key(name)?;
        let wake_at = self.timer_keyed(key, at).await?;
        self.wait_until(wake_at).await
    }

    /// A step that records a time (`at`: a sleep's end, a wait's
    /// timeout), or replays the one recorded. Not a step the handler sees
    /// end (it has no side effect, and the wait it is for goes on at
    /// once): a suspension beside it waits for the record only.
    async fn timer_keyed(&self, key: String, at: Millis) -> Result<Millis> {
        let run = self.run();
        if let Some(step) = run.recorded(&key) {
            return self.replay(step).await;
        }
        if run.pause_requested() || run.draining() {
            // Paused (or handed back) before it, as before any step.
            return self
                .step_keyed(key, StepOptions::no_retry(), || async move {
                    Ok::<_, BoxError>(at)
                })
                .await;
        }
        self.record_value(key, at.to_string()).await?;
        Ok(at)
    }

    /// Records `output` under `key` at once: a value the run decided (a
    /// time, a gate's answer), with no side effect to run. Counted as a
    /// step while it is written: a suspension beside it waits for the
    /// record.
    pub(crate) async fn record_value(&self, key: String, output: String) -> Result<()> {
        let run = self.run();
        let _recording = run.step_running();
        let now = run.now();
        self.record(StepRow {
            key,
            output: Some(output),
            error: None,
            state: None,
            attempts: 1,
            started_at: now,
            finished_at: now,
        })
        .await
    }

    /// Moves this instance's deadline from inside its handler, as
    /// [`Instance::set_timeout`](crate::Instance::set_timeout) does from
    /// outside: a job that finds it needs longer extends itself
    /// (`Timeout::In` counts from now, by the engine's clock). Recorded as
    /// step `name` with the deadline it set, which it returns: a replay
    /// returns that and does not move the deadline again (someone may
    /// have moved it since). `name` follows the step-name rule of
    /// [`Ctx::step`].
    pub async fn set_timeout(
        &self,
        name: &str,
        timeout: crate::instance::Timeout,
    ) -> Result<DateTime<Utc>> {
        let engine = &self.run().engine;
        let id = self.id();
        let deadline: Millis = self
            .step(name, || async move {
                let deadline = timeout.deadline(engine.inner.now());
                engine.move_deadline(id, deadline).await?;
                Ok::<_, BoxError>(deadline)
            })
            .await?;
        Ok(DateTime::from_timestamp_millis(deadline).unwrap_or(DateTime::<Utc>::MAX_UTC))
    }

    async fn wait_until(&self, wake_at: Millis) -> Result<()> {
        // Until it suspends or ends, a suspension beside it waits for it
        // (see `Ctx::suspend`): one in memory holds the run meanwhile.
        let registering = self.run().step_running();
        // `wake_at` may be a recorded step's output: never overflow on it.
        let left = wake_at.saturating_sub(self.run().now());
        if left <= 0 {
            return Ok(());
        }
        if let Some(deadline) = *self.run().deadline.borrow() {
            if wake_at > deadline {
                tracing::warn!(
                    wake_at = %format_millis(wake_at),
                    deadline = %format_millis(deadline),
                    "the sleep ends after the instance's deadline: it will time out first \
                     (give the workflow a longer `timeout`)"
                );
            }
        }
        let left = std::time::Duration::from_millis(left as u64);
        if left <= self.run().suspend_after && !self.run().suspension_pending() {
            // By the engine's clock, which a test may move by hand.
            self.run().engine.inner.sleep_until(wake_at).await;
            return Ok(());
        }
        let at = self.run().now();
        drop(registering);
        Err(self
            .suspend(Suspend {
                status: Status::Pending,
                run_at: wake_at,
                wait_event: None,
                wait_child: None,
                retry: None,
                state: None,
                reason: format!("sleeping until {}", format_millis(wake_at)),
                at,
            })
            .await)
    }

    /// [`wait_for_event`](Self::wait_for_event) of a typed
    /// [`Event`](crate::Event): the name and the payload's type come from
    /// the constant the sender uses too (`instance.send(EVENT, &payload)`).
    ///
    /// ```no_run
    /// # use workflow_core::*;
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Approval {
    ///     approved: bool,
    /// }
    ///
    /// const APPROVAL: Event<Approval> = Event::new("approval");
    ///
    /// async fn handler(ctx: Ctx, _: ()) -> Result<bool, BoxError> {
    ///     let answer = ctx.wait_for(APPROVAL, None).await?;
    ///     Ok(answer.approved)
    /// }
    /// ```
    pub async fn wait_for<T: DeserializeOwned>(
        &self,
        event: crate::Event<T>,
        timeout: Option<std::time::Duration>,
    ) -> Result<T> {
        self.wait_for_event(event.name(), timeout).await
    }

    /// Waits for the event `name` (sent with `instance.send_event`) and
    /// returns its payload as `T`. The instance is `Listening` meanwhile and
    /// holds no memory. An event sent before the wait is kept and delivered.
    /// With a `timeout` (counted from the first time the wait is reached),
    /// gives [`Error::EventTimeout`] when none came, which the handler can
    /// match on. `name` is also the wait's step name, so it follows the
    /// step-name rule of [`Ctx::step`].
    ///
    /// A wait that finds nothing suspends the whole handler once every
    /// branch beside it (`join!`) waits too. The instance's row wakes for
    /// one event at a time: to wait for one of several outcomes (approved
    /// or rejected), send one event whose payload says which, rather than
    /// `select!` over two waits (the second event is taken only when the
    /// instance runs again, and a replay may take the other branch).
    ///
    /// The event is taken, and recorded as this wait's outcome, before its
    /// payload is read as `T`: a payload that does not read gives
    /// [`Error::EventPayload`] now and at every replay, and a corrected
    /// event sent later is for the next wait of that name. Check payloads
    /// where they are sent (`send_event` takes any JSON) or wait for a
    /// `serde_json::Value` and read it in a step of your own.
    ///
    /// Without a `timeout`, the instance's own deadline
    /// ([`Workflow::TIMEOUT`], five minutes by default) still ends the
    /// wait: the instance times out. So does a `timeout` that ends past
    /// the deadline (logged as a warning): the handler never sees
    /// `EventTimeout`. Give the workflow a longer `timeout`.
    ///
    /// An event that arrives after its wait timed out is kept, and the
    /// next wait of the same name takes it: waits that may time out
    /// should each have a name of their own.
    ///
    /// Waits side by side (a `join!` of two waits, say) suspend the run
    /// together: the instance wakes at the earliest of their times
    /// (sleeps, timeouts) or for the first one's event or child. Branches
    /// beside a wait run on until they wait too: a request sent in a step
    /// beside the wait for its reply goes out, a step backing off in
    /// memory is retried, and a step that fails for good under
    /// `try_join!` fails the instance. Give the wait a `timeout` rather
    /// than `select!` it against a sleep: the branch a `select!` did not
    /// take is not recorded, and a replay may take it.
    pub async fn wait_for_event<T: DeserializeOwned>(
        &self,
        name: &str,
        timeout: Option<std::time::Duration>,
    ) -> Result<T> {
        let run = self.run();
        run.check()?;
        let (key, recorded) = run.next_key(name)?;
        if let Some(step) = recorded {
            // A timeout recorded the state as it was then.
            self.restore_state(&step).await?;
            let payload = step.output.is_some();
            let noted = payload && run.recorded(&format!("{key}@unread")).is_some();
            return match event_outcome(name, step) {
                Err(err) if payload => self.unreadable(&key, false, err).await,
                // Code that reads it now replays the error all the same:
                // the run that took it went on from that error (asked
                // again, say), and this one must take the same branch.
                Ok(_) if noted => Err(Error::EventPayload {
                    event: name.to_owned(),
                    message: NOTED_UNREAD.to_owned(),
                }),
                outcome => outcome,
            };
        }
        let until: Option<Millis> = match timeout {
            Some(timeout) => {
                let millis = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
                let until = self
                    .timer_keyed(format!("{key}@timeout"), run.now().saturating_add(millis))
                    .await?;
                if let Some(deadline) = *run.deadline.borrow() {
                    if until > deadline {
                        tracing::warn!(
                            event = name,
                            timeout_at = %format_millis(until),
                            deadline = %format_millis(deadline),
                            "the event's timeout ends after the instance's deadline: the \
                             instance will time out first, and the handler never see \
                             EventTimeout (give the workflow a longer `timeout`)"
                        );
                    }
                }
                Some(until)
            }
            None => None,
        };
        // Until it suspends or returns, a suspension beside it waits for
        // it; not while it may suspend itself (a payload new code cannot
        // read pauses the instance).
        let registering = run.step_running();
        let taken = run
            .store
            .take_event(&run.lease, name, &key, self.run().now())
            .await
            .map_err(|e| self.store_error(e))?;
        if let Some(payload) = taken {
            drop(registering);
            let at = self.run().now();
            let step = StepRow {
                key: key.clone(),
                output: Some(payload),
                error: None,
                state: None,
                attempts: 1,
                started_at: at,
                finished_at: at,
            };
            return match event_outcome(name, step) {
                Err(err) => self.unreadable(&key, true, err).await,
                outcome => outcome,
            };
        }
        let at = self.run().now();
        if until.is_some_and(|until| at >= until) {
            let step = StepRow {
                key,
                output: None,
                error: Some(format!("no event `{name}` arrived within the timeout")),
                state: None,
                attempts: 1,
                started_at: at,
                finished_at: at,
            };
            self.record(step.clone()).await?;
            return event_outcome(name, step);
        }
        drop(registering);
        Err(self
            .suspend(Suspend {
                status: Status::Listening,
                run_at: until.unwrap_or(Millis::MAX),
                wait_event: Some(name.to_owned()),
                wait_child: None,
                retry: None,
                state: None,
                reason: match until {
                    Some(until) => {
                        format!("waiting for event `{name}` until {}", format_millis(until))
                    }
                    None => format!("waiting for event `{name}`"),
                },
                at,
            })
            .await)
    }

    /// Sends event `event` with `payload` to another instance, `id`, of any
    /// workflow (its `ctx.wait_for_event(event, ..)` receives it), as a
    /// step named `name`. Sent once: the send is keyed by this step's
    /// [`idempotency_key`](Ctx::idempotency_key), so a step run again
    /// (after a crash before its record, a lost store answer) finds the
    /// event already sent instead of sending it twice.
    ///
    /// An instance that does not exist or has ended, an event name no wait
    /// can have, or a payload over `max_payload_bytes` fails the step at
    /// once ([`Error::Step`]), without retries. A store that fails stops
    /// the run, which goes on later. `name` follows the step-name rule of
    /// [`Ctx::step`]; the instance id, a `/` and the step's key must fit
    /// in [`MAX_KEY_BYTES`](crate::MAX_KEY_BYTES), or the call fails
    /// with [`Error::NameTooLong`] before anything is recorded.
    ///
    /// Should the step run again after the target ended and was purged
    /// (its record lost to a crash, the event delivered), it fails with
    /// the target's [`Error::NotFound`]: sent events are kept with their
    /// instance only.
    pub async fn send_event_to(
        &self,
        name: &str,
        id: &InstanceId,
        event: &str,
        payload: impl Serialize,
    ) -> Result<()> {
        let payload = serde_json::to_value(payload).map_err(|error| Error::Json {
            context: format!("payload of event `{event}` to instance {id}"),
            error,
        })?;
        let run = self.run();
        run.check()?;
        let (key, recorded) = run.next_key(name)?;
        if let Some(step) = recorded {
            return self.replay(step).await;
        }
        // The step's idempotency key, checked before anything is recorded,
        // as a name too long is.
        let event_key = format!("{}/{key}", run.id);
        if event_key.len() > crate::MAX_KEY_BYTES {
            return Err(Error::NameTooLong {
                what: "event key (instance id/step key) of ctx.send_event_to",
                bytes: event_key.len(),
                name: event_key,
            });
        }
        let (engine, payload, event_key) = (&run.engine, &payload, &event_key);
        self.step_keyed(key, run.default_step, || async move {
            match engine.send_event_once(id, event, event_key, payload).await {
                Ok(_) => Ok(()),
                // Not the step's failure: the run stops and goes on later.
                Err(Error::Store(err)) => Err(BoxError::from(self.store_error(err))),
                // The same at every attempt.
                Err(err) => Err(crate::step::permanent(err)),
            }
        })
        .await
    }

    /// Starts workflow `W` as a child of this instance, exactly once (across
    /// replays and crashes), and returns its id without waiting for it.
    /// Cancelling this instance, or its timing out, cancels the child (if
    /// still unfinished) and the child's own descendants; completing or
    /// failing does not, so a child started this way may outlive its
    /// parent. A `W` that no engine on the store registers pauses this
    /// instance, [`Error::UnknownWorkflow`]'s message in its history: deploy
    /// an engine that registers it, then resume.
    /// `name` follows the step-name rule of [`Ctx::step`].
    pub async fn start_child<W: Workflow>(
        &self,
        name: &str,
        input: W::Input,
    ) -> Result<InstanceId> {
        self.start_child_with::<W>(name, input, ChildOptions::default())
            .await
    }

    /// [`start_child`](Self::start_child) with options: the child's own
    /// timeout instead of its workflow's, a later start, tags. They apply
    /// when the child is created; a replay finds the child it started,
    /// whatever options it passes then.
    pub async fn start_child_with<W: Workflow>(
        &self,
        name: &str,
        input: W::Input,
        options: ChildOptions,
    ) -> Result<InstanceId> {
        let (key, recorded) = self.run().next_key(name)?;
        match recorded {
            Some(step) => self.replay(step).await,
            None => self.create_child::<W>(key, input, &options).await,
        }
    }

    async fn create_child<W: Workflow>(
        &self,
        key: String,
        input: W::Input,
        options: &ChildOptions,
    ) -> Result<InstanceId> {
        let run = self.run();
        // Checked only for a child not started yet: a replay finds the
        // child it started, whatever its options say now.
        options.start().check()?;
        // Within the limit: a create the store refused would release this
        // run to fail the same way again and again.
        let input =
            crate::engine::encode_input::<W>(&input, "child workflow", self.run().max_payload())?;
        let parent = run.id.clone();
        let store = std::sync::Arc::clone(&run.store);
        let dedup_key = format!("{parent}/{key}");
        let input = &input;
        let engine = &run.engine;
        let id: InstanceId = self
            .step_keyed(key, StepOptions::no_retry(), || {
                let (store, parent, dedup_key) = (&store, &parent, &dedup_key);
                async move {
                    // A child no engine runs would keep its parent
                    // listening until the parent's deadline: the parent
                    // pauses instead, for an engine that runs it to be
                    // deployed (a deploy order, not a failure for good).
                    // Failing to read the store is not the workflow's
                    // fault, as below.
                    engine
                        .check_runnable(W::NAME)
                        .await
                        .map_err(|err| match err {
                            Error::Store(err) => self.store_error(err),
                            unknown @ Error::UnknownWorkflow(_) => self.pause_for_setup(format!(
                                "paused: {unknown}. Deploy an engine that registers it and \
                                 resume the instance, or cancel it"
                            )),
                            other => other,
                        })?;
                    let now = engine.inner.now();
                    let (run_at, deadline_at) = options.start().due(now, W::TIMEOUT);
                    let new = NewInstance {
                        id: InstanceId::at(now),
                        workflow: W::NAME.to_owned(),
                        input: input.clone(),
                        tags: options.start().tags.clone(),
                        // Keyed by parent and step, over every status: a
                        // replay after a crash finds the child it started.
                        key: Some(dedup_key.clone()),
                        created_at: now,
                        run_at,
                        deadline_at: Some(deadline_at),
                        parent: Some(parent.clone()),
                    };
                    // A store error is not the workflow's: it stops the run
                    // (handed back, the start is retried when it resumes)
                    // instead of failing this no-retry step for good.
                    let created = store
                        .create(new, Some(&Status::ALL))
                        .await
                        .map_err(|e| self.store_error(e))?;
                    Ok::<_, BoxError>(created.into_row().id)
                }
            })
            .await?;
        run.engine.inner.wake.notify_one();
        Ok(id)
    }

    /// Starts workflow `W` as a child exactly once and waits, durably and
    /// without memory, for its output. A child that fails, is cancelled or
    /// times out gives [`Error::Child`]. An output that `W::Output` does
    /// not read (the child ran other code than this instance knows)
    /// pauses this instance, to be resumed under code that agrees. This
    /// instance timing out while it waits cancels the child, as cancelling
    /// it would.
    /// `name` follows the step-name rule of [`Ctx::step`].
    ///
    /// A child has its own workflow's timeout, not this instance's: a
    /// child that may wait long needs a long one, from its attribute or
    /// from [`run_child_with`](Self::run_child_with).
    pub async fn run_child<W: Workflow>(&self, name: &str, input: W::Input) -> Result<W::Output> {
        self.run_child_with::<W>(name, input, ChildOptions::default())
            .await
    }

    /// [`run_child`](Self::run_child) with options: the child's own
    /// timeout instead of its workflow's, a later start, tags. They apply
    /// when the child is created; a replay finds the child it started,
    /// whatever options it passes then.
    pub async fn run_child_with<W: Workflow>(
        &self,
        name: &str,
        input: W::Input,
        options: ChildOptions,
    ) -> Result<W::Output> {
        let run = self.run();
        run.check()?;
        let (key, recorded) = run.next_key(name)?;
        let child = match recorded {
            Some(step) => self.replay::<InstanceId>(step).await?,
            None => self.create_child::<W>(key.clone(), input, &options).await?,
        };
        let result_key = format!("{key}@result");
        if let Some(step) = run.recorded(&result_key) {
            self.restore_state(&step).await?;
            let output = step.output.is_some();
            let noted = output && run.recorded(&format!("{key}@unread")).is_some();
            return match child_outcome::<W>(&child, step) {
                Err(err) if output => self.unreadable(&key, false, err).await,
                // As for an event: the error the first reading gave.
                Ok(_) if noted => Err(Error::Child {
                    workflow: W::NAME.to_owned(),
                    id: child,
                    status: Status::Completed,
                    message: format!("gave an output that {NOTED_UNREAD}"),
                }),
                outcome => outcome,
            };
        }
        // Until it suspends or returns, a suspension beside it waits for it.
        let registering = run.step_running();
        let row = run
            .store
            .get(&child)
            .await
            .map_err(|e| self.store_error(e))?
            .ok_or_else(|| Error::NotFound(child.clone()))?;
        if row.status.is_terminal() {
            let at = self.run().now();
            let (output, error) = match row.status {
                Status::Completed => (Some(row.output.unwrap_or_else(|| "null".into())), None),
                other => (None, Some(child_end(other, row.error.as_deref()))),
            };
            let step = StepRow {
                key: result_key,
                output,
                error,
                state: None,
                attempts: 1,
                started_at: at,
                finished_at: at,
            };
            // Read before the result is recorded. The child's output was
            // checked against its own `Output` as it completed: one the
            // parent does not read means parent and child run code that
            // disagrees (deployed apart). The parent pauses, nothing
            // recorded, and reads it again once resumed under code that
            // agrees; failed, it would be for good.
            let output = step.output.is_some();
            let outcome = child_outcome::<W>(&child, step.clone());
            if let (true, Err(err)) = (output, &outcome) {
                let what = format!("{err}, though the child's own code wrote it");
                drop(registering);
                return Err(self.pause_for_code(what).await);
            }
            self.record(step).await?;
            return outcome;
        }
        drop(registering);
        Err(self
            .suspend(Suspend {
                status: Status::Listening,
                run_at: Millis::MAX,
                wait_event: None,
                wait_child: Some(child.clone()),
                retry: None,
                state: None,
                reason: format!("waiting for child `{}` {child}", W::NAME),
                at: self.run().now(),
            })
            .await)
    }

    /// Runs `f` on every item as its own durable step (keys `name[0]`,
    /// `name[1]`...), up to `concurrency` at once (a `concurrency` of 0
    /// counts as 1), and returns the results in input order. Items already
    /// recorded are not run again after a crash.
    /// `name` follows the step-name rule of [`Ctx::step`].
    ///
    /// Once an item fails for good (its attempts used up, or a
    /// [`NonRetryable`](crate::NonRetryable) error), no further item starts;
    /// the items already running finish and are recorded, and then `map`
    /// returns the failure of the lowest index among them
    /// ([`Error::Step`], naming `name[i]`): every side effect that happened
    /// has its record, for a handler that compensates.
    ///
    /// Results are matched to items by position: a replay must pass the
    /// same items in the same order, or recorded results go to other
    /// items. Build `items` from the input or from a recorded step's
    /// result, not from a query made outside a step, and not by iterating
    /// a `HashMap` or `HashSet`, whose order differs from one process to
    /// the next (a `BTreeMap` keeps its order). A replay given fewer items
    /// than were recorded pauses the instance, naming the map.
    pub async fn map<I, T, E, F, Fut>(
        &self,
        name: &str,
        items: Vec<I>,
        concurrency: usize,
        f: F,
    ) -> Result<Vec<T>>
    where
        I: Clone + Send + Sync,
        T: Serialize + DeserializeOwned + Send,
        E: Into<BoxError>,
        F: Fn(I) -> Fut + Send + Sync,
        Fut: Future<Output = std::result::Result<T, E>> + Send,
    {
        let opts = self.run().default_step;
        self.map_with(name, opts, items, concurrency, f).await
    }

    /// [`Ctx::map`] with each item's retry policy: every item gets its own
    /// attempts and backoff from `opts`, as a step of
    /// [`step_with`](Ctx::step_with) does.
    pub async fn map_with<I, T, E, F, Fut>(
        &self,
        name: &str,
        opts: StepOptions,
        items: Vec<I>,
        concurrency: usize,
        f: F,
    ) -> Result<Vec<T>>
    where
        I: Clone + Send + Sync,
        T: Serialize + DeserializeOwned + Send,
        E: Into<BoxError>,
        F: Fn(I) -> Fut + Send + Sync,
        Fut: Future<Output = std::result::Result<T, E>> + Send,
    {
        let run = self.run();
        run.check()?;
        let (base, _) = run.next_key(name)?;
        let base = &base;
        let key = |index: usize| format!("{base}[{index}]");
        self.check_item_count(base, "items", items.len()).await?;
        self.restore_state_through((0..items.len()).map(key))
            .await?;
        let f = &f;
        let concurrency = concurrency.max(1);
        // Items start in input order, so an item that failed for good was
        // started after every item before it, and a replay starts none
        // after it: one such would run for the first time after the
        // handler's compensation was recorded.
        let last = run
            .first_recorded_failure((0..items.len()).map(key))
            .unwrap_or(usize::MAX);
        // Replayed as a whole, those not started again included.
        run.reach((0..items.len()).map(key));
        let mut results: Vec<Option<T>> =
            std::iter::repeat_with(|| None).take(items.len()).collect();
        let mut items = items
            .into_iter()
            .enumerate()
            .take_while(|(index, _)| *index <= last);
        // Not `buffered`: a finished item would hold its slot until every
        // item before it finished, one slow item capping the rest at one.
        let mut running = stream::FuturesUnordered::new();
        // An item that failed for good, or the run being stopped (a
        // suspension waits for the steps running beside it), stops new
        // starts, but those running finish and are recorded: their side
        // effects happened, and dropped here no replay would run them
        // again. Then the run's stop, or else the failure with the lowest
        // index, is returned: the one a replay meets first.
        let mut stop: Option<(usize, Error)> = None;
        loop {
            while stop.is_none() && running.len() < concurrency {
                let Some((index, item)) = items.next() else {
                    break;
                };
                running.push(async move {
                    (
                        index,
                        self.step_keyed(key(index), opts, move || f(item.clone()))
                            .await,
                    )
                });
            }
            let Some((index, result)) = running.next().await else {
                break;
            };
            match (result, &stop) {
                (Ok(value), _) => results[index] = Some(value),
                (Err(_), Some((_, Error::Interrupted(_)))) => {}
                (Err(err @ Error::Interrupted(_)), _) => stop = Some((index, err)),
                (Err(_), Some((first, _))) if *first < index => {}
                (Err(err), _) => stop = Some((index, err)),
            }
        }
        match stop {
            Some((_, err)) => Err(err),
            None => Ok(results.into_iter().flatten().collect()),
        }
    }

    /// Like [`Ctx::map`] for steps that return nothing.
    /// `name` follows the step-name rule of [`Ctx::step`].
    pub async fn for_each<I, E, F, Fut>(
        &self,
        name: &str,
        items: Vec<I>,
        concurrency: usize,
        f: F,
    ) -> Result<()>
    where
        I: Clone + Send + Sync,
        E: Into<BoxError>,
        F: Fn(I) -> Fut + Send + Sync,
        Fut: Future<Output = std::result::Result<(), E>> + Send,
    {
        self.map(name, items, concurrency, f).await.map(drop)
    }

    /// [`Ctx::for_each`] with each item's retry policy (see
    /// [`Ctx::map_with`]).
    pub async fn for_each_with<I, E, F, Fut>(
        &self,
        name: &str,
        opts: StepOptions,
        items: Vec<I>,
        concurrency: usize,
        f: F,
    ) -> Result<()>
    where
        I: Clone + Send + Sync,
        E: Into<BoxError>,
        F: Fn(I) -> Fut + Send + Sync,
        Fut: Future<Output = std::result::Result<(), E>> + Send,
    {
        self.map_with(name, opts, items, concurrency, f)
            .await
            .map(drop)
    }

    /// Splits `items` into chunks of `size` (0 counts as 1) and runs `f` on
    /// each chunk as one durable step (keys `name[0]`, `name[1]`...), one after another.
    /// Returns each chunk's result, in order.
    /// `name` follows the step-name rule of [`Ctx::step`].
    ///
    /// As with [`Ctx::map`], chunks are matched to records by position:
    /// keep `items` and `size` the same across replays (and deploys that
    /// may replay running instances).
    pub async fn batch<I, T, E, F, Fut>(
        &self,
        name: &str,
        items: Vec<I>,
        size: usize,
        f: F,
    ) -> Result<Vec<T>>
    where
        I: Clone + Send + Sync,
        T: Serialize + DeserializeOwned + Send,
        E: Into<BoxError>,
        F: Fn(Vec<I>) -> Fut + Send + Sync,
        Fut: Future<Output = std::result::Result<T, E>> + Send,
    {
        let opts = self.run().default_step;
        self.batch_with(name, opts, items, size, f).await
    }

    /// [`Ctx::batch`] with each chunk's retry policy (see
    /// [`Ctx::map_with`]).
    pub async fn batch_with<I, T, E, F, Fut>(
        &self,
        name: &str,
        opts: StepOptions,
        items: Vec<I>,
        size: usize,
        f: F,
    ) -> Result<Vec<T>>
    where
        I: Clone + Send + Sync,
        T: Serialize + DeserializeOwned + Send,
        E: Into<BoxError>,
        F: Fn(Vec<I>) -> Fut + Send + Sync,
        Fut: Future<Output = std::result::Result<T, E>> + Send,
    {
        let run = self.run();
        run.check()?;
        let (base, _) = run.next_key(name)?;
        self.check_item_count(&base, "chunks", items.len().div_ceil(size.max(1)))
            .await?;
        let mut results = Vec::new();
        for (index, chunk) in items.chunks(size.max(1)).enumerate() {
            let result = self
                .step_keyed(format!("{base}[{index}]"), opts, || f(chunk.to_vec()))
                .await?;
            results.push(result);
        }
        Ok(results)
    }
}

impl<S> Ctx<S>
where
    S: Serialize + DeserializeOwned + Send + 'static,
{
    /// Pauses the instance if an earlier run recorded a result for an item
    /// (or chunk) past the `count` given now: fewer items than then, so
    /// results matched by position would go to other items. (More items
    /// than then cannot be told apart from a fan-out cut short.)
    async fn check_item_count(&self, base: &str, what: &str, count: usize) -> Result<()> {
        // Any index: items side by side are recorded as they end, so a
        // run cut short may have left gaps.
        let Some(past) = self.run().recorded_index_from(base, count) else {
            return Ok(());
        };
        let past = format!("{base}[{past}]");
        Err(self
            .pause_for_code(format!(
                "`{base}` was run with more {what} than the {count} it is given now (`{past}` is recorded), \
                 and results are matched to {what} by position"
            ))
            .await)
    }

    /// Records that the value of `key` did not decode at its first reading.
    /// Straight to the store: neither a pause asked for nor an interrupt
    /// may leave it unwritten.
    async fn note_unread(&self, key: &str) -> Result<()> {
        let at = self.run().now();
        self.commit(StepRow {
            key: format!("{key}@unread"),
            output: Some("null".to_owned()),
            error: None,
            state: None,
            attempts: 1,
            started_at: at,
            finished_at: at,
        })
        .await
    }

    /// After a recorded value (an event's payload, a child's output) did
    /// not decode as this run's type (`err`). At its first reading
    /// (`first`), that is noted (`{key}@unread`) and `err` given, as every
    /// replay will give it. On a replay without the note, the value decoded
    /// when it was recorded, so the code changed under the instance since,
    /// and it pauses, as for a step's output (see [`Ctx::replay`]), rather
    /// than fail for good.
    ///
    /// One case is a first reading still: an event taken (the store
    /// records it as it hands it over) by a run that was cut short (a
    /// crash, a lapsed lease) before anything after it was recorded, so
    /// perhaps before it could note it. A child's output is read before it
    /// is recorded (one that does not read pauses the parent, unrecorded),
    /// so it has no such case. A run that
    /// stopped in order (a suspension for the next event, say) wrote the
    /// note before it went on, if there was one to write.
    async fn unreadable<T>(&self, key: &str, first: bool, err: Error) -> Result<T> {
        let run = self.run();
        let note = format!("{key}@unread");
        if run.recorded(&note).is_some() {
            return Err(err);
        }
        if first || (run.cut_short && run.recorded_last(key)) {
            run.note_pending
                .store(true, std::sync::atomic::Ordering::SeqCst);
            self.note_unread(key).await?;
            run.note_pending
                .store(false, std::sync::atomic::Ordering::SeqCst);
            return Err(err);
        }
        Err(self
            .pause_for_code(format!(
                "{err}, though this instance read it when it was recorded"
            ))
            .await)
    }
}

/// Why a replay gives the error of a value that reads now: the first
/// reading could not read it, noted so, and the handler went on from there.
const NOTED_UNREAD: &str = "did not fit when it was first read (noted then); every replay gives \
     that outcome, though the code reads it now";

fn event_outcome<T: DeserializeOwned>(name: &str, step: StepRow) -> Result<T> {
    match step.output {
        Some(payload) => decode_named(&payload).map_err(|message| Error::EventPayload {
            event: name.to_owned(),
            message,
        }),
        None => Err(Error::EventTimeout {
            event: name.to_owned(),
        }),
    }
}

fn child_outcome<W: Workflow>(child: &InstanceId, step: StepRow) -> Result<W::Output> {
    match step.output {
        Some(output) => decode_named(&output).map_err(|message| Error::Child {
            workflow: W::NAME.to_owned(),
            id: child.clone(),
            status: Status::Completed,
            message: format!("gave an output that does not fit: {message}"),
        }),
        None => {
            let message = step.error.unwrap_or_else(|| "failed".to_owned());
            Err(Error::Child {
                workflow: W::NAME.to_owned(),
                id: child.clone(),
                status: child_status(&message),
                message,
            })
        }
    }
}

/// The text a child's end without output is recorded with in its
/// parent's history: `failed: <error>` or `ended <status>`; read back by
/// [`child_status`].
fn child_end(status: Status, error: Option<&str>) -> String {
    match status {
        Status::Failed => format!("failed: {}", error.unwrap_or_default()),
        other => format!("ended {other}"),
    }
}

/// How a child ended, from the text [`child_end`] recorded.
fn child_status(recorded: &str) -> Status {
    recorded
        .strip_prefix("ended ")
        .and_then(|status| status.parse().ok())
        .unwrap_or(Status::Failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every way a child ends without an output reads back as itself,
    /// whatever its error says.
    #[test]
    fn a_childs_end_reads_back() {
        for status in [Status::Failed, Status::Cancelled, Status::TimedOut] {
            for error in [None, Some("ended cancelled"), Some("boom")] {
                assert_eq!(child_status(&child_end(status, error)), status, "{error:?}");
            }
        }
    }
}
