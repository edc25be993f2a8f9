//! Durations as people write them in attributes and on the command line
//! (`"30s"`, `"10m"`, `"1h 30m"`, `"2days"`), read by humantime with one
//! guard: humantime reads a bare capital `M` as months, where `"10M"` is
//! far more often ten minutes mistyped, so it is refused with the fix.

use std::time::Duration;

/// Parses `text` with humantime, refusing the unit `M` (months there).
/// The error says what is wrong, without the hint of what to write.
pub fn parse(text: &str) -> Result<Duration, String> {
    let mut unit = String::new();
    for c in text.chars().chain([' ']) {
        if c.is_alphabetic() {
            unit.push(c);
            continue;
        }
        if unit == "M" {
            return Err(
                "`M` would be months: write `m` for minutes, or `months` for months".to_owned(),
            );
        }
        unit.clear();
    }
    humantime::parse_duration(text).map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_humantime_but_not_a_bare_capital_m() {
        assert_eq!(parse("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(
            parse("2months"),
            humantime::parse_duration("2months").map_err(|e| e.to_string())
        );
        assert!(parse("2months").unwrap() > Duration::from_secs(50 * 86_400));
        for bad in ["10M", "1h 10M", "3M5s"] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains("write `m` for minutes"), "{bad}: {err}");
        }
        assert!(parse("ten minutes").is_err());
    }
}
