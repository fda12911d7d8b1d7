//! Log lines never carry raw input: a line written from a request must stay one line
//! of the server's own text.
//!
//! Record ids, collection names and anything else a client sent are logged with
//! `Debug` (`record = ?id`: quoted, with `\n` and ESC escaped). Values shown with
//! `Display` that may hold such input (a storage error can quote a value it was
//! given) go through [`Escaped`]. Tokens are never logged at all (see
//! [`crate::auth`]).

use std::fmt::{self, Write};

/// Shows `T` by its `Display`, with every control character escaped (`\n` as
/// `\\n`, ESC as `\\u{1b}`), so that it cannot start a new log line or drive a
/// terminal.
pub struct Escaped<T>(pub T);

impl<T: fmt::Display> fmt::Display for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(EscapingWriter(f), "{}", self.0)
    }
}

impl<T: fmt::Display> fmt::Debug for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

struct EscapingWriter<'a, 'b>(&'a mut fmt::Formatter<'b>);

impl Write for EscapingWriter<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for ch in s.chars() {
            if ch.is_control() {
                write!(self.0, "{}", ch.escape_default())?;
            } else {
                self.0.write_char(ch)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        let shown = Escaped("a\nFORGED\r\t\u{1b}[31m\u{85}é \"q\"").to_string();
        assert_eq!(shown, "a\\nFORGED\\r\\t\\u{1b}[31m\\u{85}é \"q\"");
        assert!(!shown.chars().any(char::is_control));
    }
}
