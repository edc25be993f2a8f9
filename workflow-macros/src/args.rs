//! Parsing of `#[workflow(key = value, ...)]` into raw, still unchecked values.
//!
//! Values are parsed as expressions and then matched against the literal kind
//! each key wants, rather than parsed as that literal directly, so that a value
//! of the wrong kind (`timeout = 10m`) is one recoverable error with a
//! suggestion instead of a syntax error that stops the whole attribute.

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::meta::ParseNestedMeta;
use syn::parse::Parser;
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, Lit, LitInt, LitStr, Path, Token};

use crate::ctxt::Errors;

/// Every key the attribute accepts, in the order the docs present them.
pub(crate) const KEYS: &[&str] = &[
    "name",
    "description",
    "schedule",
    "timezone",
    "timeout",
    "catch_up",
    "retries",
    "crate",
];

/// The attribute's values as written, each with its span for later errors.
#[derive(Default)]
pub(crate) struct Args {
    pub name: Option<LitStr>,
    pub description: Option<LitStr>,
    pub schedule: Option<LitStr>,
    pub timezone: Option<LitStr>,
    pub timeout: Option<LitStr>,
    pub catch_up: Option<LitStr>,
    pub retries: Option<LitInt>,
    pub krate: Option<Path>,
    seen: Vec<String>,
}

impl Args {
    /// Parses the attribute's tokens, recording every problem in `errors` and
    /// keeping whatever parsed cleanly.
    pub(crate) fn parse(tokens: TokenStream, errors: &mut Errors) -> Args {
        let mut args = Args::default();
        let parser = syn::meta::parser(|meta| args.parse_entry(meta, errors));
        if let Err(err) = parser.parse2(tokens) {
            errors.push(err);
        }
        args
    }

    fn parse_entry(&mut self, meta: ParseNestedMeta, errors: &mut Errors) -> syn::Result<()> {
        let key_span = meta.path.span();
        let key = match meta.path.get_ident() {
            Some(ident) => ident.to_string(),
            None => meta.path.to_token_stream().to_string().replace(' ', ""),
        };
        let value = take_value(&meta)?;
        if !KEYS.contains(&key.as_str()) {
            errors.push(unknown_key(&key, key_span));
            return Ok(());
        }
        let Some(value) = value else {
            errors.push(syn::Error::new(
                key_span,
                format!("`{key}` needs a value: `{key} = {}`", example(&key)),
            ));
            return Ok(());
        };
        // A key whose value was rejected still counts as seen: a later
        // repetition is a second mistake worth reporting.
        if self.seen.contains(&key) {
            errors.push(syn::Error::new(
                key_span,
                format!("duplicate key `{key}`: it is already set earlier in this attribute"),
            ));
            return Ok(());
        }
        self.seen.push(key.clone());
        match key.as_str() {
            "name" => self.name = errors.ok(string(&key, &value)),
            "description" => self.description = errors.ok(string(&key, &value)),
            "schedule" => self.schedule = errors.ok(string(&key, &value)),
            "timezone" => self.timezone = errors.ok(string(&key, &value)),
            "timeout" => self.timeout = errors.ok(string(&key, &value)),
            "catch_up" => self.catch_up = errors.ok(string(&key, &value)),
            "retries" => self.retries = errors.ok(integer(&key, &value)),
            "crate" => self.krate = errors.ok(path(&value)),
            _ => {}
        }
        Ok(())
    }
}

/// Consumes the value after a key: `= expr`, or a parenthesised list written
/// by mistake (skipped so parsing can go on), or nothing.
fn take_value(meta: &ParseNestedMeta) -> syn::Result<Option<Expr>> {
    if meta.input.peek(Token![=]) {
        return meta.value()?.parse().map(Some);
    }
    if meta.input.peek(syn::token::Paren) {
        let content;
        syn::parenthesized!(content in meta.input);
        content.parse::<TokenStream>()?;
    }
    Ok(None)
}

fn example(key: &str) -> &'static str {
    match key {
        "name" => "\"processOrder\"",
        "description" => "\"Process a new customer order\"",
        "schedule" => "\"0 9 * * MON-FRI\"",
        "timezone" => "\"Europe/Berlin\"",
        "timeout" => "\"10m\"",
        "catch_up" => "\"latest\"",
        "retries" => "3",
        _ => "::workflow",
    }
}

fn unknown_key(key: &str, span: Span) -> syn::Error {
    let valid = KEYS
        .iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let hint = match closest_key(key) {
        Some(close) => format!(" (did you mean `{close}`?)"),
        None => String::new(),
    };
    syn::Error::new(
        span,
        format!("unknown `workflow` attribute key `{key}`{hint}; valid keys are {valid}"),
    )
}

/// The valid key nearest to a misspelt one, if it is near enough to be the
/// likely intent.
fn closest_key(key: &str) -> Option<&'static str> {
    KEYS.iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(above + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

fn peel(expr: &Expr) -> &Expr {
    match expr {
        Expr::Group(group) => peel(&group.expr),
        Expr::Paren(paren) => peel(&paren.expr),
        other => other,
    }
}

fn string(key: &str, value: &Expr) -> syn::Result<LitStr> {
    match peel(value) {
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) => Ok(lit.clone()),
        // `timeout = 10m` lexes as an integer with suffix `m`: show the fix.
        Expr::Lit(ExprLit { lit, .. }) if !matches!(lit, Lit::Str(_)) => Err(syn::Error::new(
            lit.span(),
            format!(
                "`{key}` expects a string literal: `{key} = \"{}\"`",
                lit.to_token_stream()
            ),
        )),
        other => Err(syn::Error::new_spanned(
            other,
            format!(
                "`{key}` expects a string literal, e.g. `{key} = {}`",
                example(key)
            ),
        )),
    }
}

fn integer(key: &str, value: &Expr) -> syn::Result<LitInt> {
    match peel(value) {
        Expr::Lit(ExprLit {
            lit: Lit::Int(lit), ..
        }) => Ok(lit.clone()),
        other => Err(syn::Error::new_spanned(
            other,
            format!(
                "`{key}` expects an integer literal, e.g. `{key} = {}`",
                example(key)
            ),
        )),
    }
}

fn path(value: &Expr) -> syn::Result<Path> {
    match peel(value) {
        Expr::Path(path) if path.qself.is_none() && path.attrs.is_empty() => Ok(path.path.clone()),
        // serde's spelling, `crate = "::workflow"`, is accepted too.
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) => lit.parse::<Path>().map_err(|err| {
            syn::Error::new(
                lit.span(),
                format!("`crate` expects a path, e.g. `crate = ::workflow`: {err}"),
            )
        }),
        other => Err(syn::Error::new_spanned(
            other,
            "`crate` expects a path to the `workflow` crate, e.g. `crate = ::workflow`",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn parse(tokens: TokenStream) -> (Args, Vec<String>) {
        let mut errors = Errors::default();
        let args = Args::parse(tokens, &mut errors);
        (args, errors.messages())
    }

    #[test]
    fn parses_every_key() {
        let (args, errors) = parse(quote! {
            name = "processOrder", description = "Does it", schedule = "@daily",
            timezone = "Europe/Berlin", timeout = "10m", retries = 3, crate = ::workflow
        });
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            args.name.map(|l| l.value()).as_deref(),
            Some("processOrder")
        );
        assert_eq!(
            args.description.map(|l| l.value()).as_deref(),
            Some("Does it")
        );
        assert_eq!(args.schedule.map(|l| l.value()).as_deref(), Some("@daily"));
        assert_eq!(
            args.timezone.map(|l| l.value()).as_deref(),
            Some("Europe/Berlin")
        );
        assert_eq!(args.timeout.map(|l| l.value()).as_deref(), Some("10m"));
        assert_eq!(args.retries.map(|l| l.to_string()).as_deref(), Some("3"));
        let krate = args.krate.map(|p| p.to_token_stream().to_string());
        assert_eq!(krate.as_deref(), Some(":: workflow"));
    }

    #[test]
    fn empty_attribute_is_fine() {
        let (args, errors) = parse(TokenStream::new());
        assert!(errors.is_empty());
        assert!(args.name.is_none() && args.timeout.is_none() && args.krate.is_none());
    }

    #[test]
    fn crate_accepts_serde_style_string() {
        let (args, errors) = parse(quote!(crate = "my::workflow"));
        assert!(errors.is_empty(), "{errors:?}");
        let krate = args.krate.map(|p| p.to_token_stream().to_string());
        assert_eq!(krate.as_deref(), Some("my :: workflow"));
    }

    #[test]
    fn unknown_key_lists_valid_keys_and_suggests() {
        let (_, errors) = parse(quote!(nmae = "x"));
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("unknown `workflow` attribute key `nmae`"));
        assert!(errors[0].contains("did you mean `name`?"));
        assert!(errors[0].contains(
            "`name`, `description`, `schedule`, `timezone`, `timeout`, `catch_up`, `retries`, `crate`"
        ));
        let (_, errors) = parse(quote!(frobnicate = 1));
        assert!(!errors[0].contains("did you mean"), "{}", errors[0]);
    }

    #[test]
    fn duplicate_key_is_rejected_and_first_value_kept() {
        let (args, errors) = parse(quote!(timeout = "1m", timeout = "2m"));
        assert_eq!(
            errors,
            ["duplicate key `timeout`: it is already set earlier in this attribute"]
        );
        assert_eq!(args.timeout.map(|l| l.value()).as_deref(), Some("1m"));
    }

    #[test]
    fn every_error_is_collected_and_parsing_goes_on() {
        let (args, errors) = parse(quote!(
            timeout = 10m,
            retries = "3",
            bogus,
            name = "ok",
            schedule(x),
            crate = 5
        ));
        assert_eq!(errors.len(), 5, "{errors:?}");
        assert!(errors[0].contains("`timeout = \"10m\"`"), "{}", errors[0]);
        assert!(errors[1].contains("`retries` expects an integer literal"));
        assert!(errors[2].contains("unknown `workflow` attribute key `bogus`"));
        assert!(errors[3].contains("`schedule` needs a value"));
        assert!(errors[4].contains("`crate` expects a path"));
        assert_eq!(args.name.map(|l| l.value()).as_deref(), Some("ok"));
    }

    #[test]
    fn syntax_errors_are_reported() {
        let (_, errors) = parse(quote!(name = "a" "b"));
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("expected `,`"), "{errors:?}");
    }

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("name", "name"), 0);
        assert_eq!(edit_distance("nmae", "name"), 2);
        assert_eq!(edit_distance("timout", "timeout"), 1);
        assert_eq!(edit_distance("", "crate"), 5);
    }
}
