//! HTTP/2 on hyper: the server (server.rs), the client (client.rs), TLS
//! setup (tls.rs) and limits (limits.rs). This layer deals only in plain
//! Rust data — `RequestData`, `ResponseData`, `Exchange` — and never sees a
//! Lisp value; builtins/http.rs is the binding between the two.

use bytes::Bytes;
use tokio::sync::oneshot;

pub mod client;
pub mod limits;
pub mod server;
pub mod tls;

pub use limits::Limits;

/// A request: received by the server, or built by a script for the client.
#[derive(Clone, Debug, Default)]
pub struct RequestData {
    pub method: String,
    pub scheme: String,
    pub authority: String,
    /// Path and query, e.g. `/items?id=3`.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// A response: made by a handler, or received by the client.
#[derive(Clone, Debug)]
pub struct ResponseData {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl ResponseData {
    /// A `text/plain; charset=utf-8` response.
    pub fn text(status: u16, body: impl Into<Bytes>) -> ResponseData {
        ResponseData {
            status,
            headers: vec![(
                "content-type".to_string(),
                "text/plain; charset=utf-8".to_string(),
            )],
            body: body.into(),
        }
    }
}

/// A request handed to an isolate, with the way back for its response.
pub struct Exchange {
    pub request: RequestData,
    pub reply: oneshot::Sender<ResponseData>,
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
