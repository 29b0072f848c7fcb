//! Drives the `valk` REPL through a real pseudo-terminal: multi-line input,
//! Ctrl-C abandoning a line and interrupting a running loop (definitions
//! survive), errors that do not end the session, and Ctrl-D to exit. The
//! REPL survives everything: an Error, Ctrl-C during evaluation, a runaway
//! allocation under `VALK_MAX_HEAP_MB`, and (through `repl::evaluate`) a
//! panic inside a builtin; definitions made before survive each.

use std::process::Command;

use rexpect::session::{spawn_command, PtySession};
use valkyria::repl::{evaluate, Entry};
use valkyria::{Interpreter, Mode};

const PROMPT: &str = "valkyria> ";

#[test]
fn repl_session_through_a_pty() -> Result<(), rexpect::error::Error> {
    let history = std::env::temp_dir().join(format!("valk-history-{}", std::process::id()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_valk"));
    cmd.env("VALK_HISTORY", &history);
    cmd.env("TERM", "xterm");
    let mut p = spawn_command(cmd, Some(20_000))?;
    p.exp_string(PROMPT)?;

    // A definition, then multi-line input completed when brackets balance.
    p.send_line("(def {x} 42)")?;
    p.exp_string("()")?;
    p.exp_string(PROMPT)?;
    p.send_line("(+ x")?;
    p.send_line("  1)")?;
    p.exp_string("43")?;
    p.exp_string(PROMPT)?;

    // An error is reported and the session continues.
    p.send_line("(head {})")?;
    p.exp_string("Error:")?;
    p.exp_string(PROMPT)?;

    // Ctrl-C while typing abandons the line.
    p.send("(+ 1 ")?;
    p.send_control('c')?;
    p.exp_string(PROMPT)?;
    p.send_line("(* x 2)")?;
    p.exp_string("84")?;
    p.exp_string(PROMPT)?;

    // Ctrl-C interrupts an endless loop; earlier definitions survive.
    define(&mut p, "(fun {spin n} {spin (+ n 1)})")?;
    p.send_line("(spin 0)")?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    p.send_control('c')?;
    p.exp_string("interrupted")?;
    p.exp_string(PROMPT)?;
    p.send_line("(- x 2)")?;
    p.exp_string("40")?;
    p.exp_string(PROMPT)?;

    // Help on a name, and Tab completing a bound name.
    p.send_line("(doc map)")?;
    p.exp_string("(map f l)")?;
    p.exp_string("The list of (f x)")?;
    p.exp_string(PROMPT)?;
    p.send("(+ 1 (string/to-num")?;
    p.send("\t")?;
    p.send_line(" \"41\"))")?;
    p.exp_string("42")?;
    p.exp_string(PROMPT)?;

    // Ctrl-D exits.
    p.send_control('d')?;
    p.exp_eof()?;

    let saved = std::fs::read_to_string(&history).unwrap_or_default();
    let _ = std::fs::remove_file(&history);
    assert!(
        saved.contains("(def {x} 42)"),
        "history was saved: {saved:?}"
    );
    Ok(())
}

fn spawn_repl(
    heap_mb: Option<u32>,
) -> Result<(PtySession, std::path::PathBuf), rexpect::error::Error> {
    let history = std::env::temp_dir().join(format!(
        "valk-history-{}-{}",
        std::process::id(),
        heap_mb.unwrap_or(0)
    ));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_valk"));
    cmd.env("VALK_HISTORY", &history);
    cmd.env("TERM", "xterm");
    if let Some(mb) = heap_mb {
        cmd.env("VALK_MAX_HEAP_MB", mb.to_string());
    }
    let mut p = spawn_command(cmd, Some(60_000))?;
    p.exp_string(PROMPT)?;
    Ok((p, history))
}

/// Sends a definition and waits for its `()`: rustyline may drop input
/// typed ahead of the next prompt.
fn define(p: &mut PtySession, line: &str) -> Result<(), rexpect::error::Error> {
    p.send_line(line)?;
    p.exp_string("\n()")?;
    p.exp_string(PROMPT)?;
    Ok(())
}

#[test]
fn repl_survives_errors_interrupts_and_runaway_allocation() -> Result<(), rexpect::error::Error> {
    let (mut p, history) = spawn_repl(Some(64))?;
    define(&mut p, "(def {kept} {1 2 3})")?;
    define(&mut p, "(fun {twice l} {join l l})")?;

    // An Error.
    p.send_line("(error \"deliberate\")")?;
    p.exp_string("Error: deliberate")?;
    p.exp_string(PROMPT)?;
    p.send_line("(len kept)")?;
    p.exp_string("3")?;
    p.exp_string(PROMPT)?;

    // A runaway allocation: doubling a list until the heap limit.
    define(&mut p, "(fun {grow l} {grow (join l l)})")?;
    p.send_line("(grow {1})")?;
    p.exp_string("Error: out of memory (limit 64 MB)")?;
    p.exp_string(PROMPT)?;
    p.send_line("(twice kept)")?;
    p.exp_string("{1 2 3 1 2 3}")?;
    p.exp_string(PROMPT)?;
    // The memory is given back: the same allocation fails the same way.
    p.send_line("(grow {1})")?;
    p.exp_string("Error: out of memory (limit 64 MB)")?;
    p.exp_string(PROMPT)?;

    // Ctrl-C during an evaluation that allocates as it loops.
    define(&mut p, "(fun {churn n} {do (range 0 100) (churn (+ n 1))})")?;
    p.send_line("(churn 0)")?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    p.send_control('c')?;
    p.exp_string("interrupted")?;
    p.exp_string(PROMPT)?;

    // A value too large to print is an Error, not a flood of text.
    define(
        &mut p,
        "(fun {dbl a n} {if (== n 0) {a} {dbl (list a a) (- n 1)}})",
    )?;
    p.send_line("(dbl {1} 60)")?;
    p.exp_string("Error: value too large to print")?;
    p.exp_string(PROMPT)?;

    // Everything defined before is still there.
    p.send_line("(str (len kept) (twice {0}))")?;
    p.exp_string("\"3{0 0}\"")?;
    p.exp_string(PROMPT)?;
    p.send_control('d')?;
    p.exp_eof()?;
    let _ = std::fs::remove_file(&history);
    Ok(())
}

#[test]
fn ctrl_c_stops_a_long_range() -> Result<(), rexpect::error::Error> {
    let (mut p, history) = spawn_repl(Some(8000))?;
    // One builtin call building 99,999,999 cells: seconds of work with no
    // call back into the evaluator.
    p.send_line("(len (range 0 99999999))")?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    p.send_control('c')?;
    p.exp_string("Error: interrupted")?;
    p.exp_string(PROMPT)?;
    p.send_line("(len (range 0 10))")?;
    p.exp_string("10")?;
    p.exp_string(PROMPT)?;
    p.send_control('d')?;
    p.exp_eof()?;
    let _ = std::fs::remove_file(&history);
    Ok(())
}

/// A builtin that panics, as a bug inside a builtin would. Only this test
/// binds it; ordinary programs cannot reach it.
fn panicking_builtin(
    _vm: &mut valkyria::Vm,
    _args: &[valkyria::Value],
    _env: valkyria::heap::Env,
) -> Result<valkyria::vm::Flow, valkyria::heap::Gc> {
    panic!("deliberate panic in a builtin")
}

#[test]
fn a_panic_inside_a_builtin_is_an_error_and_the_session_continues() {
    // Like `valk`, on a thread with a large native stack.
    const STACK: usize = 256 << 20;
    std::thread::Builder::new()
        .stack_size(STACK)
        .spawn(|| panic_recovery(STACK))
        .unwrap()
        .join()
        .unwrap();
}

fn panic_recovery(stack: usize) {
    let mut interp = Interpreter::new(Mode::Repl);
    interp.vm.set_native_stack(stack);
    interp
        .vm
        .define_builtin("test/panic", "(test/panic _)", "Panics.", panicking_builtin);
    assert_eq!(
        evaluate(&mut interp, "(def {x} 42)"),
        Entry::Value("()".into())
    );
    assert_eq!(
        evaluate(
            &mut interp,
            "(fun {deep n} {if (== n 0) {test/panic 1} {+ 1 (deep (- n 1))}})"
        ),
        Entry::Value("()".into())
    );
    // At top level, deep inside nested calls, and inside `try`.
    for entry in [
        "(test/panic 1)",
        "(deep 1000)",
        "(try {deep 10} (\\ {m} {m}))",
    ] {
        match evaluate(&mut interp, entry) {
            Entry::Error(e) => assert!(
                e.contains("internal error: deliberate panic in a builtin"),
                "{entry}: {e}"
            ),
            other => panic!("{entry}: {other:?}"),
        }
        assert_eq!(evaluate(&mut interp, "x"), Entry::Value("42".into()));
    }
    // The evaluator is usable in full afterwards: deep recursion, errors,
    // collection.
    assert_eq!(
        evaluate(
            &mut interp,
            "(fun {count n} {if (== n 0) {0} {+ 1 (count (- n 1))}}) (count 10000)"
        ),
        Entry::Value("10000".into())
    );
    assert!(matches!(
        evaluate(&mut interp, "(head {})"),
        Entry::Error(_)
    ));
    assert_eq!(
        evaluate(&mut interp, "(do (gc/collect 0) (+ x 1))"),
        Entry::Value("43".into())
    );
}
