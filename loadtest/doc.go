// Package loadtest is a black-box HTTP load generator that runs the same
// workload over HTTP/1.1, HTTP/2 and HTTP/3 and reports numbers that can be
// compared: requests and bytes per second, latency percentiles from a
// mergeable log-linear histogram (0.4% relative error, constant memory),
// time to first byte, connection setup time, status codes, errors by kind,
// TLS resumption and 0-RTT, and the client's own CPU time.
//
// A run is a closed loop (Conns connections × Streams concurrent requests
// each, as fast as the server answers) or an open loop (a constant Rate,
// latency measured from each request's intended send time, so a stalled
// server shows in the percentiles), optionally with a fresh connection per
// request. Compare runs one workload over several protocols in interleaved
// rounds and reports each figure's median.
//
// It uses client stacks independent of any server: net/http for HTTP/1.1
// and HTTP/2, quic-go's http3 for HTTP/3. It imports none of ProxyNow's
// packages and measures any server as a stranger would.
package loadtest
