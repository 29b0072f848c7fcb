//! The compiler: S- and Q-expressions -> `Code` trees that the VM executes.
//! Each function body is compiled once, when its lambda is made; formals are
//! resolved to slots of the call's scope, other names to lookups. Literal
//! uses of the special forms (`if`, `do`, `\`, `def`, `=`, `select`, `case`,
//! `let`) compile to dedicated nodes guarded by a check that the global name
//! still holds the builtin; otherwise they fall back to an ordinary call of
//! whatever the name is bound to, so results are the same either way.

use std::rc::Rc;

use crate::error::Span;
use crate::heap::Heap;
use crate::symbol::{Sym, Symbols};
use crate::value::Value;

/// Executable code.
pub enum Code {
    /// A value that evaluates to itself.
    Const(Value),
    /// A formal of the function whose scope is current: a slot index.
    Local(u32),
    /// Any other symbol: looked up through the scope chain, the globals and
    /// finally the callers' scopes.
    Name(Sym, Span),
    Call(Box<Call>),
    If(Box<Inline<IfNode>>),
    Do(Box<Inline<Vec<Code>>>),
    Lambda(Box<Inline<Rc<Proto>>>),
    Def(Box<Inline<DefNode>>),
    Select(Box<Inline<Vec<(Code, Code)>>>),
    Case(Box<Inline<CaseNode>>),
    Let(Box<Inline<Code>>),
    /// A two-argument arithmetic or comparison builtin, done in place when
    /// both operands are Numbers.
    Prim(Box<Inline<PrimNode>>),
}

/// The operators compiled as `Code::Prim`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PrimOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Lt,
    Gt,
    Le,
    Ge,
    Eq,
    Ne,
}

impl PrimOp {
    pub const ALL: [(PrimOp, &'static str); 11] = [
        (PrimOp::Add, "+"),
        (PrimOp::Sub, "-"),
        (PrimOp::Mul, "*"),
        (PrimOp::Div, "/"),
        (PrimOp::Rem, "%"),
        (PrimOp::Lt, "<"),
        (PrimOp::Gt, ">"),
        (PrimOp::Le, "<="),
        (PrimOp::Ge, ">="),
        (PrimOp::Eq, "=="),
        (PrimOp::Ne, "!="),
    ];
}

pub struct PrimNode {
    pub op: PrimOp,
    pub left: Code,
    pub right: Code,
}

/// A call (or sequence, when the head is not a function).
pub struct Call {
    pub head: Code,
    pub args: Box<[Code]>,
    pub span: Span,
    /// The head's symbol, for call traces.
    pub name: Option<Sym>,
}

/// A special form compiled inline, with the ordinary call it stands for.
pub struct Inline<T> {
    pub form: Sym,
    pub builtin: u32,
    pub node: T,
    /// The source form, compiled and called like any other call when the
    /// guard finds `form` no longer bound to `builtin`.
    pub generic: Value,
    pub span: Span,
}

pub struct IfNode {
    pub cond: Code,
    pub then: Code,
    pub otherwise: Option<Code>,
}

pub struct DefNode {
    pub global: bool,
    pub names: Vec<Sym>,
    pub values: Vec<Code>,
}

pub struct CaseNode {
    pub subject: Code,
    pub clauses: Vec<(Code, Code)>,
}

/// A compiled function body (or a top-level form: no formals).
pub struct Proto {
    /// Fixed formals, in slot order.
    pub formals: Vec<Sym>,
    /// The `&` rest formal, whose slot follows the fixed ones.
    pub rest: Option<Sym>,
    /// The body, lowered to ops.
    pub code: crate::lower::Ops,
    /// Every heap value the code refers to (traced by the collector).
    pub constants: Vec<Value>,
    pub formals_value: Value,
    pub body_value: Value,
}

impl Proto {
    pub fn slot_count(&self) -> usize {
        self.formals.len() + self.rest.is_some() as usize
    }
}

/// Names and builtin ids of the special forms.
#[derive(Clone, Default)]
pub struct SpecialForms {
    pub if_: (Sym, u32),
    pub do_: (Sym, u32),
    pub lambda: (Sym, u32),
    pub def: (Sym, u32),
    pub assign: (Sym, u32),
    pub select: (Sym, u32),
    pub case: (Sym, u32),
    pub let_: (Sym, u32),
    /// `eval` and `head`: not inlined, but `(eval (head x))` (the
    /// prelude's `fst`, `snd`, `nth`) gets a fast path checked at run time.
    pub eval: (Sym, u32),
    pub head: (Sym, u32),
    pub prims: Vec<(Sym, u32, PrimOp)>,
    pub ampersand: Sym,
    /// Bit `i` is set when symbol id `i` names a form compiled inline
    /// (all of them are interned first, so their ids are small).
    pub inline_mask: u128,
}

impl SpecialForms {
    /// Whether a binding of `sym` in some scope would hide an inlined form.
    #[inline]
    pub fn is_inlined(&self, sym: Sym) -> bool {
        sym.0 < 128 && self.inline_mask & (1u128 << sym.0) != 0
    }
}

/// Parsed formals of a lambda.
pub struct Formals {
    pub fixed: Vec<Sym>,
    pub rest: Option<Sym>,
}

/// Parses a formals list: symbols, optionally `& rest` at the end.
pub fn parse_formals(heap: &Heap, syms: &Symbols, amp: Sym, v: Value) -> Result<Formals, String> {
    if !v.is_qexpr() {
        return Err(format!(
            "`\\` expected a Q-expression of formals, got {}",
            v.type_name()
        ));
    }
    let items = heap.list_items(v);
    let mut fixed = Vec::new();
    let mut rest = None;
    let mut i = 0;
    while i < items.len() {
        match items[i] {
            Value::Sym(s) if s == amp => {
                if i + 2 != items.len() {
                    return Err("`&` must be followed by exactly one formal".into());
                }
                match items[i + 1] {
                    Value::Sym(r) => rest = Some(r),
                    other => {
                        return Err(format!(
                            "formal after `&` must be a symbol, got {}",
                            other.type_name()
                        ))
                    }
                }
                break;
            }
            Value::Sym(s) => fixed.push(s),
            other => {
                let _ = syms;
                return Err(format!(
                    "formals must be symbols, got {}",
                    other.type_name()
                ));
            }
        }
        i += 1;
    }
    Ok(Formals { fixed, rest })
}

/// Compiles code for one proto at a time.
pub struct Compiler<'a> {
    pub heap: &'a Heap,
    pub syms: &'a Symbols,
    pub forms: &'a SpecialForms,
    constants: Vec<Value>,
    /// Slots of the scope the code will run in.
    slots: Vec<Sym>,
    /// Names bound by formals of this and every enclosing function; a
    /// special form named by one of them is never inlined.
    shadowed: Vec<Sym>,
    depth: usize,
    /// List elements compiled so far, nested lambdas included.
    elements: usize,
}

/// Nesting of code compiled in one go (the reader bounds source nesting
/// below this; data built at runtime could be deeper).
const COMPILE_DEPTH_LIMIT: usize = 20_000;

/// List elements compiled in one go. Code built at runtime can share
/// structure (a Q-expression holding the same `if` form twice, again and
/// again), so its compiled form could be exponentially larger than the
/// value; this bounds the work. Source text stays far below it.
const COMPILE_ELEMENT_LIMIT: usize = 4_000_000;

impl<'a> Compiler<'a> {
    pub fn new(heap: &'a Heap, syms: &'a Symbols, forms: &'a SpecialForms) -> Self {
        Compiler {
            heap,
            syms,
            forms,
            constants: Vec::new(),
            slots: Vec::new(),
            shadowed: Vec::new(),
            depth: 0,
            elements: 0,
        }
    }

    /// Compiles a top-level value, or a Q-expression handed to `eval`
    /// (`as_sexpr`), to run in a scope whose layout is unknown.
    pub fn compile_toplevel(
        mut self,
        v: Value,
        span: Span,
        as_sexpr: bool,
        shadowed: &[Sym],
    ) -> Result<Rc<Proto>, String> {
        self.shadowed = shadowed.to_vec();
        let body = if as_sexpr {
            self.compile_body(v, span)?
        } else {
            self.compile_value(v, span)?
        };
        self.constants.push(v);
        Ok(Rc::new(Proto {
            formals: Vec::new(),
            rest: None,
            code: crate::lower::lower(body, self.forms),
            constants: self.constants,
            formals_value: Value::Nil,
            body_value: v,
        }))
    }

    /// Compiles a lambda: formals and body are Q-expressions.
    pub fn compile_lambda(
        heap: &'a Heap,
        syms: &'a Symbols,
        forms: &'a SpecialForms,
        formals_value: Value,
        body_value: Value,
        outer_shadowed: &[Sym],
    ) -> Result<Rc<Proto>, String> {
        let mut elements = 0;
        Compiler::compile_lambda_counted(
            heap,
            syms,
            forms,
            formals_value,
            body_value,
            outer_shadowed,
            &mut elements,
        )
    }

    /// `compile_lambda` that adds what it compiles to `elements`.
    fn compile_lambda_counted(
        heap: &'a Heap,
        syms: &'a Symbols,
        forms: &'a SpecialForms,
        formals_value: Value,
        body_value: Value,
        outer_shadowed: &[Sym],
        elements: &mut usize,
    ) -> Result<Rc<Proto>, String> {
        let formals = parse_formals(heap, syms, forms.ampersand, formals_value)?;
        let mut c = Compiler::new(heap, syms, forms);
        c.slots = formals.fixed.clone();
        c.slots.extend(formals.rest);
        c.shadowed = outer_shadowed.to_vec();
        c.shadowed.extend(c.slots.iter().copied());
        c.elements = *elements;
        let body = c.compile_body(body_value, Span::NONE);
        *elements = c.elements;
        let body = body?;
        c.constants.push(formals_value);
        c.constants.push(body_value);
        Ok(Rc::new(Proto {
            formals: formals.fixed,
            rest: formals.rest,
            code: crate::lower::lower(body, c.forms),
            constants: c.constants,
            formals_value,
            body_value,
        }))
    }

    fn constant(&mut self, v: Value) -> Code {
        if matches!(
            v,
            Value::Q(_)
                | Value::S(_)
                | Value::Str(_)
                | Value::Lambda(_)
                | Value::Map(_)
                | Value::Ref(_)
        ) {
            self.constants.push(v);
        }
        Code::Const(v)
    }

    /// Code that evaluates `v` the way an element of an S-expression is.
    pub fn compile_value(&mut self, v: Value, span: Span) -> Result<Code, String> {
        match v {
            Value::Sym(s) => Ok(match self.slots.iter().rposition(|&x| x == s) {
                Some(i) => Code::Local(i as u32),
                None => Code::Name(s, span),
            }),
            Value::S(_) => self.compile_body(v, span),
            other => Ok(self.constant(other)),
        }
    }

    /// Code that evaluates a list as an S-expression (a function body, a
    /// branch of `if`, or an S-expression in source).
    pub fn compile_body(&mut self, v: Value, span: Span) -> Result<Code, String> {
        let Some(first) = v.list_cell() else {
            return Ok(Code::Const(Value::Unit));
        };
        self.depth += 1;
        if self.depth > COMPILE_DEPTH_LIMIT {
            self.depth -= 1;
            return Err(format!(
                "expression nested too deeply to compile (limit {})",
                COMPILE_DEPTH_LIMIT
            ));
        }
        let result = self.compile_list(first, span);
        self.depth -= 1;
        result
    }

    fn compile_list(&mut self, first: crate::heap::Gc, span: Span) -> Result<Code, String> {
        let heap = self.heap;
        let head_cell = heap.cons(first);
        let span = if span.is_known() {
            span
        } else {
            head_cell.span
        };
        self.elements += head_cell.len as usize;
        if self.elements > COMPILE_ELEMENT_LIMIT {
            return Err(format!(
                "expression too large to compile (limit {} elements)",
                COMPILE_ELEMENT_LIMIT
            ));
        }
        if head_cell.len == 1 {
            // One element: its value, no call.
            return self.compile_value(head_cell.head, head_cell.span);
        }
        let mut items: Vec<(Value, Span)> = Vec::with_capacity(head_cell.len as usize);
        let mut cell = Some(first);
        while let Some(c) = cell {
            let cons = heap.cons(c);
            items.push((cons.head, cons.span));
            cell = cons.tail;
        }
        let name = match items[0].0 {
            Value::Sym(s) => Some(s),
            _ => None,
        };
        if let Some(s) = name {
            if !self.shadowed.contains(&s) {
                let source = Value::S(first);
                if let Some(code) = self.compile_special(s, &items[1..], source, span)? {
                    self.constants.push(source);
                    return Ok(code);
                }
            }
        }
        let head = self.compile_value(items[0].0, items[0].1)?;
        let args = items[1..]
            .iter()
            .map(|(v, s)| self.compile_value(*v, *s))
            .collect::<Result<Vec<_>, _>>()?
            .into_boxed_slice();
        Ok(Code::Call(Box::new(Call {
            head,
            args,
            span,
            name,
        })))
    }

    /// Inlines a special form when `name` is one and its arguments have the
    /// literal shape the inline node needs; `None` means compile an ordinary
    /// call. `generic` is the whole form, run as an ordinary call when the
    /// guard finds the name rebound.
    fn compile_special(
        &mut self,
        name: Sym,
        args: &[(Value, Span)],
        generic: Value,
        span: Span,
    ) -> Result<Option<Code>, String> {
        let f = self.forms.clone();
        let heap = self.heap;
        let inline = |form: (Sym, u32)| (form.0, form.1);
        if name == f.if_.0
            && (args.len() == 2 || args.len() == 3)
            && args[1..].iter().all(|(v, _)| v.is_qexpr())
        {
            let cond = self.compile_value(args[0].0, args[0].1)?;
            let then = self.compile_body(args[1].0, args[1].1)?;
            let otherwise = match args.get(2) {
                Some((v, s)) => Some(self.compile_body(*v, *s)?),
                None => None,
            };
            let (form, builtin) = inline(f.if_);
            return Ok(Some(Code::If(Box::new(Inline {
                form,
                builtin,
                node: IfNode {
                    cond,
                    then,
                    otherwise,
                },
                generic,
                span,
            }))));
        }
        if name == f.do_.0 && !args.is_empty() {
            let mut seq = Vec::with_capacity(args.len());
            for (v, s) in args {
                seq.push(self.compile_value(*v, *s)?);
            }
            let (form, builtin) = inline(f.do_);
            return Ok(Some(Code::Do(Box::new(Inline {
                form,
                builtin,
                node: seq,
                generic,
                span,
            }))));
        }
        if name == f.lambda.0 && args.len() == 2 && args[1].0.is_qexpr() {
            if let Ok(proto) = Compiler::compile_lambda_counted(
                heap,
                self.syms,
                self.forms,
                args[0].0,
                args[1].0,
                &self.shadowed,
                &mut self.elements,
            ) {
                self.constants.extend(proto.constants.iter().copied());
                let (form, builtin) = inline(f.lambda);
                return Ok(Some(Code::Lambda(Box::new(Inline {
                    form,
                    builtin,
                    node: proto,
                    generic,
                    span,
                }))));
            }
        }
        if (name == f.def.0 || name == f.assign.0) && !args.is_empty() && args[0].0.is_qexpr() {
            let names = heap.list_items(args[0].0);
            if names.len() == args.len() - 1 && names.iter().all(|n| matches!(n, Value::Sym(_))) {
                let names: Vec<Sym> = names
                    .iter()
                    .filter_map(|n| match n {
                        Value::Sym(s) => Some(*s),
                        _ => None,
                    })
                    .collect();
                let mut values = Vec::new();
                for (v, s) in &args[1..] {
                    values.push(self.compile_value(*v, *s)?);
                }
                let global = name == f.def.0;
                let (form, builtin) = inline(if global { f.def } else { f.assign });
                return Ok(Some(Code::Def(Box::new(Inline {
                    form,
                    builtin,
                    node: DefNode {
                        global,
                        names,
                        values,
                    },
                    generic,
                    span,
                }))));
            }
        }
        if name == f.select.0
            && !args.is_empty()
            && args
                .iter()
                .all(|(v, _)| heap.list_len(*v) == 2 && v.is_qexpr())
        {
            let mut clauses = Vec::new();
            for (v, _) in args {
                let items = clause_items(heap, *v);
                clauses.push((
                    self.compile_value(items[0].0, items[0].1)?,
                    self.compile_value(items[1].0, items[1].1)?,
                ));
            }
            let (form, builtin) = inline(f.select);
            return Ok(Some(Code::Select(Box::new(Inline {
                form,
                builtin,
                node: clauses,
                generic,
                span,
            }))));
        }
        if name == f.case.0
            && args.len() >= 2
            && args[1..]
                .iter()
                .all(|(v, _)| heap.list_len(*v) == 2 && v.is_qexpr())
        {
            let subject = self.compile_value(args[0].0, args[0].1)?;
            let mut clauses = Vec::new();
            for (v, _) in &args[1..] {
                let items = clause_items(heap, *v);
                let key = case_key(heap, items[0]);
                clauses.push((
                    self.compile_value(key.0, key.1)?,
                    self.compile_value(items[1].0, items[1].1)?,
                ));
            }
            let (form, builtin) = inline(f.case);
            return Ok(Some(Code::Case(Box::new(Inline {
                form,
                builtin,
                node: CaseNode { subject, clauses },
                generic,
                span,
            }))));
        }
        if name == f.let_.0 && args.len() == 1 && args[0].0.is_qexpr() {
            // The body runs in a new scope: none of the current slots apply.
            let mut inner = Compiler::new(heap, self.syms, self.forms);
            inner.shadowed = self.shadowed.clone();
            inner.depth = self.depth;
            inner.elements = self.elements;
            let body = inner.compile_body(args[0].0, args[0].1);
            self.elements = inner.elements;
            let body = body?;
            self.constants.extend(inner.constants);
            let (form, builtin) = inline(f.let_);
            return Ok(Some(Code::Let(Box::new(Inline {
                form,
                builtin,
                node: body,
                generic,
                span,
            }))));
        }
        if args.len() == 2 {
            if let Some(&(form, builtin, op)) = f.prims.iter().find(|p| p.0 == name) {
                let left = self.compile_value(args[0].0, args[0].1)?;
                let right = self.compile_value(args[1].0, args[1].1)?;
                return Ok(Some(Code::Prim(Box::new(Inline {
                    form,
                    builtin,
                    node: PrimNode { op, left, right },
                    generic,
                    span,
                }))));
            }
        }
        Ok(None)
    }
}

/// The two elements of a `select`/`case` clause, with spans.
fn clause_items(heap: &Heap, v: Value) -> [(Value, Span); 2] {
    let first = heap.cons(v.list_cell().expect("clause checked non-empty"));
    let second = heap.cons(first.tail.expect("clause checked to have two elements"));
    [(first.head, first.span), (second.head, second.span)]
}

/// A `case` clause key: `{{value} result}` takes the value inside the
/// braces; a bare `{value result}` is accepted too.
pub fn case_key(heap: &Heap, key: (Value, Span)) -> (Value, Span) {
    match key.0 {
        Value::Q(g) => {
            let c = heap.cons(g);
            (c.head, c.span)
        }
        _ => key,
    }
}
