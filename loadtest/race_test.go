//go:build race

package loadtest

// raceEnabled is set when the race detector runs: it slows the client and
// the servers several times, so pure speed floors are not checked then.
const raceEnabled = true
