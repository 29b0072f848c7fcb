//! The HTTP/2 server's request path: arbitrary bytes after a client's
//! connection preface, served by the real connection code with a Lisp
//! handler. See fuzz/src/http_server.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    valkyria_fuzz::http_server::serve(data);
});
