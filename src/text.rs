//! Bounding text a client controls (a method, an `alg`, a header name, a path) before it is
//! quoted in an error, a log line or a gRPC status: at most [`MAX_CHARS`] characters, control
//! characters escaped, and a mark when it was cut. Errors keep the clipped text only.

/// The longest client text quoted anywhere.
pub const MAX_CHARS: usize = 64;

/// `text` with control characters escaped, cut at [`MAX_CHARS`] characters (`…` marks a cut).
pub fn clip(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_CHARS + 8));
    for (count, c) in text.chars().enumerate() {
        if count == MAX_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::clip;

    #[test]
    fn long_or_control_text_is_bounded() {
        assert_eq!(clip("GET"), "GET");
        assert_eq!(clip("a\nb\u{1b}"), "a\\nb\\u{1b}");
        let long = "x".repeat(10_000);
        let clipped = clip(&long);
        assert_eq!(clipped.chars().count(), 65);
        assert!(clipped.ends_with('…'));
    }
}
