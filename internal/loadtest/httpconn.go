package loadtest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"
)

// Conn is one keep-alive HTTP/1.1 connection for load generation: it
// writes a request prepared in advance and reads the answer's status and
// body, with none of net/http's per-request allocations and goroutines,
// so that a load generator sharing the machine with the server it
// measures takes as little of the CPU as it can (as wrk does). Answers
// must be framed by Content-Length. A Conn is not safe for concurrent use.
type Conn struct {
	c    net.Conn
	br   *bufio.Reader
	body []byte
	// done is set when the server said it closes the connection.
	done bool
}

// Dial opens a Conn to addr (host:port).
func Dial(addr string) (*Conn, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	return &Conn{c: c, br: bufio.NewReaderSize(c, 16<<10)}, nil
}

// Close closes the connection.
func (c *Conn) Close() error { return c.c.Close() }

// Request builds a request with a Content-Length framed body. headers are
// name, value pairs.
func Request(method, host, path string, body []byte, headers ...string) []byte {
	if len(headers)%2 != 0 {
		panic("loadtest.Request: headers come in name, value pairs")
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\n", method, path, host)
	for i := 0; i < len(headers); i += 2 {
		fmt.Fprintf(&b, "%s: %s\r\n", headers[i], headers[i+1])
	}
	fmt.Fprintf(&b, "Content-Length: %d\r\n\r\n", len(body))
	b.Write(body)
	return b.Bytes()
}

// Do sends req (made by Request) and returns the answer's status code and
// body; the body is valid until the next Do. After an error, or once Done,
// the Conn must be closed.
func (c *Conn) Do(req []byte, timeout time.Duration) (int, []byte, error) {
	if err := c.c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return 0, nil, err
	}
	if _, err := c.c.Write(req); err != nil {
		return 0, nil, err
	}
	line, err := c.line()
	if err != nil {
		return 0, nil, fmt.Errorf("read status line: %w", err)
	}
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) {
		return 0, nil, fmt.Errorf("bad status line %q", line)
	}
	status, err := strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, nil, fmt.Errorf("bad status line %q", line)
	}
	length := -1
	for {
		h, err := c.line()
		if err != nil {
			return 0, nil, fmt.Errorf("read header: %w", err)
		}
		if len(h) == 0 {
			break
		}
		name, value, ok := bytes.Cut(h, []byte(":"))
		if !ok {
			return 0, nil, fmt.Errorf("bad header line %q", h)
		}
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			if length, err = strconv.Atoi(string(bytes.TrimSpace(value))); err != nil || length < 0 {
				return 0, nil, fmt.Errorf("bad Content-Length %q", value)
			}
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			return 0, nil, errors.New("chunked answers are not supported")
		case bytes.EqualFold(name, []byte("Connection")):
			c.done = c.done || bytes.EqualFold(bytes.TrimSpace(value), []byte("close"))
		}
	}
	if length < 0 {
		return 0, nil, errors.New("answer without Content-Length")
	}
	if cap(c.body) < length {
		c.body = make([]byte, length)
	}
	c.body = c.body[:length]
	if _, err := io.ReadFull(c.br, c.body); err != nil {
		return 0, nil, fmt.Errorf("read body: %w", err)
	}
	return status, c.body, nil
}

// Done reports whether the server said it closes the connection.
func (c *Conn) Done() bool { return c.done }

// line reads one CRLF-terminated line, without the CRLF.
func (c *Conn) line() ([]byte, error) {
	l, err := c.br.ReadSlice('\n')
	if err != nil {
		return nil, err
	}
	return bytes.TrimRight(l, "\r\n"), nil
}

// Conns is a fixed set of connections to one address shared by a Run's
// clients: a request takes a free one and gives it back.
type Conns struct {
	addr string
	ch   chan *Conn // nil: to dial again, after a failure
}

// DialConns opens n Conns to addr.
func DialConns(addr string, n int) (*Conns, error) {
	cs := &Conns{addr: addr, ch: make(chan *Conn, n)}
	for range n {
		c, err := Dial(addr)
		if err != nil {
			cs.Close()
			return nil, err
		}
		cs.ch <- c
	}
	return cs, nil
}

// Do sends req on a free connection and calls check with the answer before
// the connection (and the body with it) is reused. A connection that
// failed is closed and dialled again by the next request.
func (cs *Conns) Do(req []byte, timeout time.Duration, check func(status int, body []byte) error) error {
	c := <-cs.ch
	if c == nil {
		var err error
		if c, err = Dial(cs.addr); err != nil {
			cs.ch <- nil
			return err
		}
	}
	status, body, err := c.Do(req, timeout)
	if err != nil {
		_ = c.Close()
		cs.ch <- nil
		return err
	}
	err = check(status, body)
	if c.Done() {
		_ = c.Close()
		c = nil
	}
	cs.ch <- c
	return err
}

// Close closes the connections not in use.
func (cs *Conns) Close() {
	for {
		select {
		case c := <-cs.ch:
			if c != nil {
				_ = c.Close()
			}
		default:
			return
		}
	}
}
