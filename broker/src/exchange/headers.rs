//! Headers matching: `x-match` = `all` | `any` | `all-with-x` | `any-with-x` over the binding's
//! arguments. Arguments starting with `x-` take part only in the `-with-x` forms; a `Void` value
//! matches on presence alone.

use crate::amqp::{FieldTable, FieldValue};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    All,
    Any,
}

/// A binding's arguments compiled for matching.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadersMatch {
    mode: Mode,
    with_x: bool,
    entries: Vec<(String, FieldValue)>,
}

impl HeadersMatch {
    /// `Err` names the invalid `x-match` value (RabbitMQ: 406 on bind).
    pub fn compile(arguments: &FieldTable) -> Result<HeadersMatch, String> {
        let (mode, with_x) = match arguments.get("x-match").map(|v| v.as_str()) {
            None => (Mode::All, false),
            Some(Some("all")) => (Mode::All, false),
            Some(Some("any")) => (Mode::Any, false),
            Some(Some("all-with-x")) => (Mode::All, true),
            Some(Some("any-with-x")) => (Mode::Any, true),
            Some(other) => {
                return Err(format!(
                    "Invalid x-match field value {other:?}; expected all, any, all-with-x, or any-with-x"
                ))
            }
        };
        let entries = arguments
            .iter()
            .filter(|(k, _)| k.as_str() != "x-match" && (with_x || !k.as_str().starts_with("x-")))
            .map(|(k, v)| (k.as_str().to_string(), v.clone()))
            .collect();
        Ok(HeadersMatch {
            mode,
            with_x,
            entries,
        })
    }

    pub fn matches(&self, headers: Option<&FieldTable>) -> bool {
        let empty = FieldTable::new();
        let headers = headers.unwrap_or(&empty);
        let hit = |(name, expected): &(String, FieldValue)| match headers.get(name) {
            None => false,
            Some(_) if *expected == FieldValue::Void => true,
            Some(actual) => actual == expected,
        };
        match self.mode {
            Mode::All => self.entries.iter().all(hit),
            Mode::Any => self.entries.iter().any(hit),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, FieldValue)]) -> FieldTable {
        FieldTable::from_entries(entries)
    }

    #[test]
    fn all_any_and_with_x() {
        let s = FieldValue::string;
        let all =
            HeadersMatch::compile(&table(&[("format", s("pdf")), ("type", s("report"))])).unwrap();
        let any = HeadersMatch::compile(&table(&[
            ("x-match", s("any")),
            ("format", s("pdf")),
            ("type", s("log")),
        ]))
        .unwrap();
        let report = table(&[("format", s("pdf")), ("type", s("report"))]);
        let log = table(&[("format", s("zip")), ("type", s("log"))]);
        assert!(all.matches(Some(&report)));
        assert!(!all.matches(Some(&log)));
        assert!(any.matches(Some(&report)));
        assert!(any.matches(Some(&log)));
        assert!(!any.matches(None));

        let x_ignored = HeadersMatch::compile(&table(&[("x-id", s("1"))])).unwrap();
        assert!(
            x_ignored.matches(None),
            "all over no entries matches everything"
        );
        let with_x =
            HeadersMatch::compile(&table(&[("x-match", s("all-with-x")), ("x-id", s("1"))]))
                .unwrap();
        assert!(!with_x.matches(None));
        assert!(with_x.matches(Some(&table(&[("x-id", s("1"))]))));
        let presence = HeadersMatch::compile(&table(&[("flag", FieldValue::Void)])).unwrap();
        assert!(presence.matches(Some(&table(&[("flag", FieldValue::I32(3))]))));
        assert!(HeadersMatch::compile(&table(&[("x-match", s("most"))])).is_err());
    }
}
