//! Arithmetic and comparison: `+ - * / %` (checked Number arithmetic, Float
//! when any argument is a Float), `< > <= >=`, structural `==`/`!=`, `ord`.

use super::{arity, builtin, define_all, ret, type_error};
use crate::heap::Gc;
use crate::value::{equal, Value};
use crate::vm::Vm;

pub fn register(vm: &mut Vm) {
    define_all(vm, &[ADD, SUB, MUL, DIV, REM, LT, GT, LE, GE, EQ, NE, ORD]);
}

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Add => "+",
            Op::Sub => "-",
            Op::Mul => "*",
            Op::Div => "/",
            Op::Rem => "%",
        }
    }
}

fn combine(vm: &mut Vm, op: Op, a: Value, b: Value) -> Result<Value, Gc> {
    match (a, b) {
        (Value::Num(x), Value::Num(y)) => {
            let r = match op {
                Op::Add => x.checked_add(y),
                Op::Sub => x.checked_sub(y),
                Op::Mul => x.checked_mul(y),
                Op::Div | Op::Rem => {
                    if y == 0 {
                        return Err(vm.error("division by zero"));
                    }
                    if op == Op::Div {
                        x.checked_div(y)
                    } else {
                        x.checked_rem(y)
                    }
                }
            };
            match r {
                Some(n) => Ok(Value::Num(n)),
                None => Err(vm.error("integer overflow")),
            }
        }
        (x, y) => {
            let fx = float_of(vm, op, x)?;
            let fy = float_of(vm, op, y)?;
            if matches!(op, Op::Div | Op::Rem) && fy == 0.0 {
                return Err(vm.error("division by zero"));
            }
            Ok(Value::Float(match op {
                Op::Add => fx + fy,
                Op::Sub => fx - fy,
                Op::Mul => fx * fy,
                Op::Div => fx / fy,
                Op::Rem => fx % fy,
            }))
        }
    }
}

fn float_of(vm: &mut Vm, op: Op, v: Value) -> Result<f64, Gc> {
    match v {
        Value::Num(n) => Ok(n as f64),
        Value::Float(f) => Ok(f),
        other => Err(type_error(vm, op.name(), "a Number or Float", other)),
    }
}

fn arithmetic(vm: &mut Vm, op: Op, args: &[Value]) -> Result<Value, Gc> {
    let Some(&first) = args.first() else {
        return Err(vm.error(format!(
            "`{}` expected at least 1 argument, got 0",
            op.name()
        )));
    };
    if !matches!(first, Value::Num(_) | Value::Float(_)) {
        return Err(type_error(vm, op.name(), "a Number or Float", first));
    }
    if args.len() == 1 && op == Op::Sub {
        return match first {
            Value::Num(n) => n
                .checked_neg()
                .map(Value::Num)
                .ok_or_else(|| vm.error("integer overflow")),
            Value::Float(f) => Ok(Value::Float(-f)),
            _ => unreachable!("checked numeric above"),
        };
    }
    let mut acc = first;
    for &x in &args[1..] {
        acc = combine(vm, op, acc, x)?;
    }
    Ok(acc)
}

builtin!(
    ADD,
    "+",
    "(+ x y…)",
    "Sum of Numbers; a Float if any argument is one. Overflow is an error.",
    |vm, args, env| {
        if let [Value::Num(a), Value::Num(b)] = args {
            if let Some(n) = a.checked_add(*b) {
                return ret(Value::Num(n));
            }
        }
        ret(arithmetic(vm, Op::Add, args)?)
    }
);

builtin!(
    SUB,
    "-",
    "(- x y…)",
    "Difference; (- x) negates. Overflow is an error.",
    |vm, args, env| {
        if let [Value::Num(a), Value::Num(b)] = args {
            if let Some(n) = a.checked_sub(*b) {
                return ret(Value::Num(n));
            }
        }
        ret(arithmetic(vm, Op::Sub, args)?)
    }
);

builtin!(
    MUL,
    "*",
    "(* x y…)",
    "Product. Overflow is an error.",
    |vm, args, env| { ret(arithmetic(vm, Op::Mul, args)?) }
);

builtin!(
    DIV,
    "/",
    "(/ x y…)",
    "Quotient; Numbers truncate toward zero. Division by zero is an error.",
    |vm, args, env| { ret(arithmetic(vm, Op::Div, args)?) }
);

builtin!(
    REM,
    "%",
    "(% x y…)",
    "Remainder, with the sign of the dividend. Division by zero is an error.",
    |vm, args, env| { ret(arithmetic(vm, Op::Rem, args)?) }
);

fn compare(vm: &mut Vm, name: &str, args: &[Value]) -> Result<std::cmp::Ordering, Gc> {
    arity(vm, name, args, 2, 2)?;
    match (args[0], args[1]) {
        (Value::Num(a), Value::Num(b)) => Ok(a.cmp(&b)),
        (a, b) => {
            let fa = match a {
                Value::Num(n) => n as f64,
                Value::Float(f) => f,
                other => return Err(type_error(vm, name, "a Number or Float", other)),
            };
            let fb = match b {
                Value::Num(n) => n as f64,
                Value::Float(f) => f,
                other => return Err(type_error(vm, name, "a Number or Float", other)),
            };
            fa.partial_cmp(&fb)
                .ok_or_else(|| vm.error(format!("`{}` cannot order NaN", name)))
        }
    }
}

builtin!(
    LT,
    "<",
    "(< a b)",
    "1 if a < b, else 0.",
    |vm, args, env| {
        if let [Value::Num(a), Value::Num(b)] = args {
            return ret(Value::bool(a < b));
        }
        ret(Value::bool(compare(vm, "<", args)?.is_lt()))
    }
);

builtin!(
    GT,
    ">",
    "(> a b)",
    "1 if a > b, else 0.",
    |vm, args, env| { ret(Value::bool(compare(vm, ">", args)?.is_gt())) }
);

builtin!(
    LE,
    "<=",
    "(<= a b)",
    "1 if a <= b, else 0.",
    |vm, args, env| { ret(Value::bool(compare(vm, "<=", args)?.is_le())) }
);

builtin!(
    GE,
    ">=",
    "(>= a b)",
    "1 if a >= b, else 0.",
    |vm, args, env| { ret(Value::bool(compare(vm, ">=", args)?.is_ge())) }
);

builtin!(
    EQ,
    "==",
    "(== a b)",
    "1 if a and b are structurally equal (lists deeply, strings by content), else 0.",
    |vm, args, env| {
        if let [Value::Num(a), Value::Num(b)] = args {
            return ret(Value::bool(a == b));
        }
        arity(vm, "==", args, 2, 2)?;
        ret(Value::bool(equal(&vm.heap, args[0], args[1])))
    }
);

builtin!(
    NE,
    "!=",
    "(!= a b)",
    "0 if a and b are structurally equal, else 1.",
    |vm, args, env| {
        arity(vm, "!=", args, 2, 2)?;
        ret(Value::bool(!equal(&vm.heap, args[0], args[1])))
    }
);

builtin!(
    ORD,
    "ord",
    "(ord op a b)",
    "Compares a and b with op, one of < > <= >= == != given as a String, Symbol or the builtin.",
    |vm, args, env| {
        arity(vm, "ord", args, 3, 3)?;
        let op = match args[0] {
            Value::Str(g) => vm.heap.string(g).to_string(),
            Value::Sym(s) => vm.syms.name(s).to_string(),
            Value::Builtin(id) => vm.builtins[id as usize].name.to_string(),
            other => return Err(type_error(vm, "ord", "a comparison operator", other)),
        };
        let pair = [args[1], args[2]];
        let result = match op.as_str() {
            "<" => compare(vm, "ord", &pair)?.is_lt(),
            ">" => compare(vm, "ord", &pair)?.is_gt(),
            "<=" => compare(vm, "ord", &pair)?.is_le(),
            ">=" => compare(vm, "ord", &pair)?.is_ge(),
            "==" => equal(&vm.heap, pair[0], pair[1]),
            "!=" => !equal(&vm.heap, pair[0], pair[1]),
            other => return Err(vm.error(format!("`ord` does not know the operator `{}`", other))),
        };
        ret(Value::bool(result))
    }
);
