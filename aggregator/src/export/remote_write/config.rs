//! `[export.remote_write]`: the endpoint, its credentials, the queue, batch
//! size, timeout and backoff, with defaults and validation; and the
//! settings resolved from it at start (credential files read, the URL
//! taken apart).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::{HeaderValue, Uri};
use base64::Engine as _;
use hostpulse_common::config::first_zero;
use serde::{Deserialize, Serialize};

/// Labels the host series carry themselves; an external label may not
/// take one of these names.
const OWN_LABELS: [&str; 6] = ["__name__", "host", "interface", "device", "mount", "sensor"];

/// `[export.remote_write]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteWriteConfig {
    /// The receiver's endpoint, `http://` or `https://`, e.g.
    /// `http://prometheus:9090/api/v1/write`. Unset: no export.
    pub url: Option<String>,
    /// Basic auth user name (with `password` or `password_file`).
    pub username: Option<String>,
    /// Basic auth password.
    pub password: Option<String>,
    /// A file holding the basic auth password (trailing newline ignored),
    /// to keep it out of the config.
    pub password_file: Option<PathBuf>,
    /// Bearer token, sent as `Authorization: Bearer <token>`.
    pub bearer_token: Option<String>,
    /// A file holding the bearer token (trailing newline ignored).
    pub bearer_token_file: Option<PathBuf>,
    /// PEM CA certificates to verify an `https://` endpoint against,
    /// instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Export only the hosts whose agents are attached to this aggregator,
    /// not those a cluster peer shares (so each host is written once by
    /// the node that has it).
    pub local_only: bool,
    /// Host updates waiting to be sent; when full (the endpoint slower than
    /// the fleet, or down for long), new updates are dropped and counted in
    /// `hostpulse_remote_write_updates_dropped_total`, never waited for.
    pub queue: usize,
    /// Most samples in one request.
    pub batch_size: usize,
    /// How long a batch waits to fill before it is sent anyway, in ms.
    pub batch_wait_ms: u64,
    /// How long one request may take (connect, send, answer), in ms.
    pub timeout_ms: u64,
    /// Wait before the first retry of a failed request, in ms; it doubles
    /// per failure up to `max_backoff_ms`.
    pub min_backoff_ms: u64,
    /// Longest wait between retries, in ms.
    pub max_backoff_ms: u64,
    /// Labels added to every series (e.g. `region = "eu-1"`).
    pub external_labels: BTreeMap<String, String>,
}

impl Default for RemoteWriteConfig {
    fn default() -> Self {
        Self {
            url: None,
            username: None,
            password: None,
            password_file: None,
            bearer_token: None,
            bearer_token_file: None,
            ca_file: None,
            local_only: false,
            queue: 10_000,
            batch_size: 2_000,
            batch_wait_ms: 1_000,
            timeout_ms: 10_000,
            min_backoff_ms: 100,
            max_backoff_ms: 10_000,
            external_labels: BTreeMap::new(),
        }
    }
}

/// What the exporter runs with: the config checked and resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// The `Authorization` header, if any.
    pub authorization: Option<HeaderValue>,
    /// PEM CA certificates for `https://` (`None`: the system's roots).
    pub ca_pem: Option<Vec<u8>>,
    /// See [`RemoteWriteConfig::local_only`].
    pub local_only: bool,
    /// See [`RemoteWriteConfig::queue`].
    pub queue: usize,
    /// See [`RemoteWriteConfig::batch_size`].
    pub batch_size: usize,
    /// See [`RemoteWriteConfig::batch_wait_ms`].
    pub batch_wait: Duration,
    /// See [`RemoteWriteConfig::timeout_ms`].
    pub timeout: Duration,
    /// See [`RemoteWriteConfig::min_backoff_ms`].
    pub min_backoff: Duration,
    /// See [`RemoteWriteConfig::max_backoff_ms`].
    pub max_backoff: Duration,
    /// (name, value), sorted by name.
    pub external_labels: Vec<(String, String)>,
}

/// The endpoint's URL taken apart.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `https://`.
    pub tls: bool,
    /// Host name or address (without brackets for IPv6).
    pub host: String,
    /// Port (the scheme's default when not given).
    pub port: u16,
    /// `host[:port]` as the `Host` header.
    pub authority: String,
    /// Path and query.
    pub path: String,
    /// The URL without credentials, for logs.
    pub shown: String,
}

impl RemoteWriteConfig {
    /// Whether export is on.
    pub fn enabled(&self) -> bool {
        self.url.is_some()
    }

    /// The first value that parses but cannot work, as (key, reason).
    pub fn problem(&self) -> Option<(&'static str, String)> {
        self.settings().err()
    }

    /// Checks and resolves: reads credential and CA files, parses the URL.
    /// Only meaningful when [`enabled`](Self::enabled).
    pub fn settings(&self) -> Result<Settings, (&'static str, String)> {
        let Some(url) = &self.url else {
            return Err(("export.remote_write.url", "is not set".into()));
        };
        if let Some(p) = first_zero(&[
            ("export.remote_write.queue", self.queue as u64),
            ("export.remote_write.batch_size", self.batch_size as u64),
            ("export.remote_write.batch_wait_ms", self.batch_wait_ms),
            ("export.remote_write.timeout_ms", self.timeout_ms),
            ("export.remote_write.min_backoff_ms", self.min_backoff_ms),
            ("export.remote_write.max_backoff_ms", self.max_backoff_ms),
        ]) {
            return Err(p);
        }
        if self.max_backoff_ms < self.min_backoff_ms {
            return Err((
                "export.remote_write.max_backoff_ms",
                "must be at least min_backoff_ms".into(),
            ));
        }
        let endpoint = endpoint(url).map_err(|r| ("export.remote_write.url", r))?;
        let secret =
            |inline: &Option<String>, file: &Option<PathBuf>, key, file_key| match (inline, file) {
                (Some(_), Some(_)) => {
                    Err((file_key, format!("give {key} or {file_key}, not both")))
                }
                (Some(s), None) => Ok(Some(s.clone())),
                (None, Some(path)) => read_secret(path).map(Some).map_err(|r| (file_key, r)),
                (None, None) => Ok(None),
            };
        let password = secret(
            &self.password,
            &self.password_file,
            "export.remote_write.password",
            "export.remote_write.password_file",
        )?;
        let bearer = secret(
            &self.bearer_token,
            &self.bearer_token_file,
            "export.remote_write.bearer_token",
            "export.remote_write.bearer_token_file",
        )?;
        let authorization = match (&self.username, password, bearer) {
            (Some(_), _, Some(_)) => {
                return Err((
                    "export.remote_write.bearer_token",
                    "basic auth (username) and a bearer token exclude each other".into(),
                ));
            }
            (Some(user), Some(pass), None) => {
                let encoded =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
                Some(format!("Basic {encoded}"))
            }
            (Some(_), None, None) => {
                return Err((
                    "export.remote_write.password",
                    "username needs password or password_file".into(),
                ));
            }
            (None, Some(_), _) => {
                return Err((
                    "export.remote_write.username",
                    "a password needs a username".into(),
                ));
            }
            (None, None, Some(token)) => Some(format!("Bearer {token}")),
            (None, None, None) => None,
        };
        let authorization = match authorization {
            Some(a) => Some(HeaderValue::from_str(&a).map_err(|_| {
                (
                    "export.remote_write.username",
                    "credentials must be printable ASCII".to_string(),
                )
            })?),
            None => None,
        };
        let ca_pem = match &self.ca_file {
            Some(path) => Some(
                hostpulse_common::config::read_bounded(path, 1 << 20).map_err(|e| {
                    (
                        "export.remote_write.ca_file",
                        format!("{}: {e}", path.display()),
                    )
                })?,
            ),
            None => None,
        };
        for (name, value) in &self.external_labels {
            if let Some(reason) = label_problem(name, value) {
                return Err((
                    "export.remote_write.external_labels",
                    format!("`{name}`: {reason}"),
                ));
            }
        }
        Ok(Settings {
            endpoint,
            authorization,
            ca_pem,
            local_only: self.local_only,
            queue: self.queue,
            batch_size: self.batch_size,
            batch_wait: Duration::from_millis(self.batch_wait_ms),
            timeout: Duration::from_millis(self.timeout_ms),
            min_backoff: Duration::from_millis(self.min_backoff_ms),
            max_backoff: Duration::from_millis(self.max_backoff_ms),
            external_labels: self
                .external_labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }

    /// A copy fit to print: inline secrets replaced by `<redacted>`.
    pub fn redacted(&self) -> Self {
        let mut c = self.clone();
        for s in [&mut c.password, &mut c.bearer_token] {
            if s.is_some() {
                *s = Some("<redacted>".into());
            }
        }
        c
    }
}

/// Why a label cannot be added, if it cannot: Prometheus' name syntax, not
/// reserved (`__`), not one the series carry, a value not empty.
fn label_problem(name: &str, value: &str) -> Option<&'static str> {
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Some("a label name is letters, digits and _, not starting with a digit");
    }
    if name.starts_with("__") {
        return Some("names starting with __ are reserved");
    }
    if OWN_LABELS.contains(&name) {
        return Some("the host series carry this label themselves");
    }
    if value.is_empty() {
        return Some("an empty value would drop the label");
    }
    None
}

/// Reads a credential file: bounded, trailing newline removed, not empty.
fn read_secret(path: &Path) -> Result<String, String> {
    let bytes = hostpulse_common::config::read_bounded(path, 64 << 10)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let text = String::from_utf8(bytes).map_err(|_| format!("{}: not UTF-8", path.display()))?;
    let text = text.trim_end_matches(['\r', '\n']);
    if text.is_empty() {
        return Err(format!("{}: empty", path.display()));
    }
    Ok(text.to_string())
}

/// Takes an `http://` or `https://` URL apart.
fn endpoint(url: &str) -> Result<Endpoint, String> {
    let uri: Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err("must start with http:// or https://".into()),
    };
    let authority = uri.authority().ok_or("has no host")?;
    if authority.as_str().contains('@') {
        return Err("credentials go in username/password or bearer_token, not the URL".into());
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() {
        return Err("has no host".into());
    }
    let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let path = uri
        .path_and_query()
        .map_or("/".to_string(), |p| p.as_str().to_string());
    Ok(Endpoint {
        tls,
        host: host.to_string(),
        port,
        authority: authority.as_str().to_string(),
        path,
        shown: url.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(url: &str) -> RemoteWriteConfig {
        RemoteWriteConfig {
            url: Some(url.into()),
            ..RemoteWriteConfig::default()
        }
    }

    #[test]
    fn the_url_is_taken_apart() {
        let s = with("http://127.0.0.1:9090/api/v1/write")
            .settings()
            .unwrap();
        let e = s.endpoint;
        assert!(!e.tls);
        assert_eq!((e.host.as_str(), e.port), ("127.0.0.1", 9090));
        assert_eq!(
            (e.authority.as_str(), e.path.as_str()),
            ("127.0.0.1:9090", "/api/v1/write")
        );
        let e = with("https://[::1]/push?x=1").settings().unwrap().endpoint;
        assert!(e.tls);
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("::1", 443, "/push?x=1")
        );
        for bad in ["ftp://x/", "x:9090", "http://u:p@h/write", "not a url"] {
            let (key, _) = with(bad).settings().unwrap_err();
            assert_eq!(key, "export.remote_write.url", "{bad}");
        }
    }

    #[test]
    fn credentials_are_basic_or_bearer_not_both() {
        let mut c = with("http://h/write");
        c.username = Some("u".into());
        c.password = Some("p".into());
        let s = c.settings().unwrap();
        assert_eq!(s.authorization.unwrap(), "Basic dTpw");
        c.bearer_token = Some("t".into());
        assert_eq!(
            c.settings().unwrap_err().0,
            "export.remote_write.bearer_token"
        );
        c.username = None;
        c.password = None;
        assert_eq!(c.settings().unwrap().authorization.unwrap(), "Bearer t");
        c.bearer_token_file = Some("/nonexistent".into());
        assert_eq!(
            c.settings().unwrap_err().0,
            "export.remote_write.bearer_token_file"
        );
        let mut c = with("http://h/write");
        c.username = Some("u".into());
        assert_eq!(c.settings().unwrap_err().0, "export.remote_write.password");
        let shown = toml::to_string(
            &RemoteWriteConfig {
                password: Some("secret".into()),
                ..c
            }
            .redacted(),
        )
        .unwrap();
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn values_and_labels_are_checked() {
        let mut c = with("http://h/write");
        c.max_backoff_ms = 10;
        assert_eq!(
            c.settings().unwrap_err().0,
            "export.remote_write.max_backoff_ms"
        );
        let mut c = with("http://h/write");
        c.batch_size = 0;
        assert_eq!(
            c.settings().unwrap_err().0,
            "export.remote_write.batch_size"
        );
        for bad in ["host", "__x", "1a", "a-b"] {
            let mut c = with("http://h/write");
            c.external_labels.insert(bad.into(), "v".into());
            assert_eq!(
                c.settings().unwrap_err().0,
                "export.remote_write.external_labels",
                "{bad}"
            );
        }
        let mut c = with("http://h/write");
        c.external_labels.insert("node".into(), "agg-1".into());
        assert_eq!(
            c.settings().unwrap().external_labels,
            [("node".into(), "agg-1".into())]
        );
    }
}
