package checkout

import (
	"context"
	"fmt"
	"maps"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
)

func TestReasonReadsTheErrorInfo(t *testing.T) {
	st, err := status.New(codes.OutOfRange, "Смещение записи вне допустимого диапазона").WithDetails(
		&errdetails.ErrorInfo{
			Reason:   "UPLOAD_OFFSET_OUT_OF_RANGE",
			Domain:   "checkout.v1",
			Metadata: map[string]string{"persisted_size": "8388608"},
		})
	if err != nil {
		t.Fatal(err)
	}
	// Wrapped, as a caller's fmt.Errorf("...: %w", err) leaves it.
	reason, message, metadata := Reason(fmt.Errorf("resuming: %w", st.Err()))
	if reason != "UPLOAD_OFFSET_OUT_OF_RANGE" || message != st.Message() ||
		!maps.Equal(metadata, map[string]string{"persisted_size": "8388608"}) {
		t.Errorf("Reason = %q, %q, %v", reason, message, metadata)
	}
}

func TestReasonWithoutErrorInfo(t *testing.T) {
	for _, tc := range []struct {
		err     error
		message string
	}{
		{status.Error(codes.Unavailable, "connection refused"), "connection refused"},
		{context.Canceled, "context canceled"},
		{nil, ""},
	} {
		reason, message, metadata := Reason(tc.err)
		if reason != "" || message != tc.message || metadata != nil {
			t.Errorf("Reason(%v) = %q, %q, %v", tc.err, reason, message, metadata)
		}
	}
}

func TestAnAPIKeyNeedsTLS(t *testing.T) {
	conn, err := Dial("127.0.0.1:1", WithAPIKey("secret"))
	if err == nil {
		conn.Close()
		t.Fatal("Dial with an API key and no TLS succeeded")
	}
}

func TestTheAPIKeyGoesOnEveryCallButCleanup(t *testing.T) {
	key := bearer{token: "secret"}
	for method, want := range map[string]map[string]string{
		"/checkout.v1.CheckoutService/GetStatus": {"authorization": "Bearer secret"},
		"/checkout.v1.CheckoutService/Cleanup":   nil,
	} {
		ctx := credentials.NewContextWithRequestInfo(context.Background(), credentials.RequestInfo{Method: method})
		got, err := key.GetRequestMetadata(ctx)
		if err != nil || !maps.Equal(got, want) {
			t.Errorf("%s: metadata %v, %v; want %v", method, got, err, want)
		}
	}
	if !key.RequireTransportSecurity() {
		t.Error("the API key may travel in clear text")
	}
}
