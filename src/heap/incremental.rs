//! Incremental major collection: the old generation is marked and swept a
//! bounded slice at a time, so a pause depends on the slice budget and the
//! young generation, not on the size of the heap.
//!
//! A cycle starts at a minor collection once the old generation has grown
//! past `major_at`: that collection's root scan shades the old objects the
//! roots reach (`Heap::claim` in `Mode::Minor`), onto `major_gray`. Then
//! each slice, due at a safe point once the program has allocated
//! `slice_every` bytes since the last one (see `start_cycle`), traces about
//! `mark_work` objects and fields of old objects (young ones are left to the
//! minor collections). A long list is cut off there and its rest left gray;
//! a single map or scope is traced whole. Minor collections go on as usual
//! during the cycle, and keep the tri-color invariant of the old generation:
//!
//! - what they promote is black (marked): they marked or shaded everything
//!   it points at;
//! - old scopes and host objects changed since the last minor collection
//!   (the remembered set of the write barriers in `Heap::scope_mut` and
//!   `Heap::host_changed`) are traced again, shading what they point at now;
//! - the roots are scanned, shading the old objects they point at.
//!
//! Lists allocated straight into the old generation (`cons_cell_old`) are
//! black too, and shade their tail.
//!
//! Objects never change after they are made, except scopes and host
//! objects (each through its barrier), so no black object can point at a white one that nothing gray
//! reaches, as of the end of each minor collection. Marking is complete at
//! the first minor collection after which `major_gray` drains empty within
//! the budget: a slice that empties it asks for that collection at the next
//! safe point. Old objects still unmarked then are garbage.
//!
//! Sweeping then visits `sweep_work` slots per slice, freeing old unmarked
//! objects and unmarking the rest. Objects that become old meanwhile (by
//! promotion or pretenuring) are born marked above `sweep_pos`, where the
//! sweeper has yet to go, and unmarked below it. Young objects are never
//! swept: minor collections decide them.
//!
//! A full collection (`gc/collect`, the heap limit) abandons a cycle in
//! progress and collects everything at once.

use super::{Gc, Heap, Mode, Phase, CONS_BYTES, MARKED, OLD};

/// Work units traced per marking slice. A unit is an object or a field,
/// a few nanoseconds each, so a slice takes about a millisecond.
pub(super) const MARK_WORK: usize = 100_000;
/// Table slots visited per sweeping slice.
pub(super) const SWEEP_WORK: usize = 150_000;
/// Under stress (`Heap::set_stress`) cycles are cut into many more slices,
/// so that the barrier is exercised between them.
pub(super) const STRESS_MARK_WORK: usize = 16;
pub(super) const STRESS_SWEEP_WORK: usize = 64;

impl Heap {
    /// Starts a major cycle at the minor collection about to mark its
    /// roots, and paces it: the cycle's slices (enough to trace the live
    /// heap and sweep the table) are spread over `pace` bytes of
    /// allocation, an eighth of the old generation (at least the minor
    /// threshold), so the cycle ends before the heap has grown much,
    /// however large it is or however fast the program allocates. A slice's
    /// work stays bounded: a burst of allocation is paid for by slices at
    /// the safe points that follow.
    pub(super) fn start_cycle(&mut self) {
        debug_assert!(self.major_gray.is_empty());
        self.phase = Phase::Marking;
        let mark_units = self.live.max(self.old_bytes / CONS_BYTES);
        let slices = mark_units / self.mark_work + self.objects.len() / self.sweep_work + 2;
        let pace = self.threshold.max(self.old_bytes / 8);
        self.slice_every = (pace / slices).max(1);
        self.owed = 0;
        self.charged = self.allocated_since_gc;
        self.cycle_new = 0;
    }

    /// Adds what was allocated since the last step to what the cycle owes.
    pub(super) fn charge(&mut self) {
        if self.phase != Phase::Idle {
            let new = self.allocated_since_gc.saturating_sub(self.charged);
            self.owed = self.owed.saturating_add(new);
        }
        self.charged = self.allocated_since_gc;
    }

    /// Drops a cycle in progress: unmarks everything, so that a full
    /// collection can start from scratch.
    pub(super) fn abandon_cycle(&mut self) {
        if self.phase == Phase::Idle {
            return;
        }
        for f in self.flags.iter_mut() {
            *f &= !MARKED;
        }
        self.major_gray.clear();
        self.phase = Phase::Idle;
    }

    /// The mark bit an object becoming old at slot `i` gets: set while the
    /// cycle marks (it is black), and while it sweeps above `sweep_pos`
    /// (the sweeper will unmark it rather than free it).
    #[inline]
    pub(super) fn black_bit(&self, i: usize) -> u8 {
        match self.phase {
            Phase::Marking => MARKED,
            Phase::Sweeping if i >= self.sweep_pos => MARKED,
            _ => 0,
        }
    }

    /// Marks the old object `g` gray for the cycle if it is still white.
    pub(super) fn shade(&mut self, g: Gc) {
        let i = g.index();
        let flags = self.flags[i];
        if flags & (OLD | MARKED) == OLD {
            self.flags[i] = flags | MARKED;
            self.major_gray.push(g);
        }
    }

    /// Keeps `sweep_live` exact and counts `cycle_new`: `size` bytes became
    /// old at slot `i`.
    #[inline]
    pub(super) fn old_added(&mut self, i: usize, size: usize) {
        if self.phase != Phase::Idle {
            self.cycle_new += size;
            if self.phase == Phase::Sweeping && i < self.sweep_pos {
                self.sweep_live += size;
            }
        }
    }

    /// `size` bytes of an old object at slot `i` are about to be freed
    /// outside the sweep.
    pub(super) fn old_freed(&mut self, i: usize, size: usize) {
        self.old_bytes = self.old_bytes.saturating_sub(size);
        if self.phase == Phase::Sweeping && i < self.sweep_pos {
            self.sweep_live = self.sweep_live.saturating_sub(size);
        }
    }

    /// Traces gray old objects until the slice's budget is spent or none
    /// are left.
    pub(super) fn mark_slice(&mut self) {
        let mode = self.mode;
        self.mode = Mode::Incremental;
        std::mem::swap(&mut self.gray, &mut self.major_gray);
        self.owed = self.owed.saturating_sub(self.slice_every);
        let budget = self.mark_work;
        let mut work = 0;
        while work < budget {
            let Some(g) = self.gray.pop() else { break };
            if self.flags[g.index()] & OLD == 0 {
                // Freed since it was shaded (a frame that returned), and
                // perhaps reused by a young object.
                work += 1;
                continue;
            }
            work += self.trace_object(g, budget - work);
        }
        std::mem::swap(&mut self.gray, &mut self.major_gray);
        self.mode = mode;
    }

    /// Marking is complete (at the end of a minor collection, with nothing
    /// gray): sweeping starts at slot 0.
    pub(super) fn start_sweep(&mut self) {
        self.phase = Phase::Sweeping;
        self.sweep_pos = 0;
        self.sweep_live = 0;
    }

    /// Sweeps the next `sweep_work` slots: old unmarked objects are freed,
    /// marked ones unmarked. Returns the number freed.
    pub(super) fn sweep_slice(&mut self) -> usize {
        self.owed = self.owed.saturating_sub(self.slice_every);
        let end = self
            .sweep_pos
            .saturating_add(self.sweep_work)
            .min(self.objects.len());
        let mut freed = 0usize;
        let mut freed_bytes = 0usize;
        let mut live_bytes = 0usize;
        for i in self.sweep_pos..end {
            let flags = self.flags[i];
            if flags & OLD == 0 {
                continue;
            }
            let size = Self::object_bytes(&self.objects[i]);
            if flags & MARKED != 0 {
                self.flags[i] = flags & !MARKED;
                live_bytes += size;
            } else {
                freed_bytes += size;
                self.free_slot(i);
                freed += 1;
            }
        }
        self.sweep_pos = end;
        self.sweep_live += live_bytes;
        self.live -= freed;
        self.old_bytes = self.old_bytes.saturating_sub(freed_bytes);
        self.bytes = self.bytes.saturating_sub(freed_bytes);
        if end == self.objects.len() {
            self.finish_cycle();
        }
        freed
    }

    /// The sweep reached the end of the table: the old generation's size is
    /// now known exactly, and sets when the next cycle starts. As after a
    /// full collection, the old generation may grow by as much as was found
    /// live; what became old during the cycle survived it untraced (often
    /// garbage already), so it does not count as found live.
    fn finish_cycle(&mut self) {
        let young = self.bytes.saturating_sub(self.old_bytes);
        self.old_bytes = self.sweep_live;
        self.bytes = self.old_bytes + young;
        let traced = self.old_bytes.saturating_sub(self.cycle_new);
        self.major_at = self
            .old_bytes
            .saturating_add(traced)
            .max(self.threshold.saturating_mul(4));
        self.phase = Phase::Idle;
        self.stats.major_cycles += 1;
    }

    /// Sets when the next step is due: the minor threshold, or sooner when
    /// the cycle owes a slice (at the next safe point if it owes one
    /// already, or when marking awaits its final minor collection).
    pub(super) fn schedule(&mut self) {
        self.next_collection = match self.phase {
            Phase::Idle => {
                self.owed = 0;
                self.nursery
            }
            Phase::Marking if self.major_gray.is_empty() => self.allocated_since_gc,
            _ => match self.slice_every.checked_sub(self.owed) {
                Some(left) if left > 0 => self
                    .allocated_since_gc
                    .saturating_add(left)
                    .min(self.nursery),
                _ => self.allocated_since_gc,
            },
        };
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::Instant;

    use super::super::tests::{held, holder};
    use super::super::{Gc, Object, Phase, MARKED, OLD};
    use super::Heap;
    use crate::error::Span;
    use crate::symbol::Sym;
    use crate::value::Value;

    /// What the VM would hold as roots: values (the stack) and scopes
    /// (frames).
    #[derive(Default, Clone)]
    struct Roots {
        values: Vec<Value>,
        scopes: Vec<Gc>,
    }

    /// A safe point: one collection step, as `Vm::collect_with` runs it.
    fn step(heap: &mut Heap, roots: &Roots) {
        heap.begin_collection(false);
        if heap.needs_roots() {
            for &v in &roots.values {
                heap.mark_value(v);
            }
            for &s in &roots.scopes {
                heap.mark(s);
            }
        }
        heap.finish_collection(Instant::now());
    }

    /// A serving isolate's collection (`Vm::collect_young`): a minor
    /// collection and a slice of the cycle in progress.
    fn young(heap: &mut Heap, roots: &Roots) {
        heap.begin_young_collection();
        for &v in &roots.values {
            heap.mark_value(v);
        }
        for &s in &roots.scopes {
            heap.mark(s);
        }
        heap.finish_collection(Instant::now());
    }

    /// A safe point once the minor threshold has been reached.
    fn minor(heap: &mut Heap, roots: &Roots) {
        heap.allocated_since_gc = heap.allocated_since_gc.max(heap.threshold);
        step(heap, roots);
    }

    /// Minor collections until what `roots` reach is old (a survivor
    /// stays young through its first).
    fn age(heap: &mut Heap, roots: &Roots) {
        minor(heap, roots);
        minor(heap, roots);
    }

    /// Safe points until the major cycle in progress is over.
    fn finish(heap: &mut Heap, roots: &Roots) {
        for _ in 0..100_000 {
            if heap.phase == Phase::Idle {
                return;
            }
            step(heap, roots);
        }
        panic!("the major cycle did not end");
    }

    /// A heap whose next minor collection starts a cycle traced one unit
    /// and swept two slots per slice.
    fn tiny_slices() -> Heap {
        let mut heap = Heap::new(1 << 20);
        heap.mark_work = 1;
        heap.sweep_work = 2;
        heap
    }

    fn is_white(heap: &Heap, g: Gc) -> bool {
        heap.flags[g.index()] & (OLD | MARKED) == OLD
    }

    fn is_black(heap: &Heap, g: Gc) -> bool {
        heap.flags[g.index()] & MARKED != 0 && !heap.major_gray.contains(&g)
    }

    fn is_free(heap: &Heap, g: Gc) -> bool {
        matches!(heap.get(g), Object::Free)
    }

    fn no_marks_left(heap: &Heap) -> bool {
        heap.flags.iter().all(|f| f & MARKED == 0)
    }

    /// `s` (traced) and `y` (still gray), both old, y holding the old
    /// string `x`; a cycle is marking.
    fn black_scope_and_white_string(heap: &mut Heap) -> (Gc, Gc, Gc, Roots) {
        let x = heap.string_value("x");
        let y = heap.new_scope(&[(Sym(0), x)], None, None, None, false);
        let s = heap.new_scope(&[], None, None, None, false);
        let roots = Roots {
            values: vec![],
            scopes: vec![y, s],
        };
        age(heap, &roots);
        heap.major_at = 0;
        // This minor collection starts the cycle: y then s are shaded, and
        // its one-unit slice traces s (the last shaded).
        minor(heap, &roots);
        assert_eq!(heap.phase, Phase::Marking);
        let Value::Str(xg) = x else { unreachable!() };
        assert!(is_black(heap, s), "s is traced");
        assert!(heap.major_gray.contains(&y), "y is still gray");
        assert!(is_white(heap, xg), "x is not marked yet");
        (s, y, xg, roots)
    }

    #[test]
    fn black_scope_written_during_marking_keeps_a_white_object() {
        let mut heap = tiny_slices();
        let (s, y, x, roots) = black_scope_and_white_string(&mut heap);
        // The only reference to x moves from the gray y to the black s.
        heap.scope_mut(s).vars.push((Sym(1), Value::Str(x)));
        heap.scope_mut(y).vars.clear();
        finish(&mut heap, &roots);
        assert_eq!(heap.string(x), "x");
        assert!(no_marks_left(&heap));
        // Once s lets go of it, the next cycle frees it.
        heap.scope_mut(s).vars.clear();
        heap.major_at = 0;
        minor(&mut heap, &roots);
        finish(&mut heap, &roots);
        assert!(is_free(&heap, x));
        assert_eq!(heap.stats.major_cycles, 2);
    }

    #[test]
    fn young_object_stored_in_a_black_scope_survives() {
        let mut heap = tiny_slices();
        let (s, _y, _x, roots) = black_scope_and_white_string(&mut heap);
        let young = heap.qlist(&[Value::Num(5), Value::Num(6)]);
        heap.scope_mut(s).vars.push((Sym(1), young));
        finish(&mut heap, &roots);
        let cell = young.list_cell().unwrap();
        assert_eq!(heap.list_len(young), 2);
        assert!(matches!(heap.cons(cell).head, Value::Num(5)));
        age(&mut heap, &roots);
        assert!(heap.flags[cell.index()] & OLD != 0, "promoted");
        assert_eq!(heap.list_len(young), 2);
    }

    #[test]
    fn white_object_moved_to_the_stack_survives() {
        let mut heap = tiny_slices();
        let (_s, y, x, mut roots) = black_scope_and_white_string(&mut heap);
        // The only reference to x is now on the stack, and a young list
        // made meanwhile points at x too.
        roots.values.push(Value::Str(x));
        heap.scope_mut(y).vars.clear();
        let young = heap.qlist(&[Value::Str(x)]);
        roots.values.push(young);
        finish(&mut heap, &roots);
        assert_eq!(heap.string(x), "x");
        // Kept only by the young list now.
        roots.values.remove(0);
        heap.major_at = 0;
        minor(&mut heap, &roots);
        finish(&mut heap, &roots);
        assert_eq!(heap.string(x), "x");
        roots.values.clear();
        heap.major_at = 0;
        minor(&mut heap, &roots);
        finish(&mut heap, &roots);
        assert!(is_free(&heap, x));
    }

    #[test]
    fn unreachable_cycles_are_reclaimed_incrementally() {
        let mut heap = tiny_slices();
        let a = heap.new_scope(&[], None, None, None, false);
        let b = heap.new_scope(&[], Some(a), None, None, false);
        heap.scope_mut(a).caller = Some(b);
        let s = heap.string_value("in a cycle");
        heap.scope_mut(b).vars.push((Sym(0), s));
        let kept = heap.qlist(&[Value::Num(1)]);
        let mut roots = Roots {
            values: vec![kept],
            scopes: vec![a],
        };
        age(&mut heap, &roots);
        assert!(heap.flags[b.index()] & OLD != 0);
        roots.scopes.clear();
        heap.major_at = 0;
        let before = heap.live_objects();
        minor(&mut heap, &roots);
        finish(&mut heap, &roots);
        assert!(is_free(&heap, a) && is_free(&heap, b));
        assert!(matches!(s, Value::Str(g) if is_free(&heap, g)));
        assert_eq!(heap.live_objects(), before - 3);
        assert_eq!(heap.list_len(kept), 1);
    }

    #[test]
    fn objects_made_old_while_sweeping_survive_and_are_unmarked() {
        let mut heap = tiny_slices();
        let garbage: Vec<Value> = (0..20).map(|i| heap.qlist(&[Value::Num(i)])).collect();
        let mut roots = Roots {
            values: garbage.clone(),
            scopes: vec![],
        };
        age(&mut heap, &roots);
        roots.values.clear();
        heap.major_at = 0;
        minor(&mut heap, &roots);
        while heap.phase == Phase::Marking {
            step(&mut heap, &roots);
        }
        assert_eq!(heap.phase, Phase::Sweeping);
        step(&mut heap, &roots);
        assert!(heap.sweep_pos > 0 && heap.sweep_pos < heap.objects.len());
        // Pretenured cells: one reuses a swept slot, the rest are new.
        let mut cell = None;
        for i in 0..5 {
            cell = Some(heap.cons_cell_old(Value::Num(i), cell));
        }
        let pretenured = Value::Q(cell.unwrap());
        // Promoted by a minor collection while sweeping.
        let promoted = heap.qlist(&[Value::Num(7), Value::Num(8)]);
        roots.values.push(pretenured);
        roots.values.push(promoted);
        age(&mut heap, &roots);
        assert_eq!(heap.phase, Phase::Sweeping);
        finish(&mut heap, &roots);
        assert!(no_marks_left(&heap));
        assert_eq!(heap.list_items(pretenured).len(), 5);
        assert_eq!(heap.list_items(promoted).len(), 2);
        assert_eq!(heap.live_objects(), 7);
        assert_eq!(heap.old_bytes, 7 * super::super::CONS_BYTES);
        // A second cycle frees them once unrooted.
        roots.values.clear();
        heap.major_at = 0;
        minor(&mut heap, &roots);
        finish(&mut heap, &roots);
        assert_eq!(heap.live_objects(), 0);
    }

    #[test]
    fn a_full_collection_abandons_the_cycle() {
        let mut heap = tiny_slices();
        let (s, y, x, roots) = black_scope_and_white_string(&mut heap);
        heap.scope_mut(y).vars.clear();
        heap.begin_collection(true);
        heap.mark(s);
        heap.mark(y);
        heap.finish_collection(Instant::now());
        assert_eq!(heap.phase, Phase::Idle);
        assert!(is_free(&heap, x));
        assert!(no_marks_left(&heap));
        assert_eq!(heap.live_objects(), 2);
        let _ = roots;
    }

    /// Changes what a host object holds, through its write barrier.
    fn set_cell(heap: &mut Heap, g: Gc, v: Option<Value>) {
        {
            let mut vals = held(heap, g).borrow_mut();
            vals.clear();
            vals.extend(v);
        }
        heap.host_changed(g);
    }

    /// xorshift64*: reproducible without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Handles an object refers to, read without touching the collector.
    fn children(heap: &Heap, g: Gc) -> Vec<Gc> {
        let mut out: Vec<Gc> = Vec::new();
        match heap.get(g) {
            Object::Cons(c) => {
                out.extend(c.head.heap_object());
                out.extend(c.tail);
            }
            Object::Scope(s) => {
                out.extend(s.vars.iter().filter_map(|(_, v)| v.heap_object()));
                out.extend(s.parent);
                out.extend(s.caller);
            }
            Object::Ref(r) => {
                let mut vals = Vec::new();
                r.trace(&mut vals);
                out.extend(vals.into_iter().filter_map(Value::heap_object));
            }
            Object::Free => panic!("a reachable object was freed"),
            _ => {}
        }
        out
    }

    /// Everything reachable from the roots; panics on a freed one.
    fn reachable(heap: &Heap, roots: &Roots) -> Vec<Gc> {
        let mut seen = HashSet::new();
        let mut order = Vec::new();
        let mut todo: Vec<Gc> = roots
            .values
            .iter()
            .filter_map(|v| v.heap_object())
            .collect();
        todo.extend(roots.scopes.iter().copied());
        while let Some(g) = todo.pop() {
            if seen.insert(g) {
                order.push(g);
                todo.extend(children(heap, g));
            }
        }
        order
    }

    fn value_of(heap: &Heap, g: Gc) -> Option<Value> {
        match heap.get(g) {
            Object::Cons(_) => Some(Value::Q(g)),
            Object::Str(_) => Some(Value::Str(g)),
            Object::Ref(_) => Some(Value::Ref(g)),
            _ => None,
        }
    }

    /// A random mutator (lists, strings, scopes written through the
    /// barrier, host objects changed in place, frames freed on return,
    /// pretenured lists) interleaved with safe points and a serving
    /// isolate's young collections at random: nothing
    /// reachable is ever freed, and a full collection at the end finds
    /// exactly the reachable objects live.
    #[test]
    fn random_mutator_never_loses_a_reachable_object() {
        let mut cycles = 0;
        for seed in 1..=24u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let mut heap = Heap::new(1 << 14);
            heap.mark_work = 1 + rng.below(16);
            heap.sweep_work = 1 + rng.below(64);
            let mut roots = Roots::default();
            for _ in 0..4_000 {
                let live = reachable(&heap, &roots);
                let pick = |rng: &mut Rng| -> Option<Gc> {
                    (!live.is_empty()).then(|| live[rng.below(live.len())])
                };
                let any_value = |rng: &mut Rng| -> Value {
                    match pick(rng).and_then(|g| value_of(&heap, g)) {
                        Some(v) if rng.below(4) != 0 => v,
                        _ => Value::Num(rng.below(100) as i64),
                    }
                };
                match rng.below(14) {
                    0 => {
                        let v = heap.string_value("s");
                        roots.values.push(v);
                    }
                    1 | 2 => {
                        let head = any_value(&mut rng);
                        let tail =
                            pick(&mut rng).filter(|&g| matches!(heap.get(g), Object::Cons(_)));
                        let g = heap.cons_cell(head, tail, Span::NONE);
                        roots.values.push(Value::Q(g));
                    }
                    3 => {
                        let v = any_value(&mut rng);
                        let parent =
                            pick(&mut rng).filter(|&g| matches!(heap.get(g), Object::Scope(_)));
                        let g = heap.take_scope(parent, None, None, false);
                        heap.scope_mut(g).vars.push((Sym(0), v));
                        roots.scopes.push(g);
                    }
                    4 | 5 => {
                        let v = any_value(&mut rng);
                        if let Some(g) =
                            pick(&mut rng).filter(|&g| matches!(heap.get(g), Object::Scope(_)))
                        {
                            let scope = heap.scope_mut(g);
                            if scope.vars.len() < 6 {
                                scope.vars.push((Sym(1), v));
                            } else {
                                scope.vars[0].1 = v;
                            }
                        }
                    }
                    6 => {
                        if let Some(g) =
                            pick(&mut rng).filter(|&g| matches!(heap.get(g), Object::Scope(_)))
                        {
                            let other =
                                pick(&mut rng).filter(|&h| matches!(heap.get(h), Object::Scope(_)));
                            let scope = heap.scope_mut(g);
                            scope.vars.pop();
                            scope.caller = other;
                        }
                    }
                    7 => {
                        let v = any_value(&mut rng);
                        let g = holder(&mut heap, vec![v]);
                        roots.values.push(Value::Ref(g));
                    }
                    8 => {
                        let v = any_value(&mut rng);
                        if let Some(g) =
                            pick(&mut rng).filter(|&g| matches!(heap.get(g), Object::Ref(_)))
                        {
                            set_cell(&mut heap, g, (rng.below(3) != 0).then_some(v));
                        }
                    }
                    9 => {
                        // A list of Numbers made straight into the old
                        // generation, onto an old list or none.
                        let mut cell = pick(&mut rng).filter(|&g| {
                            matches!(heap.get(g), Object::Cons(_))
                                && heap.flags[g.index()] & OLD != 0
                        });
                        for i in 0..1 + rng.below(4) {
                            cell = Some(heap.cons_cell_old(Value::Num(i as i64), cell));
                        }
                        roots.values.push(Value::Q(cell.unwrap()));
                    }
                    10 => {
                        // A frame returns: freed at once if nothing else
                        // refers to it.
                        if let Some(&g) = roots.scopes.last() {
                            roots.scopes.pop();
                            // As in the VM, nothing at all may refer to a
                            // frame that is freed.
                            let referenced = (0..heap.objects.len()).any(|i| {
                                let h = Gc::from_index(i);
                                h != g
                                    && !matches!(heap.objects[i], Object::Free)
                                    && children(&heap, h).contains(&g)
                            }) || roots.scopes.contains(&g);
                            if !referenced && !heap.free_scopes.contains(&g) {
                                heap.free_scope(g);
                            }
                        }
                    }
                    11 => {
                        if !roots.values.is_empty() {
                            let i = rng.below(roots.values.len());
                            roots.values.swap_remove(i);
                        }
                    }
                    12 => match rng.below(4) {
                        0 => {
                            if heap.phase == Phase::Idle {
                                heap.major_at = 0;
                            }
                            minor(&mut heap, &roots);
                        }
                        1 => {
                            if rng.below(2) == 0 {
                                heap.request_major_cycle();
                            }
                            young(&mut heap, &roots);
                        }
                        _ => step(&mut heap, &roots),
                    },
                    _ => {
                        for _ in 0..rng.below(4) {
                            if heap.phase != Phase::Idle {
                                step(&mut heap, &roots);
                            }
                        }
                    }
                }
                if roots.values.len() > 40 {
                    roots.values.remove(0);
                }
                if roots.scopes.len() > 12 {
                    roots.scopes.remove(0);
                }
                reachable(&heap, &roots);
            }
            finish(&mut heap, &roots);
            assert!(no_marks_left(&heap), "seed {seed}");
            cycles += heap.stats.major_cycles;
            heap.begin_collection(true);
            for &v in &roots.values {
                heap.mark_value(v);
            }
            for &s in &roots.scopes {
                heap.mark(s);
            }
            heap.finish_collection(Instant::now());
            assert_eq!(
                heap.live_objects(),
                reachable(&heap, &roots).len(),
                "seed {seed}"
            );
        }
        assert!(cycles >= 200, "{cycles} major cycles");
    }
}
