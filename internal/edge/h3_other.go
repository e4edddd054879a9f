//go:build !unix

package edge

import (
	"errors"
	"net"
)

func udpBufferSizes(net.PacketConn) (rcv, snd int, err error) {
	return 0, 0, errors.New("buffer sizes not readable on this system")
}
