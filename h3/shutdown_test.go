package h3

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/quicvarint"

	"github.com/proxynow/proxynow/transport"
)

// slowHandler answers /slow only once release is closed, and everything
// else at once; entered receives the path of every request that reaches it.
func slowHandler(entered chan<- string, release <-chan struct{}) transport.Handler {
	return transport.HandlerFunc(func(s transport.ServerStream) {
		entered <- s.Request().Path
		if s.Request().Path == "/slow" {
			select {
			case <-release:
			case <-s.Context().Done():
				return
			}
		}
		echo(s)
	})
}

// watchControlStream accepts the server's unidirectional streams on qc
// itself (instead of quic-go's client) and reports the stream ID of every
// GOAWAY frame on the control stream (RFC 9114 §6.2.1, §7.2.6).
func watchControlStream(t *testing.T, qc *quic.Conn) <-chan uint64 {
	goaways := make(chan uint64, 4)
	go func() {
		for {
			str, err := qc.AcceptUniStream(context.Background())
			if err != nil {
				return
			}
			go func() {
				r := bufio.NewReader(str)
				typ, err := quicvarint.Read(r)
				if err != nil || typ != 0x00 { // not the control stream
					io.Copy(io.Discard, r)
					return
				}
				for {
					ft, err1 := quicvarint.Read(r)
					l, err2 := quicvarint.Read(r)
					if err1 != nil || err2 != nil {
						return
					}
					payload := make([]byte, l)
					if _, err := io.ReadFull(r, payload); err != nil {
						return
					}
					if ft == 0x07 { // GOAWAY
						id, _, err := quicvarint.Parse(payload)
						if err != nil {
							t.Errorf("malformed GOAWAY: %v", err)
							return
						}
						goaways <- id
					}
				}
			}()
		}
	}()
	return goaways
}

// TestServerShutdownGoAway drains with a request in flight, watched by a
// client that parses the control stream itself and, unlike quic-go's client,
// neither stops opening streams after GOAWAY nor closes the connection.
func TestServerShutdownGoAway(t *testing.T) {
	entered := make(chan string, 4)
	release := make(chan struct{})
	ts := startServer(t, slowHandler(entered, release), nil)

	qc := dialQUIC(t, ts.addr, ts.clientTLS, nil)
	goaways := watchControlStream(t, qc)
	cc := (&http3.Transport{DisableCompression: true}).NewRawClientConn(qc)
	do := func(path string) (*http.Response, error) {
		req, _ := http.NewRequestWithContext(testCtx(t), http.MethodGet, ts.url(path), nil)
		return cc.RoundTrip(req)
	}

	type result struct {
		resp *http.Response
		err  error
	}
	slow := make(chan result, 1)
	go func() {
		resp, err := do("/slow")
		slow <- result{resp, err}
	}()
	if p := <-entered; p != "/slow" {
		t.Fatalf("handler saw %s", p)
	}

	shut := make(chan error, 1)
	go func() { shut <- ts.Shutdown(testCtx(t)) }()
	select {
	case id := <-goaways:
		// The first request used stream 0; GOAWAY names the first stream
		// the server will not process.
		if id != 4 {
			t.Errorf("GOAWAY stream ID %d, want 4", id)
		}
	case <-time.After(testTimeout):
		t.Fatal("no GOAWAY")
	}

	// A stream opened after GOAWAY is rejected, unprocessed.
	_, err := do("/late")
	if code, ok := h3ErrCode(err); !ok || code != http3.ErrCodeRequestRejected {
		t.Errorf("request after GOAWAY: %v, want H3_REQUEST_REJECTED", err)
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a request in flight", err)
	default:
	}

	// The request in flight completes in full.
	close(release)
	r := <-slow
	if r.err != nil {
		t.Fatalf("request in flight: %v", r.err)
	}
	body, err := io.ReadAll(r.resp.Body)
	r.resp.Body.Close()
	if err != nil || r.resp.StatusCode != 200 || r.resp.Trailer.Get("X-Body-Sha256") == "" {
		t.Fatalf("request in flight: status %d, %d bytes, err %v, trailer %v", r.resp.StatusCode, len(body), err, r.resp.Trailer)
	}

	// This client keeps the connection open: the server closes it once
	// idle, and Shutdown returns.
	select {
	case err := <-shut:
		if err != nil {
			t.Errorf("Shutdown = %v", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("Shutdown did not return")
	}
	<-qc.Context().Done()
	if e, ok := errors.AsType[*quic.ApplicationError](context.Cause(qc.Context())); !ok || !e.Remote || http3.ErrCode(e.ErrorCode) != http3.ErrCodeNoError {
		t.Errorf("connection closed with %v, want H3_NO_ERROR from the server", context.Cause(qc.Context()))
	}
	select {
	case p := <-entered:
		t.Errorf("handler saw %s after GOAWAY", p)
	default:
	}
	select {
	case err := <-ts.served:
		if err != nil {
			t.Errorf("Serve = %v", err)
		}
		ts.served <- nil // for the cleanup
	case <-time.After(testTimeout):
		t.Error("Serve did not return after Shutdown")
	}
}

// TestServerShutdownQuicGoClient drains under quic-go's own client, which
// closes the connection itself once its last stream is done.
func TestServerShutdownQuicGoClient(t *testing.T) {
	entered := make(chan string, 4)
	release := make(chan struct{})
	ts := startServer(t, slowHandler(entered, release), nil)
	cl := ts.client(t)

	// An idle connection, and one with a request in flight.
	req, _ := http.NewRequestWithContext(testCtx(t), http.MethodGet, ts.url("/warm"), nil)
	resp, err := cl.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	<-entered

	slow := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(testCtx(t), http.MethodGet, ts.url("/slow"), nil)
		resp, err := cl.RoundTrip(req)
		if err == nil {
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		slow <- err
	}()
	<-entered
	shut := make(chan error, 1)
	go func() { shut <- ts.Shutdown(testCtx(t)) }()
	close(release)
	if err := <-slow; err != nil {
		t.Errorf("request in flight: %v", err)
	}
	select {
	case err := <-shut:
		if err != nil {
			t.Errorf("Shutdown = %v", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("Shutdown did not return")
	}
	if n := ts.Stats().ConnsOpen; n != 0 {
		t.Errorf("ConnsOpen after Shutdown = %d", n)
	}
}

// TestServerShutdownTimeout: a request that does not finish within the
// drain's context is cut, and Shutdown reports the context's error.
func TestServerShutdownTimeout(t *testing.T) {
	entered := make(chan string, 4)
	ts := startServer(t, slowHandler(entered, nil), nil)
	cl := ts.client(t)
	slow := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(testCtx(t), http.MethodGet, ts.url("/slow"), nil)
		resp, err := cl.RoundTrip(req)
		if err == nil {
			resp.Body.Close()
		}
		slow <- err
	}()
	<-entered
	ctx, cancel := context.WithTimeout(testCtx(t), 100*time.Millisecond)
	defer cancel()
	if err := ts.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown = %v, want the context's deadline", err)
	}
	if err := <-slow; err == nil {
		t.Error("request cut by the drain succeeded")
	}
}
