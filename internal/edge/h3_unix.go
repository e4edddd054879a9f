//go:build unix

package edge

import (
	"errors"
	"net"
	"syscall"
)

// udpBufferSizes reads the socket's receive and send buffer sizes as the
// kernel reports them.
func udpBufferSizes(pc net.PacketConn) (rcv, snd int, err error) {
	sc, ok := pc.(syscall.Conn)
	if !ok {
		return 0, 0, errors.New("not a socket")
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return 0, 0, err
	}
	var serr error
	err = raw.Control(func(fd uintptr) {
		rcv, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF)
		if serr == nil {
			snd, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF)
		}
	})
	if err == nil {
		err = serr
	}
	return rcv, snd, err
}
