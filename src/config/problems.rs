//! Collected validation problems, each with the path of the field it concerns.

use std::fmt;
use std::str::FromStr;

/// One thing wrong with a config or document, e.g. `ra.prefixes[1].prefix: "2001:db8::/129" is not an
/// IPv6 prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted field path with `[i]` for list items; empty for the file as a whole.
    pub path: String,
    /// What is wrong, in words a person can act on.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one file, in the order found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problems(Vec<Problem>);

impl Problems {
    /// Iterate over the problems.
    pub fn iter(&self) -> impl Iterator<Item = &Problem> {
        self.0.iter()
    }

    /// How many problems there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "  {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// Accumulates problems during validation. A path already reported (say, a key dropped for having
/// the wrong type) is not reported again as "missing".
#[derive(Debug, Default)]
pub(crate) struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    /// Record a problem at `path`.
    pub(crate) fn problem(&mut self, path: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.to_string(),
            message: message.into(),
        });
    }

    /// Whether a problem was already recorded at `path` or below it.
    pub(crate) fn reported(&self, path: &str) -> bool {
        self.problems.iter().any(|p| {
            p.path == path
                || p.path
                    .strip_prefix(path)
                    .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
        })
    }

    /// Record "missing" for a required field, unless that field was already reported.
    pub(crate) fn required<T>(&mut self, path: &str, value: Option<T>) -> Option<T> {
        if value.is_none() && !self.reported(path) {
            self.problem(path, "missing (required)");
        }
        value
    }

    /// [`Checker::required`] with a path that is made only when the value is missing.
    pub(crate) fn required_at<T>(
        &mut self,
        value: Option<T>,
        path: impl FnOnce() -> String,
    ) -> Option<T> {
        match value {
            Some(v) => Some(v),
            None => self.required(&path(), None),
        }
    }

    /// [`Checker::parse`] with a path that is made only when `text` does not parse.
    pub(crate) fn parse_at<T>(&mut self, text: &str, path: impl FnOnce() -> String) -> Option<T>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match text.parse() {
            Ok(value) => Some(value),
            Err(err) => {
                self.problem(&path(), err.to_string());
                None
            }
        }
    }

    /// Parse `text` with `FromStr`, recording its error at `path`.
    pub(crate) fn parse<T>(&mut self, path: &str, text: &str) -> Option<T>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        self.parse_at(text, || path.to_string())
    }

    /// Parse an IPv6 address (not a prefix), recording a problem at `path`.
    pub(crate) fn ipv6(&mut self, path: &str, text: &str) -> Option<std::net::Ipv6Addr> {
        match text.parse() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.problem(path, format!("{text:?} is not an IPv6 address"));
                None
            }
        }
    }

    /// Check an integer against an inclusive range and convert it, recording a problem at `path`.
    pub(crate) fn range<T>(&mut self, path: &str, value: i64, min: T, max: T) -> Option<T>
    where
        T: TryFrom<i64> + Into<i64> + Copy + fmt::Display,
    {
        if value < min.into() || value > max.into() {
            self.problem(path, format!("{value} is out of range {min}..={max}"));
            return None;
        }
        T::try_from(value).ok()
    }

    /// Whether no problem was recorded.
    pub(crate) fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    /// The collected problems.
    pub(crate) fn finish(self) -> Problems {
        Problems(self.problems)
    }
}

/// Check a DNS domain name for the search list (RFC 1035 §2.3.4 lengths, LDH labels), without a
/// trailing dot. Returns the message for the problem, if any.
pub(crate) fn domain_problem(name: &str) -> Option<String> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() {
        return Some("an empty domain name".to_string());
    }
    if trimmed.len() > 253 {
        return Some(format!("{name:?} is longer than 253 characters"));
    }
    for label in trimmed.split('.') {
        if label.is_empty() {
            return Some(format!("{name:?} has an empty label"));
        }
        if label.len() > 63 {
            return Some(format!("{name:?} has a label longer than 63 characters"));
        }
        let ldh = label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ldh || label.starts_with('-') || label.ends_with('-') {
            return Some(format!(
                "{name:?} is not a domain name (letters, digits and inner hyphens only)"
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_is_silent_for_an_already_reported_path() {
        let mut check = Checker::default();
        check.problem("ra.prefixes[0].prefix", "invalid type");
        assert_eq!(check.required::<u8>("ra.prefixes[0].prefix", None), None);
        assert_eq!(check.required::<u8>("interface", None), None);
        let all: Vec<String> = check.finish().iter().map(|p| p.to_string()).collect();
        assert_eq!(
            all,
            vec![
                "ra.prefixes[0].prefix: invalid type",
                "interface: missing (required)"
            ]
        );
    }

    #[test]
    fn reported_matches_children_not_siblings() {
        let mut check = Checker::default();
        check.problem("ra.prefixes[1].prefix", "x");
        assert!(check.reported("ra.prefixes[1]"));
        assert!(check.reported("ra"));
        assert!(!check.reported("ra.prefixes[10]"));
        assert!(!check.reported("r"));
    }

    #[test]
    fn ranges() {
        let mut check = Checker::default();
        assert_eq!(check.range::<u16>("a", 9000, 0, 9000), Some(9000));
        assert_eq!(check.range::<u16>("b", 9001, 0, 9000), None);
        assert_eq!(check.range::<u32>("c", -1, 0, u32::MAX), None);
        let all: Vec<String> = check.finish().iter().map(|p| p.to_string()).collect();
        assert_eq!(
            all,
            vec![
                "b: 9001 is out of range 0..=9000",
                "c: -1 is out of range 0..=4294967295"
            ]
        );
    }

    #[test]
    fn domains() {
        assert_eq!(domain_problem("pod1.example"), None);
        assert_eq!(domain_problem("pod1.example."), None);
        assert!(domain_problem("").is_some());
        assert!(domain_problem("a..b").is_some_and(|m| m.contains("empty label")));
        assert!(domain_problem(&"a".repeat(64)).is_some_and(|m| m.contains("63")));
        assert!(domain_problem("bad name.example").is_some());
        assert!(domain_problem("-x.example").is_some());
    }
}
