//! Interpreter isolates: each evaluator thread (the main one, and the
//! workers that serve HTTP handlers on other cores) has an `Isolate` that
//! knows how to block until something happens — a future settles, a
//! handler request arrives, a deadline passes — and runs handler requests
//! while it waits. `await` and the serving loop are both built on
//! `wait_until`.
//!
//! Each isolate has a current-thread tokio runtime of its own. The
//! connections of the servers it serves run on it, so they make progress
//! exactly while the isolate waits: `wait_until` drives the runtime until
//! a request is ready, runs the handler outside it, and the answer goes
//! back to the connection on the same thread — no request crosses threads
//! and no thread is woken to hand one over (the model of OpenResty's
//! workers, and of thread-per-core servers).
//!
//! An isolate belongs to one VM; it is found through the VM's interrupt
//! flag (unique and stable per VM) in a thread-local table, so several
//! interpreters on one thread never share handlers.

use std::cell::{Cell, OnceCell, RefCell};
use std::future::{poll_fn, Future};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use tokio::sync::mpsc::Receiver;

use crate::http::server::Server;
use crate::http::Exchange;
use crate::value::Value;
use crate::vm::Vm;

/// How often a blocked isolate looks at its interrupt flag (Ctrl-C in the
/// REPL sets it without waking anyone) and at conditions that have no
/// waker.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How deeply handlers may nest: a handler that awaits keeps serving other
/// requests while it waits, up to this depth.
const MAX_NESTING: usize = 8;

/// Queued requests served in a row before the wait condition is checked
/// and the connections are driven again.
const BATCH: usize = 64;

/// A server whose requests this isolate serves with its own handler.
struct Source {
    server: Arc<Server>,
    jobs: RefCell<Receiver<Exchange>>,
    handler: Value,
}

pub struct Isolate {
    /// 0 for the isolate that runs the program first, 1… for workers.
    pub index: usize,
    /// Workers attach their handlers to the main isolate's servers instead
    /// of listening again.
    pub worker: bool,
    listens: Cell<usize>,
    /// Drives this isolate's connections and waits; made on first use.
    runtime: OnceCell<Runtime>,
    sources: RefCell<Vec<Rc<Source>>>,
    depth: Cell<usize>,
}

impl Isolate {
    fn new(index: usize, worker: bool) -> Isolate {
        Isolate {
            index,
            worker,
            listens: Cell::new(0),
            runtime: OnceCell::new(),
            sources: RefCell::new(Vec::new()),
            depth: Cell::new(0),
        }
    }

    /// The isolate's own runtime, on this thread.
    pub fn runtime(&self) -> &Runtime {
        self.runtime.get_or_init(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("cannot start an isolate's runtime: {}", e))
        })
    }

    /// The ordinal of the next `http2/listen` made by this isolate.
    pub fn next_listen(&self) -> usize {
        let n = self.listens.get();
        self.listens.set(n + 1);
        n
    }

    /// Serves the requests of `server` that arrive on `jobs` with
    /// `handler`, which is pinned (kept alive) until the server has
    /// drained.
    pub fn add_handler(
        &self,
        vm: &mut Vm,
        server: Arc<Server>,
        jobs: Receiver<Exchange>,
        handler: Value,
    ) {
        vm.pinned.push(handler);
        self.sources.borrow_mut().push(Rc::new(Source {
            server,
            jobs: RefCell::new(jobs),
            handler,
        }));
    }

    /// Whether this isolate still serves a server that has not drained.
    pub fn serves(&self) -> bool {
        self.sources.borrow().iter().any(|s| !s.server.is_drained())
    }

    /// Forgets servers that have drained and unpins their handlers.
    fn prune(&self, vm: &mut Vm) {
        let mut sources = self.sources.borrow_mut();
        sources.retain(|s| {
            if s.server.is_drained() && s.jobs.borrow().is_empty() {
                if let Some(i) = vm.pinned.iter().rposition(|v| v.same(s.handler)) {
                    vm.pinned.remove(i);
                }
                false
            } else {
                true
            }
        });
    }
}

thread_local! {
    static ISOLATES: RefCell<Vec<(Weak<AtomicBool>, Rc<Isolate>)>> = const { RefCell::new(Vec::new()) };
}

fn find(vm: &Vm) -> Option<Rc<Isolate>> {
    ISOLATES.with(|table| {
        let mut table = table.borrow_mut();
        // Entries of VMs that are gone are dropped here.
        table.retain(|(flag, _)| flag.strong_count() > 0);
        table
            .iter()
            .find(|(flag, _)| {
                flag.upgrade()
                    .is_some_and(|f| Arc::ptr_eq(&f, &vm.interrupt))
            })
            .map(|(_, iso)| iso.clone())
    })
}

fn register(vm: &Vm, isolate: Isolate) -> Rc<Isolate> {
    let iso = Rc::new(isolate);
    ISOLATES.with(|table| {
        table
            .borrow_mut()
            .push((Arc::downgrade(&vm.interrupt), iso.clone()))
    });
    iso
}

/// The isolate of `vm` (a main isolate unless it was made a worker).
pub fn current(vm: &Vm) -> Rc<Isolate> {
    find(vm).unwrap_or_else(|| register(vm, Isolate::new(0, false)))
}

/// Makes `vm` worker isolate number `index`.
pub fn install_worker(vm: &Vm, index: usize) -> Rc<Isolate> {
    register(vm, Isolate::new(index, true))
}

/// Why `wait_until` returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Woke {
    /// The condition holds.
    Done,
    TimedOut,
    /// A handler asked the program to end (`exit`/`shutdown`).
    Exit,
    /// The VM's interrupt flag is set (Ctrl-C in the REPL). It is left set.
    Interrupted,
}

/// What one turn of the isolate's runtime found. (Made once per batch of
/// requests and moved once: boxing the request would cost more.)
#[allow(clippy::large_enum_variant)]
enum Next {
    Woke(Woke),
    Job(Rc<Source>, Exchange),
}

/// Blocks until `done(waker)` is true, serving handler requests meanwhile.
/// `done` registers the waker with whatever it waits for. Returns early on
/// the deadline, on an interrupt, or (when `stop_on_exit`) when the VM was
/// asked to exit.
pub fn wait_until(
    vm: &mut Vm,
    deadline: Option<Instant>,
    stop_on_exit: bool,
    done: &mut dyn FnMut(&Waker) -> bool,
) -> Woke {
    let iso = current(vm);
    loop {
        iso.prune(vm);
        match next(vm, &iso, deadline, stop_on_exit, done) {
            Next::Woke(woke) => return woke,
            Next::Job(source, exchange) => serve_batch(vm, &iso, &source, exchange, stop_on_exit),
        }
    }
}

/// Drives the isolate's runtime (its connections, timers) until the wait
/// is over or a handler request is ready. Lisp code never runs in here.
fn next(
    vm: &Vm,
    iso: &Isolate,
    deadline: Option<Instant>,
    stop_on_exit: bool,
    done: &mut dyn FnMut(&Waker) -> bool,
) -> Next {
    let serving: Vec<Rc<Source>> = if iso.depth.get() < MAX_NESTING {
        iso.sources.borrow().clone()
    } else {
        Vec::new()
    };
    let deadline = deadline.map(tokio::time::Instant::from_std);
    // Connections answered while handlers ran are woken from inside the
    // runtime, where a wake only queues their task.
    let mut answered = crate::http::take_deferred_wakes();
    let next = iso.runtime().block_on(async {
        let mut timer = None;
        poll_fn(|cx| {
            for waker in answered.drain(..) {
                waker.wake();
            }
            if done(cx.waker()) {
                return Poll::Ready(Next::Woke(Woke::Done));
            }
            if stop_on_exit && vm.exit_code.is_some() {
                return Poll::Ready(Next::Woke(Woke::Exit));
            }
            if vm.interrupt.load(Ordering::Relaxed) {
                return Poll::Ready(Next::Woke(Woke::Interrupted));
            }
            for source in &serving {
                if let Poll::Ready(Some(exchange)) = source.jobs.borrow_mut().poll_recv(cx) {
                    return Poll::Ready(Next::Job(source.clone(), exchange));
                }
            }
            // Nothing yet: sleep until the deadline or the next look at
            // the interrupt flag, whichever is first.
            let now = tokio::time::Instant::now();
            if deadline.is_some_and(|d| d <= now) {
                return Poll::Ready(Next::Woke(Woke::TimedOut));
            }
            let wake_at = (now + POLL_INTERVAL).min(deadline.unwrap_or(now + POLL_INTERVAL));
            let sleep = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(wake_at)));
            if sleep.as_mut().poll(cx).is_ready() {
                // Re-armed by the next poll.
                timer = None;
                cx.waker().wake_by_ref();
            }
            Poll::Pending
        })
        .await
    });
    if matches!(next, Next::Job(..)) {
        crate::http::defer_wakes();
    }
    next
}

/// Serves `first`, then a few requests already queued behind it before
/// the wait condition is looked at again.
fn serve_batch(vm: &mut Vm, iso: &Isolate, source: &Source, first: Exchange, stop_on_exit: bool) {
    serve(vm, iso, source.handler, first);
    for _ in 1..BATCH {
        if stop_on_exit && vm.exit_code.is_some() {
            break;
        }
        let Ok(next) = source.jobs.borrow_mut().try_recv() else {
            break;
        };
        serve(vm, iso, source.handler, next);
    }
}

fn serve(vm: &mut Vm, iso: &Isolate, handler: Value, exchange: Exchange) {
    iso.depth.set(iso.depth.get() + 1);
    crate::builtins::http::serve_exchange(vm, handler, exchange);
    iso.depth.set(iso.depth.get() - 1);
    if iso.worker {
        // A worker's `shutdown` ends the whole program, gracefully.
        if let Some(code) = vm.exit_code.take() {
            super::process::request_exit(code);
        }
    }
}
