//! Per-worker memory: [`Counting`], a global allocator wrapper that counts
//! the bytes each worker's thread allocates and frees, and what the runtime
//! reads of it ([`live_bytes`]).
//!
//! Each generation of a worker, while it runs, has a counter of its own:
//! one of [`COUNTERS`] cells of a static array, each on a cache line of its
//! own, which the generation's thread claims when the generation starts
//! ([`bind`]) and gives back when it ends. The thread points a thread-local
//! at its cell; the allocator adds to the cell the thread-local points at,
//! which only that thread writes. The supervisor and the status read the
//! cell by the generation's [`WorkerStats`] (which is unique to the
//! generation and lives at least as long as its binding).
//!
//! What a figure means:
//!
//! - A generation starts from 0: its figure is what its thread allocated
//!   minus what it freed since the generation started. Memory an earlier
//!   generation of the same thread left and this one frees lowers the figure
//!   (it reads 0, never below).
//! - Counts are per thread: bytes allocated on the worker's thread and freed
//!   on another (a buffer sent to another thread and dropped there) stay
//!   counted on the worker; bytes another thread allocated and the worker
//!   frees lower it. Threads the worker starts (`spawn_blocking`, its own
//!   `std::thread`s) are not counted.
//! - Without [`Counting`] as the global allocator, nothing is counted, and
//!   [`live_bytes`] says so (`None`), rather than 0.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicIsize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError};

use forkless_worker::rt::host::WorkerStats;

/// A global allocator that counts, per worker, the bytes its thread holds,
/// around any other global allocator `A` (`std::alloc::System`, mimalloc,
/// jemalloc): with it, [`Cluster::status`](crate::Cluster::status),
/// `forkless-ctl status` and the Prometheus metrics
/// (`forkless_worker_memory_bytes`) show each worker's live bytes. Without
/// it they say the memory is unknown.
///
/// Its cost is one thread-local read and one add to a counter of the
/// worker's own per allocation, reallocation and free; BENCHMARKS.md
/// measures it on the HTTP and store benchmarks.
///
/// # What is counted
///
/// A worker's figure is the bytes its thread allocated minus the bytes it
/// freed since its generation started (a new generation starts from 0; a
/// figure below 0, from freeing what an earlier generation left, reads 0).
/// Counts are per thread: a buffer the worker allocates and another thread
/// frees stays counted on the worker; threads the worker starts
/// (`spawn_blocking`) are not counted. The figure is the bytes asked of the
/// allocator, not the memory the process holds: the allocator's own
/// overhead and caches are not in it.
///
/// # Examples
///
/// In a program (the `forkless` crate re-exports it as
/// `forkless::alloc::Counting`):
///
/// ```
/// #[global_allocator]
/// static ALLOC: forkless_runtime::Counting<std::alloc::System> =
///     forkless_runtime::Counting::new(std::alloc::System);
///
/// # fn main() {}
/// ```
#[derive(Debug, Default)]
pub struct Counting<A> {
    inner: A,
}

impl<A> Counting<A> {
    /// Counts what `inner` allocates and frees.
    pub const fn new(inner: A) -> Counting<A> {
        Counting { inner }
    }

    /// The allocator it wraps.
    pub const fn inner(&self) -> &A {
        &self.inner
    }
}

// SAFETY: every call is passed to `inner` as it came, and its result
// returned as it is; the wrapper only adds to a counter, which neither
// allocates nor unwinds, nor touches the memory handed out.
#[allow(unsafe_code)]
unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc`, passed on.
        let p = unsafe { self.inner.alloc(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc_zeroed`, passed on.
        let p = unsafe { self.inner.alloc_zeroed(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc`, passed on.
        unsafe { self.inner.dealloc(ptr, layout) };
        count(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract for `realloc`, passed on.
        let p = unsafe { self.inner.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // Both sizes are at most `isize::MAX` (`Layout`'s rule).
            count(new_size as isize - layout.size() as isize);
        }
        p
    }
}

/// How many generations can be counted at once in the process (every
/// cluster's together); one started beyond that has its memory unknown.
/// As many as a cluster may have workers (`config::MAX_WORKERS`).
pub(crate) const COUNTERS: usize = 4096;

/// A generation's count, on a cache line of its own: workers on different
/// cores write their counters on every allocation.
#[repr(align(128))]
struct Counter(AtomicIsize);

impl Counter {
    /// Only the thread bound to the counter writes it (see [`bind`]), so a
    /// load and a store do, without a locked read-modify-write.
    #[inline(always)]
    fn add(&self, delta: isize) {
        self.0
            .store(self.0.load(Relaxed).wrapping_add(delta), Relaxed);
    }
}

static COUNTER_CELLS: [Counter; COUNTERS] = [const { Counter(AtomicIsize::new(0)) }; COUNTERS];

/// Set once [`Counting`] has served an allocation: it is the global
/// allocator.
static COUNTING: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// The counter of the generation this thread runs, if any. Const, with
    /// no destructor: reading it neither allocates nor fails, even while
    /// the thread's other thread-locals are being destroyed.
    static CURRENT: Cell<Option<&'static Counter>> = const { Cell::new(None) };
}

#[inline(always)]
fn count(delta: isize) {
    let _ = CURRENT.try_with(|current| match current.get() {
        Some(counter) => counter.add(delta),
        None => {
            if !COUNTING.load(Relaxed) {
                COUNTING.store(true, Relaxed);
            }
        }
    });
}

/// Which counters are in use, and by whom.
struct Table {
    /// Counters never used yet start here.
    next: usize,
    /// Counters given back.
    free: Vec<usize>,
    /// A bound generation's `WorkerStats` address -> its counter.
    bound: BTreeMap<usize, usize>,
    /// Whether running out of counters was logged (once).
    warned: bool,
}

static TABLE: Mutex<Table> = Mutex::new(Table {
    next: 0,
    free: Vec::new(),
    bound: BTreeMap::new(),
    warned: false,
});

fn table() -> std::sync::MutexGuard<'static, Table> {
    TABLE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The generation that owns `stats`, as the table knows it.
fn key(stats: &WorkerStats) -> usize {
    std::ptr::from_ref(stats) as usize
}

/// This thread's allocations count towards the generation of `stats` until
/// the binding is dropped (on this thread: it is not `Send`). The count
/// starts from 0.
pub(crate) fn bind(stats: Arc<WorkerStats>) -> Binding {
    // Allocate once through the global allocator before the binding: if it
    // is `Counting`, `COUNTING` is set before any figure is read.
    drop(std::hint::black_box(Box::new(0u8)));
    let index = {
        let mut table = table();
        let index = table.free.pop().or_else(|| {
            (table.next < COUNTERS).then(|| {
                table.next += 1;
                table.next - 1
            })
        });
        if index.is_none() && !table.warned {
            table.warned = true;
            tracing::warn!(
                "every one of the {COUNTERS} memory counters is in use: a new worker \
                 generation's memory is unknown (and max_memory does not apply to it)"
            );
        }
        if let Some(index) = index {
            // This thread is the counter's only writer from now on: the
            // thread that held it last unbound itself before it gave it
            // back, under this lock.
            COUNTER_CELLS[index].0.store(0, Relaxed);
            table.bound.insert(key(&stats), index);
        }
        index
    };
    let previous = CURRENT.with(|current| current.replace(index.map(|i| &COUNTER_CELLS[i])));
    Binding {
        stats,
        index,
        previous,
        _not_send: PhantomData,
    }
}

/// A generation's counter, bound to the thread that runs it; dropping it
/// stops the count and gives the counter back.
pub(crate) struct Binding {
    /// Keeps the key's address from being reused while bound.
    stats: Arc<WorkerStats>,
    index: Option<usize>,
    previous: Option<&'static Counter>,
    _not_send: PhantomData<*const ()>,
}

impl Drop for Binding {
    fn drop(&mut self) {
        // Stop counting on this thread first: from here on, the counter may
        // be another thread's.
        let _ = CURRENT.try_with(|current| current.set(self.previous));
        if let Some(index) = self.index {
            let mut table = table();
            table.bound.remove(&key(&self.stats));
            table.free.push(index);
        }
    }
}

/// Whether [`Counting`] is the global allocator (it has served an
/// allocation).
pub(crate) fn is_counting() -> bool {
    COUNTING.load(Relaxed)
}

/// The live bytes of the generation that owns `stats`, while it runs:
/// `None` when [`Counting`] is not the global allocator, when the
/// generation is not running (or has not bound its counter yet), or when
/// every counter was in use as it started.
pub(crate) fn live_bytes(stats: &WorkerStats) -> Option<u64> {
    if !COUNTING.load(Relaxed) {
        return None;
    }
    let index = *table().bound.get(&key(stats))?;
    Some(COUNTER_CELLS[index].0.load(Relaxed).max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The unit tests run under the system allocator: nothing counts, and
    /// the figure is unknown; the binding still claims and gives back its
    /// counter. (`tests/alloc_counting.rs` installs `Counting`.)
    #[test]
    fn without_the_wrapper_the_figure_is_unknown_and_counters_are_reused() {
        assert!(!COUNTING.load(Relaxed));
        let stats = Arc::new(WorkerStats::default());
        let binding = bind(stats.clone());
        let index = binding.index.expect("a counter");
        assert_eq!(live_bytes(&stats), None);
        assert_eq!(table().bound.get(&key(&stats)), Some(&index));
        drop(binding);
        assert_eq!(table().bound.get(&key(&stats)), None);
        assert!(CURRENT.with(Cell::get).is_none());
    }

    #[test]
    fn the_wrapper_counts_on_the_bound_thread_only() {
        let counting = Counting::new(std::alloc::System);
        let stats = Arc::new(WorkerStats::default());
        let binding = bind(stats.clone());
        let counter = &COUNTER_CELLS[binding.index.expect("a counter")];
        let layout = Layout::from_size_align(1000, 8).expect("layout");
        #[allow(unsafe_code)]
        // SAFETY: a layout of non-zero size; the block is given back with
        // the layout it has.
        unsafe {
            let p = counting.alloc(layout);
            assert!(!p.is_null());
            assert_eq!(counter.0.load(Relaxed), 1000);
            let p = counting.realloc(p, layout, 3000);
            assert!(!p.is_null());
            assert_eq!(counter.0.load(Relaxed), 3000);
            let bigger = Layout::from_size_align(3000, 8).expect("layout");
            let p = counting.realloc(p, bigger, 500);
            assert_eq!(counter.0.load(Relaxed), 500);
            counting.dealloc(p, Layout::from_size_align(500, 8).expect("layout"));
            assert_eq!(counter.0.load(Relaxed), 0);
            let z = counting.alloc_zeroed(layout);
            assert_eq!(*z, 0);
            assert_eq!(counter.0.load(Relaxed), 1000);
            // Freed on another (bound) thread: counted on that one, not
            // here.
            let z = z as usize;
            let other = std::thread::spawn(move || {
                let stats = Arc::new(WorkerStats::default());
                let binding = bind(stats);
                counting_free(z, layout);
                COUNTER_CELLS[binding.index.expect("a counter")]
                    .0
                    .load(Relaxed)
            });
            assert_eq!(other.join().expect("the other thread"), -1000);
            assert_eq!(counter.0.load(Relaxed), 1000);
        }
        drop(binding);
        assert!(CURRENT.with(Cell::get).is_none());
    }

    #[allow(unsafe_code)]
    fn counting_free(p: usize, layout: Layout) {
        // SAFETY: `p` was allocated by the system allocator with `layout`.
        unsafe { Counting::new(std::alloc::System).dealloc(p as *mut u8, layout) };
    }
}
