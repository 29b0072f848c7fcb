//! One connection of the HTTP/2 server, driven directly on the h2 crate by
//! a single task: it reads requests, answers demo ones at once, queues the
//! others for its isolate and writes their responses as they come back. A
//! connection with a Lisp handler runs on its isolate's thread, so the
//! request and its response never cross threads.
//! Everything answered in one pass leaves in one write — no task per
//! stream, one wake per batch of responses. Here too live the per-connection
//! limits: handshake and header-read timeout, idle timeout, body size and
//! time, handler deadline, and the graceful stop (GOAWAY, in-flight
//! requests finish, then the grace deadline).
//!
//! A client that stops reading must not make the server hold its answers
//! without bound: the socket is wrapped in a `Metered` stream that follows
//! the frames going out and coming in, so the connection knows how many
//! response body bytes h2 still holds. Past the send buffer limit (or with
//! too many handler requests in flight) new requests wait on the
//! connection, unstarted, until the client reads; a client that takes
//! nothing for the idle timeout while answers wait for it is cut off.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use h2::server::SendResponse;
use h2::RecvStream;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, DATE};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::mpsc::Sender;
use tokio_rustls::TlsAcceptor;

use super::server::{Server, DEMO_BODY, FORCED, STOPPING};
use super::{date, Exchange, IncomingRequest, Limits, Replier, Replies, ResponseData};

/// Serves one accepted connection until it closes. Its handler requests
/// go to `jobs` (None: the demo handler answers them).
pub(super) async fn serve(
    server: &Arc<Server>,
    jobs: Option<Sender<Exchange>>,
    stream: TcpStream,
    acceptor: Option<TlsAcceptor>,
) {
    let started = Instant::now();
    let limits = Limits::get();
    let _ = stream.set_nodelay(true);
    match acceptor {
        None => drive(server, jobs, stream, started, false).await,
        Some(acceptor) => {
            let handshake = tokio::time::timeout(limits.header_timeout, acceptor.accept(stream));
            if let Ok(Ok(tls)) = handshake.await {
                drive(server, jobs, tls, started, true).await;
            }
        }
    }
}

fn settings(limits: &Limits) -> h2::server::Builder {
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(1 << 20)
        .initial_connection_window_size(1 << 20)
        .max_frame_size(16 << 10)
        .max_send_buffer_size(400 << 10)
        .max_header_list_size(limits.max_header_list)
        .max_concurrent_streams(limits.max_streams)
        .max_local_error_reset_streams(Some(1024));
    builder
}

/// A handler request: waiting on the connection to be started, or whose
/// response an isolate is making.
struct Waiting {
    respond: SendResponse<Bytes>,
    /// When the answer is due; None until the request is started.
    deadline: Option<Instant>,
    head: bool,
}

/// Hashes the integer keys of a connection's tables: its own request
/// tokens, and stream ids (chosen by the client, so the key is mixed with
/// a secret drawn once per process). One multiply and a fold, where the
/// default SipHash spent more on each lookup than the rest of the lookup
/// did. The tables hold at most a connection's streams in flight.
/// (`symbol::NameHasher` is unkeyed and keeps a key's low bit in the
/// hash's, so odd stream ids would share half the slots.)
#[derive(Clone, Copy)]
struct IdHash(u64);

impl Default for IdHash {
    fn default() -> IdHash {
        static SECRET: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        IdHash(
            *SECRET.get_or_init(|| std::collections::hash_map::RandomState::new().hash_one(0u64)),
        )
    }
}

impl BuildHasher for IdHash {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher(self.0)
    }
}

struct IdHasher(u64);

impl IdHasher {
    fn mix(&mut self, x: u64) {
        let h = (self.0 ^ x).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        // The table takes its slot from the low bits: fold the high ones
        // (which every bit of the key reaches) into them.
        self.0 = h ^ (h >> 32);
    }
}

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.mix(u64::from(b));
        }
    }

    fn write_u32(&mut self, id: u32) {
        self.mix(u64::from(id));
    }

    fn write_u64(&mut self, token: u64) {
        self.mix(token);
    }
}

/// A handler request not yet started (its body not yet read).
struct Held {
    token: u64,
    parts: Box<Parts>,
    body: RecvStream,
}

struct Streams {
    /// Where handler requests go; None when the demo handler answers.
    jobs: Option<Sender<Exchange>>,
    /// Demo requests read in this pass, answered together.
    ready: Vec<(SendResponse<Bytes>, bool)>,
    limits: &'static Limits,
    tls: bool,
    waiting: HashMap<u64, Waiting, IdHash>,
    /// Handler requests waiting to be started, oldest first.
    held: VecDeque<Held>,
    /// Handler requests started and not yet answered.
    in_flight: usize,
    /// Response bytes h2 holds for this connection.
    meter: Arc<Mutex<Meter>>,
    next_token: u64,
    replies: Arc<Replies>,
}

pub(super) async fn drive<I>(
    server: &Arc<Server>,
    jobs: Option<Sender<Exchange>>,
    io: I,
    started: Instant,
    tls: bool,
) where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let limits = Limits::get();
    let header_deadline = tokio::time::Instant::from_std(started + limits.header_timeout);
    let meter = Arc::new(Mutex::new(Meter::default()));
    let io = Metered {
        io,
        meter: meter.clone(),
    };
    let handshake = settings(limits).handshake::<_, Bytes>(io);
    let mut conn = match tokio::time::timeout_at(header_deadline, handshake).await {
        Ok(Ok(conn)) => conn,
        _ => return,
    };
    let replies = Arc::new(Replies::default());
    // Answers that come later have nobody to go to.
    struct Closing(Arc<Replies>);
    impl Drop for Closing {
        fn drop(&mut self) {
            self.0.close();
        }
    }
    let _closing = Closing(replies.clone());
    let mut streams = Streams {
        jobs,
        ready: Vec::new(),
        limits,
        tls,
        waiting: HashMap::default(),
        held: VecDeque::new(),
        in_flight: 0,
        meter,
        next_token: 0,
        replies: replies.clone(),
    };
    let mut state = server.state.subscribe();
    let tick = (limits.header_timeout.min(limits.idle_timeout) / 4)
        .clamp(Duration::from_millis(25), Duration::from_secs(1));
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut any_request = false;
    let mut last_activity = Instant::now();
    // Set once GOAWAY was sent: the connection must be gone by then.
    let mut closing: Option<Instant> = None;
    // The body bytes written so far, and when that last grew (or nothing
    // was waiting to be written).
    let mut written = 0u64;
    let mut last_progress = Instant::now();
    let mut answers = Vec::new();
    loop {
        streams.start_held();
        tokio::select! {
            biased;
            _ = std::future::poll_fn(|cx| replies.poll_take(cx, &mut answers)) => {
                for (token, response) in answers.drain(..) {
                    streams.answer(token, response);
                }
                last_activity = Instant::now();
            }
            accepted = conn.accept() => match accepted {
                Some(Ok((request, respond))) => {
                    any_request = true;
                    last_activity = Instant::now();
                    streams.accept(request, respond);
                    // Every request already read is taken before any is
                    // answered, so their responses leave in one write.
                    let mut ended = false;
                    loop {
                        match try_accept(&mut conn).await {
                            Some(Some(Ok((request, respond)))) => streams.accept(request, respond),
                            None => break,
                            Some(_) => {
                                ended = true;
                                break;
                            }
                        }
                    }
                    streams.answer_ready();
                    if ended {
                        break;
                    }
                }
                // Closed, or a connection error (h2 has sent GOAWAY).
                _ => break,
            },
            // Held requests may start once the client has taken enough.
            // Only polling `conn` above writes to the socket, and it runs
            // first in the same pass, so this needs no waker of its own.
            _ = std::future::poll_fn(|_| {
                if streams.can_start() { Poll::Ready(()) } else { Poll::Pending }
            }), if !streams.held.is_empty() => {}
            changed = state.changed() => {
                let now = *state.borrow_and_update();
                if changed.is_err() || now == FORCED {
                    break;
                }
                if now == STOPPING && closing.is_none() {
                    conn.graceful_shutdown();
                    closing = Some(Instant::now() + limits.grace);
                }
            }
            _ = ticker.tick() => {
                let now = Instant::now();
                streams.expire(now);
                let (unsent, total) = {
                    let meter = lock(&streams.meter);
                    (meter.unsent, meter.written)
                };
                if unsent == 0 || total != written {
                    written = total;
                    last_progress = now;
                } else if now >= last_progress + limits.idle_timeout {
                    // Answers wait and the client takes none of them: it
                    // cannot be sent GOAWAY either, so it is cut off.
                    break;
                }
                match closing {
                    Some(deadline) => if now >= deadline { break },
                    None => {
                        let deadline = if !streams.waiting.is_empty() {
                            None
                        } else if !any_request {
                            Some(started + limits.header_timeout)
                        } else {
                            Some(last_activity + limits.idle_timeout)
                        };
                        if deadline.is_some_and(|d| now >= d) {
                            conn.graceful_shutdown();
                            // A peer that ignores GOAWAY is cut off soon.
                            closing = Some(now + Duration::from_secs(1));
                        }
                    }
                }
            }
        }
    }
}

impl Streams {
    fn accept(&mut self, request: Request<RecvStream>, mut respond: SendResponse<Bytes>) {
        let head = request.method() == Method::HEAD;
        if self.jobs.is_none() {
            self.ready.push((respond, head));
            return;
        }
        let (parts, body) = request.into_parts();
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.limits.max_body as u64) {
            send(
                &mut respond,
                plain(StatusCode::PAYLOAD_TOO_LARGE),
                head,
                None,
            );
            return;
        }
        let token = self.next_token;
        self.next_token += 1;
        self.waiting.insert(
            token,
            Waiting {
                respond,
                deadline: None,
                head,
            },
        );
        let held = Held {
            token,
            parts: Box::new(parts),
            body,
        };
        if self.held.is_empty() && self.can_start() {
            self.start(held);
        } else {
            if self.held.len() >= self.limits.max_streams as usize {
                self.prune_held();
            }
            self.held.push_back(held);
        }
    }

    /// Forgets held requests whose stream the client has reset. h2 stops
    /// counting a reset stream against the stream limit, so a client that
    /// opens and resets streams while others wait would otherwise make the
    /// queue grow without bound. Runs when the queue reaches the stream
    /// limit, which only reset streams can take it past.
    fn prune_held(&mut self) {
        let mut cx = Context::from_waker(Waker::noop());
        let waiting = &mut self.waiting;
        self.held.retain(|h| {
            let reset = waiting
                .get_mut(&h.token)
                .is_none_or(|w| w.respond.poll_reset(&mut cx).is_ready());
            if reset {
                waiting.remove(&h.token);
            }
            !reset
        });
    }

    /// Whether another handler request may start: few enough in flight,
    /// and the client has taken all but a send buffer of the answers.
    fn can_start(&self) -> bool {
        self.in_flight < self.limits.max_in_flight
            && lock(&self.meter).unsent < self.limits.send_buffer
    }

    /// Starts held requests while they may start.
    fn start_held(&mut self) {
        while !self.held.is_empty() && self.can_start() {
            if let Some(held) = self.held.pop_front() {
                self.start(held);
            }
        }
    }

    /// Reads the request's body (in a task of its own) and hands it to
    /// the isolates; its deadline starts now.
    fn start(&mut self, Held { token, parts, body }: Held) {
        let Some(jobs) = &self.jobs else { return };
        let Some(w) = self.waiting.get_mut(&token) else {
            return;
        };
        // The client may have given up on it while it waited, or in the
        // same read that brought it (h2 hands out a stream reset right
        // after its headers).
        let mut cx = Context::from_waker(Waker::noop());
        if w.respond.poll_reset(&mut cx).is_ready() {
            self.waiting.remove(&token);
            return;
        }
        w.deadline = Some(Instant::now() + self.limits.body_timeout + self.limits.handler_timeout);
        self.in_flight += 1;
        let reply = Replier::new(token, self.replies.clone());
        let tls = self.tls;
        if body.is_end_stream() {
            dispatch(jobs, parts, Bytes::new(), tls, reply);
            return;
        }
        let jobs = jobs.clone();
        let (max, limit) = (self.limits.max_body, self.limits.body_timeout);
        tokio::spawn(async move {
            match tokio::time::timeout(limit, read_body(body, max)).await {
                Ok(Ok(bytes)) => dispatch(&jobs, parts, bytes, tls, reply),
                Ok(Err(status)) => reply.send(plain(status)),
                Err(_) => reply.send(plain(StatusCode::REQUEST_TIMEOUT)),
            }
        });
    }

    /// Answers the demo requests taken in this pass.
    fn answer_ready(&mut self) {
        for (mut respond, head) in self.ready.drain(..) {
            send(&mut respond, demo(), head, None);
        }
    }

    fn answer(&mut self, token: u64, response: ResponseData) {
        // Gone when the deadline passed first.
        if let Some(mut w) = self.waiting.remove(&token) {
            if w.deadline.is_some() {
                self.in_flight -= 1;
            }
            send(&mut w.respond, response, w.head, Some(&self.meter));
        }
    }

    /// Answers requests whose handler is past its deadline.
    fn expire(&mut self, now: Instant) {
        let late = |w: &Waiting| w.deadline.is_some_and(|d| d <= now);
        if !self.waiting.values().any(late) {
            return;
        }
        let late: Vec<u64> = self
            .waiting
            .iter()
            .filter(|(_, w)| late(w))
            .map(|(t, _)| *t)
            .collect();
        for token in late {
            self.answer(
                token,
                ResponseData::text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Service Unavailable: the handler did not answer in time\n",
                ),
            );
        }
    }
}

/// What `accept` gives: a request and the way to answer it, an error, or
/// None once the connection has closed.
type Accepted = Option<Result<(Request<RecvStream>, SendResponse<Bytes>), h2::Error>>;

/// The next request if one is ready now: None when it would wait, else
/// what `accept` gives.
async fn try_accept<I>(conn: &mut h2::server::Connection<I, Bytes>) -> Option<Accepted>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    std::future::poll_fn(|cx| match conn.poll_accept(cx) {
        Poll::Ready(next) => Poll::Ready(Some(next)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

/// Hands a request to the isolate; a full or closed queue is a 503.
fn dispatch(jobs: &Sender<Exchange>, parts: Box<Parts>, body: Bytes, tls: bool, reply: Replier) {
    let exchange = Exchange {
        request: IncomingRequest { parts, body, tls },
        reply,
    };
    if let Err(TrySendError::Full(e) | TrySendError::Closed(e)) = jobs.try_send(exchange) {
        e.reply.send(ResponseData::text(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable: too many queued requests\n",
        ));
    }
}

/// Reads a request body up to `max` bytes.
async fn read_body(mut body: RecvStream, max: usize) -> Result<Bytes, StatusCode> {
    let mut first: Option<Bytes> = None;
    let mut rest = BytesMut::new();
    let mut total = 0usize;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|_| StatusCode::BAD_REQUEST)?;
        let _ = body.flow_control().release_capacity(chunk.len());
        total += chunk.len();
        if total > max {
            return Err(StatusCode::PAYLOAD_TOO_LARGE);
        }
        match first.take() {
            None if rest.is_empty() => first = Some(chunk),
            Some(f) => {
                rest.extend_from_slice(&f);
                rest.extend_from_slice(&chunk);
            }
            None => rest.extend_from_slice(&chunk),
        }
    }
    Ok(first.unwrap_or_else(|| rest.freeze()))
}

fn demo() -> ResponseData {
    ResponseData::text(StatusCode::OK, Bytes::from_static(DEMO_BODY.as_bytes()))
}

fn plain(status: StatusCode) -> ResponseData {
    let reason = status.canonical_reason().unwrap_or("Error");
    ResponseData::text(status, format!("{}\n", reason))
}

/// Writes a response (queued on the connection; flushed with the others);
/// its body is counted by `meter` until it has left.
fn send(
    respond: &mut SendResponse<Bytes>,
    data: ResponseData,
    head: bool,
    meter: Option<&Mutex<Meter>>,
) {
    let mut response = Response::new(());
    *response.status_mut() = data.status;
    *response.headers_mut() = data.headers;
    let headers = response.headers_mut();
    headers.insert(CONTENT_LENGTH, HeaderValue::from(data.body.len()));
    // Tested, then inserted: `HeaderMap::entry` makes room for one more
    // header before it looks, so on a full map (`ResponseData::text` makes
    // one just large enough) it would grow the map, a reallocation and a
    // rehash per response, even for a header that is there.
    if !headers.contains_key(DATE) {
        headers.insert(DATE, date::now());
    }
    if !data.body.is_empty() && !headers.contains_key(CONTENT_TYPE) {
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    let end = head || data.body.is_empty();
    // An error means the client reset the stream: nobody to answer.
    if let Ok(mut stream) = respond.send_response(response, end) {
        if !end {
            let (id, len) = (stream.stream_id().as_u32(), data.body.len());
            if stream.send_data(data.body, true).is_ok() {
                if let Some(meter) = meter {
                    lock(meter).queued(id, len);
                }
            }
        }
    }
}

// ---- knowing what has left ------------------------------------------------

const DATA: u8 = 0;
const RST_STREAM: u8 = 3;
/// `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`, before the client's first frame.
const CLIENT_PREFACE_LEN: usize = 24;

/// Follows the frames of one direction of a connection's byte stream.
struct Framing {
    /// Bytes still to pass before the first frame (the client's preface).
    skip: usize,
    head: [u8; 9],
    /// Bytes of `head` received.
    have: usize,
    /// Payload bytes of the current frame still to come.
    left: usize,
    kind: u8,
    stream: u32,
}

impl Framing {
    fn new(skip: usize) -> Framing {
        Framing {
            skip,
            head: [0; 9],
            have: 0,
            left: 0,
            kind: 0,
            stream: 0,
        }
    }

    /// Follows `bytes`, calling `on(kind, stream, n)` for every n payload
    /// bytes of a DATA frame and once (n = 0) for each other frame.
    fn follow(&mut self, mut bytes: &[u8], mut on: impl FnMut(u8, u32, usize)) {
        let skip = self.skip.min(bytes.len());
        self.skip -= skip;
        bytes = &bytes[skip..];
        while !bytes.is_empty() {
            if self.left > 0 {
                let n = self.left.min(bytes.len());
                if self.kind == DATA {
                    on(DATA, self.stream, n);
                }
                self.left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (9 - self.have).min(bytes.len());
            self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == 9 {
                let h = self.head;
                self.have = 0;
                self.left = (h[0] as usize) << 16 | (h[1] as usize) << 8 | h[2] as usize;
                self.kind = h[3];
                self.stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                if self.kind != DATA {
                    on(self.kind, self.stream, 0);
                }
            }
        }
    }
}

/// The response body bytes a connection has handed to h2 and h2 has not
/// yet written to the socket. h2 buffers a whole body passed to
/// `send_data` until flow control lets it out; this is how much of that
/// there is.
struct Meter {
    /// Per stream: body bytes handed to h2 and not yet written.
    pending: HashMap<u32, usize, IdHash>,
    /// Their sum.
    unsent: usize,
    /// Body bytes written in all.
    written: u64,
    out: Framing,
    input: Framing,
}

impl Default for Meter {
    fn default() -> Meter {
        Meter {
            pending: HashMap::default(),
            unsent: 0,
            written: 0,
            out: Framing::new(0),
            input: Framing::new(CLIENT_PREFACE_LEN),
        }
    }
}

/// Drops what is left of a stream's body: h2 discards it when the
/// stream is reset, by either side.
fn forget(pending: &mut HashMap<u32, usize, IdHash>, unsent: &mut usize, stream: u32) {
    if let Some(left) = pending.remove(&stream) {
        *unsent -= left;
    }
}

impl Meter {
    fn queued(&mut self, stream: u32, len: usize) {
        *self.pending.entry(stream).or_insert(0) += len;
        self.unsent += len;
    }

    /// Bytes h2 wrote to the socket.
    fn wrote(&mut self, bytes: &[u8]) {
        let Meter {
            pending,
            unsent,
            written,
            out,
            ..
        } = self;
        out.follow(bytes, |kind, stream, n| match kind {
            DATA => {
                *written += n as u64;
                if let Some(left) = pending.get_mut(&stream) {
                    let n = n.min(*left);
                    *left -= n;
                    *unsent -= n;
                    if *left == 0 {
                        pending.remove(&stream);
                    }
                }
            }
            RST_STREAM => forget(pending, unsent, stream),
            _ => {}
        });
    }

    /// Bytes h2 read from the socket.
    fn read(&mut self, bytes: &[u8]) {
        let Meter {
            pending,
            unsent,
            input,
            ..
        } = self;
        input.follow(bytes, |kind, stream, _| {
            if kind == RST_STREAM {
                forget(pending, unsent, stream);
            }
        });
    }
}

fn lock(meter: &Mutex<Meter>) -> MutexGuard<'_, Meter> {
    meter.lock().unwrap_or_else(|p| p.into_inner())
}

/// The connection's socket (or TLS stream) as h2 sees it, with every byte
/// that passes shown to the meter.
struct Metered<I> {
    io: I,
    meter: Arc<Mutex<Meter>>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Metered<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let result = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            lock(&this.meter).read(&buf.filled()[before..]);
        }
        result
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Metered<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result {
            lock(&this.meter).wrote(&buf[..n.min(buf.len())]);
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(mut n)) = result {
            let mut meter = lock(&this.meter);
            for buf in bufs {
                if n == 0 {
                    break;
                }
                let k = n.min(buf.len());
                meter.wrote(&buf[..k]);
                n -= k;
            }
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_spread_over_the_low_bits() {
        // Stream ids are odd and consecutive tokens differ in their low
        // bits only: either way the slot bits must not cluster (random
        // slots fill ~162 of 256; ids that all share a low bit, <= 128).
        let build = IdHash::default();
        for ids in [
            (1u32..512).step_by(2).collect::<Vec<_>>(),
            (0u32..256).collect(),
        ] {
            let slots: std::collections::HashSet<u64> =
                ids.iter().map(|&id| build.hash_one(id) & 255).collect();
            assert!(slots.len() > 130, "{} of 256 slots used", slots.len());
        }
        let tokens: std::collections::HashSet<u64> =
            (0u64..256).map(|t| build.hash_one(t) & 255).collect();
        assert!(tokens.len() > 130, "{} of 256 slots used", tokens.len());
    }

    fn frame(kind: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, 0];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn the_meter_follows_frames_split_anywhere() {
        let mut out = frame(1, 1, b"headers");
        out.extend(frame(DATA, 1, &[7; 300]));
        out.extend(frame(4, 0, &[]));
        out.extend(frame(DATA, 3, &[7; 50]));
        for step in [1, 2, 9, 10, 64, out.len()] {
            let mut meter = Meter::default();
            meter.queued(1, 500);
            meter.queued(3, 50);
            for chunk in out.chunks(step) {
                meter.wrote(chunk);
            }
            assert_eq!(meter.written, 350, "step {}", step);
            assert_eq!(meter.unsent, 200, "step {}", step);
            assert_eq!(meter.pending.get(&1), Some(&200));
            assert!(!meter.pending.contains_key(&3));
        }
    }

    #[test]
    fn a_reset_stream_is_forgotten_either_way() {
        let mut meter = Meter::default();
        meter.queued(1, 100);
        meter.queued(3, 100);
        meter.queued(5, 100);
        // The client's reset comes after its preface.
        let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        input.extend(frame(4, 0, &[]));
        input.extend(frame(RST_STREAM, 3, &8u32.to_be_bytes()));
        for chunk in input.chunks(5) {
            meter.read(chunk);
        }
        assert_eq!(meter.unsent, 200);
        meter.wrote(&frame(RST_STREAM, 5, &8u32.to_be_bytes()));
        assert_eq!(meter.unsent, 100);
        // Data of a forgotten stream still in the write buffer is ignored.
        meter.wrote(&frame(DATA, 3, &[0; 40]));
        assert_eq!(meter.unsent, 100);
        assert_eq!(meter.pending.get(&1), Some(&100));
    }
}
