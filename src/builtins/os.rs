//! Files, environment and arguments: `file/read`, `file/write`,
//! `file/append`, `file/exists?`, `file/list`, `file/remove`, `env/get`, and the global
//! `args` (the program's command-line arguments, set by the host). Paths
//! are relative to the current directory. Every failure is an Error naming
//! the path and the operating system's reason.

use std::io::Write;

use super::doc::DocEntry;
use super::{arity, builtin, define_all, ret, string};
use crate::heap::Gc;
use crate::source::io_reason;
use crate::value::{escape_string, Value};
use crate::vm::Vm;

pub fn register(vm: &mut Vm) {
    define_all(
        vm,
        &[
            FILE_READ,
            FILE_WRITE,
            FILE_APPEND,
            FILE_EXISTS,
            FILE_LIST,
            FILE_REMOVE,
            ENV_GET,
        ],
    );
    set_args(vm, &[]);
    vm.library.docs.set(DocEntry {
        name: "args".into(),
        signature: "args".into(),
        text: "The program's command-line arguments after the script, as a Q-expression of Strings ({} when none).".into(),
        source: String::new(),
    });
}

/// Binds the global `args` to the program's arguments, as Strings.
pub fn set_args(vm: &mut Vm, args: &[String]) {
    let values: Vec<Value> = args.iter().map(|a| vm.heap.string_value(a)).collect();
    let list = vm.heap.qlist(&values);
    let sym = vm.syms.intern("args");
    vm.set_global(sym, list);
}

/// An Error for a failed operation on `path`.
fn os_error(vm: &mut Vm, name: &str, action: &str, path: &str, e: &std::io::Error) -> Gc {
    vm.error(format!(
        "`{}` cannot {} `{}`: {}",
        name,
        action,
        path,
        io_reason(e)
    ))
}

builtin!(
    FILE_READ,
    "file/read",
    "(file/read path)",
    "The whole file as a String. A missing, unreadable or non-UTF-8 file is an Error.",
    |vm, args, env| {
        arity(vm, "file/read", args, 1, 1)?;
        let path = string(vm, "file/read", args[0])?;
        if let Ok(meta) = std::fs::metadata(&path) {
            vm.reserve(meta.len() as usize)?;
        }
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => return Err(os_error(vm, "file/read", "read", &path, &e)),
        };
        match String::from_utf8(bytes) {
            Ok(text) => ret(vm.heap.string_value(&text)),
            Err(e) => Err(vm.error(format!(
                "`file/read` cannot read `{}`: not valid UTF-8 (at byte {})",
                path,
                e.utf8_error().valid_up_to()
            ))),
        }
    }
);

/// Writes `content` to `path`, replacing or appending.
fn write_file(vm: &mut Vm, name: &str, args: &[Value], append: bool) -> Result<Value, Gc> {
    arity(vm, name, args, 2, 2)?;
    let path = string(vm, name, args[0])?;
    let content = string(vm, name, args[1])?;
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .append(append)
        .truncate(!append)
        .open(&path)
        .and_then(|mut f| f.write_all(content.as_bytes()));
    match result {
        Ok(()) => Ok(Value::Unit),
        Err(e) => Err(os_error(vm, name, "write", &path, &e)),
    }
}

builtin!(
    FILE_WRITE,
    "file/write",
    "(file/write path s)",
    "Writes the String s to the file, creating it or replacing its contents; returns ().",
    |vm, args, env| { ret(write_file(vm, "file/write", args, false)?) }
);

builtin!(
    FILE_APPEND,
    "file/append",
    "(file/append path s)",
    "Adds the String s to the end of the file, creating it if needed; returns ().",
    |vm, args, env| { ret(write_file(vm, "file/append", args, true)?) }
);

builtin!(
    FILE_EXISTS,
    "file/exists?",
    "(file/exists? path)",
    "1 if a file or directory exists at path, else 0.",
    |vm, args, env| {
        arity(vm, "file/exists?", args, 1, 1)?;
        let path = string(vm, "file/exists?", args[0])?;
        ret(Value::bool(std::path::Path::new(&path).exists()))
    }
);

builtin!(
    FILE_LIST,
    "file/list",
    "(file/list directory)",
    "The names of the entries of a directory (not their paths), sorted, as a Q-expression of Strings.",
    |vm, args, env| {
        arity(vm, "file/list", args, 1, 1)?;
        let path = string(vm, "file/list", args[0])?;
        let entries = match std::fs::read_dir(&path) {
            Ok(entries) => entries,
            Err(e) => return Err(os_error(vm, "file/list", "list", &path, &e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            match entry {
                Ok(entry) => names.push(entry.file_name().to_string_lossy().into_owned()),
                Err(e) => return Err(os_error(vm, "file/list", "list", &path, &e)),
            }
        }
        names.sort();
        let values: Vec<Value> = names.iter().map(|n| vm.heap.string_value(n)).collect();
        ret(vm.heap.qlist(&values))
    }
);

builtin!(
    FILE_REMOVE,
    "file/remove",
    "(file/remove path)",
    "Deletes the file (not a directory); returns (). A missing file is an Error.",
    |vm, args, env| {
        arity(vm, "file/remove", args, 1, 1)?;
        let path = string(vm, "file/remove", args[0])?;
        match std::fs::remove_file(&path) {
            Ok(()) => ret(Value::Unit),
            Err(e) => Err(os_error(vm, "file/remove", "remove", &path, &e)),
        }
    }
);

builtin!(
    ENV_GET,
    "env/get",
    "(env/get name [default])",
    "The environment variable's value as a String; when it is not set (or not UTF-8), default if given, else {}.",
    |vm, args, env| {
        arity(vm, "env/get", args, 1, 2)?;
        let name = string(vm, "env/get", args[0])?;
        if name.is_empty() || name.contains(['=', '\0']) {
            let mut shown = String::new();
            escape_string(&name, &mut shown);
            return Err(vm.error(format!(
                "`env/get`: {} is not a valid variable name",
                shown
            )));
        }
        match std::env::var(&name) {
            Ok(value) => ret(vm.heap.string_value(&value)),
            Err(_) => ret(args.get(1).copied().unwrap_or(Value::Nil)),
        }
    }
);
