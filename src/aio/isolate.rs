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
//! Each handler request runs as an evaluation of its own on a native stack
//! of its own (a stackful coroutine, `corosensei`). A handler that awaits
//! a future that has not settled is suspended there whole — its native
//! frames, and the VM's value and frame stacks, which the VM parks — and
//! the isolate goes on with other requests; it is resumed when its future
//! settles or its timeout passes, in whatever order that happens. Only
//! the isolate's loop (`wait_until`, outside every handler) drives the
//! runtime and resumes handlers, so at most one evaluation of a VM runs at
//! a time and the VM is only ever used by the thread that made it.
//!
//! An isolate belongs to one VM; it is found through the VM's interrupt
//! flag (unique and stable per VM) in a thread-local table, so several
//! interpreters on one thread never share handlers.

use std::cell::{Cell, OnceCell, RefCell};
use std::future::{poll_fn, Future};
use std::mem::ManuallyDrop;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Poll, Wake, Waker};
use std::time::{Duration, Instant};

use corosensei::stack::DefaultStack;
use corosensei::{Coroutine, CoroutineResult, Yielder};
use tokio::runtime::Runtime;
use tokio::sync::mpsc::Receiver;

use super::Completion;
use crate::http::server::Server;
use crate::http::Exchange;
use crate::value::Value;
use crate::vm::Vm;

/// How often a blocked isolate looks at its interrupt flag (Ctrl-C in the
/// REPL sets it without waking anyone) and at conditions that have no
/// waker.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Native stack of one handler's evaluation: as large as a worker
/// isolate's thread's, so that the depth limit, not the native stack, is
/// what a deeply nested handler meets first, as in the program itself.
/// Reserved, not committed: only the pages a handler touches use memory.
const HANDLER_STACK: usize = 1 << 30;

/// Stacks of finished handlers kept for the next ones: as many as were
/// ever in use at once, up to the most handlers that can wait. Making and
/// unmapping a stack per request (mmap, mprotect, munmap and the TLB
/// shootdowns of the unmap, under the process's memory-map lock shared by
/// every isolate) cost more than the handlers themselves under load.
const STACK_POOL: usize = MAX_SUSPENDED + 1;

/// Handlers one isolate keeps suspended at `await`; while this many wait,
/// new requests stay queued (and past the queue limit get 503).
pub const MAX_SUSPENDED: usize = 1024;

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
    /// Handlers suspended at `await`, by id (`None`: a free id).
    suspended: RefCell<Vec<Option<Handler>>>,
    free_ids: RefCell<Vec<usize>>,
    waiting: Cell<usize>,
    /// Ids of suspended handlers whose future may have settled.
    ready: Arc<Ready>,
    /// The running handler's way back to the isolate's loop; `None` while
    /// the loop itself (or the program, outside any handler) runs.
    yielder: Cell<Option<NonNull<HandlerYielder>>>,
    stacks: RefCell<Vec<DefaultStack>>,
}

impl Isolate {
    fn new(index: usize, worker: bool) -> Isolate {
        Isolate {
            index,
            worker,
            listens: Cell::new(0),
            runtime: OnceCell::new(),
            sources: RefCell::new(Vec::new()),
            suspended: RefCell::new(Vec::new()),
            free_ids: RefCell::new(Vec::new()),
            waiting: Cell::new(0),
            ready: Arc::new(Ready::default()),
            yielder: Cell::new(None),
            stacks: RefCell::new(Vec::new()),
        }
    }

    /// The isolate's own runtime, on this thread.
    pub fn runtime(&self) -> &Runtime {
        self.runtime.get_or_init(|| {
            super::serving_runtime()
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

    /// Whether this isolate still serves a server that has not drained,
    /// or has handlers that have not finished.
    pub fn serves(&self) -> bool {
        self.waiting.get() > 0 || self.sources.borrow().iter().any(|s| !s.server.is_drained())
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
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Woke {
    /// The condition holds.
    Done,
    TimedOut,
    /// A handler asked the program to end (`exit`/`shutdown`).
    Exit,
    /// The VM's interrupt flag is set (Ctrl-C in the REPL). It is left set.
    Interrupted,
}

// ---- handlers as coroutines ------------------------------------------------

/// What a handler is resumed with: the VM (see `Handler::run`) and why its
/// wait ended.
struct Resume {
    vm: *mut Vm,
    woke: Woke,
}

/// What a handler suspends with: the VM it was using, and what it waits
/// for.
struct Suspend {
    vm: *mut Vm,
    completion: Arc<Completion>,
    deadline: Option<Instant>,
}

type HandlerYielder = Yielder<Resume, Suspend>;

/// One handler request's evaluation.
struct Handler {
    /// Never dropped while suspended: dropping would unwind the handler's
    /// frames after its VM may be gone. A handler still suspended when its
    /// isolate ends keeps its stack until the process ends.
    body: ManuallyDrop<Coroutine<Resume, Suspend, (), DefaultStack>>,
    /// Where the VM parks this evaluation's stacks once it has been
    /// suspended or started beside a running one.
    slot: Option<usize>,
    yielder: Option<NonNull<HandlerYielder>>,
    /// What it waits for, while suspended.
    completion: Option<Arc<Completion>>,
    deadline: Option<Instant>,
}

/// Ids of suspended handlers woken by their futures (on any thread), and
/// the waker of the isolate's loop to tell.
#[derive(Default)]
struct Ready {
    ids: Mutex<Vec<usize>>,
    waker: Mutex<Option<Waker>>,
}

impl Ready {
    fn push(&self, id: usize) {
        lock(&self.ids).push(id);
        if let Some(w) = lock(&self.waker).as_ref() {
            w.wake_by_ref();
        }
    }

    fn register(&self, waker: &Waker) {
        let mut slot = lock(&self.waker);
        if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing is left half-made by a panic while these are held.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Wakes the isolate for one suspended handler.
struct HandlerWake {
    id: usize,
    ready: Arc<Ready>,
}

impl Wake for HandlerWake {
    fn wake(self: Arc<Self>) {
        self.ready.push(self.id);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.push(self.id);
    }
}

/// Waits until `completion` settles or `deadline` passes. Inside a handler
/// the handler is suspended and the isolate serves others meanwhile;
/// elsewhere (the program itself) this is `wait_until`, which serves
/// handlers while it waits.
pub fn wait_for(vm: &mut Vm, completion: &Arc<Completion>, deadline: Option<Instant>) -> Woke {
    let iso = current(vm);
    let Some(yielder) = iso.yielder.get() else {
        return wait_until(vm, deadline, true, &mut |waker| {
            completion.poll_result(waker).is_some()
        });
    };
    let suspend = Suspend {
        vm: vm as *mut Vm,
        completion: completion.clone(),
        deadline,
    };
    // SAFETY: `iso.yielder` holds the yielder of the handler running on
    // this thread right now (`Handler::run` sets it on entry and on every
    // resume, and takes it back whenever control returns to the loop), and
    // a yielder lives on its coroutine's stack for the coroutine's whole
    // life; so it points to a live `Yielder`, and this call is made from
    // inside that coroutine, the one place `suspend` may be called from.
    let resumed = unsafe { yielder.as_ref() }.suspend(suspend);
    resumed.woke
}

impl Handler {
    /// Starts a handler for `exchange` on a stack of `iso`'s.
    fn start(iso: &Rc<Isolate>, handler: Value, exchange: Exchange) -> Option<Handler> {
        let stack = match iso.stacks.borrow_mut().pop() {
            Some(stack) => stack,
            None => match DefaultStack::new(HANDLER_STACK) {
                Ok(stack) => stack,
                Err(e) => {
                    // The exchange dropped unanswered: the client gets 500.
                    super::log(format_args!("valk: cannot make a handler's stack: {}", e));
                    return None;
                }
            },
        };
        let own = iso.clone();
        let body = Coroutine::with_stack(stack, move |yielder: &HandlerYielder, first: Resume| {
            own.yielder.set(Some(NonNull::from(yielder)));
            // SAFETY: see `Handler::run`: the pointer is the loop's `&mut Vm`,
            // handed over for as long as this coroutine runs.
            let vm = unsafe { &mut *first.vm };
            vm.set_native_stack(HANDLER_STACK);
            crate::builtins::http::serve_exchange(vm, handler, exchange);
        });
        Some(Handler {
            body: ManuallyDrop::new(body),
            slot: None,
            yielder: None,
            completion: None,
            deadline: None,
        })
    }

    /// Runs the handler until it finishes (`None`) or suspends (`Some`).
    /// Its evaluation is the VM's running one meanwhile. A handler started
    /// while the VM is idle (a program that only serves) runs on the VM's
    /// own stacks and is moved to a slot only if it suspends; otherwise the
    /// evaluation it interrupts is parked and switched back to afterwards,
    /// panic or not.
    fn run(mut self, vm: &mut Vm, iso: &Isolate, woke: Woke) -> Option<Handler> {
        let direct = match self.slot {
            None if vm.is_idle() => Some(vm.thread_state()),
            _ => {
                let slot = *self.slot.get_or_insert_with(|| vm.new_evaluation());
                vm.switch_evaluation(slot);
                None
            }
        };
        iso.yielder.set(self.yielder);
        // The VM goes into the coroutine as a pointer and comes back out
        // with the `Suspend` it yields. The coroutine's frames keep the
        // `&mut Vm` made from it while suspended, but use it only while
        // running; the handler and the loop run in turn on this one thread,
        // never at the same time. Every function that holds a `&mut Vm`
        // across a switch passes it into the call that switches (the op
        // loop to the builtin, `await` to `wait_for`, `wait_for` into
        // `suspend`, this function into `resume`), so each treats the VM as
        // changed by that call, as after any call that takes it.
        let ptr: *mut Vm = vm;
        let result = catch_unwind(AssertUnwindSafe(|| {
            self.body.resume(Resume { vm: ptr, woke })
        }));
        self.yielder = iso.yielder.take();
        let suspended = matches!(result, Ok(CoroutineResult::Yield(_)));
        match (direct, self.slot) {
            (Some(outer), _) => {
                if suspended {
                    let slot = vm.new_evaluation();
                    vm.switch_evaluation(slot);
                    self.slot = Some(slot);
                } else if result.is_err() {
                    // Whatever the panic left behind.
                    vm.recover();
                }
                vm.set_thread_state(outer);
            }
            (None, Some(slot)) => {
                vm.switch_evaluation(slot);
                if !suspended {
                    vm.end_evaluation(slot);
                }
            }
            (None, None) => unreachable!("a handler not run directly has a slot"),
        }
        match result {
            Ok(CoroutineResult::Yield(suspend)) => {
                debug_assert!(std::ptr::eq(suspend.vm, ptr));
                self.completion = Some(suspend.completion);
                self.deadline = suspend.deadline;
                Some(self)
            }
            Ok(CoroutineResult::Return(())) => {
                let stack = ManuallyDrop::into_inner(self.body).into_stack();
                let mut pool = iso.stacks.borrow_mut();
                if pool.len() < STACK_POOL {
                    pool.push(stack);
                }
                None
            }
            Err(panic) => {
                // The coroutine has finished by unwinding.
                drop(ManuallyDrop::into_inner(self.body));
                resume_unwind(panic)
            }
        }
    }
}

impl Isolate {
    /// Keeps a suspended handler until its future settles.
    fn suspend(&self, handler: Handler) {
        let id = match self.free_ids.borrow_mut().pop() {
            Some(id) => id,
            None => {
                let mut all = self.suspended.borrow_mut();
                all.push(None);
                all.len() - 1
            }
        };
        let waker = Waker::from(Arc::new(HandlerWake {
            id,
            ready: self.ready.clone(),
        }));
        if let Some(c) = &handler.completion {
            if c.poll_result(&waker).is_some() {
                self.ready.push(id);
            }
        }
        self.suspended.borrow_mut()[id] = Some(handler);
        self.waiting.set(self.waiting.get() + 1);
    }

    fn take(&self, id: usize) -> Option<Handler> {
        let handler = self.suspended.borrow_mut().get_mut(id)?.take()?;
        self.free_ids.borrow_mut().push(id);
        self.waiting.set(self.waiting.get() - 1);
        Some(handler)
    }
}

/// What one turn of the isolate's runtime found. (Made once per batch of
/// requests and moved once: boxing the request would cost more.)
#[allow(clippy::large_enum_variant)]
enum Next {
    Woke(Woke),
    Job(Rc<Source>, Exchange),
    /// Suspended handlers to resume, by id, and why.
    Resume(Vec<(usize, Woke)>),
}

/// Blocks until `done(waker)` is true, serving handler requests meanwhile.
/// `done` registers the waker with whatever it waits for. Returns early on
/// the deadline, on an interrupt, or (when `stop_on_exit`) when the VM was
/// asked to exit. Called outside every handler (inside one, `wait_for`
/// suspends the handler instead).
pub fn wait_until(
    vm: &mut Vm,
    deadline: Option<Instant>,
    stop_on_exit: bool,
    done: &mut dyn FnMut(&Waker) -> bool,
) -> Woke {
    let iso = current(vm);
    debug_assert!(
        iso.yielder.get().is_none(),
        "the isolate's loop runs outside handlers"
    );
    loop {
        iso.prune(vm);
        match next(vm, &iso, deadline, stop_on_exit, done) {
            Next::Woke(woke) => return woke,
            Next::Job(source, exchange) => serve_batch(vm, &iso, &source, exchange, stop_on_exit),
            Next::Resume(list) => {
                for (id, woke) in list {
                    if let Some(handler) = iso.take(id) {
                        resume(vm, &iso, handler, woke);
                    }
                }
            }
        }
    }
}

/// Drives the isolate's runtime (its connections, timers) until the wait
/// is over, a handler request is ready or suspended handlers may go on.
/// Lisp code never runs in here.
fn next(
    vm: &Vm,
    iso: &Isolate,
    deadline: Option<Instant>,
    stop_on_exit: bool,
    done: &mut dyn FnMut(&Waker) -> bool,
) -> Next {
    let serving: Vec<Rc<Source>> = if iso.waiting.get() < MAX_SUSPENDED {
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
            if let Some(list) = resumable(iso, cx.waker()) {
                return Poll::Ready(Next::Resume(list));
            }
            for source in &serving {
                if let Poll::Ready(Some(exchange)) = source.jobs.borrow_mut().poll_recv(cx) {
                    return Poll::Ready(Next::Job(source.clone(), exchange));
                }
            }
            // Nothing yet: sleep until the first deadline or the next look
            // at the interrupt flag, whichever is first.
            let now = tokio::time::Instant::now();
            if deadline.is_some_and(|d| d <= now) {
                return Poll::Ready(Next::Woke(Woke::TimedOut));
            }
            let first = first_deadline(iso).map(tokio::time::Instant::from_std);
            let wake_at = [deadline, first]
                .into_iter()
                .flatten()
                .fold(now + POLL_INTERVAL, |a, b| a.min(b));
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
    if matches!(next, Next::Job(..) | Next::Resume(..)) {
        crate::http::defer_wakes();
    }
    next
}

/// Suspended handlers that may go on: those whose future settled or whose
/// timeout passed. An interrupt or an exit is not theirs: it ends what the
/// program itself runs, while a handler that waits goes on until its
/// future settles, so a graceful stop lets it answer.
fn resumable(iso: &Isolate, waker: &Waker) -> Option<Vec<(usize, Woke)>> {
    if iso.waiting.get() == 0 {
        return None;
    }
    iso.ready.register(waker);
    let all = iso.suspended.borrow();
    let mut list: Vec<(usize, Woke)> = std::mem::take(&mut *lock(&iso.ready.ids))
        .into_iter()
        .filter(|&id| {
            all.get(id)
                .and_then(Option::as_ref)
                .and_then(|h| h.completion.as_ref())
                .is_some_and(|c| c.is_settled())
        })
        .map(|id| (id, Woke::Done))
        .collect();
    let now = Instant::now();
    for (id, handler) in all.iter().enumerate() {
        let late = handler
            .as_ref()
            .and_then(|h| h.deadline)
            .is_some_and(|d| d <= now);
        if late && !list.iter().any(|&(other, _)| other == id) {
            list.push((id, Woke::TimedOut));
        }
    }
    (!list.is_empty()).then_some(list)
}

/// The earliest timeout of a suspended handler.
fn first_deadline(iso: &Isolate) -> Option<Instant> {
    if iso.waiting.get() == 0 {
        return None;
    }
    iso.suspended
        .borrow()
        .iter()
        .flatten()
        .filter_map(|h| h.deadline)
        .min()
}

/// Serves `first`, then a few requests already queued behind it before
/// the wait condition is looked at again.
fn serve_batch(
    vm: &mut Vm,
    iso: &Rc<Isolate>,
    source: &Source,
    first: Exchange,
    stop_on_exit: bool,
) {
    serve(vm, iso, source.handler, first);
    for _ in 1..BATCH {
        if stop_on_exit && vm.exit_code.is_some() || iso.waiting.get() >= MAX_SUSPENDED {
            break;
        }
        let Ok(next) = source.jobs.borrow_mut().try_recv() else {
            break;
        };
        serve(vm, iso, source.handler, next);
    }
}

fn serve(vm: &mut Vm, iso: &Rc<Isolate>, handler: Value, exchange: Exchange) {
    if let Some(h) = Handler::start(iso, handler, exchange) {
        resume(vm, iso, h, Woke::Done);
    }
}

/// Runs a handler on until it finishes or suspends again.
fn resume(vm: &mut Vm, iso: &Isolate, handler: Handler, woke: Woke) {
    if let Some(suspended) = handler.run(vm, iso, woke) {
        iso.suspend(suspended);
    }
    if iso.worker {
        // A worker's `shutdown` ends the whole program, gracefully.
        if let Some(code) = vm.exit_code.take() {
            super::process::request_exit(code);
        }
    }
}
