//! Producer API keys.
//!
//! A key is shown once, when it is made: `bbk_<id>_<secret>`, the secret 32 random bytes in
//! hex. The keys file keeps, one JSON object per line, the id, the tenant the key publishes
//! for, the event types it may publish, its limits, whether it is revoked, and the SHA-256 of
//! the secret, never the secret: a high-entropy secret needs no slow hash, and a stolen file
//! gives no key. The gateway reads the file again when it changes, so `ingest keys revoke`
//! takes effect without a restart.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const PREFIX: &str = "bbk_";

/// One producer key as the file keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProducerKey {
    /// Public id, the `<id>` of the key and the `producer` label of the metrics.
    pub id: String,
    /// Tenant every event published with the key belongs to.
    pub tenant: String,
    /// CloudEvents types the key may publish.
    pub event_types: Vec<String>,
    /// `sha256:<hex>` of the secret.
    pub secret_hash: String,
    /// Events per second, overriding `ingest.rate_per_second`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_second: Option<f64>,
    /// Events per UTC day, overriding `ingest.daily_quota`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_quota: Option<u64>,
    /// When the key was made, seconds since the epoch.
    pub created_at: i64,
    /// Revoked keys stay in the file, refused, so their id is not reused.
    #[serde(default)]
    pub revoked: bool,
}

/// Why the keys file cannot be used, or a key cannot be made or revoked.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing the file failed.
    #[error("keys file `{path}`: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// A line is not a key.
    #[error("keys file `{path}` line {line}: {message}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// No key has that id.
    #[error("keys file `{path}` has no key `{id}`")]
    Unknown {
        /// The file.
        path: PathBuf,
        /// The id asked for.
        id: String,
    },
    /// A request to make a key that could not work.
    #[error("{0}")]
    Invalid(String),
    /// The system's random source failed.
    #[error("no randomness for a secret: {0}")]
    Random(String),
}

/// The keys of one file, by id.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: BTreeMap<String, ProducerKey>,
}

/// Why a request's credential is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No `Authorization: Bearer` header, not a key's shape, an unknown id or a wrong secret.
    Unknown,
    /// The key was revoked.
    Revoked,
}

impl KeySet {
    /// Reads `path`; a missing file is an empty set, so a gateway can start before its first
    /// key is made.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(KeyError::Io {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        let mut keys = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let malformed = |message: String| KeyError::Malformed {
                path: path.to_owned(),
                line: n + 1,
                message,
            };
            let key: ProducerKey =
                serde_json::from_str(line).map_err(|e| malformed(e.to_string()))?;
            if !key.secret_hash.starts_with("sha256:") {
                return Err(malformed("secret_hash must be `sha256:<hex>`".to_owned()));
            }
            if keys.insert(key.id.clone(), key).is_some() {
                return Err(malformed("a second key with this id".to_owned()));
            }
        }
        Ok(Self { keys })
    }

    /// Every key, in id order.
    pub fn keys(&self) -> impl Iterator<Item = &ProducerKey> {
        self.keys.values()
    }

    /// The key `token` (`bbk_<id>_<secret>`) stands for, if it is one and not revoked.
    pub fn authenticate(&self, token: &str) -> Result<&ProducerKey, Refused> {
        let (id, secret) = token
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once('_'))
            .ok_or(Refused::Unknown)?;
        let key = self.keys.get(id).ok_or(Refused::Unknown)?;
        let presented = secret_hash(secret);
        if !bool::from(presented.as_bytes().ct_eq(key.secret_hash.as_bytes())) {
            return Err(Refused::Unknown);
        }
        if key.revoked {
            return Err(Refused::Revoked);
        }
        Ok(key)
    }
}

/// A key to make: what `ingest keys create` takes.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// Tenant of the key.
    pub tenant: String,
    /// Event types it may publish.
    pub event_types: Vec<String>,
    /// Its own rate, if not the gateway's.
    pub rate_per_second: Option<f64>,
    /// Its own daily quota, if not the gateway's.
    pub daily_quota: Option<u64>,
}

/// Makes a key, appends it to `path` and returns it with the token to hand to the producer,
/// which is not stored anywhere.
pub fn create(path: &Path, new: NewKey, now_secs: i64) -> Result<(ProducerKey, String), KeyError> {
    if new.tenant.is_empty() || new.tenant.contains(':') {
        return Err(KeyError::Invalid(format!(
            "tenant {:?}: must be non-empty and hold no `:` (it starts every record key)",
            new.tenant
        )));
    }
    if new.event_types.is_empty() {
        return Err(KeyError::Invalid(
            "a key needs at least one event type (--type)".to_owned(),
        ));
    }
    if new
        .rate_per_second
        .is_some_and(|r| !(r.is_finite() && r > 0.0))
    {
        return Err(KeyError::Invalid(
            "--rate-per-second must be a positive number".to_owned(),
        ));
    }
    let mut set = KeySet::load(path)?;
    let random = random_bytes::<38>()?;
    let id = hex(&random[..6]);
    if set.keys.contains_key(&id) {
        return Err(KeyError::Invalid(format!(
            "key id `{id}` drawn twice; try again"
        )));
    }
    let secret = hex(&random[6..]);
    let key = ProducerKey {
        id: id.clone(),
        tenant: new.tenant,
        event_types: new.event_types,
        secret_hash: secret_hash(&secret),
        rate_per_second: new.rate_per_second,
        daily_quota: new.daily_quota,
        created_at: now_secs,
        revoked: false,
    };
    set.keys.insert(id.clone(), key.clone());
    write(path, &set)?;
    Ok((key, format!("{PREFIX}{id}_{secret}")))
}

/// Marks key `id` revoked in `path`.
pub fn revoke(path: &Path, id: &str) -> Result<ProducerKey, KeyError> {
    let mut set = KeySet::load(path)?;
    let key = set.keys.get_mut(id).ok_or_else(|| KeyError::Unknown {
        path: path.to_owned(),
        id: id.to_owned(),
    })?;
    key.revoked = true;
    let revoked = key.clone();
    write(path, &set)?;
    Ok(revoked)
}

/// Writes the set through a temporary file renamed into place: a gateway reading the file
/// meanwhile sees the old keys or the new ones, never half a file.
fn write(path: &Path, set: &KeySet) -> Result<(), KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let mut text = String::new();
    for key in set.keys.values() {
        let line = serde_json::to_string(key).map_err(|e| io(std::io::Error::other(e)))?;
        text.push_str(&line);
        text.push('\n');
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text).map_err(io)?;
    restrict(&partial).map_err(io)?;
    std::fs::rename(&partial, path).map_err(io)
}

/// The file holds no secret, but who may publish is still the operator's business.
fn restrict(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

fn secret_hash(secret: &str) -> String {
    format!("sha256:{}", hex(&Sha256::digest(secret.as_bytes())))
}

pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], KeyError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(bytes)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("backbone-ingest-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        path
    }

    fn usage_key() -> NewKey {
        NewKey {
            tenant: "demo".to_owned(),
            event_types: vec!["backbone.usage.recorded".to_owned()],
            rate_per_second: None,
            daily_quota: Some(10),
        }
    }

    #[test]
    fn a_made_key_authenticates_until_revoked_and_its_secret_is_not_stored() {
        let path = file("made.jsonl");
        let (key, token) = create(&path, usage_key(), 1_700_000_000).expect("create");
        let stored = std::fs::read_to_string(&path).expect("read");
        let secret = token.rsplit('_').next().expect("secret");
        assert!(!stored.contains(secret), "the secret is not in the file");
        let set = KeySet::load(&path).expect("load");
        assert_eq!(set.authenticate(&token).map(|k| &k.id), Ok(&key.id));
        let last = if token.ends_with('0') { '1' } else { '0' };
        let wrong = format!("{}{last}", &token[..token.len() - 1]);
        assert_eq!(set.authenticate(&wrong).err(), Some(Refused::Unknown));
        assert_eq!(set.authenticate("Basic x").err(), Some(Refused::Unknown));
        revoke(&path, &key.id).expect("revoke");
        let set = KeySet::load(&path).expect("reload");
        assert_eq!(set.authenticate(&token).err(), Some(Refused::Revoked));
        assert!(matches!(
            revoke(&path, "nope"),
            Err(KeyError::Unknown { .. })
        ));
    }

    #[test]
    fn a_bad_line_is_named_and_bad_requests_are_refused() {
        let path = file("bad.jsonl");
        std::fs::write(&path, "\n{\"id\": 1}\n").expect("write");
        let err = KeySet::load(&path).expect_err("malformed").to_string();
        assert!(err.contains("line 2"), "{err}");
        let _ = std::fs::remove_file(&path);
        let colon = NewKey {
            tenant: "a:b".to_owned(),
            ..usage_key()
        };
        assert!(matches!(create(&path, colon, 0), Err(KeyError::Invalid(_))));
        let untyped = NewKey {
            event_types: Vec::new(),
            ..usage_key()
        };
        assert!(matches!(
            create(&path, untyped, 0),
            Err(KeyError::Invalid(_))
        ));
        assert!(KeySet::load(&path)
            .expect("missing is empty")
            .keys()
            .next()
            .is_none());
    }
}
