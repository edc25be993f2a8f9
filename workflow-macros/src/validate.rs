//! Checks of attribute values and step names. Each returns a `syn::Error`
//! spanned at the offending token, with a message that says what is wrong
//! and what would be right.

use std::time::Duration;

use proc_macro2::Span;
use syn::{LitInt, LitStr};

use workflow_rules::step_name;

use crate::args::{BackoffArgs, Number};
use crate::ast::{Backoff, StepCall};

/// `Backoff::DEFAULT.initial` of workflow-core, which a `backoff(..)` without
/// `initial` keeps (a unit test checks the two agree).
pub(crate) const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_millis(272);
/// `Backoff::DEFAULT.max`, likewise.
pub(crate) const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Longest name accepted: the limit AI tool APIs put on function names.
const MAX_NAME_LEN: usize = 64;

/// The registered name doubles as an AI tool name, so it must fit the
/// OpenAI/Anthropic tool-name pattern `^[a-zA-Z0-9_-]{1,64}$`.
pub(crate) fn workflow_name(name: &str, span: Span, from_fn: bool) -> syn::Result<()> {
    let problem = if name.is_empty() {
        Some("it is empty".to_owned())
    } else if name.chars().count() > MAX_NAME_LEN {
        Some(format!(
            "it is {} characters long, the limit is {MAX_NAME_LEN}",
            name.chars().count()
        ))
    } else {
        name.chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
            .map(|c| format!("it contains {c:?}"))
    };
    match problem {
        None => Ok(()),
        Some(problem) => {
            let fix = if from_fn {
                "; set one with `#[workflow(name = \"...\")]`"
            } else {
                ""
            };
            Err(syn::Error::new(
                span,
                format!(
                    "invalid workflow name {name:?}: {problem}; a name may only use ASCII \
                     letters, digits, `_` and `-`, 1 to {MAX_NAME_LEN} characters (it is also \
                     the AI tool name){fix}"
                ),
            ))
        }
    }
}

/// Parses `schedule` the way the scheduler will: 5 fields, or 6 with
/// seconds first; names like `MON`/`JAN`; `@daily`-style nicknames.
pub(crate) fn cron(lit: &LitStr) -> syn::Result<()> {
    workflow_rules::cron::parse(&lit.value())
        .map(drop)
        .map_err(|why| {
            syn::Error::new(
                lit.span(),
                format!(
                    "invalid cron expression \"{}\" in `schedule`: {why}",
                    lit.value()
                ),
            )
        })
}

/// Parses `timeout` with humantime; it must be at least a millisecond.
pub(crate) fn timeout(lit: &LitStr) -> syn::Result<Duration> {
    let text = lit.value();
    let hint = r#"write a duration like "30s", "10m", "1h 30m" or "2days""#;
    let duration = workflow_rules::duration::parse(&text).map_err(|err| {
        syn::Error::new(
            lit.span(),
            format!("invalid `timeout` \"{text}\" ({err}); {hint}"),
        )
    })?;
    if duration < Duration::from_millis(1) {
        return Err(syn::Error::new(
            lit.span(),
            format!(
                "invalid `timeout` \"{text}\": a workflow needs time to run, \
                 the timeout must be at least 1ms; {hint}"
            ),
        ));
    }
    if u64::try_from(duration.as_millis()).is_err() {
        return Err(syn::Error::new(
            lit.span(),
            format!("invalid `timeout` \"{text}\": too large"),
        ));
    }
    Ok(duration)
}

/// Checks only the shape of an IANA name (`Area/Location`, or one of the
/// tz database's one-word names such as `UTC` or `EST`): the real lookup
/// happens at run time, so no time zone database is needed at compile time.
pub(crate) fn timezone(lit: &LitStr) -> syn::Result<String> {
    let tz = lit.value();
    if workflow_rules::timezone::plausible(&tz) {
        Ok(tz)
    } else {
        Err(syn::Error::new(
            lit.span(),
            format!(
                "\"{tz}\" is not an IANA time zone name; expected an `Area/Location` name \
                 like \"Europe/Berlin\" or \"America/New_York\", or `UTC`"
            ),
        ))
    }
}

/// `catch_up = "all" | "latest" | "none"`.
pub(crate) fn catch_up(lit: &LitStr) -> syn::Result<crate::ast::CatchUp> {
    use crate::ast::CatchUp;
    match lit.value().as_str() {
        "all" => Ok(CatchUp::All),
        "latest" => Ok(CatchUp::Latest),
        "none" => Ok(CatchUp::None),
        other => Err(syn::Error::new(
            lit.span(),
            format!(
                "invalid `catch_up` {other:?}: expected \"latest\" (run the most recent missed tick once, \
                 the default), \"all\" (run every missed tick) or \"none\" (skip missed ticks)"
            ),
        )),
    }
}

/// `retries` must be a whole number of at least 1.
pub(crate) fn retries(lit: &LitInt) -> syn::Result<u32> {
    let bad = || {
        syn::Error::new(
            lit.span(),
            format!(
                "`retries` counts attempts in all and must be at least 1, found `{lit}`; \
                 `retries = 1` makes one attempt and no retry"
            ),
        )
    };
    if !lit.suffix().is_empty() {
        return Err(syn::Error::new(
            lit.span(),
            format!(
                "write `retries` without a type suffix: `retries = {}`",
                lit.base10_digits()
            ),
        ));
    }
    match lit.base10_parse::<u32>() {
        Ok(n) if n >= 1 => Ok(n),
        // Digits only (the sign and a suffix are refused above): too many.
        Err(_) => Err(syn::Error::new(
            lit.span(),
            format!("`retries` is at most {}, found `{lit}`", u32::MAX),
        )),
        _ => Err(bad()),
    }
}

/// Checks `backoff(..)`: each duration parses, `factor` is a finite number
/// of at least 1, and `initial` is not above `max` (either one possibly
/// left at its default). Records every problem and returns what is valid.
pub(crate) fn backoff(args: &BackoffArgs, errors: &mut crate::ctxt::Errors) -> Backoff {
    let initial = args
        .initial
        .as_ref()
        .and_then(|lit| errors.ok(backoff_duration("initial", lit)));
    let max = args
        .max
        .as_ref()
        .and_then(|lit| errors.ok(backoff_duration("max", lit)));
    let factor = args.factor.as_ref().and_then(|n| errors.ok(factor(n)));
    let shown = |d: Duration| humantime::format_duration(d).to_string();
    match (&args.initial, initial, &args.max, max) {
        (Some(_), Some(initial), Some(max_lit), Some(max)) if initial > max => {
            errors.push(syn::Error::new(
                max_lit.span(),
                format!(
                    "`max` \"{}\" in `backoff` is less than its `initial` \"{}\": every wait \
                     would be `max`, leaving `initial` and `factor` without effect; raise `max` \
                     or lower `initial`",
                    max_lit.value(),
                    args.initial.as_ref().map(LitStr::value).unwrap_or_default()
                ),
            ));
        }
        (Some(initial_lit), Some(initial), None, _) if initial > DEFAULT_MAX_BACKOFF => {
            errors.push(syn::Error::new(
                initial_lit.span(),
                format!(
                    "`initial` \"{}\" in `backoff` is more than the default `max` of {}, \
                     which caps every wait: set `max` too, e.g. `max = \"{}\"`",
                    initial_lit.value(),
                    shown(DEFAULT_MAX_BACKOFF),
                    shown(initial.saturating_mul(10)),
                ),
            ));
        }
        (None, _, Some(max_lit), Some(max)) if max < DEFAULT_INITIAL_BACKOFF => {
            errors.push(syn::Error::new(
                max_lit.span(),
                format!(
                    "`max` \"{}\" in `backoff` is less than the default `initial` of {}: \
                     set `initial` too, at most `max`, e.g. `initial = \"{}\"`",
                    max_lit.value(),
                    shown(DEFAULT_INITIAL_BACKOFF),
                    max_lit.value(),
                ),
            ));
        }
        _ => {}
    }
    Backoff {
        initial,
        factor,
        max,
    }
}

/// A duration of `backoff(..)`, parsed with humantime; zero is allowed (no
/// wait).
fn backoff_duration(key: &str, lit: &LitStr) -> syn::Result<Duration> {
    let text = lit.value();
    workflow_rules::duration::parse(&text).map_err(|err| {
        syn::Error::new(
            lit.span(),
            format!(
                "invalid `{key}` \"{text}\" in `backoff` ({err}); write a duration \
                 like \"200ms\", \"5s\" or \"1m 30s\""
            ),
        )
    })
}

/// The value of a number literal, sign included. A suffix other than
/// `f64` is refused: the value is an `f64`.
fn number(key: &str, n: &Number) -> syn::Result<f64> {
    let (digits, suffix) = match &n.lit {
        syn::Lit::Float(lit) => (lit.base10_parse::<f64>(), lit.suffix()),
        syn::Lit::Int(lit) => (lit.base10_parse::<f64>(), lit.suffix()),
        _ => unreachable!("args::number keeps only number literals"),
    };
    if !suffix.is_empty() && suffix != "f64" {
        return Err(syn::Error::new_spanned(
            &n.tokens,
            format!("`{key}` is an `f64`: write the number without the `{suffix}` suffix"),
        ));
    }
    let value = digits?;
    // `-0.0` is 0.0, and is written back as such.
    Ok(if n.negative { 0.0 - value } else { value })
}

/// `factor` must be a finite number of at least 1 (1 keeps every wait at
/// `initial`).
pub(crate) fn factor(n: &Number) -> syn::Result<f64> {
    let value = number("factor", n)?;
    if value.is_finite() && value >= 1.0 {
        return Ok(value);
    }
    let tokens = &n.tokens;
    Err(syn::Error::new_spanned(
        tokens,
        format!(
            "`factor` in `backoff` must be a finite number of at least 1.0, found `{}`: each \
             wait is the one before times `factor` (1.0 keeps them all equal, 2.0 doubles them)",
            tokens.to_string().replace(' ', "")
        ),
    ))
}

/// `jitter` must be a fraction from 0 to 1.
pub(crate) fn jitter(n: &Number) -> syn::Result<f64> {
    let value = number("jitter", n)?;
    if (0.0..=1.0).contains(&value) {
        return Ok(value);
    }
    let tokens = &n.tokens;
    Err(syn::Error::new_spanned(
        tokens,
        format!(
            "`jitter` must be a fraction from 0.0 to 1.0, found `{}`: each wait is scaled by a \
             random factor in `[1 - jitter, 1 + jitter]` (0.2 spreads it by up to 20%)",
            tokens.to_string().replace(' ', "")
        ),
    ))
}

/// An error at each call site whose step name the runtime would refuse:
/// empty, or containing a character it reserves for derived keys, where
/// `"fetch#1"` would share its record with the second run of `"fetch"`.
pub(crate) fn invalid_step_names(calls: &[StepCall]) -> Vec<syn::Error> {
    calls
        .iter()
        .filter_map(|call| {
            let name = &call.name;
            let message = if name.is_empty() {
                "step name is empty; give the step a name that says what it does".to_owned()
            } else if name.contains('\0') {
                "step name contains a NUL character, which PostgreSQL cannot store; rename the step"
                    .to_owned()
            } else if name.len() > workflow_rules::MAX_KEY_BYTES {
                format!(
                    "step name is {} bytes long; at most {} are accepted (every store indexes \
                     step names): give the step a shorter name",
                    name.len(),
                    workflow_rules::MAX_KEY_BYTES
                )
            } else {
                let reserved = step_name::reserved_in(name)?;
                let renamed = name
                    .replace(step_name::RESERVED, "-")
                    .trim_end_matches('-')
                    .to_owned();
                let example = if renamed.is_empty() {
                    String::new()
                } else {
                    format!(", e.g. \"{renamed}\"")
                };
                format!(
                    "step name \"{name}\" contains `{reserved}`, which the engine reserves for \
                     the keys it derives from step names (\"name#1\" for a repeated name, \
                     \"name@timeout\", \"name[0]\"); a step name may not contain {}: \
                     rename the step{example}",
                    step_name::reserved_list()
                )
            };
            Some(syn::Error::new(call.span, message))
        })
        .collect()
}

/// An error at each call site that reuses a step name already used at
/// another site that may run in the same run (not in another arm of the
/// same `if` or `match`), inside loops too. The runtime numbers the uses
/// of a name in the order they run (`name`, `name#1`, ...), whichever call
/// site makes them: a loop that ran one time fewer after a code change
/// would hand the next site's step a record of the loop's, and replay it
/// as that step's result. Two waits for one event may share its name (the
/// name is what senders use).
pub(crate) fn duplicate_steps(calls: &[StepCall]) -> Vec<syn::Error> {
    let mut errors = Vec::new();
    let waits =
        |a: &StepCall, b: &StepCall| a.method == "wait_for_event" && b.method == "wait_for_event";
    for (i, call) in calls.iter().enumerate() {
        let Some(first) = calls[..i]
            .iter()
            .find(|c| c.name == call.name && !c.excludes(call) && !waits(c, call))
        else {
            continue;
        };
        let line = first.span.start().line;
        let mut where_ = if line > 0 {
            format!("at line {line}")
        } else {
            "above".to_owned()
        };
        if first.method != call.method {
            where_ = format!("by `ctx.{}` {where_}", first.method);
        }
        let name = &call.name;
        let why = if first.in_loop || call.in_loop {
            format!(
                "the runs of a name are numbered in the order they happen, whichever call \
                 makes them (\"{name}\", \"{name}#1\", ...), so a loop that runs once less \
                 after a code change would shift the other call's record onto another step"
            )
        } else {
            format!(
                "one call inside a loop may repeat its own name: its runs are recorded as \
                 \"{name}\", \"{name}#1\", \"{name}#2\", ..."
            )
        };
        errors.push(syn::Error::new(
            call.span,
            format!(
                "step name \"{name}\" is already used {where_}; give each named `ctx` call \
                 (step, sleep, wait, child...) a distinct name, e.g. \"{name}-2\" ({why})"
            ),
        ));
    }
    errors
}

/// An error at each named call inside a step's closure, which the runtime
/// refuses every time (`Error::NestedStep`).
pub(crate) fn nested_calls(calls: &[StepCall]) -> Vec<syn::Error> {
    calls
        .iter()
        .filter_map(|call| {
            let outer = call.in_step.as_ref()?;
            Some(syn::Error::new(
                call.span,
                format!(
                    "`ctx.{method}(\"{name}\", ..)` is inside the closure of step \"{outer}\", \
                     where every run refuses it (a recorded step never runs its closure again); \
                     make `ctx` calls in the handler's body, before or after the step",
                    method = call.method,
                    name = call.name,
                ),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(s: &str) -> LitStr {
        LitStr::new(s, Span::call_site())
    }

    /// A call of `ctx.{method}("{name}", ..)`, in a loop or not.
    fn named_call(name: &str, method: &str, in_loop: bool) -> StepCall {
        StepCall {
            name: name.to_owned(),
            span: Span::call_site(),
            in_loop,
            is_step: method == "step",
            method: method.to_owned(),
            in_step: None,
            arms: Vec::new(),
        }
    }

    fn messages(errors: Vec<syn::Error>) -> Vec<String> {
        errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn parses_timeouts() {
        assert_eq!(timeout(&lit("10m")).ok(), Some(Duration::from_secs(600)));
        assert_eq!(
            timeout(&lit("1h 30m")).ok(),
            Some(Duration::from_secs(5400))
        );
        assert_eq!(
            timeout(&lit("250ms")).ok(),
            Some(Duration::from_millis(250))
        );
        let err = timeout(&lit("ten minutes")).unwrap_err().to_string();
        assert!(err.contains("invalid `timeout` \"ten minutes\""), "{err}");
        assert!(err.contains(r#""30s", "10m", "1h 30m""#), "{err}");
        let err = timeout(&lit("0s")).unwrap_err().to_string();
        assert!(err.contains("at least 1ms"), "{err}");
        assert!(timeout(&lit("10")).is_err());
    }

    #[test]
    fn checks_timezone_shape() {
        for ok in [
            "UTC",
            "GMT",
            "Europe/Berlin",
            "America/Argentina/Buenos_Aires",
            "Etc/GMT+5",
            "EST",
            "Japan",
        ] {
            assert!(timezone(&lit(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "CEST",
            "Europe Berlin",
            "Europe/",
            "/Berlin",
            "utc",
            "Europe/Berlin!",
        ] {
            assert!(timezone(&lit(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn checks_names() {
        let span = Span::call_site();
        assert!(workflow_name("processOrder", span, false).is_ok());
        assert!(workflow_name("process-order_2", span, false).is_ok());
        assert!(workflow_name(&"a".repeat(64), span, false).is_ok());
        assert!(workflow_name(&"a".repeat(65), span, false).is_err());
        assert!(workflow_name("", span, false).is_err());
        let err = workflow_name("process order", span, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("it contains ' '"), "{err}");
        let err = workflow_name("café", span, true).unwrap_err().to_string();
        assert!(err.contains("set one with"), "{err}");
    }

    #[test]
    fn checks_retries() {
        let int = |s: &str| LitInt::new(s, Span::call_site());
        assert_eq!(retries(&int("3")).ok(), Some(3));
        assert!(retries(&int("0")).is_err());
        assert!(retries(&int("3u8")).is_err());
        assert!(retries(&int("99999999999")).is_err());
    }

    fn backoff_of(tokens: proc_macro2::TokenStream) -> (Backoff, Vec<String>) {
        let mut errors = crate::ctxt::Errors::default();
        let args = crate::args::Args::parse(quote::quote!(backoff(#tokens)), &mut errors);
        assert!(errors.is_empty(), "{:?}", errors.messages());
        let backoff = backoff(&args.backoff.expect("backoff"), &mut errors);
        (backoff, errors.messages())
    }

    fn number_of(tokens: proc_macro2::TokenStream) -> Number {
        let mut errors = crate::ctxt::Errors::default();
        let args = crate::args::Args::parse(quote::quote!(jitter = #tokens), &mut errors);
        assert!(errors.is_empty(), "{:?}", errors.messages());
        args.jitter.expect("number")
    }

    #[test]
    fn the_default_backoff_is_the_runtimes() {
        let runtime = workflow::Backoff::DEFAULT;
        assert_eq!(DEFAULT_INITIAL_BACKOFF, runtime.initial);
        assert_eq!(DEFAULT_MAX_BACKOFF, runtime.max);
    }

    #[test]
    fn checks_backoff_settings() {
        let (b, errors) = backoff_of(quote::quote!(initial = "200ms", factor = 2.0, max = "30s"));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            b,
            Backoff {
                initial: Some(Duration::from_millis(200)),
                factor: Some(2.0),
                max: Some(Duration::from_secs(30)),
            }
        );
        let (b, errors) = backoff_of(quote::quote!(initial = "0s", factor = 1));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(b.initial, Some(Duration::ZERO));
        assert_eq!(b.factor, Some(1.0));
        assert_eq!(b.max, None);
        let (_, errors) = backoff_of(quote::quote!(initial = "5s", max = "5s"));
        assert!(errors.is_empty(), "equal bounds are fine: {errors:?}");
    }

    #[test]
    fn rejects_bad_backoff_settings_all_at_once() {
        let (b, errors) = backoff_of(quote::quote!(
            initial = "soon",
            factor = 0.5,
            max = "1 parsec"
        ));
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors[0].starts_with("invalid `initial` \"soon\" in `backoff` ("),
            "{}",
            errors[0]
        );
        assert!(errors[0].ends_with(r#"write a duration like "200ms", "5s" or "1m 30s""#));
        assert!(errors[1].starts_with("invalid `max` \"1 parsec\" in `backoff`"));
        assert!(
            errors[2].starts_with(
                "`factor` in `backoff` must be a finite number of at least 1.0, found `0.5`"
            ),
            "{}",
            errors[2]
        );
        assert_eq!(b, Backoff::default());
    }

    #[test]
    fn rejects_factors_below_one_or_not_finite() {
        for bad in [
            quote::quote!(0.99),
            quote::quote!(-2.0),
            quote::quote!(0),
            quote::quote!(1e400),
        ] {
            assert!(factor(&number_of(bad.clone())).is_err(), "{bad}");
        }
        assert_eq!(factor(&number_of(quote::quote!(1.5))).ok(), Some(1.5));
        assert_eq!(factor(&number_of(quote::quote!(2f64))).ok(), Some(2.0));
        let err = factor(&number_of(quote::quote!(2f32))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`factor` is an `f64`: write the number without the `f32` suffix"
        );
        let err = factor(&number_of(quote::quote!(-2.0))).unwrap_err();
        assert!(err.to_string().contains("found `-2.0`"), "{err}");
    }

    #[test]
    fn rejects_initial_above_max() {
        let (_, errors) = backoff_of(quote::quote!(initial = "10s", max = "1s"));
        assert_eq!(
            errors,
            [
                "`max` \"1s\" in `backoff` is less than its `initial` \"10s\": every wait would \
              be `max`, leaving `initial` and `factor` without effect; raise `max` or lower \
              `initial`"
            ]
        );
        // Against the defaults of the setting left out.
        let (_, errors) = backoff_of(quote::quote!(initial = "10s"));
        assert_eq!(
            errors,
            [
                "`initial` \"10s\" in `backoff` is more than the default `max` of 5s, which caps \
              every wait: set `max` too, e.g. `max = \"1m 40s\"`"
            ]
        );
        let (_, errors) = backoff_of(quote::quote!(max = "50ms"));
        assert_eq!(
            errors,
            [
                "`max` \"50ms\" in `backoff` is less than the default `initial` of 272ms: set \
              `initial` too, at most `max`, e.g. `initial = \"50ms\"`"
            ]
        );
        let (_, errors) = backoff_of(quote::quote!(initial = "5s"));
        assert!(errors.is_empty(), "{errors:?}");
        let (_, errors) = backoff_of(quote::quote!(max = "272ms"));
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn checks_jitter() {
        for (ok, value) in [
            (quote::quote!(0), 0.0),
            (quote::quote!(0.2), 0.2),
            (quote::quote!(1.0), 1.0),
            (quote::quote!(-0.0), 0.0),
        ] {
            let got = jitter(&number_of(ok.clone())).ok();
            assert_eq!(got, Some(value), "{ok}");
            assert!(got.unwrap().is_sign_positive(), "{ok}");
        }
        for bad in [quote::quote!(1.5), quote::quote!(-0.1), quote::quote!(2)] {
            assert!(jitter(&number_of(bad.clone())).is_err(), "{bad}");
        }
        let err = jitter(&number_of(quote::quote!(-0.1))).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("`jitter` must be a fraction from 0.0 to 1.0, found `-0.1`"),
            "{err}"
        );
    }

    #[test]
    fn flags_empty_step_names_and_reserved_characters() {
        let call = |name: &str| named_call(name, "step", false);
        let calls = [
            call("fetch"),
            call("fetch-1"),
            call("fetch#1"),
            call("order@v2"),
            call("items[0]"),
            call("close]"),
            call("#"),
            call(""),
            call("naïve: ok/also fine"),
            call("nul\0"),
            call(&"x".repeat(workflow_rules::MAX_KEY_BYTES + 1)),
            call(&"x".repeat(workflow_rules::MAX_KEY_BYTES)),
        ];
        let errors = messages(invalid_step_names(&calls));
        assert_eq!(errors.len(), 8, "{errors:?}");
        assert!(
            errors[6].contains("contains a NUL character"),
            "{}",
            errors[6]
        );
        assert!(
            errors[7].starts_with("step name is 513 bytes long; at most 512"),
            "{}",
            errors[7]
        );
        assert!(
            errors[0].starts_with("step name \"fetch#1\" contains `#`, which the engine reserves"),
            "{}",
            errors[0]
        );
        assert!(errors[0].ends_with("rename the step, e.g. \"fetch-1\""));
        assert!(errors[1].contains("contains `@`") && errors[1].ends_with("\"order-v2\""));
        assert!(errors[2].contains("contains `[`") && errors[2].ends_with("\"items-0\""));
        assert!(errors[3].contains("contains `]`") && errors[3].ends_with("\"close\""));
        assert!(errors[4].ends_with("rename the step"), "{}", errors[4]);
        assert!(errors[5].starts_with("step name is empty"));
    }

    #[test]
    fn flags_step_names_repeated_at_two_call_sites() {
        let call = |name: &str, in_loop| named_call(name, "step", in_loop);
        let calls = [
            call("a", false),
            call("b", false),
            call("a", false),
            call("b", true),
            call("c", true),
            call("c", true),
            call("a", false),
        ];
        let errors = messages(duplicate_steps(&calls));
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(errors[0].starts_with("step name \"a\" is already used"));
        assert!(errors[0].contains("one call inside a loop may repeat"));
        assert!(errors[1].starts_with("step name \"b\" is already used"));
        assert!(
            errors[1].contains("a loop that runs once less"),
            "{}",
            errors[1]
        );
        assert!(errors[2].starts_with("step name \"c\" is already used"));
    }

    #[test]
    fn two_waits_for_one_event_may_share_its_name() {
        let call = |name: &str, method: &str| named_call(name, method, false);
        let calls = [
            call("approval", "wait_for_event"),
            call("approval", "wait_for_event"),
            call("approval", "step"),
        ];
        let errors = messages(duplicate_steps(&calls));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("by `ctx.wait_for_event`"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn a_name_may_repeat_in_arms_that_exclude_each_other() {
        let f: syn::ItemFn = syn::parse_quote! {
            async fn notify(ctx: Ctx, how: How) -> Result<()> {
                match how {
                    How::Email => ctx.step("send", email).await?,
                    How::Sms => ctx.step("send", sms).await?,
                }
                if urgent {
                    ctx.step("page", a).await?;
                } else if later {
                    ctx.step("page", b).await?;
                } else {
                    ctx.step("page", c).await?;
                }
                ctx.step("send", again).await?;
                if urgent {
                    ctx.step("log", d).await?;
                    ctx.step("log", e).await?;
                }
            }
        };
        let calls = crate::ast::collect_steps(&f);
        let errors = messages(duplicate_steps(&calls));
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("step name \"send\""), "{}", errors[0]);
        assert!(errors[1].starts_with("step name \"log\""), "{}", errors[1]);
    }

    /// After an `if` that always leaves, or a `let .. else`, the code that
    /// follows runs only when that branch did not: a name may repeat
    /// there. An `if` that may fall through, or a later call inside the
    /// same branch, still may not.
    #[test]
    fn a_name_may_repeat_after_a_branch_that_leaves() {
        let f: syn::ItemFn = syn::parse_quote! {
            async fn load(ctx: Ctx, input: In) -> Result<()> {
                if input.cached {
                    let v = ctx.step("load", a).await?;
                    return Ok(v);
                }
                let Some(id) = input.id else {
                    ctx.step("report", r).await?;
                    panic!("no id");
                };
                ctx.step("load", b).await?;
                ctx.step("report", s).await?;
                for item in items {
                    if item.skip {
                        ctx.step("skip", c).await?;
                        continue;
                    }
                }
                if input.retry {
                    ctx.step("load", d).await?;
                }
            }
        };
        let calls = crate::ast::collect_steps(&f);
        let errors = messages(duplicate_steps(&calls));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("step name \"load\""), "{}", errors[0]);
    }

    /// The same after a `match` arm or an `if`'s branch that leaves, with
    /// an `else` or other arms beside it: only what those others ran
    /// counts. Before, only an `if` with no `else` did, and a name in a
    /// `match` arm that returned was refused after the `match`.
    #[test]
    fn a_name_may_repeat_after_a_match_arm_that_leaves() {
        let f: syn::ItemFn = syn::parse_quote! {
            async fn route(ctx: Ctx, input: In) -> Result<()> {
                match input.kind {
                    Kind::Cached => {
                        ctx.step("load", a).await?;
                        return Ok(());
                    }
                    Kind::Gone => bail!("gone"),
                    Kind::Fresh => {
                        ctx.step("fresh", f).await?;
                    }
                }
                ctx.step("load", b).await?;
                if input.again {
                    ctx.step("retry", c).await?;
                    return Ok(());
                } else {
                    ctx.step("note", n).await?;
                }
                ctx.step("retry", d).await?;
                // After the arm and the branch that did not leave.
                ctx.step("fresh", e).await?;
                ctx.step("note", g).await?;
                // A labeled block's `break` goes on after the block.
                if input.label {
                    'done: {
                        ctx.step("label", h).await?;
                        break 'done;
                    }
                }
                ctx.step("label", i).await?;
            }
        };
        let calls = crate::ast::collect_steps(&f);
        let errors = messages(duplicate_steps(&calls));
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors[2].starts_with("step name \"label\""),
            "{}",
            errors[2]
        );
        assert!(
            errors[0].starts_with("step name \"fresh\""),
            "{}",
            errors[0]
        );
        assert!(errors[1].starts_with("step name \"note\""), "{}", errors[1]);
    }
}
