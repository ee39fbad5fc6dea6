// Package jcs implements the JSON Canonicalization Scheme of RFC 8785: a
// deterministic serialisation of a JSON text, so that two texts with the same
// meaning (member order, white space, string escapes, number spelling aside)
// have identical bytes.
//
// The input must be I-JSON (RFC 7493), as RFC 8785 requires: valid UTF-8,
// no lone surrogates in \u escapes, no duplicate member names, and numbers
// that fit an IEEE 754 double (they are parsed to the nearest double and
// written in ECMAScript's Number.prototype.toString form; -0 becomes 0, and
// a number too small for a double becomes 0 as in JSON.parse). Anything else
// is an error. Object members are sorted by their names compared as UTF-16
// code units. Nesting deeper than MaxDepth is an error.
//
// This package imports only the standard library.
package jcs
