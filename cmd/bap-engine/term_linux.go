package main

import "golang.org/x/sys/unix"

// terminalFd reports whether fd is a terminal: it has terminal attributes.
func terminalFd(fd uintptr) bool {
	_, err := unix.IoctlGetTermios(int(fd), unix.TCGETS)
	return err == nil
}
