//! Valkyria: a small, fast Lisp for prototyping systems.
//!
//! The pipeline is reader -> compile -> vm, with values in a traced heap.
//! `Interpreter` is the embedding API: make one (it loads the prelude), then
//! evaluate text or files.

pub mod aio;
pub mod builtins;
pub mod compile;
pub mod error;
pub mod heap;
pub mod http;
mod hugepages;
pub mod lower;
pub mod map;
pub mod reader;
pub mod repl;
pub mod source;
pub mod symbol;
pub mod value;
pub mod vm;

pub use value::Value;
pub use vm::{Mode, Vm};

/// The prelude, embedded in the binary and loaded at startup.
pub const PRELUDE: &str = include_str!("prelude.valk");
/// The test module, loadable as `src/modules/test.valk` from the repository.
pub const TEST_MODULE: &str = include_str!("modules/test.valk");

/// An interpreter with the prelude loaded.
pub struct Interpreter {
    pub vm: Vm,
}

/// The reference of every builtin, prelude function and test-module
/// function, as Markdown (what `valk --reference` prints).
pub fn reference(interp: &mut Interpreter) -> String {
    if let Err(e) = interp.vm.run_source(TEST_MODULE, "src/modules/test.valk") {
        panic!("test module failed to load: {}", interp.vm.render_error(e));
    }
    builtins::doc::reference(&interp.vm)
}

/// Bounds for running generated or untrusted code (the fuzzers use these).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Calls allowed before `step limit exceeded` (`None`: unbounded).
    pub steps: Option<u64>,
    /// Live heap allowed before `out of memory` (`None`: `VALK_MAX_HEAP_MB`).
    pub heap_bytes: Option<usize>,
    /// Nested (non-tail) calls allowed.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            steps: None,
            heap_bytes: None,
            max_depth: vm::DEFAULT_MAX_DEPTH,
        }
    }
}

/// Builtins a sandboxed interpreter rebinds to `sandbox/denied`: single
/// names, and whole families by prefix (so later additions to a family are
/// covered). `exit`, `load` and the network builtins also check
/// `Vm::sandboxed` themselves.
const SANDBOX_DENIED_NAMES: &[&str] = &["import"];
const SANDBOX_DENIED_FAMILIES: &[&str] = &["file/", "env/", "os/", "process/"];

fn sandbox_denied(vm: &mut Vm, _args: &[Value], _env: heap::Env) -> Result<vm::Flow, heap::Gc> {
    Err(vm
        .error("not allowed in the sandbox (files, the environment, the network and exit are off)"))
}

/// The outcome of evaluating text: a value's readable form, or a rendered
/// Error (message, location, trace).
pub type Outcome = Result<String, String>;

impl Interpreter {
    pub fn new(mode: Mode) -> Interpreter {
        let mut vm = Vm::bare();
        vm.mode = mode;
        if let Err(e) = vm.run_source(PRELUDE, "<prelude>") {
            // The prelude is part of the binary; failing here is a build defect.
            panic!("prelude failed to load: {}", vm.render_error(e));
        }
        Interpreter { vm }
    }

    /// An interpreter for code that must not end the process, touch files
    /// or the environment, or use the network: REPL mode (`shutdown` only
    /// returns its code); `exit`, `load`, `import`, the `file/` and `env/`
    /// families, the async system and `http2/…` are Errors; the given
    /// limits apply. Call `vm.set_native_stack` on the thread that will
    /// run it.
    pub fn sandboxed(limits: Limits) -> Interpreter {
        let mut interp = Interpreter::new(Mode::Repl);
        interp.vm.sandboxed = true;
        let denied: Vec<&'static str> = interp
            .vm
            .builtins
            .iter()
            .map(|b| b.name)
            .filter(|name| {
                SANDBOX_DENIED_NAMES.contains(name)
                    || SANDBOX_DENIED_FAMILIES.iter().any(|f| name.starts_with(f))
            })
            .collect();
        interp.vm.define_builtin(
            "sandbox/denied",
            "(sandbox/denied _)",
            "Raises an Error: what a sandboxed interpreter binds in place of builtins that reach outside it.",
            sandbox_denied,
        );
        let stand_in = interp.vm.syms.intern("sandbox/denied");
        if let Some(v) = interp.vm.global(stand_in) {
            for name in denied {
                let sym = interp.vm.syms.intern(name);
                interp.vm.set_global(sym, v);
            }
        }
        interp.vm.set_step_limit(limits.steps);
        if limits.heap_bytes.is_some() {
            interp.vm.max_heap = limits.heap_bytes;
        }
        interp.vm.max_depth = limits.max_depth;
        interp
    }

    /// Evaluates source text; `name` is used in error positions.
    pub fn eval_str(&mut self, src: &str, name: &str) -> Result<Value, String> {
        match self.vm.run_source(src, name) {
            Ok(v) => Ok(v),
            Err(e) => {
                let text = self.vm.render_error(e);
                self.vm.clear_uncatchable();
                Err(text)
            }
        }
    }

    /// Evaluates text and returns the readable form of its value.
    pub fn eval_to_string(&mut self, src: &str) -> Outcome {
        let v = self.eval_str(src, "<eval>")?;
        Ok(self.vm.show(v))
    }

    pub fn run_file(&mut self, path: &str) -> Result<Value, String> {
        // No call site: an unreadable file is not an error in the code
        // that ran last (the prelude).
        self.vm.span = error::Span::NONE;
        match self.vm.load_file(path) {
            Ok(v) => Ok(v),
            Err(e) => {
                let text = self.vm.render_error(e);
                self.vm.clear_uncatchable();
                Err(text)
            }
        }
    }

    /// Sets the program's command-line arguments (the global `args`).
    pub fn set_args(&mut self, args: &[String]) {
        builtins::os::set_args(&mut self.vm, args);
    }

    /// The exit code requested by `exit` or `shutdown`, if any.
    pub fn exit_requested(&self) -> Option<i32> {
        self.vm.exit_code
    }
}
