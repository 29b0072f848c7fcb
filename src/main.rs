//! The `valk` command: runs files or an expression, or opens the REPL.
//! Only argument handling lives here; see lib.rs for the interpreter.

use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::ExitCode;

use clap::Parser;
use corosensei::stack::DefaultStack;
use corosensei::{Coroutine, CoroutineResult, Yielder};
use valkyria::{aio, repl, Interpreter, Mode};

/// jemalloc: see its entry in Cargo.toml for why.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Native stack of the evaluator. Only touched pages use memory;
/// the VM turns deeper recursion into an Error well before the end.
const EVALUATOR_STACK: usize = 4 << 30;

#[derive(Parser)]
#[command(
    name = "valk",
    version,
    about = "Valkyria: a small, fast Lisp for scripts, API glue and HTTP/2 services",
    long_about = "Runs FILE, then any further arguments ending in .valk, in order; \
        from the first argument that does not end in .valk, the rest are the \
        program's `args`. Everything after `--` is an argument too. \
        With no FILE and no -e, opens the REPL.",
    override_usage = "valk [OPTIONS] [FILE [MORE.valk…] [ARG…]] [-- ARG…]"
)]
struct Cli {
    /// Evaluate EXPR and print its value (may be repeated).
    #[arg(short = 'e', long = "eval", value_name = "EXPR")]
    eval: Vec<String>,
    /// Print the reference of every builtin and prelude function (Markdown).
    #[arg(long = "reference")]
    reference: bool,
    /// The script, more .valk files to run after it, then the program's arguments.
    #[arg(
        value_name = "FILE",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    positional: Vec<String>,
    /// Arguments after `--` (filled in before parsing).
    #[arg(skip)]
    after_dashes: Vec<String>,
}

/// Splits the command line into files to run and the program's `args`:
/// the first positional argument is a file; the following ones are files
/// while they end in `.valk`; the rest, and everything after `--`, are args.
fn files_and_args(positional: &[String], after_dashes: &[String]) -> (Vec<String>, Vec<String>) {
    let files_end = match positional
        .iter()
        .skip(1)
        .position(|a| !a.ends_with(".valk"))
    {
        Some(i) => i + 1,
        None => positional.len(),
    };
    let files = positional[..files_end].to_vec();
    let mut args = positional[files_end..].to_vec();
    args.extend_from_slice(after_dashes);
    (files, args)
}

fn run(cli: Cli) -> i32 {
    let (files, args) = files_and_args(&cli.positional, &cli.after_dashes);
    let repl_mode = files.is_empty() && cli.eval.is_empty() && !cli.reference;
    let mut interp = Interpreter::new(if repl_mode { Mode::Repl } else { Mode::Script });
    interp.vm.set_native_stack(EVALUATOR_STACK);
    interp.set_args(&args);
    if cli.reference {
        print!("{}", valkyria::reference(&mut interp));
        return 0;
    }
    if repl_mode {
        return repl::run(&mut interp);
    }
    // Worker isolates load the same program when a server has handlers.
    let program = std::iter::once(aio::ProgramPart::Args(args))
        .chain(files.iter().map(|f| aio::ProgramPart::File(f.clone())))
        .chain(cli.eval.iter().map(|e| aio::ProgramPart::Expr(e.clone())))
        .collect();
    aio::set_program(program);
    for file in &files {
        if let Err(rendered) = interp.run_file(file) {
            if let Some(code) = interp.exit_requested() {
                return aio::finish(&mut interp, code);
            }
            eprintln!("{}", rendered);
            return aio::finish(&mut interp, 1);
        }
        if let Some(code) = interp.exit_requested() {
            return aio::finish(&mut interp, code);
        }
    }
    for expr in &cli.eval {
        match interp.eval_str(expr, "<eval>") {
            Ok(v) => {
                // Printing the result is no builtin's doing: no position.
                interp.vm.span = valkyria::error::Span::NONE;
                match interp.vm.format_checked(v, true) {
                    Ok(shown) => println!("{}", shown),
                    Err(e) => {
                        eprintln!("{}", interp.vm.render_error(e));
                        return 1;
                    }
                }
            }
            Err(rendered) => {
                if let Some(code) = interp.exit_requested() {
                    return aio::finish(&mut interp, code);
                }
                eprintln!("{}", rendered);
                return aio::finish(&mut interp, 1);
            }
        }
        if let Some(code) = interp.exit_requested() {
            return aio::finish(&mut interp, code);
        }
    }
    // A program that started servers keeps serving until they stop.
    aio::run_until_idle(&mut interp)
}

fn main() -> ExitCode {
    // `--` ends the options and files: what follows goes to `args` as is.
    let mut command_line: Vec<String> = std::env::args().collect();
    let after_dashes = match command_line.iter().position(|a| a == "--") {
        Some(i) => command_line.split_off(i).split_off(1),
        None => Vec::new(),
    };
    let mut cli = Cli::parse_from(command_line);
    cli.after_dashes = after_dashes;
    // The program runs on a stack of its own, switched to on this thread
    // (a coroutine that never yields): one large enough for deep
    // recursion, with no second thread to start — a thread's creation,
    // its own signal stack and its wake-up on another core were a fifth of
    // a short script's run (docs/DECISIONS.md, "Deep recursion").
    let code = match DefaultStack::new(EVALUATOR_STACK) {
        Ok(stack) => {
            let mut evaluator = Coroutine::with_stack(stack, move |_: &Yielder<(), ()>, ()| {
                let code = run(cli);
                // The program is done and everything it opened is closed:
                // the process ends here, so nothing is torn down that the
                // exit would not free anyway.
                let _ = std::io::stdout().flush();
                std::process::exit(i32::from(code as u8))
            });
            // The evaluator ends the process when the program is done; it
            // comes back here only if it panicked.
            match catch_unwind(AssertUnwindSafe(|| evaluator.resume(()))) {
                Ok(CoroutineResult::Return(())) => unreachable!("the evaluator ends the process"),
                Ok(CoroutineResult::Yield(())) => unreachable!("the evaluator never yields"),
                Err(_) => {
                    eprintln!("valk: internal error: the evaluator panicked");
                    70
                }
            }
        }
        Err(e) => {
            eprintln!("valk: cannot make the evaluator's stack: {}", e);
            71
        }
    };
    let _ = std::io::stdout().flush();
    // The status is the code's low eight bits, as C's `exit` gives it:
    // `(exit -1)` ends with 255, never with a success.
    ExitCode::from(code as u8)
}
