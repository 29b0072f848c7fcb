//! The async system behind `aio`: one tokio runtime on its own threads
//! (made on first use), futures as `Completion`s settled there, the
//! interpreter isolates that run HTTP handlers (isolate.rs) and the process
//! lifetime of a program that serves (process.rs).
//!
//! The evaluator is single-threaded: nothing here touches a Lisp value off
//! its thread. Tasks produce plain data; the bindings (builtins/http.rs)
//! turn it into values inside `await`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::runtime::Runtime;

pub mod future;
pub mod isolate;
pub mod process;

pub use future::{Completion, Payload, Settled};
pub use process::{finish, run_until_idle, set_program, ProgramPart};

/// Writes one line to standard error. Unlike `eprintln!` it never panics:
/// a server whose standard error is gone (a closed log pipe) must keep
/// serving, log handler errors into the void, and still stop on a signal.
pub fn log(line: std::fmt::Arguments) {
    use std::io::Write;
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(line);
    let _ = err.write_all(b"\n");
}

/// Whether `aio` is bound at startup: unless `VALK_DISABLE_AIO` is non-empty.
pub fn enabled() -> bool {
    std::env::var_os("VALK_DISABLE_AIO").is_none_or(|v| v.is_empty())
}

/// The number of tokio threads: `VALK_AIO_THREADS`, else one per core.
pub fn thread_count() -> usize {
    std::env::var("VALK_AIO_THREADS")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(cores)
}

/// A current-thread runtime for a thread that serves connections (an
/// isolate, a demo lane).
///
/// Before the thread parks in `epoll_wait` for want of work, it yields its
/// core once (`sched_yield`). With nothing else runnable on that core the
/// call returns at once; with something runnable (a client, a proxy or
/// another server thread sharing the core) that runs first, and the
/// requests it sends are often there when the thread looks again, so it
/// does not sleep only to be woken a few microseconds later. Measured on
/// two cores shared with h2load (`docs/PERFORMANCE.md`, "HTTP/2 load",
/// 2026-11-29): at `-c 10` the two-isolate Lisp handler and the two demo
/// lanes served more requests per second with less CPU per request;
/// nothing changed where the threads never idle or always wait for the
/// next request.
pub fn serving_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .on_thread_park(std::thread::yield_now)
        .enable_all()
        .build()
}

/// Cores this process may use.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The runtime, started on first use.
pub fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(thread_count())
            .thread_name("valk-aio")
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot start the async runtime: {}", e))
    })
}

/// Runs `task` on the runtime; the returned completion settles with its
/// result (or with an error if the task dies).
pub fn spawn<F>(task: F) -> Arc<Completion>
where
    F: Future<Output = Settled> + Send + 'static,
{
    let completion = Completion::new();
    let guard = future::SettleGuard(completion.clone());
    runtime().spawn(async move {
        let result = task.await;
        guard.0.settle(result);
    });
    completion
}

/// A future that settles with `()` after `ms` milliseconds.
pub fn sleep(ms: u64) -> Arc<Completion> {
    spawn(async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(Payload::Unit)
    })
}

/// Settles with the list of all results once every one has settled, or
/// with the first failure as soon as it happens.
pub fn all(parts: Vec<Arc<Completion>>) -> Arc<Completion> {
    if parts.is_empty() {
        return Completion::settled(Ok(Payload::List(Vec::new())));
    }
    let results: Vec<Option<Payload>> = parts.iter().map(|_| None).collect();
    spawn(AllOf { parts, results })
}

/// Polls every part; done when all have values or one has failed.
struct AllOf {
    parts: Vec<Arc<Completion>>,
    results: Vec<Option<Payload>>,
}

impl Future for AllOf {
    type Output = Settled;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Settled> {
        let this = &mut *self;
        let mut pending = false;
        for (part, slot) in this.parts.iter().zip(this.results.iter_mut()) {
            if slot.is_some() {
                continue;
            }
            match part.poll_result(cx.waker()) {
                Some(Ok(v)) => *slot = Some(v),
                Some(Err(e)) => return Poll::Ready(Err(e)),
                None => pending = true,
            }
        }
        if pending {
            return Poll::Pending;
        }
        let values = this.results.iter_mut().filter_map(Option::take).collect();
        Poll::Ready(Ok(Payload::List(values)))
    }
}

/// Settles like the first of `parts` to settle.
pub fn race(parts: Vec<Arc<Completion>>) -> Arc<Completion> {
    if parts.is_empty() {
        return Completion::settled(Err("aio/race of no futures never settles".into()));
    }
    let winner = Completion::new();
    for part in parts {
        if let Some(r) = part.result() {
            winner.settle(r);
            return winner;
        }
        let w = winner.clone();
        runtime().spawn(async move {
            let r = part.wait().await;
            w.settle(r);
        });
    }
    winner
}
