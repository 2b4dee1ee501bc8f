// Package checkout is a small hand-written layer over the generated checkout.v1 stubs
// (checkout/clients/go/gen/checkout/v1): connections with the options the service expects,
// a streaming upload, resumable upload sessions, and the reason of a rich error.
//
// Every call is a plain generated stub call underneath; use checkoutv1.CheckoutServiceClient
// directly for anything this package does not wrap (statuses, results, listings).
package checkout

import (
	"context"
	"crypto/tls"
	"errors"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
)

// MaxChunkBytes is the largest upload chunk: the server, like gRPC by default, refuses
// messages over 4 MiB.
const MaxChunkBytes = 4 << 20

// DefaultAddr is the address of the server `make run` starts.
const DefaultAddr = "localhost:50051"

// DialOptions are the options Dial and DialTLS start from, those of the Python SDK: keepalive
// pings every 30 s (the server permits them every 10 s, also without calls, so a watch
// that sees no change for minutes notices a dead server), a send limit of a chunk plus
// framing, a receive limit of 64 MiB (predictions, pages of 1000 operations), and
// reconnection backed off to at most 5 s so that a restarted server is found again quickly.
func DialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time:                30 * time.Second,
			Timeout:             10 * time.Second,
			PermitWithoutStream: true,
		}),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallSendMsgSize(MaxChunkBytes+64<<10),
			grpc.MaxCallRecvMsgSize(64<<20),
		),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay:  500 * time.Millisecond,
				Multiplier: 1.6,
				Jitter:     0.2,
				MaxDelay:   5 * time.Second,
			},
			MinConnectTimeout: 20 * time.Second,
		}),
		grpc.WithUserAgent("checkout-client-go/0.1"),
	}
}

// Dial opens a plaintext connection to addr (host:port), as to a local server. It cannot
// carry an API key: with WithAPIKey among opts it fails rather than send the key in clear
// text. opts come after DialOptions and win. Like grpc.NewClient, it connects lazily, at
// the first call.
func Dial(addr string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	all := append(DialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	return grpc.NewClient(addr, append(all, opts...)...)
}

// DialTLS opens a TLS connection to addr. A nil config verifies the server against the
// system roots; set RootCAs for a CA of your own, and Certificates for a server that
// requires client certificates (mTLS). Add WithAPIKey to opts for a server with
// authentication on.
func DialTLS(addr string, config *tls.Config, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	if config == nil {
		config = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	all := append(DialOptions(), grpc.WithTransportCredentials(credentials.NewTLS(config)))
	return grpc.NewClient(addr, append(all, opts...)...)
}

// WithAPIKey sends key as `authorization: Bearer <key>` on every call but Cleanup, which
// carries the admin token or key itself (put it in the call's outgoing metadata). gRPC sends
// it over TLS only, as the Python SDK does: use it with DialTLS.
func WithAPIKey(key string) grpc.DialOption {
	return grpc.WithPerRPCCredentials(bearer{token: key})
}

// bearer is the per-call credential of WithAPIKey.
type bearer struct {
	token string
}

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (b bearer) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	info, ok := credentials.RequestInfoFromContext(ctx)
	if !ok {
		return nil, errors.New("checkout: no request info for the API key")
	}
	if strings.HasSuffix(info.Method, "/Cleanup") {
		return nil, nil
	}
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials: never in clear text.
func (bearer) RequireTransportSecurity() bool { return true }
