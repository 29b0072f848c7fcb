//! The Lisp bindings of the async system and HTTP/2: `aio`, `await`,
//! `aio/sleep`, `aio/all`, `aio/race`, and the `http2/…` family. This is
//! the only place where aio/ and http/ meet Valkyria values: futures settle
//! with plain data, and `await` turns it into values on the evaluator
//! thread; handler requests arrive as `Exchange`s and `serve_exchange`
//! runs the Lisp handler on them.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{arity, builtin, define_all, number, ret, string, type_error};
use crate::aio::isolate::{self, Woke};
use crate::aio::{self, Completion, Payload};
use crate::heap::{Gc, HostObject, Object};
use crate::http::client::{self, Client};
use crate::http::server::{self, Server, Transport};
use crate::http::{shown, Exchange, IncomingRequest, OutgoingRequest, ResponseData};
use crate::value::Value;
use crate::vm::{Mode, Vm};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{HeaderMap, Method, StatusCode};

pub fn register(vm: &mut Vm) {
    define_all(
        vm,
        &[
            AWAIT,
            SLEEP,
            ALL,
            RACE,
            DISCARD,
            LISTEN,
            SERVER_PORT,
            STOP,
            RESPONSE,
            REQUEST_METHOD,
            REQUEST_PATH,
            REQUEST_AUTHORITY,
            REQUEST_HEADERS,
            REQUEST_BODY,
            CONNECT,
            REQUEST,
            REQUEST_ADD_HEADER,
            REQUEST_SET_BODY,
            SEND,
            RESPONSE_STATUS,
            RESPONSE_HEADERS,
            RESPONSE_BODY,
        ],
    );
    let isolate = vm.syms.intern("aio/isolate");
    vm.set_global(isolate, Value::Num(0));
    document(vm, "aio/isolate", "The number of the interpreter isolate running this code: 0 for the main one, 1… for the workers that serve HTTP handlers.");
    if aio::enabled() {
        let system = host_value(vm, AioSystem);
        let sym = vm.syms.intern("aio");
        vm.set_global(sym, system);
    }
    document(vm, "aio", "The async system (a Ref), bound at startup unless VALK_DISABLE_AIO is set; the first argument of http2/listen and http2/connect.");
}

/// Documents a global value for `doc` and the reference.
fn document(vm: &mut Vm, name: &str, text: &str) {
    vm.library.docs.set(super::doc::DocEntry {
        name: name.into(),
        signature: name.into(),
        text: text.into(),
        source: String::new(),
    });
}

/// `await`'s timeout when none is given.
const DEFAULT_AWAIT_MS: i64 = 15_000;

// ---- host objects ---------------------------------------------------------

/// The value of `aio`.
pub struct AioSystem;

impl HostObject for AioSystem {
    fn type_name(&self) -> &'static str {
        "aio_system"
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A future: its completion, and its value once `await` has made it.
pub struct FutureRef {
    completion: Arc<Completion>,
    value: Cell<Option<Value>>,
}

impl HostObject for FutureRef {
    fn type_name(&self) -> &'static str {
        "future"
    }
    fn describe(&self) -> String {
        if self.completion.is_settled() {
            "<future ready>".into()
        } else {
            "<future pending>".into()
        }
    }
    fn trace(&self, out: &mut Vec<Value>) {
        if let Some(v) = self.value.get() {
            out.push(v);
        }
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

pub struct ServerRef(Arc<Server>);

impl HostObject for ServerRef {
    fn type_name(&self) -> &'static str {
        "http2_server"
    }
    fn describe(&self) -> String {
        match self.0.addr() {
            Some(addr) => format!("<http2_server {}>", addr),
            None => "<http2_server>".into(),
        }
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

pub struct ClientRef(Arc<Client>);

impl HostObject for ClientRef {
    fn type_name(&self) -> &'static str {
        "http2_client"
    }
    fn describe(&self) -> String {
        format!("<http2_client {}>", self.0.target)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A request: one a handler received, or one a script builds to send.
pub enum Request {
    Incoming(IncomingRequest),
    Outgoing(OutgoingRequest),
}

impl Request {
    fn method(&self) -> &str {
        match self {
            Request::Incoming(r) => r.parts.method.as_str(),
            Request::Outgoing(r) => r.method.as_str(),
        }
    }
    fn path(&self) -> &str {
        match self {
            Request::Incoming(r) => r.path(),
            Request::Outgoing(r) => &r.path,
        }
    }
    fn authority(&self) -> &str {
        match self {
            Request::Incoming(r) => r.authority(),
            Request::Outgoing(r) => &r.authority,
        }
    }
    fn headers(&self) -> &HeaderMap {
        match self {
            Request::Incoming(r) => &r.parts.headers,
            Request::Outgoing(r) => &r.headers,
        }
    }
    fn body(&self) -> &Bytes {
        match self {
            Request::Incoming(r) => &r.body,
            Request::Outgoing(r) => &r.body,
        }
    }
    /// The request as one to send (a received one is copied, so a handler
    /// can change and forward it).
    fn outgoing(&mut self) -> &mut OutgoingRequest {
        if let Request::Incoming(r) = self {
            *self = Request::Outgoing(OutgoingRequest::from_incoming(r));
        }
        match self {
            Request::Outgoing(r) => r,
            Request::Incoming(_) => unreachable!("converted above"),
        }
    }
}

pub struct RequestRef(RefCell<Request>);

impl HostObject for RequestRef {
    fn type_name(&self) -> &'static str {
        "http2_request"
    }
    fn describe(&self) -> String {
        let r = self.0.borrow();
        format!("<http2_request {} {}>", r.method(), r.path())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

pub struct ResponseRef(Arc<ResponseData>);

impl HostObject for ResponseRef {
    fn type_name(&self) -> &'static str {
        "http2_response"
    }
    fn describe(&self) -> String {
        format!("<http2_response {}>", self.0.status.as_u16())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

fn host_value(vm: &mut Vm, object: impl HostObject) -> Value {
    Value::Ref(vm.heap.alloc(Object::Ref(Box::new(object))))
}

thread_local! {
    /// Bytes held by the request and response values made on this thread
    /// since `serve_exchange` last ran a collection, and since it last
    /// asked for a major cycle.
    static MESSAGE_BYTES: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
}

/// Message bytes a serving isolate may accumulate before a minor
/// collection frees them. A handled request is garbage, and young: the
/// collection's pause is mostly the freeing of the requests since the last
/// one, so this bounds it (about a thousand small requests, 0.1-0.2 ms).
const YOUNG_MESSAGE_BUDGET: usize = 512 << 10;

/// Message bytes before a major cycle (more when the live heap is larger,
/// so that cycles cost a bounded share of the time): it frees the requests
/// that two minor collections in a row found still in flight (a handler
/// that awaits) and so promoted. The cycle runs a slice at each of the
/// minor collections that follow, so no pause depends on the size of the
/// heap.
const MESSAGE_BUDGET: usize = 4 << 20;

/// A host value for a request or response. The heap counts every host
/// object as a few dozen bytes, so a serving isolate would make many
/// requests between collections, and hold them: some 150 MB at the default
/// threshold. What they really hold is counted here, and `serve_exchange`
/// collects once it adds up.
fn message_value(vm: &mut Vm, object: impl HostObject, bytes: usize) -> Value {
    MESSAGE_BYTES.with(|b| {
        let (young, all) = b.get();
        b.set((young.saturating_add(bytes), all.saturating_add(bytes)));
    });
    host_value(vm, object)
}

/// Roughly what a header map holds: its table, and an entry and a value
/// buffer per header.
fn headers_bytes(headers: &HeaderMap) -> usize {
    256 + headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 160)
        .sum::<usize>()
}

fn incoming_bytes(r: &IncomingRequest) -> usize {
    std::mem::size_of::<IncomingRequest>()
        + r.path().len()
        + r.authority().len()
        + headers_bytes(&r.parts.headers)
        + r.body.len()
}

fn response_bytes(r: &ResponseData) -> usize {
    std::mem::size_of::<ResponseData>() + headers_bytes(&r.headers) + r.body.len()
}

fn host<T: 'static>(vm: &Vm, v: Value) -> Option<&T> {
    match v {
        Value::Ref(g) => vm.heap.host_ref(g).as_any().downcast_ref::<T>(),
        _ => None,
    }
}

fn future_value(vm: &mut Vm, completion: Arc<Completion>) -> Value {
    host_value(
        vm,
        FutureRef {
            completion,
            value: Cell::new(None),
        },
    )
}

fn expect_aio(vm: &mut Vm, name: &str, v: Value) -> Result<(), Gc> {
    if vm.sandboxed {
        return Err(vm.error(format!("`{}` is not allowed in the sandbox", name)));
    }
    if host::<AioSystem>(vm, v).is_some() {
        Ok(())
    } else {
        Err(type_error(vm, name, "the aio system", v))
    }
}

fn expect_future(vm: &mut Vm, name: &str, v: Value) -> Result<Arc<Completion>, Gc> {
    match host::<FutureRef>(vm, v) {
        Some(f) => Ok(f.completion.clone()),
        None => Err(type_error(vm, name, "a future", v)),
    }
}

fn expect_server(vm: &mut Vm, name: &str, v: Value) -> Result<Arc<Server>, Gc> {
    match host::<ServerRef>(vm, v) {
        Some(s) => Ok(s.0.clone()),
        None => Err(type_error(vm, name, "an http2_server", v)),
    }
}

fn expect_client(vm: &mut Vm, name: &str, v: Value) -> Result<Arc<Client>, Gc> {
    match host::<ClientRef>(vm, v) {
        Some(c) => Ok(c.0.clone()),
        None => Err(type_error(vm, name, "an http2_client", v)),
    }
}

fn expect_request<'a>(vm: &'a mut Vm, name: &str, v: Value) -> Result<&'a RequestRef, Gc> {
    if host::<RequestRef>(vm, v).is_none() {
        return Err(type_error(vm, name, "an http2_request", v));
    }
    Ok(host::<RequestRef>(vm, v).expect("checked above"))
}

fn expect_response(vm: &mut Vm, name: &str, v: Value) -> Result<Arc<ResponseData>, Gc> {
    match host::<ResponseRef>(vm, v) {
        Some(r) => Ok(r.0.clone()),
        None => Err(type_error(vm, name, "an http2_response", v)),
    }
}

fn port_number(vm: &mut Vm, name: &str, v: Value) -> Result<u16, Gc> {
    let n = number(vm, name, v)?;
    u16::try_from(n).map_err(|_| vm.error(format!("`{}` port {} is out of range 0-65535", name, n)))
}

fn text_of(bytes: &Bytes) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `{{name value} …}` from headers.
fn header_list(vm: &mut Vm, headers: &HeaderMap) -> Value {
    let mut pairs = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let n = vm.heap.string_value(name.as_str());
        let v = vm
            .heap
            .string_value(&String::from_utf8_lossy(value.as_bytes()));
        pairs.push(vm.heap.qlist(&[n, v]));
    }
    vm.heap.qlist(&pairs)
}

/// A checked header name and value.
fn header(
    vm: &mut Vm,
    name: &str,
    key: &str,
    value: &str,
) -> Result<(HeaderName, HeaderValue), Gc> {
    if let Err(msg) = server::check_header(key, value) {
        return Err(vm.error(format!("`{}`: {}", name, msg)));
    }
    match (
        HeaderName::from_bytes(key.as_bytes()),
        HeaderValue::from_str(value),
    ) {
        (Ok(k), Ok(v)) => Ok((k, v)),
        _ => Err(vm.error(format!("`{}`: invalid header {}", name, shown(key)))),
    }
}

/// A header list's size as SETTINGS_MAX_HEADER_LIST_SIZE counts it
/// (RFC 9113 §6.5.2): each field's name and value, plus 32.
fn header_list_size(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum()
}

/// Header pairs from `{{name value} …}`; values may be any printable value.
fn header_pairs(vm: &mut Vm, name: &str, list: Value) -> Result<HeaderMap, Gc> {
    if !list.is_qexpr() {
        return Err(type_error(vm, name, "headers as {{name value} …}", list));
    }
    let mut out = HeaderMap::new();
    for pair in vm.heap.list_items(list) {
        let items = if pair.is_qexpr() {
            vm.heap.list_items(pair)
        } else {
            Vec::new()
        };
        let (Some(&Value::Str(k)), 2) = (items.first(), items.len()) else {
            return Err(type_error(vm, name, "a header {name value}", pair));
        };
        let key = vm.heap.string(k).to_string();
        let value = vm.format(items[1], false);
        let (k, v) = header(vm, name, &key, &value)?;
        out.append(k, v);
    }
    Ok(out)
}

/// Turns a settled future's data into a value (on the evaluator thread).
fn payload_value(vm: &mut Vm, payload: &Payload) -> Value {
    match payload {
        Payload::Unit => Value::Unit,
        Payload::Number(n) => Value::Num(*n),
        Payload::Text(s) => vm.heap.string_value(s),
        Payload::List(items) => {
            // No collection runs inside a builtin: the parts need no rooting.
            let values: Vec<Value> = items.iter().map(|p| payload_value(vm, p)).collect();
            vm.heap.qlist(&values)
        }
        Payload::Host(object) => {
            let object = object.clone();
            let object = match object.downcast::<Server>() {
                Ok(s) => return host_value(vm, ServerRef(s)),
                Err(o) => o,
            };
            let object = match object.downcast::<Client>() {
                Ok(c) => return host_value(vm, ClientRef(c)),
                Err(o) => o,
            };
            match object.downcast::<ResponseData>() {
                Ok(r) => {
                    let bytes = response_bytes(&r);
                    message_value(vm, ResponseRef(r), bytes)
                }
                Err(_) => Value::Unit,
            }
        }
    }
}

// ---- futures --------------------------------------------------------------

builtin!(AWAIT, "await", "(await future [timeout-ms])", "Waits until the future settles and returns its value, or an Error when it failed or the timeout (default 15000 ms) passed. Handler requests are served while waiting. A value that is not a future is returned as it is.", |vm, args, env| {
    arity(vm, "await", args, 1, 2)?;
    let timeout_ms = match args.get(1) {
        Some(&v) => {
            let n = number(vm, "await", v)?;
            if n < 0 {
                return Err(vm.error(format!("`await` timeout must not be negative, got {}", n)));
            }
            n
        }
        None => DEFAULT_AWAIT_MS,
    };
    let Some(future) = host::<FutureRef>(vm, args[0]) else {
        return ret(args[0]);
    };
    if let Some(v) = future.value.get() {
        return ret(v);
    }
    let completion = future.completion.clone();
    let deadline = Instant::now().checked_add(Duration::from_millis(timeout_ms as u64));
    let woke = isolate::wait_for(vm, &completion, deadline);
    match woke {
        Woke::Done => {}
        Woke::TimedOut => {
            return Err(vm.error(format!("await: timed out after {} ms", timeout_ms)))
        }
        Woke::Exit => return Err(vm.exit_error()),
        Woke::Interrupted => {
            return Err(match vm.signalled_exit() {
                Some(exit) => exit,
                None => vm.error("await: interrupted"),
            })
        }
    }
    match completion.result() {
        Some(Ok(payload)) => {
            let v = payload_value(vm, &payload);
            if let Some(f) = host::<FutureRef>(vm, args[0]) {
                f.value.set(Some(v));
                if let Value::Ref(g) = args[0] {
                    vm.heap.host_changed(g);
                }
            }
            ret(v)
        }
        Some(Err(message)) => Err(vm.error(message)),
        None => Err(vm.error("await: the future did not settle")),
    }
});

fn aio_ready(vm: &mut Vm, name: &str) -> Result<(), Gc> {
    if vm.sandboxed {
        return Err(vm.error(format!("`{}` is not allowed in the sandbox", name)));
    }
    if aio::enabled() {
        Ok(())
    } else {
        Err(vm.error(format!(
            "`{}`: the async system is disabled (VALK_DISABLE_AIO)",
            name
        )))
    }
}

builtin!(
    SLEEP,
    "aio/sleep",
    "(aio/sleep ms)",
    "A future that settles with () after ms milliseconds (0 or more).",
    |vm, args, env| {
        arity(vm, "aio/sleep", args, 1, 1)?;
        aio_ready(vm, "aio/sleep")?;
        let ms = number(vm, "aio/sleep", args[0])?;
        if ms < 0 {
            return Err(vm.error(format!(
                "`aio/sleep` duration must not be negative, got {}",
                ms
            )));
        }
        let completion = aio::sleep(ms as u64);
        ret(future_value(vm, completion))
    }
);

fn future_list(vm: &mut Vm, name: &str, list: Value) -> Result<Vec<Arc<Completion>>, Gc> {
    if !list.is_qexpr() {
        return Err(type_error(vm, name, "a Q-expression of futures", list));
    }
    let items = vm.heap.list_items(list);
    items
        .into_iter()
        .map(|f| expect_future(vm, name, f))
        .collect()
}

builtin!(
    ALL,
    "aio/all",
    "(aio/all {futures…})",
    "A future of the list of all the futures' values; fails as soon as one fails.",
    |vm, args, env| {
        arity(vm, "aio/all", args, 1, 1)?;
        aio_ready(vm, "aio/all")?;
        let parts = future_list(vm, "aio/all", args[0])?;
        let completion = aio::all(parts);
        ret(future_value(vm, completion))
    }
);

builtin!(
    RACE,
    "aio/race",
    "(aio/race {futures…})",
    "A future that settles like the first of the futures to settle.",
    |vm, args, env| {
        arity(vm, "aio/race", args, 1, 1)?;
        aio_ready(vm, "aio/race")?;
        let parts = future_list(vm, "aio/race", args[0])?;
        let completion = aio::race(parts);
        ret(future_value(vm, completion))
    }
);

builtin!(DISCARD, "aio/discard", "(aio/discard values…)", "Ignores its arguments and returns (). Worker isolates bind print and printf to it while they load the program, so its output appears once.", |vm, args, env| {
    ret(Value::Unit)
});

// ---- server ---------------------------------------------------------------

builtin!(LISTEN, "http2/listen", "(http2/listen aio host port keyfile certfile [handler])", "A future of an HTTP/2 server listening on host:port (port 0 picks a free one). TLS with ALPN h2 from the PEM key and certificate files; cleartext h2c when both are \"\". The handler (\\ {req} …) returns a String or an http2/response; without one every request gets the demo response.", |vm, args, env| {
    arity(vm, "http2/listen", args, 5, 6)?;
    expect_aio(vm, "http2/listen", args[0])?;
    let host = string(vm, "http2/listen", args[1])?;
    let port = port_number(vm, "http2/listen", args[2])?;
    let key = string(vm, "http2/listen", args[3])?;
    let cert = string(vm, "http2/listen", args[4])?;
    let handler = match args.get(5) {
        Some(&f) if f.is_function() => Some(f),
        Some(&other) => return Err(type_error(vm, "http2/listen", "a handler function", other)),
        None => None,
    };
    let transport = match (key.is_empty(), cert.is_empty()) {
        (true, true) => Transport::H2c,
        (false, false) => Transport::Tls { key, cert },
        _ => return Err(vm.error("`http2/listen` needs both a key and a certificate file, or neither (h2c)")),
    };
    let iso = isolate::current(vm);
    let ordinal = iso.next_listen();
    if iso.worker {
        // The main isolate already listens: serve its server's requests too.
        let Some(srv) = server::by_ordinal(ordinal) else {
            return Err(vm.error(format!(
                "`http2/listen`: isolate {} found no server #{} started by the main isolate",
                iso.index, ordinal
            )));
        };
        if let Some(h) = handler {
            if let Some(queue) = srv.attach(Some(iso.runtime().handle().clone())) {
                iso.add_handler(vm, srv.clone(), queue, h);
            }
        }
        let bound = srv.bound().clone();
        return ret(future_value(vm, bound));
    }
    let main = if iso.index == 0 { Some(ordinal) } else { None };
    let runtime = handler.map(|_| iso.runtime().handle().clone());
    let (srv, queue) = server::start(host, port, transport, runtime, main);
    if let (Some(h), Some(queue)) = (handler, queue) {
        iso.add_handler(vm, srv.clone(), queue, h);
    }
    if vm.mode == Mode::Script && iso.index == 0 {
        aio::process::install_signal_handlers(vm.interrupt.clone());
    }
    let bound = srv.bound().clone();
    ret(future_value(vm, bound))
});

builtin!(
    SERVER_PORT,
    "http2/server-port",
    "(http2/server-port server)",
    "The port the server listens on.",
    |vm, args, env| {
        arity(vm, "http2/server-port", args, 1, 1)?;
        let srv = expect_server(vm, "http2/server-port", args[0])?;
        ret(Value::Num(srv.port() as i64))
    }
);

builtin!(STOP, "http2/stop", "(http2/stop server)", "Stops the server gracefully (GOAWAY; in-flight requests finish). Returns a future that settles once it has stopped.", |vm, args, env| {
    arity(vm, "http2/stop", args, 1, 1)?;
    let srv = expect_server(vm, "http2/stop", args[0])?;
    srv.stop();
    let drained = srv.drained().clone();
    ret(future_value(vm, drained))
});

builtin!(
    RESPONSE,
    "http2/response",
    "(http2/response status {{name value}…} body)",
    "A response for a handler to return: status (Number or String), headers, body String.",
    |vm, args, env| {
        arity(vm, "http2/response", args, 3, 3)?;
        // A final response: 1xx are interim (and 101 has no place in
        // HTTP/2), so a handler cannot answer with one.
        let status = match args[0] {
            Value::Num(n) => Some(n),
            Value::Str(g) => vm.heap.string(g).trim().parse::<i64>().ok(),
            other => return Err(type_error(vm, "http2/response", "a status Number", other)),
        };
        let Some(status) = status.filter(|s| (200..=999).contains(s)) else {
            let given = vm.format(args[0], true);
            return Err(vm.error(format!(
                "`http2/response` status must be 200-999, got {}",
                given
            )));
        };
        let headers = header_pairs(vm, "http2/response", args[1])?;
        // Peers refuse a larger list (as this server does), most of them
        // by ending the whole connection: refused here, it is one 500.
        let size = header_list_size(&headers);
        let limit = crate::http::Limits::get().max_header_list as usize;
        if size > limit {
            return Err(vm.error(format!(
                "`http2/response` header list of {} bytes exceeds the limit of {} bytes (VALK_HTTP_MAX_HEADER_LIST)",
                size, limit
            )));
        }
        let body = match args[2] {
            Value::Str(g) => vm.heap.string(g).to_string(),
            other => vm.format(other, false),
        };
        if matches!(status, 204 | 304) && !body.is_empty() {
            return Err(vm.error(format!(
                "`http2/response` a {} response has no body, got {} bytes",
                status,
                body.len()
            )));
        }
        let data = ResponseData {
            status: StatusCode::from_u16(status as u16)
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            headers,
            body: Bytes::from(body),
        };
        let bytes = response_bytes(&data);
        ret(message_value(vm, ResponseRef(Arc::new(data)), bytes))
    }
);

/// Reads one field of a request as a String.
fn request_field(
    vm: &mut Vm,
    name: &str,
    args: &[Value],
    field: fn(&Request) -> String,
) -> Result<Value, Gc> {
    arity(vm, name, args, 1, 1)?;
    let text = field(&expect_request(vm, name, args[0])?.0.borrow());
    Ok(vm.heap.string_value(&text))
}

builtin!(
    REQUEST_METHOD,
    "http2/request-method",
    "(http2/request-method req)",
    "The request's method, e.g. \"GET\".",
    |vm, args, env| {
        ret(request_field(vm, "http2/request-method", args, |r| {
            r.method().to_string()
        })?)
    }
);

builtin!(
    REQUEST_PATH,
    "http2/request-path",
    "(http2/request-path req)",
    "The request's path with its query, e.g. \"/items?id=3\".",
    |vm, args, env| {
        ret(request_field(vm, "http2/request-path", args, |r| {
            r.path().to_string()
        })?)
    }
);

builtin!(
    REQUEST_AUTHORITY,
    "http2/request-authority",
    "(http2/request-authority req)",
    "The request's :authority (host and port).",
    |vm, args, env| {
        ret(request_field(vm, "http2/request-authority", args, |r| {
            r.authority().to_string()
        })?)
    }
);

builtin!(
    REQUEST_BODY,
    "http2/request-body",
    "(http2/request-body req)",
    "The request's body as a String.",
    |vm, args, env| {
        ret(request_field(vm, "http2/request-body", args, |r| {
            text_of(r.body())
        })?)
    }
);

builtin!(
    REQUEST_HEADERS,
    "http2/request-headers",
    "(http2/request-headers req)",
    "The request's headers as {{name value}…}, names in lower case.",
    |vm, args, env| {
        arity(vm, "http2/request-headers", args, 1, 1)?;
        let headers = expect_request(vm, "http2/request-headers", args[0])?
            .0
            .borrow()
            .headers()
            .clone();
        ret(header_list(vm, &headers))
    }
);

/// Runs a Lisp handler on one request and sends its answer back. A handler
/// Error is logged and answered with 500.
pub fn serve_exchange(vm: &mut Vm, handler: Value, exchange: Exchange) {
    let Exchange { request, reply } = exchange;
    if reply.is_closed() {
        // The connection is gone: nobody would read the answer.
        return;
    }
    vm.heap.serve_requests();
    let bytes = incoming_bytes(&request);
    let req = message_value(
        vm,
        RequestRef(RefCell::new(Request::Incoming(request))),
        bytes,
    );
    let response = match vm.call(handler, &[req], None) {
        Ok(Value::Str(g)) => ResponseData::text(StatusCode::OK, vm.heap.string(g).to_string()),
        Ok(v) => match host::<ResponseRef>(vm, v) {
            Some(r) => (*r.0).clone(),
            None => {
                crate::aio::log(format_args!(
                    "valk: http2 handler for {} returned {}, expected a String or an http2/response",
                    request_label(vm, req),
                    v.type_name()
                ));
                ResponseData::text(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error\n")
            }
        },
        Err(e) => {
            if vm.exit_code.is_some() {
                ResponseData::text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Service Unavailable: shutting down\n",
                )
            } else {
                crate::aio::log(format_args!(
                    "valk: http2 handler error for {}: {}",
                    request_label(vm, req),
                    vm.render_error(e)
                ));
                ResponseData::text(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error\n")
            }
        }
    };
    vm.clear_uncatchable();
    reply.send(response);
    // As safe a point as any inside the handler: nothing of this request
    // is needed any more, and whatever waits below is rooted.
    let (young, all) = MESSAGE_BYTES.with(|b| b.get());
    if young >= YOUNG_MESSAGE_BUDGET {
        if all >= MESSAGE_BUDGET.max(vm.heap.live_bytes()) {
            MESSAGE_BYTES.with(|b| b.set((0, 0)));
            vm.heap.request_major_cycle();
        } else {
            MESSAGE_BYTES.with(|b| b.set((0, all)));
        }
        vm.collect_young();
    }
}

/// `GET /path` for log lines.
fn request_label(vm: &Vm, req: Value) -> String {
    match host::<RequestRef>(vm, req) {
        Some(r) => {
            let r = r.0.borrow();
            format!("{} {}", r.method(), r.path())
        }
        None => "a request".into(),
    }
}

// ---- client ---------------------------------------------------------------

builtin!(CONNECT, "http2/connect", "(http2/connect aio host port [sni-name [transport]])", "A future of an HTTP/2 client connection to host:port: TLS with ALPN h2 and certificate verification for sni-name (default host; \"\" means host), or cleartext h2c with prior knowledge when transport is \"h2c\".", |vm, args, env| {
    arity(vm, "http2/connect", args, 3, 5)?;
    expect_aio(vm, "http2/connect", args[0])?;
    let host = string(vm, "http2/connect", args[1])?;
    let port = port_number(vm, "http2/connect", args[2])?;
    let sni = match args.get(3) {
        Some(&v) => Some(string(vm, "http2/connect", v)?).filter(|s| !s.is_empty()),
        None => None,
    };
    let tls = match args.get(4) {
        None => true,
        Some(&v) => match string(vm, "http2/connect", v)?.as_str() {
            "tls" | "h2" | "https" => true,
            "h2c" | "http" => false,
            other => {
                return Err(vm.error(format!(
                    "`http2/connect` transport must be \"tls\" or \"h2c\", got {}",
                    shown(other)
                )))
            }
        },
    };
    let completion = aio::spawn(async move {
        let client = client::connect(host, port, sni, tls).await?;
        Ok(Payload::Host(Arc::new(client)))
    });
    ret(future_value(vm, completion))
});

builtin!(REQUEST, "http2/request", "(http2/request method scheme authority path)", "A request to send with http2/send, e.g. (http2/request \"GET\" \"https\" \"example.com\" \"/\"). An empty authority means the connection's host:port.", |vm, args, env| {
    arity(vm, "http2/request", args, 4, 4)?;
    let method = string(vm, "http2/request", args[0])?;
    let scheme = string(vm, "http2/request", args[1])?;
    let authority = string(vm, "http2/request", args[2])?;
    let path = string(vm, "http2/request", args[3])?;
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Err(vm.error(format!("`http2/request`: invalid method {}", shown(&method))));
    };
    if !matches!(scheme.as_str(), "http" | "https" | "") {
        return Err(vm.error(format!(
            "`http2/request`: scheme must be \"http\", \"https\" or \"\" (the connection's), got {}",
            shown(&scheme)
        )));
    }
    if !(path.is_empty() || path.starts_with('/')) {
        return Err(vm.error(format!(
            "`http2/request`: path must start with /, got {}",
            shown(&path)
        )));
    }
    let data = OutgoingRequest {
        method,
        scheme,
        authority,
        path,
        headers: HeaderMap::new(),
        body: Bytes::new(),
    };
    ret(host_value(vm, RequestRef(RefCell::new(Request::Outgoing(data)))))
});

builtin!(
    REQUEST_ADD_HEADER,
    "http2/request-add-header",
    "(http2/request-add-header req name value)",
    "Adds a header to the request (a received one becomes a copy to send on); returns the request.",
    |vm, args, env| {
        arity(vm, "http2/request-add-header", args, 3, 3)?;
        let name = string(vm, "http2/request-add-header", args[1])?;
        let value = match args[2] {
            Value::Str(g) => vm.heap.string(g).to_string(),
            other => vm.format(other, false),
        };
        let (k, v) = header(vm, "http2/request-add-header", &name, &value)?;
        let req = expect_request(vm, "http2/request-add-header", args[0])?;
        req.0.borrow_mut().outgoing().headers.append(k, v);
        ret(args[0])
    }
);

builtin!(
    REQUEST_SET_BODY,
    "http2/request-set-body",
    "(http2/request-set-body req body)",
    "Sets the request's body (a String); returns the request.",
    |vm, args, env| {
        arity(vm, "http2/request-set-body", args, 2, 2)?;
        let body = string(vm, "http2/request-set-body", args[1])?;
        let req = expect_request(vm, "http2/request-set-body", args[0])?;
        req.0.borrow_mut().outgoing().body = Bytes::from(body);
        ret(args[0])
    }
);

builtin!(SEND, "http2/send", "(http2/send req client)", "Sends the request as a new stream on the client's connection; a future of the response. Any number of sends may be in flight on one connection. A request a handler received can be sent on as it is (a proxy).", |vm, args, env| {
    arity(vm, "http2/send", args, 2, 2)?;
    let data = match &*expect_request(vm, "http2/send", args[0])?.0.borrow() {
        Request::Outgoing(r) => r.clone(),
        Request::Incoming(r) => OutgoingRequest::from_incoming(r),
    };
    let conn = expect_client(vm, "http2/send", args[1])?;
    let completion = aio::spawn(async move {
        let response = client::send(conn, data).await?;
        Ok(Payload::Host(Arc::new(response)))
    });
    ret(future_value(vm, completion))
});

builtin!(
    RESPONSE_STATUS,
    "http2/response-status",
    "(http2/response-status resp)",
    "The response's status as a String, e.g. \"200\".",
    |vm, args, env| {
        arity(vm, "http2/response-status", args, 1, 1)?;
        let r = expect_response(vm, "http2/response-status", args[0])?;
        ret(vm.heap.string_value(r.status.as_str()))
    }
);

builtin!(
    RESPONSE_HEADERS,
    "http2/response-headers",
    "(http2/response-headers resp)",
    "The response's headers as {{name value}…}.",
    |vm, args, env| {
        arity(vm, "http2/response-headers", args, 1, 1)?;
        let r = expect_response(vm, "http2/response-headers", args[0])?;
        ret(header_list(vm, &r.headers))
    }
);

builtin!(
    RESPONSE_BODY,
    "http2/response-body",
    "(http2/response-body resp)",
    "The response's body as a String.",
    |vm, args, env| {
        arity(vm, "http2/response-body", args, 1, 1)?;
        let r = expect_response(vm, "http2/response-body", args[0])?;
        ret(vm.heap.string_value(&text_of(&r.body)))
    }
);
