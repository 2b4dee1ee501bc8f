// Command example uploads a video to checkout and follows its status until it is ready or
// failed, or until the timeout:
//
//	go run ./example [-addr host:port] [-tls] [-timeout 5m] clip.mp4
//
// The address is -addr, else CHECKOUT_ADDR, else localhost:50051. With -tls the server is
// verified against the system roots and CHECKOUT_TOKEN, when set, is sent as the API key.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc"

	"checkout/clients/go/checkout"
	checkoutv1 "checkout/clients/go/gen/checkout/v1"
)

func main() {
	addr := flag.String("addr", envOr("CHECKOUT_ADDR", checkout.DefaultAddr), "the server, host:port")
	useTLS := flag.Bool("tls", false, "connect with TLS and send CHECKOUT_TOKEN as the API key")
	timeout := flag.Duration("timeout", 5*time.Minute, "give up after this long")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: example [-addr host:port] [-tls] [-timeout 5m] VIDEO")
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	err := run(ctx, *addr, *useTLS, flag.Arg(0))
	cancel()
	if err != nil {
		if reason, message, _ := checkout.Reason(err); reason != "" {
			fmt.Fprintf(os.Stderr, "example: %s (%s)\n", message, reason)
		} else {
			fmt.Fprintf(os.Stderr, "example: %v\n", err)
		}
		os.Exit(1)
	}
}

func run(ctx context.Context, addr string, useTLS bool, path string) error {
	conn, err := dial(addr, useTLS)
	if err != nil {
		return err
	}
	defer conn.Close()
	client := checkoutv1.NewCheckoutServiceClient(conn)

	file, err := os.Open(path)
	if err != nil {
		return err
	}
	defer file.Close()
	info, err := file.Stat()
	if err != nil {
		return err
	}
	uploaded, err := checkout.Upload(ctx, client, file, &checkoutv1.UploadMetadata{
		Filename:    filepath.Base(path),
		ContentType: "video/mp4",
		SizeBytes:   info.Size(),
	})
	if err != nil {
		return err
	}
	fmt.Printf("uploaded %s: %d bytes, sha256 %s\nevent_id %s\n",
		path, uploaded.GetSizeBytes(), uploaded.GetSha256(), uploaded.GetEventId())

	// The current status first, then every change; the stream ends after ready or failed.
	watch, err := client.WatchStatus(ctx, &checkoutv1.WatchStatusRequest{EventId: uploaded.GetEventId()})
	if err != nil {
		return err
	}
	for {
		update, err := watch.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if update.GetHeartbeat() {
			continue
		}
		line := update.GetUpdatedAt().AsTime().Local().Format(time.TimeOnly) + "  " + update.GetStatus()
		if update.GetError() != "" {
			line += ": " + update.GetError() // why it failed
		}
		fmt.Println(line)
	}
}

func dial(addr string, useTLS bool) (*grpc.ClientConn, error) {
	if !useTLS {
		return checkout.Dial(addr)
	}
	var opts []grpc.DialOption
	if token := os.Getenv("CHECKOUT_TOKEN"); token != "" {
		opts = append(opts, checkout.WithAPIKey(token))
	}
	return checkout.DialTLS(addr, nil, opts...)
}

func envOr(name, fallback string) string {
	if value := os.Getenv(name); value != "" {
		return value
	}
	return fallback
}
