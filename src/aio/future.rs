//! Completions: the thread-safe half of a Valkyria future. A task on the
//! tokio runtime settles a `Completion` with plain Rust data (`Payload`);
//! the evaluator that awaits it turns that data into Lisp values (see
//! builtins/http.rs). A `Completion` is also a Rust `Future`, so `aio/all`
//! and `aio/race` combine them on tokio threads.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// A settled future's value, as plain data that any thread may hold.
#[derive(Clone)]
pub enum Payload {
    /// `()`.
    Unit,
    Number(i64),
    Text(String),
    /// A host object (server, client, response) made into a Ref on await.
    Host(Arc<dyn Any + Send + Sync>),
    /// A Q-expression of payloads.
    List(Vec<Payload>),
}

/// A value, or the message of the Error that awaiting gives.
pub type Settled = Result<Payload, String>;

enum State {
    Pending(Vec<Waker>),
    Settled(Settled),
}

/// The shared state of one future: pending, then settled exactly once.
pub struct Completion {
    state: Mutex<State>,
}

impl Completion {
    pub fn new() -> Arc<Completion> {
        Arc::new(Completion {
            state: Mutex::new(State::Pending(Vec::new())),
        })
    }

    /// A completion that is already settled.
    pub fn settled(result: Settled) -> Arc<Completion> {
        Arc::new(Completion {
            state: Mutex::new(State::Settled(result)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state half-made.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Settles with `result` unless already settled (the first result
    /// wins); wakes everyone waiting. Returns whether this call settled it.
    pub fn settle(&self, result: Settled) -> bool {
        let wakers = {
            let mut state = self.lock();
            match &mut *state {
                State::Settled(_) => return false,
                State::Pending(wakers) => {
                    let wakers = std::mem::take(wakers);
                    *state = State::Settled(result);
                    wakers
                }
            }
        };
        for w in wakers {
            w.wake();
        }
        true
    }

    pub fn is_settled(&self) -> bool {
        matches!(*self.lock(), State::Settled(_))
    }

    /// The result if settled.
    pub fn result(&self) -> Option<Settled> {
        match &*self.lock() {
            State::Settled(r) => Some(r.clone()),
            State::Pending(_) => None,
        }
    }

    /// The result if settled; otherwise `waker` is woken when it settles.
    pub fn poll_result(&self, waker: &Waker) -> Option<Settled> {
        let mut state = self.lock();
        match &mut *state {
            State::Settled(r) => Some(r.clone()),
            State::Pending(wakers) => {
                if !wakers.iter().any(|w| w.will_wake(waker)) {
                    wakers.push(waker.clone());
                }
                None
            }
        }
    }

    /// A Rust future that resolves to the result.
    pub fn wait(self: &Arc<Self>) -> Wait {
        Wait(self.clone())
    }
}

/// Waits for a `Completion` on the tokio runtime.
pub struct Wait(Arc<Completion>);

impl Future for Wait {
    type Output = Settled;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Settled> {
        match self.0.poll_result(cx.waker()) {
            Some(r) => Poll::Ready(r),
            None => Poll::Pending,
        }
    }
}

/// Settles a completion with an error if the task meant to settle it ends
/// without doing so (it panicked or the runtime dropped it).
pub struct SettleGuard(pub Arc<Completion>);

impl Drop for SettleGuard {
    fn drop(&mut self) {
        self.0
            .settle(Err("internal error: the task ended without a result".into()));
    }
}
