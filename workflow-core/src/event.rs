//! Events named once, with their payload's type, for the workflow that
//! waits and the code that sends.

use std::fmt;
use std::marker::PhantomData;

/// An event's name and its payload's type, as one constant that the
/// workflow waiting for it ([`Ctx::wait_for`](crate::Ctx::wait_for)) and
/// the code sending it ([`Instance::send`](crate::Instance::send),
/// [`Engine::send`](crate::Engine::send)) share: a misspelt name or a
/// payload of another type is a compile error, not an event that waits in
/// the inbox for ever or fails its wait.
///
/// ```
/// use workflow_core::Event;
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Approval {
///     approved: bool,
/// }
///
/// const APPROVAL: Event<Approval> = Event::new("approval");
/// assert_eq!(APPROVAL.name(), "approval");
/// ```
///
/// A name no wait can have (empty, over
/// [`MAX_KEY_BYTES`](crate::MAX_KEY_BYTES), or holding one of
/// [`RESERVED_STEP_CHARS`](crate::RESERVED_STEP_CHARS) or a NUL) fails
/// to compile in a `const`:
///
/// ```compile_fail
/// const BAD: workflow_core::Event<()> = workflow_core::Event::new("approval#2");
/// let _ = BAD;
/// ```
pub struct Event<T> {
    name: &'static str,
    payload: PhantomData<fn() -> T>,
}

impl<T> Event<T> {
    /// The event called `name`, whose payload is a `T`.
    ///
    /// # Panics
    ///
    /// If no wait can have the name (see [`Event`]); in a `const`, that
    /// is a compile error.
    pub const fn new(name: &'static str) -> Self {
        let bytes = name.as_bytes();
        assert!(!bytes.is_empty(), "an event name may not be empty");
        assert!(
            bytes.len() <= workflow_rules::MAX_KEY_BYTES,
            "an event name may be at most MAX_KEY_BYTES (512) bytes long"
        );
        // The runtime's own list; each of them is ASCII, one byte.
        let reserved = workflow_rules::step_name::RESERVED;
        let mut at = 0;
        while at < bytes.len() {
            let byte = bytes[at];
            assert!(byte != 0, "an event name may not hold a NUL");
            let mut r = 0;
            while r < reserved.len() {
                assert!(
                    byte as u32 != reserved[r] as u32,
                    "an event name may not hold `#`, `@`, `[` or `]` (RESERVED_STEP_CHARS)"
                );
                r += 1;
            }
            at += 1;
        }
        Event {
            name,
            payload: PhantomData,
        }
    }

    /// Its name, as [`Ctx::wait_for_event`](crate::Ctx::wait_for_event)
    /// and [`Engine::send_event`](crate::Engine::send_event) take it.
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

// By hand: derived, they would ask `T` for each.
impl<T> Clone for Event<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Event<T> {}

impl<T> fmt::Debug for Event<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Event")
            .field(&self.name)
            .field(&std::any::type_name::<T>())
            .finish()
    }
}

impl<T> PartialEq for Event<T> {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl<T> Eq for Event<T> {}

impl<T> std::hash::Hash for Event<T> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rule the runtime applies to wait names, applied here: every
    /// reserved character, checked against the runtime's own list.
    #[test]
    fn names_no_wait_can_have_are_refused() {
        for c in crate::RESERVED_STEP_CHARS.into_iter().chain(['\0']) {
            let name: &'static str = Box::leak(format!("a{c}b").into_boxed_str());
            assert!(
                std::panic::catch_unwind(|| Event::<()>::new(name)).is_err(),
                "{c:?}"
            );
        }
        assert!(std::panic::catch_unwind(|| Event::<()>::new("")).is_err());
        let long: &'static str = Box::leak("x".repeat(crate::MAX_KEY_BYTES + 1).into_boxed_str());
        assert!(std::panic::catch_unwind(|| Event::<()>::new(long)).is_err());
        // What waits take, Unicode and spaces included.
        let _ = Event::<()>::new("approbation reçue: niveau 2");
        let event = Event::<u32>::new("approval");
        assert_eq!((event.name(), event), ("approval", Event::new("approval")));
    }
}
