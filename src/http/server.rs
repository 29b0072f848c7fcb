//! The HTTP/2 server: binds, accepts (h2c with prior knowledge, or TLS
//! with ALPN h2) up to the connection limit and closes what is over it at
//! once, hands each connection to connection.rs, and stops gracefully.
//! A server without a handler answers with the built-in demo response on
//! the shared runtime. A server with a Lisp handler hands each connection
//! to one of the isolates that serve it: the connection then runs on that
//! isolate's own thread (its current-thread runtime), and its requests go
//! to that isolate's queue, so no request crosses threads.
//!
//! Every server of the process is in one registry, so the program can wait
//! for all to drain and workers can find the main isolate's servers by the
//! order they were started in.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::Waker;
use std::time::Duration;

use hyper::header::{HeaderName, HeaderValue};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::mpsc::{self, Receiver, Sender};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
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
    /// Lisp handlers in the isolates attached here; the count rotates
    /// the choice among equally busy ones.
    Isolates(Mutex<Vec<Arc<Port>>>, AtomicUsize),
}

/// A thread that connections are handed to, and that runs them from then
/// on: an isolate serving a server with a Lisp handler (its connections'
/// requests go to the isolate's queue), or a lane of the demo handler.
pub struct Port {
    /// The thread's current-thread runtime (None for a detached server,
    /// whose connections come from `serve_stream`).
    runtime: Option<Handle>,
    /// Where handler requests go; None when the demo handler answers.
    jobs: Option<Sender<Exchange>>,
    /// Open connections on this thread.
    connections: AtomicUsize,
}

impl Port {
    fn open(&self) -> bool {
        self.runtime.is_some() && self.jobs.as_ref().is_none_or(|j| !j.is_closed())
    }
}

/// Of `ports`, the one with the fewest open connections; among equals,
/// each in turn (`turn` counts the choices).
fn least_busy(ports: &[Arc<Port>], turn: &AtomicUsize) -> Option<Arc<Port>> {
    let n = ports.len();
    let first = turn.fetch_add(1, Ordering::Relaxed);
    (0..n)
        .map(|i| &ports[(first + i) % n])
        .filter(|p| p.open())
        .min_by_key(|p| p.connections.load(Ordering::Relaxed))
        .cloned()
}

/// The demo handler's lanes: `aio::thread_count()` threads, each driving a
/// current-thread runtime of its own, started on first use. A connection
/// stays on its lane, so its wake-ups never cross threads.
fn demo_lane() -> Option<Arc<Port>> {
    static LANES: OnceLock<Vec<Arc<Port>>> = OnceLock::new();
    static TURN: AtomicUsize = AtomicUsize::new(0);
    let lanes = LANES.get_or_init(|| {
        (0..aio::thread_count())
            .filter_map(|i| {
                let runtime = aio::serving_runtime().ok()?;
                let handle = runtime.handle().clone();
                std::thread::Builder::new()
                    .name(format!("valk-lane-{}", i))
                    .spawn(move || runtime.block_on(std::future::pending::<()>()))
                    .ok()?;
                Some(Arc::new(Port {
                    runtime: Some(handle),
                    jobs: None,
                    connections: AtomicUsize::new(0),
                }))
            })
            .collect()
    });
    least_busy(lanes, &TURN)
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

    /// Whether a Lisp handler answers (else the demo handler does).
    pub fn has_handler(&self) -> bool {
        matches!(self.handling, Handling::Isolates(..))
    }

    /// Makes an isolate serve this server's Lisp handler: new connections
    /// may be handed to `runtime` (the isolate's), and their requests
    /// arrive on the returned queue. None for a demo server.
    pub fn attach(&self, runtime: Option<Handle>) -> Option<Receiver<Exchange>> {
        let Handling::Isolates(ports, _) = &self.handling else {
            return None;
        };
        let (jobs, queue) = mpsc::channel(Limits::get().queue);
        lock(ports).push(Arc::new(Port {
            runtime,
            jobs: Some(jobs),
            connections: AtomicUsize::new(0),
        }));
        Some(queue)
    }

    /// Where the next connection goes: the attached isolate with the
    /// fewest open connections, or a demo lane.
    fn next_port(&self) -> Option<Arc<Port>> {
        match &self.handling {
            Handling::Isolates(ports, turn) => least_busy(&lock(ports), turn),
            Handling::Demo => demo_lane(),
        }
    }

    /// The first attached queue (a detached server's).
    fn first_port(&self) -> Option<Arc<Port>> {
        match &self.handling {
            Handling::Isolates(ports, _) => lock(ports).first().cloned(),
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn registry() -> MutexGuard<'static, Vec<Arc<Server>>> {
    static SERVERS: Mutex<Vec<Arc<Server>>> = Mutex::new(Vec::new());
    lock(&SERVERS)
}

/// Whether some server has not yet drained (including one still binding).
pub fn any_running() -> bool {
    registry().iter().any(|s| !s.is_drained())
}

/// Whether some running server has a Lisp handler.
pub fn any_isolate_server() -> bool {
    registry()
        .iter()
        .any(|s| !s.is_drained() && s.has_handler())
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

/// Starts a server; it binds on the runtime. With `isolate` (the runtime
/// of the isolate that holds the Lisp handler) the server hands its
/// connections to the isolates attached to it instead of answering with
/// the demo response; that isolate is attached before the server listens,
/// and its requests arrive on the returned queue.
pub fn start(
    host: String,
    port: u16,
    transport: Transport,
    isolate: Option<Handle>,
    ordinal: Option<usize>,
) -> (Arc<Server>, Option<Receiver<Exchange>>) {
    let tls = matches!(transport, Transport::Tls { .. });
    let server = new_server(ordinal, host.clone(), tls, isolate.is_some());
    let queue = isolate.and_then(|rt| server.attach(Some(rt)));
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
    (server, queue)
}

/// A server that listens nowhere and is in no registry: its connections
/// come from `serve_stream`, and with `lisp_handler` their requests arrive
/// on the returned queue. For fuzzing the request path and for tests.
#[doc(hidden)]
pub fn detached(lisp_handler: bool) -> (Arc<Server>, Option<Receiver<Exchange>>) {
    let server = new_server(None, String::new(), false, lisp_handler);
    let queue = server.attach(None);
    (server, queue)
}

fn new_server(ordinal: Option<usize>, host: String, tls: bool, lisp_handler: bool) -> Arc<Server> {
    let handling = if lisp_handler {
        Handling::Isolates(Mutex::new(Vec::new()), AtomicUsize::new(0))
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
    let jobs = server.first_port().and_then(|p| p.jobs.clone());
    super::connection::drive(server, jobs, io, std::time::Instant::now(), false).await;
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
        // The connection runs on the thread it is handed to (an isolate
        // of its Lisp handler, or a demo lane), and its socket moves to
        // that thread's reactor.
        let Some(port) = server.next_port() else {
            refuse(stream, acceptor.is_some());
            continue;
        };
        let (Some(runtime), Ok(stream)) = (port.runtime.clone(), stream.into_std()) else {
            continue;
        };
        let open = Open::new(&server, slot, port);
        let acceptor = acceptor.clone();
        runtime.spawn(async move {
            let Ok(stream) = TcpStream::from_std(stream) else {
                return;
            };
            let jobs = open.port.jobs.clone();
            super::connection::serve(&open.server, jobs, stream, acceptor).await;
        });
    }
    drop(listener);
    server.release();
}

/// An accepted connection, counted until it closes — or until its task is
/// dropped unrun, when the isolate it was handed to has ended.
struct Open {
    server: Arc<Server>,
    _slot: OwnedSemaphorePermit,
    port: Arc<Port>,
}

impl Open {
    fn new(server: &Arc<Server>, slot: OwnedSemaphorePermit, port: Arc<Port>) -> Open {
        server.active.fetch_add(1, Ordering::AcqRel);
        port.connections.fetch_add(1, Ordering::Relaxed);
        Open {
            server: server.clone(),
            _slot: slot,
            port,
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.port.connections.fetch_sub(1, Ordering::Relaxed);
        self.server.release();
    }
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
        .map_err(|_| format!("invalid header name {}", super::shown(name)))?;
    HeaderValue::from_str(value)
        .map_err(|_| format!("invalid value for header {}", super::shown(name)))?;
    if connection_specific(&parsed) {
        return Err(format!("header {} is not allowed in HTTP/2", name));
    }
    Ok(())
}
