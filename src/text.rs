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

/// `text` with every character case-folded as upstreams that ignore case compare them
/// (Java's `equalsIgnoreCase`, .NET's `OrdinalIgnoreCase`, JavaScript's `/iu`): upper-cased,
/// then lower-cased, one character at a time with its simple mapping. So `ſ` (long s) and `s`,
/// `ı` (dotless i), `İ` and `i`, the Kelvin sign and `k` fold alike, which
/// `str::to_lowercase` alone does not.
pub fn fold_case(text: &str) -> String {
    text.chars().map(fold_char).collect()
}

fn fold_char(c: char) -> char {
    let mut upper = c.to_uppercase();
    let upper = match (upper.next(), upper.next()) {
        (Some(u), None) => u,
        _ => c,
    };
    upper.to_lowercase().next().unwrap_or(upper)
}

#[cfg(test)]
mod tests {
    use super::{clip, fold_case};

    #[test]
    fn case_folds_like_case_insensitive_upstreams() {
        for (a, b) in [
            ("/Status", "/status"),
            ("/\u{17f}tatus", "/status"),
            ("/adm\u{131}n", "/admin"),
            ("/ADM\u{130}N", "/admin"),
            ("/\u{212a}elvin", "/kelvin"),
            ("/caf\u{c9}", "/caf\u{e9}"),
        ] {
            assert_eq!(fold_case(a), fold_case(b), "{a} {b}");
        }
        assert_ne!(fold_case("/stra\u{df}e"), fold_case("/strasse"));
    }

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
