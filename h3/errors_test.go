package h3

import (
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/proxynow/proxynow/transport"
)

func TestResetCode(t *testing.T) {
	want := map[transport.Code]http3.ErrCode{
		transport.CodeNone:             http3.ErrCodeNoError,
		transport.CodeClientCancelled:  http3.ErrCodeRequestCanceled,
		transport.CodeUpstreamReset:    http3.ErrCodeInternalError,
		transport.CodeUpstreamProtocol: http3.ErrCodeInternalError,
		transport.CodeResponseTimeout:  http3.ErrCodeInternalError,
		transport.CodeDraining:         http3.ErrCodeRequestRejected,
		transport.CodeTooEarly:         http3.ErrCodeRequestRejected,
		transport.CodeOverloaded:       http3.ErrCodeExcessiveLoad,
		transport.CodeHeaderTooLarge:   http3.ErrCodeExcessiveLoad,
		transport.CodeBadRequest:       http3.ErrCodeMessageError,
		transport.CodeInternal:         http3.ErrCodeInternalError,
	}
	for c, w := range want {
		if got := ResetCode(c); got != w {
			t.Errorf("ResetCode(%v) = %v, want %v", c, got, w)
		}
	}
	for c := range transport.Code(transport.NumCodes + 2) {
		got := ResetCode(c)
		if got.String() == fmt.Sprintf("unknown error code: %#x", uint16(got)) {
			t.Errorf("ResetCode(%v) = %v, not an HTTP/3 code", c, got)
		}
		if c != transport.CodeNone && got == http3.ErrCodeNoError {
			t.Errorf("ResetCode(%v) = H3_NO_ERROR", c)
		}
	}
}

func TestDownstreamAndUpstreamCode(t *testing.T) {
	for _, e := range []http3.ErrCode{http3.ErrCodeRequestCanceled, http3.ErrCodeNoError, http3.ErrCodeInternalError, http3.ErrCodeMessageError} {
		if c := DownstreamCode(e); c != transport.CodeClientCancelled {
			t.Errorf("DownstreamCode(%v) = %v", e, c)
		}
	}
	cases := []struct {
		e      http3.ErrCode
		remote bool
		want   transport.Code
	}{
		{http3.ErrCodeRequestRejected, true, transport.CodeUpstreamReset},
		{http3.ErrCodeRequestCanceled, true, transport.CodeUpstreamReset},
		{http3.ErrCodeInternalError, true, transport.CodeUpstreamReset},
		{http3.ErrCodeMessageError, true, transport.CodeUpstreamReset},
		{http3.ErrCodeMessageError, false, transport.CodeUpstreamProtocol},
		{http3.ErrCodeFrameError, false, transport.CodeUpstreamProtocol},
		{http3.ErrCodeQPACKDecompressionFailed, false, transport.CodeUpstreamProtocol},
		{http3.ErrCodeRequestCanceled, false, transport.CodeClientCancelled},
	}
	for _, c := range cases {
		if got := UpstreamCode(c.e, c.remote); got != c.want {
			t.Errorf("UpstreamCode(%v, remote %v) = %v, want %v", c.e, c.remote, got, c.want)
		}
	}
}

func TestUpstreamErr(t *testing.T) {
	streamErr := func(code http3.ErrCode, remote bool) error {
		return &http3.Error{Remote: remote, ErrorCode: code}
	}
	cases := []struct {
		name         string
		err          error
		want         transport.Code
		remote       bool
		notProcessed bool
	}{
		{"rejected", streamErr(http3.ErrCodeRequestRejected, true), transport.CodeUpstreamReset, true, true},
		{"rejected quic", &quic.StreamError{ErrorCode: quic.StreamErrorCode(http3.ErrCodeRequestRejected), Remote: true}, transport.CodeUpstreamReset, true, true},
		{"reset", streamErr(http3.ErrCodeInternalError, true), transport.CodeUpstreamReset, true, false},
		{"wrapped reset", fmt.Errorf("http3: x: %w", streamErr(http3.ErrCodeRequestCanceled, true)), transport.CodeUpstreamReset, true, false},
		{"local malformed", streamErr(http3.ErrCodeMessageError, false), transport.CodeUpstreamProtocol, false, false},
		{"conn closed", &quic.ApplicationError{Remote: true, ErrorCode: 0x100}, transport.CodeUpstreamReset, true, false},
		{"idle", &quic.IdleTimeoutError{}, transport.CodeUpstreamReset, true, false},
		{"stateless reset", &quic.StatelessResetError{}, transport.CodeUpstreamReset, true, false},
		{"protocol violation", &quic.TransportError{Remote: true, ErrorCode: quic.ProtocolViolation}, transport.CodeUpstreamProtocol, true, false},
		{"plain", errors.New("http3: invalid response"), transport.CodeUpstreamProtocol, true, false},
		{"transport error", transport.CodeResponseTimeout.Err(), transport.CodeResponseTimeout, false, false},
	}
	for _, c := range cases {
		err := upstreamErr(c.err)
		e, ok := errors.AsType[*transport.Error](err)
		if !ok || e.Code != c.want || e.Remote != c.remote {
			t.Errorf("%s: upstreamErr = %#v, want code %v remote %v", c.name, err, c.want, c.remote)
		}
		if errors.Is(err, ErrRequestNotProcessed) != c.notProcessed {
			t.Errorf("%s: not-processed = %v", c.name, !c.notProcessed)
		}
	}
}

func TestDownstreamErr(t *testing.T) {
	cases := []struct {
		name    string
		err     error
		resetBy transport.Code
		want    transport.Code
		remote  bool
	}{
		{"client reset", &http3.Error{Remote: true, ErrorCode: http3.ErrCodeRequestCanceled}, 0, transport.CodeClientCancelled, true},
		{"client stop sending", &quic.StreamError{Remote: true, ErrorCode: 0x10c}, 0, transport.CodeClientCancelled, true},
		{"our reset", &quic.StreamError{Remote: false, ErrorCode: 0x107}, transport.CodeOverloaded, transport.CodeOverloaded, false},
		{"client closed conn", &quic.ApplicationError{Remote: true}, 0, transport.CodeClientCancelled, true},
		{"we closed conn", &quic.ApplicationError{Remote: false}, 0, transport.CodeDraining, false},
		{"idle", &quic.IdleTimeoutError{}, 0, transport.CodeClientCancelled, true},
		{"short body", io.ErrUnexpectedEOF, 0, transport.CodeBadRequest, true},
		{"too much body", errors.New("peer sent too much data"), 0, transport.CodeBadRequest, true},
	}
	for _, c := range cases {
		err := downstreamErr(c.err, c.resetBy)
		e, ok := errors.AsType[*transport.Error](err)
		if !ok || e.Code != c.want || e.Remote != c.remote {
			t.Errorf("%s: downstreamErr = %#v, want code %v remote %v", c.name, err, c.want, c.remote)
		}
	}
}

func TestStreamCause(t *testing.T) {
	if err := streamCause(quic.ErrStreamClosed); err != nil {
		t.Errorf("our Close: %v", err)
	}
	if err := streamCause(&quic.StreamError{Remote: false}); err != nil {
		t.Errorf("our Reset: %v", err)
	}
	if c := transport.CodeOf(streamCause(&quic.StreamError{Remote: true, ErrorCode: 0x10c})); c != transport.CodeClientCancelled {
		t.Errorf("STOP_SENDING: %v", c)
	}
	if c := transport.CodeOf(streamCause(&quic.ApplicationError{Remote: false})); c != transport.CodeDraining {
		t.Errorf("server closed the conn: %v", c)
	}
}

func TestDialErr(t *testing.T) {
	cases := []struct {
		name string
		err  error
		want transport.Code
	}{
		{"handshake timeout", &quic.HandshakeTimeoutError{}, transport.CodeConnectTimeout},
		{"idle timeout", &quic.IdleTimeoutError{}, transport.CodeConnectTimeout},
		{"bad certificate", &quic.TransportError{ErrorCode: 0x100 + 42}, transport.CodeUpstreamTLS},
		{"no ALPN", &quic.TransportError{Remote: true, ErrorCode: 0x100 + 120}, transport.CodeUpstreamTLS},
		{"refused", &quic.TransportError{Remote: true, ErrorCode: quic.ConnectionRefused}, transport.CodeConnectRefused},
		{"version", &quic.VersionNegotiationError{}, transport.CodeConnectRefused},
		{"dns", &net.DNSError{Err: "no such host", Name: "x", IsNotFound: true}, transport.CodeUpstreamUnreachable},
		{"no route", &net.OpError{Op: "write", Err: syscall.EHOSTUNREACH}, transport.CodeUpstreamUnreachable},
		{"econnrefused", &net.OpError{Op: "read", Err: syscall.ECONNREFUSED}, transport.CodeConnectRefused},
	}
	for _, c := range cases {
		if got := dialErr(fmt.Errorf("h3: dial: %w", c.err)); got.Code != c.want {
			t.Errorf("%s: dialErr = %v, want %v", c.name, got, c.want)
		}
	}
}

// The request path translates errors without allocating.
func TestErrorTranslationAllocs(t *testing.T) {
	streamErr := &http3.Error{Remote: true, ErrorCode: http3.ErrCodeRequestCanceled}
	rejected := &http3.Error{Remote: true, ErrorCode: http3.ErrCodeRequestRejected}
	stop := &quic.StreamError{Remote: true, ErrorCode: 0x10c}
	if n := testing.AllocsPerRun(100, func() {
		_ = upstreamErr(streamErr)
		_ = upstreamErr(rejected)
		_ = downstreamErr(streamErr, 0)
		_ = downstreamErr(stop, 0)
		_ = streamCause(stop)
		_ = ResetCode(transport.CodeDraining)
	}); n != 0 {
		t.Errorf("%v allocations per translation", n)
	}
}
