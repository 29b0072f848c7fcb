//! The `valk` command: runs files or an expression, or opens the REPL.
//! Only argument handling lives here; see lib.rs for the interpreter.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use valkyria::{aio, repl, Interpreter, Mode};

/// Native stack for the evaluator thread. Only touched pages use memory;
/// the VM turns deeper recursion into an Error well before the end.
const EVALUATOR_STACK: usize = 4 << 30;

#[derive(Parser)]
#[command(
    name = "valk",
    version,
    about = "Valkyria: a small, fast Lisp for scripts, API glue and HTTP/2 services",
    long_about = "Runs each FILE in order. With no FILE and no -e, opens the REPL."
)]
struct Cli {
    /// Evaluate EXPR and print its value (may be repeated).
    #[arg(short = 'e', long = "eval", value_name = "EXPR")]
    eval: Vec<String>,
    /// Source files to run, in order.
    files: Vec<String>,
}

fn run(cli: Cli) -> i32 {
    let repl_mode = cli.files.is_empty() && cli.eval.is_empty();
    let mut interp = Interpreter::new(if repl_mode { Mode::Repl } else { Mode::Script });
    interp.vm.set_native_stack(EVALUATOR_STACK);
    if repl_mode {
        return repl::run(&mut interp);
    }
    // Worker isolates load the same program when a server has handlers.
    let program = cli
        .files
        .iter()
        .map(|f| aio::ProgramPart::File(f.clone()))
        .chain(cli.eval.iter().map(|e| aio::ProgramPart::Expr(e.clone())))
        .collect();
    aio::set_program(program);
    for file in &cli.files {
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
    let cli = Cli::parse();
    let evaluator = std::thread::Builder::new()
        .name("evaluator".into())
        .stack_size(EVALUATOR_STACK)
        .spawn(move || run(cli));
    let code = match evaluator {
        Ok(handle) => handle.join().unwrap_or_else(|_| {
            eprintln!("valk: internal error: the evaluator panicked");
            70
        }),
        Err(e) => {
            eprintln!("valk: cannot start the evaluator thread: {}", e);
            71
        }
    };
    let _ = std::io::stdout().flush();
    ExitCode::from(code.clamp(0, 255) as u8)
}
