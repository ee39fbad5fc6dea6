package idemhttp

// MarshalV1 is Response.MarshalBinary in encoding version 1, which
// LegacyEncoding writes.
func MarshalV1(r *Response) ([]byte, error) { return r.appendBinary(nil, codecV1) }
