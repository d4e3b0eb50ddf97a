// Command frontendprobe measures one architecture for issue 19's native HTTP front end: Go's net/http owns the
// port and hands each request to the Python data plane as a frame over one Unix socket (no HTTP on the Python
// side), or answers a constant reply itself (-constant: the native ceiling). A probe for benchmarks, not a server:
// no limits, no timeouts, every path is "infer".
//
// Frames, little-endian. Request: u32 length of the rest, u32 id, u16 path length, path, body.
// Response: u32 length of the body, u32 id, u16 status, body.
package main

import (
	"bufio"
	"encoding/binary"
	"flag"
	"io"
	"log"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
)

type reply struct {
	status int
	body   []byte
}

type channel struct {
	mu      sync.Mutex // one writer at a time; each handler writes its own frame (no hand-off to a writer goroutine)
	conn    net.Conn
	pending sync.Map // id -> chan reply
	next    atomic.Uint32
}

func (c *channel) read() {
	r := bufio.NewReaderSize(c.conn, 1<<16)
	head := make([]byte, 10)
	for {
		if _, err := io.ReadFull(r, head); err != nil {
			log.Fatalf("data plane closed the channel: %v", err)
		}
		n := binary.LittleEndian.Uint32(head[0:4])
		id := binary.LittleEndian.Uint32(head[4:8])
		body := make([]byte, n)
		if _, err := io.ReadFull(r, body); err != nil {
			log.Fatalf("data plane closed the channel: %v", err)
		}
		if ch, ok := c.pending.LoadAndDelete(id); ok {
			ch.(chan reply) <- reply{int(binary.LittleEndian.Uint16(head[8:10])), body}
		}
	}
}

func (c *channel) call(path string, body []byte) reply {
	id := c.next.Add(1)
	f := make([]byte, 10+len(path)+len(body))
	binary.LittleEndian.PutUint32(f[0:4], uint32(6+len(path)+len(body)))
	binary.LittleEndian.PutUint32(f[4:8], id)
	binary.LittleEndian.PutUint16(f[8:10], uint16(len(path)))
	copy(f[10:], path)
	copy(f[10+len(path):], body)
	ch := make(chan reply, 1)
	c.pending.Store(id, ch)
	c.mu.Lock()
	_, err := c.conn.Write(f)
	c.mu.Unlock()
	if err != nil {
		log.Fatalf("writing to the data plane: %v", err)
	}
	return <-ch
}

var constant = []byte(`{"model_name":"mlp","outputs":[{"name":"probabilities","datatype":"FP32","shape":[1,10],` +
	`"data":[0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1]}]}`)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "HTTP address")
	socket := flag.String("socket", "", "the data plane's Unix socket")
	constantOnly := flag.Bool("constant", false, "answer a constant reply (no data plane)")
	flag.Parse()
	var c *channel
	if !*constantOnly {
		conn, err := net.Dial("unix", *socket)
		if err != nil {
			log.Fatal(err)
		}
		c = &channel{conn: conn}
		go c.read()
	}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		if c == nil {
			w.Write(constant)
			return
		}
		res := c.call(r.URL.Path, body)
		w.WriteHeader(res.status)
		w.Write(res.body)
	})
	log.Fatal(http.ListenAndServe(*listen, handler))
}
