//! String builtins: `str` (concatenated display forms), `show` (readable
//! form), the `string/…` family (split, join, search, replace, trim, case,
//! slice by characters, number parsing, formatting) and the `printf`
//! formatting engine shared with `string/format`. Strings are immutable:
//! every builtin returns a new String.

use super::{arity, builtin, define_all, number, qexpr, ret, string, type_error};
use crate::heap::Gc;
use crate::reader::{classify, Atom};
use crate::value::Value;
use crate::vm::Vm;

pub fn register(vm: &mut Vm) {
    define_all(
        vm,
        &[
            STR,
            SHOW,
            SPLIT,
            JOIN,
            CONTAINS,
            STARTS_WITH,
            ENDS_WITH,
            REPLACE,
            TRIM,
            UPPER,
            LOWER,
            SLICE,
            TO_NUMBER,
            FORMAT,
        ],
    );
}

/// The text of a String argument, borrowed from the heap.
fn text<'a>(vm: &'a mut Vm, name: &str, v: Value) -> Result<&'a str, Gc> {
    match v {
        Value::Str(g) => Ok(vm.heap.string(g)),
        other => Err(type_error(vm, name, "a String", other)),
    }
}

/// A Q-expression of Strings.
fn string_list(vm: &mut Vm, parts: &[&str]) -> Value {
    let values: Vec<Value> = parts.iter().map(|p| vm.heap.string_value(p)).collect();
    // Strings made above are unreachable until the list holds them; no
    // collection runs inside a builtin, so this is safe.
    vm.heap.qlist(&values)
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

builtin!(
    SPLIT,
    "string/split",
    "(string/split s separator)",
    "The parts of s between occurrences of separator, as a Q-expression of Strings; an empty separator splits into characters.",
    |vm, args, env| {
        arity(vm, "string/split", args, 2, 2)?;
        let s = string(vm, "string/split", args[0])?;
        let sep = string(vm, "string/split", args[1])?;
        vm.reserve(s.len() * 2)?;
        let parts: Vec<String> = if sep.is_empty() {
            s.chars().map(String::from).collect()
        } else {
            s.split(sep.as_str()).map(String::from).collect()
        };
        let borrowed: Vec<&str> = parts.iter().map(String::as_str).collect();
        ret(string_list(vm, &borrowed))
    }
);

builtin!(
    JOIN,
    "string/join",
    "(string/join {strings…} [separator])",
    "The Strings of the list joined into one, with separator (default \"\") between them.",
    |vm, args, env| {
        arity(vm, "string/join", args, 1, 2)?;
        let list = qexpr(vm, "string/join", args[0])?;
        let sep = match args.get(1) {
            Some(&v) => string(vm, "string/join", v)?,
            None => String::new(),
        };
        let mut out = String::new();
        for (i, item) in vm.heap.list_items(list).into_iter().enumerate() {
            if i > 0 {
                out.push_str(&sep);
            }
            match item {
                Value::Str(g) => out.push_str(vm.heap.string(g)),
                other => return Err(type_error(vm, "string/join", "a list of Strings", other)),
            }
        }
        ret(vm.heap.string_value(&out))
    }
);

/// Declares a predicate on two Strings.
macro_rules! string_test {
    ($id:ident, $name:literal, $sig:literal, $doc:literal, $test:expr) => {
        builtin!($id, $name, $sig, $doc, |vm, args, env| {
            arity(vm, $name, args, 2, 2)?;
            let s = string(vm, $name, args[0])?;
            let part = string(vm, $name, args[1])?;
            let test: fn(&str, &str) -> bool = $test;
            ret(Value::bool(test(&s, &part)))
        });
    };
}

string_test!(
    CONTAINS,
    "string/contains?",
    "(string/contains? s part)",
    "1 if part occurs in s, else 0.",
    |s, part| s.contains(part)
);

string_test!(
    STARTS_WITH,
    "string/starts-with?",
    "(string/starts-with? s prefix)",
    "1 if s begins with prefix, else 0.",
    |s, prefix| s.starts_with(prefix)
);

string_test!(
    ENDS_WITH,
    "string/ends-with?",
    "(string/ends-with? s suffix)",
    "1 if s ends with suffix, else 0.",
    |s, suffix| s.ends_with(suffix)
);

builtin!(
    REPLACE,
    "string/replace",
    "(string/replace s from to)",
    "s with every occurrence of from replaced by to. An empty from is an Error.",
    |vm, args, env| {
        arity(vm, "string/replace", args, 3, 3)?;
        let s = string(vm, "string/replace", args[0])?;
        let from = string(vm, "string/replace", args[1])?;
        let to = string(vm, "string/replace", args[2])?;
        if from.is_empty() {
            return Err(vm.error("`string/replace` cannot replace the empty String"));
        }
        let count = s.matches(from.as_str()).count();
        vm.reserve(s.len() + count.saturating_mul(to.len()))?;
        let out = s.replace(from.as_str(), &to);
        ret(vm.heap.string_value(&out))
    }
);

/// Declares a String -> String builtin.
macro_rules! string_map {
    ($id:ident, $name:literal, $sig:literal, $doc:literal, $map:expr) => {
        builtin!($id, $name, $sig, $doc, |vm, args, env| {
            arity(vm, $name, args, 1, 1)?;
            let map: fn(&str) -> String = $map;
            let out = map(text(vm, $name, args[0])?);
            ret(vm.heap.string_value(&out))
        });
    };
}

string_map!(
    TRIM,
    "string/trim",
    "(string/trim s)",
    "s without whitespace at either end.",
    |s| s.trim().to_string()
);

string_map!(
    UPPER,
    "string/upper",
    "(string/upper s)",
    "s in upper case (Unicode rules).",
    |s| s.to_uppercase()
);

string_map!(
    LOWER,
    "string/lower",
    "(string/lower s)",
    "s in lower case (Unicode rules).",
    |s| s.to_lowercase()
);

/// A character index as `string/slice` reads it: negative counts from the
/// end; the result is clamped to `0..=len`.
fn char_index(i: i64, len: usize) -> usize {
    let len_i = len as i64;
    let i = if i < 0 { i.saturating_add(len_i) } else { i };
    i.clamp(0, len_i) as usize
}

builtin!(
    SLICE,
    "string/slice",
    "(string/slice s start [end])",
    "The characters of s from index start up to, not including, end (default: the end). Indices count characters from 0; a negative index counts from the end (-1 is the last character); indices past either end are clamped, so out-of-range slices are shorter or \"\", never an Error.",
    |vm, args, env| {
        arity(vm, "string/slice", args, 2, 3)?;
        let start = number(vm, "string/slice", args[1])?;
        let end = match args.get(2) {
            Some(&v) => Some(number(vm, "string/slice", v)?),
            None => None,
        };
        let s = text(vm, "string/slice", args[0])?;
        let len = s.chars().count();
        let from = char_index(start, len);
        let to = end.map_or(len, |e| char_index(e, len));
        let out: String = if from < to {
            s.chars().skip(from).take(to - from).collect()
        } else {
            String::new()
        };
        ret(vm.heap.string_value(&out))
    }
);

builtin!(
    TO_NUMBER,
    "string/to-number",
    "(string/to-number s)",
    "The Number or Float that s spells, as the reader reads it (surrounding whitespace ignored). Anything else is an Error.",
    |vm, args, env| {
        arity(vm, "string/to-number", args, 1, 1)?;
        let s = string(vm, "string/to-number", args[0])?;
        let tok = s.trim();
        let is_token = !tok.is_empty() && tok.bytes().all(crate::reader::is_symbol_byte);
        match classify(tok) {
            Atom::Int(n) if is_token => ret(Value::Num(n)),
            Atom::Float(f) if is_token => ret(Value::Float(f)),
            Atom::IntOutOfRange => Err(vm.error(format!(
                "`string/to-number`: {} is out of range for a Number",
                tok
            ))),
            _ => {
                let mut shown = String::new();
                crate::value::escape_string(&s, &mut shown);
                Err(vm.error(format!("`string/to-number`: {} is not a number", shown)))
            }
        }
    }
);

builtin!(
    FORMAT,
    "string/format",
    "(string/format format values…)",
    "The values formatted as printf does (%s %d %ld %f %v %%, width and precision), as a String.",
    |vm, args, env| {
        arity(vm, "string/format", args, 1, usize::MAX)?;
        let fmt = string(vm, "string/format", args[0])?;
        let out = format(vm, "string/format", &fmt, &args[1..])?;
        ret(vm.heap.string_value(&out))
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
