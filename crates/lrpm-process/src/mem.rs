//! The allocator's settings: glibc's malloc, tuned for a supervisor whose
//! heap grows in bursts (a crash storm, a large configuration) and must
//! shrink back.

/// Makes glibc's malloc use one arena for every thread of the process.
/// lrpm's threads (the event loop, the output writer, the blocking pool that
/// reads configurations) rarely allocate at the same time, and an arena per
/// thread kept megabytes of freed memory each (the thread that parses a
/// large configuration most of all). Call it before any thread starts.
pub fn one_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; M_ARENA_MAX takes effect
    // for threads that have not allocated yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Gives the heap's free pages back to the system. glibc keeps what a crash
/// storm or a large configuration freed, fragmented, in its heaps: without
/// this lrpm's memory would stay at its high-water mark.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no precondition; it only returns free memory
    // of every arena to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}
