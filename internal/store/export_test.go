package store

// WatchBuffer exports watchBuffer to the external tests.
const WatchBuffer = watchBuffer

// Keys of the 4to6 claims, for the external tests.
var (
	DeviceAddrKey = deviceAddrKey
	DeviceKeyKey  = deviceKeyKey
)
