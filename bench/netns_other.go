//go:build !linux

package main

import (
	"context"
	"errors"
	"net"
	"os"
	"time"
)

// lossyNet: network namespaces are Linux only.
type lossyNet struct {
	gw, agent     string
	gwIP, agentIP string
	link          *proc
}

// ipTool is where ip(8) would be.
const ipTool = "/usr/sbin/ip"

var errNoNetns = errors.New("network namespaces are Linux only")

func (h *harness) setupLossyNet(context.Context, string, float64, time.Duration) (*lossyNet, error) {
	return nil, errNoNetns
}

func (n *lossyNet) remove() {}

func (n *lossyNet) linkStatsLines() []string { return nil }

func netnsArgv(ns string, argv []string) []string { return argv }

func dialNetns(context.Context, string, string) (net.Conn, error) { return nil, errNoNetns }

func linkMain([]string) int {
	os.Stderr.WriteString("link: " + errNoNetns.Error() + "\n")
	return 1
}
