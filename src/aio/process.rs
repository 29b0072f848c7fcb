//! Process lifetime of a program that serves: after its files ran, the
//! main isolate keeps serving (and worker isolates start on the other
//! cores) while any server listens, until `shutdown`/`exit`, SIGINT or
//! SIGTERM. Every ending is graceful: servers send GOAWAY, in-flight
//! requests finish, and after the grace period the rest are cut.
//!
//! Worker isolates run the same program the way OpenResty workers load the
//! same code: each is a full interpreter on its own thread whose
//! `http2/listen` calls attach handlers to the main isolate's servers
//! (matched by call order) instead of binding again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Instant;

use super::isolate::{self, Woke};
use crate::http::server;
use crate::http::Limits;
use crate::value::Value;
use crate::vm::Mode;
use crate::Interpreter;

/// One piece of the program as given on the command line.
#[derive(Clone, Debug)]
pub enum ProgramPart {
    File(String),
    Expr(String),
    /// The program's command-line arguments (the global `args`).
    Args(Vec<String>),
}

static PROGRAM: Mutex<Vec<ProgramPart>> = Mutex::new(Vec::new());
/// An exit code asked for by a worker's `shutdown` or set by a signal.
static EXIT: Mutex<Option<i32>> = Mutex::new(None);

/// Native stack of a worker isolate (only touched pages use memory).
const WORKER_STACK: usize = 1 << 30;

/// Records what the program is, so worker isolates can load it too.
pub fn set_program(parts: Vec<ProgramPart>) {
    *PROGRAM.lock().unwrap_or_else(|p| p.into_inner()) = parts;
}

/// Ends the program with `code` once servers have drained (the first
/// request wins).
pub fn request_exit(code: i32) {
    {
        let mut exit = EXIT.lock().unwrap_or_else(|p| p.into_inner());
        if exit.is_none() {
            *exit = Some(code);
        }
    }
    server::stop_all();
}

fn requested_exit() -> Option<i32> {
    *EXIT.lock().unwrap_or_else(|p| p.into_inner())
}

/// Installs SIGINT/SIGTERM handling once a script starts a server: the
/// first signal stops every server gracefully, a second ends the process.
///
/// `main_interrupt` is the main isolate's interrupt flag, raised by the first
/// signal so that a program still running ends (`Vm::signalled_exit`).
pub fn install_signal_handlers(main_interrupt: Arc<AtomicBool>) {
    static ONCE: Once = Once::new();
    ONCE.call_once(move || {
        use tokio::signal::unix::{signal, SignalKind};
        let _enter = super::runtime().enter();
        let (Ok(mut interrupt), Ok(mut terminate)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            super::log(format_args!(
                "valk: warning: cannot install signal handlers"
            ));
            return;
        };
        super::runtime().spawn(async move {
            let mut received = 0;
            loop {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
                received += 1;
                if received == 1 {
                    super::log(format_args!(
                        "valk: stopping servers gracefully (signal again to quit at once)"
                    ));
                    crate::vm::SIGNALLED.store(true, Ordering::Relaxed);
                    request_exit(0);
                    main_interrupt.store(true, Ordering::Relaxed);
                } else {
                    std::process::exit(130);
                }
            }
        });
    });
}

/// Serves while any server listens, then returns the exit status: the code
/// given to `shutdown`/`exit` (by any isolate), else 0. Call it after the
/// program's files ran.
pub fn run_until_idle(interp: &mut Interpreter) -> i32 {
    if let Some(code) = interp.vm.exit_code {
        return finish(interp, code);
    }
    if !server::any_running() {
        return requested_exit().unwrap_or(0);
    }
    start_workers();
    loop {
        match isolate::wait_until(&mut interp.vm, None, true, &mut server::all_drained) {
            Woke::Done => return requested_exit().unwrap_or(0),
            Woke::Exit => {
                let code = interp.vm.exit_code.unwrap_or(0);
                return finish(interp, code);
            }
            Woke::Interrupted => interp.vm.interrupt.store(false, Ordering::Relaxed),
            Woke::TimedOut => {}
        }
    }
}

/// Ends the program with `code`: stops servers gracefully and serves their
/// in-flight requests until they drain or the grace period ends.
pub fn finish(interp: &mut Interpreter, code: i32) -> i32 {
    if !server::any_running() {
        return code;
    }
    request_exit(code);
    // The grace deadline is enforced by the servers; this one is a backstop.
    let deadline = Instant::now() + Limits::get().grace * 2;
    isolate::wait_until(
        &mut interp.vm,
        Some(deadline),
        false,
        &mut server::all_drained,
    );
    code
}

/// How many isolates serve Lisp handlers: `VALK_ISOLATES`, else one per core.
fn isolate_count() -> usize {
    std::env::var("VALK_ISOLATES")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(super::cores)
}

fn start_workers() {
    static STARTED: AtomicBool = AtomicBool::new(false);
    if !server::any_isolate_server() || STARTED.swap(true, Ordering::AcqRel) {
        return;
    }
    let program = PROGRAM.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if program.is_empty() {
        return;
    }
    for index in 1..isolate_count() {
        let program = program.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("valk-isolate-{}", index))
            .stack_size(WORKER_STACK)
            .spawn(move || run_worker(index, &program));
        if let Err(e) = spawned {
            super::log(format_args!("valk: cannot start isolate {}: {}", index, e));
            break;
        }
    }
}

/// A worker isolate: loads the program quietly, then serves the handlers
/// it registered until their servers drain.
fn run_worker(index: usize, program: &[ProgramPart]) {
    let mut interp = Interpreter::new(Mode::Script);
    interp.vm.set_native_stack(WORKER_STACK);
    let iso = isolate::install_worker(&interp.vm, index);
    let vm = &mut interp.vm;
    let id = vm.syms.intern("aio/isolate");
    vm.set_global(id, Value::Num(index as i64));
    // The program's output was already written once, by the main isolate.
    let discard_sym = vm.syms.intern("aio/discard");
    let discard = vm.global(discard_sym);
    let mut saved = Vec::new();
    for name in ["print", "printf"] {
        let sym = vm.syms.intern(name);
        saved.push((sym, vm.global(sym)));
        if let Some(d) = discard {
            vm.set_global(sym, d);
        }
    }
    for part in program {
        let result = match part {
            ProgramPart::File(path) => interp.run_file(path),
            ProgramPart::Expr(text) => interp.eval_str(text, "<eval>"),
            ProgramPart::Args(args) => {
                interp.set_args(args);
                Ok(Value::Unit)
            }
        };
        if interp.vm.exit_code.take().is_some() {
            break;
        }
        if let Err(rendered) = result {
            super::log(format_args!("valk: isolate {}: {}", index, rendered));
            break;
        }
    }
    let vm = &mut interp.vm;
    for (sym, value) in saved {
        let untouched = match (vm.global(sym), discard) {
            (Some(now), Some(d)) => now.same(d),
            _ => false,
        };
        if let (true, Some(v)) = (untouched, value) {
            vm.set_global(sym, v);
        }
    }
    while iso.serves() {
        match isolate::wait_until(vm, None, false, &mut |_| !iso.serves()) {
            Woke::Interrupted => vm.interrupt.store(false, Ordering::Relaxed),
            _ => continue,
        }
    }
}
