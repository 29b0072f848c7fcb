//! HTTP/2: the server (server.rs, on the h2 crate), the client (client.rs,
//! on hyper), TLS setup (tls.rs), limits (limits.rs) and HTTP dates
//! (date.rs). This layer deals only in plain Rust data — requests,
//! responses, `Exchange`s — and never sees a Lisp value; builtins/http.rs
//! is the binding between the two.

use bytes::Bytes;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::http::request::Parts;
use hyper::{HeaderMap, Method, StatusCode};
use tokio::sync::mpsc::UnboundedSender;

pub mod client;
mod connection;
pub mod date;
pub mod limits;
pub mod server;
pub mod tls;

pub use limits::Limits;

/// A request as the server received it.
pub struct IncomingRequest {
    pub parts: Parts,
    pub body: Bytes,
    /// Whether it came over TLS (its scheme when the URI has none).
    pub tls: bool,
}

impl IncomingRequest {
    /// Path and query, e.g. `/items?id=3`.
    pub fn path(&self) -> &str {
        self.parts.uri.path_and_query().map_or("/", |p| p.as_str())
    }

    /// The `:authority` (or the `host` header).
    pub fn authority(&self) -> &str {
        match self.parts.uri.authority() {
            Some(a) => a.as_str(),
            None => self
                .parts
                .headers
                .get(hyper::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or(""),
        }
    }

    pub fn scheme(&self) -> &str {
        self.parts
            .uri
            .scheme_str()
            .unwrap_or(if self.tls { "https" } else { "http" })
    }
}

/// A request a script builds for the client.
#[derive(Clone, Debug)]
pub struct OutgoingRequest {
    pub method: Method,
    pub scheme: String,
    /// Empty means the connection's `host:port`.
    pub authority: String,
    /// Path and query.
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl OutgoingRequest {
    /// The same request, to be sent on (a proxy forwarding what it got).
    pub fn from_incoming(r: &IncomingRequest) -> OutgoingRequest {
        OutgoingRequest {
            method: r.parts.method.clone(),
            scheme: r.scheme().to_string(),
            authority: r.authority().to_string(),
            path: r.path().to_string(),
            headers: r.parts.headers.clone(),
            body: r.body.clone(),
        }
    }
}

/// A response: made by a handler, or received by the client.
#[derive(Clone, Debug)]
pub struct ResponseData {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl ResponseData {
    /// A `text/plain; charset=utf-8` response.
    pub fn text(status: StatusCode, body: impl Into<Bytes>) -> ResponseData {
        let mut headers = HeaderMap::with_capacity(1);
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        ResponseData {
            status,
            headers,
            body: body.into(),
        }
    }
}

/// A request handed to an isolate, with the way back for its response.
pub struct Exchange {
    pub request: IncomingRequest,
    pub reply: Replier,
}

/// Sends one response back to the connection that is waiting for it. If
/// it is dropped unused, the client gets a 500.
pub struct Replier {
    token: u64,
    to: UnboundedSender<(u64, ResponseData)>,
    sent: bool,
}

impl Replier {
    pub fn new(token: u64, to: UnboundedSender<(u64, ResponseData)>) -> Replier {
        Replier {
            token,
            to,
            sent: false,
        }
    }

    pub fn send(mut self, response: ResponseData) {
        self.sent = true;
        let _ = self.to.send((self.token, response));
    }

    /// Whether the connection is gone (nobody would read the response).
    pub fn is_closed(&self) -> bool {
        self.to.is_closed()
    }
}

impl Drop for Replier {
    fn drop(&mut self) {
        if !self.sent {
            let _ = self.to.send((
                self.token,
                ResponseData::text(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error\n"),
            ));
        }
    }
}

/// An error and its chain of causes on one line.
pub fn describe_error(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let s = cause.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = cause.source();
    }
    text
}
