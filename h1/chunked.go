package h1

import (
	"bufio"
	"io"
	"net/http"
)

// maxChunkLine bounds a chunk-size line with its extensions and CRLF; it must
// fit the bufio.Reader (bufSize).
const maxChunkLine = 4096

// chunkedReader decodes the chunked transfer coding (RFC 9112 §7.1) strictly:
// chunk sizes are bare hex digits without sign, prefix or whitespace and must
// fit an int64; extensions are parsed (RFC 9112 §7.1.1) and dropped, within a
// budget; each chunk's data must be followed by CRLF; the trailer section is
// read with the header rules and limits.
//
// Errors: io.EOF at the end, a *protoError for a malformed coding,
// io.ErrUnexpectedEOF when the stream ends early, and the reader's errors.
type chunkedReader struct {
	br      *bufio.Reader
	blk     *block // scratch for the trailer section
	lim     blockLimits
	extLeft int // extension bytes still allowed

	left    int64 // data bytes left in the current chunk
	state   uint8
	err     error
	trailer http.Header // the trailer fields, once at EOF; nil if none
	fs      []field
}

const (
	chunkSize uint8 = iota // expecting a chunk-size line
	chunkData              // inside chunk data
	chunkCRLF              // expecting the CRLF after chunk data
	chunkDone              // the last chunk and trailer section were read
)

func (r *chunkedReader) init(br *bufio.Reader, blk *block, lim blockLimits) {
	*r = chunkedReader{br: br, blk: blk, lim: lim, extLeft: lim.maxBytes, fs: r.fs[:0]}
}

// Read reads chunk data. It returns the data of at most one chunk.
func (r *chunkedReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	for {
		switch r.state {
		case chunkDone:
			return 0, io.EOF
		case chunkSize:
			if err := r.readSize(); err != nil {
				return 0, r.fail(err)
			}
		case chunkCRLF:
			if err := r.readCRLF(); err != nil {
				return 0, r.fail(err)
			}
		case chunkData:
			if len(p) == 0 {
				return 0, nil
			}
			if int64(len(p)) > r.left {
				p = p[:r.left]
			}
			n, err := r.br.Read(p)
			r.left -= int64(n)
			if r.left == 0 {
				r.state = chunkCRLF
				// Consume the CRLF, and see the last chunk, when they are
				// already buffered: the caller learns of EOF with the
				// last data and need not call again.
				if r.br.Buffered() >= 2 {
					if err := r.readCRLF(); err != nil {
						return n, r.fail(err)
					}
					if r.lastChunkBuffered() {
						if err := r.readSize(); err != nil {
							return n, r.fail(err)
						}
					}
				}
			}
			if err != nil {
				if err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				return n, r.fail(err)
			}
			if r.state == chunkDone {
				return n, io.EOF
			}
			return n, nil
		}
	}
}

// lastChunkBuffered reports whether a whole "0\r\n\r\n" (last chunk, no
// extension, no trailer) is buffered, the common end of a body.
func (r *chunkedReader) lastChunkBuffered() bool {
	b, _ := r.br.Peek(5)
	return len(b) == 5 && string(b) == "0\r\n\r\n"
}

// discard skips at most max data bytes and reports whether the body ended
// within them.
func (r *chunkedReader) discard(max int64) bool {
	for r.err == nil && max >= 0 {
		switch r.state {
		case chunkDone:
			return true
		case chunkData:
			n := min(r.left, max, int64(r.br.Size()))
			d, err := r.br.Discard(int(n))
			r.left -= int64(d)
			max -= int64(d)
			if err != nil {
				r.fail(err)
				return false
			}
			if r.left == 0 {
				r.state = chunkCRLF
			}
			if max == 0 && r.state == chunkData {
				return false
			}
		case chunkSize:
			if err := r.readSize(); err != nil {
				r.fail(err)
			}
		case chunkCRLF:
			if err := r.readCRLF(); err != nil {
				r.fail(err)
			}
		}
	}
	return false
}

func (r *chunkedReader) fail(err error) error {
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	r.err = err
	return err
}

func (r *chunkedReader) readCRLF() error {
	b, err := r.br.Peek(2)
	if err != nil {
		if len(b) > 0 && b[0] != '\r' {
			return errChunk
		}
		return err
	}
	if b[0] != '\r' || b[1] != '\n' {
		return errChunk
	}
	r.br.Discard(2)
	r.state = chunkSize
	return nil
}

// readSize reads a chunk-size line: chunk-size [ chunk-ext ] CRLF.
func (r *chunkedReader) readSize() error {
	line, err := r.br.ReadSlice('\n')
	if err != nil {
		if err == bufio.ErrBufferFull {
			return errChunkExtTooLarge
		}
		return err
	}
	if len(line) > maxChunkLine {
		return errChunkExtTooLarge
	}
	if len(line) < 2 || line[len(line)-2] != '\r' {
		return errChunk
	}
	line = line[:len(line)-2]
	var size int64
	i := 0
	for ; i < len(line); i++ {
		v, ok := unhex(line[i])
		if !ok {
			break
		}
		if size > (1<<63-1)>>4 {
			return errChunk
		}
		size = size<<4 | int64(v)
	}
	if i == 0 {
		return errChunk
	}
	if ext := line[i:]; len(ext) > 0 {
		r.extLeft -= len(ext)
		if r.extLeft < 0 {
			return errChunkExtTooLarge
		}
		if !validChunkExt(ext) {
			return errChunk
		}
	}
	if size > 0 {
		r.left = size
		r.state = chunkData
		return nil
	}
	// The last chunk: the trailer section follows (RFC 9112 §7.1.2).
	lim := r.lim
	lim.maxStartLine = 0
	if err := r.blk.read(r.br, lim); err != nil {
		return err
	}
	if len(r.blk.lines) > 0 {
		fs, err := parseFields(r.blk, 0, r.fs[:0])
		r.fs = fs
		if err != nil {
			return err
		}
		// Framing and routing fields are never taken from trailers (RFC
		// 9110 §6.5.1).
		r.trailer = buildHeader(string(r.blk.buf), fs, kindHost|kindContentLength|kindTransferEncoding|kindConnection|kindExpect)
		if len(r.trailer) == 0 {
			r.trailer = nil
		}
	}
	r.state = chunkDone
	return nil
}

// validChunkExt checks *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] ),
// ext-val being a token or a quoted-string.
func validChunkExt(b []byte) bool {
	i := 0
	ws := func() {
		for i < len(b) && (b[i] == ' ' || b[i] == '\t') {
			i++
		}
	}
	token := func() bool {
		j := i
		for i < len(b) && isTokenChar(b[i]) {
			i++
		}
		return i > j
	}
	for i < len(b) {
		ws()
		if i == len(b) || b[i] != ';' {
			return false
		}
		i++
		ws()
		if !token() {
			return false
		}
		j := i
		ws()
		if i < len(b) && b[i] == '=' {
			i++
			ws()
			if i < len(b) && b[i] == '"' {
				i++
				for {
					if i == len(b) {
						return false
					}
					c := b[i]
					i++
					if c == '"' {
						break
					}
					if c == '\\' {
						if i == len(b) || !isValueChar(b[i]) {
							return false
						}
						i++
						continue
					}
					if !isValueChar(c) {
						return false
					}
				}
			} else if !token() {
				return false
			}
		} else {
			i = j
		}
	}
	return true
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}
