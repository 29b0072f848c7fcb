//! Builtin functions, one file per family. Each family lists its builtins in
//! a `register()`; each builtin is declared with `builtin!`, which keeps its
//! signature and documentation on the definition (the REPL's `doc` and the
//! reference read them from there). Shared argument checks live here.

use crate::heap::{Env, Gc};
use crate::value::Value;
use crate::vm::{Builtin, Flow, Vm};

pub mod arith;
pub mod core;
pub mod doc;
pub mod gc;
pub mod http;
pub mod io;
pub mod json;
pub mod list;
pub mod map;
pub mod module;
pub mod os;
pub mod string;

/// Declares a builtin: `builtin!(NAME, "name", "(sig)", "doc", |vm, args, env| body)`.
macro_rules! builtin {
    ($id:ident, $name:literal, $sig:literal, $doc:literal, |$vm:ident, $args:ident, $env:ident| $body:block) => {
        #[allow(unused_variables)]
        pub const $id: crate::vm::Builtin = crate::vm::Builtin {
            name: $name,
            signature: $sig,
            doc: $doc,
            func: {
                fn implementation(
                    $vm: &mut crate::vm::Vm,
                    $args: &[crate::value::Value],
                    $env: crate::heap::Env,
                ) -> Result<crate::vm::Flow, crate::heap::Gc> {
                    $body
                }
                implementation
            },
        };
    };
}
pub(crate) use builtin;

/// A family's `register()`: binds its builtins.
pub type Register = fn(&mut Vm);

/// Every family: its title in the reference, and its `register()`.
pub const FAMILIES: &[(&str, Register)] = &[
    (
        "Core: definition, control flow, evaluation, process",
        core::register,
    ),
    ("Arithmetic and comparison", arith::register),
    ("Lists", list::register),
    ("Strings", string::register),
    ("Maps", map::register),
    ("JSON", json::register),
    ("Input and output", io::register),
    ("Documentation", doc::register),
    ("Modules", module::register),
    ("Files, environment and arguments", os::register),
    ("Memory", gc::register),
    ("Async and HTTP/2", http::register),
];

/// What the standard library keeps per interpreter.
#[derive(Default)]
pub struct Library {
    /// Each family's title and the ids of its builtins, in registration order.
    pub families: Vec<(&'static str, std::ops::Range<usize>)>,
    /// Files being loaded and files already imported.
    pub modules: module::Modules,
    /// Documentation of names that are not builtins.
    pub docs: doc::Docs,
}

/// Binds every builtin of every family.
pub fn register_all(vm: &mut Vm) {
    for &(title, register) in FAMILIES {
        let start = vm.builtins.len();
        register(vm);
        let end = vm.builtins.len();
        vm.library.families.push((title, start..end));
        vm.library.docs.claim_unsourced(title);
    }
}

pub fn define_all(vm: &mut Vm, builtins: &[Builtin]) {
    for b in builtins {
        vm.define_builtin(b.name, b.signature, b.doc, b.func);
    }
}

/// Shorthand for returning a plain value.
pub fn ret(v: Value) -> Result<Flow, Gc> {
    Ok(Flow::Value(v))
}

/// Checks the argument count.
#[inline]
pub fn arity(vm: &mut Vm, name: &str, args: &[Value], min: usize, max: usize) -> Result<(), Gc> {
    if args.len() < min || args.len() > max {
        return Err(arity_error(vm, name, args, min, max));
    }
    Ok(())
}

#[cold]
#[inline(never)]
fn arity_error(vm: &mut Vm, name: &str, args: &[Value], min: usize, max: usize) -> Gc {
    {
        let expected = if min == max {
            format!("{}", min)
        } else if max == usize::MAX {
            format!("at least {}", min)
        } else {
            format!("{} to {}", min, max)
        };
        let plural = if min == 1 && max == 1 {
            "argument"
        } else {
            "arguments"
        };
        vm.error(format!(
            "`{}` expected {} {}, got {}",
            name,
            expected,
            plural,
            args.len()
        ))
    }
}

/// A type error naming the builtin, what it wanted and what it got.
pub fn type_error(vm: &mut Vm, name: &str, wanted: &str, got: Value) -> Gc {
    let shown = short_show(vm, got);
    vm.error(format!(
        "`{}` expected {}, got {} {}",
        name,
        wanted,
        got.type_name(),
        shown
    ))
}

/// The readable form cut to a length fit for an error message.
pub fn short_show(vm: &Vm, v: Value) -> String {
    let s = vm.format_limited(v, true, 64);
    if s.chars().count() > 60 {
        let cut: String = s.chars().take(57).collect();
        format!("{}...", cut)
    } else {
        s
    }
}

pub fn number(vm: &mut Vm, name: &str, v: Value) -> Result<i64, Gc> {
    match v {
        Value::Num(n) => Ok(n),
        other => Err(type_error(vm, name, "a Number", other)),
    }
}

pub fn string(vm: &mut Vm, name: &str, v: Value) -> Result<String, Gc> {
    match v {
        Value::Str(g) => Ok(vm.heap.string(g).to_string()),
        other => Err(type_error(vm, name, "a String", other)),
    }
}

pub fn qexpr(vm: &mut Vm, name: &str, v: Value) -> Result<Value, Gc> {
    if v.is_qexpr() {
        Ok(v)
    } else {
        Err(type_error(vm, name, "a Q-expression", v))
    }
}

/// Evaluates a value the way an element of an S-expression is evaluated,
/// in `env`, returning a tail flow.
pub fn eval_element(vm: &mut Vm, v: Value, env: Env) -> Result<Flow, Gc> {
    match v {
        Value::Sym(s) => {
            let span = vm.span;
            Ok(Flow::Value(vm.lookup(s, env, span)?))
        }
        Value::S(_) => {
            let span = vm.span;
            let proto = vm.compile_eval(v, span, env)?;
            Ok(Flow::Eval { proto, env })
        }
        other => Ok(Flow::Value(other)),
    }
}

/// Evaluates a Q-expression as code in `env`, returning a tail flow.
pub fn eval_qexpr(vm: &mut Vm, q: Value, env: Env) -> Result<Flow, Gc> {
    let span = vm.span;
    let proto = vm.compile_eval(q, span, env)?;
    Ok(Flow::Eval { proto, env })
}
