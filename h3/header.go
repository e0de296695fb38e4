package h3

import (
	"net/http"
	"strconv"
	"strings"
	"sync"
	"unsafe"

	"github.com/quic-go/qpack"
	"github.com/quic-go/quic-go/quicvarint"
	"golang.org/x/net/http/httpguts"
)

// HTTP/3 frame types (RFC 9114 §7.2).
const (
	frameTypeData    = 0x00
	frameTypeHeaders = 0x01
)

// frameHeaderRoom is the most a frame header takes: a one-byte type and an
// eight-byte length.
const frameHeaderRoom = 9

// fieldEncoder encodes one field section into a HEADERS frame. It uses
// QPACK's static table and literals only (no dynamic table, so no encoder
// stream and no blocked streams), as quic-go's own server does.
//
// The frame is built in place: b starts with frameHeaderRoom spare bytes that
// frame fills with the frame header once the payload length is known, so the
// frame is one contiguous slice written with one call.
type fieldEncoder struct {
	b      []byte
	enc    *qpack.Encoder
	fields int
}

// Write implements io.Writer for the qpack encoder.
func (e *fieldEncoder) Write(p []byte) (int, error) {
	e.b = append(e.b, p...)
	return len(p), nil
}

var encoderPool = sync.Pool{New: func() any {
	e := &fieldEncoder{b: make([]byte, frameHeaderRoom, 512)}
	e.enc = qpack.NewEncoder(e)
	return e
}}

func getEncoder() *fieldEncoder {
	e := encoderPool.Get().(*fieldEncoder)
	e.b = e.b[:frameHeaderRoom]
	e.fields = 0
	_ = e.enc.Close() // starts a new field section: the prefix is written again
	return e
}

func putEncoder(e *fieldEncoder) {
	if cap(e.b) > 64<<10 {
		return // let an unusually large section go
	}
	encoderPool.Put(e)
}

// field encodes one field. name must be lowercase (RFC 9114 §4.2).
func (e *fieldEncoder) field(name, value string) {
	// The qpack encoder's only error is its writer's, and ours never fails.
	_ = e.enc.WriteField(qpack.HeaderField{Name: name, Value: value})
	e.fields++
}

func (e *fieldEncoder) status(code int) {
	if code >= 0 && code < len(statusText) {
		e.field(":status", statusText[code])
		return
	}
	e.field(":status", strconv.Itoa(code))
}

// contentLength encodes a content-length field without allocating its
// value: the encoder copies it at once.
func (e *fieldEncoder) contentLength(n int64) {
	var b [20]byte
	v := strconv.AppendInt(b[:0], n, 10)
	e.field("content-length", unsafe.String(unsafe.SliceData(v), len(v)))
}

// statusText holds the decimal forms of the status codes below 600, so that
// encoding :status allocates nothing.
var statusText = func() (s [600]string) {
	for i := 100; i < len(s); i++ {
		s[i] = strconv.Itoa(i)
	}
	return s
}()

// header encodes the fields of h that may appear in an HTTP/3 message:
// connection-specific fields (RFC 9114 §4.2) and framing fields are left out,
// since HTTP/3 frames the body itself. With trailer set, only fields allowed
// in a trailer section are kept.
func (e *fieldEncoder) header(h http.Header, trailer bool) {
	for k, vv := range h {
		if len(vv) == 0 || k == "" || k[0] == ':' {
			continue
		}
		if connectionSpecific(k) || strings.HasPrefix(k, http.TrailerPrefix) {
			continue
		}
		if trailer && !httpguts.ValidTrailerHeader(k) {
			continue
		}
		name := lowerName(k)
		for _, v := range vv {
			e.field(name, v)
		}
	}
}

// frame completes the HEADERS frame and returns it. It is valid until the
// encoder is put back.
func (e *fieldEncoder) frame() []byte {
	var hdr [frameHeaderRoom]byte
	h := quicvarint.Append(hdr[:0], frameTypeHeaders)
	h = quicvarint.Append(h, uint64(len(e.b)-frameHeaderRoom))
	start := frameHeaderRoom - len(h)
	copy(e.b[start:], h)
	return e.b[start:]
}

// connectionSpecific reports whether k, a header key in any case, names a
// field that must not appear in HTTP/3 (RFC 9114 §4.2) or that the
// transport derives itself (Content-Length).
func connectionSpecific(k string) bool {
	switch len(k) {
	case 7:
		return strings.EqualFold(k, "upgrade")
	case 10:
		return strings.EqualFold(k, "connection") || strings.EqualFold(k, "keep-alive")
	case 14:
		return strings.EqualFold(k, "content-length")
	case 16:
		return strings.EqualFold(k, "proxy-connection")
	case 17:
		return strings.EqualFold(k, "transfer-encoding")
	}
	return false
}

// lowerName returns the lowercase form of a header key without allocating
// for the common canonical keys and for keys that already are lowercase.
func lowerName(k string) string {
	if l, ok := commonLower[k]; ok {
		return l
	}
	for i := 0; i < len(k); i++ {
		if c := k[i]; 'A' <= c && c <= 'Z' {
			return strings.ToLower(k)
		}
	}
	return k
}

var commonLower = func() map[string]string {
	names := []string{
		"accept", "accept-charset", "accept-encoding", "accept-language", "accept-ranges",
		"access-control-allow-credentials", "access-control-allow-headers",
		"access-control-allow-methods", "access-control-allow-origin",
		"access-control-expose-headers", "access-control-max-age",
		"access-control-request-headers", "access-control-request-method",
		"age", "allow", "alt-svc", "authorization", "cache-control", "cdn-cache-control",
		"content-disposition", "content-encoding", "content-language", "content-location",
		"content-range", "content-security-policy", "content-type", "cookie", "date",
		"early-data", "etag", "expect", "expires", "forwarded", "from", "grpc-encoding",
		"grpc-message", "grpc-status", "grpc-timeout", "host", "if-match",
		"if-modified-since", "if-none-match", "if-range", "if-unmodified-since", "last-modified",
		"link", "location", "max-forwards", "origin", "pragma", "priority", "proxy-authenticate",
		"proxy-authorization", "proxy-status", "purpose", "range", "referer", "referrer-policy",
		"refresh", "retry-after", "server", "server-timing", "set-cookie",
		"strict-transport-security", "te", "timing-allow-origin", "traceparent", "tracestate",
		"trailer", "user-agent", "vary", "via", "www-authenticate", "x-content-type-options",
		"x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-frame-options",
		"x-real-ip", "x-request-id", "x-xss-protection",
	}
	m := make(map[string]string, len(names))
	for _, n := range names {
		m[http.CanonicalHeaderKey(n)] = n
	}
	return m
}()
