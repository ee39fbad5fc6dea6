module github.com/idemkit/idem/examples/grpc-payments

go 1.26.0

require (
	github.com/idemkit/idem v0.0.0-00010101000000-000000000000
	github.com/idemkit/idem/filestore v0.0.0-00010101000000-000000000000
	github.com/idemkit/idem/idemgrpc v0.0.0-00010101000000-000000000000
	go.uber.org/goleak v1.3.0
	google.golang.org/grpc v1.85.0
	google.golang.org/protobuf v1.36.12
)

require (
	go.etcd.io/bbolt v1.5.0 // indirect
	golang.org/x/net v0.60.0 // indirect
	golang.org/x/sys v0.48.0 // indirect
	golang.org/x/text v0.42.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20261110000943-09e21b237f2c // indirect
)

replace github.com/idemkit/idem => ../..

replace github.com/idemkit/idem/filestore => ../../filestore

replace github.com/idemkit/idem/idemgrpc => ../../idemgrpc

// idemgrpc's tests use these; a replace applies only in the main module.
replace github.com/idemkit/idem/pgxstore => ../../pgxstore

replace github.com/idemkit/idem/redisstore => ../../redisstore
