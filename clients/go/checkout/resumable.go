package checkout

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"

	checkoutv1 "checkout/clients/go/gen/checkout/v1"
)

// castagnoli is CRC32C's table: the checksum every chunk of a session carries.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Session is a resumable upload session: a long upload over a link that breaks goes on
// from the last byte the server made durable, on any replica, from any process that knows
// the session's ID (docs/uploads.md, "Resumable uploads"). Its methods are not safe for
// concurrent use; the server lets one stream write a session at a time anyway.
type Session struct {
	// Client is the stub the session's calls go through.
	Client checkoutv1.CheckoutServiceClient
	// ID names the session (upload_id). It grants write access to the upload: keep it as
	// confidential as the API key. Persist it to resume from another process.
	ID string
	// Size is the declared size of the file in bytes. Query and Resume fill it in.
	Size int64
	// PartBytes is the session's part size: the persisted size moves in steps of it, so
	// a cut loses at most the part being collected. Query and Resume fill it in.
	PartBytes int64
}

// StartResumable starts a session for the video meta describes (StartResumableUpload);
// meta.SizeBytes is required. A repeated meta.IdempotencyKey finds the same session, or
// the finished upload, which Resume then returns without writing anything.
func StartResumable(ctx context.Context, client checkoutv1.CheckoutServiceClient,
	meta *checkoutv1.UploadMetadata,
) (*Session, error) {
	started, err := client.StartResumableUpload(ctx, &checkoutv1.StartResumableUploadRequest{Metadata: meta})
	if err != nil {
		return nil, err
	}
	return &Session{
		Client:    client,
		ID:        started.GetUploadId(),
		Size:      meta.GetSizeBytes(),
		PartBytes: started.GetPartSizeBytes(),
	}, nil
}

// Query asks the server where the session is (QueryUploadStatus): the persisted size, the
// offset to write from, or the result once the upload is finished. It fills in Size and
// PartBytes. An unknown, cancelled or expired session is NOT_FOUND (UPLOAD_NOT_FOUND).
func (s *Session) Query(ctx context.Context) (persisted int64, result *checkoutv1.UploadVideoResponse, err error) {
	status, err := s.Client.QueryUploadStatus(ctx, &checkoutv1.QueryUploadStatusRequest{UploadId: s.ID})
	if err != nil {
		return 0, nil, err
	}
	s.Size, s.PartBytes = status.GetSizeBytes(), status.GetPartSizeBytes()
	return status.GetPersistedSize(), status.GetResult(), nil
}

// Write sends the bytes of r from offset to Size in one WriteUpload stream, each chunk with
// its CRC32C, and finishes the upload: it returns the same result as Upload. offset may be
// at most the persisted size (the server skips what it already has; a larger one is
// OUT_OF_RANGE UPLOAD_OFFSET_OUT_OF_RANGE). When the stream breaks (ctx cancelled, the link
// lost, the server restarted), every whole part that reached the server stays stored:
// Resume goes on from there. Write does not retry.
func (s *Session) Write(ctx context.Context, r io.ReaderAt, offset int64) (*checkoutv1.UploadVideoResponse, error) {
	if s.Size <= 0 || offset < 0 || offset > s.Size {
		return nil, fmt.Errorf("checkout: cannot write from %d of a session of %d bytes (Query fills in the size)", offset, s.Size)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // after an error of r: the stream breaks off, as a lost link does
	stream, err := s.Client.WriteUpload(ctx)
	if err != nil {
		return nil, err
	}
	for at := offset; ; {
		msg, err := s.message(r, at)
		if err != nil {
			return nil, err
		}
		if err := stream.Send(msg); err != nil {
			if err = ended(err); err != nil {
				return nil, err
			}
			break // the server ended the call: CloseAndRecv tells why
		}
		at += int64(len(msg.GetChecksummedData().GetContent()))
		if msg.GetFinishWrite() {
			break
		}
	}
	written, err := stream.CloseAndRecv()
	if err != nil {
		return nil, err
	}
	if result := written.GetResult(); result != nil {
		return result, nil
	}
	return nil, fmt.Errorf("checkout: the write ended at %d bytes without finishing the upload", written.GetPersistedSize())
}

// message is the WriteUpload message with the bytes of r at offset `at` (at most ChunkBytes
// of them), the last one with finish_write.
func (s *Session) message(r io.ReaderAt, at int64) (*checkoutv1.WriteUploadRequest, error) {
	msg := &checkoutv1.WriteUploadRequest{UploadId: s.ID, WriteOffset: at}
	if n := min(ChunkBytes, s.Size-at); n > 0 {
		// A new buffer each time: gRPC may still hold the previous message after Send returns.
		content := make([]byte, n)
		if got, err := r.ReadAt(content, at); got < len(content) {
			if err == nil || errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF // shorter than the declared size
			}
			return nil, fmt.Errorf("checkout: reading the video at %d: %w", at+int64(got), err)
		}
		crc := crc32.Checksum(content, castagnoli)
		msg.ChecksummedData = &checkoutv1.ChecksummedData{Content: content, Crc32C: &crc}
	}
	msg.FinishWrite = at+int64(len(msg.GetChecksummedData().GetContent())) == s.Size
	return msg, nil
}

// Resume finishes the upload from where the server is: Query, then Write from the
// persisted size, or the result at once when the upload is finished already. Call it after
// a cut, in this process or another: a Session with Client and ID is enough. Whether a
// failure is worth a Resume is the caller's choice (UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED
// UPLOAD_BUSY and a lost link are; see Reason).
func (s *Session) Resume(ctx context.Context, r io.ReaderAt) (*checkoutv1.UploadVideoResponse, error) {
	persisted, result, err := s.Query(ctx)
	if err != nil || result != nil {
		return result, err
	}
	return s.Write(ctx, r, persisted)
}
