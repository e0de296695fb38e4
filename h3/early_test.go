package h3

import (
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/quicvarint"

	"github.com/proxynow/proxynow/transport"
)

// relay forwards UDP datagrams between one client and a server. While
// holding, it keeps back every server datagram, so the client gets no keys
// but its 0-RTT keys and must send its request in 0-RTT packets, and every
// client datagram that carries a Handshake or a 1-RTT packet, so that the
// handshake cannot complete; the client's Initial and 0-RTT packets pass.
type relay struct {
	pc     *net.UDPConn
	server *net.UDPAddr

	mu         sync.Mutex // guards client, hold, held and heldServer
	client     *net.UDPAddr
	hold       bool
	held       [][]byte // client to server
	heldServer [][]byte // server to client
}

func startRelay(t *testing.T, server string) *relay {
	sa, err := net.ResolveUDPAddr("udp", server)
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{pc: listenUDP(t), server: sa}
	go r.run()
	return r
}

func (r *relay) addr() string { return r.pc.LocalAddr().String() }

func (r *relay) run() {
	buf := make([]byte, 65536)
	for {
		n, from, err := r.pc.ReadFromUDP(buf)
		if err != nil {
			return
		}
		b := append([]byte(nil), buf[:n]...)
		r.mu.Lock()
		if from.Port == r.server.Port && from.IP.Equal(r.server.IP) {
			client := r.client
			if r.hold {
				r.heldServer = append(r.heldServer, b)
				r.mu.Unlock()
				continue
			}
			r.mu.Unlock()
			if client != nil {
				r.pc.WriteToUDP(b, client)
			}
			continue
		}
		r.client = from
		if r.hold && completesHandshake(b) {
			r.held = append(r.held, b)
			r.mu.Unlock()
			continue
		}
		r.mu.Unlock()
		r.pc.WriteToUDP(b, r.server)
	}
}

func (r *relay) setHold(hold bool) {
	r.mu.Lock()
	r.hold = hold
	held, heldServer, client := r.held, r.heldServer, r.client
	r.held, r.heldServer = nil, nil
	r.mu.Unlock()
	for _, b := range held {
		r.pc.WriteToUDP(b, r.server)
	}
	for _, b := range heldServer {
		r.pc.WriteToUDP(b, client)
	}
}

// completesHandshake reports whether a datagram holds a Handshake packet or a
// 1-RTT packet (QUIC v1 headers, RFC 9000 §17), walking coalesced packets.
func completesHandshake(b []byte) bool {
	for len(b) > 0 {
		if b[0]&0x80 == 0 {
			return true // short header: 1-RTT
		}
		typ := b[0] & 0x30 >> 4
		if typ == 2 { // Handshake
			return true
		}
		p := 5 // first byte, version
		if len(b) < p+1 {
			return false
		}
		p += 1 + int(b[p]) // destination connection ID
		if len(b) < p+1 {
			return false
		}
		p += 1 + int(b[p]) // source connection ID
		if typ == 0 {      // Initial: token
			l, n, err := quicvarint.Parse(b[p:])
			if err != nil {
				return false
			}
			p += n + int(l)
		}
		l, n, err := quicvarint.Parse(b[p:])
		if err != nil {
			return false
		}
		p += n + int(l)
		if p > len(b) {
			return false
		}
		b = b[p:]
	}
	return false
}

// ticketCache is a session cache that reports when a ticket arrives.
type ticketCache struct {
	tls.ClientSessionCache
	put chan struct{}
}

func (c *ticketCache) Put(key string, cs *tls.ClientSessionState) {
	c.ClientSessionCache.Put(key, cs)
	if cs != nil {
		select {
		case c.put <- struct{}{}:
		default:
		}
	}
}

func TestServerEarlyData(t *testing.T) {
	for _, mode := range []string{"safe", "off"} {
		t.Run(mode, func(t *testing.T) {
			early := make(chan bool, 4)
			ts := startServer(t, transport.HandlerFunc(func(s transport.ServerStream) {
				early <- s.Request().EarlyData
				echo(s)
			}), func(c *ServerConfig) { c.EarlyData = mode })
			rl := startRelay(t, ts.addr)

			cache := &ticketCache{ClientSessionCache: tls.NewLRUClientSessionCache(4), put: make(chan struct{}, 1)}
			tlsConf := ts.clientTLS.Clone()
			tlsConf.NextProtos = []string{http3.NextProtoH3}
			tlsConf.ServerName = "localhost"
			tlsConf.ClientSessionCache = cache

			ctx := testCtx(t)
			get := func(method string) (*quic.Conn, *http.Response, error) {
				qc, err := quic.DialAddrEarly(ctx, rl.addr(), tlsConf, nil)
				if err != nil {
					return nil, nil, err
				}
				cc := (&http3.Transport{}).NewClientConn(qc)
				req, _ := http.NewRequestWithContext(ctx, method, "https://localhost/", nil)
				resp, err := cc.RoundTrip(req)
				if err != nil {
					qc.CloseWithError(0, "")
					return nil, nil, err
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				return qc, resp, nil
			}

			// A first connection brings a session ticket.
			qc, _, err := get(http.MethodGet)
			if err != nil {
				t.Fatal(err)
			}
			if e := <-early; e {
				t.Error("first request marked EarlyData")
			}
			select {
			case <-cache.put:
			case <-time.After(testTimeout):
				t.Fatal("no session ticket")
			}
			qc.CloseWithError(0, "")
			if raceEnabled && mode == "safe" {
				t.Skip("a client opening streams in 0-RTT races in quic-go (quic-go/quic-go#4303)")
			}

			// The second sends its GET in 0-RTT, and the relay keeps the
			// handshake from completing until the handler has seen it.
			// Without 0-RTT the GET waits for the handshake: nothing to hold.
			rl.setHold(mode == "safe")
			type result struct {
				qc   *quic.Conn
				resp *http.Response
				err  error
			}
			done := make(chan result, 1)
			go func() {
				qc, resp, err := get(http3.MethodGet0RTT)
				done <- result{qc, resp, err}
			}()
			var sawEarly bool
			select {
			case sawEarly = <-early:
			case <-time.After(testTimeout):
				t.Fatal("the 0-RTT request did not reach the handler")
			}
			rl.setHold(false)
			var r result
			select {
			case r = <-done:
			case <-time.After(testTimeout):
				t.Fatal("the 0-RTT request got no response")
			}
			if r.err != nil {
				t.Fatal(r.err)
			}
			defer r.qc.CloseWithError(0, "")
			resp := r.resp
			used0RTT := r.qc.ConnectionState().Used0RTT
			switch mode {
			case "safe":
				if !sawEarly || !used0RTT || resp.Header.Get("X-Early") != "true" {
					t.Errorf("safe: handler EarlyData %v, client Used0RTT %v", sawEarly, used0RTT)
				}
				if st := ts.Stats(); st.EarlyRequests != 1 || st.ZeroRTTAccepted != 1 || st.ZeroRTTRejected != 0 {
					t.Errorf("EarlyRequests %d, ZeroRTTAccepted %d, ZeroRTTRejected %d", st.EarlyRequests, st.ZeroRTTAccepted, st.ZeroRTTRejected)
				}
			case "off":
				if sawEarly || used0RTT || resp.StatusCode != 200 {
					t.Errorf("off: handler EarlyData %v, client Used0RTT %v, status %d", sawEarly, used0RTT, resp.StatusCode)
				}
				// This server's tickets do not allow 0-RTT, so the client
				// offered none: nothing was rejected.
				if st := ts.Stats(); st.ZeroRTTAccepted != 0 || st.ZeroRTTRejected != 0 {
					t.Errorf("ZeroRTTAccepted %d, ZeroRTTRejected %d", st.ZeroRTTAccepted, st.ZeroRTTRejected)
				}
			}
		})
	}
}

// earlyTicketCache is a session cache that reports when a ticket that
// allows 0-RTT arrives.
type earlyTicketCache struct {
	tls.ClientSessionCache
	put chan struct{}
}

func (c *earlyTicketCache) Put(key string, cs *tls.ClientSessionState) {
	c.ClientSessionCache.Put(key, cs)
	if cs == nil {
		return
	}
	if _, ss, err := cs.ResumptionState(); err == nil && ss != nil && ss.EarlyData {
		select {
		case c.put <- struct{}{}:
		default:
		}
	}
}

// TestServerZeroRTTCounters offers 0-RTT to a server that accepts it, to one
// with EarlyData "off" that can decrypt the ticket (shared ticket keys, as
// after a configuration change or across a fleet), and to one with "safe"
// that cannot (other ticket keys, as after a restart with random keys).
func TestServerZeroRTTCounters(t *testing.T) {
	serverTLS, clientTLS := tlsPair(t)
	serverTLS.SetSessionTicketKeys([][32]byte{{1}})
	otherKeysTLS := serverTLS.Clone()
	otherKeysTLS.SetSessionTicketKeys([][32]byte{{2}})
	start := func(tlsConf *tls.Config, earlyData string) *testServer {
		cfg := ServerConfig{TLS: tlsConf, EarlyData: earlyData, Logger: quietLogger()}
		return startServerOn(t, transport.HandlerFunc(echo), cfg, listenUDP(t), clientTLS, nil)
	}
	issuer := start(serverTLS, "safe")
	off := start(serverTLS, "off")
	otherKeys := start(otherKeysTLS, "safe")

	cache := &earlyTicketCache{ClientSessionCache: tls.NewLRUClientSessionCache(4), put: make(chan struct{}, 1)}
	tlsConf := clientTLS.Clone()
	tlsConf.NextProtos = []string{http3.NextProtoH3}
	tlsConf.ServerName = "localhost" // the cache key: one ticket for all three servers
	tlsConf.ClientSessionCache = cache
	ctx := testCtx(t)

	// issuerConns is how many connections issuer has accepted. A
	// connection closed before the server queued it for Accept may never
	// be accepted (quic-go drops it), so each one is closed only once the
	// server counted it.
	var issuerConns uint64
	waitAccepted := func(what string) {
		t.Helper()
		issuerConns++
		waitFor(t, what+" to be accepted", func() bool { return issuer.Stats().Conns >= issuerConns })
	}

	// freshTicket puts a 0-RTT ticket from issuer in the cache. It dials
	// without 0-RTT, so it offers none and counts nowhere.
	freshTicket := func() {
		t.Helper()
		select {
		case <-cache.put:
		default:
		}
		qc, err := quic.DialAddr(ctx, issuer.addr, tlsConf, nil)
		if err != nil {
			t.Fatal(err)
		}
		select {
		case <-cache.put:
		case <-time.After(testTimeout):
			t.Fatal("no 0-RTT session ticket")
		}
		waitAccepted("the ticket's connection")
		qc.CloseWithError(0, "")
	}

	for _, tt := range []struct {
		name   string
		ts     *testServer
		accept bool
	}{
		{"accepted", issuer, true},
		{"off", off, false},
		{"other ticket keys", otherKeys, false},
	} {
		freshTicket()
		qc, err := quic.DialAddrEarly(ctx, tt.ts.addr, tlsConf, nil)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		select {
		case <-qc.HandshakeComplete():
		case <-time.After(testTimeout):
			t.Fatalf("%s: handshake did not complete", tt.name)
		}
		if used := qc.ConnectionState().Used0RTT; used != tt.accept {
			t.Errorf("%s: client Used0RTT %v", tt.name, used)
		}
		var wantAccepted, wantRejected uint64 = 1, 0
		if !tt.accept {
			wantAccepted, wantRejected = 0, 1
		}
		// The server counts when it accepts, which may be after the
		// client's handshake completed.
		waitFor(t, tt.name+" counted", func() bool {
			st := tt.ts.Stats()
			return st.ZeroRTTAccepted+st.ZeroRTTRejected > 0
		})
		if st := tt.ts.Stats(); st.ZeroRTTAccepted != wantAccepted || st.ZeroRTTRejected != wantRejected {
			t.Errorf("%s: ZeroRTTAccepted %d, ZeroRTTRejected %d; want %d, %d",
				tt.name, st.ZeroRTTAccepted, st.ZeroRTTRejected, wantAccepted, wantRejected)
		}
		if tt.ts == issuer {
			// The 0-RTT counters move before Conns does.
			waitAccepted(tt.name)
		}
		qc.CloseWithError(0, "")
	}
	// The dials that fetched tickets offered no 0-RTT.
	if st := issuer.Stats(); st.ZeroRTTAccepted != 1 || st.ZeroRTTRejected != 0 || st.Conns != 4 {
		t.Errorf("issuer: %+v", st)
	}
}
