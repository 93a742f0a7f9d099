//! The cache key: a SHA-256 over everything that can change a read's answer, each part
//! length-prefixed so no two different inputs hash the same bytes.

use sha2::{Digest, Sha256};

pub type Key = [u8; 32];

/// Bumped when what goes into a key changes, so an L2 written by another build can never
/// match.
const KEY_FORMAT: u8 = 1;

/// The key of `request` (the client's messages, byte for byte: SQL, parameter values,
/// their formats and the result formats) for this database, login user, server user and
/// session settings. `application_name` only labels the connection; every other setting
/// counts (search_path, TimeZone, DateStyle, extra_float_digits, bytea_output, role...),
/// whatever its order.
pub fn key(
    database: &str,
    user: &str,
    server_user: &str,
    params: &[(String, String)],
    request: &[u8],
) -> Key {
    let mut h = Sha256::new();
    h.update([KEY_FORMAT]);
    let mut part = |b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    part(database.as_bytes());
    part(user.as_bytes());
    part(server_user.as_bytes());
    let mut settings: Vec<(String, &str)> = params
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("application_name"))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
        .collect();
    settings.sort();
    part(&(settings.len() as u64).to_le_bytes());
    for (k, v) in &settings {
        part(k.as_bytes());
        part(v.as_bytes());
    }
    part(request);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_part_counts_and_order_of_settings_does_not() {
        let base = key("app", "u", "u", &p(&[("TimeZone", "'UTC'")]), b"Qselect 1");
        let differing = [
            key(
                "other",
                "u",
                "u",
                &p(&[("TimeZone", "'UTC'")]),
                b"Qselect 1",
            ),
            key("app", "v", "u", &p(&[("TimeZone", "'UTC'")]), b"Qselect 1"),
            key("app", "u", "v", &p(&[("TimeZone", "'UTC'")]), b"Qselect 1"),
            key(
                "app",
                "u",
                "u",
                &p(&[("TimeZone", "'Asia/Tokyo'")]),
                b"Qselect 1",
            ),
            key("app", "u", "u", &p(&[]), b"Qselect 1"),
            key("app", "u", "u", &p(&[("TimeZone", "'UTC'")]), b"Qselect 2"),
            key(
                "app",
                "u",
                "u",
                &p(&[("TimeZone", "'UTC'"), ("search_path", "s")]),
                b"Qselect 1",
            ),
            // Parts that concatenate to the same bytes.
            key("ap", "pu", "u", &p(&[("TimeZone", "'UTC'")]), b"Qselect 1"),
        ];
        for (i, k) in differing.iter().enumerate() {
            assert_ne!(&base, k, "variant {i}");
        }
        let a = key("app", "u", "u", &p(&[("a", "1"), ("b", "2")]), b"Q");
        let b = key("app", "u", "u", &p(&[("B", "2"), ("a", "1")]), b"Q");
        assert_eq!(a, b);
        let named = key(
            "app",
            "u",
            "u",
            &p(&[("a", "1"), ("application_name", "x")]),
            b"Q",
        );
        assert_eq!(named, key("app", "u", "u", &p(&[("a", "1")]), b"Q"));
    }
}
