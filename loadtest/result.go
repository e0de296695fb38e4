package loadtest

import (
	"time"
)

// Result is what one run measured. Only requests sent after the warm-up and
// completed (or failed) within the measurement are counted; requests cut
// off by the end of the run are not.
type Result struct {
	Proto   Proto
	URL     string // the first URL
	Method  string
	Conns   int  // connections (for H1: Config.Conns × Config.Streams)
	Streams int  // concurrent streams per connection
	NewConn bool // a fresh connection per request
	Rate    float64
	Start   time.Time     // start of the measurement (after the warm-up)
	Warmup  time.Duration // the warm-up before Start
	// Duration is the measured time: Config.Duration, or until the last of
	// Config.Requests completed, or until the run was interrupted.
	Duration    time.Duration
	Interrupted bool // stopped early by the caller's context

	Requests int64 // requests that got a complete response, whatever its status
	Errors   [numErrorKinds]int64
	Status   map[int]int64 // responses by status code
	BytesIn  int64         // response body bytes
	BytesOut int64         // request body bytes
	// Unsent counts open-loop requests whose intended send time fell within
	// the measurement but that were never sent because their stream was
	// still waiting for earlier responses when the run ended.
	Unsent int64

	Latency Histogram // request start (open loop: intended send time) to the last body byte
	TTFB    Histogram // request start to the response header
	Setup   Histogram // connection setup: TCP+TLS or the QUIC handshake, until a request can be sent

	// Dials counts the connections opened: with NewConn, those of the
	// counted requests; else every connection of the run, the ones opened
	// in the warm-up included (they are the ones the measurement used).
	// Setup, Resumed and ZeroRTT count the same connections.
	Dials   int64
	Resumed int64 // of which resumed a TLS session
	ZeroRTT int64 // of which sent a request in 0-RTT that the server accepted (HTTP/3)

	CPU time.Duration // user+system CPU time of this process during the measurement

	Step     time.Duration // width of a Timeline bucket
	Timeline []int64       // completed requests per Step since Start; ceil(Duration/Step) steps
}

// ErrorCount returns the number of requests that failed with kind k.
func (r *Result) ErrorCount(k ErrorKind) int64 {
	if k >= numErrorKinds {
		return 0
	}
	return r.Errors[k]
}

// TotalErrors returns the number of failed requests.
func (r *Result) TotalErrors() int64 {
	var n int64
	for _, e := range r.Errors {
		n += e
	}
	return n
}

// seconds returns the measured duration in seconds, never 0.
func (r *Result) seconds() float64 {
	if r.Duration <= 0 {
		return 1e-9
	}
	return r.Duration.Seconds()
}

// RequestsPerSecond returns the completed requests per second.
func (r *Result) RequestsPerSecond() float64 { return float64(r.Requests) / r.seconds() }

// BytesPerSecond returns the response body bytes received per second.
func (r *Result) BytesPerSecond() float64 { return float64(r.BytesIn) / r.seconds() }

// CPUUtilization returns the client's CPU time over the measured wall time:
// 1.0 is one core busy. Near the number of cores, the client, not the
// server, limits the run.
func (r *Result) CPUUtilization() float64 { return r.CPU.Seconds() / r.seconds() }

// CPUPerRequest returns the client's CPU time per completed request.
func (r *Result) CPUPerRequest() time.Duration {
	if r.Requests == 0 {
		return 0
	}
	return r.CPU / time.Duration(r.Requests)
}

// Throughput returns the timeline as requests per second per Step (the last
// bucket over its own width when the run ended inside it).
func (r *Result) Throughput() []float64 {
	out := make([]float64, len(r.Timeline))
	for i, n := range r.Timeline {
		w := r.Step
		if rest := r.Duration - time.Duration(i)*r.Step; i == len(r.Timeline)-1 && rest > 0 && rest < w {
			w = rest
		}
		out[i] = float64(n) / w.Seconds()
	}
	return out
}
