//! Values the application hands the engine for its handlers: a database
//! pool, an HTTP client, settings. One per type, as axum's `Extension` and
//! apalis's `Data` do, so a handler asks for what it needs by type instead
//! of reaching for a `static`.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;

use crate::error::{Error, Result};

/// One value per type.
#[derive(Clone, Default)]
pub(crate) struct DataMap(HashMap<TypeId, Arc<dyn Any + Send + Sync>>);

impl DataMap {
    /// Adds `value`, replacing an earlier value of its type.
    pub(crate) fn insert<T: Send + Sync + 'static>(&mut self, value: T) {
        self.0.insert(TypeId::of::<T>(), Arc::new(value));
    }

    /// The value of type `T`, if one was given.
    pub(crate) fn get<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.0.get(&TypeId::of::<T>())?.downcast_ref()
    }

    /// The value of type `T`, or an error that names the type and the fix.
    pub(crate) fn require<T: Send + Sync + 'static>(&self) -> Result<&T> {
        self.get().ok_or_else(|| {
            Error::Config(format!(
                "no value of type `{}` was given to the engine: add it with \
                 `Engine::builder().data(..)` (values are found by their exact type: \
                 `Arc<T>` and `T` are two types)",
                std::any::type_name::<T>()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_value_per_type() {
        let mut data = DataMap::default();
        data.insert(7_u32);
        data.insert(String::from("first"));
        data.insert(String::from("second"));
        assert_eq!(data.get::<u32>(), Some(&7));
        assert_eq!(data.get::<String>().map(String::as_str), Some("second"));
        assert_eq!(data.get::<u64>(), None);
        let err = data.require::<u64>().unwrap_err().to_string();
        assert!(err.contains("no value of type `u64`"), "{err}");
        assert!(err.contains(".data(..)"), "{err}");
    }
}
