//! The traced heap: every list cell, string, lambda, scope, error, map and
//! host object lives here and is reached through a `Gc` handle. Collection is
//! generational mark-and-sweep, run only at safe points chosen by the VM,
//! which supplies the roots: minor collections trace the young objects, and
//! major collections of the old generation are incremental (marked and swept
//! a bounded slice per safe point, see `incremental`). Owns allocation, the
//! collector and `gc/stats` numbers.

use std::any::Any;
use std::num::NonZeroU32;
use std::rc::Rc;
use std::time::Instant;

use smallvec::SmallVec;

use crate::compile::Proto;
use crate::error::{ErrorData, Span};
use crate::hugepages;
use crate::map::Entries;
use crate::symbol::Sym;
use crate::value::Value;

mod incremental;

/// An internal invariant was broken: a handle named the wrong kind of
/// object. Never reachable from Valkyria source.
#[cold]
#[inline(never)]
fn wrong_kind(expected: &str, found: &Object) -> ! {
    panic!(
        "heap: expected {}, found {}",
        expected,
        crate::value::object_kind(found)
    )
}

/// A handle to a heap object.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Gc(NonZeroU32);

impl Gc {
    fn index(self) -> usize {
        self.0.get() as usize - 1
    }
    fn from_index(i: usize) -> Gc {
        Gc(NonZeroU32::new(i as u32 + 1).expect("heap index overflow"))
    }

    /// The handle as a nonzero number, for packing it into a word.
    pub fn to_raw(self) -> u32 {
        self.0.get()
    }

    /// The handle `to_raw` gave (`None` for 0).
    pub fn from_raw(raw: u32) -> Option<Gc> {
        NonZeroU32::new(raw).map(Gc)
    }
}

/// A scope reference; `None` is the global scope.
pub type Env = Option<Gc>;

/// One list cell. `len` is the length of the list starting here, so `len`
/// of any list is O(1).
#[derive(Clone, Copy, Debug)]
pub struct Cons {
    pub head: Value,
    pub tail: Option<Gc>,
    pub len: u32,
    pub span: Span,
}

/// A lambda: compiled prototype, the scope it was created in and the
/// arguments already bound by partial application.
///
/// Held in the object table itself, not boxed: a call reads the lambda,
/// and whether it may be entered directly, in one load from the table.
pub struct Lambda {
    pub proto: Rc<Proto>,
    pub env: Env,
    /// The number of formals when a call with that many arguments binds
    /// them as they are (no bound arguments, no rest formal);
    /// `Lambda::NOT_DIRECT` otherwise.
    pub direct: u16,
    /// Whether the body is a `Shape::General` one with no `Entry` (always
    /// run in a frame).
    pub general: bool,
    pub bound: Box<[Value]>,
}

impl Lambda {
    pub const NOT_DIRECT: u16 = u16::MAX;

    pub fn new(proto: Rc<Proto>, env: Env, bound: Box<[Value]>) -> Lambda {
        let direct = match (bound.is_empty(), &proto.rest) {
            (true, None) if proto.formals.len() < usize::from(Lambda::NOT_DIRECT) => {
                proto.formals.len() as u16
            }
            _ => Lambda::NOT_DIRECT,
        };
        let general =
            proto.code.shape == crate::lower::Shape::General && proto.code.entry.is_none();
        Lambda {
            proto,
            env,
            direct,
            general,
            bound,
        }
    }
}

/// A scope: bindings plus its lexical parent. Scopes made by a call (frames)
/// also know their caller (for dynamic fallback) and their function.
pub struct Scope {
    pub vars: SmallVec<[(Sym, Value); 4]>,
    pub parent: Env,
    pub caller: Env,
    /// The function whose call made this scope (None for `let` scopes).
    pub func: Option<Rc<Proto>>,
    /// The caller link is a tail-call link (the caller's frame has ended).
    pub tail: bool,
    /// A lambda or an inner scope refers to this scope, so it may outlive
    /// its call. An uncaptured frame is freed (or reused) as soon as its
    /// call ends, without waiting for the collector.
    pub captured: bool,
    /// While the call that made this frame runs: where its formals also
    /// sit on the VM's value stack (start, count). Kept equal to the
    /// bindings by `Vm::assign`.
    pub locals: Option<(u32, u32)>,
}

/// A host object exposed to Valkyria as a Ref.
pub trait HostObject: Any {
    fn type_name(&self) -> &'static str;
    fn describe(&self) -> String {
        format!("<{}>", self.type_name())
    }
    /// Values this object keeps alive.
    fn trace(&self, _out: &mut Vec<Value>) {}
    fn as_any(&self) -> &dyn Any;
}

// A lambda held in the table makes an object no larger than a cons does.
const _: () = assert!(std::mem::size_of::<Object>() == 40);

pub enum Object {
    /// A slot with no object (its flags are `FREE`).
    Free,
    Cons(Cons),
    Str(Box<str>),
    Lambda(Lambda),
    Scope(Box<Scope>),
    Error(Box<ErrorData>),
    Map(Box<Entries>),
    Ref(Box<dyn HostObject>),
}

/// Collector statistics reported by `gc/stats`.
#[derive(Default, Clone, Copy)]
pub struct GcStats {
    pub collections: u64,
    pub pause_us_max: u64,
    pub pause_us_total: u64,
    pub freed_total: u64,
    /// Major collections completed: incremental cycles and full ones.
    pub major_cycles: u64,
}

/// Where the major cycle is, between safe points.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// No major cycle: only minor collections run.
    Idle,
    /// Old objects are being marked, a slice at a time.
    Marking,
    /// Marking is complete; the object table is swept a slice at a time.
    Sweeping,
}

/// What the step chosen by `begin_collection` does.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Step {
    /// A minor collection (which may start or end a major cycle's marking).
    Minor,
    /// A minor collection, then a slice of the major cycle in progress,
    /// marking or sweeping (`begin_young_collection`).
    MinorAndSlice,
    /// A complete stop-the-world collection of everything.
    Full,
    /// A bounded slice of the major cycle's marking or sweeping.
    Slice,
}

/// How `mark` treats the objects it reaches.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Young objects are traced; old ones are live by assumption (shaded
    /// for the major cycle while it marks).
    Minor,
    /// Everything is traced.
    Full,
    /// Old objects are traced for the major cycle; young ones are left to
    /// the next minor collection.
    Incremental,
}

impl Mode {
    /// The objects this mode marks and traces: those whose flags masked
    /// by the first are the second (unmarked, and of the right age).
    #[inline(always)]
    fn claims(self) -> (u8, u8) {
        match self {
            // A minor collection neither marks nor traces old objects: they
            // are live by assumption, and the young objects they point at
            // are found through the remembered set.
            Mode::Minor => (MARKED | OLD, 0),
            Mode::Full => (MARKED, 0),
            // Young objects are decided by the next minor collection.
            Mode::Incremental => (MARKED | OLD, OLD),
        }
    }
}

pub struct Heap {
    objects: Vec<Object>,
    /// Per-object collector flags: `MARKED`, `OLD`, `REMEMBERED`, `AGED`.
    flags: Vec<u8>,
    /// The young generation: objects allocated since the last minor
    /// collection, and those that survived it (`AGED`).
    young: Vec<Gc>,
    /// Old scopes and host objects written since the last minor
    /// collection (the write barriers): they may point at young objects,
    /// so a minor collection traces them as roots.
    remembered: Vec<Gc>,
    /// Old objects that pointed at young ones (survivors kept young) when
    /// the last minor collection ended: traced again at the next.
    remembered_again: Vec<Gc>,
    /// Bytes held by old objects, and the level that starts a major
    /// cycle.
    old_bytes: usize,
    major_at: usize,
    /// How `mark` treats what it reaches, and what the step in progress is.
    mode: Mode,
    step: Step,
    /// The major cycle's state; see `incremental`.
    phase: Phase,
    /// Old objects the major cycle has marked but not yet traced.
    major_gray: Vec<Gc>,
    /// While sweeping: slots below this have been swept.
    sweep_pos: usize,
    /// While sweeping: bytes of the old objects known live so far.
    sweep_live: usize,
    /// Bytes that became old during the cycle (live by fiat, not traced).
    cycle_new: usize,
    /// Pacing of a major cycle: bytes of allocation each slice pays for,
    /// bytes allocated and not yet paid for, and the `allocated_since_gc`
    /// already counted in `owed`.
    slice_every: usize,
    owed: usize,
    charged: usize,
    /// Work units (objects and fields traced) per marking slice, and
    /// slots per sweeping slice.
    mark_work: usize,
    sweep_work: usize,
    /// Slots below it are taken (see `place`).
    cursor: usize,
    live: usize,
    /// Approximate bytes held by live objects (after the last collection,
    /// plus everything allocated since).
    bytes: usize,
    allocated_since_gc: usize,
    /// `VALK_GC_THRESHOLD_MB`: the pace of the collector. The old
    /// generation may grow to four times it before a major cycle, and a
    /// major cycle's slices are paced by it.
    threshold: usize,
    /// Allocation between minor collections: a quarter of `threshold`
    /// (4 MB by default), so the young generation stays within a core's
    /// cache while it is made, traced and swept.
    nursery: usize,
    next_collection: usize,
    /// Test mode: collect often, every eighth time in full, to find values
    /// not rooted across a collection.
    stress: bool,
    gray: Vec<Gc>,
    #[allow(clippy::vec_box)] // boxes are moved in and out of heap objects whole
    scope_pool: Vec<Box<Scope>>,
    /// Scope objects freed by `free_scope`, still in place in the table and
    /// ready to be reinitialised by `take_scope` (no allocation, no drop).
    /// The collector returns them to the free slots.
    free_scopes: Vec<Gc>,
    pub stats: GcStats,
}

const CONS_BYTES: usize = std::mem::size_of::<Object>();

const MARKED: u8 = 1;
const OLD: u8 = 2;
const REMEMBERED: u8 = 4;
/// A young object that has survived a minor collection: the next one it
/// survives makes it old.
const AGED: u8 = 8;
/// A slot with no object in it.
const FREE: u8 = 16;
/// Heap bytes a scope accounts for.
const SCOPE_BYTES: usize = std::mem::size_of::<Object>() + std::mem::size_of::<Scope>();
/// Heap bytes one map entry accounts for while the map is live.
pub const MAP_ENTRY_BYTES: usize = 64;
/// Freed scope boxes kept for reuse, so calls rarely reach the allocator.
const SCOPE_POOL_LIMIT: usize = 1 << 20;

/// The first slot at or after `from` whose flags say `FREE`. Runs of taken
/// slots (an old generation) are passed over eight flags at a time.
#[inline]
fn first_free(flags: &[u8], from: usize) -> Option<usize> {
    const ALL: u64 = u64::from_ne_bytes([FREE; 8]);
    let mut i = from.min(flags.len());
    while let Some(&chunk) = flags.get(i..i + 8).and_then(|c| c.first_chunk::<8>()) {
        if u64::from_ne_bytes(chunk) & ALL != 0 {
            break;
        }
        i += 8;
    }
    flags[i..]
        .iter()
        .position(|&f| f & FREE != 0)
        .map(|k| i + k)
}

/// The young generation's size for a collector threshold of `threshold`.
fn nursery_bytes(threshold: usize) -> usize {
    (threshold / 4).max(1)
}

/// Objects a heap has room for from the start (see `Heap::new`).
const START_OBJECTS: usize = 1024;

impl Heap {
    pub fn new(threshold_bytes: usize) -> Heap {
        Heap {
            // A start makes about 700 objects (builtins' and the prelude's);
            // room for them spares the copies of a table grown by doubling.
            objects: Vec::with_capacity(START_OBJECTS),
            flags: Vec::with_capacity(START_OBJECTS),
            young: Vec::with_capacity(START_OBJECTS),
            remembered: Vec::new(),
            remembered_again: Vec::new(),
            old_bytes: 0,
            major_at: threshold_bytes.saturating_mul(4),
            mode: Mode::Full,
            step: Step::Full,
            phase: Phase::Idle,
            major_gray: Vec::new(),
            sweep_pos: 0,
            sweep_live: 0,
            cycle_new: 0,
            slice_every: threshold_bytes,
            owed: 0,
            charged: 0,
            mark_work: incremental::MARK_WORK,
            sweep_work: incremental::SWEEP_WORK,
            cursor: 0,
            live: 0,
            bytes: 0,
            allocated_since_gc: 0,
            threshold: threshold_bytes,
            nursery: nursery_bytes(threshold_bytes),
            next_collection: nursery_bytes(threshold_bytes),
            stress: false,
            gray: Vec::new(),
            scope_pool: Vec::new(),
            free_scopes: Vec::new(),
            stats: GcStats::default(),
        }
    }

    fn object_bytes(obj: &Object) -> usize {
        CONS_BYTES
            + match obj {
                Object::Str(s) => s.len(),
                // Held in the slot itself: only its bound arguments are more.
                Object::Lambda(l) => std::mem::size_of_val::<[Value]>(&l.bound),
                Object::Scope(s) => {
                    SCOPE_BYTES
                        + if s.vars.spilled() {
                            s.vars.len() * 24
                        } else {
                            0
                        }
                }
                Object::Error(e) => e.message.len() + 64,
                Object::Map(m) => m.size() * MAP_ENTRY_BYTES,
                Object::Ref(_) => 64,
                _ => 0,
            }
    }

    /// Makes room for `additional` more objects without growing the
    /// object table step by step (each step copies the whole table). For
    /// callers that know roughly how many they are about to make, such as
    /// the reader for a large source.
    pub fn reserve(&mut self, additional: usize) {
        if additional > self.objects.capacity() - self.objects.len() {
            self.grow(additional);
        }
    }

    /// Grows the object table by at least `additional` slots (doubling,
    /// as a push would), and its flags with it. Large tables are advised
    /// as huge-page candidates (`hugepages`).
    #[cold]
    #[inline(never)]
    fn grow(&mut self, additional: usize) {
        self.objects.reserve(additional);
        let cap = self.objects.capacity();
        self.flags.reserve_exact(cap - self.flags.len());
        hugepages::advise(&self.objects);
        hugepages::advise(&self.flags);
    }

    #[inline]
    pub fn alloc(&mut self, obj: Object) -> Gc {
        let size = Self::object_bytes(&obj);
        self.alloc_sized(obj, size)
    }

    /// Allocates an object that accounts for `size` new bytes (less than
    /// its full size when it shares structure with an existing object).
    #[inline]
    pub fn alloc_sized(&mut self, obj: Object, size: usize) -> Gc {
        self.bytes += size;
        self.allocated_since_gc += size;
        self.live += 1;
        let g = self.place(obj);
        self.young.push(g);
        g
    }

    /// For a heap that serves requests: young objects are collected every
    /// `threshold` bytes instead of every quarter of it. A request's
    /// objects live until its answer is made, so with requests in flight
    /// at every minor collection a small young generation promotes them,
    /// and they die old, held until a major cycle (a server's RSS doubled).
    pub fn serve_requests(&mut self) {
        if !self.stress {
            self.nursery = self.threshold;
        }
    }

    /// Test mode: collect at the first safe point after every `bytes`
    /// allocated (every eighth collection full, and major cycles with tiny
    /// slices in between), and whenever a builtin reserves heap (see
    /// `Vm::reserve`).
    pub fn set_stress(&mut self, bytes: usize) {
        self.stress = true;
        self.threshold = bytes;
        self.nursery = bytes;
        self.next_collection = bytes;
        self.mark_work = incremental::STRESS_MARK_WORK;
        self.sweep_work = incremental::STRESS_SWEEP_WORK;
    }

    /// Whether the test mode of `set_stress` is on.
    pub fn stressed(&self) -> bool {
        self.stress
    }

    /// True when enough has been allocated that the VM should collect at
    /// its next safe point.
    #[inline]
    pub fn wants_collection(&self) -> bool {
        self.allocated_since_gc >= self.next_collection
    }

    pub fn live_objects(&self) -> usize {
        self.live
    }

    pub fn live_bytes(&self) -> usize {
        self.bytes
    }

    // ---- typed access -------------------------------------------------

    #[inline]
    pub fn get(&self, g: Gc) -> &Object {
        &self.objects[g.index()]
    }

    #[inline(always)]
    pub fn cons(&self, g: Gc) -> &Cons {
        match &self.objects[g.index()] {
            Object::Cons(c) => c,
            other => wrong_kind("cons", other),
        }
    }

    pub fn string(&self, g: Gc) -> &str {
        match &self.objects[g.index()] {
            Object::Str(s) => s,
            other => wrong_kind("string", other),
        }
    }

    #[inline(always)]
    pub fn lambda(&self, g: Gc) -> &Lambda {
        match &self.objects[g.index()] {
            Object::Lambda(l) => l,
            other => wrong_kind("lambda", other),
        }
    }

    #[inline(always)]
    pub fn scope(&self, g: Gc) -> &Scope {
        match &self.objects[g.index()] {
            Object::Scope(s) => s,
            other => wrong_kind("scope", other),
        }
    }

    /// Mutable access to a scope. This is the write barrier: an old scope
    /// that is written may now point at young objects, so it is
    /// remembered for the next minor collection. The remembered set also
    /// serves a major cycle that is marking: every minor collection traces
    /// the scopes written since the last one and shades the old objects
    /// they point at, and marking only ends at a minor collection.
    #[inline(always)]
    pub fn scope_mut(&mut self, g: Gc) -> &mut Scope {
        let i = g.index();
        if self.flags[i] & (OLD | REMEMBERED) == OLD {
            self.remember(g);
        }
        match &mut self.objects[i] {
            Object::Scope(s) => s,
            other => wrong_kind("scope", other),
        }
    }

    /// The write barrier of host objects: call it after changing in place
    /// what a host object's `trace` gives (a future given its value). An
    /// old one may now point at young objects, and a major cycle that is
    /// marking must see what it holds now, so it is remembered for the
    /// next minor collection, as a written scope is. (Tracing every old
    /// host object at every minor collection instead cost a serving
    /// isolate milliseconds each time once thousands of requests in
    /// flight had been promoted.)
    pub fn host_changed(&mut self, g: Gc) {
        if self.flags[g.index()] & (OLD | REMEMBERED) == OLD {
            self.remember(g);
        }
    }

    #[cold]
    #[inline(never)]
    fn remember(&mut self, g: Gc) {
        self.flags[g.index()] |= REMEMBERED;
        self.remembered.push(g);
    }

    pub fn error(&self, g: Gc) -> &ErrorData {
        match &self.objects[g.index()] {
            Object::Error(e) => e,
            other => wrong_kind("error", other),
        }
    }

    pub fn error_mut(&mut self, g: Gc) -> &mut ErrorData {
        match &mut self.objects[g.index()] {
            Object::Error(e) => e,
            other => wrong_kind("error", other),
        }
    }

    pub fn map(&self, g: Gc) -> &Entries {
        match &self.objects[g.index()] {
            Object::Map(m) => m,
            other => panic!(
                "heap: expected map, found {}",
                crate::value::object_kind(other)
            ),
        }
    }

    pub fn host_ref(&self, g: Gc) -> &dyn HostObject {
        match &self.objects[g.index()] {
            Object::Ref(r) => r.as_ref(),
            other => wrong_kind("ref", other),
        }
    }

    // ---- constructors -------------------------------------------------

    pub fn string_value(&mut self, s: &str) -> Value {
        Value::Str(self.alloc(Object::Str(s.into())))
    }

    /// A Map value of `entries`, accounting `new_bytes` as newly allocated
    /// (entries shared with another map are not counted again).
    pub fn map_value(&mut self, entries: Entries, new_bytes: usize) -> Value {
        Value::Map(self.alloc_sized(Object::Map(Box::new(entries)), new_bytes))
    }

    /// Prepends `head` to the list starting at `tail`.
    #[inline]
    pub fn cons_cell(&mut self, head: Value, tail: Option<Gc>, span: Span) -> Gc {
        let len = match tail {
            Some(t) => self.cons(t).len + 1,
            None => 1,
        };
        self.alloc(Object::Cons(Cons {
            head,
            tail,
            len,
            span,
        }))
    }

    /// A cons cell allocated straight into the old generation, for large
    /// fresh lists of immediate values (their cells point only at each
    /// other), so that building one does not make a long minor collection.
    pub fn cons_cell_old(&mut self, head: Value, tail: Option<Gc>) -> Gc {
        debug_assert!(
            head.list_cell().is_none()
                && !matches!(head, Value::Str(_) | Value::Lambda(_) | Value::Ref(_))
        );
        let g = self.cons_cell(head, tail, Span::NONE);
        if self.young.last() == Some(&g) {
            self.young.pop();
            let i = g.index();
            // Black while a major cycle marks, so its tail must not stay
            // white.
            self.flags[i] = OLD | self.black_bit(i);
            if self.phase == Phase::Marking {
                if let Some(t) = tail {
                    self.shade(t);
                }
            }
            self.old_bytes += CONS_BYTES;
            self.old_added(i, CONS_BYTES);
        }
        g
    }

    /// Builds a Q-expression from values.
    pub fn qlist(&mut self, items: &[Value]) -> Value {
        match self.list_cells(items.iter().map(|v| (*v, Span::NONE)).rev(), None) {
            Some(g) => Value::Q(g),
            None => Value::Nil,
        }
    }

    /// Builds cells from items given in reverse order, ending in `tail`.
    pub fn list_cells(
        &mut self,
        reversed: impl Iterator<Item = (Value, Span)>,
        tail: Option<Gc>,
    ) -> Option<Gc> {
        let mut cell = tail;
        for (v, span) in reversed {
            cell = Some(self.cons_cell(v, cell, span));
        }
        cell
    }

    /// Collects a list's elements.
    pub fn list_items(&self, v: Value) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cell = v.list_cell();
        while let Some(c) = cell {
            let cons = self.cons(c);
            out.push(cons.head);
            cell = cons.tail;
        }
        out
    }

    pub fn list_len(&self, v: Value) -> usize {
        v.list_cell().map_or(0, |c| self.cons(c).len as usize)
    }

    /// Allocates a scope, reusing a pooled box when one is free.
    pub fn new_scope(
        &mut self,
        vars: &[(Sym, Value)],
        parent: Env,
        caller: Env,
        func: Option<Rc<Proto>>,
        tail: bool,
    ) -> Gc {
        let scope = match self.scope_pool.pop() {
            Some(mut b) => {
                b.vars.clear();
                b.vars.extend_from_slice(vars);
                b.parent = parent;
                b.caller = caller;
                b.func = func;
                b.tail = tail;
                b.captured = false;
                b.locals = None;
                b
            }
            None => Box::new(Scope {
                vars: SmallVec::from_slice(vars),
                parent,
                caller,
                func,
                tail,
                captured: false,
                locals: None,
            }),
        };
        self.alloc(Object::Scope(scope))
    }

    /// A frame scope with no bindings yet, reusing a freed one in place
    /// when there is one.
    #[inline]
    pub fn take_scope(
        &mut self,
        parent: Env,
        caller: Env,
        func: Option<Rc<Proto>>,
        tail: bool,
    ) -> Gc {
        if let Some(g) = self.free_scopes.pop() {
            self.live += 1;
            self.bytes += SCOPE_BYTES;
            self.allocated_since_gc += SCOPE_BYTES;
            let scope = self.scope_mut(g);
            scope.vars.clear();
            scope.parent = parent;
            scope.caller = caller;
            scope.func = func;
            scope.tail = tail;
            scope.captured = false;
            scope.locals = None;
            return g;
        }
        self.new_scope(&[], parent, caller, func, tail)
    }

    /// Frees a scope that nothing refers to any more (an uncaptured frame
    /// whose call has ended). The caller guarantees no handle to it remains.
    #[inline]
    pub fn free_scope(&mut self, g: Gc) {
        let scope = self.scope_mut(g);
        scope.func = None;
        let spilled = scope.vars.spilled();
        if spilled {
            scope.vars = SmallVec::new();
        }
        self.free_scopes.push(g);
        self.live -= 1;
        self.bytes = self.bytes.saturating_sub(SCOPE_BYTES);
        self.allocated_since_gc = self.allocated_since_gc.saturating_sub(SCOPE_BYTES);
    }

    // ---- collection ---------------------------------------------------

    /// Marks a root value.
    #[inline]
    pub fn mark_value(&mut self, v: Value) {
        if let Some(g) = v.heap_object() {
            self.mark(g);
        }
    }

    #[inline]
    pub fn mark(&mut self, g: Gc) {
        if self.claim(g) {
            self.gray.push(g);
        }
    }

    /// Marks `g` if the step in progress traces it, and says whether the
    /// caller must trace it (push it gray or follow it).
    #[inline(always)]
    fn claim(&mut self, g: Gc) -> bool {
        let i = g.index();
        let flags = self.flags[i];
        let (mask, want) = self.mode.claims();
        if flags & mask == want {
            self.flags[i] = flags | MARKED;
            true
        } else {
            if flags & (OLD | MARKED) == OLD
                && self.mode == Mode::Minor
                && self.phase == Phase::Marking
            {
                // An old object reached by a minor collection while a major
                // cycle marks: it is reachable, so the major cycle must
                // trace it (it is shaded gray for the next slice).
                self.flags[i] = flags | MARKED;
                self.major_gray.push(g);
            }
            false
        }
    }

    pub fn mark_proto(&mut self, proto: &Proto) {
        for v in proto.constants.iter() {
            self.mark_value(*v);
        }
    }

    fn trace_gray(&mut self) {
        while let Some(g) = self.gray.pop() {
            self.trace_object(g, usize::MAX);
        }
    }

    /// Marks everything `g` refers to and returns the work done (objects
    /// and fields visited). A list's cells are followed in a loop; after
    /// `limit` cells the rest of the list is left gray.
    fn trace_object(&mut self, g: Gc, limit: usize) -> usize {
        let mut host_values = Vec::new();
        // Temporarily take what we need out of the object to satisfy the
        // borrow checker; objects are never moved.
        match &self.objects[g.index()] {
            Object::Cons(c) => {
                // Follow the tail chain here rather than through the gray
                // stack: lists are long and mostly cons cells.
                let (mut head, mut tail) = (c.head, c.tail);
                let mut work = 1;
                loop {
                    self.mark_value(head);
                    let Some(t) = tail else { break };
                    if !self.claim(t) {
                        break;
                    }
                    if work >= limit {
                        self.gray.push(t);
                        break;
                    }
                    match &self.objects[t.index()] {
                        Object::Cons(next) => {
                            head = next.head;
                            tail = next.tail;
                            work += 1;
                        }
                        _ => {
                            self.gray.push(t);
                            break;
                        }
                    }
                }
                work
            }
            Object::Lambda(l) => {
                let proto = l.proto.clone();
                let env = l.env;
                let bound: SmallVec<[Value; 8]> = l.bound.iter().copied().collect();
                self.mark_proto(&proto);
                if let Some(e) = env {
                    self.mark(e);
                }
                for &v in &bound {
                    self.mark_value(v);
                }
                1 + proto.constants.len() + bound.len()
            }
            Object::Scope(s) => {
                let vars: SmallVec<[Value; 8]> = s.vars.iter().map(|(_, v)| *v).collect();
                let (parent, caller, func) = (s.parent, s.caller, s.func.clone());
                for &v in &vars {
                    self.mark_value(v);
                }
                if let Some(p) = parent {
                    self.mark(p);
                }
                if let Some(c) = caller {
                    self.mark(c);
                }
                let mut work = 1 + vars.len();
                if let Some(f) = func {
                    self.mark_proto(&f);
                    work += f.constants.len();
                }
                work
            }
            Object::Map(m) => {
                host_values.extend(m.values().flat_map(|(k, v)| [*k, *v]));
                let work = 1 + host_values.len();
                for v in host_values.drain(..) {
                    self.mark_value(v);
                }
                work
            }
            Object::Ref(r) => {
                r.trace(&mut host_values);
                let work = 1 + host_values.len();
                for v in host_values.drain(..) {
                    self.mark_value(v);
                }
                work
            }
            Object::Str(_) | Object::Error(_) | Object::Free => 1,
        }
    }

    /// Starts a collection step at a safe point: a full collection when
    /// `force_major` (or under stress, now and then), else a minor
    /// collection when enough has been allocated (or the major cycle's
    /// marking is ready to end), else a slice of the major cycle. Roots are
    /// marked next if `needs_roots`, then `finish_collection` completes it.
    pub fn begin_collection(&mut self, force_major: bool) {
        // Under stress every eighth collection is full, so old objects that
        // lost their roots are freed outside major cycles too.
        let stress_full =
            self.stress && self.phase == Phase::Idle && self.stats.collections % 8 == 7;
        if force_major || stress_full {
            self.abandon_cycle();
            self.step = Step::Full;
            self.mode = Mode::Full;
        } else if self.phase == Phase::Idle
            || self.allocated_since_gc >= self.nursery
            || (self.phase == Phase::Marking && self.major_gray.is_empty())
        {
            let stress_major = self.stress && self.stats.collections % 8 == 3;
            if self.phase == Phase::Idle && (self.old_bytes >= self.major_at || stress_major) {
                self.start_cycle();
            }
            self.step = Step::Minor;
            self.mode = Mode::Minor;
        } else {
            self.step = Step::Slice;
            self.mode = Mode::Incremental;
        }
    }

    /// Begins a minor collection that also takes the major cycle in
    /// progress a slice further, for a caller that collects on its own
    /// schedule rather than at allocation safe points: a serving isolate
    /// after every few hundred requests, whose handlers allocate too little
    /// to pace a cycle. Under stress, as `begin_collection(false)`.
    pub fn begin_young_collection(&mut self) {
        if self.stress {
            return self.begin_collection(false);
        }
        if self.phase == Phase::Idle && self.old_bytes >= self.major_at {
            self.start_cycle();
        }
        self.step = Step::MinorAndSlice;
        self.mode = Mode::Minor;
    }

    /// Has the next minor collection start a major cycle, unless one is in
    /// progress: it frees old garbage a slice at a time.
    pub fn request_major_cycle(&mut self) {
        if self.phase == Phase::Idle {
            self.major_at = 0;
        }
    }

    /// Whether the step begun by `begin_collection` needs the roots marked
    /// (a slice of a major cycle does not).
    pub fn needs_roots(&self) -> bool {
        self.step != Step::Slice
    }

    /// Whether the step begun by `begin_collection` may free objects (a
    /// marking slice does not), so caches keyed by handles must be cleared.
    pub fn may_free(&self) -> bool {
        self.step != Step::Slice || self.phase == Phase::Sweeping
    }

    /// Finishes the step begun by `begin_collection` once its roots are
    /// marked: traces, sweeps and records statistics. `started` is when the
    /// step began. Returns the number of objects freed.
    pub fn finish_collection(&mut self, started: Instant) -> usize {
        let step = self.step;
        self.charge();
        let freed = match step {
            Step::Minor | Step::MinorAndSlice => {
                let mut freed = self.finish_minor();
                match self.phase {
                    Phase::Marking => {
                        self.mark_slice();
                        if self.major_gray.is_empty() {
                            self.start_sweep();
                        }
                    }
                    // A minor collection at a safe point leaves sweeping to
                    // the slices paced by allocation.
                    Phase::Sweeping if step == Step::MinorAndSlice => freed += self.sweep_slice(),
                    _ => {}
                }
                freed
            }
            Step::Full => self.finish_major(),
            Step::Slice => match self.phase {
                Phase::Marking => {
                    self.mark_slice();
                    0
                }
                Phase::Sweeping => self.sweep_slice(),
                Phase::Idle => 0,
            },
        };
        self.step = Step::Full;
        self.mode = Mode::Full;
        if step != Step::Slice {
            self.allocated_since_gc = 0;
            self.charged = 0;
            self.stats.collections += 1;
        }
        self.schedule();
        let pause = started.elapsed().as_micros() as u64;
        self.stats.pause_us_max = self.stats.pause_us_max.max(pause);
        self.stats.pause_us_total += pause;
        self.stats.freed_total += freed as u64;
        freed
    }

    /// Puts a new object in the first free slot at or after the cursor, or
    /// at the end of the table. Free slots are taken in the order of the
    /// table, so the objects made one after another sit side by side, and
    /// so do the young ones that a minor collection visits and frees.
    #[inline]
    fn place(&mut self, obj: Object) -> Gc {
        // No slot at or past the cursor is free when it is at the end (the
        // table only grows there): no scan, as when a program or the
        // reader makes many objects in a row.
        if self.cursor < self.flags.len() {
            if let Some(i) = first_free(&self.flags, self.cursor) {
                self.objects[i] = obj;
                self.flags[i] = 0;
                self.cursor = i + 1;
                return Gc::from_index(i);
            }
        }
        if self.objects.len() == self.objects.capacity() {
            self.grow(1);
        }
        self.objects.push(obj);
        self.flags.push(0);
        self.cursor = self.objects.len();
        Gc::from_index(self.objects.len() - 1)
    }

    fn free_slot(&mut self, i: usize) {
        let old = std::mem::replace(&mut self.objects[i], Object::Free);
        if let Object::Scope(mut b) = old {
            if self.scope_pool.len() < SCOPE_POOL_LIMIT {
                b.func = None;
                b.vars.clear();
                self.scope_pool.push(b);
            }
        }
        self.flags[i] = FREE;
        self.cursor = self.cursor.min(i);
    }

    /// Young objects reachable from the roots and from the remembered old
    /// objects survive; the rest are freed. A survivor stays young through
    /// one minor collection and becomes old at the next it survives, so
    /// what lives only a little longer than the collections are apart (a
    /// handler waiting for a reply, a loop's accumulator between two
    /// collections) dies young instead of waiting in the old generation
    /// for a major cycle.
    fn finish_minor(&mut self) -> usize {
        // Old objects remembered at the last minor collection are traced
        // once more: what they pointed at may have survived it young.
        // (Those written again since are in `remembered`, traced below;
        // those freed since are no longer old.)
        let mut again = std::mem::take(&mut self.remembered_again);
        for &g in &again {
            if self.flags[g.index()] & (OLD | REMEMBERED) == OLD {
                self.trace_object(g, usize::MAX);
            }
        }
        again.clear();
        let remembered = std::mem::take(&mut self.remembered);
        for &g in &remembered {
            self.flags[g.index()] &= !REMEMBERED;
            self.trace_object(g, usize::MAX);
        }
        // Old host objects changed in place are in the remembered set too
        // (`host_changed`). A young one is traced only if it is reached,
        // and freed otherwise, like any young object: a server's requests
        // die young.
        self.trace_gray();
        // Scopes freed by returning calls are garbage whatever their age.
        let free_scopes = std::mem::take(&mut self.free_scopes);
        self.live += free_scopes.len();
        let mut freed = 0usize;
        for g in free_scopes {
            let i = g.index();
            if self.flags[i] & OLD != 0 {
                let size = Self::object_bytes(&self.objects[i]);
                self.old_freed(i, size);
                self.free_slot(i);
                freed += 1;
            }
        }
        let mut young = std::mem::take(&mut self.young);
        let mut promoted = 0usize;
        let mut kept = 0usize;
        let mut kept_bytes = 0usize;
        for n in 0..young.len() {
            let g = young[n];
            let i = g.index();
            let flags = self.flags[i];
            if flags & MARKED != 0 && flags & AGED == 0 {
                // Its first survival: young one more time.
                self.flags[i] = AGED;
                kept_bytes += Self::object_bytes(&self.objects[i]);
                young[kept] = g;
                kept += 1;
            } else if flags & MARKED != 0 {
                // Survivors of a minor collection during a major cycle are
                // black for it: everything they point at was marked or
                // shaded by this collection.
                self.flags[i] = OLD | self.black_bit(i);
                let size = Self::object_bytes(&self.objects[i]);
                promoted += size;
                self.old_added(i, size);
                // Only scopes and host objects change after they are made,
                // so only they can point at younger objects: at ones that
                // just stayed young.
                if matches!(self.objects[i], Object::Scope(_) | Object::Ref(_)) {
                    again.push(g);
                }
            } else if flags & (OLD | FREE) == 0 {
                self.free_slot(i);
                freed += 1;
            }
        }
        young.truncate(kept);
        self.young = young;
        // Old objects that point at young ones now are traced at the next
        // minor collection too: those just promoted (above), and those
        // remembered for this one. The rest need not be.
        again.extend(remembered);
        again.sort_unstable_by_key(|g| g.index());
        again.dedup();
        again.retain(|&g| self.flags[g.index()] & OLD != 0 && self.points_young(g));
        self.remembered_again = again;
        self.live -= freed;
        self.old_bytes += promoted;
        self.bytes = self.old_bytes + kept_bytes;
        freed
    }

    /// Whether the old scope or host object `g` points at a young object.
    fn points_young(&self, g: Gc) -> bool {
        let young = |h: Gc| self.flags[h.index()] & OLD == 0;
        let young_value = |v: Value| v.heap_object().is_some_and(young);
        match &self.objects[g.index()] {
            Object::Scope(s) => {
                s.vars.iter().any(|&(_, v)| young_value(v))
                    || s.parent.is_some_and(young)
                    || s.caller.is_some_and(young)
                    || s.func
                        .as_ref()
                        .is_some_and(|f| f.constants.iter().any(|&v| young_value(v)))
            }
            Object::Ref(r) => {
                let mut values = Vec::new();
                r.trace(&mut values);
                values.into_iter().any(young_value)
            }
            _ => false,
        }
    }

    /// Traces everything from the roots and sweeps the whole table, stopping
    /// the world (`gc/collect`, the heap limit, and stress mode).
    fn finish_major(&mut self) -> usize {
        self.trace_gray();
        for g in std::mem::take(&mut self.remembered) {
            self.flags[g.index()] &= !REMEMBERED;
        }
        self.remembered_again.clear();
        // Scopes waiting in `free_scopes` are unmarked: the sweep below
        // returns them to the free slots. Their count was already
        // taken off `live`, so it is added back before the sweep subtracts.
        self.live += self.free_scopes.len();
        self.free_scopes.clear();
        self.young.clear();
        let mut freed = 0usize;
        let mut bytes = 0usize;
        for i in 0..self.objects.len() {
            if self.flags[i] & MARKED != 0 {
                self.flags[i] = OLD;
                bytes += Self::object_bytes(&self.objects[i]);
                continue;
            }
            if self.flags[i] & FREE != 0 {
                continue;
            }
            self.free_slot(i);
            freed += 1;
        }
        self.live -= freed;
        self.bytes = bytes;
        self.old_bytes = bytes;
        self.major_at = bytes
            .saturating_mul(2)
            .max(self.threshold.saturating_mul(4));
        self.stats.major_cycles += 1;
        freed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_cells_are_freed_and_reused() {
        let mut heap = Heap::new(1 << 20);
        let kept = heap.qlist(&[Value::Num(1), Value::Num(2)]);
        let _garbage = heap.qlist(&[Value::Num(3), Value::Num(4), Value::Num(5)]);
        assert_eq!(heap.live_objects(), 5);
        let t = Instant::now();
        heap.mark_value(kept);
        let freed = heap.finish_collection(t);
        assert_eq!(freed, 3);
        assert_eq!(heap.live_objects(), 2);
        assert_eq!(heap.list_items(kept).len(), 2);
        heap.qlist(&[Value::Num(9)]);
        assert_eq!(heap.objects.len(), 5, "freed slot reused");
    }

    #[test]
    fn minor_collections_come_every_quarter_threshold() {
        let threshold = 4 << 20;
        let mut heap = Heap::new(threshold);
        let before = |heap: &mut Heap| {
            let mut made = 0;
            while !heap.wants_collection() {
                heap.qlist(&[Value::Num(1)]);
                made += 1;
            }
            made
        };
        let cells = before(&mut heap);
        let per_cell = heap.bytes / cells;
        assert!(cells * per_cell >= threshold / 4 && (cells - 1) * per_cell < threshold / 4);
        // Everything was garbage; the next collection is due after the
        // same amount again, and the old generation stays empty.
        heap.begin_collection(false);
        heap.finish_collection(Instant::now());
        assert_eq!(heap.live_objects(), 0);
        assert_eq!(before(&mut heap), cells);
    }

    #[test]
    fn cycles_through_scopes_are_collected() {
        let mut heap = Heap::new(1 << 20);
        let scope = heap.new_scope(&[], None, None, None, false);
        // scope -> its own caller: a cycle with no root.
        heap.scope_mut(scope).caller = Some(scope);
        let t = Instant::now();
        assert_eq!(heap.finish_collection(t), 1);
        assert_eq!(heap.live_objects(), 0);
    }

    /// A host object holding values, changed in place (also used by the
    /// incremental collector's tests).
    pub(super) struct Holder(std::cell::RefCell<Vec<Value>>);

    impl HostObject for Holder {
        fn type_name(&self) -> &'static str {
            "holder"
        }
        fn trace(&self, out: &mut Vec<Value>) {
            out.extend(self.0.borrow().iter().copied());
        }
        fn as_any(&self) -> &dyn Any {
            self
        }
    }

    pub(super) fn holder(heap: &mut Heap, values: Vec<Value>) -> Gc {
        heap.alloc(Object::Ref(Box::new(Holder(values.into()))))
    }

    pub(super) fn held(heap: &Heap, g: Gc) -> &std::cell::RefCell<Vec<Value>> {
        &heap
            .host_ref(g)
            .as_any()
            .downcast_ref::<Holder>()
            .unwrap()
            .0
    }

    /// A server's requests are host objects that die young: a minor
    /// collection frees the unreachable ones (and what they hold), while an
    /// old host object changed in place (through its barrier) keeps what it
    /// holds now.
    #[test]
    fn minor_collection_frees_young_host_objects_and_traces_old_ones() {
        let mut heap = Heap::new(1 << 20);
        let old = holder(&mut heap, vec![]);
        for _ in 0..2 {
            heap.begin_collection(false);
            heap.mark(old);
            heap.finish_collection(Instant::now());
        }
        assert_eq!(heap.flags[old.index()] & OLD, OLD);
        // Young: a holder that the old one is given, with a string, and a
        // holder with a string that nothing refers to.
        let kept_str = heap.string_value("kept");
        let kept = holder(&mut heap, vec![kept_str]);
        held(&heap, old).borrow_mut().push(Value::Ref(kept));
        heap.host_changed(old);
        let dropped_str = heap.string_value("dropped");
        let _dropped = holder(&mut heap, vec![dropped_str]);
        heap.begin_collection(false);
        let freed = heap.finish_collection(Instant::now());
        assert_eq!(freed, 2, "the unreachable holder and its string");
        assert!(matches!(heap.get(kept), Object::Ref(_)));
        assert!(matches!(kept_str, Value::Str(g) if heap.string(g) == "kept"));
        // Dropped by the old holder, the promoted one goes at the next
        // full collection.
        held(&heap, old).borrow_mut().clear();
        heap.begin_collection(true);
        heap.mark(old);
        assert_eq!(heap.finish_collection(Instant::now()), 2);
        assert_eq!(heap.live_objects(), 1);
    }

    /// A serving isolate asks for a major cycle and then only makes young
    /// collections: each takes the cycle a slice further, and the cycle
    /// frees the old garbage without a pause that depends on the heap.
    #[test]
    fn young_collections_carry_a_requested_major_cycle_a_slice_at_a_time() {
        let mut heap = Heap::new(1 << 20);
        heap.mark_work = 100;
        heap.sweep_work = 100;
        let kept = heap.qlist(&[Value::Num(1); 1000]);
        let dropped = heap.qlist(&[Value::Num(2); 1000]);
        heap.begin_collection(false);
        heap.mark_value(kept);
        heap.mark_value(dropped);
        heap.finish_collection(Instant::now());
        assert_eq!(heap.live_objects(), 2000);
        assert_eq!(heap.phase, Phase::Idle, "no cycle before one is asked for");
        heap.request_major_cycle();
        let mut steps = 0;
        loop {
            heap.begin_young_collection();
            heap.mark_value(kept);
            heap.finish_collection(Instant::now());
            steps += 1;
            if heap.phase == Phase::Idle {
                break;
            }
            assert!(steps < 1000, "the cycle does not end");
        }
        assert!(steps > 10, "a slice at a time, not at once: {steps} steps");
        assert_eq!(heap.stats.major_cycles, 1);
        assert_eq!(heap.live_objects(), 1000, "the dropped list is freed");
        let mut cell = kept.list_cell();
        let mut cells = 0;
        while let Some(c) = cell {
            assert!(matches!(heap.cons(c).head, Value::Num(1)));
            cell = heap.cons(c).tail;
            cells += 1;
        }
        assert_eq!(cells, 1000);
    }

    /// A minor collection of a heap whose only roots are `roots`.
    fn minor(heap: &mut Heap, roots: &[Gc]) -> usize {
        heap.begin_collection(false);
        for &g in roots {
            heap.mark(g);
        }
        heap.finish_collection(Instant::now())
    }

    fn is_old(heap: &Heap, g: Gc) -> bool {
        heap.flags[g.index()] & OLD != 0
    }

    /// What survives one minor collection stays young through it, and is
    /// freed by the next if nothing refers to it by then; what survives
    /// two is old.
    #[test]
    fn a_survivor_stays_young_through_one_minor_collection() {
        let mut heap = Heap::new(1 << 20);
        let kept = heap.new_scope(&[], None, None, None, false);
        let brief = heap.qlist(&[Value::Num(1), Value::Num(2)]);
        heap.scope_mut(kept).vars.push((Sym(0), brief));
        assert_eq!(minor(&mut heap, &[kept]), 0);
        assert!(!is_old(&heap, kept) && !is_old(&heap, brief.list_cell().unwrap()));
        heap.scope_mut(kept).vars.clear();
        assert_eq!(minor(&mut heap, &[kept]), 2, "the list dies young");
        assert!(is_old(&heap, kept));
        assert_eq!(heap.live_objects(), 1);
        assert_eq!(heap.old_bytes, heap.live_bytes());
    }

    /// A scope written while young (no barrier sees that) and made old
    /// while it points at an object that stayed young keeps that object
    /// at the next minor collection, and the one after.
    #[test]
    fn a_promoted_scope_keeps_what_stayed_young() {
        let mut heap = Heap::new(1 << 20);
        let scope = heap.new_scope(&[], None, None, None, false);
        minor(&mut heap, &[scope]);
        let x = heap.qlist(&[Value::Num(7)]);
        heap.scope_mut(scope).vars.push((Sym(0), x));
        minor(&mut heap, &[scope]);
        let cell = x.list_cell().unwrap();
        assert!(is_old(&heap, scope) && !is_old(&heap, cell));
        assert_eq!(minor(&mut heap, &[scope]), 0);
        assert!(is_old(&heap, cell));
        assert!(matches!(heap.cons(cell).head, Value::Num(7)));
        assert!(
            heap.remembered_again.is_empty(),
            "nothing old points at a young object"
        );
        minor(&mut heap, &[scope]);
        assert!(matches!(heap.cons(cell).head, Value::Num(7)));
    }

    /// An old scope written through its barrier is traced at the next
    /// minor collection, and at the one after: what it was given is still
    /// young then.
    #[test]
    fn a_remembered_scope_is_traced_until_what_it_holds_is_old() {
        let mut heap = Heap::new(1 << 20);
        let scope = heap.new_scope(&[], None, None, None, false);
        minor(&mut heap, &[scope]);
        minor(&mut heap, &[scope]);
        assert!(is_old(&heap, scope));
        let x = heap.string_value("x");
        heap.scope_mut(scope).vars.push((Sym(0), x));
        // The scope is no root: only the remembered sets reach it.
        assert_eq!(minor(&mut heap, &[]), 0);
        assert_eq!(heap.remembered_again, vec![scope]);
        assert_eq!(minor(&mut heap, &[]), 0);
        assert!(matches!(x, Value::Str(g) if is_old(&heap, g) && heap.string(g) == "x"));
        assert!(heap.remembered_again.is_empty());
    }

    #[test]
    fn minor_collection_keeps_young_values_of_old_scopes() {
        let mut heap = Heap::new(1 << 20);
        let scope = heap.new_scope(&[], None, None, None, false);
        heap.begin_collection(false);
        heap.mark(scope);
        heap.finish_collection(Instant::now());
        // The scope is old now; a young list is stored in it.
        let young = heap.qlist(&[Value::Num(7)]);
        heap.scope_mut(scope).vars.push((Sym(0), young));
        let _garbage = heap.qlist(&[Value::Num(8)]);
        heap.begin_collection(false);
        heap.mark(scope);
        let freed = heap.finish_collection(Instant::now());
        assert_eq!(freed, 1, "only the unreferenced list is freed");
        let cell = young.list_cell().unwrap();
        assert!(matches!(heap.cons(cell).head, Value::Num(7)));
        // A full collection without the scope as a root frees both.
        heap.begin_collection(true);
        assert_eq!(heap.finish_collection(Instant::now()), 2);
        assert_eq!(heap.live_objects(), 0);
    }
}
