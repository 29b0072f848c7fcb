//! Interpreter isolates: each evaluator thread (the main one, and the
//! workers that serve HTTP handlers on other cores) has an `Isolate` that
//! knows how to block until something happens — a future settles, a
//! handler request arrives, a deadline passes — and runs handler requests
//! while it waits. `await` and the serving loop are both built on
//! `wait_until`.
//!
//! An isolate belongs to one VM; it is found through the VM's interrupt
//! flag (unique and stable per VM) in a thread-local table, so several
//! interpreters on one thread never share handlers.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Wake, Waker};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender};

use crate::http::server::Server;
use crate::http::Exchange;
use crate::value::Value;
use crate::vm::Vm;

/// How often a blocked isolate looks at its interrupt flag (Ctrl-C in the
/// REPL sets it without waking anyone).
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How deeply handlers may nest: a handler that awaits keeps serving other
/// requests while it waits, up to this depth.
const MAX_NESTING: usize = 8;

/// How long an idle isolate keeps looking for requests before it sleeps.
const SPIN: Duration = Duration::from_micros(50);

/// Queued requests served in a row before the wait condition is checked.
const BATCH: usize = 64;

/// A server whose requests this isolate serves with its own handler.
struct Source {
    server: Arc<Server>,
    jobs: Receiver<Exchange>,
    handler: Value,
}

/// Wakes a blocked isolate: one pending signal is enough.
struct WakeSignal(Sender<()>);

impl Wake for WakeSignal {
    fn wake(self: Arc<Self>) {
        let _ = self.0.try_send(());
    }
    fn wake_by_ref(self: &Arc<Self>) {
        let _ = self.0.try_send(());
    }
}

pub struct Isolate {
    /// 0 for the isolate that runs the program first, 1… for workers.
    pub index: usize,
    /// Workers attach their handlers to the main isolate's servers instead
    /// of listening again.
    pub worker: bool,
    listens: Cell<usize>,
    wake_rx: Receiver<()>,
    waker: Waker,
    sources: RefCell<Vec<Source>>,
    depth: Cell<usize>,
}

impl Isolate {
    fn new(index: usize, worker: bool) -> Isolate {
        let (tx, rx) = crossbeam_channel::bounded(1);
        Isolate {
            index,
            worker,
            listens: Cell::new(0),
            wake_rx: rx,
            waker: Waker::from(Arc::new(WakeSignal(tx))),
            sources: RefCell::new(Vec::new()),
            depth: Cell::new(0),
        }
    }

    /// Wakes this isolate when passed to a `Completion`.
    pub fn waker(&self) -> &Waker {
        &self.waker
    }

    /// The ordinal of the next `http2/listen` made by this isolate.
    pub fn next_listen(&self) -> usize {
        let n = self.listens.get();
        self.listens.set(n + 1);
        n
    }

    /// Serves `server`'s handler requests with `handler`, which is pinned
    /// (kept alive) until the server has drained.
    pub fn add_handler(
        &self,
        vm: &mut Vm,
        server: Arc<Server>,
        jobs: Receiver<Exchange>,
        handler: Value,
    ) {
        vm.pinned.push(handler);
        self.sources.borrow_mut().push(Source {
            server,
            jobs,
            handler,
        });
        // A waiting isolate must rebuild its wait set.
        self.waker.wake_by_ref();
    }

    /// Whether this isolate still serves a server that has not drained.
    pub fn serves(&self) -> bool {
        self.sources.borrow().iter().any(|s| !s.server.is_drained())
    }

    /// Forgets servers that have drained and unpins their handlers.
    fn prune(&self, vm: &mut Vm) {
        let mut sources = self.sources.borrow_mut();
        sources.retain(|s| {
            if s.server.is_drained() && s.jobs.is_empty() {
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
        if done(&iso.waker) {
            return Woke::Done;
        }
        if stop_on_exit && vm.exit_code.is_some() {
            return Woke::Exit;
        }
        if vm.interrupt.load(Ordering::Relaxed) {
            return Woke::Interrupted;
        }
        let now = Instant::now();
        let mut timeout = POLL_INTERVAL;
        if let Some(d) = deadline {
            if now >= d {
                return Woke::TimedOut;
            }
            timeout = timeout.min(d - now);
        }
        iso.prune(vm);
        let serving: Vec<(Receiver<Exchange>, Value)> = if iso.depth.get() < MAX_NESTING {
            iso.sources
                .borrow()
                .iter()
                .map(|s| (s.jobs.clone(), s.handler))
                .collect()
        } else {
            Vec::new()
        };
        if serving.is_empty() {
            let _ = iso.wake_rx.recv_timeout(timeout);
            continue;
        }
        // Busy servers hand requests over faster than a sleeping thread
        // wakes: look again for a short while before blocking.
        if let Some((i, exchange)) = spin_for_job(&iso, &serving) {
            let (jobs, handler) = &serving[i];
            serve_batch(vm, &iso, jobs, *handler, exchange, stop_on_exit);
            continue;
        }
        let mut select = Select::new();
        select.recv(&iso.wake_rx);
        for (jobs, _) in &serving {
            select.recv(jobs);
        }
        let Ok(op) = select.select_timeout(timeout) else {
            continue;
        };
        let i = op.index();
        if i == 0 {
            let _ = op.recv(&iso.wake_rx);
            continue;
        }
        let (jobs, handler) = &serving[i - 1];
        if let Ok(exchange) = op.recv(jobs) {
            serve_batch(vm, &iso, jobs, *handler, exchange, stop_on_exit);
        }
    }
}

/// Serves `first`, then a few requests already queued behind it before
/// the wait condition is looked at again.
fn serve_batch(
    vm: &mut Vm,
    iso: &Isolate,
    jobs: &Receiver<Exchange>,
    handler: Value,
    first: Exchange,
    stop_on_exit: bool,
) {
    serve(vm, iso, handler, first);
    for _ in 1..BATCH {
        if stop_on_exit && vm.exit_code.is_some() {
            break;
        }
        let Ok(next) = jobs.try_recv() else { break };
        serve(vm, iso, handler, next);
    }
}

/// Polls the queues (and the wake signal) for up to `SPIN` before the
/// isolate blocks. Returns a request if one arrived.
fn spin_for_job(
    iso: &Isolate,
    serving: &[(Receiver<Exchange>, Value)],
) -> Option<(usize, Exchange)> {
    let started = Instant::now();
    loop {
        for (i, (jobs, _)) in serving.iter().enumerate() {
            if let Ok(exchange) = jobs.try_recv() {
                return Some((i, exchange));
            }
        }
        if !iso.wake_rx.is_empty() || started.elapsed() >= SPIN {
            return None;
        }
        std::thread::yield_now();
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
