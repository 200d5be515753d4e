//! Counts in messages: `1 host`, `2 hosts`. One helper so every line a
//! person reads says it the same way (a new user once saw `1 hosts`).

/// `n` and `noun`, the noun in the plural unless `n` is 1. Every noun rampart
/// counts takes a plain `s`.
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use super::count;

    #[test]
    fn one_is_singular_everything_else_plural() {
        assert_eq!(count(0, "host"), "0 hosts");
        assert_eq!(count(1, "host"), "1 host");
        assert_eq!(count(2, "file"), "2 files");
    }
}
