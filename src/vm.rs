//! Execution: runs compiled code, makes calls and tail calls, resolves
//! names (scope chain, globals, then dynamic fallback through the callers'
//! scopes), raises errors with call traces, and decides when the collector
//! runs (only at call entry, where every live value is rooted).
//!
//! Roots are: the globals, the value stack (call arguments in flight), the
//! frame stack (scopes of active calls), the protos being run, the scopes
//! code is being run in, and the host's pinned values.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use smallvec::SmallVec;

use crate::compile::{Code, Compiler, Inline, PrimOp, Proto, SpecialForms};
use crate::error::{ErrorData, Span};
use crate::heap::{Env, Gc, Heap, Lambda, Object};
use crate::symbol::{Sym, Symbols};
use crate::value::{equal, Printer, Value};

/// A builtin's implementation. It receives its arguments and the scope it
/// was called from, and returns a value or asks the VM to continue with a
/// tail call or tail evaluation.
pub type BuiltinFn = fn(&mut Vm, &[Value], Env) -> Result<Flow, Gc>;

/// A builtin with its signature and documentation.
pub struct Builtin {
    pub name: &'static str,
    pub signature: &'static str,
    pub doc: &'static str,
    pub func: BuiltinFn,
}

/// What evaluation in tail position produces.
pub enum Flow {
    Value(Value),
    /// Call the function at `stack[base]` with the values above it.
    Call {
        base: usize,
        env: Env,
        span: Span,
        name: Option<Sym>,
    },
    /// Run compiled code in `env`.
    Eval {
        proto: Rc<Proto>,
        env: Env,
    },
}

/// One call in progress: its current frame, and whether a tail call
/// replaced the first one.
struct Activation {
    frame: Option<Gc>,
    replaced: bool,
}

/// How `shutdown` and `exit` behave.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    Script,
    Repl,
}

/// Longest text a value may print as (`print`, `show`, `str`).
pub const PRINT_LIMIT: usize = 256 << 20;

/// Default limit on nested (non-tail) calls.
pub const DEFAULT_MAX_DEPTH: usize = 1_000_000;

pub struct Vm {
    pub heap: Heap,
    pub syms: Symbols,
    globals: Vec<Option<Value>>,
    pub builtins: Vec<Builtin>,
    builtin_names: Vec<&'static str>,
    pub forms: SpecialForms,
    /// Call arguments in flight (a root).
    pub stack: Vec<Value>,
    /// Scopes of active calls and `let`s (a root).
    frames: Vec<Gc>,
    /// Code being run that no lambda holds (a root).
    proto_roots: Vec<Rc<Proto>>,
    /// Scopes code is being run in that no frame may hold, such as the one
    /// the `let` builtin makes (a root).
    env_roots: Vec<Gc>,
    /// Values the host keeps alive (a root).
    pub pinned: Vec<Value>,
    compile_cache: HashMap<Gc, Rc<Proto>>,
    depth: usize,
    pub max_depth: usize,
    /// Bit `i`: the inlined form named by symbol `i` still holds its builtin.
    intact_forms: u128,
    /// `VALK_MAX_HEAP_MB`: live heap beyond this is an Error.
    pub max_heap: Option<usize>,
    /// Native stack: the address near its base and how much may be used.
    stack_base: usize,
    stack_budget: usize,
    /// Call site of the builtin being run: where its errors are raised.
    pub span: Span,
    pub files: Vec<String>,
    pub interrupt: Arc<AtomicBool>,
    /// Calls left before evaluation stops with `step limit exceeded`
    /// (`None`: unbounded). Counted where the interrupt flag is checked.
    pub steps_left: Option<u64>,
    /// Set by the host for untrusted code: `exit` and `load` are Errors.
    pub sandboxed: bool,
    pub mode: Mode,
    /// Set by `exit`/`shutdown`: the process should end with this code.
    pub exit_code: Option<i32>,
    /// An Error that `try` must not catch (an interrupt or an exit) while
    /// it unwinds to the top level.
    uncatchable: Option<Gc>,
    pub start: Instant,
    /// State of the standard library: builtin families, modules, docs.
    pub library: crate::builtins::Library,
}

#[inline(always)]
fn stack_address() -> usize {
    let marker = 0u8;
    std::hint::black_box(&marker) as *const u8 as usize
}

impl Vm {
    /// A VM with every builtin bound but no prelude loaded.
    pub fn bare() -> Vm {
        let threshold_mb = std::env::var("VALK_GC_THRESHOLD_MB")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or(16);
        let mut vm = Vm {
            heap: Heap::new(threshold_mb << 20),
            syms: Symbols::default(),
            globals: Vec::new(),
            builtins: Vec::new(),
            builtin_names: Vec::new(),
            forms: SpecialForms::default(),
            stack: Vec::with_capacity(1024),
            frames: Vec::with_capacity(1024),
            proto_roots: Vec::new(),
            env_roots: Vec::new(),
            pinned: Vec::new(),
            compile_cache: HashMap::new(),
            depth: 0,
            max_depth: DEFAULT_MAX_DEPTH,
            intact_forms: 0,
            max_heap: std::env::var("VALK_MAX_HEAP_MB")
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .filter(|&n| n > 0)
                .map(|n| n << 20),
            stack_base: stack_address(),
            stack_budget: 1 << 20,
            span: Span::NONE,
            files: vec!["<unknown>".to_string()],
            interrupt: Arc::new(AtomicBool::new(false)),
            steps_left: None,
            sandboxed: false,
            mode: Mode::Script,
            exit_code: None,
            uncatchable: None,
            start: Instant::now(),
            library: Default::default(),
        };
        crate::builtins::register_all(&mut vm);
        let form = |vm: &mut Vm, name: &str| {
            let sym = vm.syms.intern(name);
            let id = vm
                .builtins
                .iter()
                .position(|b| b.name == name)
                .expect("special form registered") as u32;
            (sym, id)
        };
        vm.forms = SpecialForms {
            if_: form(&mut vm, "if"),
            do_: form(&mut vm, "do"),
            lambda: form(&mut vm, "\\"),
            def: form(&mut vm, "def"),
            assign: form(&mut vm, "="),
            select: form(&mut vm, "select"),
            case: form(&mut vm, "case"),
            let_: form(&mut vm, "let"),
            prims: Vec::new(),
            ampersand: vm.syms.intern("&"),
            inline_mask: 0,
        };
        for (op, name) in PrimOp::ALL {
            let (sym, id) = form(&mut vm, name);
            vm.forms.prims.push((sym, id, op));
        }
        let f = &vm.forms;
        let mut inlined = vec![
            f.if_.0, f.do_.0, f.lambda.0, f.def.0, f.assign.0, f.select.0, f.case.0, f.let_.0,
        ];
        inlined.extend(f.prims.iter().map(|p| p.0));
        for sym in inlined.iter().copied() {
            assert!(sym.0 < 128, "inlined forms are interned first");
            vm.forms.inline_mask |= 1u128 << sym.0;
        }
        for sym in inlined {
            vm.update_intact(sym);
        }
        vm
    }

    /// Tells the VM how much native stack this thread has, so deep
    /// recursion becomes an Error before the stack runs out. Call it near
    /// the base of the thread that will run the VM.
    pub fn set_native_stack(&mut self, bytes: usize) {
        self.stack_base = stack_address();
        // Keep a margin for builtins, printing and error rendering.
        self.stack_budget = bytes.saturating_sub((bytes / 8).max(256 << 10));
    }

    #[inline]
    fn stack_exhausted(&self) -> bool {
        self.stack_base.saturating_sub(stack_address()) > self.stack_budget
    }

    /// Restores a usable state after an evaluation was abandoned midway
    /// (an internal panic caught by the REPL). Definitions are kept.
    pub fn recover(&mut self) {
        self.stack.clear();
        self.frames.clear();
        self.proto_roots.clear();
        self.env_roots.clear();
        self.depth = 0;
        self.uncatchable = None;
    }

    // ---- registration and globals --------------------------------------

    pub fn define_builtin(
        &mut self,
        name: &'static str,
        signature: &'static str,
        doc: &'static str,
        func: BuiltinFn,
    ) {
        let id = self.builtins.len() as u32;
        self.builtins.push(Builtin {
            name,
            signature,
            doc,
            func,
        });
        self.builtin_names.push(name);
        let sym = self.syms.intern(name);
        self.set_global(sym, Value::Builtin(id));
    }

    pub fn set_global(&mut self, sym: Sym, v: Value) {
        let i = sym.index();
        if i >= self.globals.len() {
            self.globals.resize(i + 1, None);
        }
        self.globals[i] = Some(v);
        if sym.0 < 128 {
            self.update_intact(sym);
        }
    }

    pub fn global(&self, sym: Sym) -> Option<Value> {
        self.globals.get(sym.index()).copied().flatten()
    }

    pub fn global_names(&self) -> Vec<Sym> {
        (0..self.globals.len())
            .filter(|&i| self.globals[i].is_some())
            .map(|i| Sym(i as u32))
            .collect()
    }

    pub fn add_file(&mut self, name: &str) -> u32 {
        self.files.push(name.to_string());
        (self.files.len() - 1) as u32
    }

    // ---- printing -----------------------------------------------------

    /// Readable form (`show`, the REPL) or display form (`print`, `str`).
    pub fn format(&self, v: Value, readable: bool) -> String {
        self.format_limited(v, readable, PRINT_LIMIT)
    }

    /// Like `format`, but printing stops soon after `max_len` bytes (the
    /// text then ends in `...`).
    pub fn format_limited(&self, v: Value, readable: bool, max_len: usize) -> String {
        let mut p = Printer {
            heap: &self.heap,
            syms: &self.syms,
            builtin_names: &self.builtin_names,
            out: String::new(),
            max_len,
        };
        p.write(v, readable);
        p.out
    }

    pub fn show(&self, v: Value) -> String {
        self.format(v, true)
    }

    /// Like `format`, but a value whose text would pass `PRINT_LIMIT` is
    /// an Error rather than a truncated string.
    pub fn format_checked(&mut self, v: Value, readable: bool) -> Result<String, Gc> {
        let text = self.format(v, readable);
        self.check_text(text.len())?;
        Ok(text)
    }

    /// Text of `len` bytes being built for output or a String: past
    /// `PRINT_LIMIT` it is an Error.
    pub fn check_text(&mut self, len: usize) -> Result<(), Gc> {
        if len > PRINT_LIMIT {
            return Err(self.error(format!(
                "value too large to print (over {} MB of text)",
                PRINT_LIMIT >> 20
            )));
        }
        Ok(())
    }

    // ---- errors -------------------------------------------------------

    /// An Error raised at the current builtin's call site.
    pub fn error(&mut self, message: impl Into<String>) -> Gc {
        let span = self.span;
        self.error_at(message, span)
    }

    pub fn error_at(&mut self, message: impl Into<String>, span: Span) -> Gc {
        self.heap
            .alloc(Object::Error(Box::new(ErrorData::new(message, span))))
    }

    pub fn render_error(&self, err: Gc) -> String {
        crate::error::render(&self.files, self.heap.error(err))
    }

    pub fn error_message(&self, err: Gc) -> String {
        self.heap.error(err).message.clone()
    }

    /// Ends the program with `code` once the current evaluation unwinds.
    pub fn request_exit(&mut self, code: i32) {
        self.exit_code = Some(code);
    }

    /// The Error that unwinds the evaluation for an exit.
    pub fn exit_error(&mut self) -> Gc {
        let e = self.error("exit");
        self.uncatchable = Some(e);
        e
    }

    pub fn is_uncatchable(&self, e: Gc) -> bool {
        self.uncatchable == Some(e)
    }

    /// Called by the top level once an error has been handled.
    pub fn clear_uncatchable(&mut self) {
        self.uncatchable = None;
    }

    fn trace(&mut self, err: Gc, name: Option<Sym>, span: Span) -> Gc {
        let name = match name {
            Some(s) => self.syms.name(s).to_string(),
            None => "<lambda>".to_string(),
        };
        self.heap.error_mut(err).push_trace(name, span);
        err
    }

    // ---- collection ---------------------------------------------------

    /// Runs the collector now. Only call where every live value is rooted.
    pub fn collect(&mut self) {
        self.collect_with(true);
    }

    /// Runs a collection step: a full collection if `major`, else a minor
    /// collection or a slice of the incremental major cycle, as the heap
    /// decides (see `heap::incremental`).
    fn collect_with(&mut self, major: bool) {
        let started = Instant::now();
        self.heap.begin_collection(major);
        if self.heap.needs_roots() {
            self.mark_roots();
        }
        if self.heap.may_free() {
            self.compile_cache.clear();
        }
        self.heap.finish_collection(started);
    }

    /// Marks every root: globals, the value stack, pinned values, frames,
    /// scopes being run in and the constants of code being run.
    fn mark_roots(&mut self) {
        for i in 0..self.globals.len() {
            if let Some(v) = self.globals[i] {
                self.heap.mark_value(v);
            }
        }
        for i in 0..self.stack.len() {
            self.heap.mark_value(self.stack[i]);
        }
        for i in 0..self.pinned.len() {
            self.heap.mark_value(self.pinned[i]);
        }
        for i in 0..self.frames.len() {
            self.heap.mark(self.frames[i]);
        }
        for i in 0..self.env_roots.len() {
            self.heap.mark(self.env_roots[i]);
        }
        for p in self.proto_roots.iter() {
            for v in p.constants.iter() {
                // Marking through the heap directly: protos are not objects.
                match *v {
                    Value::Q(g)
                    | Value::S(g)
                    | Value::Str(g)
                    | Value::Lambda(g)
                    | Value::Map(g)
                    | Value::Ref(g) => self.heap.mark(g),
                    _ => {}
                }
            }
        }
    }

    #[inline]
    fn safe_point(&mut self) -> Result<(), Gc> {
        if self.heap.wants_collection() {
            self.collect_with(false);
            if let Some(limit) = self.max_heap {
                if self.heap.live_bytes() > limit {
                    // Old garbage counts until a full collection frees it.
                    self.collect_with(true);
                    if self.heap.live_bytes() > limit {
                        return Err(self.out_of_memory());
                    }
                }
            }
        }
        Ok(())
    }

    /// Checks that `bytes` more may be allocated under `VALK_MAX_HEAP_MB`,
    /// collecting first if needed. Builtins that build large values call it
    /// before they start.
    pub fn reserve(&mut self, bytes: usize) -> Result<(), Gc> {
        if self.heap.stressed() {
            self.collect_with(false);
        }
        let Some(limit) = self.max_heap else {
            return Ok(());
        };
        if self.heap.live_bytes().saturating_add(bytes) <= limit {
            return Ok(());
        }
        self.collect();
        if self.heap.live_bytes().saturating_add(bytes) <= limit {
            return Ok(());
        }
        Err(self.out_of_memory())
    }

    #[inline(never)]
    fn out_of_memory(&mut self) -> Gc {
        let mb = self.max_heap.unwrap_or(0) >> 20;
        self.error(format!("out of memory (limit {} MB)", mb))
    }

    // ---- compiling ----------------------------------------------------

    /// Compiles a Q-expression (or any value) to be evaluated as code in
    /// `env`, a scope of unknown layout, caching by list identity.
    pub fn compile_eval(&mut self, v: Value, span: Span, env: Env) -> Result<Rc<Proto>, Gc> {
        let shadowed = self.shadowed_forms(env);
        self.compile_eval_shadowed(v, span, shadowed)
    }

    fn compile_eval_shadowed(
        &mut self,
        v: Value,
        span: Span,
        shadowed: SmallVec<[Sym; 2]>,
    ) -> Result<Rc<Proto>, Gc> {
        let key = v.list_cell().filter(|_| shadowed.is_empty());
        if let Some(g) = key {
            if let Some(p) = self.compile_cache.get(&g) {
                return Ok(p.clone());
            }
        }
        let as_sexpr = matches!(v, Value::Q(_) | Value::S(_) | Value::Nil | Value::Unit);
        let result = Compiler::new(&self.heap, &self.syms, &self.forms)
            .compile_toplevel(v, span, as_sexpr, &shadowed);
        match result {
            Ok(p) => {
                if let Some(g) = key {
                    self.compile_cache.insert(g, p.clone());
                }
                Ok(p)
            }
            Err(msg) => Err(self.error_at(msg, span)),
        }
    }

    /// Inlined forms' names bound in `env`'s scope chain: code compiled to
    /// run there must not inline them.
    fn shadowed_forms(&self, env: Env) -> SmallVec<[Sym; 2]> {
        let mut out = SmallVec::new();
        let mut s = env;
        while let Some(g) = s {
            let scope = self.heap.scope(g);
            for (k, _) in scope.vars.iter() {
                if self.forms.is_inlined(*k) && !out.contains(k) {
                    out.push(*k);
                }
            }
            s = scope.parent;
        }
        out
    }

    pub fn compile_lambda(
        &mut self,
        formals: Value,
        body: Value,
        env: Env,
    ) -> Result<Rc<Proto>, Gc> {
        let shadowed = self.shadowed_forms(env);
        match Compiler::compile_lambda(
            &self.heap,
            &self.syms,
            &self.forms,
            formals,
            body,
            &shadowed,
        ) {
            Ok(p) => Ok(p),
            Err(msg) => Err(self.error(msg)),
        }
    }

    pub fn make_lambda(&mut self, proto: Rc<Proto>, env: Env, bound: Vec<Value>) -> Value {
        self.capture(env);
        Value::Lambda(
            self.heap
                .alloc(Object::Lambda(Box::new(Lambda { proto, env, bound }))),
        )
    }

    // ---- running ------------------------------------------------------

    /// Evaluates a value as top-level code in `env`.
    pub fn eval_value(&mut self, v: Value, span: Span, env: Env) -> Result<Value, Gc> {
        // A form read from source: a Q-expression here is data, not code.
        let shadowed = self.shadowed_forms(env);
        let compiled = Compiler::new(&self.heap, &self.syms, &self.forms).compile_toplevel(
            v,
            span,
            matches!(v, Value::S(_) | Value::Unit),
            &shadowed,
        );
        let proto = match compiled {
            Ok(p) => p,
            Err(msg) => return Err(self.error_at(msg, span)),
        };
        self.run_proto(proto, env)
    }

    /// Runs compiled code to completion (tail calls included).
    pub fn run_proto(&mut self, proto: Rc<Proto>, env: Env) -> Result<Value, Gc> {
        let roots = self.proto_roots.len();
        self.proto_roots.push(proto.clone());
        let envs = self.env_roots.len();
        self.env_roots.extend(env);
        let stack = self.stack.len();
        let result = match self.exec(&proto.body, env, true) {
            Ok(flow) => self.finish(flow),
            Err(e) => Err(e),
        };
        self.proto_roots.truncate(roots);
        self.env_roots.truncate(envs);
        self.stack.truncate(stack);
        result
    }

    /// Completes a flow produced in tail position.
    pub fn finish(&mut self, flow: Flow) -> Result<Value, Gc> {
        match flow {
            Flow::Value(v) => Ok(v),
            Flow::Call {
                base,
                env,
                span,
                name,
            } => self.apply(base, env, span, name),
            Flow::Eval { proto, env } => self.run_proto(proto, env),
        }
    }

    /// Calls `f` with `args` from a builtin (the one narrow way back into
    /// the evaluator).
    pub fn call(&mut self, f: Value, args: &[Value], env: Env) -> Result<Value, Gc> {
        if !f.is_function() {
            return Err(self.error(format!("expected a function, got {}", f.type_name())));
        }
        let base = self.stack.len();
        self.stack.push(f);
        self.stack.extend_from_slice(args);
        let span = self.span;
        self.apply(base, env, span, None)
    }

    #[inline]
    fn eval(&mut self, code: &Code, env: Env) -> Result<Value, Gc> {
        // The common nodes are evaluated here directly: a plain value
        // result is cheaper to return than a `Flow`.
        match code {
            Code::Const(v) => Ok(*v),
            Code::Local(slot) => Ok(self.local(env, *slot)),
            Code::Name(sym, span) => self.lookup(*sym, env, *span),
            Code::Prim(node) => self.exec_prim(node, env),
            Code::Call(call) => self.eval_call(call, env),
            Code::If(node) if self.intact(node) => {
                let branch = match self.eval(&node.node.cond, env)? {
                    Value::Num(0) => match &node.node.otherwise {
                        Some(code) => code,
                        None => return Ok(Value::Nil),
                    },
                    Value::Num(_) => &node.node.then,
                    other => return Err(self.condition_error(other, node.span, "if")),
                };
                self.eval(branch, env)
            }
            _ => match self.exec(code, env, false)? {
                Flow::Value(v) => Ok(v),
                other => self.finish(other),
            },
        }
    }

    #[inline]
    fn local(&self, env: Env, slot: u32) -> Value {
        match env {
            Some(g) => self
                .heap
                .scope(g)
                .vars
                .get(slot as usize)
                .map_or(Value::Unit, |(_, v)| *v),
            None => Value::Unit,
        }
    }

    /// Whether an inlined special form's name still holds its builtin.
    #[inline]
    fn intact<T>(&self, node: &Inline<T>) -> bool {
        self.intact_forms & (1u128 << (node.form.0 & 127)) != 0
    }

    /// Recomputes whether an inlined form's name still holds its builtin.
    fn update_intact(&mut self, sym: Sym) {
        if !self.forms.is_inlined(sym) {
            return;
        }
        let name = self.syms.name(sym);
        let original = self.builtins.iter().position(|b| b.name == name);
        let holds = match (self.global(sym), original) {
            (Some(Value::Builtin(id)), Some(o)) => id as usize == o,
            _ => false,
        };
        if holds {
            self.intact_forms |= 1u128 << sym.0;
        } else {
            self.intact_forms &= !(1u128 << sym.0);
        }
    }

    fn exec_generic<T>(&mut self, node: &Inline<T>, env: Env, tail: bool) -> Result<Flow, Gc> {
        // The form's name is rebound: compile it as an ordinary call.
        let mut shadowed = self.shadowed_forms(env);
        shadowed.push(node.form);
        let proto = self.compile_eval_shadowed(node.generic, node.span, shadowed)?;
        if tail {
            Ok(Flow::Eval { proto, env })
        } else {
            self.run_proto(proto, env).map(Flow::Value)
        }
    }

    /// Executes code. In tail position a call is returned as a `Flow`
    /// rather than made, so the caller's frame can be reused. The common
    /// nodes are handled here; the rest live in `#[inline(never)]` helpers
    /// so this function's native frame (one per nested call) stays small.
    pub fn exec(&mut self, code: &Code, env: Env, tail: bool) -> Result<Flow, Gc> {
        match code {
            Code::Const(v) => Ok(Flow::Value(*v)),
            Code::Local(slot) => Ok(Flow::Value(self.local(env, *slot))),
            Code::Name(sym, span) => self.lookup(*sym, env, *span).map(Flow::Value),
            Code::Call(call) => self.exec_call(call, env, tail),
            Code::Prim(node) => self.exec_prim(node, env).map(Flow::Value),
            Code::If(node) => {
                if !self.intact(node) {
                    return self.exec_generic(node, env, tail);
                }
                let cond = self.eval(&node.node.cond, env)?;
                let branch = match cond {
                    Value::Num(0) => match &node.node.otherwise {
                        Some(code) => code,
                        None => return Ok(Flow::Value(Value::Nil)),
                    },
                    Value::Num(_) => &node.node.then,
                    other => return Err(self.condition_error(other, node.span, "if")),
                };
                self.exec(branch, env, tail)
            }
            Code::Do(node) => {
                if !self.intact(node) {
                    return self.exec_generic(node, env, tail);
                }
                let n = node.node.len();
                for code in &node.node[..n - 1] {
                    self.eval(code, env)?;
                }
                self.exec(&node.node[n - 1], env, tail)
            }
            Code::Select(node) => {
                if !self.intact(node) {
                    return self.exec_generic(node, env, tail);
                }
                for (cond, value) in node.node.iter() {
                    match self.eval(cond, env)? {
                        Value::Num(0) => {}
                        Value::Num(_) => return self.exec(value, env, tail),
                        other => return Err(self.condition_error(other, node.span, "select")),
                    }
                }
                Err(self.error_at("no selection found", node.span))
            }
            Code::Lambda(node) => {
                if !self.intact(node) {
                    return self.exec_generic(node, env, tail);
                }
                Ok(Flow::Value(self.make_lambda(
                    node.node.clone(),
                    env,
                    Vec::new(),
                )))
            }
            Code::Def(node) => self.exec_def(node, env, tail),
            Code::Case(node) => self.exec_case(node, env, tail),
            Code::Let(node) => self.exec_let(node, env, tail),
        }
    }

    /// Evaluates a call's head and arguments onto the stack. `Err(Ok(v))`
    /// means the head was not a function and the S-expression was run as a
    /// sequence with value `v` (only when not in tail position).
    #[inline]
    fn push_call(
        &mut self,
        call: &crate::compile::Call,
        env: Env,
    ) -> Result<Result<usize, Value>, Gc> {
        let f = self.eval(&call.head, env)?;
        if !f.is_function() {
            return match self.exec_sequence(f, call, env, false)? {
                Flow::Value(v) => Ok(Err(v)),
                other => self.finish(other).map(Err),
            };
        }
        self.push_args(f, call, env).map(Ok)
    }

    /// Pushes `f` and the call's evaluated arguments; returns where they
    /// start on the stack.
    #[inline]
    fn push_args(&mut self, f: Value, call: &crate::compile::Call, env: Env) -> Result<usize, Gc> {
        let base = self.stack.len();
        self.stack.push(f);
        for arg in call.args.iter() {
            // Slots and constants need no recursive evaluation.
            let value = match arg {
                Code::Local(slot) => Ok(self.local(env, *slot)),
                Code::Const(v) => Ok(*v),
                other => self.eval(other, env),
            };
            match value {
                Ok(v) => self.stack.push(v),
                Err(e) => {
                    self.stack.truncate(base);
                    return Err(e);
                }
            }
        }
        Ok(base)
    }

    #[inline]
    fn exec_call(&mut self, call: &crate::compile::Call, env: Env, tail: bool) -> Result<Flow, Gc> {
        if !tail {
            return self.eval_call(call, env).map(Flow::Value);
        }
        let f = self.eval(&call.head, env)?;
        if !f.is_function() {
            return self.exec_sequence(f, call, env, tail);
        }
        let base = self.push_args(f, call, env)?;
        Ok(Flow::Call {
            base,
            env,
            span: call.span,
            name: call.name,
        })
    }

    /// A call not in tail position: made now, its value returned.
    #[inline]
    fn eval_call(&mut self, call: &crate::compile::Call, env: Env) -> Result<Value, Gc> {
        let base = match self.push_call(call, env)? {
            Ok(base) => base,
            Err(v) => return Ok(v),
        };
        let f = self.stack[base];
        if let Value::Builtin(id) = f {
            // Builtins need no frame: call directly.
            let args: SmallVec<[Value; 4]> = SmallVec::from_slice(&self.stack[base + 1..]);
            self.span = call.span;
            let func = self.builtins[id as usize].func;
            let result = func(self, &args, env);
            return match result {
                Ok(Flow::Value(v)) => {
                    self.stack.truncate(base);
                    Ok(v)
                }
                Ok(flow) => {
                    let v = self.finish(flow);
                    self.stack.truncate(base);
                    v
                }
                Err(e) => {
                    self.stack.truncate(base);
                    Err(e)
                }
            };
        }
        self.apply(base, env, call.span, call.name)
    }

    /// An S-expression whose head is not a function: its elements are
    /// evaluated in order and the last is the result.
    #[inline(never)]
    fn exec_sequence(
        &mut self,
        head: Value,
        call: &crate::compile::Call,
        env: Env,
        tail: bool,
    ) -> Result<Flow, Gc> {
        let n = call.args.len();
        for (i, arg) in call.args.iter().enumerate() {
            if i + 1 == n {
                return self.exec(arg, env, tail);
            }
            self.eval(arg, env)?;
        }
        Ok(Flow::Value(head))
    }

    /// `(op a b)` for an arithmetic or comparison builtin: done in place
    /// for two Numbers, otherwise by calling whatever `op` is bound to.
    #[inline]
    fn exec_prim(
        &mut self,
        node: &Inline<crate::compile::PrimNode>,
        env: Env,
    ) -> Result<Value, Gc> {
        let left = match &node.node.left {
            Code::Const(v) => *v,
            Code::Local(slot) => self.local(env, *slot),
            other => self.eval(other, env)?,
        };
        let right = match &node.node.right {
            Code::Const(v) => *v,
            Code::Local(slot) => self.local(env, *slot),
            other => {
                // Keep the left operand rooted while the right one runs.
                self.stack.push(left);
                let r = self.eval(other, env);
                self.stack.pop();
                r?
            }
        };
        if self.intact(node) {
            if let (Value::Num(a), Value::Num(b)) = (left, right) {
                let result = match node.node.op {
                    PrimOp::Add => a.checked_add(b).map(Value::Num),
                    PrimOp::Sub => a.checked_sub(b).map(Value::Num),
                    PrimOp::Mul => a.checked_mul(b).map(Value::Num),
                    PrimOp::Lt => Some(Value::bool(a < b)),
                    PrimOp::Gt => Some(Value::bool(a > b)),
                    PrimOp::Le => Some(Value::bool(a <= b)),
                    PrimOp::Ge => Some(Value::bool(a >= b)),
                    PrimOp::Eq => Some(Value::bool(a == b)),
                    PrimOp::Ne => Some(Value::bool(a != b)),
                };
                if let Some(v) = result {
                    return Ok(v);
                }
            }
        }
        self.prim_slow(node, env, left, right)
    }

    #[inline(never)]
    fn prim_slow(
        &mut self,
        node: &Inline<crate::compile::PrimNode>,
        env: Env,
        left: Value,
        right: Value,
    ) -> Result<Value, Gc> {
        let f = self.lookup(node.form, env, node.span)?;
        let base = self.stack.len();
        self.stack.extend_from_slice(&[f, left, right]);
        let name = Some(node.form);
        if let Value::Builtin(_) | Value::Lambda(_) = f {
            self.apply(base, env, node.span, name)
        } else {
            // Not a function any more: a sequence, whose value is the last.
            self.stack.truncate(base);
            Ok(right)
        }
    }

    #[inline(never)]
    fn exec_def(
        &mut self,
        node: &Inline<crate::compile::DefNode>,
        env: Env,
        tail: bool,
    ) -> Result<Flow, Gc> {
        if !self.intact(node) {
            return self.exec_generic(node, env, tail);
        }
        let base = self.stack.len();
        for code in node.node.values.iter() {
            match self.eval(code, env) {
                Ok(v) => self.stack.push(v),
                Err(e) => {
                    self.stack.truncate(base);
                    return Err(e);
                }
            }
        }
        for (i, sym) in node.node.names.iter().enumerate() {
            let v = self.stack[base + i];
            if node.node.global {
                self.set_global(*sym, v);
            } else {
                self.assign(*sym, v, env);
            }
        }
        self.stack.truncate(base);
        Ok(Flow::Value(Value::Unit))
    }

    #[inline(never)]
    fn exec_case(
        &mut self,
        node: &Inline<crate::compile::CaseNode>,
        env: Env,
        tail: bool,
    ) -> Result<Flow, Gc> {
        if !self.intact(node) {
            return self.exec_generic(node, env, tail);
        }
        let subject = self.eval(&node.node.subject, env)?;
        let base = self.stack.len();
        self.stack.push(subject);
        for (key, value) in node.node.clauses.iter() {
            let k = match self.eval(key, env) {
                Ok(k) => k,
                Err(e) => {
                    self.stack.truncate(base);
                    return Err(e);
                }
            };
            if equal(&self.heap, subject, k) {
                self.stack.truncate(base);
                return self.exec(value, env, tail);
            }
        }
        self.stack.truncate(base);
        Err(self.error_at("no case found", node.span))
    }

    #[inline(never)]
    fn exec_let(&mut self, node: &Inline<Code>, env: Env, tail: bool) -> Result<Flow, Gc> {
        if !self.intact(node) {
            return self.exec_generic(node, env, tail);
        }
        self.capture(env);
        let scope = self.heap.new_scope(&[], env, None, None, false);
        self.frames.push(scope);
        let result = self.exec(&node.node, Some(scope), tail);
        // A tail flow keeps the scope alive through its env; the callee's
        // frame links it before any collection can run.
        self.frames.pop();
        result
    }

    #[inline(never)]
    fn condition_error(&mut self, v: Value, span: Span, what: &str) -> Gc {
        self.error_at(
            format!(
                "`{}` condition must be a Number, got {}",
                what,
                v.type_name()
            ),
            span,
        )
    }

    /// A condition's truth: Numbers only.
    pub fn truth(&mut self, v: Value, span: Span, what: &str) -> Result<bool, Gc> {
        match v {
            Value::Num(n) => Ok(n != 0),
            other => Err(self.error_at(
                format!(
                    "`{}` condition must be a Number, got {}",
                    what,
                    other.type_name()
                ),
                span,
            )),
        }
    }

    /// Binds in the current scope (`=`): the global scope at top level.
    pub fn assign(&mut self, sym: Sym, v: Value, env: Env) {
        match env {
            None => self.set_global(sym, v),
            Some(g) => {
                let scope = self.heap.scope_mut(g);
                match scope.vars.iter_mut().find(|(k, _)| *k == sym) {
                    Some(slot) => slot.1 = v,
                    None => scope.vars.push((sym, v)),
                }
            }
        }
    }

    // ---- name resolution ---------------------------------------------

    /// Looks a symbol up: scope chain, globals, then the callers' scopes.
    pub fn lookup(&mut self, sym: Sym, env: Env, span: Span) -> Result<Value, Gc> {
        if let Some(v) = self.lookup_lexical(sym, env) {
            return Ok(v);
        }
        if let Some(v) = self.lookup_dynamic(sym, env) {
            return Ok(v);
        }
        let name = self.syms.name(sym).to_string();
        Err(self.error_at(format!("symbol `{}` is not bound", name), span))
    }

    #[inline]
    fn lookup_lexical(&self, sym: Sym, env: Env) -> Option<Value> {
        let mut s = env;
        while let Some(g) = s {
            let scope = self.heap.scope(g);
            for (k, v) in scope.vars.iter() {
                if *k == sym {
                    return Some(*v);
                }
            }
            s = scope.parent;
        }
        self.global(sym)
    }

    /// The frame (call-made scope) that `scope` belongs to.
    fn frame_of(&self, mut scope: Gc) -> Option<Gc> {
        loop {
            let s = self.heap.scope(scope);
            if s.func.is_some() {
                return Some(scope);
            }
            scope = s.parent?;
        }
    }

    /// Dynamic fallback: the scopes of the callers, innermost first.
    fn lookup_dynamic(&self, sym: Sym, env: Env) -> Option<Value> {
        let mut current = env?;
        loop {
            let frame = self.frame_of(current)?;
            let caller = self.heap.scope(frame).caller?;
            let mut s = Some(caller);
            while let Some(g) = s {
                let scope = self.heap.scope(g);
                for (k, v) in scope.vars.iter() {
                    if *k == sym {
                        return Some(*v);
                    }
                }
                s = scope.parent;
            }
            current = caller;
        }
    }

    /// The caller link for a tail call of `proto` made from `frame` at
    /// `env`. If `proto` already runs in the chain of frames this one
    /// replaced, the new frame takes that frame's place (its bindings are
    /// shadowed anyway), which keeps tail-recursive loops in constant space.
    fn tail_caller(&self, frame: Gc, env: Env, proto: &Rc<Proto>) -> (Env, bool) {
        let mut cur = frame;
        loop {
            let s = self.heap.scope(cur);
            if let Some(f) = &s.func {
                if Rc::ptr_eq(f, proto) {
                    return (s.caller, s.tail);
                }
            }
            if !s.tail {
                break;
            }
            match s.caller.and_then(|c| self.frame_of(c)) {
                Some(c) => cur = c,
                None => break,
            }
        }
        (env, true)
    }

    // ---- calls --------------------------------------------------------

    /// Calls `stack[base]` with the arguments above it. Pops them.
    pub fn apply(
        &mut self,
        base: usize,
        env: Env,
        span: Span,
        name: Option<Sym>,
    ) -> Result<Value, Gc> {
        if self.depth >= self.max_depth || self.stack_exhausted() {
            self.stack.truncate(base);
            let limit = self.max_depth;
            return Err(self.error_at(format!("stack depth exceeded (limit {})", limit), span));
        }
        self.depth += 1;
        let frames = self.frames.len();
        let roots = self.proto_roots.len();
        let envs = self.env_roots.len();
        let result = self.apply_loop(base, env, span, name);
        self.depth -= 1;
        self.frames.truncate(frames);
        self.proto_roots.truncate(roots);
        self.env_roots.truncate(envs);
        if result.is_err() {
            self.stack.truncate(base);
        }
        result
    }

    fn apply_loop(
        &mut self,
        base: usize,
        env: Env,
        span: Span,
        name: Option<Sym>,
    ) -> Result<Value, Gc> {
        let mut activation = Activation {
            frame: None,
            replaced: false,
        };
        let result = self.run_activation(&mut activation, base, env, span, name);
        self.end_activation(activation);
        result
    }

    /// Ends a call: clears the caller links of its frames (they are only
    /// for dynamic lookups while it runs) and frees its frame at once if
    /// nothing captured it and no tail call replaced it.
    fn end_activation(&mut self, activation: Activation) {
        let Some(frame) = activation.frame else {
            return;
        };
        let mut current = Some(frame);
        while let Some(g) = current {
            let scope = self.heap.scope_mut(g);
            let next = if scope.tail { scope.caller } else { None };
            scope.caller = None;
            current = next.and_then(|c| self.frame_of(c));
        }
        if !activation.replaced && !self.heap.scope(frame).captured {
            self.heap.free_scope(frame);
        }
    }

    /// Whether a tail call of `proto` can reuse `frame` in place: it is a
    /// frame of the same function and nothing captured it.
    #[inline]
    fn reusable(&self, frame: Gc, proto: &Rc<Proto>) -> bool {
        let scope = self.heap.scope(frame);
        !scope.captured && scope.func.as_ref().is_some_and(|f| Rc::ptr_eq(f, proto))
    }

    /// Marks `env` and its parents as captured (referred to by a lambda or
    /// an inner scope), so their frames are left to the collector.
    pub fn capture(&mut self, env: Env) {
        let mut s = env;
        while let Some(g) = s {
            let scope = self.heap.scope_mut(g);
            if scope.captured {
                break;
            }
            scope.captured = true;
            s = scope.parent;
        }
    }

    /// Keeps `env` alive while this activation runs code in it: a tail
    /// flow may carry a scope that no frame holds (a `let`'s).
    #[inline]
    fn root_env(&mut self, slot: &mut Option<usize>, env: Env) {
        if let Some(g) = env {
            match *slot {
                Some(i) => self.env_roots[i] = g,
                None => {
                    *slot = Some(self.env_roots.len());
                    self.env_roots.push(g);
                }
            }
        }
    }

    fn run_activation(
        &mut self,
        activation: &mut Activation,
        base: usize,
        mut env: Env,
        mut span: Span,
        mut name: Option<Sym>,
    ) -> Result<Value, Gc> {
        let mut eval_root: Option<usize> = None;
        let mut env_root: Option<usize> = None;
        loop {
            if self.interrupt.load(Ordering::Relaxed) {
                self.interrupt.store(false, Ordering::Relaxed);
                let e = self.error_at("interrupted", span);
                self.uncatchable = Some(e);
                return Err(e);
            }
            if let Some(steps) = self.steps_left.as_mut() {
                if *steps == 0 {
                    let e = self.error_at("step limit exceeded", span);
                    self.uncatchable = Some(e);
                    return Err(e);
                }
                *steps -= 1;
            }
            let mut flow = match self.stack[base] {
                Value::Builtin(id) => {
                    self.root_env(&mut env_root, env);
                    let args: SmallVec<[Value; 8]> = SmallVec::from_slice(&self.stack[base + 1..]);
                    self.span = span;
                    let func = self.builtins[id as usize].func;
                    let flow = func(self, &args, env)?;
                    // A tail call's function and arguments sit above this
                    // call's; they are moved down below.
                    if !matches!(flow, Flow::Call { .. }) {
                        self.stack.truncate(base);
                    }
                    flow
                }
                Value::Lambda(g) => {
                    let lambda = self.heap.lambda(g);
                    let proto = lambda.proto.clone();
                    let lambda_env = lambda.env;
                    let nbound = lambda.bound.len();
                    let nargs = self.stack.len() - base - 1;
                    let total = nbound + nargs;
                    let nfixed = proto.formals.len();
                    if total < nfixed {
                        // Partial application: a new function with these bound.
                        let mut bound = self.heap.lambda(g).bound.clone();
                        bound.extend_from_slice(&self.stack[base + 1..]);
                        self.stack.truncate(base);
                        return Ok(self.make_lambda(proto, lambda_env, bound));
                    }
                    if proto.rest.is_none() && total > nfixed {
                        self.stack.truncate(base);
                        let e = self.error_at(
                            format!(
                                "expected {} argument{}, got {}",
                                nfixed,
                                if nfixed == 1 { "" } else { "s" },
                                total
                            ),
                            span,
                        );
                        return Err(self.trace(e, name, span));
                    }
                    let rest_list = match proto.rest {
                        Some(_) => {
                            let extra: SmallVec<[Value; 8]> = (nfixed..total)
                                .map(|i| {
                                    if i < nbound {
                                        self.heap.lambda(g).bound[i]
                                    } else {
                                        self.stack[base + 1 + i - nbound]
                                    }
                                })
                                .collect();
                            self.heap.qlist(&extra)
                        }
                        None => Value::Nil,
                    };
                    let scope = match activation.frame {
                        Some(fr) if self.reusable(fr, &proto) => {
                            // A self tail call: the frame's bindings are
                            // dead, so it is reused in place.
                            let s = self.heap.scope_mut(fr);
                            s.vars.clear();
                            s.parent = lambda_env;
                            fr
                        }
                        _ => {
                            let (caller, is_tail) = match activation.frame {
                                None => (env, false),
                                Some(fr) => {
                                    activation.replaced = true;
                                    self.tail_caller(fr, env, &proto)
                                }
                            };
                            let scope = self.heap.take_scope(
                                lambda_env,
                                caller,
                                Some(proto.clone()),
                                is_tail,
                            );
                            match activation.frame {
                                None => self.frames.push(scope),
                                Some(_) => {
                                    if let Some(top) = self.frames.last_mut() {
                                        *top = scope;
                                    }
                                }
                            }
                            scope
                        }
                    };
                    // Bind the formals: bound arguments first, then the
                    // arguments on the stack.
                    if nbound == 0 {
                        let Vm { heap, stack, .. } = self;
                        let vars = &mut heap.scope_mut(scope).vars;
                        for (i, sym) in proto.formals.iter().enumerate() {
                            vars.push((*sym, stack[base + 1 + i]));
                        }
                    } else {
                        let bound: SmallVec<[Value; 8]> =
                            SmallVec::from_slice(&self.heap.lambda(g).bound);
                        let Vm { heap, stack, .. } = self;
                        let vars = &mut heap.scope_mut(scope).vars;
                        for (i, sym) in proto.formals.iter().enumerate() {
                            let v = if i < nbound {
                                bound[i]
                            } else {
                                stack[base + 1 + i - nbound]
                            };
                            vars.push((*sym, v));
                        }
                    }
                    if let Some(rest) = proto.rest {
                        self.heap.scope_mut(scope).vars.push((rest, rest_list));
                    }
                    self.stack.truncate(base);
                    activation.frame = Some(scope);
                    if let Err(e) = self.safe_point() {
                        return Err(self.trace(e, name, span));
                    }
                    match self.exec(&proto.body, Some(scope), true) {
                        Ok(flow) => flow,
                        Err(e) => return Err(self.trace(e, name, span)),
                    }
                }
                other => {
                    self.stack.truncate(base);
                    let what = other.type_name();
                    return Err(self.error_at(format!("expected a function, got {}", what), span));
                }
            };
            loop {
                match flow {
                    Flow::Value(v) => return Ok(v),
                    Flow::Call {
                        base: b,
                        env: e,
                        span: s,
                        name: n,
                    } => {
                        if b != base {
                            self.stack.drain(base..b);
                        }
                        env = e;
                        span = s;
                        name = n;
                        break;
                    }
                    Flow::Eval { proto, env: e } => {
                        self.root_env(&mut env_root, e);
                        match eval_root {
                            Some(i) => self.proto_roots[i] = proto.clone(),
                            None => {
                                eval_root = Some(self.proto_roots.len());
                                self.proto_roots.push(proto.clone());
                            }
                        }
                        flow = match self.exec(&proto.body, e, true) {
                            Ok(f) => f,
                            Err(err) => return Err(self.trace(err, name, span)),
                        };
                    }
                }
            }
        }
    }
}
