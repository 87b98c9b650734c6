// Package readiness decides whether the app listens on its port by reading
// the kernel's socket tables. It never connects to the app: a probe
// connection would look like traffic and could disturb apps that serve one
// client.
package readiness

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"io"
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
		f, err := os.Open(filepath.Join(procNet, name))
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return false, err
		}
		found, err := listensIn(f, port)
		f.Close()
		if found || err != nil {
			return found, err
		}
	}
	return false, nil
}

// listensIn scans one table line by line without keeping it: on a node's
// host network it can be megabytes, and it is read every 20 ms until ready.
// Lines look like
//
//	sl  local_address rem_address   st tx_queue ...
//	0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 ...
//
// with addresses as hex in host (little-endian) 32-bit words.
func listensIn(table io.Reader, port int) (bool, error) {
	sc := bufio.NewScanner(table)
	sc.Scan() // header
	for sc.Scan() {
		var f [4][]byte
		if fields(sc.Bytes(), f[:]) < 4 || string(f[3]) != listenState {
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
			return true, nil
		}
	}
	return false, sc.Err()
}

// fields fills out with the first len(out) space-separated fields of line
// and returns how many it found, without allocating.
func fields(line []byte, out [][]byte) int {
	n := 0
	for n < len(out) {
		line = bytes.TrimLeft(line, " ")
		if len(line) == 0 {
			break
		}
		end := bytes.IndexByte(line, ' ')
		if end < 0 {
			end = len(line)
		}
		out[n] = line[:end]
		line = line[end:]
		n++
	}
	return n
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

// Schedule says how often Watch reads the tables.
type Schedule struct {
	// Fast is the interval until the app listens: Ready waits on it.
	Fast time.Duration
	// Slow is the first interval once it listens; each check that finds it
	// still listening doubles the interval, up to Max. Every check is a
	// wake-up and a read of both tables, and a listening app is a stable
	// state: at a flat 1 s this poll was 0.08% of a core per idle sidecar
	// (docs/sidecar.md, Idle cost), against 0.01% allowed for all of it.
	Slow, Max time.Duration
}

// Watch checks every s.Fast until the app listens, then after s.Slow,
// doubling to s.Max while it keeps listening, reporting each result to set,
// until stop is closed. Once the app stops listening it is back to s.Fast.
// An unreadable table counts as not listening.
func Watch(procNet string, port int, s Schedule, set func(bool), stop <-chan struct{}) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	backoff := s.Slow
	for {
		ready, _ := Listening(procNet, port)
		set(ready)
		wait := s.Fast
		if ready {
			wait = backoff
			backoff = min(2*backoff, max(s.Max, s.Slow))
		} else {
			backoff = s.Slow
		}
		timer.Reset(wait)
		select {
		case <-stop:
			return
		case <-timer.C:
		}
	}
}
