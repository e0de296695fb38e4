//go:build race

package gateway

// raceEnabled is set when the race detector runs: it allocates on its own,
// so allocation counts are not checked then.
const raceEnabled = true
