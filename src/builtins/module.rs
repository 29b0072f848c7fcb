//! Modules: `(import "path")` runs a file once per interpreter. A relative
//! path is looked up next to the file that contains the `import` call (the
//! current directory at the REPL), then in each directory of the
//! colon-separated `VALK_PATH`; `.valk` is added to a path without an
//! extension when that finds the file. Importing a file that is still
//! being loaded is a cycle, reported with the chain of files.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use super::{arity, builtin, define_all, ret, string};
use crate::value::Value;
use crate::vm::Vm;

pub fn register(vm: &mut Vm) {
    define_all(vm, &[IMPORT]);
}

/// Files being loaded and files already imported.
#[derive(Default)]
pub struct Modules {
    /// Files being run by `load`, `import` or the command line, outermost
    /// first: canonical path and the path as it is shown.
    pub loading: Vec<(PathBuf, String)>,
    /// Canonical paths of files whose import finished without an Error.
    pub imported: HashSet<PathBuf>,
}

/// `path` with `.` and `dir/..` removed where that needs no file system.
fn tidy(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// The directory relative imports start from: that of the file containing
/// the call, else of the file being loaded, else the current directory.
fn base_directory(vm: &Vm) -> PathBuf {
    let calling_file = vm
        .files
        .get(vm.span.file as usize)
        .filter(|name| vm.span.is_known() && !name.starts_with('<'))
        .cloned()
        .or_else(|| {
            vm.library
                .modules
                .loading
                .last()
                .map(|(_, shown)| shown.clone())
        });
    match calling_file {
        Some(file) => Path::new(&file)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
        None => PathBuf::new(),
    }
}

/// Where `import` looks for `path`, in order.
fn candidates(vm: &Vm, path: &str) -> Vec<PathBuf> {
    let wanted = Path::new(path);
    let mut dirs = Vec::new();
    if wanted.is_absolute() {
        dirs.push(PathBuf::new());
    } else {
        dirs.push(base_directory(vm));
        if let Ok(search) = std::env::var("VALK_PATH") {
            dirs.extend(
                search
                    .split(':')
                    .filter(|d| !d.is_empty())
                    .map(PathBuf::from),
            );
        }
    }
    let mut out = Vec::new();
    for dir in dirs {
        let full = tidy(&dir.join(wanted));
        if wanted.extension().is_none() {
            let mut with_extension = full.clone().into_os_string();
            with_extension.push(".valk");
            out.push(full);
            out.push(PathBuf::from(with_extension));
        } else {
            out.push(full);
        }
    }
    out
}

builtin!(
    IMPORT,
    "import",
    "(import path)",
    "Runs the file once: later imports of it return at once. A relative path is found next to the importing file, then in each directory of VALK_PATH (colon-separated); .valk may be left out. Returns (). A cycle of imports is an Error naming the chain.",
    |vm, args, env| {
        arity(vm, "import", args, 1, 1)?;
        let path = string(vm, "import", args[0])?;
        let tried = candidates(vm, &path);
        let Some(found) = tried.iter().find(|p| p.is_file()).cloned() else {
            let places: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
            return Err(vm.error(format!(
                "`import` cannot find `{}` (looked for {})",
                path,
                places.join(", ")
            )));
        };
        let canonical = std::fs::canonicalize(&found).unwrap_or_else(|_| found.clone());
        let shown = found.display().to_string();
        let modules = &vm.library.modules;
        if modules.imported.contains(&canonical) {
            return ret(Value::Unit);
        }
        if let Some(i) = modules.loading.iter().position(|(c, _)| *c == canonical) {
            let mut chain: Vec<&str> = modules.loading[i..].iter().map(|(_, s)| s.as_str()).collect();
            chain.push(&shown);
            let message = format!("import cycle: {}", chain.join(" -> "));
            return Err(vm.error(message));
        }
        vm.load_file(&shown)?;
        vm.library.modules.imported.insert(canonical);
        ret(Value::Unit)
    }
);
