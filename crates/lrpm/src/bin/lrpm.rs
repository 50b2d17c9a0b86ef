//! `lrpm`: the supervisor. See `lrpm --help`.

/// jemalloc, not glibc's malloc: a farm grown to 3,000 jobs and cut back to
/// 1,000 kept glibc's heap fragmented, half again a fresh farm's memory,
/// which `malloc_trim` could not give back; jemalloc's runs of one size
/// class are returned once empty. See docs/decisions.md. The spawned child
/// never allocates, so the allocator does not matter between clone and exec.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    lrpm::run(std::env::args_os())
}
