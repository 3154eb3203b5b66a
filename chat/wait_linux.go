package chat

import (
	"syscall"
	"unsafe"
)

// waitSocket blocks until rc has bytes to read (or an error or EOF to
// report), without reading them: a one-byte MSG_PEEK that does not wait
// parks the goroutine in the runtime's poller until the socket is readable.
func waitSocket(rc syscall.RawConn) {
	var b byte
	rc.Read(func(fd uintptr) bool {
		_, _, errno := syscall.Syscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b)), 1,
			syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
		return errno != syscall.EAGAIN
	})
}
