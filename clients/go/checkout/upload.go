package checkout

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc"

	checkoutv1 "checkout/clients/go/gen/checkout/v1"
)

// ChunkBytes is the size of the chunks Upload and Session.Write send: from 256 KiB up the
// server's storage path is the limit, and a client spends the least CPU per MiB between
// 512 KiB and 2 MiB (measured for the Python SDK: docs/client.md, "Uploading").
const ChunkBytes = 512 << 10

// ErrChecksumMismatch is returned when the SHA-256 the server computed over what it stored
// differs from that of the bytes Upload read.
var ErrChecksumMismatch = errors.New("checkout: the stored video's SHA-256 differs from the bytes sent")

// Upload streams one video in with UploadVideo: meta first, then what r yields until io.EOF,
// in chunks of ChunkBytes. The server stores all of it or nothing (docs/uploads.md).
//
// It returns the server's answer; a status error from the server (INVALID_ARGUMENT NOT_MP4,
// RESOURCE_EXHAUSTED TOO_MANY_UPLOADS, ...: see Reason); r's error, wrapped, after which
// the call is cancelled and nothing is stored; or ErrChecksumMismatch. meta.SizeBytes and
// meta.Sha256, when set, are checked by the server; set meta.IdempotencyKey to make a retry
// of the same file safe (the server then answers with the first upload, Deduplicated set).
// Upload does not retry.
func Upload(ctx context.Context, client checkoutv1.CheckoutServiceClient, r io.Reader,
	meta *checkoutv1.UploadMetadata,
) (*checkoutv1.UploadVideoResponse, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // after an error of r: the server sees the call cancelled and stores nothing
	stream, err := client.UploadVideo(ctx)
	if err != nil {
		return nil, err
	}
	hash := sha256.New()
	whole, err := sendVideo(stream, meta, io.TeeReader(r, hash))
	if err != nil {
		return nil, err
	}
	response, err := stream.CloseAndRecv()
	switch {
	case err != nil:
		return nil, err
	case response.GetDeduplicated():
		// A replayed idempotency key is answered with the first upload, right after the
		// metadata: what was sent of this one does not matter.
		return response, nil
	case !whole:
		return nil, errors.New("checkout: the server answered before the whole video was sent")
	case response.GetSha256() != hex.EncodeToString(hash.Sum(nil)):
		return response, ErrChecksumMismatch
	}
	return response, nil
}

// sendVideo sends meta, then r in chunks until io.EOF. It reports whether all of it was
// sent: not when the server ended the call before the end (see ended).
func sendVideo(stream grpc.ClientStreamingClient[checkoutv1.UploadVideoRequest, checkoutv1.UploadVideoResponse],
	meta *checkoutv1.UploadMetadata, r io.Reader,
) (bool, error) {
	first := &checkoutv1.UploadVideoRequest{Payload: &checkoutv1.UploadVideoRequest_Metadata{Metadata: meta}}
	if err := stream.Send(first); err != nil {
		return false, ended(err)
	}
	for {
		// A new buffer each time: gRPC may still hold the previous message after Send returns.
		chunk := make([]byte, ChunkBytes)
		n, err := io.ReadFull(r, chunk)
		if n > 0 {
			msg := &checkoutv1.UploadVideoRequest{Payload: &checkoutv1.UploadVideoRequest_Chunk{Chunk: chunk[:n]}}
			if err := stream.Send(msg); err != nil {
				return false, ended(err)
			}
		}
		switch {
		case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
			return true, nil
		case err != nil:
			return false, fmt.Errorf("checkout: reading the video: %w", err)
		}
	}
}

// ended is what a failed Send means: io.EOF is the server ending the call (its answer, or
// a refusal before the end, which only CloseAndRecv tells: nil here), anything else an
// error of sending itself.
func ended(err error) error {
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}
