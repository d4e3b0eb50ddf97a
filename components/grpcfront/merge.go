package main

// Merging concurrent ModelInfer calls before Python (Triton's dynamic batcher sits in its C++ front end the same
// way). Calls for the same model, key, inputs (names, datatypes, shapes past the first axis) and outputs queue in a
// lane; at most -inflight merged calls per lane are in flight, and when one comes back every call that queued
// meanwhile goes in the next one (up to -max-rows rows), as one ModelInferRequest whose raw inputs are the calls'
// rows one after the other. The scoring server counts it as that many calls (X-Mlinfra-Calls); its outputs are cut
// back along their first axis. A call alone (one caller) goes at once: no window, no wait.
//
// A call goes alone (not merged) when merging would change what the scoring server sees of it: it has request,
// input or output parameters, a traceparent or an x-request-id (its trace and its id in the logs stay its own),
// BYTES tensors, inputs without a batch axis or with different first dimensions, or contents whose size does not
// match the shape (the server's error names the problem). If the server refuses a merged call, or an output has no
// batch axis to cut along, each call is sent again alone, so every caller gets its own answer or error; if all of
// them succeed alone, merging was the problem (a model with a fixed batch size) and that lane is not merged again.
// More than -max-queue calls waiting are refused with UNAVAILABLE and a retry pushback, as the server refuses them.

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"strings"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "mlinfra.local/grpcfront/oippb"
)

type result struct {
	resp *pb.ModelInferResponse
	err  error
}

type pending struct {
	ctx  context.Context
	req  *pb.ModelInferRequest
	raws [][]byte // each input's little-endian bytes
	rows int64
	done chan result
}

type lane struct {
	queue    []*pending
	inflight int
}

var itemSize = map[string]int{
	"BOOL": 1, "INT8": 1, "UINT8": 1, "INT16": 2, "UINT16": 2, "FP16": 2, "BF16": 2,
	"INT32": 4, "UINT32": 4, "FP32": 4, "INT64": 8, "UINT64": 8, "FP64": 8,
}

func (f *front) ModelInfer(ctx context.Context, req *pb.ModelInferRequest) (*pb.ModelInferResponse, error) {
	key, rows, raws, ok := f.mergeable(ctx, req)
	if !ok {
		return f.forward(ctx, req)
	}
	p := &pending{ctx: ctx, req: req, raws: raws, rows: rows, done: make(chan result, 1)}
	f.mu.Lock()
	if f.unmerged[key] {
		f.mu.Unlock()
		return f.forward(ctx, req)
	}
	if f.queued >= f.maxQueue {
		f.mu.Unlock()
		f.shed.Add(1)
		_ = grpc.SetTrailer(ctx, metadata.Pairs("grpc-retry-pushback-ms", "1000"))
		return nil, status.Errorf(codes.Unavailable, "server busy: %d inference calls are waiting in the gRPC front end, "+
			"the most it takes at once (--max-queue): retry after 1 s, or spread the load over more replicas", f.queued)
	}
	f.queued++
	defer func() { f.mu.Lock(); f.queued--; f.mu.Unlock() }()
	l := f.lanes[key]
	if l == nil {
		l = &lane{}
		f.lanes[key] = l
	}
	l.queue = append(l.queue, p)
	start := l.inflight < f.inflight
	if start {
		l.inflight++
	}
	f.mu.Unlock()
	if start {
		go f.drain(key, l)
	}
	select {
	case r := <-p.done:
		return r.resp, r.err
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}

// mergeable: the lane's key, the call's rows and its inputs' bytes; ok false when the call goes alone.
func (f *front) mergeable(ctx context.Context, req *pb.ModelInferRequest) (string, int64, [][]byte, bool) {
	if !f.merge || len(req.Parameters) > 0 || len(req.Inputs) == 0 {
		return "", 0, nil, false
	}
	md, _ := metadata.FromIncomingContext(ctx)
	if len(md.Get("traceparent")) > 0 || len(md.Get("x-request-id")) > 0 {
		return "", 0, nil, false
	}
	if len(req.RawInputContents) > 0 && len(req.RawInputContents) != len(req.Inputs) {
		return "", 0, nil, false
	}
	var b strings.Builder
	auth := md.Get("authorization")
	fmt.Fprintf(&b, "%q %q %q", req.ModelName, req.ModelVersion, auth)
	rows := int64(-1)
	var ok bool
	raws := make([][]byte, len(req.Inputs))
	for i, t := range req.Inputs {
		size, fixed := itemSize[t.Datatype]
		if !fixed || len(t.Parameters) > 0 || len(t.Shape) == 0 || t.Shape[0] <= 0 || (rows >= 0 && t.Shape[0] != rows) {
			return "", 0, nil, false
		}
		rows = t.Shape[0]
		count := int64(size)
		for _, d := range t.Shape {
			if d < 0 || (d > 0 && count > (1<<40)/d) {
				return "", 0, nil, false
			}
			count *= d
		}
		if len(req.RawInputContents) > 0 {
			if t.Contents != nil { // the server refuses contents beside raw_input_contents: let it say so
				return "", 0, nil, false
			}
			raws[i] = req.RawInputContents[i]
		} else if raws[i], ok = raw(t.Datatype, t.Contents); !ok {
			return "", 0, nil, false
		}
		if int64(len(raws[i])) != count {
			return "", 0, nil, false
		}
		fmt.Fprintf(&b, " %q %q %v", t.Name, t.Datatype, t.Shape[1:])
	}
	if rows > f.maxRows {
		return "", 0, nil, false
	}
	for _, o := range req.Outputs {
		if len(o.Parameters) > 0 {
			return "", 0, nil, false
		}
		fmt.Fprintf(&b, " out %q", o.Name)
	}
	return b.String(), rows, raws, true
}

func (f *front) drain(key string, l *lane) {
	for {
		f.mu.Lock()
		var batch []*pending
		var rows int64
		for len(l.queue) > 0 && (len(batch) == 0 || rows+l.queue[0].rows <= f.maxRows) {
			p := l.queue[0]
			l.queue = l.queue[1:]
			if p.ctx.Err() != nil { // its caller went away: not sent
				continue
			}
			batch = append(batch, p)
			rows += p.rows
		}
		if len(batch) == 0 {
			l.inflight--
			if l.inflight == 0 && len(l.queue) == 0 && f.lanes[key] == l {
				delete(f.lanes, key)
			}
			f.mu.Unlock()
			return
		}
		f.mu.Unlock()
		f.run(key, batch, rows)
	}
}

func (f *front) run(key string, batch []*pending, rows int64) {
	if len(batch) == 1 {
		resp, err := f.forward(batch[0].ctx, batch[0].req)
		batch[0].done <- result{resp, err}
		return
	}
	first := batch[0].req
	merged := &pb.ModelInferRequest{ModelName: first.ModelName, ModelVersion: first.ModelVersion}
	for i, t := range first.Inputs {
		var n int
		for _, p := range batch {
			n += len(p.raws[i])
		}
		buf := make([]byte, 0, n)
		for _, p := range batch {
			buf = append(buf, p.raws[i]...)
		}
		merged.Inputs = append(merged.Inputs, &pb.ModelInferRequest_InferInputTensor{
			Name: t.Name, Datatype: t.Datatype, Shape: append([]int64{rows}, t.Shape[1:]...),
		})
		merged.RawInputContents = append(merged.RawInputContents, buf)
	}
	for _, o := range first.Outputs {
		merged.Outputs = append(merged.Outputs, &pb.ModelInferRequest_InferRequestedOutputTensor{Name: o.Name})
	}
	// The merged call outlives any one caller (the others still wait on it); it carries the first call's metadata
	// (the key is part of the lane, so every call in it sent the same).
	ctx := context.WithoutCancel(batch[0].ctx)
	resp := new(pb.ModelInferResponse)
	err := f.call(ctx, "ModelInfer", merged, resp, len(batch))
	if err != nil {
		switch status.Code(err) {
		case codes.Unauthenticated, codes.Unavailable, codes.NotFound, codes.PermissionDenied:
			for _, p := range batch { // the same answer alone
				p.done <- result{nil, err}
			}
		default: // a 400 names one call's data, or something else: each call alone gets its own answer
			f.alone(key, batch)
		}
		return
	}
	if !f.split(batch, rows, resp) {
		f.alone(key, batch)
	}
}

// alone: each call of BATCH on its own. If every one succeeds, merging was what failed (a model without a batch
// axis, an output that cannot be cut): calls of this lane are not merged again.
func (f *front) alone(key string, batch []*pending) {
	var wg sync.WaitGroup
	var failed atomic.Bool
	for _, p := range batch {
		wg.Add(1)
		go func(p *pending) {
			defer wg.Done()
			resp, err := f.forward(p.ctx, p.req)
			if err != nil {
				failed.Store(true)
			}
			p.done <- result{resp, err}
		}(p)
	}
	wg.Wait()
	if !failed.Load() {
		f.mu.Lock()
		if len(f.unmerged) < 4096 {
			f.unmerged[key] = true
		}
		f.mu.Unlock()
	}
}

// split: the merged answer's outputs cut along their first axis, one answer per call; false if an output has no
// batch axis to cut on (then nothing was sent).
func (f *front) split(batch []*pending, rows int64, resp *pb.ModelInferResponse) bool {
	for i, o := range resp.Outputs {
		if len(o.Shape) == 0 || o.Shape[0] != rows || int64(len(resp.RawOutputContents[i]))%rows != 0 {
			return false
		}
		if _, fixed := itemSize[o.Datatype]; !fixed || len(o.Parameters) > 0 {
			return false
		}
	}
	start := int64(0)
	for _, p := range batch {
		out := &pb.ModelInferResponse{ModelName: resp.ModelName, ModelVersion: resp.ModelVersion, Id: p.req.Id}
		for i, o := range resp.Outputs {
			per := int64(len(resp.RawOutputContents[i])) / rows
			out.Outputs = append(out.Outputs, &pb.ModelInferResponse_InferOutputTensor{
				Name: o.Name, Datatype: o.Datatype, Shape: append([]int64{p.rows}, o.Shape[1:]...),
			})
			out.RawOutputContents = append(out.RawOutputContents, resp.RawOutputContents[i][start*per:(start+p.rows)*per])
		}
		start += p.rows
		p.done <- result{out, nil}
	}
	return true
}

// raw: a typed contents field laid out as the binary tensor extension lays it out (little-endian); ok false for
// datatypes whose field does not hold exactly their values: INT8/16 and UINT8/16 travel in 32-bit fields, where the
// server range-checks each value, FP16 has no field, and BYTES are not merged. Those calls go alone.
func raw(datatype string, c *pb.InferTensorContents) (b []byte, ok bool) {
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
	case "INT32":
		for _, v := range c.GetIntContents() {
			b = le.AppendUint32(b, uint32(v))
		}
	case "INT64":
		for _, v := range c.GetInt64Contents() {
			b = le.AppendUint64(b, uint64(v))
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
	default:
		return nil, false
	}
	return b, true
}
