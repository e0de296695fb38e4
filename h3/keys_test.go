package h3

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/proxynow/proxynow/transport"
)

func TestLoadOrCreateKeys(t *testing.T) {
	path := filepath.Join(t.TempDir(), "quic.keys")
	k1, created, err := LoadOrCreateKeys(path)
	if err != nil || !created {
		t.Fatalf("create: %v, created %v", err, created)
	}
	if k1.StatelessReset == k1.Token || k1.Token == ([32]byte{}) {
		t.Errorf("keys not random: %x %x", k1.StatelessReset, k1.Token)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
	k2, created, err := LoadOrCreateKeys(path)
	if err != nil || created {
		t.Fatalf("reload: %v, created %v", err, created)
	}
	if *k1 != *k2 {
		t.Error("reloaded keys differ")
	}
}

func TestLoadOrCreateKeysRace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "quic.keys")
	var wg sync.WaitGroup
	keys := make([]*Keys, 8)
	created := make([]bool, 8)
	for i := range keys {
		wg.Go(func() {
			var err error
			keys[i], created[i], err = LoadOrCreateKeys(path)
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	n := 0
	for i := range keys {
		if created[i] {
			n++
		}
		if keys[i] == nil || *keys[i] != *keys[0] {
			t.Fatalf("process %d got other keys", i)
		}
	}
	if n != 1 {
		t.Errorf("%d creators, want 1", n)
	}
}

func TestLoadKeysErrors(t *testing.T) {
	dir := t.TempDir()
	hex64 := strings.Repeat("ab", 32)
	for name, content := range map[string]string{
		"missing-token": "stateless-reset " + hex64 + "\n",
		"short":         "stateless-reset abcd\ntoken " + hex64 + "\n",
		"bad-hex":       "stateless-reset " + strings.Repeat("zz", 32) + "\ntoken " + hex64 + "\n",
		"unknown":       "stateless-reset " + hex64 + "\ntoken " + hex64 + "\nother " + hex64 + "\n",
		"no-value":      "stateless-reset\n",
	} {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		_, _, err := LoadOrCreateKeys(path)
		if err == nil || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: error %v does not name the file", name, err)
		}
	}
	// Comments and blank lines are fine.
	path := filepath.Join(dir, "ok")
	os.WriteFile(path, []byte("# keys\n\ntoken "+hex64+"\nstateless-reset "+hex64+"\n"), 0o600)
	if _, created, err := LoadOrCreateKeys(path); err != nil || created {
		t.Errorf("valid file: %v %v", err, created)
	}
	if _, _, err := LoadOrCreateKeys(filepath.Join(dir, "no-such-dir", "keys")); err == nil ||
		!strings.Contains(err.Error(), "no-such-dir") {
		t.Errorf("unwritable path: %v", err)
	}
}

// tokenStore records the NEW_TOKEN tokens a client receives.
type tokenStore struct {
	quic.TokenStore
	put chan struct{}
}

func (s *tokenStore) Put(key string, tok *quic.ClientToken) {
	s.TokenStore.Put(key, tok)
	select {
	case s.put <- struct{}{}:
	default:
	}
}

// TestKeysToken: a NEW_TOKEN token issued by one server is accepted by
// another that loaded the same key file, so the client skips Retry there;
// a server with other keys rejects it and sends a Retry.
func TestKeysToken(t *testing.T) {
	path := filepath.Join(t.TempDir(), "quic.keys")
	keys, _, err := LoadOrCreateKeys(path)
	if err != nil {
		t.Fatal(err)
	}
	serverTLS, clientTLS := tlsPair(t)
	start := func(k *Keys) *testServer {
		return startServerOn(t, transport.HandlerFunc(echo),
			ServerConfig{TLS: serverTLS, Logger: quietLogger(), Retry: "always", Keys: k},
			listenUDP(t), clientTLS, nil)
	}
	store := &tokenStore{TokenStore: quic.NewLRUTokenStore(4, 4), put: make(chan struct{}, 1)}
	clientTLS = clientTLS.Clone()
	clientTLS.ServerName = "localhost" // tokens are stored per server name
	connect := func(ts *testServer) {
		t.Helper()
		qc := dialQUIC(t, ts.addr, clientTLS, &quic.Config{TokenStore: store})
		select {
		case <-store.put:
		case <-time.After(testTimeout):
			t.Fatal("no NEW_TOKEN")
		}
		qc.CloseWithError(0, "")
	}

	a := start(keys)
	connect(a)
	if n := a.Stats().Retries; n == 0 {
		t.Fatal("server A did not send a Retry to a client without a token")
	}

	reloaded, created, err := LoadOrCreateKeys(path)
	if err != nil || created {
		t.Fatalf("reload: %v %v", err, created)
	}
	b := start(reloaded)
	connect(b)
	if n := b.Stats().Retries; n != 0 {
		t.Errorf("server B sent %d Retries: it rejected A's token", n)
	}

	c := start(nil)
	connect(c)
	if n := c.Stats().Retries; n == 0 {
		t.Error("server C, with other keys, accepted the token")
	}
}

// TestKeysStatelessReset: after a server dies without closing its
// connections, a server restarted on the same port with the same keys
// answers the old connection's packets with a stateless reset the client
// recognises (RFC 9000 §10.3).
func TestKeysStatelessReset(t *testing.T) {
	keys := &Keys{}
	keys.StatelessReset[0], keys.Token[0] = 1, 2
	serverTLS, clientTLS := tlsPair(t)
	cfg := ServerConfig{TLS: serverTLS, Logger: quietLogger(), Keys: keys}
	pc := listenUDP(t)
	a := startServerOn(t, transport.HandlerFunc(echo), cfg, pc, clientTLS, nil)
	qc := dialQUIC(t, a.addr, clientTLS, &quic.Config{MaxIdleTimeout: testTimeout})
	// Once the server has accepted it, the connection is established on
	// both sides (before, closing the listener would refuse it).
	waitFor(t, "the server to accept", func() bool { return a.Stats().Conns == 1 })

	// The crash: the transport stops without sending CONNECTION_CLOSE.
	a.mu.Lock()
	tr := a.tr
	a.mu.Unlock()
	tr.Close()
	pc.Close()
	if err := <-a.served; err == nil {
		t.Error("Serve returned nil after its transport died")
	}
	a.served <- nil // for the cleanup

	pc2, err := listenUDPOn(a.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc2.Close() })
	startServerOn(t, transport.HandlerFunc(echo), cfg, pc2, clientTLS, nil)

	str, err := qc.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	str.Write(make([]byte, 200)) // a packet large enough to be answered
	select {
	case <-qc.Context().Done():
	case <-time.After(testTimeout):
		t.Fatal("the client did not recognise a stateless reset")
	}
	if _, ok := errors.AsType[*quic.StatelessResetError](context.Cause(qc.Context())); !ok {
		t.Errorf("connection closed by %v, want a stateless reset", context.Cause(qc.Context()))
	}
}

// TestRetryAuto: with Retry "auto", clients without a token get a Retry only
// once the rate of token-less Initial packets passes RetryAbove. A
// ClientHello takes one or two Initial packets (two with a post-quantum key
// share), so with RetryAbove 4 the first two handshakes of a second pass and
// the fifth is retried at the latest.
func TestRetryAuto(t *testing.T) {
	serverTLS, clientTLS := tlsPair(t)
	fixed := time.Unix(1_700_000_000, 0)
	ts := startServerOn(t, transport.HandlerFunc(echo),
		ServerConfig{TLS: serverTLS, Logger: quietLogger(), RetryAbove: 4},
		listenUDP(t), clientTLS, func(s *Server) { s.now = func() time.Time { return fixed } })
	handshakes := 0
	for ts.Stats().Retries == 0 {
		if handshakes == 5 {
			t.Fatal("no Retry after 5 handshakes in one second")
		}
		dialQUIC(t, ts.addr, clientTLS, nil)
		handshakes++
	}
	if handshakes <= 2 {
		t.Errorf("Retry at handshake %d, want none for the first 2", handshakes)
	}
}
