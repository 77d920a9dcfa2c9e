#ifndef AFTERCARE_CSQLITETUNING_SHIM_H
#define AFTERCARE_CSQLITETUNING_SHIM_H

#include <sqlite3.h>

// sqlite3_config is variadic, which Swift cannot call. Before SQLite's first use in the process:
// - multi-thread mode: a connection is never used by two threads at once (GRDB gives each its own
//   serial queue), so SQLite's per-connection mutexes are pure cost;
// - no memory statistics: they take a global mutex on every allocation.
// Returns SQLITE_OK, or SQLITE_MISUSE if SQLite was already in use (then nothing changed).
static inline int aftercare_sqlite_tune(void) {
    int threading = sqlite3_config(SQLITE_CONFIG_MULTITHREAD);
    if (threading != SQLITE_OK) return threading;
    return sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
}

#endif
