//! Evaluator and printer edge cases through the embedding API.

use valkyria::{Interpreter, Mode};

fn run(src: &str) -> String {
    let mut i = Interpreter::new(Mode::Repl);
    match i.eval_to_string(src) {
        Ok(s) => s,
        Err(e) => e.lines().next().unwrap_or_default().to_string(),
    }
}

#[test]
fn printer_readable_forms() {
    assert_eq!(run("42"), "42");
    assert_eq!(run("1.5"), "1.5");
    assert_eq!(run("(* 1.0 3)"), "3.0");
    assert_eq!(run("1e100"), "1e100");
    assert_eq!(run("\"a\\nb\""), "\"a\\nb\"");
    assert_eq!(run("{1 \"a\" {2 3}}"), "{1 \"a\" {2 3}}");
    assert_eq!(run("+"), "<builtin +>");
    assert_eq!(run("(\\ {x y} {+ x y})"), "(\\ {x y} {+ x y})");
    assert_eq!(run("()"), "()");
    assert_eq!(run("{}"), "{}");
    assert_eq!(run("(show {a \"b\"})"), "\"{a \\\"b\\\"}\"");
}

#[test]
fn sexpression_rules() {
    assert_eq!(run("(5)"), "5", "one element: its value, no call");
    assert_eq!(run("(+)"), "<builtin +>");
    assert_eq!(run("(1 2 3)"), "3", "non-function head: sequence");
    assert_eq!(run("(eval {+ 1 2})"), "3");
    assert_eq!(run("(eval (list + 1 2))"), "3");
    assert_eq!(run("(eval (join {+} {1 2}))"), "3");
}

#[test]
fn errors_and_overflow() {
    assert_eq!(run("x"), "Error: symbol `x` is not bound");
    assert_eq!(run("(+ 9223372036854775807 1)"), "Error: integer overflow");
    assert_eq!(run("(* 9223372036854775807 2)"), "Error: integer overflow");
    assert_eq!(run("(- -9223372036854775807 2)"), "Error: integer overflow");
    assert_eq!(run("(/ 1 0)"), "Error: division by zero");
    assert_eq!(run("(% 1 0)"), "Error: division by zero");
    assert_eq!(
        run("((\\ {x y} {x}) 1 2 3)"),
        "Error: expected 2 arguments, got 3"
    );
    assert_eq!(
        run("(if \"yes\" {1} {2})"),
        "Error: `if` condition must be a Number, got String"
    );
    assert!(run("(head {})").starts_with("Error:"));
    assert_eq!(run("(try {error \"boom\"} (\\ {m} {m}))"), "\"boom\"");
}

#[test]
fn deep_recursion_is_an_error_not_a_crash() {
    let out = run("(fun {deep n} {if (== n 0) {0} {+ 1 (deep (- n 1))}}) (deep 100000000)");
    assert!(
        out.starts_with("Error: stack depth exceeded (limit "),
        "{out}"
    );
}

#[test]
fn the_prelude_maps_a_list_of_a_million() {
    // LANGUAGE.md: the default depth limit is at least 1,000,000 calls,
    // as the prelude's `map` recurses once per element.
    let n = 1_000_000;
    for f in ["map (\\ {x} {x})", "filter (\\ {x} {1})", "take 1000000"] {
        assert_eq!(
            run(&format!("(len ({f} (range 0 {n})))")),
            n.to_string(),
            "{f}"
        );
    }
}

#[test]
fn scope_closures_and_dynamic_fallback() {
    assert_eq!(run("(fun {adder x} {\\ {y} {+ x y}}) ((adder 1) 2)"), "3");
    // A Q-expression written in one function, evaluated inside another.
    assert_eq!(
        run("(fun {runner q} {eval q}) (fun {writer secret} {runner {+ secret 1}}) (writer 41)"),
        "42"
    );
    assert_eq!(
        run("(fun {f n} {select {(== n 1) 100} {otherwise 999}}) (list (f 1) (f 2))"),
        "{100 999}"
    );
    assert_eq!(run("(fun {g x} {do (= {y} (* x 2)) (+ y 1)}) (g 5)"), "11");
    assert_eq!(run("(def {a b} 1 2) (+ a b)"), "3");
}

#[test]
fn rebinding_special_names_is_honoured() {
    // Inlined forms fall back to ordinary calls once rebound.
    assert_eq!(run("(def {+} -) (+ 5 3)"), "2");
    assert_eq!(run("(fun {f if} {if 1 2}) (f (\\ {a b} {b}))"), "2");
    assert_eq!(run("(def {if} (\\ {c a b} {a})) (if 0 {1} {2})"), "{1}");
}

#[test]
fn partial_application_and_varargs() {
    assert_eq!(
        run("(fun {add x y} {+ x y}) (def {add5} (add 5)) (add5 10)"),
        "15"
    );
    assert_eq!(
        run("(def {add5} ((\\ {x y} {+ x y}) 5)) add5"),
        "(\\ {y} {+ x y})"
    );
    assert_eq!(
        run("(fun {f x & r} {r}) (list (f 1) (f 1 2 3))"),
        "{{} {2 3}}"
    );
}

#[test]
fn tail_calls_run_in_constant_space() {
    assert_eq!(
        run("(fun {loop n} {if (== n 0) {\"done\"} {loop (- n 1)}}) (loop 1000000)"),
        "\"done\""
    );
    assert_eq!(
        run("(fun {even n} {if (== n 0) {1} {odd (- n 1)}}) (fun {odd n} {if (== n 0) {0} {even (- n 1)}}) (even 1000001)"),
        "0"
    );
    assert_eq!(
        run("(fun {s n} {select {(== n 0) 0} {otherwise (s (- n 1))}}) (s 1000000)"),
        "0"
    );
    assert_eq!(
        run("(fun {l n} {let {if (== n 0) {7} {l (- n 1)}}}) (l 100000)"),
        "7"
    );
}

#[test]
fn collector_reclaims_garbage() {
    let out = run(
        "(fun {churn n} {if (== n 0) {0} {do (range 0 100) (churn (- n 1))}}) (churn 20000) (gc/collect {})",
    );
    let live: i64 = out.parse().expect("a number");
    assert!(live < 20_000, "live objects after collection: {live}");
}

#[test]
fn a_printed_map_evaluates_back_to_an_equal_map() {
    let mut i = Interpreter::new(Mode::Repl);
    let shown = i
        .eval_to_string("(def {m} (map/new \"b\" {1 2.5} 3 (map/new {}) \"a\" \"x\\ny\")) m")
        .unwrap();
    assert_eq!(
        shown,
        "(map/new 3 (map/new {}) \"a\" \"x\\ny\" \"b\" {1 2.5})"
    );
    let again = i.eval_to_string(&format!("(== m {})", shown)).unwrap();
    assert_eq!(again, "1");
    assert_eq!(run("(type (map/new {}))"), "\"Map\"");
}

#[test]
fn a_partial_application_keeps_the_scope_it_made_for_the_caller() {
    // Binding `(add 1)` made `f`'s scope; the tail calls after it must
    // still run there (`x` was not found: `eval` ran in no scope).
    assert_eq!(
        run("(fun {add a b} {+ a b}) (fun {f x} {do (add 1) (eval {x})}) (f 5)"),
        "5"
    );
    assert_eq!(
        run("(fun {add a b} {+ a b}) (fun {peek _} {secret}) (fun {g secret} {do (add 1) (peek 0)}) (g 6)"),
        "6"
    );
    assert_eq!(
        run("(fun {h x & r} {list x r}) (fun {peek _} {secret}) (fun {k secret} {do (h 1 2) (peek 0)}) (k 7)"),
        "7"
    );
}
