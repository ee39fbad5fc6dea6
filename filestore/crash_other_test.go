//go:build !unix

package filestore

// The kill -9 test needs SIGKILL; elsewhere TestMain never re-executes.
const crashChildEnv = "FILESTORE_CRASH_CHILD"

func crashChild() int { return 2 }
