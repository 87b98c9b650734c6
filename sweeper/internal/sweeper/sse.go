package sweeper

import (
	"bufio"
	"bytes"
	"errors"
	"io"

	"spawner.dev/common/wire"
)

// Event is one state report from the sidecar's /_events stream: the one
// type the sidecar encodes it with (docs/architecture.md, "Sidecar interface").
type Event = wire.StatusEvent

// maxEventSize bounds one event's data; the sidecar's are about 200 bytes.
const maxEventSize = 64 << 10

// errEventTooLarge is returned for an event whose data exceeds maxEventSize.
var errEventTooLarge = errors.New("sse: event data too large")

// sseReader reads Server-Sent Events (the subset the sidecar uses: data
// lines, comments, blank-line dispatch) from a stream. Lines may end in LF,
// CRLF or CR; "event", "id" and "retry" fields are ignored, and an event
// without data lines is not dispatched, as in the HTML specification.
type sseReader struct {
	r    *bufio.Reader
	data []byte
	line []byte
	// onComment is called for each comment line (": keep-alive").
	onComment func()
}

func newSSEReader(r io.Reader) *sseReader {
	br, ok := r.(*bufio.Reader)
	if !ok {
		br = bufio.NewReaderSize(r, 1024)
	}
	return &sseReader{r: br}
}

// readLine returns the next line without its terminator, in a buffer valid
// until the next call.
func (s *sseReader) readLine() ([]byte, error) {
	s.line = s.line[:0]
	for {
		b, err := s.r.ReadByte()
		if err != nil {
			if err == io.EOF && len(s.line) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		switch b {
		case '\n':
			return s.line, nil
		case '\r':
			if next, err := s.r.Peek(1); err == nil && next[0] == '\n' {
				s.r.ReadByte()
			}
			return s.line, nil
		}
		if len(s.line) >= maxEventSize {
			return nil, errEventTooLarge
		}
		s.line = append(s.line, b)
	}
}

// Next returns the data of the next event (several data lines joined with
// LF), valid until the next call.
func (s *sseReader) Next() ([]byte, error) {
	s.data = s.data[:0]
	hasData := false
	for {
		line, err := s.readLine()
		if err != nil {
			return nil, err
		}
		if len(line) == 0 {
			if hasData {
				return s.data, nil
			}
			continue
		}
		if line[0] == ':' {
			if s.onComment != nil {
				s.onComment()
			}
			continue
		}
		field, value, found := bytes.Cut(line, []byte(":"))
		if found && len(value) > 0 && value[0] == ' ' {
			value = value[1:]
		}
		if string(field) != "data" {
			continue
		}
		if hasData {
			s.data = append(s.data, '\n')
		}
		if len(s.data)+len(value) > maxEventSize {
			return nil, errEventTooLarge
		}
		s.data = append(s.data, value...)
		hasData = true
	}
}

// NextEvent reads the next event and decodes its JSON data.
func (s *sseReader) NextEvent() (Event, error) {
	data, err := s.Next()
	if err != nil {
		return Event{}, err
	}
	return parseEvent(data)
}

func parseEvent(data []byte) (Event, error) { return wire.ParseStatusEvent(data) }
