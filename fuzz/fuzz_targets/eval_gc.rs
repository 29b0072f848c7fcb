//! The eval target with the collector running after every 4 KB allocated,
//! to find values not rooted across a collection. See fuzz/src/lib.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| valkyria_fuzz::eval(data, valkyria_fuzz::Collection::Stress));
