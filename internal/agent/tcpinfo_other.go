//go:build !linux

package agent

import "net"

// tcpCounters is not available on this system: auto never sees TCP as lossy.
func tcpCounters(*net.TCPConn) (retrans, segsOut uint32, ok bool) { return 0, 0, false }
