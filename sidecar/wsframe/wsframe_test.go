package wsframe

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"testing"
)

type frame struct {
	fin     bool
	rsv     byte // RSV bits already in position (0x40, 0x20, 0x10)
	opcode  byte
	masked  bool
	payload int
	// rawLength64 forces the 64-bit form with an explicit value, for cases the
	// payload size cannot express (the reserved top bit).
	rawLength64 uint64
}

func (f frame) encode() []byte {
	var b []byte
	h := f.rsv | f.opcode
	if f.fin {
		h |= 0x80
	}
	b = append(b, h)
	var m byte
	if f.masked {
		m = 0x80
	}
	switch {
	case f.rawLength64 != 0:
		b = append(b, m|127)
		b = binary.BigEndian.AppendUint64(b, f.rawLength64)
		return b
	case f.payload < 126:
		b = append(b, m|byte(f.payload))
	case f.payload <= 0xffff:
		b = append(b, m|126)
		b = binary.BigEndian.AppendUint16(b, uint16(f.payload))
	default:
		b = append(b, m|127)
		b = binary.BigEndian.AppendUint64(b, uint64(f.payload))
	}
	if f.masked {
		b = append(b, 1, 2, 3, 4)
	}
	for i := 0; i < f.payload; i++ {
		b = append(b, byte(i*7)) // arbitrary bytes, including ones that look like headers
	}
	return b
}

func stream(frames ...frame) []byte {
	var b []byte
	for _, f := range frames {
		b = append(b, f.encode()...)
	}
	return b
}

// feedAll feeds data in pieces of the sizes chunk returns and sums the counts.
func feedAll(data []byte, chunk func() int) (Counts, bool) {
	var p Parser
	var total Counts
	for len(data) > 0 {
		n := min(max(chunk(), 1), len(data))
		c := p.Feed(data[:n])
		total.Frames += c.Frames
		total.DataFrames += c.DataFrames
		total.Messages += c.Messages
		total.DataPayloadBytes += c.DataPayloadBytes
		data = data[n:]
	}
	return total, p.Interpreting()
}

func TestFrameShapes(t *testing.T) {
	cases := []struct {
		name         string
		data         []byte
		want         Counts
		interpreting bool
	}{
		{"small text", stream(frame{fin: true, opcode: opText, payload: 5}),
			Counts{1, 1, 1, 5}, true},
		{"empty binary", stream(frame{fin: true, opcode: opBinary}),
			Counts{1, 1, 1, 0}, true},
		{"masked 125", stream(frame{fin: true, opcode: opBinary, masked: true, payload: 125}),
			Counts{1, 1, 1, 125}, true},
		{"16-bit length", stream(frame{fin: true, opcode: opBinary, masked: true, payload: 300}),
			Counts{1, 1, 1, 300}, true},
		{"64-bit length", stream(frame{fin: true, opcode: opText, payload: 70000}),
			Counts{1, 1, 1, 70000}, true},
		{"fragmented with interleaved controls", stream(
			frame{opcode: opText, masked: true, payload: 10},
			frame{fin: true, opcode: opPing, masked: true, payload: 3},
			frame{opcode: opContinuation, masked: true, payload: 200},
			frame{fin: true, opcode: opPong, masked: true},
			frame{fin: true, opcode: opContinuation, masked: true, payload: 1},
			frame{fin: true, opcode: opBinary, masked: true, payload: 2},
		), Counts{6, 4, 2, 213}, true},
		{"pings only", stream(frame{fin: true, opcode: opPing, payload: 4}, frame{fin: true, opcode: opPong, payload: 4}),
			Counts{2, 0, 0, 0}, true},
		{"permessage-deflate RSV1", stream(frame{fin: true, rsv: 0x40, opcode: opText, payload: 9}),
			Counts{1, 1, 1, 9}, true},
		{"close handshake", stream(frame{fin: true, opcode: opText, payload: 1}, frame{fin: true, opcode: opClose, payload: 2}),
			Counts{2, 1, 1, 1}, true},
		{"bytes after close", append(stream(frame{fin: true, opcode: opClose}), 0x81),
			Counts{1, 0, 0, 0}, false},
		{"RSV2", stream(frame{fin: true, rsv: 0x20, opcode: opText, payload: 1}), Counts{}, false},
		{"RSV3", stream(frame{fin: true, rsv: 0x10, opcode: opText, payload: 1}), Counts{}, false},
		{"reserved opcode", stream(frame{fin: true, opcode: 0x3, payload: 1}), Counts{}, false},
		{"reserved control opcode", stream(frame{fin: true, opcode: 0xB}), Counts{}, false},
		{"fragmented control", stream(frame{opcode: opPing, payload: 1}), Counts{}, false},
		{"oversized control", stream(frame{fin: true, opcode: opPing, payload: 126}), Counts{}, false},
		{"continuation without start", stream(frame{fin: true, opcode: opContinuation, payload: 1}), Counts{}, false},
		{"new message inside fragmented one", stream(frame{opcode: opText, payload: 1}, frame{fin: true, opcode: opText, payload: 1}),
			Counts{1, 1, 0, 1}, false},
		{"64-bit length with top bit", stream(frame{fin: true, opcode: opBinary, rawLength64: 1 << 63}), Counts{}, false},
		{"HTTP instead of frames", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Counts{}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			orig := bytes.Clone(tc.data)
			rng := rand.New(rand.NewPCG(1, 2))
			for _, split := range []struct {
				name  string
				chunk func() int
			}{
				{"whole", func() int { return len(tc.data) }},
				{"byte-by-byte", func() int { return 1 }},
				{"random", func() int { return rng.IntN(40) }},
			} {
				got, ok := feedAll(tc.data, split.chunk)
				if got != tc.want || ok != tc.interpreting {
					t.Errorf("%s: counts %+v interpreting %v; want %+v %v", split.name, got, ok, tc.want, tc.interpreting)
				}
			}
			if !bytes.Equal(orig, tc.data) {
				t.Error("Feed modified its input")
			}
		})
	}
}

// After the parser gives up it stays quiet, however frame-like the rest is.
func TestFailureIsFinal(t *testing.T) {
	var p Parser
	p.Feed([]byte{0x83, 0x00})
	if c := p.Feed(stream(frame{fin: true, opcode: opText, payload: 3})); c != (Counts{}) || p.Interpreting() {
		t.Fatalf("counted %+v after failure", c)
	}
}

// Closed turns true only once a close frame's last payload byte has passed,
// however the bytes arrive, and false again if anything follows it.
func TestClosedAtTheEndOfTheCloseFrame(t *testing.T) {
	data := stream(frame{fin: true, opcode: opText, masked: true, payload: 5}, frame{fin: true, opcode: opClose, masked: true, payload: 2})
	var p Parser
	for i := range data {
		if p.Closed() {
			t.Fatalf("closed after %d of %d bytes", i, len(data))
		}
		p.Feed(data[i : i+1])
	}
	if !p.Closed() || !p.Interpreting() {
		t.Fatalf("after the whole close frame: closed %v, interpreting %v", p.Closed(), p.Interpreting())
	}
	p.Feed([]byte{0x81})
	if p.Closed() || p.Interpreting() {
		t.Fatal("a byte after the close frame left the parser closed")
	}
}

func FuzzFrameReader(f *testing.F) {
	f.Add(stream(frame{fin: true, opcode: opText, masked: true, payload: 20}), uint64(3))
	f.Add(stream(frame{opcode: opBinary, payload: 300}, frame{fin: true, opcode: opPing}, frame{fin: true, opcode: opContinuation, payload: 2}), uint64(1))
	// A 64-bit length header and the start of its payload; a whole 64 KiB
	// payload would make every fuzz execution slow.
	f.Add(stream(frame{fin: true, rsv: 0x40, opcode: opText, payload: 70000})[:40], uint64(999))
	f.Add(stream(frame{fin: true, opcode: opClose, payload: 2}), uint64(0))
	f.Add([]byte("\x81\x7f\xff\xff\xff\xff\xff\xff\xff\xff"), uint64(7))
	f.Add([]byte{}, uint64(5))
	f.Fuzz(func(t *testing.T, data []byte, seed uint64) {
		orig := bytes.Clone(data)
		whole, okWhole := feedAll(data, func() int { return len(data) })
		single, okSingle := feedAll(data, func() int { return 1 })
		rng := rand.New(rand.NewPCG(seed, seed))
		random, okRandom := feedAll(data, func() int { return rng.IntN(17) })
		if !bytes.Equal(orig, data) {
			t.Fatal("Feed modified its input")
		}
		if whole != single || whole != random || okWhole != okSingle || okWhole != okRandom {
			t.Fatalf("delivery changed the result: whole %+v/%v, 1-byte %+v/%v, random %+v/%v",
				whole, okWhole, single, okSingle, random, okRandom)
		}
		if whole.DataPayloadBytes > len(data) || whole.Messages > whole.DataFrames || whole.DataFrames > whole.Frames {
			t.Fatalf("impossible counts %+v for %d bytes", whole, len(data))
		}
	})
}

func BenchmarkFeed1KiBFrames(b *testing.B) {
	data := stream(frame{fin: true, opcode: opBinary, masked: true, payload: 1024})
	b.SetBytes(int64(len(data)))
	var p Parser
	for b.Loop() {
		p.Feed(data)
	}
}
