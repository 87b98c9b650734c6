// Package readiness decides whether the app listens on its port by reading
// the kernel's socket tables. It never connects to the app: a probe
// connection would look like traffic and could disturb apps that serve one
// client.
package readiness

import (
	"bytes"
	"encoding/hex"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// listenState is TCP_LISTEN in /proc/net/tcp's "st" column.
const listenState = "0A"

// Listening reports whether a socket listens on port at an address that
// accepts connections to 127.0.0.1 (a wildcard or IPv4 loopback address), in
// the tables tcp and tcp6 under procNet (normally /proc/net). A missing table
// (no IPv6) counts as empty.
func Listening(procNet string, port int) (bool, error) {
	for _, name := range []string{"tcp", "tcp6"} {
		data, err := os.ReadFile(filepath.Join(procNet, name))
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return false, err
		}
		if listensIn(data, port) {
			return true, nil
		}
	}
	return false, nil
}

// listensIn scans one table. Lines look like
//
//	sl  local_address rem_address   st tx_queue ...
//	0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 ...
//
// with addresses as hex in host (little-endian) 32-bit words.
func listensIn(table []byte, port int) bool {
	lines := bytes.Split(table, []byte("\n"))
	for _, line := range lines[1:] {
		f := bytes.Fields(line)
		if len(f) < 4 || string(f[3]) != listenState {
			continue
		}
		addr, portHex, ok := bytes.Cut(f[1], []byte(":"))
		if !ok {
			continue
		}
		if p, err := strconv.ParseUint(string(portHex), 16, 16); err != nil || int(p) != port {
			continue
		}
		if ip := decodeAddr(addr); ip != nil && (ip.IsUnspecified() || ip.IsLoopback() && ip.To4() != nil) {
			return true
		}
	}
	return false
}

func decodeAddr(h []byte) net.IP {
	b := make([]byte, hex.DecodedLen(len(h)))
	if _, err := hex.Decode(b, h); err != nil || (len(b) != 4 && len(b) != 16) {
		return nil
	}
	for w := 0; w < len(b); w += 4 {
		b[w], b[w+1], b[w+2], b[w+3] = b[w+3], b[w+2], b[w+1], b[w]
	}
	return net.IP(b)
}

// Watch polls every fast until the app listens, then every slow to notice it
// going away, reporting each result to set, until stop is closed. An
// unreadable table counts as not listening.
func Watch(procNet string, port int, fast, slow time.Duration, set func(bool), stop <-chan struct{}) {
	for {
		ready, _ := Listening(procNet, port)
		set(ready)
		wait := fast
		if ready {
			wait = slow
		}
		select {
		case <-stop:
			return
		case <-time.After(wait):
		}
	}
}
