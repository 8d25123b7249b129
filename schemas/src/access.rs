//! How a client reaches the schema registry: its URL, the basic-auth credentials it sends
//! (what Confluent clients send from `basic.auth.user.info`) and the CA it trusts.

use reqwest::{Certificate, Url};

/// Credentials for the registry's HTTP basic authentication.
#[derive(Clone, PartialEq, Eq)]
pub struct BasicAuth {
    /// The user name.
    pub username: String,
    /// The password; never printed.
    pub password: String,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Where the registry is and how to prove who we are to it.
#[derive(Clone, Default)]
pub struct RegistryAccess {
    url: String,
    auth: Option<BasicAuth>,
    ca: Vec<Certificate>,
}

impl RegistryAccess {
    /// The registry at `url`. Credentials written into the URL (`https://user:pass@host`,
    /// Confluent's `basic.auth.credentials.source=URL`) are taken out of it and sent as basic
    /// auth; the URL kept and shown holds none.
    pub fn new(url: &str) -> Self {
        let url = url.trim_end_matches('/');
        let Ok(mut parsed) = Url::parse(url) else {
            // Kept as given: the first request names it as not a URL.
            return Self {
                url: url.to_owned(),
                ..Self::default()
            };
        };
        let auth = (!parsed.username().is_empty()).then(|| BasicAuth {
            username: percent_decoded(parsed.username()),
            password: parsed.password().map(percent_decoded).unwrap_or_default(),
        });
        let _ = parsed.set_username("");
        let _ = parsed.set_password(None);
        Self {
            url: parsed.as_str().trim_end_matches('/').to_owned(),
            auth,
            ca: Vec::new(),
        }
    }

    /// Sends `auth` (over what the URL held).
    pub fn with_auth(mut self, auth: BasicAuth) -> Self {
        self.auth = Some(auth);
        self
    }

    /// Trusts `ca` besides the system's roots for an `https://` registry.
    pub fn with_ca(mut self, ca: Vec<Certificate>) -> Self {
        self.ca = ca;
        self
    }

    /// The URL, without credentials.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The credentials sent, if any.
    pub fn auth(&self) -> Option<&BasicAuth> {
        self.auth.as_ref()
    }

    /// The CA certificates trusted besides the system's.
    pub fn ca(&self) -> &[Certificate] {
        &self.ca
    }
}

impl std::fmt::Debug for RegistryAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAccess")
            .field("url", &self.url)
            .field("auth", &self.auth)
            .field("ca_certificates", &self.ca.len())
            .finish()
    }
}

impl From<&str> for RegistryAccess {
    fn from(url: &str) -> Self {
        Self::new(url)
    }
}

impl From<&String> for RegistryAccess {
    fn from(url: &String) -> Self {
        Self::new(url)
    }
}

impl From<String> for RegistryAccess {
    fn from(url: String) -> Self {
        Self::new(&url)
    }
}

fn percent_decoded(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_the_url_move_out_of_it() {
        let access = RegistryAccess::new("https://orders%40team:p%3Ass@registry.example:8081/");
        assert_eq!(access.url(), "https://registry.example:8081");
        let auth = access.auth().expect("credentials taken from the URL");
        assert_eq!(auth.username, "orders@team");
        assert_eq!(auth.password, "p:ss");
        assert!(!format!("{access:?}").contains("p:ss"));
    }

    #[test]
    fn a_url_without_credentials_sends_none() {
        let access = RegistryAccess::new("http://127.0.0.1:8081");
        assert_eq!(access.url(), "http://127.0.0.1:8081");
        assert!(access.auth().is_none());
    }
}
