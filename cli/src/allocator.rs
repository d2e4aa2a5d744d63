//! The process's allocator: jemalloc, with settings that hand freed memory back to the system.
//!
//! The coordinator's history writer and the agents' result streams allocate many small,
//! short-lived values from several threads; glibc's allocator spent a third of the writer's time in
//! malloc and its arena locks. mimalloc took that back but kept ~200 MiB more than the live heap
//! while ingesting (pages freed by another thread than the one that allocated them); jemalloc with
//! the settings below runs at the same rate ~130 MiB lower (docs/benchmarks.md, ingest).

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read when it starts (before `main`); `_RJEM_MALLOC_CONF` in the
/// environment overrides them one by one.
/// - `background_thread`: a thread of jemalloc's purges freed pages, not the threads that free.
/// - `dirty_decay_ms:500`, `muzzy_decay_ms:0`: freed pages go back to the system within half a
///   second (shorter measured slower: 0 ms took 60 % more CPU per result).
/// - `percpu_arena:percpu`: an arena per CPU rather than four, which scales with the machine; on two
///   cores it measured the same as a single arena (337–353 MiB).
#[used]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: ConfString = ConfString(
    c"background_thread:true,dirty_decay_ms:500,muzzy_decay_ms:0,percpu_arena:percpu".as_ptr(),
);

/// A C string pointer jemalloc reads as `const char *malloc_conf`.
#[repr(transparent)]
struct ConfString(*const std::ffi::c_char);

// SAFETY: it points at a string literal, which is never written.
unsafe impl Sync for ConfString {}
