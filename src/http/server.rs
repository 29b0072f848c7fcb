//! The HTTP/2 server: binds, accepts (h2c with prior knowledge, or TLS
//! with ALPN h2) up to the connection limit and closes what is over it at
//! once, hands each connection to connection.rs, and stops gracefully.
//! Requests get the built-in demo response on tokio threads, or are queued
//! as `Exchange`s for the interpreter isolates that hold the Lisp handler.
//!
//! Every server of the process is in one registry, so the program can wait
//! for all to drain and workers can find the main isolate's servers by the
//! order they were started in.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::Waker;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use hyper::header::{HeaderName, HeaderValue};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use super::{tls, Exchange, Limits};
use crate::aio::{self, Completion, Payload};

/// The demo handler's body.
pub const DEMO_BODY: &str = "Hello from Valk HTTP/2 server!";

/// Run state of a server, as seen by its connections.
pub(super) const RUNNING: u8 = 0;
pub(super) const STOPPING: u8 = 1;
pub(super) const FORCED: u8 = 2;

/// Who answers requests.
enum Handling {
    Demo,
    /// Lisp handlers in one or more isolates, fed from this queue.
    Isolates {
        jobs: Sender<Exchange>,
        queue: Receiver<Exchange>,
    },
}

pub struct Server {
    /// Order among the main isolate's `http2/listen` calls (workers match
    /// their own calls to servers by it).
    pub ordinal: Option<usize>,
    pub host: String,
    pub tls: bool,
    handling: Handling,
    addr: OnceLock<SocketAddr>,
    /// Settles with the server once it listens, or fails.
    bound: Arc<Completion>,
    /// Settles once the server has stopped and every connection closed.
    drained: Arc<Completion>,
    pub(super) state: watch::Sender<u8>,
    /// The accept loop (until it ends) plus open connections.
    active: AtomicUsize,
}

impl Server {
    /// The bound port (0 before the server listens).
    pub fn port(&self) -> u16 {
        self.addr.get().map_or(0, |a| a.port())
    }

    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr.get().copied()
    }

    pub fn is_drained(&self) -> bool {
        self.drained.is_settled()
    }

    pub fn drained(&self) -> &Arc<Completion> {
        &self.drained
    }

    pub fn bound(&self) -> &Arc<Completion> {
        &self.bound
    }

    /// The queue that isolates serve this server's requests from, when
    /// it has a Lisp handler.
    pub fn handler_queue(&self) -> Option<Receiver<Exchange>> {
        match &self.handling {
            Handling::Isolates { queue, .. } => Some(queue.clone()),
            Handling::Demo => None,
        }
    }

    /// Where Lisp handler requests go (None: the demo handler answers).
    pub(super) fn jobs(&self) -> Option<&Sender<Exchange>> {
        match &self.handling {
            Handling::Isolates { jobs, .. } => Some(jobs),
            Handling::Demo => None,
        }
    }

    /// Starts a graceful stop: no new connections, GOAWAY on open ones, and
    /// after the grace period the rest are closed.
    pub fn stop(self: &Arc<Self>) {
        if self.state.send_replace(STOPPING) != RUNNING {
            // Already stopping: keep the later state.
            self.state.send_if_modified(|s| {
                if *s == STOPPING {
                    false
                } else {
                    *s = FORCED;
                    true
                }
            });
            return;
        }
        let server = self.clone();
        aio::runtime().spawn(async move {
            tokio::time::sleep(Limits::get().grace).await;
            server.state.send_replace(FORCED);
        });
    }

    fn release(&self) {
        if self.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.drained.settle(Ok(Payload::Unit));
        }
    }
}

// ---- the registry ---------------------------------------------------------

fn registry() -> MutexGuard<'static, Vec<Arc<Server>>> {
    static SERVERS: Mutex<Vec<Arc<Server>>> = Mutex::new(Vec::new());
    SERVERS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether some server has not yet drained (including one still binding).
pub fn any_running() -> bool {
    registry().iter().any(|s| !s.is_drained())
}

/// Whether some running server has a Lisp handler.
pub fn any_isolate_server() -> bool {
    registry()
        .iter()
        .any(|s| !s.is_drained() && matches!(s.handling, Handling::Isolates { .. }))
}

/// True when every server has drained; otherwise `waker` is woken when one
/// drains. Forgets drained servers.
pub fn all_drained(waker: &Waker) -> bool {
    let mut servers = registry();
    servers.retain(|s| s.drained.poll_result(waker).is_none());
    servers.is_empty()
}

/// The main isolate's server started by its `ordinal`-th `http2/listen`.
pub fn by_ordinal(ordinal: usize) -> Option<Arc<Server>> {
    registry()
        .iter()
        .find(|s| s.ordinal == Some(ordinal))
        .cloned()
}

/// Stops every server gracefully.
pub fn stop_all() {
    let servers: Vec<Arc<Server>> = registry().clone();
    for s in servers {
        s.stop();
    }
}

// ---- starting -------------------------------------------------------------

/// How a server secures its connections.
pub enum Transport {
    H2c,
    Tls { key: String, cert: String },
}

/// Starts a server; it binds on the runtime. `lisp_handler` makes it queue
/// requests for isolates instead of answering with the demo response.
pub fn start(
    host: String,
    port: u16,
    transport: Transport,
    lisp_handler: bool,
    ordinal: Option<usize>,
) -> Arc<Server> {
    let tls = matches!(transport, Transport::Tls { .. });
    let server = new_server(ordinal, host.clone(), tls, lisp_handler);
    registry().push(server.clone());
    let s = server.clone();
    aio::runtime().spawn(async move {
        match bind(&s, &host, port, transport).await {
            Ok((listener, acceptor)) => {
                s.bound.settle(Ok(Payload::Host(s.clone())));
                accept_loop(s, listener, acceptor).await;
            }
            Err(message) => {
                s.bound.settle(Err(message));
                s.release();
            }
        }
    });
    server
}

/// A server that listens nowhere and is in no registry: its connections
/// come from `serve_stream`. For fuzzing the request path and for tests.
#[doc(hidden)]
pub fn detached(lisp_handler: bool) -> Arc<Server> {
    new_server(None, String::new(), false, lisp_handler)
}

fn new_server(ordinal: Option<usize>, host: String, tls: bool, lisp_handler: bool) -> Arc<Server> {
    let handling = if lisp_handler {
        let (jobs, queue) = crossbeam_channel::bounded(Limits::get().queue);
        Handling::Isolates { jobs, queue }
    } else {
        Handling::Demo
    };
    Arc::new(Server {
        ordinal,
        host,
        tls,
        handling,
        addr: OnceLock::new(),
        bound: Completion::new(),
        drained: Completion::new(),
        state: watch::Sender::new(RUNNING),
        active: AtomicUsize::new(1),
    })
}

/// Serves one h2c connection over any byte stream, as an accepted socket
/// is served, until it closes. Needs a tokio runtime (any flavour).
#[doc(hidden)]
pub async fn serve_stream<I>(server: &Arc<Server>, io: I)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    super::connection::drive(server, io, std::time::Instant::now(), false).await;
}

async fn bind(
    server: &Arc<Server>,
    host: &str,
    port: u16,
    transport: Transport,
) -> Result<(TcpListener, Option<TlsAcceptor>), String> {
    let acceptor = match transport {
        Transport::H2c => None,
        Transport::Tls { key, cert } => {
            let config = tokio::task::spawn_blocking(move || tls::server_config(&key, &cert))
                .await
                .map_err(|e| format!("http2/listen: {}", e))??;
            Some(TlsAcceptor::from(config))
        }
    };
    let listener = TcpListener::bind((host, port))
        .await
        .map_err(|e| format!("http2/listen: cannot listen on {}:{}: {}", host, port, e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("http2/listen: {}", e))?;
    let _ = server.addr.set(addr);
    Ok((listener, acceptor))
}

async fn accept_loop(server: Arc<Server>, listener: TcpListener, acceptor: Option<TlsAcceptor>) {
    let limits = Limits::get();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut state = server.state.subscribe();
    loop {
        if *state.borrow_and_update() != RUNNING {
            break;
        }
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(_) => {
                    // Out of descriptors or a connection reset before
                    // accept: back off briefly rather than spin.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = state.changed() => continue,
        };
        // Past the limit a connection is closed at once: left in the
        // listen backlog it would hang, and once the backlog is full new
        // clients could not even connect.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refuse(stream, acceptor.is_some());
            continue;
        };
        server.active.fetch_add(1, Ordering::AcqRel);
        let s = server.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            super::connection::serve(&s, stream, acceptor).await;
            drop(slot);
            s.release();
        });
    }
    drop(listener);
    server.release();
}

/// What a cleartext connection over the limit gets before it is closed:
/// the server's (empty) SETTINGS, as every HTTP/2 server starts with, and
/// GOAWAY with last stream 0 (nothing was processed, so a client may retry
/// elsewhere or later) and REFUSED_STREAM.
const REFUSAL: &[u8] = &[
    0, 0, 0, 4, 0, 0, 0, 0, 0, // SETTINGS, empty
    0, 0, 32, 7, 0, 0, 0, 0, 0, // GOAWAY, 8 + 24 bytes
    0, 0, 0, 0, // last stream 0
    0, 0, 0, 7, // REFUSED_STREAM
    b'c', b'o', b'n', b'n', b'e', b'c', b't', b'i', b'o', b'n', b' ', b'l', b'i', b'm', b'i', b't',
    b' ', b'r', b'e', b'a', b'c', b'h', b'e', b'd',
];

/// Closes a connection over the limit without waiting for it: a
/// best-effort GOAWAY over h2c (one non-blocking write; TLS would need a
/// handshake first), then the socket is dropped.
fn refuse(stream: TcpStream, tls: bool) {
    if !tls {
        let _ = stream.try_write(REFUSAL);
    }
    drop(stream);
}

/// Headers HTTP/2 forbids (RFC 9113 §8.2.2).
fn connection_specific(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade"
    )
}

/// Checks a header a handler or a client request wants to send.
pub fn check_header(name: &str, value: &str) -> Result<(), String> {
    let parsed = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("invalid header name {:?}", name))?;
    HeaderValue::from_str(value).map_err(|_| format!("invalid value for header {}", name))?;
    if connection_specific(&parsed) {
        return Err(format!("header {} is not allowed in HTTP/2", name));
    }
    Ok(())
}
