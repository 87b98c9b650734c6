// Package wsframe follows the WebSocket frame structure (RFC 6455 §5.2) of a
// byte stream as it passes through, without buffering or changing it.
//
// A Parser sees each direction of a connection in whatever pieces the network
// delivers, down to single bytes. It keeps only the header fields it needs and
// skips payloads by counting, so its cost does not depend on message size.
// Anything it does not expect (reserved opcodes, RSV2/RSV3, fragmented or
// oversized control frames, broken fragmentation, bytes after a close frame)
// makes it stop interpreting for good; the caller keeps forwarding the bytes.
package wsframe

// Counts is what one Feed call observed.
type Counts struct {
	Frames           int // frame headers completed
	DataFrames       int // of which text, binary or continuation frames
	Messages         int // data messages whose final frame ended
	DataPayloadBytes int // payload bytes belonging to data frames
}

// Carried reports whether the piece contained any part of a data frame; that
// is what keeps a WebSocket "in use" (pings and pongs do not).
func (c Counts) Carried() bool { return c.DataFrames > 0 || c.DataPayloadBytes > 0 }

type state uint8

const (
	stFirstByte  state = iota // FIN, RSV1-3, opcode
	stLengthByte              // MASK, 7-bit length
	stExtLength               // 2 or 8 bytes of extended length
	stMaskKey                 // 4 bytes of masking key
	stPayload
	stClosed // a close frame ended; nothing may follow
	stFailed
)

const (
	opContinuation = 0x0
	opText         = 0x1
	opBinary       = 0x2
	opClose        = 0x8
	opPing         = 0x9
	opPong         = 0xA
)

// Parser tracks one direction of one WebSocket connection. The zero value is
// ready to use at the first byte after the HTTP 101 response head.
type Parser struct {
	state     state
	fin       bool
	opcode    byte
	masked    bool
	inMessage bool // a fragmented data message has started and not finished
	extLeft   uint8
	maskLeft  uint8
	length    uint64
	remaining uint64
}

// Closed reports whether a complete close frame has passed (and nothing
// after it): this direction of the WebSocket is over (RFC 6455 §5.5.1).
func (p *Parser) Closed() bool { return p.state == stClosed }

// Interpreting reports whether the stream still made sense as frames.
func (p *Parser) Interpreting() bool { return p.state != stFailed }

// Feed observes the next piece of the stream. It never modifies b.
func (p *Parser) Feed(b []byte) (c Counts) {
	for len(b) > 0 {
		switch p.state {
		case stFirstByte:
			p.firstByte(b[0])
			b = b[1:]
		case stLengthByte:
			p.masked = b[0]&0x80 != 0
			switch l := b[0] & 0x7f; l {
			case 126:
				p.length, p.extLeft, p.state = 0, 2, stExtLength
			case 127:
				p.length, p.extLeft, p.state = 0, 8, stExtLength
			default:
				p.length = uint64(l)
				p.lengthKnown(&c)
			}
			b = b[1:]
		case stExtLength:
			p.length = p.length<<8 | uint64(b[0])
			b = b[1:]
			if p.extLeft--; p.extLeft == 0 {
				if p.length>>63 != 0 { // the most significant bit must be 0
					p.state = stFailed
					return c
				}
				p.lengthKnown(&c)
			}
		case stMaskKey:
			n := min(int(p.maskLeft), len(b))
			b = b[n:]
			if p.maskLeft -= uint8(n); p.maskLeft == 0 {
				p.headerDone(&c)
			}
		case stPayload:
			n := min(p.remaining, uint64(len(b)))
			b = b[n:]
			if p.opcode < opClose {
				c.DataPayloadBytes += int(n)
			}
			if p.remaining -= n; p.remaining == 0 {
				p.frameDone(&c)
			}
		default: // stClosed, stFailed
			p.state = stFailed
			return c
		}
	}
	return c
}

func (p *Parser) firstByte(h byte) {
	p.fin = h&0x80 != 0
	p.opcode = h & 0x0f
	p.state = stLengthByte
	// RSV1 is permessage-deflate's "compressed" bit; RSV2/RSV3 have no
	// registered extension, so seeing them means we are not reading frames.
	if h&0x30 != 0 {
		p.state = stFailed
		return
	}
	switch p.opcode {
	case opContinuation:
		if !p.inMessage {
			p.state = stFailed
		}
		p.inMessage = !p.fin
	case opText, opBinary:
		if p.inMessage {
			p.state = stFailed
		}
		p.inMessage = !p.fin
	case opClose, opPing, opPong:
		if !p.fin {
			p.state = stFailed
		}
	default:
		p.state = stFailed
	}
}

func (p *Parser) lengthKnown(c *Counts) {
	if p.opcode >= opClose && p.length > 125 {
		p.state = stFailed
		return
	}
	if p.masked {
		p.maskLeft, p.state = 4, stMaskKey
		return
	}
	p.headerDone(c)
}

func (p *Parser) headerDone(c *Counts) {
	c.Frames++
	if p.opcode < opClose {
		c.DataFrames++
	}
	p.remaining = p.length
	p.state = stPayload
	if p.remaining == 0 {
		p.frameDone(c)
	}
}

func (p *Parser) frameDone(c *Counts) {
	switch {
	case p.opcode == opClose:
		p.state = stClosed
		return
	case p.opcode < opClose && p.fin:
		c.Messages++
	}
	p.state = stFirstByte
}
