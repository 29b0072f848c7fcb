//! The operand depth of lowered code: how many values each op finds on
//! the value stack above its frame's slots, and the most the code ever
//! has there.
//!
//! The VM sizes a frame's operand space from `Ops::max_stack` once, when
//! the frame starts, and then pushes operands and fetches ops without a
//! test per push or per fetch (as CPython does with `co_stacksize`, and
//! Lua with `maxstacksize`). This check is what makes that sound: every
//! lowered body passes it before it can run, or lowering stops with a
//! panic (an error of the lowerer, never of the program).
//!
//! It walks every path of the code with each op's effect on the stack and
//! establishes that
//! - every op that can run has one depth, whichever way it is reached,
//!   and never pops more than is there;
//! - no path runs past the last op, and every jump lands on an op;
//! - the op a fused op stands for is there after it (a fast path skips
//!   it, and must leave the depth the two ops would);
//! - `max_stack` bounds the depth at every op and after it.

use super::{Op, Ops};

/// An op's depth when no path reaches it.
pub const UNREACHED: u32 = u32::MAX;

/// Where control goes after an op, and with what depth.
struct Flow {
    /// The op after it, with this depth (`None`: control never goes on).
    next: Option<u32>,
    /// Another op it can go to, with its depth.
    jump: Option<(u32, u32)>,
    /// A guard's end: where a rebound form's value is pushed.
    guard: Option<(u32, u32)>,
}

/// Checks `code` (see the module's summary): on success, the largest
/// depth, with the depth each op finds in `depth` (`UNREACHED` where none
/// is found). `depth` is scratch space, cleared first (kept by the caller
/// so that lowering a body allocates nothing here).
///
/// The lowerer only jumps forward (a loop is a self tail call, which
/// starts the frame's code again with no operands), so one pass in order
/// sees every way into an op before the op itself; a jump backward is
/// refused.
pub fn check(code: &Ops, depth: &mut Vec<u32>) -> Result<u32, String> {
    let n = code.ops.len();
    if n == 0 {
        return Err("no ops".into());
    }
    depth.clear();
    depth.resize(n, UNREACHED);
    depth[0] = 0;
    let mut max = 0u32;
    for pc in 0..n {
        let d = depth[pc];
        if d == UNREACHED {
            continue;
        }
        let flow = effect(code, pc, d)?;
        let mut reach = |to: u32, with: u32| -> Result<(), String> {
            let at = to as usize;
            if at >= n {
                return Err(format!("op {pc} goes to {to}, past the last op ({n} ops)"));
            }
            if at <= pc {
                return Err(format!("op {pc} jumps back to {to}"));
            }
            max = max.max(with);
            match depth[at] {
                UNREACHED => {
                    depth[at] = with;
                    Ok(())
                }
                seen if seen == with => Ok(()),
                seen => Err(format!("op {at} is reached with depth {seen} and {with}")),
            }
        };
        if let Some(with) = flow.next {
            reach(pc as u32 + 1, with)?;
        }
        if let Some((to, with)) = flow.jump {
            reach(to, with)?;
        }
        if let Some((to, with)) = flow.guard {
            reach(to, with)?;
        }
    }
    // Where a recursion's call may start a frame (past the test it did).
    if let Some(entry) = &code.entry {
        for branch in entry.branches {
            let super::Branch::Start(at) = branch else {
                continue;
            };
            if depth.get(at as usize) != Some(&0) {
                return Err(format!("entry pc {at} does not start at depth 0"));
            }
        }
    }
    Ok(max)
}

/// The flow of op `pc`, found with depth `d`.
fn effect(code: &Ops, pc: usize, d: u32) -> Result<Flow, String> {
    let ops = &code.ops;
    let op = ops[pc];
    let pop = |k: u32| {
        d.checked_sub(k)
            .ok_or_else(|| format!("op {pc} ({op:?}) pops {k} of {d}"))
    };
    // The op a fused op stands before must follow it.
    let followed = |ok: fn(&Op) -> bool| match ops.get(pc + 1) {
        Some(next) if ok(next) => Ok(()),
        next => Err(format!("op {pc} ({op:?}) is followed by {next:?}")),
    };
    let on = |next: u32| Flow {
        next: Some(next),
        jump: None,
        guard: None,
    };
    let stop = Flow {
        next: None,
        jump: None,
        guard: None,
    };
    // A guard's rebound form: in tail position it replaces the frame's
    // code; otherwise its value is pushed and the code goes on at `end`.
    let guard = |g: u32, d: u32| -> Result<Option<(u32, u32)>, String> {
        let guard = code
            .guards
            .get(g as usize)
            .ok_or_else(|| format!("op {pc} has no guard {g}"))?;
        Ok((!guard.tail).then_some((guard.end, d + 1)))
    };
    // A test pushes the condition its `JumpIfFalse` pops (or, on its fast
    // path, jumps where that would with the depth it would leave).
    let test = |target: u32| match ops.get(pc + 1) {
        Some(&Op::JumpIfFalse(t, _)) if t == target => Ok(()),
        next => Err(format!("op {pc} ({op:?}) is followed by {next:?}")),
    };
    Ok(match op {
        Op::Const(_) | Op::Local(_) | Op::Name(_) | Op::PrimLocalNum(..) | Op::PrimLocals(..) => {
            on(d + 1)
        }
        Op::Tree(i) => {
            if i as usize >= code.trees.len() {
                return Err(format!("op {pc} has no tree {i}"));
            }
            on(d + 1)
        }
        // The op after a fused push may be fused with the one after it
        // in turn (it is still the push it was).
        Op::NameLocalNum(..) | Op::LocalNums(..) => {
            followed(|op| matches!(op, Op::PrimLocalNum(..) | Op::LocalNums(..)))?;
            on(d + 1)
        }
        Op::LocalLocal(..) => {
            followed(|op| matches!(op, Op::Local(_) | Op::LocalLocal(..)))?;
            on(d + 1)
        }
        Op::Prim(..) => on(pop(2)? + 1),
        Op::PrimReturn(..) => {
            followed(|op| matches!(op, Op::Return))?;
            on(pop(2)? + 1)
        }
        Op::TestLocalNum(.., target) | Op::TestLocals(.., target) => {
            test(target)?;
            on(d + 1)
        }
        Op::IfTestLocalNum(.., target, g) | Op::IfTestLocals(.., target, g) => {
            test(target)?;
            Flow {
                next: Some(d + 1),
                jump: None,
                guard: guard(g, d)?,
            }
        }
        Op::JumpIfFalse(target, _) => {
            let d = pop(1)?;
            Flow {
                next: Some(d),
                jump: Some((target, d)),
                guard: None,
            }
        }
        Op::Jump(target) => Flow {
            next: None,
            jump: Some((target, d)),
            guard: None,
        },
        Op::Guard(g, _) => Flow {
            next: Some(d),
            jump: None,
            guard: guard(g, d)?,
        },
        Op::Pop => on(pop(1)?),
        Op::Call(argc, _) => on(pop(argc.checked_add(1).ok_or("argc")?)? + 1),
        Op::TailSelf(i) => {
            // Either the frame starts again from op 0 (at depth 0, its
            // operands dropped) or the call's ops follow.
            let tail = code
                .tail_selfs
                .get(i as usize)
                .ok_or_else(|| format!("op {pc} has no tail call {i}"))?;
            if !matches!(ops.get(tail.call as usize), Some(Op::TailCall(..))) {
                return Err(format!("op {pc}: op {} is not a tail call", tail.call));
            }
            on(d)
        }
        // A tail call or tail tree that could not replace the frame (one
        // with no call to replace) enters its callee above it; its value
        // is then pushed and the `Return` after it returns it.
        Op::TailCall(argc, _) => {
            followed(|op| matches!(op, Op::Return))?;
            on(pop(argc.checked_add(1).ok_or("argc")?)? + 1)
        }
        Op::TailTree(i) => {
            if i as usize >= code.trees.len() {
                return Err(format!("op {pc} has no tree {i}"));
            }
            followed(|op| matches!(op, Op::Return))?;
            on(d + 1)
        }
        Op::Return | Op::ReturnLocal(_) | Op::NoSelection => stop,
        Op::EvalHead(end) => {
            // Stands before the two calls of `(eval (head x))`: on its
            // fast path the three values become one, past them.
            let d2 = pop(3)? + 1;
            Flow {
                next: Some(d),
                jump: Some((end, d2)),
                guard: None,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::PrimOp;
    use crate::lower::{Cond, Guard};
    use crate::value::Value;

    fn ops(ops: Vec<Op>) -> Ops {
        Ops {
            spans: vec![crate::error::Span::NONE; ops.len()].into(),
            ops: ops.into(),
            values: Box::new([]),
            trees: Box::new([]),
            guards: Box::new([]),
            tail_selfs: Box::new([]),
            shape: Default::default(),
            leaf_prims: 0,
            entry: None,
            max_stack: 0,
            #[cfg(debug_assertions)]
            depths: Box::new([]),
        }
    }

    #[test]
    fn depths_follow_every_path() {
        // (if (< n 2) {n} {+ (f (- n 1)) 7}) as ops, by hand.
        let code = ops(vec![
            Op::TestLocalNum(PrimOp::Lt, 0, 2, 3),
            Op::JumpIfFalse(3, Cond::If),
            Op::ReturnLocal(0),
            Op::NameLocalNum(crate::symbol::Sym(1), PrimOp::Sub, 0, 1),
            Op::PrimLocalNum(PrimOp::Sub, 0, 1),
            Op::Call(1, None),
            Op::Const(0),
            Op::PrimReturn(PrimOp::Add, crate::symbol::Sym(2)),
            Op::Return,
        ]);
        let mut depth = Vec::new();
        let max = check(&code, &mut depth).unwrap();
        assert_eq!(depth, vec![0, 1, 0, 0, 1, 2, 1, 2, 1]);
        assert_eq!(max, 2);
    }

    #[test]
    fn bad_code_is_refused() {
        let check = |code: &Ops| {
            let mut depth = Vec::new();
            check(code, &mut depth).map(|_| depth)
        };
        let refused = |v: Vec<Op>| check(&ops(v)).unwrap_err();
        // Runs past its end.
        assert!(refused(vec![Op::Const(0)]).contains("past the last op"));
        // Jumps past its end, or back.
        assert!(refused(vec![Op::Jump(5)]).contains("past the last op"));
        assert!(refused(vec![Op::Const(0), Op::Jump(0)]).contains("jumps back"));
        // Pops what is not there.
        assert!(refused(vec![Op::Pop, Op::Return]).contains("pops"));
        assert!(refused(vec![Op::Const(0), Op::Call(1, None), Op::Return]).contains("pops"));
        // Two depths at one op.
        let merge = vec![
            Op::Const(0),
            Op::JumpIfFalse(3, Cond::If),
            Op::Const(0),
            Op::Return,
        ];
        assert!(refused(merge).contains("reached with depth"));
        // A fused op without the op it stands for.
        assert!(refused(vec![Op::LocalLocal(0, 1), Op::Return]).contains("followed by"));
        assert!(
            refused(vec![Op::TestLocals(PrimOp::Lt, 0, 1, 2), Op::Return]).contains("followed by")
        );
        // No code at all.
        assert!(refused(vec![]).contains("no ops"));
        // A rebound non-tail form goes on at its end with its value.
        let mut code = ops(vec![
            Op::Guard(0, crate::symbol::Sym(0)),
            Op::Const(0),
            Op::Return,
        ]);
        code.guards = vec![Guard {
            form: crate::symbol::Sym(0),
            generic: Value::Nil,
            span: crate::error::Span::NONE,
            end: 2,
            tail: false,
        }]
        .into();
        assert_eq!(check(&code).unwrap(), vec![0, 0, 1]);
        code.guards[0].end = 1;
        assert!(check(&code).unwrap_err().contains("reached with depth"));
    }
}
