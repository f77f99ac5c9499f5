//! Docker's short form of a container or image id, as results, listings and logs show it.

/// The first 12 characters of `id`, without an image id's `sha256:` prefix.
pub fn short_id(id: &str) -> String {
    let id = id.strip_prefix("sha256:").unwrap_or(id);
    id.chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    use super::short_id;

    #[test]
    fn ids_are_cut_to_twelve_characters_without_the_digest_prefix() {
        assert_eq!(short_id("3f2a9c1b7d4e5f60718293a4b5c6d7e8"), "3f2a9c1b7d4e");
        assert_eq!(short_id("sha256:0123456789abcdef0123"), "0123456789ab");
        assert_eq!(short_id("abc"), "abc");
    }
}
