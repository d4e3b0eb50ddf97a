// grpcfront: a measured prototype of the native gRPC front end proposed in issue 19 — not shipped in images.
//
// It serves the Open Inference Protocol's gRPC service (inference.GRPCInferenceService, oip.proto) with grpc-go and
// forwards each call to a running `mlinfra serve` over loopback REST: ModelInfer as a binary tensor extension request
// (the JSON header, then the tensors' bytes; outputs asked for in binary), the health and metadata calls as their
// REST routes. The key (`authorization` metadata), `x-request-id` and `traceparent` travel as HTTP headers, so the
// data plane checks keys, batches concurrent calls, counts and collects exactly as it does for REST. HTTP errors
// become gRPC status codes (400 INVALID_ARGUMENT, 401 UNAUTHENTICATED, 404 NOT_FOUND, 413 RESOURCE_EXHAUSTED, 503
// UNAVAILABLE with grpc-retry-pushback-ms from Retry-After, else INTERNAL).
//
// benchmarks/serving/protocols.py runs it as the peer "mlinfra+grpc-go" beside mlinfra's own grpcio service, both
// pinned to the server's core: how far a front end outside Python lifts gRPC. What shipping it would still need is
// in docs/scoring-server.md#speed.
package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"math"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "mlinfra.local/grpcfront/oippb"
)

type front struct {
	upstream string
	client   *http.Client
}

// The service, registered by hand (grpc.ServiceDesc) so only protoc-gen-go's messages are generated.
type inferenceServer interface {
	ModelInfer(context.Context, *pb.ModelInferRequest) (*pb.ModelInferResponse, error)
}

func unary[Req any, Resp any](call func(*front, context.Context, *Req) (*Resp, error)) grpc.MethodHandler {
	return func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
		in := new(Req)
		if err := dec(in); err != nil {
			return nil, err
		}
		return call(srv.(*front), ctx, in)
	}
}

var serviceDesc = grpc.ServiceDesc{
	ServiceName: "inference.GRPCInferenceService",
	HandlerType: (*inferenceServer)(nil),
	Methods: []grpc.MethodDesc{
		{MethodName: "ModelInfer", Handler: unary((*front).ModelInfer)},
		{MethodName: "ServerLive", Handler: unary((*front).ServerLive)},
		{MethodName: "ServerReady", Handler: unary((*front).ServerReady)},
		{MethodName: "ModelReady", Handler: unary((*front).ModelReady)},
		{MethodName: "ServerMetadata", Handler: unary((*front).ServerMetadata)},
		{MethodName: "ModelMetadata", Handler: unary((*front).ModelMetadata)},
	},
	Metadata: "oip.proto",
}

// -- forwarding --------------------------------------------------------------------------------------------------

var forwarded = []string{"authorization", "x-request-id", "traceparent", "tracestate"}

func (f *front) do(ctx context.Context, method, path string, body []byte, header http.Header) (*http.Response, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, f.upstream+path, bytes.NewReader(body))
	if err != nil {
		return nil, nil, status.Error(codes.Internal, err.Error())
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		for _, k := range forwarded {
			if v := md.Get(k); len(v) > 0 {
				req.Header.Set(k, v[0])
			}
		}
	}
	resp, err := f.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, nil, status.FromContextError(ctx.Err()).Err()
		}
		return nil, nil, status.Errorf(codes.Unavailable, "the scoring server did not answer: %v", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, nil, status.Errorf(codes.Unavailable, "the scoring server's answer was cut: %v", err)
	}
	if resp.StatusCode != http.StatusOK && !(resp.StatusCode == http.StatusServiceUnavailable && isHealth(path)) {
		return nil, nil, httpError(ctx, resp, data)
	}
	return resp, data, nil
}

func isHealth(path string) bool {
	return path == "/v2/health/ready" || len(path) > 6 && path[len(path)-6:] == "/ready"
}

func httpError(ctx context.Context, resp *http.Response, data []byte) error {
	var e struct {
		Error string `json:"error"`
	}
	msg := string(data)
	if json.Unmarshal(data, &e) == nil && e.Error != "" {
		msg = e.Error
	}
	code := codes.Internal
	switch resp.StatusCode {
	case 400, 422:
		code = codes.InvalidArgument
	case 401:
		code = codes.Unauthenticated
	case 403:
		code = codes.PermissionDenied
	case 404:
		code = codes.NotFound
	case 408:
		code = codes.DeadlineExceeded
	case 413:
		code = codes.ResourceExhausted
	case 503:
		code = codes.Unavailable
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil {
			_ = grpc.SetTrailer(ctx, metadata.Pairs("grpc-retry-pushback-ms", strconv.Itoa(s*1000)))
		}
	}
	return status.Error(code, msg)
}

func modelPath(name, version, suffix string) string {
	p := "/v2/models/" + url.PathEscape(name)
	if version != "" {
		p += "/versions/" + url.PathEscape(version)
	}
	return p + suffix
}

// -- ModelInfer ----------------------------------------------------------------------------------------------------

type jsonTensor struct {
	Name       string         `json:"name"`
	Datatype   string         `json:"datatype,omitempty"`
	Shape      []int64        `json:"shape,omitempty"`
	Parameters map[string]any `json:"parameters,omitempty"`
}

type jsonRequest struct {
	ID         string         `json:"id,omitempty"`
	Parameters map[string]any `json:"parameters,omitempty"`
	Inputs     []jsonTensor   `json:"inputs"`
	Outputs    []jsonTensor   `json:"outputs,omitempty"`
}

type jsonResponse struct {
	ModelName    string         `json:"model_name"`
	ModelVersion string         `json:"model_version"`
	ID           string         `json:"id"`
	Parameters   map[string]any `json:"parameters"`
	Outputs      []jsonTensor   `json:"outputs"`
}

func params(m map[string]*pb.InferParameter) map[string]any {
	if len(m) == 0 {
		return nil
	}
	out := make(map[string]any, len(m))
	for k, p := range m {
		switch v := p.GetParameterChoice().(type) {
		case *pb.InferParameter_BoolParam:
			out[k] = v.BoolParam
		case *pb.InferParameter_Int64Param:
			out[k] = v.Int64Param
		case *pb.InferParameter_StringParam:
			out[k] = v.StringParam
		}
	}
	return out
}

func toParams(m map[string]any) map[string]*pb.InferParameter {
	out := map[string]*pb.InferParameter{}
	for k, v := range m {
		switch x := v.(type) {
		case bool:
			out[k] = &pb.InferParameter{ParameterChoice: &pb.InferParameter_BoolParam{BoolParam: x}}
		case float64:
			if x == math.Trunc(x) && math.Abs(x) < 1<<53 {
				out[k] = &pb.InferParameter{ParameterChoice: &pb.InferParameter_Int64Param{Int64Param: int64(x)}}
			} else {
				out[k] = &pb.InferParameter{ParameterChoice: &pb.InferParameter_StringParam{StringParam: strconv.FormatFloat(x, 'g', -1, 64)}}
			}
		case string:
			out[k] = &pb.InferParameter{ParameterChoice: &pb.InferParameter_StringParam{StringParam: x}}
		}
	}
	return out
}

// raw: a typed contents field laid out as the binary tensor extension lays it out (little-endian).
func raw(name, datatype string, c *pb.InferTensorContents) ([]byte, error) {
	var b []byte
	le := binary.LittleEndian
	switch datatype {
	case "BOOL":
		for _, v := range c.GetBoolContents() {
			if v {
				b = append(b, 1)
			} else {
				b = append(b, 0)
			}
		}
	case "INT8":
		for _, v := range c.GetIntContents() {
			b = append(b, byte(int8(v)))
		}
	case "INT16":
		for _, v := range c.GetIntContents() {
			b = le.AppendUint16(b, uint16(int16(v)))
		}
	case "INT32":
		for _, v := range c.GetIntContents() {
			b = le.AppendUint32(b, uint32(v))
		}
	case "INT64":
		for _, v := range c.GetInt64Contents() {
			b = le.AppendUint64(b, uint64(v))
		}
	case "UINT8":
		for _, v := range c.GetUintContents() {
			b = append(b, byte(v))
		}
	case "UINT16":
		for _, v := range c.GetUintContents() {
			b = le.AppendUint16(b, uint16(v))
		}
	case "UINT32":
		for _, v := range c.GetUintContents() {
			b = le.AppendUint32(b, v)
		}
	case "UINT64":
		for _, v := range c.GetUint64Contents() {
			b = le.AppendUint64(b, v)
		}
	case "FP32":
		for _, v := range c.GetFp32Contents() {
			b = le.AppendUint32(b, math.Float32bits(v))
		}
	case "FP64":
		for _, v := range c.GetFp64Contents() {
			b = le.AppendUint64(b, math.Float64bits(v))
		}
	case "BYTES":
		for _, v := range c.GetBytesContents() {
			b = le.AppendUint32(b, uint32(len(v)))
			b = append(b, v...)
		}
	default:
		return nil, status.Errorf(codes.InvalidArgument, "input %q: datatype %q has no typed contents field: send it in raw_input_contents", name, datatype)
	}
	return b, nil
}

func (f *front) ModelInfer(ctx context.Context, req *pb.ModelInferRequest) (*pb.ModelInferResponse, error) {
	if len(req.RawInputContents) > 0 && len(req.RawInputContents) != len(req.Inputs) {
		return nil, status.Errorf(codes.InvalidArgument, "raw_input_contents has %d entries for %d inputs: send one per input, or none", len(req.RawInputContents), len(req.Inputs))
	}
	head := jsonRequest{ID: req.Id, Parameters: params(req.Parameters), Inputs: make([]jsonTensor, len(req.Inputs))}
	if head.Parameters == nil {
		head.Parameters = map[string]any{}
	}
	head.Parameters["binary_data_output"] = true
	chunks := make([][]byte, len(req.Inputs))
	size := 0
	for i, t := range req.Inputs {
		var data []byte
		if len(req.RawInputContents) > 0 {
			data = req.RawInputContents[i]
		} else {
			var err error
			if data, err = raw(t.Name, t.Datatype, t.Contents); err != nil {
				return nil, err
			}
		}
		p := params(t.Parameters)
		if p == nil {
			p = map[string]any{}
		}
		p["binary_data_size"] = len(data)
		head.Inputs[i] = jsonTensor{Name: t.Name, Datatype: t.Datatype, Shape: t.Shape, Parameters: p}
		chunks[i] = data
		size += len(data)
	}
	for _, o := range req.Outputs {
		p := params(o.Parameters)
		if p == nil {
			p = map[string]any{}
		}
		p["binary_data"] = true
		head.Outputs = append(head.Outputs, jsonTensor{Name: o.Name, Parameters: p})
	}
	js, err := json.Marshal(head)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	body := make([]byte, 0, len(js)+size)
	body = append(body, js...)
	for _, c := range chunks {
		body = append(body, c...)
	}
	h := http.Header{
		"Content-Type":                   {"application/octet-stream"},
		"Inference-Header-Content-Length": {strconv.Itoa(len(js))},
	}
	resp, data, err := f.do(ctx, http.MethodPost, modelPath(req.ModelName, req.ModelVersion, "/infer"), body, h)
	if err != nil {
		return nil, err
	}
	n := len(data)
	if s := resp.Header.Get("Inference-Header-Content-Length"); s != "" {
		if n, err = strconv.Atoi(s); err != nil || n < 0 || n > len(data) {
			return nil, status.Errorf(codes.Internal, "the scoring server sent a bad Inference-Header-Content-Length %q", s)
		}
	}
	var r jsonResponse
	if err := json.Unmarshal(data[:n], &r); err != nil {
		return nil, status.Errorf(codes.Internal, "the scoring server's answer is not JSON: %v", err)
	}
	out := &pb.ModelInferResponse{ModelName: r.ModelName, ModelVersion: r.ModelVersion, Id: r.ID, Parameters: toParams(r.Parameters)}
	pos := n
	for _, o := range r.Outputs {
		bs, _ := o.Parameters["binary_data_size"].(float64)
		delete(o.Parameters, "binary_data_size")
		end := pos + int(bs)
		if end > len(data) {
			return nil, status.Error(codes.Internal, "the scoring server's binary outputs are shorter than their sizes")
		}
		out.Outputs = append(out.Outputs, &pb.ModelInferResponse_InferOutputTensor{Name: o.Name, Datatype: o.Datatype, Shape: o.Shape, Parameters: toParams(o.Parameters)})
		out.RawOutputContents = append(out.RawOutputContents, data[pos:end])
		pos = end
	}
	return out, nil
}

// -- health and metadata -------------------------------------------------------------------------------------------

func (f *front) getJSON(ctx context.Context, path string, into any) (int, error) {
	resp, data, err := f.do(ctx, http.MethodGet, path, nil, nil)
	if err != nil {
		return 0, err
	}
	if err := json.Unmarshal(data, into); err != nil {
		return 0, status.Errorf(codes.Internal, "the scoring server's answer is not JSON: %v", err)
	}
	return resp.StatusCode, nil
}

func (f *front) ServerLive(ctx context.Context, _ *pb.ServerLiveRequest) (*pb.ServerLiveResponse, error) {
	var r struct{ Live bool }
	_, err := f.getJSON(ctx, "/v2/health/live", &r)
	return &pb.ServerLiveResponse{Live: err == nil && r.Live}, err
}

func (f *front) ServerReady(ctx context.Context, _ *pb.ServerReadyRequest) (*pb.ServerReadyResponse, error) {
	code, err := f.getJSON(ctx, "/v2/health/ready", &struct{}{})
	return &pb.ServerReadyResponse{Ready: err == nil && code == http.StatusOK}, err
}

func (f *front) ModelReady(ctx context.Context, req *pb.ModelReadyRequest) (*pb.ModelReadyResponse, error) {
	var r struct{ Ready bool }
	_, err := f.getJSON(ctx, modelPath(req.Name, req.Version, "/ready"), &r)
	return &pb.ModelReadyResponse{Ready: err == nil && r.Ready}, err
}

func (f *front) ServerMetadata(ctx context.Context, _ *pb.ServerMetadataRequest) (*pb.ServerMetadataResponse, error) {
	var r struct {
		Name       string   `json:"name"`
		Version    string   `json:"version"`
		Extensions []string `json:"extensions"`
	}
	if _, err := f.getJSON(ctx, "/v2", &r); err != nil {
		return nil, err
	}
	return &pb.ServerMetadataResponse{Name: r.Name, Version: r.Version, Extensions: r.Extensions}, nil
}

func (f *front) ModelMetadata(ctx context.Context, req *pb.ModelMetadataRequest) (*pb.ModelMetadataResponse, error) {
	var r struct {
		Name     string       `json:"name"`
		Versions []string     `json:"versions"`
		Platform string       `json:"platform"`
		Inputs   []jsonTensor `json:"inputs"`
		Outputs  []jsonTensor `json:"outputs"`
	}
	if _, err := f.getJSON(ctx, modelPath(req.Name, req.Version, ""), &r); err != nil {
		return nil, err
	}
	out := &pb.ModelMetadataResponse{Name: r.Name, Versions: r.Versions, Platform: r.Platform}
	for _, t := range r.Inputs {
		out.Inputs = append(out.Inputs, &pb.ModelMetadataResponse_TensorMetadata{Name: t.Name, Datatype: t.Datatype, Shape: t.Shape})
	}
	for _, t := range r.Outputs {
		out.Outputs = append(out.Outputs, &pb.ModelMetadataResponse_TensorMetadata{Name: t.Name, Datatype: t.Datatype, Shape: t.Shape})
	}
	return out, nil
}

func main() {
	listen := flag.String("listen", "127.0.0.1:8081", "address to serve gRPC on")
	upstream := flag.String("upstream", "http://127.0.0.1:8080", "the scoring server's REST address")
	maxMB := flag.Int("max-msg-mb", 64, "largest request message, in MiB (as mlinfra serve --max-body-mb)")
	flag.Parse()
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("grpcfront: %v", err)
	}
	transport := &http.Transport{
		MaxIdleConns:        256,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     10 * time.Second, // under the server's --idle-timeout-s (15 s): never reuse a closing one
		DisableCompression:  true,
	}
	f := &front{upstream: *upstream, client: &http.Client{Transport: transport}}
	srv := grpc.NewServer(grpc.MaxRecvMsgSize(*maxMB<<20), grpc.MaxSendMsgSize(math.MaxInt32))
	srv.RegisterService(&serviceDesc, f)
	fmt.Printf("grpcfront: gRPC on %s → %s\n", lis.Addr(), *upstream)
	if err := srv.Serve(lis); err != nil {
		log.Fatalf("grpcfront: %v", err)
	}
}
