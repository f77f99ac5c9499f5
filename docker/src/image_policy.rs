//! Which images a request may name besides isol8's own (`options.image`): the server's
//! `allowedImages` patterns, matched against the name as the request wrote it.

/// Glob patterns an image name must match to be run when it is not one of isol8's own images.
/// `*` matches any run of characters (`/` and `:` too), `?` any one character; everything else
/// matches itself. A name the request writes without a tag or digest is matched as `name:latest`
/// (Docker's reading of it). No pattern: isol8's own images only.
#[derive(Debug, Clone, Default)]
pub struct ImagePolicy {
    /// Each pattern as written, and the regex it became (anchored at both ends).
    patterns: Vec<(String, regex::Regex)>,
}

impl ImagePolicy {
    /// The policy of `patterns`, or which one is not a pattern.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<ImagePolicy, String> {
        let mut compiled = Vec::new();
        for pattern in patterns {
            let pattern = pattern.as_ref();
            if pattern.is_empty() || pattern.contains(char::is_whitespace) {
                return Err(format!(
                    "allowedImages: \"{pattern}\" is not an image pattern (like python:* or registry.example.com/*)"
                ));
            }
            let mut regex = String::from("^");
            for c in pattern.chars() {
                match c {
                    '*' => regex.push_str(".*"),
                    '?' => regex.push('.'),
                    c => regex.push_str(&regex::escape(&c.to_string())),
                }
            }
            regex.push('$');
            let regex = regex::Regex::new(&regex)
                .map_err(|e| format!("allowedImages: \"{pattern}\": {e}"))?;
            compiled.push((pattern.to_string(), regex));
        }
        Ok(ImagePolicy { patterns: compiled })
    }

    /// Every image on the engine (the local CLI: the user at the terminal owns the engine).
    pub fn any() -> ImagePolicy {
        ImagePolicy::new(&["*"]).expect("* is a pattern")
    }

    /// Whether `image` (as a request names it) matches a pattern.
    pub fn allows(&self, image: &str) -> bool {
        let name = with_tag(image);
        self.patterns.iter().any(|(_, regex)| regex.is_match(&name))
    }

    /// The patterns as written.
    pub fn patterns(&self) -> impl Iterator<Item = &str> {
        self.patterns.iter().map(|(p, _)| p.as_str())
    }
}

/// `image` with `:latest` added when it names neither a tag nor a digest.
fn with_tag(image: &str) -> std::borrow::Cow<'_, str> {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') || last.contains(':') {
        image.into()
    } else {
        format!("{image}:latest").into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_names_with_their_tag() {
        let policy = ImagePolicy::new(&["python:*", "registry.example.com/*", "tool:1.?"]).unwrap();
        for allowed in [
            "python:3.12",
            "python",
            "registry.example.com/team/img:2",
            "registry.example.com/img",
            "tool:1.4",
        ] {
            assert!(policy.allows(allowed), "{allowed}");
        }
        for refused in [
            "pythonx:3",
            "library/python:3.12",
            "registry.example.com.evil/img",
            "evil/registry.example.com/img",
            "tool:1.10",
            "node:20",
        ] {
            assert!(!policy.allows(refused), "{refused}");
        }
        // Dots and other regex characters match themselves only.
        assert!(!ImagePolicy::new(&["a.b:*"]).unwrap().allows("axb:1"));
    }

    #[test]
    fn no_pattern_allows_nothing_and_any_allows_everything() {
        assert!(!ImagePolicy::default().allows("python:3.12"));
        assert!(ImagePolicy::any().allows("registry.example.com:5000/a/b@sha256:00"));
        assert!(ImagePolicy::new(&[""]).is_err());
        assert!(ImagePolicy::new(&["a b"]).is_err());
    }

    #[test]
    fn a_registry_port_is_not_a_tag() {
        let policy = ImagePolicy::new(&["localhost:5000/img:latest"]).unwrap();
        assert!(policy.allows("localhost:5000/img"));
    }
}
