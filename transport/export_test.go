package transport

// Underlying returns the Conn that a Conn from Pool.Get wraps, so that tests
// can tell conns apart.
func Underlying(c Conn) Conn {
	switch pc := c.(type) {
	case *pconn:
		return pc.Conn
	case *mutexConn:
		return pc.Conn
	}
	return c
}
