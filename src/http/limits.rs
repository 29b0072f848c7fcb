//! Limits of the HTTP/2 server and client: safe defaults, each overridable
//! by an environment variable read once per process. docs/HTTP.md lists
//! them; keep the two in step.

use std::sync::OnceLock;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Limits {
    /// Concurrent streams per connection (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_streams: u32,
    /// Largest request body the server reads, and response body the client reads.
    pub max_body: usize,
    /// Largest header list accepted (SETTINGS_MAX_HEADER_LIST_SIZE).
    pub max_header_list: u32,
    /// Open connections per server; more are closed as soon as accepted.
    pub max_connections: usize,
    /// From accepting a connection to its first complete request headers
    /// (TLS handshake included).
    pub header_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Reading one request body.
    pub body_timeout: Duration,
    /// A Lisp handler's answer; past it the client gets 503.
    pub handler_timeout: Duration,
    /// Handler requests waiting for their isolate, per server and
    /// isolate; past it 503.
    pub queue: usize,
    /// Lisp handler requests one connection has started (body being read,
    /// queued for an isolate or running) and not yet answered; more wait
    /// on the connection.
    pub max_in_flight: usize,
    /// Response body bytes one connection has handed to HTTP/2 that the
    /// client has not yet taken; past it the connection starts no new
    /// handler request until the client reads.
    pub send_buffer: usize,
    /// How long a graceful stop waits for in-flight requests.
    pub grace: Duration,
    /// Client: TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// Client: one request, from sending to the whole response body.
    pub request_timeout: Duration,
}

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(s) => match s.trim().parse::<u64>() {
            Ok(n) if n > 0 => n,
            _ => {
                crate::aio::log(format_args!(
                    "valk: warning: ignoring {}={:?} (expected a positive integer); using {}",
                    name, s, default
                ));
                default
            }
        },
        Err(_) => default,
    }
}

fn env_ms(name: &str, default_ms: u64) -> Duration {
    Duration::from_millis(env_number(name, default_ms))
}

impl Limits {
    pub fn from_env() -> Limits {
        Limits {
            max_streams: env_number("VALK_HTTP_MAX_STREAMS", 1024).min(u32::MAX as u64) as u32,
            max_body: env_number("VALK_HTTP_MAX_BODY", 8 << 20) as usize,
            max_header_list: env_number("VALK_HTTP_MAX_HEADER_LIST", 64 << 10).min(u32::MAX as u64)
                as u32,
            max_connections: env_number("VALK_HTTP_MAX_CONNECTIONS", 4096) as usize,
            header_timeout: env_ms("VALK_HTTP_HEADER_TIMEOUT_MS", 10_000),
            idle_timeout: env_ms("VALK_HTTP_IDLE_TIMEOUT_MS", 60_000),
            body_timeout: env_ms("VALK_HTTP_BODY_TIMEOUT_MS", 30_000),
            handler_timeout: env_ms("VALK_HTTP_HANDLER_TIMEOUT_MS", 30_000),
            queue: env_number("VALK_HTTP_QUEUE", 16_384) as usize,
            max_in_flight: env_number("VALK_HTTP_MAX_IN_FLIGHT", 32) as usize,
            send_buffer: env_number("VALK_HTTP_SEND_BUFFER", 4 << 20) as usize,
            grace: env_ms("VALK_HTTP_GRACE_MS", 10_000),
            connect_timeout: env_ms("VALK_HTTP_CONNECT_TIMEOUT_MS", 10_000),
            request_timeout: env_ms("VALK_HTTP_REQUEST_TIMEOUT_MS", 30_000),
        }
    }

    /// The process's limits.
    pub fn get() -> &'static Limits {
        static LIMITS: OnceLock<Limits> = OnceLock::new();
        LIMITS.get_or_init(Limits::from_env)
    }
}
