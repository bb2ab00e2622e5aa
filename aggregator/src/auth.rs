//! Who may publish and who may watch.
//!
//! Agents present a token in gRPC metadata (`authorization: Bearer <token>`),
//! checked by an interceptor before any message of the stream is read; a
//! token may be bound to the host names it publishes for. WebSocket clients
//! present a token in an `Authorization: Bearer` header, a `token` query
//! parameter or a first `{"action":"auth","token":...}` message; each token
//! grants topic patterns. Tokens are compared by SHA-256, so the configuration
//! can hold hashes only (`sha256`), or name an environment variable or a file
//! to read the token from; a token never appears in logs or replies, only its
//! configured name.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::topic::{host_segment, intersects, matches, validate_pattern};

/// `[auth]` in `aggregator.toml`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Agents may stream without a token (local quick-start only).
    pub anonymous_agents: bool,
    /// WebSocket clients may connect without a token; they get `anonymous_topics`.
    pub anonymous_clients: bool,
    /// Topic patterns granted to clients without a token.
    pub anonymous_topics: Vec<String>,
    /// `[[auth.agent_tokens]]`: tokens agents may present.
    pub agent_tokens: Vec<TokenConfig>,
    /// `[[auth.client_tokens]]`: tokens WebSocket clients may present.
    pub client_tokens: Vec<TokenConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            anonymous_agents: true,
            anonymous_clients: true,
            anonymous_topics: vec![">".into()],
            agent_tokens: Vec::new(),
            client_tokens: Vec::new(),
        }
    }
}

/// One token. Exactly one of `sha256`, `token_env`, `token_file`, `token`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenConfig {
    /// Name used in logs (never the token itself).
    pub name: String,
    /// Hex SHA-256 of the token (`hostpulse-aggregator --hash-token`).
    pub sha256: Option<String>,
    /// Environment variable holding the token.
    pub token_env: Option<String>,
    /// File holding the token (surrounding white space ignored).
    pub token_file: Option<PathBuf>,
    /// The token in clear (for tests and throw-away set-ups only).
    pub token: Option<String>,
    /// Agent tokens: host names this token may publish for (empty: any).
    pub hosts: Vec<String>,
    /// Client tokens: topic patterns this token may watch.
    pub topics: Vec<String>,
    /// Refused after this moment (RFC 3339), if set.
    pub expires: Option<String>,
}

/// A token configuration that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct AuthConfigError {
    /// Which entry, e.g. `auth.client_tokens[2]`.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

/// Why a token was refused (the message names the token's configured name at most).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No token, and anonymous access is off.
    #[error("a token is required")]
    Missing,
    /// No configured token has this hash.
    #[error("unknown token")]
    Unknown,
    /// The token's `expires` has passed.
    #[error("token {0:?} has expired")]
    Expired(String),
}

#[derive(Debug)]
struct Token {
    name: Arc<str>,
    hash: [u8; 32],
    expires: Option<SystemTime>,
    patterns: Arc<[String]>,
}

/// What an agent's token allows.
#[derive(Debug, Clone)]
pub struct AgentGrant {
    /// Token name (`anonymous` without one).
    pub name: Arc<str>,
    /// Host segments it may publish for; empty: any.
    pub hosts: Arc<[String]>,
}

impl AgentGrant {
    /// Whether it may publish for the host named `hostname`.
    pub fn may_publish(&self, hostname: &str) -> bool {
        let host = host_segment(hostname);
        self.hosts.is_empty() || self.hosts.contains(&host)
    }
}

/// What a client's token allows.
#[derive(Debug, Clone)]
pub struct Grant {
    /// Token name (`anonymous` without one).
    pub name: Arc<str>,
    /// Topic patterns it may watch.
    pub topics: Arc<[String]>,
}

impl Grant {
    /// Whether a subscription to `pattern` can deliver anything at all.
    pub fn overlaps(&self, pattern: &str) -> bool {
        self.topics.iter().any(|g| intersects(g, pattern))
    }

    /// Whether `topic` may be delivered.
    pub fn allows(&self, topic: &str) -> bool {
        self.topics.iter().any(|g| matches(g, topic))
    }
}

/// Resolved tokens.
#[derive(Debug)]
pub struct Auth {
    anonymous_agents: bool,
    anonymous_clients: Option<Grant>,
    agents: Vec<Token>,
    clients: Vec<Token>,
}

/// SHA-256 of a token.
pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Auth {
    /// Resolves every token source (reads files and environment variables).
    pub fn from_config(config: &AuthConfig) -> Result<Self, AuthConfigError> {
        for p in &config.anonymous_topics {
            validate_pattern(p).map_err(|e| AuthConfigError {
                key: "auth.anonymous_topics".into(),
                reason: e.to_string(),
            })?;
        }
        Ok(Self {
            anonymous_agents: config.anonymous_agents,
            anonymous_clients: config.anonymous_clients.then(|| Grant {
                name: "anonymous".into(),
                topics: config.anonymous_topics.clone().into(),
            }),
            agents: resolve("auth.agent_tokens", &config.agent_tokens, |t| &t.hosts)?,
            clients: resolve("auth.client_tokens", &config.client_tokens, |t| &t.topics)?,
        })
    }

    fn find<'a>(tokens: &'a [Token], presented: &str) -> Result<&'a Token, Refusal> {
        let h = hash(presented);
        let t = tokens
            .iter()
            .find(|t| t.hash == h)
            .ok_or(Refusal::Unknown)?;
        if t.expires.is_some_and(|e| SystemTime::now() > e) {
            return Err(Refusal::Expired(t.name.to_string()));
        }
        Ok(t)
    }

    /// Checks an agent's token.
    pub fn agent(&self, presented: Option<&str>) -> Result<AgentGrant, Refusal> {
        match presented {
            None if self.anonymous_agents => Ok(AgentGrant {
                name: "anonymous".into(),
                hosts: Arc::from(Vec::new()),
            }),
            None => Err(Refusal::Missing),
            Some(p) => Self::find(&self.agents, p).map(|t| AgentGrant {
                name: t.name.clone(),
                hosts: t.patterns.clone(),
            }),
        }
    }

    /// Checks a client's token. `Ok(None)`: no token and anonymous access is
    /// off, so the client must authenticate with a first message.
    pub fn client(&self, presented: Option<&str>) -> Result<Option<Grant>, Refusal> {
        match presented {
            None => Ok(self.anonymous_clients.clone()),
            Some(p) => Self::find(&self.clients, p).map(|t| {
                Some(Grant {
                    name: t.name.clone(),
                    topics: t.patterns.clone(),
                })
            }),
        }
    }
}

fn resolve(
    key: &str,
    tokens: &[TokenConfig],
    patterns: impl Fn(&TokenConfig) -> &Vec<String>,
) -> Result<Vec<Token>, AuthConfigError> {
    let mut out = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        let err = |reason: String| AuthConfigError {
            key: format!("{key}[{i}] ({:?})", t.name),
            reason,
        };
        if t.name.is_empty() {
            return Err(err("`name` is required".into()));
        }
        let sources = [
            t.sha256.is_some(),
            t.token_env.is_some(),
            t.token_file.is_some(),
            t.token.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            return Err(err(
                "give exactly one of sha256, token_env, token_file, token".into(),
            ));
        }
        let hash = if let Some(hex_hash) = &t.sha256 {
            let bytes =
                hex::decode(hex_hash).map_err(|e| err(format!("sha256 is not hex: {e}")))?;
            <[u8; 32]>::try_from(bytes.as_slice())
                .map_err(|_| err("sha256 must be 64 hex digits".into()))?
        } else {
            let token = if let Some(var) = &t.token_env {
                std::env::var(var)
                    .map_err(|_| err(format!("environment variable {var} is not set")))?
            } else if let Some(path) = &t.token_file {
                let bytes = hostpulse_common::config::read_bounded(path, 64 << 10)
                    .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
                String::from_utf8_lossy(&bytes).trim().to_string()
            } else {
                t.token.clone().unwrap_or_default()
            };
            if token.len() < 16 {
                return Err(err("a token must be at least 16 characters".into()));
            }
            hash(&token)
        };
        let pats = patterns(t);
        for p in pats {
            validate_pattern(p).map_err(|e| err(e.to_string()))?;
        }
        let expires = match &t.expires {
            None => None,
            Some(s) => {
                Some(humantime::parse_rfc3339(s).map_err(|e| err(format!("expires {s:?}: {e}")))?)
            }
        };
        out.push(Token {
            name: t.name.as_str().into(),
            hash,
            expires,
            patterns: pats
                .iter()
                .map(|p| {
                    if key.contains("agent") {
                        host_segment(p)
                    } else {
                        p.clone()
                    }
                })
                .collect::<Vec<_>>()
                .into(),
        });
    }
    Ok(out)
}

/// The bearer token of an `Authorization` header value.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AuthConfig {
        AuthConfig {
            anonymous_agents: false,
            anonymous_clients: false,
            agent_tokens: vec![TokenConfig {
                name: "web".into(),
                token: Some("agent-secret-0123456789".into()),
                hosts: vec!["Web-01".into()],
                ..Default::default()
            }],
            client_tokens: vec![
                TokenConfig {
                    name: "cpu-only".into(),
                    sha256: Some(hex::encode(hash("client-secret-0123456789"))),
                    topics: vec!["host.*.cpu".into()],
                    ..Default::default()
                },
                TokenConfig {
                    name: "old".into(),
                    token: Some("expired-secret-0123456789".into()),
                    topics: vec![">".into()],
                    expires: Some("2020-01-01T00:00:00Z".into()),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn tokens_grant_hosts_and_topics() {
        let auth = Auth::from_config(&config()).unwrap();
        let a = auth.agent(Some("agent-secret-0123456789")).unwrap();
        assert!(a.may_publish("web-01") && !a.may_publish("db-01"));
        assert_eq!(auth.agent(None).unwrap_err(), Refusal::Missing);
        assert_eq!(auth.agent(Some("nope")).unwrap_err(), Refusal::Unknown);
        let g = auth
            .client(Some("client-secret-0123456789"))
            .unwrap()
            .unwrap();
        assert!(g.allows("host.a.cpu") && !g.allows("host.a.memory"));
        assert!(g.overlaps(">") && g.overlaps("host.a.*") && !g.overlaps("hosts"));
        assert!(auth.client(None).unwrap().is_none());
        assert_eq!(
            auth.client(Some("expired-secret-0123456789")).unwrap_err(),
            Refusal::Expired("old".into())
        );
    }

    #[test]
    fn bad_token_entries_are_refused_with_their_key() {
        let mut c = config();
        c.client_tokens[0].token = Some("x".into());
        let e = Auth::from_config(&c).unwrap_err();
        assert!(
            e.to_string().contains("auth.client_tokens[0]")
                && e.to_string().contains("exactly one"),
            "{e}"
        );
        let mut c = config();
        c.agent_tokens[0].token = Some("short".into());
        assert!(
            Auth::from_config(&c)
                .unwrap_err()
                .to_string()
                .contains("at least 16")
        );
        let mut c = config();
        c.agent_tokens[0].token = None;
        c.agent_tokens[0].token_env = Some("HOSTPULSE_TEST_UNSET_VARIABLE".into());
        assert!(
            Auth::from_config(&c)
                .unwrap_err()
                .to_string()
                .contains("is not set")
        );
    }

    #[test]
    fn bearer_values_are_parsed() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
    }
}
