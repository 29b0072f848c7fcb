//! One connection of the HTTP/2 server, driven directly on the h2 crate by
//! a single task: it reads requests, answers demo ones at once, queues the
//! others for the isolates and writes their responses as they come back.
//! Everything answered in one pass leaves in one write — no task per
//! stream, one wake per batch of responses. Here too live the per-connection
//! limits: handshake and header-read timeout, idle timeout, body size and
//! time, handler deadline, and the graceful stop (GOAWAY, in-flight
//! requests finish, then the grace deadline).

use std::collections::HashMap;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use crossbeam_channel::{Sender, TrySendError};
use h2::server::SendResponse;
use h2::RecvStream;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, DATE};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio_rustls::TlsAcceptor;

use super::server::{Server, DEMO_BODY, FORCED, STOPPING};
use super::{date, Exchange, IncomingRequest, Limits, Replier, ResponseData};

/// Serves one accepted connection until it closes.
pub(super) async fn serve(server: &Arc<Server>, stream: TcpStream, acceptor: Option<TlsAcceptor>) {
    let started = Instant::now();
    let limits = Limits::get();
    let _ = stream.set_nodelay(true);
    match acceptor {
        None => drive(server, stream, started, false).await,
        Some(acceptor) => {
            let handshake = tokio::time::timeout(limits.header_timeout, acceptor.accept(stream));
            if let Ok(Ok(tls)) = handshake.await {
                drive(server, tls, started, true).await;
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

/// A request whose response an isolate is making.
struct Waiting {
    respond: SendResponse<Bytes>,
    deadline: Instant,
    head: bool,
}

struct Streams<'a> {
    server: &'a Server,
    /// Demo requests read in this pass, answered together.
    ready: Vec<(SendResponse<Bytes>, bool)>,
    limits: &'static Limits,
    tls: bool,
    waiting: HashMap<u64, Waiting>,
    next_token: u64,
    replies: UnboundedSender<(u64, ResponseData)>,
}

async fn drive<I>(server: &Arc<Server>, io: I, started: Instant, tls: bool)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let limits = Limits::get();
    let header_deadline = tokio::time::Instant::from_std(started + limits.header_timeout);
    let handshake = settings(limits).handshake::<_, Bytes>(io);
    let mut conn = match tokio::time::timeout_at(header_deadline, handshake).await {
        Ok(Ok(conn)) => conn,
        _ => return,
    };
    let (replies_tx, mut replies) = unbounded_channel();
    let mut streams = Streams {
        server,
        ready: Vec::new(),
        limits,
        tls,
        waiting: HashMap::new(),
        next_token: 0,
        replies: replies_tx,
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
    loop {
        tokio::select! {
            biased;
            Some((token, response)) = replies.recv() => {
                streams.answer(token, response);
                while let Ok((token, response)) = replies.try_recv() {
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

impl Streams<'_> {
    fn accept(&mut self, request: Request<RecvStream>, mut respond: SendResponse<Bytes>) {
        let head = request.method() == Method::HEAD;
        let Some(jobs) = self.server.jobs() else {
            self.ready.push((respond, head));
            return;
        };
        let (parts, body) = request.into_parts();
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.limits.max_body as u64) {
            send(&mut respond, plain(StatusCode::PAYLOAD_TOO_LARGE), head);
            return;
        }
        let token = self.next_token;
        self.next_token += 1;
        let deadline = Instant::now() + self.limits.body_timeout + self.limits.handler_timeout;
        self.waiting.insert(
            token,
            Waiting {
                respond,
                deadline,
                head,
            },
        );
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
            send(&mut respond, demo(), head);
        }
    }

    fn answer(&mut self, token: u64, response: ResponseData) {
        // Gone when the deadline passed first.
        if let Some(mut w) = self.waiting.remove(&token) {
            send(&mut w.respond, response, w.head);
        }
    }

    /// Answers requests whose handler is past its deadline.
    fn expire(&mut self, now: Instant) {
        if self.waiting.values().all(|w| w.deadline > now) {
            return;
        }
        let late: Vec<u64> = self
            .waiting
            .iter()
            .filter(|(_, w)| w.deadline <= now)
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

/// Hands a request to the isolates; a full or closed queue is a 503.
fn dispatch(jobs: &Sender<Exchange>, parts: Parts, body: Bytes, tls: bool, reply: Replier) {
    let exchange = Exchange {
        request: IncomingRequest { parts, body, tls },
        reply,
    };
    if let Err(TrySendError::Full(e) | TrySendError::Disconnected(e)) = jobs.try_send(exchange) {
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

/// Writes a response (queued on the connection; flushed with the others).
fn send(respond: &mut SendResponse<Bytes>, data: ResponseData, head: bool) {
    let mut response = Response::new(());
    *response.status_mut() = data.status;
    *response.headers_mut() = data.headers;
    let headers = response.headers_mut();
    headers.insert(CONTENT_LENGTH, HeaderValue::from(data.body.len()));
    if !headers.contains_key(DATE) {
        headers.insert(DATE, date::now());
    }
    if !headers.contains_key(CONTENT_TYPE) && !data.body.is_empty() {
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    let end = head || data.body.is_empty();
    // An error means the client reset the stream: nobody to answer.
    if let Ok(mut stream) = respond.send_response(response, end) {
        if !end {
            let _ = stream.send_data(data.body, true);
        }
    }
}
