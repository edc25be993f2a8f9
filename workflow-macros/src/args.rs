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
use syn::{Expr, ExprLit, ExprUnary, Lit, LitInt, LitStr, Path, Token, UnOp};

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
    "backoff",
    "jitter",
    "crate",
];

/// The keys inside `backoff(..)`, named like the arguments of
/// `StepOptions::backoff(initial, factor, max)`.
pub(crate) const BACKOFF_KEYS: &[&str] = &["initial", "factor", "max"];

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
    pub backoff: Option<BackoffArgs>,
    pub jitter: Option<Number>,
    pub krate: Option<Path>,
    seen: Vec<String>,
}

/// `backoff(initial = "200ms", factor = 2.0, max = "30s")` as written; each
/// setting is optional.
pub(crate) struct BackoffArgs {
    /// The `backoff` key, where errors about the list as a whole point.
    pub span: Span,
    pub initial: Option<LitStr>,
    pub factor: Option<Number>,
    pub max: Option<LitStr>,
    seen: Vec<String>,
}

/// The attribute's entries: its tokens split at the commas outside any
/// brackets. An entry that is empty but for the last (a trailing comma)
/// is an error.
fn entries(tokens: TokenStream) -> Vec<syn::Result<TokenStream>> {
    let mut entries = Vec::new();
    let mut entry = TokenStream::new();
    for token in tokens {
        match &token {
            proc_macro2::TokenTree::Punct(comma) if comma.as_char() == ',' => {
                entries.push(if entry.is_empty() {
                    Err(syn::Error::new(
                        comma.span(),
                        "expected a key before this `,`",
                    ))
                } else {
                    Ok(std::mem::take(&mut entry))
                });
            }
            _ => entry.extend([token]),
        }
    }
    if !entry.is_empty() {
        entries.push(Ok(entry));
    }
    entries
}

/// A number literal as written, integer or float, perhaps negated (`-0.5`):
/// a negative value is a range error for the key to explain, not a
/// syntax error.
#[derive(Clone)]
pub(crate) struct Number {
    pub lit: Lit,
    pub negative: bool,
    /// The whole value, sign included, for errors that underline it.
    pub tokens: TokenStream,
}

impl Args {
    /// Parses the attribute's tokens, recording every problem in `errors` and
    /// keeping whatever parsed cleanly.
    pub(crate) fn parse(tokens: TokenStream, errors: &mut Errors) -> Args {
        let mut args = Args::default();
        // Entry by entry: a syntax error (`timeout = 1 h`) ends only its
        // own entry, and the keys after it are still checked, in this
        // build rather than the next.
        let entries = entries(tokens);
        let named = entries.iter().flatten().any(|entry| {
            matches!(entry.clone().into_iter().next(),
                Some(proc_macro2::TokenTree::Ident(key)) if key == "name")
        });
        for entry in entries {
            // `#[workflow("processOrder")]`: syn's "expected ident" would
            // not say that the value needs its key.
            if let Ok(entry) = &entry {
                if let Ok(lit) = syn::parse2::<LitStr>(entry.clone()) {
                    let message = if named {
                        format!("a value needs its key: `key = {}`", lit.to_token_stream())
                    } else {
                        format!("name the key: `name = {}`", lit.to_token_stream())
                    };
                    errors.push(syn::Error::new(lit.span(), message));
                    continue;
                }
            }
            let parser = syn::meta::parser(|meta| args.parse_entry(meta, errors));
            if let Err(err) = entry.and_then(|entry| parser.parse2(entry)) {
                errors.push(err);
            }
        }
        args
    }

    fn parse_entry(&mut self, meta: ParseNestedMeta, errors: &mut Errors) -> syn::Result<()> {
        let (key, key_span) = key_of(&meta);
        if key == "backoff" {
            return self.parse_backoff(meta, key_span, errors);
        }
        let list = List {
            keys: KEYS,
            unknown: unknown_key,
            named: "this attribute",
        };
        let Some(value) = list.value(&meta, &key, key_span, &mut self.seen, errors)? else {
            return Ok(());
        };
        match key.as_str() {
            "name" => self.name = errors.ok(string(&key, &value)),
            "description" => self.description = errors.ok(string(&key, &value)),
            "schedule" => self.schedule = errors.ok(string(&key, &value)),
            "timezone" => self.timezone = errors.ok(string(&key, &value)),
            "timeout" => self.timeout = errors.ok(string(&key, &value)),
            "catch_up" => self.catch_up = errors.ok(string(&key, &value)),
            "retries" => self.retries = errors.ok(integer(&key, &value)),
            "jitter" => self.jitter = errors.ok(number(&key, &value)),
            "crate" => self.krate = errors.ok(path(&value)),
            _ => {}
        }
        Ok(())
    }

    /// `backoff(..)`: a list of settings rather than `= value`.
    fn parse_backoff(
        &mut self,
        meta: ParseNestedMeta,
        key_span: Span,
        errors: &mut Errors,
    ) -> syn::Result<()> {
        let usage =
            r#"`backoff(initial = "200ms", factor = 2.0, max = "30s")`, each setting optional"#;
        if !meta.input.peek(syn::token::Paren) {
            let message = format!("`backoff` takes a list of settings: {usage}");
            let err = match take_value(&meta)? {
                Some(value) => syn::Error::new_spanned(value, message),
                None => syn::Error::new(key_span, message),
            };
            errors.push(err);
            return Ok(());
        }
        if self.seen.iter().any(|k| k == "backoff") {
            errors.push(syn::Error::new(
                key_span,
                "duplicate key `backoff`: it is already set earlier in this attribute",
            ));
            take_value(&meta)?;
            return Ok(());
        }
        self.seen.push("backoff".to_owned());
        let mut backoff = BackoffArgs {
            span: key_span,
            initial: None,
            factor: None,
            max: None,
            seen: Vec::new(),
        };
        let content;
        syn::parenthesized!(content in meta.input);
        let content: TokenStream = content.parse()?;
        if content.is_empty() {
            errors.push(syn::Error::new(
                key_span,
                format!(
                    "`backoff()` sets nothing: give at least one of `initial`, `factor` and \
                     `max`, e.g. {usage}; or leave `backoff` out to keep the engine's"
                ),
            ));
        } else {
            // A syntax error inside the list ends only the list: the keys
            // after it are still read.
            let parser = syn::meta::parser(|inner| backoff.parse_entry(inner, errors));
            if let Err(err) = parser.parse2(content) {
                errors.push(err);
            }
        }
        self.backoff = Some(backoff);
        Ok(())
    }
}

impl BackoffArgs {
    fn parse_entry(&mut self, meta: ParseNestedMeta, errors: &mut Errors) -> syn::Result<()> {
        let (key, key_span) = key_of(&meta);
        let list = List {
            keys: BACKOFF_KEYS,
            unknown: unknown_backoff_key,
            named: "this `backoff(..)`",
        };
        let Some(value) = list.value(&meta, &key, key_span, &mut self.seen, errors)? else {
            return Ok(());
        };
        match key.as_str() {
            "initial" => self.initial = errors.ok(string(&key, &value)),
            "factor" => self.factor = errors.ok(number(&key, &value)),
            "max" => self.max = errors.ok(string(&key, &value)),
            _ => {}
        }
        Ok(())
    }
}

/// An entry's key as written (a path like `a::b` without spaces), and its span.
fn key_of(meta: &ParseNestedMeta) -> (String, Span) {
    let key = match meta.path.get_ident() {
        Some(ident) => ident.to_string(),
        None => meta.path.to_token_stream().to_string().replace(' ', ""),
    };
    (key, meta.path.span())
}

/// A list of `key = value` entries: the attribute itself, or `backoff(..)`.
struct List {
    keys: &'static [&'static str],
    /// The error for a key not in `keys`, with its hint.
    unknown: fn(&str, Span) -> syn::Error,
    /// The list, as the duplicate-key message names it.
    named: &'static str,
}

impl List {
    /// The value of entry `key`, or `None` with the error pushed: an
    /// unknown key, a key without value, or one already `seen` in this list.
    /// A key whose value is rejected later still counts as seen: a later
    /// repetition is a second mistake worth reporting.
    fn value(
        &self,
        meta: &ParseNestedMeta,
        key: &str,
        key_span: Span,
        seen: &mut Vec<String>,
        errors: &mut Errors,
    ) -> syn::Result<Option<Expr>> {
        let value = take_value(meta)?;
        if !self.keys.contains(&key) {
            errors.push((self.unknown)(key, key_span));
            return Ok(None);
        }
        let Some(value) = value else {
            errors.push(syn::Error::new(
                key_span,
                format!("`{key}` needs a value: `{key} = {}`", example(key)),
            ));
            return Ok(None);
        };
        if seen.iter().any(|s| s == key) {
            errors.push(syn::Error::new(
                key_span,
                format!(
                    "duplicate key `{key}`: it is already set earlier in {}",
                    self.named
                ),
            ));
            return Ok(None);
        }
        seen.push(key.to_owned());
        Ok(Some(value))
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
        "jitter" => "0.2",
        "initial" => "\"200ms\"",
        "factor" => "2.0",
        "max" => "\"30s\"",
        _ => "::workflow",
    }
}

fn key_list(keys: &[&str]) -> String {
    keys.iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn unknown_key(key: &str, span: Span) -> syn::Error {
    let moved = BACKOFF_KEYS.contains(&key).then(|| {
        format!(
            " (`{key}` is a setting of `backoff`: `backoff({key} = {})`)",
            example(key)
        )
    });
    // Attempts and retries differ by one: say which `retries` counts.
    let moved = moved.or_else(|| match key {
        "max_attempts" | "attempts" => Some(
            " (did you mean `retries`? It counts attempts in all, the first included: \
             `retries = 3` makes up to 3)"
                .to_owned(),
        ),
        "retry" | "max_retries" => Some(
            " (did you mean `retries`? It counts attempts in all, the first included: \
             3 retries after the first attempt are `retries = 4`)"
                .to_owned(),
        ),
        _ => None,
    });
    // `StepOptions`' field names, which users of `step_with` know.
    let alias = match key {
        "cron" => Some("schedule"),
        "tz" | "time_zone" => Some("timezone"),
        "rename" => Some("name"),
        "initial_backoff" => Some("backoff(initial = \"200ms\")"),
        "max_backoff" => Some("backoff(max = \"30s\")"),
        _ => None,
    };
    unknown_in("`workflow` attribute", KEYS, key, span, moved, alias)
}

fn unknown_backoff_key(key: &str, span: Span) -> syn::Error {
    let moved = KEYS.contains(&key).then(|| {
        format!(
            " (`{key}` is a key of `workflow` itself: write `{key} = {}` next to `backoff(..)`, \
             not inside it)",
            example(key)
        )
    });
    let alias = match key {
        "cap" | "max_backoff" => Some("max"),
        "multiplier" | "base" => Some("factor"),
        "initial_backoff" => Some("initial"),
        _ => None,
    };
    unknown_in("`backoff`", BACKOFF_KEYS, key, span, moved, alias)
}

/// `key` is not one of `keys`, the keys of the list called `what`: `moved`
/// says where a key of the other list belongs; otherwise `alias`, or the
/// nearest valid key, is suggested.
fn unknown_in(
    what: &str,
    keys: &[&'static str],
    key: &str,
    span: Span,
    moved: Option<String>,
    alias: Option<&str>,
) -> syn::Error {
    let hint = moved.unwrap_or_else(|| match alias.or(closest_key(key, keys)) {
        Some(close) => format!(" (did you mean `{close}`?)"),
        None => String::new(),
    });
    syn::Error::new(
        span,
        format!(
            "unknown {what} key `{key}`{hint}; valid keys are {}",
            key_list(keys)
        ),
    )
}

/// The valid key nearest to a misspelt one, if it is near enough to be the
/// likely intent.
fn closest_key(key: &str, keys: &[&'static str]) -> Option<&'static str> {
    keys.iter()
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
        // `timeout = 10m` lexes as an integer with suffix `m`: show the fix,
        // with the text the literal holds (`b"x"` and `'x'` as `"x"`).
        Expr::Lit(ExprLit { lit, .. }) if !matches!(lit, Lit::Str(_)) => {
            let text = match lit {
                Lit::ByteStr(bytes) => String::from_utf8_lossy(&bytes.value()).into_owned(),
                Lit::CStr(c) => c.value().to_string_lossy().into_owned(),
                Lit::Char(c) => c.value().to_string(),
                Lit::Byte(b) => char::from(b.value()).to_string(),
                other => other.to_token_stream().to_string(),
            };
            Err(syn::Error::new(
                lit.span(),
                format!("`{key}` expects a string literal: `{key} = {text:?}`"),
            ))
        }
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
        Expr::Unary(syn::ExprUnary {
            op: syn::UnOp::Neg(_),
            expr,
            ..
        }) if matches!(
            peel(expr),
            Expr::Lit(ExprLit {
                lit: Lit::Int(_),
                ..
            })
        ) =>
        {
            Err(syn::Error::new_spanned(
                value,
                format!(
                    "`{key}` cannot be negative, found `{}`; e.g. `{key} = {}`",
                    quote::ToTokens::to_token_stream(value)
                        .to_string()
                        .replace(' ', ""),
                    example(key)
                ),
            ))
        }
        other => Err(syn::Error::new_spanned(
            other,
            format!(
                "`{key}` expects an integer literal, e.g. `{key} = {}`",
                example(key)
            ),
        )),
    }
}

fn number(key: &str, value: &Expr) -> syn::Result<Number> {
    let is_number = |expr: &Expr| match peel(expr) {
        Expr::Lit(ExprLit { lit, .. }) if matches!(lit, Lit::Int(_) | Lit::Float(_)) => {
            Some(lit.clone())
        }
        _ => None,
    };
    let tokens = value.to_token_stream();
    if let Some(lit) = is_number(value) {
        return Ok(Number {
            lit,
            negative: false,
            tokens,
        });
    }
    match peel(value) {
        Expr::Unary(ExprUnary {
            op: UnOp::Neg(_),
            expr,
            ..
        }) if is_number(expr).is_some() => Ok(Number {
            lit: is_number(expr).expect("checked"),
            negative: true,
            tokens,
        }),
        // `factor = "2"`: show the unquoted form when it is a number.
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) if lit.value().trim().parse::<f64>().is_ok() => Err(syn::Error::new(
            lit.span(),
            format!(
                "`{key}` expects a number literal, not a string: `{key} = {}`",
                lit.value().trim()
            ),
        )),
        other => Err(syn::Error::new_spanned(
            other,
            format!(
                "`{key}` expects a number literal, e.g. `{key} = {}`",
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

    /// A syntax error ends its own entry only: the keys after it are
    /// still read and checked.
    #[test]
    fn a_syntax_error_does_not_hide_the_entries_after_it() {
        let (args, errors) = parse(quote!(timeout = 1 h, bogus = 1, name = "ok",, retries = 2,));
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(
            errors[0].contains("`timeout` expects a string"),
            "{}",
            errors[0]
        );
        assert!(errors[1].contains("expected `,`"), "{}", errors[1]);
        assert!(errors[2].contains("unknown `workflow` attribute key `bogus`"));
        assert_eq!(errors[3], "expected a key before this `,`");
        assert_eq!(args.name.map(|l| l.value()).as_deref(), Some("ok"));
        assert_eq!(args.retries.map(|l| l.to_string()).as_deref(), Some("2"));
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
            "`name`, `description`, `schedule`, `timezone`, `timeout`, `catch_up`, `retries`, \
             `backoff`, `jitter`, `crate`"
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

    fn text(n: &Option<Number>) -> Option<String> {
        n.as_ref().map(|n| n.tokens.to_string().replace(' ', ""))
    }

    #[test]
    fn parses_backoff_and_jitter() {
        let (args, errors) = parse(quote! {
            retries = 5, backoff(initial = "200ms", factor = 2.0, max = "30s"), jitter = 0.2
        });
        assert!(errors.is_empty(), "{errors:?}");
        let backoff = args.backoff.expect("backoff");
        assert_eq!(backoff.initial.map(|l| l.value()).as_deref(), Some("200ms"));
        assert_eq!(text(&backoff.factor).as_deref(), Some("2.0"));
        assert_eq!(backoff.max.map(|l| l.value()).as_deref(), Some("30s"));
        assert_eq!(text(&args.jitter).as_deref(), Some("0.2"));
    }

    #[test]
    fn backoff_settings_are_each_optional() {
        let (args, errors) = parse(quote!(backoff(factor = 3)));
        assert!(errors.is_empty(), "{errors:?}");
        let backoff = args.backoff.expect("backoff");
        assert!(backoff.initial.is_none() && backoff.max.is_none());
        assert_eq!(text(&backoff.factor).as_deref(), Some("3"));
        // Negative numbers parse, for the range check to explain.
        let (args, errors) = parse(quote!(jitter = -0.5));
        assert!(errors.is_empty(), "{errors:?}");
        let jitter = args.jitter.expect("jitter");
        assert!(jitter.negative);
        assert_eq!(text(&Some(jitter)).as_deref(), Some("-0.5"));
    }

    #[test]
    fn backoff_must_be_a_non_empty_list() {
        let (args, errors) = parse(quote!(backoff = "exponential"));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("`backoff` takes a list of settings: `backoff(initial = "),
            "{}",
            errors[0]
        );
        assert!(args.backoff.is_none());
        let (_, errors) = parse(quote!(backoff));
        assert!(
            errors[0].starts_with("`backoff` takes a list"),
            "{errors:?}"
        );
        let (_, errors) = parse(quote!(backoff()));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("`backoff()` sets nothing"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn backoff_keys_are_checked_and_suggested() {
        let (args, errors) = parse(quote!(backoff(
            inital = "1s",
            jitter = 0.2,
            cap = "9s",
            max,
            factor = "2",
            initial = 200ms,
            max = "1m",
            max = "2m"
        )));
        assert_eq!(errors.len(), 7, "{errors:?}");
        assert!(
            errors[0].starts_with(
                "unknown `backoff` key `inital` (did you mean `initial`?); valid keys are \
                 `initial`, `factor`, `max`"
            ),
            "{}",
            errors[0]
        );
        assert!(
            errors[1].contains("`jitter` is a key of `workflow` itself: write `jitter = 0.2`"),
            "{}",
            errors[1]
        );
        assert!(errors[2].contains("did you mean `max`?"), "{}", errors[2]);
        assert_eq!(errors[3], "`max` needs a value: `max = \"30s\"`");
        assert_eq!(
            errors[4],
            "`factor` expects a number literal, not a string: `factor = 2`"
        );
        assert_eq!(
            errors[5],
            "`initial` expects a string literal: `initial = \"200ms\"`"
        );
        assert_eq!(
            errors[6],
            "duplicate key `max`: it is already set earlier in this `backoff(..)`"
        );
        let backoff = args.backoff.expect("backoff");
        assert_eq!(backoff.max.map(|l| l.value()).as_deref(), Some("1m"));
    }

    #[test]
    fn backoff_settings_at_the_top_level_point_into_backoff() {
        let (_, errors) = parse(quote!(
            initial = "1s",
            max_attempts = 3,
            jiter = 0.1,
            max_retries = 3
        ));
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(
            errors[0]
                .contains("`initial` is a setting of `backoff`: `backoff(initial = \"200ms\")`"),
            "{}",
            errors[0]
        );
        assert!(
            errors[1].contains("`retries = 3` makes up to 3"),
            "{}",
            errors[1]
        );
        // Not `retries = 3`, which would be one retry fewer than asked.
        assert!(
            errors[3].contains("3 retries after the first attempt are `retries = 4`"),
            "{}",
            errors[3]
        );
        assert!(
            errors[2].contains("did you mean `jitter`?"),
            "{}",
            errors[2]
        );
    }

    #[test]
    fn duplicate_backoff_is_rejected_and_first_kept() {
        let (args, errors) = parse(quote!(
            backoff(initial = "1s"),
            jitter = 0.1,
            backoff(initial = "2s"),
            jitter = 0.3
        ));
        assert_eq!(
            errors,
            [
                "duplicate key `backoff`: it is already set earlier in this attribute",
                "duplicate key `jitter`: it is already set earlier in this attribute"
            ]
        );
        let initial = args.backoff.and_then(|b| b.initial).map(|l| l.value());
        assert_eq!(initial.as_deref(), Some("1s"));
        assert_eq!(text(&args.jitter).as_deref(), Some("0.1"));
    }

    #[test]
    fn numbers_must_be_number_literals() {
        let (_, errors) = parse(quote!(jitter = "a lot", backoff(factor = two)));
        assert_eq!(
            errors,
            [
                "`jitter` expects a number literal, e.g. `jitter = 0.2`",
                "`factor` expects a number literal, e.g. `factor = 2.0`"
            ]
        );
    }

    #[test]
    fn a_syntax_error_inside_backoff_ends_only_the_list() {
        let (args, errors) = parse(quote!(backoff(initial = "1s" "2s"), name = "ok"));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("expected `,`"), "{errors:?}");
        assert_eq!(args.name.map(|l| l.value()).as_deref(), Some("ok"));
        let initial = args.backoff.and_then(|b| b.initial).map(|l| l.value());
        assert_eq!(initial.as_deref(), Some("1s"));
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
