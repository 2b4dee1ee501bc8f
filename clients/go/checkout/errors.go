package checkout

import (
	"errors"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/status"
)

// Reason reads the rich status of a failed call: the google.rpc.ErrorInfo reason (stable:
// branch on it, e.g. "INVALID_EVENT_ID"; the table is in docs/api.md, "Errors"), the status
// message (Russian, for people; it may go on after a colon with specifics) and the
// ErrorInfo metadata (values programs need: persisted_size, role, method, ...).
//
// The reason is empty when err carries no ErrorInfo: a status gRPC made itself
// (UNAVAILABLE for a server that is down, CANCELLED, ...) or an error that is not a status
// at all, whose text is then the message. All three are empty for a nil err. err may be
// wrapped (errors.As finds the status).
func Reason(err error) (reason, message string, metadata map[string]string) {
	if err == nil {
		return "", "", nil
	}
	var withStatus interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &withStatus) || withStatus.GRPCStatus() == nil {
		return "", err.Error(), nil
	}
	st := withStatus.GRPCStatus()
	for _, detail := range st.Details() {
		if info, ok := detail.(*errdetails.ErrorInfo); ok {
			return info.GetReason(), st.Message(), info.GetMetadata()
		}
	}
	return "", st.Message(), nil
}
