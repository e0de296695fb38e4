//go:build race

package h3

// raceEnabled is set when the race detector runs, which slows QUIC's crypto
// and copying ten-fold or more.
const raceEnabled = true
