//! Which `timezone` names `#[workflow]` lets through at compile time,
//! without a time zone database there: `Area/Location` names by their
//! shape, and the tz database's one-word names by a list. The engine looks
//! every name up when it starts.

/// The tz database's names without a `/` (legacy and alias zones such as
/// `EST` or `Japan`), as `chrono-tz` knows them; a test in `workflow-core`
/// keeps the two equal.
pub const ONE_WORD: [&str; 44] = [
    "CET",
    "CST6CDT",
    "Cuba",
    "EET",
    "EST",
    "EST5EDT",
    "Egypt",
    "Eire",
    "GB",
    "GB-Eire",
    "GMT",
    "GMT+0",
    "GMT-0",
    "GMT0",
    "Greenwich",
    "HST",
    "Hongkong",
    "Iceland",
    "Iran",
    "Israel",
    "Jamaica",
    "Japan",
    "Kwajalein",
    "Libya",
    "MET",
    "MST",
    "MST7MDT",
    "NZ",
    "NZ-CHAT",
    "Navajo",
    "PRC",
    "PST8PDT",
    "Poland",
    "Portugal",
    "ROC",
    "ROK",
    "Singapore",
    "Turkey",
    "UCT",
    "UTC",
    "Universal",
    "W-SU",
    "WET",
    "Zulu",
];

/// Whether `name` can be a tz database name: one of [`ONE_WORD`], or
/// `Area/Location` parts that each start with a letter and hold only
/// letters, digits, `_`, `-` and `+`.
pub fn plausible(name: &str) -> bool {
    ONE_WORD.contains(&name)
        || (name.contains('/')
            && name.split('/').all(|part| {
                part.starts_with(|c: char| c.is_ascii_alphabetic())
                    && part
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-+".contains(c))
            }))
}
