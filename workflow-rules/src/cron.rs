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
/// at fault when there is one. An expression that can never fire
/// (`0 0 31 2 *`) is refused too.
pub fn parse(expr: &str) -> Result<Cron, String> {
    misplaced_name(expr)?;
    bare_last_weekday(expr)?;
    starred_step_beside_a_day(expr)?;
    let parser = parser();
    let cron = parser
        .parse(expr)
        .map_err(|err| explain(&parser, expr, err))?;
    // croner looks up to the year 5000 before it gives up; any date a valid
    // expression names comes round well before that.
    let start = chrono::NaiveDate::from_ymd_opt(2000, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .unwrap_or_default();
    if cron.find_next_occurrence(&start, false).is_err() {
        return Err(format!(
            "`{}` names a date that never comes (such as 31 February), so it would never fire",
            expr.trim()
        ));
    }
    Ok(cron)
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// croner replaces month and day names wherever they stand before it splits
/// the fields, so `0 9 * * JAN` would fire on Mondays (`JAN` read as `1`):
/// a name is refused outside its own field.
fn misplaced_name(expr: &str) -> Result<(), String> {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    let names: &[&str] = match fields.len() {
        5 => &["minute", "hour", "day-of-month", "month", "day-of-week"],
        6 => &[
            "second",
            "minute",
            "hour",
            "day-of-month",
            "month",
            "day-of-week",
        ],
        _ => return Ok(()),
    };
    for (field, name) in fields.iter().zip(names) {
        let words = field
            .split(|c: char| !c.is_ascii_alphabetic())
            .filter(|w| !w.is_empty());
        for word in words {
            // Other words are croner's to refuse, with the field's rules.
            let word = word.to_ascii_uppercase();
            let what = if MONTHS.contains(&word.as_str()) && *name != "month" {
                "a month, which only the month field may name"
            } else if DAYS.contains(&word.as_str()) && *name != "day-of-week" {
                "a day of the week, which only the day-of-week field may name"
            } else {
                continue;
            };
            return Err(format!("the {name} field `{field}`: `{word}` is {what}"));
        }
    }
    Ok(())
}

/// croner takes a bare `L` in the day-of-week field and matches nothing
/// with it: `0 0 15 * L` would fire on the 15th only, `0 0 * * L` never.
/// `L` there needs a day before it (`5L`, `FRIL`: the month's last Friday).
fn bare_last_weekday(expr: &str) -> Result<(), String> {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    let Some(field) = fields.last().filter(|_| fields.len() >= 5) else {
        return Ok(());
    };
    // croner's `+` (both day fields must match) goes before the list.
    let items = field.trim_start_matches('+');
    if items.split(',').any(|item| item.eq_ignore_ascii_case("L")) {
        return Err(format!(
            "the day-of-week field `{field}`: `L` there needs a day before it, \
             such as `5L` or `FRIL` for the month's last Friday \
             (for the month's last day, put `L` in the day-of-month field)"
        ));
    }
    Ok(())
}

/// Two restricted day fields match either (`0 9 1 * MON`: the 1st, and
/// every Monday), in croner as in standard cron. But standard cron counts
/// a field that starts with `*` (`*/2`) as unrestricted, and then
/// requires both, where croner still takes either: `0 9 */2 * MON` would
/// fire on every odd day and every Monday instead of on odd-numbered
/// Mondays. Such a pair is refused, naming what to write instead.
fn starred_step_beside_a_day(expr: &str) -> Result<(), String> {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    let (dom, dow) = match fields[..] {
        [_, _, dom, _, dow] | [_, _, _, dom, _, dow] => (dom, dow),
        _ => return Ok(()),
    };
    // croner's `+` asks for both days, as standard cron reads a starred
    // field: both read the pair alike.
    if dow.starts_with('+') {
        return Ok(());
    }
    let starred_step = |f: &str| f.starts_with('*') && f != "*";
    let restricted = |f: &str| f != "*" && f != "?";
    let (starred, name, other, other_name) = if starred_step(dom) && restricted(dow) {
        (dom, "day-of-month", dow, "day-of-week")
    } else if starred_step(dow) && restricted(dom) {
        (dow, "day-of-week", dom, "day-of-month")
    } else {
        return Ok(());
    };
    Err(format!(
        "the {name} field `{starred}` beside the {other_name} field `{other}` is read \
         differently by cron implementations (either day, or both); write the days out \
         (`1-31/2` instead of `*/2`) to fire on either, or put `+` before the day-of-week \
         field (`+MON`) to fire only when both match"
    ))
}

const CRON_FORMAT: &str = "write 5 fields, `minute hour day-of-month month day-of-week`, \
     or 6 with `second` first, e.g. \"0 9 * * MON-FRI\", or a nickname: \
     @hourly, @daily, @weekly, @monthly, @yearly";

/// Whether `field` holds a month or day name, which croner rewrites
/// wherever it stands (as [`misplaced_name`] explains).
fn has_name(field: &str) -> bool {
    let upper = field.to_ascii_uppercase();
    MONTHS.iter().chain(&DAYS).any(|name| upper.contains(name))
}

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
            // croner rewrites names (`MON` to `1`) before it parses, so its
            // words about a field with a name quote text nobody wrote.
            let detail = if has_name(field) {
                String::new()
            } else {
                format!(" ({})", croner(field_err))
            };
            return format!(
                "the {name} field `{field}` is out of range or malformed{detail}; \
                 it allows {allowed}, combined with `*`, `,`, `-` and `/`"
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
        // croner's own words would quote its rewrite (`1-FRY`), not the field.
        assert_eq!(
            parse("0 9 * * MON-FRY").unwrap_err(),
            "the day-of-week field `MON-FRY` is out of range or malformed; it allows \
             0-7, SUN-SAT, L, #, combined with `*`, `,`, `-` and `/`"
        );
    }

    #[test]
    fn refuses_names_outside_their_field() {
        let err = parse("0 9 * * JAN").unwrap_err();
        assert_eq!(
            err,
            "the day-of-week field `JAN`: `JAN` is a month, which only the month field may name"
        );
        let err = parse("0 9 1 MON *").unwrap_err();
        assert_eq!(
            err,
            "the month field `MON`: `MON` is a day of the week, which only the day-of-week \
             field may name"
        );
        assert!(parse("0 MON * * *")
            .unwrap_err()
            .starts_with("the hour field"));
        assert!(parse("0 0 9 * * sun").is_ok());
        assert!(parse("0 0 LW * *").is_ok());
        assert!(parse("0 0 * jan-mar mon-fri").is_ok());
    }

    #[test]
    fn refuses_expressions_that_never_fire() {
        let err = parse("0 0 31 2 *").unwrap_err();
        assert_eq!(
            err,
            "`0 0 31 2 *` names a date that never comes (such as 31 February), so it would \
             never fire"
        );
        assert!(parse("0 0 30 2 *").is_err());
        // Rare, but real.
        assert!(parse("0 0 29 2 *").is_ok());
    }

    /// With both day fields restricted, a day matching either fires, as in
    /// standard cron: `0 0 29 2 MON` is every Monday of February and the
    /// 29th, not "the 29th when it is a Monday" (`MON#1` and `L` say such
    /// things).
    #[test]
    fn day_of_month_or_day_of_week() {
        let cron = parse("0 0 29 2 MON").unwrap();
        let mut at = chrono::NaiveDate::from_ymd_opt(2026, 1, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .unwrap();
        let mut days = Vec::new();
        while let Ok(next) = cron.find_next_occurrence(&at, false) {
            if chrono::Datelike::year(&next) > 2028 {
                break;
            }
            days.push(next.date().to_string());
            at = next;
        }
        // 2026: the four Mondays of February; 2028, a leap year: its
        // Mondays and Tuesday the 29th.
        assert_eq!(
            days,
            [
                "2026-02-02",
                "2026-02-09",
                "2026-02-16",
                "2026-02-23",
                "2027-02-01",
                "2027-02-08",
                "2027-02-15",
                "2027-02-22",
                "2028-02-07",
                "2028-02-14",
                "2028-02-21",
                "2028-02-28",
                "2028-02-29",
            ]
        );
    }

    /// `*/2` beside a restricted day field: standard cron requires both
    /// days, croner either; refused, with both ways to say it.
    #[test]
    fn refuses_a_starred_step_beside_a_restricted_day() {
        for bad in ["0 9 */2 * MON", "0 0 9 */2 * MON", "0 9 15 * */2"] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains("read differently"), "{bad}: {err}");
            assert!(err.contains("`1-31/2`") && err.contains("`+MON`"), "{err}");
        }
        for good in [
            "0 9 */2 * *",
            "0 9 * * */2",
            "0 9 1-31/2 * MON",
            "0 9 * * MON",
            "0 9 */2 * +MON",
        ] {
            assert!(parse(good).is_ok(), "{good}");
        }
        // `+`: both must match (odd-numbered Mondays).
        let cron = parse("0 9 1-31/2 * +MON").unwrap();
        let start = chrono::NaiveDate::from_ymd_opt(2026, 1, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .unwrap();
        let next = cron.find_next_occurrence(&start, false).unwrap();
        assert_eq!(next.date().to_string(), "2026-01-05");
    }

    #[test]
    fn refuses_a_bare_last_in_the_day_of_week() {
        for bad in [
            "0 0 15 * L",
            "0 0 * * l",
            "0 0 0 * * MON,L",
            "0 0 15 * +MON,L",
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.starts_with("the day-of-week field"), "{bad}: {err}");
            assert!(err.contains("`5L` or `FRIL`"), "{err}");
        }
        assert!(parse("0 0 * * 5L").is_ok());
        assert!(parse("0 0 * * FRIL").is_ok());
        assert!(parse("0 0 L * *").is_ok());
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
