//! The HTTP/2 server's request path on arbitrary bytes: a client's
//! connection preface (the magic and an empty SETTINGS frame), then the
//! input, fed to the real connection code (`valkyria::http::server::
//! serve_stream`) over an in-memory stream, with a Lisp handler answering
//! the requests on this thread the way an isolate does.
//!
//! Once the input is written and nothing moves any more (no request for the
//! handler, no byte from the server), the client closes its side; the
//! server must then close the connection. An input that takes longer than
//! `INPUT_DEADLINE` in all is a hang and panics.
//!
//! Shared by the `server_request` fuzz target (fuzz/src/lib.rs) and the
//! regression tests of the main crate (tests/http_fuzz.rs includes this
//! file), so it uses only `valkyria`, `tokio` and the standard library.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc::Receiver;
use valkyria::http::server::{self, Server};
use valkyria::http::Exchange;
use valkyria::value::Value;
use valkyria::vm::Mode;
use valkyria::Interpreter;

/// What a client sends first: the magic, then its SETTINGS.
pub const CLIENT_PREFACE: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Real time one input may take, everything included.
pub const INPUT_DEADLINE: Duration = Duration::from_secs(5);

/// Rounds with nothing happening before the client closes its side.
const QUIET_ROUNDS: u32 = 64;

/// Server output kept for the caller (the rest is only counted).
const KEEP: usize = 1 << 20;

/// The handler: routes on the path to a plain answer, a 64 KiB one, a
/// JSON one with headers, an empty one, and one built from every part of
/// the request.
const HANDLER: &str = r#"
(fun {fuzz/double s n} {if (== n 0) {s} {fuzz/double (str s s) (- n 1)}})
(fun {fuzz/handle req} {
  do
    (= {path} (http2/request-path req))
    (select
      {(string/starts-with? path "/big") (fuzz/double "0123456789abcdef" 12)}
      {(string/starts-with? path "/json")
        (http2/response 201 {{"content-type" "application/json"} {"x-fuzz" "1"}}
          (json/stringify (map/new "path" path "method" (http2/request-method req))))}
      {(string/starts-with? path "/empty") (http2/response 204 {} "")}
      {otherwise (str (http2/request-method req) " " path " " (http2/request-authority req)
                      " " (len (http2/request-headers req)) " " (len (http2/request-body req)))})
})
"#;

struct Harness {
    interp: Interpreter,
    handler: Value,
    server: Arc<Server>,
    queue: RefCell<Receiver<Exchange>>,
}

impl Harness {
    fn new() -> Harness {
        let mut interp = Interpreter::new(Mode::Script);
        interp.vm.set_native_stack(1 << 20);
        if let Err(e) = interp.eval_str(HANDLER, "<fuzz handler>") {
            panic!("the fuzz handler does not load: {e}");
        }
        let handler = interp
            .eval_str("fuzz/handle", "<fuzz handler>")
            .expect("fuzz/handle");
        let (server, queue) = server::detached(true);
        Harness {
            interp,
            handler,
            server,
            queue: RefCell::new(queue.expect("a Lisp server")),
        }
    }
}

thread_local! {
    static HARNESS: RefCell<Option<Harness>> = const { RefCell::new(None) };
}

/// What the server did with one input.
pub struct Outcome {
    /// The first bytes it wrote (up to 1 MiB).
    pub output: Vec<u8>,
    /// How many bytes it wrote in all.
    pub written: usize,
    /// Requests the handler answered.
    pub handled: usize,
}

/// Serves `data` (after the client preface) on a fresh connection.
pub fn serve(data: &[u8]) -> Outcome {
    HARNESS.with(|cell| {
        let mut slot = cell.borrow_mut();
        let harness = slot.get_or_insert_with(Harness::new);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let outcome = runtime.block_on(async {
            tokio::time::timeout(INPUT_DEADLINE, connection(harness, data)).await
        });
        // Tasks left behind (body readers) end with the runtime; requests
        // left in the queue have nobody to answer to.
        drop(runtime);
        while harness.queue.borrow_mut().try_recv().is_ok() {}
        outcome.unwrap_or_else(|_| {
            panic!(
                "the server did not finish the connection within {:?}",
                INPUT_DEADLINE
            )
        })
    })
}

async fn connection(harness: &mut Harness, data: &[u8]) -> Outcome {
    let Harness {
        interp,
        handler,
        server,
        queue,
    } = harness;
    let (server, handler, queue) = (&*server, *handler, &*queue);
    let (client, server_side) = tokio::io::duplex(64 << 10);
    let (mut from_server, mut to_server) = tokio::io::split(client);
    let mut input = CLIENT_PREFACE.to_vec();
    input.extend_from_slice(data);
    // Anything that happened: a byte from the server, a request handled.
    let progress = Cell::new(0u64);
    let server_done = Cell::new(false);
    let output = RefCell::new(Vec::new());
    let written = Cell::new(0usize);
    let handled = Cell::new(0usize);

    let serve = async {
        server::serve_stream(server, server_side).await;
        server_done.set(true);
    };
    let write = async {
        // The server may close before it has read everything.
        let _ = to_server.write_all(&input).await;
        let mut quiet = 0;
        while quiet < QUIET_ROUNDS && !server_done.get() {
            let before = progress.get();
            tokio::task::yield_now().await;
            if progress.get() == before && queue.borrow().is_empty() {
                quiet += 1;
            } else {
                quiet = 0;
            }
        }
        let _ = to_server.shutdown().await;
    };
    let read = async {
        let mut buf = vec![0u8; 16 << 10];
        loop {
            match from_server.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut out = output.borrow_mut();
                    let keep = n.min(KEEP.saturating_sub(out.len()));
                    out.extend_from_slice(&buf[..keep]);
                    written.set(written.get() + n);
                    progress.set(progress.get() + 1);
                }
            }
        }
    };
    let handle = async {
        let vm = &mut interp.vm;
        loop {
            loop {
                let Ok(exchange) = queue.borrow_mut().try_recv() else {
                    break;
                };
                valkyria::builtins::http::serve_exchange(vm, handler, exchange);
                handled.set(handled.get() + 1);
                progress.set(progress.get() + 1);
            }
            if server_done.get() {
                break;
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::join!(serve, write, read, handle);
    Outcome {
        output: output.into_inner(),
        written: written.get(),
        handled: handled.get(),
    }
}
