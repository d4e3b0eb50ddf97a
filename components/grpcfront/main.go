// mlinfra-grpcfront: the scoring server's gRPC front end (issue 19), Triton's design in small: a native process
// speaks HTTP/2 and gRPC, and merges concurrent ModelInfer calls before they reach Python.
//
// It serves the Open Inference Protocol's gRPC service (inference.GRPCInferenceService, oip.proto) with grpc-go and
// hands every call to the `mlinfra serve` that started it, over loopback HTTP: POST /_mlinfra/grpc/<Method> with the
// serialized request, its metadata as headers, and the token from MLINFRA_GRPCFRONT_TOKEN (the route answers 404
// without it). The Python side runs the call through the same code as its in-process grpcio service
// (mlinfra_scoring.grpc_server): keys, validation, error messages, metrics, traces, admission control and data
// collection do not depend on which front end took the call. The answer is the serialized response, or a gRPC status
// (Grpc-Status, Grpc-Message and Grpc-Retry-Pushback-Ms headers).
//
// Concurrent ModelInfer calls are merged (merge.go). mlinfra serve starts this binary when it finds it
// (MLINFRA_SERVE_GRPC_FRONTEND, or mlinfra-grpcfront on PATH; images carry it) and stops it with SIGTERM: calls in
// flight finish, new ones are refused.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "mlinfra.local/grpcfront/oippb"
)

const route = "/_mlinfra/grpc/"

type front struct {
	upstream string
	token    string
	client   *http.Client
	merge    bool
	maxRows  int64
	inflight int
	maxQueue int
	mu       sync.Mutex
	lanes    map[string]*lane
	unmerged map[string]bool // lanes whose merged calls failed where each call alone succeeded
	queued   int             // calls waiting in lanes or in a merged request (bounded by maxQueue)
	// Calls refused here past maxQueue and not yet reported: the next call handed to the server carries the count
	// (X-Mlinfra-Shed), so its metrics count them as it counts the calls it sheds itself.
	shed atomic.Int64
}

// The service, registered by hand (grpc.ServiceDesc): only protoc-gen-go's messages are generated.
type inferenceServer interface {
	ModelInfer(context.Context, *pb.ModelInferRequest) (*pb.ModelInferResponse, error)
}

func unary[Req any, Resp any, PReq interface {
	*Req
	proto.Message
}, PResp interface {
	*Resp
	proto.Message
}](method string) grpc.MethodHandler {
	return func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
		if err := checkMetadata(ctx); err != nil {
			return nil, err
		}
		in := PReq(new(Req))
		if err := dec(in); err != nil {
			return nil, err
		}
		f := srv.(*front)
		if method == "ModelInfer" {
			return f.ModelInfer(ctx, any(in).(*pb.ModelInferRequest))
		}
		out := PResp(new(Resp))
		if err := f.call(ctx, method, in, out, 1); err != nil {
			return nil, err
		}
		return out, nil
	}
}

var serviceDesc = grpc.ServiceDesc{
	ServiceName: "inference.GRPCInferenceService",
	HandlerType: (*inferenceServer)(nil),
	Methods: []grpc.MethodDesc{
		{MethodName: "ModelInfer", Handler: unary[pb.ModelInferRequest, pb.ModelInferResponse]("ModelInfer")},
		{MethodName: "ServerLive", Handler: unary[pb.ServerLiveRequest, pb.ServerLiveResponse]("ServerLive")},
		{MethodName: "ServerReady", Handler: unary[pb.ServerReadyRequest, pb.ServerReadyResponse]("ServerReady")},
		{MethodName: "ModelReady", Handler: unary[pb.ModelReadyRequest, pb.ModelReadyResponse]("ModelReady")},
		{MethodName: "ServerMetadata", Handler: unary[pb.ServerMetadataRequest, pb.ServerMetadataResponse]("ServerMetadata")},
		{MethodName: "ModelMetadata", Handler: unary[pb.ModelMetadataRequest, pb.ModelMetadataResponse]("ModelMetadata")},
	},
	Metadata: "oip.proto",
}

// Metadata that is not passed on as a header: HTTP/2 pseudo-headers and gRPC's own, binary values, and what would
// change the HTTP request itself or pose as this front end.
var dropped = map[string]bool{
	"connection": true, "keep-alive": true, "te": true, "trailer": true, "transfer-encoding": true, "upgrade": true,
	"content-length": true, "content-type": true, "host": true, "expect": true, "user-agent": true,
	"proxy-authorization": true, "proxy-connection": true, "idempotency-key": true, "x-idempotency-key": true,
	"x-mlinfra-front": true, "x-mlinfra-calls": true, "x-mlinfra-shed": true, "accept-encoding": true,
}

// Metadata limits: grpcio's (16 KiB in all, pseudo-headers included), so both front ends refuse the same calls, and
// for one entry at most what the scoring server's HTTP parser takes in a header line (aiohttp: 8,190 bytes), so that
// no call is passed on only to be refused there. grpc-go itself takes 16 MiB, and past its limit resets the stream
// with no message: these are checked in the handler, to answer RESOURCE_EXHAUSTED naming the limit.
const (
	maxMetadata      = 16 << 10
	maxMetadataEntry = 8000
)

func checkMetadata(ctx context.Context) error {
	md, _ := metadata.FromIncomingContext(ctx)
	total := 0
	for k, vs := range md {
		for _, v := range vs {
			if len(k)+len(v) > maxMetadataEntry {
				return status.Errorf(codes.ResourceExhausted,
					"metadata %.60q is %d bytes (key and value): the most this server takes is %d per entry",
					k, len(k)+len(v), maxMetadataEntry)
			}
			total += len(k) + len(v) + 32 // HTTP/2's accounting: 32 bytes per entry
		}
	}
	if total > maxMetadata {
		return status.Errorf(codes.ResourceExhausted,
			"the call's metadata is %d bytes: the most this server takes is %d", total, maxMetadata)
	}
	return nil
}

func validValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < 0x20 && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// call: METHOD's request IN to the scoring server, its answer into OUT (or the gRPC status it answered). CALLS:
// how many client calls IN stands for (a merged ModelInfer), so the server counts each.
func (f *front) call(ctx context.Context, method string, in, out proto.Message, calls int) error {
	body, err := proto.Marshal(in)
	if err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, f.upstream+route+method, bytes.NewReader(body))
	if err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		for k, vs := range md {
			if dropped[k] || strings.HasPrefix(k, ":") || strings.HasPrefix(k, "grpc-") || strings.HasSuffix(k, "-bin") {
				continue
			}
			for _, v := range vs {
				if validValue(v) {
					req.Header.Add(k, v)
				}
			}
		}
	}
	req.Header.Set("Content-Type", "application/x-protobuf")
	req.Header.Set("X-Mlinfra-Front", f.token)
	req.Header["X-Idempotency-Key"] = nil // idempotent: Go's client may resend it on a connection the server closed
	if calls > 1 {
		req.Header.Set("X-Mlinfra-Calls", strconv.Itoa(calls))
	}
	shed := f.shed.Swap(0)
	if shed > 0 {
		req.Header.Set("X-Mlinfra-Shed", strconv.FormatInt(shed, 10))
	}
	resp, err := f.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return status.FromContextError(ctx.Err()).Err()
		}
		f.shed.Add(shed) // most likely not delivered: the next call carries it
		return status.Errorf(codes.Unavailable, "the scoring server did not answer: %v", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return status.Errorf(codes.Unavailable, "the scoring server's answer was cut: %v", err)
	}
	if s := resp.Header.Get("Grpc-Status"); s != "" && s != "0" {
		code, _ := strconv.Atoi(s)
		msg, _ := url.QueryUnescape(resp.Header.Get("Grpc-Message"))
		if ms := resp.Header.Get("Grpc-Retry-Pushback-Ms"); ms != "" {
			_ = grpc.SetTrailer(ctx, metadata.Pairs("grpc-retry-pushback-ms", ms))
		}
		return status.Error(codes.Code(code), msg)
	}
	if resp.StatusCode != http.StatusOK {
		return status.Errorf(codes.Internal, "the scoring server answered HTTP %d: %.200s", resp.StatusCode, data)
	}
	if err := proto.Unmarshal(data, out); err != nil {
		return status.Errorf(codes.Internal, "the scoring server's answer is not a %s: %v", method, err)
	}
	return nil
}

func (f *front) forward(ctx context.Context, req *pb.ModelInferRequest) (*pb.ModelInferResponse, error) {
	out := new(pb.ModelInferResponse)
	if err := f.call(ctx, "ModelInfer", req, out, 1); err != nil {
		return nil, err
	}
	return out, nil
}

func main() {
	listen := flag.String("listen", "127.0.0.1:8081", "address to serve gRPC on")
	upstream := flag.String("upstream", "http://127.0.0.1:8080", "the scoring server's REST address")
	maxMB := flag.Float64("max-msg-mb", 64, "largest request message, in MiB (mlinfra serve --max-body-mb)")
	merge := flag.Bool("merge", true, "merge concurrent ModelInfer calls into one call to the data plane")
	maxRows := flag.Int("max-rows", 64, "rows in a merged call at most (the model's batch size)")
	inflight := flag.Int("inflight", 2, "merged calls in flight per lane: calls arriving meanwhile wait and go together")
	maxQueue := flag.Int("max-queue", 256, "calls waiting to be merged at most; more are refused (mlinfra serve --max-queue)")
	idle := flag.Duration("idle-timeout", 10*time.Second, "close idle connections to the server after this (under its --idle-timeout-s)")
	drain := flag.Duration("drain-timeout", 30*time.Second, "on SIGTERM, how long calls in flight may take to finish")
	maxConns := flag.Int("max-connections", 1024, "client connections at most; more are closed as they arrive (mlinfra serve --max-connections)")
	clientIdle := flag.Duration("client-idle-timeout", 15*time.Second, "close a client connection that completes no HTTP/2 handshake, "+
		"or has no call in progress, for this long (mlinfra serve --idle-timeout-s)")
	flag.Parse()
	token := os.Getenv("MLINFRA_GRPCFRONT_TOKEN")
	if token == "" {
		fmt.Fprintln(os.Stderr, `{"event": "grpc_frontend_error", "error": "MLINFRA_GRPCFRONT_TOKEN is not set: mlinfra serve sets it when it starts this front end"}`)
		os.Exit(2)
	}
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(os.Stderr, "{\"event\": \"grpc_frontend_error\", \"error\": %q}\n", err.Error())
		os.Exit(1)
	}
	transport := &http.Transport{
		MaxIdleConns:        256,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     *idle,
		DisableCompression:  true,
	}
	f := &front{
		upstream: strings.TrimRight(*upstream, "/"), token: token, client: &http.Client{Transport: transport},
		merge: *merge, maxRows: int64(*maxRows), inflight: max(*inflight, 1), maxQueue: *maxQueue,
		lanes: map[string]*lane{}, unmerged: map[string]bool{},
	}
	// A client connection that completes no HTTP/2 handshake within clientIdle is closed, and one with no call in
	// progress for that long is sent GOAWAY.
	srv := grpc.NewServer(
		grpc.MaxRecvMsgSize(int(*maxMB*(1<<20))), grpc.MaxSendMsgSize(math.MaxInt32),
		grpc.ConnectionTimeout(*clientIdle),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: *clientIdle}),
	)
	srv.RegisterService(&serviceDesc, f)
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		done := make(chan struct{})
		go func() { srv.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(*drain):
			srv.Stop()
		}
	}()
	fmt.Printf("{\"event\": \"grpc_frontend_listening\", \"address\": %q, \"merge\": %t}\n", lis.Addr().String(), *merge)
	if err := srv.Serve(&limitListener{Listener: lis, max: int64(max(*maxConns, 1))}); err != nil {
		fmt.Fprintf(os.Stderr, "{\"event\": \"grpc_frontend_error\", \"error\": %q}\n", err.Error())
		os.Exit(1)
	}
}

// limitListener closes connections past max as they arrive, as the scoring server does on its REST port
// (--max-connections): a client that opens connections by the thousand holds none of them.
type limitListener struct {
	net.Listener
	max  int64
	open atomic.Int64
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.open.Add(1) > l.max {
			l.open.Add(-1)
			c.Close()
			continue
		}
		return &countedConn{Conn: c, l: l}, nil
	}
}

type countedConn struct {
	net.Conn
	l    *limitListener
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() { c.l.open.Add(-1) })
	return c.Conn.Close()
}
