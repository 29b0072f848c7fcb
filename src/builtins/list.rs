//! List builtins on Q-expressions (shared, immutable cons cells): `list`,
//! `head`, `tail`, `init`, `join`, `cons`, `len`, `range`, `repeat`.
//! `head`, `tail` and `cons` are O(1); `join` copies all but its last
//! argument and shares the last.

use super::{arity, builtin, define_all, number, ret, type_error};
use crate::error::Span;
use crate::heap::Gc;
use crate::value::Value;
use crate::vm::Vm;

pub fn register(vm: &mut Vm) {
    define_all(
        vm,
        &[LIST, HEAD, TAIL, INIT, JOIN, CONS, LEN, RANGE, REPEAT],
    );
}

/// The most elements `range` will build in one call.
const RANGE_LIMIT: i64 = 100_000_000;
/// Lists of immediates at least this long are allocated old.
const PRETENURE_CELLS: i64 = 1 << 16;
/// Heap bytes one list cell accounts for.
const CELL_BYTES: usize = 48;

fn nonempty(vm: &mut Vm, name: &str, v: Value) -> Result<Gc, Gc> {
    match v {
        Value::Q(g) => Ok(g),
        Value::Nil => Err(vm.error(format!("`{}` of an empty list {{}}", name))),
        other => Err(type_error(vm, name, "a Q-expression", other)),
    }
}

fn q_of(cell: Option<Gc>) -> Value {
    match cell {
        Some(g) => Value::Q(g),
        None => Value::Nil,
    }
}

builtin!(
    LIST,
    "list",
    "(list values…)",
    "A Q-expression of the arguments.",
    |vm, args, env| { ret(vm.heap.qlist(args)) }
);

builtin!(
    HEAD,
    "head",
    "(head q)",
    "A Q-expression holding q's first element. Error on {}.",
    |vm, args, env| {
        arity(vm, "head", args, 1, 1)?;
        let g = nonempty(vm, "head", args[0])?;
        let cell = *vm.heap.cons(g);
        if cell.tail.is_none() {
            return ret(Value::Q(g));
        }
        ret(Value::Q(vm.heap.cons_cell(cell.head, None, cell.span)))
    }
);

builtin!(
    TAIL,
    "tail",
    "(tail q)",
    "q without its first element (shares structure). Error on {}.",
    |vm, args, env| {
        arity(vm, "tail", args, 1, 1)?;
        let g = nonempty(vm, "tail", args[0])?;
        ret(q_of(vm.heap.cons(g).tail))
    }
);

builtin!(
    INIT,
    "init",
    "(init q)",
    "q without its last element. Error on {}.",
    |vm, args, env| {
        arity(vm, "init", args, 1, 1)?;
        nonempty(vm, "init", args[0])?;
        let items = vm.heap.list_items(args[0]);
        ret(vm.heap.qlist(&items[..items.len() - 1]))
    }
);

builtin!(
    JOIN,
    "join",
    "(join q…) or (join s…)",
    "Concatenates Q-expressions (sharing the last) or Strings.",
    |vm, args, env| {
        arity(vm, "join", args, 1, usize::MAX)?;
        if let Value::Str(_) = args[0] {
            let total: usize = args
                .iter()
                .map(|a| match a {
                    Value::Str(g) => vm.heap.string(*g).len(),
                    _ => 0,
                })
                .sum();
            vm.reserve(total)?;
            let mut out = String::with_capacity(total);
            for &a in args {
                match a {
                    Value::Str(g) => out.push_str(vm.heap.string(g)),
                    other => {
                        return Err(type_error(vm, "join", "only Strings after a String", other))
                    }
                }
            }
            return ret(vm.heap.string_value(&out));
        }
        for (i, &a) in args.iter().enumerate() {
            if !a.is_qexpr() {
                let expected = if i == 0 {
                    "Q-expressions or Strings"
                } else {
                    "only Q-expressions after a Q-expression"
                };
                return Err(type_error(vm, "join", expected, a));
            }
        }
        let last = args[args.len() - 1];
        let copied: usize = args[..args.len() - 1]
            .iter()
            .map(|a| vm.heap.list_len(*a))
            .sum();
        vm.reserve(copied * CELL_BYTES)?;
        let mut prefix: Vec<(Value, Span)> = Vec::new();
        for &a in &args[..args.len() - 1] {
            let mut cell = a.list_cell();
            while let Some(c) = cell {
                let cons = vm.heap.cons(c);
                prefix.push((cons.head, cons.span));
                cell = cons.tail;
            }
        }
        let cells = vm
            .heap
            .list_cells(prefix.into_iter().rev(), last.list_cell());
        ret(q_of(cells))
    }
);

builtin!(
    CONS,
    "cons",
    "(cons x q)",
    "q with x prepended.",
    |vm, args, env| {
        arity(vm, "cons", args, 2, 2)?;
        if !args[1].is_qexpr() {
            return Err(type_error(
                vm,
                "cons",
                "a Q-expression as second argument",
                args[1],
            ));
        }
        let g = vm.heap.cons_cell(args[0], args[1].list_cell(), Span::NONE);
        ret(Value::Q(g))
    }
);

builtin!(
    LEN,
    "len",
    "(len q-or-string)",
    "Number of elements of a Q-expression, or of characters of a String.",
    |vm, args, env| {
        arity(vm, "len", args, 1, 1)?;
        match args[0] {
            Value::Nil => ret(Value::Num(0)),
            Value::Q(g) => ret(Value::Num(vm.heap.cons(g).len as i64)),
            Value::Str(g) => ret(Value::Num(vm.heap.string(g).chars().count() as i64)),
            other => Err(type_error(vm, "len", "a Q-expression or String", other)),
        }
    }
);

builtin!(
    RANGE,
    "range",
    "(range a b)",
    "{a a+1 … b-1}; {} when b <= a.",
    |vm, args, env| {
        arity(vm, "range", args, 2, 2)?;
        let a = number(vm, "range", args[0])?;
        let b = number(vm, "range", args[1])?;
        if b <= a {
            return ret(Value::Nil);
        }
        if b.saturating_sub(a) > RANGE_LIMIT {
            return Err(vm.error(format!("`range` of more than {} elements", RANGE_LIMIT)));
        }
        vm.reserve((b - a) as usize * CELL_BYTES)?;
        let mut cell = None;
        let mut i = b;
        // A large range goes straight to the old generation (it holds only
        // Numbers), so building it does not make one long minor collection.
        let pretenure = b - a >= PRETENURE_CELLS;
        while i > a {
            i -= 1;
            // Ctrl-C stops a long one (the cells made are garbage).
            if i & 0xf_ffff == 0 {
                let span = vm.span;
                vm.check_interrupt(span)?;
            }
            cell = Some(if pretenure {
                vm.heap.cons_cell_old(Value::Num(i), cell)
            } else {
                vm.heap.cons_cell(Value::Num(i), cell, Span::NONE)
            });
        }
        ret(q_of(cell))
    }
);

builtin!(
    REPEAT,
    "repeat",
    "(repeat f n)",
    "Calls (f i) for i from 0 to n-1; returns {}.",
    |vm, args, env| {
        arity(vm, "repeat", args, 2, 2)?;
        let f = args[0];
        if !f.is_function() {
            return Err(type_error(vm, "repeat", "a function", f));
        }
        let n = number(vm, "repeat", args[1])?;
        for i in 0..n.max(0) {
            vm.call(f, &[Value::Num(i)], env)?;
        }
        ret(Value::Nil)
    }
);
