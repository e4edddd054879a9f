package agent

import (
	"net"

	"golang.org/x/sys/unix"
)

// tcpCounters reads a TCP connection's retransmitted and sent segment
// counters (TCP_INFO tcpi_total_retrans and tcpi_segs_out).
func tcpCounters(c *net.TCPConn) (retrans, segsOut uint32, ok bool) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, 0, false
	}
	var info *unix.TCPInfo
	cerr := raw.Control(func(fd uintptr) {
		info, err = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	})
	if cerr != nil || err != nil {
		return 0, 0, false
	}
	return info.Total_retrans, info.Segs_out, true
}
