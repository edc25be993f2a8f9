//! Checks of attribute values and step names. Each returns a `syn::Error`
//! spanned at the offending token, with a message that says what is wrong
//! and what would be right.

use std::time::Duration;

use proc_macro2::Span;
use syn::{LitInt, LitStr};

use workflow_rules::step_name;

use crate::ast::StepCall;

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
    let duration = humantime::parse_duration(&text).map_err(|err| {
        syn::Error::new(
            lit.span(),
            format!("invalid `timeout` \"{text}\" (humantime: {err}); {hint}"),
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

/// Checks only the shape of an IANA name (`Area/Location`, or `UTC`/`GMT`):
/// the real lookup happens at run time, so no time zone database is needed
/// at compile time.
pub(crate) fn timezone(lit: &LitStr) -> syn::Result<String> {
    let tz = lit.value();
    let plausible = tz == "UTC"
        || tz == "GMT"
        || (tz.contains('/')
            && tz.split('/').all(|part| {
                part.starts_with(|c: char| c.is_ascii_alphabetic())
                    && part
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-+".contains(c))
            }));
    if plausible {
        Ok(tz)
    } else {
        Err(syn::Error::new(
            lit.span(),
            format!(
                "\"{tz}\" is not an IANA time zone name; expected `UTC` or an \
                 `Area/Location` name like \"Europe/Berlin\" or \"America/New_York\""
            ),
        ))
    }
}

/// `retries` must be a whole number of at least 1.
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

pub(crate) fn retries(lit: &LitInt) -> syn::Result<u32> {
    let bad = || {
        syn::Error::new(
            lit.span(),
            format!(
                "`retries` must be a whole number of at least 1, found `{lit}`; \
                 leave it out for the default"
            ),
        )
    };
    if !lit.suffix().is_empty() {
        return Err(bad());
    }
    match lit.base10_parse::<u32>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(bad()),
    }
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

/// An error at each call site, outside any loop, that reuses a step name
/// already used at another such site. The runtime would key the second one
/// `name#1` and keep working, but two different steps sharing a name makes
/// history and replay after code changes ambiguous.
pub(crate) fn duplicate_steps(calls: &[StepCall]) -> Vec<syn::Error> {
    let mut errors = Vec::new();
    let straight: Vec<&StepCall> = calls.iter().filter(|c| !c.in_loop).collect();
    for (i, call) in straight.iter().enumerate() {
        let Some(first) = straight[..i].iter().find(|c| c.name == call.name) else {
            continue;
        };
        let line = first.span.start().line;
        let where_ = if line > 0 {
            format!("at line {line}")
        } else {
            "above".to_owned()
        };
        errors.push(syn::Error::new(
            call.span,
            format!(
                "step name \"{name}\" is already used {where_}; give each step call a \
                 distinct name, e.g. \"{name}-2\" (only a call inside a loop may repeat \
                 its name: its runs are recorded as \"{name}\", \"{name}#1\", \"{name}#2\", ...)",
                name = call.name
            ),
        ));
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(s: &str) -> LitStr {
        LitStr::new(s, Span::call_site())
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
        ] {
            assert!(timezone(&lit(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "EST",
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

    #[test]
    fn flags_empty_step_names_and_reserved_characters() {
        let call = |name: &str| StepCall {
            name: name.to_owned(),
            span: Span::call_site(),
            in_loop: false,
        };
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
        ];
        let errors: Vec<String> = invalid_step_names(&calls)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(errors.len(), 6, "{errors:?}");
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
    fn flags_repeated_step_names_outside_loops_only() {
        let call = |name: &str, in_loop| StepCall {
            name: name.to_owned(),
            span: Span::call_site(),
            in_loop,
        };
        let calls = [
            call("a", false),
            call("b", false),
            call("a", false),
            call("b", true),
            call("c", true),
            call("c", true),
            call("a", false),
        ];
        let errors: Vec<String> = duplicate_steps(&calls)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("step name \"a\" is already used"));
    }
}
