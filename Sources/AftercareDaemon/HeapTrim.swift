import CMalloc
import Synchronization

/// glibc keeps freed heap in per-thread arenas and rarely gives it back by itself, so after a burst
/// of work (a spool of bulk imports, a drained backlog) the daemon would stay as large as it once
/// was. Fewer arenas and an explicit trim after bursts keep its resident size to what it holds.
enum HeapTrim {
    /// The daemon has a few busy threads; each glibc arena keeps its own free memory.
    static func limitArenas() {
        _ = mallopt(M_ARENA_MAX, 2)
    }

    private static let lastTrim = Mutex<ContinuousClock.Instant?>(nil)

    /// Returns free heap to the system; at most once every two seconds unless `force`d.
    static func release(force: Bool = false) {
        let due = lastTrim.withLock { last -> Bool in
            let now = ContinuousClock.now
            if !force, let last, now - last < .seconds(2) { return false }
            last = now
            return true
        }
        if due { _ = malloc_trim(0) }
    }
}
