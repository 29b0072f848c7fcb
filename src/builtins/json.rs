//! JSON builtins on serde_json: `json/parse` (text -> values) and
//! `json/stringify` (values -> text). Objects are Maps with String keys,
//! arrays are Q-expressions, true/false are 1/0 and null is `{}`. Nesting
//! is limited to `JSON_DEPTH_LIMIT` both ways (serde_json's own recursion
//! limit on input), so hostile input cannot exhaust the native stack.

use std::fmt::Write;

use super::{arity, builtin, define_all, number, ret, string, type_error};
use crate::heap::{Gc, MAP_ENTRY_BYTES};
use crate::map::{sorted_entries, Entries, MapKey};
use crate::value::Value;
use crate::vm::{Vm, PRINT_LIMIT};

pub fn register(vm: &mut Vm) {
    define_all(vm, &[PARSE, STRINGIFY]);
}

/// Deepest nesting of arrays and objects read or written: what serde_json's
/// default recursion limit (128) lets through.
pub const JSON_DEPTH_LIMIT: usize = 127;

/// Converts parsed JSON to a value. Depth is bounded by the parser.
fn to_value(vm: &mut Vm, json: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match json {
        J::Null => Value::Nil,
        J::Bool(b) => Value::bool(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => Value::Num(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => vm.heap.string_value(s),
        J::Array(items) => {
            let values: Vec<Value> = items.iter().map(|j| to_value(vm, j)).collect();
            vm.heap.qlist(&values)
        }
        J::Object(fields) => {
            let mut map = Entries::new();
            for (k, j) in fields {
                let key = vm.heap.string_value(k);
                let value = to_value(vm, j);
                map.insert_mut(MapKey::Str(k.as_str().into()), (key, value));
            }
            let bytes = map.size() * MAP_ENTRY_BYTES;
            vm.heap.map_value(map, bytes)
        }
    }
}

builtin!(
    PARSE,
    "json/parse",
    "(json/parse s)",
    "The value of the JSON text s: objects become Maps (String keys), arrays Q-expressions, numbers Number or Float, true/false 1/0, null {}. Malformed input is an Error naming line and column; nesting deeper than 127 levels is an Error.",
    |vm, args, env| {
        arity(vm, "json/parse", args, 1, 1)?;
        let text = string(vm, "json/parse", args[0])?;
        let json: serde_json::Value = match serde_json::from_str(&text) {
            Ok(j) => j,
            Err(e) => return Err(vm.error(format!("`json/parse`: {}", e))),
        };
        // Parsed values are built without a collection in between, so the
        // partly built value needs no roots; reserve the room up front.
        vm.reserve(text.len().saturating_mul(4))?;
        ret(to_value(vm, &json))
    }
);

/// Writes values as JSON text, `indent` spaces per level (0: compact).
struct JsonWriter<'a> {
    vm: &'a mut Vm,
    out: String,
    indent: usize,
}

impl JsonWriter<'_> {
    fn fail(&mut self, message: String) -> Gc {
        self.vm.error(format!("`json/stringify`: {}", message))
    }

    fn newline(&mut self, depth: usize) {
        if self.indent > 0 {
            self.out.push('\n');
            self.out
                .extend(std::iter::repeat_n(' ', self.indent * depth));
        }
    }

    fn write(&mut self, v: Value, depth: usize) -> Result<(), Gc> {
        if self.out.len() > PRINT_LIMIT {
            return Err(self.fail(format!("text too large (over {} MB)", PRINT_LIMIT >> 20)));
        }
        match v {
            Value::Num(n) => {
                let _ = write!(self.out, "{}", n);
            }
            Value::Float(f) => match serde_json::Number::from_f64(f) {
                Some(n) => {
                    let _ = write!(self.out, "{}", n);
                }
                None => {
                    let shown = self.vm.show(v);
                    return Err(self.fail(format!("JSON cannot hold the Float {}", shown)));
                }
            },
            Value::Str(g) => {
                let text = serde_json::to_string(self.vm.heap.string(g))
                    .unwrap_or_else(|_| "\"\"".to_string());
                self.out.push_str(&text);
            }
            Value::Nil | Value::Q(_) => {
                if depth >= JSON_DEPTH_LIMIT {
                    return Err(self.too_deep());
                }
                let items = self.vm.heap.list_items(v);
                self.out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    self.newline(depth + 1);
                    self.write(*item, depth + 1)?;
                }
                if !items.is_empty() {
                    self.newline(depth);
                }
                self.out.push(']');
            }
            Value::Map(g) => {
                if depth >= JSON_DEPTH_LIMIT {
                    return Err(self.too_deep());
                }
                let entries = sorted_entries(self.vm.heap.map(g), &self.vm.syms);
                self.out.push('{');
                for (i, (k, value)) in entries.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    self.newline(depth + 1);
                    let name = match *k {
                        Value::Str(s) => self.vm.heap.string(s).to_string(),
                        Value::Sym(s) => self.vm.syms.name(s).to_string(),
                        other => {
                            let shown = super::short_show(self.vm, other);
                            return Err(self.fail(format!(
                                "object keys must be Strings or Symbols, got {} {}",
                                other.type_name(),
                                shown
                            )));
                        }
                    };
                    let text = serde_json::to_string(&name).unwrap_or_default();
                    self.out.push_str(&text);
                    self.out.push(':');
                    if self.indent > 0 {
                        self.out.push(' ');
                    }
                    self.write(*value, depth + 1)?;
                }
                if !entries.is_empty() {
                    self.newline(depth);
                }
                self.out.push('}');
            }
            other => {
                let shown = super::short_show(self.vm, other);
                let article = match other.type_name() {
                    "S-expression" => "an",
                    _ => "a",
                };
                return Err(self.fail(format!(
                    "JSON cannot hold {} {}: {}",
                    article,
                    other.type_name(),
                    shown
                )));
            }
        }
        Ok(())
    }

    fn too_deep(&mut self) -> Gc {
        self.fail(format!("nesting deeper than {} levels", JSON_DEPTH_LIMIT))
    }
}

builtin!(
    STRINGIFY,
    "json/stringify",
    "(json/stringify v [indent])",
    "JSON text for v: Maps become objects (String or Symbol keys, in key order), Q-expressions arrays ({} is []), Numbers, Floats and Strings themselves. Other values, NaN, infinities and nesting deeper than 127 levels are Errors. With indent > 0, one item per line.",
    |vm, args, env| {
        arity(vm, "json/stringify", args, 1, 2)?;
        let indent = match args.get(1) {
            Some(&v) => number(vm, "json/stringify", v)?,
            None => 0,
        };
        if !(0..=16).contains(&indent) {
            return Err(type_error(
                vm,
                "json/stringify",
                "an indent from 0 to 16",
                args[1],
            ));
        }
        let mut writer = JsonWriter {
            vm,
            out: String::new(),
            indent: indent as usize,
        };
        writer.write(args[0], 0)?;
        let text = writer.out;
        ret(vm.heap.string_value(&text))
    }
);
