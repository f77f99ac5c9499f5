//! Output capture: masking secrets across chunk boundaries and decoding UTF-8 incrementally.

/// Turns one output stream's raw chunks into text with every secret replaced by `***`.
///
/// A secret split across two chunks is still masked: a tail that could be the start of a secret is held
/// back until the next chunk (or the end) decides. Multi-byte characters split across chunks are kept
/// whole; invalid UTF-8 becomes U+FFFD.
#[derive(Debug, Default)]
pub struct OutputFilter {
    secrets: Vec<Vec<u8>>,
    pending: Vec<u8>,
    utf8_tail: Vec<u8>,
}

pub(crate) const MASK: &str = "***";

impl OutputFilter {
    /// `text` with every value in `secrets` masked, as a whole (not a stream).
    pub fn mask_text<'a>(secrets: impl IntoIterator<Item = &'a String>, text: &str) -> String {
        let mut filter = OutputFilter::new(secrets);
        let mut masked = filter.push(text.as_bytes());
        masked.push_str(&filter.finish(false));
        masked
    }

    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a String>) -> Self {
        let mut secrets: Vec<Vec<u8>> = secrets
            .into_iter()
            .filter(|s| !s.is_empty())
            .map(|s| s.as_bytes().to_vec())
            .collect();
        // Longest first, so a secret containing another is masked whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        OutputFilter {
            secrets,
            ..Default::default()
        }
    }

    /// Feeds a chunk; returns the text that is now safe to show.
    pub fn push(&mut self, chunk: &[u8]) -> String {
        self.pending.extend_from_slice(chunk);
        let masked = self.mask();
        self.decode(&masked, false)
    }

    /// Ends the stream. When it was `truncated`, a tail that could be a cut-off secret is masked too.
    pub fn finish(&mut self, truncated: bool) -> String {
        let mut masked = self.mask();
        if truncated && !self.pending.is_empty() {
            masked.extend_from_slice(MASK.as_bytes());
        } else {
            masked.append(&mut self.pending);
        }
        self.pending.clear();
        self.decode(&masked, true)
    }

    /// Masks `pending`, leaving in it only a tail that may still grow into a secret.
    fn mask(&mut self) -> Vec<u8> {
        if self.secrets.is_empty() {
            return std::mem::take(&mut self.pending);
        }
        let buf = std::mem::take(&mut self.pending);
        let mut out = Vec::with_capacity(buf.len());
        let mut i = 0;
        'scan: while i < buf.len() {
            let rest = &buf[i..];
            for secret in &self.secrets {
                if rest.starts_with(secret) {
                    out.extend_from_slice(MASK.as_bytes());
                    i += secret.len();
                    continue 'scan;
                }
            }
            let could_grow = self
                .secrets
                .iter()
                .any(|s| s.len() > rest.len() && s.starts_with(rest));
            if could_grow {
                // Keep the tail: the next chunk (or `finish`) decides whether it is a secret.
                self.pending = rest.to_vec();
                return out;
            }
            out.push(buf[i]);
            i += 1;
        }
        out
    }

    fn decode(&mut self, bytes: &[u8], at_end: bool) -> String {
        let mut buf = std::mem::take(&mut self.utf8_tail);
        buf.extend_from_slice(bytes);
        let mut out = String::with_capacity(buf.len());
        let mut rest: &[u8] = &buf;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        Some(len) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[len..];
                        }
                        None if at_end => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            break;
                        }
                        None => {
                            self.utf8_tail = after.to_vec();
                            break;
                        }
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(secrets: &[&str], chunks: &[&[u8]], truncated: bool) -> String {
        let secrets: Vec<String> = secrets.iter().map(|s| s.to_string()).collect();
        let mut f = OutputFilter::new(&secrets);
        let mut out = String::new();
        for c in chunks {
            out += &f.push(c);
        }
        out + &f.finish(truncated)
    }

    #[test]
    fn masks_whole_secrets() {
        assert_eq!(
            run(&["hunter2"], &[b"pw=hunter2 ok hunter2"], false),
            "pw=*** ok ***"
        );
    }

    #[test]
    fn masks_a_secret_split_across_chunks() {
        assert_eq!(
            run(&["hunter2"], &[b"pw=hun", b"te", b"r2!"], false),
            "pw=***!"
        );
    }

    #[test]
    fn a_prefix_at_the_end_is_shown_unless_truncated() {
        assert_eq!(run(&["hunter2"], &[b"say hun"], false), "say hun");
        assert_eq!(run(&["hunter2"], &[b"say hun"], true), "say ***");
    }

    #[test]
    fn longest_secret_wins() {
        assert_eq!(run(&["abc", "abcdef"], &[b"xabcdefx"], false), "x***x");
    }

    #[test]
    fn utf8_split_across_chunks_stays_whole_and_invalid_bytes_are_replaced() {
        let euro = "€".as_bytes();
        assert_eq!(run(&[], &[&euro[..1], &euro[1..]], false), "€");
        assert_eq!(run(&[], &[b"a\xffb"], false), "a\u{FFFD}b");
        assert_eq!(run(&[], &[&euro[..2]], false), "\u{FFFD}");
    }
}
