//! Step names. The engine derives keys from them (`name#1` for the second
//! use of a name in one run, `name@timeout` and `name@result` for the parts
//! of a wait, `name[0]` for the items of a fan-out), so a name containing
//! one of those characters could be the derived key of another step.

/// The characters no step name may contain.
pub const RESERVED: [char; 4] = ['#', '@', '[', ']'];

/// The first reserved character in `name`, if any.
pub fn reserved_in(name: &str) -> Option<char> {
    name.chars().find(|c| RESERVED.contains(c))
}

/// The reserved characters for a message: "`#`, `@`, `[` or `]`".
pub fn reserved_list() -> String {
    let quoted: Vec<String> = RESERVED.iter().map(|c| format!("`{c}`")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => quoted.concat(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_reserved_character() {
        assert_eq!(reserved_in("fetch"), None);
        assert_eq!(reserved_in("a@b#c"), Some('@'));
        assert_eq!(reserved_list(), "`#`, `@`, `[` or `]`");
    }
}
