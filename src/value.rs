//! The Value type, its printed forms (readable and display) and structural
//! equality. Values are small and `Copy`; everything larger lives in the
//! traced heap and is referenced by a `Gc` handle.

use std::collections::HashSet;

use smallvec::SmallVec;

use crate::heap::{Gc, Heap, Object};
use crate::symbol::{Sym, Symbols};

/// A Valkyria value: 16 bytes, a tag word and a payload word.
///
/// `repr(u64)` puts every payload at offset 8 behind a whole-word tag, so
/// the code generator moves a value as two 8-byte words, the same words a
/// Number is built from. With a 4-byte tag it moved values as pieces of
/// 4, 8 and 4 bytes, and a load of one piece across the two stores that
/// had just built a Number could not be forwarded from them: a stall of a
/// dozen cycles or more at almost every return of a call.
#[derive(Clone, Copy, Debug)]
#[repr(u64)]
pub enum Value {
    Num(i64),
    Float(f64),
    Sym(Sym),
    /// `{}`: the empty Q-expression, also `nil`.
    Nil,
    /// `()`: the empty S-expression.
    Unit,
    /// A non-empty Q-expression: its first cons cell.
    Q(Gc),
    /// A non-empty S-expression: its first cons cell.
    S(Gc),
    Str(Gc),
    Lambda(Gc),
    Builtin(u32),
    /// A persistent hash map (see map.rs).
    Map(Gc),
    Ref(Gc),
}

const _: () = assert!(std::mem::size_of::<Value>() == 16);
const _: () = assert!(std::mem::align_of::<Value>() == 8);
const _: () = assert!(std::mem::size_of::<Option<Value>>() == 16);

impl Value {
    pub fn type_name(self) -> &'static str {
        match self {
            Value::Num(_) => "Number",
            Value::Float(_) => "Float",
            Value::Sym(_) => "Symbol",
            Value::Nil | Value::Q(_) => "Q-expression",
            Value::Unit | Value::S(_) => "S-expression",
            Value::Str(_) => "String",
            Value::Lambda(_) | Value::Builtin(_) => "Function",
            Value::Map(_) => "Map",
            Value::Ref(_) => "Ref",
        }
    }

    pub fn is_function(self) -> bool {
        matches!(self, Value::Lambda(_) | Value::Builtin(_))
    }

    /// The first cell of a list value of either kind, if non-empty.
    pub fn list_cell(self) -> Option<Gc> {
        match self {
            Value::Q(g) | Value::S(g) => Some(g),
            _ => None,
        }
    }

    /// The heap object the value refers to, if any.
    #[inline]
    pub fn heap_object(self) -> Option<Gc> {
        match self {
            Value::Q(g)
            | Value::S(g)
            | Value::Str(g)
            | Value::Lambda(g)
            | Value::Map(g)
            | Value::Ref(g) => Some(g),
            _ => None,
        }
    }

    pub fn is_qexpr(self) -> bool {
        matches!(self, Value::Nil | Value::Q(_))
    }

    pub fn bool(b: bool) -> Value {
        Value::Num(b as i64)
    }

    /// The same identity: used for guards, not for `==`.
    pub fn same(self, other: Value) -> bool {
        match (self, other) {
            (Value::Num(a), Value::Num(b)) => a == b,
            (Value::Float(a), Value::Float(b)) => a.to_bits() == b.to_bits(),
            (Value::Sym(a), Value::Sym(b)) => a == b,
            (Value::Nil, Value::Nil) | (Value::Unit, Value::Unit) => true,
            (Value::Q(a), Value::Q(b))
            | (Value::S(a), Value::S(b))
            | (Value::Str(a), Value::Str(b))
            | (Value::Lambda(a), Value::Lambda(b))
            | (Value::Map(a), Value::Map(b))
            | (Value::Ref(a), Value::Ref(b)) => a == b,
            (Value::Builtin(a), Value::Builtin(b)) => a == b,
            _ => false,
        }
    }
}

/// Writes a float in the shortest form that reads back, always with a `.`
/// or an exponent.
pub fn format_float(f: f64, out: &mut String) {
    if f.is_nan() {
        out.push_str("nan");
        return;
    }
    if f.is_infinite() {
        out.push_str(if f > 0.0 { "inf" } else { "-inf" });
        return;
    }
    let s = format!("{:?}", f);
    out.push_str(&s);
    if !s.contains(['.', 'e', 'E']) {
        out.push_str(".0");
    }
}

/// Escapes a string into its readable (source) form, quotes included.
pub fn escape_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\0' => out.push_str("\\0"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0b' => out.push_str("\\v"),
            '\x0c' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Printer state: where to write, whether strings are quoted, and a bound
/// on output so that printing a huge or deeply nested value cannot exhaust
/// memory or the native stack.
pub struct Printer<'a> {
    pub heap: &'a Heap,
    pub syms: &'a Symbols,
    pub builtin_names: &'a [&'static str],
    pub out: String,
    pub max_len: usize,
}

/// What is left to print of a value: the printer keeps these on a list of
/// its own rather than on the native stack, so values nested to any depth
/// print whole (the output bound, not the depth, limits the work).
enum Pending {
    /// A value inside another (printed readably).
    Value(Value),
    Text(&'static str),
    /// The rest of a list from `cell` on, then `close`; `first` when
    /// nothing of it has been printed yet.
    List {
        cell: Option<Gc>,
        close: char,
        first: bool,
    },
    /// A map's entries from `next` on, then its `)`.
    Entries {
        entries: Vec<(Value, Value)>,
        next: usize,
    },
}

impl<'a> Printer<'a> {
    fn truncated(&self) -> bool {
        self.out.len() > self.max_len
    }

    /// Writes `v`; `readable` quotes strings (the form `show` and the REPL
    /// use). What `v` holds is always written readably.
    pub fn write(&mut self, v: Value, readable: bool) {
        let mut pending = Vec::new();
        self.write_one(v, readable, &mut pending);
        while let Some(next) = pending.pop() {
            match next {
                Pending::Value(v) => self.write_one(v, true, &mut pending),
                Pending::Text(text) => self.out.push_str(text),
                Pending::List { cell, close, first } => {
                    let Some(c) = cell else {
                        self.out.push(close);
                        continue;
                    };
                    if self.truncated() {
                        self.out.push_str(" ...");
                        self.out.push(close);
                        continue;
                    }
                    if !first {
                        self.out.push(' ');
                    }
                    let cons = self.heap.cons(c);
                    pending.push(Pending::List {
                        cell: cons.tail,
                        close,
                        first: false,
                    });
                    pending.push(Pending::Value(cons.head));
                }
                Pending::Entries { entries, next } => {
                    let Some(&(k, v)) = entries.get(next) else {
                        self.out.push(')');
                        continue;
                    };
                    if self.truncated() {
                        self.out.push_str(" ...)");
                        continue;
                    }
                    self.out.push(' ');
                    pending.push(Pending::Entries {
                        entries,
                        next: next + 1,
                    });
                    pending.push(Pending::Value(v));
                    pending.push(Pending::Text(" "));
                    pending.push(Pending::Value(k));
                }
            }
        }
    }

    /// Writes `v` itself, leaving what it holds on `pending`.
    fn write_one(&mut self, v: Value, readable: bool, pending: &mut Vec<Pending>) {
        if self.truncated() {
            return;
        }
        match v {
            Value::Num(n) => {
                use std::fmt::Write;
                let _ = write!(self.out, "{}", n);
            }
            Value::Float(f) => format_float(f, &mut self.out),
            Value::Sym(s) => self.out.push_str(self.syms.name(s)),
            Value::Nil => self.out.push_str("{}"),
            Value::Unit => self.out.push_str("()"),
            Value::Q(g) => self.open_list(g, '{', '}', pending),
            Value::S(g) => self.open_list(g, '(', ')', pending),
            Value::Str(g) => {
                let mut s = self.heap.string(g);
                // Past the limit the text is cut anyway: copy no more.
                let room = self
                    .max_len
                    .saturating_sub(self.out.len())
                    .saturating_add(1);
                if s.len() > room {
                    let mut end = room;
                    while !s.is_char_boundary(end) {
                        end -= 1;
                    }
                    s = &s[..end];
                }
                if readable {
                    escape_string(s, &mut self.out);
                } else {
                    self.out.push_str(s);
                }
            }
            Value::Builtin(id) => {
                self.out.push_str("<builtin ");
                self.out
                    .push_str(self.builtin_names.get(id as usize).unwrap_or(&"?"));
                self.out.push('>');
            }
            Value::Lambda(g) => {
                let lambda = self.heap.lambda(g);
                self.out.push_str("(\\ {");
                // The formals not bound by partial application (a rest
                // formal's `&` always shows).
                let mut formals = Vec::new();
                let mut skip = lambda.bound.len();
                let mut cell = lambda.proto.formals_value.list_cell();
                while let Some(c) = cell {
                    let cons = self.heap.cons(c);
                    if skip > 0 && !matches!(cons.head, Value::Sym(s) if self.syms.name(s) == "&") {
                        skip -= 1;
                    } else {
                        formals.push(cons.head);
                    }
                    cell = cons.tail;
                }
                pending.push(Pending::Text(")"));
                pending.push(Pending::Value(lambda.proto.body_value));
                pending.push(Pending::Text("} "));
                for (i, formal) in formals.into_iter().enumerate().rev() {
                    pending.push(Pending::Value(formal));
                    if i > 0 {
                        pending.push(Pending::Text(" "));
                    }
                }
            }
            Value::Map(g) => {
                // A map prints as the call that makes it, keys in order:
                // `(map/new "a" 1 "b" 2)`; the empty map is `(map/new {})`.
                let entries = crate::map::sorted_entries(self.heap.map(g), self.syms);
                self.out.push_str("(map/new");
                if entries.is_empty() {
                    self.out.push_str(" {})");
                } else {
                    pending.push(Pending::Entries { entries, next: 0 });
                }
            }
            Value::Ref(g) => {
                let text = self.heap.host_ref(g).describe();
                self.out.push_str(&text);
            }
        }
    }

    fn open_list(&mut self, g: Gc, open: char, close: char, pending: &mut Vec<Pending>) {
        self.out.push(open);
        pending.push(Pending::List {
            cell: Some(g),
            close,
            first: true,
        });
    }
}

/// Structural equality as `==` defines it: lists deeply, strings by content,
/// numbers numerically across Number and Float, builtins by identity,
/// lambdas by formals, body and bound arguments, maps by their entries.
///
/// No native recursion: the pairs still to compare wait on a list of their
/// own, so lists nested to any depth compare by content. The answer is
/// whether every pair met is equal, in whatever order they are taken.
/// Lists share structure (`(list a a)` holds `a` twice), so a value can be
/// exponentially larger than its heap; after a while, pairs of list cells
/// already met are remembered and not compared again (were they unequal,
/// the answer is no anyway), which keeps the work proportional to the
/// distinct cells.
pub fn equal(heap: &Heap, a: Value, b: Value) -> bool {
    if let Some(equal) = equal_leaves(heap, a, b) {
        return equal;
    }
    let mut pending: SmallVec<[(Value, Value); 16]> = SmallVec::new();
    pending.push((a, b));
    let mut cells = 0usize;
    let mut met: HashSet<(Gc, Gc)> = HashSet::new();
    // Queues a pair, or settles it at once when neither holds others.
    let compare =
        |pending: &mut SmallVec<[(Value, Value); 16]>, a: Value, b: Value| match equal_leaves(
            heap, a, b,
        ) {
            Some(equal) => equal,
            None => {
                pending.push((a, b));
                true
            }
        };
    while let Some((a, b)) = pending.pop() {
        let equal = match (a, b) {
            (Value::Q(x), Value::Q(y)) | (Value::S(x), Value::S(y)) => {
                let (mut x, mut y) = (Some(x), Some(y));
                loop {
                    match (x, y) {
                        (None, None) => break true,
                        (Some(cx), Some(cy)) => {
                            if cx == cy {
                                break true;
                            }
                            cells += 1;
                            if cells > EQUAL_MEMO_AFTER && !met.insert((cx, cy)) {
                                break true;
                            }
                            let (a, b) = (heap.cons(cx), heap.cons(cy));
                            if a.len != b.len || !compare(&mut pending, a.head, b.head) {
                                break false;
                            }
                            x = a.tail;
                            y = b.tail;
                        }
                        _ => break false,
                    }
                }
            }
            (Value::Lambda(x), Value::Lambda(y)) => {
                let (a, b) = (heap.lambda(x), heap.lambda(y));
                a.bound.len() == b.bound.len()
                    && compare(&mut pending, a.proto.formals_value, b.proto.formals_value)
                    && compare(&mut pending, a.proto.body_value, b.proto.body_value)
                    && a.bound
                        .iter()
                        .zip(b.bound.iter())
                        .all(|(p, q)| compare(&mut pending, *p, *q))
            }
            (Value::Map(x), Value::Map(y)) => {
                let (a, b) = (heap.map(x), heap.map(y));
                a.size() == b.size()
                    && a.iter().all(|(key, (_, v))| {
                        b.get(key)
                            .is_some_and(|(_, w)| compare(&mut pending, *v, *w))
                    })
            }
            // Only pairs `equal_leaves` left open are queued.
            _ => a.same(b),
        };
        if !equal {
            return false;
        }
    }
    true
}

/// List cells compared before pairs met are remembered.
const EQUAL_MEMO_AFTER: usize = 4096;

/// Whether `a` equals `b` when that needs no look inside them (`None`:
/// two lists, two lambdas or two maps, not the same object).
fn equal_leaves(heap: &Heap, a: Value, b: Value) -> Option<bool> {
    Some(match (a, b) {
        (Value::Num(x), Value::Num(y)) => x == y,
        (Value::Float(x), Value::Float(y)) => x == y,
        (Value::Num(x), Value::Float(y)) | (Value::Float(y), Value::Num(x)) => x as f64 == y,
        (Value::Str(x), Value::Str(y)) => x == y || heap.string(x) == heap.string(y),
        (Value::Q(x), Value::Q(y))
        | (Value::S(x), Value::S(y))
        | (Value::Lambda(x), Value::Lambda(y))
        | (Value::Map(x), Value::Map(y)) => {
            if x == y {
                true
            } else {
                return None;
            }
        }
        _ => a.same(b),
    })
}

/// Reads an object kind name for diagnostics.
pub fn object_kind(obj: &Object) -> &'static str {
    match obj {
        Object::Free => "free",
        Object::Cons(_) => "cons",
        Object::Str(_) => "string",
        Object::Lambda(_) => "lambda",
        Object::Scope(_) => "scope",
        Object::Error(_) => "error",
        Object::Map(_) => "map",
        Object::Ref(_) => "ref",
    }
}
