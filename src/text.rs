//! Wording shared by the lines people read: log lines and the chat's server lines.
//!
//! Small on purpose: one helper, so that every count the server prints reads right for one and
//! for many (`1 connection`, `3 connections`; `1 other here`), whoever prints it.

/// `n` and a noun, singular for exactly one: `0 others`, `1 other`, `3 others`.
pub fn counted(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exactly_one_is_singular() {
        assert_eq!(counted(0, "connection", "connections"), "0 connections");
        assert_eq!(counted(1, "connection", "connections"), "1 connection");
        assert_eq!(counted(2, "other", "others"), "2 others");
    }
}
