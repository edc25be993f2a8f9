//! Error accumulation, after serde_derive's `Ctxt`: every check records its
//! error and carries on, so one build reports every mistake at once instead
//! of one per edit-compile cycle.

use proc_macro2::TokenStream;

/// The errors found so far, in source order of discovery.
#[derive(Default)]
pub(crate) struct Errors {
    combined: Option<syn::Error>,
}

impl Errors {
    /// Records an error.
    pub(crate) fn push(&mut self, err: syn::Error) {
        match &mut self.combined {
            Some(combined) => combined.combine(err),
            None => self.combined = Some(err),
        }
    }

    /// Records the error of a failed check, passing its value through.
    pub(crate) fn ok<T>(&mut self, result: syn::Result<T>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(err) => {
                self.push(err);
                None
            }
        }
    }

    /// Whether nothing has been recorded.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.combined.is_none()
    }

    /// One `compile_error!` per recorded error, each at its own span.
    pub(crate) fn to_compile_errors(&self) -> TokenStream {
        self.combined
            .as_ref()
            .map(syn::Error::to_compile_error)
            .unwrap_or_default()
    }

    /// The messages, for unit tests.
    #[cfg(test)]
    pub(crate) fn messages(&self) -> Vec<String> {
        self.combined
            .iter()
            .flat_map(|err| err.clone().into_iter().map(|e| e.to_string()))
            .collect()
    }
}
