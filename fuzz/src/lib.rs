//! What the fuzz targets run, kept out of the targets so that a crash
//! found by libFuzzer can be replayed by a plain test or a debugger.
//!
//! * `read`: the reader on arbitrary bytes (lossily decoded as UTF-8), the
//!   REPL's completeness check, and a print/read round trip: printing what
//!   was read and reading that back must print the same text.
//! * `eval`: reader + evaluator in a sandboxed interpreter (no `exit`, no
//!   `load`, no network, `shutdown` only returns) with a step budget, a heap limit and a
//!   native stack of its own, like the `valk` evaluator thread. A call can
//!   do much work (`range`, `join`, printing), so a deadline also
//!   interrupts the evaluation the way Ctrl-C does in the REPL.
//! * `eval_gc`: the same with the collector running after every 4 KB
//!   allocated, to find values not rooted across a collection.
//! * `server_request`: the HTTP/2 server's request path on arbitrary bytes
//!   after a client's connection preface (http_server.rs).

pub mod http_server;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use valkyria::error::Span;
use valkyria::heap::Heap;
use valkyria::reader;
use valkyria::symbol::Symbols;
use valkyria::value::{Printer, Value};
use valkyria::{Interpreter, Limits};

/// Calls an input may make before `step limit exceeded`.
pub const STEPS: u64 = 1_000_000;
/// Live heap an input may hold before `out of memory`.
pub const HEAP_BYTES: usize = 64 << 20;
/// Native stack of the thread that evaluates an input.
pub const STACK_BYTES: usize = 256 << 20;
/// Wall-clock time after which an input is interrupted.
pub const DEADLINE: Duration = Duration::from_secs(2);

/// The limits every evaluated input runs under.
pub fn limits() -> Limits {
    Limits {
        steps: Some(STEPS),
        heap_bytes: Some(HEAP_BYTES),
        ..Limits::default()
    }
}

fn print_forms(heap: &Heap, syms: &Symbols, forms: &[(Value, Span)]) -> String {
    let mut p = Printer {
        heap,
        syms,
        builtin_names: &[],
        out: String::new(),
        max_len: usize::MAX,
    };
    for (i, (v, _)) in forms.iter().enumerate() {
        if i > 0 {
            p.out.push('\n');
        }
        p.write(*v, true);
    }
    p.out
}

/// The reader target.
pub fn read(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = reader::is_complete(&text);
    let mut heap = Heap::new(1 << 20);
    let mut syms = Symbols::default();
    let Ok(forms) = reader::read_all(&mut heap, &mut syms, &text, 1) else {
        return;
    };
    let printed = print_forms(&heap, &syms, &forms);
    let again = match reader::read_all(&mut heap, &mut syms, &printed, 1) {
        Ok(f) => f,
        Err(e) => panic!("printed form does not read back: {e}\n{printed}"),
    };
    let reprinted = print_forms(&heap, &syms, &again);
    assert_eq!(printed, reprinted, "print/read round trip changed the text");
}

/// How often the collector runs during an evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Collection {
    /// As in `valk`: after 16 MB allocated or the live heap doubling.
    Normal,
    /// At the first safe point after every 4 KB allocated: finds values
    /// that are not rooted across a collection.
    Stress,
}

/// Evaluates `src` in a fresh sandboxed interpreter on the calling thread;
/// returns the readable result or the rendered Error. Setting `interrupt`
/// stops the evaluation at its next call.
pub fn eval_here(
    src: &str,
    collection: Collection,
    interrupt: Arc<AtomicBool>,
) -> Result<String, String> {
    let mut interp = Interpreter::sandboxed(limits());
    interp.vm.set_native_stack(STACK_BYTES);
    interp.vm.interrupt = interrupt;
    if collection == Collection::Stress {
        interp.vm.heap.set_stress(4 << 10);
    }
    let result = interp.eval_str(src, "<fuzz>").map(|v| interp.vm.show(v));
    assert!(
        interp.exit_requested().is_none(),
        "the sandbox let the program request an exit"
    );
    result
}

/// The evaluator targets: run the input on a thread with its own stack.
pub fn eval(data: &[u8], collection: Collection) {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let src = src.to_string();
    let interrupt = Arc::new(AtomicBool::new(false));
    let flag = interrupt.clone();
    let (done, finished) = mpsc::channel();
    let worker = std::thread::Builder::new()
        .name("evaluator".into())
        .stack_size(STACK_BYTES)
        .spawn(move || {
            let _ = eval_here(&src, collection, flag);
            let _ = done.send(());
        })
        .expect("cannot start the evaluator thread");
    if finished.recv_timeout(DEADLINE).is_err() {
        interrupt.store(true, Ordering::Relaxed);
    }
    if worker.join().is_err() {
        // libFuzzer's panic hook aborts first; this is for plain replays.
        panic!("the evaluator panicked");
    }
}
