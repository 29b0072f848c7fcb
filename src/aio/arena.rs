//! Allocator arenas of the threads that serve requests.
//!
//! jemalloc is built with `narenas:1` (`.cargo/config.toml`): a thread
//! allocates from arena 0 unless it is moved to another. A script's
//! evaluator thread then makes no arena of its own at start-up (one more
//! arena was some 30 page faults and 0.1-0.17 ms of every start;
//! docs/PERFORMANCE.md), while the threads that serve side by side —
//! worker isolates, demo lanes, the async runtime's threads — each move
//! to an arena of a pool, so that they do not wait on one arena's lock
//! when their thread caches fill or empty. The evaluator (the main
//! isolate) keeps arena 0.
//!
//! The pool grows to four arenas per core, as many as jemalloc makes on
//! its own; past that, threads share them in turn. Arenas are never
//! destroyed, so threads that come and go (the runtime's blocking
//! threads) reuse the pool's rather than each making one.

use std::ffi::{c_void, CStr};
use std::sync::Mutex;

/// The pool: arena indices, and how many threads were moved so far.
struct Pool {
    arenas: Vec<u32>,
    turn: usize,
}

/// Moves the calling thread to an arena of the pool (a new one while the
/// pool is not full). Where jemalloc cannot make one, the thread stays
/// where it is: only speed depends on it.
pub fn spread_thread() {
    static POOL: Mutex<Pool> = Mutex::new(Pool {
        arenas: Vec::new(),
        turn: 0,
    });
    let arena = {
        let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
        if pool.arenas.len() < 4 * super::cores() {
            if let Some(arena) = create() {
                pool.arenas.push(arena);
            }
        }
        if pool.arenas.is_empty() {
            return;
        }
        pool.turn += 1;
        pool.arenas[(pool.turn - 1) % pool.arenas.len()]
    };
    set_thread_arena(arena);
}

/// A new arena's index (`arenas.create`).
fn create() -> Option<u32> {
    read(c"arenas.create")
}

/// Reads the `unsigned` setting `name` (for `arenas.create`, makes an
/// arena and gives its index).
fn read(name: &CStr) -> Option<u32> {
    let mut value: u32 = 0;
    let mut len = std::mem::size_of::<u32>();
    // SAFETY: `name` is NUL-terminated (a `CStr`). The settings read here
    // are `unsigned` (jemalloc(3)), which `value` is (`u32`, the C
    // `unsigned` of every platform Rust supports jemalloc on); `oldlenp`
    // gives its size, and jemalloc writes at most that many bytes there
    // (it refuses a size that differs). No new value is passed (null, 0);
    // `arenas.create` then gives the arena the default extent hooks.
    let status = unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr(),
            &mut value as *mut u32 as *mut c_void,
            &mut len,
            std::ptr::null_mut(),
            0,
        )
    };
    (status == 0 && len == std::mem::size_of::<u32>()).then_some(value)
}

/// Binds the calling thread to arena `index` (`thread.arena`).
fn set_thread_arena(mut index: u32) {
    // SAFETY: the name is a NUL-terminated string. `thread.arena` is an
    // `unsigned` (jemalloc(3)); the new value points at a `u32` that lives
    // through the call, with its size; no old value is asked for (null
    // pointers). An index that is not an arena is refused with an error
    // code, which leaves the thread where it was.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            c"thread.arena".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            &mut index as *mut u32 as *mut c_void,
            std::mem::size_of::<u32>(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread_arena() -> u32 {
        read(c"thread.arena").expect("thread.arena")
    }

    #[test]
    fn a_spread_thread_leaves_the_shared_arena_and_threads_past_the_pool_share_its_arenas() {
        let moved: Vec<u32> = (0..4 * crate::aio::cores() + 3)
            .map(|_| {
                std::thread::spawn(|| {
                    spread_thread();
                    let arena = thread_arena();
                    // It allocates from there.
                    let v: Vec<u64> = (0..1000).collect();
                    assert_eq!(v.iter().sum::<u64>(), 499_500);
                    arena
                })
                .join()
                .expect("thread")
            })
            .collect();
        let mut distinct = moved.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(moved.iter().all(|&a| a != 0), "{:?}", moved);
        // Other tests of this process may have grown the pool too, but it
        // never holds more than four arenas per core.
        assert!(distinct.len() <= 4 * crate::aio::cores(), "{:?}", moved);
        assert!(distinct.len() < moved.len(), "{:?}", moved);
    }
}
