//! Collector builtins: `gc/collect` and `gc/stats`.

use super::{builtin, define_all, ret};
use crate::value::Value;
use crate::vm::Vm;

pub fn register(vm: &mut Vm) {
    define_all(vm, &[COLLECT, STATS]);
}

builtin!(
    COLLECT,
    "gc/collect",
    "(gc/collect _)",
    "Runs a full collection now; returns the number of live objects.",
    |vm, args, env| {
        vm.collect();
        ret(Value::Num(vm.heap.live_objects() as i64))
    }
);

builtin!(STATS, "gc/stats", "(gc/stats _)", "Collector statistics: {{\"collections\" n} {\"heap-bytes\" n} {\"live-objects\" n} {\"pause-us-max\" n} {\"pause-us-total\" n} {\"major-cycles\" n}}: pauses are the longest and the total of every collection step, in microseconds; major cycles are the completed collections of the old generation.", |vm, args, env| {
    let s = vm.heap.stats;
    let entries: [(&str, u64); 6] = [
        ("collections", s.collections),
        ("heap-bytes", vm.heap.live_bytes() as u64),
        ("live-objects", vm.heap.live_objects() as u64),
        ("pause-us-max", s.pause_us_max),
        ("pause-us-total", s.pause_us_total),
        ("major-cycles", s.major_cycles),
    ];
    let mut pairs = Vec::new();
    for (k, n) in entries {
        let key = vm.heap.string_value(k);
        let pair = vm.heap.qlist(&[key, Value::Num(n as i64)]);
        pairs.push(pair);
    }
    ret(vm.heap.qlist(&pairs))
});
