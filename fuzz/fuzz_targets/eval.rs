//! Reader + evaluator on arbitrary source, with step, heap and stack
//! limits, sandboxed. See fuzz/src/lib.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| valkyria_fuzz::eval(data, valkyria_fuzz::Collection::Normal));
