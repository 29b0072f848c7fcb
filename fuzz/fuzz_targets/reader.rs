//! The reader on arbitrary bytes. See fuzz/src/lib.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| valkyria_fuzz::read(data));
