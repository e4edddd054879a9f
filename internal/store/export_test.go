package store

// WatchBuffer exports watchBuffer to the external tests.
const WatchBuffer = watchBuffer
