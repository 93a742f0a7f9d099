//! Text tests run on raw SQL before (or instead of) analysis.

/// Case-insensitive substring test, run on every Query: memchr finds the candidates
/// for the first byte, so most of the text is skipped in SIMD steps.
pub fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    memchr::memchr2_iter(first.to_ascii_lowercase(), first.to_ascii_uppercase(), hay).any(|i| {
        hay.get(i + 1..i + 1 + rest.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(rest))
    })
}

#[cfg(test)]
mod tests {
    use super::contains_ci;

    #[test]
    fn contains_ci_matches_any_case_and_nothing_else() {
        assert!(contains_ci(
            b"SET LOCAL Synchronous_Commit = off",
            b"synchronous_commit"
        ));
        assert!(contains_ci(b"set pgwarden.route = primary", b"pgwarden."));
        assert!(!contains_ci(
            b"select synchronous_commi",
            b"synchronous_commit"
        ));
        assert!(!contains_ci(b"select pgwarden", b"pgwarden."));
        assert!(contains_ci(b"x", b""));
    }
}
