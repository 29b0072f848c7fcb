//! Documentation: `doc` shows a name's signature and one-line description;
//! `doc/set` records them for a name that is not a builtin (the prelude
//! calls it right after each definition). Builtins carry their own, from
//! `builtin!`. The reference (`valk --reference`) is rendered here from the
//! same descriptions.

use std::collections::HashMap;
use std::fmt::Write;

use super::{arity, builtin, define_all, ret, string, type_error};
use crate::value::Value;
use crate::vm::Vm;

pub fn register(vm: &mut Vm) {
    define_all(vm, &[DOC, DOC_SET]);
}

/// One documented name that is not a builtin.
#[derive(Clone, Debug)]
pub struct DocEntry {
    pub name: String,
    pub signature: String,
    pub text: String,
    /// Where it was documented: a file name, or the title of the builtin
    /// family whose `register()` documented it.
    pub source: String,
}

/// Documentation of names that are not builtins, in the order first given.
#[derive(Default)]
pub struct Docs {
    entries: Vec<DocEntry>,
    by_name: HashMap<String, usize>,
}

impl Docs {
    /// Records (or replaces) the documentation of `name`.
    pub fn set(&mut self, entry: DocEntry) {
        match self.by_name.get(&entry.name) {
            Some(&i) => self.entries[i] = entry,
            None => {
                self.by_name.insert(entry.name.clone(), self.entries.len());
                self.entries.push(entry);
            }
        }
    }

    /// Gives entries recorded without a source (by a family's
    /// `register()`) that family's title.
    pub fn claim_unsourced(&mut self, family: &str) {
        for e in self.entries.iter_mut().filter(|e| e.source.is_empty()) {
            e.source = family.to_string();
        }
    }

    pub fn get(&self, name: &str) -> Option<&DocEntry> {
        self.by_name.get(name).map(|&i| &self.entries[i])
    }

    pub fn entries(&self) -> &[DocEntry] {
        &self.entries
    }
}

/// The signature and description of `v`: a builtin, a documented
/// function, or a String naming either.
pub fn lookup(vm: &Vm, v: Value) -> Option<(String, String)> {
    match v {
        Value::Builtin(id) => {
            let b = &vm.builtins[id as usize];
            Some((b.signature.to_string(), b.doc.to_string()))
        }
        Value::Str(g) => {
            let name = vm.heap.string(g);
            if let Some(e) = vm.library.docs.get(name) {
                return Some((e.signature.clone(), e.text.clone()));
            }
            let b = vm.builtins.iter().find(|b| b.name == name)?;
            Some((b.signature.to_string(), b.doc.to_string()))
        }
        Value::Lambda(_) => vm
            .global_names()
            .into_iter()
            .filter(|&s| vm.global(s).is_some_and(|g| g.same(v)))
            .find_map(|s| vm.library.docs.get(vm.syms.name(s)))
            .map(|e| (e.signature.clone(), e.text.clone())),
        _ => None,
    }
}

builtin!(
    DOC,
    "doc",
    "(doc f)",
    "Prints the signature and description of f — a builtin or documented function, or a String naming any documented name (\"nil\", \"args\") — and returns ().",
    |vm, args, env| {
        arity(vm, "doc", args, 1, 1)?;
        let v = args[0];
        match lookup(vm, v) {
            Some((signature, text)) => {
                super::io::write_stdout(&format!("{}\n  {}\n", signature, text));
                ret(Value::Unit)
            }
            None if matches!(v, Value::Str(_)) || v.is_function() => {
                let what = match v {
                    Value::Str(g) => format!("`{}`", vm.heap.string(g)),
                    other => super::short_show(vm, other),
                };
                Err(vm.error(format!("no documentation for {}", what)))
            }
            None => Err(type_error(vm, "doc", "a function or a name String", v)),
        }
    }
);

builtin!(
    DOC_SET,
    "doc/set",
    "(doc/set name signature description)",
    "Records the signature and one-line description that doc shows for name (a String); returns ().",
    |vm, args, env| {
        arity(vm, "doc/set", args, 3, 3)?;
        let name = string(vm, "doc/set", args[0])?;
        let signature = string(vm, "doc/set", args[1])?;
        let text = string(vm, "doc/set", args[2])?;
        let source = if vm.span.is_known() {
            vm.files
                .get(vm.span.file as usize)
                .cloned()
                .unwrap_or_default()
        } else {
            String::new()
        };
        vm.library.docs.set(DocEntry {
            name,
            signature,
            text,
            source,
        });
        ret(Value::Unit)
    }
);

/// Text safe inside a Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// Renders the reference: every builtin family, then the documented names
/// of each source file (the prelude first), as Markdown.
pub fn reference(vm: &Vm) -> String {
    let mut out = String::new();
    out.push_str(
        "# Valkyria reference\n\n\
         Every builtin and every documented prelude and test-module name, with\n\
         the signature and description that `(doc f)` shows. Generated by\n\
         `valk --reference > docs/REFERENCE.md`; `tests/reference.rs` checks\n\
         that it is up to date. `[x]` marks an optional argument, `x…` any\n\
         number of them.\n",
    );
    let row = |out: &mut String, signature: &str, text: &str| {
        let _ = writeln!(out, "| `{}` | {} |", cell(signature), cell(text));
    };
    for (title, ids) in &vm.library.families {
        let _ = write!(
            out,
            "\n## {}\n\n| Signature | Description |\n|---|---|\n",
            title
        );
        for b in &vm.builtins[ids.clone()] {
            row(&mut out, b.signature, b.doc);
        }
        for e in vm
            .library
            .docs
            .entries()
            .iter()
            .filter(|e| e.source == *title)
        {
            row(&mut out, &e.signature, &e.text);
        }
    }
    let mut sources: Vec<&str> = Vec::new();
    for e in vm.library.docs.entries() {
        let is_family = vm.library.families.iter().any(|(t, _)| *t == e.source);
        if !is_family && !sources.contains(&e.source.as_str()) {
            sources.push(&e.source);
        }
    }
    for source in sources {
        let title = match source {
            "<prelude>" => "Prelude (`src/prelude.valk`, loaded at startup)".to_string(),
            s if s.ends_with("modules/test.valk") => {
                "Test module (`(load \"src/modules/test.valk\")`)".to_string()
            }
            s => format!("`{}`", s),
        };
        let _ = write!(
            out,
            "\n## {}\n\n| Signature | Description |\n|---|---|\n",
            title
        );
        for e in vm
            .library
            .docs
            .entries()
            .iter()
            .filter(|e| e.source == source)
        {
            row(&mut out, &e.signature, &e.text);
        }
    }
    out
}
