//! Cron expressions as the `workflow` crate reads them: croner's parser
//! with 5 fields, or 6 with seconds first, names like `MON` and `JAN`, and
//! `@daily`-style nicknames; no year field. A bad expression is explained
//! naming the field at fault (croner's own messages do not).

use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

fn parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
}

/// Parses `expr`, or says why it is not a valid schedule, naming the field
/// at fault when there is one.
pub fn parse(expr: &str) -> Result<Cron, String> {
    let parser = parser();
    match parser.parse(expr) {
        Ok(cron) => Ok(cron),
        Err(err) => Err(explain(&parser, expr, err)),
    }
}

const CRON_FORMAT: &str = "write 5 fields, `minute hour day-of-month month day-of-week`, \
     or 6 with `second` first, e.g. \"0 9 * * MON-FRI\", or a nickname: \
     @hourly, @daily, @weekly, @monthly, @yearly";

fn explain(parser: &CronParser, expr: &str, err: croner::errors::CronError) -> String {
    const FIELDS: [(&str, &str); 6] = [
        ("second", "0-59"),
        ("minute", "0-59"),
        ("hour", "0-23"),
        ("day-of-month", "1-31, L, W"),
        ("month", "1-12, JAN-DEC"),
        ("day-of-week", "0-7, SUN-SAT, L, #"),
    ];
    let croner = |err: croner::errors::CronError| err.to_string().trim_end_matches('.').to_owned();
    let fields: Vec<&str> = expr.split_whitespace().collect();
    let names = match fields.len() {
        5 => &FIELDS[1..],
        6 => &FIELDS[..],
        1 if expr.trim_start().starts_with('@') => {
            return format!("unknown nickname `{}`; {CRON_FORMAT}", expr.trim());
        }
        n => return format!("it has {n} fields; {CRON_FORMAT}"),
    };
    // Parse each field alone, the others wildcarded, to find the culprit.
    for (i, field) in fields.iter().enumerate() {
        let alone: Vec<&str> = (0..fields.len())
            .map(|j| if i == j { *field } else { "*" })
            .collect();
        if let Err(field_err) = parser.parse(&alone.join(" ")) {
            let (name, allowed) = names[i];
            return format!(
                "the {name} field `{field}` is out of range or malformed ({}); \
                 it allows {allowed}, combined with `*`, `,`, `-` and `/`",
                croner(field_err)
            );
        }
    }
    format!("{}; {CRON_FORMAT}", croner(err))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_cron_expressions() {
        for ok in [
            "* * * * *",
            "0 9 * * MON-FRI",
            "*/15 * * * *",
            "0 0 1 JAN *",
            "30 0 9 * * *",
            "0 0 L * *",
            "0 0 * * FRI#2",
            "@daily",
            "@hourly",
            "@weekly",
            "@monthly",
            "@yearly",
            "@annually",
        ] {
            assert_eq!(parse(ok).map(drop), Ok(()), "{ok}");
        }
    }

    #[test]
    fn names_the_bad_cron_field() {
        let err = parse("61 * * * *").unwrap_err();
        assert_eq!(
            err,
            "the minute field `61` is out of range or malformed (Component error: Number \
             out of bounds); it allows 0-59, combined with `*`, `,`, `-` and `/`"
        );
        let err = parse("0 0 25 * * *").unwrap_err();
        assert!(err.starts_with("the hour field `25`"), "{err}");
        let err = parse("0 0 * 13 *").unwrap_err();
        assert!(err.starts_with("the month field `13`"), "{err}");
        let err = parse("0 0 * * FUNDAY").unwrap_err();
        assert!(err.starts_with("the day-of-week field"), "{err}");
    }

    #[test]
    fn rejects_wrong_field_counts_and_junk() {
        let err = parse("every day").unwrap_err();
        assert!(err.starts_with("it has 2 fields; write 5 fields"), "{err}");
        assert!(parse("0 0 0 1 1 * 2030").is_err());
        assert!(parse("").is_err());
        let err = parse("@fortnightly").unwrap_err();
        assert!(
            err.starts_with("unknown nickname `@fortnightly`; "),
            "{err}"
        );
    }
}
