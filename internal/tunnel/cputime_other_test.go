//go:build !unix

package tunnel

import "time"

// processCPU is not measured here; the benchmarks then omit CPU metrics.
func processCPU() time.Duration { return 0 }
