package pgxstore

import "testing"

// TestSchemaVersion: SchemaVersion is the number of migrations.
func TestSchemaVersion(t *testing.T) {
	if SchemaVersion != len(migrations) {
		t.Fatalf("SchemaVersion = %d, but there are %d migrations", SchemaVersion, len(migrations))
	}
}
