// Package idemgrpc makes retries of unary gRPC calls safe, with the contract
// of idemhttp (SPEC §3) on the same *idem.Keeper: Stripe's idempotency-key
// semantics for gRPC services, and Google's AIP-155 request_id.
//
// A call carries its key in the idempotency-key metadata, or in its request
// message (Server.Key, for example RequestIDField("request_id")). The first
// call with a key runs the handler once, under a lease (renewed while it
// runs; its fence is in the handler's context, idem.FenceFromContext). Its
// answer, the response message or the error status with its details, and
// the header and trailer metadata the handler set, is stored before any of
// it is sent, and every retry with the same key and the same request (full
// method and deterministically marshalled message) gets it back, with the
// trailer idempotency-replayed: true, without running the handler.
//
//	srv := &idemgrpc.Server{
//		Keeper: &idem.Keeper{Store: store},
//		Scope:  principalOf, // func(ctx, fullMethod) (string, error), after authentication
//		Key:    idemgrpc.RequestIDField("request_id"),
//	}
//	g := grpc.NewServer(
//		grpc.ChainUnaryInterceptor(authenticate, srv.UnaryServerInterceptor()),
//		grpc.ChainStreamInterceptor(srv.StreamServerInterceptor()),
//	)
//
// Clients add keys with UnaryClientInterceptor, which gives every call a
// random key (kept by every retry grpc-go's retry policy makes) unless it
// already has one (WithKey, the metadata, the request's request_id).
//
// # Answers
//
//	situation                              code                 reason (ErrorInfo, domain idemgrpc)
//	first call                             the handler's        -
//	retry of a completed call              the stored one       - (trailer idempotency-replayed: true)
//	retry while the first runs             ABORTED              REQUEST_IN_PROGRESS, RetryInfo and grpc-retry-pushback-ms = lease left
//	key reused for another request         FAILED_PRECONDITION  IDEMPOTENCY_KEY_REUSED
//	key missing (RequireKey) / invalid     INVALID_ARGUMENT     IDEMPOTENCY_KEY_MISSING / IDEMPOTENCY_KEY_INVALID
//	no credential, anonymous not allowed   UNAUTHENTICATED      CREDENTIALS_REQUIRED
//	store unreachable                      UNAVAILABLE          STORE_UNAVAILABLE (the handler did not run)
//	store full                             RESOURCE_EXHAUSTED   STORE_FULL (the handler did not run)
//	result could not be recorded           UNAVAILABLE          OUTCOME_UNKNOWN
//	lease lost, no newer result yet        UNAVAILABLE          LEASE_LOST
//	result larger than MaxResult           INTERNAL (stored)    RESULT_TOO_LARGE
//
// Which codes are stored is Server.Stored (DefaultStored: OK and the
// client's own errors; the codes that say "try again" release the record).
// Wait mode (Server.Wait) holds a duplicate until the first call finishes
// instead of answering ABORTED. Streaming calls pass through untouched
// (StreamServerInterceptor). docs/grpc.md in the repository explains each
// choice.
//
// Replays build the response from the stored message's full name, looked up
// in Server.Types (protoregistry.GlobalTypes by default, where generated
// code registers every message).
//
// A handler that calls grpc.SetHeader, grpc.SendHeader or grpc.SetTrailer
// writes to the interceptor's stream, which holds the metadata until the
// record is completed (grpc.SendHeader therefore does not send at once).
// grpc.SetSendCompressor fails inside a protected handler: it needs
// grpc-go's own stream.
package idemgrpc
