package transport_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/proxynow/proxynow/transport"
)

func TestCodeString(t *testing.T) {
	seen := make(map[string]transport.Code)
	for c := transport.Code(0); int(c) < transport.NumCodes; c++ {
		s := c.String()
		if s == "" || s == "unknown" {
			t.Errorf("Code(%d).String() = %q", c, s)
		}
		if prev, ok := seen[s]; ok {
			t.Errorf("Code(%d) and Code(%d) share the name %q", prev, c, s)
		}
		seen[s] = c
	}
	if got := transport.Code(transport.NumCodes).String(); got != "unknown" {
		t.Errorf("Code(NumCodes).String() = %q, want unknown", got)
	}
	if got := transport.Code(255).String(); got != "unknown" {
		t.Errorf("Code(255).String() = %q, want unknown", got)
	}
}

func TestCodeErr(t *testing.T) {
	if err := transport.CodeNone.Err(); err != nil {
		t.Errorf("CodeNone.Err() = %v, want nil", err)
	}
	for c := transport.Code(1); int(c) < transport.NumCodes; c++ {
		err := c.Err()
		if err == nil {
			t.Fatalf("%v.Err() = nil", c)
		}
		if err != c.Err() {
			t.Errorf("%v.Err() is not the same value twice", c)
		}
		e, ok := err.(*transport.Error)
		if !ok || e.Code != c || e.Remote || e.Err != nil {
			t.Errorf("%v.Err() = %#v", c, err)
		}
		if want := "transport: " + c.String(); err.Error() != want {
			t.Errorf("%v.Err().Error() = %q, want %q", c, err.Error(), want)
		}
	}
	// Out of range codes give the internal error rather than panicking.
	if got := transport.CodeOf(transport.Code(200).Err()); got != transport.CodeInternal {
		t.Errorf("CodeOf(Code(200).Err()) = %v, want internal", got)
	}
}

func TestErrorIs(t *testing.T) {
	cause := io.ErrUnexpectedEOF
	e := transport.NewError(transport.CodeUpstreamReset, true, cause)
	if e.Error() != "transport: upstream_reset: unexpected EOF" {
		t.Errorf("Error() = %q", e.Error())
	}
	wrapped := fmt.Errorf("proxy: %w", fmt.Errorf("h2: %w", e))
	for _, err := range []error{e, wrapped} {
		if !errors.Is(err, transport.CodeUpstreamReset.Err()) {
			t.Errorf("errors.Is(%v, CodeUpstreamReset.Err()) = false", err)
		}
		if errors.Is(err, transport.CodeUpstreamProtocol.Err()) {
			t.Errorf("errors.Is(%v, CodeUpstreamProtocol.Err()) = true", err)
		}
		if !errors.Is(err, cause) {
			t.Errorf("errors.Is(%v, cause) = false", err)
		}
		if !errors.Is(err, transport.NewError(transport.CodeUpstreamReset, false, nil)) {
			t.Errorf("errors.Is with a fresh *Error of the same code = false")
		}
		got, ok := errors.AsType[*transport.Error](err)
		if !ok || got != e {
			t.Errorf("errors.AsType(%v) = %v, %v", err, got, ok)
		}
	}
	if errors.Unwrap(e) != cause {
		t.Errorf("Unwrap = %v, want %v", errors.Unwrap(e), cause)
	}
	if errors.Unwrap(transport.CodeDraining.Err()) != nil {
		t.Errorf("Unwrap of a sentinel is not nil")
	}
	// A sentinel matches an error of the same code however it was made.
	if !errors.Is(transport.CodeDraining.Err(), transport.NewError(transport.CodeDraining, true, cause)) {
		t.Errorf("sentinel does not match an *Error of its code")
	}
	// A typed nil target must not panic.
	if errors.Is(e, (*transport.Error)(nil)) {
		t.Errorf("errors.Is(e, (*Error)(nil)) = true")
	}
}

func TestCodeOf(t *testing.T) {
	e := transport.NewError(transport.CodeConnectRefused, true, errors.New("dial: refused"))
	tests := []struct {
		name string
		err  error
		want transport.Code
	}{
		{"nil", nil, transport.CodeNone},
		{"sentinel", transport.CodeBodyTooLarge.Err(), transport.CodeBodyTooLarge},
		{"*Error", e, transport.CodeConnectRefused},
		{"wrapped *Error", fmt.Errorf("x: %w", e), transport.CodeConnectRefused},
		{"joined *Error", errors.Join(errors.New("a"), e), transport.CodeConnectRefused},
		{"*Error wrapping a ctx error", transport.NewError(transport.CodeUpstreamReset, false, context.Canceled), transport.CodeUpstreamReset},
		{"context.Canceled", context.Canceled, transport.CodeClientCancelled},
		{"wrapped context.Canceled", fmt.Errorf("x: %w", context.Canceled), transport.CodeClientCancelled},
		{"context.DeadlineExceeded", context.DeadlineExceeded, transport.CodeResponseTimeout},
		{"wrapped DeadlineExceeded", fmt.Errorf("x: %w", context.DeadlineExceeded), transport.CodeResponseTimeout},
		{"other", io.EOF, transport.CodeInternal},
		{"*Error with CodeNone", &transport.Error{}, transport.CodeInternal},
		{"*Error out of range", &transport.Error{Code: 250}, transport.CodeInternal},
		{"typed nil *Error", (*transport.Error)(nil), transport.CodeInternal},
	}
	for _, tt := range tests {
		if got := transport.CodeOf(tt.err); got != tt.want {
			t.Errorf("%s: CodeOf = %v, want %v", tt.name, got, tt.want)
		}
	}
}

//go:noinline
func failInner(c transport.Code) error { return c.Err() }

//go:noinline
func failOuter(c transport.Code) error {
	if err := failInner(c); err != nil {
		return err
	}
	return nil
}

var sink error

func TestCodeAllocs(t *testing.T) {
	if testing.CoverMode() != "" {
		t.Skip("coverage instrumentation may allocate")
	}
	target := transport.CodeUpstreamReset.Err()
	var code transport.Code
	var is bool
	allocs := testing.AllocsPerRun(1000, func() {
		err := failOuter(transport.CodeUpstreamReset)
		is = errors.Is(err, target)
		code = transport.CodeOf(err)
		sink = err
	})
	if allocs != 0 {
		t.Errorf("Err, return, errors.Is and CodeOf: %v allocs, want 0", allocs)
	}
	if !is || code != transport.CodeUpstreamReset {
		t.Errorf("is = %v, code = %v", is, code)
	}
	// CodeOf on a wrapped or context error takes the slow path, which must
	// not allocate either.
	wrapped := fmt.Errorf("x: %w", target)
	allocs = testing.AllocsPerRun(1000, func() {
		code = transport.CodeOf(wrapped)
		code = transport.CodeOf(context.Canceled)
	})
	if allocs != 0 {
		t.Errorf("CodeOf slow path: %v allocs, want 0", allocs)
	}
}

func BenchmarkCodeErr(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		sink = failOuter(transport.CodeUpstreamReset)
	}
}

func BenchmarkCodeOf(b *testing.B) {
	err := failOuter(transport.CodeUpstreamReset)
	b.ReportAllocs()
	var c transport.Code
	for b.Loop() {
		c = transport.CodeOf(err)
	}
	if c != transport.CodeUpstreamReset {
		b.Fatal(c)
	}
}

func BenchmarkCodeOfWrapped(b *testing.B) {
	err := fmt.Errorf("x: %w", transport.CodeUpstreamReset.Err())
	b.ReportAllocs()
	var c transport.Code
	for b.Loop() {
		c = transport.CodeOf(err)
	}
	if c != transport.CodeUpstreamReset {
		b.Fatal(c)
	}
}
