//! The HTTP/2 client: one connection per `Client` (TLS with ALPN h2 and
//! certificate verification, or cleartext h2c with prior knowledge), over
//! which any number of requests run concurrently as streams. Every failure
//! — refused connection, TLS, reset stream, oversized body, timeout — comes
//! back as an error message; nothing waits without a deadline.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::client::conn::http2::SendRequest;
use hyper::{Request, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_rustls::TlsConnector;

use super::{describe_error, tls, Limits, OutgoingRequest, ResponseData};

/// An open HTTP/2 connection.
pub struct Client {
    sender: SendRequest<Full<Bytes>>,
    /// `host:port` as connected to; the default `:authority`.
    pub target: String,
    pub tls: bool,
    /// Why the connection ended, once it has, and whether it was the
    /// peer's bytes that this side found malformed (`garbled_by_peer`).
    ended: Arc<Mutex<Option<(String, bool)>>>,
    /// Told when `ended` is set.
    ending: Arc<Notify>,
}

impl Client {
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Why the connection ended, if it has.
    fn end_reason(&self) -> Option<(String, bool)> {
        self.ended.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Describes a failed request, with the connection's end if known. A
    /// request that failed with its connection (not a reset stream) may
    /// see the error before the connection's task has said why it ended:
    /// that is waited for, briefly, as it tells more.
    async fn failure(&self, label: &str, err: &hyper::Error) -> String {
        if self.end_reason().is_none() && !stream_reset(err) {
            let told = self.ending.notified();
            tokio::pin!(told);
            told.as_mut().enable();
            if self.end_reason().is_none() {
                let _ = tokio::time::timeout(END_REASON_WAIT, told).await;
            }
        }
        let own = describe_error(err);
        let mut garbled = garbled_by_peer(err);
        let mut text = match self.end_reason() {
            Some((reason, peer_garbled)) => {
                garbled |= peer_garbled;
                // A request cut off with its connection says only that
                // (`channel closed`, `operation was canceled`): the
                // connection's end is the reason.
                if err.is_canceled() || err.is_closed() || own == reason {
                    format!(
                        "{} failed: connection to {} ended: {}",
                        label, self.target, reason
                    )
                } else {
                    format!(
                        "{} failed: {} (connection to {} ended: {})",
                        label, own, self.target, reason
                    )
                }
            }
            None => format!("{} failed: {}", label, own),
        };
        if !self.tls && garbled {
            text.push_str(" — the peer does not speak HTTP/2 in the clear (a TLS server? connect without \"h2c\")");
        }
        text
    }
}

/// How long a failed request waits for its connection's reason to end.
const END_REASON_WAIT: Duration = Duration::from_millis(100);

/// The HTTP/2 error behind `err`, if any.
fn h2_cause<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a h2::Error> {
    let mut source = Some(err);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return Some(h2);
        }
        source = e.source();
    }
    None
}

/// Whether `err` is a stream reset (the connection goes on).
fn stream_reset(err: &hyper::Error) -> bool {
    h2_cause(err).is_some_and(|h2| h2.is_reset())
}

/// Whether `err` is this side ending the connection over a frame too
/// large to be one: what a cleartext client reads from a TLS server, whose
/// answer to the HTTP/2 preface is a TLS alert.
fn garbled_by_peer(err: &(dyn std::error::Error + 'static)) -> bool {
    h2_cause(err).is_some_and(|h2| {
        h2.is_go_away() && !h2.is_remote() && h2.reason() == Some(h2::Reason::FRAME_SIZE_ERROR)
    })
}

/// Connects to `host:port`. With `tls`, the certificate must be valid for
/// `sni` (or `host`) unless verification is off.
pub async fn connect(
    host: String,
    port: u16,
    sni: Option<String>,
    tls: bool,
) -> Result<Client, String> {
    let limits = Limits::get();
    let target = if host.contains(':') {
        format!("[{}]:{}", host, port)
    } else {
        format!("{}:{}", host, port)
    };
    let work = async {
        let stream = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("cannot connect to {}: {}", target, e))?;
        let _ = stream.set_nodelay(true);
        if !tls {
            return handshake(stream, &target, false).await;
        }
        let config = tokio::task::spawn_blocking(tls::client_config)
            .await
            .map_err(|e| e.to_string())??;
        let name = sni.unwrap_or_else(|| host.clone());
        let server_name = ServerName::try_from(name.clone())
            .map_err(|_| format!("invalid TLS server name {:?}", name))?;
        let stream = TlsConnector::from(config)
            .connect(server_name, stream)
            .await
            .map_err(|e| {
                format!(
                    "TLS handshake with {} failed: {}",
                    target,
                    super::tls::handshake_failure(&e)
                )
            })?;
        if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(format!(
                "{} does not speak HTTP/2 over TLS (ALPN h2 not agreed)",
                target
            ));
        }
        handshake(stream, &target, true).await
    };
    match tokio::time::timeout(limits.connect_timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "connecting to {} timed out after {} ms",
            target,
            limits.connect_timeout.as_millis()
        )),
    }
}

async fn handshake<I>(io: I, target: &str, tls: bool) -> Result<Client, String>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = Limits::get();
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_list)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| {
            format!(
                "HTTP/2 handshake with {} failed: {}",
                target,
                describe_error(&e)
            )
        })?;
    let ended = Arc::new(Mutex::new(None));
    let reason = ended.clone();
    let ending = Arc::new(Notify::new());
    let tell = ending.clone();
    tokio::spawn(async move {
        let why = match connection.await {
            Ok(()) => ("closed by the server".to_string(), false),
            Err(e) => (describe_error(&e), garbled_by_peer(&e)),
        };
        *reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
        tell.notify_waiters();
    });
    Ok(Client {
        sender,
        target: target.to_string(),
        tls,
        ended,
        ending,
    })
}

/// Times a request refused by the server (REFUSED_STREAM) is sent again.
const REFUSED_RETRIES: u32 = 3;

/// Whether the server refused the request's stream unprocessed.
fn refused(err: &hyper::Error) -> bool {
    h2_cause(err).is_some_and(|h2| h2.reason() == Some(h2::Reason::REFUSED_STREAM))
}

/// Sends one request and reads the whole response.
pub async fn send(client: Arc<Client>, request: OutgoingRequest) -> Result<ResponseData, String> {
    let limits = Limits::get();
    let authority = if request.authority.is_empty() {
        client.target.clone()
    } else {
        request.authority.clone()
    };
    let scheme = if request.scheme.is_empty() {
        if client.tls { "https" } else { "http" }.to_string()
    } else {
        request.scheme.clone()
    };
    let path = if request.path.is_empty() {
        "/".to_string()
    } else {
        request.path.clone()
    };
    // What errors name the request by: its path cut short, as it may be
    // long (the request sends it whole).
    let label = {
        let shown: String = path.chars().take(200).collect();
        let cut = if shown.len() < path.len() { "..." } else { "" };
        format!(
            "{} {}://{}{}{}",
            request.method, scheme, authority, shown, cut
        )
    };
    let uri = format!("{}://{}{}", scheme, authority, path);
    let build = || {
        let mut req = Request::builder()
            .method(request.method.clone())
            .version(Version::HTTP_2)
            .uri(&uri)
            .body(Full::new(request.body.clone()))
            .map_err(|e| format!("invalid request {}: {}", label, e))?;
        *req.headers_mut() = request.headers.clone();
        // The body's own length, whatever a forwarded request or an added
        // header said (`-set-body` may have changed the body since).
        if req.headers().contains_key(hyper::header::CONTENT_LENGTH) {
            req.headers_mut().insert(
                hyper::header::CONTENT_LENGTH,
                hyper::header::HeaderValue::from(request.body.len()),
            );
        }
        Ok::<_, String>(req)
    };
    let mut req = build()?;
    let mut sender = client.sender.clone();
    let work = async {
        // A stream the server refused was not processed (RFC 9113 §8.7):
        // it is sent again, as when a burst outran the server's stream
        // limit before its SETTINGS arrived.
        let mut refusals = 0;
        let response = loop {
            match sender.ready().await {
                Ok(()) => {}
                Err(e) => return Err(client.failure(&label, &e).await),
            }
            match sender.send_request(req).await {
                Ok(response) => break response,
                Err(e) if refusals < REFUSED_RETRIES && refused(&e) => {
                    refusals += 1;
                    req = build()?;
                }
                Err(e) => return Err(client.failure(&label, &e).await),
            }
        };
        let (parts, body) = response.into_parts();
        let body = match Limited::new(body, limits.max_body).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return Err(format!(
                    "{}: response body exceeds the limit of {} bytes",
                    label, limits.max_body
                ))
            }
            Err(e) => {
                return Err(format!(
                    "{}: reading the response body failed: {}",
                    label,
                    describe_error(e.as_ref())
                ))
            }
        };
        Ok(ResponseData {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    match tokio::time::timeout(limits.request_timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "{} timed out after {} ms",
            label,
            limits.request_timeout.as_millis()
        )),
    }
}
