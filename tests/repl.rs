//! Drives the `valk` REPL through a real pseudo-terminal: multi-line input,
//! Ctrl-C abandoning a line and interrupting a running loop (definitions
//! survive), errors that do not end the session, and Ctrl-D to exit.

use std::process::Command;

use rexpect::session::spawn_command;

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
    p.send_line("(fun {spin n} {spin (+ n 1)})")?;
    p.exp_string(PROMPT)?;
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
