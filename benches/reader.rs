//! Reader throughput on a generated 10 MB source file (target: 50 MB/s).
//! Run with `cargo bench --bench reader`.

use divan::counter::BytesCount;
use divan::Bencher;
use valkyria::heap::Heap;
use valkyria::reader::read_all;
use valkyria::symbol::Symbols;

/// The allocator `valk` itself uses (src/main.rs), so the time is that of
/// reading in the interpreter, not under the system allocator.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    divan::main();
}

/// About 10 MB of typical source: definitions, calls, strings, comments.
fn source() -> String {
    let chunk = "; a function and some data\n\
                 (fun {fib n} {if (< n 2) {n} {+ (fib (- n 1)) (fib (- n 2))}})\n\
                 (def {xs} {1 2 3 4.5 -6 \"seven\\n\" {8 9} sym/bol})\n\
                 (print (map (\\ {x} {* x 2}) (filter (\\ {x} {> x 1}) xs)))\n";
    let mut s = String::with_capacity(10 << 20);
    while s.len() < 10 << 20 {
        s.push_str(chunk);
    }
    s
}

#[divan::bench(sample_count = 10)]
fn read_10mb(bencher: Bencher) {
    let src = source();
    // What was read is handed back, so divan drops it after the timed
    // loop: the time is that of reading into a fresh heap, not of freeing
    // the heap afterwards (which an interpreter does when it ends, if ever).
    bencher.counter(BytesCount::new(src.len())).bench_local(|| {
        let mut heap = Heap::new(1 << 30);
        let mut syms = Symbols::default();
        let forms =
            read_all(&mut heap, &mut syms, divan::black_box(&src), 1).expect("valid source");
        (heap, syms, forms)
    });
}
