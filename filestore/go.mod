module github.com/idemkit/idem/filestore

go 1.25.0

require (
	github.com/idemkit/idem v0.0.0-00010101000000-000000000000
	go.etcd.io/bbolt v1.5.0
	go.uber.org/goleak v1.3.0
)

require golang.org/x/sys v0.45.0 // indirect

replace github.com/idemkit/idem => ..
