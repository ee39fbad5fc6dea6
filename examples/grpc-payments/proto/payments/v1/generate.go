// Package paymentsv1 holds the Go code generated from payments.proto: the
// messages and the PaymentsService client and server of the grpc-payments
// example. The generated files are committed; after editing payments.proto,
// regenerate them with `go generate ./...` from examples/grpc-payments (the
// tool versions are in the example's README).
package paymentsv1

//go:generate protoc -I ../.. --go_out=../.. --go_opt=paths=source_relative --go-grpc_out=../.. --go-grpc_opt=paths=source_relative payments/v1/payments.proto
