//! Step options: how many attempts a step gets and how long it waits between them.

use std::time::Duration;

use crate::error::BoxError;

/// How a step retries. The default matches the original framework: 5 attempts,
/// waiting about 0.27 s, 0.74 s, 2 s and 5 s after the failures
/// (`min(272 ms * e^(n-1), 5 s)` after failed attempt `n`).
///
/// Build it with [`StepOptions::attempts`] (or `retries`, `no_retry`,
/// `default`) and the builder methods, which check their values; the
/// fields are public to read and adjust.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct StepOptions {
    /// Attempts in all, the first included. `1` means no retry.
    pub max_attempts: u32,
    /// The wait after the first failure; after failed attempt `n`,
    /// `initial_backoff * factor^(n-1)`...
    pub initial_backoff: Duration,
    /// ...growing by this factor per attempt...
    pub factor: f64,
    /// ...and never longer than this. Then spread by `jitter`.
    pub max_backoff: Duration,
    /// Each wait is scaled by a random factor in `[1 - jitter, 1 + jitter]`,
    /// so many instances failing together do not retry in lockstep.
    pub jitter: f64,
    /// At most one attempt, ever: see [`StepOptions::at_most_once`]. When
    /// set, `max_attempts` is not read.
    pub at_most_once: bool,
}

impl Default for StepOptions {
    fn default() -> Self {
        StepOptions {
            max_attempts: 5,
            initial_backoff: Backoff::DEFAULT.initial,
            factor: Backoff::DEFAULT.factor,
            max_backoff: Backoff::DEFAULT.max,
            jitter: 0.0,
            at_most_once: false,
        }
    }
}

/// The waits between a step's attempts: after failed attempt `n` (1-based)
/// a step waits `min(initial * factor^(n-1), max)`, before jitter, so
/// `initial` after the first failure. The curve
/// part of [`StepOptions`], as a value a constant can hold:
/// [`Workflow::BACKOFF`](crate::Workflow::BACKOFF) is one, written by
/// `#[workflow(backoff(initial = "200ms", factor = 2.0, max = "30s"))]`.
///
/// ```
/// use std::time::Duration;
/// use workflow_core::{Backoff, StepOptions};
///
/// let backoff = Backoff { initial: Duration::from_millis(200), factor: 2.0, ..Backoff::DEFAULT };
/// let opts = StepOptions::retries(3).with_backoff(backoff);
/// assert_eq!(opts.delay_after(1), Duration::from_millis(200));
/// assert_eq!(opts.delay_after(2), Duration::from_millis(400));
/// assert_eq!(opts.max_backoff, Duration::from_secs(5));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The wait after the first failed attempt; after failed attempt `n`,
    /// `initial * factor^(n-1)`.
    pub initial: Duration,
    /// Growth per attempt; values below 1 (and NaN) count as 1 when applied.
    pub factor: f64,
    /// The longest wait, whatever the attempt.
    pub max: Duration,
}

impl Backoff {
    /// The curve of [`StepOptions::default()`]: 272 ms, factor `e`, at most
    /// 5 s (waits of about 0.27 s, 0.74 s, 2 s, then 5 s).
    pub const DEFAULT: Backoff = Backoff {
        initial: Duration::from_millis(272),
        factor: std::f64::consts::E,
        max: Duration::from_secs(5),
    };
}

impl Default for Backoff {
    /// [`Backoff::DEFAULT`].
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl StepOptions {
    /// The default policy with `max_attempts` attempts in all: the first
    /// one and up to `max_attempts - 1` retries (at least one attempt).
    pub fn attempts(max_attempts: u32) -> Self {
        Self::default().with_attempts(max_attempts)
    }

    /// These options with `max_attempts` attempts in all (at least one),
    /// their backoff and jitter kept: for a step's own count on top of
    /// what its workflow uses, `ctx.step_options().with_attempts(3)` (see
    /// [`Ctx::step_options`](crate::Ctx::step_options)). An
    /// [`at_most_once`](Self::at_most_once) policy stays at one attempt.
    #[must_use = "returns the changed options; `StepOptions` is `Copy`, so the original is left as it was"]
    pub fn with_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts.max(1);
        self
    }

    /// The same as [`StepOptions::attempts`]: `retries(5)` makes up to 5
    /// attempts in all, as `#[workflow(retries = 5)]` does (not 5 retries
    /// after the first).
    pub fn retries(max_attempts: u32) -> Self {
        Self::attempts(max_attempts)
    }

    /// No retry: one attempt. An attempt cut short (the process crashed,
    /// the worker lost its lease or shut down while the step ran) left no
    /// outcome, and the next run makes it again: a step runs at least
    /// once. For a side effect that must not happen twice and that no
    /// idempotency key can guard, see [`StepOptions::at_most_once`].
    pub fn no_retry() -> Self {
        Self::retries(1)
    }

    /// One attempt, never made twice, even across crashes: the engine
    /// records that the attempt started (`{key}@started` among the steps,
    /// one more durable write) before the closure runs. A run that finds
    /// the attempt started but no outcome recorded (the process crashed,
    /// the worker lost its lease or shut down while the closure ran) fails
    /// the step with [`Error::Step`](crate::Error::Step), saying that its
    /// outcome is unknown, instead of running it again: a compensation can
    /// look the side effect up. A step runs at most once this way, where
    /// [`no_retry`](StepOptions::no_retry) runs at least once.
    ///
    /// Prefer an idempotency key ([`Ctx::idempotency_key`](crate::Ctx::idempotency_key))
    /// where the service takes one: the step then runs to its end exactly
    /// once in effect, with retries.
    pub fn at_most_once() -> Self {
        StepOptions {
            at_most_once: true,
            ..Self::retries(1)
        }
    }

    /// Sets the backoff: `initial` after the first failure, then growing by
    /// `factor` per attempt (`initial * factor^(n-1)` after failed attempt
    /// `n`), capped at `max`.
    #[must_use = "returns the changed options; `StepOptions` is `Copy`, so the original is left as it was"]
    pub fn backoff(mut self, initial: Duration, factor: f64, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.factor = factor.max(1.0);
        self.max_backoff = max;
        self
    }

    /// Sets the backoff from a [`Backoff`], as
    /// [`backoff`](StepOptions::backoff) does from its parts.
    #[must_use = "returns the changed options; `StepOptions` is `Copy`, so the original is left as it was"]
    pub fn with_backoff(self, backoff: Backoff) -> Self {
        self.backoff(backoff.initial, backoff.factor, backoff.max)
    }

    /// Spreads each wait by up to `±fraction` (0 to 1) of itself.
    #[must_use = "returns the changed options; `StepOptions` is `Copy`, so the original is left as it was"]
    pub fn jitter(mut self, fraction: f64) -> Self {
        // `clamp` keeps NaN, which would make every wait NaN seconds.
        self.jitter = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        };
        self
    }

    /// The wait after failed attempt `attempt`, with jitter applied.
    pub fn jittered_delay_after(&self, attempt: u32) -> Duration {
        let base = self.delay_after(attempt);
        // NaN too: the fields are public.
        if self.jitter.is_nan() || self.jitter <= 0.0 {
            return base;
        }
        let unit = random_unit();
        let scale = 1.0 + self.jitter.min(1.0) * (2.0 * unit - 1.0);
        seconds(base.as_secs_f64() * scale)
    }

    /// How long to wait after failed attempt number `attempt` (1-based), before jitter.
    pub fn delay_after(&self, attempt: u32) -> Duration {
        // The fields are public: a factor set there skips `backoff`'s rule
        // (NaN or below 1 counts as 1), and no wait at first stays none
        // (0 × ∞ is NaN, which `min` would turn into the cap).
        let factor = if self.factor.is_nan() {
            1.0
        } else {
            self.factor.max(1.0)
        };
        if self.initial_backoff.is_zero() {
            return Duration::ZERO;
        }
        let exp = factor.powi(attempt.saturating_sub(1).min(64) as i32);
        let secs = (self.initial_backoff.as_secs_f64() * exp).min(self.max_backoff.as_secs_f64());
        seconds(secs)
    }
}

/// `secs` seconds as a duration: none if negative or NaN, `Duration::MAX`
/// past it (where `Duration::from_secs_f64` panics).
fn seconds(secs: f64) -> Duration {
    if secs.is_nan() || secs <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
}

/// An error a step should not retry: `Err(NonRetryable::new(err))` (or
/// [`permanent`]) fails the step at once, whatever attempts are left.
///
/// It counts wherever it sits in the error's `source()` chain: wrapped in
/// anyhow's `.context(..)`, or kept as the `#[source]` (or `#[from]`) of
/// the application's own error type with a message of its own. Not behind
/// thiserror's `#[error(transparent)]`, which hands on its inner error's
/// source and so skips the marker itself.
#[derive(Debug)]
pub struct NonRetryable(pub BoxError);

impl NonRetryable {
    /// Marks `err` as not worth retrying.
    pub fn new(err: impl Into<BoxError>) -> Self {
        NonRetryable(err.into())
    }
}

impl std::fmt::Display for NonRetryable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for NonRetryable {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// An error a step should retry no sooner than `after`: a rate limit's
/// `Retry-After`, say. `Err(RetryAfter::new(err, delay))`; the step then
/// waits the longer of `after` and its own backoff (suspending the run
/// when that is long, as any backoff does), within its attempts. Like
/// [`NonRetryable`], found anywhere in the error's `source()` chain.
#[derive(Debug)]
pub struct RetryAfter {
    /// The least wait before the next attempt.
    pub after: Duration,
    /// The error.
    pub error: BoxError,
}

impl RetryAfter {
    /// `err`, to retry no sooner than `after`.
    pub fn new(err: impl Into<BoxError>, after: Duration) -> Self {
        RetryAfter {
            after,
            error: err.into(),
        }
    }
}

impl std::fmt::Display for RetryAfter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for RetryAfter {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

/// Marks `err` as not worth retrying: `return Err(workflow::permanent(err))`.
pub fn permanent(err: impl Into<BoxError>) -> BoxError {
    Box::new(NonRetryable::new(err))
}

pub(crate) use crate::store::panic_message;

/// A random number in `[0, 1)`.
pub(crate) fn random_unit() -> f64 {
    (crate::id::random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `with_attempts` changes the count only: the backoff and jitter of
    /// the policy it is called on stay (`attempts` starts from defaults).
    #[test]
    fn with_attempts_keeps_the_rest_of_the_policy() {
        let policy = StepOptions::attempts(9)
            .backoff(Duration::from_millis(5), 2.0, Duration::from_millis(20))
            .jitter(0.5);
        let changed = policy.with_attempts(2);
        assert_eq!(changed.max_attempts, 2);
        assert_eq!(
            (
                changed.initial_backoff,
                changed.factor,
                changed.max_backoff,
                changed.jitter
            ),
            (
                policy.initial_backoff,
                policy.factor,
                policy.max_backoff,
                policy.jitter
            )
        );
        assert_eq!(policy.with_attempts(0).max_attempts, 1);
    }

    /// Extreme settings give long waits, never a panic in the handler.
    #[test]
    fn extreme_backoffs_saturate() {
        let huge = StepOptions::retries(3).backoff(Duration::MAX, 2.0, Duration::MAX);
        assert_eq!(huge.delay_after(1), Duration::MAX);
        assert!(huge.jitter(0.5).jittered_delay_after(1) >= Duration::MAX / 2);
        let nan = StepOptions::retries(3).jitter(f64::NAN);
        assert_eq!(nan.jittered_delay_after(1), nan.delay_after(1));
        let raw = StepOptions {
            jitter: f64::NAN,
            factor: f64::NAN,
            ..StepOptions::default()
        };
        assert!(raw.jittered_delay_after(2) <= raw.max_backoff);
        // NaN in the public field counts as 1, as `backoff` reads it.
        assert_eq!(raw.delay_after(3), raw.initial_backoff);
        let shrinking = StepOptions {
            factor: 0.5,
            ..StepOptions::default()
        };
        assert_eq!(shrinking.delay_after(3), shrinking.initial_backoff);
        // No first wait is no wait, whatever the factor (0 × ∞ is NaN).
        let none = StepOptions::retries(3).backoff(Duration::ZERO, f64::INFINITY, Duration::MAX);
        assert_eq!(none.delay_after(2), Duration::ZERO);
    }

    #[test]
    fn attempts_and_retries_both_count_attempts() {
        assert_eq!(StepOptions::attempts(3).max_attempts, 3);
        assert_eq!(StepOptions::retries(3).max_attempts, 3);
        assert_eq!(StepOptions::attempts(0).max_attempts, 1);
        assert_eq!(StepOptions::no_retry().max_attempts, 1);
    }

    #[test]
    fn default_backoff_matches_the_original_framework() {
        let opts = StepOptions::default();
        let delays: Vec<f64> = (1..=5)
            .map(|a| (opts.delay_after(a).as_secs_f64() * 100.0).round() / 100.0)
            .collect();
        assert_eq!(delays, [0.27, 0.74, 2.01, 5.0, 5.0]);
        assert_eq!(opts.max_attempts, 5);
    }

    #[test]
    fn with_backoff_sets_the_curve_like_backoff() {
        let opts = StepOptions::default();
        assert_eq!(
            Backoff::default(),
            Backoff {
                initial: opts.initial_backoff,
                factor: opts.factor,
                max: opts.max_backoff,
            }
        );
        let curve = Backoff {
            initial: Duration::from_millis(250),
            factor: 0.5,
            max: Duration::from_secs(1),
        };
        let opts = StepOptions::retries(3).jitter(0.1).with_backoff(curve);
        assert_eq!(
            opts,
            StepOptions::retries(3)
                .jitter(0.1)
                .backoff(curve.initial, curve.factor, curve.max)
        );
        assert_eq!(opts.factor, 1.0, "a factor below 1 is clamped");
        assert_eq!(opts.jitter, 0.1, "jitter is not part of the curve");
    }

    #[test]
    fn jitter_stays_within_its_bounds() {
        let opts = StepOptions::default().jitter(0.5);
        for attempt in 1..50 {
            let base = opts.delay_after(attempt).as_secs_f64();
            let d = opts.jittered_delay_after(attempt).as_secs_f64();
            assert!(
                d >= base * 0.5 - 1e-9 && d <= base * 1.5 + 1e-9,
                "{d} vs {base}"
            );
        }
    }

    #[test]
    fn retries_never_below_one_attempt() {
        assert_eq!(StepOptions::retries(0).max_attempts, 1);
        assert_eq!(StepOptions::no_retry().max_attempts, 1);
    }

    #[test]
    fn panic_payloads_are_read() {
        let payload: Box<dyn std::any::Any + Send> = Box::new("boom");
        assert_eq!(panic_message(&*payload), "boom");
        let payload: Box<dyn std::any::Any + Send> = Box::new(String::from("bang 7"));
        assert_eq!(panic_message(&*payload), "bang 7");
    }
}
