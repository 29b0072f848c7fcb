//! Map builtins: `map/new`, `map/from`, `map/get`, `map/put`, `map/remove`,
//! `map/has?`, `map/len`, `map/keys`, `map/values`, `map/entries`. Maps are
//! values: `put` and `remove` return a new map and leave the old one as it
//! was (sharing most of its structure). Keys are described in map.rs.

use super::{arity, builtin, define_all, qexpr, ret, type_error};
use crate::heap::{Gc, MAP_ENTRY_BYTES};
use crate::map::{sorted_entries, Entries, MapKey};
use crate::value::Value;
use crate::vm::Vm;

pub fn register(vm: &mut Vm) {
    define_all(
        vm,
        &[NEW, FROM, GET, PUT, REMOVE, HAS, LEN, KEYS, VALUES, ENTRIES],
    );
}

/// Heap bytes a `put` or `remove` accounts for: the path it copies.
const PATH_BYTES: usize = 512;

/// The key projection of `v`, or an Error naming the builtin.
pub fn key(vm: &mut Vm, name: &str, v: Value) -> Result<MapKey, Gc> {
    MapKey::of(&vm.heap, v).map_err(|why| {
        vm.error(format!(
            "`{}` cannot use {} as a map key (keys are Numbers, Floats, Strings, Symbols and Q-expressions of them)",
            name, why.0
        ))
    })
}

/// The entries of a Map argument.
fn entries(vm: &mut Vm, name: &str, v: Value) -> Result<Entries, Gc> {
    match v {
        Value::Map(g) => Ok(vm.heap.map(g).clone()),
        other => Err(type_error(vm, name, "a Map", other)),
    }
}

/// Builds a map from key-value pairs, later keys replacing earlier ones.
pub fn build(vm: &mut Vm, name: &str, pairs: &[(Value, Value)]) -> Result<Value, Gc> {
    vm.reserve(pairs.len() * MAP_ENTRY_BYTES)?;
    let mut map = Entries::new();
    for &(k, v) in pairs {
        let projected = key(vm, name, k)?;
        map.insert_mut(projected, (k, v));
    }
    let bytes = map.size() * MAP_ENTRY_BYTES;
    Ok(vm.heap.map_value(map, bytes))
}

builtin!(
    NEW,
    "map/new",
    "(map/new key value …)",
    "A Map of the key-value pairs (a later duplicate key wins). (map/new {}) is the empty Map.",
    |vm, args, env| {
        if args.len() == 1 && matches!(args[0], Value::Nil) {
            return ret(build(vm, "map/new", &[])?);
        }
        if !args.len().is_multiple_of(2) {
            return Err(vm.error(format!(
                "`map/new` expected key-value pairs, got {} arguments",
                args.len()
            )));
        }
        let pairs: Vec<(Value, Value)> = args.chunks(2).map(|p| (p[0], p[1])).collect();
        ret(build(vm, "map/new", &pairs)?)
    }
);

builtin!(
    FROM,
    "map/from",
    "(map/from {{key value}…})",
    "A Map of a list of {key value} pairs, the form map/entries returns.",
    |vm, args, env| {
        arity(vm, "map/from", args, 1, 1)?;
        let list = qexpr(vm, "map/from", args[0])?;
        let mut pairs = Vec::new();
        for pair in vm.heap.list_items(list) {
            if !pair.is_qexpr() || vm.heap.list_len(pair) != 2 {
                return Err(type_error(vm, "map/from", "{key value} pairs", pair));
            }
            let items = vm.heap.list_items(pair);
            pairs.push((items[0], items[1]));
        }
        ret(build(vm, "map/from", &pairs)?)
    }
);

builtin!(
    GET,
    "map/get",
    "(map/get map key [default])",
    "The value stored under key; when there is none, default if given, else {}.",
    |vm, args, env| {
        arity(vm, "map/get", args, 2, 3)?;
        let map = entries(vm, "map/get", args[0])?;
        let k = key(vm, "map/get", args[1])?;
        match map.get(&k) {
            Some((_, v)) => ret(*v),
            None => ret(args.get(2).copied().unwrap_or(Value::Nil)),
        }
    }
);

builtin!(
    PUT,
    "map/put",
    "(map/put map key value)",
    "A new Map with key bound to value (replacing any value it had); map itself is unchanged.",
    |vm, args, env| {
        arity(vm, "map/put", args, 3, 3)?;
        let map = entries(vm, "map/put", args[0])?;
        let k = key(vm, "map/put", args[1])?;
        vm.reserve(PATH_BYTES)?;
        let map = map.insert(k, (args[1], args[2]));
        ret(vm.heap.map_value(map, PATH_BYTES))
    }
);

builtin!(
    REMOVE,
    "map/remove",
    "(map/remove map key)",
    "A new Map without key (the same Map when key is absent); map itself is unchanged.",
    |vm, args, env| {
        arity(vm, "map/remove", args, 2, 2)?;
        let map = entries(vm, "map/remove", args[0])?;
        let k = key(vm, "map/remove", args[1])?;
        if !map.contains_key(&k) {
            return ret(args[0]);
        }
        vm.reserve(PATH_BYTES)?;
        let map = map.remove(&k);
        ret(vm.heap.map_value(map, PATH_BYTES))
    }
);

builtin!(
    HAS,
    "map/has?",
    "(map/has? map key)",
    "1 if map has a value under key, else 0.",
    |vm, args, env| {
        arity(vm, "map/has?", args, 2, 2)?;
        let map = entries(vm, "map/has?", args[0])?;
        let k = key(vm, "map/has?", args[1])?;
        ret(Value::bool(map.contains_key(&k)))
    }
);

builtin!(
    LEN,
    "map/len",
    "(map/len map)",
    "The number of keys in map.",
    |vm, args, env| {
        arity(vm, "map/len", args, 1, 1)?;
        let map = entries(vm, "map/len", args[0])?;
        ret(Value::Num(map.size() as i64))
    }
);

/// The sorted entries of a Map argument, checked.
fn sorted(vm: &mut Vm, name: &str, args: &[Value]) -> Result<Vec<(Value, Value)>, Gc> {
    arity(vm, name, args, 1, 1)?;
    let map = entries(vm, name, args[0])?;
    vm.reserve(map.size() * 48)?;
    Ok(sorted_entries(&map, &vm.syms))
}

builtin!(
    KEYS,
    "map/keys",
    "(map/keys map)",
    "The keys as a Q-expression, in order: numbers, then Strings, then Symbols, then Q-expressions.",
    |vm, args, env| {
        let all = sorted(vm, "map/keys", args)?;
        let keys: Vec<Value> = all.into_iter().map(|(k, _)| k).collect();
        ret(vm.heap.qlist(&keys))
    }
);

builtin!(
    VALUES,
    "map/values",
    "(map/values map)",
    "The values as a Q-expression, in the order of their keys (see map/keys).",
    |vm, args, env| {
        let all = sorted(vm, "map/values", args)?;
        let values: Vec<Value> = all.into_iter().map(|(_, v)| v).collect();
        ret(vm.heap.qlist(&values))
    }
);

builtin!(
    ENTRIES,
    "map/entries",
    "(map/entries map)",
    "The entries as {{key value}…}, in key order; map/from turns them back into a Map.",
    |vm, args, env| {
        let all = sorted(vm, "map/entries", args)?;
        let mut pairs = Vec::with_capacity(all.len());
        for (k, v) in all {
            // Pairs are unreachable until the outer list holds them; no
            // collection runs before it is built.
            pairs.push(vm.heap.qlist(&[k, v]));
        }
        ret(vm.heap.qlist(&pairs))
    }
);
