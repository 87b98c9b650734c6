package sweeper

import (
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

func TestSSEParsing(t *testing.T) {
	in := ": hello\n\n" +
		"data: one\n\n" +
		"event: x\nid: 3\nretry: 10\ndata:two\r\n\r\n" + // no space after the colon, CRLF
		"data: a\rdata: b\r\r" + // CR line ends, two data lines
		"event: nodata\n\n" + // no data: not dispatched
		": keep-alive\n\n" +
		"data\n\n" + // a field without colon: empty data
		"data: last"
	for _, oneByte := range []bool{false, true} {
		var r io.Reader = strings.NewReader(in)
		if oneByte {
			r = iotest.OneByteReader(r)
		}
		s := newSSEReader(r)
		comments := 0
		s.onComment = func() { comments++ }
		var got []string
		for {
			d, err := s.Next()
			if err != nil {
				if !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Errorf("final error %v, want unexpected EOF (an unterminated event is not dispatched)", err)
				}
				break
			}
			got = append(got, string(d))
		}
		want := []string{"one", "two", "a\nb", ""}
		if strings.Join(got, "|") != strings.Join(want, "|") {
			t.Errorf("oneByte=%v: events %q, want %q", oneByte, got, want)
		}
		if comments != 2 {
			t.Errorf("comments = %d, want 2", comments)
		}
	}
}

func TestSSETooLarge(t *testing.T) {
	s := newSSEReader(strings.NewReader("data: " + strings.Repeat("x", maxEventSize+10) + "\n\n"))
	if _, err := s.Next(); !errors.Is(err, errEventTooLarge) {
		t.Errorf("err = %v, want errEventTooLarge", err)
	}
}

func TestEventDecoding(t *testing.T) {
	s := newSSEReader(strings.NewReader(`data: {"ready":true,"live_connections":2,"seconds_since_active":0,"last_active":"2026-11-29T04:00:00.123456789Z","in_flight_requests":1,"websockets":1,"future_field":7}` + "\n\n"))
	ev, err := s.NextEvent()
	if err != nil {
		t.Fatal(err)
	}
	want := Event{Ready: true, LiveConnections: 2, LastActive: time.Date(2026, 11, 29, 4, 0, 0, 123456789, time.UTC), InFlightRequests: 1, WebSockets: 1}
	if !ev.LastActive.Equal(want.LastActive) || ev.Ready != want.Ready || ev.LiveConnections != 2 || ev.WebSockets != 1 || ev.InFlightRequests != 1 {
		t.Errorf("got %+v, want %+v", ev, want)
	}
	for _, bad := range []string{
		`{"ready":true}`, // no last_active: no idle decision possible
		`{"ready":true,"live_connections":-1,"last_active":"2026-11-29T04:00:00Z"}`,
		`not json`,
	} {
		if _, err := parseEvent([]byte(bad)); err == nil {
			t.Errorf("parseEvent(%s) accepted", bad)
		}
	}
}

func TestBackoff(t *testing.T) {
	b := newBackoff(100*time.Millisecond, 5*time.Second)
	b.jitter = func() float64 { return 0.5 } // no jitter
	var got []time.Duration
	for range 9 {
		got = append(got, b.Next())
	}
	want := []time.Duration{100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000}
	for i := range want {
		if got[i] != want[i]*time.Millisecond {
			t.Fatalf("delays %v, want %v ms", got, want)
		}
	}
	b.Reset()
	if d := b.Next(); d != 100*time.Millisecond {
		t.Errorf("after Reset: %v", d)
	}
	b.jitter = func() float64 { return 0.999 }
	for range 20 {
		if d := b.Next(); d > 5*time.Second {
			t.Fatalf("jitter exceeded the cap: %v", d)
		}
	}
}

func TestIdleDeadline(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	grace := 5 * time.Second
	cases := []struct {
		name       string
		ev         Event
		readySince time.Time
		want       time.Time
		ok         bool
	}{
		{"idle since last_active", Event{LastActive: t0}, t0.Add(-time.Minute), t0.Add(grace), true},
		{"live connection: no deadline", Event{LiveConnections: 1, LastActive: t0}, t0, time.Time{}, false},
		{"slow start: counted from ready", Event{LastActive: t0}, t0.Add(time.Minute), t0.Add(time.Minute + grace), true},
	}
	for _, c := range cases {
		got, ok := idleDeadline(c.ev, c.readySince, time.Time{}, grace)
		if ok != c.ok || !got.Equal(c.want) {
			t.Errorf("%s: got %v,%v want %v,%v", c.name, got, ok, c.want, c.ok)
		}
	}
}
