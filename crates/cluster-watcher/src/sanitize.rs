//! Text from workers made safe to print: no forged log lines, no unbounded lines.

use std::borrow::Cow;

/// The longest line a forwarded log record becomes; the rest is cut and counted.
pub(crate) const MAX_LINE: usize = 16 * 1024;

/// `text` with line breaks and other control characters escaped (a record cannot forge a
/// whole log line of the watcher's), cut to `max` bytes.
pub(crate) fn sanitize(text: &str, max: usize) -> Cow<'_, str> {
    let clean = text.len() <= max && !text.chars().any(char::is_control);
    if clean {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len().min(max) + 32);
    for (index, c) in text.char_indices() {
        if out.len() >= max {
            out.push_str(&format!("… ({} more bytes)", text.len() - index));
            break;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push('\t'),
            c if c.is_control() => out.push_str(&c.escape_unicode().to_string()),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::sanitize;

    #[test]
    fn line_breaks_cannot_forge_lines() {
        assert_eq!(
            sanitize("ok\n2026-01-01 INFO forged", 100),
            "ok\\n2026-01-01 INFO forged"
        );
        assert_eq!(sanitize("plain", 100), "plain");
    }

    #[test]
    fn long_text_is_cut_and_counted() {
        let text = "x".repeat(1000);
        let cut = sanitize(&text, 10);
        assert!(cut.starts_with("xxxxxxxxxx… (990 more bytes)"), "{cut}");
    }
}
