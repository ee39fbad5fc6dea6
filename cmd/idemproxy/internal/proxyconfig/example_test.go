package proxyconfig_test

import (
	"fmt"

	"github.com/idemkit/idem/cmd/idemproxy/internal/proxyconfig"
)

func ExampleParse() {
	doc := `
routes:
  - name: capture
    methods: [POST]
    path: /v1/charges/*/capture
    lease: 10s
  - prefix: /internal/
    key: "off"
`
	c, err := proxyconfig.Parse([]byte(doc), proxyconfig.FormatYAML, proxyconfig.Overrides{})
	if err != nil {
		fmt.Println(err)
		return
	}
	all := c.AllRoutes()
	for _, req := range [][2]string{
		{"POST", "/v1/charges/ch_1/capture"},
		{"POST", "/internal/reindex"},
		{"PATCH", "/v1/customers/cus_1"},
		{"GET", "/v1/charges"},
	} {
		r := all[c.Match(req[0], req[1])]
		fmt.Printf("%s %s -> %s protected=%v lease=%v\n", req[0], req[1], r.Name, r.Protects(req[0]), r.Lease)
	}

	_, err = proxyconfig.Parse([]byte("routes: [{prefix: /a}, {prefix: /b, lease: 48h}]"), proxyconfig.FormatYAML, proxyconfig.Overrides{})
	fmt.Println(err)
	// Output:
	// POST /v1/charges/ch_1/capture -> capture protected=true lease=10s
	// POST /internal/reindex -> routes[1] protected=false lease=30s
	// PATCH /v1/customers/cus_1 -> default protected=true lease=30s
	// GET /v1/charges -> default protected=false lease=30s
	// routes[1].lease: must be > 0 and < ttl (24h0m0s)
}
