//! Configuration errors and where they are: `file:line:column`, and the
//! small helpers every section uses to report one.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use crate::units::HumanDuration;

use super::host::Host;

/// A configuration error, with the place in the file when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    /// 1-based line and column.
    pub position: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, col)) => {
                write!(f, "{}:{line}:{col}: {}", self.path.display(), self.message)
            }
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The text being validated (to turn byte spans into positions) and the
/// machine it is validated for.
pub(crate) struct Ctx<'a> {
    pub path: &'a Path,
    pub text: &'a str,
    pub host: &'a dyn Host,
}

impl Ctx<'_> {
    pub fn err_at(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: self.path.to_path_buf(),
            position: Some(line_col(self.text, span.start)),
            message: message.into(),
        }
    }

    pub fn err(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: self.path.to_path_buf(),
            position: None,
            message: message.into(),
        }
    }

    /// One of a fixed set of words, such as `parity = "even"`. Anything else
    /// is `{what} "{value}": {expected}` at the value, as in
    /// `invalid parity "mark": expected "none", "even" or "odd"`.
    pub fn choose<T: Copy>(
        &self,
        value: &Spanned<String>,
        choices: &[(&str, T)],
        what: &str,
        expected: &str,
    ) -> Result<T, ConfigError> {
        let v = value.get_ref().as_str();
        choices
            .iter()
            .find(|(word, _)| *word == v)
            .map(|(_, t)| *t)
            .ok_or_else(|| self.err_at(value.span(), format!("{what} \"{v}\": {expected}")))
    }

    /// [`Ctx::choose`] for an optional key, `default` when it is not set.
    pub fn choose_or<T: Copy>(
        &self,
        value: &Option<Spanned<String>>,
        default: T,
        choices: &[(&str, T)],
        what: &str,
        expected: &str,
    ) -> Result<T, ConfigError> {
        match value {
            Some(v) => self.choose(v, choices, what, expected),
            None => Ok(default),
        }
    }

    /// Rejects a key that belongs to another kind of table.
    pub fn only_with<T>(
        &self,
        v: &Option<Spanned<T>>,
        key: &str,
        needs: &str,
    ) -> Result<(), ConfigError> {
        match v {
            Some(v) => Err(self.err_at(v.span(), format!("{key} applies only to {needs}"))),
            None => Ok(()),
        }
    }

    /// A duration that must be greater than zero when set.
    pub fn positive_opt(
        &self,
        d: &Option<Spanned<HumanDuration>>,
        key: &str,
    ) -> Result<Option<Duration>, ConfigError> {
        match d {
            Some(d) if d.get_ref().0.is_zero() => {
                Err(self.err_at(d.span(), format!("{key} must be greater than zero")))
            }
            Some(d) => Ok(Some(d.get_ref().0)),
            None => Ok(None),
        }
    }

    /// A positive duration, or the default.
    pub fn positive(
        &self,
        d: &Option<Spanned<HumanDuration>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        Ok(self.positive_opt(d, key)?.unwrap_or(default))
    }
}

/// 1-based line and column of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_is_one_based() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }

    #[test]
    fn choose_names_the_value_and_the_choices_at_its_place() {
        let text = "x = 1\nparity = \"mark\"\n";
        let ctx = Ctx {
            path: Path::new("/c.toml"),
            text,
            host: &crate::config::FakeHost::default(),
        };
        let v = Spanned::new(15..21, "mark".to_string());
        let e = ctx
            .choose(
                &v,
                &[("odd", 1), ("even", 2)],
                "invalid parity",
                "expected \"odd\" or \"even\"",
            )
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "/c.toml:2:10: invalid parity \"mark\": expected \"odd\" or \"even\""
        );
        let v = Spanned::new(15..21, "even".to_string());
        assert_eq!(ctx.choose(&v, &[("odd", 1), ("even", 2)], "", ""), Ok(2));
        assert_eq!(ctx.choose_or(&None, 7, &[("odd", 1)], "", ""), Ok(7));
    }
}
