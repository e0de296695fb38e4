package h1

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
)

// This file holds what the server and the client share: reading a header
// block (start line and field lines) off a bufio.Reader within limits, and
// turning its field lines into an http.Header with one string allocation for
// the whole block.

// protoError is a violation of the HTTP/1.1 message syntax. On the server it
// becomes the status of the error response; on the client, any protoError is
// CodeUpstreamProtocol.
type protoError struct {
	status int
	msg    string
}

func (e *protoError) Error() string { return "h1: " + e.msg }

// The syntax errors. Their text is the body of the server's error response.
var (
	errRequestLineTooLong = &protoError{http.StatusRequestURITooLong, "request line too long"}
	errHeaderTooLarge     = &protoError{http.StatusRequestHeaderFieldsTooLarge, "header section too large"}
	errTooManyFields      = &protoError{http.StatusRequestHeaderFieldsTooLarge, "too many header fields"}
	errBareLF             = &protoError{http.StatusBadRequest, "line not terminated by CRLF"}
	errRequestLine        = &protoError{http.StatusBadRequest, "malformed request line"}
	errMethod             = &protoError{http.StatusBadRequest, "invalid method"}
	errVersion            = &protoError{http.StatusBadRequest, "unsupported HTTP version"}
	errTarget             = &protoError{http.StatusBadRequest, "invalid request target"}
	errConnect            = &protoError{http.StatusNotImplemented, "CONNECT is not supported"}
	errObsFold            = &protoError{http.StatusBadRequest, "obsolete line folding"}
	errSpaceBeforeColon   = &protoError{http.StatusBadRequest, "whitespace before colon in field line"}
	errFieldName          = &protoError{http.StatusBadRequest, "invalid field name"}
	errFieldValue         = &protoError{http.StatusBadRequest, "invalid character in field value"}
	errCLAndTE            = &protoError{http.StatusBadRequest, "both Content-Length and Transfer-Encoding"}
	errContentLength      = &protoError{http.StatusBadRequest, "invalid Content-Length"}
	errTransferEncoding   = &protoError{http.StatusBadRequest, "invalid Transfer-Encoding"}
	errTEUnsupported      = &protoError{http.StatusNotImplemented, "unsupported transfer coding"}
	errTEInHTTP10         = &protoError{http.StatusBadRequest, "Transfer-Encoding in an HTTP/1.0 request"}
	errHost               = &protoError{http.StatusBadRequest, "missing, repeated or invalid Host"}
	errExpect             = &protoError{http.StatusExpectationFailed, "unsupported expectation"}
	errChunk              = &protoError{http.StatusBadRequest, "malformed chunked encoding"}
	errChunkExtTooLarge   = &protoError{http.StatusBadRequest, "chunk extensions too large"}
	errStatusLine         = &protoError{http.StatusBadGateway, "malformed status line"}
	errTooMany1xx         = &protoError{http.StatusBadGateway, "too many 1xx responses"}
	errUpgrade            = &protoError{http.StatusBadGateway, "unexpected 101 response"}
)

// span is a [start, end) range of a block's buffer.
type span struct{ start, end int32 }

// block is one header section as read from the wire: its lines, without
// their CRLF, packed into buf. A conn keeps one and reuses it.
type block struct {
	buf   []byte
	lines []span
	n     int // bytes read from the wire for this block, CRLFs included
}

// blockLimits bound one header section.
type blockLimits struct {
	maxBytes     int  // all lines with their CRLFs
	maxFields    int  // field lines, the start line excluded
	maxStartLine int  // the start line without CRLF; 0: no start line
	skipEmpty    bool // ignore empty lines before the start line (RFC 9112 §2.2)
}

// read reads lines until the empty line that ends the section. It returns
// io.EOF when the reader ends before the first byte, io.ErrUnexpectedEOF when
// it ends in the middle, a *protoError for syntax and limit violations, and
// the reader's other errors (timeouts) as they are. Lines must end in CRLF:
// a bare LF is an error (RFC 9112 §2.2 allows accepting it; an edge proxy does
// not, as a lenient recipient is how request smuggling starts).
func (b *block) read(br *bufio.Reader, lim blockLimits) error {
	b.buf = b.buf[:0]
	b.lines = b.lines[:0]
	b.n = 0
	for {
		start := len(b.buf)
		startLine := lim.maxStartLine > 0 && len(b.lines) == 0
		for {
			frag, err := br.ReadSlice('\n')
			b.n += len(frag)
			if startLine && len(b.buf)-start+len(frag) > lim.maxStartLine+2 {
				return errRequestLineTooLong
			}
			if b.n > lim.maxBytes {
				return errHeaderTooLarge
			}
			b.buf = append(b.buf, frag...)
			if err == nil {
				break
			}
			if err == bufio.ErrBufferFull {
				continue
			}
			if err == io.EOF {
				if b.n == 0 {
					return io.EOF
				}
				return io.ErrUnexpectedEOF
			}
			return err
		}
		end := len(b.buf) - 1 // at the '\n'
		if end == start || b.buf[end-1] != '\r' {
			return errBareLF
		}
		end--
		b.buf = b.buf[:end]
		if end == start {
			if startLine && lim.skipEmpty {
				continue
			}
			if startLine {
				return errRequestLine
			}
			return nil
		}
		if startLine && end-start > lim.maxStartLine {
			return errRequestLineTooLong
		}
		if !startLine && len(b.lines) >= lim.maxFields+btoi(lim.maxStartLine > 0) {
			return errTooManyFields
		}
		b.lines = append(b.lines, span{int32(start), int32(end)})
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Field kinds: the fields the transports treat specially.
const (
	kindOther uint8 = 1 << iota
	kindHost
	kindContentLength
	kindTransferEncoding
	kindExpect
	kindConnection
	kindUpgrade
)

// field is one parsed field line: offsets into the block's buffer (and into
// the string made of it).
type field struct {
	name, value span
	kind        uint8
}

// parseFields validates the field lines of b from line first on, canonicalises
// their names in place, and appends them to fs. RFC 9112 §5: a field name is a
// token immediately followed by the colon (§5.1: no whitespace before it), a
// line starting with whitespace is obs-fold (§5.2, rejected), and a value
// holds no control character other than HTAB (RFC 9110 §5.5).
func parseFields(b *block, first int, fs []field) ([]field, error) {
	for _, ln := range b.lines[first:] {
		line := b.buf[ln.start:ln.end]
		if line[0] == ' ' || line[0] == '\t' {
			return fs, errObsFold
		}
		i := 0
		for i < len(line) && isTokenChar(line[i]) {
			i++
		}
		if i == len(line) {
			return fs, errFieldName
		}
		if line[i] != ':' {
			if line[i] == ' ' || line[i] == '\t' {
				return fs, errSpaceBeforeColon
			}
			return fs, errFieldName
		}
		if i == 0 {
			return fs, errFieldName
		}
		vs, ve := i+1, len(line)
		for vs < ve && (line[vs] == ' ' || line[vs] == '\t') {
			vs++
		}
		for ve > vs && (line[ve-1] == ' ' || line[ve-1] == '\t') {
			ve--
		}
		for _, c := range line[vs:ve] {
			if !isValueChar(c) {
				return fs, errFieldValue
			}
		}
		name := line[:i]
		canonicalize(name)
		fs = append(fs, field{
			name:  span{ln.start, ln.start + int32(i)},
			value: span{ln.start + int32(vs), ln.start + int32(ve)},
			kind:  kindOf(name),
		})
	}
	return fs, nil
}

// canonicalize rewrites a token field name in place to the form of
// textproto.CanonicalMIMEHeaderKey: upper case first and after each dash.
func canonicalize(name []byte) {
	upper := true
	for i, c := range name {
		if upper && 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		} else if !upper && 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		name[i] = c
		upper = c == '-'
	}
}

func kindOf(name []byte) uint8 {
	switch len(name) {
	case 4:
		if string(name) == "Host" {
			return kindHost
		}
	case 6:
		if string(name) == "Expect" {
			return kindExpect
		}
	case 7:
		if string(name) == "Upgrade" {
			return kindUpgrade
		}
	case 10:
		if string(name) == "Connection" {
			return kindConnection
		}
	case 14:
		if string(name) == "Content-Length" {
			return kindContentLength
		}
	case 17:
		if string(name) == "Transfer-Encoding" {
			return kindTransferEncoding
		}
	}
	return kindOther
}

// buildHeader makes the http.Header of the fields whose kind is not in skip.
// str is the string of the block's buffer: keys and values are substrings of
// it, and all values share one backing array, so the header costs three
// allocations (the map, the values, and str made by the caller) whatever its
// size.
func buildHeader(str string, fs []field, skip uint8) http.Header {
	n := 0
	for i := range fs {
		if fs[i].kind&skip == 0 {
			n++
		}
	}
	h := make(http.Header, n)
	if n == 0 {
		return h
	}
	vals := make([]string, n)
	for i := range fs {
		f := &fs[i]
		if f.kind&skip != 0 {
			continue
		}
		k := str[f.name.start:f.name.end]
		v := str[f.value.start:f.value.end]
		if vv, ok := h[k]; ok {
			h[k] = append(vv, v)
			continue
		}
		vals[0] = v
		h[k] = vals[:1:1]
		vals = vals[1:]
	}
	return h
}

// parseContentLength parses a Content-Length value: 1*DIGIT, or a list of
// identical ones (RFC 9110 §8.6). prev is the value of an earlier field, or -1.
func parseContentLength(v []byte, prev int64) (int64, error) {
	for v != nil {
		var elem []byte
		elem, v = cutList(v)
		if len(elem) == 0 {
			return 0, errContentLength
		}
		var n int64
		for _, c := range elem {
			if c < '0' || c > '9' {
				return 0, errContentLength
			}
			if n > (1<<63-1-9)/10 {
				return 0, errContentLength
			}
			n = n*10 + int64(c-'0')
		}
		if prev >= 0 && n != prev {
			return 0, errContentLength
		}
		prev = n
	}
	if prev < 0 {
		return 0, errContentLength
	}
	return prev, nil
}

// cutList returns the first element of a comma-separated list, OWS trimmed,
// and the rest after the comma: nil when there was no comma, and empty but
// non-nil after a trailing comma, so that "a," has an empty last element.
// Loop with "for v != nil".
func cutList(v []byte) (elem, rest []byte) {
	i := bytes.IndexByte(v, ',')
	if i < 0 {
		return trimOWS(v), nil
	}
	return trimOWS(v[:i]), v[i+1:]
}

func trimOWS(v []byte) []byte {
	for len(v) > 0 && (v[0] == ' ' || v[0] == '\t') {
		v = v[1:]
	}
	for len(v) > 0 && (v[len(v)-1] == ' ' || v[len(v)-1] == '\t') {
		v = v[:len(v)-1]
	}
	return v
}

// equalFold reports whether b equals the lower-case ASCII s, ignoring case.
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range b {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

// hasToken reports whether the comma-separated list v holds token (lower
// case), ignoring case.
func hasToken(v []byte, token string) bool {
	for v != nil {
		var elem []byte
		elem, v = cutList(v)
		if equalFold(elem, token) {
			return true
		}
	}
	return false
}

func hasTokenString(v string, token string) bool {
	for len(v) > 0 {
		i := 0
		for i < len(v) && v[i] != ',' {
			i++
		}
		elem := v[:i]
		for len(elem) > 0 && (elem[0] == ' ' || elem[0] == '\t') {
			elem = elem[1:]
		}
		for len(elem) > 0 && (elem[len(elem)-1] == ' ' || elem[len(elem)-1] == '\t') {
			elem = elem[:len(elem)-1]
		}
		if len(elem) == len(token) {
			match := true
			for j := 0; j < len(elem); j++ {
				c := elem[j]
				if 'A' <= c && c <= 'Z' {
					c += 'a' - 'A'
				}
				if c != token[j] {
					match = false
					break
				}
			}
			if match {
				return true
			}
		}
		if i == len(v) {
			break
		}
		v = v[i+1:]
	}
	return false
}

// Character classes.
var (
	tokenTable [256]bool // tchar (RFC 9110 §5.6.2)
	valueTable [256]bool // field-vchar, SP and HTAB (RFC 9110 §5.5)
)

func init() {
	for c := '0'; c <= '9'; c++ {
		tokenTable[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		tokenTable[c] = true
		tokenTable[c-'a'+'A'] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		tokenTable[c] = true
	}
	for c := 0x20; c < 0x100; c++ {
		valueTable[c] = c != 0x7f
	}
	valueTable['\t'] = true
}

func isTokenChar(c byte) bool { return tokenTable[c] }
func isValueChar(c byte) bool { return valueTable[c] }

func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !tokenTable[s[i]] {
			return false
		}
	}
	return true
}

// validFieldValue reports whether a field value can be written as is: no
// CR, LF, NUL or other control character but HTAB.
func validFieldValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if !valueTable[s[i]] {
			return false
		}
	}
	return true
}

// validHost reports whether h is a valid uri-host with an optional port
// (RFC 9110 §7.2, RFC 3986 §3.2.2). It is stricter than the grammar: a
// reg-name holds only letters, digits, '-', '.', '_' and '~' (no
// percent-encoding or sub-delims, which no DNS name needs), an IP-literal only
// hex digits, ':' and '.', and a port, when its colon is there, 1 to 5 digits.
func validHost(h []byte) bool {
	if len(h) == 0 {
		return false
	}
	rest := h
	if h[0] == '[' {
		i := 1
		colon := false
		for i < len(h) && h[i] != ']' {
			c := h[i]
			switch {
			case c == ':':
				colon = true
			case c == '.', '0' <= c && c <= '9', 'a' <= c && c <= 'f', 'A' <= c && c <= 'F':
			default:
				return false
			}
			i++
		}
		if i == len(h) || !colon {
			return false
		}
		rest = h[i+1:]
	} else {
		i := 0
		for i < len(h) && h[i] != ':' {
			c := h[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
				c == '-' || c == '.' || c == '_' || c == '~') {
				return false
			}
			i++
		}
		if i == 0 {
			return false
		}
		rest = h[i:]
	}
	if len(rest) == 0 {
		return true
	}
	if rest[0] != ':' || len(rest) < 2 || len(rest) > 6 {
		return false
	}
	for _, c := range rest[1:] {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// errBodyClosed is returned by a body's Read after its Close, or after the
// server has finished the exchange.
var errBodyClosed = errors.New("h1: read on closed body")
