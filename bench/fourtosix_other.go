//go:build !linux

package main

import (
	"context"
	"io"
)

// fourToSix: network namespaces and TUN devices are Linux only.
func (h *harness) fourToSix(context.Context, string) (Figures, error) { return nil, errNoNetns }

func (r *Report) writeFourToSix(io.Writer) {}
