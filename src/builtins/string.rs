//! String builtins: `str` (concatenated display forms), `show` (readable
//! form) and `string/format`'s engine shared with `printf`.

use super::{arity, builtin, define_all, ret, type_error};
use crate::heap::Gc;
use crate::value::{format_float, Value};
use crate::vm::Vm;

pub fn register(vm: &mut Vm) {
    define_all(vm, &[STR, SHOW]);
}

builtin!(
    STR,
    "str",
    "(str values…)",
    "Concatenates the display forms of the values (Strings raw) into a String.",
    |vm, args, env| {
        let mut out = String::new();
        for &a in args {
            out.push_str(&vm.format_checked(a, false)?);
            vm.check_text(out.len())?;
        }
        vm.reserve(out.len())?;
        ret(vm.heap.string_value(&out))
    }
);

builtin!(
    SHOW,
    "show",
    "(show v)",
    "The readable form of v as a String.",
    |vm, args, env| {
        arity(vm, "show", args, 1, 1)?;
        let s = vm.format_checked(args[0], true)?;
        vm.reserve(s.len())?;
        ret(vm.heap.string_value(&s))
    }
);

/// Formats `printf`-style: `%s` String, `%d`/`%ld` Number, `%f` Float
/// (Numbers accepted), `%v` any value, `%%`; flags `-` `0` `+` and a space,
/// width and `.precision` are honoured.
pub fn format(vm: &mut Vm, name: &str, fmt: &str, args: &[Value]) -> Result<String, Gc> {
    let mut out = String::new();
    let mut next = 0usize;
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut left = false;
        let mut zero = false;
        let mut plus = false;
        let mut space = false;
        while let Some(&f) = chars.peek() {
            match f {
                '-' => left = true,
                '0' => zero = true,
                '+' => plus = true,
                ' ' => space = true,
                _ => break,
            }
            chars.next();
        }
        let mut width = 0usize;
        while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
            width = width
                .saturating_mul(10)
                .saturating_add(d as usize)
                .min(4096);
            chars.next();
        }
        let mut precision: Option<usize> = None;
        if chars.peek() == Some(&'.') {
            chars.next();
            let mut p = 0usize;
            while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
                p = p.saturating_mul(10).saturating_add(d as usize).min(4096);
                chars.next();
            }
            precision = Some(p);
        }
        while chars.peek() == Some(&'l') {
            chars.next();
        }
        let Some(directive) = chars.next() else {
            return Err(vm.error(format!("`{}` format ends inside a directive", name)));
        };
        if directive == '%' {
            out.push('%');
            continue;
        }
        let Some(&arg) = args.get(next) else {
            return Err(vm.error(format!(
                "`{}` has no argument for directive %{}",
                name, directive
            )));
        };
        next += 1;
        let (body, numeric) = match directive {
            's' => match arg {
                Value::Str(g) => {
                    let s = vm.heap.string(g);
                    let s = match precision {
                        Some(p) => s.chars().take(p).collect(),
                        None => s.to_string(),
                    };
                    (s, false)
                }
                other => return Err(type_error(vm, name, "a String for %s", other)),
            },
            'd' | 'i' => match arg {
                Value::Num(n) => {
                    let mut s = n.to_string();
                    if n >= 0 && plus {
                        s.insert(0, '+');
                    } else if n >= 0 && space {
                        s.insert(0, ' ');
                    }
                    (s, true)
                }
                other => return Err(type_error(vm, name, "a Number for %d", other)),
            },
            'f' => {
                let f = match arg {
                    Value::Float(f) => f,
                    Value::Num(n) => n as f64,
                    other => return Err(type_error(vm, name, "a Float for %f", other)),
                };
                let mut s = format!("{:.*}", precision.unwrap_or(6), f);
                if f >= 0.0 && plus {
                    s.insert(0, '+');
                } else if f >= 0.0 && space {
                    s.insert(0, ' ');
                }
                (s, true)
            }
            'v' => (vm.format_checked(arg, true)?, false),
            other => {
                return Err(vm.error(format!("`{}` does not know the directive %{}", name, other)));
            }
        };
        vm.check_text(out.len().saturating_add(body.len()).saturating_add(width))?;
        let len = body.chars().count();
        if len >= width {
            out.push_str(&body);
        } else if left {
            out.push_str(&body);
            out.extend(std::iter::repeat_n(' ', width - len));
        } else if zero && numeric {
            let (sign, digits) = match body.chars().next() {
                Some(c @ ('-' | '+' | ' ')) => (Some(c), &body[1..]),
                _ => (None, &body[..]),
            };
            if let Some(c) = sign {
                out.push(c);
            }
            out.extend(std::iter::repeat_n('0', width - len));
            out.push_str(digits);
        } else {
            out.extend(std::iter::repeat_n(' ', width - len));
            out.push_str(&body);
        }
    }
    if next < args.len() {
        return Err(vm.error(format!(
            "`{}` got {} arguments but the format uses {}",
            name,
            args.len(),
            next
        )));
    }
    Ok(out)
}

/// Shortest readable float text (re-exported for builtins that print).
pub fn float_text(f: f64) -> String {
    let mut s = String::new();
    format_float(f, &mut s);
    s
}
