package main

import (
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
)

// The forward backend's TCP protocol. A client sends one mode byte first:
//
//	'e'  echo: the backend sends every byte back, the mode byte too, until
//	     the client closes; a 1-byte echo is one round trip on a new
//	     connection
//	'd'  download: the backend answers fwdReady; the client sends N (8
//	     bytes, big endian); the backend sends N bytes and closes
//	'u'  upload: the backend answers fwdReady; the client sends N (8 bytes)
//	     and N bytes; the backend answers N (8 bytes) once it has read them
//	     all, and closes
//
// fwdReady lets a bulk client open its connections end to end before the
// timing starts: through a forwarded port, a connection is accepted by the
// gateway before the agent has reached the backend.
const (
	fwdEcho     = 'e'
	fwdDownload = 'd'
	fwdUpload   = 'u'
	fwdReady    = 'k'
)

// fwdBackendMain is `bench fwdbackend`: a TCP port speaking the protocol
// above and a UDP port that echoes every datagram to its sender, both on
// -listen. It prints "tcp ADDR" and "udp ADDR" and serves until its stdin
// closes.
func fwdBackendMain(args []string) int {
	fs := flag.NewFlagSet("fwdbackend", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1", "IP address to listen on")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(*listen, "0"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "fwdbackend:", err)
		return 1
	}
	pc, err := net.ListenPacket("udp", net.JoinHostPort(*listen, "0"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "fwdbackend:", err)
		return 1
	}
	if u, ok := pc.(*net.UDPConn); ok {
		u.SetReadBuffer(4 << 20)
		u.SetWriteBuffer(4 << 20)
	}
	go serveFwdTCP(ln)
	go serveUDPEcho(pc)
	fmt.Printf("tcp %s\nudp %s\n", ln.Addr(), pc.LocalAddr())
	io.Copy(io.Discard, os.Stdin)
	return 0
}

func serveFwdTCP(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			fmt.Fprintln(os.Stderr, "fwdbackend: accept:", err)
			return
		}
		go func() {
			defer c.Close()
			if err := serveFwdConn(c); err != nil && !errors.Is(err, io.EOF) {
				fmt.Fprintln(os.Stderr, "fwdbackend:", err)
			}
		}()
	}
}

// serveFwdConn serves one connection of the protocol above.
func serveFwdConn(c net.Conn) error {
	var mode [1]byte
	if _, err := io.ReadFull(c, mode[:]); err != nil {
		return err
	}
	switch mode[0] {
	case fwdEcho:
		buf := make([]byte, 512)
		buf[0] = mode[0]
		n := 1
		for {
			if _, err := c.Write(buf[:n]); err != nil {
				return err
			}
			var err error
			if n, err = c.Read(buf); err != nil {
				return err
			}
		}
	case fwdDownload, fwdUpload:
	default:
		return fmt.Errorf("mode %q: want e, d or u", mode[0])
	}
	if _, err := c.Write([]byte{fwdReady}); err != nil {
		return err
	}
	var hdr [8]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return err
	}
	n := int64(binary.BigEndian.Uint64(hdr[:]))
	if mode[0] == fwdDownload {
		for n > 0 {
			k := min(n, int64(len(bulkChunk)))
			if _, err := c.Write(bulkChunk[:k]); err != nil {
				return err
			}
			n -= k
		}
		return nil
	}
	got, err := io.CopyBuffer(writerOnly{io.Discard}, io.LimitReader(c, n), make([]byte, 256<<10))
	if err != nil {
		return err
	}
	if got != n {
		return fmt.Errorf("upload: %d of %d bytes", got, n)
	}
	_, err = c.Write(hdr[:])
	return err
}

// serveUDPEcho sends every datagram back to where it came from.
func serveUDPEcho(pc net.PacketConn) {
	buf := make([]byte, 64<<10)
	for {
		n, from, err := pc.ReadFrom(buf)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			fmt.Fprintln(os.Stderr, "fwdbackend: udp:", err)
			return
		}
		pc.WriteTo(buf[:n], from)
	}
}
