//! Running source text and files: read every form, then compile and run
//! each in the global scope. Read errors become Error values that carry the
//! position they name.

use crate::heap::Gc;
use crate::reader;
use crate::value::Value;
use crate::vm::Vm;

impl Vm {
    /// Reads and runs `src`; `name` is how positions in it are reported.
    /// Returns the last form's value.
    pub fn run_source(&mut self, src: &str, name: &str) -> Result<Value, Gc> {
        let file = self.add_file(name);
        let forms = match reader::read_all(&mut self.heap, &mut self.syms, src, file) {
            Ok(forms) => forms,
            Err(e) => return Err(self.error_at(e.message, e.span)),
        };
        // Keep every form alive until it has run.
        let base = self.stack.len();
        self.stack.extend(forms.iter().map(|(v, _)| *v));
        let mut last = Value::Unit;
        for (v, span) in forms {
            match self.eval_value(v, span, None) {
                Ok(result) => last = result,
                Err(e) => {
                    self.stack.truncate(base);
                    return Err(e);
                }
            }
        }
        self.stack.truncate(base);
        Ok(last)
    }

    /// Reads a file and runs it. Unreadable and non-UTF-8 files are Errors
    /// naming the path and the reason. While it runs, the file is on the
    /// stack of files being loaded (for `import`'s cycle check).
    pub fn load_file(&mut self, path: &str) -> Result<Value, Gc> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => return Err(self.error(format!("cannot read `{}`: {}", path, io_reason(&e)))),
        };
        let text = match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                // Pointed at like a read error: the line and column of
                // the first byte that is not part of a character.
                let at = e.utf8_error().valid_up_to();
                let valid = std::str::from_utf8(&e.as_bytes()[..at]).unwrap_or_default();
                let file = self.add_file(path);
                let span = reader::end_position(valid, file);
                return Err(self.error_at(
                    format!("cannot read `{}`: not valid UTF-8 (byte {})", path, at),
                    span,
                ));
            }
        };
        let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.into());
        let loading = &mut self.library.modules.loading;
        loading.push((canonical, path.to_string()));
        let depth = loading.len();
        let result = self.run_source(&text, path);
        self.library.modules.loading.truncate(depth - 1);
        result
    }
}

/// The OS reason for an I/O error, without Rust's "(os error N)" suffix.
pub fn io_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}
