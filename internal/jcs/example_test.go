package jcs_test

import (
	"fmt"

	"github.com/idemkit/idem/internal/jcs"
)

func ExampleCanonicalize() {
	out, err := jcs.Canonicalize([]byte(`{ "b": [1.50, 2e2, "\u00e9"], "a": true }`))
	fmt.Println(string(out), err)
	_, err = jcs.Canonicalize([]byte(`{"a":1,"a":2}`))
	fmt.Println(err != nil)
	// Output:
	// {"a":true,"b":[1.5,200,"é"]} <nil>
	// true
}
