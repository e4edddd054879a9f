// Package e2e holds black-box tests of webgw: they build the real webgw
// binary, run real gateway and agent processes on loopback ports chosen by
// the OS, and check them with real clients (curl, Go HTTP, WebSocket and
// gRPC clients), as a user would.
package e2e
