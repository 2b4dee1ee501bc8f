// Command interop checks the Go client against a running checkout server:
//
//	go run ./cmd/interop -addr 127.0.0.1:50051
//
// It prints one line per check, "ok   NAME: what it saw" or "FAIL NAME: what went wrong",
// then "interop: N passed, M failed", and exits 1 when a check failed (2 on bad usage).
// The checks:
//
//   - upload: a streaming UploadVideo of a generated MP4-like payload; the answer's ids,
//     object key, size and SHA-256.
//   - watch: WatchStatus of that event until it reports -watch-until (`new` by default: the
//     server sends the current status first, and without a relay it stays `new`).
//   - error-details: GetStatus of a malformed event id is INVALID_ARGUMENT with the ErrorInfo
//     reason INVALID_EVENT_ID and the Russian message.
//   - resumable: a session whose WriteUpload stream is cut (its context cancelled) half-way
//     through its second part, once the server has made the first part durable;
//     QueryUploadStatus then reports just that part, and a resume from there finishes the
//     upload with the whole file's SHA-256.
//
// tests/integration/test_go_client.py builds it and runs it against a server of its own.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	mathrand "math/rand/v2"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"checkout/clients/go/checkout"
	checkoutv1 "checkout/clients/go/gen/checkout/v1"
)

// What the server answers for a malformed event id (server/checkout_server/errors.py,
// InvalidEventId).
const (
	invalidEventIDReason  = "INVALID_EVENT_ID"
	invalidEventIDMessage = "Идентификатор события должен быть UUID"
)

// statusRank orders the statuses an event goes through: a watch never sees one go back.
var statusRank = map[string]int{"new": 0, "sent": 1, "ready": 2, "failed": 2}

var uuidPattern = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

func main() {
	os.Exit(run())
}

// run runs every check and returns the exit code.
func run() int {
	addr := flag.String("addr", "", "the server, host:port (required)")
	watchUntil := flag.String("watch-until", "new", "the status the watch waits for")
	uploadBytes := flag.Int("upload-bytes", 2<<20+3, "size of the streamed upload")
	resumableBytes := flag.Int("resumable-bytes", 12<<20+5, "size of the resumable upload (more than 1.5 parts)")
	timeout := flag.Duration("timeout", 2*time.Minute, "give up on all checks after this long")
	flag.Parse()
	if _, known := statusRank[*watchUntil]; *addr == "" || flag.NArg() != 0 || !known {
		fmt.Fprintln(os.Stderr, "usage: interop -addr host:port [-watch-until new|sent|ready|failed]")
		return 2
	}
	conn, err := checkout.Dial(*addr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "interop: %v\n", err)
		return 2
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	c := checks{client: checkoutv1.NewCheckoutServiceClient(conn)}
	c.run("upload", func() (string, error) { return c.upload(ctx, *uploadBytes) })
	c.run("watch", func() (string, error) { return c.watch(ctx, *watchUntil) })
	c.run("error-details", func() (string, error) { return c.errorDetails(ctx) })
	c.run("resumable", func() (string, error) { return c.resumable(ctx, *resumableBytes) })

	fmt.Printf("interop: %d passed, %d failed\n", c.passed, c.failed)
	if c.failed > 0 {
		return 1
	}
	return 0
}

// checks runs the checks against one server and counts them.
type checks struct {
	client         checkoutv1.CheckoutServiceClient
	uploaded       *checkoutv1.UploadVideoResponse // the upload check's event, for the watch
	passed, failed int
}

// run runs one check and prints its line: what the check saw, or why it failed.
func (c *checks) run(name string, check func() (string, error)) {
	seen, err := check()
	if err != nil {
		c.failed++
		fmt.Printf("FAIL %s: %v\n", name, err)
		return
	}
	c.passed++
	fmt.Printf("ok   %s: %s\n", name, seen)
}

func (c *checks) upload(ctx context.Context, size int) (string, error) {
	data := payload(size, 13)
	got, err := checkout.Upload(ctx, c.client, bytes.NewReader(data), &checkoutv1.UploadMetadata{
		Filename:       "interop.mp4",
		ContentType:    "video/mp4",
		SizeBytes:      int64(len(data)),
		IdempotencyKey: rand.Text(),
	})
	if err != nil {
		return "", describe(err)
	}
	if err := sameVideo(got, data); err != nil {
		return "", err
	}
	if got.GetDeduplicated() {
		return "", errors.New("a new idempotency key was answered as a replay")
	}
	c.uploaded = got
	return fmt.Sprintf("event %s, %d bytes in %d-byte chunks, sha256 %s",
		got.GetEventId(), got.GetSizeBytes(), checkout.ChunkBytes, got.GetSha256()), nil
}

func (c *checks) watch(ctx context.Context, until string) (string, error) {
	uploaded := c.uploaded
	if uploaded == nil {
		return "", errors.New("no event to watch: the upload failed")
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel() // ends the watch once it saw what it waits for
	stream, err := c.client.WatchStatus(ctx, &checkoutv1.WatchStatusRequest{EventId: uploaded.GetEventId()})
	if err != nil {
		return "", describe(err)
	}
	var seen []string
	for {
		update, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return "", fmt.Errorf("the stream ended after %v, before %s", seen, until)
		}
		if err != nil {
			return "", fmt.Errorf("after %v: %w", seen, describe(err))
		}
		if update.GetHeartbeat() {
			continue
		}
		rank, known := statusRank[update.GetStatus()]
		switch {
		case update.GetEventId() != uploaded.GetEventId() || update.GetVideoId() != uploaded.GetVideoId():
			return "", fmt.Errorf("an update of event %q (video %q)", update.GetEventId(), update.GetVideoId())
		case !known:
			return "", fmt.Errorf("unknown status %q", update.GetStatus())
		case len(seen) > 0 && rank < statusRank[seen[len(seen)-1]]:
			return "", fmt.Errorf("%s after %v", update.GetStatus(), seen)
		case !update.GetUpdatedAt().IsValid():
			return "", fmt.Errorf("status %s without updated_at", update.GetStatus())
		}
		seen = append(seen, update.GetStatus())
		if update.GetStatus() == until {
			return fmt.Sprintf("event %s: %v", uploaded.GetEventId(), seen), nil
		}
		if rank >= statusRank[until] {
			return "", fmt.Errorf("%v, past %s", seen, until)
		}
	}
}

func (c *checks) errorDetails(ctx context.Context) (string, error) {
	_, err := c.client.GetStatus(ctx, &checkoutv1.GetStatusRequest{EventId: "not-a-uuid"})
	if err == nil {
		return "", errors.New("GetStatus of a malformed event id succeeded")
	}
	code := status.Code(err)
	reason, message, _ := checkout.Reason(err)
	// The message may go on after a colon with specifics (docs/api.md, "Errors").
	russian := message == invalidEventIDMessage || strings.HasPrefix(message, invalidEventIDMessage+": ")
	if code != codes.InvalidArgument || reason != invalidEventIDReason || !russian {
		return "", fmt.Errorf("want %s %s %q, got %s %q %q",
			codes.InvalidArgument, invalidEventIDReason, invalidEventIDMessage, code, reason, message)
	}
	return fmt.Sprintf("%s %s %q", code, reason, message), nil
}

func (c *checks) resumable(ctx context.Context, size int) (string, error) {
	data := payload(size, 29)
	session, err := checkout.StartResumable(ctx, c.client, &checkoutv1.UploadMetadata{
		Filename:       "interop-resumable.mp4",
		ContentType:    "video/mp4",
		SizeBytes:      int64(len(data)),
		IdempotencyKey: rand.Text(),
	})
	if err != nil {
		return "", describe(err)
	}
	part := session.PartBytes
	// Half-way through the second part, on a chunk boundary: the first part is durable,
	// the second is being collected when the stream breaks.
	cut := (part + part/2) / checkout.ChunkBytes * checkout.ChunkBytes
	if part <= 0 || cut <= part || cut >= int64(len(data)) {
		return "", fmt.Errorf("parts of %d bytes: -resumable-bytes %d is not more than 1.5 parts", part, len(data))
	}
	if err := cutWrite(ctx, session, data, cut, part); err != nil {
		return "", err
	}
	persisted, result, err := session.Query(ctx)
	if err != nil {
		return "", describe(err)
	}
	if result != nil || persisted != part {
		return "", fmt.Errorf("after a cut at %d: persisted_size %d (want the first part, %d), result %v",
			cut, persisted, part, result)
	}
	finished, err := session.Resume(ctx, bytes.NewReader(data))
	if err != nil {
		return "", fmt.Errorf("resuming from %d: %w", persisted, describe(err))
	}
	if err := sameVideo(finished, data); err != nil {
		return "", err
	}
	return fmt.Sprintf("cut at %d of %d bytes, persisted %d (parts of %d), resumed: event %s, sha256 %s",
		cut, len(data), persisted, part, finished.GetEventId(), finished.GetSha256()), nil
}

// cutWrite writes data[:cut] in one WriteUpload stream and breaks it off, as a lost link
// does, once the server has made every whole part before cut durable.
func cutWrite(ctx context.Context, session *checkout.Session, data []byte, cut, part int64) error {
	writeCtx, breakOff := context.WithCancel(ctx)
	defer breakOff()
	reader := &cutReader{data: data, cut: cut, reached: make(chan struct{}), stop: writeCtx.Done()}
	written := make(chan error, 1)
	go func() {
		_, err := session.Write(writeCtx, reader, 0)
		written <- err
	}()
	select {
	case <-reader.reached:
	case err := <-written:
		return fmt.Errorf("the write ended before the cut: %w", describe(err))
	case <-ctx.Done():
		return ctx.Err()
	}
	durable := cut / part * part
	for {
		persisted, _, err := session.Query(ctx)
		if err != nil {
			return describe(err)
		}
		if persisted >= durable {
			break
		}
		select {
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			return fmt.Errorf("persisted_size stayed %d, below %d", persisted, durable)
		}
	}
	breakOff()
	if err := <-written; err == nil {
		return errors.New("the cut write finished the upload")
	}
	return nil
}

// cutReader serves data up to cut; a read at cut or beyond waits until stop, like a source
// that stalls, then fails.
type cutReader struct {
	data    []byte
	cut     int64
	reached chan struct{} // closed at the first read at cut or beyond
	once    sync.Once
	stop    <-chan struct{}
}

func (r *cutReader) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) <= r.cut {
		return copy(p, r.data[off:]), nil
	}
	r.once.Do(func() { close(r.reached) })
	<-r.stop
	return 0, errors.New("cut off")
}

// sameVideo checks an upload's answer against the bytes sent.
func sameVideo(got *checkoutv1.UploadVideoResponse, data []byte) error {
	digest := sha256.Sum256(data)
	want := hex.EncodeToString(digest[:])
	switch {
	case got.GetStatus() != "ok":
		return fmt.Errorf("status %q", got.GetStatus())
	case !uuidPattern.MatchString(got.GetEventId()) || got.GetVideoId() != got.GetEventId():
		return fmt.Errorf("event %q, video %q: want one UUID", got.GetEventId(), got.GetVideoId())
	case got.GetObjectKey() != "input/"+got.GetVideoId()+".mp4":
		return fmt.Errorf("object key %q", got.GetObjectKey())
	case got.GetSizeBytes() != int64(len(data)) || got.GetSha256() != want:
		return fmt.Errorf("stored %d bytes with sha256 %s, sent %d with %s",
			got.GetSizeBytes(), got.GetSha256(), len(data), want)
	}
	return nil
}

// payload is size bytes that start like an MP4 (an ISO-BMFF `ftyp` box), as the server
// requires, then pseudo-random bytes from seed.
func payload(size int, seed byte) []byte {
	header := []byte("\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2")
	data := make([]byte, max(size, len(header)))
	copy(data, header)
	_, _ = mathrand.NewChaCha8([32]byte{seed}).Read(data[len(header):])
	return data[:size]
}

// describe is err with its status code and ErrorInfo reason, when it has them.
func describe(err error) error {
	reason, message, _ := checkout.Reason(err)
	if code := status.Code(err); code != codes.Unknown || reason != "" {
		return fmt.Errorf("%s %s: %s", code, reason, message)
	}
	return err
}
