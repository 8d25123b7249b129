//! Credentials in config: never printed, never logged, read from a mounted file when one is
//! given. One type and one file rule for every binary.

use std::fmt;
use std::path::Path;

use serde::Deserialize;

use crate::config::ConfigError;

/// A credential (token, password). `Debug` shows `***`, or `""` when it is empty, so that a
/// missing credential is still visible in a printed config.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that sends or compares it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `inline`, or the content of `file` when one is set (a mounted secret wins over a value
    /// in config). The file's trailing line ending is not part of the secret; a file that
    /// cannot be read, or holds nothing, is an error naming `key`.
    pub fn resolve(inline: &Secret, file: Option<&Path>, key: &str) -> Result<Secret, ConfigError> {
        let Some(path) = file else {
            return Ok(inline.clone());
        };
        let invalid = |message: String| ConfigError::Invalid {
            key: key.to_owned(),
            message,
        };
        let text = std::fs::read_to_string(path)
            .map_err(|err| invalid(format!("cannot read `{}`: {err}", path.display())))?;
        let text = text.strip_suffix('\n').unwrap_or(&text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        if text.is_empty() {
            return Err(invalid(format!("`{}` is empty", path.display())));
        }
        Ok(Secret::new(text))
    }
}

/// `url` with the password of its user info (`scheme://user:password@host/...`) replaced by
/// `***`, for printing: a URL in a printed config or a log line keeps its host and user.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info
                .split_once(':')
                .map_or(user_info, |(user, _)| user);
            if user_info.contains(':') {
                format!("{scheme}://{user}:***@{host}{path}")
            } else {
                url.to_owned()
            }
        }
        None => url.to_owned(),
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("***")
        }
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self::new(value)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_prints() {
        assert_eq!(format!("{:?}", Secret::new("s3cr3t")), "***");
        assert_eq!(format!("{:?}", Secret::default()), "\"\"");
    }

    #[test]
    fn a_url_keeps_its_user_and_host_and_loses_its_password() {
        assert_eq!(
            redact_url("postgres://app:pa55@db:5432/analytics?sslmode=require"),
            "postgres://app:***@db:5432/analytics?sslmode=require"
        );
        assert_eq!(
            redact_url("https://svc:p@ss@registry.example.net/"),
            "https://svc:***@registry.example.net/"
        );
        for plain in ["http://127.0.0.1:8081", "postgres://app@db/x", "not a url"] {
            assert_eq!(redact_url(plain), plain);
        }
    }

    #[test]
    fn a_file_wins_loses_its_line_ending_and_must_hold_something() {
        let dir = std::env::temp_dir().join(format!("backbone-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let (file, empty) = (dir.join("token"), dir.join("empty"));
        std::fs::write(&file, "from-file\r\n").expect("write");
        std::fs::write(&empty, "\n").expect("write");
        let inline = Secret::new("inline");
        let read = |path: Option<&Path>| Secret::resolve(&inline, path, "x.credential_file");
        assert_eq!(read(None).expect("inline").expose(), "inline");
        assert_eq!(read(Some(&file)).expect("file").expose(), "from-file");
        for bad in [empty.clone(), dir.join("absent")] {
            let err = read(Some(&bad)).expect_err("refused").to_string();
            assert!(
                err.contains("x.credential_file") && err.contains(&bad.display().to_string()),
                "{err}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
