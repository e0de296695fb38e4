package transport

// Underlying returns the Conn that a Conn from Pool.Get wraps, so that tests
// can tell conns apart.
func Underlying(c Conn) Conn {
	if pc, ok := c.(*pconn); ok {
		return pc.Conn
	}
	return c
}
