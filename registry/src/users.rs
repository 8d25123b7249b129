//! Who may use the registry: a file of users, each with a role and an Argon2id password hash.
//!
//! One user per line, `name:role:hash`, where role is `read`, `write` or `admin` and hash is
//! the PHC string `schema-registry --hash-password` prints. `#` starts a comment. The file
//! holds no password, so it can be mounted where the registry runs without being a secret
//! itself (a leaked hash still costs an Argon2 search per guess).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use backbone_core::config::ConfigError;
use sha2::{Digest, Sha256};

/// What a user may do. Each role may do what the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read schemas, subjects, versions and config; look a schema up under a subject.
    Read,
    /// Also register schemas and test compatibility.
    Write,
    /// Also change compatibility and mode, and delete.
    Admin,
}

impl Role {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "read" => Some(Self::Read),
            "write" => Some(Self::Write),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
        })
    }
}

struct User {
    role: Role,
    hash: String,
}

/// The users file, read once at start.
pub struct Users {
    users: HashMap<String, User>,
    /// Digests of (user, password) pairs that verified, so that a client sending the same
    /// credentials on every request pays for Argon2 once, not per request.
    verified: Mutex<HashMap<[u8; 32], Role>>,
    /// A hash no password matches, checked for unknown names; made at the first one, not at
    /// start-up (where the file is also read to validate the config).
    decoy: OnceLock<String>,
}

/// Verified pairs remembered at most; past it the memory starts over.
const VERIFIED_CAPACITY: usize = 4096;

impl Users {
    /// Reads and checks `path`; `key` names the setting in errors.
    pub fn load(path: &Path, key: &str) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            key: key.to_owned(),
            message: format!("`{}`: {message}", path.display()),
        };
        let text = std::fs::read_to_string(path).map_err(|err| invalid(err.to_string()))?;
        Self::parse(&text).map_err(invalid)
    }

    fn parse(text: &str) -> Result<Self, String> {
        let mut users = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |message: String| format!("line {}: {message}", index + 1);
            let mut fields = line.splitn(3, ':');
            let (Some(name), Some(role), Some(hash)) =
                (fields.next(), fields.next(), fields.next())
            else {
                return Err(at("expected name:role:hash".into()));
            };
            if name.is_empty() {
                return Err(at("the user name is empty".into()));
            }
            let role = Role::parse(role).ok_or_else(|| {
                at(format!(
                    "user `{name}`: unknown role `{role}` (read, write or admin)"
                ))
            })?;
            PasswordHash::new(hash).map_err(|err| {
                at(format!(
                    "user `{name}`: the hash is not a PHC string ({err}); make one with \
                     `schema-registry --hash-password`"
                ))
            })?;
            let user = User {
                role,
                hash: hash.to_owned(),
            };
            if users.insert(name.to_owned(), user).is_some() {
                return Err(at(format!("user `{name}` is listed twice")));
            }
        }
        if users.is_empty() {
            return Err("lists no user".into());
        }
        Ok(Self {
            users,
            verified: Mutex::default(),
            decoy: OnceLock::new(),
        })
    }

    /// The role of `name` when `password` is theirs. Slow on purpose the first time (Argon2);
    /// call it off the async threads.
    pub fn verify(&self, name: &str, password: &str) -> Option<Role> {
        let digest: [u8; 32] = Sha256::new()
            .chain_update(name.len().to_le_bytes())
            .chain_update(name)
            .chain_update(password)
            .finalize()
            .into();
        if let Some(role) = self.remembered(&digest) {
            return Some(role);
        }
        let Some(user) = self.users.get(name) else {
            // The same work as for a known user, so that the answer's time does not tell
            // which names exist.
            let decoy = self
                .decoy
                .get_or_init(|| hash_password("no user has this password").unwrap_or_default());
            if let Ok(hash) = PasswordHash::new(decoy) {
                let _ = Argon2::default().verify_password(password.as_bytes(), &hash);
            }
            return None;
        };
        let hash = PasswordHash::new(&user.hash).ok()?;
        Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .ok()?;
        if let Ok(mut verified) = self.verified.lock() {
            if verified.len() >= VERIFIED_CAPACITY {
                verified.clear();
            }
            verified.insert(digest, user.role);
        }
        Some(user.role)
    }

    fn remembered(&self, digest: &[u8; 32]) -> Option<Role> {
        self.verified.lock().ok()?.get(digest).copied()
    }
}

/// The Argon2id hash of `password` with a fresh salt, as a PHC string for the users file.
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_user_is_known_by_their_password_only() {
        let hash = hash_password("s3cret").unwrap();
        let users = Users::parse(&format!("# team\nci:write:{hash}\n")).unwrap();
        assert_eq!(users.verify("ci", "s3cret"), Some(Role::Write));
        // Remembered now, and still right.
        assert_eq!(users.verify("ci", "s3cret"), Some(Role::Write));
        assert_eq!(users.verify("ci", "S3cret"), None);
        assert_eq!(users.verify("someone", "s3cret"), None);
    }

    #[test]
    fn a_bad_line_is_named() {
        let hash = hash_password("x").unwrap();
        let cases = [
            (
                format!("a:owner:{hash}"),
                "line 1: user `a`: unknown role `owner`",
            ),
            (
                "a:read:plaintext".to_owned(),
                "line 1: user `a`: the hash is not a PHC string",
            ),
            (
                format!("\na:read:{hash}\na:admin:{hash}"),
                "line 3: user `a` is listed twice",
            ),
            ("a-read".to_owned(), "line 1: expected name:role:hash"),
            ("# nobody".to_owned(), "lists no user"),
        ];
        for (text, expected) in cases {
            let Err(err) = Users::parse(&text) else {
                panic!("{text:?} was accepted");
            };
            assert!(err.starts_with(expected), "{text:?}: {err}");
        }
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Read < Role::Write && Role::Write < Role::Admin);
    }
}
