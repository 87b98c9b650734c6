package readiness

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"

func TestListensIn(t *testing.T) {
	cases := []struct {
		name, line string
		want       bool
	}{
		{"127.0.0.1 listen", "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1", true},
		{"0.0.0.0 listen", "   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1", true},
		{"other port", "   0: 00000000:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1", false},
		{"established, not listening", "   0: 0100007F:1F90 0100007F:D3C2 01 00000000:00000000 00:00000000 00000000  1000        0 1", false},
		{"pod IP only: unreachable on loopback", "   0: 0A00000A:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1", false},
		{"[::] listen", "   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000 0 1", true},
		{"::ffff:127.0.0.1 listen", "   0: 0000000000000000FFFF00000100007F:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000 0 1", true},
		{"[::1] only: not reachable as 127.0.0.1", "   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000 0 1", false},
		{"garbage", "   0: zz:1F90 00000000:0000 0A", false},
	}
	for _, tc := range cases {
		if got, err := listensIn(strings.NewReader(header+tc.line+"\n"), 8080); got != tc.want || err != nil {
			t.Errorf("%s: got %v %v", tc.name, got, err)
		}
	}
}

func TestListeningFromFiles(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "tcp"), []byte(header), 0o644) // no tcp6: IPv6 disabled
	if ok, err := Listening(dir, 8080); ok || err != nil {
		t.Fatalf("empty table: %v %v", ok, err)
	}
	os.WriteFile(filepath.Join(dir, "tcp6"), []byte(header+"   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 0 0 0 0 0 1\n"), 0o644)
	if ok, err := Listening(dir, 8080); !ok || err != nil {
		t.Fatalf("tcp6 listener: %v %v", ok, err)
	}
}

// Against the real kernel table: a listener appears within the fast poll and
// its disappearance is noticed within the slow one.
func TestWatchRealSocket(t *testing.T) {
	if _, err := os.Stat("/proc/net/tcp"); err != nil {
		t.Skip("no /proc/net/tcp")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()

	states := make(chan bool, 100)
	stop := make(chan struct{})
	defer close(stop)
	go Watch("/proc/net", port, Schedule{Fast: 20 * time.Millisecond, Slow: 50 * time.Millisecond, Max: 50 * time.Millisecond}, func(b bool) { states <- b }, stop)
	waitFor := func(want bool, within time.Duration) time.Duration {
		t.Helper()
		start := time.Now()
		deadline := time.After(within)
		for {
			select {
			case got := <-states:
				if got == want {
					return time.Since(start)
				}
			case <-deadline:
				t.Fatalf("not %v within %s", want, within)
			}
		}
	}
	waitFor(false, time.Second)
	l, err = net.Listen("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	// The poll is 20 ms; the bound leaves room for a busy CI machine.
	if d := waitFor(true, time.Second); d > 250*time.Millisecond {
		t.Errorf("listener noticed after %s, want ~20ms", d)
	} else {
		t.Logf("listener noticed after %s", d)
	}
	l.Close()
	waitFor(false, time.Second)
}

// Once the app listens the checks back off: Slow, then doubling to Max.
// Each is a wake-up and a read of the tables, which an idle sidecar must not
// pay every second (docs/sidecar.md, Idle cost).
func TestWatchBacksOffWhileListening(t *testing.T) {
	dir := t.TempDir()
	listening := header + "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1\n"
	os.WriteFile(filepath.Join(dir, "tcp"), []byte(listening), 0o644)
	checks := make(chan time.Time, 1000)
	stop := make(chan struct{})
	go Watch(dir, 8080, Schedule{Fast: 5 * time.Millisecond, Slow: 20 * time.Millisecond, Max: 160 * time.Millisecond},
		func(bool) { checks <- time.Now() }, stop)
	time.Sleep(time.Second)
	close(stop)
	n := len(checks)
	// 0, 20, 60, 140, 300, 460, 620, 780, 940 ms: 9 checks; a flat Slow
	// interval would have made 50.
	if n < 5 || n > 12 {
		t.Fatalf("%d checks in 1 s, want about 9", n)
	}
	var gaps []time.Duration
	prev := <-checks
	for range n - 1 {
		c := <-checks
		gaps = append(gaps, c.Sub(prev).Round(time.Millisecond))
		prev = c
	}
	t.Logf("intervals %v", gaps)
	if gaps[0] >= gaps[len(gaps)-1] {
		t.Errorf("intervals do not grow: %v", gaps)
	}
}

// An app that stops listening brings the checks back to Fast at once.
func TestWatchFastAgainAfterNotListening(t *testing.T) {
	dir := t.TempDir()
	table := filepath.Join(dir, "tcp")
	os.WriteFile(table, []byte(header+"   0: 0100007F:1F90 00000000:0000 0A 0 0 0 0 0 1\n"), 0o644)
	states := make(chan bool, 1000)
	stop := make(chan struct{})
	defer close(stop)
	go Watch(dir, 8080, Schedule{Fast: 5 * time.Millisecond, Slow: 50 * time.Millisecond, Max: 50 * time.Millisecond},
		func(b bool) { states <- b }, stop)
	if !<-states {
		t.Fatal("listener not seen")
	}
	os.WriteFile(table, []byte(header), 0o644)
	for <-states {
	}
	start := time.Now()
	os.WriteFile(table, []byte(header+"   0: 0100007F:1F90 00000000:0000 0A 0 0 0 0 0 1\n"), 0o644)
	for !<-states {
	}
	if d := time.Since(start); d > 45*time.Millisecond {
		t.Errorf("listener seen again after %s: not polling at Fast", d)
	}
}

func BenchmarkListeningHostTable(b *testing.B) {
	for b.Loop() {
		Listening("/proc/net", 1)
	}
}
