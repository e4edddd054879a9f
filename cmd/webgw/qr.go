package main

import (
	"bufio"
	"fmt"
	"io"

	goqr "github.com/piglig/go-qr"
)

// qrQuiet is the light margin around a QR code, in modules.
const qrQuiet = 2

// writeQR writes text as a QR code for a terminal: two rows of modules per
// line of upper half blocks, the upper module's colour in the foreground
// and the lower one's in the background, black and bright white whatever
// the terminal's own colours, so the phone apps can scan it on a dark or a
// light terminal.
func writeQR(w io.Writer, text string) error {
	q, err := goqr.EncodeText(text, goqr.Low)
	if err != nil {
		return fmt.Errorf("qr code: %w", err)
	}
	n := q.Size()
	dark := func(x, y int) bool { return x >= 0 && y >= 0 && x < n && y < n && q.Module(x, y) }
	bw := bufio.NewWriter(w)
	for y := -qrQuiet; y < n+qrQuiet; y += 2 {
		last := ""
		for x := -qrQuiet; x < n+qrQuiet; x++ {
			fg, bg := 97, 107 // bright white
			if dark(x, y) {
				fg = 30
			}
			if dark(x, y+1) {
				bg = 40
			}
			if code := fmt.Sprintf("\x1b[%d;%dm", fg, bg); code != last {
				bw.WriteString(code)
				last = code
			}
			bw.WriteString("▀")
		}
		bw.WriteString("\x1b[0m\n")
	}
	return bw.Flush()
}
