//! HTTP/2: the server (server.rs, on the h2 crate), the client (client.rs,
//! on hyper), TLS setup (tls.rs), limits (limits.rs) and HTTP dates
//! (date.rs). This layer deals only in plain Rust data — requests,
//! responses, `Exchange`s — and never sees a Lisp value; builtins/http.rs
//! is the binding between the two.

use std::cell::RefCell;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::http::request::Parts;
use hyper::{HeaderMap, Method, StatusCode};

pub mod client;
mod connection;
pub mod date;
pub mod limits;
pub mod server;
pub mod tls;

pub use limits::Limits;

/// A request as the server received it.
pub struct IncomingRequest {
    /// Boxed: the request is moved several times on its way to the
    /// isolate (queue, channel, host value), each a copy of ~250 bytes
    /// unboxed.
    pub parts: Box<Parts>,
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
        // Room for the content-length and date `send` adds: a map that
        // grows reallocates on a served request's path.
        let mut headers = HeaderMap::with_capacity(3);
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

/// Answers on their way back to one connection: isolates (or body
/// readers) add them, the connection's task takes them all at once.
#[derive(Default)]
pub struct Replies(Mutex<Pending>);

#[derive(Default)]
struct Pending {
    answers: Vec<(u64, ResponseData)>,
    /// The connection's task, while it waits for answers.
    waker: Option<Waker>,
    /// The connection is gone: answers are dropped.
    closed: bool,
}

impl Replies {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves every answer that has arrived into `into` (which must be
    /// empty), or registers the task to be woken by the next one. The two
    /// vectors swap, so each keeps its room and no batch of answers
    /// allocates once the connection has seen a batch that size (at most
    /// its handler requests in flight).
    pub fn poll_take(&self, cx: &mut Context<'_>, into: &mut Vec<(u64, ResponseData)>) -> Poll<()> {
        debug_assert!(into.is_empty());
        let mut pending = self.lock();
        if pending.answers.is_empty() {
            if !pending
                .waker
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                pending.waker = Some(cx.waker().clone());
            }
            Poll::Pending
        } else {
            std::mem::swap(&mut pending.answers, into);
            Poll::Ready(())
        }
    }

    /// The connection has ended: later answers go nowhere.
    pub fn close(&self) {
        let mut pending = self.lock();
        pending.closed = true;
        pending.answers.clear();
        pending.waker = None;
    }

    fn add(&self, token: u64, response: ResponseData) {
        let waker = {
            let mut pending = self.lock();
            if pending.closed {
                return;
            }
            pending.answers.push((token, response));
            pending.waker.take()
        };
        if let Some(waker) = waker {
            wake_soon(waker);
        }
    }
}

thread_local! {
    /// Wakes put off while an isolate runs handlers (see `defer_wakes`).
    static DEFERRED: RefCell<Option<Vec<Waker>>> = const { RefCell::new(None) };
}

fn wake_soon(waker: Waker) {
    let waker = DEFERRED.with(|d| match d.borrow_mut().as_mut() {
        Some(later) => {
            later.push(waker);
            None
        }
        None => Some(waker),
    });
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// From now until `take_deferred_wakes`, answers sent on this thread
/// wake their connections later. An isolate runs handlers outside its
/// runtime; waking a connection task there is a wake from "another
/// thread" (a system call to unpark the runtime), where the same wake from
/// inside the runtime only queues the task.
pub fn defer_wakes() {
    DEFERRED.with(|d| {
        d.borrow_mut().get_or_insert_with(Vec::new);
    });
}

/// Ends deferring (see `defer_wakes`) and returns the wakes put off, for
/// the caller to make from inside the runtime.
pub fn take_deferred_wakes() -> Vec<Waker> {
    DEFERRED.with(|d| d.borrow_mut().take()).unwrap_or_default()
}

/// Sends one response back to the connection that is waiting for it. If
/// it is dropped unused, the client gets a 500.
pub struct Replier {
    token: u64,
    to: Arc<Replies>,
    sent: bool,
}

impl Replier {
    pub fn new(token: u64, to: Arc<Replies>) -> Replier {
        Replier {
            token,
            to,
            sent: false,
        }
    }

    pub fn send(mut self, response: ResponseData) {
        self.sent = true;
        self.to.add(self.token, response);
    }

    /// Whether the connection is gone (nobody would read the response).
    pub fn is_closed(&self) -> bool {
        self.to.lock().closed
    }
}

impl Drop for Replier {
    fn drop(&mut self) {
        if !self.sent {
            self.to.add(
                self.token,
                ResponseData::text(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error\n"),
            );
        }
    }
}

/// An error and its chain of causes on one line.
/// `text` quoted for an error message, cut to a readable length (a bad
/// header name or path may be 100 KB).
pub fn shown(text: &str) -> String {
    const KEEP: usize = 60;
    if text.chars().count() > KEEP {
        let cut: String = text.chars().take(KEEP - 3).collect();
        format!("{:?}...", cut)
    } else {
        format!("{:?}", text)
    }
}

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
