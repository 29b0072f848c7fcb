//! Input and output: `print`, `printf`, `load`, `time-us`.

use std::io::Write;

use super::{arity, builtin, define_all, ret, string, type_error};
use crate::value::Value;
use crate::vm::Vm;

pub fn register(vm: &mut Vm) {
    define_all(vm, &[PRINT, PRINTF, LOAD, TIME_US]);
}

/// Writes to standard output; a closed pipe is not an error worth dying for.
pub fn write_stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
}

builtin!(
    PRINT,
    "print",
    "(print values…)",
    "Writes the values separated by spaces and a newline; Strings raw, others readable.",
    |vm, args, env| {
        let mut line = String::new();
        for (i, &a) in args.iter().enumerate() {
            if i > 0 {
                line.push(' ');
            }
            line.push_str(&vm.format_checked(a, false)?);
            vm.check_text(line.len())?;
        }
        line.push('\n');
        write_stdout(&line);
        ret(Value::Unit)
    }
);

builtin!(
    PRINTF,
    "printf",
    "(printf format values…)",
    "Writes values formatted by %s %d %ld %f %v %% (with width and precision); no newline added.",
    |vm, args, env| {
        arity(vm, "printf", args, 1, usize::MAX)?;
        let fmt = string(vm, "printf", args[0])?;
        let text = super::string::format(vm, "printf", &fmt, &args[1..])?;
        write_stdout(&text);
        ret(Value::Unit)
    }
);

builtin!(LOAD, "load", "(load path)", "Reads and evaluates a file in the global scope; returns the last value. Errors name their location.", |vm, args, env| {
    arity(vm, "load", args, 1, 1)?;
    let path = match args[0] {
        Value::Str(g) => vm.heap.string(g).to_string(),
        other => return Err(type_error(vm, "load", "a path String", other)),
    };
    if vm.sandboxed {
        return Err(vm.error("`load` is not allowed in the sandbox"));
    }
    ret(vm.load_file(&path)?)
});

builtin!(
    TIME_US,
    "time-us",
    "(time-us _)",
    "Monotonic time in microseconds.",
    |vm, args, env| { ret(Value::Num(vm.start.elapsed().as_micros() as i64 + 1)) }
);
