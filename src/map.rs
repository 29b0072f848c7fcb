//! Map values: a persistent hash map (a HAMT from `rpds`, so `put` and
//! `remove` share structure with the map they start from) and the key
//! projection that decides which values may be keys, when two keys are the
//! same, and the order in which keys are listed and printed.
//!
//! Keys are Numbers, Floats, Strings, Symbols and Q-expressions of those.
//! Two keys are the same exactly when `==` says so: a Float with an integral
//! value is the same key as that Number (`1.0` and `1`). NaN is not a key.
//! Each entry keeps the key value as given, for `map/keys` and printing.

use std::cmp::Ordering;
use std::rc::Rc;

use crate::heap::Heap;
use crate::symbol::{Sym, Symbols};
use crate::value::Value;

/// A map's entries: key projection -> (key as given, value).
pub type Entries = rpds::HashTrieMap<MapKey, (Value, Value)>;

/// The Floats that convert exactly to an i64: -2^63 ..< 2^63.
const I64_MIN_F: f64 = -9_223_372_036_854_775_808.0;
const I64_END_F: f64 = 9_223_372_036_854_775_808.0;

/// How deeply a Q-expression key may nest.
const KEY_DEPTH_LIMIT: usize = 64;

/// How many elements a Q-expression key may hold, nested ones included.
/// Lists share structure (`(list a a)` holds `a` twice), so a key of a few
/// cells can stand for exponentially many elements; its projection is not
/// built past this.
const KEY_ELEMENT_LIMIT: usize = 100_000;

/// The hashable projection of a key value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MapKey {
    Int(i64),
    /// A Float without an integral value: its bits (never NaN, never -0.0).
    Float(u64),
    Str(Rc<str>),
    Sym(Sym),
    List(Rc<[MapKey]>),
}

/// Why a value cannot be a key, e.g. "a Function".
pub struct NotAKey(pub &'static str);

impl MapKey {
    /// The key for `v`, or why it cannot be one.
    pub fn of(heap: &Heap, v: Value) -> Result<MapKey, NotAKey> {
        let mut elements = 0;
        Self::of_depth(heap, v, 0, &mut elements)
    }

    fn of_depth(
        heap: &Heap,
        v: Value,
        depth: usize,
        elements: &mut usize,
    ) -> Result<MapKey, NotAKey> {
        match v {
            Value::Num(n) => Ok(MapKey::Int(n)),
            Value::Float(f) => {
                if f.is_nan() {
                    Err(NotAKey("NaN"))
                } else if f.fract() == 0.0 && (I64_MIN_F..I64_END_F).contains(&f) {
                    Ok(MapKey::Int(f as i64))
                } else {
                    Ok(MapKey::Float(f.to_bits()))
                }
            }
            Value::Str(g) => Ok(MapKey::Str(heap.string(g).into())),
            Value::Sym(s) => Ok(MapKey::Sym(s)),
            Value::Nil => Ok(MapKey::List(Rc::from([]))),
            Value::Q(_) => {
                if depth >= KEY_DEPTH_LIMIT {
                    return Err(NotAKey("a Q-expression nested this deeply"));
                }
                *elements += heap.list_len(v);
                if *elements > KEY_ELEMENT_LIMIT {
                    return Err(NotAKey("a Q-expression of more than 100000 elements"));
                }
                let items = heap
                    .list_items(v)
                    .into_iter()
                    .map(|item| Self::of_depth(heap, item, depth + 1, elements))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(MapKey::List(items.into()))
            }
            Value::S(_) | Value::Unit => Err(NotAKey("an S-expression")),
            Value::Lambda(_) | Value::Builtin(_) => Err(NotAKey("a Function")),
            Value::Map(_) => Err(NotAKey("a Map")),
            Value::Ref(_) => Err(NotAKey("a Ref")),
        }
    }

    fn rank(&self) -> u8 {
        match self {
            MapKey::Int(_) | MapKey::Float(_) => 0,
            MapKey::Str(_) => 1,
            MapKey::Sym(_) => 2,
            MapKey::List(_) => 3,
        }
    }

    /// The order keys are listed in: numbers (numerically), then Strings,
    /// then Symbols (by name), then Q-expressions (element by element).
    pub fn compare(&self, other: &MapKey, syms: &Symbols) -> Ordering {
        use MapKey::*;
        match (self, other) {
            (Int(a), Int(b)) => a.cmp(b),
            (Int(a), Float(b)) => (*a as f64).total_cmp(&f64::from_bits(*b)),
            (Float(a), Int(b)) => f64::from_bits(*a).total_cmp(&(*b as f64)),
            (Float(a), Float(b)) => f64::from_bits(*a).total_cmp(&f64::from_bits(*b)),
            (Str(a), Str(b)) => a.cmp(b),
            (Sym(a), Sym(b)) => syms.name(*a).cmp(syms.name(*b)),
            (List(a), List(b)) => {
                for (x, y) in a.iter().zip(b.iter()) {
                    match x.compare(y, syms) {
                        Ordering::Equal => continue,
                        unequal => return unequal,
                    }
                }
                a.len().cmp(&b.len())
            }
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

/// The entries of a map as (key, value) pairs, in key order.
pub fn sorted_entries(entries: &Entries, syms: &Symbols) -> Vec<(Value, Value)> {
    let mut all: Vec<(&MapKey, &(Value, Value))> = entries.iter().collect();
    all.sort_by(|a, b| a.0.compare(b.0, syms));
    all.into_iter().map(|(_, kv)| *kv).collect()
}
