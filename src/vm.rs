//! Execution: runs compiled code, makes calls and tail calls, resolves
//! names (scope chain, globals, then dynamic fallback through the callers'
//! scopes), raises errors with call traces, and decides when the collector
//! runs (only at call entry, where every live value is rooted).
//!
//! Roots are: the globals, the value stack (call arguments in flight), the
//! frame stack (scopes of active calls), the protos being run, the scopes
//! code is being run in, and the host's pinned values.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use smallvec::SmallVec;

use crate::compile::{Code, Compiler, Inline, PrimOp, Proto, SpecialForms};
use crate::error::{ErrorData, Span};
use crate::heap::{Env, Gc, Heap, Lambda, Object};
use crate::lower::{Branch, EntryTest, Guard, Op, Ops, SelfArg, Shape, TAIL_SELF_ARGS};
use crate::symbol::{Sym, Symbols};
use crate::value::{equal, Printer, Value};

/// A builtin's implementation. It receives its arguments and the scope it
/// was called from, and returns a value or asks the VM to continue with a
/// tail call or tail evaluation.
pub type BuiltinFn = fn(&mut Vm, &[Value], Env) -> Result<Flow, Gc>;

/// A builtin with its signature and documentation.
pub struct Builtin {
    pub name: &'static str,
    pub signature: &'static str,
    pub doc: &'static str,
    pub func: BuiltinFn,
}

/// What evaluation in tail position produces.
pub enum Flow {
    Value(Value),
    /// Call the function at `stack[base]` with the values above it.
    Call {
        base: usize,
        env: Env,
        span: Span,
        name: Option<Sym>,
    },
    /// Run compiled code in `env`.
    Eval {
        proto: Rc<Proto>,
        env: Env,
    },
}

/// One call in progress: its current frame, and whether a tail call
/// replaced the first one.
#[derive(Clone, Copy, Default)]
struct Activation {
    frame: Option<Gc>,
    replaced: bool,
}

/// A frame's call site when it is the `Call` op before its caller's pc
/// (`Vm::call_site`): a call from the op loop's fast path stores this
/// rather than loading the op's span and name. Never a real place (no file
/// has this index, and its line is unknown).
const AT_CALLER: Span = Span {
    file: u32::MAX,
    line: 0,
    col: 0,
};

/// A frame of the explicit frame stack: code being run, where, and in
/// which scope. Lisp calls have an activation; top-level code and code
/// run by `eval` from a builtin do not.
struct Frame {
    /// The code run, or `None` for a call's frame that runs the code of
    /// the lambda at `base` (see `code_of`): a call then needs no count
    /// of the proto's references, whose increment and decrement, a
    /// read-modify-write of one word by every call and return of a
    /// recursion, wait on each other.
    code: Option<Rc<Proto>>,
    /// Where that code is: compared with the code that was running when
    /// the frame is returned to, never followed.
    code_at: *const Proto,
    pc: usize,
    env: Env,
    /// Height of the value stack below this frame's values (for a call,
    /// where its function was).
    base: usize,
    /// Where the call's formals sit on the value stack.
    fp: usize,
    /// Above the formals: where the frame's operands start.
    top: usize,
    act: Option<Activation>,
    /// Call site and function name, for call traces; `AT_CALLER`: those
    /// of the `Call` op the caller frame stopped at.
    span: Span,
    name: Option<Sym>,
    /// For a call whose scope is not made yet (`act.frame` is `None`):
    /// the lambda's scope, and who called.
    lambda_env: Env,
    caller: Caller,
    /// For a frame with no scope yet that was entered with exactly its
    /// lambda's formals (no bound or rest arguments): that lambda. A tail
    /// call of the same lambda with as many arguments reuses the frame
    /// without looking the lambda up.
    self_fn: Option<Gc>,
}

/// `builtin_args!(args = given)` binds `args` to the arguments of a
/// builtin call, copied out of the value stack (the builtin may push on
/// it): up to four a value at a time into an array — a copy of a variable
/// length was a call of memcpy per builtin call — and more into a
/// `SmallVec`. A macro, so that the array and the vector are locals of the
/// caller that `args` borrows.
macro_rules! builtin_args {
    ($args:ident = $given:expr) => {
        let given: &[Value] = $given;
        let mut few = [Value::Unit; 4];
        let many: SmallVec<[Value; 4]>;
        let $args: &[Value] = match *given {
            [] => &[],
            [a] => {
                few[0] = a;
                &few[..1]
            }
            [a, b] => {
                few[..2].copy_from_slice(&[a, b]);
                &few[..2]
            }
            [a, b, c] => {
                few[..3].copy_from_slice(&[a, b, c]);
                &few[..3]
            }
            [a, b, c, d] => {
                few = [a, b, c, d];
                &few
            }
            _ => {
                many = SmallVec::from_slice(given);
                &many
            }
        };
    };
}

/// Pushes an operand in a fast path of the op loop, with no test of the
/// stack's capacity (a `Vec::push` tests it and keeps its growth path in
/// line, at every push of every op).
///
/// Only `Vm::run` calls it, for pushes that are part of an op's effect as
/// `lower::depth` counts it, so the room is always there:
/// - a frame reserves room for `Ops::max_stack` values above the stack's
///   height (at least its slots' end, `top`) when `run` starts running it
///   at the top of its frame loop, and when the op loop enters a call of
///   the same code; a frame the op loop returns to reserved its room when
///   it started, and the stack's capacity never shrinks (nothing but
///   `truncate`, `pop`, `drain` and `clear` takes values off it);
/// - at each op the stack holds exactly `top` plus the depth the check
///   found there (`Vm::assert_depth` asserts it at every op in debug
///   builds), and no op pushes past the largest depth, `max_stack`.
#[inline(always)]
fn push_operand(stack: &mut Vec<Value>, v: Value) {
    let len = stack.len();
    debug_assert!(
        len < stack.capacity(),
        "operand pushed past the room reserved"
    );
    // SAFETY: `len < capacity` (see above: the frame's reservation covers
    // every push its ops make), so the slot at `len` is allocated, unused
    // and properly aligned for a `Value`. Writing a whole `Value` there
    // and then counting it with `set_len(len + 1)` leaves every slot below
    // the new length initialized, which is what `set_len` requires; the
    // written `Value` was moved in, so nothing is dropped twice or leaked.
    unsafe {
        stack.as_mut_ptr().add(len).write(v);
        stack.set_len(len + 1);
    }
}

/// `frame!(vm, f)`: frame `f` of `Vm::run`'s op loop, the frame the loop
/// is running, without a bounds test (`frame!(mut vm, f)` to change it).
/// A macro rather than methods, so that it borrows only `vm.calls`.
///
/// `f < vm.calls.len()` whenever the loop reads its frame: the loop sets
/// `f` to the top frame's index, or to the index of a frame it has just
/// pushed, or, after it popped frame `f` in a return, to `f - 1`; and while
/// the loop runs frame `f`, no frame at or below `f` is popped but by the
/// loop itself: a helper it calls may push frames and replace the top one
/// (a tail call), code run by a builtin or by a nested loop pops only
/// frames it pushed, and an Error that unwinds frame `f` ends the loop (it
/// returns). Debug builds assert it.
macro_rules! frame {
    ($vm:ident, $f:expr) => {
        frame!(@at $vm, $f, get_unchecked)
    };
    (mut $vm:ident, $f:expr) => {
        frame!(@at $vm, $f, get_unchecked_mut)
    };
    (@at $vm:ident, $f:expr, $get:ident) => {
        (*{
            let f: usize = $f;
            debug_assert!(f < $vm.calls.len(), "frame {f} of {}", $vm.calls.len());
            // SAFETY: `f < calls.len()` (see above), so the element is in
            // bounds and initialized; the reference lives only for the
            // expression it is used in (and, from `get_unchecked_mut`, is
            // the only one to the element, as it borrows `calls` mutably).
            unsafe { $vm.calls.$get(f) }
        })
    };
}

/// Moves the last `values.len() - by` values of `values` to its start
/// (`by > 0`), one 8-byte word at a time.
///
/// The arguments of a self tail call were stored a moment ago a word at a
/// time (a Number is written as its tag word and its payload word); a
/// 16-byte load of a whole value across those two stores cannot be
/// forwarded from them and waits for both to reach the cache. Word loads
/// can, so each value is copied as its two words, with volatile accesses
/// so that they are not merged back into one 16-byte move.
#[inline(always)]
fn move_values_down(values: &mut [Value], by: usize) {
    debug_assert!(by > 0 && by <= values.len());
    const WORDS: usize = std::mem::size_of::<Value>() / 8;
    let words = values.as_mut_ptr().cast::<std::mem::MaybeUninit<u64>>();
    let n = (values.len() - by) * WORDS;
    let by = by * WORDS;
    for i in 0..n {
        // SAFETY: `values` is one live, exclusively borrowed slice of
        // `values.len() * WORDS` words (a `Value` is 16 bytes, 8-aligned:
        // asserted next to its definition), and `i + by < values.len() *
        // WORDS` and `i < i + by`, so both accesses are in bounds and
        // aligned. Words are read and written as `MaybeUninit<u64>`, which
        // may hold any bytes (a `Value`'s padding included). Copying in
        // increasing order with the destination below the source moves
        // each word before anything overwrites it, so afterwards the first
        // `len - by` values hold exactly the bytes of the last ones, each a
        // valid `Value`; nothing reads a value while it is half copied.
        unsafe {
            let w = words.add(i + by).read_volatile();
            words.add(i).write_volatile(w);
        }
    }
}

#[cold]
#[inline(never)]
fn grow_frames(calls: &mut Vec<Frame>) {
    calls.reserve(calls.len().max(16));
}

/// What a call in tail position leads to.
enum Next {
    /// The running frame returns this value.
    Return(Value),
    /// Continue with the frame now on top (replaced or pushed).
    Enter,
}

/// A comparison `op` of two Numbers (`None`: not a comparison).
#[inline(always)]
fn compare_numbers(op: PrimOp, a: i64, b: i64) -> Option<bool> {
    Some(match op {
        PrimOp::Lt => a < b,
        PrimOp::Gt => a > b,
        PrimOp::Le => a <= b,
        PrimOp::Ge => a >= b,
        PrimOp::Eq => a == b,
        PrimOp::Ne => a != b,
        _ => return None,
    })
}

/// `op` on two Numbers; `None` on overflow.
#[inline(always)]
fn prim_numbers(op: PrimOp, a: i64, b: i64) -> Option<Value> {
    match op {
        PrimOp::Add => a.checked_add(b).map(Value::Num),
        PrimOp::Sub => a.checked_sub(b).map(Value::Num),
        PrimOp::Mul => a.checked_mul(b).map(Value::Num),
        // Division by zero is left to the builtin, for its Error.
        PrimOp::Div if b != 0 => a.checked_div(b).map(Value::Num),
        PrimOp::Rem if b != 0 => a.checked_rem(b).map(Value::Num),
        PrimOp::Div | PrimOp::Rem => None,
        PrimOp::Lt => Some(Value::bool(a < b)),
        PrimOp::Gt => Some(Value::bool(a > b)),
        PrimOp::Le => Some(Value::bool(a <= b)),
        PrimOp::Ge => Some(Value::bool(a >= b)),
        PrimOp::Eq => Some(Value::bool(a == b)),
        PrimOp::Ne => Some(Value::bool(a != b)),
    }
}

/// Builtins that use the scope they are called from (to evaluate code in
/// it, bind in it, capture it, or call functions from it). Every other
/// builtin gets no scope, so a call that makes none needs no heap scope.
const ENV_BUILTINS: &[&str] = &[
    "=", "\\", "def", "do", "fun", "if", "let", "select", "case", "eval", "try", "penv", "repeat",
];

/// Who made a call, for dynamic fallback: a scope, or a frame whose
/// scope has not been made yet (`CallerIs`). One word — the frame's index,
/// or the scope's handle with the top bit set — so that a frame push
/// stores it whole: as a two-field enum it was built in two stores and
/// copied into the frame with one 16-byte load, which cannot be forwarded
/// from them and waited on every call.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Caller(u64);

/// What a `Caller` is.
#[derive(Clone, Copy)]
enum CallerIs {
    Env(Env),
    Frame(usize),
}

impl Caller {
    const SCOPE: u64 = 1 << 63;

    fn env(env: Env) -> Caller {
        Caller(Caller::SCOPE | env.map_or(0, |g| u64::from(g.to_raw())))
    }

    /// Frame `f` (an index of the frame stack, far below 2^63).
    fn frame(f: usize) -> Caller {
        debug_assert!((f as u64) < Caller::SCOPE);
        Caller(f as u64)
    }

    fn get(self) -> CallerIs {
        if self.0 & Caller::SCOPE != 0 {
            CallerIs::Env(Gc::from_raw(self.0 as u32))
        } else {
            CallerIs::Frame(self.0 as usize)
        }
    }
}

/// How `shutdown` and `exit` behave.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    Script,
    Repl,
}

/// Longest text a value may print as (`print`, `show`, `str`).
pub const PRINT_LIMIT: usize = 256 << 20;

/// Set when SIGINT or SIGTERM asked a script that serves to end: its
/// servers stop gracefully, and the main isolate's interrupt flag is raised
/// so that a program still running ends as `(shutdown 0)` would
/// (`Vm::signalled_exit`).
pub static SIGNALLED: AtomicBool = AtomicBool::new(false);

/// Default limit on nested (non-tail) calls: LANGUAGE.md asks for at
/// least 1,000,000, so that the prelude's `map` (one call per element)
/// takes a list of a million; the rest is room for the calls around it
/// and the function it maps.
pub const DEFAULT_MAX_DEPTH: usize = 1_100_000;

pub struct Vm {
    pub heap: Heap,
    pub syms: Symbols,
    globals: Vec<Option<Value>>,
    pub builtins: Vec<Builtin>,
    builtin_names: Vec<&'static str>,
    /// Per builtin: whether it uses the scope it is called from.
    builtin_env: Vec<bool>,
    eval_builtin: Option<u32>,
    pub forms: SpecialForms,
    /// Call arguments in flight (a root).
    pub stack: Vec<Value>,
    /// The frame stack of running code (a root: scopes and protos).
    calls: Vec<Frame>,
    /// Scopes of active calls and `let`s (a root).
    frames: Vec<Gc>,
    /// Code being run that no lambda holds (a root).
    proto_roots: Vec<Rc<Proto>>,
    /// Scopes code is being run in that no frame may hold, such as the one
    /// the `let` builtin makes (a root).
    env_roots: Vec<Gc>,
    /// Values the host keeps alive (a root).
    pub pinned: Vec<Value>,
    compile_cache: HashMap<Gc, Rc<Proto>>,
    depth: usize,
    pub max_depth: usize,
    /// Bit `i`: the inlined form named by symbol `i` still holds its builtin.
    intact_forms: [bool; 128],
    /// `intact_forms` of each `PrimOp`'s name, by `PrimOp`.
    /// Bit `op as usize` set when the name of that `PrimOp` no longer
    /// holds its builtin (see `prim_holds`).
    prims_broken: u16,
    /// Bit `i`: the inlined form named by symbol `i` has been bound with
    /// `=` in a local scope. Code compiled before that binding (a body
    /// that binds the name after its compilation) cannot see it, so from
    /// then on the form is called like any other function everywhere.
    shadowed_forms: u128,
    /// Calls left before the interrupt flag and the step budget are looked
    /// at again (checking them on every call costs more than the call).
    fuel: u32,
    /// `VALK_MAX_HEAP_MB`: live heap beyond this is an Error.
    pub max_heap: Option<usize>,
    /// Native stack: the address near its base and how much may be used.
    stack_base: usize,
    stack_budget: usize,
    /// Call site of the builtin being run: where its errors are raised.
    pub span: Span,
    pub files: Vec<String>,
    pub interrupt: Arc<AtomicBool>,
    /// Calls left before evaluation stops with `step limit exceeded`
    /// (`None`: unbounded). Counted where the interrupt flag is checked;
    /// set with `set_step_limit`.
    steps_left: Option<u64>,
    /// Set by the host for untrusted code: `exit` and `load` are Errors.
    pub sandboxed: bool,
    pub mode: Mode,
    /// Set by `exit`/`shutdown`: the process should end with this code.
    pub exit_code: Option<i32>,
    /// An Error that `try` must not catch (an interrupt or an exit) while
    /// it unwinds to the top level.
    uncatchable: Option<Gc>,
    pub start: Instant,
    /// State of the standard library: builtin families, modules, docs.
    pub library: crate::builtins::Library,
    /// Evaluations that are not running: handlers suspended at `await`,
    /// and the evaluation a running handler interrupted (a root each).
    parked: Vec<Exec>,
    /// Slots of `parked` free for reuse.
    free_parked: Vec<usize>,
}

/// The state of one evaluation in progress, apart from the VM it runs on:
/// its value and frame stacks, its depth and native stack, where its
/// current builtin was called. An isolate runs each HTTP handler as an
/// evaluation of its own, on a native stack of its own, so a handler that
/// waits at `await` is set aside whole while others run (aio/isolate.rs).
#[derive(Default)]
struct Exec {
    stack: Vec<Value>,
    calls: Vec<Frame>,
    frames: Vec<Gc>,
    proto_roots: Vec<Rc<Proto>>,
    env_roots: Vec<Gc>,
    depth: usize,
    stack_base: usize,
    stack_budget: usize,
    span: Span,
    uncatchable: Option<Gc>,
}

/// Marks what one evaluation holds: its value stack, scopes, the scopes
/// and constants of its frames and the constants of code it runs.
fn mark_evaluation(
    heap: &mut Heap,
    stack: &[Value],
    calls: &[Frame],
    frames: &[Gc],
    env_roots: &[Gc],
    proto_roots: &[Rc<Proto>],
) {
    for &v in stack {
        heap.mark_value(v);
    }
    for &g in frames.iter().chain(env_roots) {
        heap.mark(g);
    }
    for frame in calls {
        for g in [frame.env, frame.lambda_env].into_iter().flatten() {
            heap.mark(g);
        }
        if let CallerIs::Env(Some(g)) = frame.caller.get() {
            heap.mark(g);
        }
        // The lambda whose code a frame runs without holding it is
        // marked as the value at its base.
        for v in frame.code.iter().flat_map(|code| code.constants.iter()) {
            heap.mark_value(*v);
        }
    }
    // Protos are not objects: their constants are marked directly.
    for v in proto_roots.iter().flat_map(|p| p.constants.iter()) {
        heap.mark_value(*v);
    }
}

#[inline(always)]
fn stack_address() -> usize {
    let marker = 0u8;
    std::hint::black_box(&marker) as *const u8 as usize
}

/// Names interned and globals bound by a start (builtins and prelude:
/// about 500), with room to spare.
const START_NAMES: usize = 1024;

/// Builtins registered by a start (about 200).
const START_BUILTINS: usize = 256;

/// The most formals a partially applied Leaf body is run on without
/// moving its arguments (see `Vm::enter_call_slow`).
const BOUND_LEAF_FORMALS: usize = 8;

/// A size in megabytes from environment variable `name`, in bytes: `None`
/// when unset, not a whole number or 0; one too large for the address
/// space is the largest size there is (no limit), never a wrapped one.
fn env_megabytes(name: &str) -> Option<usize> {
    std::env::var(name)
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .map(|n| n.saturating_mul(1 << 20))
}

impl Vm {
    /// A VM with every builtin bound but no prelude loaded.
    pub fn bare() -> Vm {
        let mut vm = Vm {
            heap: Heap::new(env_megabytes("VALK_GC_THRESHOLD_MB").unwrap_or(16 << 20)),
            // Room for what every start makes (the builtins, the prelude's
            // names): growing a table by doubling copies it into new pages
            // each time, a visible part of a short program's run.
            syms: Symbols::with_capacity(START_NAMES),
            globals: Vec::with_capacity(START_NAMES),
            builtins: Vec::with_capacity(START_BUILTINS),
            builtin_names: Vec::with_capacity(START_BUILTINS),
            builtin_env: Vec::with_capacity(START_BUILTINS),
            eval_builtin: None,
            forms: SpecialForms::default(),
            stack: Vec::with_capacity(1024),
            calls: Vec::with_capacity(256),
            frames: Vec::with_capacity(1024),
            proto_roots: Vec::new(),
            env_roots: Vec::new(),
            pinned: Vec::new(),
            compile_cache: HashMap::new(),
            depth: 0,
            max_depth: DEFAULT_MAX_DEPTH,
            intact_forms: [false; 128],
            prims_broken: (1 << PrimOp::ALL.len()) - 1,
            shadowed_forms: 0,
            fuel: 1,
            max_heap: env_megabytes("VALK_MAX_HEAP_MB"),
            stack_base: stack_address(),
            stack_budget: 1 << 20,
            span: Span::NONE,
            files: vec!["<unknown>".to_string()],
            interrupt: Arc::new(AtomicBool::new(false)),
            steps_left: None,
            sandboxed: false,
            mode: Mode::Script,
            exit_code: None,
            uncatchable: None,
            start: Instant::now(),
            library: Default::default(),
            parked: Vec::new(),
            free_parked: Vec::new(),
        };
        crate::builtins::register_all(&mut vm);
        let form = |vm: &mut Vm, name: &str| {
            let sym = vm.syms.intern(name);
            let id = vm
                .builtins
                .iter()
                .position(|b| b.name == name)
                .expect("special form registered") as u32;
            (sym, id)
        };
        vm.forms = SpecialForms {
            if_: form(&mut vm, "if"),
            do_: form(&mut vm, "do"),
            lambda: form(&mut vm, "\\"),
            def: form(&mut vm, "def"),
            assign: form(&mut vm, "="),
            select: form(&mut vm, "select"),
            case: form(&mut vm, "case"),
            let_: form(&mut vm, "let"),
            eval: form(&mut vm, "eval"),
            head: form(&mut vm, "head"),
            prims: Vec::new(),
            ampersand: vm.syms.intern("&"),
            inline_mask: 0,
        };
        for (op, name) in PrimOp::ALL {
            let (sym, id) = form(&mut vm, name);
            vm.forms.prims.push((sym, id, op));
        }
        let f = &vm.forms;
        let mut inlined = vec![
            f.if_.0, f.do_.0, f.lambda.0, f.def.0, f.assign.0, f.select.0, f.case.0, f.let_.0,
        ];
        inlined.extend(f.prims.iter().map(|p| p.0));
        for sym in inlined.iter().copied() {
            assert!(sym.0 < 128, "inlined forms are interned first");
            vm.forms.inline_mask |= 1u128 << sym.0;
        }
        for sym in inlined {
            vm.update_intact(sym);
        }
        vm
    }

    /// Tells the VM how much native stack this thread has, so deep
    /// recursion becomes an Error before the stack runs out. Call it near
    /// the base of the thread that will run the VM.
    pub fn set_native_stack(&mut self, bytes: usize) {
        self.stack_base = stack_address();
        // Keep a margin for builtins, printing and error rendering.
        self.stack_budget = bytes.saturating_sub((bytes / 8).max(256 << 10));
    }

    #[inline]
    fn stack_exhausted(&self) -> bool {
        self.stack_base.saturating_sub(stack_address()) > self.stack_budget
    }

    /// Limits the calls that may still be made (`None`: unbounded). Every
    /// call from now on counts: the fuel left from unbounded running (up
    /// to 1024 calls between checks) is dropped.
    pub fn set_step_limit(&mut self, steps: Option<u64>) {
        self.steps_left = steps;
        self.fuel = 1;
    }

    /// Restores a usable state after an evaluation was abandoned midway
    /// (an internal panic caught by the REPL). Definitions are kept.
    pub fn recover(&mut self) {
        self.stack.clear();
        self.calls.clear();
        self.frames.clear();
        self.proto_roots.clear();
        self.env_roots.clear();
        self.depth = 0;
        self.uncatchable = None;
    }

    // ---- evaluations set aside -----------------------------------------

    /// A slot for a new evaluation, which starts empty when switched to.
    pub fn new_evaluation(&mut self) -> usize {
        match self.free_parked.pop() {
            Some(slot) => slot,
            None => {
                self.parked.push(Exec::default());
                self.parked.len() - 1
            }
        }
    }

    /// Swaps the running evaluation with the one parked in `slot`: the
    /// first call runs the parked one, a second call with the same slot
    /// switches back. Whichever is parked stays a root.
    pub fn switch_evaluation(&mut self, slot: usize) {
        let e = &mut self.parked[slot];
        std::mem::swap(&mut self.stack, &mut e.stack);
        std::mem::swap(&mut self.calls, &mut e.calls);
        std::mem::swap(&mut self.frames, &mut e.frames);
        std::mem::swap(&mut self.proto_roots, &mut e.proto_roots);
        std::mem::swap(&mut self.env_roots, &mut e.env_roots);
        std::mem::swap(&mut self.depth, &mut e.depth);
        std::mem::swap(&mut self.stack_base, &mut e.stack_base);
        std::mem::swap(&mut self.stack_budget, &mut e.stack_budget);
        std::mem::swap(&mut self.span, &mut e.span);
        std::mem::swap(&mut self.uncatchable, &mut e.uncatchable);
    }

    /// Whether nothing is being evaluated: the program ran to its end and
    /// the VM only serves. A handler may then run on the VM's own stacks
    /// (see `thread_state`), and be moved to a slot only if it suspends.
    pub fn is_idle(&self) -> bool {
        self.stack.is_empty()
            && self.calls.is_empty()
            && self.frames.is_empty()
            && self.env_roots.is_empty()
            && self.proto_roots.is_empty()
            && self.uncatchable.is_none()
    }

    /// What an idle VM's evaluation has beyond its empty stacks: its
    /// native stack and the call site of its last builtin. Restored with
    /// `set_thread_state` after a handler ran on the idle VM's stacks.
    pub fn thread_state(&self) -> (usize, usize, Span) {
        (self.stack_base, self.stack_budget, self.span)
    }

    pub fn set_thread_state(&mut self, (base, budget, span): (usize, usize, Span)) {
        self.stack_base = base;
        self.stack_budget = budget;
        self.span = span;
    }

    /// Frees the slot of an evaluation that has ended (it is parked, not
    /// running). Its stacks keep their capacity for the next one.
    pub fn end_evaluation(&mut self, slot: usize) {
        let e = &mut self.parked[slot];
        e.stack.clear();
        e.calls.clear();
        e.frames.clear();
        e.proto_roots.clear();
        e.env_roots.clear();
        e.depth = 0;
        e.span = Span::NONE;
        e.uncatchable = None;
        self.free_parked.push(slot);
    }

    // ---- registration and globals --------------------------------------

    pub fn define_builtin(
        &mut self,
        name: &'static str,
        signature: &'static str,
        doc: &'static str,
        func: BuiltinFn,
    ) {
        let id = self.builtins.len() as u32;
        self.builtins.push(Builtin {
            name,
            signature,
            doc,
            func,
        });
        self.builtin_names.push(name);
        self.builtin_env.push(ENV_BUILTINS.contains(&name));
        if name == "eval" {
            self.eval_builtin = Some(id);
        }
        let sym = self.syms.intern(name);
        self.set_global(sym, Value::Builtin(id));
    }

    pub fn set_global(&mut self, sym: Sym, v: Value) {
        let i = sym.index();
        if i >= self.globals.len() {
            self.globals.resize(i + 1, None);
        }
        self.globals[i] = Some(v);
        if sym.0 < 128 {
            self.update_intact(sym);
        }
    }

    pub fn global(&self, sym: Sym) -> Option<Value> {
        self.globals.get(sym.index()).copied().flatten()
    }

    pub fn global_names(&self) -> Vec<Sym> {
        (0..self.globals.len())
            .filter(|&i| self.globals[i].is_some())
            .map(|i| Sym(i as u32))
            .collect()
    }

    pub fn add_file(&mut self, name: &str) -> u32 {
        self.files.push(name.to_string());
        (self.files.len() - 1) as u32
    }

    // ---- printing -----------------------------------------------------

    /// Readable form (`show`, the REPL) or display form (`print`, `str`).
    pub fn format(&self, v: Value, readable: bool) -> String {
        self.format_limited(v, readable, PRINT_LIMIT)
    }

    /// Like `format`, but printing stops soon after `max_len` bytes (the
    /// text then ends in `...`).
    pub fn format_limited(&self, v: Value, readable: bool, max_len: usize) -> String {
        let mut p = Printer {
            heap: &self.heap,
            syms: &self.syms,
            builtin_names: &self.builtin_names,
            out: String::new(),
            max_len,
        };
        p.write(v, readable);
        p.out
    }

    pub fn show(&self, v: Value) -> String {
        self.format(v, true)
    }

    /// Like `format`, but a value whose text would pass `PRINT_LIMIT` is
    /// an Error rather than a truncated string.
    pub fn format_checked(&mut self, v: Value, readable: bool) -> Result<String, Gc> {
        let text = self.format(v, readable);
        self.check_text(text.len())?;
        Ok(text)
    }

    /// Text of `len` bytes being built for output or a String: past
    /// `PRINT_LIMIT` it is an Error.
    pub fn check_text(&mut self, len: usize) -> Result<(), Gc> {
        if len > PRINT_LIMIT {
            return Err(self.error(format!(
                "value too large to print (over {} MB of text)",
                PRINT_LIMIT >> 20
            )));
        }
        Ok(())
    }

    // ---- errors -------------------------------------------------------

    /// An Error raised at the current builtin's call site.
    pub fn error(&mut self, message: impl Into<String>) -> Gc {
        let span = self.span;
        self.error_at(message, span)
    }

    pub fn error_at(&mut self, message: impl Into<String>, span: Span) -> Gc {
        self.heap
            .alloc(Object::Error(Box::new(ErrorData::new(message, span))))
    }

    pub fn render_error(&self, err: Gc) -> String {
        crate::error::render(&self.files, self.heap.error(err))
    }

    pub fn error_message(&self, err: Gc) -> String {
        self.heap.error(err).message.clone()
    }

    /// Ends the program with `code` once the current evaluation unwinds.
    pub fn request_exit(&mut self, code: i32) {
        self.exit_code = Some(code);
    }

    /// After SIGINT or SIGTERM reached a script that serves (see
    /// `SIGNALLED`): the exit that ends the program with status 0, once
    /// its servers have drained, in place of an interrupt.
    pub fn signalled_exit(&mut self) -> Option<Gc> {
        if !SIGNALLED.load(Ordering::Relaxed) || self.mode != Mode::Script {
            return None;
        }
        self.request_exit(0);
        Some(self.exit_error())
    }

    /// The Error that unwinds the evaluation for an exit.
    pub fn exit_error(&mut self) -> Gc {
        let e = self.error("exit");
        self.uncatchable = Some(e);
        e
    }

    pub fn is_uncatchable(&self, e: Gc) -> bool {
        self.uncatchable == Some(e)
    }

    /// Called by the top level once an error has been handled.
    pub fn clear_uncatchable(&mut self) {
        self.uncatchable = None;
    }

    fn trace(&mut self, err: Gc, name: Option<Sym>, span: Span) -> Gc {
        let name = match name {
            Some(s) => self.syms.name(s).to_string(),
            None => "<lambda>".to_string(),
        };
        self.heap.error_mut(err).push_trace(name, span);
        err
    }

    // ---- collection ---------------------------------------------------

    /// Runs the collector now. Only call where every live value is rooted.
    pub fn collect(&mut self) {
        self.collect_with(true);
    }

    /// Runs a minor collection now, and a slice of the major cycle in
    /// progress (see `Heap::begin_young_collection`). Only call where every
    /// live value is rooted.
    pub fn collect_young(&mut self) {
        self.collect_step(Heap::begin_young_collection);
    }

    /// Runs a collection step: a full collection if `major`, else a minor
    /// collection or a slice of the incremental major cycle, as the heap
    /// decides (see `heap::incremental`).
    fn collect_with(&mut self, major: bool) {
        self.collect_step(|heap| heap.begin_collection(major));
    }

    /// A collection step that `begin` chooses.
    fn collect_step(&mut self, begin: impl FnOnce(&mut Heap)) {
        let started = Instant::now();
        begin(&mut self.heap);
        if self.heap.needs_roots() {
            self.mark_roots();
        }
        if self.heap.may_free() {
            self.compile_cache.clear();
        }
        self.heap.finish_collection(started);
    }

    /// Marks every root: globals, pinned values, and the stacks, frames,
    /// scopes and code of the running evaluation and of every parked one.
    fn mark_roots(&mut self) {
        for i in 0..self.globals.len() {
            if let Some(v) = self.globals[i] {
                self.heap.mark_value(v);
            }
        }
        for i in 0..self.pinned.len() {
            self.heap.mark_value(self.pinned[i]);
        }
        mark_evaluation(
            &mut self.heap,
            &self.stack,
            &self.calls,
            &self.frames,
            &self.env_roots,
            &self.proto_roots,
        );
        for e in self.parked.iter() {
            mark_evaluation(
                &mut self.heap,
                &e.stack,
                &e.calls,
                &e.frames,
                &e.env_roots,
                &e.proto_roots,
            );
        }
    }

    #[inline(always)]
    fn safe_point(&mut self) -> Result<(), Gc> {
        if self.heap.wants_collection() {
            self.collect_at_safe_point()
        } else {
            Ok(())
        }
    }

    #[cold]
    #[inline(never)]
    fn collect_at_safe_point(&mut self) -> Result<(), Gc> {
        self.collect_with(false);
        if let Some(limit) = self.max_heap {
            if self.heap.live_bytes() > limit {
                // Old garbage counts until a full collection frees it.
                self.collect_with(true);
                if self.heap.live_bytes() > limit {
                    return Err(self.out_of_memory());
                }
            }
        }
        Ok(())
    }

    /// Checks that `bytes` more may be allocated under `VALK_MAX_HEAP_MB`,
    /// collecting first if needed. Builtins that build large values call it
    /// before they start.
    pub fn reserve(&mut self, bytes: usize) -> Result<(), Gc> {
        if self.heap.stressed() {
            self.collect_with(false);
        }
        let Some(limit) = self.max_heap else {
            return Ok(());
        };
        if self.heap.live_bytes().saturating_add(bytes) <= limit {
            return Ok(());
        }
        self.collect();
        if self.heap.live_bytes().saturating_add(bytes) <= limit {
            return Ok(());
        }
        Err(self.out_of_memory())
    }

    #[inline(never)]
    fn out_of_memory(&mut self) -> Gc {
        let mb = self.max_heap.unwrap_or(0) >> 20;
        self.error(format!("out of memory (limit {} MB)", mb))
    }

    // ---- compiling ----------------------------------------------------

    /// Compiles a Q-expression (or any value) to be evaluated as code in
    /// `env`, a scope of unknown layout, caching by list identity.
    pub fn compile_eval(&mut self, v: Value, span: Span, env: Env) -> Result<Rc<Proto>, Gc> {
        let shadowed = self.shadowed_forms(env);
        self.compile_eval_shadowed(v, span, shadowed)
    }

    fn compile_eval_shadowed(
        &mut self,
        v: Value,
        span: Span,
        shadowed: SmallVec<[Sym; 2]>,
    ) -> Result<Rc<Proto>, Gc> {
        let key = v.list_cell().filter(|_| shadowed.is_empty());
        if let Some(g) = key {
            if let Some(p) = self.compile_cache.get(&g) {
                return Ok(p.clone());
            }
        }
        let as_sexpr = matches!(v, Value::Q(_) | Value::S(_) | Value::Nil | Value::Unit);
        let result = Compiler::new(&self.heap, &self.syms, &self.forms)
            .compile_toplevel(v, span, as_sexpr, &shadowed);
        match result {
            Ok(p) => {
                if let Some(g) = key {
                    self.compile_cache.insert(g, p.clone());
                }
                Ok(p)
            }
            Err(msg) => Err(self.error_at(msg, span)),
        }
    }

    /// Inlined forms' names bound in `env`'s scope chain: code compiled to
    /// run there must not inline them.
    fn shadowed_forms(&self, env: Env) -> SmallVec<[Sym; 2]> {
        let mut out = SmallVec::new();
        let mut s = env;
        while let Some(g) = s {
            let scope = self.heap.scope(g);
            for (k, _) in scope.vars.iter() {
                if self.forms.is_inlined(*k) && !out.contains(k) {
                    out.push(*k);
                }
            }
            s = scope.parent;
        }
        out
    }

    pub fn compile_lambda(
        &mut self,
        formals: Value,
        body: Value,
        env: Env,
    ) -> Result<Rc<Proto>, Gc> {
        let shadowed = self.shadowed_forms(env);
        match Compiler::compile_lambda(
            &self.heap,
            &self.syms,
            &self.forms,
            formals,
            body,
            &shadowed,
        ) {
            Ok(p) => Ok(p),
            Err(msg) => Err(self.error(msg)),
        }
    }

    pub fn make_lambda(&mut self, proto: Rc<Proto>, env: Env, bound: Vec<Value>) -> Value {
        self.capture(env);
        let lambda = Lambda::new(proto, env, bound.into_boxed_slice());
        Value::Lambda(self.heap.alloc(Object::Lambda(lambda)))
    }

    // ---- running ------------------------------------------------------

    /// Evaluates a value as top-level code in `env`.
    pub fn eval_value(&mut self, v: Value, span: Span, env: Env) -> Result<Value, Gc> {
        // A form read from source: a Q-expression here is data, not code.
        let shadowed = self.shadowed_forms(env);
        let compiled = Compiler::new(&self.heap, &self.syms, &self.forms).compile_toplevel(
            v,
            span,
            matches!(v, Value::S(_) | Value::Unit),
            &shadowed,
        );
        let proto = match compiled {
            Ok(p) => p,
            Err(msg) => return Err(self.error_at(msg, span)),
        };
        self.run_proto(proto, env)
    }

    /// Runs compiled code to completion (tail calls included).
    pub fn run_proto(&mut self, proto: Rc<Proto>, env: Env) -> Result<Value, Gc> {
        // Builtins that run code (`try`, `eval`, `load`) nest the op loop
        // on the native stack without a call through `apply`.
        if self.stack_exhausted() {
            let limit = self.max_depth;
            return Err(self.error(format!("stack depth exceeded (limit {})", limit)));
        }
        let base = self.stack.len();
        self.calls.push(Frame {
            code_at: Rc::as_ptr(&proto),
            code: Some(proto),
            pc: 0,
            env,
            base,
            fp: base,
            top: base,
            act: None,
            span: Span::NONE,
            name: None,
            lambda_env: None,
            caller: Caller::env(None),
            self_fn: None,
        });
        self.run(self.calls.len() - 1)
    }

    /// Completes a flow produced in tail position.
    pub fn finish(&mut self, flow: Flow) -> Result<Value, Gc> {
        match flow {
            Flow::Value(v) => Ok(v),
            Flow::Call {
                base,
                env,
                span,
                name,
            } => self.apply(base, env, span, name),
            Flow::Eval { proto, env } => self.run_proto(proto, env),
        }
    }

    /// Calls `f` with `args` from a builtin (the one narrow way back into
    /// the evaluator).
    pub fn call(&mut self, f: Value, args: &[Value], env: Env) -> Result<Value, Gc> {
        if !f.is_function() {
            return Err(self.error(format!("expected a function, got {}", f.type_name())));
        }
        let base = self.stack.len();
        self.stack.push(f);
        self.stack.extend_from_slice(args);
        let span = self.span;
        self.apply(base, env, span, None)
    }

    #[inline]
    fn eval(&mut self, code: &Code, env: Env) -> Result<Value, Gc> {
        // The common nodes are evaluated here directly: a plain value
        // result is cheaper to return than a `Flow`.
        match code {
            Code::Const(v) => Ok(*v),
            Code::Local(slot) => Ok(self.local(env, *slot)),
            Code::Name(sym, span) => self.lookup(*sym, env, *span),
            Code::Prim(node) => self.exec_prim(node, env),
            Code::Call(call) => self.eval_call(call, env),
            Code::If(node) if self.intact(node) => {
                let branch = match self.eval(&node.node.cond, env)? {
                    Value::Num(0) => match &node.node.otherwise {
                        Some(code) => code,
                        None => return Ok(Value::Nil),
                    },
                    Value::Num(_) => &node.node.then,
                    other => return Err(self.condition_error(other, node.span, "if")),
                };
                self.eval(branch, env)
            }
            _ => match self.exec(code, env, false)? {
                Flow::Value(v) => Ok(v),
                other => self.finish(other),
            },
        }
    }

    #[inline]
    fn local(&self, env: Env, slot: u32) -> Value {
        match env {
            Some(g) => self
                .heap
                .scope(g)
                .vars
                .get(slot as usize)
                .map_or(Value::Unit, |(_, v)| *v),
            None => Value::Unit,
        }
    }

    /// Whether an inlined special form's name still holds its builtin.
    #[inline]
    fn intact<T>(&self, node: &Inline<T>) -> bool {
        self.intact_forms[(node.form.0 & 127) as usize]
    }

    /// Recomputes whether an inlined form's name still holds its builtin.
    fn update_intact(&mut self, sym: Sym) {
        if !self.forms.is_inlined(sym) {
            return;
        }
        let name = self.syms.name(sym);
        let original = self.builtins.iter().position(|b| b.name == name);
        let holds = match (self.global(sym), original) {
            (Some(Value::Builtin(id)), Some(o)) => id as usize == o,
            _ => false,
        } && self.shadowed_forms & (1u128 << sym.0) == 0;
        self.intact_forms[(sym.0 & 127) as usize] = holds;
        if let Some(&(_, _, op)) = self.forms.prims.iter().find(|p| p.0 == sym) {
            let bit = 1 << op as u16;
            if holds {
                self.prims_broken &= !bit;
            } else {
                self.prims_broken |= bit;
            }
        }
    }

    /// Whether `op`'s name still holds its builtin (its inline fast path
    /// may be used).
    #[inline(always)]
    fn prim_holds(&self, op: PrimOp) -> bool {
        self.prims_broken & (1 << op as u16) == 0
    }

    fn exec_generic<T>(&mut self, node: &Inline<T>, env: Env, tail: bool) -> Result<Flow, Gc> {
        // The form's name is rebound: compile it as an ordinary call.
        let mut shadowed = self.shadowed_forms(env);
        shadowed.push(node.form);
        let proto = self.compile_eval_shadowed(node.generic, node.span, shadowed)?;
        if tail {
            Ok(Flow::Eval { proto, env })
        } else {
            self.run_proto(proto, env).map(Flow::Value)
        }
    }

    /// Executes code. In tail position a call is returned as a `Flow`
    /// rather than made, so the caller's frame can be reused. The common
    /// nodes are handled here; the rest live in `#[inline(never)]` helpers
    /// so this function's native frame (one per nested call) stays small.
    pub fn exec(&mut self, code: &Code, env: Env, tail: bool) -> Result<Flow, Gc> {
        match code {
            Code::Const(v) => Ok(Flow::Value(*v)),
            Code::Local(slot) => Ok(Flow::Value(self.local(env, *slot))),
            Code::Name(sym, span) => self.lookup(*sym, env, *span).map(Flow::Value),
            Code::Call(call) => self.exec_call(call, env, tail),
            Code::Prim(node) => self.exec_prim(node, env).map(Flow::Value),
            Code::If(node) => {
                if !self.intact(node) {
                    return self.exec_generic(node, env, tail);
                }
                let cond = self.eval(&node.node.cond, env)?;
                let branch = match cond {
                    Value::Num(0) => match &node.node.otherwise {
                        Some(code) => code,
                        None => return Ok(Flow::Value(Value::Nil)),
                    },
                    Value::Num(_) => &node.node.then,
                    other => return Err(self.condition_error(other, node.span, "if")),
                };
                self.exec(branch, env, tail)
            }
            Code::Do(node) => {
                if !self.intact(node) {
                    return self.exec_generic(node, env, tail);
                }
                let n = node.node.len();
                for code in &node.node[..n - 1] {
                    self.eval(code, env)?;
                }
                self.exec(&node.node[n - 1], env, tail)
            }
            Code::Select(node) => {
                if !self.intact(node) {
                    return self.exec_generic(node, env, tail);
                }
                for (cond, value) in node.node.iter() {
                    match self.eval(cond, env)? {
                        Value::Num(0) => {}
                        Value::Num(_) => return self.exec(value, env, tail),
                        other => return Err(self.condition_error(other, node.span, "select")),
                    }
                }
                Err(self.error_at("no selection found", node.span))
            }
            Code::Lambda(node) => {
                if !self.intact(node) {
                    return self.exec_generic(node, env, tail);
                }
                Ok(Flow::Value(self.make_lambda(
                    node.node.clone(),
                    env,
                    Vec::new(),
                )))
            }
            Code::Def(node) => self.exec_def(node, env, tail),
            Code::Case(node) => self.exec_case(node, env, tail),
            Code::Let(node) => self.exec_let(node, env, tail),
        }
    }

    /// Evaluates a call's head and arguments onto the stack. `Err(Ok(v))`
    /// means the head was not a function and the S-expression was run as a
    /// sequence with value `v` (only when not in tail position).
    #[inline]
    fn push_call(
        &mut self,
        call: &crate::compile::Call,
        env: Env,
    ) -> Result<Result<usize, Value>, Gc> {
        let f = self.eval(&call.head, env)?;
        if !f.is_function() {
            return match self.exec_sequence(f, call, env, false)? {
                Flow::Value(v) => Ok(Err(v)),
                other => self.finish(other).map(Err),
            };
        }
        self.push_args(f, call, env).map(Ok)
    }

    /// Pushes `f` and the call's evaluated arguments; returns where they
    /// start on the stack.
    #[inline]
    fn push_args(&mut self, f: Value, call: &crate::compile::Call, env: Env) -> Result<usize, Gc> {
        let base = self.stack.len();
        self.stack.push(f);
        for arg in call.args.iter() {
            // Slots and constants need no recursive evaluation.
            let value = match arg {
                Code::Local(slot) => Ok(self.local(env, *slot)),
                Code::Const(v) => Ok(*v),
                other => self.eval(other, env),
            };
            match value {
                Ok(v) => self.stack.push(v),
                Err(e) => {
                    self.stack.truncate(base);
                    return Err(e);
                }
            }
        }
        Ok(base)
    }

    #[inline]
    fn exec_call(&mut self, call: &crate::compile::Call, env: Env, tail: bool) -> Result<Flow, Gc> {
        if !tail {
            return self.eval_call(call, env).map(Flow::Value);
        }
        let f = self.eval(&call.head, env)?;
        if !f.is_function() {
            return self.exec_sequence(f, call, env, tail);
        }
        let base = self.push_args(f, call, env)?;
        Ok(Flow::Call {
            base,
            env,
            span: call.span,
            name: call.name,
        })
    }

    /// A call not in tail position: made now, its value returned.
    #[inline]
    fn eval_call(&mut self, call: &crate::compile::Call, env: Env) -> Result<Value, Gc> {
        let base = match self.push_call(call, env)? {
            Ok(base) => base,
            Err(v) => return Ok(v),
        };
        let f = self.stack[base];
        if let Value::Builtin(id) = f {
            // Builtins need no frame: call directly.
            let args: SmallVec<[Value; 4]> = SmallVec::from_slice(&self.stack[base + 1..]);
            self.span = call.span;
            let func = self.builtins[id as usize].func;
            let result = func(self, &args, env);
            return match result {
                Ok(Flow::Value(v)) => {
                    self.stack.truncate(base);
                    Ok(v)
                }
                Ok(flow) => {
                    let v = self.finish(flow);
                    self.stack.truncate(base);
                    v
                }
                Err(e) => {
                    self.stack.truncate(base);
                    Err(e)
                }
            };
        }
        self.apply(base, env, call.span, call.name)
    }

    /// An S-expression whose head is not a function: its elements are
    /// evaluated in order and the last is the result.
    #[inline(never)]
    fn exec_sequence(
        &mut self,
        head: Value,
        call: &crate::compile::Call,
        env: Env,
        tail: bool,
    ) -> Result<Flow, Gc> {
        let n = call.args.len();
        for (i, arg) in call.args.iter().enumerate() {
            if i + 1 == n {
                return self.exec(arg, env, tail);
            }
            self.eval(arg, env)?;
        }
        Ok(Flow::Value(head))
    }

    /// `(op a b)` for an arithmetic or comparison builtin: done in place
    /// for two Numbers, otherwise by calling whatever `op` is bound to.
    #[inline]
    fn exec_prim(
        &mut self,
        node: &Inline<crate::compile::PrimNode>,
        env: Env,
    ) -> Result<Value, Gc> {
        let left = match &node.node.left {
            Code::Const(v) => *v,
            Code::Local(slot) => self.local(env, *slot),
            other => self.eval(other, env)?,
        };
        let right = match &node.node.right {
            Code::Const(v) => *v,
            Code::Local(slot) => self.local(env, *slot),
            other => {
                // Keep the left operand rooted while the right one runs.
                self.stack.push(left);
                let r = self.eval(other, env);
                self.stack.pop();
                r?
            }
        };
        if self.intact(node) {
            if let (Value::Num(a), Value::Num(b)) = (left, right) {
                if let Some(v) = prim_numbers(node.node.op, a, b) {
                    return Ok(v);
                }
            }
        }
        self.prim_slow(node.form, node.span, env, left, right)
    }

    #[inline(never)]
    fn prim_slow(
        &mut self,
        form: Sym,
        span: Span,
        env: Env,
        left: Value,
        right: Value,
    ) -> Result<Value, Gc> {
        let f = self.lookup(form, env, span)?;
        let base = self.stack.len();
        self.stack.extend_from_slice(&[f, left, right]);
        let name = Some(form);
        if let Value::Builtin(_) | Value::Lambda(_) = f {
            self.apply(base, env, span, name)
        } else {
            // Not a function any more: a sequence, whose value is the last.
            self.stack.truncate(base);
            Ok(right)
        }
    }

    #[inline(never)]
    fn exec_def(
        &mut self,
        node: &Inline<crate::compile::DefNode>,
        env: Env,
        tail: bool,
    ) -> Result<Flow, Gc> {
        if !self.intact(node) {
            return self.exec_generic(node, env, tail);
        }
        let base = self.stack.len();
        for code in node.node.values.iter() {
            match self.eval(code, env) {
                Ok(v) => self.stack.push(v),
                Err(e) => {
                    self.stack.truncate(base);
                    return Err(e);
                }
            }
        }
        for (i, sym) in node.node.names.iter().enumerate() {
            let v = self.stack[base + i];
            if node.node.global {
                self.set_global(*sym, v);
            } else {
                self.assign(*sym, v, env);
            }
        }
        self.stack.truncate(base);
        Ok(Flow::Value(Value::Unit))
    }

    #[inline(never)]
    fn exec_case(
        &mut self,
        node: &Inline<crate::compile::CaseNode>,
        env: Env,
        tail: bool,
    ) -> Result<Flow, Gc> {
        if !self.intact(node) {
            return self.exec_generic(node, env, tail);
        }
        let subject = self.eval(&node.node.subject, env)?;
        let base = self.stack.len();
        self.stack.push(subject);
        for (key, value) in node.node.clauses.iter() {
            let k = match self.eval(key, env) {
                Ok(k) => k,
                Err(e) => {
                    self.stack.truncate(base);
                    return Err(e);
                }
            };
            if equal(&self.heap, subject, k) {
                self.stack.truncate(base);
                return self.exec(value, env, tail);
            }
        }
        self.stack.truncate(base);
        Err(self.error_at("no case found", node.span))
    }

    #[inline(never)]
    fn exec_let(&mut self, node: &Inline<Code>, env: Env, tail: bool) -> Result<Flow, Gc> {
        if !self.intact(node) {
            return self.exec_generic(node, env, tail);
        }
        self.capture(env);
        let scope = self.heap.new_scope(&[], env, None, None, false);
        self.frames.push(scope);
        let result = self.exec(&node.node, Some(scope), tail);
        // A tail flow keeps the scope alive through its env; the callee's
        // frame links it before any collection can run.
        self.frames.pop();
        result
    }

    #[inline(never)]
    fn condition_error(&mut self, v: Value, span: Span, what: &str) -> Gc {
        self.error_at(
            format!(
                "`{}` condition must be a Number, got {}",
                what,
                v.type_name()
            ),
            span,
        )
    }

    /// A condition's truth: Numbers only.
    pub fn truth(&mut self, v: Value, span: Span, what: &str) -> Result<bool, Gc> {
        match v {
            Value::Num(n) => Ok(n != 0),
            other => Err(self.error_at(
                format!(
                    "`{}` condition must be a Number, got {}",
                    what,
                    other.type_name()
                ),
                span,
            )),
        }
    }

    /// Binds in the current scope (`=`): the global scope at top level.
    pub fn assign(&mut self, sym: Sym, v: Value, env: Env) {
        match env {
            None => self.set_global(sym, v),
            Some(g) => {
                let scope = self.heap.scope_mut(g);
                match scope.vars.iter().position(|(k, _)| *k == sym) {
                    Some(i) => {
                        scope.vars[i].1 = v;
                        // A formal of a running call: its copy on the
                        // stack changes too.
                        if let Some((fp, n)) = scope.locals {
                            if i < n as usize {
                                self.stack[fp as usize + i] = v;
                            }
                        }
                    }
                    None => scope.vars.push((sym, v)),
                }
                if self.forms.is_inlined(sym) && self.shadowed_forms & (1u128 << sym.0) == 0 {
                    self.shadowed_forms |= 1u128 << sym.0;
                    self.update_intact(sym);
                }
            }
        }
    }

    // ---- name resolution ---------------------------------------------

    /// Looks a symbol up: scope chain, globals, then the callers' scopes.
    #[inline]
    pub fn lookup(&mut self, sym: Sym, env: Env, span: Span) -> Result<Value, Gc> {
        match self.lookup_lexical(sym, env) {
            Some(v) => Ok(v),
            None => self.lookup_fallback(sym, env, span),
        }
    }

    /// Dynamic fallback, or the unbound-symbol Error.
    #[inline(never)]
    fn lookup_fallback(&mut self, sym: Sym, env: Env, span: Span) -> Result<Value, Gc> {
        if let Some(v) = self.lookup_dynamic(sym, env) {
            return Ok(v);
        }
        let name = self.syms.name(sym).to_string();
        Err(self.error_at(format!("symbol `{}` is not bound", name), span))
    }

    #[inline]
    fn lookup_lexical(&self, sym: Sym, env: Env) -> Option<Value> {
        let mut s = env;
        while let Some(g) = s {
            let scope = self.heap.scope(g);
            for (k, v) in scope.vars.iter() {
                if *k == sym {
                    return Some(*v);
                }
            }
            s = scope.parent;
        }
        self.global(sym)
    }

    /// The frame (call-made scope) that `scope` belongs to.
    fn frame_of(&self, mut scope: Gc) -> Option<Gc> {
        loop {
            let s = self.heap.scope(scope);
            if s.func.is_some() {
                return Some(scope);
            }
            scope = s.parent?;
        }
    }

    /// Dynamic fallback: the scopes of the callers, innermost first.
    fn lookup_dynamic(&self, sym: Sym, env: Env) -> Option<Value> {
        let mut current = env?;
        loop {
            let frame = self.frame_of(current)?;
            let caller = self.heap.scope(frame).caller?;
            let mut s = Some(caller);
            while let Some(g) = s {
                let scope = self.heap.scope(g);
                for (k, v) in scope.vars.iter() {
                    if *k == sym {
                        return Some(*v);
                    }
                }
                s = scope.parent;
            }
            current = caller;
        }
    }

    /// The caller link for a tail call of `proto` made from `frame` at
    /// `env`. If `proto` already runs in the chain of frames this one
    /// replaced, the new frame takes that frame's place (its bindings are
    /// shadowed anyway), which keeps tail-recursive loops in constant space.
    fn tail_caller(&self, frame: Gc, env: Env, proto: &Rc<Proto>) -> (Env, bool) {
        let mut cur = frame;
        loop {
            let s = self.heap.scope(cur);
            if let Some(f) = &s.func {
                if Rc::ptr_eq(f, proto) {
                    return (s.caller, s.tail);
                }
            }
            if !s.tail {
                break;
            }
            match s.caller.and_then(|c| self.frame_of(c)) {
                Some(c) => cur = c,
                None => break,
            }
        }
        (env, true)
    }

    // ---- calls --------------------------------------------------------

    /// Calls `stack[base]` with the arguments above it. Pops them.
    pub fn apply(
        &mut self,
        base: usize,
        env: Env,
        span: Span,
        name: Option<Sym>,
    ) -> Result<Value, Gc> {
        if self.depth >= self.max_depth || self.stack_exhausted() {
            self.stack.truncate(base);
            let limit = self.max_depth;
            return Err(self.error_at(format!("stack depth exceeded (limit {})", limit), span));
        }
        if let Value::Lambda(_) = self.stack[base] {
            let stop = self.calls.len();
            return match self.enter_call(base, Caller::env(env), span, name) {
                Ok(Some(v)) => Ok(v),
                Ok(None) => self.run(stop),
                Err(e) => Err(self.unwind(stop, e, false)),
            };
        }
        self.depth += 1;
        let envs = self.env_roots.len();
        let result = self.apply_builtin(base, env, span, name);
        self.env_roots.truncate(envs);
        self.depth -= 1;
        if result.is_err() {
            self.stack.truncate(base);
        }
        result
    }

    /// `apply` of a builtin: it may answer with a tail call or a tail
    /// evaluation, which are made here.
    fn apply_builtin(
        &mut self,
        base: usize,
        mut env: Env,
        mut span: Span,
        mut name: Option<Sym>,
    ) -> Result<Value, Gc> {
        loop {
            match self.stack[base] {
                Value::Builtin(id) => {
                    // A lambda's call is counted by `enter_call`.
                    self.fuel -= 1;
                    if self.fuel == 0 {
                        self.refuel(span)?;
                    }
                    // Keep the scope alive while the builtin runs: it may
                    // be a `let` scope that nothing else holds.
                    self.env_roots.extend(env);
                    let args: SmallVec<[Value; 8]> = SmallVec::from_slice(&self.stack[base + 1..]);
                    self.span = span;
                    let func = self.builtins[id as usize].func;
                    match func(self, &args, env)? {
                        Flow::Value(v) => {
                            self.stack.truncate(base);
                            return Ok(v);
                        }
                        Flow::Call {
                            base: b,
                            env: e,
                            span: s,
                            name: n,
                        } => {
                            // The tail call's function and arguments sit
                            // above this call's: move them down.
                            if b != base {
                                self.stack.drain(base..b);
                            }
                            env = e;
                            span = s;
                            name = n;
                        }
                        Flow::Eval { proto, env: e } => {
                            self.stack.truncate(base);
                            return self.run_proto(proto, e);
                        }
                    }
                }
                Value::Lambda(_) => {
                    let stop = self.calls.len();
                    return match self.enter_call(base, Caller::env(env), span, name) {
                        Ok(Some(v)) => Ok(v),
                        Ok(None) => self.run(stop),
                        Err(e) => Err(self.unwind(stop, e, false)),
                    };
                }
                other => {
                    self.stack.truncate(base);
                    let what = other.type_name();
                    return Err(self.error_at(format!("expected a function, got {}", what), span));
                }
            }
        }
    }

    /// Checks the interrupt flag and the step budget, and sets how many
    /// calls may pass before the next check.
    #[cold]
    #[inline(never)]
    /// `Error: interrupted` (which `try` does not catch) when Ctrl-C was
    /// pressed since the last look: for builtins whose one call can run
    /// long without calling back into the evaluator.
    pub fn check_interrupt(&mut self, span: Span) -> Result<(), Gc> {
        if self.interrupt.load(Ordering::Relaxed) {
            self.interrupt.store(false, Ordering::Relaxed);
            self.fuel = 1;
            if let Some(e) = self.signalled_exit() {
                return Err(e);
            }
            let e = self.error_at("interrupted", span);
            self.uncatchable = Some(e);
            return Err(e);
        }
        Ok(())
    }

    fn refuel(&mut self, span: Span) -> Result<(), Gc> {
        self.check_interrupt(span)?;
        match self.steps_left.as_mut() {
            Some(steps) => {
                if *steps == 0 {
                    self.fuel = 1;
                    let e = self.error_at("step limit exceeded", span);
                    self.uncatchable = Some(e);
                    return Err(e);
                }
                *steps -= 1;
                // Counted one call at a time.
                self.fuel = 1;
            }
            None => self.fuel = 1024,
        }
        Ok(())
    }

    /// Whether `a` equals `b` as `==` compares any two values, for `==`
    /// and `!=` compiled inline, counted as their call. `(== l nil)`, the
    /// end of a list walk, needs no walk.
    #[inline]
    fn equal_counted(&mut self, a: Value, b: Value, span: Span) -> Result<bool, Gc> {
        if self.fuel > 1 && self.depth < self.max_depth {
            self.fuel -= 1;
        } else {
            self.count_builtin_call(span)?;
        }
        Ok(if matches!(a, Value::Nil) || matches!(b, Value::Nil) {
            a.same(b)
        } else {
            equal(&self.heap, a, b)
        })
    }

    /// What calling a builtin through `apply` checks and counts, for an
    /// operation done in place of that call: the depth limit, the
    /// interrupt flag and the step budget.
    #[inline(never)]
    fn count_builtin_call(&mut self, span: Span) -> Result<(), Gc> {
        if self.depth >= self.max_depth || self.stack_exhausted() {
            let limit = self.max_depth;
            return Err(self.error_at(format!("stack depth exceeded (limit {})", limit), span));
        }
        self.fuel -= 1;
        if self.fuel == 0 {
            self.refuel(span)?;
        }
        Ok(())
    }

    /// Ends a call: clears the caller links of its frames (they are only
    /// for dynamic lookups while it runs) and frees its frame at once if
    /// nothing captured it and no tail call replaced it.
    #[inline]
    fn end_activation(&mut self, activation: Activation) {
        if let Some(frame) = activation.frame {
            self.end_scope(frame, activation.replaced);
        }
    }

    /// `end_activation` of a call that made a scope.
    #[inline(never)]
    fn end_scope(&mut self, frame: Gc, replaced: bool) {
        let scope = self.heap.scope_mut(frame);
        let mut next = if scope.tail { scope.caller } else { None };
        scope.caller = None;
        scope.locals = None;
        let captured = scope.captured;
        while let Some(g) = next.and_then(|c| self.frame_of(c)) {
            let scope = self.heap.scope_mut(g);
            next = if scope.tail { scope.caller } else { None };
            scope.caller = None;
        }
        if !replaced && !captured {
            self.heap.free_scope(frame);
        }
    }

    /// Whether a tail call of `proto` can reuse `frame` in place: it is a
    /// frame of the same function and nothing captured it.
    #[inline]
    fn reusable(&self, frame: Gc, proto: &Rc<Proto>) -> bool {
        let scope = self.heap.scope(frame);
        !scope.captured && scope.func.as_ref().is_some_and(|f| Rc::ptr_eq(f, proto))
    }

    /// Marks `env` and its parents as captured (referred to by a lambda or
    /// an inner scope), so their frames are left to the collector.
    pub fn capture(&mut self, env: Env) {
        let mut s = env;
        while let Some(g) = s {
            let scope = self.heap.scope_mut(g);
            if scope.captured {
                break;
            }
            scope.captured = true;
            s = scope.parent;
        }
    }

    /// Binds a call of the lambda at `stack[base]` to the arguments above
    /// it, in a new frame or (a self tail call) `activation`'s frame reused
    /// in place. Pops the function and arguments. `Ok(Err(v))`: too few
    /// arguments, `v` is the partial application.
    fn bind(
        &mut self,
        activation: &mut Activation,
        base: usize,
        env: Env,
        span: Span,
        name: Option<Sym>,
    ) -> Result<Result<(Rc<Proto>, Gc), Value>, Gc> {
        let Value::Lambda(g) = self.stack[base] else {
            unreachable!("bind is only called for lambdas")
        };
        let lambda = self.heap.lambda(g);
        let proto = lambda.proto.clone();
        let lambda_env = lambda.env;
        let nbound = lambda.bound.len();
        let nargs = self.stack.len() - base - 1;
        let total = nbound + nargs;
        let nfixed = proto.formals.len();
        if total < nfixed {
            // Partial application: a new function with these bound.
            let mut bound = self.heap.lambda(g).bound.to_vec();
            bound.extend_from_slice(&self.stack[base + 1..]);
            self.stack.truncate(base);
            return Ok(Err(self.make_lambda(proto, lambda_env, bound)));
        }
        if proto.rest.is_none() && total > nfixed {
            self.stack.truncate(base);
            let e = self.error_at(
                format!(
                    "expected {} argument{}, got {}",
                    nfixed,
                    if nfixed == 1 { "" } else { "s" },
                    total
                ),
                span,
            );
            return Err(self.trace(e, name, span));
        }
        let rest_list = match proto.rest {
            Some(_) => {
                let extra: SmallVec<[Value; 8]> = (nfixed..total)
                    .map(|i| {
                        if i < nbound {
                            self.heap.lambda(g).bound[i]
                        } else {
                            self.stack[base + 1 + i - nbound]
                        }
                    })
                    .collect();
                self.heap.qlist(&extra)
            }
            None => Value::Nil,
        };
        let scope = match activation.frame {
            Some(fr) if self.reusable(fr, &proto) => {
                // A self tail call: the frame's bindings are dead, so it
                // is reused in place.
                let s = self.heap.scope_mut(fr);
                s.vars.clear();
                s.parent = lambda_env;
                fr
            }
            _ => {
                let (caller, is_tail) = match activation.frame {
                    None => (env, false),
                    Some(fr) => {
                        activation.replaced = true;
                        // Its formals on the stack are about to be
                        // overwritten.
                        self.heap.scope_mut(fr).locals = None;
                        self.tail_caller(fr, env, &proto)
                    }
                };
                // Rooted by the frame that runs it (see `collect_with`).
                self.heap
                    .take_scope(lambda_env, caller, Some(proto.clone()), is_tail)
            }
        };
        // Bind the formals: bound arguments first, then the arguments on
        // the stack.
        if nbound == 0 {
            let Vm { heap, stack, .. } = self;
            let vars = &mut heap.scope_mut(scope).vars;
            vars.extend(
                proto
                    .formals
                    .iter()
                    .copied()
                    .zip(stack[base + 1..].iter().copied()),
            );
        } else {
            let bound: SmallVec<[Value; 8]> = SmallVec::from_slice(&self.heap.lambda(g).bound);
            let Vm { heap, stack, .. } = self;
            let vars = &mut heap.scope_mut(scope).vars;
            for (i, sym) in proto.formals.iter().enumerate() {
                let v = if i < nbound {
                    bound[i]
                } else {
                    stack[base + 1 + i - nbound]
                };
                vars.push((*sym, v));
            }
        }
        if let Some(rest) = proto.rest {
            self.heap.scope_mut(scope).vars.push((rest, rest_list));
        }
        // The formals also sit on the value stack, above the function, in
        // slot order: that is where the code reads them.
        let nslots = proto.slot_count();
        if nbound != 0 || proto.rest.is_some() {
            let Vm { heap, stack, .. } = self;
            stack.truncate(base + 1);
            stack.extend(heap.scope(scope).vars.iter().map(|(_, v)| *v));
        }
        self.heap.scope_mut(scope).locals = Some((base as u32 + 1, nslots as u32));
        activation.frame = Some(scope);
        Ok(Ok((proto, scope)))
    }

    /// Starts a (non-tail) call of the lambda at `stack[base]`: pushes its
    /// frame, which `run` then executes. `Some(v)`: no frame was needed
    /// (partial application). After an Error, frames above the caller's may
    /// remain for `unwind` to pop.
    #[inline(always)]
    fn enter_call(
        &mut self,
        base: usize,
        caller: Caller,
        span: Span,
        name: Option<Sym>,
    ) -> Result<Option<Value>, Gc> {
        if self.depth < self.max_depth && self.fuel > 1 {
            let Value::Lambda(g) = self.stack[base] else {
                unreachable!("enter_call is only called for lambdas")
            };
            let lambda = self.heap.lambda(g);
            let nargs = self.stack.len() - base - 1;
            if usize::from(lambda.direct) == nargs {
                // The commonest call: a frame over the arguments as they
                // are, no scope yet.
                let (code_at, lambda_env) = (Rc::as_ptr(&lambda.proto), lambda.env);
                if !lambda.general {
                    if let Some(v) = self.shaped_value(g, base) {
                        return Ok(Some(v));
                    }
                }
                self.fuel -= 1;
                return self.push_lazy_frame(
                    code_at,
                    base,
                    nargs,
                    span,
                    name,
                    lambda_env,
                    caller,
                    Some(g),
                );
            }
        }
        self.enter_call_slow(base, caller, span, name)
    }

    /// `enter_call`'s direct call of a lambda `g` whose body has a shape
    /// (`Shape::Leaf`, `Shape::Accessor`), answered at the call site when
    /// it can be (`run_leaf`, `accessor_value`; the call counted). `None`:
    /// it runs in a frame.
    #[inline(never)]
    fn shaped_value(&mut self, g: Gc, base: usize) -> Option<Value> {
        self.shaped_here(g, base)
    }

    /// `shaped_value` for the op loop: the value takes the call's place on
    /// the stack (true), written from registers. Handed back through
    /// memory, a Number computed here was written as two words and read
    /// back by the loop as one 16-byte load, which the processor cannot
    /// forward from the two stores: a stall on every such call.
    #[inline(never)]
    fn shaped_in_place(&mut self, g: Gc, base: usize) -> bool {
        match self.shaped_here(g, base) {
            Some(v) => {
                self.stack.push(v);
                true
            }
            None => false,
        }
    }

    #[inline(always)]
    fn shaped_here(&mut self, g: Gc, base: usize) -> Option<Value> {
        // The lambda is only read here (the helpers take `&self`), so its
        // proto is borrowed rather than counted.
        let lambda = self.heap.lambda(g);
        let (proto, lambda_env) = (&lambda.proto, lambda.env);
        let (v, calls) = match (proto.code.shape, lambda_env, self.fuel) {
            (Shape::Leaf, _, _) => (self.run_leaf(&proto.code, base)?, 1),
            // The call and the two builtin calls it stands for.
            (Shape::Accessor(_), None, 4..) => (self.accessor_value(proto, base)?, 3),
            (Shape::General, _, _) => (self.entry_value(&proto.code, base + 1)?, 1),
            _ => return None,
        };
        self.fuel -= calls;
        self.stack.truncate(base);
        Some(v)
    }

    /// Pushes the frame of a call of the lambda at `base`, whose `nargs`
    /// formals are on the stack above it, with no scope yet, and reaches a
    /// safe point.
    /// The growth of the frame stack is out of line.
    ///
    /// The frame is written field by field straight into its slot. Built
    /// whole on the native stack first (as the code generator does with a
    /// `Frame` value), it was copied in 16-byte pieces that straddled the
    /// smaller stores of its fields, which the processor cannot forward to the
    /// loads: a stall of a dozen cycles or more on every call.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn push_lazy_frame(
        &mut self,
        code_at: *const Proto,
        base: usize,
        nargs: usize,
        span: Span,
        name: Option<Sym>,
        lambda_env: Env,
        caller: Caller,
        self_fn: Option<Gc>,
    ) -> Result<Option<Value>, Gc> {
        self.depth += 1;
        if self.calls.len() == self.calls.capacity() {
            grow_frames(&mut self.calls);
        }
        let len = self.calls.len();
        // SAFETY: `len < capacity` (just ensured), so the slot at `len` is
        // allocated and unused. Each field of it is written exactly once
        // through a raw pointer (no reference to the uninitialized slot is
        // made, and nothing is read or dropped), so after the writes the slot
        // holds a whole, valid `Frame`; `set_len(len + 1)` then counts it, and
        // the Vec owns it.
        unsafe {
            let slot = self.calls.as_mut_ptr().add(len);
            std::ptr::addr_of_mut!((*slot).code).write(None);
            std::ptr::addr_of_mut!((*slot).code_at).write(code_at);
            std::ptr::addr_of_mut!((*slot).pc).write(0);
            std::ptr::addr_of_mut!((*slot).env).write(None);
            std::ptr::addr_of_mut!((*slot).base).write(base);
            std::ptr::addr_of_mut!((*slot).fp).write(base + 1);
            std::ptr::addr_of_mut!((*slot).top).write(base + 1 + nargs);
            std::ptr::addr_of_mut!((*slot).act).write(Some(Activation::default()));
            std::ptr::addr_of_mut!((*slot).span).write(span);
            std::ptr::addr_of_mut!((*slot).name).write(name);
            std::ptr::addr_of_mut!((*slot).lambda_env).write(lambda_env);
            std::ptr::addr_of_mut!((*slot).caller).write(caller);
            std::ptr::addr_of_mut!((*slot).self_fn).write(self_fn);
            self.calls.set_len(len + 1);
        }
        self.safe_point()?;
        Ok(None)
    }

    /// `enter_call` past its fast path: limits, fuel, partial application,
    /// bound or rest arguments.
    #[inline(never)]
    fn enter_call_slow(
        &mut self,
        base: usize,
        caller: Caller,
        span: Span,
        name: Option<Sym>,
    ) -> Result<Option<Value>, Gc> {
        if self.depth >= self.max_depth {
            self.stack.truncate(base);
            let limit = self.max_depth;
            return Err(self.error_at(format!("stack depth exceeded (limit {})", limit), span));
        }
        self.fuel -= 1;
        if self.fuel == 0 {
            if let Err(e) = self.refuel(span) {
                self.stack.truncate(base);
                return Err(e);
            }
        }
        let Value::Lambda(g) = self.stack[base] else {
            unreachable!("enter_call is only called for lambdas")
        };
        let lambda = self.heap.lambda(g);
        let nargs = self.stack.len() - base - 1;
        let nbound = lambda.bound.len();
        if lambda.proto.rest.is_none() && lambda.proto.formals.len() == nbound + nargs {
            // The common call: the arguments on the stack (after any bound
            // by partial application) are the formals, and the scope is made
            // only if something needs it.
            if nbound != 0
                && nbound + nargs <= BOUND_LEAF_FORMALS
                && lambda.proto.code.shape == Shape::Leaf
            {
                // A partial application of arithmetic, such as `(add 5)`:
                // its formals gathered here, the bound ones first, and its
                // body run on them — nothing moved on the value stack.
                let mut formals = [Value::Nil; BOUND_LEAF_FORMALS];
                formals[..nbound].copy_from_slice(&lambda.bound);
                formals[nbound..nbound + nargs].copy_from_slice(&self.stack[base + 1..]);
                if let Some(v) = self.run_leaf_on(&lambda.proto.code, &formals[..nbound + nargs]) {
                    self.stack.truncate(base);
                    return Ok(Some(v));
                }
            }
            let proto = lambda.proto.clone();
            let lambda_env = lambda.env;
            if nbound != 0 {
                self.insert_bound(g, base);
            }
            let nargs = nbound + nargs;
            if proto.code.shape != Shape::General {
                if let Some(v) = self.shaped_call_here(&proto, lambda_env, base) {
                    self.stack.truncate(base);
                    return Ok(Some(v));
                }
            }
            return self.push_lazy_frame(
                Rc::as_ptr(&proto),
                base,
                nargs,
                span,
                name,
                lambda_env,
                caller,
                (nbound == 0).then_some(g),
            );
        }
        let env = self.caller_env(caller);
        let mut activation = Activation::default();
        let (proto, scope) = match self.bind(&mut activation, base, env, span, name) {
            Ok(Ok(bound)) => bound,
            Ok(Err(v)) => return Ok(Some(v)),
            Err(e) => {
                self.end_activation(activation);
                return Err(e);
            }
        };
        self.depth += 1;
        let top = base + 1 + proto.slot_count();
        self.calls.push(Frame {
            code_at: Rc::as_ptr(&proto),
            code: Some(proto),
            pc: 0,
            env: Some(scope),
            base,
            fp: base + 1,
            top,
            act: Some(activation),
            span,
            name,
            lambda_env: None,
            caller: Caller::env(None),
            self_fn: None,
        });
        self.safe_point()?;
        Ok(None)
    }

    /// Puts the arguments bound by partial application of the lambda `g`
    /// below the ones on the stack above `base`.
    #[inline(never)]
    fn insert_bound(&mut self, g: Gc, base: usize) {
        let Vm { heap, stack, .. } = self;
        let bound = &heap.lambda(g).bound;
        let nb = bound.len();
        let old = stack.len();
        // Grow by the bound values, move the arguments up over them, and
        // put the bound values below: a value at a time, as there are
        // usually one or two (a slice copy calls `memmove`).
        for _ in 0..nb {
            stack.push(Value::Nil);
        }
        for i in (base + 1..old).rev() {
            stack[i + nb] = stack[i];
        }
        for (i, &v) in bound.iter().enumerate() {
            stack[base + 1 + i] = v;
        }
    }

    /// The scope a caller stands for, making its frame's scope if needed.
    fn caller_env(&mut self, caller: Caller) -> Env {
        match caller.get() {
            CallerIs::Env(e) => e,
            CallerIs::Frame(j) => self.materialize(j),
        }
    }

    /// Whether the builtin `id`, called with the arguments above
    /// `stack[callee]`, will use the scope it is called from. `eval` of a
    /// one-element list holding a plain value (as in `(eval (head l))` over
    /// a list of Numbers) does not.
    fn wants_env(&self, id: u32, callee: usize) -> bool {
        if !self.builtin_env[id as usize] {
            return false;
        }
        if Some(id) != self.eval_builtin {
            return true;
        }
        let plain = |v: Value| !matches!(v, Value::Sym(_) | Value::S(_) | Value::Q(_) | Value::Nil);
        match self.stack[callee + 1..] {
            [Value::Q(g)] => {
                let cell = self.heap.cons(g);
                !(cell.tail.is_none() && plain(cell.head))
            }
            [v] => !plain(v),
            _ => true,
        }
    }

    /// A call of the lambda `g` (at `stack[base]`, its arguments above it)
    /// answered without running it in a frame, when its code has a
    /// `Shape` that allows it (see `shaped_call`); None otherwise.
    #[inline(always)]
    fn call_in_place(&mut self, g: Gc, base: usize) -> Option<Value> {
        let lambda = self.heap.lambda(g);
        let nargs = self.stack.len() - base - 1;
        if lambda.general
            || usize::from(lambda.direct) != nargs
            || self.depth >= self.max_depth
            || self.fuel <= 1
        {
            return None;
        }
        let (proto, env) = (lambda.proto.clone(), lambda.env);
        // The call itself counts once, like any other.
        self.fuel -= 1;
        let v = self.shaped_call(&proto, env, base);
        if v.is_none() {
            self.fuel += 1;
        }
        v
    }

    /// A call of `proto` (defined in `env`) with its formals on the stack
    /// above `base`, within the depth limit and already counted, answered
    /// without a frame when running it would give that value with nothing
    /// else happening:
    /// - `Shape::Accessor` — `(eval (head x))`, the shape of `fst` — when
    ///   the function was defined at top level (so `eval` and `head` are
    ///   looked up as globals), both names hold their builtins, and `x` is
    ///   a Q-expression whose first element evaluates to itself. The two
    ///   builtin calls it stands for are counted too.
    /// - `Shape::Leaf` — straight-line arithmetic — when every operator
    ///   still holds its builtin and works on Numbers without overflow
    ///   (what its ops' fast paths do).
    ///
    /// None when any of that does not hold: the call then runs as usual
    /// (nothing was changed or counted).
    #[inline(never)]
    fn shaped_call(&mut self, proto: &Proto, env: Env, base: usize) -> Option<Value> {
        self.shaped_call_here(proto, env, base)
    }

    /// `shaped_call` in its caller's code: the value it gives stays in
    /// registers. Returned through memory, a Number is written as two
    /// words and read back as one 16-byte load, which the processor cannot
    /// forward from the two stores (a stall on every such call).
    #[inline(always)]
    fn shaped_call_here(&mut self, proto: &Proto, env: Env, base: usize) -> Option<Value> {
        match proto.code.shape {
            Shape::General => self.entry_value(&proto.code, base + 1),
            Shape::Accessor(_) if env.is_none() && self.fuel > 2 => {
                let v = self.accessor_value(proto, base)?;
                self.fuel -= 2;
                Some(v)
            }
            Shape::Accessor(_) => None,
            Shape::Leaf => self.run_leaf(&proto.code, base),
        }
    }

    /// What the `Shape::Accessor` call of `proto` (defined at top level)
    /// with its formals above `base` gives, when it can be answered in
    /// place (see `shaped_call`); the caller counts it.
    #[inline(always)]
    fn accessor_value(&self, proto: &Proto, base: usize) -> Option<Value> {
        let Shape::Accessor(slot) = proto.code.shape else {
            return None;
        };
        let Value::Q(cell) = self.stack[base + 1 + slot as usize] else {
            return None;
        };
        let first = self.heap.cons(cell).head;
        if matches!(first, Value::Sym(_) | Value::S(_))
            || !matches!(self.global(self.forms.eval.0), Some(Value::Builtin(b)) if b == self.forms.eval.1)
            || !matches!(self.global(self.forms.head.0), Some(Value::Builtin(b)) if b == self.forms.head.1)
        {
            return None;
        }
        Some(first)
    }

    /// Runs a `Shape::Leaf` body on the formals above `base`, with the
    /// operators' fast paths only: every operator must hold its builtin
    /// and every operand be a Number. None at the first thing that would
    /// need more (the call then runs in a frame and does it).
    #[inline(always)]
    fn run_leaf(&self, code: &Ops, base: usize) -> Option<Value> {
        self.run_leaf_on(code, &self.stack[base + 1..])
    }

    /// `run_leaf` with the formals' values given.
    #[inline(always)]
    fn run_leaf_on(&self, code: &Ops, formals: &[Value]) -> Option<Value> {
        use crate::lower::LEAF_OPS;
        if code.leaf_prims & self.prims_broken != 0 {
            return None;
        }
        let num = |v: Value| match v {
            Value::Num(x) => Some(x),
            _ => None,
        };
        // Each op pushes at most one operand and a Leaf body has at most
        // LEAF_OPS ops, so `n` stays below LEAF_OPS: the mask only spares
        // the bounds checks.
        const MASK: usize = LEAF_OPS - 1;
        debug_assert!(LEAF_OPS.is_power_of_two() && code.ops.len() <= LEAF_OPS);
        let mut operands = [0i64; LEAF_OPS];
        let mut n = 0;
        for op in code.ops.iter() {
            let (op, x, y) = match *op {
                Op::Const(i) => {
                    operands[n & MASK] = num(code.values[i as usize])?;
                    n += 1;
                    continue;
                }
                Op::Local(slot) => {
                    operands[n & MASK] = num(formals[slot as usize])?;
                    n += 1;
                    continue;
                }
                Op::PrimLocalNum(op, slot, k) => (op, num(formals[slot as usize])?, k as i64),
                // Fused pushes: the ops they stand for follow.
                Op::LocalLocal(..) | Op::LocalNums(..) => continue,
                Op::PrimLocals(op, a, b) => {
                    (op, num(formals[a as usize])?, num(formals[b as usize])?)
                }
                Op::Prim(op, _) | Op::PrimReturn(op, _) => {
                    n = n.checked_sub(2)?;
                    (op, operands[n & MASK], operands[(n + 1) & MASK])
                }
                Op::ReturnLocal(slot) => return Some(formals[slot as usize]),
                Op::Return => return n.checked_sub(1).map(|i| Value::Num(operands[i & MASK])),
                _ => return None,
            };
            operands[n & MASK] = num(prim_numbers(op, x, y)?)?;
            n += 1;
        }
        None
    }

    /// `Op::TailSelf` of frame `f` (formals at `fp`), whose name holds
    /// the lambda `g`: when `g` is the lambda the frame was entered with and
    /// every argument has its fast path, the arguments are computed into
    /// the formals and the frame is ready to run its code again (`true`);
    /// otherwise nothing has happened (`false`). Out of the op loop, so
    /// that its code leaves the loop's registers alone.
    #[inline(never)]
    fn tail_self(
        &mut self,
        f: usize,
        fp: usize,
        g: Gc,
        code: &Ops,
        tail: &crate::lower::TailSelf,
    ) -> Result<bool, Gc> {
        let n = tail.args.len();
        let frame = &self.calls[f];
        if frame.self_fn != Some(g)
            || frame.top - fp != n
            || self.fuel <= 1
            || self.prims_broken & tail.prims != 0
        {
            return Ok(false);
        }
        // The arguments, from the formals as they are, all of them before
        // any formal is replaced. A few are held in registers: stored into
        // an array a word at a time and copied out whole, they waited for
        // the stores on every call.
        let values = &code.values;
        let done = match &*tail.args {
            [a] => match self.self_arg(fp, values, *a) {
                Some(x) => {
                    self.stack.truncate(fp + 1);
                    self.stack[fp] = x;
                    true
                }
                None => false,
            },
            [a, b] => match (self.self_arg(fp, values, *a), self.self_arg(fp, values, *b)) {
                (Some(x), Some(y)) => {
                    self.stack.truncate(fp + 2);
                    (self.stack[fp], self.stack[fp + 1]) = (x, y);
                    true
                }
                _ => false,
            },
            args => {
                let mut new = [Value::Nil; TAIL_SELF_ARGS];
                let mut all = true;
                for (to, a) in new.iter_mut().zip(args) {
                    match self.self_arg(fp, values, *a) {
                        Some(v) => *to = v,
                        None => {
                            all = false;
                            break;
                        }
                    }
                }
                if all {
                    self.stack.truncate(fp + n);
                    for (to, v) in self.stack[fp..].iter_mut().zip(&new) {
                        *to = *v;
                    }
                }
                all
            }
        };
        if !done {
            return Ok(false);
        }
        // The frame is reused as `lazy_self_call` reuses it, without the
        // function and arguments pushed and moved down.
        self.fuel -= 1;
        let frame = &mut self.calls[f];
        frame.span = code.spans[tail.call as usize];
        frame.name = tail.name;
        self.safe_point()?;
        Ok(true)
    }

    /// The value of argument `arg` of a `TailSelf` call, computed from the
    /// formals at `fp` when its fast path holds. The operators of the
    /// call's arguments were found to hold their builtins
    /// (`TailSelf::prims`).
    #[inline(always)]
    fn self_arg(&self, fp: usize, values: &[Value], arg: SelfArg) -> Option<Value> {
        match arg {
            SelfArg::Const(i) => Some(values[i as usize]),
            SelfArg::Local(a) => Some(self.stack[fp + a as usize]),
            SelfArg::AddNum(a, d) => match &self.stack[fp + a as usize] {
                Value::Num(x) => x.checked_add(d).map(Value::Num),
                _ => None,
            },
            SelfArg::LocalNum(op, a, k) => match &self.stack[fp + a as usize] {
                Value::Num(x) => prim_numbers(op, *x, k as i64),
                _ => None,
            },
            SelfArg::Locals(op, a, b) => {
                match (&self.stack[fp + a as usize], &self.stack[fp + b as usize]) {
                    (Value::Num(x), Value::Num(y)) => prim_numbers(op, *x, *y),
                    _ => None,
                }
            }
        }
    }

    /// The code frame `f` runs.
    #[inline(always)]
    fn code_of(&self, f: usize) -> &Rc<Proto> {
        let frame = &self.calls[f];
        match &frame.code {
            Some(code) => code,
            None => self.code_at_base(frame.base),
        }
    }

    /// The code of the lambda at `base` (run by a frame without code).
    #[inline(never)]
    fn code_at_base(&self, base: usize) -> &Rc<Proto> {
        match self.stack[base] {
            Value::Lambda(g) => &self.heap.lambda(g).proto,
            _ => unreachable!("a frame without code runs the lambda at its base"),
        }
    }

    /// Whether frame `f` is a call whose scope is not made yet.
    #[inline]
    fn is_lazy(&self, f: usize) -> bool {
        matches!(&self.calls[f].act, Some(a) if a.frame.is_none())
    }

    /// The scope frame `f` runs in, made now if it was not yet (with the
    /// scopes of lazy callers below it, for dynamic fallback).
    fn materialize(&mut self, f: usize) -> Env {
        let mut chain: SmallVec<[usize; 8]> = SmallVec::new();
        let mut i = f;
        while self.is_lazy(i) {
            chain.push(i);
            match self.calls[i].caller.get() {
                CallerIs::Frame(j) => i = j,
                CallerIs::Env(_) => break,
            }
        }
        for &i in chain.iter().rev() {
            let caller = match self.calls[i].caller.get() {
                CallerIs::Env(e) => e,
                CallerIs::Frame(j) => self.calls[j].env,
            };
            let frame = &self.calls[i];
            let proto = self.code_of(i).clone();
            let (fp, lambda_env) = (frame.fp, frame.lambda_env);
            let n = proto.formals.len();
            let scope = self
                .heap
                .take_scope(lambda_env, caller, Some(proto.clone()), false);
            {
                let Vm { heap, stack, .. } = self;
                let s = heap.scope_mut(scope);
                s.vars.extend(
                    proto
                        .formals
                        .iter()
                        .copied()
                        .zip(stack[fp..fp + n].iter().copied()),
                );
                s.locals = Some((fp as u32, n as u32));
            }
            let frame = &mut self.calls[i];
            frame.env = Some(scope);
            frame.caller = Caller::env(caller);
            if let Some(act) = frame.act.as_mut() {
                act.frame = Some(scope);
            }
        }
        self.calls[f].env
    }

    /// Looks a name up from a call whose scope is not made: the lambda's
    /// scope chain and the globals, then dynamic fallback (which makes it).
    #[inline(never)]
    fn lookup_lazy(&mut self, f: usize, sym: Sym, span: Span) -> Result<Value, Gc> {
        let lambda_env = self.calls[f].lambda_env;
        if let Some(v) = self.lookup_lexical(sym, lambda_env) {
            return Ok(v);
        }
        let env = self.materialize(f);
        self.lookup_fallback(sym, env, span)
    }

    /// Pops frames down to `stop` after an Error, adding each call to the
    /// Error's trace (except the innermost when `skip_top`: that call was
    /// already traced, or is a tail call of a builtin).
    #[inline(never)]
    fn unwind(&mut self, stop: usize, mut e: Gc, mut skip_top: bool) -> Gc {
        while self.calls.len() > stop {
            let Some(frame) = self.calls.pop() else { break };
            self.stack.truncate(frame.base);
            if let Some(act) = frame.act {
                self.depth -= 1;
                if !skip_top {
                    let (name, span) = self.call_site(&frame);
                    e = self.trace(e, name, span);
                }
                self.end_activation(act);
            }
            skip_top = false;
        }
        e
    }

    /// The function name and call site of `frame`, just popped: its own,
    /// or (`AT_CALLER`) those of the `Call` op its caller, now the top
    /// frame, stopped at.
    fn call_site(&self, frame: &Frame) -> (Option<Sym>, Span) {
        if frame.span != AT_CALLER {
            return (frame.name, frame.span);
        }
        let caller = self.calls.len() - 1;
        let (code, at) = (&self.code_of(caller).code, self.calls[caller].pc - 1);
        match code.ops.get(at) {
            Some(&Op::Call(_, name)) => (name, code.spans[at]),
            other => {
                debug_assert!(false, "a frame at its caller's op {other:?}");
                (frame.name, Span::NONE)
            }
        }
    }

    /// `if`'s slot in `intact_forms`.
    fn if_slot(&self) -> usize {
        (self.forms.if_.0 .0 & 127) as usize
    }

    /// The value of a direct call of `code`, whose formals are at `fp`,
    /// when it has an `Entry` whose test leads to a base case (see
    /// `entry_outcome`); `None`: the call runs in a frame.
    #[inline(always)]
    fn entry_value(&self, code: &Ops, fp: usize) -> Option<Value> {
        self.entry_outcome(code, fp, self.if_slot())?.ok()
    }

    /// Runs the entry test of a direct call of code with `entry`, whose
    /// formals are at `fp`, as the body's first op would (on Numbers, with
    /// `if` — whose `intact_forms` slot is `if_slot` — and the operator
    /// the builtins; `None` otherwise). `Ok`: the branch taken only
    /// returns a formal or a constant of `values` (the code's), and this
    /// is its value — what running the body would give, with nothing else
    /// happening. `Err`: where the body goes on (the test done).
    #[inline(always)]
    fn entry_outcome(&self, code: &Ops, fp: usize, if_slot: usize) -> Option<Result<Value, u32>> {
        let entry = code.entry.as_ref()?;
        if !self.intact_forms[if_slot] {
            return None;
        }
        let holds = match entry.test {
            EntryTest::LocalNum(op, slot, range) => match &self.stack[fp + slot as usize] {
                Value::Num(x) if self.prim_holds(op) => Some(range.holds(*x)),
                _ => None,
            },
            EntryTest::Locals(op, a, b) => {
                match (&self.stack[fp + a as usize], &self.stack[fp + b as usize]) {
                    (Value::Num(x), Value::Num(y)) if self.prim_holds(op) => {
                        compare_numbers(op, *x, *y)
                    }
                    _ => None,
                }
            }
        }?;
        Some(match entry.branches[holds as usize] {
            Branch::Local(slot) => Ok(self.stack[fp + slot as usize]),
            Branch::Const(i) => Ok(code.values[i as usize]),
            Branch::Start(pc) => Err(pc),
        })
    }

    /// Calls the builtin at `stack[base]` (not in tail position).
    #[inline(always)]
    fn call_builtin(&mut self, id: u32, base: usize, env: Env, span: Span) -> Result<Value, Gc> {
        self.fuel -= 1;
        if self.fuel == 0 {
            if let Err(e) = self.refuel(span) {
                self.stack.truncate(base);
                return Err(e);
            }
        }
        builtin_args!(args = &self.stack[base + 1..]);
        self.span = span;
        let func = self.builtins[id as usize].func;
        let result = match func(self, args, env) {
            Ok(Flow::Value(v)) => Ok(v),
            Ok(flow) => self.finish(flow),
            Err(e) => Err(e),
        };
        self.stack.truncate(base);
        result
    }

    /// Makes frame `f` run `proto` in `env` from its start (a tail
    /// evaluation: the call it belongs to continues).
    fn switch_code(&mut self, f: usize, proto: Rc<Proto>, env: Env) {
        let frame = &mut self.calls[f];
        self.stack.truncate(frame.top);
        frame.code_at = Rc::as_ptr(&proto);
        frame.code = Some(proto);
        frame.pc = 0;
        frame.env = env;
        // It no longer runs its lambda's code.
        frame.self_fn = None;
    }

    /// A tail call in a call whose scope is not made yet, of the same
    /// function with exactly its formals: the frame is reused in place
    /// (its bindings are shadowed by the new ones anyway).
    #[inline(always)]
    fn lazy_self_call(&mut self, f: usize, g: Gc, callee: usize) -> bool {
        let frame = &self.calls[f];
        let nargs = self.stack.len() - callee - 1;
        if frame.self_fn == Some(g) && frame.top - frame.fp == nargs {
            // The very lambda the frame was entered with, and as many
            // arguments: nothing to look up, and the function below them
            // is that lambda already, so only the arguments move down.
            let base = frame.base;
            move_values_down(&mut self.stack[base + 1..=callee + nargs], callee - base);
            self.stack.truncate(base + 1 + nargs);
            self.calls[f].pc = 0;
            return true;
        }
        let lambda = self.heap.lambda(g);
        if usize::from(lambda.direct) != nargs || !Rc::ptr_eq(&lambda.proto, self.code_of(f)) {
            return false;
        }
        let lambda_env = lambda.env;
        let base = frame.base;
        // Move the function and arguments down over the old ones (a few
        // values: a loop beats a call of memmove).
        let n = self.stack.len() - callee;
        for i in 0..n {
            self.stack[base + i] = self.stack[callee + i];
        }
        self.stack.truncate(base + n);
        let frame = &mut self.calls[f];
        frame.lambda_env = lambda_env;
        frame.pc = 0;
        // Now the frame runs this lambda (another closure of the same code,
        // perhaps), entered with exactly its formals.
        frame.self_fn = Some(g);
        true
    }

    /// An arithmetic or comparison op of the running frame `f` on `a` and
    /// `b`, past its fast path for Numbers: drops `drop` values (its
    /// operands, kept rooted on the stack until now) and pushes the result
    /// (the call may make `f`'s scope).
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn prim_push(
        &mut self,
        f: usize,
        op: PrimOp,
        form: Sym,
        a: Value,
        b: Value,
        drop: usize,
        span: Span,
    ) -> Result<(), Gc> {
        // Equality of any two values inline, counted as the builtin's
        // call; else the call of whatever the operator's name holds.
        let fast = match (a, b) {
            _ if !self.prim_holds(op) => None,
            (Value::Num(x), Value::Num(y)) => prim_numbers(op, x, y),
            _ if matches!(op, PrimOp::Eq | PrimOp::Ne) => {
                let same = self.equal_counted(a, b, span)?;
                Some(Value::bool(same == (op == PrimOp::Eq)))
            }
            _ => None,
        };
        let v = match fast {
            Some(v) => v,
            None => {
                let env = if self.is_lazy(f) {
                    self.materialize(f)
                } else {
                    self.calls[f].env
                };
                self.prim_slow(form, span, env, a, b)?
            }
        };
        let n = self.stack.len();
        self.stack.truncate(n - drop);
        self.stack.push(v);
        Ok(())
    }

    /// The value of a name read by the running frame `f` past the fast
    /// path for globals (which may make `f`'s scope, for dynamic
    /// fallback).
    #[inline(never)]
    fn name_value(&mut self, f: usize, sym: Sym, span: Span) -> Result<Value, Gc> {
        if !self.is_lazy(f) {
            return self.lookup(sym, self.calls[f].env, span);
        }
        // A function defined at top level: its free names are globals
        // unless dynamic fallback finds them.
        if self.calls[f].lambda_env.is_none() {
            if let Some(Some(v)) = self.globals.get(sym.index()) {
                return Ok(*v);
            }
        }
        self.lookup_lazy(f, sym, span)
    }

    /// A call by the running frame `f` (whose pc is saved) of what is at
    /// `stack[base]` when it is not a lambda: a builtin that uses the
    /// caller's scope (made now if `f` has none yet), or a value that is
    /// not a function. Pushes the call's value.
    #[inline(never)]
    fn call_other(&mut self, f: usize, base: usize, span: Span) -> Result<(), Gc> {
        let v = match self.stack[base] {
            Value::Builtin(id) => {
                let env = if self.is_lazy(f) && self.wants_env(id, base) {
                    self.materialize(f)
                } else {
                    self.calls[f].env
                };
                self.call_builtin(id, base, env, span)?
            }
            _ => self.sequence_value(base),
        };
        self.stack.push(v);
        Ok(())
    }

    /// A "call" of the value at `stack[base]`, which is not a function:
    /// the elements were evaluated in order, and the last is the value.
    /// Drops them.
    fn sequence_value(&mut self, base: usize) -> Value {
        let v = self.stack[self.stack.len() - 1];
        self.stack.truncate(base);
        v
    }

    /// A tail call by frame `f`, which has no scope yet, of the function
    /// at `stack[callee]`: when it is a loop (the call replaces itself in
    /// place, and the code, scope and formals stay where they are), does
    /// it and says `true`.
    #[inline(always)]
    fn tail_loop(
        &mut self,
        f: usize,
        callee: usize,
        span: Span,
        name: Option<Sym>,
    ) -> Result<bool, (Gc, bool)> {
        let Value::Lambda(g) = self.stack[callee] else {
            return Ok(false);
        };
        if !self.lazy_self_call(f, g, callee) {
            return Ok(false);
        }
        self.fuel -= 1;
        if self.fuel == 0 {
            self.refuel(span).map_err(|e| (e, true))?;
        }
        let frame = &mut self.calls[f];
        frame.span = span;
        frame.name = name;
        self.safe_point().map_err(|e| (e, false))?;
        Ok(true)
    }

    /// A call in tail position of frame `f`, of the function at
    /// `stack[base]` (`base` is the frame's base). Frames of top-level code
    /// have no call to replace, so they make an ordinary call (their next op
    /// returns its value). The error flag says whether the frame is already
    /// traced.
    fn tail_dispatch(
        &mut self,
        f: usize,
        mut callee: usize,
        mut env: Env,
        mut span: Span,
        mut name: Option<Sym>,
    ) -> Result<Next, (Gc, bool)> {
        loop {
            // Root the environment: it may be a `let` scope nothing holds.
            self.calls[f].env = env;
            match self.stack[callee] {
                Value::Lambda(g) => {
                    if self.is_lazy(f) {
                        if self.lazy_self_call(f, g, callee) {
                            self.fuel -= 1;
                            if self.fuel == 0 {
                                if let Err(e) = self.refuel(span) {
                                    return Err((e, true));
                                }
                            }
                            let frame = &mut self.calls[f];
                            frame.span = span;
                            frame.name = name;
                            return match self.safe_point() {
                                Ok(()) => Ok(Next::Enter),
                                Err(e) => Err((e, false)),
                            };
                        }
                        // Another function replaces this call: its scope
                        // stays visible to the callee's dynamic fallback.
                        env = self.materialize(f);
                    }
                    let Some(mut activation) = self.calls[f].act.take() else {
                        return match self.enter_call(callee, Caller::env(env), span, name) {
                            Ok(Some(v)) => {
                                self.stack.push(v);
                                Ok(Next::Enter)
                            }
                            Ok(None) => Ok(Next::Enter),
                            Err(e) => Err((e, false)),
                        };
                    };
                    self.fuel -= 1;
                    if self.fuel == 0 {
                        if let Err(e) = self.refuel(span) {
                            self.calls[f].act = Some(activation);
                            return Err((e, true));
                        }
                    }
                    // The call replaces this one: move it down to where
                    // this call's function was.
                    let base = self.calls[f].base;
                    if callee != base {
                        self.stack.drain(base..callee);
                    }
                    let bound = self.bind(&mut activation, base, env, span, name);
                    self.calls[f].act = Some(activation);
                    return match bound {
                        Ok(Ok((proto, scope))) => {
                            let frame = &mut self.calls[f];
                            frame.fp = base + 1;
                            frame.top = base + 1 + proto.slot_count();
                            frame.code_at = Rc::as_ptr(&proto);
                            frame.code = Some(proto);
                            frame.pc = 0;
                            frame.env = Some(scope);
                            frame.self_fn = None;
                            frame.span = span;
                            frame.name = name;
                            match self.safe_point() {
                                Ok(()) => Ok(Next::Enter),
                                Err(e) => Err((e, false)),
                            }
                        }
                        Ok(Err(v)) => Ok(Next::Return(v)),
                        Err(e) => Err((e, true)),
                    };
                }
                Value::Builtin(id) => {
                    if self.is_lazy(f) && self.wants_env(id, callee) {
                        env = self.materialize(f);
                    }
                    // Counted like any other call.
                    self.fuel -= 1;
                    if self.fuel == 0 {
                        if let Err(e) = self.refuel(span) {
                            return Err((e, true));
                        }
                    }
                    builtin_args!(args = &self.stack[callee + 1..]);
                    self.span = span;
                    let func = self.builtins[id as usize].func;
                    let top = self.calls[f].act.is_none();
                    match func(self, args, env) {
                        Ok(Flow::Value(v)) => {
                            self.stack.truncate(callee);
                            return Ok(Next::Return(v));
                        }
                        Ok(Flow::Call {
                            base: b,
                            env: e,
                            span: s,
                            name: n,
                        }) => {
                            callee = b;
                            env = e;
                            span = s;
                            name = n;
                        }
                        Ok(Flow::Eval { proto, env: e }) => {
                            self.switch_code(f, proto, e);
                            return Ok(Next::Enter);
                        }
                        Err(e) => return Err((e, !top)),
                    }
                }
                _ => return Ok(Next::Return(self.sequence_value(callee))),
            }
        }
    }

    /// An inlined form whose name no longer holds its builtin (`guard`,
    /// reached in frame `f` running in `env`): its source is run as an
    /// ordinary call. In tail position the frame switches to that code
    /// (`None`: the caller reloads the frame); otherwise its value and
    /// where the frame's code continues.
    #[inline(never)]
    fn run_rebound_form(
        &mut self,
        f: usize,
        guard: &Guard,
        env: Env,
    ) -> Result<Option<(Value, usize)>, Gc> {
        let (form, generic, span, end, tail) =
            (guard.form, guard.generic, guard.span, guard.end, guard.tail);
        let mut shadowed = self.shadowed_forms(env);
        shadowed.push(form);
        let proto = self.compile_eval_shadowed(generic, span, shadowed)?;
        if tail {
            self.switch_code(f, proto, env);
            return Ok(None);
        }
        self.calls[f].pc = end as usize;
        let v = self.run_proto(proto, env)?;
        Ok(Some((v, end as usize)))
    }

    /// Pops frame `f`, the running one, and puts `value` where its
    /// values began: for a call, in place of the function. The stack's
    /// height is written once (a truncate and then a push would write it,
    /// read it back and write it again, each waiting on the one before).
    #[inline(always)]
    fn return_value(&mut self, f: usize, value: Value) {
        let base = self.calls[f].base;
        if self.stack.len() > base {
            self.pop_frame_to(f, base + 1);
            self.stack[base] = value;
        } else {
            self.pop_frame(f);
            self.stack.push(value);
        }
    }

    /// Drops the running frame `f` (the last one) with its values, and
    /// ends its call.
    #[inline(always)]
    fn pop_frame(&mut self, f: usize) {
        let base = self.calls[f].base;
        self.pop_frame_to(f, base);
    }

    /// Drops the running frame `f`, leaving `height` values on the value
    /// stack, and ends its call. The frame's fields are read where they
    /// are (a whole copy of a frame just pushed would load across the
    /// stores of its fields: see `push_lazy_frame`).
    #[inline(always)]
    fn pop_frame_to(&mut self, f: usize, height: usize) {
        debug_assert_eq!(f + 1, self.calls.len());
        let act = self.calls[f].act;
        // The running frame is the last one: said so, dropping it is one
        // test of its code rather than a loop over frames.
        let [_] = self.calls[f..] else {
            unreachable!("the running frame is the last")
        };
        self.calls.truncate(f);
        self.stack.truncate(height);
        if let Some(act) = act {
            self.depth -= 1;
            self.end_activation(act);
        }
    }

    /// Runs frames, starting with `calls[stop]` (the top one), until that
    /// frame returns; its value is the result. Lisp calls push frames here
    /// instead of recursing natively.
    ///
    /// This loop runs the common ops — their fast paths inline, their
    /// other paths through small out-of-line helpers — so that the op
    /// loop's state stays in registers. A test past its fast path, a
    /// rebound form and the rare ops are run by `run_step`, from the
    /// frame's saved state.
    fn run(&mut self, stop: usize) -> Result<Value, Gc> {
        let mut proto = self.code_of(self.calls.len() - 1).clone();
        let if_slot = self.if_slot();
        'frame: loop {
            let mut f = self.calls.len() - 1;
            let mut pc = frame!(self, f).pc;
            let mut env = frame!(self, f).env;
            let mut fp = frame!(self, f).fp;
            let mut lazy = self.is_lazy(f);
            if !std::ptr::eq(Rc::as_ptr(&proto), frame!(self, f).code_at) {
                proto = self.code_of(f).clone();
            }
            let code = &proto.code;
            let ops = &*code.ops;
            // Room for every operand the frame's code pushes (`push_operand`).
            self.stack.reserve(code.max_stack as usize);
            // The op just fetched, run by `run_step` from the frame.
            macro_rules! slow {
                () => {{
                    frame!(mut self, f).pc = pc - 1;
                    match self.run_step(stop) {
                        Ok(None) => continue 'frame,
                        Ok(Some(v)) => return Ok(v),
                        Err(e) => return Err(e),
                    }
                }};
            }
            macro_rules! global_fast {
                ($sym:expr) => {{
                    match self.globals.get($sym.index()) {
                        Some(Some(v)) if lazy && frame!(self, f).lambda_env.is_none() => Some(*v),
                        _ => None,
                    }
                }};
            }
            // `Name` past the fast path for globals: pushes the value.
            macro_rules! name_push {
                ($sym:expr) => {{
                    match self.name_value(f, $sym, code.spans[pc - 1]) {
                        Ok(v) => {
                            lazy = self.is_lazy(f);
                            env = frame!(self, f).env;
                            self.stack.push(v);
                            continue;
                        }
                        Err(e) => return Err(self.unwind(stop, e, false)),
                    }
                }};
            }
            // An arithmetic or comparison op past its fast path, on `$a`
            // and `$b` (which stay rooted where they are until it is done):
            // drops `$drop` values and pushes the result.
            macro_rules! prim_push {
                ($op:expr, $form:expr, $a:expr, $b:expr, $drop:expr) => {{
                    frame!(mut self, f).pc = pc;
                    let span = code.spans[pc - 1];
                    if let Err(e) = self.prim_push(f, $op, $form, $a, $b, $drop, span) {
                        return Err(self.unwind(stop, e, false));
                    }
                    lazy = self.is_lazy(f);
                    env = frame!(self, f).env;
                    continue;
                }};
            }
            macro_rules! local_num {
                ($op:expr, $slot:expr, $k:expr) => {{
                    match &self.stack[fp + $slot as usize] {
                        Value::Num(x) if self.prim_holds($op) => prim_numbers($op, *x, $k as i64),
                        _ => None,
                    }
                }};
            }
            // A test's outcome (`None`: past its fast path): the
            // `JumpIfFalse` after it done here, or the test and the jump
            // run by `run_step`.
            macro_rules! test_jump {
                ($holds:expr, $target:expr) => {{
                    match $holds {
                        Some(holds) => {
                            pc = if holds { pc + 1 } else { $target as usize };
                            continue;
                        }
                        None => slow!(),
                    }
                }};
            }
            macro_rules! test_local_num {
                ($op:expr, $slot:expr, $k:expr, $target:expr) => {{
                    let holds = match &self.stack[fp + $slot as usize] {
                        Value::Num(x) if self.prim_holds($op) => {
                            compare_numbers($op, *x, $k as i64)
                        }
                        _ => None,
                    };
                    test_jump!(holds, $target)
                }};
            }
            macro_rules! test_locals {
                ($op:expr, $x:expr, $y:expr, $target:expr) => {{
                    let holds = match (&self.stack[fp + $x as usize], &self.stack[fp + $y as usize])
                    {
                        (Value::Num(x), Value::Num(y)) if self.prim_holds($op) => {
                            compare_numbers($op, *x, *y)
                        }
                        _ => None,
                    };
                    test_jump!(holds, $target)
                }};
            }
            // A `Call(argc, name)`: its op just run.
            macro_rules! call {
                ($argc:expr, $name:expr) => {{
                    let (argc, name): (u32, Option<Sym>) = ($argc, $name);
                    let base = self.stack.len() - argc as usize - 1;
                    // Loaded only where a call needs it: a frame pushed
                    // here finds it from this frame's pc (`AT_CALLER`).
                    let span = || code.spans[pc - 1];
                    // The commonest call: a lambda entered directly
                    // (see `enter_call`), its body run in a frame.
                    let frame = &frame!(self, f);
                    let direct = match self.stack[base] {
                        // The lambda this frame was entered with, with
                        // as many arguments (a recursion): its code is
                        // this one, nothing to look up.
                        Value::Lambda(g)
                            if frame.self_fn == Some(g)
                                && frame.top - frame.fp == argc as usize
                                && self.depth < self.max_depth
                                && self.fuel > 1 =>
                        {
                            Some((g, Rc::as_ptr(&proto), frame.lambda_env, true))
                        }
                        Value::Builtin(id) if !lazy || !self.wants_env(id, base) => {
                            frame!(mut self, f).pc = pc;
                            match self.call_builtin(id, base, env, span()) {
                                Ok(v) => push_operand(&mut self.stack, v),
                                Err(e) => return Err(self.unwind(stop, e, false)),
                            }
                            continue;
                        }
                        Value::Lambda(g) => {
                            let lambda = self.heap.lambda(g);
                            let direct = usize::from(lambda.direct) == argc as usize
                                && self.depth < self.max_depth
                                && self.fuel > 1;
                            let (code_at, lambda_env) = (Rc::as_ptr(&lambda.proto), lambda.env);
                            if direct && !lambda.general {
                                if self.shaped_in_place(g, base) {
                                    continue;
                                }
                            }
                            if !direct {
                                // Bound or rest arguments, limits, fuel.
                                frame!(mut self, f).pc = pc;
                                let caller = if lazy {
                                    Caller::frame(f)
                                } else {
                                    Caller::env(env)
                                };
                                match self.enter_call_slow(base, caller, span(), name) {
                                    Ok(Some(v)) => {
                                        self.stack.push(v);
                                        lazy = self.is_lazy(f);
                                        env = frame!(self, f).env;
                                        continue;
                                    }
                                    Ok(None) => continue 'frame,
                                    Err(e) => return Err(self.unwind(stop, e, false)),
                                }
                            }
                            // Its `Entry`, if any, was tried by `shaped_value`.
                            Some((g, code_at, lambda_env, false))
                        }
                        _ => None,
                    };
                    let Some((g, code_at, lambda_env, self_call)) = direct else {
                        frame!(mut self, f).pc = pc;
                        if let Err(e) = self.call_other(f, base, span()) {
                            return Err(self.unwind(stop, e, false));
                        }
                        lazy = self.is_lazy(f);
                        env = frame!(self, f).env;
                        continue;
                    };
                    // A base case of a recursion answered from the
                    // arguments: no frame. Otherwise the frame starts past
                    // the test, done here.
                    let mut start = 0;
                    if self_call {
                        match self.entry_outcome(code, base + 1, if_slot) {
                            Some(Ok(v)) => {
                                self.fuel -= 1;
                                self.stack.truncate(base + 1);
                                self.stack[base] = v;
                                continue;
                            }
                            Some(Err(at)) => start = at as usize,
                            None => {}
                        }
                    }
                    frame!(mut self, f).pc = pc;
                    let caller = if lazy {
                        Caller::frame(f)
                    } else {
                        Caller::env(env)
                    };
                    self.fuel -= 1;
                    if let Err(e) = self.push_lazy_frame(
                        code_at,
                        base,
                        argc as usize,
                        AT_CALLER,
                        None,
                        lambda_env,
                        caller,
                        Some(g),
                    ) {
                        return Err(self.unwind(stop, e, false));
                    }
                    if std::ptr::eq(code_at, Rc::as_ptr(&proto)) {
                        // Room for the new frame's operands (`push_operand`).
                        self.stack.reserve(code.max_stack as usize);
                        f += 1;
                        fp = base + 1;
                        pc = start;
                        env = None;
                        lazy = true;
                        continue;
                    }
                    continue 'frame;
                }};
            }
            // `op` on the two values on top, on Numbers; past that fast
            // path, the two replaced by the result and the next op run.
            macro_rules! top_two {
                ($op:expr, $form:expr) => {{
                    let (op, n) = ($op, self.stack.len());
                    let v = match (&self.stack[n - 2], &self.stack[n - 1]) {
                        (Value::Num(x), Value::Num(y)) if self.prim_holds(op) => {
                            prim_numbers(op, *x, *y)
                        }
                        _ => None,
                    };
                    match v {
                        Some(v) => v,
                        None => {
                            let (a, b) = (self.stack[n - 2], self.stack[n - 1]);
                            prim_push!(op, $form, a, b, 2)
                        }
                    }
                }};
            }
            // A fused push: both values pushed and the op the second
            // stands for skipped; a `Call` after it is made here rather
            // than dispatched.
            macro_rules! fused_push {
                ($a:expr, $b:expr) => {{
                    let (a, b) = ($a, $b);
                    push_operand(&mut self.stack, a);
                    push_operand(&mut self.stack, b);
                    pc += 1;
                    if let Some(&Op::Call(argc, name)) = ops.get(pc) {
                        pc += 1;
                        call!(argc, name)
                    }
                    continue;
                }};
            }
            loop {
                #[cfg(debug_assertions)]
                self.assert_depth(f, pc, code);
                // SAFETY: `pc < ops.len()`. The lowered code passed
                // `lower::depth::check`, which refuses code where a path
                // runs past the last op or jumps past it, and code whose
                // fused ops lack the op they skip; every pc run here is
                // one of those it followed: 0 when a frame starts (the code
                // has ops), its `Entry`'s starts (checked to be reached),
                // the op after one that goes on, a jump's target, or a pc
                // saved in the frame by this loop or `run_step` (an op
                // being run, the one after it, or a guard's end).
                let op = unsafe { ops.get_unchecked(pc) };
                pc += 1;
                let value = match *op {
                    Op::Const(i) => {
                        let v = code.values[i as usize];
                        push_operand(&mut self.stack, v);
                        continue;
                    }
                    Op::Local(slot) => {
                        let v = self.stack[fp + slot as usize];
                        push_operand(&mut self.stack, v);
                        continue;
                    }
                    Op::Name(sym) => {
                        let Some(v) = global_fast!(sym) else {
                            name_push!(sym)
                        };
                        push_operand(&mut self.stack, v);
                        continue;
                    }
                    Op::NameLocalNum(sym, op, slot, k) => {
                        // Otherwise as `Name`: the `PrimLocalNum` runs next.
                        let Some(v) = global_fast!(sym) else {
                            name_push!(sym)
                        };
                        let Some(r) = local_num!(op, slot, k) else {
                            // The `PrimLocalNum` runs next.
                            push_operand(&mut self.stack, v);
                            continue;
                        };
                        // With the `PrimLocalNum` that follows.
                        fused_push!(v, r)
                    }
                    Op::LocalLocal(a, b) => {
                        let (x, y) = (self.stack[fp + a as usize], self.stack[fp + b as usize]);
                        // With the `Local(b)` that follows.
                        fused_push!(x, y)
                    }
                    Op::LocalNums(op, a, j, op2, b, k) => {
                        let (Some(v), Some(w)) = (local_num!(op, a, j), local_num!(op2, b, k))
                        else {
                            // As the first `PrimLocalNum`; the second runs next.
                            let x = self.stack[fp + a as usize];
                            match local_num!(op, a, j) {
                                Some(v) => {
                                    push_operand(&mut self.stack, v);
                                    continue;
                                }
                                None => prim_push!(
                                    op,
                                    self.forms.prims[op as usize].0,
                                    x,
                                    Value::Num(j as i64),
                                    0
                                ),
                            }
                        };
                        push_operand(&mut self.stack, v);
                        push_operand(&mut self.stack, w);
                        // The `PrimLocalNum` that follows, done.
                        pc += 1;
                        continue;
                    }
                    Op::PrimLocalNum(op, slot, k) => match local_num!(op, slot, k) {
                        Some(v) => {
                            push_operand(&mut self.stack, v);
                            continue;
                        }
                        None => {
                            let x = self.stack[fp + slot as usize];
                            prim_push!(
                                op,
                                self.forms.prims[op as usize].0,
                                x,
                                Value::Num(k as i64),
                                0
                            )
                        }
                    },
                    Op::PrimLocals(op, x, y) => {
                        let (a, b) = (self.stack[fp + x as usize], self.stack[fp + y as usize]);
                        let v = match (&a, &b) {
                            (Value::Num(x), Value::Num(y)) if self.prim_holds(op) => {
                                prim_numbers(op, *x, *y)
                            }
                            _ => None,
                        };
                        let Some(v) = v else {
                            prim_push!(op, self.forms.prims[op as usize].0, a, b, 0)
                        };
                        push_operand(&mut self.stack, v);
                        continue;
                    }
                    Op::Prim(op, form) => {
                        let v = top_two!(op, form);
                        let n = self.stack.len();
                        self.stack.truncate(n - 1);
                        self.stack[n - 2] = v;
                        continue;
                    }
                    // The `Return` that follows, done here on Numbers;
                    // otherwise as `Prim`, and the `Return` returns the
                    // result.
                    Op::PrimReturn(op, form) => top_two!(op, form),
                    Op::TestLocalNum(op, slot, k, target) => test_local_num!(op, slot, k, target),
                    Op::TestLocals(op, x, y, target) => test_locals!(op, x, y, target),
                    Op::IfTestLocalNum(op, slot, k, target, _) => {
                        if !self.intact_forms[if_slot] {
                            slow!()
                        }
                        test_local_num!(op, slot, k, target)
                    }
                    Op::IfTestLocals(op, x, y, target, _) => {
                        if !self.intact_forms[if_slot] {
                            slow!()
                        }
                        test_locals!(op, x, y, target)
                    }
                    Op::Guard(_, form) => {
                        if !self.intact_forms[(form.0 & 127) as usize] {
                            slow!()
                        }
                        continue;
                    }
                    Op::JumpIfFalse(target, _) => match self.stack.last() {
                        Some(Value::Num(x)) => {
                            if *x == 0 {
                                pc = target as usize;
                            }
                            self.stack.pop();
                            continue;
                        }
                        _ => slow!(),
                    },
                    Op::Jump(target) => {
                        pc = target as usize;
                        continue;
                    }
                    Op::Pop => {
                        self.stack.pop();
                        continue;
                    }
                    Op::Call(argc, name) => call!(argc, name),
                    Op::TailSelf(i) => {
                        let tail = &code.tail_selfs[i as usize];
                        if let Some(Value::Lambda(g)) = global_fast!(tail.sym) {
                            match self.tail_self(f, fp, g, code, tail) {
                                Ok(true) => pc = 0,
                                Ok(false) => {}
                                Err(e) => return Err(self.unwind(stop, e, false)),
                            }
                        }
                        // Otherwise the ops of the call follow.
                        continue;
                    }
                    Op::TailCall(argc, name) => {
                        let span = code.spans[pc - 1];
                        let callee = self.stack.len() - argc as usize - 1;
                        if lazy {
                            match self.tail_loop(f, callee, span, name) {
                                Ok(true) => {
                                    pc = 0;
                                    continue;
                                }
                                Ok(false) => {}
                                Err((e, skip)) => return Err(self.unwind(stop, e, skip)),
                            }
                        }
                        let accessed = match self.stack[callee] {
                            Value::Lambda(g) => self.call_in_place(g, callee),
                            _ => None,
                        };
                        if let Some(v) = accessed {
                            // The running call returns what that call gives.
                            v
                        } else {
                            frame!(mut self, f).pc = pc;
                            match self.tail_dispatch(f, callee, env, span, name) {
                                Ok(Next::Return(v)) => v,
                                Ok(Next::Enter) => continue 'frame,
                                Err((e, skip)) => return Err(self.unwind(stop, e, skip)),
                            }
                        }
                    }
                    Op::Return => match self.stack.last() {
                        Some(v) => *v,
                        None => Value::Unit,
                    },
                    Op::ReturnLocal(slot) => self.stack[fp + slot as usize],
                    // Every op is named (no default arm): the dispatch
                    // needs no range test of the op before its jump.
                    Op::Tree(_) | Op::TailTree(_) | Op::EvalHead(_) | Op::NoSelection => slow!(),
                };
                // The frame returns `value`.
                if f == stop {
                    self.pop_frame(f);
                    return Ok(value);
                }
                self.return_value(f, value);
                // Back in a caller running this same code (a recursion):
                // the code stays, only the frame's place changes.
                let caller = &self.calls[f - 1];
                if std::ptr::eq(caller.code_at, Rc::as_ptr(&proto)) {
                    (pc, env, fp) = (caller.pc, caller.env, caller.fp);
                    f -= 1;
                    lazy = self.is_lazy(f);
                    continue;
                }
                continue 'frame;
            }
        }
    }

    /// The invariant the op loop's unchecked pushes rest on (see
    /// `lower::depth`): frame `f` has as many operands on the stack as its
    /// code's check found at `pc`. A `Return` (which pushes nothing) may
    /// find more: after a tail call that entered its callee above a frame
    /// it could not replace, values a builtin left for that call (`try`'s
    /// handler, say) are still below the value returned.
    #[cfg(debug_assertions)]
    fn assert_depth(&self, f: usize, pc: usize, code: &crate::lower::Ops) {
        let frame = &self.calls[f];
        let depth = code.depths[pc];
        let ops = &code.ops;
        assert_ne!(
            depth,
            crate::lower::depth::UNREACHED,
            "op {pc} is never reached: {ops:?}"
        );
        let (have, want) = (self.stack.len(), frame.top + depth as usize);
        match ops[pc] {
            Op::Return => assert!(
                have >= want,
                "operands of op {pc} (Return): {have} < {want}"
            ),
            op => assert_eq!(have, want, "operands of op {pc} ({op:?}) in {ops:?}"),
        }
    }

    /// Runs the op at the top frame's saved pc, one that `run` hands over
    /// (a test past its fast path, a rebound form, a condition that is not
    /// a Number, a tree form, `EvalHead`, `NoSelection`), with every path
    /// of it, from the frame's saved state: `None` when it is done and the
    /// state saved again (the top frame may have changed), or the value
    /// `calls[stop]` returned.
    #[inline(never)]
    fn run_step(&mut self, stop: usize) -> Result<Option<Value>, Gc> {
        let f = self.calls.len() - 1;
        let (mut pc, fp) = (self.calls[f].pc, self.calls[f].fp);
        let proto = self.code_of(f).clone();
        let code = &proto.code;
        let if_slot = self.if_slot();
        macro_rules! throw {
            ($e:expr) => {{
                let e = $e;
                return Err(self.unwind(stop, e, false));
            }};
        }
        // The running call's scope, made now if it has none yet.
        macro_rules! scope {
            () => {{
                if self.is_lazy(f) {
                    self.materialize(f)
                } else {
                    self.calls[f].env
                }
            }};
        }
        // Done: the frame goes on at `$pc`.
        macro_rules! next {
            ($pc:expr) => {{
                self.calls[f].pc = $pc;
                return Ok(None);
            }};
        }
        // An inlined form whose name no longer holds its builtin (guard
        // `$g`): its source runs as an ordinary call.
        macro_rules! rebound {
            ($g:expr) => {{
                self.calls[f].pc = pc;
                let env = scope!();
                match self.run_rebound_form(f, &code.guards[$g as usize], env) {
                    Ok(Some((v, end))) => {
                        self.stack.push(v);
                        next!(end)
                    }
                    // The frame was replaced or entered.
                    Ok(None) => return Ok(None),
                    Err(e) => throw!(e),
                }
            }};
        }
        // A comparison past its fast path: the call of whatever its name
        // holds (or equality of any two values), its result pushed for
        // the `JumpIfFalse` after it.
        macro_rules! test_slow {
            ($op:expr, $a:expr, $b:expr) => {{
                let (op, a, b) = ($op, $a, $b);
                self.calls[f].pc = pc;
                let form = self.forms.prims[op as usize].0;
                match self.prim_push(f, op, form, a, b, 0, code.spans[pc - 1]) {
                    Ok(()) => return Ok(None),
                    Err(e) => throw!(e),
                }
            }};
        }
        let op = code.ops[pc];
        pc += 1;
        let value = match op {
            Op::TestLocalNum(op, slot, k, _) => {
                test_slow!(op, self.stack[fp + slot as usize], Value::Num(k as i64))
            }
            Op::TestLocals(op, x, y, _) => {
                test_slow!(op, self.stack[fp + x as usize], self.stack[fp + y as usize])
            }
            Op::IfTestLocalNum(op, slot, k, _, g) => {
                if !self.intact_forms[if_slot] {
                    rebound!(g)
                }
                test_slow!(op, self.stack[fp + slot as usize], Value::Num(k as i64))
            }
            Op::IfTestLocals(op, x, y, _, g) => {
                if !self.intact_forms[if_slot] {
                    rebound!(g)
                }
                test_slow!(op, self.stack[fp + x as usize], self.stack[fp + y as usize])
            }
            Op::Guard(i, form) => {
                if self.intact_forms[(form.0 & 127) as usize] {
                    next!(pc)
                }
                rebound!(i)
            }
            Op::JumpIfFalse(target, cond) => match self.stack.pop() {
                Some(Value::Num(0)) => next!(target as usize),
                Some(Value::Num(_)) => next!(pc),
                other => {
                    let span = code.spans[pc - 1];
                    let v = other.unwrap_or(Value::Nil);
                    throw!(self.condition_error(v, span, cond.name()))
                }
            },
            Op::Tree(i) => {
                self.calls[f].pc = pc;
                let env = scope!();
                match self.eval(&code.trees[i as usize], env) {
                    Ok(v) => {
                        self.stack.push(v);
                        return Ok(None);
                    }
                    Err(e) => throw!(e),
                }
            }
            Op::TailTree(i) => {
                self.calls[f].pc = pc;
                let env = scope!();
                match self.exec(&code.trees[i as usize], env, true) {
                    Ok(Flow::Value(v)) => v,
                    Ok(Flow::Call {
                        base: b,
                        env: e,
                        span: s,
                        name: n,
                    }) => match self.tail_dispatch(f, b, e, s, n) {
                        Ok(Next::Return(v)) => v,
                        Ok(Next::Enter) => return Ok(None),
                        Err((e, skip)) => return Err(self.unwind(stop, e, skip)),
                    },
                    Ok(Flow::Eval { proto, env: e }) => {
                        self.switch_code(f, proto, e);
                        return Ok(None);
                    }
                    Err(e) => throw!(e),
                }
            }
            Op::EvalHead(end) => {
                let n = self.stack.len();
                let (e, h, x) = (self.stack[n - 3], self.stack[n - 2], self.stack[n - 1]);
                if let (Value::Builtin(e), Value::Builtin(h), Value::Q(g)) = (e, h, x) {
                    let first = self.heap.cons(g).head;
                    if e == self.forms.eval.1
                        && h == self.forms.head.1
                        && !matches!(first, Value::Sym(_) | Value::S(_))
                    {
                        // Counted as the two calls it stands for.
                        for _ in 0..2 {
                            self.fuel -= 1;
                            if self.fuel == 0 {
                                if let Err(e) = self.refuel(code.spans[pc - 1]) {
                                    throw!(e)
                                }
                            }
                        }
                        self.stack.truncate(n - 3);
                        self.stack.push(first);
                        next!(end as usize)
                    }
                }
                // Otherwise the calls it stands before run.
                next!(pc)
            }
            Op::NoSelection => {
                let span = code.spans[pc - 1];
                throw!(self.error_at("no selection found", span))
            }
            // `run` does every path of every other op itself.
            other => unreachable!("op {:?} is run by `run`", other),
        };
        // The frame returns `value`.
        self.pop_frame(f);
        if f == stop {
            return Ok(Some(value));
        }
        self.stack.push(value);
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_move_down_whole() {
        let mut heap = Heap::new(1 << 20);
        let list = heap.qlist(&[Value::Num(7)]);
        let values = [
            Value::Num(-3),
            Value::Float(2.5),
            Value::Sym(Sym(9)),
            list,
            Value::Nil,
            Value::Builtin(4),
        ];
        for by in 1..values.len() {
            let mut stack = values.to_vec();
            move_values_down(&mut stack, by);
            for (i, v) in stack[..values.len() - by].iter().enumerate() {
                assert!(v.same(values[i + by]), "by {}: slot {}", by, i);
            }
            for (i, v) in stack[values.len() - by..].iter().enumerate() {
                let j = values.len() - by + i;
                assert!(v.same(values[j]), "by {}: slot {} untouched", by, j);
            }
        }
    }
}
