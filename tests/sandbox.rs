//! The sandbox the fuzzers run code in (`Interpreter::sandboxed`): a step
//! budget, a heap limit, and no way to end the process or read files. Also
//! regression cases for what fuzzing and hardening found (see
//! docs/FUZZING.md), run under the same limits as the eval fuzz target.

use valkyria::{Interpreter, Limits};

const STACK: usize = 256 << 20;

/// Runs `src` in a fresh sandboxed interpreter on a thread with its own
/// stack; returns the readable value or the first line of the Error.
fn run_with(limits: Limits, src: &str) -> String {
    let src = src.to_string();
    std::thread::Builder::new()
        .stack_size(STACK)
        .spawn(move || {
            let mut interp = Interpreter::sandboxed(limits);
            interp.vm.set_native_stack(STACK);
            let out = match interp.eval_str(&src, "<test>") {
                Ok(v) => interp.vm.show(v),
                Err(e) => e.lines().next().unwrap_or_default().to_string(),
            };
            assert_eq!(interp.exit_requested(), None, "no exit from the sandbox");
            out
        })
        .unwrap()
        .join()
        .expect("the evaluator panicked")
}

/// The limits of the eval fuzz target (fuzz/src/lib.rs).
fn fuzz_limits() -> Limits {
    Limits {
        steps: Some(1_000_000),
        heap_bytes: Some(64 << 20),
        ..Limits::default()
    }
}

fn run(src: &str) -> String {
    run_with(fuzz_limits(), src)
}

#[test]
fn step_budget_stops_endless_loops() {
    assert_eq!(
        run("(fun {spin n} {spin (+ n 1)}) (spin 0)"),
        "Error: step limit exceeded"
    );
    // `try` cannot catch it and keep going.
    assert_eq!(
        run("(fun {spin n} {spin (+ n 1)}) (try {spin 0} (\\ {m} {m}))"),
        "Error: step limit exceeded"
    );
    // Work within the budget is unaffected.
    assert_eq!(run("(sum (map (\\ {x} {* x x}) (range 0 100)))"), "328350");
}

#[test]
fn step_budget_counts_calls() {
    let limits = Limits {
        steps: Some(10),
        ..Limits::default()
    };
    let src = "(fun {count n} {if (== n 0) {0} {count (- n 1)}}) (count 5)";
    assert_eq!(run_with(limits, src), "0");
    let src = "(fun {count n} {if (== n 0) {0} {count (- n 1)}}) (count 50)";
    assert_eq!(run_with(limits, src), "Error: step limit exceeded");
}

#[test]
fn step_budget_counts_every_call_from_the_first() {
    // The budget holds from the first call (none left over from loading
    // the prelude), and counts every call of a builtin once: `fun`, each
    // `count`, builtins called in tail position or not, `==` on lists, and
    // the `eval` and `head` of `fst` even when no call is made for them.
    let exact = |steps: u64, src: &str| {
        let limits = |steps| Limits {
            steps: Some(steps),
            ..Limits::default()
        };
        let enough = run_with(limits(steps), src);
        let short = run_with(limits(steps - 1), src);
        assert!(!enough.starts_with("Error: step limit"), "{src}: {enough}");
        assert_eq!(short, "Error: step limit exceeded", "{src}");
    };
    exact(
        7,
        "(fun {count n} {if (== n 0) {0} {count (- n 1)}}) (count 5)",
    );
    exact(
        12,
        "(fun {walk l} {if (== l nil) {0} {walk (tail l)}}) (walk {1 2 3})",
    );
    exact(3, "(fun {f x} {head x}) (f {1})");
    exact(4, "(fun {f x} {eval {head x}}) (f {1})");
    exact(4, "(fun {f x} {list (len x) 1}) (f {1})");
    exact(3, "(fst {1 2})");
    exact(3, "(+ 1 (fst {1 2}))");
    exact(5, "(fun {first l} {fst l}) (first {1 2})");
    exact(5, "(fun {first l} {+ 0 (fst l)}) (first {1 2})");
    exact(3, "(def {y} 4) (fst {y 2})");
    exact(2, "(fun {dbl x} {* x 2}) (dbl 4)");
    exact(4, "(fun {dbl x} {* x 2}) (fun {t x} {dbl x}) (t 4)");
    exact(3, "(fun {add x y} {+ x y}) ((add 1) 2)");
    exact(4, "(fun {dbl x} {* x 2}) (+ (dbl 1) (dbl 2)) (dbl 3)");
    exact(18, "(map (\\ {x} {x}) {1 2})");
    // Base cases answered without a frame count as the calls they are.
    exact(
        6,
        "(fun {f n} {if (< n 2) {n} {+ (f (- n 1)) (f (- n 2))}}) (f 3)",
    );
    exact(5, "(fun {g n} {if (> n 0) {g (- n 1)} {n}}) (g 3)");
    exact(
        4,
        "(fun {p n} {if (< n 1) {n} {0}}) (fun {t x} {+ 1 (p x)}) (t 0)",
    );
    exact(
        4,
        "(fun {p n} {if (< n 1) {n} {0}}) (fun {t x} {p x}) (t 0)",
    );
    exact(
        6,
        "(fun {c n} {if (< n 2) {1} {+ (c (- n 1)) (c (- n 2))}}) (c 3)",
    );
}

#[test]
fn sandbox_cannot_exit_or_load() {
    assert_eq!(
        run("(exit 3)"),
        "Error: `exit` is not allowed in the sandbox"
    );
    assert_eq!(run("(shutdown 2)"), "2");
    assert_eq!(
        run("(load \"src/prelude.valk\")"),
        "Error: `load` is not allowed in the sandbox"
    );
    assert_eq!(
        run("(http2/listen aio \"127.0.0.1\" 0 \"\" \"\")"),
        "Error: `http2/listen` is not allowed in the sandbox"
    );
    assert_eq!(
        run("(http2/connect aio \"127.0.0.1\" 1)"),
        "Error: `http2/connect` is not allowed in the sandbox"
    );
    assert_eq!(
        run("(aio/sleep 1)"),
        "Error: `aio/sleep` is not allowed in the sandbox"
    );
    assert_eq!(
        run("(try {exit 1} (\\ {m} {m}))"),
        "\"`exit` is not allowed in the sandbox\""
    );
}

#[test]
fn heap_limit_applies_in_the_sandbox() {
    assert_eq!(
        run("(fun {grow l} {grow (join l l)}) (grow {1 2 3})"),
        "Error: out of memory (limit 64 MB)"
    );
}

const DOUBLE: &str = "(fun {dbl a n} {if (== n 0) {a} {dbl (list a a) (- n 1)}})";

#[test]
fn text_built_from_many_arguments_is_bounded() {
    // Each argument prints to about 12 MB: together they pass the heap
    // limit (`str` makes a String on the heap) ...
    let src = format!("{DOUBLE} (def {{big}} (dbl {{1}} 21)) (str big big big big big big)");
    assert_eq!(run(&src), "Error: out of memory (limit 64 MB)");
    // ... and, unbounded by the heap, the print limit.
    let unbounded = Limits::default();
    let src =
        format!("{DOUBLE} (def {{big}} (dbl {{1}} 23)) (print big big big big big big big big)");
    assert_eq!(
        run_with(unbounded, &src),
        "Error: value too large to print (over 256 MB of text)"
    );
}

#[test]
fn let_scope_survives_a_collection_under_the_heap_limit() {
    // `join` reserves heap; near the limit that collects, while `y` is held
    // only by the scope the `let` builtin made.
    let src = "(def {body} {do (= {y} (range 0 300000)) (range 0 300000) (range 0 300000) \
               (range 0 300000) (len (join y y)) (len y)}) (let body)";
    assert_eq!(run(src), "300000");
}

/// Runs `src` with the collector running after every 4 KB allocated, so a
/// value not rooted across a collection is freed while still in use.
fn run_stressed(src: &str) -> String {
    let src = src.to_string();
    std::thread::Builder::new()
        .stack_size(STACK)
        .spawn(move || {
            let mut interp = Interpreter::sandboxed(fuzz_limits());
            interp.vm.set_native_stack(STACK);
            interp.vm.heap.set_stress(4 << 10);
            match interp.eval_str(&src, "<test>") {
                Ok(v) => interp.vm.show(v),
                Err(e) => e.lines().next().unwrap_or_default().to_string(),
            }
        })
        .unwrap()
        .join()
        .expect("the evaluator panicked")
}

#[test]
fn values_stay_rooted_when_the_collector_runs_often() {
    let cases = [
        ("(def {body} {do (= {y} (range 0 10)) (map (\\ {x} {list x}) (range 0 300)) (len y)}) (let body)", "10"),
        ("(let {do (= {y} {1 2 3}) (eval {do (map (\\ {x} {list x x}) (range 0 300)) y})})", "{1 2 3}"),
        ("(foldl (\\ {acc x} {join acc (list x)}) {} (range 0 200))", ""),
        ("(len (filter (\\ {x} {== 0 (% x 3)}) (map (\\ {x} {* x x}) (range 0 500))))", "167"),
        ("(try {do (map (\\ {x} {list x}) (range 0 300)) (error \"e\")} (\\ {m} {join m (show (range 0 50))}))", ""),
        ("(def {sel} select) (fun {f n} {sel {(== n 0) (range 0 3)} {otherwise (do (range 0 100) (f (- n 1)))}}) (f 300)", "{0 1 2}"),
        ("(def {cs} case) (fun {g n} {cs (== n 0) {{1} (list n n)} {{0} (do (range 0 100) (g (- n 1)))}}) (g 300)", "{0 0}"),
        ("(def {acc} {}) (repeat (\\ {i} {def {acc} (cons (range 0 5) acc)}) 300) (len acc)", "300"),
        ("(str (map show (range 0 300)))", ""),
        ("(penv {}) (len (map (\\ {p} {fst p}) (penv {})))", ""),
    ];
    for (src, want) in cases {
        let got = run_stressed(src);
        assert!(!got.starts_with("Error"), "{src}: {got}");
        if !want.is_empty() {
            assert_eq!(got, want, "{src}");
        }
    }
}

#[test]
fn sandbox_denies_files_environment_and_imports() {
    let scratch = std::env::temp_dir().join(format!("valk-sandbox-{}", std::process::id()));
    let scratch = scratch.display().to_string();
    let kept = format!("{scratch}-kept");
    std::fs::write(&kept, "kept").unwrap();
    let cases = [
        "(file/read \"Cargo.toml\")".to_string(),
        format!("(file/write \"{scratch}\" \"x\")"),
        format!("(file/append \"{scratch}\" \"x\")"),
        "(file/exists? \"Cargo.toml\")".to_string(),
        "(file/list \".\")".to_string(),
        format!("(file/remove \"{kept}\")"),
        "(env/get \"HOME\")".to_string(),
        "(import \"src/prelude.valk\")".to_string(),
        "(def {f} file/read) (f \"Cargo.toml\")".to_string(),
    ];
    for src in &cases {
        let out = run(src);
        assert!(out.contains("not allowed in the sandbox"), "{src}: {out}");
    }
    assert!(!std::path::Path::new(&scratch).exists());
    assert!(std::path::Path::new(&kept).exists());
    let _ = std::fs::remove_file(&kept);
    // Every builtin of a denied family is covered, including later ones.
    let interp = Interpreter::sandboxed(fuzz_limits());
    for b in &interp.vm.builtins {
        if ["file/", "env/"].iter().any(|f| b.name.starts_with(f)) || b.name == "import" {
            let sym = interp.vm.syms.lookup(b.name).unwrap();
            let bound = interp.vm.global(sym).map(|v| interp.vm.show(v));
            assert_eq!(
                bound.as_deref(),
                Some("<builtin sandbox/denied>"),
                "{}",
                b.name
            );
        }
    }
}
