//! User input that ends up in error messages and logs is shown as a short,
//! escaped excerpt: control characters (newlines, ESC) become visible
//! escapes, so a `model` like "x\n<forged log line>" cannot forge log lines
//! or terminal colours, and at most [`MAX_CHARS`] characters are echoed.

use std::fmt::Write as _;

pub const MAX_CHARS: usize = 64;

pub fn excerpt(input: &str) -> String {
    let mut out = String::with_capacity(input.len().min(MAX_CHARS) + 8);
    for (i, c) in input.chars().enumerate() {
        if i == MAX_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            let _ = write!(out, "{}", c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_length_is_bounded() {
        let forged = "qwen\n2026-12-02T00:00:00Z  INFO admin logged in\u{1b}[31m";
        let shown = excerpt(forged);
        assert!(!shown.chars().any(char::is_control), "{shown}");
        assert!(shown.starts_with("qwen\\n2026"));
        assert!(shown.contains("\\u{1b}"));
        let long = "a".repeat(1000);
        assert_eq!(excerpt(&long).chars().count(), MAX_CHARS + 1);
        assert_eq!(excerpt("llama-3"), "llama-3");
    }
}
