//! Core builtins: definition, functions, control flow (`if`, `do`, `let`,
//! `select`, `case`), evaluation (`eval`, `try`, `error`), introspection
//! (`type`, `penv`) and process control (`exit`, `shutdown`). The control
//! forms evaluate their clauses in the caller's scope; literal uses are also
//! compiled inline (see compile.rs) with the same results.

use super::{arity, builtin, define_all, eval_element, eval_qexpr, qexpr, ret, type_error};
use crate::compile::case_key;
use crate::heap::Env;
use crate::symbol::Sym;
use crate::value::{equal, Value};
use crate::vm::{Flow, Mode, Vm};

pub fn register(vm: &mut Vm) {
    define_all(
        vm,
        &[
            DEF, ASSIGN, LAMBDA, FUN, IF, DO, LET, SELECT, CASE, EVAL, TRY, ERROR, TYPE, PENV,
            EXIT, SHUTDOWN,
        ],
    );
}

/// The symbols of a binding list, checked against the number of values.
fn binding_names(vm: &mut Vm, name: &str, args: &[Value]) -> Result<Vec<Sym>, crate::heap::Gc> {
    if args.is_empty() {
        return Err(vm.error(format!("`{}` expected a Q-expression of symbols", name)));
    }
    let list = qexpr(vm, name, args[0])?;
    let items = vm.heap.list_items(list);
    let mut names = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Value::Sym(s) => names.push(s),
            other => return Err(type_error(vm, name, "only symbols to bind", other)),
        }
    }
    if names.len() != args.len() - 1 {
        return Err(vm.error(format!(
            "`{}` got {} symbols but {} values",
            name,
            names.len(),
            args.len() - 1
        )));
    }
    Ok(names)
}

builtin!(
    DEF,
    "def",
    "(def {names…} values…)",
    "Binds each name to its value in the global scope; returns ().",
    |vm, args, env| {
        let names = binding_names(vm, "def", args)?;
        for (sym, v) in names.into_iter().zip(args[1..].iter()) {
            vm.set_global(sym, *v);
        }
        ret(Value::Unit)
    }
);

builtin!(
    ASSIGN,
    "=",
    "(= {names…} values…)",
    "Binds each name to its value in the current scope (global at top level); returns ().",
    |vm, args, env| {
        let names = binding_names(vm, "=", args)?;
        for (sym, v) in names.into_iter().zip(args[1..].iter()) {
            vm.assign(sym, *v, env);
        }
        ret(Value::Unit)
    }
);

builtin!(
    LAMBDA,
    "\\",
    "(\\ {formals…} {body})",
    "A function of the formals (`& rest` collects extra arguments) closing over the current scope.",
    |vm, args, env| {
        arity(vm, "\\", args, 2, 2)?;
        let formals = qexpr(vm, "\\", args[0])?;
        let body = qexpr(vm, "\\", args[1])?;
        let proto = vm.compile_lambda(formals, body, env)?;
        ret(vm.make_lambda(proto, env, Vec::new()))
    }
);

builtin!(FUN, "fun", "(fun {name formals…} {body})", "Defines a global function: (def {name} (\\ {formals…} {body})), closing over the current scope.", |vm, args, env| {
    arity(vm, "fun", args, 2, 2)?;
    let spec = qexpr(vm, "fun", args[0])?;
    let body = qexpr(vm, "fun", args[1])?;
    let Some(cell) = spec.list_cell() else {
        return Err(vm.error("`fun` expected {name formals…}, got {}"));
    };
    let first = *vm.heap.cons(cell);
    let Value::Sym(name) = first.head else {
        return Err(type_error(vm, "fun", "a function name symbol", first.head));
    };
    let formals = match first.tail {
        Some(t) => Value::Q(t),
        None => Value::Nil,
    };
    let proto = vm.compile_lambda(formals, body, env)?;
    let f = vm.make_lambda(proto, env, Vec::new());
    vm.set_global(name, f);
    ret(Value::Unit)
});

builtin!(IF, "if", "(if cond {then} {else})", "Evaluates {then} in the current scope when cond is a non-zero Number, else {else} (or returns {}).", |vm, args, env| {
    arity(vm, "if", args, 2, 3)?;
    let span = vm.span;
    let branch = if vm.truth(args[0], span, "if")? {
        args[1]
    } else if args.len() == 3 {
        args[2]
    } else {
        return ret(Value::Nil);
    };
    if branch.is_qexpr() {
        eval_qexpr(vm, branch, env)
    } else {
        ret(branch)
    }
});

builtin!(
    DO,
    "do",
    "(do exprs…)",
    "Evaluates its arguments in order in the current scope and returns the last.",
    |vm, args, env| { ret(args.last().copied().unwrap_or(Value::Unit)) }
);

builtin!(
    LET,
    "let",
    "(let {body})",
    "Evaluates body in a new scope inside the current one; `=` in it binds there.",
    |vm, args, env| {
        arity(vm, "let", args, 1, 1)?;
        let body = qexpr(vm, "let", args[0])?;
        let scope = vm.heap.new_scope(&[], env, None, None, false);
        eval_qexpr(vm, body, Some(scope))
    }
);

/// The two elements of a clause, or an error naming the form.
fn clause(vm: &mut Vm, name: &str, v: Value) -> Result<(Value, Value), crate::heap::Gc> {
    if v.is_qexpr() && vm.heap.list_len(v) == 2 {
        let items = vm.heap.list_items(v);
        Ok((items[0], items[1]))
    } else {
        Err(type_error(vm, name, "clauses of two elements", v))
    }
}

/// Evaluates an element to a value now (not in tail position).
fn element_value(vm: &mut Vm, v: Value, env: Env) -> Result<Value, crate::heap::Gc> {
    match eval_element(vm, v, env)? {
        Flow::Value(v) => Ok(v),
        flow => vm.finish(flow),
    }
}

builtin!(SELECT, "select", "(select {cond value}…)", "Returns the value of the first clause whose cond is true; `otherwise` is always true. No match is an error.", |vm, args, env| {
    for &c in args {
        let (cond, value) = clause(vm, "select", c)?;
        let truth = element_value(vm, cond, env)?;
        let span = vm.span;
        if vm.truth(truth, span, "select")? {
            return eval_element(vm, value, env);
        }
    }
    Err(vm.error("no selection found"))
});

builtin!(
    CASE,
    "case",
    "(case x {{value} result}…)",
    "Returns the result of the first clause whose value equals x. No match is an error.",
    |vm, args, env| {
        arity(vm, "case", args, 1, usize::MAX)?;
        let subject = args[0];
        for &c in &args[1..] {
            let (key, value) = clause(vm, "case", c)?;
            let key = case_key(&vm.heap, (key, crate::error::Span::NONE)).0;
            let k = element_value(vm, key, env)?;
            if equal(&vm.heap, subject, k) {
                return eval_element(vm, value, env);
            }
        }
        Err(vm.error("no case found"))
    }
);

builtin!(
    EVAL,
    "eval",
    "(eval q)",
    "Evaluates a Q-expression as code in the current scope.",
    |vm, args, env| {
        arity(vm, "eval", args, 1, 1)?;
        match args[0] {
            Value::Q(g) => {
                // A one-element expression is that element's value: nothing
                // to compile for the common `(eval (head l))`.
                let cell = *vm.heap.cons(g);
                if cell.tail.is_none() && !matches!(cell.head, Value::S(_)) {
                    return eval_element(vm, cell.head, env);
                }
                eval_qexpr(vm, args[0], env)
            }
            Value::Nil => eval_qexpr(vm, args[0], env),
            other => eval_element(vm, other, env),
        }
    }
);

builtin!(
    TRY,
    "try",
    "(try {body} handler)",
    "Evaluates body in the current scope; if it yields an Error, returns (handler message).",
    |vm, args, env| {
        arity(vm, "try", args, 2, 2)?;
        let body = qexpr(vm, "try", args[0])?;
        let handler = args[1];
        if !handler.is_function() {
            return Err(type_error(vm, "try", "a handler function", handler));
        }
        let span = vm.span;
        let proto = vm.compile_eval(body, span, env)?;
        let base = vm.stack.len();
        match vm.run_proto(proto, env) {
            Ok(v) => ret(v),
            Err(e) => {
                if vm.is_uncatchable(e) {
                    return Err(e);
                }
                vm.stack.truncate(base);
                let message = vm.error_message(e);
                let msg = vm.heap.string_value(&message);
                let base = vm.stack.len();
                vm.stack.push(handler);
                vm.stack.push(msg);
                Ok(Flow::Call {
                    base,
                    env,
                    span,
                    name: None,
                })
            }
        }
    }
);

builtin!(
    ERROR,
    "error",
    "(error message)",
    "Returns an Error with the message (a String, or any value's readable form).",
    |vm, args, env| {
        arity(vm, "error", args, 1, 1)?;
        let message = match args[0] {
            Value::Str(g) => vm.heap.string(g).to_string(),
            other => vm.format_checked(other, true)?,
        };
        Err(vm.error(message))
    }
);

builtin!(TYPE, "type", "(type v)", "The type name of v as a String: Number, Float, String, Symbol, S-expression, Q-expression, Function, Map or Ref.", |vm, args, env| {
    arity(vm, "type", args, 1, 1)?;
    let name = args[0].type_name();
    ret(vm.heap.string_value(name))
});

builtin!(
    PENV,
    "penv",
    "(penv _)",
    "The current scope's bindings as {{name value}…} (the globals at top level).",
    |vm, args, env| {
        let pairs: Vec<(Sym, Value)> = match env {
            Some(g) => vm.heap.scope(g).vars.to_vec(),
            None => vm
                .global_names()
                .into_iter()
                .filter_map(|s| vm.global(s).map(|v| (s, v)))
                .collect(),
        };
        let mut out = Vec::with_capacity(pairs.len());
        for (s, v) in pairs {
            let pair = vm.heap.qlist(&[Value::Sym(s), v]);
            out.push(pair);
            // Keep finished pairs reachable while building the rest.
            vm.stack.push(pair);
        }
        let list = vm.heap.qlist(&out);
        ret(list)
    }
);

fn exit_code(vm: &mut Vm, name: &str, args: &[Value]) -> Result<i32, crate::heap::Gc> {
    arity(vm, name, args, 0, 1)?;
    match args.first() {
        None | Some(Value::Nil) => Ok(0),
        Some(Value::Num(n)) => Ok((*n).clamp(i32::MIN as i64, i32::MAX as i64) as i32),
        Some(other) => Err(type_error(vm, name, "an exit code Number", *other)),
    }
}

builtin!(
    EXIT,
    "exit",
    "(exit code)",
    "Ends the process at once with the exit code (output is flushed).",
    |vm, args, env| {
        let code = exit_code(vm, "exit", args)?;
        if vm.sandboxed {
            return Err(vm.error("`exit` is not allowed in the sandbox"));
        }
        vm.request_exit(code);
        Err(vm.exit_error())
    }
);

builtin!(SHUTDOWN, "shutdown", "(shutdown [code])", "Stops the async system, flushes output and ends the program with the code; in the REPL it only returns the code. Write `(shutdown 0)`: `(shutdown)` alone is the function's value, not a call.", |vm, args, env| {
    let code = exit_code(vm, "shutdown", args)?;
    if vm.mode == Mode::Repl || vm.sandboxed {
        return ret(Value::Num(code as i64));
    }
    vm.request_exit(code);
    Err(vm.exit_error())
});
