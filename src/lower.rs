//! Lowering: a compiled `Code` tree -> a flat list of stack-machine ops,
//! which the VM runs in one loop over an explicit frame stack (no native
//! recursion per Lisp call, no `Result` threaded through every node).
//!
//! Calls, arithmetic, names, `if`, `do` and `select` become ops. The rarer
//! forms (`\`, `def`/`=`, `case`, `let`) are kept as trees and run by the
//! tree evaluator from a `Tree` op. A special form's guard op checks that
//! its name still holds the builtin; when it does not, the form's source is
//! run as an ordinary call instead, so results are the same either way.

use std::cell::Cell;

use crate::compile::{Call, Code, PrimOp, SpecialForms};
use crate::error::Span;
use crate::symbol::Sym;
use crate::value::Value;

pub mod depth;

/// Which form a conditional jump belongs to (for its error message).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Cond {
    If,
    Select,
}

impl Cond {
    pub fn name(self) -> &'static str {
        match self {
            Cond::If => "if",
            Cond::Select => "select",
        }
    }
}

/// One instruction. Operands are pushed on the VM's value stack; the span
/// of each op is in `Ops::spans` at the same index.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    /// Push `values[i]`.
    Const(u32),
    /// Push formal `i` of the running call.
    Local(u32),
    /// Push the value of a name (scopes, globals, dynamic fallback).
    Name(Sym),
    /// Pop two operands, push `(form a b)`.
    Prim(PrimOp, Sym),
    /// `Prim` in tail position, always followed by its `Return`: on two
    /// Numbers the running code ends with the result (the `Return` done
    /// here); otherwise as `Prim`, and the `Return` runs.
    PrimReturn(PrimOp, Sym),
    /// Push `(form local k)`: a formal and a Number constant, such as
    /// `(- n 1)` or `(< n 2)`.
    PrimLocalNum(PrimOp, u16, i32),
    /// Pop a condition; jump when it is 0.
    JumpIfFalse(u32, Cond),
    /// `(op formal k)` as a condition, always followed by the
    /// `JumpIfFalse` it stands for (whose target it holds): on Numbers,
    /// jump to the target when the result is 0, else skip the
    /// `JumpIfFalse`; otherwise push the result of the call and let the
    /// `JumpIfFalse` test it.
    TestLocalNum(PrimOp, u16, i32, u32),
    /// Push `(form a b)` of two formals, such as `(+ x y)`.
    PrimLocals(PrimOp, u16, u16),
    /// `TestLocalNum` for two formals, such as `(< y x)`.
    TestLocals(PrimOp, u16, u16, u32),
    /// `Guard(i, if)` and the `TestLocalNum` of its condition in one op
    /// (the test reads a formal and has no effect, so it may be done
    /// before the guard is looked at): when `if` and the operator hold
    /// their builtins and the formal is a Number, the test's jump;
    /// otherwise what the guard and then the test would do.
    IfTestLocalNum(PrimOp, u16, i32, u32, u32),
    /// The same for `TestLocals`.
    IfTestLocals(PrimOp, u16, u16, u32, u32),
    Jump(u32),
    /// `Name(sym)` and the `PrimLocalNum` that always follows it, such as
    /// the `f` and `(- n 1)` of `(f (- n 1))`, in one op: when both fast
    /// paths hold, pushes both values and skips the `PrimLocalNum`;
    /// otherwise does what `Name(sym)` does, and the `PrimLocalNum` runs.
    /// (The ops it stands for stay in place, so a jump to the second one,
    /// or any fallback, runs them as they are.)
    NameLocalNum(Sym, PrimOp, u16, i32),
    /// `Local(a)` and the `Local(b)` that always follows it: pushes both
    /// and skips the `Local(b)`.
    LocalLocal(u16, u16),
    /// `PrimLocalNum(op, a, j)` and the `PrimLocalNum(op2, b, k)` that
    /// always follows it, such as `(- n 1) (+ acc 1)`: when both fast
    /// paths hold, pushes both results and skips the second; otherwise as
    /// the first.
    LocalNums(PrimOp, u16, i32, PrimOp, u16, i32),
    /// Stands before the ops of a call in tail position of a global
    /// function with arguments that are formals, constants or `(op formal
    /// k)` / `(op formal formal)` (`tail_selfs[i]`), such as
    /// `(loop (- n 1) (+ acc 1))`. When the call would reuse the running
    /// frame (the name holds the very lambda the frame was entered with,
    /// as many arguments as formals) and every argument has its fast path,
    /// computes the arguments straight into the formals and starts the
    /// code again; otherwise the ops that follow run.
    TailSelf(u32),
    /// Drop the top value.
    Pop,
    /// Call the function below the `n` arguments on top; push its value.
    Call(u32, Option<Sym>),
    /// The same in tail position: the call replaces the running one.
    TailCall(u32, Option<Sym>),
    /// End the running code with the top value.
    Return,
    /// End the running code with formal `i` (`Local(i)` then `Return`).
    ReturnLocal(u32),
    /// Push the value of `trees[i]`, run by the tree evaluator.
    Tree(u32),
    /// Run `trees[i]` in tail position: its value or tail call ends the code.
    TailTree(u32),
    /// Check that the form's name (`guards[i].form`, also held here) still
    /// holds its builtin; if not, run the form's source as an ordinary
    /// call and continue at `guards[i].end`.
    Guard(u32, Sym),
    /// `select` found no true clause.
    NoSelection,
    /// Stands before the `Call` ops of `(eval (head x))`, with the values
    /// of `eval`, `head` and `x` on top. When those are the builtins and
    /// `x` is a Q-expression whose first element evaluates to itself (not
    /// a Symbol or S-expression), replaces the three by that element and
    /// jumps to the target (past the calls: what they would give, with no
    /// list cell made); otherwise the calls run.
    EvalHead(u32),
}

/// A special form's guard: what to run when its name was rebound.
pub struct Guard {
    pub form: Sym,
    /// The whole source form (kept alive by the proto's constants).
    pub generic: Value,
    pub span: Span,
    /// Where execution continues after running `generic` (non-tail).
    pub end: u32,
    pub tail: bool,
}

/// An argument of a `TailSelf` call: what its op computes.
#[derive(Clone, Copy, Debug)]
pub enum SelfArg {
    /// `values[i]`.
    Const(u32),
    Local(u16),
    /// `(+ formal k)` or `(- formal k)`, as the formal plus `k` or `-k`:
    /// the commonest arguments of a loop, with no operator to dispatch on.
    AddNum(u16, i64),
    LocalNum(PrimOp, u16, i32),
    Locals(PrimOp, u16, u16),
}

/// The tail call a `TailSelf` op stands before.
pub struct TailSelf {
    /// The function's name, looked up as a global.
    pub sym: Sym,
    pub args: Box<[SelfArg]>,
    /// The `TailCall` op: its name and (at `spans[call]`) its span.
    pub call: u32,
    pub name: Option<Sym>,
    /// The operators its arguments apply (bit `op as u16`): the call is
    /// made in place only while each still names its builtin.
    pub prims: u16,
}

/// The most arguments a `TailSelf` call computes in place.
pub const TAIL_SELF_ARGS: usize = 8;

/// Lowered code of one proto.
pub struct Ops {
    pub ops: Box<[Op]>,
    pub spans: Box<[Span]>,
    pub values: Box<[Value]>,
    pub trees: Box<[Code]>,
    pub guards: Box<[Guard]>,
    pub tail_selfs: Box<[TailSelf]>,
    /// What a call of this code can skip (see `Vm::call_in_place`).
    pub shape: Shape,
    /// For a `Shape::Leaf` body: bit `op as usize` set for each `PrimOp`
    /// it uses, so one test tells whether they all hold their builtins.
    pub leaf_prims: u16,
    /// For a body that is an `if` with a base case (see `Entry`).
    pub entry: Option<Entry>,
    /// The most operands the code has on the value stack at once, above
    /// its frame's slots (see `depth`): a frame reserves that much room
    /// when it starts.
    pub max_stack: u32,
    /// The operand depth each op finds (`depth::UNREACHED` for an op no
    /// path reaches), which the VM asserts at every op it runs.
    #[cfg(debug_assertions)]
    pub depths: Box<[u32]>,
}

/// A body that is an `if` testing its formals (its first op is
/// `IfTestLocalNum` or `IfTestLocals`) with a branch that only returns a
/// formal or a constant — a recursion's base case, such as `fib`'s `{n}`,
/// `tak`'s `{z}` or a factorial's `{1}`. A call can run the test on its
/// arguments before it makes a frame; when the test leads to that branch,
/// the call's value is that argument or constant, and no frame is needed.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    pub test: EntryTest,
    /// What a call does after the test: `branches[1]` when it holds (the
    /// `if`'s then-branch), `branches[0]` when it does not.
    pub branches: [Branch; 2],
}

/// One branch of an `Entry`'s `if`.
#[derive(Clone, Copy, Debug)]
pub enum Branch {
    /// It only returns formal `i`.
    Local(u16),
    /// It only returns `values[i]`.
    Const(u32),
    /// Anything else: the body goes on at this pc (past the test and its
    /// jump).
    Start(u32),
}

/// An `Entry`'s test, as its op has it.
#[derive(Clone, Copy, Debug)]
pub enum EntryTest {
    /// `(op formal k)`, with the range of Numbers it holds for.
    LocalNum(PrimOp, u16, NumRange),
    /// `(op formal formal)`.
    Locals(PrimOp, u16, u16),
}

/// A comparison of a Number `x` with a constant, as a range test: it
/// holds when `x - lo` (wrapping, taken as unsigned) is at most `width`,
/// or, when `outside`, when it is not — one subtraction and one compare
/// whatever the operator, with no dispatch on it.
#[derive(Clone, Copy, Debug)]
pub struct NumRange {
    lo: i64,
    width: u64,
    outside: bool,
}

impl NumRange {
    /// The range `(op x k)` holds for; `None` if `op` is no comparison.
    pub fn of(op: PrimOp, k: i64) -> Option<NumRange> {
        // Inclusive bounds; `k` is from an `i32`, so `k ± 1` is exact.
        let (lo, hi, outside) = match op {
            PrimOp::Lt => (i64::MIN, k.checked_sub(1)?, false),
            PrimOp::Le => (i64::MIN, k, false),
            PrimOp::Gt => (k.checked_add(1)?, i64::MAX, false),
            PrimOp::Ge => (k, i64::MAX, false),
            PrimOp::Eq => (k, k, false),
            PrimOp::Ne => (k, k, true),
            _ => return None,
        };
        Some(NumRange {
            lo,
            width: hi.wrapping_sub(lo) as u64,
            outside,
        })
    }

    #[inline(always)]
    pub fn holds(self, x: i64) -> bool {
        (x.wrapping_sub(self.lo) as u64 <= self.width) != self.outside
    }
}

/// The `Entry` of lowered `ops`, if they have one.
fn entry(ops: &[Op]) -> Option<Entry> {
    let (test, target) = match *ops.first()? {
        Op::IfTestLocalNum(op, slot, k, target, _) => (
            EntryTest::LocalNum(op, slot, NumRange::of(op, k.into())?),
            target,
        ),
        Op::IfTestLocals(op, a, b, target, _) => (EntryTest::Locals(op, a, b), target),
        _ => return None,
    };
    // The test's jump, then the branch taken when it holds.
    if !matches!(ops.get(1), Some(Op::JumpIfFalse(..))) {
        return None;
    }
    let branch = |at: u32| match ops.get(at as usize..) {
        Some(&[Op::ReturnLocal(slot), ..]) => match u16::try_from(slot) {
            Ok(slot) => Branch::Local(slot),
            Err(_) => Branch::Start(at),
        },
        Some(&[Op::Const(i), Op::Return, ..]) => Branch::Const(i),
        _ => Branch::Start(at),
    };
    let branches = [branch(target), branch(2)];
    let starts = |b: &Branch| matches!(b, Branch::Start(_));
    (!branches.iter().all(starts)).then_some(Entry { test, branches })
}

/// Bodies whose calls can be answered at the call site, without a frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Shape {
    #[default]
    General,
    /// The whole body is `(eval (head x))` of the formal in this slot (the
    /// shape of the prelude's `fst`).
    Accessor(u32),
    /// Straight-line arithmetic and comparisons of formals and constants,
    /// such as `(* x 2)` or `(== 0 (- n (* 2 (/ n 2))))`: no names, calls
    /// or jumps, so nothing but the operators can happen.
    Leaf,
}

struct Lowerer<'a> {
    forms: &'a SpecialForms,
    ops: Vec<Op>,
    spans: Vec<Span>,
    values: Vec<Value>,
    trees: Vec<Code>,
    guards: Vec<Guard>,
    tail_selfs: Vec<TailSelf>,
}

thread_local! {
    /// The ops and spans vectors of the last `lower` on this thread, kept
    /// for the next: a body is lowered into vectors that have grown
    /// already, then copied out at its exact size, rather than grown by
    /// doubling from empty for every body (hundreds at every start, for
    /// the prelude).
    static SCRATCH: Cell<(Vec<Op>, Vec<Span>)> = const { Cell::new((Vec::new(), Vec::new())) };
}

thread_local! {
    /// The same for the scratch vector of `depth::check`.
    static CHECK_SCRATCH: Cell<Vec<u32>> = const { Cell::new(Vec::new()) };
}

/// Lowers a body, which runs in tail position.
pub fn lower(body: Code, forms: &SpecialForms) -> Ops {
    // Taken, not borrowed: a `lower` inside this one (none today) would
    // start from empty vectors rather than fail.
    let (mut ops, mut spans) = SCRATCH.take();
    ops.clear();
    spans.clear();
    let mut l = Lowerer {
        forms,
        ops,
        spans,
        values: Vec::new(),
        trees: Vec::new(),
        guards: Vec::new(),
        tail_selfs: Vec::new(),
    };
    l.expr(body, true);
    let shape = shape(&l.ops, forms);
    let leaf_prims = l.ops.iter().fold(0, |bits, op| match *op {
        Op::PrimLocalNum(op, ..)
        | Op::LocalNums(op, ..)
        | Op::PrimLocals(op, ..)
        | Op::Prim(op, _)
        | Op::PrimReturn(op, _) => bits | 1 << op as u16,
        _ => bits,
    });
    let mut lowered = Ops {
        shape,
        leaf_prims,
        entry: entry(&l.ops),
        ops: l.ops.as_slice().into(),
        spans: l.spans.as_slice().into(),
        values: l.values.into_boxed_slice(),
        trees: l.trees.into_boxed_slice(),
        guards: l.guards.into_boxed_slice(),
        tail_selfs: l.tail_selfs.into_boxed_slice(),
        max_stack: 0,
        #[cfg(debug_assertions)]
        depths: Box::new([]),
    };
    // The VM runs the ops without a test per push or fetch on the strength
    // of this check: code that fails it must never run.
    let mut depths = CHECK_SCRATCH.take();
    match depth::check(&lowered, &mut depths) {
        Ok(max) => {
            lowered.max_stack = max;
            #[cfg(debug_assertions)]
            {
                lowered.depths = depths.as_slice().into();
            }
        }
        Err(e) => panic!("internal error: lowered code fails its stack check: {e}"),
    }
    if depths.capacity() <= SCRATCH_KEPT {
        CHECK_SCRATCH.set(depths);
    }
    // Only vectors of an ordinary size are kept: one huge body must not
    // pin its memory for the thread's life.
    if l.ops.capacity() <= SCRATCH_KEPT && l.spans.capacity() <= SCRATCH_KEPT {
        SCRATCH.set((l.ops, l.spans));
    }
    lowered
}

/// The largest scratch vectors (in elements) `lower` keeps for the next.
const SCRATCH_KEPT: usize = 4096;

/// Which `Shape` a lowered body has.
fn shape(ops: &[Op], forms: &SpecialForms) -> Shape {
    match *ops {
        [Op::Name(e), Op::Name(h), Op::Local(slot), Op::EvalHead(6), Op::Call(1, _), Op::TailCall(1, _), Op::Return]
            if e == forms.eval.0 && h == forms.head.0 =>
        {
            return Shape::Accessor(slot);
        }
        _ => {}
    }
    let Some((last, body)) = ops.split_last() else {
        return Shape::General;
    };
    let straight = body.iter().all(|op| {
        matches!(
            op,
            Op::Const(_)
                | Op::Local(_)
                | Op::LocalLocal(..)
                | Op::LocalNums(..)
                | Op::PrimLocalNum(..)
                | Op::PrimLocals(..)
                | Op::Prim(..)
                | Op::PrimReturn(..)
        )
    });
    if straight && matches!(last, Op::Return | Op::ReturnLocal(_)) && ops.len() <= LEAF_OPS {
        Shape::Leaf
    } else {
        Shape::General
    }
}

/// The longest body run as a `Shape::Leaf` (its operands fit the
/// evaluator's small fixed stack).
pub const LEAF_OPS: usize = 16;

impl Lowerer<'_> {
    fn emit(&mut self, op: Op, span: Span) -> usize {
        // Two pushes in a row: the first becomes the op that does both.
        let fused = match (self.ops.last(), &op) {
            (Some(&Op::Name(sym)), &Op::PrimLocalNum(o, slot, k)) => {
                Some(Op::NameLocalNum(sym, o, slot, k))
            }
            (Some(&Op::Local(a)), &Op::Local(b)) => match (u16::try_from(a), u16::try_from(b)) {
                (Ok(a), Ok(b)) => Some(Op::LocalLocal(a, b)),
                _ => None,
            },
            (Some(&Op::PrimLocalNum(o, a, j)), &Op::PrimLocalNum(o2, b, k)) => {
                Some(Op::LocalNums(o, a, j, o2, b, k))
            }
            _ => None,
        };
        if let (Some(fused), Some(last)) = (fused, self.ops.last_mut()) {
            *last = fused;
        }
        self.ops.push(op);
        self.spans.push(span);
        self.ops.len() - 1
    }

    fn here(&self) -> u32 {
        self.ops.len() as u32
    }

    fn patch(&mut self, at: usize, target: u32) {
        match &mut self.ops[at] {
            Op::JumpIfFalse(t, _) | Op::Jump(t) => *t = target,
            _ => unreachable!("patching a jump"),
        }
        // A fused test before the jump jumps to the same place.
        if let Some(
            Op::TestLocalNum(_, _, _, t)
            | Op::TestLocals(_, _, _, t)
            | Op::IfTestLocalNum(_, _, _, t, _)
            | Op::IfTestLocals(_, _, _, t, _),
        ) = at.checked_sub(1).map(|i| &mut self.ops[i])
        {
            *t = target;
        }
    }

    fn ret(&mut self, tail: bool) {
        if tail {
            self.emit(Op::Return, Span::NONE);
        }
    }

    fn constant(&mut self, v: Value) {
        let i = self.values.len() as u32;
        self.values.push(v);
        self.emit(Op::Const(i), Span::NONE);
    }

    fn guard(&mut self, form: Sym, generic: Value, span: Span, tail: bool) -> usize {
        let i = self.guards.len();
        self.guards.push(Guard {
            form,
            generic,
            span,
            end: 0,
            tail,
        });
        self.emit(Op::Guard(i as u32, form), span);
        i
    }

    fn tree(&mut self, code: Code, span: Span, tail: bool) {
        let i = self.trees.len() as u32;
        self.trees.push(code);
        if tail {
            self.emit(Op::TailTree(i), span);
            self.emit(Op::Return, Span::NONE);
        } else {
            self.emit(Op::Tree(i), span);
        }
    }

    /// A condition, which a `JumpIfFalse` follows: a formal compared with
    /// a Number becomes the fused test.
    fn condition(&mut self, code: Code) {
        self.expr(code, false);
        let comparison = |op| {
            matches!(
                op,
                PrimOp::Lt | PrimOp::Gt | PrimOp::Le | PrimOp::Ge | PrimOp::Eq | PrimOp::Ne
            )
        };
        let last = self.ops.len() - 1;
        let test = match self.ops[last] {
            Op::PrimLocalNum(op, slot, k) if comparison(op) => Op::TestLocalNum(op, slot, k, 0),
            Op::PrimLocals(op, a, b) if comparison(op) => Op::TestLocals(op, a, b, 0),
            _ => return,
        };
        self.ops[last] = test;
        // The op before no longer stands for a push and this one.
        if let Some(before) = last.checked_sub(1) {
            self.unfuse(before);
        }
    }

    /// Turns a fused push at `at` back into the first op it stands for.
    fn unfuse(&mut self, at: usize) {
        let op = &mut self.ops[at];
        *op = match *op {
            Op::NameLocalNum(sym, ..) => Op::Name(sym),
            Op::LocalLocal(a, _) => Op::Local(a.into()),
            Op::LocalNums(o, a, j, ..) => Op::PrimLocalNum(o, a, j),
            _ => return,
        };
    }

    /// When the condition after `if`'s guard (at `at`, guard `g`) is a
    /// single fused test, puts both in one op where the guard was (so a
    /// jump to the `if` still lands on it).
    fn fuse_if_guard(&mut self, at: usize, g: usize) {
        if self.ops.len() != at + 2 || self.guards[g].form != self.forms.if_.0 {
            return;
        }
        let fused = match self.ops[at + 1] {
            Op::TestLocalNum(op, slot, k, t) => Op::IfTestLocalNum(op, slot, k, t, g as u32),
            Op::TestLocals(op, a, b, t) => Op::IfTestLocals(op, a, b, t, g as u32),
            _ => return,
        };
        self.ops.pop();
        let span = self.spans.pop().unwrap_or(Span::NONE);
        self.ops[at] = fused;
        // The test's span, for the operator's errors; the guard keeps its
        // own in `guards[g]`.
        self.spans[at] = span;
    }

    /// For a call in tail position of a name with at most
    /// `TAIL_SELF_ARGS` simple arguments: emits its `TailSelf` op (whose
    /// `call` the caller sets) and gives its index.
    fn tail_self(&mut self, call: &Call) -> Option<usize> {
        let Code::Name(sym, _) = call.head else {
            return None;
        };
        if call.args.len() > TAIL_SELF_ARGS {
            return None;
        }
        let mut args = Vec::with_capacity(call.args.len());
        let mut consts = Vec::new();
        let mut prims = 0u16;
        for arg in call.args.iter() {
            if let Code::Prim(node) = arg {
                prims |= 1 << node.node.op as u16;
            }
            args.push(match arg {
                Code::Local(slot) => SelfArg::Local(u16::try_from(*slot).ok()?),
                Code::Const(v) => {
                    consts.push(*v);
                    SelfArg::Const((self.values.len() + consts.len() - 1) as u32)
                }
                Code::Prim(node) => match (&node.node.left, &node.node.right) {
                    (Code::Local(a), Code::Const(Value::Num(k))) => {
                        let a = u16::try_from(*a).ok()?;
                        let delta = match node.node.op {
                            PrimOp::Add => Some(*k),
                            PrimOp::Sub => k.checked_neg(),
                            _ => None,
                        };
                        match delta {
                            Some(d) => SelfArg::AddNum(a, d),
                            None => SelfArg::LocalNum(node.node.op, a, i32::try_from(*k).ok()?),
                        }
                    }
                    (Code::Local(a), Code::Local(b)) => SelfArg::Locals(
                        node.node.op,
                        u16::try_from(*a).ok()?,
                        u16::try_from(*b).ok()?,
                    ),
                    _ => return None,
                },
                _ => return None,
            });
        }
        self.values.extend(consts);
        let i = self.tail_selfs.len();
        self.tail_selfs.push(TailSelf {
            sym,
            args: args.into_boxed_slice(),
            call: 0,
            name: call.name,
            prims,
        });
        self.emit(Op::TailSelf(i as u32), Span::NONE);
        Some(i)
    }

    /// Whether `call` is `(eval (head x))` by name.
    fn is_eval_head(&self, call: &Call) -> bool {
        let named = |code: &Code, sym: Sym| matches!(code, Code::Name(s, _) if *s == sym);
        match &*call.args {
            [Code::Call(inner)] => {
                named(&call.head, self.forms.eval.0)
                    && named(&inner.head, self.forms.head.0)
                    && inner.args.len() == 1
            }
            _ => false,
        }
    }

    /// `(eval (head x))`: the ordinary calls, behind an `EvalHead` that
    /// skips them when it can.
    fn eval_head(&mut self, call: Call, tail: bool) {
        let Some(Code::Call(inner)) = call.args.into_vec().pop() else {
            unreachable!("checked by is_eval_head")
        };
        let inner = *inner;
        self.expr(call.head, false);
        self.expr(inner.head, false);
        for arg in inner.args.into_vec() {
            self.expr(arg, false);
        }
        let fast = self.emit(Op::EvalHead(0), inner.span);
        self.emit(Op::Call(1, inner.name), inner.span);
        let end = if tail {
            self.emit(Op::TailCall(1, call.name), call.span);
            self.emit(Op::Return, Span::NONE) as u32
        } else {
            self.emit(Op::Call(1, call.name), call.span);
            self.here()
        };
        self.ops[fast] = Op::EvalHead(end);
    }

    fn expr(&mut self, code: Code, tail: bool) {
        match code {
            Code::Const(v) => {
                self.constant(v);
                self.ret(tail);
            }
            Code::Local(slot) => {
                if tail {
                    self.emit(Op::ReturnLocal(slot), Span::NONE);
                } else {
                    self.emit(Op::Local(slot), Span::NONE);
                }
            }
            Code::Name(sym, span) => {
                self.emit(Op::Name(sym), span);
                self.ret(tail);
            }
            Code::Prim(node) => {
                let node = *node;
                if let (Code::Local(slot), Code::Const(Value::Num(k))) =
                    (&node.node.left, &node.node.right)
                {
                    if let (Ok(slot), Ok(k)) = (u16::try_from(*slot), i32::try_from(*k)) {
                        self.emit(Op::PrimLocalNum(node.node.op, slot, k), node.span);
                        self.ret(tail);
                        return;
                    }
                }
                if let (Code::Local(a), Code::Local(b)) = (&node.node.left, &node.node.right) {
                    if let (Ok(a), Ok(b)) = (u16::try_from(*a), u16::try_from(*b)) {
                        self.emit(Op::PrimLocals(node.node.op, a, b), node.span);
                        self.ret(tail);
                        return;
                    }
                }
                self.expr(node.node.left, false);
                self.expr(node.node.right, false);
                let op = if tail {
                    Op::PrimReturn(node.node.op, node.form)
                } else {
                    Op::Prim(node.node.op, node.form)
                };
                self.emit(op, node.span);
                self.ret(tail);
            }
            Code::Call(call) => {
                let call = *call;
                if self.is_eval_head(&call) {
                    self.eval_head(call, tail);
                    return;
                }
                let argc = call.args.len() as u32;
                let tail_self = if tail { self.tail_self(&call) } else { None };
                self.expr(call.head, false);
                for arg in call.args.into_vec() {
                    self.expr(arg, false);
                }
                if tail {
                    let at = self.emit(Op::TailCall(argc, call.name), call.span);
                    if let Some(i) = tail_self {
                        self.tail_selfs[i].call = at as u32;
                    }
                    // Reached only by top-level code, which has no call to
                    // replace: it returns the call's value.
                    self.emit(Op::Return, Span::NONE);
                } else {
                    self.emit(Op::Call(argc, call.name), call.span);
                }
            }
            Code::If(node) => {
                let node = *node;
                let g = self.guard(node.form, node.generic, node.span, tail);
                let at = self.ops.len() - 1;
                self.condition(node.node.cond);
                self.fuse_if_guard(at, g);
                let jump = self.emit(Op::JumpIfFalse(0, Cond::If), node.span);
                self.expr(node.node.then, tail);
                let skip = (!tail).then(|| self.emit(Op::Jump(0), Span::NONE));
                let here = self.here();
                self.patch(jump, here);
                match node.node.otherwise {
                    Some(code) => self.expr(code, tail),
                    None => {
                        self.constant(Value::Nil);
                        self.ret(tail);
                    }
                }
                let end = self.here();
                if let Some(at) = skip {
                    self.patch(at, end);
                }
                self.guards[g].end = end;
            }
            Code::Do(node) => {
                let node = *node;
                let g = self.guard(node.form, node.generic, node.span, tail);
                let mut seq = node.node;
                let last = seq.pop().expect("`do` inlined with at least one argument");
                for code in seq {
                    self.expr(code, false);
                    self.emit(Op::Pop, Span::NONE);
                }
                self.expr(last, tail);
                self.guards[g].end = self.here();
            }
            Code::Select(node) => {
                let node = *node;
                let g = self.guard(node.form, node.generic, node.span, tail);
                let mut ends = Vec::new();
                for (cond, value) in node.node {
                    self.condition(cond);
                    let jump = self.emit(Op::JumpIfFalse(0, Cond::Select), node.span);
                    self.expr(value, tail);
                    if !tail {
                        ends.push(self.emit(Op::Jump(0), Span::NONE));
                    }
                    let here = self.here();
                    self.patch(jump, here);
                }
                self.emit(Op::NoSelection, node.span);
                let end = self.here();
                for at in ends {
                    self.patch(at, end);
                }
                self.guards[g].end = end;
            }
            other @ (Code::Lambda(_) | Code::Def(_) | Code::Case(_) | Code::Let(_)) => {
                let span = match &other {
                    Code::Lambda(n) => n.span,
                    Code::Def(n) => n.span,
                    Code::Case(n) => n.span,
                    Code::Let(n) => n.span,
                    _ => Span::NONE,
                };
                self.tree(other, span, tail);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_holds_as_the_comparison_does() {
        let ops = [
            (PrimOp::Lt, i64::lt as fn(&i64, &i64) -> bool),
            (PrimOp::Le, i64::le),
            (PrimOp::Gt, i64::gt),
            (PrimOp::Ge, i64::ge),
            (PrimOp::Eq, i64::eq),
            (PrimOp::Ne, i64::ne),
        ];
        let ks = [i32::MIN as i64, -7, -1, 0, 1, 2, 7, i32::MAX as i64];
        for (op, cmp) in ops {
            for k in ks {
                let range = NumRange::of(op, k).unwrap();
                let mut xs = vec![i64::MIN, i64::MIN + 1, -1, 0, 1, i64::MAX - 1, i64::MAX];
                xs.extend([k - 2, k - 1, k, k + 1, k + 2]);
                for x in xs {
                    assert_eq!(range.holds(x), cmp(&x, &k), "({op:?} {x} {k})");
                }
            }
        }
        assert!(NumRange::of(PrimOp::Add, 1).is_none());
    }
}
