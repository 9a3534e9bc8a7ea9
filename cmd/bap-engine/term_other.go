//go:build !linux

package main

import "os"

// terminalFd reports whether fd is a character device other than
// /dev/null (an approximation off Linux).
func terminalFd(fd uintptr) bool {
	f := os.NewFile(fd, "")
	st, err := f.Stat()
	if err != nil || st.Mode()&os.ModeCharDevice == 0 {
		return false
	}
	null, err := os.Stat(os.DevNull)
	return err != nil || !os.SameFile(st, null)
}
