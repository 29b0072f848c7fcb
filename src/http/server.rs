//! The HTTP/2 server: binds, accepts (h2c with prior knowledge, or TLS
//! with ALPN h2), serves each connection with hyper, applies the limits and
//! stops gracefully (GOAWAY, in-flight requests finish, then a grace
//! deadline). Requests go to the built-in demo response on tokio threads,
//! or are queued as `Exchange`s for the interpreter isolates that hold the
//! Lisp handler.
//!
//! Every server of the process is in one registry, so the program can wait
//! for all to drain and workers can find the main isolate's servers by the
//! order they were started in.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use super::{tls, Exchange, Limits, RequestData, ResponseData};
use crate::aio::{self, Completion, Payload};

/// The demo handler's body.
pub const DEMO_BODY: &str = "Hello from Valk HTTP/2 server!";

/// Run state of a server, as seen by its connections.
const RUNNING: u8 = 0;
const STOPPING: u8 = 1;
const FORCED: u8 = 2;

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
    state: watch::Sender<u8>,
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
    let handling = if lisp_handler {
        let (jobs, queue) = crossbeam_channel::bounded(Limits::get().queue);
        Handling::Isolates { jobs, queue }
    } else {
        Handling::Demo
    };
    let server = Arc::new(Server {
        ordinal,
        host: host.clone(),
        tls: matches!(transport, Transport::Tls { .. }),
        handling,
        addr: OnceLock::new(),
        bound: Completion::new(),
        drained: Completion::new(),
        state: watch::Sender::new(RUNNING),
        active: AtomicUsize::new(1),
    });
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
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(s) => s,
                Err(_) => break,
            },
            _ = state.changed() => continue,
        };
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
        server.active.fetch_add(1, Ordering::AcqRel);
        let s = server.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            connection(&s, stream, acceptor).await;
            drop(slot);
            s.release();
        });
    }
    drop(listener);
    server.release();
}

// ---- connections ----------------------------------------------------------

/// Runs a stream's task once in place before spawning it: a response that
/// is ready at once (the demo handler, errors) is queued on the connection
/// in the same pass that read the request, so the responses to a batch of
/// requests leave in one write, with no task to schedule.
#[derive(Clone, Copy)]
struct FirstPoll;

impl<F> hyper::rt::Executor<F> for FirstPoll
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, task: F) {
        let mut task = Box::pin(task);
        // A task that is not done re-registers its real waker when the
        // runtime polls it.
        let mut cx = Context::from_waker(Waker::noop());
        if task.as_mut().poll(&mut cx).is_pending() {
            tokio::spawn(task);
        }
    }
}

/// What a connection's timers need to know.
struct Activity {
    started: Instant,
    in_flight: AtomicUsize,
    any_request: AtomicBool,
    /// Milliseconds after `started` of the last request start or end.
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// When the connection should be closed for being idle, if nothing
    /// is in flight.
    fn deadline(&self, limits: &Limits) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        if !self.any_request.load(Ordering::Acquire) {
            return Some(self.started + limits.header_timeout);
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        Some(self.started + last + limits.idle_timeout)
    }
}

/// Ends a request's accounting even if hyper drops it (stream reset).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn connection(server: &Arc<Server>, stream: TcpStream, acceptor: Option<TlsAcceptor>) {
    let limits = Limits::get();
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity {
        started: Instant::now(),
        in_flight: AtomicUsize::new(0),
        any_request: AtomicBool::new(false),
        last_ms: AtomicU64::new(0),
    });
    match acceptor {
        None => drive(server, stream, activity).await,
        Some(acceptor) => {
            let handshake = tokio::time::timeout(limits.header_timeout, acceptor.accept(stream));
            if let Ok(Ok(tls_stream)) = handshake.await {
                drive(server, tls_stream, activity).await;
            }
        }
    }
}

/// Serves one connection until it ends, is idle too long, or the server
/// stops it.
async fn drive<I>(server: &Arc<Server>, io: I, activity: Arc<Activity>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = Limits::get();
    let mut builder = hyper::server::conn::http2::Builder::new(FirstPoll);
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams)
        .max_header_list_size(limits.max_header_list);
    let svc_server = server.clone();
    let svc_activity = activity.clone();
    let service = hyper::service::service_fn(move |req| {
        respond(svc_server.clone(), svc_activity.clone(), req)
    });
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut state = server.state.subscribe();
    let tick = (limits.header_timeout.min(limits.idle_timeout) / 4)
        .clamp(Duration::from_millis(25), Duration::from_secs(1));
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Set once GOAWAY was sent: the connection must be gone by then.
    let mut closing: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = conn.as_mut() => break,
            changed = state.changed() => {
                let now = *state.borrow_and_update();
                if changed.is_err() || now == FORCED {
                    break;
                }
                if now == STOPPING && closing.is_none() {
                    conn.as_mut().graceful_shutdown();
                    closing = Some(Instant::now() + limits.grace);
                }
            }
            _ = ticker.tick() => {
                let now = Instant::now();
                match closing {
                    Some(deadline) => if now >= deadline { break },
                    None => {
                        if activity.deadline(limits).is_some_and(|d| now >= d) {
                            conn.as_mut().graceful_shutdown();
                            // A peer that ignores GOAWAY is cut off soon.
                            closing = Some(now + Duration::from_secs(1));
                        }
                    }
                }
            }
        }
    }
}

async fn respond(
    server: Arc<Server>,
    activity: Arc<Activity>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    activity.in_flight.fetch_add(1, Ordering::AcqRel);
    activity.any_request.store(true, Ordering::Release);
    let _in_flight = InFlight(activity);
    let response = match &server.handling {
        Handling::Demo => demo_response(),
        Handling::Isolates { jobs, .. } => handler_response(&server, jobs, req).await,
    };
    Ok(response)
}

fn demo_response() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(DEMO_BODY.as_bytes())));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn plain(status: u16, text: &str) -> Response<Full<Bytes>> {
    to_hyper(ResponseData::text(status, format!("{}\n", text)))
}

/// Reads the request, queues it for an isolate and waits for the answer.
async fn handler_response(
    server: &Server,
    jobs: &Sender<Exchange>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let limits = Limits::get();
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body as u64) {
        return plain(413, "Payload Too Large");
    }
    let collected = tokio::time::timeout(
        limits.body_timeout,
        Limited::new(body, limits.max_body).collect(),
    )
    .await;
    let body = match collected {
        Err(_) => return plain(408, "Request Timeout"),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return plain(413, "Payload Too Large")
        }
        Ok(Err(_)) => return plain(400, "Bad Request"),
        Ok(Ok(c)) => c.to_bytes(),
    };
    let authority = parts
        .uri
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            parts
                .headers
                .get(hyper::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default();
    let scheme = parts
        .uri
        .scheme_str()
        .unwrap_or(if server.tls { "https" } else { "http" })
        .to_string();
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| "/".to_string(), |p| p.to_string());
    let headers = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let request = RequestData {
        method: parts.method.as_str().to_string(),
        scheme,
        authority,
        path,
        headers,
        body,
    };
    let (reply, answer) = oneshot::channel();
    match jobs.try_send(Exchange { request, reply }) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            return plain(503, "Service Unavailable: too many queued requests")
        }
        Err(TrySendError::Disconnected(_)) => return plain(503, "Service Unavailable"),
    }
    match tokio::time::timeout(limits.handler_timeout, answer).await {
        Ok(Ok(response)) => to_hyper(response),
        Ok(Err(_)) => plain(500, "Internal Server Error"),
        Err(_) => plain(
            503,
            "Service Unavailable: the handler did not answer in time",
        ),
    }
}

/// Headers HTTP/2 forbids (RFC 9113 §8.2.2); a handler's are dropped.
fn connection_specific(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade"
    )
}

fn to_hyper(data: ResponseData) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(data.body));
    *response.status_mut() =
        StatusCode::from_u16(data.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    for (name, value) in data.headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) else {
            continue;
        };
        if !connection_specific(&name) {
            headers.append(name, value);
        }
    }
    response
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
