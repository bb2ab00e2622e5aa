//! The WebSocket opening handshake (RFC 6455 §4.2) on an HTTP/1.1 request:
//! the checks a server must make, the subprotocol chosen, the `101
//! Switching Protocols` answer, and the upgraded connection handed over.
//!
//! The server takes the upgraded socket itself (rather than through axum's
//! `WebSocket`) because it writes data frames straight to it (see
//! [`crate::ws::socket`]); the accept key is tungstenite's.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;

/// A request to open a WebSocket, checked.
pub struct Handshake {
    key: HeaderValue,
    offered: Vec<HeaderValue>,
    on_upgrade: OnUpgrade,
}

/// Why an upgrade request was refused (answered with its status and reason).
#[derive(Debug)]
pub struct Refused(StatusCode, &'static str);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let mut response = (self.0, format!("{}\n", self.1)).into_response();
        if self.0 == StatusCode::UPGRADE_REQUIRED {
            // RFC 6455 §4.4: the version this server speaks.
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        response
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Handshake {
    type Rejection = Refused;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Refused> {
        let bad = |why| Err(Refused(StatusCode::BAD_REQUEST, why));
        if parts.method != Method::GET {
            return Err(Refused(
                StatusCode::METHOD_NOT_ALLOWED,
                "a WebSocket upgrade must be a GET request",
            ));
        }
        if !has_token(&parts.headers, header::CONNECTION, "upgrade") {
            return bad("`Connection` header did not include `upgrade`");
        }
        if !has_token(&parts.headers, header::UPGRADE, "websocket") {
            return bad("`Upgrade` header did not include `websocket`");
        }
        let Some(key) = parts.headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
            return bad("`Sec-WebSocket-Key` header missing");
        };
        match parts.headers.get(header::SEC_WEBSOCKET_VERSION) {
            None => return bad("`Sec-WebSocket-Version` header missing"),
            Some(v) if v.as_bytes() != b"13" => {
                return Err(Refused(
                    StatusCode::UPGRADE_REQUIRED,
                    "`Sec-WebSocket-Version` must be 13",
                ));
            }
            Some(_) => {}
        }
        let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
            return Err(Refused(
                StatusCode::UPGRADE_REQUIRED,
                "this connection cannot be upgraded",
            ));
        };
        let offered = parts
            .headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .filter_map(|p| HeaderValue::from_bytes(p.trim_ascii()).ok())
            .collect();
        Ok(Self {
            key,
            offered,
            on_upgrade,
        })
    }
}

impl Handshake {
    /// The first of `known` (in the server's order) that the client offered.
    pub fn choose<'a>(&self, known: &[&'a str]) -> Option<&'a str> {
        known
            .iter()
            .find(|k| self.offered.iter().any(|o| o.as_bytes() == k.as_bytes()))
            .copied()
    }

    /// The `101` answer (naming `protocol` if one was chosen), and the
    /// upgraded connection once hyper hands it over.
    pub fn accept(self, protocol: Option<&'static str>) -> (Response, OnUpgrade) {
        let mut response = Response::new(axum::body::Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        let accept = tungstenite::handshake::derive_accept_key(self.key.as_bytes());
        headers.insert(
            header::SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
        );
        if let Some(p) = protocol {
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
        }
        (response, self.on_upgrade)
    }
}

/// Whether header `name` lists `token` (comma-separated, any case).
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}
